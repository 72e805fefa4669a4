"""Size and LiteRT latency per image of every TFLite format (a benchmark script, not a test).

    python benchmarks/tflite_latency.py                         # b0 and s at 128 px, m at 224 px
    python benchmarks/tflite_latency.py --models efficientnet_v2_b0:128 --runs 50
    python benchmarks/tflite_latency.py --model-folder models/demo-mobilenet_v2

Without --model-folder, weights=None models are built and converted on the fly into a temporary
folder (each conversion in its own child process, as in quantize_qat.py); the int8 files are
calibrated on random pixels and the QAT model is not fine-tuned, which changes no size and no
latency. Latency: median and p95 over --runs single-image invokes after --warmup, with 1 thread
and with all cores. Prints a table (with the float32 tensors left in each int8 file) and the
int8/float32 ratios of size and 1-thread latency.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mushroom.config import EXPORT_FORMATS  # noqa: E402
from mushroom.litert import TFLiteModel  # noqa: E402
from mushroom.modelio import ModelFolder  # noqa: E402
from mushroom.quantization import INT8_FORMATS, float_ops  # noqa: E402

DEFAULT_MODELS = ("efficientnet_v2_b0:128", "efficientnet_v2_s:128", "efficientnet_v2_m:224")


def time_file(path: Path, threads: int, runs: int, warmup: int, seed: int = 0) -> tuple[float, float]:
    """(median ms, p95 ms) of one single-image predict with `threads` CPU threads."""
    lite = TFLiteModel(path, num_threads=threads)
    image = np.random.default_rng(seed).integers(0, 256, (lite.input_size, lite.input_size, 3)).astype(np.uint8)
    tensor = lite.prepare(image)
    for _ in range(warmup):
        lite.run_one(tensor)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        lite.run_one(tensor)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), float(np.percentile(times, 95))


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


def report(label: str, files: dict[str, Path], runs: int, warmup: int) -> None:
    all_threads = os.cpu_count() or 1
    rows = {}
    for fmt, path in files.items():
        one = time_file(path, 1, runs, warmup)
        many = time_file(path, all_threads, runs, warmup)
        rows[fmt] = (path.stat().st_size / 1e6, *one, *many, len(float_ops(path)) if fmt in INT8_FORMATS else None)
    print(f"\n{label}: ms per image, {runs} runs after {warmup} warm-up")
    # float32 tensors inside an int8 file are ops the converter left float (expected: none)
    print(f"{'format':<10} {'MB':>8} {'1t med':>8} {'1t p95':>8} {f'{all_threads}t med':>8} {f'{all_threads}t p95':>8}"
          f" {'float32 tensors':>16}")
    for fmt, (mb, m1, p1, mn, pn, floats) in rows.items():
        print(f"{fmt:<10} {mb:>8.2f} {m1:>8.2f} {p1:>8.2f} {mn:>8.2f} {pn:>8.2f} {'-' if floats is None else floats:>16}")
    if "float32" in rows:
        for fmt in ("ptq_int8", "qat_int8"):
            if fmt in rows:
                print(f"{fmt}/float32: size {rows[fmt][0] / rows['float32'][0]:.2f}, "
                      f"1-thread median latency {rows[fmt][1] / rows['float32'][1]:.2f}")


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
