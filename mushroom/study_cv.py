"""The cross-validated study: the whole chain on k group folds of the known species' photos, so that
every known photo is a test photo once and a one-point quantization effect becomes visible.

One train/val/test split leaves ~70 test photos in the demo: a top-1 interval of about +-14 points.
Here the finds (species x observation) of each known species are dealt into k folds of near-equal
photo counts (seeded); fold i tests on fold i, validates on fold i+1 and trains on the others (k = 5
gives the single split's 60/20/20). The unknown-species protocol is the same in every fold
(species.unknown_partition: the same exposure, fit and measure species). Each fold is a data folder
of hard links (data/cv/fold<i>/, its own manifest), and its train -> quantize -> evaluate stages
write models/cv/fold<i>/ and reports/cv/fold<i>/: a fold whose outputs are complete is skipped,
so an interrupted study resumes where it stopped. W&B: every run in the group <experiment>-cv,
named by fold.

The pooled analysis reads the folds' predictions.csv (every test photo's answer in every format)
and metrics.json, and compares each format with the float reference on all known photos at once:
Δtop-1, Δ calibrated ECE and Δ of the safety rates with paired intervals (finds resampled, the same
resamples for every format), McNemar's exact test over all photos, and the spread of Δtop-1 across
folds. Written to reports/cv/study_cv.json and study_cv.md.

    python pipeline.py --config configs/demo.yaml --from-folder ../shared/data/fungi128 --set study.cv_folds=5
"""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from mushroom import stats as ci_stats
from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.fileio import atomic_write, write_json
from mushroom.manifest import manifest_path, read_manifest, write_manifest
from mushroom.species import graded_species, selected_species

# The figures of one format in the pooled table (study_cv.json "formats"), in display order.
POOLED_KEYS = ("n_photos", "top1", "top1_ci", "delta_top1", "delta_top1_ci", "mcnemar_b", "mcnemar_c",
               "mcnemar_p", "ece_calibrated", "delta_ece_calibrated", "delta_ece_calibrated_ci",
               "dangerous_verdict_edible", "delta_dangerous_verdict_edible", "delta_dangerous_verdict_edible_ci",
               "edible_verdict_edible", "delta_edible_verdict_edible", "delta_edible_verdict_edible_ci",
               "unknown_verdict_edible_folds", "agreement_all_folds", "delta_top1_folds")


def cv_dirs(cfg: Config) -> dict[str, Path]:
    """Where the study keeps its folds: data/cv, models/cv, reports/cv (under the configured paths)."""
    return {k: Path(cfg.paths[f"{k}_dir"]) / "cv" for k in ("data", "models", "reports")}


def fold_overrides(cfg: Config, fold: int) -> list[str]:
    """The --set overrides that make every script work on fold `fold` (1-based)."""
    dirs = cv_dirs(cfg)
    return [f"paths.data_dir={dirs['data'] / f'fold{fold}'}", f"paths.models_dir={dirs['models'] / f'fold{fold}'}",
            f"paths.reports_dir={dirs['reports'] / f'fold{fold}'}", f"experiment={cfg.experiment}-cv",
            f"study.fold={fold}", "study.cv_folds=0"]


def assign_folds(rows: list[dict], known: set[str], k: int, seed: int) -> dict[tuple[str, str], int]:
    """(species, observation_id) -> fold (0-based) for the finds of the known species: per species, the
    finds in a seeded order, each dealt to the fold with the fewest photos so far (the lowest index
    on ties), so folds stay within one find of equal size and a find never spans two folds."""
    sizes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if r["species"] in known:
            sizes[r["species"]][r["observation_id"]] += 1
    out = {}
    for species in sorted(sizes):
        groups = sorted(sizes[species])
        random.Random(f"{seed}:cv:{species}").shuffle(groups)
        # Largest finds first, so the small ones even the counts out; the shuffle breaks ties.
        groups.sort(key=lambda g: -sizes[species][g])
        load = [0] * k
        for g in groups:
            fold = min(range(k), key=lambda f: (load[f], f))
            load[fold] += sizes[species][g]
            out[(species, g)] = fold
        if len(groups) < k:
            raise UserError(f"{species} has {len(groups)} finds (observations), fewer than study.cv_folds = {k}: "
                            "every fold needs test photos of every species; lower study.cv_folds")
    return out


def fold_split(fold_of_find: int, fold: int, k: int) -> str:
    """The split of a known find in fold `fold` (0-based): test, the next fold val, the rest train."""
    if fold_of_find == fold:
        return "test"
    return "val" if fold_of_find == (fold + 1) % k else "train"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:   # another file system, or no hard links: a copy costs disk, nothing else
        shutil.copy2(src, dst)


def write_fold_data(data_dir: Path, rows: list[dict], folds: dict[tuple[str, str], int], fold: int, k: int,
                    target: Path) -> Path:
    """data/cv/fold<i>/: the known species' photos re-split for this fold, every other photo where it
    was, as hard links, and the fold's manifest.csv written last (its presence marks the folder complete)."""
    if manifest_path(target).is_file() and len(read_manifest(manifest_path(target))) == len(rows):
        return target
    out = []
    for r in rows:
        key = (r["species"], r["observation_id"])
        row = dict(r)
        if key in folds:
            split = fold_split(folds[key], fold, k)
            rel = Path(r["path"])
            row["split"], row["path"] = split, Path(split, *rel.parts[1:]).as_posix()
        _link(data_dir / r["path"], target / row["path"])
        out.append(row)
    write_manifest(manifest_path(target), out)
    return target


def prepare_folds(cfg: Config, k: int) -> list[Path]:
    """The k fold data folders from the imported photos in paths.data_dir (idempotent)."""
    data_dir = Path(cfg.paths.data_dir)
    rows = read_manifest(manifest_path(data_dir))
    known = {s.name for s in selected_species(cfg)}
    folds = assign_folds(rows, known, k, cfg.seed)
    root = cv_dirs(cfg)["data"]
    return [write_fold_data(data_dir, rows, folds, i, k, root / f"fold{i + 1}") for i in range(k)]


# --- pooling --------------------------------------------------------------------------------------
def _read_predictions(path: Path, model: str) -> dict[str, list[dict]]:
    """format -> predictions.csv rows of `model`, in file order."""
    by: dict[str, list[dict]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["model"] == model:
                by[r["format"]].append(r)
    return by


def _paired_interval(boot: ci_stats.GroupBootstrap, ref: np.ndarray, other: np.ndarray, mask: np.ndarray | None,
                     confidence: float) -> list[float] | None:
    return ci_stats.interval(ci_stats.weighted_rate(boot.weights, other, mask)
                             - ci_stats.weighted_rate(boot.weights, ref, mask), confidence)


def pool(fold_reports: list[Path], model: str, cfg: Config) -> dict:
    """The pooled comparison of every format of `model` (its folder name in each fold) with the float
    reference, over the known test photos of all folds (each photo once)."""
    grades = {s.name: s for s in graded_species(cfg)}
    per_fold_metrics, photos = [], defaultdict(list)
    for i, reports in enumerate(fold_reports):
        for name in ("metrics.json", "predictions.csv"):
            if not (reports / name).is_file():
                raise UserError(f"{reports / name} is missing: fold {i + 1} has not been evaluated; rerun the study")
        metrics = [e for e in json.loads((reports / "metrics.json").read_text(encoding="utf-8")) if e["model"] == model]
        per_fold_metrics.append({e["format"]: e for e in metrics})
        for fmt, rows in _read_predictions(reports / "predictions.csv", model).items():
            photos[fmt] += [dict(r, fold=i + 1) for r in rows if r["known"] == "true"]
    formats = [f for f in per_fold_metrics[0] if all(f in m for m in per_fold_metrics)]
    if not formats:
        raise UserError(f"no format of {model} was evaluated in every fold")
    ref = per_fold_metrics[0][formats[0]]["reference_format"]
    order = [(r["fold"], r["path"]) for r in photos[ref]]
    if len(set(p for _, p in order)) != len(order):
        raise UserError("a photo is a test photo in two folds: the fold data folders are inconsistent; "
                        "delete data/cv and rerun the study")
    confidence, n_bins = cfg.evaluate.confidence, cfg.evaluate.ece_bins
    boot = ci_stats.GroupBootstrap([f"{r['true_species']}|{r['group']}" for r in photos[ref]],
                                   cfg.evaluate.bootstrap_samples, cfg.seed)

    def arrays(fmt: str) -> dict[str, np.ndarray]:
        rows = photos[fmt]
        if [(r["fold"], r["path"]) for r in rows] != order:
            raise UserError(f"{fmt} and {ref} were not evaluated on the same photos in every fold")
        return {
            "correct": np.array([r["top1_correct"] == "true" for r in rows], np.float64),
            "confidence": np.array([float(r["probability"]) for r in rows]),
            "cal_correct": np.array([r["predicted_species"] == r["true_species"] for r in rows], bool),
            "edible": np.array([r["verdict"] == "edible" for r in rows], np.float64),
        }
    dangerous = np.array([grades[r["true_species"]].is_dangerous for r in photos[ref]], bool)
    edible_class = np.array([grades[r["true_species"]].is_edible for r in photos[ref]], bool)
    a_ref = arrays(ref)
    out = {}
    for fmt in formats:
        a = arrays(fmt)
        ece = ci_stats.weighted_ece(boot.weights, a["confidence"], a["cal_correct"], n_bins)
        ece_ref = ci_stats.weighted_ece(boot.weights, a_ref["confidence"], a_ref["cal_correct"], n_bins)
        unit = np.ones((1, len(order)))
        ece_point = float(ci_stats.weighted_ece(unit, a["confidence"], a["cal_correct"], n_bins)[0])
        ece_ref_point = float(ci_stats.weighted_ece(unit, a_ref["confidence"], a_ref["cal_correct"], n_bins)[0])
        b, c, p = ci_stats.mcnemar(a_ref["correct"].astype(bool), a["correct"].astype(bool))
        rates = {}
        for key, mask in (("dangerous_verdict_edible", dangerous), ("edible_verdict_edible", edible_class)):
            value = float(a["edible"][mask].mean()) if mask.any() else None
            rates[key] = value
            rates[f"delta_{key}"] = None if value is None else value - float(a_ref["edible"][mask].mean())
            rates[f"delta_{key}_ci"] = (_paired_interval(boot, a_ref["edible"], a["edible"], mask, confidence)
                                        if mask.any() else None)
        fold_deltas = [m[fmt]["top1"] - m[ref]["top1"] for m in per_fold_metrics]
        out[fmt] = {
            "n_photos": len(order),
            "top1": float(a["correct"].mean()),
            "top1_ci": ci_stats.interval(ci_stats.weighted_rate(boot.weights, a["correct"]), confidence),
            "delta_top1": float(a["correct"].mean() - a_ref["correct"].mean()),
            "delta_top1_ci": _paired_interval(boot, a_ref["correct"], a["correct"], None, confidence),
            "mcnemar_b": b, "mcnemar_c": c, "mcnemar_p": p,
            "ece_calibrated": ece_point, "delta_ece_calibrated": ece_point - ece_ref_point,
            "delta_ece_calibrated_ci": ci_stats.interval(ece - ece_ref, confidence),
            **rates,
            "unknown_verdict_edible_folds": [m[fmt].get("unknown_verdict_edible") for m in per_fold_metrics],
            "agreement_all_folds": [m[fmt].get("agreement_all") for m in per_fold_metrics],
            "delta_top1_folds": fold_deltas,
        }
    return {"model": model, "reference_format": ref, "folds": len(fold_reports), "confidence": confidence,
            "bootstrap_samples": boot.n_samples, "n_finds": boot.n_groups, "formats": out}


def _ci(ci, signed=False) -> str:
    if ci is None:
        return ""
    f = "{:+.3f}" if signed else "{:.3f}"
    return f" [{f.format(ci[0])}, {f.format(ci[1])}]"


def _mean(xs) -> str:
    xs = [x for x in xs if x is not None]
    return "–" if not xs else f"{np.mean(xs):.3f}"


def pooled_table(result: dict) -> str:
    """The pooled study as a markdown table, one row per format."""
    ref = result["reference_format"]
    head = ("| format | top-1 (all known photos) | Δtop-1 vs " + ref + " | McNemar b/c, p | ΔECE (calibrated) | "
            "poisonous → 'edible' (Δ) | edible → 'edible' (Δ) | unknown → 'edible', mean of folds | "
            "same species as float, all photos (mean of folds) | Δtop-1 per fold (min .. max) |")
    lines = [head, "|" + "---|" * 10]
    for fmt, r in result["formats"].items():
        is_ref = fmt == ref
        danger = "–" if r["dangerous_verdict_edible"] is None else (
            f"{r['dangerous_verdict_edible']:.3f}" + ("" if is_ref else f" ({r['delta_dangerous_verdict_edible']:+.3f}"
                                                      f"{_ci(r['delta_dangerous_verdict_edible_ci'], True)})"))
        edible = "–" if r["edible_verdict_edible"] is None else (
            f"{r['edible_verdict_edible']:.3f}" + ("" if is_ref else f" ({r['delta_edible_verdict_edible']:+.3f}"
                                                   f"{_ci(r['delta_edible_verdict_edible_ci'], True)})"))
        lines.append("| " + " | ".join([
            fmt, f"{r['top1']:.3f}{_ci(r['top1_ci'])}",
            "reference" if is_ref else f"{r['delta_top1']:+.3f}{_ci(r['delta_top1_ci'], True)}",
            "–" if is_ref else f"{r['mcnemar_b']}/{r['mcnemar_c']}, {r['mcnemar_p']:.3f}",
            f"{r['ece_calibrated']:.3f}" + ("" if is_ref else f" ({r['delta_ece_calibrated']:+.3f}"
                                                              f"{_ci(r['delta_ece_calibrated_ci'], True)})"),
            danger, edible, _mean(r["unknown_verdict_edible_folds"]),
            "–" if is_ref else _mean(r["agreement_all_folds"]),
            "–" if is_ref else f"{min(r['delta_top1_folds']):+.3f} .. {max(r['delta_top1_folds']):+.3f}",
        ]) + " |")
    return "\n".join(lines)


def write_pooled(result: dict, reports: Path, seconds: float | None, command: str) -> str:
    """reports/cv/study_cv.json and study_cv.md; returns the markdown."""
    result = dict(result, seconds=seconds, command=command)
    write_json(reports / "study_cv.json", result)
    n = next(iter(result["formats"].values()))["n_photos"]
    text = "\n".join([
        f"# Cross-validated study: {result['model']}, {result['folds']} folds", "",
        f"`{command}`" + (f", {seconds / 60:.0f} min" if seconds else "") + ".", "",
        f"{n} known photos ({result['n_finds']} finds), each a test photo once. [lo, hi]: "
        f"{result['confidence']:.0%} intervals over {result['bootstrap_samples']} resamples of the finds; Δ paired "
        f"against {result['reference_format']} on the same resamples; McNemar: exact test over all {n} photos "
        "(b: right only in the reference, c: right only in this format).", "",
        pooled_table(result), ""])
    atomic_write(reports / "study_cv.md", text.encode())
    return text
