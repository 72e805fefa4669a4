import sys

import pytest

from mushroom.config import PROJECT_ROOT, load_config
from mushroom.errors import UserError
from mushroom.modelio import ModelFolder
from mushroom.pipeline import Stage, _data_complete, _newer, plan, run_pipeline, run_stage, run_stages


def _cfg(tmp_path, *extra):
    return load_config(PROJECT_ROOT / "configs/demo.yaml", [
        f"paths.data_dir={tmp_path / 'data'}", f"paths.models_dir={tmp_path / 'models'}",
        f"paths.reports_dir={tmp_path / 'reports'}", "wandb.mode=disabled", *extra])


def test_plan_runs_every_stage_in_order_with_the_same_config(tmp_path):
    cfg = _cfg(tmp_path)
    stages = plan(cfg, "configs/demo.yaml", ["model.weights=null"], "../shared/data/fungi128", "date", False)
    scripts = [s.argv[1] for s in stages[:-1]]
    assert scripts == ["download_data.py", "train_efficientnet_v2.py", "train_resnet_baseline.py",
                       "quantize_qat.py", "quantize_qat.py", "evaluate.py", "update_results.py"]
    with pytest.raises(UserError, match="no test photo"):
        stages[-1].argv()  # the predict example picks its photo once the data exists
    (tmp_path / "data/test/Boletus_edulis").mkdir(parents=True)
    (tmp_path / "data/test/Boletus_edulis/1.jpg").write_bytes(b"x")
    assert stages[-1].argv()[1:3] == ["predict.py", str(tmp_path / "data/test/Boletus_edulis/1.jpg")]
    stages = stages[:-1]
    assert stages[0].argv[-4:] == ["--from-folder", "../shared/data/fungi128", "--group-column", "date"]
    assert "--variant" not in stages[1].argv   # the config's model.name (mobilenet_v2 in the demo)
    assert [s.name for s in stages[1:5]] == ["train mobilenet_v2", "train mobilenet_v2 head",
                                            "quantize mobilenet_v2", "quantize mobilenet_v2 head"]
    for s in stages:
        assert s.argv[s.argv.index("--config") + 1] == "configs/demo.yaml"
        assert "model.weights=null" in s.argv
    assert stages[3].argv[2] == str(tmp_path / "models" / "demo-mobilenet_v2")
    assert stages[4].argv[2] == str(tmp_path / "models" / "demo-mobilenet_v2-head")
    assert stages[5].argv[2:4] == [str(tmp_path / "models" / "demo-mobilenet_v2"),
                                   str(tmp_path / "models" / "demo-mobilenet_v2-head")]
    assert not any(s.done() for s in stages)
    # the two models' chains are independent; evaluation waits for both
    after = {s.name: s.after for s in stages}
    assert after["train mobilenet_v2"] == ("download",)
    # the demo's baseline is the main run's stage 1, which training the main model writes
    assert after["train mobilenet_v2 head"] == ("train mobilenet_v2",)
    other = plan(_cfg(tmp_path, "baseline.model=resnet50"), "configs/demo.yaml", [], None, None, False)
    assert {s.name: s.after for s in other}["train resnet50 head"] == ("download",)
    assert after["quantize mobilenet_v2 head"] == ("train mobilenet_v2 head",)
    assert set(after["evaluate"]) == {"quantize mobilenet_v2", "quantize mobilenet_v2 head"}


def test_a_missing_weights_file_stops_the_run_before_any_stage(tmp_path):
    cfg = _cfg(tmp_path, f"model.weights={tmp_path / 'nope.tflite'}")
    with pytest.raises(UserError, match=r"model.weights names .*nope.tflite, which does not exist"):
        run_pipeline(cfg, "configs/demo.yaml", [])
    assert not (tmp_path / "data").exists()


def test_completeness_checks(tmp_path, photo_folder):
    from mushroom.importer import import_folder

    cfg = _cfg(tmp_path)
    data = tmp_path / "data"
    assert not _data_complete(data)
    import_folder(load_config(None, ["wandb.mode=disabled"]), photo_folder, "date", data)
    assert _data_complete(data)
    next(data.rglob("*.jpg")).unlink()
    assert not _data_complete(data)  # a lost photo makes the stage run again
    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("{}")
    assert not ModelFolder(folder).is_complete()
    (folder / "model.keras").write_text("x")
    assert ModelFolder(folder).is_complete() and ModelFolder(folder).is_trained()
    ModelFolder(folder).backup_dir.mkdir()   # a retraining killed midway: the rerun must train (and resume)
    assert ModelFolder(folder).is_complete() and not ModelFolder(folder).is_trained()
    ModelFolder(folder).backup_dir.rmdir()
    target = tmp_path / "reports" / "metrics.json"
    assert not _newer(target, [folder])
    target.parent.mkdir()
    target.write_text("[]")
    assert _newer(target, [folder])
    import os
    os.utime(folder / "model.keras", (target.stat().st_mtime + 10,) * 2)
    assert not _newer(target, [folder])  # a retrained model makes evaluation stale
    assert cfg.experiment == "demo"


def test_a_failing_stage_stops_the_run_and_is_named(tmp_path, monkeypatch):
    ok = Stage("fine", [sys.executable, "-c", "print('hi')"], lambda: False)
    assert run_stage(ok) == 0 and ok.status == "ok" and ok.seconds > 0 and ok.peak_rss_gb > 0
    bad = Stage("broken stage", [sys.executable, "-c", "import sys; sys.exit(3)"], lambda: False)
    skipped = Stage("already done", [sys.executable, "-c", "raise SystemExit(9)"], lambda: True)
    monkeypatch.setattr("mushroom.pipeline.plan", lambda *a, **k: [skipped, ok, bad])
    monkeypatch.setattr("mushroom.pipeline.imagenet_reachable", lambda: False)
    with pytest.raises(UserError, match=r"stage 'broken stage' failed \(exit 3\)"):
        # weights null: the run must not depend on the checkpoint loading here
        run_pipeline(_cfg(tmp_path, "model.weights=null", "baseline.weights=null"), "configs/demo.yaml", [])
    assert skipped.status == "skipped" and bad.status == "failed"


def test_a_finished_run_writes_its_stage_table(tmp_path, monkeypatch):
    import json

    ok = Stage("fine", [sys.executable, "-c", "print('hi')"], lambda: False)
    skipped = Stage("already done", [sys.executable, "-c", "raise SystemExit(9)"], lambda: True)
    monkeypatch.setattr("mushroom.pipeline.plan", lambda *a, **k: [skipped, ok])
    run_pipeline(_cfg(tmp_path, "model.weights=null", "baseline.weights=null"), "configs/demo.yaml", [])
    written = json.loads((tmp_path / "reports" / "pipeline.json").read_text())
    assert [(s["name"], s["status"]) for s in written["stages"]] == [("already done", "skipped"), ("fine", "ok")]
    assert written["peak_rss_gb_self"] > 0 and not list((tmp_path / "reports").glob(".partial-*"))


def _timed(tmp_path, name, seconds=2.0, code=0, needs=()):
    """A stage that records when it ran in tmp_path/<name>.json, after checking its inputs exist.
    Seconds long enough that two stages started together overlap even on a loaded machine."""
    script = (f"import json, sys, time, pathlib; d = pathlib.Path({str(tmp_path)!r})\n"
              f"missing = [n for n in {list(needs)!r} if not (d / (n + '.json')).is_file()]\n"
              "if missing: sys.exit(5)\n"
              f"t = time.time(); print('hello from {name}'); time.sleep({seconds})\n"
              f"(d / '{name}.json').write_text(json.dumps([t, time.time()])); sys.exit({code})")
    return Stage(name, [sys.executable, "-c", script], lambda: False, after=tuple(needs))


def _interval(tmp_path, name):
    import json
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.parametrize("parallel", [1, 2])
def test_stages_wait_for_what_they_need_and_independent_ones_run_side_by_side(tmp_path, capsys, parallel):
    stages = [_timed(tmp_path, "a"), _timed(tmp_path, "b"), _timed(tmp_path, "c", 0.1, needs=("a", "b"))]
    assert run_stages(stages, parallel) is None
    assert [s.status for s in stages] == ["ok", "ok", "ok"]
    (a0, a1), (b0, b1), (c0, _) = (_interval(tmp_path, n) for n in "abc")
    assert c0 >= max(a1, b1)                      # c started after both of its inputs were written
    assert (a0 < b1 and b0 < a1) == (parallel == 2)  # a and b overlapped only when allowed to
    out = capsys.readouterr().out
    assert ("[a] hello from a" in out) == (parallel == 2)   # side by side, every line names its stage


def test_after_a_failure_nothing_new_starts_and_the_running_stage_finishes(tmp_path):
    stages = [_timed(tmp_path, "bad", 0.1, code=3), _timed(tmp_path, "slow", 1.5),
              _timed(tmp_path, "next", 0.1, needs=("bad",)), _timed(tmp_path, "other", 0.1)]
    failed = run_stages(stages, 2)
    assert failed is stages[0] and failed.exit_code == 3
    assert [s.status for s in stages] == ["failed", "ok", "pending", "pending"]


def test_a_skipped_stage_releases_the_ones_after_it(tmp_path):
    done = Stage("done", [sys.executable, "-c", "raise SystemExit(9)"], lambda: True)
    stages = [done, _timed(tmp_path, "x", 0.1, needs=()), Stage("y", [sys.executable, "-c", ""], lambda: False,
                                                               after=("done", "x"))]
    assert run_stages(stages, 2) is None
    assert [s.status for s in stages] == ["skipped", "ok", "ok"]
    with pytest.raises(ValueError, match="unknown stages"):
        run_stages([Stage("z", ["true"], lambda: False, after=("nope",))])
