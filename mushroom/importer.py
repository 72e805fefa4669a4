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
import io
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.images import IMAGE_SUFFIXES, BadImage, atomic_write, decode, describe_bytes, remove_partials
from mushroom.manifest import UNKNOWN, counts_table, manifest_path, read_manifest, species_roles, write_manifest
from mushroom.species import (Species, by_folder, folder_name, graded_species, import_species, selected_species,
                              unknown_species)
from mushroom.splits import assign_splits


@dataclass
class ImportReport:
    rows: list[dict]                                   # manifest rows of the imported species
    roles: dict[str, str] = field(default_factory=dict)  # species -> known | unknown (manifest.species_roles)
    added: int = 0                                     # photos written by this run
    kept: int = 0                                      # photos already in place from an earlier run
    failed: Counter = field(default_factory=Counter)   # species -> unreadable photos
    duplicates: Counter = field(default_factory=Counter)  # species -> photos with a sha256 seen before
    unmatched_folders: list[str] = field(default_factory=list)  # folders matching no species in the config
    left_out_species: list[str] = field(default_factory=list)   # configured species neither known nor unknown
    group_column: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        extra = {}
        if self.duplicates:
            extra["duplicate"] = dict(self.duplicates)
        if self.failed:
            extra["failed"] = dict(self.failed)
        lines = [counts_table(self.rows, extra, self.roles)]
        if UNKNOWN in self.roles.values():
            lines.append("known: the species the model learns (data.species_subset); "
                         "unknown: evaluation only, never trained (open_set.unknown_species)")
        lines += ["",
                  f"{self.added} photos added, {self.kept} already in place, "
                  f"{sum(self.failed.values())} unreadable, {sum(self.duplicates.values())} duplicates skipped; "
                  f"grouped by {self.group_column or 'photo (no group column)'}"]
        if self.unmatched_folders:
            lines.append("not in config.yaml (skipped): " + ", ".join(self.unmatched_folders))
        if self.left_out_species:
            lines.append("left out, in neither data.species_subset nor open_set.unknown_species: "
                         + ", ".join(self.left_out_species))
        lines += self.notes
        return "\n".join(lines)


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


def _jpeg_bytes(data: bytes, what: str) -> bytes:
    """The photo as JPEG bytes: JPEGs are kept byte for byte, anything else is re-encoded once."""
    if data[:3] == b"\xff\xd8\xff":
        return data
    img = decode(data, what)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def import_folder(cfg: Config, source_dir: str | os.PathLike, group_column: str | None,
                  data_dir: str | os.PathLike, force: bool = False) -> ImportReport:
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
    report = ImportReport(rows=[], group_column=group_column)
    if not group_column:
        report.notes.append("no --group-column given: every photo is its own group, so near-duplicate photos "
                            "of one mushroom may land in different splits and inflate val/test scores")

    configured = by_folder(graded_species(cfg))
    wanted = {s.folder for s in import_species(cfg)}
    unknown = {s.name for s in unknown_species(cfg)}
    caps = {s.name: (cfg.data.max_photos_per_species, "data.max_photos_per_species") for s in selected_species(cfg)}
    caps |= {name: (cfg.open_set.max_photos_per_species, "open_set.max_photos_per_species") for name in unknown}
    report.roles = species_roles(cfg)
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

    remove_partials(data_dir)
    mpath = manifest_path(data_dir)
    existing = read_manifest(mpath, missing_ok=True)
    imported_species = {s.name for s, _, _ in candidates}
    others = [r for r in existing if r["species"] not in imported_species]
    previous = {} if force else {(r["species"], r["photo_id"]): r for r in existing if r["species"] in imported_species}

    # Read and verify every source photo once; duplicates (same bytes) are stored once.
    photos = []   # (species, photo_id, group, jpeg bytes, source file)
    seen_sha: set[str] = set()
    for species, file, group in candidates:
        try:
            data = _jpeg_bytes(file.read_bytes(), str(file))
            sha, width, height = describe_bytes(data, str(file))
        except BadImage as exc:
            report.failed[species.name] += 1
            print(f"warning: skipped {exc}", file=sys.stderr)
            continue
        if sha in seen_sha:
            report.duplicates[species.name] += 1
            continue
        seen_sha.add(sha)
        photos.append((species, _photo_id(file), group, data, file, sha, width, height))

    photos = _cap_per_species(photos, caps, cfg.seed, report)
    sizes = Counter((sp.name, group) for sp, _, group, *_ in photos)
    fixed = {}
    for sp, pid, group, *_ in photos:
        prev = previous.get((sp.name, pid))
        if prev and prev["observation_id"] == group:
            fixed[(sp.name, group)] = prev["split"]
    splits = assign_splits(dict(sizes), dict(cfg.data.split), cfg.seed, fixed)

    rows = []
    for sp, pid, group, data, file, sha, width, height in photos:
        split = splits[(sp.name, group)]
        rel = f"{split}/{sp.folder}/{pid}.jpg"
        dest = data_dir / rel
        prev = previous.get((sp.name, pid))
        if prev and prev["path"] != rel:
            (data_dir / prev["path"]).unlink(missing_ok=True)
        if prev and prev["path"] == rel and prev["sha256"] == sha and dest.is_file():
            report.kept += 1
        else:
            atomic_write(dest, data)
            report.added += 1
        src = meta.get(os.path.normpath(str(file.relative_to(source)))) or {}
        rows.append({
            "photo_id": pid, "observation_id": group, "taxon_id": sp.taxon_id, "species": sp.name,
            "split": split, "path": rel, "url": src.get("url", ""),
            "license_code": src.get("license_code", src.get("license", "")),
            "attribution": src.get("attribution", src.get("source", "")),
            "observer": src.get("observer", ""), "observation_url": src.get("observation_url", ""),
            "sha256": sha, "width": width, "height": height,
        })
    # Drop files of this import that are no longer part of it (e.g. a split moved by --force).
    keep_paths = {r["path"] for r in rows}
    for r in previous.values():
        if r["path"] not in keep_paths:
            (data_dir / r["path"]).unlink(missing_ok=True)
    new_rows = others + rows
    if report.added or _normalise(existing) != _normalise(new_rows):
        write_manifest(mpath, new_rows)
    report.rows = rows
    return report


def _cap_per_species(photos: list[tuple], caps: dict[str, tuple[int, str]], seed: int,
                     report: ImportReport) -> list[tuple]:
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


def _normalise(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(str(r[k]) for k in sorted(r)) for r in rows)
