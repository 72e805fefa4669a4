"""Two-stage training of a registry model on the manifest's photos (the model folder a run writes:
training_run.py; devices: distribute.py; resuming: journal.py).

    result = fit(cfg, "data", backup_dir="models/demo-mobilenet_v2/backup")   # -> TrainResult

Stage 1 trains the head with the whole backbone frozen (cfg.train.stage1). Stage 2 (skipped when
cfg.train.stage2.epochs is 0, as in the ResNet head-only baseline) makes the top
cfg.train.stage2.unfreeze_fraction of the backbone's layers trainable, BatchNormalization excepted
(its statistics stay as loaded: small fine-tuning batches would ruin them), and recompiles at the
stage-2 learning rate. From scratch (model.weights null) both stages train every layer: there
is nothing pretrained to protect, and a frozen random backbone teaches the head nothing. Each stage: Adam, cross-entropy with label smoothing, cosine decay or a
constant rate over the stage (cfg.train.schedule).

Best checkpoint and early stopping share one criterion: higher val accuracy, ties broken by lower
val loss (val accuracy is what is reported; on a small val split it often ties). The best weights
of both stages together are kept in memory and restored at the end, so a stage 2 that never beats
stage 1 leaves stage 1's model. A stage stops after cfg.train.early_stopping_patience epochs
without a new best.

Seeds: keras.utils.set_random_seed(cfg.seed); on CPU-only machines op determinism is enabled too
(cheap there; on GPUs it costs speed and some kernels refuse it, so it is left off), which makes a
rerun repeat its losses exactly. The saved model has every layer trainable again: the freezing is
a training-time choice, and the next stage (QAT) decides its own.

Interruptions: train() backs up every epoch in models/<run>/backup/ (Journal) and the same command
resumes after the last finished epoch, in whichever stage; a finished stage is never redone. A
resumed stage restarts its data order (shuffle and augmentation draws) from the stage's start, so
it is not bit-identical to an uninterrupted run.

Distribution (cfg.train.strategy): train.batch_size is the global batch, split evenly over all
replicas of all workers. With multi_worker every worker reads the same seeded pipeline and keeps
its share of each batch (shard_by_data), so N workers compute what one worker with N replicas
computes; batch norm statistics are per replica (per-replica batch), as in any tf.distribute run.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mushroom import dataset, models
from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.keras_env import keras, tf
from mushroom.manifest import manifest_path, read_manifest
from mushroom.distribute import (barrier, check_same_everywhere, is_chief, local_examples, make_strategy,
                                 seed_everything, shard_by_data, worker_label)
from mushroom.journal import EpochRecorder, Journal, StageBackup, fingerprint

MONITOR = "val_accuracy"
# Carried by every study row of a model whose backbone came from an int8 checkpoint (README, "Weights").
INT8_GRID_NOTE = ("backbone imported from an int8 post-training-quantized checkpoint: its weights already sit "
                  "on an int8 grid, so the PTQ loss measured here is a lower bound of what a float-trained "
                  "backbone loses")


# --- freezing ---------------------------------------------------------------------------------------
def freeze_for_stage(model: keras.Model, stage: int, unfreeze_fraction: float = 0.0,
                     from_scratch: bool = False) -> list[str]:
    """Set trainable flags for a stage; returns the names of the trainable backbone layers.

    Stage 1: backbone frozen, head trainable. Stage 2: the top `unfreeze_fraction` of the backbone's
    layers (graph order) trainable, except BatchNormalization, which stays frozen (inference mode).
    From scratch (model.weights null) every layer trains in both stages, batch norm included: a
    frozen random backbone gives features no head can use (measured: val top-1 stuck at the
    majority-class rate), and random-init batch-norm statistics are nothing worth keeping."""
    backbone = models.backbone_layers(model)
    if from_scratch:
        unfreeze_all(model)
        return [layer.name for layer in backbone]
    head = models.head_layer_names(model)
    for layer in model.layers:
        if layer.name in head:
            layer.trainable = True
    for layer in backbone:
        layer.trainable = False
    if stage == 1:
        return []
    n = round(unfreeze_fraction * len(backbone))
    top = backbone[len(backbone) - n:] if n else []
    opened = []
    for layer in top:
        if not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
            opened.append(layer.name)
    return opened


def unfreeze_all(model: keras.Model) -> None:
    for layer in model.layers:
        layer.trainable = True


# --- compile ----------------------------------------------------------------------------------------
def learning_rate(schedule: str, rate: float, total_steps: int):
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(1, total_steps))
    return rate


def compile_model(model: keras.Model, lr, label_smoothing: float, num_classes: int) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5")])


# --- best checkpoint + early stopping ------------------------------------------------------------
class BestKeeper(keras.callbacks.Callback):
    """Keeps the best weights seen (val accuracy, ties -> lower val loss) across stages, in memory,
    and stops a stage after `patience` epochs without a new best."""

    def __init__(self, patience: int):
        super().__init__()
        self.patience = patience
        self.best: tuple[float, float] | None = None
        self.where: dict | None = None
        self._values: list | None = None
        self._variables: list | None = None
        self.stage = 0
        self._wait = 0

    def start_stage(self, stage: int) -> None:
        self.stage, self._wait = stage, 0

    def stopping(self) -> bool:
        return self._wait >= self.patience

    def _better(self, acc: float, loss: float) -> bool:
        return self.best is None or acc > self.best[0] or (acc == self.best[0] and loss < self.best[1])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        acc, loss = float(logs[MONITOR]), float(logs["val_loss"])
        if self._better(acc, loss):
            self.best = (acc, loss)
            self.where = {"stage": self.stage, "epoch": epoch + 1, "val_accuracy": acc, "val_loss": loss}
            # variables, not get_weights(): the model's weight order changes with trainable flags
            self._variables = list(self.model.weights)
            self._values = [v.numpy() for v in self._variables]
            self._wait = 0
        else:
            self._wait += 1
            if self.stopping():
                self.model.stop_training = True

    def restore(self) -> None:
        if self._variables is not None:
            for var, value in zip(self._variables, self._values):
                var.assign(value)

    # What a resumed run needs back, and what Keras' BackupAndRestore does not keep: it restores the
    # model, the optimizer and the epoch counter, never a callback's own fields.
    def state(self) -> dict:
        return {"best": list(self.best) if self.best else None, "where": self.where, "stage": self.stage,
                "wait": self._wait}

    def best_weights(self) -> dict[str, np.ndarray]:
        """The best weights by variable name (names, not order: the order follows trainable flags)."""
        if self._variables is None:
            return {}
        names = [v.name for v in self._variables]
        if len(set(names)) != len(names):
            raise RuntimeError("model variable names are not unique: the best weights cannot be backed up by name")
        return dict(zip(names, self._values))

    def load_state(self, state: dict, weights: dict[str, np.ndarray]) -> None:
        self.best = tuple(state["best"]) if state["best"] else None
        self.where, self.stage, self._wait = state["where"], state["stage"], state["wait"]
        self._variables = self._values = None
        if weights:
            by_name = {v.name: v for v in self.model.weights}
            self._variables = [by_name[name] for name in weights]
            self._values = list(weights.values())


def recalibrate_batch_norm(model: keras.Model, batches) -> int:
    """Recompute every BatchNormalization's moving mean and variance as the average over `batches`
    (images only, or (images, labels)) of the statistics the layer sees in training mode: the
    momentum of the k-th batch is (k - 1) / k, a cumulative average. Returns the number of layers.

    Why, from scratch only: Keras' momentum 0.99 lags far behind a network whose weights all move,
    so after the ~200 steps of a demo the inference-mode statistics describe an early network
    (measured here: a plain CNN at 47 % in training mode, 3 % in inference mode; the from-scratch
    ResNet50 predicted the majority class for almost every photo). Pretrained batch norm is frozen
    and keeps its statistics."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    try:
        for layer in layers:
            layer.trainable = True
        for k, batch in enumerate(batches, start=1):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            for layer in layers:
                layer.momentum = (k - 1) / k
            model(images, training=True)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return len(layers)


class BatchNormRecalibration(keras.callbacks.Callback):
    """Before every validation (so early stopping and the best checkpoint judge the model as it
    will be used) recompute the batch-norm statistics over the training photos, unaugmented."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_test_begin(self, logs=None):
        recalibrate_batch_norm(self.model, self.batches)


class LearningRateLog(keras.callbacks.Callback):
    """Adds the learning rate of the epoch's last step to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        opt = self.model.optimizer
        lr = opt.learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            lr = lr(opt.iterations - 1)
        if logs is not None:
            logs["lr"] = float(keras.backend.get_value(lr))


# --- training ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: keras.Model
    class_names: list[str]
    history: dict
    best: dict | None
    val: dataset.SplitData
    n_train: int
    seconds: float = 0.0
    deterministic: bool = False
    replicas: int = 1
    chief: bool = True
    extra: dict = field(default_factory=dict)


def _verbose() -> int:
    # a live progress bar on a terminal; one summary line per epoch in logs and pipes
    return 1 if sys.stdout.isatty() else 2


def fit(cfg: Config, data_dir: str | os.PathLike, callbacks: Sequence = (), verbose: int | None = None,
        backup_dir: str | os.PathLike | None = None, strategy: tf.distribute.Strategy | None = None,
        after_stage1: Callable[[keras.Model, dict], None] | None = None) -> TrainResult:
    """Build cfg.model and train it in two stages on data_dir's manifest; the best weights restored.

    backup_dir: back up every epoch there and resume from it (see Journal); None: no backup.
    strategy: make_strategy(cfg.train.strategy) when None. A multi-worker strategy must be created
    before any other TensorFlow op (train() does), else TensorFlow quietly trains each worker alone.
    after_stage1: called with the model (stage 1's best weights restored) and {history, seconds} of
    stage 1 (history.json as a run of stage 1 alone writes it) when stage 1 has trained in this
    process. Not when it finished before an interruption: the backup may keep only stage 2's later
    snapshots, whose best weights are no longer stage 1's (a baseline derived from it is then
    trained on its own instead)."""
    start = time.time()
    strategy = make_strategy(cfg.train.strategy) if strategy is None else strategy
    deterministic = seed_everything(cfg.seed)
    rows = read_manifest(manifest_path(data_dir))
    names = dataset.class_names(cfg, rows)
    skipped = dataset.skipped_species(rows, names)
    train_data = dataset.split_dataset(cfg, data_dir, "train", names, rows, exposure=True)
    val_data = dataset.split_dataset(cfg, data_dir, "val", names, rows)
    if not len(val_data):
        raise UserError(f"the val split of {manifest_path(data_dir)} has no photos of the classes: early "
                        "stopping and the best checkpoint need one; re-import with a non-zero data.split.val")
    for name, data in (("training", train_data), ("validation", val_data)):
        images = next(iter(data.dataset))[0]
        dataset.check_pixel_range(images.numpy(), f"first {name} batch")
    print(f"classes: {len(names)} ({', '.join(names)}); photos: {len(train_data)} train, {len(val_data)} val"
          + (f"; left out (not a class with training photos): {sum(skipped.values())} photos of "
             f"{len(skipped)} species" if skipped else ""), flush=True)
    if train_data.exposure_paths:
        print(f"outlier exposure: {len(train_data.exposure_paths)} photos of species the model must not know mixed "
              f"into training, target uniform, weight {cfg.open_set.exposure_weight:g}", flush=True)

    if cfg.train.stage1.epochs == 0 and cfg.train.stage2.epochs == 0:
        raise UserError("train.stage1.epochs and train.stage2.epochs are both 0: nothing to train")
    from_scratch = cfg.model.weights is None
    if from_scratch:
        print(f"*** model.weights is null: {cfg.model.name} trains FROM SCRATCH, so these numbers measure the "
              "pipeline, not the best achievable accuracy (pretrained weights: model.weights=imagenet or a "
              "weights file) ***", flush=True)

    replicas = strategy.num_replicas_in_sync
    train_ds, val_ds = train_data.dataset, val_data.dataset
    if replicas > 1:
        # train.batch_size is the global batch: tf.distribute splits each batch over the replicas
        if cfg.train.batch_size % replicas:
            print(f"warning: train.batch_size {cfg.train.batch_size} is not a multiple of the {replicas} replicas: "
                  "their shares of a batch differ by one photo", file=sys.stderr, flush=True)
        train_ds, val_ds = shard_by_data(train_ds), shard_by_data(val_ds)
        share = local_examples(strategy, train_ds)
        print(f"{worker_label(strategy)}: {share} of {len(train_data)} training photos per epoch "
              f"(global batch {cfg.train.batch_size} over {replicas} replicas, "
              f"{cfg.train.batch_size / replicas:g} per replica)", flush=True)
    else:
        share = len(train_data)

    with strategy.scope():
        model = models.build_model(cfg.model.name, len(names), cfg.image.size, weights=cfg.model.weights,
                                   dropout=cfg.model.dropout, hidden_units=cfg.model.hidden_units)
    models.scaling_layer(model)  # the backbone's [0, 255] scaling must be the model's first layer

    steps = math.ceil((len(train_data) + len(train_data.exposure_paths)) / cfg.train.batch_size)
    keeper = BestKeeper(cfg.train.early_stopping_patience)
    keeper.set_model(model)
    extra = []
    if from_scratch:
        # the training photos as evaluation sees them: no augmentation, no shuffling
        plain = dataset.make_dataset(train_data.paths, train_data.labels, cfg.image.size, cfg.train.batch_size,
                                     cache=cfg.train.cache)
        extra.append(BatchNormRecalibration(plain))
    journal = (Journal(Path(backup_dir), fingerprint(cfg, names, [*train_data.paths, *train_data.exposure_paths]),
                       is_chief(strategy))
               if backup_dir is not None else None)
    epochs_done = 0
    trained_here = False  # once a stage trains in this process, the journal on disk has nothing newer
    records: list[dict] = []
    stages = []
    verbose = _verbose() if verbose is None else verbose
    for stage, scfg in ((1, cfg.train.stage1), (2, cfg.train.stage2)):
        if scfg.epochs == 0:
            continue
        done = journal.finished(stage) if journal else None
        resume_at = None if done or not journal else journal.checkpoint_epochs(stage)
        check_same_everywhere(strategy, 1000 * len(journal.stages if journal else []) + (resume_at or 0),
                              "the point to resume from")
        if journal and not trained_here and (done or resume_at or epochs_done):
            # where this stage starts: after its last backed-up epoch, or after the stages before it
            at = (done["first_epoch"] - 1 + done["epochs_run"]) if done else resume_at or epochs_done
            snap = journal.snapshot(at)
            # The journal keeps the last two epochs' snapshots only, so a stage finished long ago may
            # have lost its own; the next stage's checkpoint then carries everything (its snapshot's
            # records and best-weights state are cumulative) and is loaded when that stage starts.
            later = done is not None and journal.checkpoint_epochs(stage + 1)
            if snap is None and at and not later:
                raise UserError(f"the backup in {journal.folder} is inconsistent (no record of epoch {at}): delete "
                                "that folder to train from the start")
            if snap is not None:
                records[:] = snap["records"]
                keeper.load_state(snap["keeper"], journal.best_weights(snap))
        if done:
            print(f"stage {stage}: finished before the interruption ({done['epochs_run']} epochs, backed up in "
                  f"{journal.folder})", flush=True)
            stages.append(done)
            epochs_done += done["epochs_run"]
            keeper.restore()
            continue
        opened = freeze_for_stage(model, stage, cfg.train.stage2.unfreeze_fraction, from_scratch)
        with strategy.scope():
            compile_model(model, learning_rate(cfg.train.schedule, scfg.learning_rate, scfg.epochs * steps),
                          cfg.train.label_smoothing, len(names))
        trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
        what = ("every layer (from scratch: nothing pretrained to keep frozen)" if from_scratch else
                "head only, backbone frozen" if stage == 1 else
                f"head + top {len(opened)} backbone layers (batch norm frozen)")
        print(f"stage {stage}: {what}; {trainable:,} trainable parameters; up to {scfg.epochs} epochs at "
              f"learning rate {scfg.learning_rate:g} ({cfg.train.schedule})", flush=True)
        if resume_at:
            print(f"resuming stage {stage} at epoch {resume_at + 1} (its epoch {resume_at - epochs_done + 1} of "
                  f"{scfg.epochs}) from {journal.stage_dir(stage)}", flush=True)
        else:
            keeper.start_stage(stage)
        recorder = (StageBackup(journal, stage, keeper, epochs_done, records) if journal
                    else EpochRecorder(stage, epochs_done, records))
        # killed after early stopping ended the stage but before the stage was recorded: it is over
        stopped = bool(resume_at) and keeper.stopping()
        if not stopped:
            model.fit(train_ds, validation_data=val_ds, epochs=epochs_done + scfg.epochs, initial_epoch=epochs_done,
                      verbose=verbose, callbacks=[LearningRateLog(), *extra, keeper, recorder, *callbacks])
        trained_here = True
        ran = sum(1 for r in records if r["stage"] == stage)
        info = {"stage": stage, "epochs_planned": scfg.epochs, "epochs_run": ran,
                "learning_rate": scfg.learning_rate, "schedule": cfg.train.schedule,
                "trainable_backbone_layers": opened, "trainable_parameters": trainable,
                "first_epoch": epochs_done + 1}
        stages.append(info)
        if journal:
            # The chief deletes the stage's checkpoint folder, where the other workers write (and
            # then remove) their temporary copies: wait until every worker has left fit (seen in CI:
            # a worker's checkpoint merge failed on files the chief had just deleted).
            barrier(strategy)
            journal.stage_done(info)
        epochs_done += ran
        keeper.restore()  # the next stage starts from the best weights so far
        if stage == 1 and after_stage1 is not None:
            after_stage1(model, _stage1_summary(stages, records, keeper, start))
    unfreeze_all(model)
    history = _history(keeper.where, stages, records)
    return TrainResult(model, names, history, keeper.where, val_data, len(train_data), time.time() - start,
                       deterministic, replicas, is_chief(strategy), {"skipped_species": skipped, "local_train": share})


def _history(best: dict | None, stages: list[dict], records: list[dict]) -> dict:
    """history.json: the monitored metric, the best epoch, each stage's settings, every epoch's record."""
    return {"monitor": f"{MONITOR} (ties: lower val_loss)", "best": best, "stages": stages, "epochs": records}


def _stage1_summary(stages: list[dict], records: list[dict], keeper: BestKeeper, start: float) -> dict:
    history = _history(dict(keeper.where) if keeper.where else None,
                       [copy.deepcopy(s) for s in stages if s["stage"] == 1],
                       [dict(r) for r in records if r["stage"] == 1])
    return {"history": history, "seconds": time.time() - start}


def predict(model: keras.Model, data: dataset.SplitData) -> np.ndarray:
    return model.predict(data.dataset, verbose=0)


def top1(probs: np.ndarray, labels: Sequence[int]) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels))) if len(labels) else float("nan")

