"""The tf.data pipelines: classes, eval splits, augmentation, and the [0, 255] pixel-range guard."""
from __future__ import annotations

import numpy as np
import pytest

from mushroom import dataset
from mushroom.errors import UserError
from mushroom.images import load_image
from mushroom.keras_env import tf
from mushroom.manifest import manifest_path, read_manifest
from tests.datadirs import make_data_dir, tiny_cfg


@pytest.fixture
def data_dir(photo_folder, tmp_path):
    return make_data_dir(photo_folder, tmp_path / "data")


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_classes_follow_config_order_and_need_training_photos(data_dir):
    cfg = tiny_cfg()
    rows = read_manifest(manifest_path(data_dir))
    # a species with val photos only cannot be learnt: it is no class, and its photos are left out
    extra = dict(rows[-1], species="Amanita phalloides", split="val", photo_id="x")
    names = dataset.class_names(cfg, rows + [extra])
    order = [s["name"] for s in cfg.species]
    assert names == sorted({r["species"] for r in rows}, key=order.index)
    assert dataset.skipped_species(rows + [extra], names) == {"Amanita phalloides": 1}
    paths, labels = dataset.examples(rows + [extra], "val", names, data_dir)
    assert len(paths) == 9 and sorted(set(labels)) == [0, 1, 2]
    with pytest.raises(UserError, match="at least 2"):
        dataset.class_names(tiny_cfg("data.species_subset=[Boletus edulis]"), rows)


def test_eval_split_keeps_every_photo_in_order_unaugmented(data_dir):
    cfg = tiny_cfg("train.batch_size=4")  # 9 val photos: batches of 4, 4 and 1
    rows = read_manifest(manifest_path(data_dir))
    names = dataset.class_names(cfg, rows)
    val = dataset.split_dataset(cfg, data_dir, "val", names, rows, one_hot=False)
    first, second = _batches(val.dataset), _batches(val.dataset)
    assert [len(y) for _, y in first] == [4, 4, 1]
    assert np.concatenate([y for _, y in first]).tolist() == val.labels
    images = np.concatenate([x for x, _ in first])
    # the exact pixels predict.py gets from the same files: no augmentation, no rescaling
    expected = np.stack([load_image(p, cfg.image.size) for p in val.paths]).astype(np.float32)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(images, np.concatenate([x for x, _ in second]))
    assert images.dtype == np.float32 and images.max() > 1.0


def test_training_augmentation_is_random_reproducible_and_label_preserving(data_dir):
    cfg = tiny_cfg()
    rows = read_manifest(manifest_path(data_dir))
    names = dataset.class_names(cfg, rows)
    paths, labels = dataset.examples(rows, "train", names, data_dir)
    kw = dict(image_size=64, batch_size=4, training=True, seed=3, cache=True)
    aug = dataset.make_dataset(paths, labels, augment=cfg.augment, **kw)
    plain = dataset.make_dataset(paths, labels, augment=None, **kw)
    e1, e2 = _batches(aug), _batches(aug)
    x1, x2 = np.concatenate([x for x, _ in e1]), np.concatenate([x for x, _ in e2])
    assert x1.shape == (18, 64, 64, 3)
    assert not np.array_equal(x1, x2)  # a new draw (and order) each epoch
    assert 0.0 <= x1.min() and x1.max() <= 255.0 and x1.max() > 1.0
    # label-preserving: same seed -> same shuffle order with or without augmentation
    p1 = _batches(plain)
    y_aug, y_plain = np.concatenate([y for _, y in e1]), np.concatenate([y for _, y in p1])
    np.testing.assert_array_equal(y_aug, y_plain)
    assert sorted(y_aug.tolist()) == sorted(labels)
    xp = np.concatenate([x for x, _ in p1])
    assert np.abs(x1 - xp).mean() > 5.0  # augmentation changed the pixels of the same photos
    # a fresh pipeline with the same seed repeats the first epoch exactly
    again = _batches(dataset.make_dataset(paths, labels, augment=cfg.augment, **kw))
    np.testing.assert_array_equal(x1, np.concatenate([x for x, _ in again]))


def test_augment_batch_strengths():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (3, 32, 32, 3)).astype(np.float32))
    seed = tf.constant([1, 2], tf.int64)
    same = dataset.augment_batch(x, seed, flip=False, rotation=0.0, zoom=0.0, contrast=0.0)
    np.testing.assert_allclose(same.numpy(), x.numpy())
    flipped = dataset.augment_batch(x, seed, flip=True, rotation=0.0, zoom=0.0, contrast=0.0).numpy()
    for a, b in zip(flipped, x.numpy()):  # each image either kept or mirrored left-right
        assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])
    strong = dataset.augment_batch(x * 0 + 250, seed, flip=True, rotation=0.2, zoom=0.3, contrast=0.5).numpy()
    assert strong.min() >= 0 and strong.max() <= 255


def test_pixel_range_guard_trips_on_unit_scaled_images(data_dir):
    cfg = tiny_cfg()
    rows = read_manifest(manifest_path(data_dir))
    names = dataset.class_names(cfg, rows)
    for split in ("train", "val"):
        for images, _ in dataset.split_dataset(cfg, data_dir, split, names, rows).dataset:
            dataset.check_pixel_range(images.numpy())          # what reaches the model: raw [0, 255]
            with pytest.raises(dataset.PixelRangeError, match=r"\[0, 1\]"):
                dataset.check_pixel_range(images.numpy() / 255.0)
    dataset.check_pixel_range(np.zeros((2, 8, 8, 3)))         # an all-black batch is legal
    with pytest.raises(dataset.PixelRangeError, match="outside"):
        dataset.check_pixel_range(np.full((1, 4, 4, 3), -1.0))
    # the in-pipeline guard (TF ops) trips the same way on every batch
    ok = tf.data.Dataset.from_tensors((tf.fill([2, 8, 8, 3], 200.0), tf.constant([0, 1]))).map(dataset.guard_batch)
    list(ok)
    bad = tf.data.Dataset.from_tensors((tf.fill([2, 8, 8, 3], 200.0 / 255), tf.constant([0, 1]))).map(dataset.guard_batch)
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixel range guard"):
        list(bad)


def test_missing_photo_is_one_clear_error(data_dir):
    rows = read_manifest(manifest_path(data_dir))
    (data_dir / rows[0]["path"]).unlink()
    names = dataset.class_names(tiny_cfg(), rows)
    with pytest.raises(UserError, match="missing"):
        dataset.examples(rows, rows[0]["split"], names, data_dir)


def test_manifest_rows_of_unselected_species_are_ignored(data_dir):
    rows = read_manifest(manifest_path(data_dir))
    cfg = tiny_cfg("data.species_subset=[Boletus edulis, Amanita muscaria]")
    names = dataset.class_names(cfg, rows)
    assert names == ["Amanita muscaria", "Boletus edulis"]
    assert len(dataset.split_dataset(cfg, data_dir, "test", names, rows)) == 6


def test_outlier_exposure_photos_train_towards_the_uniform_distribution(data_dir):
    """Photos of a species in neither the table nor evaluation_species (what download_data.py
    fetches as exposure) join the training batches with a uniform target and the exposure weight;
    known photos keep their one-hot target and weight 1; val and test never get them."""
    from mushroom.manifest import write_manifest

    rows = read_manifest(manifest_path(data_dir))
    for r in rows:
        if r["species"] == "Hypholoma fasciculare":
            r["species"] = "Otherus fungus"                 # not in config.yaml: downloaded exposure
    write_manifest(manifest_path(data_dir), rows)
    cfg = tiny_cfg("data.species_subset=[Amanita muscaria, Boletus edulis]", "open_set.exposure_weight=0.25",
                   "train.batch_size=50")
    names = dataset.class_names(cfg, rows)
    assert names == ["Amanita muscaria", "Boletus edulis"]
    paths, species = dataset.exposure_examples(cfg, rows, names, data_dir)
    assert len(paths) == 12 and set(species) == {"Otherus fungus"}      # every split: never evaluated
    train = dataset.split_dataset(cfg, data_dir, "train", names, rows, exposure=True)
    assert len(train) == 12 and len(train.exposure_paths) == 12
    (x, y, w), = [tuple(t.numpy() for t in batch) for batch in train.dataset]
    assert x.shape[0] == 24
    other = w == 0.25
    assert other.sum() == 12 and np.all(w[~other] == 1.0)
    np.testing.assert_allclose(y[other], 0.5)                            # uniform over the two classes
    assert set(map(tuple, y[~other])) == {(1.0, 0.0), (0.0, 1.0)}
    # the loss Keras computes on them is the outlier-exposure loss: logsumexp(z) - mean(z)
    z = np.array([[2.0, -1.0]])
    ce = float(tf.keras.losses.categorical_crossentropy(np.array([[0.5, 0.5]]), tf.nn.softmax(z))[0])
    assert ce == pytest.approx(float(np.log(np.exp(z).sum()) - z.mean()), rel=1e-5)
    # without the flag, or with weight 0, nothing changes; val never has exposure photos
    assert len(list(dataset.split_dataset(cfg, data_dir, "train", names, rows).dataset)[0]) == 2
    off = tiny_cfg("data.species_subset=[Amanita muscaria, Boletus edulis]", "open_set.exposure_weight=0")
    assert dataset.exposure_examples(off, rows, names, data_dir) == ([], [])
    val = dataset.split_dataset(cfg, data_dir, "val", names, rows, exposure=True)
    assert not val.exposure_paths and len(list(val.dataset)[0]) == 2
