"""A fake iNaturalist (API v1 + photo host) on 127.0.0.1, built from real recorded API responses.

    with FakeINat() as fake:
        fake.add_taxon(48715, "Amanita muscaria")
        fake.add_observation(48715, [(1011, "cc-by"), (1012, None)], obs_id=101)  # None: all rights reserved
        fake.script(("photo", 1011), "500")                             # next request: 500, then normal
        cfg = load_config(None, [f"data.api_base_url={fake.api_url}", ...])

        genus = fake.add_fungus(900100, "Russula", rank="genus")        # under Fungi (47170)
        fake.add_fungus(900101, "Russula emetica", parent=genus)         # ancestry: Life, Fungi, Russula
        fake.add_observation(900101, [(7011, "cc-by")], obs_id=701)     # found under Fungi and Russula too

Observations, photos and taxa are deep copies of the records in ../shared/data/inat-api-samples
with ids, names and URLs rewritten, so the client meets the API's real shapes and quirks:
lowercase photo license_code, null licenses, `square` photo URLs, nested observation_photos; the
taxa search (?q=) matches word prefixes as the real one does, near misses included, and takes
`rank`. Observations are found by taxon_id with their descendants (by ancestor_ids) and left out by
without_taxon_id the same way, as on iNaturalist; the `rank` filter of /observations is ignored,
so the client's own check of the rank is what tests exercise (`ignored_params` can drop
without_taxon_id too, to test the client's own exclusions).
Photo bytes are real JPEGs from ../shared/data/fungi128, read at run time (generated JPEGs when
../shared is absent), each photo id its own file unless told otherwise.

Per-request behaviours (`script` for the next requests, `always` for every one): "429", "500",
"503", "truncated" (a JPEG cut in half, served as complete), "html" (an HTML error page served
with 200), "cut" (Content-Length of the whole photo, half the bytes, then the connection
closes), "png" (the photo as a PNG, as iNaturalist serves some). Every request is logged, so
tests can count what a resumed run fetched.
"""
from __future__ import annotations

import copy
import io
import json
import threading
import uuid
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image

from mushroom.config import PROJECT_ROOT

SAMPLES = PROJECT_ROOT.parent / "shared" / "data" / "inat-api-samples"
SHARED_PHOTOS = PROJECT_ROOT.parent / "shared" / "data" / "fungi128"
PHOTO_SIZES = ("square", "small", "medium", "large", "original")
LICENSE_NAMES = {"cc0": "CC0", "cc-by": "CC BY", "cc-by-sa": "CC BY-SA", "cc-by-nc": "CC BY-NC",
                 "cc-by-nc-sa": "CC BY-NC-SA", "cc-by-nd": "CC BY-ND", "cc-by-nc-nd": "CC BY-NC-ND"}
RANK_LEVELS = {"kingdom": 70, "genus": 20, "species": 10, "hybrid": 4, "subspecies": 5, "variety": 5}
LIFE, FUNGI = 48460, 47170  # the root of iNaturalist's tree, and kingdom Fungi
HTML_ERROR = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
              b"<body><h1>502 Bad Gateway</h1><p>The photo server is busy.</p></body></html>")


def _load(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


class FakeINat:
    def __init__(self):
        page = _load("get_observations_page1.json")
        self._obs_template = page["results"][0]
        self._photo_template = self._obs_template["photos"][0]
        self._op_template = self._obs_template["observation_photos"][0]
        self._taxon_template = _load("get_taxa_by_id.json")["results"][0]
        self._search_template = _load("get_taxa.json")["results"][0]
        self._page_keys = {k: page[k] for k in ("total_results", "page", "per_page")}
        self.taxa: dict[int, dict] = {}
        self.observations: dict[int, dict] = {}
        self.photo_bytes: dict[int, bytes] = {}
        self.requests: list[dict] = []
        self.ignored_params: set[str] = {"rank"}  # /observations filters this fake does not apply
        self._scripts: dict = defaultdict(deque)
        self._always: dict = {}
        self._lock = threading.Lock()
        self._jpegs = sorted(SHARED_PHOTOS.glob("*/*.jpg")) if SHARED_PHOTOS.is_dir() else []
        self._photos_served = 0
        self._hold_after: int | None = None
        self.holding = threading.Event()
        self._release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.api_url = f"{self.base_url}/v1"
        self.photo_base = self.base_url  # where photo URLs of observations added from now on point
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # --- lifecycle ---
    def start(self) -> "FakeINat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeINat":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the world ---
    def add_taxon(self, taxon_id: int, name: str, is_active: bool = True, synonyms: list[int] | None = None,
                  rank: str = "species", ancestor_ids: list[int] | None = None) -> dict:
        """ancestor_ids: root first, the taxon itself last (as the API lists them); None keeps the
        recorded taxon's (an insect's), which no query for Fungi or a fungus genus matches."""
        t = copy.deepcopy(self._taxon_template)
        t.update(id=taxon_id, name=name, is_active=is_active, current_synonymous_taxon_ids=synonyms,
                 preferred_common_name=f"common {name}", wikipedia_url=None, rank=rank, rank_level=RANK_LEVELS[rank])
        if ancestor_ids is not None:
            t.update(ancestor_ids=list(ancestor_ids), ancestry="/".join(map(str, ancestor_ids[:-1])),
                     parent_id=ancestor_ids[-2] if len(ancestor_ids) > 1 else None)
            t.pop("ancestors", None)  # the recorded insect's; nothing here reads them
        self.taxa[taxon_id] = t
        return t

    def add_fungus(self, taxon_id: int, name: str, rank: str = "species", parent: dict | None = None,
                   **kwargs) -> dict:
        """A taxon in kingdom Fungi, under `parent` (a taxon this fake holds) or right under Fungi."""
        above = parent["ancestor_ids"] if parent is not None else [LIFE, FUNGI]
        return self.add_taxon(taxon_id, name, rank=rank, ancestor_ids=[*above, taxon_id], **kwargs)

    def add_observation(self, taxon_id: int, photos: list[tuple], obs_id: int, login: str = "mycologist",
                        ext: str = "jpg", taxon_name: str | None = None, quality_grade: str = "research") -> dict:
        """photos: (photo_id, license_code or None[, photo_id whose bytes to reuse]); the same photo id
        in two observations is one photo (as on iNaturalist); a non-integer id gets no bytes."""
        o = copy.deepcopy(self._obs_template)
        name = taxon_name or self.taxa.get(taxon_id, {}).get("name", "Unknown")
        o.update(id=obs_id, uuid=str(uuid.UUID(int=obs_id)), uri=f"https://www.inaturalist.org/observations/{obs_id}",
                 quality_grade=quality_grade, community_taxon_id=taxon_id, species_guess=name)
        o["taxon"].update(id=taxon_id, name=name, min_species_taxon_id=taxon_id)
        known = self.taxa.get(taxon_id)
        if known is not None and known["ancestor_ids"][-1] == taxon_id:  # placed in the tree (add_taxon)
            o["taxon"].update({k: copy.deepcopy(known[k]) for k in ("rank", "rank_level", "ancestor_ids", "ancestry",
                                                                      "parent_id", "is_active")})
            o["taxon"]["min_species_ancestry"] = ",".join(map(str, known["ancestor_ids"]))
        o["user"].update(login=login, login_exact=login, login_autocomplete=login)
        built = [self._photo(spec, login, ext) for spec in photos]
        o["photos"] = built
        o["observation_photos"] = []
        for position, photo in enumerate(built):
            op = copy.deepcopy(self._op_template)
            op.update(id=obs_id * 100 + position, position=position, uuid=str(uuid.uuid4()), photo=copy.deepcopy(photo))
            o["observation_photos"].append(op)
        self.observations[obs_id] = o
        return o

    def _photo(self, spec: tuple, login: str, ext: str) -> dict:
        pid, license_code = spec[0], spec[1]
        p = copy.deepcopy(self._photo_template)
        if license_code is None:
            attribution = f"(c) {login}, all rights reserved"
        elif license_code == "cc0":
            attribution = f"(c) {login}, no rights reserved (CC0)"
        else:
            attribution = f"(c) {login}, some rights reserved ({LICENSE_NAMES[license_code]})"
        p.update(id=pid, license_code=license_code, attribution=attribution,
                 url=f"{self.photo_base}/photos/{pid}/square.{ext}?1598551272")
        if isinstance(pid, int) and pid not in self.photo_bytes:
            self.photo_bytes[pid] = self.photo_bytes[spec[2]] if len(spec) > 2 else self._new_jpeg(pid)
        return p

    def _new_jpeg(self, pid: int) -> bytes:
        n = len(self.photo_bytes)
        if n < len(self._jpegs):
            return self._jpegs[n].read_bytes()
        rng = np.random.default_rng(pid)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    # --- behaviours and bookkeeping ---
    def script(self, key, *behaviours: str) -> None:
        """The next requests for `key` ("taxa", "observations" or ("photo", id)) behave so, then normally."""
        with self._lock:
            self._scripts[key].extend(behaviours)

    def always(self, key, behaviour: str) -> None:
        self._always[key] = behaviour

    def hold_photos_after(self, n: int) -> None:
        """Photo requests after the n-th block (until stop), and `holding` is set: a run to kill."""
        self._hold_after = n

    def behaviour(self, key) -> str:
        with self._lock:
            if self._scripts[key]:
                return self._scripts[key].popleft()
            return self._always.get(key, "ok")

    def log(self, entry: dict) -> int:
        with self._lock:
            self.requests.append(entry)
            if entry["kind"] == "photo":
                self._photos_served += 1
                return self._photos_served
            return 0

    def count(self, kind: str, photo_id: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if r["kind"] == kind and (photo_id is None or r.get("photo_id") == photo_id))

    def photo_ids_requested(self) -> list[int]:
        with self._lock:
            return [r["photo_id"] for r in self.requests if r["kind"] == "photo"]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self._photos_served = 0

    # --- responses ---
    def observations_page(self, query: dict) -> tuple[int, dict]:
        licenses = [v for v in query.get("photo_license", [""])[0].split(",") if v]
        if any(v != v.upper() for v in licenses):
            return 422, {"error": f"photo_license must be uppercase, got {licenses}", "status": 422}
        wanted = {v.lower() for v in licenses}
        taxon = int(query["taxon_id"][0]) if "taxon_id" in query else None
        without = {int(v) for v in query.get("without_taxon_id", [""])[0].split(",") if v}
        if "without_taxon_id" in self.ignored_params:
            without = set()
        above = int(query.get("id_above", ["0"])[0])
        per_page = int(query.get("per_page", ["30"])[0])
        grade = query.get("quality_grade", [None])[0]
        hits = []
        for oid in sorted(self.observations):
            o = self.observations[oid]
            lineage = {o["taxon"]["id"], *(o["taxon"].get("ancestor_ids") or [])}
            if taxon is not None and taxon not in lineage or grade and o["quality_grade"] != grade:
                continue
            if lineage & without:
                continue
            if wanted and not any((p.get("license_code") or "") in wanted for p in o["photos"]):
                continue
            if oid > above:
                hits.append(o)
        return 200, {**self._page_keys, "total_results": len(hits), "page": 1, "per_page": per_page,
                     "results": hits[:per_page]}

    def taxa_by_id(self, ids: str) -> dict:
        results = [self.taxa[int(i)] for i in ids.split(",") if i.isdigit() and int(i) in self.taxa]
        return {**self._page_keys, "total_results": len(results), "per_page": 30, "results": results}

    def taxa_search(self, query: dict) -> dict:
        """/v1/taxa?q=: like the real search (see get_taxa.json, a search for "vesp"), every word of q
        must start a word of the name or the common name, so near misses (a subspecies, another
        species of the genus for a one-word q) come back too and the client must pick the exact name."""
        words = query.get("q", [""])[0].lower().split()
        ranks = {r for r in query.get("rank", [""])[0].split(",") if r}
        results = []
        for t in self.taxa.values():
            if ranks and t["rank"] not in ranks:
                continue
            for term in (t["name"], t["preferred_common_name"]):
                have = term.lower().split()
                if words and all(any(h.startswith(w) for h in have) for w in words):
                    r = copy.deepcopy(self._search_template)
                    r.update(id=t["id"], name=t["name"], matched_term=term, is_active=t["is_active"],
                             current_synonymous_taxon_ids=t["current_synonymous_taxon_ids"], rank=t["rank"],
                             rank_level=t["rank_level"], preferred_common_name=t["preferred_common_name"],
                             ancestor_ids=t["ancestor_ids"], ancestry=t["ancestry"], parent_id=t["parent_id"])
                    results.append(r)
                    break
        return {**self._page_keys, "total_results": len(results), "per_page": 30, "results": results}

    def wait_if_held(self, served: int) -> None:
        if self._hold_after is not None and served > self._hold_after:
            self.holding.set()
            self._release.wait(timeout=60)


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeINat/1.0"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        fake: FakeINat = self.server.fake  # type: ignore[attr-defined]
        url = urlparse(self.path)
        query = parse_qs(url.query)
        parts = [p for p in url.path.split("/") if p]
        agent = self.headers.get("User-Agent", "")
        if parts[:2] == ["v1", "observations"]:
            fake.log({"kind": "observations", "query": query, "agent": agent})
            if not self._misbehave(fake.behaviour("observations")):
                self._json(*fake.observations_page(query))
        elif parts[:2] == ["v1", "taxa"]:
            fake.log({"kind": "taxa", "query": query, "agent": agent, "path": url.path})
            if not self._misbehave(fake.behaviour("taxa")):
                self._json(200, fake.taxa_by_id(parts[2]) if len(parts) > 2 else fake.taxa_search(query))
        elif parts[:1] == ["photos"] and len(parts) == 3 and parts[1].isdigit():
            pid, size = int(parts[1]), parts[2].split(".")[0]
            served = fake.log({"kind": "photo", "photo_id": pid, "size": size, "agent": agent})
            fake.wait_if_held(served)
            data = fake.photo_bytes.get(pid)
            if data is None or size not in PHOTO_SIZES:
                self._send(404, "text/plain", b"not found")
                return
            behaviour = fake.behaviour(("photo", pid))
            if behaviour == "truncated":
                self._send(200, "image/jpeg", data[: len(data) // 2])
            elif behaviour == "html":
                self._send(200, "text/html; charset=utf-8", HTML_ERROR)
            elif behaviour == "cut":  # promises the whole photo, sends half, hangs up
                self._send(200, "image/jpeg", data[: len(data) // 2], {"Content-Length": str(len(data))})
            elif behaviour == "png":
                buf = io.BytesIO()
                Image.open(io.BytesIO(data)).save(buf, "PNG")
                self._send(200, "image/png", buf.getvalue())
            elif not self._misbehave(behaviour):
                self._send(200, "image/jpeg", data)
        else:
            self._send(404, "text/plain", b"not found")

    def _misbehave(self, behaviour: str) -> bool:
        if behaviour == "429":
            self._json(429, {"error": "Too Many Requests", "status": 429}, {"Retry-After": "0"})
        elif behaviour in ("500", "503"):
            self._json(int(behaviour), {"error": "Internal Server Error", "status": int(behaviour)})
        else:
            return False
        return True

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        self._send(status, "application/json; charset=utf-8", json.dumps(body).encode(), headers)

    def _send(self, status: int, content_type: str, body: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            headers = {"Content-Length": str(len(body)), **(headers or {})}
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client was killed mid-answer
            pass
