"""iNaturalist -> data/: verified taxa, research-grade observations, openly licensed photos.

    report = download_dataset(cfg, "data")
    print(report.summary())

Everything goes through pyinaturalist's ClientSession (rate limit, retries with backoff, a
User-Agent naming the project). pyinaturalist 0.21 has no base-URL setting, so the API base URL
comes from config (data.api_base_url) and is handed to its request/paginator helpers; tests point
it at a local fake server. Its caches stay in memory and disabled: the SQLite cache would
otherwise store every photo.

Which species: species.import_species, the ones the model learns (data.species_subset, at most
data.max_photos_per_species photos each) and the unknown ones, only ever evaluated
(open_set.unknown_species, at most open_set.max_photos_per_species each). The manifest does not say
which is which: the config decides when the data is used. An evaluation species without a taxon id
is looked up by its name; one iNaturalist does not know is skipped with a warning.

Each species: verify its taxon id, list observations with photos in ascending id order (paging
with id_above), keep at most data.max_photos_per_observation photos per observation and the
species' cap, each photo checked against data.licenses by its own
license_code, and download them at data.photo_size with data.download_workers threads. Splits
are made by observation (mushroom.splits) and written to data/.inat-splits.json before any photo
is fetched, so a resumed run puts every photo where an uninterrupted run would have.

Resumable: files get their final name only once complete and decodable; the manifest is rewritten
atomically every few seconds and after each species; a rerun adopts complete files a killed run
left behind, fetches only what is missing and never duplicates a row.
"""
from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import requests
import urllib3
from pyinaturalist import ClientSession
from pyinaturalist.constants import REQUEST_BURST_RATE, REQUESTS_PER_DAY
from pyinaturalist.models import Photo
from pyinaturalist.paginator import JsonIDRangePaginator
from pyinaturalist.session import get as inat_get
from pyrate_limiter import BucketFullException, Limiter, MemoryListBucket, RequestRate
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util import Retry

from mushroom.config import Config
from mushroom.errors import ConfigError, NetworkError, UserError
from mushroom.images import BadImage, atomic_write, decode, describe_bytes, remove_partials
from mushroom.manifest import (SPLITS, UNKNOWN, counts_table, manifest_path, read_manifest, species_roles,
                               write_manifest)
from mushroom.species import Species, import_species, selected_species, unknown_species
from mushroom.splits import assign_splits

log = logging.getLogger(__name__)

OBSERVATION_URL = "https://www.inaturalist.org/observations/{}"
# pyinaturalist retries 500-504 only; iNaturalist answers 429 when a client goes too fast.
RETRY_STATUSES = (429, 500, 502, 503, 504)
# Photos come from a static file host, not the API: download_workers bounds them, and this
# ceiling keeps a fast link polite.
PHOTO_REQUESTS_PER_SECOND = 20
TAXA_PER_REQUEST = 30
STATE_NAME = ".inat-splits.json"
MANIFEST_EVERY_S = 5.0
OFFLINE_AFTER = 3  # photos in a row whose host cannot be reached: the network is down, stop
OFFLINE_HINT = "run download_data.py --from-folder DIR to import photos you already have (works offline)"

# The paginator warns about "large requests" from the total count, although we stop at the cap.
logging.getLogger("pyinaturalist.paginator").setLevel(logging.ERROR)


# --- sessions ---------------------------------------------------------------------------------
def check_api_settings(cfg: Config) -> None:
    """The API URL must be http(s); rates above iNaturalist's 1/s and 60/min only for a local server."""
    d = cfg.data
    url = urlparse(d.api_base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"config key 'data.api_base_url' must be an http(s) URL, got {d.api_base_url!r}")
    if (d.requests_per_second > 1.0 or d.requests_per_minute > 60) and not _is_loopback(url.hostname):
        raise ConfigError(
            f"config keys 'data.requests_per_second' and 'data.requests_per_minute' must stay at or below "
            f"1 and 60 for {url.hostname} (iNaturalist's limits); higher rates are for a local test server only")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_session(cfg: Config, photos: bool = False) -> ClientSession:
    """A pyinaturalist ClientSession for the API (config rate limits) or for photos.

    Cache and rate-limit state live in memory (no files in the home folder or the repository);
    retries cover 429 and 5xx with exponential backoff on http:// as well as https://, because
    pyinaturalist mounts its retry adapter on https only and tests use http://127.0.0.1.
    """
    d = cfg.data
    if photos:
        limiter = make_limiter(PHOTO_REQUESTS_PER_SECOND)
    else:
        limiter = make_limiter(d.requests_per_second, d.requests_per_minute, REQUESTS_PER_DAY)
    session = ClientSession(use_memory=True, bucket_class=MemoryListBucket, ratelimit_path=None, limiter=limiter,
                            max_retries=d.max_retries, backoff_factor=d.retry_backoff_s,
                            timeout=d.timeout_s, user_agent=d.user_agent)
    # Connection failures get at most two retries: a machine without network should hear so in seconds.
    retry = Retry(total=d.max_retries, connect=min(d.max_retries, 2), backoff_factor=d.retry_backoff_s,
                  status_forcelist=RETRY_STATUSES, allowed_methods=("GET",), respect_retry_after_header=True)
    session.retries = retry  # pyinaturalist reuses it for truncated-JSON retries
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=max(10, d.download_workers))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if photos:
        session.headers["Accept"] = "image/jpeg,image/*;q=0.9"
    return session


def make_limiter(per_second: float, per_minute: float = 0, per_day: float = 0) -> Limiter:
    """An in-memory limiter: bursts of REQUEST_BURST_RATE at `per_second`, within `per_minute` and
    `per_day` (0 = no such limit). A rate implied by a stricter, longer one is left out, because
    pyrate_limiter refuses a longer interval with a smaller or equal count."""
    rates: list[RequestRate] = []
    for limit, interval in ((per_second * REQUEST_BURST_RATE, REQUEST_BURST_RATE), (per_minute, 60),
                            (per_day, 86400)):
        if not limit:
            continue
        frac = Fraction(limit).limit_denominator(1000)
        rate = RequestRate(frac.numerator, interval * frac.denominator)
        while rates and (rates[-1].limit >= rate.limit or rates[-1].interval >= rate.interval):
            rates.pop()
        rates.append(rate)
    return Limiter(*rates, bucket_class=MemoryListBucket)


def _reason(exc: BaseException) -> str:
    """A few words on why a request failed (requests' own messages run to several lines)."""
    text = repr(exc)
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if "NameResolution" in text or "Name or service not known" in text or "name resolution" in text:
        return "the host name could not be resolved"
    if isinstance(exc, requests.exceptions.RetryError):
        inner = getattr(exc.args[0], "reason", None) if exc.args else None
        return str(inner or "too many error responses")
    return exc.__class__.__name__


class INatAPI:
    """The few iNaturalist API v1 calls the downloader makes, with failures as one-sentence errors."""

    def __init__(self, cfg: Config, session: ClientSession):
        self.cfg = cfg
        self.base = cfg.data.api_base_url.rstrip("/")
        self.session = session

    def get_json(self, url: str, missing_ok: bool = False, **params) -> dict:
        """The JSON answer to a GET; `missing_ok`: a 404 is an empty result, not an error."""
        try:
            return inat_get(url, session=self.session, **params).json()
        except requests.exceptions.RetryError as exc:
            raise NetworkError(f"the iNaturalist API at {self.base} kept failing ({_reason(exc)}) after "
                               f"{self.cfg.data.max_retries} retries; wait a while and rerun, the download "
                               f"resumes where it stopped") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise NetworkError(f"could not reach the iNaturalist API at {self.base} ({_reason(exc)}); check the "
                               f"internet connection, or {OFFLINE_HINT}") from None
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            if code == 404 and missing_ok:
                return {"results": []}
            raise NetworkError(f"the iNaturalist API at {self.base} refused {urlparse(url).path} with HTTP {code}; "
                               f"check data.api_base_url and the data settings in the config") from None
        except (json.JSONDecodeError, requests.exceptions.InvalidJSONError):  # after pyinaturalist's retries
            raise NetworkError(f"the iNaturalist API at {self.base} answered {urlparse(url).path} with something "
                               f"that is not JSON; check data.api_base_url") from None
        except BucketFullException:
            raise NetworkError(f"this run reached the request limit it keeps for {self.base} (at most "
                               f"{REQUESTS_PER_DAY} a day); rerun tomorrow, the download resumes where it "
                               f"stopped") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:  # a broken-off answer
            raise NetworkError(f"the iNaturalist API at {self.base} broke off its answer ({_reason(exc)}); "
                               f"rerun, the download resumes where it stopped") from None

    def taxa_by_id(self, ids: list[int]) -> dict[int, dict]:
        found: dict[int, dict] = {}
        for i in range(0, len(ids), TAXA_PER_REQUEST):
            chunk = ids[i:i + TAXA_PER_REQUEST]
            data = self.get_json(f"{self.base}/taxa/{','.join(str(t) for t in chunk)}", missing_ok=True)
            for taxon in data.get("results") or []:
                tid = as_id(taxon.get("id"))
                if tid is not None:
                    found[tid] = taxon
        return found

    def taxon_named(self, name: str) -> dict | None:
        data = self.get_json(f"{self.base}/taxa", q=name, per_page=30)
        for taxon in data.get("results") or []:
            if str(taxon.get("name", "")).strip().lower() == name.lower() and as_id(taxon.get("id")):
                return taxon
        return None

    def observations(self, taxon_id: int) -> Iterator[dict]:
        """Observations of a taxon with photos, ascending by id, one page per request (id_above)."""
        d = self.cfg.data
        params = dict(taxon_id=taxon_id, photos=True,
                      # pyinaturalist (and the API) want licenses uppercase; photos report them lowercase.
                      photo_license=[lic.upper() for lic in d.licenses])
        if d.quality_grade != "any":
            params["quality_grade"] = d.quality_grade
        if d.place_id is not None:
            params["place_id"] = d.place_id
        return iter(JsonIDRangePaginator(self.get_json, f"{self.base}/observations", per_page=d.per_page,
                                         order="asc", **params))


# --- what one run found and did ----------------------------------------------------------------
@dataclass
class DownloadReport:
    data_dir: Path
    rows: list[dict] = field(default_factory=list)          # the whole manifest after the run
    added: Counter = field(default_factory=Counter)          # species -> photos stored by this run
    skipped_license: Counter = field(default_factory=Counter)  # species -> photos refused for their license
    failed: Counter = field(default_factory=Counter)         # species -> photos that could not be fetched
    duplicates: int = 0                                      # same photo id or same bytes reached again
    roles: dict[str, str] = field(default_factory=dict)      # species -> known | unknown (manifest.species_roles)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    def summary(self) -> str:
        lines = [counts_table(self.rows, extra={"new": dict(self.added),
                                                "skipped_license": dict(self.skipped_license),
                                                "failed": dict(self.failed)}, roles=self.roles)]
        if UNKNOWN in self.roles.values():
            lines.append("known: the species the model learns (data.species_subset); "
                         "unknown: evaluation only, never trained (open_set.unknown_species)")
        lines += self.notes
        if self.duplicates:
            lines.append(f"{self.duplicates} photo(s) reached twice (same photo id or same bytes) were stored once")
        for msg in self.failures[:10]:
            lines.append(f"failed: {msg}")
        if len(self.failures) > 10:
            lines.append(f"failed: ... and {len(self.failures) - 10} more")
        if self.failures:
            lines.append("rerun the same command to retry the failed photos")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"manifest: {manifest_path(self.data_dir)} ({len(self.rows)} photos)")
        return "\n".join(lines)


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
    sha256: str = ""
    width: int = 0
    height: int = 0
    error: str = ""
    offline: bool = False  # the photo host could not be reached at all


# --- manifest + split state --------------------------------------------------------------------
class Store:
    """The manifest rows, and the download state (saved beside it in STATE_NAME): the split of every
    observation planned so far and the photos found to repeat stored bytes, per species."""

    def __init__(self, data_dir: Path, rows: list[dict], state: dict, dirty: bool = False):
        self.data_dir = data_dir
        self.rows = rows
        self.splits: dict[str, dict[str, str]] = state["splits"]
        self.duplicates: dict[str, list[int]] = state["duplicates"]
        self.photo_ids = {norm_id(r["photo_id"]) for r in rows}
        self.shas = {r["sha256"] for r in rows if r.get("sha256")}
        self.dirty = dirty
        self.saved_at = time.monotonic()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.photo_ids.add(norm_id(row["photo_id"]))
        self.shas.add(row["sha256"])
        self.dirty = True

    def species_rows(self, species: str) -> list[dict]:
        return [r for r in self.rows if r["species"] == species]

    def save(self, every: float = 0.0) -> None:
        if self.dirty and time.monotonic() - self.saved_at >= every:
            write_manifest(manifest_path(self.data_dir), self.rows)
            self.dirty = False
            self.saved_at = time.monotonic()

    def save_state(self) -> None:
        state = {"splits": self.splits, "duplicates": self.duplicates}
        atomic_write(self.data_dir / STATE_NAME, json.dumps(state, indent=1, sort_keys=True).encode())


def read_state(data_dir: Path) -> dict:
    path = data_dir / STATE_NAME
    state = {"splits": {}, "duplicates": {}}
    if not path.is_file():
        return state
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        for sp, groups in raw.get("splits", {}).items():
            state["splits"][str(sp)] = {str(g): s for g, s in groups.items() if s in SPLITS}
        for sp, ids in raw.get("duplicates", {}).items():
            state["duplicates"][str(sp)] = [n for n in map(as_id, ids) if n is not None]
    except (ValueError, AttributeError, TypeError):
        raise UserError(f"{path} is damaged: rerun with --force to download the selected species again") from None
    return state


def as_id(value) -> int | None:
    """A positive integer id from the API, or None: ids name files, so nothing else may pass."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value) if int(value) > 0 else None
    return None


def norm_id(value) -> str:
    n = as_id(value)
    return str(n) if n is not None else str(value)


def is_inat_row(row: dict) -> bool:
    return str(row.get("observation_url", "")).startswith(OBSERVATION_URL.format(""))


def photo_path(data_dir: Path, split: str, species: Species, photo_id: int) -> Path:
    """data/<split>/<Species_folder>/<photo_id>.jpg, refusing anything that would leave data/."""
    if split not in SPLITS or as_id(photo_id) is None:
        raise UserError(f"refusing to store photo {photo_id!r} in split {split!r}")
    path = data_dir / split / species.folder / f"{int(photo_id)}.jpg"
    if not path.resolve().is_relative_to(data_dir.resolve()):
        raise UserError(f"refusing to write {path}: it lies outside {data_dir}")
    return path


# --- the download ------------------------------------------------------------------------------
def download_dataset(cfg: Config, data_dir: str | os.PathLike, force: bool = False,
                     progress: bool = True) -> DownloadReport:
    """Download the known and unknown species (species.import_species) into data_dir (resumable);
    `force` forgets and refetches what earlier iNaturalist runs stored there for these species."""
    check_api_settings(cfg)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(data_dir)
    species = import_species(cfg)
    caps = {s.name: cfg.data.max_photos_per_species for s in selected_species(cfg)}
    caps |= {s.name: cfg.open_set.max_photos_per_species for s in unknown_species(cfg)}
    report = DownloadReport(data_dir, roles=species_roles(cfg))
    found = read_manifest(manifest_path(data_dir), missing_ok=True)
    state = read_state(data_dir)
    rows = _forget(data_dir, found, state, species) if force else found
    rows = _rows_with_files(data_dir, rows, {s.name for s in species}, report)
    store = Store(data_dir, rows, state, dirty=len(rows) != len(found))
    if force:
        store.save_state()
    api_session, photo_session = make_session(cfg), make_session(cfg, photos=True)
    try:
        with api_session.cache_disabled(), photo_session.cache_disabled():
            api = INatAPI(cfg, api_session)
            taxa = resolve_taxa(api, species, report)
            for sp in species:
                if sp.name in taxa:
                    _download_species(cfg, sp, taxa[sp.name], caps[sp.name], api, photo_session, store, report,
                                      progress)
                    store.save()
    finally:
        store.save()
        api_session.close()
        photo_session.close()
    report.rows = store.rows
    return report


def resolve_taxa(api: INatAPI, species: list[Species], report: DownloadReport) -> dict[str, int]:
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


def _download_species(cfg: Config, sp: Species, taxon_id: int, cap: int, api: INatAPI, session: ClientSession,
                      store: Store, report: DownloadReport, progress: bool) -> None:
    """Up to `cap` photos of one species (data.max_photos_per_species, or open_set's for an unknown one)."""
    d = cfg.data
    have = store.species_rows(sp.name)
    if len(have) >= cap:
        return
    count = len(have)
    per_obs = Counter(norm_id(r["observation_id"]) for r in have)
    orphans = _orphans(store, sp)
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
                plan += _eligible(cfg, sp, obs, per_obs, seen, store, report, cap - count - len(plan))
            if not plan:
                break
            _assign_splits(cfg, sp, plan, store, orphans)
            unreachable = 0
            for p, got in _fetch_all(cfg, session, store.data_dir, sp, plan, orphans):
                unreachable = unreachable + 1 if got.offline else 0
                if unreachable >= OFFLINE_AFTER:
                    host = urlparse(p.url).netloc
                    raise NetworkError(f"could not download photos from {host} ({got.error}, {unreachable} in a "
                                       f"row); check the internet connection and rerun, the download resumes "
                                       f"where it stopped")
                if got.error:
                    report.failed[sp.name] += 1
                    report.failures.append(f"{sp.name} photo {p.photo_id} ({p.url}): {got.error}")
                elif got.sha256 in store.shas:  # the same bytes under another photo id
                    photo_path(store.data_dir, p.split, sp, p.photo_id).unlink(missing_ok=True)
                    store.duplicates.setdefault(sp.name, []).append(p.photo_id)
                    store.save_state()  # so a rerun does not fetch it again to find out
                    report.duplicates += 1
                else:
                    store.add(_row(sp, taxon_id, p, got))
                    report.added[sp.name] += 1
                    count += 1
                    bar.update(1)
                    store.save(every=MANIFEST_EVERY_S)
    finally:
        bar.close()


def _eligible(cfg: Config, sp: Species, obs: dict, per_obs: Counter, seen: set[int], store: Store,
              report: DownloadReport, room: int) -> list[PlannedPhoto]:
    """The photos of one observation to fetch: new, openly licensed, within the per-observation cap."""
    d = cfg.data
    oid = as_id(obs.get("id")) if isinstance(obs, dict) else None
    if oid is None:
        return []
    login = str((obs.get("user") or {}).get("login") or "")
    out: list[PlannedPhoto] = []
    for photo in _photos_of(obs):
        if per_obs[str(oid)] >= d.max_photos_per_observation or len(out) >= room:
            break
        pid = as_id(photo.get("id"))
        if pid is None:
            continue
        if pid in seen or str(pid) in store.photo_ids or pid in store.duplicates.get(sp.name, ()):
            report.duplicates += pid in seen  # a photo already stored is not news; one seen twice now is
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


def _photos_of(obs: dict) -> list[dict]:
    """An observation's photos in the observer's order (observation_photos carry the position)."""
    nested = [op for op in obs.get("observation_photos") or []
              if isinstance(op, dict) and isinstance(op.get("photo"), dict)]
    if nested:
        nested.sort(key=lambda op: op.get("position") if isinstance(op.get("position"), int) else 1 << 30)
        return [op["photo"] for op in nested]
    return [p for p in obs.get("photos") or [] if isinstance(p, dict)]


def sized_url(photo: dict, size: str) -> str | None:
    """The photo's URL at `size`: the API lists `square` (75 px) URLs."""
    url = photo.get("url")
    if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https"):
        return None
    try:
        sized = Photo.from_json({"id": photo.get("id"), "url": url}).url_size(size)
    except (ValueError, KeyError, IndexError):  # braces in a URL break pyinaturalist's str.format
        return None
    return sized if sized and urlparse(sized).scheme in ("http", "https") else None


def _assign_splits(cfg: Config, sp: Species, plan: list[PlannedPhoto], store: Store,
                   orphans: dict[int, Path]) -> None:
    """Give each planned photo its observation's split and save the decision before any fetch."""
    sizes = Counter(norm_id(r["observation_id"]) for r in store.species_rows(sp.name))
    sizes.update(str(p.observation_id) for p in plan)
    decided = store.splits.setdefault(sp.name, {})
    fixed = {(sp.name, g): s for g, s in decided.items()}
    for p in plan:  # a complete file a killed run left behind keeps its split
        if p.photo_id in orphans:
            fixed.setdefault((sp.name, str(p.observation_id)), orphans[p.photo_id].parent.parent.name)
    fixed.update({(sp.name, norm_id(r["observation_id"])): r["split"] for r in store.species_rows(sp.name)})
    splits = assign_splits({(sp.name, g): n for g, n in sizes.items()}, dict(cfg.data.split), cfg.seed, fixed)
    for p in plan:
        p.split = splits[(sp.name, str(p.observation_id))]
        decided[str(p.observation_id)] = p.split
    store.save_state()


def _fetch_all(cfg: Config, session: ClientSession, data_dir: Path, sp: Species, plan: list[PlannedPhoto],
               orphans: dict[int, Path]) -> Iterator[tuple[PlannedPhoto, Fetched]]:
    """Fetch photos with bounded concurrency; results come back in plan order (deterministic)."""
    pool = ThreadPoolExecutor(max_workers=cfg.data.download_workers, thread_name_prefix="photo")
    try:
        futures = [pool.submit(fetch_photo, session, p.url, photo_path(data_dir, p.split, sp, p.photo_id),
                               orphans.get(p.photo_id), cfg.data.max_retries, cfg.data.retry_backoff_s)
                   for p in plan]
        for p, fut in zip(plan, futures):
            yield p, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def fetch_photo(session: requests.Session, url: str, target: Path, leftover: Path | None = None,
                retries: int = 3, backoff: float = 0.5) -> Fetched:
    """Store one photo at `target` once its bytes decode completely.

    Bytes that are not a complete image and transfers that break off are retried here with
    backoff; 429/5xx and refused connections were already retried by the session's adapter, so
    they fail at once. `leftover` is a complete file an interrupted run stored (possibly under
    another split): it is checked and moved instead of downloaded again.
    """
    if leftover is not None and leftover.is_file():
        try:
            sha, w, h = describe_bytes(leftover.read_bytes(), what=str(leftover))
            if leftover != target:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(leftover, target)
            return Fetched(sha, w, h)
        except BadImage:
            leftover.unlink(missing_ok=True)
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            data = as_jpeg(session.get(url).content)
            sha, w, h = describe_bytes(data, what="photo")
        except BadImage:
            error = "the server sent bytes that are not a complete image"
            continue
        except requests.exceptions.RetryError as exc:
            return Fetched(error=_reason(exc))
        except requests.HTTPError as exc:
            return Fetched(error=f"HTTP {exc.response.status_code if exc.response is not None else '?'}")
        except (requests.ConnectionError, requests.Timeout) as exc:
            return Fetched(error=_reason(exc), offline=True)
        except requests.RequestException as exc:  # e.g. the body ended before its Content-Length
            error = f"the transfer broke off ({exc.__class__.__name__})"
            continue
        try:
            atomic_write(target, data)
        except OSError as exc:
            raise UserError(f"could not write {target} ({exc.strerror or exc}); check the disk and rerun") from None
        return Fetched(sha, w, h)
    return Fetched(error=error)


def as_jpeg(data: bytes) -> bytes:
    """JPEG bytes are kept byte for byte; anything else (iNaturalist also hosts PNGs) is checked and
    re-encoded once, so every <photo_id>.jpg is a JPEG. BadImage when the bytes do not decode."""
    if data[:3] == b"\xff\xd8\xff":
        return data
    buf = io.BytesIO()
    decode(data, what="photo").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _row(sp: Species, taxon_id: int, p: PlannedPhoto, got: Fetched) -> dict:
    return {"photo_id": str(p.photo_id), "observation_id": str(p.observation_id), "taxon_id": str(taxon_id),
            "species": sp.name, "split": p.split, "path": f"{p.split}/{sp.folder}/{p.photo_id}.jpg",
            "url": p.url, "license_code": p.license_code, "attribution": p.attribution, "observer": p.observer,
            "observation_url": OBSERVATION_URL.format(p.observation_id), "sha256": got.sha256,
            "width": str(got.width), "height": str(got.height)}


def _orphans(store: Store, sp: Species) -> dict[int, Path]:
    """<photo_id>.jpg files of this species that no manifest row names (a killed run's last photos)."""
    out: dict[int, Path] = {}
    for split in SPLITS:
        folder = store.data_dir / split / sp.folder
        if folder.is_dir():
            for path in sorted(folder.glob("*.jpg")):
                pid = as_id(path.stem)
                if pid is not None and str(pid) not in store.photo_ids:
                    out.setdefault(pid, path)
    return out


def _rows_with_files(data_dir: Path, rows: list[dict], names: set[str], report: DownloadReport) -> list[dict]:
    """Drop iNaturalist rows of the selected species whose file is gone, so they are fetched again."""
    kept, gone = [], Counter()
    for r in rows:
        if r["species"] in names and is_inat_row(r) and not (data_dir / r["path"]).is_file():
            gone[r["species"]] += 1
        else:
            kept.append(r)
    for name, n in sorted(gone.items()):
        report.warn(f"{name}: {n} photo(s) listed in the manifest are missing on disk; fetching them again")
    return kept


def _forget(data_dir: Path, rows: list[dict], state: dict, species: list[Species]) -> list[dict]:
    """--force: delete the files, rows and split decisions earlier iNaturalist runs made for `species`."""
    names = {s.name for s in species}
    kept = []
    for r in rows:
        if r["species"] in names and is_inat_row(r):
            path = data_dir / r["path"]
            if path.resolve().is_relative_to(data_dir.resolve()):
                path.unlink(missing_ok=True)
        else:
            kept.append(r)
    listed = {norm_id(r["photo_id"]) for r in kept}
    for sp in species:
        state["splits"].pop(sp.name, None)
        state["duplicates"].pop(sp.name, None)
        for split in SPLITS:
            for path in (data_dir / split / sp.folder).glob("*.jpg"):
                if as_id(path.stem) is not None and path.stem not in listed:
                    path.unlink()
    return kept
