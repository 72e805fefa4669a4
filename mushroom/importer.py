"""Import an existing photo collection (DIR/<Species_name>/*.jpg, optional DIR/manifest.csv) into
data/{train,val,test}/<Species_name>/<photo_id>.jpg and data/manifest.csv, split like a download.

This is how a user brings Kaggle, DF20 or their own photos, and how the pipeline runs offline.
Photos of one group (a column of the source manifest: observation, date, ...) never cross splits.

What is imported: species.import_species, i.e. the species the model learns (data.species_subset,
at most data.max_photos_per_species photos each) and the unknown ones, only ever evaluated
(open_set.unknown_species, at most open_set.max_photos_per_species each). Both are split alike and
the manifest does not say which is which: the config decides that when the data is used.
"""
from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from pathlib import Path

from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.images import IMAGE_SUFFIXES, BadImage
from mushroom.ingest import IngestReport, PhotoStore, verified
from mushroom.manifest import species_roles
from mushroom.species import (Species, by_folder, folder_name, graded_species, import_species, selected_species,
                              unknown_species)


def _read_source_manifest(source: Path) -> dict[str, dict]:
    path = source / "manifest.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "path" not in (reader.fieldnames or []):
            raise UserError(f"{path} has no 'path' column: it must name each photo as <Species_name>/<file>")
        return {os.path.normpath(row["path"]): row for row in reader}


def _photo_id(file: Path) -> str:
    return folder_name(file.stem)


def import_folder(cfg: Config, source_dir: str | os.PathLike, group_column: str | None,
                  data_dir: str | os.PathLike, force: bool = False) -> IngestReport:
    source, data_dir = Path(source_dir), Path(data_dir)
    if not source.is_dir():
        raise UserError(f"--from-folder {source} is not a folder: give DIR laid out as DIR/<Species_name>/*.jpg")
    meta = _read_source_manifest(source)
    if group_column:
        if not meta:
            raise UserError(f"--group-column {group_column} needs {source / 'manifest.csv'}, which does not exist")
        columns = set(next(iter(meta.values())).keys())
        if group_column not in columns:
            raise UserError(f"--group-column {group_column} is not a column of {source / 'manifest.csv'} "
                            f"(columns: {', '.join(sorted(columns))})")
    report = IngestReport(data_dir, grouped_by=group_column or "photo (no group column)", roles=species_roles(cfg))
    if not group_column:
        report.notes.append("no --group-column given: every photo is its own group, so near-duplicate photos "
                            "of one mushroom may land in different splits and inflate val/test scores")

    configured = by_folder(graded_species(cfg))
    wanted = {s.folder for s in import_species(cfg)}
    unknown = {s.name for s in unknown_species(cfg)}
    caps = {s.name: (cfg.data.max_photos_per_species, "data.max_photos_per_species") for s in selected_species(cfg)}
    caps |= {name: (cfg.open_set.max_photos_per_species, "open_set.max_photos_per_species") for name in unknown}
    candidates: list[tuple[Species, Path, str]] = []   # (species, file, group)
    for sub in sorted(p for p in source.iterdir() if p.is_dir()):
        species = configured.get(folder_name(sub.name))
        if species is None:
            report.unmatched_folders.append(sub.name)
            continue
        if species.folder not in wanted:
            report.left_out_species.append(species.name)
            continue
        for file in sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            rel = os.path.normpath(str(file.relative_to(source)))
            group = (meta.get(rel) or {}).get(group_column, "") if group_column else ""
            candidates.append((species, file, group or f"photo:{_photo_id(file)}"))
    if not candidates:
        raise UserError(f"no photos of the configured species found in {source}: expected "
                        f"{source}/<Species_name>/*.jpg with names from config.yaml, e.g. {next(iter(wanted))}")
    # Known species first (folder order within each role), so a photo whose bytes also lie in an
    # unknown species' folder stays with the known one: what the model learns from never depends on
    # which unknown species are imported.
    candidates.sort(key=lambda c: c[0].name in unknown)

    store = PhotoStore(data_dir, {s.name for s, _, _ in candidates})
    # The source is the truth for its species: their rows are rebuilt, keeping the splits and files
    # an earlier import stored (unless --force).
    previous = store.take()
    before = {} if force else {(r["species"], r["photo_id"]): r for r in previous}

    photos = []   # (species, photo_id, group, jpeg bytes, source file, Photo)
    for species, file, group in candidates:
        try:
            data, photo = verified(file.read_bytes(), str(file))
        except BadImage as exc:
            report.failed[species.name] += 1
            print(f"warning: skipped {exc}", file=sys.stderr)
            continue
        if not store.claim(photo.sha256):
            report.duplicates[species.name] += 1
            continue
        photos.append((species, _photo_id(file), group, data, file, photo))

    photos = _cap_per_species(photos, caps, cfg.seed, report)
    sizes: dict[str, Counter] = {}
    fixed: dict[str, dict[str, str]] = {}
    for sp, pid, group, *_ in photos:
        sizes.setdefault(sp.name, Counter())[group] += 1
        prev = before.get((sp.name, pid))
        if prev and prev["observation_id"] == group:
            fixed.setdefault(sp.name, {})[group] = prev["split"]
    splits = {name: store.assign(cfg, name, n, fixed.get(name)) for name, n in sizes.items()}

    for sp, pid, group, data, file, photo in photos:
        split = splits[sp.name][group]
        src = meta.get(os.path.normpath(str(file.relative_to(source)))) or {}
        row = store.row(sp, pid, group, split, photo, sp.taxon_id, url=src.get("url", ""),
                        license_code=src.get("license_code", src.get("license", "")),
                        attribution=src.get("attribution", src.get("source", "")),
                        observer=src.get("observer", ""), observation_url=src.get("observation_url", ""))
        prev = before.get((sp.name, pid)) or {}
        if (prev.get("path"), prev.get("sha256")) == (row["path"], photo.sha256) and (data_dir / row["path"]).is_file():
            report.kept[sp.name] += 1
        else:
            store.write(data_dir / row["path"], data)
            report.added[sp.name] += 1
        store.add(row)
    # Files of this import that are no longer part of it (a photo gone from the source, a split
    # redone by --force).
    stored = {r["path"] for r in store.rows}
    store.remove([r for r in previous if r["path"] not in stored])
    store.save()
    report.rows = store.rows
    return report


def _cap_per_species(photos: list[tuple], caps: dict[str, tuple[int, str]], seed: int,
                     report: IngestReport) -> list[tuple]:
    """At most caps[species] = (cap, its config key) photos per species, taken whole group by whole
    group in a seeded order, so the cap never splits a burst of one mushroom more than once. The
    order depends only on the seed and the species, never on which other species are imported."""
    import random

    by_species: dict[str, dict[str, list[tuple]]] = {}
    for p in photos:
        by_species.setdefault(p[0].name, {}).setdefault(p[2], []).append(p)
    kept = []
    for name, groups in by_species.items():
        cap, key = caps[name]
        order = sorted(groups)
        random.Random(f"{seed}:cap:{name}").shuffle(order)
        taken: list[tuple] = []
        for g in order:
            if len(taken) >= cap:
                break
            taken += groups[g][: cap - len(taken)]
        if len(taken) < sum(len(v) for v in groups.values()):
            report.notes.append(f"{name}: kept {len(taken)} of {sum(len(v) for v in groups.values())} photos "
                                f"({key}={cap})")
        kept += taken
    return kept
