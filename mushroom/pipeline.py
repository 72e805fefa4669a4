"""The whole study as one command: download -> train the forager's model (model.*, two stages) ->
train the head-only baseline (baseline.*) -> QAT and export -> evaluate -> README results -> one
predict example.

Each stage is the user-facing script run in a child process (so a stage's memory is returned to
the system before the next starts and the numbers below are per stage), skipped when its outputs
are already complete unless --force. A stage starts once the stages it needs are done; with
pipeline.parallel_stages > 1, independent ones (the two models' train -> quantize chains) run side
by side, each output line prefixed with its stage. A failing stage stops the run and is named.
"""
from __future__ import annotations

import os
import resource
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mushroom.config import PROJECT_ROOT, Config
from mushroom.errors import UserError
from mushroom.fileio import write_json
from mushroom.manifest import manifest_path, read_manifest
from mushroom.modelio import ModelFolder, baseline_is_stage1
from mushroom.tflite_weights import resolve_weights_path, verify_checkpoint

# Any Keras application weight file: if this answers, ImageNet weights can be downloaded.
IMAGENET_PROBE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
BANNER = "!" * 100


@dataclass
class Stage:
    name: str
    argv: list[str] | Callable[[], list[str]]
    done: Callable[[], bool]
    after: tuple[str, ...] = ()   # names of the stages that must have finished first
    seconds: float | None = None
    peak_rss_gb: float | None = None
    exit_code: int | None = None
    status: str = "pending"   # pending | running | skipped | ok | failed


@dataclass
class PipelineRun:
    stages: list[Stage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float | None = None   # wall time of the whole run (stages side by side overlap)

    def table(self) -> str:
        lines = [f"{'stage':24s}{'status':>10s}{'wall s':>10s}{'peak GB':>10s}"]
        for s in self.stages:
            wall = f"{s.seconds:.0f}" if s.seconds is not None else "-"
            rss = f"{s.peak_rss_gb:.2f}" if s.peak_rss_gb is not None else "-"
            lines.append(f"{s.name:24s}{s.status:>10s}{wall:>10s}{rss:>10s}")
        if self.seconds is not None:
            lines.append(f"{'whole run':24s}{'':>10s}{self.seconds:>10.0f}")
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
    train_main, train_base = f"train {cfg.model.name}", f"train {cfg.baseline.model} head"
    quant_main, quant_base = f"quantize {cfg.model.name}", f"quantize {cfg.baseline.model} head"
    stages = [
        Stage("download", download, lambda: _data_complete(data_dir) and not force),
        Stage(train_main, [py, "train_efficientnet_v2.py", *common],
              lambda: main_model.is_trained() and not force, after=("download",)),
        # When the baseline is the main model's stage 1, training the main model writes it too, and
        # this stage only runs if that folder is missing (e.g. a main model trained before).
        Stage(train_base, [py, "train_resnet_baseline.py", *common], lambda: baseline.is_trained() and not force,
              after=(train_main,) if baseline_is_stage1(cfg) else ("download",)),
        Stage(quant_main, [py, "quantize_qat.py", str(main_model), *common, *force_flag],
              lambda: main_model.is_quantized(formats) and not force, after=(train_main,)),
        Stage(quant_base, [py, "quantize_qat.py", str(baseline), *common, *force_flag],
              lambda: baseline.is_quantized(formats) and not force, after=(train_base,)),
        # Alone at the end: it times every file, and nothing else may load the cores meanwhile.
        Stage("evaluate", [py, "evaluate.py", str(main_model), str(baseline), *common],
              lambda: _newer(reports_dir / "metrics.json", [main_model.path, baseline.path, data_dir / "manifest.csv"])
              and main_model.open_set_is_current() and baseline.open_set_is_current() and not force,
              after=(quant_main, quant_base)),
        Stage("README results", [py, "update_results.py", *common], lambda: False, after=("evaluate",)),
    ]
    # The photo is chosen when the stage runs: on a first run data/test does not exist yet.
    stages.append(Stage("predict example", lambda: [py, "predict.py", _example_photo(data_dir), *common],
                        lambda: False, after=("README results",)))
    return stages


def _example_photo(data_dir: Path) -> str:
    photos = sorted((data_dir / "test").rglob("*.jpg"))
    if not photos:
        raise UserError(f"no test photo under {data_dir / 'test'} for the predict example")
    return str(photos[0])


_print_lock = threading.Lock()


def _say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def run_stage(stage: Stage, prefix: bool = False) -> int:
    """Run one stage's child process to the end; its wall time and peak memory go into `stage`.
    prefix: relay its output line by line, each line starting with [stage name] (stages side by side)."""
    argv = stage.argv() if callable(stage.argv) else stage.argv
    _say(f"\n=== {stage.name}: {shlex.join(argv[1:])}")
    start = time.perf_counter()
    if prefix:
        proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        for line in proc.stdout:
            _say(f"[{stage.name}] {line.rstrip()}")
        proc.stdout.close()
    else:
        proc = subprocess.Popen(argv, cwd=PROJECT_ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = stage.exit_code = os.waitstatus_to_exitcode(status)
    stage.seconds = time.perf_counter() - start
    stage.peak_rss_gb = usage.ru_maxrss / 1024 ** 2   # Linux reports KiB
    stage.status = "ok" if proc.returncode == 0 else "failed"
    return proc.returncode


def run_stages(stages: list[Stage], parallel: int = 1) -> Stage | None:
    """Run the stages, each once every stage named in its `after` has finished (ok or skipped), up to
    `parallel` at a time, in list order among those ready. A stage whose outputs are complete
    (done()) is skipped. After a failure no new stage starts; the running ones finish (their
    outputs are kept for the rerun). Returns the first failed stage, or None."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    by_name = {s.name: s for s in stages}
    unknown = [a for s in stages for a in s.after if a not in by_name]
    if unknown:
        raise ValueError(f"stages wait for unknown stages: {unknown}")
    pending, running, failed = list(stages), {}, None
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        while True:
            started = failed is None
            while started:  # a skipped stage can make the next one ready at once
                started = False
                for stage in [s for s in pending if all(by_name[a].status in ("ok", "skipped") for a in s.after)]:
                    if len(running) >= parallel:
                        break
                    pending.remove(stage)
                    started = True
                    if stage.done():
                        stage.status = "skipped"
                        _say(f"\n=== {stage.name}: outputs complete, skipped (--force redoes it)")
                        continue
                    stage.status = "running"
                    running[pool.submit(run_stage, stage, parallel > 1)] = stage
            if not running:
                if pending and failed is None:
                    raise ValueError(f"stages that can never start (a cycle in `after`): {[s.name for s in pending]}")
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                if future.result() != 0 and failed is None:
                    failed = stage
                    if running:
                        _say(f"\n=== {stage.name} failed: waiting for {', '.join(s.name for s in running.values())} "
                             "to finish (its outputs are kept for the rerun)")
    return failed


def run_pipeline(cfg: Config, config_path: str, overrides: list[str], from_folder: str | None = None,
                 group_column: str | None = None, force: bool = False) -> PipelineRun:
    overrides = list(overrides)
    run = PipelineRun()
    for key in ("model.weights", "baseline.weights"):
        section, name = key.split(".")
        weights = cfg[section][name]
        if weights not in (None, "imagenet") and not resolve_weights_path(weights).is_file():
            raise UserError(f"{key} names {weights}, which does not exist: point it at the weights file "
                            f"(the demo's is weights/tf2_mobilenet_v2_1.0_224_ptq.tflite), or set it to imagenet or null")
        if weights not in (None, "imagenet") and str(weights).endswith(".tflite"):
            verify_checkpoint(resolve_weights_path(weights))   # a truncated file stops here, before any stage
    imagenet = [k for k in ("model.weights", "baseline.weights") if cfg[k.split(".")[0]].weights == "imagenet"]
    if imagenet and not imagenet_reachable():
        overrides += [f"{k}=null" for k in imagenet]
        msg = (f"ImageNet weights cannot be downloaded here, so {' and '.join(imagenet)} fall back to null: those "
               "models TRAIN FROM SCRATCH, and the results measure the pipeline and quantization, not the best "
               "achievable accuracy. With internet, or a local weights file, rerun with --force.")
        print(f"{BANNER}\n{msg}\n{BANNER}", flush=True)
        run.notes.append(msg)
    start = time.perf_counter()
    if cfg.study.cv_folds:
        return run_study_cv(cfg, config_path, overrides, from_folder, group_column, force, run, start)
    run.stages = plan(cfg, config_path, overrides, from_folder, group_column, force)
    _run_or_stop(run, cfg.pipeline.parallel_stages)
    run.seconds = time.perf_counter() - start
    print(f"\n{run.table()}", flush=True)
    _write_run(run, cfg, Path(cfg.paths.reports_dir) / "pipeline.json")
    return run


def _run_or_stop(run: PipelineRun, parallel: int, stages: list[Stage] | None = None) -> None:
    stages = run.stages if stages is None else stages
    failed = run_stages(stages, parallel)
    if failed is not None:
        print(f"\n{run.table()}", flush=True)
        raise UserError(f"stage '{failed.name}' failed (exit {failed.exit_code}); its message is above. Fix it and "
                        "rerun the same command: completed stages are skipped")


def _write_run(run: PipelineRun, cfg: Config, path: Path) -> None:
    write_json(path, {
        "stages": [{"name": s.name, "status": s.status, "seconds": s.seconds, "peak_rss_gb": s.peak_rss_gb}
                   for s in run.stages], "notes": run.notes,
        "seconds": run.seconds, "parallel_stages": cfg.pipeline.parallel_stages,
        "peak_rss_gb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2})


def cv_plan(cfg: Config, config_path: str, overrides: list[str], force: bool) -> list[Stage]:
    """Every fold's train -> quantize -> evaluate of the forager's model (study_cv.fold_overrides point
    the scripts at the fold's folders); the head-only baseline is not part of the quantization study."""
    from mushroom.config import with_overrides
    from mushroom.study_cv import fold_overrides

    py = sys.executable
    formats = list(cfg.quantize.formats)
    force_flag = ["--force"] if force else []
    stages = []
    for fold in range(1, cfg.study.cv_folds + 1):
        extra = fold_overrides(cfg, fold)
        fcfg = with_overrides(cfg, extra)
        common = ["--config", config_path] + [a for ov in overrides + extra for a in ("--set", ov)]
        model, data_dir, reports = ModelFolder.of_model(fcfg), Path(fcfg.paths.data_dir), Path(fcfg.paths.reports_dir)
        train, quant = f"fold{fold} train {cfg.model.name}", f"fold{fold} quantize"
        stages += [
            Stage(train, [py, "train_efficientnet_v2.py", *common], lambda m=model: m.is_trained() and not force),
            Stage(quant, [py, "quantize_qat.py", str(model), *common, *force_flag],
                  lambda m=model: m.is_quantized(formats) and not force, after=(train,)),
            Stage(f"fold{fold} evaluate", [py, "evaluate.py", str(model), *common],
                  lambda m=model, r=reports, d=data_dir: _newer(r / "metrics.json", [m.path, d / "manifest.csv"])
                  and m.open_set_is_current() and not force, after=(quant,)),
        ]
    return stages


def run_study_cv(cfg: Config, config_path: str, overrides: list[str], from_folder: str | None,
                 group_column: str | None, force: bool, run: PipelineRun, start: float) -> PipelineRun:
    """study.cv_folds = k: import (or download) the photos once, deal the known species' finds into k
    folds, run every fold's stages (a complete fold is skipped: the study resumes), pool the folds'
    per-photo answers, and write reports/cv/study_cv.{json,md}."""
    from mushroom import study_cv, tracking
    from mushroom.config import with_overrides

    download = plan(cfg, config_path, overrides, from_folder, group_column, force)[0]
    run.stages = [download]
    _run_or_stop(run, 1)
    k = cfg.study.cv_folds
    folders = study_cv.prepare_folds(cfg, k)
    print(f"\n=== {k} folds of the known species' finds: {', '.join(str(f) for f in folders)}", flush=True)
    run.stages += cv_plan(cfg, config_path, overrides, force)
    _run_or_stop(run, cfg.pipeline.parallel_stages, run.stages[1:])
    fold_cfgs = [with_overrides(cfg, study_cv.fold_overrides(cfg, i)) for i in range(1, k + 1)]
    model = ModelFolder.of_model(fold_cfgs[0]).path.name
    result = study_cv.pool([Path(c.paths.reports_dir) for c in fold_cfgs], model, cfg)
    run.seconds = time.perf_counter() - start
    reports = study_cv.cv_dirs(cfg)["reports"]
    command = "pipeline.py " + shlex.join(["--config", config_path] + [a for ov in overrides for a in ("--set", ov)])
    text = study_cv.write_pooled(result, reports, run.seconds, command)
    print(f"\n{run.table()}\n\n{text}", flush=True)
    _write_run(run, cfg, reports / "pipeline.json")
    cv_cfg = with_overrides(cfg, [f"experiment={cfg.experiment}-cv"])
    wb = tracking.start_run(cv_cfg, "study-cv", name=f"{cv_cfg.experiment}-pooled")
    if wb is not None and wb.settings.mode != "disabled":
        for fmt, figures in result["formats"].items():
            for key, value in figures.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    wb.summary[f"{fmt}/{key}"] = value
        wb.save(str(reports / "study_cv.md"), base_path=str(reports), policy="now")
    tracking.finish(wb)
    return run
