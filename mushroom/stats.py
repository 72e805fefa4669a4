"""How sure the study's numbers are: group-bootstrap intervals, paired differences between the formats
of one model, and McNemar's exact test. NumPy (scipy only for the binomial test), seeded, reproducible.

Photos of one find (the manifest's observation_id, within one species) are correlated: the same
mushroom from three angles is not three independent tests. So the bootstrap resamples FINDS with
replacement, never single photos, and a find is always in or out of a resample as a whole. One set of
resamples is drawn per model and shared by all its formats, so a difference between two formats is
measured on the same resampled finds (paired), which cancels most of the noise of the test split.

    boot = GroupBootstrap(group_keys, n_samples=2000, seed=0)        # once per model
    out = Outcomes.from_arrays(probs, calibrated, labels, verdicts, edible_class, dangerous_class)
    dist = distributions(boot.weights, out, n_bins=15)  # {metric: (B,) values, one per resample}
    interval(dist["top1"], 0.95)                         # [lo, hi], percentile interval
    paired(ref_out, out, ref_dist, dist, 0.95, n_bins=15)   # deltas vs the float reference, McNemar

Vectorised: a resample is a (N,) vector of photo weights (how often each photo's find was drawn), all
resamples a (B, N) matrix, and every metric a few matrix products with per-photo outcomes, so 2000
resamples of ~100 photos cost milliseconds per format. With unit weights every metric equals the
corresponding point estimate of mushroom.metrics (tests check this).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

from mushroom import metrics

# Metrics with a group-bootstrap interval (metrics.json: <metric>_ci).
CI_METRICS = ("top1", "top5", "macro_f1", "edible_f1", "ece_calibrated", "dangerous_verdict_edible",
              "edible_verdict_edible")
# Metrics with a paired interval against the float reference (metrics.json: delta_<metric>_ci).
PAIRED_METRICS = ("top1", "ece_calibrated")
# Keys `paired` adds to a metrics entry.
PAIRED_KEYS = ("delta_top1_ci", "delta_ece_calibrated", "delta_ece_calibrated_ci", "mcnemar_p", "mcnemar_b",
               "mcnemar_c", "flip_rate", "mean_abs_dprob", "max_abs_dprob", "delta_significant")


# --- resampling -------------------------------------------------------------------------------------
def group_ids(keys: Sequence[Hashable]) -> tuple[np.ndarray, int]:
    """(N,) group index of each photo (groups numbered in first-seen order) and the number of groups."""
    index: dict = {}
    ids = np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)
    return ids, len(index)


class GroupBootstrap:
    """`n_samples` resamples of the groups with replacement (each resample draws as many groups as
    there are), seeded. `index` (B, G): the groups drawn; `counts` (B, G): how often each group was
    drawn; `weights` (B, N): how often each photo counts, i.e. its group's count (a group is never
    split: all its photos carry the same weight)."""

    def __init__(self, keys: Sequence[Hashable], n_samples: int, seed: int):
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.group_of, self.n_groups = group_ids(keys)
        if self.n_groups == 0:
            raise ValueError("no photos to resample")
        rng = np.random.default_rng(seed)
        b, g = n_samples, self.n_groups
        self.index = rng.integers(0, g, size=(b, g))
        flat = (self.index + np.arange(b)[:, None] * g).ravel()
        self.counts = np.bincount(flat, minlength=b * g).reshape(b, g).astype(np.float64)
        self.weights = self.counts[:, self.group_of]

    @property
    def n_samples(self) -> int:
        return self.index.shape[0]


def interval(dist: np.ndarray, confidence: float) -> list[float] | None:
    """Percentile interval [lo, hi] holding `confidence` of the resampled values; resamples where
    the metric is undefined (NaN: e.g. no poisonous photo drawn) are left out; None when none is defined."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    d = np.asarray(dist, np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return None
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(d, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def excludes_zero(ci: Sequence[float] | None) -> bool:
    return ci is not None and (ci[0] > 0.0 or ci[1] < 0.0)


# --- weighted metrics: one value per row of weights (B, N) ---------------------------------------------
def _onehot(idx: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(idx), n))
    out[np.arange(len(idx)), idx] = 1.0
    return out


def weighted_rate(weights: np.ndarray, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of per-photo 0/1 values over the photos in `mask`; NaN where no such photo carries weight."""
    v = np.asarray(values, np.float64)
    m = np.ones_like(v) if mask is None else np.asarray(mask, np.float64)
    den = weights @ m
    num = weights @ (v * m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_ece(weights: np.ndarray, confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE (metrics.expected_calibration_error, same bins) with photo weights:
    sum over bins of |sum_i w_i (correct_i - conf_i)| / sum_i w_i."""
    conf = np.asarray(confidence, np.float64)
    idx, _ = metrics._bin_index(conf, n_bins)
    gaps = _onehot(idx, n_bins) * (np.asarray(correct, np.float64) - conf)[:, None]
    return np.abs(weights @ gaps).sum(axis=1) / weights.sum(axis=1)


def weighted_f1(weights: np.ndarray, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Binary F1 of the positive class, 2 tp / (2 tp + fp + fn), 0 when undefined (zero_division=0)."""
    t, p = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    tp, den = weights @ (t * p), weights @ t + weights @ p
    return np.where(den > 0, 2.0 * tp / np.where(den > 0, den, 1.0), 0.0)


def weighted_macro_f1(weights: np.ndarray, labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro F1 over all n_classes (metrics.classification_report: labels=range(C), zero_division=0)."""
    y, p = _onehot(np.asarray(labels), n_classes), _onehot(np.asarray(pred), n_classes)
    tp, den = weights @ (y * p), weights @ y + weights @ p
    f1 = np.where(den > 0, 2.0 * tp / np.where(den > 0, den, 1.0), 0.0)
    return f1.mean(axis=1)


# --- per-photo outcomes of one format --------------------------------------------------------------------
@dataclass
class Outcomes:
    """What one format did with each test photo, everything the metrics with intervals need."""
    labels: np.ndarray          # (N,) true class
    pred: np.ndarray            # (N,) top-1 class (np.argmax of the probabilities)
    top1_correct: np.ndarray    # (N,) bool; a tie at the top counts as wrong (metrics.topk_accuracy)
    top5_correct: np.ndarray    # (N,) bool; likewise at the 5th place
    calibrated: np.ndarray      # (N, C) calibrated probabilities
    called_edible: np.ndarray   # (N,) bool: predict.py's verdict is "edible"
    edible_class: np.ndarray    # (C,) bool
    dangerous_class: np.ndarray  # (C,) bool

    @classmethod
    def from_arrays(cls, probs: np.ndarray, calibrated: np.ndarray, labels: np.ndarray, verdicts: Sequence[str],
                    edible_class: np.ndarray, dangerous_class: np.ndarray) -> "Outcomes":
        p = np.asarray(probs, np.float64)
        y = np.asarray(labels, np.int64)
        if len(verdicts) != len(y) or p.shape[0] != len(y) or np.shape(calibrated) != p.shape:
            raise ValueError("probs, calibrated, labels and verdicts must describe the same photos")
        p_true = p[np.arange(len(y)), y]
        rivals = (p >= p_true[:, None]).sum(axis=1) - 1
        return cls(labels=y, pred=metrics.predictions(p), top1_correct=rivals < 1, top5_correct=rivals < 5,
                   calibrated=np.asarray(calibrated, np.float64),
                   called_edible=np.array([v == "edible" for v in verdicts], bool),
                   edible_class=np.asarray(edible_class, bool), dangerous_class=np.asarray(dangerous_class, bool))

    @property
    def n_classes(self) -> int:
        return self.calibrated.shape[1]


def distributions(weights: np.ndarray, out: Outcomes, n_bins: int) -> dict[str, np.ndarray]:
    """{metric: (B,) value under each row of weights} for CI_METRICS; NaN where undefined."""
    w = np.atleast_2d(np.asarray(weights, np.float64))
    if w.shape[1] != len(out.labels):
        raise ValueError(f"weights cover {w.shape[1]} photos, the outcomes {len(out.labels)}")
    cal_pred = metrics.predictions(out.calibrated)
    true_dangerous = out.dangerous_class[out.labels]
    true_edible = out.edible_class[out.labels]
    return {
        "top1": weighted_rate(w, out.top1_correct),
        "top5": weighted_rate(w, out.top5_correct),
        "macro_f1": weighted_macro_f1(w, out.labels, out.pred, out.n_classes),
        "edible_f1": weighted_f1(w, true_edible, out.edible_class[out.pred]),
        "ece_calibrated": weighted_ece(w, out.calibrated.max(axis=1), cal_pred == out.labels, n_bins),
        "dangerous_verdict_edible": weighted_rate(w, out.called_edible, true_dangerous),
        "edible_verdict_edible": weighted_rate(w, out.called_edible, true_edible),
    }


def point(out: Outcomes, n_bins: int) -> dict[str, float | None]:
    """The metrics of `distributions` on the test split itself (unit weights); None where undefined."""
    d = distributions(np.ones((1, len(out.labels))), out, n_bins)
    return {k: (float(v[0]) if math.isfinite(v[0]) else None) for k, v in d.items()}


def intervals(dist: dict[str, np.ndarray], confidence: float) -> dict[str, list[float] | None]:
    """{<metric>_ci: [lo, hi] or None} for every metric of `dist`."""
    return {f"{k}_ci": interval(v, confidence) for k, v in dist.items()}


# --- one format against its float reference -------------------------------------------------------------
def mcnemar(ref_correct: np.ndarray, correct: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test on paired per-photo correctness: b = photos the reference gets right and
    this format wrong, c = the reverse; p = two-sided binomial test of b out of b + c at 1/2
    (1.0 when no photo changes)."""
    r, c_ = np.asarray(ref_correct, bool), np.asarray(correct, bool)
    if r.shape != c_.shape:
        raise ValueError("paired outcomes must cover the same photos")
    b, c = int(np.sum(r & ~c_)), int(np.sum(~r & c_))
    if b + c == 0:
        return b, c, 1.0
    from scipy.stats import binomtest

    return b, c, float(min(1.0, binomtest(b, b + c, 0.5).pvalue))


def paired(ref: Outcomes, out: Outcomes, ref_dist: dict[str, np.ndarray], dist: dict[str, np.ndarray],
           confidence: float, n_bins: int) -> dict:
    """PAIRED_KEYS of `out` against the reference format `ref` of the same model; ref_dist and dist
    must come from the same resamples (one GroupBootstrap per model)."""
    if ref.labels.shape != out.labels.shape or not np.array_equal(ref.labels, out.labels):
        raise ValueError("a format and its reference must be evaluated on the same photos")
    delta = {k: np.asarray(dist[k]) - np.asarray(ref_dist[k]) for k in PAIRED_METRICS}
    top1_ci = interval(delta["top1"], confidence)
    ece_ref, ece = point(ref, n_bins)["ece_calibrated"], point(out, n_bins)["ece_calibrated"]
    b, c, p = mcnemar(ref.top1_correct, out.top1_correct)
    dprob = np.abs(out.calibrated - ref.calibrated).max(axis=1)
    return {
        "delta_top1_ci": top1_ci,
        "delta_ece_calibrated": ece - ece_ref,
        "delta_ece_calibrated_ci": interval(delta["ece_calibrated"], confidence),
        "mcnemar_p": p, "mcnemar_b": b, "mcnemar_c": c,
        "flip_rate": float(np.mean(out.pred != ref.pred)),
        "mean_abs_dprob": float(dprob.mean()), "max_abs_dprob": float(dprob.max()),
        # Both tests must agree: a group bootstrap over a handful of finds can exclude 0 when every
        # changed photo sits in a few finds that all move one way (the demo's PTQ: 4 finds, none
        # gaining, p 0.29), which McNemar on the photos does not call a difference.
        "delta_significant": excludes_zero(top1_ci) and p < 1.0 - confidence,
    }


# --- the open set: resampling species ---------------------------------------------------------------------
def weighted_auroc(w_unknown: np.ndarray, unknown: np.ndarray, w_known: np.ndarray, known: np.ndarray) -> np.ndarray:
    """AUROC (ties half) of each resample: rows of weights (B, Nu) and (B, Nk) over the photos'
    scores. With unit weights it equals openset.auroc."""
    u, k = np.asarray(unknown, np.float64), np.asarray(known, np.float64)
    above = (u[:, None] > k[None, :]) + 0.5 * (u[:, None] == k[None, :])          # (Nu, Nk)
    num = ((w_unknown @ above) * w_known).sum(1)
    den = w_unknown.sum(1) * w_known.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def open_set_intervals(known: np.ndarray, known_groups: Sequence[Hashable], unknown: np.ndarray,
                       unknown_species: Sequence[Hashable], threshold: float | None, confidence: float,
                       n_samples: int, seed: int, unknown_edible: np.ndarray | None = None) -> dict:
    """Intervals of the unknown-species figures that resample what they generalise over: the
    unknown side by SPECIES (a new species in the forest, not a new photo of a measured one; ten
    species give wide intervals, and should), the known side by finds, as every other interval.
    Keys: auroc, and with a threshold flagged (share of unknown photos at or above it), kept (share
    of known photos below it) and, given per-photo "edible" verdicts of the unknown photos,
    verdict_edible."""
    bu = GroupBootstrap(list(unknown_species), n_samples, seed + 1)
    bk = GroupBootstrap(list(known_groups), n_samples, seed)
    u, k = np.asarray(unknown, np.float64), np.asarray(known, np.float64)
    out = {"auroc": interval(weighted_auroc(bu.weights, u, bk.weights, k), confidence)}
    if threshold is not None:
        out["flagged"] = interval(weighted_rate(bu.weights, (u >= threshold).astype(np.float64)), confidence)
        out["kept"] = interval(weighted_rate(bk.weights, (k < threshold).astype(np.float64)), confidence)
    if unknown_edible is not None:
        out["verdict_edible"] = interval(weighted_rate(bu.weights, np.asarray(unknown_edible, np.float64)), confidence)
    return out
