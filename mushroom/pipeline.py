"""The whole study as one command: download -> train the forager's model (model.*, two stages) ->
train the head-only baseline (baseline.*) -> QAT and export -> evaluate -> README results -> one
predict example.

Each stage is the user-facing script run in a child process (so a stage's memory is returned to
the system before the next starts and the numbers below are per stage), skipped when its outputs
are already complete unless --force. A failing stage stops the run and is named.
"""
from __future__ import annotations

import os
import resource
import shlex
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mushroom.config import PROJECT_ROOT, Config
from mushroom.errors import UserError
from mushroom.fileio import write_json
from mushroom.manifest import manifest_path, read_manifest
from mushroom.modelio import ModelFolder

# Any Keras application weight file: if this answers, ImageNet weights can be downloaded.
IMAGENET_PROBE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
BANNER = "!" * 100


@dataclass
class Stage:
    name: str
    argv: list[str] | Callable[[], list[str]]
    done: Callable[[], bool]
    seconds: float | None = None
    peak_rss_gb: float | None = None
    status: str = "pending"   # pending | skipped | ok | failed


@dataclass
class PipelineRun:
    stages: list[Stage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{'stage':24s}{'status':>10s}{'wall s':>10s}{'peak GB':>10s}"]
        for s in self.stages:
            wall = f"{s.seconds:.0f}" if s.seconds is not None else "-"
            rss = f"{s.peak_rss_gb:.2f}" if s.peak_rss_gb is not None else "-"
            lines.append(f"{s.name:24s}{s.status:>10s}{wall:>10s}{rss:>10s}")
        return "\n".join(lines)


def imagenet_reachable(timeout: float = 5.0) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(IMAGENET_PROBE_URL, method="HEAD"), timeout=timeout)
        return True
    except urllib.error.HTTPError:
        return True   # the host answered (403/404 on the folder): downloads would work
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _data_complete(data_dir: Path) -> bool:
    rows = read_manifest(manifest_path(data_dir), missing_ok=True)
    return bool(rows) and all((data_dir / r["path"]).is_file() for r in rows)


def _newer(target: Path, sources: list[Path]) -> bool:
    if not target.is_file():
        return False
    stamps = [p.stat().st_mtime for src in sources if src.exists()
              for p in ([src] if src.is_file() else src.rglob("*")) if p.is_file()]
    return all(target.stat().st_mtime >= s for s in stamps)


def plan(cfg: Config, config_path: str, overrides: list[str], from_folder: str | None,
         group_column: str | None, force: bool) -> list[Stage]:
    py = sys.executable
    common = ["--config", config_path] + [a for ov in overrides for a in ("--set", ov)]
    data_dir = Path(cfg.paths.data_dir)
    reports_dir = Path(cfg.paths.reports_dir)
    main_model, baseline = ModelFolder.of_model(cfg), ModelFolder.of_baseline(cfg)
    download = [py, "download_data.py", *common]
    if from_folder:
        download += ["--from-folder", from_folder] + (["--group-column", group_column] if group_column else [])
    formats = list(cfg.quantize.formats)
    force_flag = ["--force"] if force else []
    stages = [
        Stage("download", download, lambda: _data_complete(data_dir) and not force),
        Stage(f"train {cfg.model.name}", [py, "train_efficientnet_v2.py", *common],
              lambda: main_model.is_complete() and not force),
        Stage(f"train {cfg.baseline.model} head", [py, "train_resnet_baseline.py", *common],
              lambda: baseline.is_complete() and not force),
        Stage(f"quantize {cfg.model.name}", [py, "quantize_qat.py", str(main_model), *common, *force_flag],
              lambda: main_model.is_quantized(formats) and not force),
        Stage(f"quantize {cfg.baseline.model} head", [py, "quantize_qat.py", str(baseline), *common, *force_flag],
              lambda: baseline.is_quantized(formats) and not force),
        Stage("evaluate", [py, "evaluate.py", str(main_model), str(baseline), *common],
              lambda: _newer(reports_dir / "metrics.json", [main_model.path, baseline.path, data_dir / "manifest.csv"])
              and main_model.open_set_is_current() and baseline.open_set_is_current() and not force),
        Stage("README results", [py, "update_results.py", *common], lambda: False),
    ]
    # The photo is chosen when the stage runs: on a first run data/test does not exist yet.
    stages.append(Stage("predict example", lambda: [py, "predict.py", _example_photo(data_dir), *common],
                        lambda: False))
    return stages


def _example_photo(data_dir: Path) -> str:
    photos = sorted((data_dir / "test").rglob("*.jpg"))
    if not photos:
        raise UserError(f"no test photo under {data_dir / 'test'} for the predict example")
    return str(photos[0])


def run_stage(stage: Stage) -> int:
    argv = stage.argv() if callable(stage.argv) else stage.argv
    print(f"\n=== {stage.name}: {shlex.join(argv[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stage.seconds = time.perf_counter() - start
    stage.peak_rss_gb = usage.ru_maxrss / 1024 ** 2   # Linux reports KiB
    stage.status = "ok" if proc.returncode == 0 else "failed"
    return proc.returncode


def run_pipeline(cfg: Config, config_path: str, overrides: list[str], from_folder: str | None = None,
                 group_column: str | None = None, force: bool = False) -> PipelineRun:
    overrides = list(overrides)
    run = PipelineRun()
    for key in ("model.weights", "baseline.weights"):
        section, name = key.split(".")
        weights = cfg[section][name]
        if weights not in (None, "imagenet") and not Path(weights).expanduser().is_file():
            raise UserError(f"{key} names {weights}, which does not exist: point it at the weights file "
                            f"(the demo reads ../shared/weights), or set it to imagenet or null")
    imagenet = [k for k in ("model.weights", "baseline.weights") if cfg[k.split(".")[0]].weights == "imagenet"]
    if imagenet and not imagenet_reachable():
        overrides += [f"{k}=null" for k in imagenet]
        msg = (f"ImageNet weights cannot be downloaded here, so {' and '.join(imagenet)} fall back to null: those "
               "models TRAIN FROM SCRATCH, and the results measure the pipeline and quantization, not the best "
               "achievable accuracy. With internet, or a local weights file, rerun with --force.")
        print(f"{BANNER}\n{msg}\n{BANNER}", flush=True)
        run.notes.append(msg)
    run.stages = plan(cfg, config_path, overrides, from_folder, group_column, force)
    for stage in run.stages:
        if stage.done():
            stage.status = "skipped"
            print(f"\n=== {stage.name}: outputs complete, skipped (--force redoes it)", flush=True)
            continue
        code = run_stage(stage)
        if code != 0:
            print(f"\n{run.table()}", flush=True)
            raise UserError(f"stage '{stage.name}' failed (exit {code}); its message is above. Fix it and "
                            "rerun the same command: completed stages are skipped")
    print(f"\n{run.table()}", flush=True)
    write_json(Path(cfg.paths.reports_dir) / "pipeline.json", {
        "stages": [{"name": s.name, "status": s.status, "seconds": s.seconds, "peak_rss_gb": s.peak_rss_gb}
                   for s in run.stages], "notes": run.notes,
        "peak_rss_gb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2})
    return run
