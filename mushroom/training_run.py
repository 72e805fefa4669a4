"""A training run as the two training scripts make it: train() fits cfg.model (training.fit), writes
the model folder with its meta.json, history and resolved config, and, when the run's stage 1 is
the head-only baseline on the same backbone, saves that too; cli_main() is the scripts' shared
command line. Split from training.py, which trains and nothing more.

    folder = train(cfg, "data", "models")          # -> models/<experiment>-<model.name>/
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from mushroom import dataset, models, modelio, tracking
from mushroom.config import Config, add_config_args, load_config, save_resolved, with_overrides
from mushroom.distribute import is_chief, make_strategy, worker_label
from mushroom.fileio import replacing_folder
from mushroom.keras_env import keras
from mushroom.modelio import ModelFolder, baseline_is_stage1, baseline_run_name, default_run_name  # noqa: F401
from mushroom.training import INT8_GRID_NOTE, TrainResult, fit, predict, top1


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
