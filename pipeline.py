"""Run the whole study in order, skipping stages whose outputs are complete.

    python pipeline.py --config configs/demo.yaml                          # downloads from iNaturalist
    python pipeline.py --config configs/demo.yaml --from-folder ../shared/data/fungi128 --group-column date
    python pipeline.py --config config.yaml                                # the full study (hours on a GPU)

Stages: download_data.py -> train_efficientnet_v2.py -> train_resnet_baseline.py -> quantize_qat.py
(both models) -> evaluate.py -> update_results.py -> predict.py on one test photo. Prints the wall
time and peak memory of every stage and writes reports/pipeline.json.
"""
import argparse

from mushroom import cli
from mushroom.config import parse
from mushroom.pipeline import run_pipeline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-folder", help="import photos from DIR/<Species_name>/*.jpg instead of downloading")
    parser.add_argument("--group-column", help="column of DIR/manifest.csv that groups photos (e.g. date)")
    parser.add_argument("--force", action="store_true", help="redo every stage even when its outputs exist")
    args, cfg = parse(parser, argv)
    run_pipeline(cfg, args.config, args.overrides, args.from_folder, args.group_column, args.force)
    return 0


if __name__ == "__main__":
    cli.run(main)
