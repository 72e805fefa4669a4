"""Evaluate every model folder in every exported format on the same test split.

Keras files run through TensorFlow, .tflite files through the LiteRT runtime (mushroom.litert),
both fed by the one image path (mushroom.images.load_image). Temperatures are fitted on val per
format and saved in the model folder, so predict.py answers with calibrated probabilities.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mushroom import manifest, metrics
from mushroom.config import EXPORT_FORMATS, Config
from mushroom.errors import UserError
from mushroom.modelio import MODEL_FILE, TEMPERATURE_FILE, TFLITE_DIR, read_meta, write_json
from mushroom.species import Species

FORMATS = ("keras",) + EXPORT_FORMATS
# Keys every metrics.json entry carries (README, "metrics.json"): later tooling relies on them.
CONTRACT_KEYS = ("model", "format", "top1", "top5", "macro_f1", "edible_precision", "edible_recall",
                 "edible_f1", "dangerous_error", "ece", "ece_calibrated", "temperature", "size_mb",
                 "latency_ms_median", "latency_ms_p95", "threads", "n_test")
DELTA_KEYS = ("top1", "top5", "ece", "dangerous_error")


@dataclass
class Split:
    images: np.ndarray      # uint8 (N, S, S, 3)
    labels: np.ndarray      # int (N,)
    rows: list[dict]        # the manifest rows, in the same order
    skipped: int            # photos of species the model does not know


def model_files(folder: Path) -> dict[str, Path]:
    """format -> file, for every format present in the folder, in FORMATS order."""
    found = {}
    if (folder / MODEL_FILE).is_file():
        found["keras"] = folder / MODEL_FILE
    for fmt in EXPORT_FORMATS:
        path = folder / TFLITE_DIR / f"{fmt}.tflite"
        if path.is_file():
            found[fmt] = path
    return found


def load_split(data_dir: str | os.PathLike, split: str, class_names: list[str], size: int) -> Split:
    images, labels, rows = manifest.load_split(data_dir, split, class_names, size)
    total = len(manifest.split_rows(manifest.read_manifest(manifest.manifest_path(data_dir)), split))
    return Split(images, labels, rows, total - len(rows))


class Predictor:
    """One model file behind one interface: probabilities for a uint8 batch, and one-image timing."""

    def __init__(self, fmt: str, path: Path, threads: int | None):
        self.fmt, self.path, self.threads = fmt, path, threads
        if fmt == "keras":
            from mushroom.keras_env import keras, tf

            if threads:
                try:
                    tf.config.threading.set_intra_op_parallelism_threads(threads)
                    tf.config.threading.set_inter_op_parallelism_threads(1)
                except RuntimeError:  # already initialised: the setting cannot change any more
                    pass
            self.model = keras.models.load_model(path, compile=False)
            self.runtime = "tensorflow"
        else:
            from mushroom.litert import TFLiteModel

            self.model = TFLiteModel(path, num_threads=threads)
            self.runtime = "litert"

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self.fmt == "keras":
            return np.asarray(self.model.predict(images.astype(np.float32), batch_size=32, verbose=0), np.float64)
        return np.asarray(self.model.predict(images), np.float64)

    def one(self) -> Callable[[np.ndarray], object]:
        if self.fmt == "keras":
            return lambda x: self.model(x.astype(np.float32), training=False)
        return self.model.predict


def latency_ms(fn: Callable[[np.ndarray], object], image: np.ndarray, runs: int, warmup: int) -> tuple[float, float]:
    """Median and p95 wall time of one single-image call, after `warmup` untimed calls."""
    x = image[None]
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times)), float(np.percentile(times, 95))


def class_masks(species: list[Species]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([s.is_edible for s in species], bool), np.array([s.is_dangerous for s in species], bool))


def verdict_rates(calibrated: np.ndarray, labels: np.ndarray, species: list[Species], cfg: Config) -> dict:
    """What predict.py would say, photo by photo: the share of poisonous/deadly test photos that
    get an "edible" verdict (the number a forager cares about; should be 0) and the share of
    edible test photos that do (what the caution costs). None when the split has no such photo."""
    from mushroom.advice import advise

    verdicts = [advise(p, species, cfg.predict).verdict for p in calibrated]
    def rate(mask):
        picked = [v for v, m in zip(verdicts, mask) if m]
        return sum(v == "edible" for v in picked) / len(picked) if picked else None
    return {"dangerous_verdict_edible": rate([species[y].is_dangerous for y in labels]),
            "edible_verdict_edible": rate([species[y].is_edible for y in labels])}


def evaluate_folder(cfg: Config, folder: Path, data_dir: Path, formats: list[str] | None = None,
                    log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Metrics entries (one per format) for one model folder, plus arrays for plots."""
    meta = read_meta(folder)
    class_names, size = meta["class_names"], int(meta["image_size"])
    species = [Species.from_dict(s) for s in meta["species"]]
    edible, dangerous = class_masks(species)
    test = load_split(data_dir, "test", class_names, size)
    val = load_split(data_dir, "val", class_names, size)
    if test.skipped:
        log(f"  note: {test.skipped} test photos are of species {folder.name} was not trained on; left out")
    files = model_files(folder)
    wanted = [f for f in (formats or FORMATS) if f in files]
    if not wanted:
        raise UserError(f"{folder} has none of the formats {', '.join(formats or FORMATS)}: run quantize_qat.py first")
    threads = cfg.evaluate.threads
    entries, arrays = [], {"labels": test.labels, "class_names": class_names, "rows": test.rows, "probs": {}}
    temperatures = {}
    for fmt in wanted:
        t0 = time.perf_counter()
        predictor = Predictor(fmt, files[fmt], threads)
        probs_val = predictor.predict(val.images)
        probs = predictor.predict(test.images)
        temperature = metrics.fit_temperature(metrics.to_log_probs(probs_val), val.labels)
        temperatures[fmt] = temperature
        calibrated = metrics.apply_temperature(probs, temperature)
        summary = metrics.summarize(probs, test.labels, edible, dangerous, n_bins=cfg.evaluate.ece_bins)
        med, p95 = latency_ms(predictor.one(), test.images[0], cfg.evaluate.latency_runs, cfg.evaluate.latency_warmup)
        entry = {
            "model": folder.name, "format": fmt, **summary,
            "ece_calibrated": metrics.expected_calibration_error(calibrated, test.labels, cfg.evaluate.ece_bins),
            **verdict_rates(calibrated, test.labels, species, cfg),
            "top1_calibrated_unchanged": bool((calibrated.argmax(1) == probs.argmax(1)).all()),
            "temperature": temperature,
            "size_mb": files[fmt].stat().st_size / 1e6,
            "latency_ms_median": med, "latency_ms_p95": p95,
            "threads": threads or os.cpu_count(), "runtime": predictor.runtime,
            "n_val": int(len(val.labels)), "model_name": meta.get("model_name"),
            "image_size": size, "weights": meta.get("weights"),
        }
        entries.append(entry)
        arrays["probs"][fmt] = probs
        arrays.setdefault("calibrated", {})[fmt] = calibrated
        log(f"  {fmt:9s} top-1 {entry['top1']:.3f}  top-5 {entry['top5']:.3f}  ECE {entry['ece']:.3f} -> "
            f"{entry['ece_calibrated']:.3f} (T={temperature:.2f})  {entry['size_mb']:.2f} MB  "
            f"{med:.1f} ms  [{time.perf_counter() - t0:.0f} s]")
    add_degradation(entries)
    reference = entries[0]["format"]
    write_json(folder / TEMPERATURE_FILE, {
        "temperature": temperatures[reference], "reference_format": reference, "by_format": temperatures,
        "fitted_on": "val", "n_val": int(len(val.labels))})
    return entries, arrays


def add_degradation(entries: list[dict]) -> None:
    """delta_<metric> = quantized - float reference (the Keras model, else float32), per model."""
    by_model: dict[str, list[dict]] = {}
    for e in entries:
        by_model.setdefault(e["model"], []).append(e)
    for group in by_model.values():
        ref = next((e for e in group if e["format"] == "keras"), None) or next(
            (e for e in group if e["format"] == "float32"), group[0])
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
    """Evaluate every folder, then write reports/: metrics.json, comparison.md/.csv, plots, resolved config."""
    from mushroom.config import save_resolved
    from mushroom.reporting import write_reports

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
    plots = write_reports(entries, arrays_by_model, reports_dir, cfg.evaluate.ece_bins)
    save_resolved(cfg, reports_dir)
    return entries, {"plots": plots, "arrays": arrays_by_model}


def log_to_wandb(cfg: Config, entries: list[dict], extras: dict, reports_dir: Path, data_dir: Path,
                 samples: int = 16) -> None:
    """The evaluation run in W&B: per model x format summaries, the comparison table, the plots,
    and a table of sample test photos with prediction, truth and the photo's attribution."""
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
    tracking.log_artifact(run, reports_dir, f"{cfg.experiment}-reports", "reports")
    tracking.finish(run)
