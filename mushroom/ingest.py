"""The ingestion core: how photos enter data/, whichever way they come (download.py from iNaturalist,
importer.py from a folder), and the one report both give.

    store = PhotoStore(data_dir, scope={"Boletus edulis", ...})
    data, photo = verified(raw_bytes, "photo")       # BadImage when the bytes do not decode
    split = store.assign(cfg, "Boletus edulis", {group: photos})[group]
    store.write(store.path(split, species, photo_id), data)
    store.add(store.row(species, photo_id, group, split, photo, taxon_id, url=...))
    store.save()

What holds for every source:
- a photo is stored as JPEG under its final name only once it decodes completely (atomic write),
  so a killed run never leaves a half photo; the temporary names it may leave are removed on open;
- data/<split>/<Species_folder>/<photo_id>.jpg, and no name can make a path outside data/;
- the same photo id or the same bytes is stored once within the species of one run (`scope`);
  rows of other species are carried through untouched, so what one config stores never depends on
  what another config stored before;
- a group (observation, date, ...) that has photos on disk keeps its split: new photos join it;
- the manifest is rewritten atomically, and only when its rows change.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.fileio import atomic_write, remove_partials
from mushroom.images import BadImage, as_jpeg, describe_bytes
from mushroom.manifest import COLUMNS, SPLITS, UNKNOWN, counts_table, manifest_path, read_manifest, write_manifest
from mushroom.species import Species
from mushroom.splits import assign_splits

log = logging.getLogger(__name__)

SOURCE_COLUMNS = ("url", "license_code", "attribution", "observer", "observation_url")
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Photo:
    sha256: str
    width: int
    height: int


def verified(data: bytes, what: str = "photo") -> tuple[bytes, Photo]:
    """(JPEG bytes to store, what the manifest records of them); BadImage when they do not decode."""
    data = as_jpeg(data, what)
    return data, Photo(*describe_bytes(data, what))


@dataclass
class IngestReport:
    """What one download or import found and did; per-species counts are Counters."""
    data_dir: Path
    grouped_by: str                                          # what keeps photos of one mushroom in one split
    roles: dict[str, str] = field(default_factory=dict)      # species -> known | unknown (manifest.species_roles)
    rows: list[dict] = field(default_factory=list)           # the whole manifest after the run
    added: Counter = field(default_factory=Counter)          # photos written by this run
    kept: Counter = field(default_factory=Counter)           # photos already in place from an earlier run
    skipped_license: Counter = field(default_factory=Counter)  # photos refused for their license
    duplicates: Counter = field(default_factory=Counter)     # the same photo id or bytes reached again
    failed: Counter = field(default_factory=Counter)         # photos that could not be fetched or read
    failures: list[str] = field(default_factory=list)        # why, for failures a rerun may fix
    unmatched_folders: list[str] = field(default_factory=list)  # source folders naming no configured species
    left_out_species: list[str] = field(default_factory=list)   # found, but neither known nor unknown
    # Outlier-exposure photos (download.py): species outside both species tables, far too many for a
    # table row each, so summary() gives them one line (`exposure`: photos, species, genera, ...).
    exposure_species: set[str] = field(default_factory=set)
    exposure: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)  # now, on stderr; summary() repeats it at the end

    def summary(self) -> str:
        columns = {"new": self.added, "skipped_license": self.skipped_license, "duplicate": self.duplicates,
                   "failed": self.failed}
        other = self.exposure_species
        columns = {k: {s: n for s, n in v.items() if s not in other} for k, v in columns.items()}
        rows = [r for r in self.rows if r["species"] not in other]
        lines = [counts_table(rows, {k: v for k, v in columns.items() if v}, self.roles)]
        if UNKNOWN in self.roles.values():
            lines.append("known: the species the model learns (data.species_subset); "
                         "unknown: evaluation only, never trained (open_set.unknown_species)")
        lines += ["", f"{self.added.total()} photos added, {self.kept.total()} already in place, "
                      f"{self.duplicates.total()} duplicates skipped, {self.failed.total()} failed; "
                      f"grouped by {self.grouped_by}"]
        if self.exposure:
            e = self.exposure
            lines.append(f"exposure: {e['photos']} photos of {e['species']} species from {e['genera']} genera "
                         f"({e['study_genera']} from the study's genera; {e['added']} new, "
                         f"{e['skipped_license']} skipped for their license, {e['failed']} failed)")
        if self.unmatched_folders:
            lines.append("not in config.yaml (skipped): " + ", ".join(self.unmatched_folders))
        if self.left_out_species:
            lines.append("left out, in neither data.species_subset nor open_set.unknown_species: "
                         + ", ".join(self.left_out_species))
        lines += self.notes
        lines += [f"failed: {msg}" for msg in self.failures[:10]]
        if len(self.failures) > 10:
            lines.append(f"failed: ... and {len(self.failures) - 10} more")
        if self.failures:
            lines.append("rerun the same command to retry the failed photos")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"manifest: {manifest_path(self.data_dir)} ({len(self.rows)} photos)")
        return "\n".join(lines)


class PhotoStore:
    """data/ as one run sees it: the manifest rows and the photos they name. `scope`: the species
    this run stores photos of (duplicates are looked for among them only)."""

    def __init__(self, data_dir: str | os.PathLike, scope: set[str]):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        remove_partials(self.data_dir)
        self.scope = set(scope)
        self.rows = read_manifest(manifest_path(self.data_dir), missing_ok=True)
        self._on_disk = _canonical(self.rows)
        self.saved_at = time.monotonic()
        self._index()

    def _index(self) -> None:
        mine = [r for r in self.rows if r["species"] in self.scope]
        self.photo_ids = {str(r["photo_id"]) for r in mine}
        self.shas = {r["sha256"] for r in mine if r.get("sha256")}

    def widen(self, species: set[str]) -> None:
        """Add species to the scope: the exposure species (download.py) are known only once planned."""
        if not species <= self.scope:
            self.scope |= species
            self._index()

    def species_rows(self, species: str) -> list[dict]:
        return [r for r in self.rows if r["species"] == species]

    def take(self) -> list[dict]:
        """Remove and return the rows of the scope's species, for a caller that rebuilds them."""
        taken = [r for r in self.rows if r["species"] in self.scope]
        self.rows = [r for r in self.rows if r["species"] not in self.scope]
        self._index()
        return taken

    def remove(self, rows: list[dict]) -> None:
        """Forget `rows` and delete their files (never one outside data/)."""
        drop = {id(r) for r in rows}
        self.rows = [r for r in self.rows if id(r) not in drop]
        root = self.data_dir.resolve()
        for r in rows:
            path = self.data_dir / r["path"]
            if path.resolve().is_relative_to(root):
                path.unlink(missing_ok=True)
        self._index()

    def claim(self, sha256: str) -> bool:
        """False when these bytes are already stored (or claimed) in this run's scope."""
        if sha256 in self.shas:
            return False
        self.shas.add(sha256)
        return True

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.photo_ids.add(row["photo_id"])
        self.shas.add(row["sha256"])

    def path(self, split: str, species: Species, photo_id: int | str) -> Path:
        """data/<split>/<Species_folder>/<photo_id>.jpg, refusing anything that would leave data/."""
        if split not in SPLITS or not _SAFE_ID.fullmatch(str(photo_id)):
            raise UserError(f"refusing to store photo {photo_id!r} in split {split!r}")
        path = self.data_dir / split / species.folder / f"{photo_id}.jpg"
        if not path.resolve().is_relative_to(self.data_dir.resolve()):
            raise UserError(f"refusing to write {path}: it lies outside {self.data_dir}")
        return path

    def row(self, species: Species, photo_id: int | str, group: int | str, split: str, photo: Photo,
            taxon_id: int | str | None, **source: str) -> dict:
        """A manifest row, every value a string as read_manifest returns it; `source`: SOURCE_COLUMNS."""
        path = self.path(split, species, photo_id).relative_to(self.data_dir).as_posix()
        return {"photo_id": str(photo_id), "observation_id": str(group),
                "taxon_id": "" if taxon_id is None else str(taxon_id), "species": species.name, "split": split,
                "path": path, **{c: str(source.get(c, "")) for c in SOURCE_COLUMNS}, "sha256": photo.sha256,
                "width": str(photo.width), "height": str(photo.height)}

    def write(self, path: Path, data: bytes) -> None:
        try:
            atomic_write(path, data)
        except OSError as exc:
            raise UserError(f"could not write {path} ({exc.strerror or exc}); check the disk and rerun") from None

    def unlisted(self, species: Species) -> dict[str, Path]:
        """photo id -> a .jpg file of `species` that no row names (what a killed run stored last)."""
        listed = {str(r["photo_id"]) for r in self.species_rows(species.name)}
        out: dict[str, Path] = {}
        for split in SPLITS:
            folder = self.data_dir / split / species.folder
            if folder.is_dir():
                for path in sorted(folder.glob("*.jpg")):
                    if path.stem not in listed:
                        out.setdefault(path.stem, path)
        return out

    def adopt(self, leftover: Path, target: Path) -> Photo | None:
        """Move a complete photo an interrupted run left behind to `target` (its split may differ);
        None, and the file deleted, when it does not decode."""
        try:
            photo = Photo(*describe_bytes(leftover.read_bytes(), what=str(leftover)))
        except BadImage:
            leftover.unlink(missing_ok=True)
            return None
        if leftover != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(leftover, target)
        return photo

    def assign(self, cfg: Config, species: str, sizes: dict[str, int],
               fixed: dict[str, str] | None = None) -> dict[str, str]:
        """group -> split for the new photos of `species` (`sizes`: photos per group). Groups with rows
        in the store keep their split, then those in `fixed`; the rest are assigned by
        splits.assign_splits with the stored photos counted towards the targets."""
        held = self.species_rows(species)
        fixed = {**(fixed or {}), **{str(r["observation_id"]): r["split"] for r in held}}
        counts = Counter(str(r["observation_id"]) for r in held) + Counter({str(g): n for g, n in sizes.items()})
        splits = assign_splits({(species, g): n for g, n in counts.items()}, dict(cfg.data.split), cfg.seed,
                               {(species, g): s for g, s in fixed.items()})
        return {g: splits[(species, str(g))] for g in sizes}

    def save(self, every: float = 0.0) -> None:
        """Rewrite the manifest if its rows changed; `every`: not more often than every so many seconds."""
        if time.monotonic() - self.saved_at < every:
            return
        canonical = _canonical(self.rows)
        if canonical != self._on_disk:
            write_manifest(manifest_path(self.data_dir), self.rows)
            self._on_disk = canonical
        self.saved_at = time.monotonic()


def _canonical(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(str(r.get(c, "")) for c in COLUMNS) for r in rows)
