"""Fill data/ with labelled photos: from iNaturalist, or offline from a folder you already have.

    python download_data.py                                    # config.yaml: every species, from iNaturalist
    python download_data.py --config configs/demo.yaml         # the small demo
    python download_data.py --set data.max_photos_per_species=40 --set data.place_id=null
    python download_data.py --from-folder ../shared/data/fungi128 --group-column date   # offline import

Fetches the species the model learns (data.species_subset) and the unknown species it is only
evaluated on (open_set.unknown_species, at most open_set.max_photos_per_species photos each), then
"exposure" photos of other mushrooms for outlier-exposure training: open_set.exposure_download
photos of research-grade Fungi in neither species table (0 = none), at most
open_set.exposure_max_per_species per species, open_set.exposure_genus_share of them from the
genera of the study's species.
Writes data/{train,val,test}/<Species_name>/<photo_id>.jpg, data/manifest.csv and
data/config.resolved.yaml. After an interruption, rerun the same command: it fetches only what
is missing. --force forgets what earlier runs stored for these species and starts again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mushroom import tracking
from mushroom.cli import run
from mushroom.config import parse, save_resolved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-folder", metavar="DIR",
                        help="import DIR/<Species_name>/*.jpg (and DIR/manifest.csv) instead of downloading")
    parser.add_argument("--group-column", metavar="COLUMN",
                        help="with --from-folder: the DIR/manifest.csv column grouping photos for the split "
                             "(e.g. date); without it each photo is its own group")
    parser.add_argument("--data-dir", metavar="DIR", help="where data goes (default: paths.data_dir of the config)")
    parser.add_argument("--force", action="store_true",
                        help="redo the known and unknown species (and the exposure photos) instead of resuming "
                             "what earlier runs stored")
    args, cfg = parse(parser)
    if args.group_column and not args.from_folder:
        parser.error("--group-column only applies with --from-folder")
    data_dir = Path(args.data_dir or cfg.paths.data_dir)
    save_resolved(cfg, data_dir)
    if args.from_folder:
        from mushroom.importer import import_folder

        report = import_folder(cfg, args.from_folder, args.group_column, data_dir, force=args.force)
    else:
        from mushroom.download import download_dataset

        report = download_dataset(cfg, data_dir, force=args.force)
    print(report.summary())
    tracking.log_dataset(cfg, report)
    return 0


if __name__ == "__main__":
    run(main)
