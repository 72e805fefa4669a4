import csv
import shutil
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from mushroom.config import PROJECT_ROOT, load_config
from mushroom.errors import UserError
from mushroom.importer import import_folder
from mushroom.manifest import COLUMNS, read_manifest
from tests.conftest import SHARED_PHOTOS, need_shared


def _splits_per_group(rows):
    groups = defaultdict(set)
    for r in rows:
        groups[(r["species"], r["observation_id"])].add(r["split"])
    return groups


def test_import_writes_layout_and_manifest(cfg, photo_folder, tmp_path):
    data = tmp_path / "data"
    report = import_folder(cfg, photo_folder, "date", data)
    rows = read_manifest(data / "manifest.csv")
    assert len(rows) == 36 and report.added.total() == 36
    assert list(rows[0]) == list(COLUMNS)
    for r in rows:
        path = data / r["path"]
        assert path.is_file() and r["path"] == f"{r['split']}/{r['species'].replace(' ', '_')}/{r['photo_id']}.jpg"
        assert r["observation_id"].startswith("2020-09-")
        assert int(r["width"]) > 0 and len(r["sha256"]) == 64
    assert all(len(s) == 1 for s in _splits_per_group(rows).values())
    # 4 date groups per species: each split gets at least one group of every species
    assert {(r["species"], r["split"]) for r in rows} == {
        (s, sp) for s in ("Amanita muscaria", "Boletus edulis", "Hypholoma fasciculare") for sp in ("train", "val", "test")}
    assert "grouped by date" in report.summary()


def test_second_run_changes_nothing(cfg, photo_folder, tmp_path):
    data = tmp_path / "data"
    import_folder(cfg, photo_folder, "date", data)
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    manifest = (data / "manifest.csv").read_bytes()
    report = import_folder(cfg, photo_folder, "date", data)
    assert report.added.total() == 0 and report.kept.total() == 36
    assert (data / "manifest.csv").read_bytes() == manifest
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before


def test_interrupted_import_resumes_without_moving_photos(cfg, photo_folder, tmp_path):
    data = tmp_path / "data"
    import_folder(cfg, photo_folder, "date", data)
    rows = read_manifest(data / "manifest.csv")
    # Simulate a kill -9: some files lost, a temp file left behind.
    lost = rows[::5]
    for r in lost:
        (data / r["path"]).unlink()
    (data / "train" / "Boletus_edulis" / ".partial-abc.jpg").write_bytes(b"\xff\xd8half")
    report = import_folder(cfg, photo_folder, "date", data)
    assert report.added.total() == len(lost)
    assert read_manifest(data / "manifest.csv") == rows
    assert not list(data.rglob(".partial-*"))


def test_broken_and_duplicate_photos_and_unknown_species(cfg, photo_folder, tmp_path):
    (photo_folder / "Boletus_edulis" / "broken.jpg").write_bytes(
        (photo_folder / "Boletus_edulis" / "boletus_edulis_000.jpg").read_bytes()[:300])
    (photo_folder / "Boletus_edulis" / "notes.jpg").write_text("<html>not a photo</html>")
    shutil.copy(photo_folder / "Boletus_edulis" / "boletus_edulis_001.jpg", photo_folder / "Boletus_edulis" / "copy.jpg")
    (photo_folder / "Fungus_imaginarius").mkdir()
    shutil.copy(photo_folder / "Boletus_edulis" / "boletus_edulis_002.jpg", photo_folder / "Fungus_imaginarius" / "x.jpg")
    data = tmp_path / "data"
    report = import_folder(cfg, photo_folder, "date", data)
    assert report.failed["Boletus edulis"] == 2
    assert report.duplicates["Boletus edulis"] == 1
    assert report.unmatched_folders == ["Fungus_imaginarius"]
    rows = read_manifest(data / "manifest.csv")
    assert len(rows) == 36
    assert not any("broken" in r["path"] or "notes" in r["path"] for r in rows)
    assert len(list(data.rglob("*.jpg"))) == 36
    assert "not in config.yaml" in report.summary()


def test_without_group_column_each_photo_is_its_own_group(cfg, photo_folder, tmp_path):
    report = import_folder(cfg, photo_folder, None, tmp_path / "data")
    assert "every photo is its own group" in report.summary()
    rows = read_manifest(tmp_path / "data" / "manifest.csv")
    assert len({r["observation_id"] for r in rows}) == 36


def test_species_subset_and_bad_arguments(cfg, photo_folder, tmp_path):
    from mushroom.config import load_config

    sub = load_config(None, ["data.species_subset=[Boletus edulis]", "open_set.unknown_species=[]"])
    report = import_folder(sub, photo_folder, "date", tmp_path / "data")
    assert {r["species"] for r in report.rows} == {"Boletus edulis"}
    assert report.left_out_species == ["Amanita muscaria", "Hypholoma fasciculare"]
    assert "left out, in neither data.species_subset nor open_set.unknown_species: Amanita muscaria" in report.summary()
    with pytest.raises(UserError, match="not a column"):
        import_folder(cfg, photo_folder, "observed_on", tmp_path / "d2")
    with pytest.raises(UserError, match="is not a folder"):
        import_folder(cfg, tmp_path / "nowhere", "date", tmp_path / "d3")


def test_png_with_alpha_is_stored_as_jpeg(cfg, photo_folder, tmp_path):
    from PIL import Image

    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(photo_folder / "Boletus_edulis" / "alpha.png")
    import_folder(cfg, photo_folder, None, tmp_path / "data")
    row = [r for r in read_manifest(tmp_path / "data" / "manifest.csv") if r["photo_id"] == "alpha"][0]
    assert row["path"].endswith("alpha.jpg")
    assert (tmp_path / "data" / row["path"]).read_bytes()[:3] == b"\xff\xd8\xff"


def test_shared_photos_import_keeps_date_groups_together(cfg, tmp_path):
    need_shared(SHARED_PHOTOS, "the fungi128 photos")
    data = tmp_path / "data"
    report = import_folder(cfg, SHARED_PHOTOS, "date", data)
    rows = read_manifest(data / "manifest.csv")
    with (SHARED_PHOTOS / "manifest.csv").open() as fh:
        source = list(csv.DictReader(fh))
    assert len(rows) == len(source) == 1275
    assert len({r["species"] for r in rows}) == 36
    assert all(len(s) == 1 for s in _splits_per_group(rows).values())
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert 0.6 < counts["train"] / 1275 < 0.8 and counts["val"] > 100 and counts["test"] > 100
    assert report.added.total() == 1275


def test_cap_per_species_takes_whole_groups_first(photo_folder, tmp_path):
    from mushroom.config import load_config

    capped = load_config(None, ["data.max_photos_per_species=7"])
    report = import_folder(capped, photo_folder, "date", tmp_path / "data")
    rows = read_manifest(tmp_path / "data" / "manifest.csv")
    per_species = defaultdict(list)
    for r in rows:
        per_species[r["species"]].append(r["observation_id"])
    assert all(len(v) == 7 for v in per_species.values())
    # groups of 3 photos: 7 = two whole groups + one photo of a third
    assert all(sorted(__import__("collections").Counter(v).values()) == [1, 3, 3] for v in per_species.values())
    assert "kept 7 of 12 photos" in report.summary()


def _photo_splits(rows, species):
    return {r["photo_id"]: r["split"] for r in rows if r["species"] == species}


def test_unknown_species_are_imported_with_their_own_cap(photo_folder, tmp_path):
    # Boletus edulis is learnt; by default every other species is unknown (at most 7 photos here).
    cfg = load_config(None, ["data.species_subset=[Boletus edulis]", "open_set.max_photos_per_species=7"])
    report = import_folder(cfg, photo_folder, "date", tmp_path / "data")
    rows = read_manifest(tmp_path / "data" / "manifest.csv")
    per_species = defaultdict(list)
    for r in rows:
        per_species[r["species"]].append(r["observation_id"])
    assert len(per_species["Boletus edulis"]) == 12                       # data.max_photos_per_species: 300
    for unknown in ("Amanita muscaria", "Hypholoma fasciculare"):
        assert sorted(Counter(per_species[unknown]).values()) == [1, 3, 3]  # whole date groups first
        assert {r["split"] for r in rows if r["species"] == unknown} == {"train", "val", "test"}
    assert all(len(s) == 1 for s in _splits_per_group(rows).values())
    assert "Amanita muscaria: kept 7 of 12 photos (open_set.max_photos_per_species=7)" in report.summary()
    table = [line.split() for line in report.summary().splitlines() if line[:1].isupper() and line.split()[2].isdigit()]
    roles = {f"{w[0]} {w[1]}": w[-1] for w in table}
    assert roles == {"Boletus edulis": "known", "Amanita muscaria": "unknown", "Hypholoma fasciculare": "unknown"}

    # The learnt species is split exactly as when it is imported alone.
    alone = import_folder(load_config(None, ["data.species_subset=[Boletus edulis]", "open_set.unknown_species=[]"]),
                          photo_folder, "date", tmp_path / "alone")
    assert _photo_splits(rows, "Boletus edulis") == _photo_splits(alone.rows, "Boletus edulis")


def test_evaluation_species_folder_and_species_left_out(photo_folder, tmp_path):
    # A photo of the learnt species also lies in an unknown species' folder that sorts before it:
    # it stays with the learnt species.
    shutil.copy(photo_folder / "Boletus_edulis" / "boletus_edulis_004.jpg", photo_folder / "Amanita_muscaria" / "d.jpg")
    galerina = photo_folder / "Galerina_marginata"  # an evaluation-only species (outside the table)
    galerina.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(galerina / f"g{i}.jpg")
    cfg = load_config(None, ["data.species_subset=[Boletus edulis]",
                             "open_set.unknown_species=[Amanita muscaria, Galerina marginata]"])
    report = import_folder(cfg, photo_folder, "date", tmp_path / "data")
    rows = read_manifest(tmp_path / "data" / "manifest.csv")
    assert Counter(r["species"] for r in rows) == {"Boletus edulis": 12, "Amanita muscaria": 12,
                                                   "Galerina marginata": 3}
    assert report.duplicates == {"Amanita muscaria": 1}
    assert {r["taxon_id"] for r in rows if r["species"] == "Galerina marginata"} == {""}  # no id in the config
    assert report.left_out_species == ["Hypholoma fasciculare"] and not report.unmatched_folders


def test_demo_import_learns_six_species_and_keeps_the_rest_as_unknowns(tmp_path):
    """make demo's data: the six species of configs/demo.yaml split as when imported alone, plus the
    30 other species of the folder, at most open_set.max_photos_per_species (40) photos each."""
    need_shared(SHARED_PHOTOS, "the fungi128 photos")
    demo = PROJECT_ROOT / "configs" / "demo.yaml"
    report = import_folder(load_config(demo), SHARED_PHOTOS, "date", tmp_path / "data")
    alone = import_folder(load_config(demo, ["open_set.unknown_species=[]"]), SHARED_PHOTOS, "date", tmp_path / "alone")
    known = {r["species"] for r in alone.rows}
    assert len(known) == 6 and Counter(r["split"] for r in alone.rows) == {"train": 241, "val": 78, "test": 70}
    for name in known:
        assert _photo_splits(report.rows, name) == _photo_splits(alone.rows, name)
    unknown = Counter(r["species"] for r in report.rows if r["species"] not in known)
    assert len(unknown) == 30 and max(unknown.values()) == 40
    assert not report.left_out_species
