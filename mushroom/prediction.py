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

from mushroom import openset
from mushroom.advice import Answer, UnknownCheck, advise
from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.images import IMAGE_SUFFIXES, load_image
from mushroom.modelio import ModelFolder, read_meta, read_temperature
from mushroom.species import Species, classes_from_table, graded_species

# Preference when no --model is given: the smallest, fastest files first (what a phone would ship).
DEFAULT_FORMAT_ORDER = ("qat_int8", "ptq_int8", "dynamic", "float16", "float32")


def find_default_model(models_dir: str | os.PathLike, reports_dir: str | os.PathLike | None = None) -> Path:
    """The best int8 model: by test top-1 in reports/metrics.json when evaluated, else the first
    model folder holding a file of the most preferred format."""
    models_dir = Path(models_dir)
    metrics_path = Path(reports_dir) / "metrics.json" if reports_dir else None
    if metrics_path and metrics_path.is_file():
        entries = json.loads(metrics_path.read_text(encoding="utf-8"))
        candidates = []
        for e in entries:
            path = ModelFolder(models_dir / e["model"]).tflite(e["format"])
            if e["format"] in ("qat_int8", "ptq_int8") and path.is_file() and e.get("top1") is not None:
                candidates.append((e["top1"], e["format"] == "qat_int8", str(path)))
        if candidates:
            return Path(max(candidates)[2])
    for fmt in DEFAULT_FORMAT_ORDER:
        found = ModelFolder.exports_under(models_dir, fmt)
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
            if not ModelFolder(path).meta_file.is_file():
                raise UserError(f"{path} is not a model folder ({ModelFolder.META} missing)")
            found = list(ModelFolder(path).exports(DEFAULT_FORMAT_ORDER).values())
            if not found:
                raise UserError(f"{path} holds no .tflite file: run quantize_qat.py {path} first")
            path = found[0]
        elif not path.is_file():
            raise UserError(f"model file {path} does not exist")
        elif path.suffix != ".tflite":
            raise UserError(f"{path} is not a .tflite file: predict.py runs TFLite models (see quantize_qat.py)")
    folder, fmt = ModelFolder.of_export(path)
    return path, folder.path, fmt


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
    """A loaded model with everything needed to answer: classes, size, temperature, unknown-species
    threshold, species table."""
    path: Path
    folder: Path
    fmt: str
    model: object
    species: list[Species]
    table: list[Species]
    image_size: int
    temperature: float | None
    predict_cfg: dict
    open_set: dict | None = None        # {score, threshold, unknown_recall, ...} for this format
    stats: dict | None = None           # class means / precision, for a Mahalanobis score
    fusion: str = "mean"                # how several photos of one find are combined

    @classmethod
    def load(cls, cfg: Config, model: str | None = None, threads: int | None = None) -> "Forager":
        from mushroom.litert import TFLiteModel

        path, folder, fmt = resolve_model(model, cfg.paths.models_dir, cfg.paths.reports_dir)
        meta = read_meta(folder)
        table = graded_species(cfg)
        species = classes_from_table(meta["class_names"], table)   # grades from the current table
        runtime = TFLiteModel(path, num_threads=threads)
        record, stats, fusion = read_open_set(folder, fmt)
        return cls(path, folder, fmt, runtime, species, table, int(meta["image_size"]),
                   read_temperature(folder, fmt), dict(cfg.predict), record, stats, fusion or "mean")

    def missing(self) -> list[str]:
        """What the folder lacks for this format before any answer may be "edible" (empty when
        evaluate.py fitted both), as a user would look for it."""
        out = []
        if self.open_set is None:
            out.append(f"an unknown-species threshold for {self.fmt} ({ModelFolder.OPEN_SET})")
        if self.temperature is None:
            out.append(f"a temperature for {self.fmt} ({ModelFolder.TEMPERATURE})")
        return out

    def outputs(self, photos: list[Path]) -> dict[str, np.ndarray]:
        """The model's outputs (probs, logits, embedding) for the photos, one row each."""
        images = []
        for photo in photos:
            if photo.is_dir():
                raise UserError(f"{photo} holds no photos (.jpg, .png, ...)")
            images.append(load_image(photo, self.image_size))
        out = {k: np.asarray(v, np.float64) for k, v in self.model.run(np.stack(images)).items()}
        for role, values in out.items():
            bad = ~np.all(np.isfinite(values.reshape(len(photos), -1)), axis=1)
            if bad.any():
                names = ", ".join(str(p) for p, b in zip(photos, bad) if b)
                raise UserError(f"{names}: the model gave non-finite {role} (NaN or infinity), so there is no "
                                f"answer; the model file {self.path} may be broken: re-export it with quantize_qat.py")
        return out

    def _answer(self, outputs: dict, image: str) -> Answer:
        """The answer for the outputs of one find's photos (one row each): class probabilities from
        the fused outputs, the unknown-species score as the mean of the photos' own scores
        (openset.find_score), and for "edible" every photo's own score below the stricter threshold."""
        fused = openset.fuse(outputs, self.fusion) if len(outputs["probs"]) > 1 else outputs
        probs = openset.probabilities(fused, self.temperature)[0]
        unknown = None
        if self.open_set is not None:
            name = self.open_set["score"]
            if name not in openset.available_scores(outputs, self.stats):
                raise UserError(f"{self.path} does not give what its unknown-species score ({name}) needs: "
                                "re-export it with quantize_qat.py --force, then evaluate.py")
            mean, worst = openset.find_scores(outputs, self.temperature, self.stats, name)
            try:
                unknown = UnknownCheck.from_record(mean, self.open_set, worst if len(outputs["probs"]) > 1 else None)
            except ValueError as exc:
                raise UserError(f"{image}: {exc}") from None
        try:
            return advise(probs, self.species, self.predict_cfg, self.table, image=image, unknown=unknown,
                          temperature=self.temperature)
        except ValueError as exc:   # non-finite probabilities: an error for the photo, never a verdict
            raise UserError(f"{image}: {exc}") from None

    def probabilities(self, photo: Path) -> np.ndarray:
        """Calibrated class probabilities of one photo."""
        return openset.probabilities(self.outputs([photo]), self.temperature)[0]

    def answer(self, photo: Path) -> Answer:
        return self._answer(self.outputs([photo]), str(photo))

    def answer_outputs(self, outputs: dict, images: list[str]) -> Answer:
        """The answer for outputs (one row per photo of one find, as `outputs` gives them), fused
        when there are several (open_set.json's fusion, chosen on validation finds), then calibrated
        and checked like one photo. One photo gives exactly its single-photo answer."""
        return self._answer(outputs, ", ".join(images))


def read_open_set(folder: Path, fmt: str) -> tuple[dict | None, dict | None, str | None]:
    """(this format's record, its feature statistics, the fusion rule) from open_set.json, or Nones
    when evaluate.py fitted nothing (no unknown photos were imported)."""
    data = ModelFolder(folder).read_open_set()
    if data is None:
        return None, None, None
    record = data.get("by_format", {}).get(fmt)
    stats = None
    if record is not None and record["score"] in openset.FEATURE_SCORES:
        stats = openset.prepared(ModelFolder(folder).read_open_set_stats(fmt))
    return record, stats, data.get("fusion")
