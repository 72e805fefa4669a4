import json
from pathlib import Path

import numpy as np
import pytest

from mushroom.errors import UserError
from mushroom.modelio import ModelFolder, find_model_folders, load_model_folder, read_meta, save_model_folder


def test_saved_model_is_the_shippable_file_without_optimizer_state(tmp_path):
    from mushroom.keras_env import keras
    from mushroom.models import build_model

    model = build_model("tiny", 3, 32, hidden_units=20000)   # ~0.38 M parameters, 1.5 MB as float32
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)   # Adam now holds 2 more copies
    folder = save_model_folder(tmp_path / "m", model, {"model_name": "tiny", "class_names": ["a", "b", "c"]})
    size = (folder / "model.keras").stat().st_size
    params_bytes = model.count_params() * 4
    assert size < 1.3 * params_bytes
    loaded, meta = load_model_folder(folder)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert meta["class_names"] == ["a", "b", "c"] and "tensorflow" in meta["versions"]
    assert find_model_folders(tmp_path) == [folder]


def test_missing_or_broken_meta_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(UserError, match="model.keras is missing"):
        load_model_folder(tmp_path)


def test_the_layout_is_the_readme_table(tmp_path):
    """Every path ModelFolder gives, relative to the folder, is one the model-folder table of
    docs/pipeline.md names."""
    from mushroom.config import PROJECT_ROOT

    mf = ModelFolder(tmp_path / "demo-tiny")
    layout = {mf.model_file: "model.keras", mf.meta_file: "meta.json", mf.history_file: "history.json",
              mf.resolved_config: "config.resolved.yaml", mf.backup_dir: "backup", mf.qat_model_file: "qat/model.keras",
              mf.tflite("qat_int8"): "tflite/qat_int8.tflite", mf.tflite_config: "tflite/config.resolved.yaml",
              mf.quantize_report: "quantize.json", mf.temperature_file: "temperature.json",
              mf.open_set_file: "open_set.json", mf.open_set_stats("ptq_int8"): "open_set/ptq_int8.npz"}
    assert {mf.relative(p): rel for p, rel in layout.items()} == {rel: rel for rel in layout.values()}
    page = (PROJECT_ROOT / "docs" / "pipeline.md").read_text(encoding="utf-8")
    table = page[page.index("## A model folder"):]
    for rel in layout.values():
        generic = rel.replace("qat_int8", "<format>").replace("ptq_int8", "<format>")
        assert f"`{generic}" in table, generic
    assert Path(mf) == mf.path and str(mf) == str(mf.path) and ModelFolder(mf) == mf and mf.name == "demo-tiny"


def test_run_names_and_where_they_go(tmp_path):
    from mushroom.config import load_config

    cfg = load_config(None, ["experiment=study", "model.name=efficientnet_v2_m", "baseline.model=resnet50",
                             f"paths.models_dir={tmp_path}"])
    assert ModelFolder.of_model(cfg).path == tmp_path / "study-efficientnet_v2_m"
    assert ModelFolder.of_baseline(cfg).path == tmp_path / "study-resnet50-head"
    assert ModelFolder.under(tmp_path, "mine").path == tmp_path / "mine"
    for bad in ("", " ", "a/b", ".hidden"):
        with pytest.raises(UserError, match="plain folder name"):
            ModelFolder.under(tmp_path, bad)


def test_what_is_there(tmp_path):
    mf = ModelFolder(tmp_path / "m")
    assert not mf.is_complete() and mf.files() == {} and mf.read_temperature() is None
    assert mf.read_open_set() is None and mf.read_quantize_report() == {}
    mf.path.mkdir()
    mf.meta_file.write_text("{}")
    assert not mf.is_complete()
    mf.model_file.write_text("x")
    assert mf.is_complete() and find_model_folders(tmp_path) == [mf.path]
    mf.tflite_dir.mkdir()
    for fmt in ("ptq_int8", "float32"):
        mf.tflite(fmt).write_bytes(b"x")
    assert list(mf.files()) == ["keras", "float32", "ptq_int8"]          # keras, then EXPORT_FORMATS order
    assert list(mf.exports(["qat_int8", "ptq_int8", "float32"])) == ["ptq_int8", "float32"]
    assert not mf.is_quantized(["float32"])                                # quantize.json is written last
    mf.quantize_report.write_text("{broken")
    assert mf.is_quantized(["float32", "ptq_int8"]) and not mf.is_quantized(["qat_int8"])
    assert mf.read_quantize_report() == {}
    assert ModelFolder.exports_under(tmp_path, "ptq_int8") == [mf.tflite("ptq_int8")]
    assert ModelFolder.of_export(mf.tflite("float32")) == (mf, "float32")
    assert ModelFolder.of_export(tmp_path / "loose.tflite") == (ModelFolder(tmp_path), "loose")


def test_open_set_files_never_go_stale(tmp_path):
    mf = ModelFolder(tmp_path)
    stats = {"means": np.eye(2), "whiten": np.ones((2, 2))}
    rec = {"threshold": 1.0, "edible_threshold": 0.5}
    mf.write_open_set({"by_format": {"ptq_int8": {"score": "mahalanobis", **rec}}}, {"ptq_int8": stats, "float32": stats})
    assert mf.read_open_set()["by_format"]["ptq_int8"]["score"] == "mahalanobis"
    np.testing.assert_array_equal(mf.read_open_set_stats("float32")["means"], np.eye(2))
    mf.write_open_set({"by_format": {"float32": {"score": "energy", **rec}}}, {})
    assert not mf.open_set_stats("ptq_int8").exists() and mf.read_open_set()["by_format"].keys() == {"float32"}
    with pytest.raises(UserError, match="rerun evaluate.py"):
        mf.read_open_set_stats("ptq_int8")
    mf.write_open_set(None, {})
    assert mf.read_open_set() is None
    # a folder evaluated before "edible" had its stricter threshold must not answer on the old rule
    mf.write_open_set({"by_format": {"float32": {"score": "energy", "threshold": 1.0}}}, {})
    with pytest.raises(UserError, match="older evaluate.py.*rerun evaluate.py"):
        mf.read_open_set()
    assert not mf.open_set_is_current()
    mf.open_set_file.write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        mf.read_open_set()
    assert not list(tmp_path.rglob(".partial-*"))


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    from mushroom.fileio import atomic_write, replacing, replacing_folder, write_json

    target = tmp_path / "a" / "x.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["x.json"]
    write_json(target, {"x": np.float32(0.5), "a": np.arange(2)})
    assert json.loads(target.read_text()) == {"x": 0.5, "a": [0, 1]}
    with pytest.raises(ValueError):
        write_json(target, {"x": float("nan")})
    assert json.loads(target.read_text())["x"] == 0.5

    folder = tmp_path / "models" / "run"
    folder.mkdir(parents=True)
    (folder / "stale.tflite").write_text("from an older model")
    with pytest.raises(RuntimeError):
        with replacing_folder(folder) as partial:
            (partial / "meta.json").write_text("{}")
            raise RuntimeError("killed")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["run"] and (folder / "stale.tflite").exists()
    with replacing_folder(folder) as partial:
        (partial / "meta.json").write_text("{}")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["run"]
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json"]
