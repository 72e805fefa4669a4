"""The open-set half of the evaluation: photos of species the model never learnt (split by species
into those that fit the unknown-species threshold and those that measure it), the score chosen
over folds of the fit species, the threshold and its stricter edible twin, the verdicts with and
without the check, several photos of one find fused, and the intervals that resample species.
evaluation.evaluate_folder calls it for every format; the record it returns is what open_set.json
keeps for predict.py and the page.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mushroom import manifest, metrics, openset
from mushroom import stats as ci_stats  # `stats` below means feature statistics
from mushroom.advice import UnknownCheck, advise
from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.images import load_image
from mushroom.modelio import ModelFolder
from mushroom.species import Species, unknown_partition

# Unknown-species keys of every metrics.json entry (docs/evaluation.md); null when no unknown photos were imported.
OPEN_SET_KEYS = ("unknown_score", "unknown_threshold", "unknown_recall_target", "unknown_edible_threshold",
                 "unknown_edible_recall_target", "unknown_auroc",
                 "unknown_auroc_val", "unknown_flagged", "known_coverage", "unknown_verdict_edible",
                 "unknown_dangerous_verdict_edible", "unknown_verdict_edible_unflagged",
                 "unknown_dangerous_verdict_edible_unflagged", "n_unknown_val", "n_unknown_test",
                 "n_unknown_species_val", "n_unknown_species_test", "n_exposure_species", "unknown_auroc_cv",
                 "unknown_auroc_ci", "unknown_flagged_ci", "known_coverage_ci", "unknown_verdict_edible_ci",
                 *(f"unknown_auroc_{s}" for s in openset.SCORES), *(f"unknown_auroc_val_{s}" for s in openset.SCORES))


@dataclass

class Split:
    images: np.ndarray      # uint8 (N, S, S, 3)
    labels: np.ndarray      # int (N,); -1 for photos of unknown species
    rows: list[dict]        # the manifest rows, in the same order
    skipped: int            # photos of species the model does not know (known splits only)


def load_split(data_dir: str | os.PathLike, split: str, class_names: list[str], size: int) -> Split:
    images, labels, rows = manifest.load_split(data_dir, split, class_names, size)
    total = len(manifest.split_rows(manifest.read_manifest(manifest.manifest_path(data_dir)), split))
    return Split(images, labels, rows, total - len(rows))


@dataclass
class OpenSetData:
    """Photos of species the model never learnt, split by species: unknown-val fits the threshold,
    unknown-test measures it (never the same species)."""
    val: Split | None
    test: Split | None
    val_species: list[str]
    test_species: list[str]
    dangerous: dict[str, bool]      # species -> poisonous/deadly
    exposure_species: list[str]     # trained on as "other mushrooms" (outlier exposure); never evaluated
    exposure: Split | None = None   # their photos: only the fidelity of the formats is measured on them


def load_open_set(cfg: Config, data_dir: Path, class_names: list[str], size: int) -> OpenSetData:
    """Every imported photo (any split) of the unknown species that fit or measure the threshold
    (species.unknown_partition: exposure species trained the model and are never evaluated as
    unknowns; their photos are loaded for the formats' agreement with the float model only)."""
    rows = manifest.read_manifest(manifest.manifest_path(data_dir))
    part = unknown_partition(cfg, {r["species"] for r in rows}, class_names)

    def split(names: list[str]) -> Split | None:
        picked = sorted((r for r in rows if r["species"] in set(names)), key=lambda r: r["path"])
        if not picked:
            return None
        images = np.stack([load_image(data_dir / r["path"], size) for r in picked])
        return Split(images, np.full(len(picked), -1), picked, 0)

    return OpenSetData(split(part.fit), split(part.measure), part.fit, part.measure, part.dangerous, part.exposure,
                       split(part.exposure))

def verdicts(calibrated: np.ndarray, species: list[Species], cfg: Config, graded: list[Species],
             checks: list[UnknownCheck | None] | None, temperature: float | None) -> list[str]:
    """predict.py's verdict for each calibrated probability vector, with its unknown check (None:
    none fitted, so never "edible") and the temperature it was calibrated with."""
    checks = checks or [None] * len(calibrated)
    return [advise(p, species, cfg.predict, graded, unknown=u, temperature=temperature).verdict
            for p, u in zip(calibrated, checks)]


def edible_rate(verdict_list: list[str], mask) -> float | None:
    picked = [v for v, m in zip(verdict_list, mask) if m]
    return sum(v == "edible" for v in picked) / len(picked) if picked else None


def verdict_rates(verdict_list: list[str], labels: np.ndarray, species: list[Species]) -> dict:
    """The share of poisonous/deadly test photos that get an "edible" verdict (the number a
    forager cares about; should be 0) and the share of edible test photos that do (what the
    caution costs). None when the split has no such photo."""
    return {"dangerous_verdict_edible": edible_rate(verdict_list, [species[y].is_dangerous for y in labels]),
            "edible_verdict_edible": edible_rate(verdict_list, [species[y].is_edible for y in labels])}


def group_key(row: dict) -> str:
    """The find a photo belongs to: the manifest's observation_id (an iNaturalist observation, or
    the import's group column) within its species."""
    return f"{row['species']}|{row['observation_id']}"


def groups_of(rows: list[dict]) -> list[np.ndarray]:
    """Indices of the photos of each find (group_key), in first-seen order."""
    by: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by.setdefault(group_key(r), []).append(i)
    return [np.array(v) for v in by.values()]


def subset(outputs: dict, idx: np.ndarray) -> dict:
    return {k: v[idx] for k, v in outputs.items()}


def fused_outputs(outputs: dict, groups: list[np.ndarray], how: str) -> dict:
    """One fused row per group (openset.fuse), stacked."""
    fused = [openset.fuse(subset(outputs, g), how) for g in groups]
    return {k: np.concatenate([f[k] for f in fused]) for k in fused[0]}


class ModelChoices:
    """Choices made once per model on its reference (first evaluated) format, then kept for its
    other formats, so the study compares the formats under the same rules."""

    def __init__(self):
        self.score: str | None = None
        self.fusion: str | None = None


def open_set_entry(cfg: Config, choice: ModelChoices, species: list[Species], graded: list[Species],
                    temperature: float, stats: dict | None, outs: dict, test: Split, ops: OpenSetData,
                    val: Split) -> tuple[dict, dict, dict]:
    """Unknown-species metrics of one format (None when there are no unknown photos), the record
    predict.py needs (open_set.json), and arrays for plots."""
    keys = {k: None for k in OPEN_SET_KEYS}
    if ops.val is None or ops.test is None:
        return keys, {}, {}
    scores = {name: openset.unknown_scores(outs[name], temperature, stats)
              for name in ("val", "test", "unknown_val", "unknown_test")}
    names = [s for s in openset.SCORES if s in scores["val"]]
    auroc_val = {s: openset.auroc(scores["unknown_val"][s], scores["val"][s]) for s in names}
    # The choice: mean AUROC over folds of the unknown-val species (one species' photos are one
    # near-duplicate cluster: a pooled AUROC lets the largest species decide).
    fit_species = [r["species"] for r in ops.val.rows]
    auroc_cv = {s: openset.species_fold_auroc(scores["unknown_val"][s], fit_species, scores["val"][s], cfg.seed)
                for s in names}
    auroc_test = {s: openset.auroc(scores["unknown_test"][s], scores["test"][s]) for s in names}
    if choice.score is not None and choice.score not in names:
        raise UserError(f"this folder's other formats use the unknown-species score {choice.score}, which the "
                        "file evaluated now cannot give: evaluate every format together (no --formats)")
    if choice.score is None:
        wanted = cfg.open_set.score
        if wanted != "auto" and wanted not in names:
            raise UserError(f"open_set.score is {wanted}, which this model's files cannot give (they give "
                            f"{', '.join(names)}): choose one of those or auto")
        choice.score = openset.choose_score(auroc_cv) if wanted == "auto" else wanted
    name = choice.score
    recall = cfg.predict.unknown_recall
    threshold = openset.fit_threshold(scores["unknown_val"][name], recall)
    # "edible" answers to a stricter threshold: max() keeps it at or below the flagging one
    edible_recall = max(recall, cfg.predict.edible_unknown_recall)
    edible_threshold = min(threshold, openset.fit_threshold(scores["unknown_val"][name], edible_recall))
    record = {"score": name, "threshold": threshold, "unknown_recall": recall,
              "edible_threshold": edible_threshold, "edible_recall": edible_recall,
              "auroc_val": auroc_val[name], "auroc_cv": auroc_cv[name], "temperature": temperature}
    flagged_unknown = scores["unknown_test"][name] >= threshold
    flagged_known = scores["test"][name] >= threshold
    unknown_probs = openset.probabilities(outs["unknown_test"], temperature)
    checks = [UnknownCheck.from_record(v, record) for v in scores["unknown_test"][name]]
    verdict_flagged = verdicts(unknown_probs, species, cfg, graded, checks, temperature)
    # What the check is worth: the same photos against limits that flag none of them (a finite
    # limit above every score), i.e. the verdicts had the model no unknown-species check.
    above_all = float(np.max(scores["unknown_test"][name])) + 1.0
    passing = {**record, "threshold": above_all, "edible_threshold": above_all}
    verdict_unflagged = verdicts(unknown_probs, species, cfg, graded,
                                 [UnknownCheck.from_record(v, passing) for v in scores["unknown_test"][name]],
                                 temperature)
    dangerous = [ops.dangerous[r["species"]] for r in ops.test.rows]
    # the measured figures with intervals that resample the measure species (and the known finds)
    ci = ci_stats.open_set_intervals(scores["test"][name], [group_key(r) for r in test.rows],
                                     scores["unknown_test"][name], [r["species"] for r in ops.test.rows], threshold,
                                     cfg.evaluate.confidence, cfg.evaluate.bootstrap_samples, cfg.seed,
                                     np.array([v == "edible" for v in verdict_flagged]))
    keys.update({
        "unknown_auroc_cv": auroc_cv[name]["mean"], "unknown_auroc_ci": ci["auroc"],
        "unknown_flagged_ci": ci["flagged"], "known_coverage_ci": ci["kept"],
        "unknown_verdict_edible_ci": ci["verdict_edible"], "n_exposure_species": len(ops.exposure_species),
        "unknown_score": name, "unknown_threshold": threshold, "unknown_recall_target": recall,
        "unknown_edible_threshold": edible_threshold, "unknown_edible_recall_target": edible_recall,
        "unknown_auroc": auroc_test[name], "unknown_auroc_val": auroc_val[name],
        **{f"unknown_auroc_{s}": auroc_test.get(s) for s in openset.SCORES},
        **{f"unknown_auroc_val_{s}": auroc_val.get(s) for s in openset.SCORES},
        "unknown_flagged": float(flagged_unknown.mean()), "known_coverage": float(1.0 - flagged_known.mean()),
        "unknown_verdict_edible": edible_rate(verdict_flagged, [True] * len(dangerous)),
        "unknown_dangerous_verdict_edible": edible_rate(verdict_flagged, dangerous),
        "unknown_verdict_edible_unflagged": edible_rate(verdict_unflagged, [True] * len(dangerous)),
        "unknown_dangerous_verdict_edible_unflagged": edible_rate(verdict_unflagged, dangerous),
        "n_unknown_val": int(len(ops.val.rows)), "n_unknown_test": int(len(ops.test.rows)),
        "n_unknown_species_val": len(ops.val_species), "n_unknown_species_test": len(ops.test_species),
    })
    breakdown = openset.species_breakdown(scores["test"][name], scores["unknown_test"][name],
                                          [r["species"] for r in ops.test.rows], threshold,
                                          [species[i].name for i in unknown_probs.argmax(1)], verdict_flagged)
    for row in breakdown:
        row["dangerous"] = bool(ops.dangerous[row["species"]])
    arrays = {"known": scores["test"][name], "unknown": scores["unknown_test"][name], "threshold": threshold,
              "score": name, "known_correct": openset.log_probs(outs["test"]).argmax(1) == test.labels,
              "unknown_calibrated": unknown_probs, "unknown_verdicts": verdict_flagged, "species": breakdown}
    return keys, record, arrays


def fusion_entry(choice: ModelChoices, temperature: float, stats: dict | None, outs: dict, test: Split,
                  val: Split, ops: OpenSetData, score: str | None, n_bins: int, confidence: float = 0.95,
                  n_samples: int = 2000, seed: int = 0) -> dict:
    """Single-photo vs fused-per-find top-1 and ECE on the test split; the fusion rule (mean or
    sum of calibrated log-probabilities) chosen on val finds by NLL."""
    test_groups, val_groups = groups_of(test.rows), groups_of(val.rows)
    labels = np.array([test.labels[g[0]] for g in test_groups])
    if choice.fusion is None:
        val_labels = np.array([val.labels[g[0]] for g in val_groups])
        nll = {how: metrics.nll(openset.probabilities(fused_outputs(outs["val"], val_groups, how), temperature),
                                val_labels) for how in openset.FUSIONS}
        choice.fusion = min(openset.FUSIONS, key=lambda how: (nll[how], how != "mean"))
    out = {"fusion": choice.fusion, "n_finds_test": len(test_groups)}
    for how in openset.FUSIONS:
        probs = openset.probabilities(fused_outputs(outs["test"], test_groups, how), temperature)
        out[f"fused_top1_{how}"] = metrics.topk_accuracy(probs, labels, 1)
        out[f"fused_ece_{how}"] = metrics.expected_calibration_error(probs, labels, n_bins)
    out["fused_top1"] = out[f"fused_top1_{choice.fusion}"]
    out["fused_ece"] = out[f"fused_ece_{choice.fusion}"]
    out["fused_unknown_auroc"] = None
    out["fused_unknown_auroc_ci"] = None
    if score is not None and ops.test is not None:
        unknown_groups = groups_of(ops.test.rows)
        fk = [openset.find_score(subset(outs["test"], g), temperature, stats, score) for g in test_groups]
        fu = [openset.find_score(subset(outs["unknown_test"], g), temperature, stats, score) for g in unknown_groups]
        out["fused_unknown_auroc"] = openset.auroc(np.array(fu), np.array(fk))
        # per find, with an interval resampling the measure species (each find within its species)
        ci = ci_stats.open_set_intervals(np.array(fk), list(range(len(fk))), np.array(fu),
                                         [ops.test.rows[g[0]]["species"] for g in unknown_groups], None,
                                         confidence, n_samples, seed)
        out["fused_unknown_auroc_ci"] = ci["auroc"]
        out["n_finds_unknown_test"] = len(unknown_groups)
    return out

def previous_open_set(folder: Path) -> dict | None:
    """open_set.json as an earlier evaluate.py left it, or None (none, or too old to keep)."""
    try:
        return ModelFolder(folder).read_open_set()
    except UserError:
        return None
