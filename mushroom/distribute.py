"""Seeds and devices: one device, every GPU of a host (mirrored) or several hosts (multi_worker),
and the helpers fit() needs to keep the workers of a multi-worker run in step. Split from
training.py: everything here is tf.distribute plumbing, nothing about what is trained.

    strategy = make_strategy(cfg.train.strategy)     # before any other TensorFlow op
    train_ds = shard_by_data(train_ds)                # each worker keeps its share of every batch
    barrier(strategy)                                 # returns once every worker has reached it
"""
from __future__ import annotations

from mushroom.errors import UserError
from mushroom.keras_env import keras, tf


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
