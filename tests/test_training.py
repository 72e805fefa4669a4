"""Two-stage training on real photos with the tiny model: freezing, learning, reproducibility,
the model folder contract, distribution, and the training scripts."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from mushroom import dataset, distribute, models, modelio, training, training_run
from mushroom.config import PROJECT_ROOT
from mushroom.keras_env import keras
from mushroom.manifest import manifest_path, read_manifest
from tests.datadirs import make_data_dir, tiny_cfg


@pytest.fixture
def data_dir(photo_folder, tmp_path):
    return make_data_dir(photo_folder, tmp_path / "data")


def test_from_scratch_every_layer_trains_in_both_stages():
    model = models.build_model("tiny", 3, 32)
    for stage in (1, 2):
        opened = training.freeze_for_stage(model, stage, unfreeze_fraction=0.2, from_scratch=True)
        assert all(l.trainable for l in model.layers)
        assert opened == [l.name for l in models.backbone_layers(model)]


def test_stage_freezing_keeps_batch_norm_and_lower_layers_frozen():
    model = models.build_model("tiny", 3, 32)
    backbone = models.backbone_layers(model)
    assert training.freeze_for_stage(model, 1) == []
    assert not any(l.trainable for l in backbone)
    assert all(model.get_layer(n).trainable for n in models.head_layer_names(model))

    opened = training.freeze_for_stage(model, 2, unfreeze_fraction=0.5)
    n_top = round(0.5 * len(backbone))
    top, lower = backbone[len(backbone) - n_top:], backbone[:len(backbone) - n_top]
    assert opened == [l.name for l in top if not isinstance(l, keras.layers.BatchNormalization)]
    assert opened and all(l.trainable for l in top if l.name in opened)
    assert not any(l.trainable for l in lower)
    assert not any(l.trainable for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    assert any(isinstance(l, keras.layers.BatchNormalization) for l in top)  # the rule was exercised
    # frozen BN does not move in training mode either
    bn = model.get_layer("top_bn")
    before = [w.copy() for w in bn.get_weights()]
    training.compile_model(model, 1e-2, 0.1, 3)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    model.train_on_batch(x, keras.utils.to_categorical([0, 1, 2, 0], 3))
    for a, b in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_loss_decreases_over_a_few_steps(data_dir):
    cfg = tiny_cfg()
    distribute.seed_everything(cfg.seed)
    rows = read_manifest(manifest_path(data_dir))
    names = dataset.class_names(cfg, rows)
    images, labels = next(iter(dataset.split_dataset(cfg, data_dir, "train", names, rows, batch_size=18).dataset))
    model = models.build_model("tiny", len(names), cfg.image.size)
    training.compile_model(model, 1e-2, cfg.train.label_smoothing, len(names))
    losses = [model.train_on_batch(images, labels)[0] for _ in range(15)]
    assert losses[-1] < losses[0] - 0.05


def test_same_seed_same_first_epoch_loss(data_dir):
    cfg = tiny_cfg("train.stage2.epochs=0", "model.dropout=0.2")
    first = [training.fit(cfg, data_dir, verbose=0).history["epochs"][0]["loss"] for _ in range(2)]
    assert first[0] == first[1]
    other = training.fit(tiny_cfg("train.stage2.epochs=0", "model.dropout=0.2", "seed=7"), data_dir, verbose=0)
    assert other.history["epochs"][0]["loss"] != first[0]


def test_saved_folder_reproduces_training_time_predictions(data_dir, tmp_path):
    cfg = tiny_cfg()
    result = training.fit(cfg, data_dir, verbose=0)
    before = training.predict(result.model, result.val)
    meta = training_run.build_meta(cfg, "run", result, training.top1(before, result.val.labels))
    folder = training_run.save_run(cfg, tmp_path / "models" / "run", result.model, meta, result.history)
    model, meta2 = modelio.load_model_folder(folder)
    np.testing.assert_array_equal(model.predict(result.val.dataset, verbose=0), before)
    assert meta2["class_names"] == result.class_names
    assert models.scaling_layer(model).name == "rescaling"


def test_train_writes_the_model_folder_contract(data_dir, tmp_path, capsys):
    cfg = tiny_cfg("train.stage1.epochs=2", "train.stage2.epochs=2")
    stale = tmp_path / "models" / "test-tiny" / "tflite"
    stale.mkdir(parents=True)
    (stale / "float32.tflite").write_bytes(b"old model")
    folder = training_run.train(cfg, data_dir, tmp_path / "models")
    assert folder == tmp_path / "models" / "test-tiny"  # <experiment>-<model.name>
    assert sorted(p.name for p in folder.iterdir()) == ["config.resolved.yaml", "history.json", "meta.json",
                                                         "model.keras"]  # the old model's exports are gone
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    out = capsys.readouterr().out
    assert out.count("FROM SCRATCH") == 1
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["model_name"] == "tiny" and meta["run_name"] == "test-tiny"
    assert meta["class_names"] == ["Amanita muscaria", "Hypholoma fasciculare", "Boletus edulis"]
    assert [s["name"] for s in meta["species"]] == meta["class_names"]
    assert meta["species"][0]["edibility"] == "poisonous"
    assert meta["image_size"] == 64 and meta["input_range"] == [0, 255] and meta["preprocessing"] == "tiny"
    assert meta["weights"] is None and meta["seed"] == 42 and meta["created"] and meta["versions"]["tensorflow"]
    history = json.loads((folder / "history.json").read_text())
    assert [e["stage"] for e in history["epochs"]][0] == 1 and history["epochs"][-1]["stage"] == 2
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(history["epochs"][0])
    assert history["stages"][1]["trainable_backbone_layers"]
    resolved = yaml.safe_load((folder / "config.resolved.yaml").read_text())
    assert resolved["model"]["name"] == "tiny"
    # the reloaded model scores exactly the val top-1 measured at the end of training
    model, _ = modelio.load_model_folder(folder)
    val = dataset.split_dataset(cfg, data_dir, "val", meta["class_names"])
    assert training.top1(model.predict(val.dataset, verbose=0), val.labels) == meta["val_top1"]
    assert all(l.trainable for l in model.layers)


def test_a_baseline_that_repeats_stage1_is_saved_from_it(data_dir, tmp_path, capsys):
    """Baseline on the model's own backbone and weights: training the two-stage model writes the
    baseline's folder from its stage 1, holding exactly what training the baseline alone gives."""
    from mushroom.config import with_overrides

    cfg = tiny_cfg("train.stage1.epochs=2", "train.stage2.epochs=1", "baseline.model=tiny", "baseline.weights=null")
    assert modelio.baseline_is_stage1(cfg)
    training_run.train(cfg, data_dir, tmp_path / "a")
    derived = tmp_path / "a" / "test-tiny-head"
    assert "the head-only baseline is this run's stage 1" in capsys.readouterr().out
    alone_cfg = with_overrides(cfg, training_run.baseline_overrides(cfg))   # what train_resnet_baseline.py runs
    assert not modelio.baseline_is_stage1(alone_cfg) and cfg.train.stage2.epochs == 1  # cfg itself unchanged
    alone = training_run.train(alone_cfg, data_dir, tmp_path / "b", run_name="test-tiny-head")
    assert modelio.ModelFolder(derived).is_complete()
    a, _ = modelio.load_model_folder(derived)
    b, _ = modelio.load_model_folder(alone)
    assert len(a.get_weights()) == len(b.get_weights())
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # stage 2 went on from stage 1: the main model differs unless stage 1 stayed the best
    main, main_meta = modelio.load_model_folder(tmp_path / "a" / "test-tiny")
    same = all(np.array_equal(wa, wm) for wa, wm in zip(a.get_weights(), main.get_weights()))
    assert same == (main_meta["best"]["stage"] == 1)
    assert [e["stage"] for e in json.loads((tmp_path / "a" / "test-tiny" / "history.json").read_text())["epochs"]] == [1, 1, 2]
    meta_a, meta_b = (json.loads((f / "meta.json").read_text()) for f in (derived, alone))
    assert meta_a["from_stage1_of"] == "test-tiny" and "from_stage1_of" not in meta_b
    for key in ("val_top1", "best", "class_names", "model_name", "run_name", "weights", "photos", "image_size"):
        assert meta_a[key] == meta_b[key], key
    hist_a, hist_b = (json.loads((f / "history.json").read_text()) for f in (derived, alone))
    assert [e["stage"] for e in hist_a["epochs"]] == [1, 1]
    assert [e["loss"] for e in hist_a["epochs"]] == [e["loss"] for e in hist_b["epochs"]]
    assert hist_a["best"] == hist_b["best"]
    assert (yaml.safe_load((derived / "config.resolved.yaml").read_text())
            == yaml.safe_load((alone / "config.resolved.yaml").read_text()))


def test_resnet_script_trains_the_head_only(data_dir, tmp_path):
    import train_resnet_baseline

    models_dir = tmp_path / "models"
    code = train_resnet_baseline.main([
        "--data-dir", str(data_dir), "--run-name", "baseline",
        "--set", "image.size=32", "--set", "baseline.weights=null", "--set", "train.batch_size=8",
        "--set", "train.stage1.epochs=1", "--set", "train.stage2.epochs=5", "--set", "wandb.mode=disabled",
        "--set", f"paths.models_dir={models_dir}"])
    assert code == 0
    resolved = yaml.safe_load((models_dir / "baseline" / "config.resolved.yaml").read_text())
    # the backbone and its weights come from the config's baseline section; stage 2 is off
    assert resolved["model"]["name"] == "resnet50" and resolved["model"]["weights"] is None
    assert resolved["train"]["stage2"]["epochs"] == 0
    history = json.loads((models_dir / "baseline" / "history.json").read_text())
    assert {e["stage"] for e in history["epochs"]} == {1}


def test_efficientnet_script_variant_sets_the_model_name(monkeypatch, tmp_path):
    import train_efficientnet_v2

    seen = {}
    monkeypatch.setattr(training_run, "train", lambda cfg, data_dir, models_dir, run_name=None: seen.update(
        cfg=cfg, data_dir=data_dir, run_name=run_name))
    assert train_efficientnet_v2.main(["--variant", "s", "--set", "model.name=resnet50", "--run-name", "r1"]) == 0
    assert seen["cfg"].model.name == "efficientnet_v2_s" and seen["run_name"] == "r1"
    train_efficientnet_v2.main([])
    assert seen["cfg"].model.name == "efficientnet_v2_m" and str(seen["data_dir"]) == "data"


MIRRORED = textwrap.dedent("""
    import sys
    from mushroom.keras_env import tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    # logical devices must be configured before TensorFlow initialises its runtime
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from mushroom import training
    from tests.datadirs import tiny_cfg
    cfg = tiny_cfg("train.strategy=mirrored", "train.stage2.epochs=0", "train.batch_size=6")
    result = training.fit(cfg, sys.argv[1], verbose=0)
    print("REPLICAS", result.replicas, "LOSS", result.history["epochs"][0]["loss"])
""")


def test_mirrored_strategy_on_two_logical_cpus_trains(data_dir):
    proc = subprocess.run([sys.executable, "-c", MIRRORED, str(data_dir)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split("REPLICAS")[-1].split()
    assert words[0] == "2" and np.isfinite(float(words[2]))


def test_batch_norm_recalibration_is_the_average_of_the_batch_statistics():
    """Known answer: after recalibration each batch norm's moving mean is the mean over the batches
    of what it sees in training mode; the momentum and trainable flags are left as they were."""
    from mushroom.training import recalibrate_batch_norm

    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization(momentum=0.99, name="bn")
    model = keras.Model(inputs, bn(inputs))
    bn.trainable = False
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, 1.0, (8, 4)).astype("float32") for loc in (0.0, 4.0, 8.0)]
    assert recalibrate_batch_norm(model, batches) == 1
    expected = np.mean([b.mean(axis=0) for b in batches], axis=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.99 and bn.trainable is False


def test_recalibration_makes_inference_mode_agree_with_training_mode(data_dir):
    """A from-scratch network after a few steps at Keras' momentum 0.99: its inference-mode outputs
    describe an early network; recalibrated, they match what training mode computes."""
    from mushroom.training import recalibrate_batch_norm

    cfg = tiny_cfg()
    names = dataset.class_names(cfg, read_manifest(manifest_path(data_dir)))
    plain = dataset.split_dataset(cfg, data_dir, "train", names)
    model = models.build_model("tiny", len(names), cfg.image.size)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.99
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy")
    model.fit(plain.dataset, epochs=3, verbose=0)
    x = np.concatenate([b[0].numpy() for b in plain.dataset])
    train_mode = model(x, training=True).numpy()
    before = np.abs(model(x, training=False).numpy() - train_mode).mean()
    recalibrate_batch_norm(model, [x])
    after = np.abs(model(x, training=False).numpy() - train_mode).mean()
    assert after < 0.01 and after < 0.2 * before
