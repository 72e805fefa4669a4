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

Then the outlier-exposure photos: exposure_download.py.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterator

from pyinaturalist import ClientSession
from tqdm import tqdm

from mushroom.config import Config
from mushroom.exposure_download import download_exposure
from mushroom.inat import INatAPI, as_id, check_api_settings, is_inat_row, make_session
from mushroom.ingest import IngestReport, PhotoStore
from mushroom.manifest import species_roles
from mushroom.photo_fetch import (MANIFEST_EVERY_S, Fetched, PlannedPhoto, SplitState, assign_splits, check_reachable,
                                  eligible, fetch_jobs, record_photo, resolve_taxa)
from mushroom.species import Species, import_species, selected_species, unknown_species


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
                plan += eligible(cfg, sp, obs, per_obs, seen, store, state, report, cap - count - len(plan))
            if not plan:
                break
            assign_splits(cfg, sp, plan, store, state, orphans)
            unreachable = 0
            for p, got in _fetch_all(cfg, session, store, sp, plan, orphans):
                unreachable = check_reachable(p, got, unreachable)
                if record_photo(sp, taxon_id, p, got, store, state, report):
                    count += 1
                    bar.update(1)
                    store.save(every=MANIFEST_EVERY_S)
    finally:
        bar.close()

def _fetch_all(cfg: Config, session: ClientSession, store: PhotoStore, sp: Species, plan: list[PlannedPhoto],
               orphans: dict[int, Path]) -> Iterator[tuple[PlannedPhoto, Fetched]]:
    """Fetch photos of one species with bounded concurrency; results come back in plan order (deterministic)."""
    for (_, p), got in fetch_jobs(cfg, session, store, [(sp, p) for p in plan], orphans):
        yield p, got
