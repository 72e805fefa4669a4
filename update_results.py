"""Regenerate the README's results section from reports/metrics.json (never typed by hand).

    python update_results.py --config configs/demo.yaml

Copies the headline plots (reliability diagrams, unknown-species plots, format deltas with their intervals,
trade-off chart) to docs/results/ so the README can show them, and replaces the text between the README's
results markers.
"""
import argparse
import shutil
import sys
from pathlib import Path

from mushroom import cli
from mushroom.config import PROJECT_ROOT, parse
from mushroom.errors import UserError
from mushroom.evaluation import read_metrics
from mushroom.reporting import results_block, update_readme

DOCS = PROJECT_ROOT / "docs" / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", default="make demo DATA=../shared/data/fungi128",
                        help="the command named as the source of the numbers")
    args, cfg = parse(parser, argv)
    reports = Path(cfg.paths.reports_dir)
    entries = read_metrics(reports / "metrics.json")
    DOCS.mkdir(parents=True, exist_ok=True)
    plots = [p for pattern in ("reliability_*.png", "open_set_*.png", "deltas_*.png")
             for p in sorted(reports.glob(pattern))]
    for plot in plots + [reports / "tradeoff.png"]:
        if plot.is_file():
            shutil.copy(plot, DOCS / plot.name)
    shutil.copy(reports / "metrics.json", DOCS / "metrics.json")
    block = results_block(entries, args.command, reports_rel="docs/results")
    if not update_readme(PROJECT_ROOT / "README.md", block):
        raise UserError("README.md has no results markers; restore the '<!-- results:begin' and '<!-- results:end -->' lines")
    print(f"README.md results updated from {reports / 'metrics.json'} ({len(entries)} entries)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
