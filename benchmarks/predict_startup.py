"""predict.py's cold start (process start to the first answer) and warm time per photo.

    python benchmarks/predict_startup.py --model models/demo-mobilenet_v2/tflite/qat_int8.tflite \
        --photos ../shared/data/fungi128/Amanita_muscaria --runs 5

Cold: `python predict.py PHOTO --json` as a fresh process, wall time until it has printed its
answer and exited (median of --runs). Warm: the loaded model answering photo after photo in one
process (median and p95). A benchmark that prints numbers, not a test.
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mushroom.config import load_config  # noqa: E402
from mushroom.prediction import Forager, iter_photos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .tflite file or model folder (default: predict.py's default)")
    parser.add_argument("--photos", default=str(ROOT.parent / "shared/data/fungi128/Amanita_muscaria"))
    parser.add_argument("--runs", type=int, default=5, help="cold starts to time")
    parser.add_argument("--warm", type=int, default=50, help="photos to time warm")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    photos = list(iter_photos([args.photos]))
    model_args = ["--model", args.model] if args.model else []
    cold = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "predict.py", str(photos[0]), "--json", *model_args],
                             cwd=ROOT, capture_output=True, text=True)
        cold.append(time.perf_counter() - t0)
        if out.returncode != 0:
            sys.exit(f"predict.py failed: {out.stderr.strip().splitlines()[-1]}")
    t0 = time.perf_counter()
    forager = Forager.load(load_config(), args.model, args.threads)
    load_s = time.perf_counter() - t0
    warm = []
    for photo in (photos * (args.warm // len(photos) + 1))[: args.warm]:
        t0 = time.perf_counter()
        forager.answer(photo)
        warm.append((time.perf_counter() - t0) * 1000)
    warm.sort()
    print(f"model: {forager.path} ({forager.path.stat().st_size / 1e6:.2f} MB, {forager.image_size} px)")
    print(f"cold start, process start to first answer: median {statistics.median(cold):.2f} s "
          f"(min {min(cold):.2f}, max {max(cold):.2f}, {args.runs} runs)")
    print(f"model load in-process: {load_s * 1000:.0f} ms")
    print(f"warm per photo (decode + resize + inference + advice): median {statistics.median(warm):.1f} ms, "
          f"p95 {warm[int(0.95 * (len(warm) - 1))]:.1f} ms over {len(warm)} photos")


if __name__ == "__main__":
    main()
