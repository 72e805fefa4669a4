"""What downloading the study's photos and the exposure photos share: the planned photo, the split
state saved beside the manifest, taxon resolution, license filtering, split assignment, and the
parallel fetch that stores each photo only once complete and decodable (download.py and
exposure_download.py use it).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from pyinaturalist import ClientSession

from mushroom.config import Config
from mushroom.errors import NetworkError, UserError
from mushroom.images import BadImage
from mushroom.ingest import IngestReport, Photo, PhotoStore, verified
from mushroom.inat import OBSERVATION_URL, INatAPI, PhotoFailed, as_id, get_photo, photos_of, sized_url
from mushroom.manifest import SPLITS
from mushroom.species import Species

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

def resolve_taxa(api: INatAPI, species: list[Species], report: IngestReport) -> dict[str, int]:
    """species name -> iNaturalist taxon id to download; warns when the configured name and id disagree.
    A species without a taxon id (evaluation_species may leave it null) is looked up by its name."""
    found = api.taxa_by_id([s.taxon_id for s in species if s.taxon_id is not None])
    out: dict[str, int] = {}
    for sp in species:
        if sp.taxon_id is None:
            tid = taxon_id_by_name(api, sp.name)
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

def taxon_id_by_name(api: INatAPI, name: str) -> int | None:
    """The taxon id of `name`; an inactive taxon (renamed or merged) gives its current synonym."""
    taxon = api.taxon_named(name)
    if taxon is None:
        return None
    synonyms = [as_id(t) for t in taxon.get("current_synonymous_taxon_ids") or [] if as_id(t)]
    return synonyms[0] if taxon.get("is_active") is False and synonyms else as_id(taxon["id"])

def check_reachable(p: PlannedPhoto, got: Fetched, unreachable: int) -> int:
    """Photos in a row whose host could not be reached, counting `got`; stops the run at OFFLINE_AFTER."""
    unreachable = unreachable + 1 if got.offline else 0
    if unreachable >= OFFLINE_AFTER:
        host = urlparse(p.url).netloc
        raise NetworkError(f"could not download photos from {host} ({got.error}, {unreachable} in a "
                           f"row); check the internet connection and rerun, the download resumes "
                           f"where it stopped")
    return unreachable

def record_photo(sp: Species, taxon_id: int, p: PlannedPhoto, got: Fetched, store: PhotoStore, state: SplitState,
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

def eligible(cfg: Config, sp: Species, obs: dict, per_obs: Counter, seen: set[int], store: PhotoStore,
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

def assign_splits(cfg: Config, sp: Species, plan: list[PlannedPhoto], store: PhotoStore, state: SplitState,
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

def fetch_jobs(cfg: Config, session: ClientSession, store: PhotoStore, jobs: list[tuple[Species, PlannedPhoto]],
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
