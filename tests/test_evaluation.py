import json
import shutil

import numpy as np
import pytest

from mushroom.errors import UserError
from mushroom.evaluation import CONTRACT_KEYS, evaluate_all
from mushroom.modelio import ModelFolder, find_model_folders  # noqa: F401
from mushroom import openset
from tests.conftest import SHARED_PHOTOS


@pytest.fixture
def evaluated(tiny_model_folder, tmp_path):
    """The tiny model folder, copied (evaluation writes into it), evaluated once."""
    t = tiny_model_folder
    folder = tmp_path / "models" / t["folder"].name
    shutil.copytree(t["folder"], folder)
    reports = tmp_path / "reports"
    entries, extras = evaluate_all(t["cfg"], [folder], t["data_dir"], reports, log=lambda s: None)
    return {**t, "folder": folder, "reports": reports, "entries": entries, "extras": extras}


def test_evaluate_writes_every_contract_key_per_format(evaluated):
    t = evaluated
    reports = t["reports"]
    entries = t["entries"]
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
    # the verdict rates are those of the photos' verdicts (test_predictions_csv_recomputes_the_metrics);
    # that no rule lets a dangerous photo through is tested where "edible" is reachable
    # (test_safety_rules_hold_on_every_photo_with_edible_reachable)
    temps = json.loads((t["folder"] / "temperature.json").read_text())
    assert set(temps["by_format"]) == {"keras", "float32", "ptq_int8"} and temps["fitted_on"] == "val"
    for name in ("comparison.md", "comparison.csv", "tradeoff.png", "reliability_test-tiny.png",
                 "config.resolved.yaml"):
        assert (reports / name).is_file()


def test_unknown_species_are_measured_on_species_never_used_to_fit(evaluated):
    """The two species outside the model's three are the unknowns: one fits the threshold, the
    other (a different species) measures it; every format gets the open-set keys."""
    t = evaluated
    record = json.loads((t["folder"] / "open_set.json").read_text())
    assert record["unknown_val_species"] and record["unknown_test_species"]
    assert not set(record["unknown_val_species"]) & set(record["unknown_test_species"])
    assert set(record["unknown_val_species"]) | set(record["unknown_test_species"]) == {
        "Hypholoma fasciculare", "Pleurotus ostreatus"}
    # the poisonous one is on the measured side (dangerous species are spread there first)
    assert record["unknown_test_species"] == ["Hypholoma fasciculare"]
    assert record["fusion"] in openset.FUSIONS
    scores = {e["unknown_score"] for e in t["entries"]}
    assert len(scores) == 1 and scores <= set(openset.SCORES)   # one score per model, all formats
    for e in t["entries"]:
        fmt = record["by_format"][e["format"]]
        assert fmt["score"] == e["unknown_score"] and fmt["threshold"] == e["unknown_threshold"]
        assert e["n_unknown_val"] == 12 and e["n_unknown_test"] == 12
        # (the AUROC and the shares are recomputed from every photo in test_predictions_csv_recomputes_the_metrics)
        # the keras model and its float32 file measure the same thing
        if e["format"] == "float32":
            keras_e = t["entries"][0]
            assert abs(e["unknown_auroc"] - keras_e["unknown_auroc"]) < 0.02
        assert e["fused_top1"] in (e["fused_top1_mean"], e["fused_top1_sum"]) and e["n_finds_test"] >= 3
    # the threshold flags at least the configured share of the unknown-val photos (by construction)
    assert all(e["unknown_recall_target"] == 0.95 for e in t["entries"])
    assert (t["reports"] / "open_set_test-tiny.png").is_file()


def test_the_threshold_flags_the_target_share_of_unknown_val():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=101)
    for recall in (0.5, 0.9, 0.95, 1.0):
        t = openset.fit_threshold(scores, recall)
        assert np.mean(scores >= t) >= recall
        # the highest such threshold: one just above the lowest flagged photo flags too few
        lowest = scores[scores >= t].min()
        assert np.mean(scores > lowest) < recall and not np.any((scores > t) & (scores < lowest))
        assert not np.any(np.abs(scores - t) < 1e-9)   # never on a photo's score


def test_missing_formats_and_folders_are_clear_errors(tiny_model_folder, tmp_path):
    t = tiny_model_folder
    with pytest.raises(UserError, match="train a model first"):
        evaluate_all(t["cfg"], [], t["data_dir"], tmp_path)
    assert list(ModelFolder(t["folder"]).files()) == ["keras", "float32", "ptq_int8"]
    with pytest.raises(UserError, match="run quantize_qat.py"):
        evaluate_all(t["cfg"], [t["folder"]], t["data_dir"], tmp_path, formats=["qat_int8"], log=lambda s: None)


def test_latency_of_every_format_comes_from_one_interleaved_run(evaluated):
    """metrics.json's latency keys: end to end and invoke alone at evaluate.threads (1), ratios to
    float32 from the same rounds, and the all-cores figures (none for Keras: its thread pool is
    fixed once per process). The routine itself is tested in tests/test_latency.py."""
    import os

    cores = os.cpu_count() or 1
    by_fmt = {e["format"]: e for e in json.loads((evaluated["reports"] / "metrics.json").read_text())}
    for fmt, e in by_fmt.items():
        assert e["threads"] == 1 and e["latency_rounds"] == 3
        assert 0 < e["latency_ms_median"] <= e["latency_ms_p95"]
        assert 0 < e["invoke_ms_median"] <= e["invoke_ms_p95"]
        assert e["latency_ratio_float32"] == pytest.approx(e["latency_ms_median"] / by_fmt["float32"]["latency_ms_median"])
        assert e["invoke_ratio_float32"] == pytest.approx(e["invoke_ms_median"] / by_fmt["float32"]["invoke_ms_median"])
        assert e["invoke_ratio_float32_paired"] > 0 and e["latency_ratio_float32_paired"] > 0
        if fmt == "keras":
            assert e["invoke_ms_median_all_cores"] is None and e["threads_all_cores"] is None
        else:
            assert e["threads_all_cores"] == cores and e["invoke_ms_median_all_cores"] > 0
            assert e["latency_ms_median_all_cores"] > 0 and e["invoke_ratio_float32_all_cores"] > 0
    assert by_fmt["float32"]["invoke_ratio_float32"] == 1.0


def test_intervals_and_paired_deltas_per_format(evaluated):
    from mushroom.stats import CI_METRICS

    saved = json.loads((evaluated["reports"] / "metrics.json").read_text())
    keras_e, f32, int8 = saved
    for e in saved:
        assert e["bootstrap_samples"] == 2000 and e["ci_confidence"] == 0.95
        for m in CI_METRICS:
            ci = e[f"{m}_ci"]
            assert (ci is None) == (e[m] is None), m
            assert ci is None or 0.0 <= ci[0] <= ci[1] <= 1.0
        assert e["top1_ci"][0] <= e["top1"] <= e["top1_ci"][1]
        assert e["delta_significant"] == (e["delta_top1_ci"][0] > 0 or e["delta_top1_ci"][1] < 0)
        # the largest change of any class's calibrated probability, per photo, averaged and at worst
        cal = evaluated["extras"]["arrays"]["test-tiny"]["calibrated"]
        dprob = np.abs(cal[e["format"]] - cal["keras"]).max(axis=1)
        assert e["mean_abs_dprob"] == pytest.approx(dprob.mean()) and e["max_abs_dprob"] == pytest.approx(dprob.max())
        assert e["delta_ece_calibrated"] == pytest.approx(e["ece_calibrated"] - keras_e["ece_calibrated"], abs=1e-12)
    # the reference against itself: nothing changes, nothing to test
    assert keras_e["delta_top1_ci"] == [0.0, 0.0] and keras_e["delta_ece_calibrated_ci"] == [0.0, 0.0]
    assert keras_e["delta_ece_calibrated"] == 0.0 and keras_e["mcnemar_p"] == 1.0 and keras_e["flip_rate"] == 0.0
    assert keras_e["delta_significant"] is False
    # the float32 file computes the Keras model's function: the same answers, the same probabilities
    assert f32["flip_rate"] == 0.0 and f32["delta_top1_ci"] == [0.0, 0.0] and f32["mean_abs_dprob"] < 1e-3
    lo, hi = int8["delta_top1_ci"]
    assert -1.0 <= lo <= int8["delta_top1"] <= hi <= 1.0
    assert (evaluated["reports"] / "deltas_test-tiny.png").is_file()


def test_predictions_csv_recomputes_the_metrics(evaluated):
    """Every photo's answer in every format: top-1, the verdict rates, the open-set shares and the
    McNemar test come out of predictions.csv exactly as metrics.json has them."""
    import csv
    import math

    from scipy.stats import binomtest

    saved = {e["format"]: e for e in json.loads((evaluated["reports"] / "metrics.json").read_text())}
    rows = list(csv.DictReader((evaluated["reports"] / "predictions.csv").open()))
    manifest = {r["path"]: r for r in csv.DictReader((evaluated["data_dir"] / "manifest.csv").open())}
    edible = {"Boletus edulis", "Macrolepiota procera"}
    assert {r["format"] for r in rows} == set(saved) and {r["model"] for r in rows} == {"test-tiny"}
    by = {}
    for fmt, e in saved.items():
        known = [r for r in rows if r["format"] == fmt and r["known"] == "true"]
        unknown = [r for r in rows if r["format"] == fmt and r["known"] == "false"]
        assert len(known) == e["n_test"] and len(unknown) == e["n_unknown_test"]
        for r in known + unknown:
            source = manifest[r["path"]]
            assert r["group"] == source["observation_id"] and r["true_species"] == source["species"]
            top5 = [(s.split(":")[0], float(s.split(":")[1])) for s in r["top5"].split(";")]
            assert top5[0] == (r["predicted_species"], float(r["probability"])) and len(top5) == 3
            assert [p for _, p in top5] == sorted((p for _, p in top5), reverse=True)
            if r["unknown_flagged"] == "true":
                assert r["verdict"] == "unknown"
        assert {r["true_species"] for r in unknown} == {"Hypholoma fasciculare"}
        assert sum(r["top1_correct"] == "true" for r in known) / len(known) == pytest.approx(e["top1"])
        assert sum(r["top5_correct"] == "true" for r in known) / len(known) == pytest.approx(e["top5"])
        ed = [r for r in known if r["true_species"] in edible]
        assert sum(r["verdict"] == "edible" for r in ed) / len(ed) == pytest.approx(e["edible_verdict_edible"])
        flagged = [r["unknown_flagged"] == "true" for r in unknown]
        assert sum(flagged) / len(unknown) == pytest.approx(e["unknown_flagged"])
        kept = [r["unknown_flagged"] == "false" for r in known]
        assert sum(kept) / len(known) == pytest.approx(e["known_coverage"])
        assert openset.auroc(np.array([float(r["unknown_score"]) for r in unknown]),
                             np.array([float(r["unknown_score"]) for r in known])) == pytest.approx(e["unknown_auroc"])
        by[fmt] = {r["path"]: r for r in known}
    ref, int8 = by["keras"], by["ptq_int8"]
    b = sum(ref[p]["top1_correct"] == "true" and int8[p]["top1_correct"] == "false" for p in ref)
    c = sum(ref[p]["top1_correct"] == "false" and int8[p]["top1_correct"] == "true" for p in ref)
    p_value = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert (saved["ptq_int8"]["mcnemar_b"], saved["ptq_int8"]["mcnemar_c"]) == (b, c)
    assert math.isclose(saved["ptq_int8"]["mcnemar_p"], p_value)
    flips = sum(ref[p]["predicted_species"] != int8[p]["predicted_species"] for p in ref) / len(ref)
    assert saved["ptq_int8"]["flip_rate"] == pytest.approx(flips)


def _loose_cfg(t, _tmp_path=None):
    import copy

    cfg = copy.deepcopy(t["cfg"])
    cfg["predict"].update({"edible_threshold": 0.34, "danger_threshold": 1.0, "not_edible_threshold": 0.34,
                           "unknown_recall": 0.5, "edible_unknown_recall": 0.5})
    return cfg


def test_safety_rules_hold_on_every_photo_with_edible_reachable(tiny_model_folder, tmp_path):
    """Every photo's verdict in predictions.csv, known and unknown species, every format: "edible"
    is reached (so the rules are exercised), and every "edible" answer is of a species graded
    edible with no unseen dangerous look-alike, at or above the edible threshold, from a photo not
    flagged and below the stricter edible limit; a flagged photo is "unknown"; without the check
    (the _unflagged keys) more unknown photos would have been "edible"."""
    import csv

    t = tiny_model_folder
    cfg = _loose_cfg(t, tmp_path)
    folder = tmp_path / "models" / t["folder"].name
    shutil.copytree(t["folder"], folder)
    entries, _ = evaluate_all(cfg, [folder], t["data_dir"], tmp_path / "reports", log=lambda s: None)
    records = json.loads((folder / "open_set.json").read_text())["by_format"]
    rows = list(csv.DictReader((tmp_path / "reports" / "predictions.csv").open()))
    grades = {"Amanita muscaria": "poisonous", "Boletus edulis": "choice", "Macrolepiota procera": "choice"}
    edible_rows = [r for r in rows if r["verdict"] == "edible"]
    assert len(edible_rows) >= 3
    for r in rows:
        record = records[r["format"]]
        if r["unknown_flagged"] == "true":
            assert r["verdict"] == "unknown"
        if r["verdict"] == "edible":
            assert grades[r["predicted_species"]] == "choice"
            # the parasol's look-alike, the panther cap, is not among the model's classes: never edible
            assert r["predicted_species"] == "Boletus edulis"
            assert float(r["probability"]) >= 0.34
            assert float(r["unknown_score"]) < record["edible_threshold"] <= record["threshold"]
    for e in entries:
        unknown = [r for r in rows if r["format"] == e["format"] and r["known"] == "false"]
        dangerous_edible = sum(r["verdict"] == "edible" for r in unknown) / len(unknown)   # all are Hypholoma
        assert e["unknown_dangerous_verdict_edible"] == pytest.approx(dangerous_edible)
        assert e["unknown_verdict_edible"] <= e["unknown_verdict_edible_unflagged"]
    # on real photos the check removes "edible" answers the model would give unknown species; the
    # generated stand-ins (no ../shared) are too unlike each other for that to happen reliably
    if SHARED_PHOTOS.is_dir():
        assert any(e["unknown_verdict_edible"] < e["unknown_verdict_edible_unflagged"] for e in entries)


def test_evaluating_some_formats_keeps_the_others_thresholds_and_temperatures(evaluated):
    """evaluate.py FOLDER --formats ptq_int8 refits ptq_int8 and merges it into open_set.json and
    temperature.json: the other formats keep what predict.py needs."""
    t = evaluated
    folder = t["folder"]
    before_os = json.loads((folder / "open_set.json").read_text())
    before_t = json.loads((folder / "temperature.json").read_text())
    cfg = _loose_cfg(t, None)        # other thresholds: the refitted record must change
    entries, _ = evaluate_all(cfg, [folder], t["data_dir"], t["reports"].parent / "r2", formats=["ptq_int8"],
                              log=lambda s: None)
    # float32 is timed beside it (not evaluated), so the ratio still comes from the same rounds
    assert [e["format"] for e in entries] == ["ptq_int8"] and entries[0]["invoke_ratio_float32"] > 0
    after_os = json.loads((folder / "open_set.json").read_text())
    after_t = json.loads((folder / "temperature.json").read_text())
    assert set(after_os["by_format"]) == {"keras", "float32", "ptq_int8"}
    for fmt in ("keras", "float32"):
        assert after_os["by_format"][fmt] == before_os["by_format"][fmt]
        assert after_t["by_format"][fmt] == before_t["by_format"][fmt]
    assert after_os["by_format"]["ptq_int8"]["unknown_recall"] == 0.5 != before_os["by_format"]["ptq_int8"]["unknown_recall"]
    assert after_os["by_format"]["ptq_int8"]["score"] == before_os["by_format"]["keras"]["score"]   # same rule
    assert after_os["fusion"] == before_os["fusion"] and after_t["reference_format"] == "keras"
    from mushroom.prediction import Forager

    for fmt in ("float32", "ptq_int8"):
        forager = Forager.load(cfg, str(folder / "tflite" / f"{fmt}.tflite"))
        assert forager.missing() == [] and forager.temperature == after_t["by_format"][fmt]


def test_config_formats_choose_what_is_evaluated_and_the_float32_file_is_then_the_reference(tiny_model_folder, tmp_path):
    import copy

    t = tiny_model_folder
    cfg = copy.deepcopy(t["cfg"])
    cfg["evaluate"]["formats"] = ["float32", "ptq_int8"]
    folder = tmp_path / "models" / t["folder"].name
    shutil.copytree(t["folder"], folder)
    entries, _ = evaluate_all(cfg, [folder], t["data_dir"], tmp_path / "reports", log=lambda s: None)
    assert [e["format"] for e in entries] == ["float32", "ptq_int8"]
    assert {e["reference_format"] for e in entries} == {"float32"} and entries[0]["delta_top1"] == 0.0
    assert set(json.loads((folder / "open_set.json").read_text())["by_format"]) == {"float32", "ptq_int8"}
