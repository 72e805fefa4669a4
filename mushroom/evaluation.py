"""Evaluate every model folder in every exported format on the same test split (the photos of
unknown species: openset_eval.py).

Keras files run through TensorFlow, .tflite files through the LiteRT runtime (mushroom.litert),
both fed by the one image path (mushroom.images.load_image). Temperatures are fitted on val per
format and saved in the model folder, so predict.py answers with calibrated probabilities.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from mushroom import fidelity, latency, metrics, openset
from mushroom import stats as ci_stats  # `stats` below means feature statistics
from mushroom.advice import UnknownCheck
from mushroom.config import EXPORT_FORMATS, Config
from mushroom.errors import UserError
from mushroom.fileio import write_json
from mushroom.modelio import ModelFolder, read_meta
from mushroom.openset_eval import (ModelChoices, fusion_entry, group_key, load_open_set, load_split, open_set_entry,
                                   previous_open_set, verdict_rates, verdicts)
from mushroom.species import Species, classes_from_table, graded_species

FORMATS = ("keras",) + EXPORT_FORMATS
# Keys every metrics.json entry carries (README, "metrics.json"): later tooling relies on them.
CONTRACT_KEYS = ("model", "format", "top1", "top5", "macro_f1", "edible_precision", "edible_recall",
                 "edible_f1", "dangerous_error", "ece", "ece_calibrated", "temperature", "size_mb",
                 "latency_ms_median", "latency_ms_p95", "invoke_ms_median", "invoke_ms_p95", "latency_ratio_float32",
                 "invoke_ratio_float32", "threads", "n_test", "unknown_auroc", "unknown_flagged",
                 "known_coverage", "unknown_verdict_edible", "unknown_dangerous_verdict_edible", "fused_top1",
                 *(f"{m}_ci" for m in ci_stats.CI_METRICS), "delta_top1_ci", "delta_ece_calibrated",
                 "delta_ece_calibrated_ci", "mcnemar_p", "flip_rate", "mean_abs_dprob", "max_abs_dprob",
                 "delta_significant", *fidelity.FIDELITY_KEYS)
DELTA_KEYS = ("top1", "top5", "ece", "dangerous_error", "unknown_auroc", "known_coverage")


class Predictor:
    """One model file behind one interface: every output (probs, logits, embedding) for a uint8
    batch, and what mushroom.latency times at `threads` (cfg.evaluate.threads) and at all cores."""

    def __init__(self, fmt: str, path: Path, threads: int | None):
        self.fmt, self.path, self.threads = fmt, path, threads
        if fmt == "keras":
            from mushroom.keras_env import keras, tf
            from mushroom.models import with_outputs

            if threads:
                try:
                    tf.config.threading.set_intra_op_parallelism_threads(threads)
                    tf.config.threading.set_inter_op_parallelism_threads(1)
                except RuntimeError:  # already initialised: the setting cannot change any more
                    pass
            self.model = keras.models.load_model(path, compile=False)
            self._outputs = with_outputs(self.model)
            # Timed as a traced graph, the way a served Keras model runs: an eager call spends
            # ~100 ms of Python per image on the demo MobileNetV2, which says nothing of the model.
            self._serve = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
            self.runtime = "tensorflow"
        else:
            from mushroom.litert import TFLiteModel

            self.model = TFLiteModel(path, num_threads=threads)
            # The bulk outputs use every core (an integer or XNNPACK float kernel gives the same
            # numbers at any thread count); only the timing runs at `threads`.
            cores = os.cpu_count() or 1
            self._bulk = self.model if threads == cores else TFLiteModel(path, num_threads=cores)
            self.runtime = "litert"

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.fmt == "keras":
            out = self._outputs.predict(images.astype(np.float32), batch_size=32, verbose=0)
            return {k: np.asarray(v, np.float64) for k, v in out.items()}
        return {k: np.asarray(v, np.float64) for k, v in self._bulk.run(images).items()}

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)["probs"]

    def timers(self) -> dict[int, "latency.Target"]:
        """{thread count: what mushroom.latency times}: a .tflite file at `threads` and at all cores
        (its two interpreters); a Keras model at `threads` only (TensorFlow's pool is set once)."""
        cores = latency.all_cores()
        if self.fmt == "keras":
            from mushroom.keras_env import tf

            return {self.threads or cores: latency.CallTarget(self._serve, tf.constant, lambda v: v.numpy())}
        return {self.threads or cores: latency.TFLiteTarget(self.model), cores: latency.TFLiteTarget(self._bulk)}


def time_formats(timers: dict[str, dict[int, "latency.Target"]], files: dict[str, Path], threads: int | None,
                 image: np.ndarray, rounds: int, warmup: int) -> dict[int, "latency.Timings"]:
    """One interleaved timing of a folder's formats (mushroom.latency): at `threads` (None: all cores),
    then at all cores. The float32 file is timed too when it was not evaluated, so every format
    gets its ratio to float32 from the same rounds."""
    timers = dict(timers)
    if "float32" not in timers and "float32" in files:
        timers["float32"] = Predictor("float32", files["float32"], threads).timers()
    return {n: latency.interleaved({f: t[n] for f, t in timers.items() if n in t}, image, rounds, warmup, n)
            for n in latency.thread_counts(threads)}


def class_masks(species: list[Species]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([s.is_edible for s in species], bool), np.array([s.is_dangerous for s in species], bool))
def evaluate_folder(cfg: Config, folder: Path, data_dir: Path, formats: list[str] | None = None,
                    log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Metrics entries (one per format) for one model folder, plus arrays for plots. Writes the
    fitted temperatures (temperature.json) and unknown-species thresholds (open_set.json, with the
    feature statistics a Mahalanobis score needs) into the folder for predict.py."""
    meta = read_meta(folder)
    class_names, size = meta["class_names"], int(meta["image_size"])
    graded = graded_species(cfg)
    species = classes_from_table(class_names, graded)   # grades from the current table, not meta.json's
    edible, dangerous = class_masks(species)
    test = load_split(data_dir, "test", class_names, size)
    val = load_split(data_dir, "val", class_names, size)
    train = load_split(data_dir, "train", class_names, size)
    ops = load_open_set(cfg, data_dir, class_names, size)
    if test.skipped:
        log(f"  note: {test.skipped} test photos are of species {folder.name} was not trained on; they are "
            "evaluated only as unknowns when open_set names them")
    if ops.val is None or ops.test is None:
        log("  note: no photos of species outside the model's classes (or only one such species): unknown-species "
            "detection is not measured and no threshold is fitted; import them (open_set.unknown_species)")
    else:
        log(f"  unknown species: {len(ops.val_species)} fit the threshold ({len(ops.val.rows)} photos), "
            f"{len(ops.test_species)} measure it ({len(ops.test.rows)} photos)"
            + (f"; {len(ops.exposure_species)} more were outlier exposure in training (not evaluated)"
               if ops.exposure_species else ""))
    files = ModelFolder(folder).files()
    wanted = [f for f in (formats or cfg.evaluate.formats or FORMATS) if f in files]
    if not wanted:
        raise UserError(f"{folder} has none of the formats {', '.join(formats or cfg.evaluate.formats or FORMATS)}: "
                        "run quantize_qat.py first")
    threads = cfg.evaluate.threads
    entries = []
    arrays = {"labels": test.labels, "class_names": class_names, "rows": test.rows, "probs": {}, "open_set": {},
              "calibrated": {}, "verdicts": {}, "unknown_rows": ops.test.rows if ops.test is not None else []}
    # One set of resampled finds per model, shared by all its formats (paired differences).
    boot = ci_stats.GroupBootstrap([group_key(r) for r in test.rows], cfg.evaluate.bootstrap_samples, cfg.seed)
    confidence, n_bins = cfg.evaluate.confidence, cfg.evaluate.ece_bins
    outcomes, dists = {}, {}
    temperatures, open_set_records, stats_files = {}, {}, {}
    answers = {}   # format -> fidelity.Answers on every imported photo (all_rows' order)
    photo_splits = {"train": train, "val": val, "test": test, "unknown_val": ops.val, "unknown_test": ops.test,
                    "exposure": ops.exposure}
    photo_splits = {k: s for k, s in photo_splits.items() if s is not None and len(s.rows)}
    all_groups = [group_key(r) for s in photo_splits.values() for r in s.rows]
    # --formats evaluates some formats only: the others keep their fitted thresholds and temperatures
    # (predict.py needs them), and the new ones follow the rules already chosen for the folder.
    merging = formats is not None
    previous_os = previous_open_set(folder) if merging else None
    previous_t = (ModelFolder(folder).read_temperatures() or {}) if merging else {}
    choice = ModelChoices()
    if previous_os:
        ref_record = previous_os["by_format"].get(previous_os.get("reference_format"))
        choice.score = ref_record["score"] if ref_record else None
        choice.fusion = previous_os.get("fusion")
    timers = {}
    for fmt in wanted:
        t0 = time.perf_counter()
        predictor = Predictor(fmt, files[fmt], threads)
        timers[fmt] = predictor.timers()
        outs = {"val": predictor.outputs(val.images), "test": predictor.outputs(test.images)}
        if ops.val is not None and ops.test is not None:
            outs["unknown_val"] = predictor.outputs(ops.val.images)
            outs["unknown_test"] = predictor.outputs(ops.test.images)
        for name, split in photo_splits.items():
            if name not in outs:
                outs[name] = predictor.outputs(split.images)
        stats = None
        if "embedding" in outs["val"]:
            train_out = outs["train"]
            others, other_species = None, None
            if cfg.open_set.exposure_statistics and "exposure" in outs:
                others, other_species = outs["exposure"]["embedding"], [r["species"] for r in ops.exposure.rows]
            stats = {**openset.fit_feature_stats(train_out["embedding"], train.labels, len(class_names)),
                     **openset.fit_rmd_stats(train_out["embedding"], train.labels, len(class_names),
                                             cfg.open_set.pca_dim, others=others, other_groups=other_species)}
        # Probabilities from the file's logits when it has them (finer than an int8 file's uint8
        # probability output, which ties often), so every format is read the same way.
        temperature = metrics.fit_temperature(openset.log_probs(outs["val"]), val.labels)
        temperatures[fmt] = temperature
        probs = openset.probabilities(outs["test"])
        calibrated = openset.probabilities(outs["test"], temperature)
        summary = metrics.summarize(probs, test.labels, edible, dangerous, n_bins=cfg.evaluate.ece_bins)
        open_keys, record, os_arrays = open_set_entry(cfg, choice, species, graded, temperature, stats, outs,
                                                       test, ops, val)
        checks = None
        if record:
            score = openset.unknown_scores(outs["test"], temperature, stats, [record["score"]])[record["score"]]
            checks = [UnknownCheck.from_record(v, record) for v in score]
            open_set_records[fmt] = record
            if record["score"] in openset.FEATURE_SCORES:
                stats_files[fmt] = openset.stats_for(record["score"], stats)
        fusion = fusion_entry(choice, temperature, stats, outs, test, val, ops, record.get("score"),
                               cfg.evaluate.ece_bins, cfg.evaluate.confidence, cfg.evaluate.bootstrap_samples, cfg.seed)
        verdict_list = verdicts(calibrated, species, cfg, graded, checks, temperature)
        answers[fmt] = fidelity.photo_answers(fidelity.concat_outputs([outs[k] for k in photo_splits]), species, cfg,
                                              graded, temperature, stats, record)
        outcomes[fmt] = ci_stats.Outcomes.from_arrays(probs, calibrated, test.labels, verdict_list, edible, dangerous)
        dists[fmt] = ci_stats.distributions(boot.weights, outcomes[fmt], n_bins)
        entry = {
            "model": folder.name, "format": fmt, **summary,
            "ece_calibrated": metrics.expected_calibration_error(calibrated, test.labels, cfg.evaluate.ece_bins),
            **verdict_rates(verdict_list, test.labels, species),
            **ci_stats.intervals(dists[fmt], confidence),
            "bootstrap_samples": boot.n_samples, "ci_confidence": confidence,
            "top1_calibrated_unchanged": bool((calibrated.argmax(1) == probs.argmax(1)).all()),
            "temperature": temperature,
            **open_keys, **fusion,
            "size_mb": files[fmt].stat().st_size / 1e6,
            "threads": threads or os.cpu_count(), "runtime": predictor.runtime,
            "n_val": int(len(val.labels)), "model_name": meta.get("model_name"),
            "image_size": size, "weights": meta.get("weights"), "note": meta.get("note"),
        }
        entries.append(entry)
        arrays["probs"][fmt] = probs
        arrays["calibrated"][fmt] = calibrated
        arrays["verdicts"][fmt] = verdict_list
        if os_arrays:
            arrays["open_set"][fmt] = os_arrays
        unknown_text = (f"  unknown AUROC {entry['unknown_auroc']:.3f} ({entry['unknown_score']}), flags "
                        f"{entry['unknown_flagged']:.0%} of unknown, keeps {entry['known_coverage']:.0%} of known"
                        if record else "")
        log(f"  {fmt:9s} top-1 {entry['top1']:.3f} {_ci_text(entry['top1_ci'])}  top-5 {entry['top5']:.3f}  "
            f"ECE {entry['ece']:.3f} -> "
            f"{entry['ece_calibrated']:.3f} (T={temperature:.2f})  {entry['size_mb']:.2f} MB"
            f"{unknown_text}  [{time.perf_counter() - t0:.0f} s]")
    # Latency: every format in one interleaved run (mushroom.latency), not each in its own minute.
    timings = time_formats(timers, files, threads, test.images[0], cfg.evaluate.latency_runs,
                           cfg.evaluate.latency_warmup)
    main, cores = timings[threads or latency.all_cores()], timings.get(latency.all_cores())
    for entry in entries:
        entry.update(latency.metrics_keys(entry["format"], main, cores))
    for t in timings.values():
        log("  " + t.table().replace("\n", "\n  "))
    add_degradation(entries)
    ref = entries[0]["reference_format"]
    for entry in entries:
        fmt = entry["format"]
        entry.update(ci_stats.paired(outcomes[ref], outcomes[fmt], dists[ref], dists[fmt], confidence, n_bins))
        entry.update(fidelity.agreement(answers[ref], answers[fmt], all_groups, cfg.evaluate.bootstrap_samples,
                                        cfg.seed, confidence))
        if fmt != ref:
            flag = entry["flag_agreement_all"]
            log(f"  {fmt:9s} vs {ref} on all {entry['agreement_all_n']} imported photos: same species "
                f"{entry['agreement_all']:.1%} {_ci_text(entry['agreement_all_ci'])}, same verdict "
                f"{entry['verdict_agreement_all']:.1%}, same unknown flag "
                + ("–" if flag is None else f"{flag:.1%}"))
        if fmt != ref:
            log(f"  {fmt:9s} vs {ref}: Δtop-1 {entry['delta_top1']:+.3f} {_ci_text(entry['delta_top1_ci'], True)}"
                f"{' (significant)' if entry['delta_significant'] else ''}, McNemar p {entry['mcnemar_p']:.3f} "
                f"({entry['mcnemar_b']} photos lost, {entry['mcnemar_c']} gained), top-1 species changed on "
                f"{entry['flip_rate']:.0%}, ΔECE (calibrated) {entry['delta_ece_calibrated']:+.3f} "
                f"{_ci_text(entry['delta_ece_calibrated_ci'], True)}")
    written = ModelFolder(folder)
    by_format = {**previous_t.get("by_format", {}), **temperatures}
    reference = reference_format([f for f in FORMATS if f in by_format])
    written.write_temperature({
        "temperature": by_format[reference], "reference_format": reference, "by_format": by_format,
        "fitted_on": "val", "n_val": int(len(val.labels))})
    # Formats evaluated now replace their records (a format now without one loses its old one);
    # with nothing fitted at all, open_set.json is removed, so predict.py never uses a stale one.
    records = {f: r for f, r in (previous_os or {}).get("by_format", {}).items() if f not in wanted}
    records.update(open_set_records)
    written.write_open_set({
        "by_format": records, "reference_format": reference_format([f for f in FORMATS if f in records] or [reference]),
        "fusion": choice.fusion, "unknown_val_species": ops.val_species, "unknown_test_species": ops.test_species,
        "exposure_species": ops.exposure_species,
        "fitted_on": "unknown-val species (threshold), val (temperature)"} if records else None, stats_files,
        replace=wanted if merging else None)
    return entries, arrays
def _ci_text(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None:
        return "[–]"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"[{f.format(ci[0])}, {f.format(ci[1])}]"


def reference_format(formats: list[str]) -> str:
    """The float reference of one model's formats: keras, else float32, else the first."""
    return next((f for f in ("keras", "float32") if f in formats), formats[0])


def add_degradation(entries: list[dict]) -> None:
    """delta_<metric> = quantized - float reference (the Keras model, else float32), per model."""
    by_model: dict[str, list[dict]] = {}
    for e in entries:
        by_model.setdefault(e["model"], []).append(e)
    for group in by_model.values():
        ref_fmt = reference_format([e["format"] for e in group])
        ref = next(e for e in group if e["format"] == ref_fmt)
        for e in group:
            e["reference_format"] = ref["format"]
            for k in DELTA_KEYS:
                a, b = e.get(k), ref.get(k)
                e[f"delta_{k}"] = None if a is None or b is None or np.isnan(a) or np.isnan(b) else float(a - b)


def write_metrics(entries: list[dict], path: Path) -> None:
    missing = [k for e in entries for k in CONTRACT_KEYS if k not in e]
    assert not missing, f"metrics entries lack contract keys {sorted(set(missing))}"
    write_json(path, metrics.json_safe(entries))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: run evaluate.py first")
    return json.loads(path.read_text(encoding="utf-8"))


def evaluate_all(cfg: Config, folders: list[Path], data_dir: Path, reports_dir: Path,
                 formats: list[str] | None = None, log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Evaluate every folder, then write reports/: metrics.json, predictions.csv (every photo's answer
    in every format), comparison.md/.csv, plots, resolved config."""
    from mushroom.config import save_resolved
    from mushroom.reporting import write_predictions, write_reports

    if not folders:
        raise UserError(f"no trained model folders found in {cfg.paths.models_dir}: train a model first "
                        "(train_efficientnet_v2.py or train_resnet_baseline.py)")
    entries, arrays_by_model = [], {}
    for folder in folders:
        log(f"evaluating {folder}")
        model_entries, arrays = evaluate_folder(cfg, folder, data_dir, formats, log)
        entries += model_entries
        arrays_by_model[folder.name] = arrays
    reports_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(entries, reports_dir / "metrics.json")
    predictions = write_predictions(arrays_by_model, reports_dir / "predictions.csv")
    plots = write_reports(entries, arrays_by_model, reports_dir, cfg.evaluate.ece_bins)
    save_resolved(cfg, reports_dir)
    return entries, {"plots": plots, "arrays": arrays_by_model, "predictions": predictions}


def log_to_wandb(cfg: Config, entries: list[dict], extras: dict, reports_dir: Path, data_dir: Path,
                 samples: int = 16) -> None:
    """The evaluation run in W&B: per model x format summaries, the comparison table, the plots,
    a table of sample test photos with prediction, truth and the photo's attribution, and the
    unknown species one by one."""
    from mushroom import tracking

    run = tracking.start_run(cfg, "evaluate", name=f"{cfg.experiment}-evaluate")
    if run is None or run.settings.mode == "disabled":
        tracking.finish(run)
        return
    import wandb

    safe = metrics.json_safe(entries)
    for e in safe:
        for k, v in e.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                run.summary[f"{e['model']}/{e['format']}/{k}"] = v
    columns = sorted({k for e in safe for k in e})
    run.log({"comparison": wandb.Table(columns=columns, data=[[e.get(c) for c in columns] for e in safe])})
    run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in extras["plots"]})
    table = wandb.Table(columns=["model", "format", "image", "truth", "prediction", "probability", "attribution"])
    for model, arrays in extras["arrays"].items():
        fmt, probs = next(iter(arrays["probs"].items()))
        for i, row in enumerate(arrays["rows"][:samples]):
            pred = int(probs[i].argmax())
            table.add_data(model, fmt, wandb.Image(str(data_dir / row["path"])), row["species"],
                           arrays["class_names"][pred], float(probs[i, pred]), row["attribution"] or row["url"])
    run.log({"samples": table})
    # which unknown species the model cannot tell from one it knows, per format (reports/unknown_species_*.md)
    fields = ["species", "dangerous", "photos", "auroc", "flagged", "taken_for", "taken_for_share", "edible"]
    rows = [[model, fmt, *[r.get(k) for k in fields]] for model, arrays in extras["arrays"].items()
            for fmt, os_arrays in arrays.get("open_set", {}).items() for r in os_arrays.get("species", [])]
    if rows:
        run.log({"unknown_species": wandb.Table(columns=["model", "format", *fields], data=rows)})
    tracking.log_artifact(run, reports_dir, f"{cfg.experiment}-reports", "reports")
    tracking.finish(run)
