"""The model folder: everything needed to use a trained model (see README, "A model folder").

`ModelFolder` is the one place that knows the folder's layout and the run-name convention; every
other module asks it for a path, so a file is renamed or moved in one place.

Nothing here imports TensorFlow until a Keras model is saved or loaded, so predict.py can use it on
a machine without it.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from mushroom.config import EXPORT_FORMATS, RESOLVED_NAME
from mushroom.errors import UserError
from mushroom.fileio import replacing, write_json

# What a model (and each exported file) gives, by role -> the layer producing it. "probs" is the
# model's own output; "logits" and "embedding" (the pooled features before dropout) feed the
# calibrated probabilities and the unknown-species scores.
OUTPUT_LAYERS = {"probs": "head_probs", "logits": "head_logits", "embedding": "head_pool"}
QAT_PREFIX = "quant_"   # tfmot's QuantizeWrapper renames layer X to quant_X


def output_role(name: str) -> str | None:
    """The role of an output named after its layer ('head_logits', 'quant_head_logits', ...), else None."""
    base = name[len(QAT_PREFIX):] if name.startswith(QAT_PREFIX) else name
    return next((role for role, layer in OUTPUT_LAYERS.items() if base == layer), None)


# --- run names ---------------------------------------------------------------------------------------
def default_run_name(cfg) -> str:
    """The two-stage model's folder name under paths.models_dir: '<experiment>-<model.name>'."""
    return f"{cfg.experiment}-{cfg.model.name}"


def baseline_run_name(cfg) -> str:
    """The head-only baseline's folder name: '<experiment>-<baseline.model>-head' (never the same
    folder as the two-stage model, even on the same backbone)."""
    return f"{cfg.experiment}-{cfg.baseline.model}-head"


def baseline_is_stage1(cfg) -> bool:
    """True when the head-only baseline (baseline_overrides) would repeat this config's stage 1 step
    for step: same backbone, same weights, a stage 2 after it. Training then saves stage 1's model
    as the baseline folder instead of a second run computing the same weights (the demo: MobileNetV2
    head on the checkpoint, ~75 s of a 2-core laptop saved)."""
    # Not across several hosts: saving and predicting there are collective, and every worker would
    # have to take part in writing a folder only the chief keeps.
    return (cfg.baseline.model == cfg.model.name and cfg.baseline.weights == cfg.model.weights
            and cfg.train.stage1.epochs > 0 and cfg.train.stage2.epochs > 0 and cfg.train.strategy != "multi_worker")


# --- the layout --------------------------------------------------------------------------------------
def _inside(*parts: str) -> property:
    return property(lambda self: self.path.joinpath(*parts))


@dataclass(frozen=True)
class ModelFolder:
    """models/<run_name>/ and the name of every file in it. Usable wherever a path is (os.PathLike)."""

    path: Path

    MODEL = "model.keras"
    META = "meta.json"
    HISTORY = "history.json"
    # Training's per-epoch backup (Keras BackupAndRestore + best-weights bookkeeping) while a run is
    # unfinished; the finished model folder replaces the whole folder, so it never ships with one.
    BACKUP = "backup"
    QAT = "qat"
    TFLITE = "tflite"
    TFLITE_SUFFIX = ".tflite"
    QUANTIZE_REPORT = "quantize.json"
    TEMPERATURE = "temperature.json"
    OPEN_SET = "open_set.json"      # unknown-species score and threshold per format (evaluate.py)
    OPEN_SET_STATS = "open_set"     # <format>.npz: class means / whitening for a Mahalanobis score

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def under(cls, models_dir: str | os.PathLike, run_name: str) -> "ModelFolder":
        """models_dir/<run_name>; the name must be one plain folder name (it is also the W&B run name)."""
        if not run_name.strip() or "/" in run_name or run_name.startswith("."):
            raise UserError(f"run name {run_name!r} must be a plain folder name (no '/', not starting with '.')")
        return cls(Path(models_dir) / run_name)

    @classmethod
    def of_model(cls, cfg) -> "ModelFolder":
        """Where train_efficientnet_v2.py writes cfg.model (default run name)."""
        return cls.under(cfg.paths.models_dir, default_run_name(cfg))

    @classmethod
    def of_baseline(cls, cfg) -> "ModelFolder":
        """Where train_resnet_baseline.py writes the head-only baseline."""
        return cls.under(cfg.paths.models_dir, baseline_run_name(cfg))

    @classmethod
    def of_export(cls, tflite: str | os.PathLike) -> tuple["ModelFolder", str]:
        """(model folder, format) of an exported file; a .tflite outside a tflite/ folder belongs to
        the folder it sits in."""
        tflite = Path(tflite)
        folder = tflite.parent.parent if tflite.parent.name == cls.TFLITE else tflite.parent
        return cls(folder), tflite.stem

    @classmethod
    def exports_under(cls, models_dir: str | os.PathLike, fmt: str) -> list[Path]:
        """The `fmt` file of every model folder under models_dir, sorted by folder."""
        return sorted(Path(models_dir).glob(f"*/{cls.TFLITE}/{fmt}{cls.TFLITE_SUFFIX}"))

    @property
    def name(self) -> str:
        return self.path.name

    model_file = _inside(MODEL)
    meta_file = _inside(META)
    history_file = _inside(HISTORY)
    resolved_config = _inside(RESOLVED_NAME)        # the training run's config (config.save_resolved)
    backup_dir = _inside(BACKUP)                    # what an unfinished training run resumes from
    qat_model_file = _inside(QAT, MODEL)            # QAT weights: load with quantization.load_qat_model
    tflite_dir = _inside(TFLITE)
    tflite_config = _inside(TFLITE, RESOLVED_NAME)  # the quantize run's config
    quantize_report = _inside(QUANTIZE_REPORT)
    temperature_file = _inside(TEMPERATURE)
    open_set_file = _inside(OPEN_SET)

    def tflite(self, fmt: str) -> Path:
        return self.tflite_dir / f"{fmt}{self.TFLITE_SUFFIX}"

    def open_set_stats(self, fmt: str) -> Path:
        return self.path / self.OPEN_SET_STATS / f"{fmt}.npz"

    def relative(self, path: str | os.PathLike) -> str:
        """A path inside the folder as the folder's files record it ('tflite/ptq_int8.tflite')."""
        return Path(path).relative_to(self.path).as_posix()

    # --- what is there ---
    def is_complete(self) -> bool:
        """Training finished: meta.json is written last, model.keras before it."""
        return self.meta_file.is_file() and self.model_file.is_file()

    def is_trained(self) -> bool:
        """Complete, and no later training of the same folder left unfinished: a retraining killed
        midway leaves backup/ beside the previous model, and its rerun (which resumes) must not be
        skipped as if the old model were the result."""
        return self.is_complete() and not self.backup_dir.exists()

    def is_quantized(self, formats: Iterable[str]) -> bool:
        return self.quantize_report.is_file() and all(self.tflite(f).is_file() for f in formats)

    def exports(self, formats: Iterable[str] = EXPORT_FORMATS) -> dict[str, Path]:
        """format -> .tflite file, for those of `formats` present, in that order."""
        return {f: self.tflite(f) for f in formats if self.tflite(f).is_file()}

    def files(self) -> dict[str, Path]:
        """format -> file for every format present: 'keras' (model.keras) first, then EXPORT_FORMATS."""
        return {**({"keras": self.model_file} if self.model_file.is_file() else {}), **self.exports()}

    # --- reading ---
    def read_meta(self) -> dict:
        if not self.meta_file.is_file():
            raise UserError(f"{self.path} is not a model folder ({self.META} missing): train a model first")
        try:
            return json.loads(self.meta_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.meta_file} is not valid JSON ({exc}): retrain or restore the model folder") from None

    def read_temperature(self, fmt: str | None = None) -> float | None:
        """The temperature evaluate.py fitted for `fmt` (fmt None: for the reference format); None
        when that format was not evaluated. Never another format's: a temperature fitted on one
        file's logits does not calibrate another's, and the answer's rules need this format's own."""
        data = self.read_temperatures()
        if data is None:
            return None
        value = data.get("by_format", {}).get(fmt) if fmt is not None else data.get("temperature")
        return None if value is None else float(value)

    def read_temperatures(self) -> dict | None:
        """temperature.json as written, or None when there is none."""
        if not self.temperature_file.is_file():
            return None
        try:
            return json.loads(self.temperature_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.temperature_file} is not valid JSON ({exc}): rerun evaluate.py {self.path}") from None

    def read_quantize_report(self) -> dict:
        """The last quantize.json, or {} when there is none or it is broken (a rerun rewrites it)."""
        try:
            return json.loads(self.quantize_report.read_text(encoding="utf-8")) if self.quantize_report.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def read_open_set(self) -> dict | None:
        """open_set.json, or None when evaluate.py fitted no unknown-species threshold."""
        if not self.open_set_file.is_file():
            return None
        try:
            data = json.loads(self.open_set_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.open_set_file} is not valid JSON ({exc}): rerun evaluate.py") from None
        # Without this check a folder evaluated before "edible" had its own stricter threshold would
        # answer "edible" on the old, looser rule, silently.
        if any("edible_threshold" not in record for record in data.get("by_format", {}).values()):
            raise UserError(f"{self.open_set_file} was written by an older evaluate.py, before 'edible' had its own "
                            f"stricter unknown-species threshold: rerun evaluate.py {self.path}")
        return data

    def open_set_is_current(self) -> bool:
        """False when open_set.json exists but predates a key predict.py now needs (evaluate reruns it)."""
        try:
            self.read_open_set()
        except UserError:
            return False
        return True

    def read_open_set_stats(self, fmt: str) -> dict[str, np.ndarray]:
        path = self.open_set_stats(fmt)
        if not path.is_file():
            raise UserError(f"{path} is missing: rerun evaluate.py on {self.path}")
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}

    # --- writing ---
    def write_temperature(self, data: dict) -> None:
        write_json(self.temperature_file, data)

    def write_open_set(self, data: dict | None, stats: dict[str, dict], replace: Iterable[str] | None = None) -> None:
        """open_set.json and open_set/<format>.npz (the formats in `stats`). Older statistics are
        removed first (only those of the formats in `replace` when given: the others stay with
        their records), and open_set.json too when `data` is None, so predict.py never reads a
        threshold or statistics of an earlier evaluation."""
        for old in (self.path / self.OPEN_SET_STATS).glob("*.npz"):
            if replace is None or old.stem in set(replace):
                old.unlink()
        if data is None:
            self.open_set_file.unlink(missing_ok=True)
            return
        for fmt, arrays in stats.items():
            with replacing(self.open_set_stats(fmt)) as tmp:
                np.savez(tmp, **arrays)
        write_json(self.open_set_file, data)

    def write_quantize_report(self, report: dict) -> None:
        write_json(self.quantize_report, report)


def find_model_folders(models_dir: str | os.PathLike) -> list[Path]:
    """Every complete model folder (model.keras and meta.json) directly under models_dir."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if ModelFolder(p).is_complete())


# --- shortcuts for the many callers holding a plain path -----------------------------------------
def read_meta(folder: str | os.PathLike) -> dict:
    return ModelFolder(folder).read_meta()


def read_temperature(folder: str | os.PathLike, fmt: str | None = None) -> float | None:
    return ModelFolder(folder).read_temperature(fmt)


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def save_model_folder(folder: str | os.PathLike, model, meta: dict, history: dict | None = None) -> Path:
    """Write model.keras and meta.json (atomically, meta last so that it marks completeness)."""
    mf = ModelFolder(folder)
    mf.path.mkdir(parents=True, exist_ok=True)
    # Without the optimizer state (Adam keeps two more copies of every weight): this is the file a
    # user ships and evaluate.py sizes; training never resumes from it.
    # The .keras format has no include_optimizer flag: save an uncompiled twin sharing the layers.
    from mushroom.keras_env import keras

    with replacing(mf.model_file) as tmp:
        keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)
    if history is not None:
        write_json(mf.history_file, history)
    meta = {**meta, "created": meta.get("created") or now(), "versions": meta.get("versions") or versions()}
    write_json(mf.meta_file, meta)
    return mf.path


def load_model_folder(folder: str | os.PathLike, compile: bool = False):
    """(keras model, meta) of a model folder."""
    mf = ModelFolder(folder)
    meta = mf.read_meta()
    if not mf.model_file.is_file():
        raise UserError(f"{mf.model_file} is missing: the model folder is incomplete, retrain it")
    from mushroom.keras_env import keras

    return keras.models.load_model(mf.model_file, compile=compile), meta

