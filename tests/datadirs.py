"""A small data folder laid out like the importer's output (data/{split}/<Species>/<id>.jpg +
manifest.csv), built from the `photo_folder` fixture, for the training-stage tests."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from mushroom.manifest import write_manifest
from mushroom.species import folder_name

# date groups of photo_folder (4 per species, 3 photos each) -> split
GROUP_SPLIT = {1: "train", 2: "train", 3: "val", 4: "test"}


def make_data_dir(photo_folder: Path, dest: Path) -> Path:
    """photo_folder's photos split by date group: 6 train, 3 val, 3 test photos per species."""
    rows = []
    with (photo_folder / "manifest.csv").open(newline="") as fh:
        for i, r in enumerate(csv.DictReader(fh)):
            split = GROUP_SPLIT[int(r["date"][-2:])]
            rel = f"{split}/{folder_name(r['species'])}/{i}.jpg"
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo_folder / r["path"], dest / rel)
            rows.append({"photo_id": i, "observation_id": r["date"], "taxon_id": 0, "species": r["species"],
                         "split": split, "path": rel, "url": "", "license_code": "cc-by",
                         "attribution": "test", "observer": "test", "observation_url": "", "sha256": "",
                         "width": 128, "height": 128})
    write_manifest(dest / "manifest.csv", rows)
    return dest


def tiny_cfg(*overrides: str):
    """The project config for fast tests: the tiny model from scratch, 64 px, W&B disabled."""
    from mushroom.config import load_config

    return load_config(None, ["model.name=tiny", "model.weights=null", "image.size=64", "train.batch_size=4",
                              "model.dropout=0.0", "train.stage1.epochs=1", "train.stage2.epochs=1",
                              "train.stage2.unfreeze_fraction=0.5", "experiment=test", "wandb.mode=disabled",
                              *overrides])
