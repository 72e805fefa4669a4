"""The model folder: everything needed to use a trained model (see README, "Model folder").

read_meta/find_* import no TensorFlow, so predict.py can use them on a machine without it.
"""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from mushroom.errors import UserError
from mushroom.images import atomic_write

MODEL_FILE = "model.keras"
META_FILE = "meta.json"
HISTORY_FILE = "history.json"
TEMPERATURE_FILE = "temperature.json"
OPEN_SET_FILE = "open_set.json"          # unknown-species score and threshold per format (evaluate.py)
OPEN_SET_STATS_DIR = "open_set"          # <format>.npz: class means / precision for a Mahalanobis score
TFLITE_DIR = "tflite"
# Training's per-epoch backup (Keras BackupAndRestore + best-weights bookkeeping) while a run is
# unfinished; the finished model folder replaces the whole folder, so it never ships with one.
BACKUP_DIR = "backup"

# What a model (and each exported file) gives, by role -> the layer producing it. "probs" is the
# model's own output; "logits" and "embedding" (the pooled features before dropout) feed the
# calibrated probabilities and the unknown-species scores.
OUTPUT_LAYERS = {"probs": "head_probs", "logits": "head_logits", "embedding": "head_pool"}
QAT_PREFIX = "quant_"   # tfmot's QuantizeWrapper renames layer X to quant_X


def output_role(name: str) -> str | None:
    """The role of an output named after its layer ('head_logits', 'quant_head_logits', ...), else None."""
    base = name[len(QAT_PREFIX):] if name.startswith(QAT_PREFIX) else name
    return next((role for role, layer in OUTPUT_LAYERS.items() if base == layer), None)


def default_run_name(cfg) -> str:
    """The two-stage model's folder name under paths.models_dir: '<experiment>-<model.name>'."""
    return f"{cfg.experiment}-{cfg.model.name}"


def baseline_run_name(cfg) -> str:
    """The head-only baseline's folder name: '<experiment>-<baseline.model>-head' (never the same
    folder as the two-stage model, even on the same backbone)."""
    return f"{cfg.experiment}-{cfg.baseline.model}-head"


def backup_dir(folder: str | os.PathLike) -> Path:
    """Where an unfinished training run of this model folder keeps what a rerun resumes from."""
    return Path(folder) / BACKUP_DIR


def write_json(path: str | os.PathLike, data) -> None:
    atomic_write(path, (json.dumps(data, indent=2, allow_nan=False, default=_jsonable) + "\n").encode("utf-8"))


def _jsonable(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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


def read_meta(folder: str | os.PathLike) -> dict:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a model folder ({META_FILE} missing): train a model first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): retrain or restore the model folder") from None


def read_temperature(folder: str | os.PathLike, fmt: str | None = None) -> float | None:
    """The temperature evaluate.py fitted for `fmt` (else its reference format); None if not evaluated."""
    path = Path(folder) / TEMPERATURE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return float(data.get("by_format", {}).get(fmt, data["temperature"]))


def find_model_folders(models_dir: str | os.PathLike) -> list[Path]:
    """Every complete model folder (model.keras and meta.json) directly under models_dir."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / META_FILE).is_file() and (p / MODEL_FILE).is_file())


def save_model_folder(folder: str | os.PathLike, model, meta: dict, history: dict | None = None) -> Path:
    """Write model.keras and meta.json (atomically, model last-but-one so meta marks completeness)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".partial-model.keras"
    # Without the optimizer state (Adam keeps two more copies of every weight): this is the file a
    # user ships and evaluate.py sizes; training never resumes from it.
    # The .keras format has no include_optimizer flag: save an uncompiled twin sharing the layers.
    from mushroom.keras_env import keras

    keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)
    os.replace(tmp, folder / MODEL_FILE)
    if history is not None:
        write_json(folder / HISTORY_FILE, history)
    meta = {**meta, "created": meta.get("created") or now(), "versions": meta.get("versions") or versions()}
    write_json(folder / META_FILE, meta)
    return folder


def load_model_folder(folder: str | os.PathLike, compile: bool = False):
    """(keras model, meta) of a model folder."""
    folder = Path(folder)
    meta = read_meta(folder)
    path = folder / MODEL_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: the model folder is incomplete, retrain it")
    from mushroom.keras_env import keras

    return keras.models.load_model(path, compile=compile), meta
