"""Two-stage training of a registry model on the manifest's photos, written as a model folder.

    folder = train(cfg, "data", "models")          # -> models/<experiment>-<model.name>/

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

import argparse
import copy
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mushroom import dataset, models, modelio, tracking
from mushroom.config import Config, add_config_args, load_config, save_resolved, with_overrides
from mushroom.errors import UserError
from mushroom.fileio import atomic_write, replacing_folder, write_json
from mushroom.keras_env import keras, tf
from mushroom.manifest import manifest_path, read_manifest
from mushroom.modelio import ModelFolder, baseline_is_stage1, baseline_run_name, default_run_name  # noqa: F401  (the scripts' run names)

MONITOR = "val_accuracy"
# Carried by every study row of a model whose backbone came from an int8 checkpoint (README, "Weights").
INT8_GRID_NOTE = ("backbone imported from an int8 post-training-quantized checkpoint: its weights already sit "
                  "on an int8 grid, so the PTQ loss measured here is a lower bound of what a float-trained "
                  "backbone loses")


# --- reproducibility and devices -------------------------------------------------------------------
def seed_everything(seed: int) -> bool:
    """Seed Python, NumPy and TensorFlow; enable op determinism on CPU-only machines. Returns
    whether op determinism is on."""
    keras.utils.set_random_seed(seed)
    if not tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()
        return True
    return False


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default: one device; mirrored: every GPU (else every logical CPU) of this host;
    multi_worker: MultiWorkerMirroredStrategy, hosts described by the TF_CONFIG environment variable."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserError(f"unknown train.strategy '{name}': choose default, mirrored or multi_worker")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only one worker of a multi-worker run writes the model folder, the backup and the W&B run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return True
    return "chief" not in spec and resolver.task_type == "worker" and resolver.task_id == 0


def worker_label(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return "this worker"
    workers = sum(len(v) for k, v in resolver.cluster_spec().as_dict().items() if k in ("chief", "worker"))
    return f"{resolver.task_type} {resolver.task_id} ({workers} workers)"


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Every worker reads the same seeded pipeline and keeps its part of each global batch.

    Keras' AUTO policy would try to shard by file, find none (photos are decoded from a list of
    paths) and fall back to this with a warning; said explicitly, and it is the policy that makes
    a multi-worker step see exactly the global batch a single worker would."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def local_examples(strategy: tf.distribute.Strategy, ds: tf.data.Dataset) -> int:
    """Examples one epoch of `ds` gives this worker's replicas once distributed as fit distributes it.
    Every worker must call it (the distributed iterator agrees on the end of data collectively)."""
    n = 0
    for images, _ in strategy.experimental_distribute_dataset(ds):
        n += sum(int(t.shape[0]) for t in strategy.experimental_local_results(images))
    return n


def check_same_everywhere(strategy: tf.distribute.Strategy, value: int, what: str) -> None:
    """Raise unless every worker holds the same `value`: workers resuming from different epochs
    would hang in their first all-reduce instead. All equal <=> mean(v^2) == mean(v)^2."""
    if strategy.num_replicas_in_sync == 1:
        return
    v = float(value)
    per_replica = strategy.run(lambda: tf.constant([v, v * v], tf.float64))
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None).numpy()
    if abs(mean[1] - mean[0] ** 2) > 1e-6:
        raise UserError(f"the workers disagree on {what} (this one: {value}): every worker must see the same "
                        "backup folder (put paths.models_dir on storage all workers share) or none")


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Return once every worker has reached this point (an all-reduce cannot finish before)."""
    if strategy.num_replicas_in_sync > 1:
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None).numpy()


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


# --- surviving an interruption ---------------------------------------------------------------------
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

    def epoch_done(self, stage: int, record: dict, keeper: BestKeeper) -> None:
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

    def __init__(self, journal: Journal, stage: int, keeper: BestKeeper, first_epoch: int, records: list):
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


def build_meta(cfg: Config, run_name: str, result: TrainResult, val_top1: float) -> dict:
    return {
        "model_name": cfg.model.name,
        "run_name": run_name,
        "experiment": cfg.experiment,
        "class_names": result.class_names,
        "image_size": cfg.image.size,
        "preprocessing": models.preprocessing_of(cfg.model.name),
        "input_range": [0, 255],
        "species": [s.to_dict() for s in dataset.class_species(cfg, result.class_names)],
        "weights": cfg.model.weights,
        "seed": cfg.seed,
        "val_top1": val_top1,
        "best": result.best,
        "photos": {"train": result.n_train, "val": len(result.val)},
        "train_seconds": round(result.seconds, 1),
        "strategy": cfg.train.strategy,
        "replicas": result.replicas,
        "op_determinism": result.deterministic,
        **({"note": INT8_GRID_NOTE} if str(cfg.model.weights or "").endswith(".tflite") else {}),
    }


def save_run(cfg: Config, folder: str | os.PathLike, model: keras.Model, meta: dict, history: dict) -> Path:
    """Write the model folder completely under a temporary name, then swap it in: an interrupted run
    never leaves a half-written folder, and files of an older model (e.g. its TFLite exports) never
    sit beside a new model."""
    with replacing_folder(folder) as partial:
        modelio.save_model_folder(partial, model, meta, history)
        save_resolved(cfg, partial)
    return Path(folder)


def baseline_overrides(cfg: Config) -> list[str]:
    """What makes the config train the baseline: its backbone and weights, and no stage 2."""
    weights = "null" if cfg.baseline.weights is None else cfg.baseline.weights
    return [f"model.name={cfg.baseline.model}", f"model.weights={weights}", "train.stage2.epochs=0"]


def save_stage1_baseline(cfg: Config, models_dir: str | os.PathLike, result: TrainResult, stage1: dict,
                         derived_from: str) -> Path:
    """Write the head-only baseline's model folder from stage 1 of a two-stage run (see
    baseline_is_stage1): the same folder contract, config and meta train_resnet_baseline.py writes,
    plus meta["from_stage1_of"]. Sets result.model's weights to stage 1's."""
    bcfg = with_overrides(cfg, baseline_overrides(cfg))
    name = baseline_run_name(cfg)
    result.model.set_weights(stage1["weights"])
    history = stage1["history"]
    bresult = dataclasses.replace(result, history=history, best=history["best"], seconds=stage1["seconds"])
    val_top1 = top1(predict(result.model, result.val), result.val.labels)
    meta = build_meta(bcfg, name, bresult, val_top1) | {"from_stage1_of": derived_from}
    folder = save_run(bcfg, ModelFolder.under(models_dir, name).path, result.model, meta, history)
    run = tracking.start_run(bcfg, "train", name=name)
    try:
        tracking.log(run, {"val_top1": val_top1})
        if run is not None:
            run.summary["val_top1"] = val_top1
            run.summary["from_stage1_of"] = derived_from
        tracking.log_artifact(run, folder, name, "model", aliases=["best", "latest"])
    finally:
        tracking.finish(run)
    print(f"saved {folder}: the head-only baseline is this run's stage 1 (same backbone and weights), val top-1 "
          f"{val_top1:.3f}", flush=True)
    return folder


def train(cfg: Config, data_dir: str | os.PathLike, models_dir: str | os.PathLike, run_name: str | None = None) -> Path:
    """Train cfg.model on data_dir and write models_dir/<run_name>/ (default run name:
    '<experiment>-<model.name>'); logs to W&B (job_type train) per cfg.wandb. Returns the folder.

    Every epoch is backed up in ModelFolder(models_dir/<run_name>).backup_dir, so the same command
    resumes an interrupted run; the finished folder replaces it. In a multi-worker run every worker
    calls this; only the chief writes the folder, the backup and the W&B run. The others save to a
    temporary folder they delete (saving reads variables with collective ops, so all must)."""
    run_name = run_name or default_run_name(cfg)
    final = ModelFolder.under(models_dir, run_name)
    strategy = make_strategy(cfg.train.strategy)  # before any other TensorFlow op (see fit)
    chief = is_chief(strategy)
    if not chief:
        print(f"{worker_label(strategy)} is not the chief: no W&B run, and its copy of the model goes to a "
              "temporary folder that is deleted", flush=True)
    run = tracking.start_run(cfg, "train", name=run_name) if chief else None
    stage1: dict = {}

    def keep_stage1(model: keras.Model, summary: dict) -> None:
        stage1.update(summary, weights=[w.copy() for w in model.get_weights()])

    try:
        result = fit(cfg, data_dir, callbacks=[tracking.epoch_logger(run)], backup_dir=final.backup_dir,
                     strategy=strategy, after_stage1=keep_stage1 if baseline_is_stage1(cfg) else None)
        probs = predict(result.model, result.val)
        val_top1 = top1(probs, result.val.labels)
        meta = build_meta(cfg, run_name, result, val_top1)
        target = final.path if chief else Path(tempfile.mkdtemp(prefix="mushroom-worker-")) / run_name
        folder = save_run(cfg, target, result.model, meta, result.history)
        tracking.log(run, {"val_top1": val_top1, "train_seconds": result.seconds})
        if run is not None:
            run.summary["val_top1"] = val_top1
            run.summary["best"] = result.best
        if chief:
            tracking.log_artifact(run, folder, run_name, "model", aliases=["best", "latest"])
        else:
            shutil.rmtree(target.parent, ignore_errors=True)
    except BaseException:
        tracking.finish(run, exit_code=1)
        raise
    tracking.finish(run)
    best = result.best or {}
    print(f"saved {folder if chief else 'nothing (not the chief)'}: val top-1 {val_top1:.3f} (best at stage "
          f"{best.get('stage')} epoch {best.get('epoch')}), {result.seconds:.0f} s", flush=True)
    if stage1 and chief:
        save_stage1_baseline(cfg, models_dir, result, stage1, run_name)
    return folder


# --- the training scripts' shared command line --------------------------------------------------------
def argument_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="photos + manifest.csv (default: config paths.data_dir)")
    parser.add_argument("--run-name", default=None,
                        help="folder under paths.models_dir (default: <experiment>-<model.name>)")
    return parser


def cli_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
             forced_overrides: Callable[[argparse.Namespace, Config], list[str]] = lambda args, cfg: [],
             run_name: Callable[[Config], str] = default_run_name) -> int:
    """Parse --config/--set (+ the script's own options), apply the script's forced overrides
    (a function of the options and the user's config) after the user's, before validation, so the
    saved config shows them, and train into --run-name or run_name(config)."""
    add_config_args(parser)
    args = parser.parse_args(argv)
    user_cfg = load_config(args.config, args.overrides)
    forced = forced_overrides(args, user_cfg)
    cfg = load_config(args.config, [*args.overrides, *forced]) if forced else user_cfg
    data_dir = Path(args.data_dir) if args.data_dir else Path(cfg.paths.data_dir)
    train(cfg, data_dir, Path(cfg.paths.models_dir), run_name=args.run_name or run_name(cfg))
    return 0
