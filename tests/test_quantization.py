"""The quantization stage end to end on a tiny model trained on real photos (../shared when present):
QAT fine-tune, every TFLite format (each converted in a child process), the agreement check."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mushroom import manifest as mf
from mushroom.errors import UserError
from tests.conftest import _make_photo_folder

SIZE = 32
SPECIES = ["Amanita muscaria", "Boletus edulis", "Hypholoma fasciculare"]
FORMATS = ["float32", "dynamic", "float16", "ptq_int8", "qat_int8"]


def make_data_dir(root, per_species: int = 20):
    """A data folder with a project manifest: photos split train/val/test by their date group."""
    folder = _make_photo_folder(root, SPECIES, per_species)
    rows = []
    for i, line in enumerate((folder / "manifest.csv").read_text().splitlines()[1:]):
        path, species, date, _ = line.split(",")
        split = {3: "val", 4: "test"}.get(i % 5, "train")
        rows.append({"photo_id": i, "species": species, "split": split, "path": path})
    mf.write_manifest(mf.manifest_path(folder), rows)
    return folder


def train_tiny(data_dir, epochs: int = 40):
    """A tiny model fitted to the training photos until its predictions are decisive (not a tie
    between near-uniform probabilities, where top-1 agreement would measure noise)."""
    from mushroom.keras_env import keras
    from mushroom.models import build_model
    from mushroom.quantization import load_split

    keras.utils.set_random_seed(0)
    x, y, _ = load_split(data_dir, "train", SPECIES, SIZE)
    model = build_model("tiny", len(SPECIES), SIZE)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=12, verbose=0)
    return model


def tiny_meta():
    return {"model_name": "tiny", "run_name": "test", "class_names": SPECIES, "image_size": SIZE,
            "preprocessing": "tiny", "input_range": [0, 255], "species": [], "weights": None, "seed": 0}


def keras_references(folder, x):
    """Probabilities of the float Keras model and of the saved QAT model on images x."""
    from mushroom.modelio import load_model_folder
    from mushroom.quantization import load_qat_model

    model, _ = load_model_folder(folder)
    qat = load_qat_model(model, folder / "qat" / "model.keras")
    return model.predict(x.astype("float32"), verbose=0), qat.predict(x.astype("float32"), verbose=0)


# How far (max |delta prob|) each file may be from the Keras model it came from (the QAT model for
# qat_int8). Measured on the 12 validation photos: float32 3e-7, dynamic 0.004, float16 0.001,
# ptq_int8 0.021, qat_int8 0.004-0.013. A file fed wrongly scaled, transposed or BGR pixels is
# 0.2-1.0 off.
TOLERANCE = {"float32": 1e-5, "dynamic": 0.02, "float16": 0.02, "ptq_int8": 0.06, "qat_int8": 0.06}


def constant_elements(path) -> dict[str, int]:
    """{dtype: number of elements} of the constant tensors (weights, biases, shapes) of a .tflite
    file: those ops read and no op writes, other than the input."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    written, read = set(), set()
    for op in interpreter._get_ops_details():
        written.update(int(i) for i in op["outputs"])
        read.update(int(i) for i in op["inputs"] if i >= 0)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    inputs = {d["index"] for d in interpreter.get_input_details()}
    counts: dict[str, int] = {}
    for index in read - written - inputs:
        dtype = str(np.dtype(details[index]["dtype"]))
        counts[dtype] = counts.get(dtype, 0) + int(np.prod(details[index]["shape"]))
    return counts


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """(cfg, model folder, data dir, report) after one full quantize_model_folder run."""
    from mushroom.config import load_config
    from mushroom.modelio import save_model_folder
    from mushroom.quantization import quantize_model_folder

    root = tmp_path_factory.mktemp("quant")
    data_dir = make_data_dir(root / "data")
    model = train_tiny(data_dir)
    folder = save_model_folder(root / "models" / "tiny", model, tiny_meta())
    cfg = load_config(None, ["wandb.mode=disabled", "quantize.qat_epochs=3", "quantize.qat_learning_rate=1.0e-4",
                             "quantize.representative_images=16", "quantize.check_images=12", "train.batch_size=12",
                             "quantize.parallel_conversions=2"])
    report = quantize_model_folder(cfg, folder, data_dir, log=lambda *a: None)
    return cfg, folder, data_dir, report


def test_every_format_is_written_and_computes_what_its_keras_model_computes(quantized):
    from mushroom.litert import TFLiteModel
    from mushroom.quantization import load_split

    _, folder, data_dir, report = quantized
    x, _, _ = load_split(data_dir, "val", SPECIES, SIZE)
    float_probs, qat_probs = keras_references(folder, x)
    # The photos are told apart: a file that ignored its input could not match these.
    assert np.abs(float_probs - float_probs.mean(0)).max() > 0.2
    for fmt in FORMATS:
        lite = TFLiteModel(folder / "tflite" / f"{fmt}.tflite")
        probs = lite.predict(x)
        assert probs.shape == (len(x), len(SPECIES)) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.02)
        reference = qat_probs if fmt == "qat_int8" else float_probs
        np.testing.assert_allclose(probs, reference, atol=TOLERANCE[fmt], rtol=0, err_msg=fmt)
        expected_dtype = np.uint8 if fmt.endswith("int8") else np.float32
        assert lite.input_dtype == expected_dtype, fmt
        assert report["sizes_bytes"][fmt] == lite.size_bytes


def test_int8_files_take_raw_pixels_and_weights_are_integer(quantized):
    from mushroom.litert import TFLiteModel

    _, folder, _, report = quantized
    for fmt in ("ptq_int8", "qat_int8"):
        lite = TFLiteModel(folder / "tflite" / f"{fmt}.tflite")
        # Rescaling is inside the model, so pixels map 1:1 onto uint8.
        assert lite.input_quantization == (1.0, 0)
        assert lite.output_dtype == np.uint8
    # int8 weights: the int8 files are smaller than float32 (the tiny model is mostly overhead,
    # so the ratio is weaker than the 0.3 of real backbones) ...
    assert report["sizes_bytes"]["ptq_int8"] < report["sizes_bytes"]["float32"]
    # ... because every kernel weight of the model is one int8 there, four bytes in the float32 file.
    from mushroom.modelio import load_model_folder

    model, _ = load_model_folder(folder)
    kernels = sum(int(np.prod(layer.kernel.shape)) for layer in model.layers if hasattr(layer, "kernel"))
    assert kernels > 1000
    float32 = constant_elements(folder / "tflite" / "float32.tflite")
    assert set(float32) <= {"float32", "int32"} and kernels <= float32["float32"] <= kernels + 64  # + biases
    ptq, qat = (constant_elements(folder / "tflite" / f"{fmt}.tflite") for fmt in ("ptq_int8", "qat_int8"))
    assert set(ptq) == set(qat) == {"int8", "int32"}                      # int32: biases and shapes
    assert ptq["int8"] == kernels and kernels <= qat["int8"] <= kernels + 8


def test_report_records_sizes_agreement_and_child_memory(quantized):
    from mushroom.litert import TFLiteModel
    from mushroom.quantization import load_split

    cfg, folder, data_dir, report = quantized
    on_disk = json.loads((folder / "quantize.json").read_text())
    assert on_disk["ok"] is True
    assert set(on_disk["sizes_mb"]) == set(FORMATS)
    for fmt in FORMATS:
        assert on_disk["sizes_mb"][fmt] == round((folder / "tflite" / f"{fmt}.tflite").stat().st_size / 1e6, 3)
        conv = report["conversions"][fmt]
        # Each child loaded TensorFlow, so its own peak is hundreds of MB; it ran within the stage's conversions.
        assert conv["peak_rss_mb"] > 200 and 0 < conv["seconds"] <= report["timings"]["convert_s"]
    # The agreement recorded is what the files give on the check photos, recomputed here against
    # the Keras models (the QAT model for qat_int8).
    check_x, _, rows = load_split(data_dir, "val", SPECIES, SIZE, limit=cfg.quantize.check_images, seed=cfg.seed)
    assert report["check_images"] == [r["path"] for r in rows] and len(rows) == 12
    float_probs, qat_probs = keras_references(folder, check_x)
    for fmt in FORMATS:
        probs = TFLiteModel(folder / "tflite" / f"{fmt}.tflite").predict(check_x)
        reference = qat_probs if fmt == "qat_int8" else float_probs
        recorded = on_disk["agreement"][fmt]
        assert recorded["images"] == 12
        assert recorded["agreement"] == pytest.approx(np.mean(probs.argmax(1) == reference.argmax(1)), abs=1e-4), fmt
        assert recorded["max_abs_dprob"] == pytest.approx(np.abs(probs - reference).max(), abs=1e-5), fmt
    assert (folder / "qat" / "model.keras").is_file()
    assert (folder / "tflite" / "config.resolved.yaml").is_file()
    assert not (folder / "tflite" / ".representative.npy").exists()


def test_int8_files_of_the_quantize_stage_have_no_float_tensor(quantized):
    _, _, _, report = quantized
    assert report["float_tensors"] == {"ptq_int8": [], "qat_int8": []}


# The qat_int8 file is converted without calibration, so an op stays float wherever QAT left a
# tensor without a range (models.rebuild_for_int8). Untrained weights at 32 px: the op kinds, not
# the values, decide which ops stay float. A whole B0 or MobileNetV2 takes 100-200 s to convert on
# 2 cores, so each is cut after its first blocks that hold every kind of layer it has (B0: the
# Rescaling + Normalization input, fused MBConv with residual Add, MBConv with squeeze-excite;
# MobileNetV2: the Rescaling with offset, inverted residual with Add), with the usual head on top.
# The whole models were measured with benchmarks/tflite_latency.py: no float tensor either.
FIRST_BLOCKS = {"tiny": None, "efficientnet_v2_b0": "block4a_project_bn", "mobilenet_v2": "block_2_add"}


def first_blocks(name: str):
    from mushroom.keras_env import keras
    from mushroom.models import build_model

    model = build_model(name, 3, SIZE, weights=None)
    last = FIRST_BLOCKS[name]
    if last is None:
        return model
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(model.get_layer(last).output)
    logits = keras.layers.Dense(3, name="head_logits")(x)
    return keras.Model(model.input, keras.layers.Activation("softmax", name="head_probs")(logits), name=name)


@pytest.mark.parametrize("name", list(FIRST_BLOCKS))
def test_qat_int8_file_is_integer_from_input_to_outputs(name, tmp_path):
    from mushroom import qat_configs
    from mushroom.litert import TFLiteModel
    from mushroom.quantization import convert, float_ops

    model = first_blocks(name)
    x = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3)).astype(np.float32)
    qat = qat_configs.quantize(model)
    qat_configs.calibrate_ranges(qat, model, x)
    path = tmp_path / "qat_int8.tflite"
    path.write_bytes(convert(qat, "qat_int8"))
    assert float_ops(path) == []                      # no float32 tensor, hence no DEQUANTIZE either
    lite = TFLiteModel(path)
    assert lite.input_dtype == np.uint8 and lite.output_dtype == np.uint8
    assert lite.run(x[:2]).keys() == {"probs", "logits", "embedding"}


def test_float_ops_finds_what_the_rebuild_prevents(tmp_path, monkeypatch):
    """Without models.rebuild_for_int8 the squeeze-excite reduce conv (swish inside the Conv2D: no
    QAT range before the activation) stays float behind a DEQUANTIZE: the check above can fail."""
    from mushroom import qat_configs
    from mushroom.models import build_model
    from mushroom.quantization import convert, float_ops

    monkeypatch.setattr(qat_configs, "rebuild_for_int8", lambda model: model)
    model = build_model("tiny", 3, SIZE)
    path = tmp_path / "qat_int8.tflite"
    path.write_bytes(convert(qat_configs.quantize(model), "qat_int8"))
    found = float_ops(path)
    assert any(op.startswith("DEQUANTIZE ") for op in found)
    assert any("se_reduce" in op for op in found)


def test_float32_file_matches_keras_and_qat_int8_agrees_on_real_photos(quantized):
    cfg, _, _, report = quantized
    agreement = report["agreement"]
    assert agreement["float32"]["agreement"] == 1.0
    assert agreement["float32"]["max_abs_dprob"] < 1e-4
    # Every other file agrees with its Keras model on (nearly) every photo, within its int8/float16 error.
    for fmt in ("dynamic", "float16", "ptq_int8", "qat_int8"):
        assert agreement[fmt]["agreement"] >= cfg.quantize.min_agreement, fmt
        assert agreement[fmt]["max_abs_dprob"] <= TOLERANCE[fmt], fmt
    assert agreement["qat_int8"]["images"] == 12


def test_rerun_keeps_existing_files_and_force_converts_again(quantized, tmp_path):
    from mushroom.quantization import quantize_model_folder

    cfg, folder, data_dir, _ = quantized
    before = {fmt: (folder / "tflite" / f"{fmt}.tflite").stat().st_mtime_ns for fmt in FORMATS}
    lines = []
    report = quantize_model_folder(cfg, folder, data_dir, log=lines.append)
    after = {fmt: (folder / "tflite" / f"{fmt}.tflite").stat().st_mtime_ns for fmt in FORMATS}
    assert before == after
    assert sum("keeping" in str(l) for l in lines) == len(FORMATS)
    # Conversion records of the first run are carried over.
    assert set(report["conversions"]) == set(FORMATS)


def test_qat_model_reloads_identically_and_float_model_is_untouched(quantized):
    from mushroom.modelio import load_model_folder
    from mushroom.quantization import load_qat_model, load_split, qat_finetune, save_qat_model

    cfg, folder, data_dir, _ = quantized
    model, _ = load_model_folder(folder)
    x, y, _ = load_split(data_dir, "train", SPECIES, SIZE)
    before = model.predict(x[:6].astype("float32"), verbose=0)
    qat = qat_finetune(model, x, y, cfg.quantize, batch_size=12, verbose=0)
    np.testing.assert_array_equal(model.predict(x[:6].astype("float32"), verbose=0), before)
    path = save_qat_model(qat, folder.parent / "other" / "qat.keras")
    again = load_qat_model(load_model_folder(folder)[0], path)
    np.testing.assert_array_equal(again.predict(x[:6].astype("float32"), verbose=0),
                                  qat.predict(x[:6].astype("float32"), verbose=0))


def test_low_qat_agreement_is_an_error(quantized):
    from mushroom.quantization import agreement_check, load_split

    cfg, folder, data_dir, _ = quantized
    x, _, _ = load_split(data_dir, "val", SPECIES, SIZE)
    from mushroom.litert import TFLiteModel

    probs = TFLiteModel(folder / "tflite" / "qat_int8.tflite").predict(x)
    wrong = np.roll(probs, 1, axis=1)  # a reference that disagrees on every image
    files = {"qat_int8": folder / "tflite" / "qat_int8.tflite"}
    with pytest.raises(UserError, match="agrees with its QAT Keras model on only"):
        agreement_check(files, {"qat_int8": wrong}, x, cfg.quantize.min_agreement, log=lambda *a: None)
    # The same numbers pass against the probabilities the file itself produced.
    result = agreement_check(files, {"qat_int8": probs}, x, cfg.quantize.min_agreement, log=lambda *a: None)
    assert result["qat_int8"]["agreement"] == 1.0


def test_missing_split_and_zero_qat_epochs_are_user_errors(quantized, tmp_path):
    from mushroom.config import load_config
    from mushroom.quantization import load_split, qat_finetune

    _, folder, data_dir, _ = quantized
    with pytest.raises(UserError, match="no 'val' photos"):
        load_split(data_dir, "val", ["Boletus satanas"], SIZE)
    with pytest.raises(UserError, match="does not exist"):
        load_split(tmp_path, "train", SPECIES, SIZE)
    cfg = load_config(None, ["quantize.qat_epochs=0"])
    with pytest.raises(UserError, match="qat_epochs"):
        qat_finetune(None, np.zeros((1, SIZE, SIZE, 3), np.uint8), np.zeros(1), cfg.quantize)


def test_saved_model_conversion_gives_what_the_keras_converter_gives(tmp_path):
    """The stage traces a model once (export_saved_model) and converts every format from that
    SavedModel; the files must compute exactly what TFLiteConverter.from_keras_model's do, with
    the same signature (input "image", outputs named after their layers)."""
    from mushroom import qat_configs
    from mushroom.keras_env import tf
    from mushroom.litert import TFLiteModel
    from mushroom.models import build_model, with_outputs
    from mushroom.quantization import convert

    model = build_model("tiny", 3, SIZE)
    x = np.random.default_rng(1).integers(0, 256, (6, SIZE, SIZE, 3)).astype(np.float32)
    qat = qat_configs.quantize(model)
    qat_configs.calibrate_ranges(qat, model, x)
    for fmt, source in (("float32", model), ("qat_int8", qat)):
        keras_path = tmp_path / f"keras_{fmt}.tflite"
        converter = tf.lite.TFLiteConverter.from_keras_model(with_outputs(source))
        if fmt == "qat_int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.inference_input_type = converter.inference_output_type = tf.uint8
        keras_path.write_bytes(converter.convert())
        saved_path = tmp_path / f"saved_{fmt}.tflite"
        saved_path.write_bytes(convert(source, fmt))
        old, new = TFLiteModel(keras_path), TFLiteModel(saved_path)
        assert new._interpreter.get_signature_list() == old._interpreter.get_signature_list()
        a, b = old.run(x), new.run(x)
        assert a.keys() == b.keys() == {"probs", "logits", "embedding"}
        for role in a:
            np.testing.assert_array_equal(a[role], b[role])


def test_qat_fine_tune_trains_exposure_photos_towards_the_uniform_answer(quantized):
    """The exposure loss reaches the QAT model: at a rate high enough to move in a few steps, the
    fine-tune with photos of other species (here: the known photos turned upside down and
    colour-inverted, which no class looks like) leaves those photos less confident than the same
    fine-tune without them."""
    from mushroom.modelio import load_model_folder
    from mushroom.quantization import load_split, qat_finetune

    cfg, folder, data_dir, _ = quantized
    model, _ = load_model_folder(folder)
    x, y, _ = load_split(data_dir, "train", SPECIES, SIZE)
    other = (255 - x[:, ::-1]).astype(np.uint8)
    qcfg = dict(cfg.quantize, qat_learning_rate=3e-3, qat_epochs=3)
    qcfg = type(cfg.quantize)(qcfg)
    plain = qat_finetune(model, x, y, qcfg, batch_size=8, verbose=0)
    exposed = qat_finetune(model, x, y, qcfg, batch_size=8, verbose=0, exposure=other, exposure_weight=2.0)
    sure = lambda m: float(m.predict(other.astype("float32"), verbose=0).max(1).mean())
    assert sure(exposed) < sure(plain) - 0.05
    # and the known photos stay more confident than the others: the fine-tune separates the two
    known = float(exposed.predict(x.astype("float32"), verbose=0).max(1).mean())
    assert known > sure(exposed) + 0.05
