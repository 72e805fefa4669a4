"""Classification, safety and calibration metrics over predicted probabilities. Pure NumPy
(plus scikit-learn for precision/recall/F1, imported only by the functions that need it: it costs
~1 s, and predict.py needs apply_temperature within its cold-start budget), no TensorFlow.

Every function takes `probs`, an (N, C) array of class probabilities (rows sum to about 1; int8
models give multiples of 1/256, so ties are common), and `labels`, (N,) integer class indices.

Conventions, chosen once and used everywhere:
- The predicted ("top-1") class is `np.argmax`, i.e. the lowest class index among tied maxima. The
  confusion matrix, the species report, the edible metrics, ECE and risk-coverage all use it.
- `topk_accuracy` is pessimistic about ties: a photo counts as correct at k only when fewer than k
  other classes have a probability >= the true class's, i.e. a tie at the k-th place (or above)
  counts as wrong. Ties are rare in float outputs but frequent in int8 outputs, where an
  optimistic rule would reward a model that outputs all zeros.
- `dangerous_error` is NaN when the test split holds no poisonous/deadly photo (0/0 is not 0: a
  model can't be credited with a safety record it was never tested on). JSON writers must pass
  results through `json_safe` (NaN -> null) because `json.dumps` would otherwise write the bare
  token NaN, which strict JSON readers reject.

    m = summarize(probs, labels, edible_class, dangerous_class)
    T = fit_temperature(to_log_probs(val_probs), val_labels)
    ece_after = expected_calibration_error(apply_temperature(probs, T), labels)
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

# Probabilities are clipped to this before a log: int8 models output exact zeros.
EPS = 1e-12

# Search range of the temperature (fit on log T, so both ends are equally far from T = 1).
T_MIN, T_MAX = 0.05, 20.0

SUMMARY_KEYS = ("top1", "top5", "macro_precision", "macro_recall", "macro_f1", "edible_precision",
                "edible_recall", "edible_f1", "dangerous_error", "ece", "mean_confidence", "nll",
                "brier", "n_test")


# --- input checks -------------------------------------------------------------------------------
def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D (N, C) array, got shape {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must be a 1-D array of length {p.shape[0]}, got shape {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("no samples: metrics of an empty test set are undefined")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1] - 1}], got [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contain NaN or infinite values")
    return p, y.astype(np.int64)


def _mask(mask: Any, n_classes: int, what: str) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    if m.shape != (n_classes,):
        raise ValueError(f"{what} must be a boolean mask of shape ({n_classes},), got {m.shape}")
    return m


def predictions(probs: Any) -> np.ndarray:
    """Top-1 class per row: np.argmax, the lowest class index among tied maxima."""
    return np.argmax(np.asarray(probs), axis=1)


# --- accuracy and per-species report ------------------------------------------------------------
def topk_accuracy(probs: Any, labels: Any, k: int) -> float:
    """Share of rows whose true class is in the top k, counting ties against the model: correct
    when #{j != y : p_j >= p_y} < k. So with p = (0.4, 0.4, 0.2) and y = 0, top-1 is wrong (class 1
    ties it) and top-2 is right. k >= C is always right (top-5 of a 3-class model is 1.0)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p, y = _check(probs, labels)
    p_true = p[np.arange(len(y)), y]
    # The true class itself satisfies p_y >= p_y, hence the "- 1".
    rivals = (p >= p_true[:, None]).sum(axis=1) - 1
    return float(np.mean(rivals < k))


def classification_report(probs: Any, labels: Any, class_names: list[str] | None = None) -> dict:
    """Macro precision/recall/F1 over all C species (scikit-learn, labels=range(C),
    zero_division=0), per-species rows, and the macro F1 over the species present in the test split.

    With labels=range(C), a species with no test photo and never predicted scores 0 and pulls the
    macro averages down; `macro_f1_present` and `n_species_present` show how much."""
    from sklearn.metrics import precision_recall_fscore_support

    p, y = _check(probs, labels)
    n_classes = p.shape[1]
    pred = predictions(p)
    every = list(range(n_classes))
    mp, mr, mf, _ = precision_recall_fscore_support(y, pred, labels=every, average="macro",
                                                    zero_division=0)
    pc, rc, fc, sc = precision_recall_fscore_support(y, pred, labels=every, average=None,
                                                     zero_division=0)
    present = sorted(set(y.tolist()))
    _, _, mf_present, _ = precision_recall_fscore_support(y, pred, labels=present, average="macro",
                                                          zero_division=0)
    names = class_names if class_names is not None else [str(c) for c in every]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names for {n_classes} classes")
    return {
        "macro_precision": float(mp), "macro_recall": float(mr), "macro_f1": float(mf),
        "macro_f1_present": float(mf_present), "n_species_present": len(present),
        "per_class": [{"name": names[c], "precision": float(pc[c]), "recall": float(rc[c]),
                       "f1": float(fc[c]), "support": int(sc[c])} for c in every],
    }


def confusion_matrix(probs: Any, labels: Any) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = top-1 predicted class."""
    p, y = _check(probs, labels)
    n = p.shape[1]
    return np.bincount(y * n + predictions(p), minlength=n * n).reshape(n, n)


# --- edible vs not --------------------------------------------------------------------------------
def edible_metrics(probs: Any, labels: Any, edible_class: Any, dangerous_class: Any) -> dict:
    """Binary edible-vs-not from the top-1 species (predicted edible = top-1 species is
    choice/edible/caution), with "edible" the positive class: precision (of photos called edible,
    the share truly edible), recall, F1 (scikit-learn, zero_division=0), and dangerous_error: the
    share of photos whose TRUE species is poisonous/deadly and whose top-1 species is edible; NaN
    when the test split has no such photo."""
    from sklearn.metrics import precision_recall_fscore_support

    p, y = _check(probs, labels)
    edible = _mask(edible_class, p.shape[1], "edible_class")
    dangerous = _mask(dangerous_class, p.shape[1], "dangerous_class")
    if np.any(edible & dangerous):
        raise ValueError("a class cannot be both edible and dangerous")
    true_edible = edible[y]
    pred_edible = edible[predictions(p)]
    prec, rec, f1, _ = precision_recall_fscore_support(true_edible, pred_edible, labels=[True],
                                                       average=None, zero_division=0)
    true_dangerous = dangerous[y]
    n_dangerous = int(true_dangerous.sum())
    danger = float(pred_edible[true_dangerous].mean()) if n_dangerous else math.nan
    return {"edible_precision": float(prec[0]), "edible_recall": float(rec[0]),
            "edible_f1": float(f1[0]), "dangerous_error": danger, "n_dangerous": n_dangerous}


# --- calibration ----------------------------------------------------------------------------------
def _bin_index(conf: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bins (0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]; a confidence of exactly 0 joins the first.
    searchsorted on the same edges that are reported avoids float drift of ceil(conf * n)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:], conf, side="left")
    return np.clip(idx, 0, n_bins - 1), edges


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin of top-1 confidence: lower, upper, count, accuracy, confidence (mean
    top-1 probability). accuracy and confidence are NaN for empty bins (nothing to plot)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, y = _check(probs, labels)
    conf = p.max(axis=1)
    correct = (predictions(p) == y).astype(np.float64)
    idx, edges = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return {"lower": edges[:-1], "upper": edges[1:], "count": count,
            "accuracy": np.where(count > 0, acc, np.nan),
            "confidence": np.where(count > 0, mean_conf, np.nan)}


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE = sum over bins of |accuracy - confidence| * n_bin / N (equal-width bins of top-1
    confidence, see reliability_bins)."""
    b = reliability_bins(probs, labels, n_bins)
    filled = b["count"] > 0
    gaps = np.abs(b["accuracy"][filled] - b["confidence"][filled])
    return float(np.sum(gaps * b["count"][filled]) / b["count"].sum())


def mean_confidence(probs: Any) -> float:
    return float(np.mean(np.asarray(probs, dtype=np.float64).max(axis=1)))


def nll(probs: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the true class; probabilities clipped at EPS (an int8 zero
    on the true class costs -log(1e-12) = 27.6 rather than infinity)."""
    p, y = _check(probs, labels)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))


def brier(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: mean over samples of sum_c (p_c - onehot_c)^2, in [0, 2]."""
    p, y = _check(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def softmax(z: Any, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def to_log_probs(probs: Any) -> np.ndarray:
    """log of clipped probabilities: logits up to a per-row constant, so softmax(log p / T) is the
    temperature-scaled distribution (what fit_temperature needs from a model that outputs softmax)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0))


def _nll_at(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    s = s - s.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(s).sum(axis=1))
    return float(np.mean(log_norm - s[np.arange(len(y)), y]))


def fit_temperature(logits: Any, labels: Any, t_min: float = T_MIN, t_max: float = T_MAX) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) (fit on validation data). `logits` may
    be log-probabilities (see to_log_probs). NLL is convex in 1/T, hence unimodal in log T: a
    coarse grid over log T in [log t_min, log t_max] brackets the minimum and golden-section
    search refines it. No scipy needed; deterministic."""
    z, y = _check(logits, labels)
    lo, hi = math.log(t_min), math.log(t_max)
    grid = np.linspace(lo, hi, 61)
    losses = [_nll_at(z, y, math.exp(g)) for g in grid]
    best = int(np.argmin(losses))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    f = lambda g: _nll_at(z, y, math.exp(g))  # noqa: E731
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while b - a > 1e-6:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return float(math.exp((a + b) / 2))


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities from probabilities: softmax(log(clip(p)) / T). T > 1
    softens (less confident), T < 1 sharpens; T = 1 returns p renormalised."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return softmax(to_log_probs(probs) / temperature, axis=-1)


# --- selective prediction -------------------------------------------------------------------------
def risk_coverage(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and selective risk when only the most confident photos are answered: photos sorted
    by top-1 confidence, highest first; at position i, coverage = (i+1)/N and risk = error rate of
    the first i+1. Among equal confidences the errors come first (pessimistic, deterministic)."""
    p, y = _check(probs, labels)
    conf = p.max(axis=1)
    wrong = (predictions(p) != y).astype(np.float64)
    # lexsort: last key is primary -> confidence descending, then wrong (1) before right (0).
    order = np.lexsort((-wrong, -conf))
    n = np.arange(1, len(y) + 1)
    return n / len(y), np.cumsum(wrong[order]) / n


# --- everything at once -------------------------------------------------------------------------
def summarize(probs: Any, labels: Any, edible_class: Any, dangerous_class: Any,
              n_bins: int = 15) -> dict:
    """The per-model metrics of reports/metrics.json (SUMMARY_KEYS), as python floats and ints.
    Only dangerous_error may be NaN (no poisonous/deadly test photo); write with json_safe."""
    p, y = _check(probs, labels)
    report = classification_report(p, y)
    safety = edible_metrics(p, y, edible_class, dangerous_class)
    out = {
        "top1": topk_accuracy(p, y, 1),
        "top5": topk_accuracy(p, y, 5),
        "macro_precision": report["macro_precision"],
        "macro_recall": report["macro_recall"],
        "macro_f1": report["macro_f1"],
        "edible_precision": safety["edible_precision"],
        "edible_recall": safety["edible_recall"],
        "edible_f1": safety["edible_f1"],
        "dangerous_error": safety["dangerous_error"],
        "ece": expected_calibration_error(p, y, n_bins),
        "mean_confidence": mean_confidence(p),
        "nll": nll(p, y),
        "brier": brier(p, y),
        "n_test": int(len(y)),
    }
    assert tuple(out) == SUMMARY_KEYS
    return out


def json_safe(value: Any) -> Any:
    """A copy with NaN/inf floats replaced by None (JSON null) and NumPy scalars/arrays turned into
    python ones, recursively; json.dumps(json_safe(x), allow_nan=False) then always succeeds."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
