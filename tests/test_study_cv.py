import csv
import json
import os

from pathlib import Path

import pytest

from mushroom import study_cv
from mushroom.config import ConfigError, load_config
from mushroom.errors import UserError
from mushroom.importer import import_folder
from mushroom.manifest import manifest_path, read_manifest
from tests.conftest import _make_photo_folder

KNOWN = ["Amanita muscaria", "Boletus edulis", "Macrolepiota procera"]
UNKNOWN = ["Hypholoma fasciculare", "Pleurotus ostreatus"]


def _cfg(root, *extra):
    return load_config(None, [
        "wandb.mode=disabled", "image.size=32", "model.name=tiny", "model.weights=null", "baseline.weights=null",
        f"data.species_subset=[{', '.join(KNOWN)}]", f"paths.data_dir={root / 'data'}",
        f"paths.models_dir={root / 'models'}", f"paths.reports_dir={root / 'reports'}", *extra])


@pytest.fixture
def imported(tmp_path):
    photos = _make_photo_folder(tmp_path / "photos", KNOWN + UNKNOWN, 12)
    cfg = _cfg(tmp_path)
    import_folder(cfg, photos, "date", tmp_path / "data")
    return cfg, photos


def test_folds_deal_whole_finds_so_every_known_photo_is_tested_once(imported):
    cfg, _ = imported
    rows = read_manifest(manifest_path(cfg.paths.data_dir))
    folders = study_cv.prepare_folds(cfg, 3)
    assert [f.name for f in folders] == ["fold1", "fold2", "fold3"]
    tested, validated = {}, {}
    for i, folder in enumerate(folders):
        fold_rows = read_manifest(manifest_path(folder))
        assert sorted(r["photo_id"] for r in fold_rows) == sorted(r["photo_id"] for r in rows)
        by_find = {}
        for r in fold_rows:
            photo = folder / r["path"]
            assert photo.is_file() and r["path"].startswith(r["split"] + "/")
            original = next(o for o in rows if o["photo_id"] == r["photo_id"])
            assert os.path.samefile(photo, Path(cfg.paths.data_dir) / original["path"])   # a hard link, no copy
            if r["species"] in UNKNOWN:   # the unknown species stay where they were: the same protocol per fold
                assert r == original
                continue
            by_find.setdefault((r["species"], r["observation_id"]), set()).add(r["split"])
            if r["split"] == "test":
                assert r["photo_id"] not in tested
                tested[r["photo_id"]] = i
            if r["split"] == "val":
                validated[r["photo_id"]] = i
        assert all(len(s) == 1 for s in by_find.values())   # a find never spans two splits
        for species in KNOWN:   # every split of every fold sees every known species
            assert {r["split"] for r in fold_rows if r["species"] == species} == {"train", "val", "test"}
    known = [r for r in rows if r["species"] in KNOWN]
    assert len(tested) == len(validated) == len(known) == 36
    # 4 finds of 3 photos per species in 3 folds: one fold gets two finds, the others one each
    sizes = sorted(sum(v == i for v in tested.values()) for i in range(3))
    assert sizes == [9, 9, 18]
    assert study_cv.prepare_folds(cfg, 3) == folders   # idempotent: the second call writes nothing new
    # seeded: the same seed deals the same folds
    assert study_cv.assign_folds(rows, set(KNOWN), 3, 7) == study_cv.assign_folds(rows, set(KNOWN), 3, 7)


def test_too_few_finds_or_folds_are_clear_errors(imported, tmp_path):
    cfg, _ = imported
    rows = read_manifest(manifest_path(cfg.paths.data_dir))
    with pytest.raises(UserError, match="fewer than study.cv_folds = 5"):
        study_cv.assign_folds(rows, set(KNOWN), 5, 0)
    with pytest.raises(ConfigError, match="study.cv_folds"):
        _cfg(tmp_path, "study.cv_folds=2")


def test_the_study_runs_every_fold_and_pools_each_photo_once(imported, tmp_path):
    """The real chain (train, quantize, evaluate in child processes) on 3 folds of a tiny model, then
    the pooled table recomputed from the folds' predictions.csv."""
    from mushroom.pipeline import run_pipeline

    cfg, photos = imported
    overrides = ["wandb.mode=disabled", "image.size=32", "model.name=tiny", "model.weights=null",
                 "baseline.weights=null", f"data.species_subset=[{', '.join(KNOWN)}]",
                 f"paths.data_dir={tmp_path / 'data'}", f"paths.models_dir={tmp_path / 'models'}",
                 f"paths.reports_dir={tmp_path / 'reports'}", "train.stage1.epochs=1", "train.stage2.epochs=0",
                 "quantize.formats=[float32, ptq_int8]", "evaluate.formats=[float32, ptq_int8]", "quantize.min_agreement=0.0",
                 "quantize.representative_images=8", "quantize.check_images=8", "evaluate.latency_runs=2",
                 "evaluate.latency_warmup=1", "evaluate.bootstrap_samples=200", "pipeline.parallel_stages=2",
                 "study.cv_folds=3"]
    cfg = load_config(None, overrides)
    run = run_pipeline(cfg, "config.yaml", overrides, str(photos), "date")
    assert [s.status for s in run.stages[1:]] == ["ok"] * 9
    result = json.loads((tmp_path / "reports/cv/study_cv.json").read_text())
    assert result["folds"] == 3 and result["reference_format"] == "float32"
    assert "| ptq_int8 |" in (tmp_path / "reports/cv/study_cv.md").read_text()
    rows = {}
    for i in (1, 2, 3):
        for r in csv.DictReader((tmp_path / f"reports/cv/fold{i}/predictions.csv").open()):
            if r["known"] == "true":
                rows.setdefault(r["format"], {})[r["path"]] = r
        folder = tmp_path / f"models/cv/fold{i}/mushrooms-full-cv-tiny"
        assert (folder / "meta.json").is_file() and (folder / "tflite/ptq_int8.tflite").is_file()
        assert f"data_dir: {tmp_path / f'data/cv/fold{i}'}" in (folder / "config.resolved.yaml").read_text()
    assert len(rows["float32"]) == 36   # every known photo, once
    for fmt, figures in result["formats"].items():
        mine = rows[fmt]
        assert figures["n_photos"] == 36
        assert figures["top1"] == pytest.approx(sum(r["top1_correct"] == "true" for r in mine.values()) / 36)
        b = sum(rows["float32"][p]["top1_correct"] == "true" and mine[p]["top1_correct"] == "false" for p in mine)
        c = sum(rows["float32"][p]["top1_correct"] == "false" and mine[p]["top1_correct"] == "true" for p in mine)
        assert (figures["mcnemar_b"], figures["mcnemar_c"]) == (b, c)
        assert figures["delta_top1"] == pytest.approx((c - b) / 36)
        lo, hi = figures["delta_top1_ci"]
        assert lo <= figures["delta_top1"] <= hi
        assert len(figures["delta_top1_folds"]) == len(figures["agreement_all_folds"]) == 3
    # resumable: a rerun skips every fold's stages
    again = run_pipeline(cfg, "config.yaml", overrides, str(photos), "date")
    assert {s.status for s in again.stages} == {"skipped"}
