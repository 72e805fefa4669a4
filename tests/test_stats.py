"""mushroom.stats on constructed cases with known answers."""
import math

import numpy as np
import pytest

from mushroom import metrics
from mushroom.stats import (GroupBootstrap, Outcomes, distributions, interval, mcnemar, paired, point,
                            weighted_rate)

EDIBLE = np.array([True, True, False, False])      # classes 0, 1 edible
DANGEROUS = np.array([False, False, True, False])  # class 2 poisonous


def _probs_for(labels: np.ndarray, correct: np.ndarray, n_classes: int = 4, seed: int = 0) -> np.ndarray:
    """Probabilities whose top-1 is the label where `correct`, else the next class; random confidences."""
    rng = np.random.default_rng(seed)
    top = np.where(correct, labels, (labels + 1) % n_classes)
    probs = rng.dirichlet(np.ones(n_classes), len(labels)) * 0.3
    probs[np.arange(len(labels)), top] += 0.7
    return probs / probs.sum(axis=1, keepdims=True)


def _outcomes(probs, labels, verdicts=None):
    verdicts = verdicts if verdicts is not None else ["uncertain"] * len(labels)
    return Outcomes.from_arrays(probs, probs, labels, verdicts, EDIBLE, DANGEROUS)


def _keys(sizes):
    return [f"find{g}" for g, n in enumerate(sizes) for _ in range(n)]


def test_identical_predictions_give_zero_delta_zero_width_interval_and_p_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 60)
    out = _outcomes(_probs_for(labels, rng.random(60) < 0.6), labels)
    boot = GroupBootstrap(_keys([3] * 20), 500, seed=0)
    dist = distributions(boot.weights, out, 15)
    same = paired(out, out, dist, dist, 0.95, 15)
    assert same["delta_top1_ci"] == [0.0, 0.0] and same["delta_ece_calibrated_ci"] == [0.0, 0.0]
    assert same["delta_ece_calibrated"] == 0.0 and same["mcnemar_p"] == 1.0
    assert same["mcnemar_b"] == same["mcnemar_c"] == 0 and same["flip_rate"] == 0.0
    assert same["mean_abs_dprob"] == same["max_abs_dprob"] == 0.0 and same["delta_significant"] is False


def test_mcnemar_p_is_the_exact_binomial_of_the_discordant_photos():
    # 20 right in both, 5 wrong in both, 7 right only in the reference, 2 right only in the format
    ref = np.array([1] * 20 + [0] * 5 + [1] * 7 + [0] * 2, bool)
    fmt = np.array([1] * 20 + [0] * 5 + [0] * 7 + [1] * 2, bool)
    hand = 2 * sum(math.comb(9, k) for k in range(3)) / 2 ** 9     # two-sided, P(X <= 2 | n=9, 1/2) doubled
    assert hand == 92 / 512
    b, c, p = mcnemar(ref, fmt)
    assert (b, c) == (7, 2) and p == pytest.approx(hand, rel=1e-12)
    assert mcnemar(fmt, ref)[2] == pytest.approx(hand, rel=1e-12)  # symmetric
    assert mcnemar(ref, ref) == (0, 0, 1.0)                         # no discordant photo
    assert mcnemar([True] * 4, [False] * 4)[2] == pytest.approx(2 * 0.5 ** 4)

    # the same through paired(): per-photo correctness from probabilities, flips counted on top-1 species
    labels = np.arange(34) % 4
    out_ref, out_fmt = _outcomes(_probs_for(labels, ref), labels), _outcomes(_probs_for(labels, fmt, seed=2), labels)
    boot = GroupBootstrap(range(34), 200, seed=0)
    res = paired(out_ref, out_fmt, distributions(boot.weights, out_ref, 15), distributions(boot.weights, out_fmt, 15),
                 0.95, 15)
    assert (res["mcnemar_b"], res["mcnemar_c"]) == (7, 2) and res["mcnemar_p"] == pytest.approx(hand)
    assert res["flip_rate"] == pytest.approx(9 / 34)


def test_group_bootstrap_never_splits_a_group():
    # right finds of 3 photos, wrong finds of 2: any resample counts right photos in threes, wrong in twos
    sizes = [3] * 6 + [2] * 9
    correct = np.array([g < 6 for g, n in enumerate(sizes) for _ in range(n)], float)
    keys = _keys(sizes)
    boot = GroupBootstrap(keys, 1000, seed=3)
    group_of = boot.group_of
    for g in range(len(sizes)):                       # all photos of a group carry one weight
        w = boot.weights[:, group_of == g]
        assert (w == w[:, :1]).all()
    assert (boot.counts.sum(axis=1) == len(sizes)).all()  # each resample draws as many finds as there are
    right = boot.weights @ correct
    wrong = boot.weights @ (1 - correct)
    assert (right % 3 == 0).all() and (wrong % 2 == 0).all()
    accuracy = weighted_rate(boot.weights, correct)
    n_right = right / 3
    assert np.allclose(accuracy, 3 * n_right / (3 * n_right + 2 * (len(sizes) - n_right)))
    assert len(set(np.round(accuracy, 12))) > 5       # and it does vary


def test_same_seed_same_interval_and_the_percentile_rule():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 80)
    out = _outcomes(_probs_for(labels, rng.random(80) < 0.7), labels)
    keys = _keys([2] * 40)
    a = interval(distributions(GroupBootstrap(keys, 2000, seed=7).weights, out, 15)["top1"], 0.95)
    b = interval(distributions(GroupBootstrap(keys, 2000, seed=7).weights, out, 15)["top1"], 0.95)
    c = interval(distributions(GroupBootstrap(keys, 2000, seed=8).weights, out, 15)["top1"], 0.95)
    assert a == b and a != c
    assert a[0] < point(out, 15)["top1"] < a[1]
    assert interval(np.arange(101.0), 0.9) == pytest.approx([5.0, 95.0])
    assert interval(np.array([np.nan, 1.0, 3.0]), 0.5) == pytest.approx([1.5, 2.5])   # undefined resamples left out
    assert interval(np.full(10, np.nan), 0.95) is None


def test_a_larger_sample_gives_a_narrower_interval():
    def width(n_finds):
        correct = np.arange(2 * n_finds) // 2 % 2 == 0             # finds of 2 photos, every other one right
        labels = np.arange(2 * n_finds) % 4
        out = _outcomes(_probs_for(labels, correct), labels)
        ci = interval(distributions(GroupBootstrap(_keys([2] * n_finds), 2000, 0).weights, out, 15)["top1"], 0.95)
        return ci[1] - ci[0]

    small, large = width(20), width(500)
    assert large < small / 3     # ~sqrt(25) = 5 times narrower


def test_unit_weights_reproduce_the_point_metrics():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 50)
    probs = rng.dirichlet(np.ones(4) * 0.5, 50)
    probs[:3] = [0.4, 0.4, 0.1, 0.1]             # ties at the top count as wrong
    calibrated = metrics.apply_temperature(probs, 1.7)
    verdicts = list(rng.choice(["edible", "not_edible", "uncertain"], 50))
    out = Outcomes.from_arrays(probs, calibrated, labels, verdicts, EDIBLE, DANGEROUS)
    got = point(out, 15)
    s = metrics.summarize(probs, labels, EDIBLE, DANGEROUS, 15)
    for k in ("top1", "top5", "macro_f1", "edible_f1"):
        assert got[k] == pytest.approx(s[k], abs=1e-12), k
    assert got["ece_calibrated"] == pytest.approx(metrics.expected_calibration_error(calibrated, labels, 15), abs=1e-12)
    called = np.array([v == "edible" for v in verdicts])
    assert got["dangerous_verdict_edible"] == pytest.approx(called[labels == 2].mean())
    assert got["edible_verdict_edible"] == pytest.approx(called[labels < 2].mean())
    # no poisonous photo: the rate and its interval are undefined, not 0
    safe = labels % 2                                 # classes 0 and 1 only
    out = Outcomes.from_arrays(probs, calibrated, safe, verdicts, EDIBLE, DANGEROUS)
    assert point(out, 15)["dangerous_verdict_edible"] is None
    boot = GroupBootstrap(range(50), 200, 0)
    assert interval(distributions(boot.weights, out, 15)["dangerous_verdict_edible"], 0.95) is None


def test_a_consistent_loss_is_significant_and_paired_intervals_are_narrower():
    # 30 finds of 2 photos; the format loses the 10 photos of 5 finds the reference got right, gains none
    labels = np.arange(60) % 4
    ref_correct = np.arange(60) % 3 != 0
    fmt_correct = ref_correct.copy()
    lost = np.flatnonzero(np.repeat(np.arange(30) < 5, 2) & ref_correct)
    fmt_correct[lost] = False
    ref, fmt = _outcomes(_probs_for(labels, ref_correct), labels), _outcomes(_probs_for(labels, fmt_correct), labels)
    boot = GroupBootstrap(_keys([2] * 30), 2000, 0)
    d_ref, d_fmt = distributions(boot.weights, ref, 15), distributions(boot.weights, fmt, 15)
    res = paired(ref, fmt, d_ref, d_fmt, 0.95, 15)
    lo, hi = res["delta_top1_ci"]
    assert lo >= -1.0 and hi < 0 and res["delta_significant"]
    assert res["mcnemar_b"] == len(lost) and res["mcnemar_c"] == 0
    assert res["mcnemar_p"] == pytest.approx(2 * 0.5 ** len(lost))
    # unpaired, the two top-1 intervals overlap: only pairing shows the loss
    a, b = interval(d_ref["top1"], 0.95), interval(d_fmt["top1"], 0.95)
    assert b[1] > a[0] and hi - lo < (a[1] - a[0])


def test_weighted_auroc_with_unit_weights_is_the_auroc_and_species_intervals_hold_it():
    from mushroom import openset
    from mushroom.stats import open_set_intervals, weighted_auroc

    rng = np.random.default_rng(0)
    known = np.round(rng.normal(size=40), 1)
    # ten species of six photos, each species its own offset (photos of one species look alike); ties on purpose
    unknown = np.round(np.repeat(rng.normal(1.0, 1.0, size=10), 6) + 0.3 * rng.normal(size=60), 1)
    assert weighted_auroc(np.ones((1, 60)), unknown, np.ones((1, 40)), known)[0] == pytest.approx(
        openset.auroc(unknown, known))
    species = [f"s{i // 6}" for i in range(60)]
    ci = open_set_intervals(known, list(range(40)), unknown, species, 0.5, 0.95, 500, 0,
                            unknown_edible=np.zeros(60, bool))
    assert ci["auroc"][0] < openset.auroc(unknown, known) < ci["auroc"][1]
    assert ci["flagged"][0] <= np.mean(unknown >= 0.5) <= ci["flagged"][1]
    assert ci["kept"][0] <= np.mean(known < 0.5) <= ci["kept"][1] and ci["verdict_edible"] == [0.0, 0.0]
    # resampled by species, the interval is wider than if the sixty photos were independent
    by_photo = open_set_intervals(known, list(range(40)), unknown, list(range(60)), None, 0.95, 500, 0)
    assert ci["auroc"][1] - ci["auroc"][0] > by_photo["auroc"][1] - by_photo["auroc"][0]
