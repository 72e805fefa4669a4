"""Where an int8 file's invoke time goes against float32 (a benchmark script, not a test).

    python benchmarks/int8_profile.py --model-folder models/demo-mobilenet_v2     # every part below
    python benchmarks/int8_profile.py --model-folder models/demo-mobilenet_v2 --parts runtime ops

LiteRT's Python interpreter exposes no per-op profiler (ai-edge-litert 2.3.0), so the time is
split by building graphs and timing them with mushroom.latency (float32 and int8 interleaved,
round-robin, one process, invoke alone and end to end, paired ratios):

- `runtime`: the folder's float32 and qat_int8 files under every CPU path this runtime offers:
  the Interpreter with XNNPACK (default), with its latest features, without XNNPACK (builtin
  kernels), and LiteRT's CompiledModel (XNNPACK; YNNPACK when the build has it).
- `prefix`: bisection of the folder's Keras model: sub-models from the input up to the end of
  each MobileNetV2 stage, each converted to float32 and to int8 (PTQ on random pixels: the ranges
  change no kernel and no time; int8 in and out, so no QUANTIZE op at the cut) and timed
  interleaved; the per-stage cost is the difference of consecutive prefixes.
- `ops`: single layers at the shapes the demo's MobileNetV2 (192 px) runs: the stem conv, depthwise
  3x3 and pointwise 1x1 convs of each resolution, the last 1x1 conv; float32 vs int8 (int8 in and out).
- `io`: the exported interface: uint8 vs int8 pixels in, three outputs vs the probabilities only.

Measured 2026-12-03 on this machine (AMD EPYC under KVM, 2 cores shared with other jobs: the CPU
flags show AVX2 and FMA, no AVX-512, no VNNI; load average 3.4-5), demo forager (MobileNetV2,
192 px), int8 / float32 invoke at 1 thread, paired per round (tables in docs/benchmarks.md, "int8
on this CPU"):

    runtime  XNNPACK 1.10 (8.06 vs 8.63 ms), XNNPACK latest features 1.12, CompiledModel 1.15,
             YNNPACK not in this build, builtin kernels without XNNPACK 0.83 (29.2 vs 25.0 ms)
    io       uint8 in + 3 outputs 1.07, int8 in 1.05, probabilities only 1.08
    prefix   cumulative ratio from the input: stem + block 0 2.21, to 48 px 1.54, to 24 px 1.32,
             to 12 px 1.31 / 1.18, to 6 px 1.27 / 1.07, Conv_1 1.09, whole model 1.13 (an earlier
             version with the uint8 interface at each cut: 2.55, 1.65, 1.55, 1.43, 1.31, 1.22, 1.16,
             1.16, 1.15)
    ops      stem conv 3x3/2 on 3 channels 3.46; depthwise 3x3 at 96-24 px 1.18-1.28, at 12-6 px
             0.81-0.96; 1x1 with K = 16-32 at 96-24 px 1.36-1.70; 1x1 with K >= 96: 0.54-1.07

So the int8 file's floor here is ~1.1x float32, set by XNNPACK's AVX2 int8 kernels (no VNNI) in
the stem, the depthwise and the low-K 1x1 convs at high resolution; on a CPU with AVX512-VNNI the
same files gave 0.62x (../shared/MEASURED.md).
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

from mushroom import latency  # noqa: E402

# The ends of MobileNetV2's stages (resolution at 192 px): what `prefix` cuts after.
STAGES = (("stem + block 0", "expanded_conv_project_BN"), ("blocks 1-2 (48 px)", "block_2_add"),
          ("blocks 3-5 (24 px)", "block_5_add"), ("blocks 6-9 (12 px, 64)", "block_9_add"),
          ("blocks 10-12 (12 px, 96)", "block_12_add"), ("blocks 13-15 (6 px, 160)", "block_15_add"),
          ("block 16 (6 px, 320)", "block_16_project_BN"), ("Conv_1 (1280)", "out_relu"),
          ("head (pool, dense, softmax)", "head_probs"))


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    keep = [f for f in flags if f.startswith(("avx", "amx", "fma")) or "vnni" in f]
    return f"{name}: {' '.join(keep)}"


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def random_image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype(np.uint8)


class _Invoker:
    """A latency.Target from a bare invoke function (end to end = invoke: for runtime paths only)."""

    def __init__(self, run):
        self.run = run

    def set_input(self, image):
        pass

    def invoke(self):
        self.run()

    def end_to_end(self, image):
        self.run()


def _interpreter_target(path: Path, threads: int, **kwargs):
    from ai_edge_litert.interpreter import Interpreter

    from mushroom.quiet import native_stderr_silenced

    with native_stderr_silenced():
        it = Interpreter(model_path=str(path), num_threads=threads, **kwargs)
        it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    return _Invoker(it.invoke)


def _compiled_target(path: Path, threads: int, ynnpack: bool):
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import Options

    from mushroom.quiet import native_stderr_silenced

    with native_stderr_silenced():
        opts = Options(hardware_accelerators=HardwareAccelerator.CPU,
                       cpu_options=CpuOptions(num_threads=threads, enable_ynnpack=ynnpack))
        cm = CompiledModel.from_file(str(path), options=opts)
    ins, outs = cm.create_input_buffers(0), cm.create_output_buffers(0)
    return _Invoker(lambda: cm.run_by_index(0, ins, outs))


def part_runtime(files: dict[str, Path], rounds: int, warmup: int) -> None:
    from ai_edge_litert.interpreter import OpResolverType

    paths = {
        "XNNPACK (default)": lambda p: _interpreter_target(p, 1),
        "XNNPACK latest features": lambda p: _interpreter_target(p, 1, experimental_default_delegate_latest_features=True),
        "builtin kernels (no XNNPACK)": lambda p: _interpreter_target(
            p, 1, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
        "CompiledModel (XNNPACK)": lambda p: _compiled_target(p, 1, False),
        "CompiledModel (YNNPACK)": lambda p: _compiled_target(p, 1, True),
    }
    print(f"\n## runtime paths, 1 thread, invoke alone ({rounds} rounds, load {load_avg()})")
    print(f"{'path':<30} {'float32 ms':>10} {'int8 ms':>8} {'int8/float32 paired':>20}")
    for label, make in paths.items():
        try:
            targets = {"float32": make(files["float32"]), "int8": make(files["int8"])}
        except (RuntimeError, ValueError) as exc:
            print(f"{label:<30} not available ({str(exc).strip().splitlines()[0][:60]})")
            continue
        t = latency.interleaved(targets, random_image(8), rounds, warmup, 1)
        print(f"{label:<30} {t.median('float32', 'invoke'):>10.2f} {t.median('int8', 'invoke'):>8.2f} "
              f"{t.paired_ratio('int8', 'invoke', 'float32'):>20.2f}")


def _time_pairs(pairs: dict[str, dict[str, Path]], size: int, rounds: int, warmup: int) -> dict[str, latency.Timings]:
    """Every file of every pair in one interleaved pass (1 thread), invoke alone."""
    targets = {f"{name}|{fmt}": _interpreter_target(p, 1) for name, pair in pairs.items() for fmt, p in pair.items()}
    t = latency.interleaved(targets, random_image(size), rounds, warmup, 1)
    return t


def part_prefix(keras_path: Path, size: int, rounds: int, warmup: int, tmp: Path) -> None:
    from mushroom.keras_env import keras

    model = keras.models.load_model(keras_path, compile=False)
    pairs = {}
    started = time.perf_counter()
    for label, layer in STAGES:
        sub = keras.Model(model.input, model.get_layer(layer).output)
        pairs[label] = _convert_bare(sub, tmp, layer, high=255.0)
    print(f"\n## prefix bisection: input -> end of each stage, 1 thread, invoke alone "
          f"({len(pairs) * 2} files converted in {time.perf_counter() - started:.0f} s; {rounds} rounds, load {load_avg()})")
    t = _time_pairs(pairs, size, rounds, warmup)
    print(f"{'up to':<28} {'float32':>8} {'int8':>8} {'ratio':>6} | {'stage f32':>9} {'stage int8':>10} {'ratio':>6}")
    prev = (0.0, 0.0)
    for label, _ in STAGES:
        f, q = t.median(f"{label}|float32", "invoke"), t.median(f"{label}|int8", "invoke")
        df, dq = f - prev[0], q - prev[1]
        paired = t.paired_ratio(f"{label}|int8", "invoke", f"{label}|float32")
        print(f"{label:<28} {f:>8.2f} {q:>8.2f} {paired:>6.2f} | {df:>9.2f} {dq:>10.2f} "
              f"{(dq / df if df > 0.02 else float('nan')):>6.2f}")
        prev = (f, q)


# (label, input shape, layer factory) at the demo MobileNetV2's shapes at 192 px.
def _op_specs():
    from mushroom.keras_env import keras

    L = keras.layers
    return (
        ("stem conv 3x3/2, 192->96 px, 3->32", (192, 192, 3), lambda: L.Conv2D(32, 3, strides=2, padding="same")),
        ("depthwise 3x3, 96 px, 32 ch", (96, 96, 32), lambda: L.DepthwiseConv2D(3, padding="same")),
        ("pointwise 1x1, 96 px, 32->16", (96, 96, 32), lambda: L.Conv2D(16, 1)),
        ("expand 1x1, 96 px, 16->96", (96, 96, 16), lambda: L.Conv2D(96, 1)),
        ("depthwise 3x3/2, 96->48 px, 96 ch", (96, 96, 96), lambda: L.DepthwiseConv2D(3, strides=2, padding="same")),
        ("depthwise 3x3, 48 px, 144 ch", (48, 48, 144), lambda: L.DepthwiseConv2D(3, padding="same")),
        ("expand 1x1, 48 px, 24->144", (48, 48, 24), lambda: L.Conv2D(144, 1)),
        ("project 1x1, 48 px, 144->24", (48, 48, 144), lambda: L.Conv2D(24, 1)),
        ("depthwise 3x3, 24 px, 192 ch", (24, 24, 192), lambda: L.DepthwiseConv2D(3, padding="same")),
        ("expand 1x1, 24 px, 32->192", (24, 24, 32), lambda: L.Conv2D(192, 1)),
        ("depthwise 3x3, 12 px, 576 ch", (12, 12, 576), lambda: L.DepthwiseConv2D(3, padding="same")),
        ("expand 1x1, 12 px, 96->576", (12, 12, 96), lambda: L.Conv2D(576, 1)),
        ("depthwise 3x3, 6 px, 960 ch", (6, 6, 960), lambda: L.DepthwiseConv2D(3, padding="same")),
        ("expand 1x1, 6 px, 160->960", (6, 6, 160), lambda: L.Conv2D(960, 1)),
        ("Conv_1 1x1, 6 px, 320->1280", (6, 6, 320), lambda: L.Conv2D(1280, 1)),
    )


def _convert_bare(model, folder: Path, name: str, high: float = 6.0) -> dict[str, Path]:
    """float32 and int8 files of `model` with an int8 interface (int8 in, int8 out): no QUANTIZE
    op at either end, so the int8 file times the kernels alone. Calibrated on uniform [0, high]."""
    from mushroom.keras_env import tf

    reps = np.random.default_rng(0).uniform(0, high, (8, *model.input_shape[1:])).astype(np.float32)
    out = {"float32": folder / f"{name}-float32.tflite", "int8": folder / f"{name}-int8.tflite"}
    out["float32"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([r[None]] for r in reps)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    out["int8"].write_bytes(converter.convert())
    return out


def part_ops(rounds: int, warmup: int, tmp: Path) -> None:
    """Single layers (with the ReLU6 MobileNetV2 has after most, fused into the op), each file with
    an int8 interface, so nothing but the layer runs."""
    from mushroom.keras_env import keras

    from mushroom.quiet import native_stderr_silenced

    started = time.perf_counter()
    pairs = {}
    with native_stderr_silenced():
        for i, (label, shape, make) in enumerate(_op_specs()):
            inp = keras.Input(shape)
            pairs[label] = _convert_bare(keras.Model(inp, keras.layers.ReLU(6.0)(make()(inp))), tmp, f"op{i}")
    print(f"\n## single ops, 1 thread, invoke alone ({len(pairs) * 2} files converted in "
          f"{time.perf_counter() - started:.0f} s; {rounds} rounds, load {load_avg()})")
    print(f"{'op':<38} {'float32 ms':>10} {'int8 ms':>8} {'int8/float32 paired':>20}")
    total = {"float32": 0.0, "int8": 0.0}
    for label, pair in pairs.items():   # one pass per op: inputs differ in shape
        targets = {fmt: _interpreter_target(p, 1) for fmt, p in pair.items()}
        t = latency.interleaved(targets, random_image(8), rounds, warmup, 1)
        for fmt in total:
            total[fmt] += t.median(fmt, "invoke")
        print(f"{label:<38} {t.median('float32', 'invoke'):>10.3f} {t.median('int8', 'invoke'):>8.3f} "
              f"{t.paired_ratio('int8', 'invoke', 'float32'):>20.2f}")
    print(f"{'sum':<38} {total['float32']:>10.3f} {total['int8']:>8.3f} {total['int8'] / total['float32']:>20.2f}")


def part_io(keras_path: Path, size: int, rounds: int, warmup: int, tmp: Path) -> None:
    """The full model as PTQ int8 with: uint8 in, three outputs (as exported); int8 in; probs only."""
    from mushroom.keras_env import keras, tf
    from mushroom.models import with_outputs

    model = keras.models.load_model(keras_path, compile=False)
    reps = np.random.default_rng(0).integers(0, 256, (8, size, size, 3)).astype(np.float32)

    def conv(m, in_type, multi):
        served = with_outputs(m) if multi else m
        converter = tf.lite.TFLiteConverter.from_keras_model(served)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([r[None]] for r in reps)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = in_type
        converter.inference_output_type = tf.uint8 if in_type == tf.uint8 else tf.int8
        return converter.convert()

    started = time.perf_counter()
    files = {}
    f32 = tf.lite.TFLiteConverter.from_keras_model(with_outputs(model)).convert()
    files["float32"] = tmp / "io-float32.tflite"
    files["float32"].write_bytes(f32)
    for name, in_type, multi in (("uint8 in, 3 outputs", tf.uint8, True), ("int8 in, 3 outputs", tf.int8, True),
                                 ("uint8 in, probs only", tf.uint8, False)):
        files[name] = tmp / f"io-{len(files)}-variant.tflite"
        files[name].write_bytes(conv(model, in_type, multi))
    print(f"\n## interface variants (PTQ int8), 1 thread ({len(files)} files converted in "
          f"{time.perf_counter() - started:.0f} s; {rounds} rounds, load {load_avg()})")
    targets = {k: _interpreter_target(p, 1) for k, p in files.items()}
    t = latency.interleaved(targets, random_image(size), rounds, warmup, 1)
    print(f"{'file':<24} {'invoke ms':>9} {'/float32 paired':>16}")
    for k in files:
        print(f"{k:<24} {t.median(k, 'invoke'):>9.2f} {t.paired_ratio(k, 'invoke', 'float32'):>16.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-folder", type=Path, required=True, help="a quantized model folder (model.keras, tflite/)")
    p.add_argument("--parts", nargs="*", default=["runtime", "prefix", "ops", "io"],
                   choices=["runtime", "prefix", "ops", "io"])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args()
    from mushroom.modelio import ModelFolder, read_meta

    folder = ModelFolder(args.model_folder)
    size = int(read_meta(folder.path)["image_size"])
    print(f"{cpu_flags()}; {os.cpu_count()} cores; load {load_avg()}")
    files = {"float32": folder.tflite("float32"), "int8": folder.tflite("qat_int8")}
    with tempfile.TemporaryDirectory(prefix="int8-profile-") as tmp:
        tmp = Path(tmp)
        if "runtime" in args.parts:
            part_runtime(files, args.rounds, args.warmup)
        if "prefix" in args.parts:
            part_prefix(folder.model_file, size, args.rounds, args.warmup, tmp)
        if "ops" in args.parts:
            part_ops(args.rounds, args.warmup, tmp)
        if "io" in args.parts:
            part_io(folder.model_file, size, args.rounds, args.warmup, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
