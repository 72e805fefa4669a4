"""The ingestion core on its own (the download and the import use it end to end in test_download.py
and test_importer.py)."""
import io
from collections import Counter

import pytest
from PIL import Image

from mushroom.config import load_config
from mushroom.errors import UserError
from mushroom.images import BadImage
from mushroom.ingest import IngestReport, PhotoStore, verified
from mushroom.manifest import manifest_path, read_manifest
from mushroom.species import Species

BOLETUS = Species(name="Boletus edulis", common_name="Penny bun", taxon_id=48701, edibility="edible")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(buf, format="PNG")
    return buf.getvalue()


def _stored(store: PhotoStore, photo_id: str, group: str, split: str) -> dict:
    data, photo = verified(_png(), "test photo")
    row = store.row(BOLETUS, photo_id, group, split, photo, BOLETUS.taxon_id, url="http://x/1.png")
    store.write(store.data_dir / row["path"], data)
    store.add(row)
    return row


def test_verified_stores_jpeg_and_refuses_broken_bytes():
    data, photo = verified(_png())
    assert data[:3] == b"\xff\xd8\xff" and (photo.width, photo.height) == (40, 30) and len(photo.sha256) == 64
    with pytest.raises(BadImage):
        verified(b"<html>not a photo</html>")


def test_paths_never_leave_the_data_folder(tmp_path):
    store = PhotoStore(tmp_path / "data", {BOLETUS.name})
    assert store.path("val", BOLETUS, 12) == tmp_path / "data" / "val" / "Boletus_edulis" / "12.jpg"
    for split, pid in (("val", "../../x"), ("val", "a/b"), ("val", ""), ("elsewhere", 12)):
        with pytest.raises(UserError, match="refusing"):
            store.path(split, BOLETUS, pid)


def test_rows_are_what_the_manifest_reads_back_and_saved_only_when_changed(tmp_path):
    store = PhotoStore(tmp_path / "data", {BOLETUS.name})
    store.save()
    assert not manifest_path(store.data_dir).exists()  # nothing stored, nothing written
    row = _stored(store, "7", "2020-09-01", "train")
    store.save()
    assert read_manifest(manifest_path(store.data_dir)) == [row]
    mtime = manifest_path(store.data_dir).stat().st_mtime_ns
    again = PhotoStore(store.data_dir, {BOLETUS.name})
    again.add(again.take()[0])  # the same rows again
    again.save()
    assert manifest_path(store.data_dir).stat().st_mtime_ns == mtime


def test_same_bytes_are_claimed_once_within_the_scope(tmp_path):
    store = PhotoStore(tmp_path / "data", {BOLETUS.name})
    row = _stored(store, "7", "g", "train")
    assert not store.claim(row["sha256"])
    store.save()
    other = PhotoStore(store.data_dir, {"Amanita muscaria"})  # Boletus rows are not this run's concern
    assert other.claim(row["sha256"]) and not other.claim(row["sha256"])


def test_a_stored_group_keeps_its_split(tmp_path):
    cfg = load_config(None, ["wandb.mode=disabled"])
    store = PhotoStore(tmp_path / "data", {BOLETUS.name})
    first = store.assign(cfg, BOLETUS.name, {f"g{i}": 1 for i in range(10)})
    for i, (group, split) in enumerate(first.items()):
        _stored(store, str(i), group, split)
    more = store.assign(cfg, BOLETUS.name, {"g0": 5, "g1": 5, "new": 1})
    assert more["g0"] == first["g0"] and more["g1"] == first["g1"]
    assert store.assign(cfg, BOLETUS.name, {"x": 1}, fixed={"x": "test"}) == {"x": "test"}


def test_unlisted_files_and_adopting_them(tmp_path):
    store = PhotoStore(tmp_path / "data", {BOLETUS.name})
    _stored(store, "7", "g", "train")
    leftover, broken = store.path("val", BOLETUS, 8), store.path("test", BOLETUS, 9)
    store.write(leftover, verified(_png())[0])
    store.write(broken, b"\xff\xd8half")
    assert store.unlisted(BOLETUS) == {"8": leftover, "9": broken}
    target = store.path("train", BOLETUS, 8)
    assert store.adopt(leftover, target).width == 40 and target.is_file() and not leftover.exists()
    assert store.adopt(broken, broken) is None and not broken.exists()


def test_one_report_for_download_and_import(tmp_path):
    report = IngestReport(tmp_path, "date", rows=[{"species": "Boletus edulis", "split": "train"}],
                          added=Counter({"Boletus edulis": 1}), failed=Counter({"Boletus edulis": 2}))
    report.failures.append("Boletus edulis photo 3: HTTP 404")
    text = report.summary()
    assert "1 photos added, 0 already in place, 0 duplicates skipped, 2 failed; grouped by date" in text
    assert "failed: Boletus edulis photo 3: HTTP 404" in text and "rerun the same command" in text
    header = text.splitlines()[0].split()
    assert "new" in header and "failed" in header and "skipped_license" not in header
