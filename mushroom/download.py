"""iNaturalist -> data/: research-grade observations of the configured species, openly licensed photos.

    report = download_dataset(cfg, "data")
    print(report.summary())

Which species: species.import_species, the ones the model learns (data.species_subset, at most
data.max_photos_per_species photos each) and the unknown ones, only ever evaluated
(open_set.unknown_species, at most open_set.max_photos_per_species each). The manifest does not say
which is which: the config decides when the data is used. Taxa are verified or looked up by name
first (inat.resolve_taxa).

Each species: list observations with photos in ascending id order (inat.INatAPI), keep at most
data.max_photos_per_observation photos per observation and the species' cap, each photo checked
against data.licenses by its own license_code, and fetch them at data.photo_size with
data.download_workers threads. Splits are made by observation (ingest.PhotoStore.assign) and written
to data/.inat-splits.json before any photo is fetched, so a resumed run puts every photo where an
uninterrupted run would have.

Resumable: photos are stored through ingest.PhotoStore (final name only once complete and
decodable); the manifest is rewritten every few seconds and after each species; a rerun adopts
complete files a killed run left behind, fetches only what is missing and never duplicates a row.

Then the outlier-exposure photos (download_exposure; open_set.exposure_download, 0 = none): up to
that many openly licensed photos of research-grade Fungi (taxon 47170) of species in neither
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
import os
import random
import re
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from math import ceil
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from pyinaturalist import ClientSession
from tqdm import tqdm

from mushroom.config import Config
from mushroom.errors import NetworkError, UserError
from mushroom.images import BadImage
from mushroom.ingest import IngestReport, Photo, PhotoStore, verified
from mushroom.inat import (OBSERVATION_URL, INatAPI, PhotoFailed, as_id, check_api_settings, get_photo,
                           is_inat_row, make_session, photos_of, sized_url)
from mushroom.manifest import SPLITS, species_roles
from mushroom.species import (Species, all_species, evaluation_species, folder_name, graded_species, import_species,
                              selected_species, unknown_species)

STATE_NAME = ".inat-splits.json"
MANIFEST_EVERY_S = 5.0
OFFLINE_AFTER = 3  # photos in a row whose host cannot be reached: the network is down, stop


@dataclass
class PlannedPhoto:
    photo_id: int
    observation_id: int
    url: str
    license_code: str
    attribution: str
    observer: str
    split: str = ""


@dataclass
class Fetched:
    photo: Photo | None = None
    error: str = ""
    offline: bool = False  # the photo host could not be reached at all


class SplitState:
    """What the manifest cannot hold, saved beside it (STATE_NAME): the split decided for every
    observation planned so far, and the photo ids found to repeat stored bytes, per species."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / STATE_NAME
        self.splits: dict[str, dict[str, str]] = {}
        self.duplicates: dict[str, list[int]] = {}
        if not self.path.is_file():
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            for sp, groups in raw.get("splits", {}).items():
                self.splits[str(sp)] = {str(g): s for g, s in groups.items() if s in SPLITS}
            for sp, ids in raw.get("duplicates", {}).items():
                self.duplicates[str(sp)] = [n for n in map(as_id, ids) if n is not None]
        except (ValueError, AttributeError, TypeError):
            raise UserError(f"{self.path} is damaged: rerun with --force to download the selected species "
                            f"again") from None

    def forget(self, species: list[Species]) -> None:
        for sp in species:
            self.splits.pop(sp.name, None)
            self.duplicates.pop(sp.name, None)

    def save(self, store: PhotoStore) -> None:
        state = {"splits": self.splits, "duplicates": self.duplicates}
        store.write(self.path, json.dumps(state, indent=1, sort_keys=True).encode())


def download_dataset(cfg: Config, data_dir: str | os.PathLike, force: bool = False,
                     progress: bool = True) -> IngestReport:
    """Download the known and unknown species (species.import_species), then the exposure photos
    (download_exposure), into data_dir (resumable); `force` forgets and refetches what earlier
    iNaturalist runs stored there for these species and, unless open_set.exposure_download is 0,
    the exposure photos."""
    check_api_settings(cfg)
    species = import_species(cfg)
    caps = {s.name: cfg.data.max_photos_per_species for s in selected_species(cfg)}
    caps |= {s.name: cfg.open_set.max_photos_per_species for s in unknown_species(cfg)}
    store = PhotoStore(data_dir, {s.name for s in species})
    report = IngestReport(store.data_dir, grouped_by="observation", roles=species_roles(cfg))
    state = SplitState(store.data_dir)
    ours = [r for r in store.rows if r["species"] in store.scope and is_inat_row(r)]
    if force:
        store.remove(ours)
        for sp in species:  # files of a killed run that no row names
            for pid, path in store.unlisted(sp).items():
                if as_id(pid) is not None:
                    path.unlink()
        state.forget(species)
        state.save(store)
    else:
        _drop_missing(store, ours, report)
    api_session, photo_session = make_session(cfg), make_session(cfg, photos=True)
    try:
        with api_session.cache_disabled(), photo_session.cache_disabled():
            api = INatAPI(cfg, api_session)
            taxa = resolve_taxa(api, species, report)
            for sp in species:
                if sp.name in taxa:
                    _download_species(cfg, sp, taxa[sp.name], caps[sp.name], api, photo_session, store, state,
                                      report, progress)
                    store.save()
            download_exposure(cfg, api, photo_session, store, state, report, taxa, force, progress)
    finally:
        store.save()
        api_session.close()
        photo_session.close()
    report.rows = store.rows
    return report


def resolve_taxa(api: INatAPI, species: list[Species], report: IngestReport) -> dict[str, int]:
    """species name -> iNaturalist taxon id to download; warns when the configured name and id disagree.
    A species without a taxon id (evaluation_species may leave it null) is looked up by its name."""
    found = api.taxa_by_id([s.taxon_id for s in species if s.taxon_id is not None])
    out: dict[str, int] = {}
    for sp in species:
        if sp.taxon_id is None:
            tid = _taxon_id_by_name(api, sp.name)
            if tid is None:
                report.warn(f"{sp.name}: no iNaturalist taxon has this name; skipped (check the name, or set "
                            f"its taxon_id in evaluation_species)")
            else:
                out[sp.name] = tid
                report.notes.append(f"{sp.name}: no taxon id in the config; using {tid}, the iNaturalist taxon "
                                    f"of that name")
            continue
        taxon = found.get(sp.taxon_id)
        if taxon is None:
            named = api.taxon_named(sp.name)
            if named is None:
                report.warn(f"{sp.name}: neither taxon id {sp.taxon_id} nor the name is on iNaturalist; "
                            f"skipped (fix species[].taxon_id in the config)")
                continue
            out[sp.name] = as_id(named["id"])
            report.warn(f"{sp.name}: taxon id {sp.taxon_id} is not on iNaturalist; using {out[sp.name]}, "
                        f"the taxon of that name (update the config)")
            continue
        synonyms = [as_id(t) for t in taxon.get("current_synonymous_taxon_ids") or [] if as_id(t)]
        if taxon.get("is_active") is False and synonyms:
            out[sp.name] = synonyms[0]
            report.warn(f"{sp.name}: taxon id {sp.taxon_id} is inactive on iNaturalist; using its current "
                        f"synonym {synonyms[0]} (update the config)")
            continue
        out[sp.name] = sp.taxon_id
        remote = str(taxon.get("name", ""))
        if remote.strip().lower() != sp.name.lower():
            named = api.taxon_named(sp.name)
            other = f", and {sp.name!r} is taxon {named['id']}" if named and as_id(named["id"]) != sp.taxon_id else ""
            report.warn(f"{sp.name}: taxon id {sp.taxon_id} is named {remote[:80]!r} on iNaturalist{other}; "
                        f"keeping the configured id, check the config")
    return out


def _taxon_id_by_name(api: INatAPI, name: str) -> int | None:
    """The taxon id of `name`; an inactive taxon (renamed or merged) gives its current synonym."""
    taxon = api.taxon_named(name)
    if taxon is None:
        return None
    synonyms = [as_id(t) for t in taxon.get("current_synonymous_taxon_ids") or [] if as_id(t)]
    return synonyms[0] if taxon.get("is_active") is False and synonyms else as_id(taxon["id"])


def _drop_missing(store: PhotoStore, rows: list[dict], report: IngestReport) -> None:
    """Drop rows whose file is gone, so they are fetched again."""
    gone = [r for r in rows if not (store.data_dir / r["path"]).is_file()]
    store.remove(gone)
    for name, n in sorted(Counter(r["species"] for r in gone).items()):
        report.warn(f"{name}: {n} photo(s) listed in the manifest are missing on disk; fetching them again")


def _download_species(cfg: Config, sp: Species, taxon_id: int, cap: int, api: INatAPI, session: ClientSession,
                      store: PhotoStore, state: SplitState, report: IngestReport, progress: bool) -> None:
    """Up to `cap` photos of one species (data.max_photos_per_species, or open_set's for an unknown one)."""
    have = store.species_rows(sp.name)
    report.kept[sp.name] += len(have)
    if len(have) >= cap:
        return
    count = len(have)
    per_obs = Counter(str(r["observation_id"]) for r in have)
    orphans = {as_id(pid): path for pid, path in store.unlisted(sp).items() if as_id(pid) is not None}
    observations = api.observations(taxon_id)
    seen: set[int] = set()
    exhausted = False
    bar = tqdm(total=cap, initial=count, desc=sp.name, unit="photo", disable=not progress, leave=True)
    try:
        while count < cap and not exhausted:
            plan: list[PlannedPhoto] = []
            while count + len(plan) < cap:
                obs = next(observations, None)
                if obs is None:
                    exhausted = True
                    break
                plan += _eligible(cfg, sp, obs, per_obs, seen, store, state, report, cap - count - len(plan))
            if not plan:
                break
            _assign_splits(cfg, sp, plan, store, state, orphans)
            unreachable = 0
            for p, got in _fetch_all(cfg, session, store, sp, plan, orphans):
                unreachable = _check_reachable(p, got, unreachable)
                if _record(sp, taxon_id, p, got, store, state, report):
                    count += 1
                    bar.update(1)
                    store.save(every=MANIFEST_EVERY_S)
    finally:
        bar.close()


def _check_reachable(p: PlannedPhoto, got: Fetched, unreachable: int) -> int:
    """Photos in a row whose host could not be reached, counting `got`; stops the run at OFFLINE_AFTER."""
    unreachable = unreachable + 1 if got.offline else 0
    if unreachable >= OFFLINE_AFTER:
        host = urlparse(p.url).netloc
        raise NetworkError(f"could not download photos from {host} ({got.error}, {unreachable} in a "
                           f"row); check the internet connection and rerun, the download resumes "
                           f"where it stopped")
    return unreachable


def _record(sp: Species, taxon_id: int, p: PlannedPhoto, got: Fetched, store: PhotoStore, state: SplitState,
            report: IngestReport) -> bool:
    """Book one fetched photo: True when it became a manifest row; a failure or bytes stored
    already under another photo id are counted (and the latter remembered) instead."""
    if got.error:
        report.failed[sp.name] += 1
        report.failures.append(f"{sp.name} photo {p.photo_id} ({p.url}): {got.error}")
        return False
    if not store.claim(got.photo.sha256):  # the same bytes under another photo id
        store.path(p.split, sp, p.photo_id).unlink(missing_ok=True)
        state.duplicates.setdefault(sp.name, []).append(p.photo_id)
        state.save(store)  # so a rerun does not fetch it again to find out
        report.duplicates[sp.name] += 1
        return False
    store.add(store.row(sp, p.photo_id, p.observation_id, p.split, got.photo, taxon_id, url=p.url,
                        license_code=p.license_code, attribution=p.attribution, observer=p.observer,
                        observation_url=OBSERVATION_URL.format(p.observation_id)))
    report.added[sp.name] += 1
    return True


def _eligible(cfg: Config, sp: Species, obs: dict, per_obs: Counter, seen: set[int], store: PhotoStore,
              state: SplitState, report: IngestReport, room: int) -> list[PlannedPhoto]:
    """The photos of one observation to fetch: new, openly licensed, within the per-observation cap."""
    d = cfg.data
    oid = as_id(obs.get("id")) if isinstance(obs, dict) else None
    if oid is None:
        return []
    login = str((obs.get("user") or {}).get("login") or "")
    out: list[PlannedPhoto] = []
    for photo in photos_of(obs):
        if per_obs[str(oid)] >= d.max_photos_per_observation or len(out) >= room:
            break
        pid = as_id(photo.get("id"))
        if pid is None:
            continue
        if pid in seen or str(pid) in store.photo_ids or pid in state.duplicates.get(sp.name, ()):
            report.duplicates[sp.name] += pid in seen  # a photo already stored is not news; one seen twice now is
            continue
        seen.add(pid)
        license_code = str(photo.get("license_code") or "").strip().lower()
        if license_code not in d.licenses:  # null = all rights reserved; -nd is never configurable
            report.skipped_license[sp.name] += 1
            continue
        url = sized_url(photo, d.photo_size)
        if url is None:
            report.failed[sp.name] += 1
            report.failures.append(f"{sp.name} photo {pid}: no usable URL in the API answer")
            continue
        out.append(PlannedPhoto(pid, oid, url, license_code, str(photo.get("attribution") or ""), login))
        per_obs[str(oid)] += 1
    return out


def _assign_splits(cfg: Config, sp: Species, plan: list[PlannedPhoto], store: PhotoStore, state: SplitState,
                   orphans: dict[int, Path], save: bool = True) -> None:
    """Give each planned photo its observation's split and save the decision before any fetch
    (`save` False: the caller saves once for many species)."""
    decided = state.splits.setdefault(sp.name, {})
    fixed = dict(decided)
    for p in plan:  # a complete file a killed run left behind keeps its split
        if p.photo_id in orphans:
            fixed.setdefault(str(p.observation_id), orphans[p.photo_id].parent.parent.name)
    splits = store.assign(cfg, sp.name, Counter(str(p.observation_id) for p in plan), fixed)
    for p in plan:
        p.split = decided[str(p.observation_id)] = splits[str(p.observation_id)]
    if save:
        state.save(store)


def _fetch_all(cfg: Config, session: ClientSession, store: PhotoStore, sp: Species, plan: list[PlannedPhoto],
               orphans: dict[int, Path]) -> Iterator[tuple[PlannedPhoto, Fetched]]:
    """Fetch photos of one species with bounded concurrency; results come back in plan order (deterministic)."""
    for (_, p), got in _fetch_jobs(cfg, session, store, [(sp, p) for p in plan], orphans):
        yield p, got


def _fetch_jobs(cfg: Config, session: ClientSession, store: PhotoStore, jobs: list[tuple[Species, PlannedPhoto]],
                orphans: dict[int, Path]) -> Iterator[tuple[tuple[Species, PlannedPhoto], Fetched]]:
    """_fetch_all for photos of any species (the exposure photos), in job order."""
    pool = ThreadPoolExecutor(max_workers=cfg.data.download_workers, thread_name_prefix="photo")
    try:
        futures = [pool.submit(fetch_photo, session, store, p.url, store.path(p.split, sp, p.photo_id),
                               orphans.get(p.photo_id), cfg.data.max_retries, cfg.data.retry_backoff_s)
                   for sp, p in jobs]
        for job, fut in zip(jobs, futures):
            yield job, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def fetch_photo(session: ClientSession, store: PhotoStore, url: str, target: Path, leftover: Path | None = None,
                retries: int = 3, backoff: float = 0.5) -> Fetched:
    """Store one photo at `target` once its bytes decode completely.

    Bytes that are not a complete image and transfers that break off are retried here with
    backoff; 429/5xx and refused connections were already retried by the session's adapter, so
    they fail at once. `leftover` is a complete file an interrupted run stored (possibly under
    another split): it is checked and moved instead of downloaded again.
    """
    if leftover is not None and leftover.is_file():
        photo = store.adopt(leftover, target)
        if photo is not None:
            return Fetched(photo)
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            data, photo = verified(get_photo(session, url), "photo")
        except BadImage:
            error = "the server sent bytes that are not a complete image"
            continue
        except PhotoFailed as exc:
            if exc.retry:
                error = exc.reason
                continue
            return Fetched(error=exc.reason, offline=exc.offline)
        store.write(target, data)
        return Fetched(photo)
    return Fetched(error=error)


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
            tid = _taxon_id_by_name(api, sp.name)
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
        for p in _eligible(cfg, sp, obs, per_obs, seen_photos, store, state, report, d.max_photos_per_observation):
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
    Splits are decided per species by observation (_assign_splits) and saved before any fetch."""
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
            for (sp, p), got in _fetch_jobs(cfg, session, store, jobs, orphans):
                unreachable = _check_reachable(p, got, unreachable)
                if _record(sp, sp.taxon_id, p, got, store, state, report):
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
        _assign_splits(cfg, sp, [c.photo for c in photos], store, state, found, save=False)
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
