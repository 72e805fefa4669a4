"""Evaluate every trained model in every exported format on the same test split.

    python evaluate.py --config configs/demo.yaml                       # every folder under models/
    python evaluate.py models/demo-mobilenet_v2 --formats ptq_int8   # refit one format; the others' fits stay

Writes reports/: metrics.json (one entry per model x format; keys in README), comparison.md/.csv,
reliability / confusion / risk-coverage / trade-off plots; saves the fitted temperatures in each
model folder (temperature.json) for predict.py; logs the same to W&B (job_type evaluate).
"""
import argparse
from pathlib import Path

from mushroom import cli
from mushroom.config import parse
from mushroom.evaluation import FORMATS, evaluate_all, log_to_wandb
from mushroom.modelio import find_model_folders


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model folders (default: every folder under paths.models_dir)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, help="formats to evaluate (default: all present)")
    parser.add_argument("--data-dir", help="data folder with manifest.csv (default: paths.data_dir)")
    parser.add_argument("--reports-dir", help="output folder (default: paths.reports_dir)")
    args, cfg = parse(parser, argv)
    folders = [Path(m) for m in args.models] or find_model_folders(cfg.paths.models_dir)
    data_dir = Path(args.data_dir or cfg.paths.data_dir)
    reports_dir = Path(args.reports_dir or cfg.paths.reports_dir)
    entries, extras = evaluate_all(cfg, folders, data_dir, reports_dir, args.formats)
    log_to_wandb(cfg, entries, extras, reports_dir, data_dir)
    print(f"wrote {reports_dir / 'metrics.json'} ({len(entries)} model x format entries), "
          f"{reports_dir / 'comparison.md'} and {len(extras['plots'])} plots")
    return 0


if __name__ == "__main__":
    cli.run(main)
