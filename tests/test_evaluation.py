import json

import numpy as np
import pytest

from mushroom.errors import UserError
from mushroom.evaluation import CONTRACT_KEYS, evaluate_all, latency_ms, model_files
from mushroom.modelio import find_model_folders


def test_evaluate_writes_every_contract_key_per_format(tiny_model_folder, tmp_path):
    t = tiny_model_folder
    reports = tmp_path / "reports"
    entries, extras = evaluate_all(t["cfg"], find_model_folders(t["root"] / "models"), t["data_dir"], reports,
                                   log=lambda s: None)
    assert [e["format"] for e in entries] == ["keras", "float32", "ptq_int8"]
    saved = json.loads((reports / "metrics.json").read_text())
    for e in saved:
        assert set(CONTRACT_KEYS) <= set(e)
        assert 0.0 <= e["top1"] <= e["top5"] <= 1.0
        assert e["n_test"] == 9 and e["threads"] == 1
        assert e["temperature"] > 0 and e["latency_ms_median"] > 0
    keras_e, f32, int8 = saved
    # float32 TFLite computes the same function as the Keras model
    assert f32["top1"] == keras_e["top1"] and abs(f32["ece"] - keras_e["ece"]) < 1e-4
    assert abs(f32["size_mb"] - (t["folder"] / "tflite/float32.tflite").stat().st_size / 1e6) < 1e-9
    assert int8["size_mb"] < f32["size_mb"]
    assert keras_e["delta_top1"] == 0.0 and int8["delta_top1"] == pytest.approx(int8["top1"] - keras_e["top1"])
    # Amanita muscaria is poisonous: the dangerous error is defined on this test split
    assert keras_e["dangerous_error"] is not None
    # a briefly trained 3-species model is never sure enough for an "edible" verdict on a poisonous photo
    for e in saved:
        assert e["dangerous_verdict_edible"] == 0.0 and 0.0 <= e["edible_verdict_edible"] <= 1.0
    temps = json.loads((t["folder"] / "temperature.json").read_text())
    assert set(temps["by_format"]) == {"keras", "float32", "ptq_int8"} and temps["fitted_on"] == "val"
    for name in ("comparison.md", "comparison.csv", "tradeoff.png", "reliability_test-tiny.png",
                 "config.resolved.yaml"):
        assert (reports / name).is_file()


def test_missing_formats_and_folders_are_clear_errors(tiny_model_folder, tmp_path):
    t = tiny_model_folder
    with pytest.raises(UserError, match="train a model first"):
        evaluate_all(t["cfg"], [], t["data_dir"], tmp_path)
    assert list(model_files(t["folder"])) == ["keras", "float32", "ptq_int8"]
    with pytest.raises(UserError, match="run quantize_qat.py"):
        evaluate_all(t["cfg"], [t["folder"]], t["data_dir"], tmp_path, formats=["qat_int8"], log=lambda s: None)


def test_latency_reports_median_and_p95():
    calls = []
    med, p95 = latency_ms(lambda x: calls.append(x.shape), np.zeros((4, 4, 3)), runs=7, warmup=2)
    assert len(calls) == 9 and calls[0] == (1, 4, 4, 3)
    assert 0 <= med <= p95
