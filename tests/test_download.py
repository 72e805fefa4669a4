"""The iNaturalist downloader against a fake iNaturalist on 127.0.0.1 (tests/fake_inat.py), built
from real recorded API responses: files on disk and manifest rows are what is checked."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from mushroom.config import PROJECT_ROOT, load_config
from mushroom.errors import ConfigError, NetworkError
from mushroom.images import describe_bytes
from mushroom.download import download_dataset
from mushroom.photo_fetch import STATE_NAME
from mushroom.manifest import COLUMNS, manifest_path, read_manifest
from tests.conftest import need_shared
from tests.fake_inat import SAMPLES, FakeINat


@pytest.fixture(autouse=True)
def recorded_api_responses():
    """Every test here serves the recorded API responses of ../shared: skipped without them,
    failed under CI=true."""
    return need_shared(SAMPLES, "recorded iNaturalist API responses")


AM, BE = 48715, 48701  # Amanita muscaria, Boletus edulis in config.yaml

# Amanita muscaria: obs 101 has three photos (cap 2 per observation), 102 mixes licenses
# (all rights reserved, -nd, -nc, cc-by), 104 repeats photo 1011 of obs 101, 106/107 are spare.
AM_OBS = {
    101: [(1011, "cc-by"), (1012, "cc-by-sa"), (1013, "cc0")],
    102: [(1021, None), (1022, "cc-by-nd"), (1023, "cc-by-nc"), (1024, "cc-by")],
    103: [(1031, "cc-by")],
    104: [(1041, "cc0"), (1011, "cc-by")],
    105: [(1051, "cc-by")],
    106: [(1061, "cc-by")],
    107: [(1071, "cc-by")],
}
# Boletus edulis: photo 2061 has the same bytes as 2011 under another id.
BE_OBS = {200 + i: [(2000 + 10 * i + 1, "cc-by")] for i in range(1, 6)}
BE_OBS[206] = [(2061, "cc-by", 2011)]
BE_OBS[207] = [(2071, "cc-by")]


def populate(fake: FakeINat, am_name: str = "Amanita muscaria") -> FakeINat:
    fake.add_taxon(AM, am_name)
    fake.add_taxon(BE, "Boletus edulis")
    for oid, photos in AM_OBS.items():
        fake.add_observation(AM, photos, obs_id=oid, login=f"user{oid}")
    for oid, photos in BE_OBS.items():
        fake.add_observation(BE, photos, obs_id=oid, login=f"user{oid}", ext="jpeg")
    return fake


@pytest.fixture
def fake():
    with FakeINat() as server:
        yield populate(server)


def make_cfg(api_url: str, *overrides: str):
    """Two known species, no unknown ones and no exposure photos (tests/test_download_exposure.py),
    unless an override says otherwise."""
    return load_config(None, [
        "wandb.mode=disabled", f"data.api_base_url={api_url}",
        "data.species_subset=[Amanita muscaria, Boletus edulis]", "open_set.unknown_species=[]",
        "open_set.exposure_download=0",
        "data.max_photos_per_species=6", "data.max_photos_per_observation=2", "data.per_page=2",
        # The schema lets a loopback server go faster than iNaturalist's 1 request/s.
        "data.requests_per_second=500", "data.requests_per_minute=30000",
        "data.retry_backoff_s=0.01", "data.max_retries=2", "data.download_workers=3", *overrides])


def cli_args(api_url: str, *overrides: str) -> list[str]:
    out = []
    for ov in ["data.api_base_url=" + api_url, "data.species_subset=[Amanita muscaria, Boletus edulis]",
               "open_set.unknown_species=[]", "open_set.exposure_download=0",
               "data.max_photos_per_species=6", "data.max_photos_per_observation=2", "data.per_page=2",
               "data.requests_per_second=500", "data.requests_per_minute=30000", "data.retry_backoff_s=0.01",
               "data.max_retries=2", "data.download_workers=3", "wandb.mode=disabled", *overrides]:
        out += ["--set", ov]
    return out


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "download_data.py", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def rows_by_id(data_dir: Path) -> dict[str, dict]:
    rows = read_manifest(manifest_path(data_dir))
    assert len({r["photo_id"] for r in rows}) == len(rows), "a photo appears twice in the manifest"
    return {r["photo_id"]: r for r in rows}


def files_on_disk(data_dir: Path) -> set[str]:
    return {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*.jpg")}


def check_consistent(data_dir: Path) -> dict[str, dict]:
    """Every row names a complete file with its sha256/size, every file has a row, no observation
    crosses splits, no temporary file is left."""
    rows = rows_by_id(data_dir)
    assert files_on_disk(data_dir) == {r["path"] for r in rows.values()}
    assert not list(data_dir.rglob(".partial-*"))
    splits_of = defaultdict(set)
    for r in rows.values():
        sha, w, h = describe_bytes((data_dir / r["path"]).read_bytes())
        assert (sha, str(w), str(h)) == (r["sha256"], r["width"], r["height"])
        assert r["path"] == f"{r['split']}/{r['species'].replace(' ', '_')}/{r['photo_id']}.jpg"
        splits_of[r["observation_id"]].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values()), splits_of
    return rows


def test_download_pages_filters_and_writes_manifest(fake, tmp_path):
    data = tmp_path / "data"
    report = download_dataset(make_cfg(fake.api_url), data, progress=False)
    rows = check_consistent(data)

    am = {pid for pid, r in rows.items() if r["species"] == "Amanita muscaria"}
    # 101 gives two of its three photos; 102 only its cc-by photo; 104 only 1041 (1011 is stored
    # once); the cap of 6 is reached at 105, so 106/107 are never fetched.
    assert am == {"1011", "1012", "1024", "1031", "1041", "1051"}
    be = {pid for pid, r in rows.items() if r["species"] == "Boletus edulis"}
    assert be == {"2011", "2021", "2031", "2041", "2051", "2071"}  # 2061 repeats 2011's bytes
    assert report.skipped_license == {"Amanita muscaria": 3}
    assert report.duplicates.total() == 2 and not report.failed

    r = rows["1012"]
    assert r["license_code"] == "cc-by-sa" and r["taxon_id"] == str(AM) and r["observation_id"] == "101"
    assert r["observer"] == "user101" and r["attribution"] == "(c) user101, some rights reserved (CC BY-SA)"
    assert r["observation_url"] == "https://www.inaturalist.org/observations/101"
    assert r["url"].startswith(fake.base_url) and "/1012/medium.jpg" in r["url"]
    assert rows["2021"]["url"].endswith("/2021/medium.jpeg?1598551272")
    assert list(read_manifest(manifest_path(data))[0]) == list(COLUMNS)

    # Paging by id_above with uppercase licenses; photos at the configured size; our User-Agent.
    pages = [q["query"] for q in fake.requests if q["kind"] == "observations" and q["query"]["taxon_id"] == [str(AM)]]
    assert [p.get("id_above") for p in pages] == [None, ["102"], ["104"]]
    assert all(p["photo_license"] == ["CC0,CC-BY,CC-BY-SA"] and p["order_by"] == ["id"] and p["order"] == ["asc"]
               and p["quality_grade"] == ["research"] and p["place_id"] == ["7207"] for p in pages)
    photos = [q for q in fake.requests if q["kind"] == "photo"]
    assert {q["size"] for q in photos} == {"medium"} and len(photos) == 13
    assert all("mushroom-quant" in q["agent"] for q in fake.requests)
    assert "Amanita muscaria" in report.summary() and "skipped_license" in report.summary()


def test_research_use_licenses_and_photos_per_observation(fake, tmp_path):
    cfg = make_cfg(fake.api_url, "data.licenses=[cc0, cc-by, cc-by-sa, cc-by-nc]", "data.max_photos_per_observation=3",
                   "data.species_subset=[Amanita muscaria]", "data.max_photos_per_species=20", "data.place_id=null")
    report = download_dataset(cfg, tmp_path / "data", progress=False)
    pages = [q["query"] for q in fake.requests if q["kind"] == "observations"]
    assert all(p["photo_license"] == ["CC0,CC-BY,CC-BY-SA,CC-BY-NC"] and "place_id" not in p for p in pages)
    rows = check_consistent(tmp_path / "data")
    assert set(rows) == {"1011", "1012", "1013", "1023", "1024", "1031", "1041", "1051", "1061", "1071"}
    assert rows["1023"]["license_code"] == "cc-by-nc"
    assert len({rows[p]["split"] for p in ("1011", "1012", "1013")}) == 1  # one observation, one split
    assert report.skipped_license == {"Amanita muscaria": 2}  # all rights reserved and -nd, never
    assert rows["1013"]["attribution"] == "(c) user101, no rights reserved (CC0)"


def test_429_and_5xx_are_retried(fake, tmp_path):
    fake.script("taxa", "503")
    fake.script("observations", "429", "500")
    fake.script(("photo", 1031), "500", "429")
    download_dataset(make_cfg(fake.api_url), tmp_path / "data", progress=False)
    rows = check_consistent(tmp_path / "data")
    assert len(rows) == 12 and "1031" in rows
    assert fake.count("taxa") == 2 and fake.count("photo", 1031) == 3


def test_bad_photo_bytes_are_retried_then_failed_and_never_stored(fake, tmp_path):
    fake.always(("photo", 1031), "truncated")
    fake.always(("photo", 1041), "html")
    fake.script(("photo", 1051), "truncated")  # once: the retry succeeds
    fake.always(("photo", 2021), "png")        # converted to JPEG, not refused
    fake.script(("photo", 2031), "cut")        # the transfer breaks off once: retried
    report = download_dataset(make_cfg(fake.api_url), tmp_path / "data", progress=False)
    rows = check_consistent(tmp_path / "data")
    assert "1031" not in rows and "1041" not in rows and "1051" in rows
    assert not [p for p in files_on_disk(tmp_path / "data") if "/1031." in p or "/1041." in p]
    assert fake.count("photo", 1031) == 3 and fake.count("photo", 1041) == 3  # 1 + max_retries
    assert "2031" in rows and fake.count("photo", 2031) == 2
    assert report.failed == {"Amanita muscaria": 2} and len(report.failures) == 2
    # The cap is still met: the next observations replace the failed photos.
    assert {p for p, r in rows.items() if r["species"] == "Amanita muscaria"} >= {"1061", "1071"}
    assert (tmp_path / "data" / rows["2021"]["path"]).read_bytes()[:3] == b"\xff\xd8\xff"
    assert "failed" in report.summary() and "rerun" in report.summary()


def test_hostile_names_and_ids_stay_inside_data(tmp_path):
    with FakeINat() as fake:
        populate(fake, am_name="../../etc")
        fake.add_observation(AM, [("../../../escape", "cc-by"), (1081, "cc-by")], obs_id=108,
                             taxon_name="../../etc", login="../../root")
        cfg = make_cfg(fake.api_url, "data.species_subset=[Amanita muscaria]", "data.max_photos_per_species=20")
        report = download_dataset(cfg, tmp_path / "data", progress=False)
    rows = check_consistent(tmp_path / "data")
    assert "1081" in rows and rows["1081"]["observer"] == "../../root"
    assert {p.name for p in tmp_path.iterdir()} == {"data"}
    folders = {p.relative_to(tmp_path / "data").parts[1] for p in (tmp_path / "data").rglob("*.jpg")}
    assert folders == {"Amanita_muscaria"}
    assert any("'../../etc'" in w for w in report.warnings)  # name and id disagree


def test_taxon_ids_are_verified_and_resolved(tmp_path):
    with FakeINat() as fake:
        fake.add_taxon(AM, "Amanita muscaria", is_active=False, synonyms=[900001])
        fake.add_taxon(900001, "Amanita muscaria")
        fake.add_taxon(900002, "Boletus edulis")  # the configured id 48701 is unknown here
        fake.add_observation(900001, [(3011, "cc-by")], obs_id=301)
        fake.add_observation(900002, [(3021, "cc-by")], obs_id=302)
        report = download_dataset(make_cfg(fake.api_url), tmp_path / "data", progress=False)
    rows = check_consistent(tmp_path / "data")
    assert rows["3011"]["taxon_id"] == "900001" and rows["3021"]["taxon_id"] == "900002"
    assert len(report.warnings) == 2 and all("update the config" in w for w in report.warnings)


def test_unknown_species_are_downloaded_with_their_own_cap(fake, tmp_path):
    cfg = make_cfg(fake.api_url, "data.species_subset=[Amanita muscaria]", "open_set.unknown_species=[Boletus edulis]",
                   "open_set.max_photos_per_species=3")
    report = download_dataset(cfg, tmp_path / "data", progress=False)
    rows = check_consistent(tmp_path / "data")
    known = {p: r for p, r in rows.items() if r["species"] == "Amanita muscaria"}
    unknown = {p: r for p, r in rows.items() if r["species"] == "Boletus edulis"}
    assert len(known) == 6                                  # data.max_photos_per_species
    assert set(unknown) == {"2011", "2021", "2031"}         # open_set.max_photos_per_species, in id order
    assert all(r["taxon_id"] == str(BE) for r in unknown.values())
    assert fake.count("photo", 2041) == 0                   # the cap stops the download, not just the manifest
    table = report.summary().splitlines()
    assert [line.split()[-1] for line in table if line.startswith(("Amanita muscaria", "Boletus edulis"))] == [
        "known", "unknown"]
    assert any("evaluation only" in line for line in table)

    # The known species' photos and splits do not depend on which unknown species are downloaded.
    alone = download_dataset(make_cfg(fake.api_url, "data.species_subset=[Amanita muscaria]"), tmp_path / "alone",
                             progress=False)
    assert {r["photo_id"]: r["split"] for r in alone.rows} == {p: r["split"] for p, r in known.items()}


def _evaluation_world(fake: FakeINat) -> None:
    """Galerina marginata (a null taxon id in config.yaml) exists under id 900010, beside its genus;
    Tylopilus felleus (also null) does not, though a search for it finds a subspecies."""
    fake.add_taxon(AM, "Amanita muscaria")
    fake.add_observation(AM, [(1011, "cc-by")], obs_id=101)
    fake.add_taxon(900011, "Galerina", rank="genus")
    fake.add_taxon(900010, "Galerina marginata")
    fake.add_taxon(900012, "Tylopilus felleus alutarius", rank="subspecies")
    for i in range(1, 5):
        fake.add_observation(900010, [(5000 + i, "cc-by")], obs_id=500 + i)
    fake.add_observation(900012, [(5101, "cc-by")], obs_id=511)


EVALUATION_OVERRIDES = ("data.species_subset=[Amanita muscaria]", "open_set.max_photos_per_species=3",
                        "open_set.unknown_species=[Galerina marginata, Tylopilus felleus]")


def test_evaluation_species_without_taxon_id_is_found_by_name(tmp_path):
    with FakeINat() as fake:
        _evaluation_world(fake)
        report = download_dataset(make_cfg(fake.api_url, *EVALUATION_OVERRIDES), tmp_path / "data", progress=False)
        searches = [q["query"]["q"] for q in fake.requests if q["kind"] == "taxa" and "q" in q["query"]]
    rows = check_consistent(tmp_path / "data")
    galerina = {p: r for p, r in rows.items() if r["species"] == "Galerina marginata"}
    assert set(galerina) == {"5001", "5002", "5003"}        # the unknown cap, 3
    assert {r["taxon_id"] for r in galerina.values()} == {"900010"}  # not the genus
    assert {r["path"].split("/")[1] for r in galerina.values()} == {"Galerina_marginata"}
    assert ["Galerina marginata"] in searches
    assert "Galerina marginata: no taxon id in the config; using 900010" in report.summary()


def test_evaluation_species_unknown_to_inaturalist_is_skipped_with_one_warning(tmp_path):
    with FakeINat() as fake:
        _evaluation_world(fake)
        proc = run_script("--data-dir", str(tmp_path / "data"), *cli_args(fake.api_url, *EVALUATION_OVERRIDES))
        assert fake.count("photo", 5101) == 0               # the subspecies is not taken for the species
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warning = ("Tylopilus felleus: no iNaturalist taxon has this name; skipped (check the name, or set its "
               "taxon_id in evaluation_species)")
    # One line as it happens (stderr), repeated once in the summary at the end (stdout).
    assert [line for line in proc.stderr.splitlines() if "Tylopilus" in line] == [warning]
    assert [line for line in proc.stdout.splitlines() if "Tylopilus" in line] == [f"warning: {warning}"]
    rows = check_consistent(tmp_path / "data")
    assert {r["species"] for r in rows.values()} == {"Amanita muscaria", "Galerina marginata"}


def test_rerun_fetches_only_what_is_missing_and_matches_an_uninterrupted_run(fake, tmp_path):
    reference = check_consistent(_fresh_run(fake, tmp_path / "reference"))
    data = tmp_path / "data"
    cfg = make_cfg(fake.api_url)
    download_dataset(cfg, data, progress=False)

    fake.reset_log()
    download_dataset(cfg, data, progress=False)  # nothing missing: nothing fetched, nothing changed
    assert fake.count("photo") == 0 and check_consistent(data) == reference

    # Interrupted by hand: two files lost (their rows kept), the manifest without its last four rows
    # (their files kept), a temporary file left over.
    rows = read_manifest(manifest_path(data))
    (data / rows[0]["path"]).unlink()
    (data / rows[5]["path"]).unlink()
    lines = manifest_path(data).read_text().splitlines(keepends=True)
    manifest_path(data).write_text("".join(lines[:-4]))
    (data / "train" / ".partial-abc.jpg").write_bytes(b"half")
    fake.reset_log()
    report = download_dataset(cfg, data, progress=False)
    assert sorted(fake.photo_ids_requested()) == sorted(int(rows[i]["photo_id"]) for i in (0, 5))
    assert check_consistent(data) == reference
    assert any("missing on disk" in w for w in report.warnings)

    manifest_path(data).unlink()  # every file is adopted again, none fetched
    fake.reset_log()
    download_dataset(cfg, data, progress=False)
    assert fake.count("photo") == 0 and check_consistent(data) == reference

    fake.reset_log()
    download_dataset(cfg, data, force=True, progress=False)  # --force: everything again, same result
    assert fake.count("photo") == 13 and check_consistent(data) == reference


def _fresh_run(fake: FakeINat, data: Path) -> Path:
    download_dataset(make_cfg(fake.api_url), data, progress=False)
    return data


def test_kill_9_mid_download_then_resume(fake, tmp_path):
    reference = check_consistent(_fresh_run(fake, tmp_path / "reference"))
    data = tmp_path / "data"
    fake.reset_log()
    fake.hold_photos_after(8)  # Amanita done, Boletus half-way when the process dies
    proc = subprocess.Popen([sys.executable, "download_data.py", "--data-dir", str(data), *cli_args(fake.api_url)],
                            cwd=PROJECT_ROOT, env={**os.environ, "WANDB_MODE": "disabled"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert fake.holding.wait(timeout=30), "the download never reached the photo to hold"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fake.hold_photos_after(10 ** 6)
    assert (data / STATE_NAME).is_file()
    left = {p.rsplit("/", 1)[1].split(".")[0] for p in files_on_disk(data)}
    assert 0 < len(left) < 12

    fake.reset_log()
    download_dataset(make_cfg(fake.api_url), data, progress=False)
    assert check_consistent(data) == reference
    # 2061 was never reached before the kill, so the rerun fetches it to find it repeats 2011.
    assert {str(p) for p in fake.photo_ids_requested()} == (set(reference) - left) | {"2061"}


def test_unreachable_api_is_one_clear_sentence(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(NetworkError) as exc:
        download_dataset(make_cfg(f"http://127.0.0.1:{port}/v1"), tmp_path / "data", progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and msg.count(". ") == 0 and "--from-folder DIR" in msg and f":{port}" in msg
    assert not manifest_path(tmp_path / "data").exists()


def test_unreachable_photo_host_stops_the_run_with_one_sentence(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with FakeINat() as fake:
        fake.photo_base = f"http://127.0.0.1:{port}"
        populate(fake)
        with pytest.raises(NetworkError) as exc:
            download_dataset(make_cfg(fake.api_url), tmp_path / "data", progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "rerun" in msg
    assert not list((tmp_path / "data").rglob("*.jpg"))


def test_fast_rates_are_refused_for_the_real_api(tmp_path):
    cfg = make_cfg("https://api.inaturalist.org/v1")
    with pytest.raises(ConfigError, match="requests_per_second"):
        download_dataset(cfg, tmp_path / "data", progress=False)


def test_script_downloads_and_prints_the_summary(fake, tmp_path):
    data = tmp_path / "data"
    proc = run_script("--data-dir", str(data), *cli_args(fake.api_url))
    assert proc.returncode == 0, proc.stderr
    assert "Amanita muscaria" in proc.stdout and "skipped_license" in proc.stdout and "total" in proc.stdout
    assert len(check_consistent(data)) == 12
    assert (data / "config.resolved.yaml").is_file()
    assert load_config(data / "config.resolved.yaml").data.api_base_url == fake.api_url


def test_script_without_network_prints_one_error_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_script("--data-dir", str(tmp_path / "data"), *cli_args(f"http://127.0.0.1:{port}/v1"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not reach the iNaturalist API"), proc.stderr
