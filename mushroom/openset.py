"""Open set: how much a photo looks like none of the species the model knows. Pure NumPy (predict.py
and the phone page compute the same from what an exported file gives), no TensorFlow.

    z = log_probs(outputs, temperature)                 # calibrated log-probabilities
    s = unknown_scores(outputs, temperature, stats)     # {score name: (N,) array}, higher = more unknown
    t = fit_threshold(s["msp"][unknown_val], 0.95)      # flags 95 % of the unknown-val photos
    flagged = s["msp"] >= t

`outputs` is what a model file gives for a batch, by role (modelio.OUTPUT_LAYERS): "probs", and for
files exported by this project "logits" and "embedding". The scores:
- msp: 1 - the maximum calibrated probability (softmax(logits / T));
- energy: -T log sum exp(logits / T), the free energy (Liu et al., 2020), at the calibrated T;
- max_logit: minus the largest logit (Hendrycks et al., 2022);
- mahalanobis: the smallest Mahalanobis distance of the embedding to a class mean, with one shared
  covariance fitted on the training photos (Lee et al., 2018); needs `stats` (fit_feature_stats);
- rel_mahalanobis: relative Mahalanobis distance (Ren et al., 2021) on the L2-normalised embedding
  reduced by PCA (fit_rmd_stats): the class distance minus the distance to the training photos as
  one background Gaussian, which removes what every photo shares (light, background, camera) from
  the score; plain Mahalanobis collapses on fine-tuned CNN features, this does not. Measured on the
  demo (10 seeded species splits, forager embedding): AUROC 0.753 at 64 dimensions, 0.705 at all
  1280, 0.657 plain Mahalanobis, 0.699 max-logit.
Files without logits (older exports) give msp only, from their probabilities.

Several photos of one find are fused (`fuse`) into the class probabilities of one answer; the
find's unknown-species score is the mean of its photos' scores (`find_score`).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

SCORES = ("msp", "energy", "max_logit", "mahalanobis", "rel_mahalanobis")
# Scores computed from the embedding and statistics of the training photos (open_set/<format>.npz).
FEATURE_SCORES = ("mahalanobis", "rel_mahalanobis")
FUSIONS = ("mean", "sum")
EPS = 1e-12
# Ledoit-Wolf-style shrinkage of the shared covariance towards its mean variance: 1280-d embeddings
# from a few hundred training photos give a singular covariance otherwise.
SHRINKAGE = 0.1
# Below the lowest score when every photo must be flagged: far above rounding, far below any gap.
THRESHOLD_MARGIN = 1e-9


def _logits(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Logits, or log-probabilities (logits up to a per-row constant) for files without them."""
    if "logits" in outputs:
        return np.asarray(outputs["logits"], np.float64)
    return np.log(np.clip(np.asarray(outputs["probs"], np.float64), EPS, 1.0))


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def log_probs(outputs: Mapping[str, np.ndarray], temperature: float | None = None) -> np.ndarray:
    """Calibrated log-probabilities (N, C): log softmax(logits / T) (T = 1 when None)."""
    z = _logits(outputs) / (temperature or 1.0)
    return z - _logsumexp(z)[..., None]


def probabilities(outputs: Mapping[str, np.ndarray], temperature: float | None = None) -> np.ndarray:
    return np.exp(log_probs(outputs, temperature))


def available_scores(outputs: Mapping[str, np.ndarray], stats: Mapping | None = None) -> tuple[str, ...]:
    out = ["msp"]
    if "logits" in outputs:
        out += ["energy", "max_logit"]
    if "embedding" in outputs and stats is not None:
        if "means" in stats:
            out.append("mahalanobis")
        if "rmd_components" in stats:
            out.append("rel_mahalanobis")
    return tuple(out)


def unknown_scores(outputs: Mapping[str, np.ndarray], temperature: float | None = None,
                   stats: Mapping | None = None, which: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{score: (N,) array}, higher = more likely a species the model does not know."""
    names = [s for s in (which or SCORES) if s in available_scores(outputs, stats)]
    t = temperature or 1.0
    out = {}
    if "msp" in names:
        out["msp"] = 1.0 - np.exp(log_probs(outputs, t).max(axis=-1))
    if "energy" in names:
        out["energy"] = -t * _logsumexp(_logits(outputs) / t)
    if "max_logit" in names:
        out["max_logit"] = -_logits(outputs).max(axis=-1)
    if "mahalanobis" in names:
        out["mahalanobis"] = mahalanobis(outputs["embedding"], stats)
    if "rel_mahalanobis" in names:
        out["rel_mahalanobis"] = relative_mahalanobis(outputs["embedding"], stats)
    return out


# --- the feature-space score -----------------------------------------------------------------------
def fit_feature_stats(embeddings: np.ndarray, labels: np.ndarray, n_classes: int,
                      shrinkage: float = SHRINKAGE) -> dict:
    """Class means of training embeddings (N, D) and a whitening matrix W of their shared, shrunk
    covariance (W W^T = inverse covariance), so a Mahalanobis distance is a plain squared distance
    after x -> x W: one matrix product per photo instead of one per photo and class."""
    x = np.asarray(embeddings, np.float64)
    y = np.asarray(labels)
    means = np.stack([x[y == c].mean(axis=0) if np.any(y == c) else np.full(x.shape[1], np.nan)
                      for c in range(n_classes)])
    centred = x - means[y]
    cov = centred.T @ centred / max(1, len(x) - n_classes)
    target = np.trace(cov) / cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * target * np.eye(cov.shape[0])
    whiten = np.linalg.cholesky(np.linalg.inv(cov))
    return {"means": means.astype(np.float32), "whiten": whiten.astype(np.float32)}


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


def _whitening(centred: np.ndarray, dof: int, shrinkage: float) -> np.ndarray:
    cov = centred.T @ centred / max(1, dof)
    target = np.trace(cov) / cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * target * np.eye(cov.shape[0])
    return np.linalg.cholesky(np.linalg.inv(cov))


def fit_rmd_stats(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, dim: int = 64,
                  shrinkage: float = SHRINKAGE, others: np.ndarray | None = None,
                  other_groups: Sequence | None = None) -> dict:
    """What relative_mahalanobis needs, from the training photos' embeddings (N, D): the PCA of the
    L2-normalised embeddings (centre, D x k components, k = min(dim, N, D)), and in that space the
    class means with their shared whitening matrix and the background (all photos) mean with its
    own. Keys are prefixed rmd_ so that one statistics file holds both Mahalanobis scores.

    others, other_groups: embeddings of photos of species the model must not know (the outlier-
    exposure photos) and their species. They join the PCA, the shared within-class covariance (each
    species one more class) and the background, but no class mean is kept for them: distances are
    still to the model's classes only, measured in directions that tell mushroom species apart,
    not only the model's few. Measured on the demo's forager over four seeded species splits:
    AUROC per find +0.029 (every split), per photo +0.011 (-0.009 to +0.045); docs/open-set.md. The
    file keeps the same arrays, so predict.py and the page compute the score unchanged."""
    x = _l2(embeddings)
    y = np.asarray(labels)
    if others is not None and len(others):
        if len(other_groups) != len(others):
            raise ValueError(f"{len(others)} other photos but {len(other_groups)} species for them")
        _, group = np.unique(np.asarray(other_groups), return_inverse=True)
        x = np.concatenate([x, _l2(others)])
        y = np.concatenate([y, n_classes + group])
    n_groups = int(max(n_classes, y.max() + 1))
    centre = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - centre, full_matrices=False)
    k = int(min(dim, vt.shape[0]))
    components = vt[:k].T
    z = (x - centre) @ components
    means = np.stack([z[y == c].mean(axis=0) if np.any(y == c) else np.full(k, np.nan) for c in range(n_groups)])
    whiten = _whitening(z - means[y], len(z) - n_groups, shrinkage)
    mean_bg = z.mean(axis=0)
    whiten_bg = _whitening(z - mean_bg, len(z) - 1, shrinkage)
    return {"rmd_centre": centre.astype(np.float32), "rmd_components": components.astype(np.float32),
            "rmd_means": means[:n_classes].astype(np.float32), "rmd_whiten": whiten.astype(np.float32),
            "rmd_mean_bg": mean_bg.astype(np.float32), "rmd_whiten_bg": whiten_bg.astype(np.float32)}


def relative_mahalanobis(embeddings: np.ndarray, stats: Mapping) -> np.ndarray:
    """min over classes of the Mahalanobis distance to the class mean, minus the distance to the
    background mean, in the PCA space of fit_rmd_stats (float64 throughout, from the float32 stats)."""
    z = (_l2(embeddings) - np.asarray(stats["rmd_centre"], np.float64)) @ np.asarray(stats["rmd_components"], np.float64)
    d_class = mahalanobis(z, {"means": stats["rmd_means"], "whiten": stats["rmd_whiten"]})
    zb = (z - np.asarray(stats["rmd_mean_bg"], np.float64)) @ np.asarray(stats["rmd_whiten_bg"], np.float64)
    return d_class - (zb ** 2).sum(axis=1)


def stats_for(score: str, stats: Mapping) -> dict:
    """The statistics a feature score needs (what open_set/<format>.npz keeps for it)."""
    if score == "mahalanobis":
        return {k: stats[k] for k in ("means", "whiten")}
    if score == "rel_mahalanobis":
        return {k: v for k, v in stats.items() if k.startswith("rmd_")}
    return {}


def prepared(stats: Mapping) -> dict:
    """`stats` with what every score needs computed once: the whitening matrix in float64 and the
    whitened class means of classes with training photos (predict.py scores photo after photo)."""
    if "means_whitened" in stats or "means" not in stats:
        return dict(stats)
    w = np.asarray(stats["whiten"], np.float64)
    means = np.asarray(stats["means"], np.float64)
    mw = means[np.all(np.isfinite(means), axis=1)] @ w
    return {**stats, "whiten": w, "means_whitened": mw}


def mahalanobis(embeddings: np.ndarray, stats: Mapping) -> np.ndarray:
    """min over classes of (x - mean_c)^T S^-1 (x - mean_c); classes without training photos are skipped."""
    stats = prepared(stats)
    xw, mw = np.asarray(embeddings, np.float64) @ stats["whiten"], stats["means_whitened"]
    d = (xw ** 2).sum(1)[:, None] - 2 * xw @ mw.T + (mw ** 2).sum(1)[None, :]
    return np.maximum(d, 0.0).min(axis=1)


# --- threshold and quality ---------------------------------------------------------------------------
def fit_threshold(unknown_scores_val: np.ndarray, recall: float) -> float:
    """A threshold t with mean(score >= t) >= recall on unknown-val photos, flagging `recall` of the
    unknown photos while flagging as few known ones as the score allows: halfway between the lowest
    score it must flag and the next lower one, not on a photo's score. A photo scored one at a time
    (predict.py, the page) differs from its score in a batch by rounding (~1e-13), which would move
    a photo sitting exactly on the threshold to the other side."""
    s = np.sort(np.asarray(unknown_scores_val, np.float64))
    if not len(s):
        raise ValueError("no unknown-val photos to fit the unknown-species threshold on")
    k = min(int(math.floor((1.0 - recall) * len(s) + 1e-9)), len(s) - 1)
    j = int(np.searchsorted(s, s[k]))     # first photo tied with s[k]: all of them are flagged
    if j:
        return float((s[j - 1] + s[k]) / 2)
    return float(s[k] - THRESHOLD_MARGIN * max(1.0, abs(s[k])))


def auroc(unknown: np.ndarray, known: np.ndarray) -> float:
    """P(score of an unknown photo > score of a known one), ties counted half (Mann-Whitney U).
    NaN when either side is empty."""
    u = np.asarray(unknown, np.float64)
    k = np.asarray(known, np.float64)
    if not len(u) or not len(k):
        return float("nan")
    both = np.concatenate([u, k])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average ranks over ties
    i = 0
    while i < len(both):
        j = i
        while j + 1 < len(both) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_sum = ranks[:len(u)].sum()
    return float((rank_sum - len(u) * (len(u) + 1) / 2.0) / (len(u) * len(k)))


def species_fold_auroc(unknown: np.ndarray, unknown_species: Sequence[str], known: np.ndarray, seed: int,
                       folds: int = 5) -> dict:
    """AUROC of the unknown photos against the known ones, per fold of the unknown species (seeded,
    every species in one fold; at most `folds` folds): {"mean", "std", "folds": [...]}. Photos of one
    species are near-duplicates of each other, so a pooled AUROC is decided by the largest species;
    the mean over folds of species is the grouped cross-validated estimate the score is chosen by."""
    names = sorted(set(unknown_species))
    k = max(1, min(folds, len(names)))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[j]: i % k for i, j in enumerate(order)}
    by_photo = np.array([fold_of[n] for n in unknown_species])
    unknown = np.asarray(unknown, np.float64)
    values = [auroc(unknown[by_photo == f], known) for f in range(k)]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "folds": [float(v) for v in values]}


def species_breakdown(known: np.ndarray, unknown: np.ndarray, unknown_species: Sequence[str], threshold: float,
                      taken_for: Sequence[str], verdicts: Sequence[str] | None = None) -> list[dict]:
    """Per unknown species: how well the score separates its photos from the known ones and what the
    model takes them for. One row per species, the hardest first (lowest AUROC): {"species",
    "photos", "auroc" (its photos against every known photo), "flagged" (share at or above the
    threshold), "taken_for" and "taken_for_share" (the most frequent top-1 class among its photos),
    "edible" (photos answered "edible", when verdicts are given)}. A pooled AUROC hides which
    species the model cannot tell from one it knows; this names them."""
    unknown = np.asarray(unknown, np.float64)
    names = np.asarray(unknown_species)
    taken = np.asarray(taken_for)
    if not (len(unknown) == len(names) == len(taken)) or (verdicts is not None and len(verdicts) != len(unknown)):
        raise ValueError("species_breakdown needs one species, one top-1 class (and one verdict) per unknown photo")
    edible = None if verdicts is None else np.asarray(verdicts) == "edible"
    rows = []
    for name in np.unique(names):
        mine = names == name
        classes, counts = np.unique(taken[mine], return_counts=True)
        row = {"species": str(name), "photos": int(mine.sum()), "auroc": auroc(unknown[mine], known),
               "flagged": float(np.mean(unknown[mine] >= threshold)), "taken_for": str(classes[counts.argmax()]),
               "taken_for_share": float(counts.max() / mine.sum())}
        if edible is not None:
            row["edible"] = int(edible[mine].sum())
        rows.append(row)
    return sorted(rows, key=lambda r: (r["auroc"], r["species"]))


# The order a choice between scores that the unknown-val species cannot tell apart falls back on:
# relative Mahalanobis first, the best per photo and per find in every split of
# benchmarks/open_set_exposure.py (0.809 against 0.720 for the next, msp, over three splits).
PREFERENCE = ("rel_mahalanobis", "msp", "max_logit", "energy", "mahalanobis")


def choose_score(auroc_by_score: Mapping[str, float | Mapping]) -> str:
    """The score with the highest AUROC. Given species-fold results ({"mean", "std", "folds"}:
    species_fold_auroc), the one-standard-error rule: among the scores whose mean is within one
    standard error of the best (ten fit species cannot separate 0.74 from 0.75), the first in
    PREFERENCE. Plain numbers: the best, ties to the first in PREFERENCE."""
    def mean(v):
        return v["mean"] if isinstance(v, Mapping) else v
    valid = {k: v for k, v in auroc_by_score.items() if v is not None and math.isfinite(mean(v))}
    if not valid:
        return "msp"
    best_name = max(valid, key=lambda k: (mean(valid[k]), -PREFERENCE.index(k)))
    best = valid[best_name]
    se = best["std"] / math.sqrt(len(best["folds"])) if isinstance(best, Mapping) and best.get("folds") else 0.0
    return next(s for s in PREFERENCE if s in valid and mean(valid[s]) >= mean(best) - se)


def partition_unknown_species(names: Sequence[str], dangerous: Sequence[bool], exposure_fraction: float,
                              val_fraction: float, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(exposure, unknown-val, unknown-test) species names, disjoint. Exposure species train the
    model towards a uniform answer (outlier exposure) and are never evaluated; the rest split as
    split_unknown_species does (fit the threshold / measure it). Dangerous species are spread over
    all three: one seeded ranking interleaves them by relative position, exposure takes its front,
    so with exposure_fraction 0 the fit/measure split is exactly split_unknown_species'."""
    ranked = _ranked(names, dangerous, seed)
    k = int(round(exposure_fraction * len(ranked)))
    if exposure_fraction > 0 and len(ranked) >= 3:
        k = min(max(k, 1), len(ranked) - 2)   # fit and measure keep one species each
    exposure = sorted(n for _, _, n in ranked[:k])
    val, test = _split_ranked(ranked[k:], val_fraction)
    return exposure, val, test


def _ranked(names: Sequence[str], dangerous: Sequence[bool], seed: int) -> list[tuple[float, int, str]]:
    rng = np.random.default_rng(seed)
    ranked = []
    for flag in (True, False):
        group = sorted(n for n, d in zip(names, dangerous) if bool(d) == flag)
        group = [group[i] for i in rng.permutation(len(group))]
        # dangerous species get the later of two equal positions: the val side fills from the front
        ranked += [((i + 0.5) / len(group), 1 if flag else 0, n) for i, n in enumerate(group)]
    ranked.sort()
    return ranked


def _split_ranked(ranked: list[tuple[float, int, str]], val_fraction: float) -> tuple[list[str], list[str]]:
    k = int(round(val_fraction * len(ranked)))
    if len(ranked) >= 2:
        k = min(max(k, 1), len(ranked) - 1)
    return sorted(n for _, _, n in ranked[:k]), sorted(n for _, _, n in ranked[k:])


def split_unknown_species(names: Sequence[str], dangerous: Sequence[bool], val_fraction: float,
                          seed: int) -> tuple[list[str], list[str]]:
    """(unknown-val, unknown-test) species names, disjoint: the forest's unknowns are new species,
    not new photos of a species seen while fitting. Seeded; both sides get at least one species
    when there are two or more, and the dangerous (poisonous/deadly) species are spread over both
    sides in proportion (stratified: each group shuffled, then interleaved by relative position,
    ties going to the test side first for dangerous species, so the measured side holds one)."""
    return _split_ranked(_ranked(names, dangerous, seed), val_fraction)


# --- several photos of one find ------------------------------------------------------------------------
def find_score(outputs: Mapping[str, np.ndarray], temperature: float | None, stats: Mapping | None,
               name: str) -> float:
    """The unknown-species score of one find: the mean of its photos' own scores, held against the
    single-photo threshold. Scoring the fused outputs instead made many-photo finds look familiar:
    averaging n embeddings (or logits) shrinks their noise, so on the demo a find's Mahalanobis
    distance fell with its photo count and per-find AUROC dropped to 0.40 (0.62 per photo)."""
    return find_scores(outputs, temperature, stats, name)[0]


def find_scores(outputs: Mapping[str, np.ndarray], temperature: float | None, stats: Mapping | None,
                name: str) -> tuple[float, float]:
    """(find_score, the highest single-photo score): the first decides the flag, the second the
    stricter "edible" threshold (advice.UnknownCheck.worst_photo_score)."""
    scores = unknown_scores(outputs, temperature, stats, [name])[name]
    return float(np.mean(scores)), float(np.max(scores))


def fuse(outputs: Mapping[str, np.ndarray], how: str = "mean") -> dict:
    """One find from several photos: outputs (n, ...) -> outputs (1, ...), to be calibrated and
    scored with the same temperature and threshold as a single photo.

    "mean" averages the logits: softmax(mean(z) / T) is exactly the renormalised geometric mean of
    the photos' calibrated distributions (mean of calibrated log-probabilities), as confident as
    one photo when they agree, and energy / max-logit keep the single-photo scale. "sum" adds the
    calibrated log-probabilities, i.e. logits n * mean(z): each photo taken as independent evidence.
    The embedding is averaged either way."""
    if how not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {how!r}")
    z = _logits(outputs)
    fused = z.mean(axis=0) * (len(z) if how == "sum" else 1)
    out = {"logits": fused[None], "probs": np.exp(fused - _logsumexp(fused))[None]}
    if "embedding" in outputs:
        out["embedding"] = np.asarray(outputs["embedding"], np.float64).mean(axis=0, keepdims=True)
    return out
