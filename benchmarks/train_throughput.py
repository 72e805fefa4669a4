"""Training throughput on this machine: images/s of the input pipeline alone and of training steps.

    .venv/bin/python benchmarks/train_throughput.py                       # b0, s, m at 128 and 224 px
    .venv/bin/python benchmarks/train_throughput.py --models b0 --sizes 128 --steps 5

Input pipeline: the training split's tf.data pipeline (load_image decode + resize with padding,
shuffle, augmentation, batch, prefetch), uncached (the first epoch, the slowest) and cached, on real
photos (../shared/data/fungi128, read in place) or generated ones. Training: train steps on one
in-memory batch, weights=None, for stage 1 (head only, backbone frozen) and a full fine-tune (every
layer trainable, the most work per image). The input pipeline should deliver at least 2x the
images/s of the fastest training step, or it is the bottleneck.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mushroom import dataset, models, training  # noqa: E402
from mushroom.config import PROJECT_ROOT, load_config  # noqa: E402
from mushroom.keras_env import keras, tf  # noqa: E402

SHARED = PROJECT_ROOT.parent / "shared" / "data" / "fungi128"


def photo_paths(n: int) -> list[str]:
    real = sorted(str(p) for p in SHARED.glob("*/*.jpg")) if SHARED.is_dir() else []
    if real:
        return (real * (n // len(real) + 1))[:n]
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="throughput-"))
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return sorted(str(p) for p in folder.glob("*.jpg"))


def input_rate(paths: list[str], size: int, batch: int, cache: bool, augment) -> float:
    ds = dataset.make_dataset(paths, [0] * len(paths), size, batch, training=True, augment=augment, seed=0,
                              cache=cache, num_classes=2)
    if cache:
        for _ in ds:  # fill the cache, then time an epoch served from it
            pass
    start, n = time.perf_counter(), 0
    for x, _ in ds:
        n += int(x.shape[0])
    return n / (time.perf_counter() - start)


def train_rate(name: str, size: int, batch: int, steps: int, full: bool) -> float:
    keras.backend.clear_session()
    model = models.build_model(name, 6, size, weights=None, dropout=0.3)
    if full:
        training.unfreeze_all(model)
    else:
        training.freeze_for_stage(model, 1)
    training.compile_model(model, 1e-3, 0.1, 6)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    y = tf.constant(keras.utils.to_categorical(rng.integers(0, 6, batch), 6))
    model.train_on_batch(x, y)  # trace + first step, not timed
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="b0,s,m", help="comma-separated EfficientNetV2 variants (b0,s,m) "
                        "or registry names (resnet50, tiny)")
    parser.add_argument("--sizes", default="128,224", help="comma-separated input sizes in pixels")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per model and size")
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--photos", type=int, default=256, help="photos per input-pipeline epoch")
    parser.add_argument("--no-full", action="store_true", help="skip the full fine-tune timing")
    args = parser.parse_args(argv)
    names = [n if n in models.BACKBONES else f"efficientnet_v2_{n}" for n in args.models.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = load_config(None, [])
    paths = photo_paths(args.photos)
    print(f"TensorFlow {tf.__version__}, {len(tf.config.list_physical_devices('CPU'))} CPU device(s), "
          f"{len(tf.config.list_physical_devices('GPU'))} GPU(s); batch {args.batch}; photos: "
          f"{'real (' + str(SHARED) + ')' if SHARED.is_dir() else 'generated'}", flush=True)
    rows, verdicts = [], []
    for size in sizes:
        inp = input_rate(paths, size, args.batch, cache=False, augment=cfg.augment)
        inp_cached = input_rate(paths, size, args.batch, cache=True, augment=cfg.augment)
        for name in names:
            head = train_rate(name, size, args.batch, args.steps, full=False)
            full = None if args.no_full else train_rate(name, size, args.batch, args.steps, full=True)
            rows.append((name, size, inp, inp_cached, head, full))
            fastest = head if full is None else max(head, full)
            verdicts.append(inp >= 2 * fastest)
            print(f"  measured {name} {size}px", flush=True)
    header = f"{'model':<20}{'px':>5}{'input img/s':>13}{'cached':>9}{'train head':>12}{'train full':>12}{'input/train':>13}"
    print("\n" + header + "\n" + "-" * len(header))
    for (name, size, inp, cached, head, full), ok in zip(rows, verdicts):
        fastest = head if full is None else max(head, full)
        print(f"{name:<20}{size:>5}{inp:>13.1f}{cached:>9.1f}{head:>12.1f}{(full or float('nan')):>12.1f}"
              f"{inp / fastest:>12.1f}x" + ("" if ok else "  <- input pipeline is the bottleneck"))
    print("\ninput images/s >= 2 x training images/s (uncached input vs the fastest training step): "
          + ("yes, for every model and size" if all(verdicts) else "NO for the rows marked above"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
