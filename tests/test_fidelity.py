import csv
import copy
import shutil

import numpy as np
import pytest

from mushroom import fidelity
from mushroom.evaluation import evaluate_all
from mushroom.prediction import Forager


def _answers(top1, verdicts, flagged=None):
    return fidelity.Answers(np.array(top1), list(verdicts), None if flagged is None else np.array(flagged, bool))


def test_agreement_counts_photos_with_the_same_answer_and_resamples_finds():
    ref = _answers([0, 1, 2, 0, 1, 2], ["edible", "unknown", "not edible", "edible", "uncertain", "unknown"],
                   [False, True, False, False, False, True])
    other = _answers([0, 1, 1, 0, 1, 0], ["uncertain", "unknown", "not edible", "edible", "uncertain", "unknown"],
                     [False, True, False, True, False, True])
    groups = ["a", "a", "b", "b", "c", "c"]
    out = fidelity.agreement(ref, other, groups, 500, 0, 0.95)
    assert set(out) == set(fidelity.FIDELITY_KEYS)
    assert out["agreement_all"] == pytest.approx(4 / 6) and out["agreement_all_n"] == 6
    assert out["verdict_agreement_all"] == pytest.approx(5 / 6)
    assert out["flag_agreement_all"] == pytest.approx(5 / 6)
    # finds resampled whole: a agrees on 2 of 2 species, b and c on 1 of 2, so every resample lies in
    # [1/2, 1]; the lower end is drawn often (no a: 30 %), the upper one rarely (3 x a: 3.7 %)
    lo, hi = out["agreement_all_ci"]
    assert lo == pytest.approx(0.5) and 5 / 6 <= hi <= 1.0
    same = fidelity.agreement(ref, ref, groups, 200, 0, 0.95)
    assert same["agreement_all"] == same["verdict_agreement_all"] == same["flag_agreement_all"] == 1.0
    assert same["agreement_all_ci"] == [1.0, 1.0]


def test_agreement_has_no_flag_figure_without_a_check_and_refuses_unpaired_photos():
    ref = _answers([0, 1], ["unknown", "edible"], [True, False])
    out = fidelity.agreement(ref, _answers([0, 1], ["uncertain", "edible"]), ["a", "b"], 100, 0, 0.9)
    assert out["flag_agreement_all"] is None and out["flag_agreement_all_ci"] is None
    assert out["verdict_agreement_all"] == 0.5
    with pytest.raises(ValueError, match="same photos"):
        fidelity.agreement(ref, _answers([0], ["edible"]), ["a", "b"], 100, 0, 0.9)
    with pytest.raises(ValueError, match="same model file"):
        fidelity.concat_outputs([{"probs": np.zeros((1, 2))}, {"logits": np.zeros((1, 2))}])


def test_agreement_on_every_imported_photo_is_what_predict_answers(tiny_model_folder, tmp_path):
    """evaluate.py's agreement keys, recomputed from predict.py's own answers (Forager) for every
    photo of the manifest, train, val, test and unknown species alike, in the two formats."""
    t = tiny_model_folder
    cfg = copy.deepcopy(t["cfg"])
    cfg["evaluate"]["formats"] = ["float32", "ptq_int8"]
    folder = tmp_path / "models" / t["folder"].name
    shutil.copytree(t["folder"], folder)
    entries, _ = evaluate_all(cfg, [folder], t["data_dir"], tmp_path / "reports", log=lambda s: None)
    ref, int8 = entries
    photos = [t["data_dir"] / r["path"] for r in csv.DictReader((t["data_dir"] / "manifest.csv").open())]
    assert {r["split"] for r in csv.DictReader((t["data_dir"] / "manifest.csv").open())} == {"train", "val", "test"}
    assert ref["agreement_all_n"] == int8["agreement_all_n"] == len(photos) > ref["n_test"] + ref["n_unknown_test"]
    assert ref["agreement_all"] == ref["verdict_agreement_all"] == ref["flag_agreement_all"] == 1.0
    answers = {fmt: [Forager.load(cfg, str(folder / f"tflite/{fmt}.tflite")).answer(p) for p in photos]
               for fmt in ("float32", "ptq_int8")}
    a, b = answers["float32"], answers["ptq_int8"]
    n = len(photos)
    assert int8["agreement_all"] == pytest.approx(sum(x.top[0]["species"] == y.top[0]["species"]
                                                      for x, y in zip(a, b)) / n)
    assert int8["verdict_agreement_all"] == pytest.approx(sum(x.verdict == y.verdict for x, y in zip(a, b)) / n)
    assert int8["flag_agreement_all"] == pytest.approx(
        sum(x.unknown.flagged == y.unknown.flagged for x, y in zip(a, b)) / n)
    # the random tiny model's int8 file differs somewhere, so the figures can fail
    assert int8["agreement_all"] < 1.0 or int8["verdict_agreement_all"] < 1.0
    lo, hi = int8["agreement_all_ci"]
    assert lo <= int8["agreement_all"] <= hi
