"""Surviving an interruption: the backup folder of an unfinished training run, and the callbacks that
write it every epoch, so that the same command resumes after the last finished epoch. Split from
training.py (fit() uses it; nothing here trains).

    journal = Journal(folder.backup_dir, fingerprint(cfg, names, paths), writer=is_chief(strategy))
    callbacks = [StageBackup(journal, stage, keeper, first_epoch, records)]
"""
from __future__ import annotations

import io
import os
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from mushroom.config import Config
from mushroom.fileio import atomic_write, write_json
from mushroom.keras_env import keras, tf


class Journal:
    """The backup folder (ModelFolder.backup_dir) of an unfinished run:

        state.json          the config fingerprint, the finished stages, and the last two epoch
                            snapshots (history so far + BestKeeper's state)
        best-s<S>-e<E>.npz  the best weights so far (found at stage S, epoch E), by variable name
        stage<S>/           Keras' BackupAndRestore of the running stage: weights, optimizer, epoch

    A snapshot is written just before BackupAndRestore's checkpoint of the same epoch, so a kill
    between the two leaves the snapshot one epoch ahead: keeping two lets a rerun take the one that
    matches the checkpoint it restores. Only the chief writes (`writer`); every worker reads."""

    STATE = "state.json"

    def __init__(self, folder: Path, fingerprint: dict, writer: bool):
        self.folder, self.fingerprint, self.writer = Path(folder), fingerprint, writer
        self.stages: list[dict] = []
        self.snapshots: list[dict] = []
        path = self.folder / self.STATE
        if path.is_file():
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("fingerprint") == fingerprint:
                self.stages, self.snapshots = state["stages"], state["snapshots"]
            else:
                print(f"{self.folder} was backed up from another configuration or other photos: starting over",
                      flush=True)
                self.discard()
        elif self.folder.is_dir() and writer:
            self.discard()  # a stage checkpoint without a snapshot is no state we can rebuild

    def discard(self) -> None:
        if self.writer:
            shutil.rmtree(self.folder, ignore_errors=True)

    def stage_dir(self, stage: int) -> Path:
        return self.folder / f"stage{stage}"

    def finished(self, stage: int) -> dict | None:
        return next((s for s in self.stages if s["stage"] == stage), None)

    def checkpoint_epochs(self, stage: int) -> int | None:
        return backed_up_epochs(self.stage_dir(stage))

    def snapshot(self, epochs: int) -> dict | None:
        return next((s for s in self.snapshots if s["epochs"] == epochs), None)

    def best_weights(self, snap: dict) -> dict[str, np.ndarray]:
        if not snap.get("best_file"):
            return {}
        with np.load(self.folder / snap["best_file"]) as data:
            return {name: data[name] for name in data.files}

    def epoch_done(self, stage: int, record: dict, keeper) -> None:
        if not self.writer:
            return
        last = self.snapshots[-1] if self.snapshots else None
        best_file = last["best_file"] if last else None
        if keeper.where and keeper.where["epoch"] == record["epoch"]:
            best_file = f"best-s{stage}-e{record['epoch']}.npz"
            buffer = io.BytesIO()
            np.savez(buffer, **keeper.best_weights())
            atomic_write(self.folder / best_file, buffer.getvalue())
        records = (last["records"] if last else []) + [record]
        self.snapshots = [*self.snapshots[-1:], {"epochs": record["epoch"], "stage": stage, "records": records,
                                                 "keeper": keeper.state(), "best_file": best_file}]
        self._write()

    def stage_done(self, info: dict) -> None:
        self.stages = [*self.stages, info]
        if self.writer:
            self._write()
            shutil.rmtree(self.stage_dir(info["stage"]), ignore_errors=True)

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / self.STATE, {"fingerprint": self.fingerprint, "stages": self.stages,
                                                      "snapshots": self.snapshots})
        keep = {s["best_file"] for s in self.snapshots}
        for path in self.folder.glob("best-*.npz"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def backed_up_epochs(stage_dir: str | os.PathLike) -> int | None:
    """Epochs (counted over both stages) finished per a stage's BackupAndRestore checkpoint; None if
    there is none. Keras writes it under <dir>/chief whichever worker is the chief."""
    latest = tf.train.latest_checkpoint(str(Path(stage_dir) / "chief"))
    if latest is None:
        return None
    return int(tf.train.load_variable(latest, "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) + 1


class StageBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore of one stage (its own folder: the stages compile different optimizers) that
    also journals the epoch: its history record and the best-weights bookkeeping. Placed after
    BestKeeper, so the snapshot holds this epoch's verdict. The checkpoint is kept when fit ends
    (even by early stopping) and removed by Journal.stage_done, once the stage is recorded."""

    def __init__(self, journal: Journal, stage: int, keeper, first_epoch: int, records: list):
        super().__init__(str(journal.stage_dir(stage)), delete_checkpoint=False)
        self.journal, self.stage, self.keeper, self.first_epoch, self.records = journal, stage, keeper, first_epoch, records

    def on_epoch_end(self, epoch, logs=None):
        record = epoch_record(self.stage, epoch, self.first_epoch, logs)
        self.records.append(record)
        self.journal.epoch_done(self.stage, record, self.keeper)
        super().on_epoch_end(epoch, logs)


def epoch_record(stage: int, epoch: int, first_epoch: int, logs: dict | None) -> dict:
    """One history.json entry; `epoch` is Keras' 0-based epoch counted over both stages."""
    return {"stage": stage, "epoch": epoch + 1, "stage_epoch": epoch + 2 - first_epoch,
            **{k: float(v) for k, v in (logs or {}).items()}}


class EpochRecorder(keras.callbacks.Callback):
    """The history records when nothing is backed up (fit without a backup folder)."""

    def __init__(self, stage: int, first_epoch: int, records: list):
        super().__init__()
        self.stage, self.first_epoch, self.records = stage, first_epoch, records

    def on_epoch_end(self, epoch, logs=None):
        self.records.append(epoch_record(self.stage, epoch, self.first_epoch, logs))


def fingerprint(cfg: Config, names: list[str], train_paths: Sequence[str]) -> dict:
    """What a backup must have been trained with to be resumed: everything that shapes the
    training (not where it runs: train.strategy may change between runs), the classes, the photos."""
    import hashlib

    train = {k: v for k, v in cfg.train.to_dict().items() if k != "strategy"}
    photos = hashlib.sha256("\n".join(sorted("/".join(Path(p).parts[-2:]) for p in train_paths)).encode()).hexdigest()
    exposure = {k: v for k, v in cfg.open_set.to_dict().items() if k in ("exposure_fraction", "exposure_weight")}
    return {"seed": cfg.seed, "image": cfg.image.to_dict(), "augment": cfg.augment.to_dict(),
            "model": cfg.model.to_dict(), "train": train, "classes": names, "train_photos": photos,
            "exposure": exposure}
