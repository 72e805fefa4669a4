"""Quantization's effect on the answer, measured without labels: each format against its model's
float reference on EVERY imported photo (train, val and test of the known species, and every photo
of the unknown species, exposure ones included; ~1,090 in the demo against 70 test photos).

A quantized file that answers like its float model loses nothing a label could show, so agreement
needs no ground truth and can use photos the model was trained on: what is measured is the file's
fidelity to its own float function, not accuracy. Three answers are compared photo by photo:
the top-1 species, predict.py's verdict (edible / not edible / unknown / ...), and the unknown-species
flag. Intervals resample finds (a find's photos are in or out together), as every other interval of
the study (mushroom.stats).

    answers = photo_answers(outs, species, cfg, graded, temperature, stats, record)   # per format
    keys = agreement(ref_answers, answers, group_keys, n_samples, seed, confidence)    # metrics.json keys
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np

from mushroom import metrics, openset
from mushroom import stats as ci_stats
from mushroom.advice import UnknownCheck
from mushroom.config import Config
from mushroom.openset_eval import verdicts
from mushroom.species import Species

# Keys every metrics.json entry carries (docs/evaluation.md). The reference format agrees with itself (1.0).
FIDELITY_KEYS = ("agreement_all", "agreement_all_ci", "agreement_all_n", "verdict_agreement_all",
                 "verdict_agreement_all_ci", "flag_agreement_all", "flag_agreement_all_ci")


@dataclass
class Answers:
    """What one format answers for each photo."""
    top1: np.ndarray                 # (N,) class index (ties: metrics.predictions)
    verdict: list[str]               # predict.py's verdict
    flagged: np.ndarray | None       # (N,) bool; None when the format has no fitted unknown check

    def __len__(self) -> int:
        return len(self.top1)


def concat_outputs(parts: Sequence[Mapping[str, np.ndarray] | None]) -> dict[str, np.ndarray]:
    """One outputs dict (probs, logits, embedding...) for the photos of several splits, in order;
    None parts (a split with no photos) are left out."""
    parts = [p for p in parts if p is not None]
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise ValueError("every split must come from the same model file (same outputs)")
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def photo_answers(outputs: Mapping[str, np.ndarray], species: list[Species], cfg: Config, graded: list[Species],
                  temperature: float, stats: Mapping | None, record: Mapping | None) -> Answers:
    """The answer predict.py would give each photo with this format's temperature and unknown
    check (record: its entry in open_set.json; None: no check, so never "edible")."""
    checks, flagged = None, None
    if record:
        score = openset.unknown_scores(outputs, temperature, stats, [record["score"]])[record["score"]]
        checks = [UnknownCheck.from_record(v, record) for v in score]
        flagged = np.array([c.flagged for c in checks], bool)
    calibrated = openset.probabilities(outputs, temperature)
    return Answers(metrics.predictions(openset.probabilities(outputs)),
                   verdicts(calibrated, species, cfg, graded, checks, temperature), flagged)


def _rate(boot: ci_stats.GroupBootstrap, same: np.ndarray, confidence: float) -> tuple[float, list[float] | None]:
    return float(same.mean()), ci_stats.interval(ci_stats.weighted_rate(boot.weights, same.astype(np.float64)),
                                                 confidence)


def agreement(ref: Answers, other: Answers, groups: Sequence[Hashable], n_samples: int, seed: int,
              confidence: float) -> dict:
    """FIDELITY_KEYS of `other` against `ref` (the same photos, in the same order): the share of
    photos with the same top-1 species, the same verdict and the same unknown flag, each with a
    group-bootstrap interval over finds. Flag agreement is None when either has no check."""
    n = len(ref)
    if len(other) != n or len(groups) != n:
        raise ValueError(f"agreement needs the same photos: {n} reference answers, {len(other)} answers, "
                         f"{len(groups)} group keys")
    if n == 0:
        raise ValueError("agreement needs at least one photo")
    boot = ci_stats.GroupBootstrap(list(groups), n_samples, seed)
    top1, top1_ci = _rate(boot, ref.top1 == other.top1, confidence)
    verdict, verdict_ci = _rate(boot, np.array([a == b for a, b in zip(ref.verdict, other.verdict)]), confidence)
    flag, flag_ci = (None, None)
    if ref.flagged is not None and other.flagged is not None:
        flag, flag_ci = _rate(boot, ref.flagged == other.flagged, confidence)
    return {"agreement_all": top1, "agreement_all_ci": top1_ci, "agreement_all_n": n,
            "verdict_agreement_all": verdict, "verdict_agreement_all_ci": verdict_ci,
            "flag_agreement_all": flag, "flag_agreement_all_ci": flag_ci}
