"""tf.data input pipelines from data/manifest.csv.

    names = class_names(cfg, rows)
    ds = split_dataset(cfg, data_dir, "train", names)          # (images, one-hot labels) batches

Every photo is decoded and resized with padding by mushroom.images.load_image (the same path as
prediction), wrapped in tf.numpy_function and mapped in parallel. Images reach the model as
float32 in [0, 255]; the backbone's own scaling is inside the model. Augmentation (flip, rotation,
zoom, contrast) runs here, on the training split only, never inside the saved model.

Class order (the model's output order, saved in meta.json): the experiment's species
(species.selected_species: config order, data.species_subset applied) that have at least one
training photo. A species with no training photo cannot be learnt, so it gets no output; its
val/test photos (if any) are left out of evaluation and reported.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.images import load_image
from mushroom.keras_env import tf
from mushroom.manifest import SPLITS, manifest_path, read_manifest
from mushroom.species import Species, selected_species

AUTOTUNE = tf.data.AUTOTUNE
# A batch whose brightest pixel is at most this is taken to be [0, 1]-scaled (a real photo batch
# in [0, 255] never is, unless it is entirely black, which is allowed).
UNIT_RANGE_MAX = 1.0 + 1e-3


class PixelRangeError(ValueError):
    """Images reaching a model are not raw [0, 255] pixels (most likely scaled to [0, 1] twice)."""


# --- classes and examples -------------------------------------------------------------------------
def class_names(cfg: Config, rows: list[dict]) -> list[str]:
    """The model's classes in output order: selected species (config order) with training photos."""
    present = {r["species"] for r in rows if r["split"] == "train"}
    names = [s.name for s in selected_species(cfg) if s.name in present]
    if len(names) < 2:
        raise UserError(f"the training split has photos of {len(names)} of the selected species; at least 2 "
                        "are needed: import more photos or check data.species_subset")
    return names


def class_species(cfg: Config, names: list[str]) -> list[Species]:
    by_name = {s.name: s for s in selected_species(cfg)}
    return [by_name[n] for n in names]


def examples(rows: list[dict], split: str, names: list[str], data_dir: str | os.PathLike) -> tuple[list[str], list[int]]:
    """(absolute paths, label indices) of the rows of `split` whose species is a class."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    index = {n: i for i, n in enumerate(names)}
    data_dir = Path(data_dir)
    paths, labels, missing = [], [], []
    for r in rows:
        if r["split"] != split or r["species"] not in index:
            continue
        p = data_dir / r["path"]
        if not p.is_file():
            missing.append(str(p))
            continue
        paths.append(str(p))
        labels.append(index[r["species"]])
    if missing:
        raise UserError(f"{len(missing)} photos listed in {manifest_path(data_dir)} are missing (first: {missing[0]}): "
                        "rerun download_data.py to fetch them again")
    return paths, labels


def exposure_examples(cfg: Config, rows: list[dict], names: list[str], data_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(absolute paths, species) of the outlier-exposure photos: every photo (any split: they are
    never evaluated) of the exposure species (species.unknown_partition), sorted by path. Empty
    when open_set.exposure_weight is 0."""
    from mushroom.species import unknown_partition

    if cfg.open_set.exposure_weight <= 0:
        return [], []
    exposure = set(unknown_partition(cfg, {r["species"] for r in rows}, names).exposure)
    picked = sorted((r for r in rows if r["species"] in exposure), key=lambda r: r["path"])
    missing = [r["path"] for r in picked if not (Path(data_dir) / r["path"]).is_file()]
    if missing:
        raise UserError(f"{len(missing)} exposure photos of the manifest are missing from {data_dir} (first: "
                        f"{missing[0]}): re-import or re-download the data")
    return [str(Path(data_dir) / r["path"]) for r in picked], [r["species"] for r in picked]


def skipped_species(rows: list[dict], names: list[str]) -> dict[str, int]:
    """Photos (any split) of species that are not classes: {species: count}."""
    out: dict[str, int] = {}
    for r in rows:
        if r["species"] not in names:
            out[r["species"]] = out.get(r["species"], 0) + 1
    return out


# --- the pixel-range guard ------------------------------------------------------------------------
def check_pixel_range(images, where: str = "batch") -> None:
    """Raise PixelRangeError unless `images` are raw pixels in [0, 255] (an all-black batch passes).

    The original study fed [0, 1] images to a backbone that scales [0, 255] itself and lost ~10
    points of top-1 without any error; this makes that mistake loud."""
    x = np.asarray(images)
    if x.size == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255.0 + 1e-3:
        raise PixelRangeError(f"{where}: pixel values span [{lo:g}, {hi:g}], outside [0, 255]")
    if 0 < hi <= UNIT_RANGE_MAX:
        raise PixelRangeError(f"{where}: pixel values span [{lo:g}, {hi:g}]: images look scaled to [0, 1], "
                              "but models take raw [0, 255] pixels and scale them inside")


def guard_batch(images, labels, *weights):
    """The same check as check_pixel_range as TF ops, for every batch of a tf.data pipeline."""
    lo, hi = tf.reduce_min(images), tf.reduce_max(images)
    ok = (lo >= 0.0) & (hi <= 255.0 + 1e-3) & tf.logical_not((hi > 0.0) & (hi <= UNIT_RANGE_MAX))
    check = tf.debugging.Assert(ok, ["pixel range guard: a batch is not raw [0, 255] pixels (scaled to [0, 1] "
                                     "twice?); min/max:", lo, hi])
    with tf.control_dependencies([check]):
        return (tf.identity(images), labels, *weights)


# --- augmentation ---------------------------------------------------------------------------------
def augment_batch(images: tf.Tensor, seed: tf.Tensor, flip: bool, rotation: float, zoom: float,
                  contrast: float) -> tf.Tensor:
    """Random flip / rotation / zoom / contrast of a float [0, 255] batch (N, H, W, 3), one draw per
    image, from stateless ops keyed by `seed` (shape [2]): reproducible, and safe in parallel maps.

    rotation: max angle as a fraction of a full turn; zoom: max scale change (1 +- zoom);
    contrast: max factor change (1 +- contrast), around each image's per-channel mean.
    Pixels moved in from outside are black, like the padding of load_image. Output clipped to [0, 255]."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    n = tf.shape(images)[0]
    x = images
    if flip:
        do = tf.random.stateless_uniform([n], seeds[0]) < 0.5
        x = tf.where(do[:, None, None, None], tf.reverse(x, axis=[2]), x)
    if rotation > 0 or zoom > 0:
        angle = tf.random.stateless_uniform([n], seeds[1], -rotation, rotation) * (2.0 * math.pi)
        # k = 1 / scale: output pixel p samples input centre + R(angle) (p - centre) * k
        k = 1.0 / tf.random.stateless_uniform([n], seeds[2], 1.0 - zoom, 1.0 + zoom)
        h = tf.cast(tf.shape(x)[1], tf.float32)
        w = tf.cast(tf.shape(x)[2], tf.float32)
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        cos, sin = tf.cos(angle) * k, tf.sin(angle) * k
        a0, a1, b0, b1 = cos, -sin, sin, cos
        a2 = cx - a0 * cx - a1 * cy
        b2 = cy - b0 * cx - b1 * cy
        zeros = tf.zeros_like(a0)
        transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="CONSTANT")
    if contrast > 0:
        factor = tf.random.stateless_uniform([n, 1, 1, 1], seeds[3], 1.0 - contrast, 1.0 + contrast)
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = (x - mean) * factor + mean
    return tf.clip_by_value(x, 0.0, 255.0)


# --- pipelines ------------------------------------------------------------------------------------
def _decoder(image_size: int):
    def load(path):
        return load_image(path.decode("utf-8"), image_size)

    def fn(path, label):
        img = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        img.set_shape((image_size, image_size, 3))
        return img, label
    return fn


def make_dataset(paths: list[str], labels: list[int], image_size: int, batch_size: int, *,
                 training: bool = False, augment: dict | None = None, seed: int = 0, cache: bool = False,
                 num_classes: int | None = None, exposure_weight: float | None = None) -> tf.data.Dataset:
    """Batches of (float32 [0, 255] images (N, size, size, 3), labels).

    training: shuffle (seeded, reshuffled each epoch) and augment with `augment` (cfg.augment keys);
    otherwise order is kept and nothing is random. No batch is ever dropped (the last one may be
    short). cache keeps decoded, resized uint8 images in memory after the first epoch.
    num_classes: one-hot labels (needed for label smoothing), else integer labels.
    exposure_weight: label -1 marks an outlier-exposure photo (a species the model must not know):
    its target is the uniform distribution, whose cross-entropy is logsumexp(z) - mean(z), the
    outlier-exposure loss of Hendrycks et al. (2019), and batches are (images, targets, sample
    weights) with this weight on those photos and 1 on the others. Needs num_classes."""
    if not paths:
        raise UserError("no photos to build a dataset from: check the manifest and data.species_subset")
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths), tf.constant(labels, tf.int32)))
    ds = ds.map(_decoder(image_size), num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()  # uint8, before the cast: 4x less memory than float32
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    if exposure_weight is not None:
        if not num_classes:
            raise ValueError("outlier exposure needs one-hot targets (num_classes)")
        uniform = tf.fill([num_classes], 1.0 / num_classes)

        def targets(x, y):
            other = y < 0
            return (x, tf.where(other, uniform, tf.one_hot(y, num_classes)),
                    tf.where(other, tf.constant(exposure_weight, tf.float32), tf.constant(1.0, tf.float32)))
        ds = ds.map(targets, num_parallel_calls=AUTOTUNE)
    elif num_classes:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=False)
    aug = dict(augment or {})
    if training and (aug.get("flip") or aug.get("rotation") or aug.get("zoom") or aug.get("contrast")):
        # one seed per batch from a seeded random dataset that draws anew each epoch, so
        # augmentation differs between epochs yet a rerun with the same seed repeats it exactly
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, draws))
        params = dict(flip=bool(aug.get("flip")), rotation=float(aug.get("rotation", 0.0)),
                      zoom=float(aug.get("zoom", 0.0)), contrast=float(aug.get("contrast", 0.0)))
        ds = ds.map(lambda xy, s: (augment_batch(xy[0], tf.stack([tf.constant(seed, tf.int64), s]), **params),
                                   *xy[1:]), num_parallel_calls=AUTOTUNE)
    ds = ds.map(guard_batch)
    return ds.prefetch(AUTOTUNE)


@dataclass
class SplitData:
    dataset: tf.data.Dataset
    paths: list[str]
    labels: list[int]
    exposure_paths: list[str] = ()      # outlier-exposure photos mixed into `dataset` (training only)

    def __len__(self) -> int:
        return len(self.paths)


def split_dataset(cfg: Config, data_dir: str | os.PathLike, split: str, names: list[str],
                  rows: list[dict] | None = None, one_hot: bool = True, batch_size: int | None = None,
                  exposure: bool = False) -> SplitData:
    """The pipeline of one split of the manifest (training split: shuffled and augmented).
    exposure: the training split with the outlier-exposure photos mixed in (dataset.exposure_examples,
    label -1, weighted open_set.exposure_weight); `paths`/`labels` stay the known photos only."""
    if rows is None:
        rows = read_manifest(manifest_path(data_dir))
    paths, labels = examples(rows, split, names, data_dir)
    training = split == "train"
    extra, _ = exposure_examples(cfg, rows, names, data_dir) if exposure and training and one_hot else ([], [])
    ds = make_dataset(paths + extra, labels + [-1] * len(extra), cfg.image.size, batch_size or cfg.train.batch_size,
                      training=training, augment=cfg.augment if training else None, seed=cfg.seed,
                      cache=cfg.train.cache, num_classes=len(names) if one_hot else None,
                      exposure_weight=cfg.open_set.exposure_weight if extra else None) if paths else None
    return SplitData(ds, paths, labels, extra)
