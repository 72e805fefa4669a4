"""The species table: names, iNaturalist ids, graded edibility, notes and look-alikes."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from mushroom.config import EDIBILITY_GRADES, Config
from mushroom.errors import UserError

# Binary "edible" of the study: caution species are edible with preparation (e.g. well cooked).
EDIBLE_GRADES = ("choice", "edible", "caution")
DANGEROUS_GRADES = ("poisonous", "deadly")
assert set(EDIBLE_GRADES) | {"inedible"} | set(DANGEROUS_GRADES) == set(EDIBILITY_GRADES)

_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")


@dataclass(frozen=True)
class Species:
    name: str                # scientific name, as on iNaturalist
    common_name: str
    taxon_id: int | None     # None only for evaluation-only species (looked up by name)
    edibility: str           # one of EDIBILITY_GRADES
    notes: str = ""
    look_alikes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def folder(self) -> str:
        return folder_name(self.name)

    @property
    def is_edible(self) -> bool:
        return self.edibility in EDIBLE_GRADES

    @property
    def is_dangerous(self) -> bool:
        return self.edibility in DANGEROUS_GRADES

    def to_dict(self) -> dict:
        d = asdict(self)
        d["look_alikes"] = list(self.look_alikes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Species":
        return cls(name=d["name"], common_name=d["common_name"], taxon_id=None if d.get("taxon_id") is None else int(d["taxon_id"]),
                   edibility=d["edibility"], notes=d.get("notes", ""),
                   look_alikes=tuple(d.get("look_alikes", ())))


def folder_name(name: str) -> str:
    """'Amanita muscaria' -> 'Amanita_muscaria'. Anything but letters, digits and '-' becomes '_',
    so no name (even '../../etc') can form a path outside its parent folder."""
    cleaned = _UNSAFE.sub("_", name.strip()).strip("_")
    if not cleaned:
        raise UserError(f"species name {name!r} has no letters or digits to name a folder with")
    return cleaned


def all_species(cfg: Config) -> list[Species]:
    return [Species.from_dict(s) for s in cfg.species]


def selected_species(cfg: Config) -> list[Species]:
    """The species this experiment uses: data.species_subset when set, else all, in config order."""
    species = all_species(cfg)
    subset = cfg.data.species_subset
    if subset:
        wanted = set(subset)
        species = [s for s in species if s.name in wanted]
    return species


def evaluation_species(cfg: Config) -> list[Species]:
    """Species that are never trained, only used as unknowns (cfg.evaluation_species)."""
    return [Species.from_dict(s) for s in cfg.evaluation_species]


def graded_species(cfg: Config) -> list[Species]:
    """Every species the project has a grade for: the table, then the evaluation-only species. The
    advice resolves look-alikes against this, so a look-alike outside the table still has a grade."""
    return all_species(cfg) + evaluation_species(cfg)


def unknown_species(cfg: Config) -> list[Species]:
    """The species treated as unknown (never trained; photos only to measure unknown detection):
    open_set.unknown_species, or by default every table species outside data.species_subset plus
    every evaluation-only species."""
    known = {s.name for s in selected_species(cfg)}
    graded = graded_species(cfg)
    names = cfg.open_set.unknown_species
    if names is None:
        return [s for s in graded if s.name not in known]
    wanted = set(names)
    return [s for s in graded if s.name in wanted]


def import_species(cfg: Config) -> list[Species]:
    """What download_data.py fetches or imports: the known species, then the unknown ones."""
    return selected_species(cfg) + unknown_species(cfg)


def by_folder(species: list[Species]) -> dict[str, Species]:
    return {s.folder: s for s in species}


def by_name(species: list[Species]) -> dict[str, Species]:
    return {s.name: s for s in species}


def classes_from_table(class_names: list[str], table: list[Species]) -> list[Species]:
    """A model's classes (meta.json's class_names, in output order) graded by the CURRENT table:
    a species re-graded since training answers with its new grade, notes and look-alikes. The
    grades saved in meta.json at training are a snapshot and never used for advice."""
    known = by_name(table)
    missing = [n for n in class_names if n not in known]
    if missing:
        raise UserError(f"the model's class{'es' if len(missing) > 1 else ''} {', '.join(missing)} "
                        f"{'are' if len(missing) > 1 else 'is'} not in the species table (config.yaml species or "
                        "evaluation_species): add the species back with its grade, or retrain without it")
    return [known[n] for n in class_names]


@dataclass(frozen=True)
class UnknownPartition:
    """The photos' species outside the model's classes, by role (disjoint, never by photo):
    exposure: train the model towards a uniform answer (outlier exposure), never evaluated: a seeded
      share (open_set.exposure_fraction) of the unknown species, plus every species in neither the
      table nor evaluation_species (other Fungi that download_data.py fetched as exposure);
    fit: fit the unknown-species threshold (unknown-val); measure: measure it (unknown-test)."""
    exposure: list[str]
    fit: list[str]
    measure: list[str]
    dangerous: dict[str, bool]          # fit and measure species -> poisonous/deadly


def unknown_partition(cfg: Config, present: set[str] | list[str], class_names: list[str]) -> UnknownPartition:
    """Partition the species present in the data (manifest rows) that are not the model's classes."""
    from mushroom import openset

    present = set(present)
    graded = {s.name for s in graded_species(cfg)}
    unknown = {s.name: s for s in unknown_species(cfg) if s.name not in class_names and s.name in present}
    names = sorted(unknown)
    dangerous = [unknown[n].is_dangerous for n in names]
    exposure, fit, measure = openset.partition_unknown_species(
        names, dangerous, cfg.open_set.exposure_fraction, cfg.open_set.unknown_val_fraction, cfg.seed)
    downloaded = sorted(n for n in present if n not in graded and n not in class_names)
    return UnknownPartition(sorted(exposure + downloaded), fit, measure,
                            {n: unknown[n].is_dangerous for n in fit + measure})
