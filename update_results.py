"""Regenerate the results from reports/metrics.json (never typed by hand).

    python update_results.py --config configs/demo.yaml

Copies metrics.json, the headline plots (reliability diagrams, unknown-species plots, format deltas
with their intervals, trade-off chart) and the per-species unknown tables to docs/results/,
replaces the full tables between the results markers of docs/results.md, and the short table
between the summary markers of README.md.
"""
import argparse
import shutil
import sys
from pathlib import Path

from mushroom import cli
from mushroom.config import PROJECT_ROOT, parse
from mushroom.errors import UserError
from mushroom.evaluation import read_metrics
from mushroom.reporting import (README_BEGIN, README_END, SUMMARY_BEGIN, SUMMARY_END, results_block, results_summary,
                                update_readme)

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
    # the per-species unknown tables travel with the plots: docs/results.md links them
    tables = sorted(reports.glob("unknown_species_*.md"))
    for plot in plots + tables + [reports / "tradeoff.png"]:
        if plot.is_file():
            shutil.copy(plot, DOCS / plot.name)
    shutil.copy(reports / "metrics.json", DOCS / "metrics.json")
    page = PROJECT_ROOT / "docs" / "results.md"
    if not update_readme(page, results_block(entries, args.command, reports_rel="results")):
        raise UserError(f"{page} has no results markers; restore the '{README_BEGIN[:20]}' and '{README_END}' lines")
    if not update_readme(PROJECT_ROOT / "README.md", results_summary(entries, args.command), SUMMARY_BEGIN, SUMMARY_END):
        raise UserError(f"README.md has no summary markers; restore the '{SUMMARY_BEGIN[:20]}' and '{SUMMARY_END}' lines")
    print(f"README.md and docs/results.md updated from {reports / 'metrics.json'} ({len(entries)} entries)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
