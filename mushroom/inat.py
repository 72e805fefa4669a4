"""The iNaturalist API v1 as the downloader (download.py) uses it: sessions, the few calls it makes,
paging, and failures as one-sentence errors.

Everything goes through pyinaturalist's ClientSession (rate limit, retries with backoff, a
User-Agent naming the project). pyinaturalist 0.21 has no base-URL setting, so the API base URL
comes from config (data.api_base_url) and is handed to its request/paginator helpers; tests point
it at a local fake server. Its caches stay in memory and disabled: the SQLite cache would
otherwise store every photo.
"""
from __future__ import annotations

import ipaddress
import json
import logging
from fractions import Fraction
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
from urllib3.util import Retry

from mushroom.config import Config
from mushroom.errors import ConfigError, NetworkError

OBSERVATION_URL = "https://www.inaturalist.org/observations/{}"
# pyinaturalist retries 500-504 only; iNaturalist answers 429 when a client goes too fast.
RETRY_STATUSES = (429, 500, 502, 503, 504)
# Photos come from a static file host, not the API: download_workers bounds them, and this
# ceiling keeps a fast link polite.
PHOTO_REQUESTS_PER_SECOND = 20
TAXA_PER_REQUEST = 30
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
        found = self.taxa_named(name)
        return found[0] if found else None

    def taxa_named(self, name: str, rank: str | None = None) -> list[dict]:
        """Every taxon called exactly `name` (of `rank` if given): the search also answers near misses,
        and one name can be a fungus genus and an animal genus at once."""
        params = dict(q=name, per_page=30) | ({"rank": rank} if rank else {})
        data = self.get_json(f"{self.base}/taxa", **params)
        return [t for t in data.get("results") or [] if isinstance(t, dict) and as_id(t.get("id"))
                and str(t.get("name", "")).strip().lower() == name.lower() and (rank is None or t.get("rank") == rank)]

    def observations(self, taxon_id: int, **filters) -> Iterator[dict]:
        """Observations of a taxon (and its descendants) with photos, ascending by id, one page per
        request (id_above); `filters`: more API parameters, e.g. without_taxon_id, over the configured ones."""
        d = self.cfg.data
        params = dict(taxon_id=taxon_id, photos=True,
                      # pyinaturalist (and the API) want licenses uppercase; photos report them lowercase.
                      photo_license=[lic.upper() for lic in d.licenses])
        if d.quality_grade != "any":
            params["quality_grade"] = d.quality_grade
        if d.place_id is not None:
            params["place_id"] = d.place_id
        params.update(filters)
        return iter(JsonIDRangePaginator(self.get_json, f"{self.base}/observations", per_page=d.per_page,
                                         order="asc", **params))


def as_id(value) -> int | None:
    """A positive integer id from the API, or None: ids name files, so nothing else may pass."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value) if int(value) > 0 else None
    return None


def is_inat_row(row: dict) -> bool:
    return str(row.get("observation_url", "")).startswith(OBSERVATION_URL.format(""))


def photos_of(obs: dict) -> list[dict]:
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


class PhotoFailed(Exception):
    """A photo that could not be fetched: `reason` in a few words; `retry` when another attempt may
    succeed (the transfer broke off); `offline` when its host could not be reached at all."""

    def __init__(self, reason: str, retry: bool = False, offline: bool = False):
        super().__init__(reason)
        self.reason, self.retry, self.offline = reason, retry, offline


def get_photo(session: requests.Session, url: str) -> bytes:
    """A photo's bytes; 429/5xx and refused connections were already retried by the session."""
    try:
        return session.get(url).content
    except requests.exceptions.RetryError as exc:
        raise PhotoFailed(_reason(exc)) from None
    except requests.HTTPError as exc:
        raise PhotoFailed(f"HTTP {exc.response.status_code if exc.response is not None else '?'}") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise PhotoFailed(_reason(exc), offline=True) from None
    except requests.RequestException as exc:  # e.g. the body ended before its Content-Length
        raise PhotoFailed(f"the transfer broke off ({exc.__class__.__name__})", retry=True) from None
