"""Outlier-exposure photos from iNaturalist (download_exposure; open_set.exposure_download, 0 = none):
up to that many openly licensed photos of research-grade Fungi (taxon 47170) of species in neither
`species` nor `evaluation_species`, at most open_set.exposure_max_per_species per species,
open_set.exposure_genus_share of them from the genera of the study's species. They are stored and
split like the study's photos, each under its own iNaturalist species name, which is how later
stages tell them apart. Only species-rank observations of an active taxon with a plain binomial
name count: genus-rank ones, subspecies, varieties, hybrids and provisional names are skipped, not
lumped into their species. The selection (plan_exposure) is pure and seeded; the plan is saved
(EXPOSURE_STATE_NAME) before any photo is fetched, so a rerun fetches what it lacks without asking
the API again (unless the plan fell short of exposure_download: then it asks again).
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from itertools import islice
from math import ceil
from pathlib import Path

from pyinaturalist import ClientSession
from tqdm import tqdm

from mushroom.config import Config
from mushroom.errors import UserError
from mushroom.ingest import IngestReport, PhotoStore
from mushroom.inat import INatAPI, as_id, is_inat_row
from mushroom.species import Species, all_species, evaluation_species, folder_name, graded_species


from mushroom.photo_fetch import (MANIFEST_EVERY_S, PlannedPhoto, SplitState, assign_splits, check_reachable, eligible,
                                  fetch_jobs, record_photo, taxon_id_by_name)

# --- outlier exposure: photos of other mushrooms ------------------------------------------------
# Research-grade Fungi of species in neither species table, for training the model to be unsure of
# what it does not know (open_set.exposure_*). Stored like every photo, under their own species
# names: that they are in neither table is what marks them as exposure photos downstream.
FUNGI = 47170                      # iNaturalist's kingdom Fungi
EXPOSURE_STATE_NAME = ".inat-exposure.json"
EXPOSURE_SPARE = 1.5               # candidates gathered per photo wanted: more genera to spread over, and
                                   # reserves for picks that fail
EXPOSURE_MAX_PAGES = 50            # observation pages per query at most (a query that only repeats capped species)
# A plain binomial: "Genus epithet". Hybrids ("A × b"), provisional names ("Vespidae st1") and
# anything that is not a name (a folder) fail it.
_BINOMIAL = re.compile(r"[A-Z][a-z]+ [a-z]+(?:-[a-z]+)*")


@dataclass
class ExposurePhoto:
    """A candidate exposure photo: where to get it (PlannedPhoto) and the species its observation names."""
    species: str
    taxon_id: int
    photo: PlannedPhoto

    @property
    def genus(self) -> str:
        return self.species.split()[0]


@dataclass
class ExposurePlan:
    """Exposure photos in the order to fetch them, per pool; a quota counts photos already stored."""
    study_genera: list[str]                 # the genera of the study's species (config `species`)
    genus_quota: int                        # photos wanted from those genera
    other_quota: int                        # photos wanted from every other genus
    genus_queue: list[ExposurePhoto]        # picks first, then reserves for picks that fail
    other_queue: list[ExposurePhoto]


def plan_exposure(candidates: list[ExposurePhoto], stored: Counter, total: int, per_species: int,
                  genus_share: float, study_genera: set[str], seed: int) -> ExposurePlan:
    """Pure selection: which candidates to fetch, in which order, and how many from each pool.

    `stored`: exposure photos per species already in data/ (they count towards the caps and the
    quotas). Each species keeps at most `per_species` photos, its observations taken in turn (one
    photo of each before a second of any). round(total * genus_share) photos should come from the
    study genera and the rest from other genera; a pool with too few photos leaves its part to the
    other, so the total is met whenever the two together hold enough. Within a pool, genera take
    turns in a seeded order, and within a genus its species: a photo of each genus before a second
    of any, so the photos spread over as many genera and species as there are.
    """
    by_species: dict[str, list[ExposurePhoto]] = defaultdict(list)
    for c in candidates:
        by_species[c.species].append(c)
    pools: dict[bool, list[list[ExposurePhoto]]] = {True: [], False: []}
    for name in sorted(by_species):
        room = max(0, per_species - stored[name])
        photos = _take_turns(_group(by_species[name], lambda c: c.photo.observation_id))[:room]
        if photos:
            pools[photos[0].genus in study_genera].append(photos)
    have_genus = sum(n for name, n in stored.items() if name.split()[0] in study_genera)
    have_other = sum(stored.values()) - have_genus
    avail_genus = have_genus + sum(map(len, pools[True]))
    avail_other = have_other + sum(map(len, pools[False]))
    want_genus = int(total * genus_share + 0.5)
    want_other = total - want_genus
    if avail_genus < want_genus:
        want_genus, want_other = avail_genus, want_other + want_genus - avail_genus
    if avail_other < want_other:
        want_genus, want_other = min(avail_genus, want_genus + want_other - avail_other), avail_other
    queues = {}
    for in_genera, species_lists in pools.items():
        rng = random.Random(f"{seed}:exposure:{'genus' if in_genera else 'other'}")
        genera = _group(species_lists, lambda photos: photos[0].genus)
        order = sorted(genera)
        rng.shuffle(order)
        per_genus = []
        for genus in order:
            members = sorted(genera[genus], key=lambda photos: photos[0].species)
            rng.shuffle(members)
            per_genus.append(_take_turns(members))
        queues[in_genera] = _take_turns(per_genus)
    return ExposurePlan(sorted(study_genera), want_genus, want_other, queues[True], queues[False])


def _group(items: list, key) -> dict:
    """Items by key, keys and items in first-seen order."""
    out: dict = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


def _take_turns(groups) -> list:
    """Round robin: the first item of every group, then the second of every group, ..."""
    lists = list(groups.values()) if isinstance(groups, dict) else list(groups)
    out: list = []
    for i in range(max(map(len, lists), default=0)):
        out += [items[i] for items in lists if i < len(items)]
    return out


class ExposureState:
    """The exposure plan (EXPOSURE_STATE_NAME beside the manifest) and the settings it was made for.
    A rerun with the same settings fetches what the plan still lacks without asking the API again,
    so an interrupted download ends as an uninterrupted one would have."""

    def __init__(self, data_dir: Path, damaged_ok: bool = False):
        """`damaged_ok` (--force, which starts the plan afresh): a damaged file reads as no plan."""
        self.path = data_dir / EXPOSURE_STATE_NAME
        self.settings: dict = {}
        self.plan: ExposurePlan | None = None
        if not self.path.is_file():
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            plan = ExposurePlan([str(g) for g in raw["study_genera"]], int(raw["genus_quota"]),
                                int(raw["other_quota"]), [_candidate(c) for c in raw["genus_queue"]],
                                [_candidate(c) for c in raw["other_queue"]])
            self.settings, self.plan = dict(raw["settings"]), plan
        except (ValueError, KeyError, AttributeError, TypeError):
            if not damaged_ok:
                raise UserError(f"{self.path} is damaged: rerun with --force to download the exposure photos "
                                f"again") from None

    def save(self, store: PhotoStore, settings: dict, plan: ExposurePlan) -> None:
        self.settings, self.plan = settings, plan
        raw = {"settings": settings, "study_genera": plan.study_genera, "genus_quota": plan.genus_quota,
               "other_quota": plan.other_quota,
               "genus_queue": [_plain(c) for c in plan.genus_queue],
               "other_queue": [_plain(c) for c in plan.other_queue]}
        store.write(self.path, json.dumps(raw, indent=0, sort_keys=True).encode())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.settings, self.plan = {}, None


def _plain(c: ExposurePhoto) -> dict:
    p = c.photo
    return {"species": c.species, "taxon_id": c.taxon_id, "photo_id": p.photo_id, "observation_id": p.observation_id,
            "url": p.url, "license_code": p.license_code, "attribution": p.attribution, "observer": p.observer}


def _candidate(raw: dict) -> ExposurePhoto:
    ids = [as_id(raw[k]) for k in ("taxon_id", "photo_id", "observation_id")]
    if None in ids or not _BINOMIAL.fullmatch(str(raw["species"])):
        raise ValueError("not an exposure photo")
    photo = PlannedPhoto(ids[1], ids[2], str(raw["url"]), str(raw["license_code"]), str(raw["attribution"]),
                         str(raw["observer"]))
    return ExposurePhoto(str(raw["species"]), ids[0], photo)


def _exposure_species(name: str, taxon_id: int | None) -> Species:
    """A Species only to name an exposure species' folder and rows: it has no grade, and nothing
    grades it (it is in neither species table)."""
    return Species(name=name, common_name="", taxon_id=taxon_id, edibility="")


class _Graded:
    """Names, folders and taxon ids of the species the project grades (species.graded_species):
    never exposure photos, whatever iNaturalist answers."""

    def __init__(self, cfg: Config, ids: set[int]):
        graded = graded_species(cfg)
        self.names = {s.name.strip().lower() for s in graded}
        self.folders = {s.folder.lower() for s in graded}
        self.ids = set(ids) | {s.taxon_id for s in graded if s.taxon_id is not None}

    def __contains__(self, name: str) -> bool:
        try:
            folder = folder_name(name).lower()
        except UserError:
            folder = ""
        return name.strip().lower() in self.names or folder in self.folders


def _exposure_rows(store: PhotoStore, graded: _Graded) -> list[dict]:
    """Rows of exposure photos: from iNaturalist, of a species in neither species table."""
    return [r for r in store.rows if is_inat_row(r) and r["species"] not in graded]


def _exposure_settings(cfg: Config, graded: _Graded) -> dict:
    """What an exposure plan depends on: another value and the plan is made again."""
    d, o = cfg.data, cfg.open_set
    return {"exposure_download": o.exposure_download, "exposure_max_per_species": o.exposure_max_per_species,
            "exposure_genus_share": o.exposure_genus_share, "licenses": sorted(d.licenses), "place_id": d.place_id,
            "max_photos_per_observation": d.max_photos_per_observation, "photo_size": d.photo_size,
            "api_base_url": d.api_base_url, "seed": cfg.seed, "graded": sorted(graded.names)}


def download_exposure(cfg: Config, api: INatAPI, session: ClientSession, store: PhotoStore, state: SplitState,
                      report: IngestReport, taxa: dict[str, int], force: bool = False, progress: bool = True) -> None:
    """Up to open_set.exposure_download photos of other Fungi (module docstring of this section):
    planned once (ExposureState), then fetched like the study's photos. `taxa`: the taxon ids
    resolve_taxa found, excluded as well as the configured ones. exposure_download 0: nothing is
    asked or changed; exposure photos stored earlier are only counted."""
    o = cfg.open_set
    graded = _Graded(cfg, set(taxa.values()))
    rows = _exposure_rows(store, graded)
    if o.exposure_download == 0:
        _count_exposure(store, graded, [s.name.split()[0] for s in all_species(cfg)], report)
        return
    exposure_state = ExposureState(store.data_dir, damaged_ok=force)
    if force:
        _forget_exposure(store, state, exposure_state, rows)
    else:
        gone = [r for r in rows if not (store.data_dir / r["path"]).is_file()]
        store.remove(gone)
        if gone:
            report.warn(f"exposure: {len(gone)} photo(s) listed in the manifest are missing on disk; fetching "
                        f"them again")
    rows = _exposure_rows(store, graded)
    store.widen({r["species"] for r in rows})
    for name, n in Counter(r["species"] for r in rows).items():
        report.kept[name] += n
    settings = _exposure_settings(cfg, graded)
    plan = exposure_state.plan if exposure_state.settings == settings else None
    if plan is not None and plan.genus_quota + plan.other_quota < o.exposure_download:
        plan = None  # iNaturalist had too few then: ask again, as a species under its cap does
    if plan is None and len(rows) < o.exposure_download:
        plan = _make_exposure_plan(cfg, api, store, state, report, graded, rows)
        exposure_state.save(store, settings, plan)
    if plan is not None:
        store.widen({c.species for c in plan.genus_queue + plan.other_queue})
        _fetch_exposure(cfg, plan, session, store, state, report, graded, progress)
    _count_exposure(store, graded, plan.study_genera if plan else sorted({s.name.split()[0] for s in all_species(cfg)}),
                    report)
    if report.exposure["photos"] < o.exposure_download and not report.exposure["failed"]:
        report.notes.append(f"exposure: iNaturalist had {report.exposure['photos']} of the "
                            f"{o.exposure_download} photos wanted (open_set.exposure_download) under these "
                            f"settings")


def _forget_exposure(store: PhotoStore, state: SplitState, exposure_state: ExposureState, rows: list[dict]) -> None:
    """--force: the exposure photos stored so far, their files (a killed run's too) and plan go."""
    names = {r["species"] for r in rows}
    if exposure_state.plan is not None:
        names |= {c.species for c in exposure_state.plan.genus_queue + exposure_state.plan.other_queue}
    store.remove(rows)
    species = [_exposure_species(n, None) for n in sorted(names)]
    for sp in species:
        for pid, path in store.unlisted(sp).items():
            if as_id(pid) is not None:
                path.unlink()
    state.forget(species)
    state.save(store)
    exposure_state.clear()


def _make_exposure_plan(cfg: Config, api: INatAPI, store: PhotoStore, state: SplitState, report: IngestReport,
                        graded: _Graded, rows: list[dict]) -> ExposurePlan:
    """Ask iNaturalist for candidates and pick from them (plan_exposure)."""
    o = cfg.open_set
    study_genera = sorted({s.name.split()[0] for s in all_species(cfg)})
    for sp in evaluation_species(cfg):  # null ids: looked up so that the API leaves them out too
        if sp.taxon_id is None and sp.name.strip().lower() in graded.names:
            tid = taxon_id_by_name(api, sp.name)
            if tid is not None:
                graded.ids.add(tid)
    genus_ids = _genus_ids(api, study_genera, report) if o.exposure_genus_share > 0 else {}
    stored = Counter(r["species"] for r in rows)
    want_genus = int(o.exposure_download * o.exposure_genus_share + 0.5)
    candidates = _gather_exposure(cfg, api, store, state, report, graded, genus_ids, set(study_genera), stored,
                                  want_genus, o.exposure_download - want_genus)
    return plan_exposure(candidates, stored, o.exposure_download, o.exposure_max_per_species, o.exposure_genus_share,
                         set(study_genera), cfg.seed)


def _genus_ids(api: INatAPI, genera: list[str], report: IngestReport) -> dict[str, int]:
    """genus name -> the taxon id of the fungus genus of that name (the search also finds animal and
    plant genera of the same name); an inactive genus gives its current synonym."""
    out: dict[str, int] = {}
    for genus in genera:
        fungi = [t for t in api.taxa_named(genus, rank="genus") if FUNGI in (t.get("ancestor_ids") or [])]
        if not fungi:
            report.warn(f"exposure: iNaturalist has no fungus genus named {genus}; its species are not "
                        f"over-sampled")
            continue
        synonyms = [as_id(t) for t in fungi[0].get("current_synonymous_taxon_ids") or [] if as_id(t)]
        out[genus] = synonyms[0] if fungi[0].get("is_active") is False and synonyms else as_id(fungi[0]["id"])
    return out


def _gather_exposure(cfg: Config, api: INatAPI, store: PhotoStore, state: SplitState, report: IngestReport,
                     graded: _Graded, genus_ids: dict[str, int], study_genera: set[str], stored: Counter,
                     want_genus: int, want_other: int) -> list[ExposurePhoto]:
    """Candidate photos, pages taken until each pool holds EXPOSURE_SPARE times what it still lacks.

    Study genera: one query per genus, a page of each in turn, so that every genus is represented
    before any gets a second page. Other genera: one query for Fungi without the study genera. A pool
    that runs dry leaves what it lacks to the other. Research grade always (a misidentified study
    species must not become an exposure photo), species rank (the API's `rank`, checked here too),
    the study's and evaluation species left out (without_taxon_id, checked here by name too)."""
    d, o = cfg.data, cfg.open_set
    excluded = sorted(graded.ids)
    common = dict(quality_grade="research", rank="species")
    sources = {True: [api.observations(gid, without_taxon_id=excluded, **common) for _, gid in sorted(genus_ids.items())],
               False: [api.observations(FUNGI, without_taxon_id=excluded + sorted(genus_ids.values()), **common)]}
    pages = {True: [0] * len(sources[True]), False: [0]}
    room = {True: 0, False: 0}  # photos the pool can still give, within the caps
    held = Counter(stored)
    out: list[ExposurePhoto] = []
    seen_obs: set[int] = set()
    seen_photos: set[int] = set()
    per_obs: Counter = Counter(str(r["observation_id"]) for r in _exposure_rows(store, graded))

    def take(obs: dict) -> None:
        oid = as_id(obs.get("id")) if isinstance(obs, dict) else None
        if oid is None or oid in seen_obs:
            return
        seen_obs.add(oid)
        found = _exposure_taxon(obs, graded, report)
        if found is None:
            return
        sp = _exposure_species(*found)
        report.exposure_species.add(sp.name)
        for p in eligible(cfg, sp, obs, per_obs, seen_photos, store, state, report, d.max_photos_per_observation):
            out.append(ExposurePhoto(sp.name, sp.taxon_id, p))
            if held[sp.name] < o.exposure_max_per_species:
                room[sp.name.split()[0] in study_genera] += 1
            held[sp.name] += 1

    def fill(pool: bool, target: int) -> None:
        while room[pool] < target:
            live = [i for i, n in enumerate(pages[pool]) if n is not None]
            if not live:
                return
            for i in live:  # a page of each query in turn
                page = list(islice(sources[pool][i], d.per_page))
                pages[pool][i] += 1
                if len(page) < d.per_page or pages[pool][i] >= EXPOSURE_MAX_PAGES:
                    pages[pool][i] = None
                for obs in page:
                    take(obs)

    have_genus = sum(n for name, n in stored.items() if name.split()[0] in study_genera)
    need = {True: max(0, want_genus - have_genus), False: max(0, want_other - (sum(stored.values()) - have_genus))}
    target = {pool: ceil(n * EXPOSURE_SPARE) for pool, n in need.items()}
    fill(True, target[True])
    fill(False, target[False] + max(0, target[True] - room[True]))
    fill(True, target[True] + max(0, target[False] - room[False]))
    return out


def _exposure_taxon(obs: dict, graded: _Graded, report: IngestReport) -> tuple[str, int] | None:
    """(species, taxon id) an observation gives exposure photos of, or None: a species the project
    grades (by name, id or as an ancestor), or a taxon that is not one species of one name (a genus,
    a subspecies or variety, a hybrid, a provisional name, an inactive taxon) is skipped."""
    taxon = obs.get("taxon") if isinstance(obs.get("taxon"), dict) else {}
    name, tid = str(taxon.get("name") or "").strip(), as_id(taxon.get("id"))
    ancestors = {as_id(a) for a in taxon.get("ancestor_ids") or [] if as_id(a)} if isinstance(
        taxon.get("ancestor_ids"), list) else set()
    if name in graded or tid in graded.ids or ancestors & graded.ids:
        report.exposure["skipped_graded"] = report.exposure.get("skipped_graded", 0) + 1
        return None
    if taxon.get("rank") != "species" or tid is None or taxon.get("is_active") is False or not _BINOMIAL.fullmatch(name):
        report.exposure["skipped_rank"] = report.exposure.get("skipped_rank", 0) + 1
        return None
    return name, tid


def _fetch_exposure(cfg: Config, plan: ExposurePlan, session: ClientSession, store: PhotoStore, state: SplitState,
                    report: IngestReport, graded: _Graded, progress: bool) -> None:
    """Walk the plan: photos in queue order until each quota is met (photos stored earlier count),
    the next one in line for each that fails; a queue that runs out leaves what it lacks to the other.
    Splits are decided per species by observation (assign_splits) and saved before any fetch."""
    cap = cfg.open_set.exposure_max_per_species
    rows = _exposure_rows(store, graded)
    held = Counter(r["species"] for r in rows)
    genera = set(plan.study_genera)
    have_genus = sum(1 for r in rows if r["species"].split()[0] in genera)
    left = max(0, plan.genus_quota + plan.other_quota - len(rows))
    need_genus = min(left, max(0, plan.genus_quota - have_genus))
    need_other = min(left - need_genus, max(0, plan.other_quota - (len(rows) - have_genus)))
    queues = {True: deque(plan.genus_queue), False: deque(plan.other_queue)}
    bar = tqdm(total=need_genus + need_other, desc="exposure", unit="photo", disable=not progress, leave=True)

    def walk(pool: bool, need: int) -> int:
        while need > 0 and queues[pool]:
            batch: list[ExposurePhoto] = []
            taking: Counter = Counter()
            while len(batch) < need and queues[pool]:
                c = queues[pool].popleft()
                if (str(c.photo.photo_id) in store.photo_ids or c.photo.photo_id in state.duplicates.get(c.species, ())
                        or c.species in graded or held[c.species] + taking[c.species] >= cap):
                    continue
                batch.append(c)
                taking[c.species] += 1
            if not batch:
                break
            jobs, orphans = _assign_exposure_splits(cfg, batch, store, state)
            unreachable = 0
            for (sp, p), got in fetch_jobs(cfg, session, store, jobs, orphans):
                unreachable = check_reachable(p, got, unreachable)
                if record_photo(sp, sp.taxon_id, p, got, store, state, report):
                    need -= 1
                    held[sp.name] += 1
                    bar.update(1)
                    store.save(every=MANIFEST_EVERY_S)
        return need

    try:
        short = walk(True, need_genus)
        walk(True, walk(False, need_other + short))
    finally:
        bar.close()
        store.save()


def _assign_exposure_splits(cfg: Config, batch: list[ExposurePhoto], store: PhotoStore,
                            state: SplitState) -> tuple[list[tuple[Species, PlannedPhoto]], dict[int, Path]]:
    """(fetch jobs, complete files a killed run left) for a batch of exposure photos, each species
    split by observation as the study's species are; the decisions are saved once for the batch."""
    species: dict[str, Species] = {}
    orphans: dict[int, Path] = {}
    for name, photos in _group(batch, lambda c: c.species).items():
        sp = species[name] = _exposure_species(name, photos[0].taxon_id)
        found = {as_id(pid): path for pid, path in store.unlisted(sp).items() if as_id(pid) is not None}
        assign_splits(cfg, sp, [c.photo for c in photos], store, state, found, save=False)
        orphans.update(found)
    state.save(store)
    return [(species[c.species], c.photo) for c in batch], orphans


def _count_exposure(store: PhotoStore, graded: _Graded, study_genera, report: IngestReport) -> None:
    """The exposure counts of the report (its one summary line), from the manifest as it is now."""
    rows = _exposure_rows(store, graded)
    names = {r["species"] for r in rows}
    report.exposure_species |= names
    if not rows and not report.exposure_species:
        return
    touched = report.exposure_species
    genera = set(study_genera)
    report.exposure.update(
        photos=len(rows), species=len(names), genera=len({n.split()[0] for n in names}),
        study_genera=sum(1 for r in rows if r["species"].split()[0] in genera),
        added=sum(report.added[n] for n in touched), skipped_license=sum(report.skipped_license[n] for n in touched),
        failed=sum(report.failed[n] for n in touched), duplicates=sum(report.duplicates[n] for n in touched))
