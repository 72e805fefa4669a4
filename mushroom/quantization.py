"""Quantization of a trained model folder: QAT fine-tune, every TFLite format, and the agreement check.

Writes beside the model (see README, "A model folder"):
  qat/model.keras          the quantization-aware model (weights; load with load_qat_model)
  tflite/<format>.tflite   float32, dynamic, float16, ptq_int8, qat_int8 (cfg.quantize.formats)
  quantize.json            sizes, agreement with the Keras models, peak RSS and time per conversion
  tflite/config.resolved.yaml  the config of this run (the training run's own stays beside the model)

Each model is traced once into a SavedModel (export_saved_model); each format is converted from it
in its own child process (`python -m mushroom.quantization --child ...`): converting several
formats of V2-M in one process peaked near this machine's 24 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mushroom.config import EXPORT_FORMATS, save_resolved
from mushroom.errors import UserError
from mushroom.fileio import atomic_write, replacing, replacing_folder, write_json
from mushroom.manifest import load_split, manifest_path, read_manifest
from mushroom.modelio import ModelFolder, load_model_folder, read_meta

PROJECT_ROOT = Path(__file__).resolve().parents[1]
INT8_FORMATS = ("ptq_int8", "qat_int8")
FLOAT_FORMATS = ("float32", "dynamic", "float16")


# --- QAT -------------------------------------------------------------------------------------

def qat_finetune(model, images: np.ndarray, labels: np.ndarray, qcfg, batch_size: int = 16, seed: int = 0,
                 flip: bool = True, verbose: int = 2, history: dict | None = None,
                 exposure: np.ndarray | None = None, exposure_weight: float = 0.0):
    """The quantization-aware copy of `model`, fine-tuned for qcfg.qat_epochs at qcfg.qat_learning_rate
    on (images [0, 255], labels) with random horizontal flips. The float model is not changed.
    `history`, when given, receives the per-epoch loss/accuracy. `exposure`: photos of species the
    model must not know, trained towards the uniform distribution with `exposure_weight` (the same
    outlier-exposure loss as the float training, so the fine-tune does not undo it)."""
    from mushroom import qat_configs
    from mushroom.keras_env import keras, tf
    from mushroom.models import rebuild_for_int8

    if qcfg.qat_epochs < 1:
        raise UserError("quantize.qat_epochs is 0, which leaves the QAT model's int8 ranges uncalibrated: "
                        "set it to 1 or more, or drop qat_int8 from quantize.formats")
    keras.utils.set_random_seed(seed)
    # Rebuilt once here: quantize() and calibrate_ranges() then find nothing left to split and only walk its config.
    rebuilt = rebuild_for_int8(model)
    qat = qat_configs.quantize(rebuilt)
    qat_configs.calibrate_ranges(qat, rebuilt, images[:256])
    # Batch norm in inference mode with frozen statistics: a short QAT fine-tune that updates the
    # moving statistics from a few small batches of fake-quantized activations wrecked the demo b0
    # (val top-1 0.22 -> 0.03 after one epoch). The conv kernels and ranges still adapt.
    for layer in qat.layers:
        if isinstance(getattr(layer, "layer", None), keras.layers.BatchNormalization):
            layer.trainable = False
    qat.compile(optimizer=keras.optimizers.Adam(qcfg.qat_learning_rate),
                loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    n_classes = int(model.output_shape[-1])
    targets = np.eye(n_classes, dtype=np.float32)[labels]
    weights = np.ones(len(images), np.float32)
    if exposure is not None and len(exposure) and exposure_weight > 0:
        images = np.concatenate([images, exposure])
        targets = np.concatenate([targets, np.full((len(exposure), n_classes), 1.0 / n_classes, np.float32)])
        weights = np.concatenate([weights, np.full(len(exposure), exposure_weight, np.float32)])

    def batches():
        while True:
            order = rng.permutation(len(images))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                x = images[idx].astype(np.float32)
                if flip:
                    mirror = rng.random(len(idx)) < 0.5
                    x[mirror] = x[mirror, :, ::-1]
                yield x, targets[idx], weights[idx]

    steps = int(np.ceil(len(images) / batch_size))
    with tf.device("/CPU:0"):
        fit = qat.fit(batches(), steps_per_epoch=steps, epochs=qcfg.qat_epochs, verbose=verbose)
    if history is not None:
        history.update({k: [round(float(v), 5) for v in vals] for k, vals in fit.history.items()})
    return qat


def save_qat_model(qat, path: str | os.PathLike) -> Path:
    with replacing(path) as tmp:
        qat.save(tmp)
    return Path(path)


def load_qat_model(float_model, path: str | os.PathLike):
    """A saved QAT model: quantize the float architecture again, then load the saved weights.
    (keras.models.load_model fails on tfmot's QuantizeLayer in the .keras format: it expects 5
    variables and the file holds 3; loading the weights into a fresh quantize_apply works.)"""
    from mushroom import qat_configs

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: run quantize_qat.py on the model folder (with --force to redo it)")
    qat = qat_configs.quantize(float_model)
    try:
        qat.load_weights(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} does not match the model's architecture ({str(exc).splitlines()[0]}): "
                        "rerun quantize_qat.py with --force") from None
    return qat


# --- conversion (in a child process) ---------------------------------------------------------

SERVING_SIGNATURE = "serving_default"


def export_saved_model(model, directory: str | os.PathLike) -> Path:
    """The inference graph of a Keras model (float or QAT) as a plain SavedModel that the converter
    reads: one signature, input "image", one output per role of models.with_outputs named after
    its layer (head_probs, head_logits, head_pool), the names every .tflite file carries.

    Why not TFLiteConverter.from_keras_model: it first writes a Keras SavedModel, which traces every
    layer's call functions; measured on the demo MobileNetV2 that is ~30 of a 36 s conversion, paid
    again for every format. Traced once here, each format then converts in ~5 s, and the files
    are the same bytes (all five formats compared; only the source-type byte of the converter's
    metadata differs) with identical outputs."""
    from mushroom.keras_env import tf
    from mushroom.models import with_outputs

    served = with_outputs(model)
    names = {role: tensor.node.layer.name for role, tensor in served.output.items()}
    spec = tf.TensorSpec([None, *served.input_shape[1:]], tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def serve(image):
        outputs = served(image, training=False)
        return {names[role]: outputs[role] for role in outputs}

    # A bare module holding only the variables: saving the Keras model itself would bring back the
    # per-layer tracing this function exists to avoid.
    module = tf.Module()
    module.weights = list(served.variables)
    module.serve = serve
    with replacing_folder(directory) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={SERVING_SIGNATURE: serve.get_concrete_function()})
    return Path(directory)


def convert_saved_model(directory: str | os.PathLike, fmt: str, representative: np.ndarray | None = None) -> bytes:
    """The .tflite bytes, in one format, of a SavedModel written by export_saved_model. ptq_int8
    needs `representative` (uint8 images); both int8 formats take uint8 pixels [0, 255] and return
    uint8 outputs."""
    from mushroom.keras_env import tf

    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format '{fmt}': choose from {', '.join(EXPORT_FORMATS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(directory), signature_keys=[SERVING_SIGNATURE])
    if fmt != "float32":
        # Also for qat_int8: without Optimize.DEFAULT the QAT file keeps float weights and
        # fake-quant pairs and runs ~20x slower.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if fmt == "ptq_int8":
        if representative is None or len(representative) == 0:
            raise UserError("ptq_int8 needs representative images (quantize.representative_images)")
        reps = np.asarray(representative, np.float32)

        def representative_dataset():
            for image in reps:
                yield [image[None]]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if fmt == "qat_int8":
        # No representative dataset and no TFLITE_BUILTINS_INT8 here, measured on TF 2.21: with
        # them the converter calibrates on top of the QAT ranges and mixes the two (a conv's
        # bias scale came from calibration, its input scale from QAT: 11x off), and the file
        # agreed with its Keras model on 33-75 % of photos; without them it agrees on 100 %.
        # Without calibration an op stays float unless QAT gave every tensor it touches a range:
        # models.rebuild_for_int8 (applied by qat_configs.quantize) makes that so for every
        # registered model, and float_ops() finds any op left float.
        pass
    if fmt in INT8_FORMATS:
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def convert(model, fmt: str, representative: np.ndarray | None = None) -> bytes:
    """The .tflite bytes of a Keras model (float, or QAT for qat_int8) in one format, in this
    process: export_saved_model to a temporary folder, then convert_saved_model."""
    with tempfile.TemporaryDirectory(prefix="savedmodel-") as tmp:
        return convert_saved_model(export_saved_model(model, Path(tmp) / "model"), fmt, representative)


def float_ops(path: str | os.PathLike) -> list[str]:
    """Every float32 tensor of a .tflite file, as "OP tensor" with the op that writes it (or, for a
    constant or the input, the first op that reads it): empty for a fully integer file. DEQUANTIZE
    always writes float32, so a dequantize/quantize pair inside an int8 graph is listed here too.
    Read through the LiteRT interpreter without its default delegate (which would merge the ops)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    floats = {t["index"]: t["name"] for t in interpreter.get_tensor_details() if np.dtype(t["dtype"]) == np.float32}
    writer, reader = {}, {}
    for op in interpreter._get_ops_details():
        for index in op["outputs"]:
            writer.setdefault(int(index), op["op_name"])
        for index in op["inputs"]:
            reader.setdefault(int(index), op["op_name"])
    return [f"{writer.get(i) or reader.get(i, '-')} {name}" for i, name in sorted(floats.items())]


def _peak_rss_mb() -> float:
    """This process's own peak resident memory. VmHWM belongs to the address space made at exec;
    getrusage's ru_maxrss is not used because Linux carries it over from the forking parent, so
    every child would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux; an upper bound


def _child_main(argv: list[str]) -> int:
    """Entry point of one conversion child: convert a SavedModel, write the file atomically,
    write {seconds, peak_rss_mb} to --result."""
    p = argparse.ArgumentParser(prog="python -m mushroom.quantization --child")
    p.add_argument("--child", action="store_true")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--saved-model", required=True, help="folder written by export_saved_model")
    p.add_argument("--representative", help=".npy of uint8 images, for ptq_int8")
    p.add_argument("--out", required=True)
    p.add_argument("--result", required=True)
    args = p.parse_args(argv)
    start = time.perf_counter()
    reps = np.load(args.representative) if args.representative else None
    data = convert_saved_model(args.saved_model, args.format, reps)
    atomic_write(args.out, data)
    write_json(args.result, {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)})
    return 0


def export_format(fmt: str, saved_model: str | os.PathLike, out: str | os.PathLike,
                  representative_file: str | os.PathLike | None = None) -> dict:
    """Convert a SavedModel (export_saved_model) in a child process; {"seconds", "peak_rss_mb"} of
    that child (its own peak, see _peak_rss_mb)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convert-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "mushroom.quantization", "--child", "--format", fmt,
               "--saved-model", str(saved_model), "--out", str(out), "--result", str(result)]
        if representative_file is not None:
            cmd += ["--representative", str(representative_file)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or not result.is_file():
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            raise UserError(f"converting to {fmt} failed (exit {proc.returncode}); last output:\n{tail}")
        return json.loads(result.read_text())


# --- agreement -------------------------------------------------------------------------------

def agreement_check(tflite_files: dict[str, str | os.PathLike], reference_probs: dict[str, np.ndarray],
                    images: np.ndarray, min_agreement: float, num_threads: int | None = None,
                    log=print) -> dict:
    """Run each TFLite file on `images` and compare with the probabilities of the Keras model it
    came from (reference_probs[fmt]): top-1 agreement and max |delta prob|, printed per format.
    A qat_int8 file agreeing on fewer than `min_agreement` of the images raises UserError."""
    results = measure_agreement(tflite_files, reference_probs, images, num_threads=num_threads, log=log)
    enforce_agreement(results, min_agreement)
    return results


def measure_agreement(tflite_files, reference_probs, images, num_threads=None, log=print) -> dict:
    """{format: {agreement, max_abs_dprob, images}} (see agreement_check), printed as a table."""
    from mushroom.litert import TFLiteModel

    results = {}
    log(f"{'format':<10} {'agreement':>9} {'max|dprob|':>10}  (on {len(images)} validation images)")
    for fmt, path in tflite_files.items():
        probs = TFLiteModel(path, num_threads=num_threads).predict(images)
        ref = reference_probs[fmt]
        agree = float(np.mean(probs.argmax(1) == ref.argmax(1)))
        dmax = float(np.abs(probs - ref).max())
        results[fmt] = {"agreement": round(agree, 4), "max_abs_dprob": round(dmax, 5), "images": len(images)}
        log(f"{fmt:<10} {agree:>9.3f} {dmax:>10.4f}")
    return results


def enforce_agreement(results: dict, min_agreement: float) -> None:
    qat = results.get("qat_int8")
    if qat is not None and qat["agreement"] < min_agreement:
        raise UserError(f"the qat_int8 file agrees with its QAT Keras model on only {qat['agreement']:.1%} of "
                        f"{qat['images']} validation images (quantize.min_agreement is {min_agreement:.0%}): "
                        "the int8 conversion is broken; rerun with --force, or more quantize.qat_epochs")


# --- the stage -------------------------------------------------------------------------------
def _exposure_images(cfg, data_dir, class_names: list[str], size: int, limit: int, seed: int) -> np.ndarray:
    """A seeded subset of at most `limit` of the outlier-exposure photos the float model trained
    with (dataset.exposure_examples). The QAT fine-tune (one epoch at a 60x smaller rate) only has to
    keep what the float training learnt, not learn it again, and its cost grows with every photo (the
    demo's two QAT fine-tunes, side by side: 148 s and 196 s with all 238 exposure photos, 127 s and
    130 s without any)."""
    from mushroom.dataset import exposure_examples
    from mushroom.images import load_image

    paths, _ = exposure_examples(cfg, read_manifest(manifest_path(data_dir)), class_names, data_dir)
    if len(paths) > limit:
        paths = [paths[i] for i in np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))]
    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([load_image(p, size) for p in paths])


def quantize_model_folder(cfg, model_folder: str | os.PathLike, data_dir: str | os.PathLike,
                          force: bool = False, log=print) -> dict:
    """QAT fine-tune, export every format of cfg.quantize.formats, check agreement; writes
    qat/model.keras, tflite/<format>.tflite, quantize.json, tflite/config.resolved.yaml.
    Existing files are kept (a rerun resumes) unless force=True. Returns the quantize.json dict."""
    from mushroom.keras_env import keras  # noqa: F401  (TF only after the cheap checks below)

    folder = ModelFolder(model_folder)
    meta = read_meta(folder)
    qcfg = cfg.quantize
    formats = list(qcfg.formats)
    class_names, size = list(meta["class_names"]), int(meta["image_size"])
    seed = int(cfg.seed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    model, meta = load_model_folder(folder)
    train_x, train_y, _ = load_split(data_dir, "train", class_names, size)
    reps = train_x[np.sort(np.random.default_rng(seed).choice(len(train_x), min(len(train_x), qcfg.representative_images), replace=False))]
    check_x, check_y, check_rows = load_split(data_dir, "val", class_names, size, limit=qcfg.check_images, seed=seed)
    timings["load_s"] = round(time.perf_counter() - t, 2)

    qat_file = folder.qat_model_file
    qat = None
    qat_history = None
    if "qat_int8" in formats:
        t = time.perf_counter()
        if qat_file.is_file() and not force:
            log(f"QAT model: reusing {qat_file}")
            qat = load_qat_model(model, qat_file)
        else:
            exposure = _exposure_images(cfg, data_dir, class_names, size, limit=len(train_x) // 2, seed=seed)
            log(f"QAT fine-tune: {qcfg.qat_epochs} epoch(s) at lr {qcfg.qat_learning_rate} on {len(train_x)} training images"
                + (f" and {len(exposure)} outlier-exposure photos (weight {cfg.open_set.exposure_weight:g})"
                   if len(exposure) else ""))
            qat_history = {}
            qat = qat_finetune(model, train_x, train_y, qcfg, batch_size=cfg.train.batch_size, seed=seed,
                               history=qat_history, exposure=exposure, exposure_weight=cfg.open_set.exposure_weight)
            save_qat_model(qat, qat_file)
        timings["qat_s"] = round(time.perf_counter() - t, 2)

    previous = folder.read_quantize_report() if not force else {}
    conversions = dict(previous.get("conversions", {}))
    folder.tflite_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for fmt in formats:
        if folder.tflite(fmt).is_file() and not force:
            log(f"{fmt}: keeping {folder.tflite(fmt)} (use --force to convert again)")
        else:
            todo.append(fmt)
    # Longest first: the QAT int8 conversion is the slowest, so started last it ran alone on one core
    # while the other idled. Same files either way.
    todo.sort(key=lambda fmt: fmt != "qat_int8")
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="savedmodel-") as tmp:
        # Traced once per model here, converted per format in child processes from the SavedModel.
        saved = {}
        if any(fmt != "qat_int8" for fmt in todo):
            saved["float"] = export_saved_model(model, Path(tmp) / "float-graph")
        if "qat_int8" in todo:
            saved["qat"] = export_saved_model(qat, Path(tmp) / "qat-graph")
        rep_file = Path(tmp) / "representative.npy"
        np.save(rep_file, reps)
        timings["export_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()

        def convert_one(fmt: str) -> None:
            out = folder.tflite(fmt)
            log(f"{fmt}: converting in a child process ...")
            conversions[fmt] = export_format(fmt, saved["qat" if fmt == "qat_int8" else "float"], out,
                                             representative_file=rep_file if fmt == "ptq_int8" else None)
            log(f"{fmt}: {out.stat().st_size / 1e6:.2f} MB in {conversions[fmt]['seconds']:.0f} s, "
                f"child peak RSS {conversions[fmt]['peak_rss_mb']:.0f} MB")

        # A conversion is mostly one busy core in its own process: running two at once halves the
        # wall time on a 2-core laptop, at twice the memory (quantize.parallel_conversions).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, qcfg.parallel_conversions)) as pool:
            for future in [pool.submit(convert_one, fmt) for fmt in todo]:
                future.result()
    timings["convert_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    float_probs = model.predict(check_x.astype(np.float32), verbose=0)
    reference = {fmt: float_probs for fmt in formats if fmt != "qat_int8"}
    if qat is not None:
        reference["qat_int8"] = qat.predict(check_x.astype(np.float32), verbose=0)
    files = {fmt: folder.tflite(fmt) for fmt in formats}
    report = {
        "model_folder": str(folder),
        "model_name": meta.get("model_name"),
        "image_size": size,
        "formats": formats,
        "files": {fmt: folder.relative(p) for fmt, p in files.items()},
        "sizes_bytes": {fmt: p.stat().st_size for fmt, p in files.items()},
        "sizes_mb": {fmt: round(p.stat().st_size / 1e6, 3) for fmt, p in files.items()},
        "conversions": {fmt: conversions[fmt] for fmt in formats if fmt in conversions},
        "check_images": [r["path"] for r in check_rows],
        "keras_top1_on_check": {"float": round(float(np.mean(float_probs.argmax(1) == check_y)), 4)},
        "qat": {"epochs": qcfg.qat_epochs, "learning_rate": qcfg.qat_learning_rate,
                "history": qat_history or previous.get("qat", {}).get("history")} if qat is not None else None,
        "timings": timings,
    }
    if qat is not None:
        report["keras_top1_on_check"]["qat"] = round(float(np.mean(reference["qat_int8"].argmax(1) == check_y)), 4)
    # Every tensor of an int8 file should be integer: a float one is an op the converter left float.
    report["float_tensors"] = {fmt: float_ops(files[fmt]) for fmt in formats if fmt in INT8_FORMATS}
    for fmt, found in report["float_tensors"].items():
        if found:
            log(f"{fmt}: {len(found)} float32 tensor(s) inside the int8 file: {', '.join(found[:5])}"
                + (" ..." if len(found) > 5 else ""))
    report["agreement"] = measure_agreement(files, reference, check_x, log=log)
    qat_agreement = report["agreement"].get("qat_int8", {}).get("agreement", 1.0)
    report["ok"] = qat_agreement >= qcfg.min_agreement
    timings["agreement_s"] = round(time.perf_counter() - t, 2)
    # Written before the check can fail, so the numbers behind the error are kept.
    folder.write_quantize_report(report)
    save_resolved(cfg, folder.tflite_dir)
    enforce_agreement(report["agreement"], qcfg.min_agreement)
    return report


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:
        sys.exit(_child_main(sys.argv[1:]))
    print("this module is run by quantize_qat.py; `python -m mushroom.quantization --child ...` converts one file",
          file=sys.stderr)
    sys.exit(2)
