"""The forager's offline answer for photos: LiteRT + NumPy + Pillow only (no TensorFlow import),
so predict.py starts fast and runs where TensorFlow is not installed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mushroom.advice import Answer, advise
from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.images import IMAGE_SUFFIXES, load_image
from mushroom.modelio import META_FILE, TFLITE_DIR, read_meta, read_temperature
from mushroom.species import Species, all_species

# Preference when no --model is given: the smallest, fastest files first (what a phone would ship).
DEFAULT_FORMAT_ORDER = ("qat_int8", "ptq_int8", "dynamic", "float16", "float32")


def _folder_and_format(tflite: Path) -> tuple[Path, str]:
    folder = tflite.parent.parent if tflite.parent.name == TFLITE_DIR else tflite.parent
    return folder, tflite.stem


def find_default_model(models_dir: str | os.PathLike, reports_dir: str | os.PathLike | None = None) -> Path:
    """The best int8 model: by test top-1 in reports/metrics.json when evaluated, else the first
    model folder holding a file of the most preferred format."""
    models_dir = Path(models_dir)
    metrics_path = Path(reports_dir) / "metrics.json" if reports_dir else None
    if metrics_path and metrics_path.is_file():
        entries = json.loads(metrics_path.read_text(encoding="utf-8"))
        candidates = []
        for e in entries:
            path = models_dir / e["model"] / TFLITE_DIR / f"{e['format']}.tflite"
            if e["format"] in ("qat_int8", "ptq_int8") and path.is_file() and e.get("top1") is not None:
                candidates.append((e["top1"], e["format"] == "qat_int8", str(path)))
        if candidates:
            return Path(max(candidates)[2])
    for fmt in DEFAULT_FORMAT_ORDER:
        found = sorted(models_dir.glob(f"*/{TFLITE_DIR}/{fmt}.tflite"))
        if found:
            return found[0]
    raise UserError(f"no .tflite model found under {models_dir}: train and quantize a model first "
                    "(make demo), or pass --model PATH")


def resolve_model(model: str | os.PathLike | None, models_dir, reports_dir=None) -> tuple[Path, Path, str]:
    """(tflite file, model folder, format) from --model (a .tflite file or a model folder) or the default."""
    if model is None:
        path = find_default_model(models_dir, reports_dir)
    else:
        path = Path(model)
        if path.is_dir():
            if not (path / META_FILE).is_file():
                raise UserError(f"{path} is not a model folder ({META_FILE} missing)")
            found = [path / TFLITE_DIR / f"{f}.tflite" for f in DEFAULT_FORMAT_ORDER
                     if (path / TFLITE_DIR / f"{f}.tflite").is_file()]
            if not found:
                raise UserError(f"{path} holds no .tflite file: run quantize_qat.py {path} first")
            path = found[0]
        elif not path.is_file():
            raise UserError(f"model file {path} does not exist")
        elif path.suffix != ".tflite":
            raise UserError(f"{path} is not a .tflite file: predict.py runs TFLite models (see quantize_qat.py)")
    folder, fmt = _folder_and_format(path)
    return path, folder, fmt


def iter_photos(inputs: list[str]) -> Iterator[Path]:
    """Files as given (even with odd suffixes, so a non-image gets its own clear error); folders
    expanded to the image files inside them, sorted."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                yield path  # reported as "no photos in folder"
            yield from files
        else:
            yield path


@dataclass
class Forager:
    """A loaded model with everything needed to answer: classes, size, temperature, species table."""
    path: Path
    folder: Path
    fmt: str
    model: object
    species: list[Species]
    table: list[Species]
    image_size: int
    temperature: float | None
    predict_cfg: dict

    @classmethod
    def load(cls, cfg: Config, model: str | None = None, threads: int | None = None) -> "Forager":
        from mushroom.litert import TFLiteModel

        path, folder, fmt = resolve_model(model, cfg.paths.models_dir, cfg.paths.reports_dir)
        meta = read_meta(folder)
        species = [Species.from_dict(s) for s in meta["species"]]
        runtime = TFLiteModel(path, num_threads=threads)
        return cls(path, folder, fmt, runtime, species, all_species(cfg), int(meta["image_size"]),
                   read_temperature(folder, fmt), dict(cfg.predict))

    def probabilities(self, photo: Path) -> np.ndarray:
        if photo.is_dir():
            raise UserError(f"{photo} holds no photos (.jpg, .png, ...)")
        image = load_image(photo, self.image_size)
        probs = np.asarray(self.model.predict(image[None]), np.float64)[0]
        if self.temperature:
            from mushroom.metrics import apply_temperature

            probs = apply_temperature(probs[None], self.temperature)[0]
        return probs

    def answer(self, photo: Path) -> Answer:
        return advise(self.probabilities(photo), self.species, self.predict_cfg, self.table, image=str(photo))
