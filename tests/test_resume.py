"""Training survives an interruption: every epoch is backed up (Keras' BackupAndRestore plus the
best-weights bookkeeping it does not keep) and a rerun resumes from the last finished epoch."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mushroom import journal, modelio, training
from mushroom.config import PROJECT_ROOT
from mushroom.keras_env import keras
from tests.datadirs import make_data_dir, tiny_cfg

CONTRACT = ["config.resolved.yaml", "history.json", "meta.json", "model.keras"]


@pytest.fixture
def data_dir(photo_folder, tmp_path):
    return make_data_dir(photo_folder, tmp_path / "data")


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupt


def best_of(records: list[dict]) -> dict:
    top = max(records, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    return {"stage": top["stage"], "epoch": top["epoch"]}


def test_resume_keeps_early_stopping_and_best_weights_state(data_dir, tmp_path, capsys):
    """Stage 1 at a learning rate too small to move a weight: every epoch scores the same, so only
    epoch 1 is ever a best and patience 2 stops the stage after epoch 3. Interrupted before epoch 3,
    the rerun must remember both the best (epoch 1's weights) and that one epoch was already waited."""
    cfg = tiny_cfg("train.stage1.epochs=5", "train.stage1.learning_rate=1e-12", "train.schedule=constant",
                   "train.early_stopping_patience=2", "train.stage2.epochs=1")
    backup = tmp_path / "backup"
    with pytest.raises(Interrupt):
        training.fit(cfg, data_dir, callbacks=[InterruptAt(2)], verbose=0, backup_dir=backup)
    state = json.loads((backup / "state.json").read_text())
    assert state["snapshots"][-1]["epochs"] == 2 and state["snapshots"][-1]["keeper"]["wait"] == 1
    assert list(backup.glob("best-s1-e1.npz"))

    result = training.fit(cfg, data_dir, verbose=0, backup_dir=backup)
    out = capsys.readouterr().out
    assert "resuming stage 1 at epoch 3 (its epoch 3 of 5)" in out
    epochs = result.history["epochs"]
    assert [(e["stage"], e["epoch"]) for e in epochs] == [(1, 1), (1, 2), (1, 3), (2, 4)]
    assert result.history["stages"][0]["epochs_run"] == 3  # early stopping counted the epoch before the kill
    assert result.best == {**result.best, **best_of(epochs)}
    assert len({round(e["val_loss"], 6) for e in epochs if e["stage"] == 1}) == 1


def test_resume_deep_into_stage_2_after_stage_1_snapshot_was_dropped(data_dir, tmp_path, capsys):
    """The journal keeps two snapshots: after two stage-2 epochs, stage 1's own is gone, and the
    rerun must resume from stage 2's checkpoint instead of calling the backup inconsistent."""
    cfg = tiny_cfg("train.stage1.epochs=2", "train.stage2.epochs=4", "train.early_stopping_patience=10")
    backup = tmp_path / "backup"
    with pytest.raises(Interrupt):
        training.fit(cfg, data_dir, callbacks=[InterruptAt(4)], verbose=0, backup_dir=backup)
    state = json.loads((backup / "state.json").read_text())
    assert [s["epochs"] for s in state["snapshots"]] == [3, 4]        # stage 1's (epoch 2) dropped

    result = training.fit(cfg, data_dir, verbose=0, backup_dir=backup)
    out = capsys.readouterr().out
    assert "stage 1: finished before the interruption" in out and "resuming stage 2 at epoch 5" in out
    epochs = result.history["epochs"]
    assert [(e["stage"], e["epoch"]) for e in epochs] == [(1, 1), (1, 2), (2, 3), (2, 4), (2, 5), (2, 6)]
    assert result.best == {**result.best, **best_of(epochs)}


SLOW_TRAIN = textwrap.dedent("""
    # the training script, each epoch slowed down so that a kill lands inside one
    import sys, time
    from mushroom import cli, training
    import train_efficientnet_v2
    on_epoch_begin = training.LearningRateLog.on_epoch_begin
    def slow(self, epoch, logs=None):
        time.sleep(float(sys.argv[1]))
        on_epoch_begin(self, epoch, logs)
    training.LearningRateLog.on_epoch_begin = slow
    cli.run(lambda: train_efficientnet_v2.main(sys.argv[2:]))
""")


def test_sigkill_in_stage_2_then_rerun_resumes_at_the_next_epoch(data_dir, tmp_path):
    models = tmp_path / "models"
    sets = ["model.name=tiny", "model.weights=null", "image.size=64", "model.dropout=0.0", "train.batch_size=6",
            "train.stage1.epochs=2", "train.stage2.epochs=3", "train.stage2.unfreeze_fraction=0.5",
            "train.early_stopping_patience=10", "experiment=test", "wandb.mode=disabled",
            f"paths.models_dir={models}"]
    args = ["--data-dir", str(data_dir), *[a for s in sets for a in ("--set", s)]]
    backup = modelio.ModelFolder(models / "test-tiny").backup_dir

    def start(delay: float):
        return subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, str(delay), *args], cwd=PROJECT_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start(1.5)
    try:
        stage2 = backup / "stage2" / "chief" / "checkpoint"
        deadline = time.time() + 150
        while not stage2.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert stage2.exists(), first.communicate()[0][-3000:] if first.poll() is not None else "no stage-2 backup"
        first.send_signal(signal.SIGKILL)  # inside the next epoch's slow start
        out1 = first.communicate(timeout=30)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    finished = json.loads((backup / "state.json").read_text())["snapshots"][-1]["epochs"]
    resumed_from = journal.backed_up_epochs(backup / "stage2")
    assert resumed_from == finished and 3 <= finished < 5, out1[-2000:]
    assert not (models / "test-tiny" / "meta.json").exists()

    second = start(0.0)
    out2 = second.communicate(timeout=150)[0]
    assert second.returncode == 0, out2[-3000:]
    assert "stage 1: finished before the interruption (2 epochs" in out2
    assert f"resuming stage 2 at epoch {finished + 1} (its epoch {finished - 1} of 3)" in out2
    assert f"Epoch {finished + 1}/5" in out2 and "Epoch 1/5" not in out2 and "Epoch 2/5" not in out2

    folder = models / "test-tiny"
    assert sorted(p.name for p in folder.iterdir()) == CONTRACT  # the backup is gone
    assert sorted(p.name for p in models.iterdir()) == ["test-tiny"]
    history = json.loads((folder / "history.json").read_text())
    assert [(e["stage"], e["epoch"]) for e in history["epochs"]] == [(1, 1), (1, 2), (2, 3), (2, 4), (2, 5)]
    assert [s["epochs_run"] for s in history["stages"]] == [2, 3]
    assert history["best"] == {**history["best"], **best_of(history["epochs"])}
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["best"] == history["best"] and meta["run_name"] == "test-tiny"
    model, _ = modelio.load_model_folder(folder)
    assert model.output_shape == (None, 3)
