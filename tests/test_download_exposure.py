"""Exposure photos (open_set.exposure_*): other research-grade Fungi, downloaded beside the study's
species against the fake iNaturalist (tests/fake_inat.py). The pure selection (plan_exposure) is
tested on its own first; then files on disk, manifest rows and the requests made."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter

import pytest

from mushroom.config import PROJECT_ROOT
from mushroom.download import download_dataset
from mushroom.exposure_download import EXPOSURE_STATE_NAME, FUNGI, ExposurePhoto, plan_exposure
from mushroom.photo_fetch import PlannedPhoto
from mushroom.errors import NetworkError, UserError
from mushroom.manifest import COLUMNS, manifest_path, read_manifest
from mushroom.species import all_species, graded_species
from tests.conftest import need_shared
from tests.fake_inat import LIFE, SAMPLES, FakeINat
from tests.test_download import AM, BE, check_consistent, cli_args, files_on_disk, make_cfg, run_script


@pytest.fixture(autouse=True)
def recorded_api_responses():
    """Every test here serves the recorded API responses of ../shared: skipped without them,
    failed under CI=true."""
    return need_shared(SAMPLES, "recorded iNaturalist API responses")


# --- the pure selection -----------------------------------------------------------------------------
def cand(species: str, pid: int, oid: int, tid: int = 1) -> ExposurePhoto:
    return ExposurePhoto(species, tid, PlannedPhoto(pid, oid, f"http://x/photos/{pid}/medium.jpg", "cc-by", "(c) a", "a"))


def pool(species: list[str], photos: int = 4, start: int = 0) -> list[ExposurePhoto]:
    """`photos` photos of each species, two per observation."""
    out = []
    for i, name in enumerate(species):
        for k in range(photos):
            n = start + 100 * i + k
            out.append(cand(name, 10_000 + n, 1_000 + n // 2))
    return out


STUDY = {"Amanita", "Boletus"}
IN_GENERA = ["Amanita fulva", "Amanita vaginata", "Boletus reticulatus"]
OTHERS = ["Russula emetica", "Russula ochroleuca", "Lactarius turpis", "Trametes versicolor", "Stereum hirsutum"]


def test_plan_caps_species_and_splits_the_total_by_genus_share():
    plan = plan_exposure(pool(IN_GENERA) + pool(OTHERS, start=50_000), Counter(), total=10, per_species=3,
                         genus_share=0.4, study_genera=STUDY, seed=1)
    assert (plan.genus_quota, plan.other_quota) == (4, 6)
    assert {c.genus for c in plan.genus_queue} <= STUDY and not {c.genus for c in plan.other_queue} & STUDY
    for queue in (plan.genus_queue, plan.other_queue):
        assert max(Counter(c.species for c in queue).values()) == 3   # the cap; the 4th photo never queued
        assert len({c.photo.photo_id for c in queue}) == len(queue)
    # A photo of every genus before a second of any: the picks spread over the genera.
    assert {c.genus for c in plan.other_queue[:4]} == {"Russula", "Lactarius", "Trametes", "Stereum"}
    assert {c.genus for c in plan.genus_queue[:2]} == STUDY


def test_plan_takes_a_species_observations_in_turn():
    photos = [cand("Russula emetica", 1, 10), cand("Russula emetica", 2, 10), cand("Russula emetica", 3, 11),
              cand("Russula emetica", 4, 12)]
    plan = plan_exposure(photos, Counter(), total=3, per_species=3, genus_share=0.0, study_genera=STUDY, seed=0)
    assert [c.photo.photo_id for c in plan.other_queue] == [1, 3, 4]  # observations 10, 11, 12 before 10 again


def test_a_short_pool_leaves_its_share_to_the_other():
    few_in_genera = pool(["Amanita fulva"], photos=2) + pool(OTHERS, start=50_000)
    plan = plan_exposure(few_in_genera, Counter(), total=10, per_species=4, genus_share=0.5, study_genera=STUDY, seed=0)
    assert (plan.genus_quota, plan.other_quota) == (2, 8)
    few_others = pool(IN_GENERA) + pool(["Russula emetica"], photos=1, start=50_000)
    plan = plan_exposure(few_others, Counter(), total=10, per_species=4, genus_share=0.5, study_genera=STUDY, seed=0)
    assert (plan.genus_quota, plan.other_quota) == (9, 1)
    plan = plan_exposure([], Counter(), total=10, per_species=4, genus_share=0.5, study_genera=STUDY, seed=0)
    assert (plan.genus_quota, plan.other_quota, plan.genus_queue, plan.other_queue) == (0, 0, [], [])


def test_stored_photos_count_towards_caps_and_quotas():
    stored = Counter({"Amanita fulva": 3, "Russula emetica": 1})
    plan = plan_exposure(pool(IN_GENERA) + pool(OTHERS, start=50_000), stored, total=10, per_species=3,
                         genus_share=0.5, study_genera=STUDY, seed=0)
    species = Counter(c.species for c in plan.genus_queue + plan.other_queue)
    assert "Amanita fulva" not in species and species["Russula emetica"] == 2
    assert (plan.genus_quota, plan.other_quota) == (5, 5)  # quotas of the whole, the stored four included


def test_plan_is_seeded_and_deterministic():
    photos = pool(IN_GENERA) + pool(OTHERS, start=50_000)
    args = dict(total=12, per_species=3, genus_share=0.5, study_genera=STUDY)
    first = plan_exposure(photos, Counter(), seed=3, **args)
    # The same answers in another order of species: the same plan.
    shuffled = sorted(photos, key=lambda c: (c.species[::-1], c.photo.photo_id))
    assert plan_exposure(shuffled, Counter(), seed=3, **args) == first
    orders = {tuple(c.photo.photo_id for c in plan_exposure(photos, Counter(), seed=s, **args).other_queue)
              for s in range(6)}
    assert len(orders) > 1


# --- against the fake iNaturalist ------------------------------------------------------------------
IN_STUDY_GENERA = {"Amanita": ["Amanita fulva", "Amanita vaginata", "Amanita porphyria", "Amanita crocea"],
                   "Boletus": ["Boletus reticulatus", "Boletus pinophilus"],
                   "Mycena": ["Mycena pura", "Mycena haematopus"]}
OTHER_GENERA = {"Russula": ["Russula emetica", "Russula ochroleuca", "Russula cyanoxantha"],
                "Lactarius": ["Lactarius deliciosus", "Lactarius turpis"], "Cortinarius": ["Cortinarius caperatus"],
                "Trametes": ["Trametes versicolor"], "Stereum": ["Stereum hirsutum"],
                "Tricholoma": ["Tricholoma equestre"], "Ganoderma": ["Ganoderma applanatum"]}
# Photos per observation, by the observation's place in its species: licenses as iNaturalist
# reports them (lowercase, null = all rights reserved, -nd never allowed); 4 licensed photos per
# species once the cap of 2 photos per observation is applied.
OBS_PATTERN = [["cc-by", None], ["cc-by-sa"], ["cc-by-nd", "cc0"], ["cc-by", "cc-by", "cc-by"]]
EXPOSURE = ("data.species_subset=[Amanita muscaria]", "data.max_photos_per_species=2", "data.per_page=5",
            "open_set.exposure_download=20", "open_set.exposure_max_per_species=3",
            "open_set.exposure_genus_share=0.5")


class World:
    """Fungi of many genera and species, the study's own among them, and the quirks of real answers.
    The quirks come first in id order, so that every query meets them on its first page."""

    def __init__(self, fake: FakeINat, cfg):
        self.fake, self.next_obs = fake, 3000
        self.licensed: dict[int, str] = {}     # photo id -> species, for every photo that may be taken
        self.refused: set[int] = set()         # exposure species' photos never to take (license, per-obs cap)
        self.never: set[int] = set()           # photos of observations that must never give exposure photos
        # The search for "Amanita" also answers an animal genus of that name, listed first.
        fake.add_taxon(909999, "Amanita", rank="genus", ancestor_ids=[LIFE, 1, 909999])
        self.genera = {g: fake.add_fungus(910000 + i, g, rank="genus")
                       for i, g in enumerate(sorted({s.name.split()[0] for s in all_species(cfg)}))}
        for i, g in enumerate(sorted(OTHER_GENERA)):
            self.genera[g] = fake.add_fungus(920000 + i, g, rank="genus")
        self.genera["Galerina"] = fake.add_fungus(929999, "Galerina", rank="genus")
        am = fake.add_fungus(AM, "Amanita muscaria", parent=self.genera["Amanita"])
        fake.add_fungus(BE, "Boletus edulis", parent=self.genera["Boletus"])
        species = {}
        for i, (genus, name) in enumerate((g, n) for g, names in {**IN_STUDY_GENERA, **OTHER_GENERA}.items()
                                          for n in names):
            species[name] = fake.add_fungus(930000 + i, name, parent=self.genera[genus])

        for oid in (101, 102, 103):  # the study's own photos (data.max_photos_per_species=2)
            fake.add_observation(AM, [(oid * 10 + 1, "cc-by")], obs_id=oid, login=f"user{oid}")
        # Quirks, each of which must give no exposure photo:
        self._observe(BE, [["cc-by"]])                                                  # a study species
        self._observe(self.genera["Cortinarius"]["id"], [["cc-by"]])                     # identified to genus only
        self._observe(self.genera["Amanita"]["id"], [["cc-by"]])
        variety = fake.add_fungus(940001, "Amanita muscaria guessowii", rank="variety", parent=am)
        self._observe(variety["id"], [["cc-by"]])                                         # below a study species
        ssp = fake.add_fungus(940002, "Tricholoma equestre auratum", rank="subspecies",
                              parent=species["Tricholoma equestre"])                      # below another species
        self._observe(ssp["id"], [["cc-by"]])
        hybrid = fake.add_fungus(940003, "Russula × intermedia", rank="hybrid", parent=self.genera["Russula"])
        self._observe(hybrid["id"], [["cc-by"]])
        provisional = fake.add_fungus(940004, "Cortinarius sp-IN01", parent=self.genera["Cortinarius"])
        self._observe(provisional["id"], [["cc-by"]])                                     # species rank, no binomial
        inactive = fake.add_fungus(940005, "Boletus badius", is_active=False, synonyms=[940006],
                                   parent=self.genera["Boletus"])                         # the old name of Imleria badia
        self._observe(inactive["id"], [["cc-by"]])
        twin = fake.add_fungus(940007, "Boletus edulis", parent=self.genera["Boletus"])  # a study species, other id
        self._observe(twin["id"], [["cc-by"], ["cc0"]])
        galerina = fake.add_fungus(940008, "Galerina marginata", parent=self.genera["Galerina"])  # evaluation, null id
        self._observe(galerina["id"], [["cc-by"], ["cc0"]])
        self.galerina = galerina["id"]
        # The exposure species: openly licensed photos among others, their observations interleaved
        # (ids are chronological over every taxon, as on iNaturalist).
        for name, taxon in species.items():
            self._observe(taxon["id"], [[None]])                                          # no open license at all
            self._observe(taxon["id"], [["cc-by"]], grade="needs_id")                     # not research grade
        for photos in OBS_PATTERN:
            for name, taxon in species.items():
                self._observe(taxon["id"], [photos], species=name)

    def _observe(self, tid: int, pattern: list[list], species: str | None = None, grade: str = "research") -> None:
        for photos in pattern:
            oid = self.next_obs = self.next_obs + 1
            specs = [(oid * 10 + k, lic) for k, lic in enumerate(photos)]
            self.fake.add_observation(tid, specs, obs_id=oid, login=f"user{oid}", quality_grade=grade)
            for k, (pid, lic) in enumerate(specs):
                if species is None or grade != "research":
                    self.never.add(pid)
                elif lic in ("cc0", "cc-by", "cc-by-sa") and k < 2:
                    self.licensed[pid] = species
                else:
                    self.refused.add(pid)


@pytest.fixture
def world():
    with FakeINat() as fake:
        yield World(fake, make_cfg(fake.api_url))


def exposure_rows(rows: dict[str, dict], cfg) -> dict[str, dict]:
    graded = {s.name for s in graded_species(cfg)}
    return {p: r for p, r in rows.items() if r["species"] not in graded}


def observation_queries(fake: FakeINat) -> list[dict]:
    return [q["query"] for q in fake.requests if q["kind"] == "observations"]


def test_exposure_photos_respect_caps_share_licenses_and_exclusions(world, tmp_path):
    fake, data = world.fake, tmp_path / "data"
    cfg = make_cfg(fake.api_url, *EXPOSURE)
    report = download_dataset(cfg, data, progress=False)
    rows = check_consistent(data)
    exposure = exposure_rows(rows, cfg)

    assert {p for p, r in rows.items() if r["species"] == "Amanita muscaria"} == {"1011", "1021"}  # untouched
    assert len(exposure) == 20                                                  # open_set.exposure_download
    per_species = Counter(r["species"] for r in exposure.values())
    assert max(per_species.values()) <= 3                                       # open_set.exposure_max_per_species
    study_genera = {s.name.split()[0] for s in all_species(cfg)}
    in_genera = [r for r in exposure.values() if r["species"].split()[0] in study_genera]
    assert len(in_genera) == 10                                                 # open_set.exposure_genus_share
    # Spread: every genus with photos to give gives some (10 genera; 20 photos).
    assert {r["species"].split()[0] for r in exposure.values()} == set(IN_STUDY_GENERA) | set(OTHER_GENERA)
    # Only openly licensed photos of research-grade species-rank observations of other species.
    assert {int(p) for p in exposure} <= set(world.licensed)
    assert all(world.licensed[int(p)] == r["species"] for p, r in exposure.items())
    assert not {int(p) for p in rows} & (world.refused | world.never)
    assert not fake.count("photo") - len(rows) and not set(fake.photo_ids_requested()) - set(map(int, rows))
    assert not {r["species"] for r in exposure.values()} & {s.name for s in graded_species(cfg)}

    # Rows like the study's: the same columns, the species' own taxon id, observation as the group.
    r = next(iter(exposure.values()))
    taxon = next(t for t in fake.taxa.values() if t["name"] == r["species"])
    assert list(read_manifest(manifest_path(data))[0]) == list(COLUMNS)
    assert r["taxon_id"] == str(taxon["id"]) and r["license_code"] in ("cc0", "cc-by", "cc-by-sa")
    assert r["attribution"].startswith(f"(c) user{r['observation_id']}, ") and r["observer"] == f"user{r['observation_id']}"
    assert r["observation_url"] == f"https://www.inaturalist.org/observations/{r['observation_id']}"
    assert r["url"].startswith(fake.base_url) and f"/{r['photo_id']}/medium.jpg" in r["url"]

    # The queries: research grade, species rank, the licenses, the graded taxa left out (the
    # evaluation species by the id its name has), the study genera found as fungi, not as animals.
    amanita = world.genera["Amanita"]["id"]
    queries = [q for q in observation_queries(fake) if q["taxon_id"] != [str(AM)]]
    assert {q["taxon_id"][0] for q in queries} == {str(FUNGI)} | {str(world.genera[g]["id"]) for g in study_genera}
    for q in queries:
        assert q["quality_grade"] == ["research"] and q["rank"] == ["species"]
        assert q["photo_license"] == ["CC0,CC-BY,CC-BY-SA"] and q["place_id"] == ["7207"]
        assert {str(AM), str(BE), str(world.galerina)} <= set(q["without_taxon_id"][0].split(","))
    fungi = next(q for q in queries if q["taxon_id"] == [str(FUNGI)])
    assert str(amanita) in fungi["without_taxon_id"][0].split(",")
    assert "909999" not in str(queries)

    line = next(line for line in report.summary().splitlines() if line.startswith("exposure:"))
    assert line.startswith("exposure: 20 photos of ") and "from 10 genera (10 from the study's genera; 20 new" in line
    assert "Russula emetica" not in report.summary()  # one line, not a table row per exposure species
    assert report.exposure["photos"] == 20 and report.exposure["study_genera"] == 10
    # genus Cortinarius, the subspecies, hybrid, provisional name and inactive Boletus badius; the
    # study's Boletus edulis under another id (the API leaves out only the configured ids)
    assert report.exposure["skipped_rank"] >= 5 and report.exposure["skipped_graded"] >= 1
    assert (data / EXPOSURE_STATE_NAME).is_file()


def test_graded_species_stay_out_when_the_api_ignores_without_taxon_id(world, tmp_path):
    world.fake.ignored_params.add("without_taxon_id")
    cfg = make_cfg(world.fake.api_url, *EXPOSURE)
    download_dataset(cfg, tmp_path / "data", progress=False)
    rows = check_consistent(tmp_path / "data")
    graded = {s.name for s in graded_species(cfg)}
    assert {r["species"] for r in rows.values()} & graded == {"Amanita muscaria"}  # the study's own photos only
    assert len(exposure_rows(rows, cfg)) == 20
    assert not {int(p) for p in rows} & world.never


def test_exposure_rerun_and_resume_match_an_uninterrupted_run(world, tmp_path):
    fake = world.fake
    cfg = make_cfg(fake.api_url, *EXPOSURE)
    download_dataset(cfg, tmp_path / "reference", progress=False)
    reference = check_consistent(tmp_path / "reference")
    data = tmp_path / "data"
    download_dataset(cfg, data, progress=False)
    assert check_consistent(data) == reference                     # same answers, same photos and splits

    fake.reset_log()
    report = download_dataset(cfg, data, progress=False)            # nothing missing: nothing asked or fetched
    assert fake.count("photo") == 0 and fake.count("observations") == 0 and check_consistent(data) == reference
    assert report.exposure["added"] == 0 and report.exposure["photos"] == 20

    # Interrupted by hand: two exposure files lost, the manifest without its last four rows.
    rows = read_manifest(manifest_path(data))
    lost = [r for r in rows if r["species"] != "Amanita muscaria"][:2]
    for r in lost:
        (data / r["path"]).unlink()
    lines = manifest_path(data).read_text().splitlines(keepends=True)
    manifest_path(data).write_text("".join(lines[:-4]))
    fake.reset_log()
    report = download_dataset(cfg, data, progress=False)
    assert sorted(fake.photo_ids_requested()) == sorted(int(r["photo_id"]) for r in lost)
    assert check_consistent(data) == reference
    assert any("exposure: 2 photo(s)" in w for w in report.warnings)

    manifest_path(data).unlink()                                     # every file adopted again, none fetched
    fake.reset_log()
    download_dataset(cfg, data, progress=False)
    assert fake.count("photo") == 0 and check_consistent(data) == reference

    fake.reset_log()
    download_dataset(cfg, data, force=True, progress=False)          # --force: everything again, same result
    assert fake.count("photo") == 22 and check_consistent(data) == reference


def test_kill_9_mid_exposure_download_then_resume(world, tmp_path):
    fake = world.fake
    cfg = make_cfg(fake.api_url, *EXPOSURE)
    download_dataset(cfg, tmp_path / "reference", progress=False)
    reference = check_consistent(tmp_path / "reference")
    data = tmp_path / "data"
    fake.reset_log()
    fake.hold_photos_after(12)  # the study's 2 photos, then 10 exposure photos, then the process dies
    proc = subprocess.Popen([sys.executable, "download_data.py", "--data-dir", str(data),
                             *cli_args(fake.api_url, *EXPOSURE)],
                            cwd=PROJECT_ROOT, env={**os.environ, "WANDB_MODE": "disabled"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert fake.holding.wait(timeout=60), "the download never reached the photo to hold"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fake.hold_photos_after(10 ** 6)
    assert (data / EXPOSURE_STATE_NAME).is_file()
    left = {p.rsplit("/", 1)[1].split(".")[0] for p in files_on_disk(data)}
    assert 0 < len(left) < 22

    fake.reset_log()
    download_dataset(cfg, data, progress=False)
    assert check_consistent(data) == reference
    assert {str(p) for p in fake.photo_ids_requested()} == set(reference) - left


def test_http_500_and_429_are_retried_in_the_exposure_download(world, tmp_path):
    fake, data = world.fake, tmp_path / "data"
    download_dataset(make_cfg(fake.api_url, *EXPOSURE, "open_set.exposure_download=0"), data, progress=False)
    fake.reset_log()
    fake.script("taxa", "500")
    fake.script("observations", "500", "429")
    for pid in world.licensed:
        fake.script(("photo", pid), "500")
    download_dataset(make_cfg(fake.api_url, *EXPOSURE), data, progress=False)
    exposure = exposure_rows(check_consistent(data), make_cfg(fake.api_url))
    assert len(exposure) == 20
    assert all(fake.count("photo", int(p)) == 2 for p in exposure)   # each failed once, then came
    first = [q for q in fake.requests if q["kind"] == "observations"][:3]
    assert first[0]["query"] == first[1]["query"] == first[2]["query"]  # the same page asked three times


def test_api_failing_during_the_exposure_download_is_one_sentence(world, tmp_path):
    fake, data = world.fake, tmp_path / "data"
    download_dataset(make_cfg(fake.api_url, *EXPOSURE, "open_set.exposure_download=0"), data, progress=False)
    fake.always("observations", "500")
    with pytest.raises(NetworkError) as exc:
        download_dataset(make_cfg(fake.api_url, *EXPOSURE), data, progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and msg.count(". ") == 0 and "kept failing" in msg and "rerun" in msg
    assert len(check_consistent(data)) == 2                          # the study's photos stay as they were


def test_unreachable_photo_host_stops_the_exposure_download_with_one_sentence(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with FakeINat() as fake:
        cfg = make_cfg(fake.api_url, *EXPOSURE)
        World(fake, cfg)
        for o in fake.observations.values():  # the exposure photos' host is down; the study's is up
            if o["taxon"]["id"] != AM:
                for p in o["photos"] + [op["photo"] for op in o["observation_photos"]]:
                    p["url"] = p["url"].replace(fake.base_url, f"http://127.0.0.1:{port}")
        with pytest.raises(NetworkError) as exc:
            download_dataset(cfg, tmp_path / "data", progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "rerun" in msg
    assert len(check_consistent(tmp_path / "data")) == 2


def test_script_without_network_prints_one_error_line_with_exposure_on(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_script("--data-dir", str(tmp_path / "data"), *cli_args(f"http://127.0.0.1:{port}/v1", *EXPOSURE))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not reach the iNaturalist API"), proc.stderr


def test_exposure_download_0_adds_nothing(world, tmp_path):
    fake = world.fake
    on = make_cfg(fake.api_url, *EXPOSURE)
    off = make_cfg(fake.api_url, *EXPOSURE, "open_set.exposure_download=0")
    report = download_dataset(off, tmp_path / "off", progress=False)
    assert not [q for q in observation_queries(fake) if q["taxon_id"] != [str(AM)]]
    assert not [q for q in fake.requests if q["kind"] == "taxa" and "rank" in q["query"]]
    assert not (tmp_path / "off" / EXPOSURE_STATE_NAME).exists()
    assert not [line for line in report.summary().splitlines() if "exposure" in line.split(":")[0]]
    assert not report.exposure
    off_rows = check_consistent(tmp_path / "off")
    assert {r["species"] for r in off_rows.values()} == {"Amanita muscaria"}

    # The study's photos do not depend on the exposure download; 0 later keeps what is stored.
    download_dataset(on, tmp_path / "on", progress=False)
    on_rows = check_consistent(tmp_path / "on")
    assert {p: r for p, r in on_rows.items() if r["species"] == "Amanita muscaria"} == off_rows
    fake.reset_log()
    report = download_dataset(off, tmp_path / "on", progress=False)
    assert check_consistent(tmp_path / "on") == on_rows and fake.count("photo") == 0
    assert "exposure: 20 photos of " in report.summary() and report.exposure["added"] == 0


def test_changed_settings_keep_what_is_stored_and_fetch_the_difference(world, tmp_path):
    fake, data = world.fake, tmp_path / "data"
    download_dataset(make_cfg(fake.api_url, *EXPOSURE), data, progress=False)
    before = exposure_rows(check_consistent(data), make_cfg(fake.api_url))
    fake.reset_log()
    cfg = make_cfg(fake.api_url, *EXPOSURE, "open_set.exposure_download=30")
    report = download_dataset(cfg, data, progress=False)
    after = exposure_rows(check_consistent(data), cfg)
    assert set(before) < set(after) and len(after) == 30 and fake.count("photo") == 10
    assert max(Counter(r["species"] for r in after.values()).values()) <= 3
    assert report.exposure["added"] == 10 and report.exposure["photos"] == 30


def test_script_prints_the_exposure_line(world, tmp_path):
    proc = run_script("--data-dir", str(tmp_path / "data"), *cli_args(world.fake.api_url, *EXPOSURE))
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("exposure: 20 photos of ")]
    assert "Russula emetica" not in proc.stdout


def test_too_few_photos_is_a_note_and_a_rerun_asks_again(world, tmp_path):
    fake, data = world.fake, tmp_path / "data"
    cfg = make_cfg(fake.api_url, *EXPOSURE, "open_set.exposure_download=500")
    report = download_dataset(cfg, data, progress=False)
    assert report.exposure["photos"] == 18 * 3  # every one of the 18 species at its cap of 3
    assert any(n.startswith("exposure: iNaturalist had 54 of the 500 photos wanted") for n in report.notes)
    fake.reset_log()
    download_dataset(cfg, data, progress=False)  # the plan was short: asked again, nothing new found
    assert fake.count("observations") > 0 and fake.count("photo") == 0
    assert len(exposure_rows(check_consistent(data), cfg)) == 54


def test_genus_share_0_takes_no_photo_of_the_study_genera(world, tmp_path):
    fake, data = world.fake, tmp_path / "data"
    cfg = make_cfg(fake.api_url, *EXPOSURE, "open_set.exposure_genus_share=0.0")
    download_dataset(cfg, data, progress=False)
    exposure = exposure_rows(check_consistent(data), cfg)
    assert len(exposure) == 20 and {r["species"].split()[0] for r in exposure.values()} == set(OTHER_GENERA)
    assert not [q for q in fake.requests if q["kind"] == "taxa" and "rank" in q["query"]]  # no genus looked up


def test_a_genus_missing_on_inaturalist_is_one_warning(world, tmp_path):
    fake = world.fake
    del fake.taxa[world.genera["Mycena"]["id"]]
    report = download_dataset(make_cfg(fake.api_url, *EXPOSURE), tmp_path / "data", progress=False)
    assert [w for w in report.warnings if "Mycena" in w] == [
        "exposure: iNaturalist has no fungus genus named Mycena; its species are not over-sampled"]
    assert len(exposure_rows(check_consistent(tmp_path / "data"), make_cfg(fake.api_url))) == 20


def test_a_damaged_plan_is_one_sentence_and_force_starts_again(world, tmp_path):
    fake, data = world.fake, tmp_path / "data"
    cfg = make_cfg(fake.api_url, *EXPOSURE)
    download_dataset(cfg, data, progress=False)
    reference = check_consistent(data)
    (data / EXPOSURE_STATE_NAME).write_text("{not json")
    with pytest.raises(UserError, match="is damaged: rerun with --force") as exc:
        download_dataset(cfg, data, progress=False)
    assert "\n" not in str(exc.value)
    download_dataset(cfg, data, force=True, progress=False)
    assert check_consistent(data) == reference
