"""data/manifest.csv: one row per photo, the contract between the data stage and everything after.

`path` is relative to the data folder (train/Amanita_muscaria/123.jpg). The file is rewritten
atomically, so an interrupted run never leaves a half-written manifest.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from mushroom.errors import UserError
from mushroom.images import atomic_write, load_image

COLUMNS = ("photo_id", "observation_id", "taxon_id", "species", "split", "path", "url",
           "license_code", "attribution", "observer", "observation_url", "sha256", "width", "height")
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.csv"


def manifest_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / MANIFEST_NAME


def read_manifest(path: str | os.PathLike, missing_ok: bool = False) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return []
        raise UserError(f"{path} does not exist: run download_data.py first (or download_data.py --from-folder DIR)")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} lacks the columns {', '.join(missing)}: rerun download_data.py")
        return [{c: row[c] for c in COLUMNS} for row in reader]


def write_manifest(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    rows = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["species"], str(r["photo_id"])))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in COLUMNS})
    atomic_write(path, buf.getvalue().encode("utf-8"))


def split_rows(rows: list[dict], split: str) -> list[dict]:
    return [r for r in rows if r["split"] == split]


def counts_table(rows: list[dict], extra: dict[str, dict[str, int]] | None = None) -> str:
    """A plain-text table: photos per species per split (+ optional extra columns, e.g. skipped)."""
    per = defaultdict(Counter)
    for r in rows:
        per[r["species"]][r["split"]] += 1
    extra = extra or {}
    species = sorted(set(per) | {s for col in extra.values() for s in col})
    cols = list(SPLITS) + ["total"] + list(extra)
    width = max([len("species"), len("total")] + [len(s) for s in species])
    widths = [max(8, len(c)) + 2 for c in cols]
    lines = ["species".ljust(width) + "".join(f"{c:>{w}}" for c, w in zip(cols, widths))]
    totals = Counter()
    for s in species:
        vals = [per[s][sp] for sp in SPLITS]
        vals.append(sum(vals))
        vals += [extra[c].get(s, 0) for c in extra]
        totals.update(dict(zip(cols, vals)))
        lines.append(s.ljust(width) + "".join(f"{v:>{w}}" for v, w in zip(vals, widths)))
    lines.append("total".ljust(width) + "".join(f"{totals[c]:>{w}}" for c, w in zip(cols, widths)))
    return "\n".join(lines)


def load_split(data_dir: str | os.PathLike, split: str, class_names: list[str], size: int,
               limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(uint8 images (N, size, size, 3), labels by class_names index, manifest rows) of one split,
    restricted to the model's classes, through the one image path; `limit` picks a seeded subset."""
    data_dir = Path(data_dir)
    rows = [r for r in split_rows(read_manifest(manifest_path(data_dir)), split) if r["species"] in class_names]
    rows.sort(key=lambda r: r["path"])
    if limit is not None and len(rows) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
        rows = [rows[i] for i in pick]
    if not rows:
        raise UserError(f"{manifest_path(data_dir)} has no '{split}' photos of the model's species: "
                        "check --data-dir, or rerun download_data.py")
    index = {name: i for i, name in enumerate(class_names)}
    images = np.stack([load_image(data_dir / r["path"], size) for r in rows])
    labels = np.array([index[r["species"]] for r in rows], np.int64)
    return images, labels, rows
