"""Quantize trained model folders: QAT fine-tune, every TFLite format, and the agreement check.

    python quantize_qat.py models/demo-mobilenet_v2 --config configs/demo.yaml \
        [--set quantize.qat_epochs=1] [--data-dir data] [--force]

With no model folder, every model folder under cfg.paths.models_dir is quantized in turn.
Writes beside each model qat/model.keras, tflite/<format>.tflite (cfg.quantize.formats),
quantize.json and tflite/config.resolved.yaml; files already there are kept unless --force, so an
interrupted run resumes. A qat_int8 file that agrees with its QAT Keras model on fewer than
quantize.min_agreement of the validation check images is an error (exit 2). Sizes and the
.tflite files are logged to W&B (config wandb.*).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mushroom import cli
from mushroom.config import parse, resolve_path
from mushroom.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_folders", nargs="*", type=Path,
                        help="model folders (default: every model folder under paths.models_dir)")
    parser.add_argument("--data-dir", type=Path, help="data folder with manifest.csv (default: paths.data_dir)")
    parser.add_argument("--force", action="store_true", help="redo the QAT fine-tune and every conversion")
    args, cfg = parse(parser, argv)
    cli.set_seed(cfg.seed)
    from mushroom.modelio import find_model_folders
    from mushroom.quantization import quantize_model_folder

    folders = args.model_folders or find_model_folders(resolve_path(cfg, "models_dir"))
    if not folders:
        raise UserError(f"no model folders under {resolve_path(cfg, 'models_dir')}: train a model first "
                        "or give a model folder")
    data_dir = args.data_dir or resolve_path(cfg, "data_dir")
    for folder in folders:
        print(f"== {folder}")
        report = quantize_model_folder(cfg, folder, data_dir, force=args.force)
        log_to_wandb(cfg, folder, report)
        print("\n".join(f"{fmt:<10} {mb:8.2f} MB" for fmt, mb in report["sizes_mb"].items()))
    return 0


def log_to_wandb(cfg, folder: Path, report: dict) -> None:
    from mushroom import tracking

    run = tracking.start_run(cfg, job_type="quantize", name=f"quantize-{folder.name}")
    try:
        tracking.log(run, {f"size_mb/{fmt}": mb for fmt, mb in report["sizes_mb"].items()}
                     | {f"agreement/{fmt}": a["agreement"] for fmt, a in report["agreement"].items()}
                     | {f"max_abs_dprob/{fmt}": a["max_abs_dprob"] for fmt, a in report["agreement"].items()})
        for fmt, rel in report["files"].items():
            tracking.log_artifact(run, folder / rel, name=f"{folder.name}-{fmt}", type="tflite")
    finally:
        tracking.finish(run)


if __name__ == "__main__":
    cli.run(main)
