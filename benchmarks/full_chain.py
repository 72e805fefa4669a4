"""The mission's own model through the whole chain: EfficientNetV2-M at the study's resolution.

    .venv/bin/python benchmarks/full_chain.py                      # V2-M at 240 px, ../shared photos
    .venv/bin/python benchmarks/full_chain.py --size 224 --work /tmp/full-chain --keep
    .venv/bin/python benchmarks/full_chain.py --set train.batch_size=4   # any further config override

Runs pipeline.py with config.yaml (V2-M forager model, ResNet50 head-only baseline) on a small
slice of the photos: 3 known species x 12 photos, 4 unknown species x 3 photos, one epoch per
training stage, one QAT epoch, every export format, evaluation (open set included), README results
(of the work folder) and one prediction. It checks that the chain works at full model size, and
prints each stage's wall time and peak memory (pipeline.json) with the time and memory of every
TFLite conversion (quantize.json). The numbers are about time and memory, not accuracy: a few
steps on 18 photos teach the model nothing (model.weights imagenet falls back to null offline).
Everything is written under --work (default: a temporary folder, removed unless --keep).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "fungi128"
KNOWN = ["Amanita muscaria", "Boletus edulis", "Macrolepiota procera"]
UNKNOWN = ["Amanita pantherina", "Hypholoma fasciculare", "Leccinum scabrum", "Paxillus involutus"]


def overrides(work: Path, size: int) -> list[str]:
    return [
        "experiment=full-chain",
        f"paths.data_dir={work / 'data'}", f"paths.models_dir={work / 'models'}",
        f"paths.reports_dir={work / 'reports'}",
        f"image.size={size}",
        f"data.species_subset={json.dumps(KNOWN)}", "data.max_photos_per_species=12",
        "data.split={train: 0.5, val: 0.25, test: 0.25}",
        f"open_set.unknown_species={json.dumps(UNKNOWN)}", "open_set.max_photos_per_species=3",
        "train.batch_size=8", "train.stage1.epochs=1", "train.stage2.epochs=1",
        "quantize.qat_epochs=1", "quantize.representative_images=8", "quantize.check_images=8",
        # An untrained model's outputs are near-ties, where top-1 agreement is a coin toss: the
        # check still runs, on a floor that only a broken conversion misses.
        "quantize.min_agreement=0.5",
        "evaluate.latency_runs=5", "evaluate.latency_warmup=1", "evaluate.bootstrap_samples=200",
        "pipeline.parallel_stages=1",
    ]


def conversion_rows(models_dir: Path) -> list[str]:
    from mushroom.modelio import ModelFolder, find_model_folders

    rows = []
    for folder in find_model_folders(models_dir):
        q = ModelFolder(folder).read_quantize_report()
        if not q:
            continue
        timings = q.get("timings", {})
        rows.append(f"{folder.name}: QAT fine-tune {timings.get('qat_s', 0):.0f} s, SavedModel export "
                    f"{timings.get('export_s', 0):.0f} s, conversions {timings.get('convert_s', 0):.0f} s")
        for fmt, c in q.get("conversions", {}).items():
            rows.append(f"  {fmt:<9} {q['sizes_mb'][fmt]:8.2f} MB  {c['seconds']:6.0f} s  child peak "
                        f"{c['peak_rss_mb'] / 1024:5.2f} GB  agreement {q['agreement'][fmt]['agreement']:.2f}"
                        f"  float32 tensors {len(q.get('float_tensors', {}).get(fmt, [])) if fmt.endswith('int8') else '-'}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=240, help="image side in pixels (config.yaml: 240)")
    p.add_argument("--from-folder", type=Path, default=SHARED, help="photos as DIR/<Species_name>/*.jpg")
    p.add_argument("--work", type=Path, help="output folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="further config overrides (after the benchmark's own)")
    args = p.parse_args()
    if not args.from_folder.is_dir():
        print(f"no photo folder at {args.from_folder}: give --from-folder DIR (DIR/<Species_name>/*.jpg)", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="full-chain-"))
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "pipeline.py", "--config", "config.yaml", "--from-folder", str(args.from_folder)]
    if (args.from_folder / "manifest.csv").is_file():
        cmd += ["--group-column", "date"]
    for ov in overrides(work, args.size) + args.extra:
        cmd += ["--set", ov]
    print(f"work folder: {work}\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT)
    wall = time.perf_counter() - start
    table = work / "reports" / "pipeline.json"
    if code != 0 or not table.is_file():
        print(f"\nthe chain FAILED (exit {code}) after {wall:.0f} s; outputs kept in {work}", file=sys.stderr)
        return 1
    stages = json.loads(table.read_text())["stages"]
    print(f"\nfull chain, config.yaml models at {args.size} px, {wall:.0f} s in all "
          f"(peak of any stage {max(s['peak_rss_gb'] or 0 for s in stages):.2f} GB)")
    print(f"{'stage':28s}{'wall s':>8s}{'peak GB':>9s}")
    for s in stages:
        print(f"{s['name']:28s}{(s['seconds'] or 0):8.0f}{(s['peak_rss_gb'] or 0):9.2f}")
    print("\n".join(conversion_rows(work / "models")))
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    print(f"evaluated {len(metrics)} model x format rows: "
          + ", ".join(sorted({f"{m['model']}/{m['format']}" for m in metrics})))
    (work / "full_chain.json").write_text(json.dumps({"size": args.size, "seconds": wall, "stages": stages}, indent=1))
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
