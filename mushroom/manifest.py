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

from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.fileio import atomic_write
from mushroom.images import load_image
from mushroom.species import selected_species, unknown_species

COLUMNS = ("photo_id", "observation_id", "taxon_id", "species", "split", "path", "url",
           "license_code", "attribution", "observer", "observation_url", "sha256", "width", "height")
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.csv"
# A species' role in an experiment, decided by the config (never stored in the manifest).
KNOWN, UNKNOWN, UNUSED, EXPOSURE = "known", "unknown", "unused", "exposure"


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
    atomic_write(path, buf.getvalue())


def split_rows(rows: list[dict], split: str) -> list[dict]:
    return [r for r in rows if r["split"] == split]


def species_roles(cfg: Config) -> dict[str, str]:
    """species -> its role in this config's experiment: 'known' (data.species_subset, trained) or
    'unknown' (open_set, evaluation only). The manifest stores no role, so one data folder serves
    any split of known and unknown species; a species of neither gets no entry."""
    return {s.name: KNOWN for s in selected_species(cfg)} | {s.name: UNKNOWN for s in unknown_species(cfg)}


def counts_table(rows: list[dict], extra: dict[str, dict[str, int]] | None = None,
                 roles: dict[str, str] | None = None) -> str:
    """A plain-text table: photos per species per split (+ optional extra columns, e.g. skipped).

    roles (species_roles): a last column naming each species' role, species grouped known first,
    then unknown, then those the config does not use, with a total per role."""
    per = defaultdict(Counter)
    for r in rows:
        per[r["species"]][r["split"]] += 1
    extra = extra or {}
    species = sorted(set(per) | {s for col in extra.values() for s in col})
    role_of = {s: (roles.get(s, UNUSED) if roles is not None else "") for s in species}
    order = {KNOWN: 0, UNKNOWN: 1}
    species.sort(key=lambda s: (order.get(role_of[s], 2), role_of[s], s))
    cols = list(SPLITS) + ["total"] + list(extra)
    labels = [f"total {r}" for r in dict.fromkeys(role_of.values())] if roles is not None else []
    width = max([len("species"), len("total")] + [len(s) for s in species + labels])
    widths = [max(8, len(c)) + 2 for c in cols]

    def line(name: str, vals, role: str = "") -> str:
        text = name.ljust(width) + "".join(f"{v:>{w}}" for v, w in zip(vals, widths))
        return f"{text}   {role}".rstrip() if role else text

    lines = [line("species", cols, "role" if roles is not None else "")]
    totals, by_role = Counter(), defaultdict(Counter)
    for s in species:
        vals = [per[s][sp] for sp in SPLITS]
        vals.append(sum(vals))
        vals += [extra[c].get(s, 0) for c in extra]
        totals.update(dict(zip(cols, vals)))
        by_role[role_of[s]].update(dict(zip(cols, vals)))
        lines.append(line(s, vals, role_of[s]))
    if len(by_role) > 1:  # one subtotal per role: e.g. the known species' splits at a glance
        for role, sub in by_role.items():
            lines.append(line(f"total {role}", [sub[c] for c in cols]))
    lines.append(line("total", [totals[c] for c in cols]))
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
