import json
import math
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from mushroom import metrics as M


def sample_labels(rng, probs):
    """One label per row drawn from that row's distribution."""
    u = rng.random(len(probs))[:, None]
    return np.minimum((np.cumsum(probs, axis=1) < u).sum(axis=1), probs.shape[1] - 1)


def test_metrics_module_imports_neither_tensorflow_nor_sklearn():
    """predict.py uses apply_temperature and must start fast, without TensorFlow installed."""
    import subprocess

    code = "import sys, mushroom.metrics; print('tensorflow' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


# --- top-k ----------------------------------------------------------------------------------------
def test_topk_counts_ties_against_the_model():
    probs = np.array([
        [0.4, 0.4, 0.2],    # y=0: tied with class 1 at the top -> wrong at k=1, right at k=2
        [0.4, 0.4, 0.2],    # y=1: the same tie seen from the other class -> also wrong at k=1
        [0.5, 0.25, 0.25],  # y=2: tied with class 1 at the 2nd place -> wrong at k=2, right at k=3
        [0.0, 0.0, 0.0],    # y=0: an int8 model's all-zero row ties everything -> right only at k=3
        [0.1, 0.7, 0.2],    # y=1: clear winner -> right at every k
    ])
    labels = np.array([0, 1, 2, 0, 1])
    assert M.topk_accuracy(probs, labels, 1) == pytest.approx(1 / 5)
    assert M.topk_accuracy(probs, labels, 2) == pytest.approx(3 / 5)
    assert M.topk_accuracy(probs, labels, 3) == pytest.approx(5 / 5)
    # argmax picks class 0 for the first row, yet top-1 does not credit the tie
    assert M.predictions(probs)[0] == 0


def test_topk_without_ties_matches_rank_definition():
    rng = np.random.default_rng(1)
    probs = M.softmax(rng.normal(size=(500, 12)))
    labels = rng.integers(0, 12, 500)
    ranks = np.argsort(-probs, axis=1)
    for k in (1, 3, 5):
        expected = np.mean([labels[i] in ranks[i, :k] for i in range(500)])
        assert M.topk_accuracy(probs, labels, k) == pytest.approx(expected)
    assert M.topk_accuracy(probs, labels, 1) == pytest.approx(np.mean(probs.argmax(1) == labels))


def test_top5_with_fewer_than_five_classes_is_always_right():
    probs = np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])
    labels = np.array([0, 2])
    assert M.topk_accuracy(probs, labels, 5) == 1.0
    assert M.topk_accuracy(probs, labels, 1) == 0.0


@pytest.mark.parametrize("probs, labels, message", [
    (np.ones(3), np.zeros(3, int), "2-D"),
    (np.ones((3, 2)), np.zeros(2, int), "length 3"),
    (np.ones((2, 2)), np.array([0, 2]), r"\[0, 1\]"),
    (np.full((1, 2), np.nan), np.array([0]), "NaN"),
    (np.ones((0, 2)), np.zeros(0, int), "empty"),
])
def test_bad_inputs_are_clear_errors(probs, labels, message):
    with pytest.raises(ValueError, match=message):
        M.topk_accuracy(probs, labels, 1)


# --- species report -------------------------------------------------------------------------------
def test_macro_scores_equal_scikit_learn_including_an_absent_class():
    rng = np.random.default_rng(2)
    probs = M.softmax(rng.normal(size=(300, 6)) * 2)
    labels = rng.integers(0, 5, 300)  # class 5 never occurs in the labels
    pred = probs.argmax(1)
    report = M.classification_report(probs, labels, [f"s{i}" for i in range(6)])
    kw = dict(labels=list(range(6)), average="macro", zero_division=0)
    assert report["macro_f1"] == pytest.approx(f1_score(labels, pred, **kw))
    assert report["macro_precision"] == pytest.approx(precision_score(labels, pred, **kw))
    assert report["macro_recall"] == pytest.approx(recall_score(labels, pred, **kw))
    assert report["n_species_present"] == 5
    assert report["macro_f1_present"] == pytest.approx(
        f1_score(labels, pred, labels=list(range(5)), average="macro", zero_division=0))
    assert [r["support"] for r in report["per_class"]] == np.bincount(labels, minlength=6).tolist()
    assert report["per_class"][5]["name"] == "s5"


def test_confusion_matrix_rows_are_truth():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    assert M.confusion_matrix(probs, [0, 0, 1]).tolist() == [[1, 1], [0, 1]]


# --- edible vs not --------------------------------------------------------------------------------
def test_edible_and_dangerous_metrics_on_a_four_class_example():
    # classes: 0 edible, 1 caution (edible), 2 poisonous (dangerous), 3 inedible
    edible = np.array([True, True, False, False])
    dangerous = np.array([False, False, True, False])
    pairs = [  # (true, predicted)       binary outcome
        (0, 0),  # edible -> edible          TP
        (0, 3),  # edible -> inedible        FN
        (1, 0),  # caution -> edible         TP (wrong species, right edibility)
        (2, 1),  # poisonous -> caution      FP, and a dangerous error
        (2, 2),  # poisonous -> poisonous    TN
        (3, 0),  # inedible -> edible        FP
        (3, 3),  # inedible -> inedible      TN
        (2, 3),  # poisonous -> inedible     TN
    ]
    labels = np.array([t for t, _ in pairs])
    probs = np.full((len(pairs), 4), 0.1)
    probs[np.arange(len(pairs)), [p for _, p in pairs]] = 0.7
    m = M.edible_metrics(probs, labels, edible, dangerous)
    # TP=2, FP=2, FN=1 -> precision 2/4, recall 2/3, F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7
    assert m["edible_precision"] == pytest.approx(0.5)
    assert m["edible_recall"] == pytest.approx(2 / 3)
    assert m["edible_f1"] == pytest.approx(4 / 7)
    # 3 poisonous photos (rows 4, 5, 8), one of them called edible
    assert m["dangerous_error"] == pytest.approx(1 / 3)
    assert m["n_dangerous"] == 3


def test_dangerous_error_is_nan_without_dangerous_photos():
    edible = np.array([True, False, False])
    dangerous = np.array([False, False, True])
    probs = np.array([[0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    m = M.edible_metrics(probs, [0, 1], edible, dangerous)
    assert math.isnan(m["dangerous_error"])
    assert m["edible_recall"] == 0.0 and m["edible_precision"] == 0.0  # zero_division=0


def test_edible_masks_must_match_classes():
    with pytest.raises(ValueError, match="shape"):
        M.edible_metrics(np.eye(3), [0, 1, 2], [True, False], [False, False, True])


# --- calibration ----------------------------------------------------------------------------------
def test_ece_by_hand_with_five_bins():
    # bins (0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1]
    probs = np.array([
        [0.9, 0.05, 0.05],   # y=0 conf .9 right  -> bin 4
        [0.9, 0.1, 0.0],     # y=1 conf .9 wrong  -> bin 4
        [0.7, 0.2, 0.1],     # y=0 conf .7 right  -> bin 3
        [0.5, 0.3, 0.2],     # y=2 conf .5 wrong  -> bin 2
        [0.4, 0.35, 0.25],   # y=0 conf .4 right  -> bin 1 (an edge belongs to the lower bin)
        [0.6, 0.2, 0.2],     # y=0 conf .6 right  -> bin 2
    ])
    labels = np.array([0, 1, 0, 2, 0, 0])
    # bin 4: n=2 acc .5 conf .9  -> .4 * 2 = .8
    # bin 3: n=1 acc 1  conf .7  -> .3 * 1 = .3
    # bin 2: n=2 acc .5 conf .55 -> .05 * 2 = .1
    # bin 1: n=1 acc 1  conf .4  -> .6 * 1 = .6
    # ECE = (.8 + .3 + .1 + .6) / 6 = 0.3
    assert M.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.3)
    b = M.reliability_bins(probs, labels, n_bins=5)
    assert b["count"].tolist() == [0, 1, 2, 1, 2]
    assert np.isnan(b["accuracy"][0]) and np.isnan(b["confidence"][0])
    assert b["accuracy"][1:].tolist() == pytest.approx([1.0, 0.5, 1.0, 0.5])
    assert b["confidence"][1:].tolist() == pytest.approx([0.4, 0.55, 0.7, 0.9])
    assert b["lower"].tolist() == pytest.approx([0, .2, .4, .6, .8])
    assert b["upper"].tolist() == pytest.approx([.2, .4, .6, .8, 1])


def test_ece_fifteen_bins_edges_and_zero_confidence():
    # confidences 0 (all-zero int8 row), 1/15 (upper edge of bin 0), 2/15 (edge of bin 1), 1.0
    probs = np.array([[0.0, 0.0], [1 / 15, 0.0], [2 / 15, 0.0], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 0])
    b = M.reliability_bins(probs, labels)
    assert len(b["count"]) == 15
    assert b["count"][0] == 2 and b["count"][1] == 1 and b["count"][14] == 1
    # bin 0: acc 1/2, conf (0 + 1/15)/2 ; bin 1: acc 1, conf 2/15 ; bin 14: acc 1, conf 1
    expected = (abs(0.5 - 1 / 30) * 2 + abs(1 - 2 / 15) * 1 + 0) / 4
    assert M.expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_perfectly_calibrated_set_has_small_ece():
    rng = np.random.default_rng(3)
    probs = M.softmax(rng.normal(size=(40000, 5)) * 1.5)
    labels = sample_labels(rng, probs)
    assert M.expected_calibration_error(probs, labels) < 0.015


def test_nll_and_brier_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    labels = np.array([0, 2])
    # NLL = -(ln .7 + ln .3) / 2 = (0.356675 + 1.203973) / 2
    assert M.nll(probs, labels) == pytest.approx(0.780324, abs=1e-6)
    # Brier: row 1 (.3^2 + .2^2 + .1^2) = .14 ; row 2 (.2^2 + .5^2 + .7^2) = .78 ; mean .46
    assert M.brier(probs, labels) == pytest.approx(0.46)
    assert M.mean_confidence(probs) == pytest.approx(0.6)


def test_nll_is_finite_when_the_true_class_has_zero_probability():
    assert M.nll(np.array([[1.0, 0.0]]), [1]) == pytest.approx(-math.log(M.EPS))


@pytest.mark.parametrize("t_true", [2.0, 0.5])
def test_temperature_scaling_recovers_a_known_temperature(t_true):
    rng = np.random.default_rng(4)
    z = rng.normal(0.0, 2.0, size=(20000, 10))
    labels = sample_labels(rng, M.softmax(z / t_true))
    probs = M.softmax(z)  # the model reports softmax(z): mis-calibrated by exactly t_true
    t = M.fit_temperature(M.to_log_probs(probs), labels)
    assert t == pytest.approx(t_true, rel=0.10)
    # the fit is the minimum: nearby temperatures are worse on the same data
    logp = M.to_log_probs(probs)
    assert M.nll(M.softmax(logp / t), labels) <= M.nll(M.softmax(logp / (t * 1.2)), labels)
    assert M.nll(M.softmax(logp / t), labels) <= M.nll(M.softmax(logp / (t / 1.2)), labels)


def test_temperature_scaling_fitted_on_val_lowers_ece_of_an_overconfident_model():
    rng = np.random.default_rng(5)
    z = rng.normal(0.0, 1.0, size=(12000, 8))
    labels = sample_labels(rng, M.softmax(z))
    overconfident = M.softmax(3.0 * z)
    val, test = slice(0, 6000), slice(6000, None)
    t = M.fit_temperature(M.to_log_probs(overconfident[val]), labels[val])
    assert t > 2.0
    calibrated = M.apply_temperature(overconfident[test], t)
    before = M.expected_calibration_error(overconfident[test], labels[test])
    after = M.expected_calibration_error(calibrated, labels[test])
    assert before > 0.1
    assert after < before / 3
    assert np.array_equal(calibrated.argmax(1), overconfident[test].argmax(1))  # accuracy unchanged
    assert np.allclose(calibrated.sum(1), 1.0)


def test_apply_temperature_one_is_identity_and_rejects_bad_t():
    probs = np.array([[0.6, 0.3, 0.1], [0.0, 0.5, 0.5]])
    assert np.allclose(M.apply_temperature(probs, 1.0), probs, atol=1e-9)
    sharper = M.apply_temperature(probs, 0.5)
    assert sharper[0, 0] > 0.6
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            M.apply_temperature(probs, bad)


# --- risk-coverage --------------------------------------------------------------------------------
def test_risk_coverage_sorted_by_confidence_with_errors_first_among_ties():
    probs = np.array([
        [0.9, 0.1],   # right, conf .9
        [0.6, 0.4],   # right, conf .6
        [0.4, 0.6],   # wrong (y=0), conf .6 -> tied with the row above, counted first
        [0.3, 0.7],   # right, conf .7
    ])
    labels = np.array([0, 0, 0, 1])
    coverage, risk = M.risk_coverage(probs, labels)
    assert coverage.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # order: .9 right, .7 right, .6 wrong, .6 right
    assert risk.tolist() == pytest.approx([0.0, 0.0, 1 / 3, 1 / 4])
    assert np.all(np.diff(coverage) > 0)


def test_risk_at_full_coverage_is_the_top1_error():
    rng = np.random.default_rng(6)
    probs = M.softmax(rng.normal(size=(200, 7)) * 2)
    labels = sample_labels(rng, probs)
    coverage, risk = M.risk_coverage(probs, labels)
    assert coverage[-1] == 1.0 and np.all(np.diff(coverage) > 0)
    assert risk[-1] == pytest.approx(1 - np.mean(probs.argmax(1) == labels))
    # answering only the most confident photos is (on a calibrated model) safer than answering all
    assert risk[len(risk) // 5] < risk[-1]


# --- summary --------------------------------------------------------------------------------------
def test_summarize_keys_types_and_json():
    rng = np.random.default_rng(7)
    probs = M.softmax(rng.normal(size=(60, 4)) * 2)
    labels = sample_labels(rng, probs)
    edible = np.array([True, True, False, False])
    s = M.summarize(probs, labels, edible, dangerous_class=np.array([False, False, True, False]))
    assert tuple(s) == M.SUMMARY_KEYS
    assert type(s["n_test"]) is int and s["n_test"] == 60
    assert all(type(s[k]) is float for k in M.SUMMARY_KEYS if k != "n_test")
    assert all(math.isfinite(s[k]) for k in M.SUMMARY_KEYS)
    assert s["top5"] == 1.0  # 4 classes
    assert s["top1"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    json.dumps(s, allow_nan=False)

    # no poisonous/deadly class at all -> dangerous_error NaN, written as null through json_safe
    s = M.summarize(probs, labels, edible, dangerous_class=np.zeros(4, bool))
    assert math.isnan(s["dangerous_error"])
    with pytest.raises(ValueError):
        json.dumps(s, allow_nan=False)
    assert json.loads(json.dumps(M.json_safe(s), allow_nan=False))["dangerous_error"] is None


def test_json_safe_converts_numpy_values():
    out = M.json_safe({"a": np.float32(0.5), "b": np.array([1, 2]), "c": [np.inf, np.int64(3)]})
    assert out == {"a": 0.5, "b": [1, 2], "c": [None, 3]}
    assert type(out["c"][1]) is int
