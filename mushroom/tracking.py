"""Weights & Biases for every script: one run per script (job_type), grouped by experiment.

    run = start_run(cfg, "train", name="demo-mobilenet_v2")
    callback = EpochLogger(run)          # Keras callback: one run.log per epoch
    log_artifact(run, "models/demo-mobilenet_v2", "demo-mobilenet_v2", "model")
    finish(run)

wandb.mode (config): auto = online when an API key is configured (WANDB_API_KEY, an identity
token file, or a ~/.netrc entry for the W&B host), else offline; online; offline (runs under
./wandb, upload later with `wandb sync wandb/offline-run-*`); disabled. The environment variable
WANDB_MODE=disabled or offline wins over the config (tests set disabled). An online run that cannot
reach W&B within wandb.init_timeout_s prints one warning and continues offline: never a crash,
never a prompt. The API key is only ever read from where the user put it, never written.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from mushroom.config import Config
from mushroom.ingest import IngestReport
from mushroom.quiet import verbose

DEFAULT_HOST = "https://api.wandb.ai"


def api_key_configured() -> bool:
    """Whether W&B credentials are configured on this machine (no network, no prompt)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth
        return bool(read_netrc_auth(host=host))
    except ImportError:  # wandb moved its private helper: read ~/.netrc ourselves
        pass
    except Exception:  # noqa: BLE001 - a malformed key is still a configured one; online init will say more
        return True
    import netrc

    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return bool(netrc.netrc(path).authenticators(re.sub(r"^https?://", "", host).split("/")[0]))
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(cfg: Config) -> str:
    """online | offline | disabled, from cfg.wandb.mode, the environment and the credentials."""
    env = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if env in ("disabled", "offline", "dryrun"):
        return "offline" if env == "dryrun" else env
    mode = cfg.wandb.mode
    if mode == "auto":
        return "online" if api_key_configured() else "offline"
    if mode == "online" and not api_key_configured():
        warn("wandb.mode is online but no W&B API key is configured (run `wandb login` or set WANDB_API_KEY); "
             "logging offline instead")
        return "offline"
    return mode


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def start_run(cfg: Config, job_type: str, name: str | None = None, dir: str | os.PathLike | None = None):
    """A W&B run (a no-op run when disabled) with the resolved config, grouped by experiment."""
    import wandb

    mode = resolve_mode(cfg)
    fold = cfg.study.fold
    if fold and name:   # the k-fold study: one group, the folds told apart by name and tag
        name = f"{name}-fold{fold}"
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    kwargs = dict(project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.experiment, job_type=job_type,
                  name=name, config=cfg.to_dict(), dir=str(dir) if dir is not None else None,
                  reinit="finish_previous", tags=[f"fold{fold}"] if fold else None)
    if mode == "online":
        try:
            return wandb.init(mode="online", settings=wandb.Settings(init_timeout=float(cfg.wandb.init_timeout_s)),
                              **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to reach W&B must not stop the science
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            warn(f"could not start an online W&B run ({first}); logging offline instead "
                 "(upload later with `wandb sync`)")
            mode = "offline"
    run = wandb.init(mode=mode, settings=_quiet_settings(mode), **kwargs)
    if mode == "offline" and not verbose():
        print(f"W&B: offline run in {run.dir.rsplit('/files', 1)[0]} (upload later with `wandb sync <that folder>`)",
              flush=True)
    return run


def _quiet_settings(mode: str):
    """Offline, wandb prints a dozen lines per run (banner, sync hints, run summary) around the
    stage's own output; the one line start_run prints says what matters. --verbose keeps them."""
    import wandb

    silent = mode == "offline" and not verbose()
    if silent:
        # wandb's own messages outside a run's settings (e.g. "Adding directory to artifact") follow
        # the process-wide setup, which reads this variable when the first run starts.
        os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.Settings(silent=silent)


def log(run, metrics: dict, step: int | None = None) -> None:
    if run is not None:
        run.log({k: _scalar(v) for k, v in metrics.items()}, step=step)


def _scalar(v):
    return v.item() if hasattr(v, "item") else v


def epoch_logger(run, prefix: str = "", step_offset: int = 0):
    """A Keras callback that logs each epoch's metrics (with `prefix`) at a global epoch step."""
    from mushroom.keras_env import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            log(run, {f"{prefix}{k}": v for k, v in (logs or {}).items()} | {"epoch": step_offset + epoch + 1},
                step=step_offset + epoch + 1)

    return EpochLogger()


def artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "artifact"


def log_artifact(run, path: str | os.PathLike, name: str, type: str, aliases: list[str] | None = None):
    """Log a file or folder (e.g. the best model folder) as a W&B artifact; None when disabled."""
    import wandb

    if run is None or getattr(run, "disabled", False) or run.settings.mode == "disabled":
        return None
    art = wandb.Artifact(artifact_name(name), type=type)
    path = Path(path)
    if path.is_dir():
        art.add_dir(str(path))
    else:
        art.add_file(str(path))
    return run.log_artifact(art, aliases=aliases)


def finish(run, exit_code: int = 0) -> None:
    if run is not None:
        run.finish(exit_code=exit_code)


def dataset_stats(cfg: Config, report: IngestReport) -> tuple[dict, list[list]]:
    """(scalars, table rows) of a download or import: photos in all, per split and per role (known /
    unknown / exposure, as this config sees them), and [species, role, train, val, test] per species."""
    from collections import Counter

    from mushroom.manifest import EXPOSURE, SPLITS, UNUSED, species_roles
    from mushroom.species import graded_species

    rows = report.rows
    roles = species_roles(cfg)
    graded = {s.name for s in graded_species(cfg)}
    # a species in neither table is a downloaded exposure species (outlier exposure in training)
    role_of = {r["species"]: roles.get(r["species"], UNUSED if r["species"] in graded else EXPOSURE) for r in rows}
    per_split = Counter(r["split"] for r in rows)
    per_role = Counter(role_of[r["species"]] for r in rows)
    scalars = {"photos": len(rows), "added": report.added.total(),
               "species": len(role_of), **{f"photos_{s}": per_split[s] for s in SPLITS},
               **{f"photos_{role}": n for role, n in per_role.items()}}
    counts = Counter((r["species"], r["split"]) for r in rows)
    table = [[species, role_of[species], *(counts[(species, s)] for s in SPLITS)] for species in sorted(role_of)]
    return scalars, table


def log_dataset(cfg: Config, report: IngestReport) -> None:
    """The download run: photos per split and role, and per species and split as a table."""
    run = start_run(cfg, "download", name=f"{cfg.experiment}-download")
    if run is None or run.settings.mode == "disabled":
        finish(run)
        return
    import wandb

    scalars, table_rows = dataset_stats(cfg, report)
    log(run, scalars)
    table = wandb.Table(columns=["species", "role", "train", "val", "test"])
    for row in table_rows:
        table.add_data(*row)
    run.log({"photos_per_species": table})
    finish(run)
