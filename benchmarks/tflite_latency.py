"""Size and LiteRT latency per image of every TFLite format (a benchmark script, not a test).

    python benchmarks/tflite_latency.py                         # b0 and s at 128 px, m at 224 px
    python benchmarks/tflite_latency.py --models efficientnet_v2_b0:128 --runs 50
    python benchmarks/tflite_latency.py --model-folder models/demo-mobilenet_v2

Without --model-folder, weights=None models are built and converted on the fly into a temporary
folder (each conversion in its own child process, as in quantize_qat.py); the int8 files are
calibrated on random pixels and the QAT model is not fine-tuned, which changes no size and no
latency. Latency: mushroom.latency, the routine evaluate.py uses: every format of a model timed
round-robin in one process (--runs rounds after --warmup, the order rotating), the invoke alone
and end to end (uint8 pixels in, every output dequantized out), with 1 thread and with all
cores; medians, p95 and the ratios to float32 (of medians, and the median of per-round paired
ratios). Prints the size table (with the float32 tensors left in each int8 file), then the
latency tables.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mushroom.config import EXPORT_FORMATS  # noqa: E402
from mushroom import latency  # noqa: E402
from mushroom.litert import TFLiteModel  # noqa: E402
from mushroom.modelio import ModelFolder  # noqa: E402
from mushroom.quantization import INT8_FORMATS, float_ops  # noqa: E402

DEFAULT_MODELS = ("efficientnet_v2_b0:128", "efficientnet_v2_s:128", "efficientnet_v2_m:224")


def build_files(name: str, size: int, folder: Path, formats: list[str]) -> dict[str, Path]:
    """Build a weights=None model, its QAT version, and convert every format in child processes."""
    from mushroom.models import build_model
    from mushroom.quantization import export_format, export_saved_model
    from mushroom import qat_configs

    mf = ModelFolder(folder)
    model = build_model(name, 6, size)
    saved = {"float": export_saved_model(model, folder / "savedmodel-float")}
    if "qat_int8" in formats:
        saved["qat"] = export_saved_model(qat_configs.quantize(model), folder / "savedmodel-qat")
    reps = np.random.default_rng(0).integers(0, 256, (16, size, size, 3)).astype(np.uint8)
    np.save(folder / "reps.npy", reps)
    files = {}
    for fmt in formats:
        files[fmt] = mf.tflite(fmt)
        t = time.perf_counter()
        info = export_format(fmt, saved["qat" if fmt == "qat_int8" else "float"], files[fmt],
                             representative_file=folder / "reps.npy" if fmt == "ptq_int8" else None)
        print(f"  converted {name} {fmt} in {time.perf_counter() - t:.0f} s (child peak {info['peak_rss_mb']:.0f} MB)",
              flush=True)
    return files


def report(label: str, files: dict[str, Path], runs: int, warmup: int) -> dict[int, latency.Timings]:
    size = TFLiteModel(next(iter(files.values()))).input_size
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    # float32 first: the reference of every ratio
    files = dict(sorted(files.items(), key=lambda kv: kv[0] != "float32"))
    print(f"\n{label}: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    # float32 tensors inside an int8 file are ops the converter left float (expected: none)
    print(f"{'format':<10} {'MB':>8} {'size/float32':>12} {'float32 tensors':>16}")
    ref = files.get("float32")
    for fmt, path in files.items():
        floats = len(float_ops(path)) if fmt in INT8_FORMATS else "-"
        ratio = f"{path.stat().st_size / ref.stat().st_size:.2f}" if ref else "–"
        print(f"{fmt:<10} {path.stat().st_size / 1e6:>8.2f} {ratio:>12} {floats:>16}")
    timings = latency.time_files(files, image, runs, warmup, latency.thread_counts(1))
    for t in timings.values():
        print(t.table())
    return timings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), help="name:size pairs")
    p.add_argument("--model-folder", type=Path, help="time the tflite/ files of a quantized model folder instead")
    p.add_argument("--formats", nargs="*", default=list(EXPORT_FORMATS))
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    if args.runs < 50:
        print("note: fewer than 50 runs make p95 noisy", file=sys.stderr)
    if args.model_folder:
        files = ModelFolder(args.model_folder).exports(args.formats)
        report(str(args.model_folder), files, args.runs, args.warmup)
        return 0
    for spec in args.models:
        name, _, size = spec.partition(":")
        with tempfile.TemporaryDirectory(prefix="tflite-bench-") as tmp:
            files = build_files(name, int(size or 128), Path(tmp), args.formats)
            report(f"{name} {size} px (weights=None)", files, args.runs, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
