"""W&B tracking: mode resolution without network, offline runs under a given folder, a fallback
instead of a hang, and the API key never written to a file."""
from __future__ import annotations

import pytest

from mushroom import tracking
from mushroom.config import load_config, save_resolved
from mushroom.ingest import IngestReport

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, like a real W&B key


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No W&B credentials, no WANDB_MODE, a home of our own (no ~/.netrc, wandb settings in tmp)."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / ".cache" / "wandb"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / ".local" / "share" / "wandb"))
    yield home
    import wandb

    wandb.teardown()  # forget credentials and settings read from this test's environment


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_mode_resolution(clean_env, monkeypatch):
    assert tracking.resolve_mode(_cfg("wandb.mode=auto")) == "offline"        # no key anywhere
    assert tracking.resolve_mode(_cfg("wandb.mode=online")) == "offline"      # never a prompt
    assert tracking.resolve_mode(_cfg("wandb.mode=disabled")) == "disabled"
    (clean_env / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    (clean_env / ".netrc").chmod(0o600)
    assert tracking.api_key_configured()
    assert tracking.resolve_mode(_cfg("wandb.mode=auto")) == "online"
    (clean_env / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert tracking.resolve_mode(_cfg("wandb.mode=auto")) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")                               # the environment wins
    assert tracking.resolve_mode(_cfg("wandb.mode=online")) == "disabled"


def test_offline_run_writes_under_its_folder_and_never_the_key(clean_env, monkeypatch, tmp_path):
    from mushroom.keras_env import keras

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    cfg = _cfg("wandb.mode=offline", "experiment=tracking-test")
    runs = tmp_path / "runs"
    run = tracking.start_run(cfg, "train", name="unit", dir=runs)
    assert run.settings.mode == "offline" and run.group == "tracking-test" and run.job_type == "train"
    assert run.config["model"]["name"] == cfg.model.name
    logger = tracking.epoch_logger(run)
    logger.on_epoch_end(0, {"loss": 1.5, "val_accuracy": 0.25})
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "meta.json").write_text("{}")
    assert tracking.log_artifact(run, model_dir, "test run/1", "model") is not None
    tracking.finish(run)
    offline = list((runs / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    assert isinstance(logger, keras.callbacks.Callback)
    save_resolved(cfg, tmp_path / "out")
    for path in list(tmp_path.rglob("*")):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), f"API key written to {path}"


def test_disabled_run_writes_nothing(clean_env, tmp_path):
    run = tracking.start_run(_cfg("wandb.mode=disabled"), "train", dir=tmp_path / "runs")
    tracking.log(run, {"loss": 1.0})
    assert tracking.log_artifact(run, tmp_path, "x", "model") is None
    tracking.finish(run)
    assert not list((tmp_path / "runs").rglob("*"))


def test_online_without_reachable_server_falls_back_offline(clean_env, monkeypatch, tmp_path, capsys):
    # a key is configured but there is no network here: one warning, an offline run, no hang
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    run = tracking.start_run(_cfg("wandb.mode=online", "wandb.init_timeout_s=2"), "train", dir=tmp_path / "runs")
    try:
        assert run.settings.mode == "offline"
    finally:
        tracking.finish(run)
    err = capsys.readouterr().err
    assert err.count("warning: could not start an online W&B run") == 1


def test_dataset_counts_known_and_unknown_photos(clean_env, monkeypatch, tmp_path):
    from collections import Counter

    cfg = _cfg("wandb.mode=offline", "data.species_subset=[Boletus edulis, Amanita muscaria]",
               "open_set.unknown_species=[Galerina marginata]")
    rows = [{"species": sp, "split": split} for sp, split in [
        ("Boletus edulis", "train"), ("Boletus edulis", "train"), ("Amanita muscaria", "val"),
        ("Galerina marginata", "test"), ("Galerina marginata", "train"),
        ("Coprinus comatus", "train"),   # left in the manifest by an earlier run, unused by this config
        ("Russula emetica", "val")]]     # in neither table: a downloaded exposure photo
    report = IngestReport(tmp_path, "observation", rows=rows, added=Counter({"Boletus edulis": 2, "Galerina marginata": 1}))
    scalars, table = tracking.dataset_stats(cfg, report)
    assert scalars == {"photos": 7, "added": 3, "species": 5, "photos_train": 4, "photos_val": 2, "photos_test": 1,
                       "photos_known": 3, "photos_unknown": 2, "photos_unused": 1, "photos_exposure": 1}
    assert table == [["Amanita muscaria", "known", 0, 1, 0], ["Boletus edulis", "known", 2, 0, 0],
                     ["Coprinus comatus", "unused", 1, 0, 0], ["Galerina marginata", "unknown", 1, 0, 1],
                     ["Russula emetica", "exposure", 0, 1, 0]]
    monkeypatch.chdir(tmp_path)  # the download run writes ./wandb, as download_data.py does
    tracking.log_dataset(cfg, report)
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
