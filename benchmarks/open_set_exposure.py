"""Outlier exposure and the unknown-species scores, chosen once over several seeded species splits
(rather than retrained inside every demo).

    .venv/bin/python benchmarks/open_set_exposure.py --data-dir data         # after make demo
    .venv/bin/python benchmarks/open_set_exposure.py --seeds 0 1 2 --weights 0 0.5 --work /tmp/oe

For each seed (one split of the demo's unknown species into exposure / fit / measure species by
species.unknown_partition, and the training seed) and each exposure weight (open_set.exposure_weight;
0 = no outlier exposure, the same split), trains the demo's forager (configs/demo.yaml, the product's
train_efficientnet_v2.py) into --work, then scores every photo with every score of mushroom.openset
(temperature fitted on val, statistics on the training photos) and prints, per weight and score, the
mean and spread over seeds of: AUROC of known test photos against the measure species' photos per
photo and per find (a find: one observation, the mean of its photos' scores), "kept" (known test
photos below the threshold that flags 95 % of the fit species' photos), and the known test top-1.
Trained models are kept in --work, so a rerun only scores them again.

Measured 2026-12-03 on this 2-core machine (demo data imported from ../shared/data/fungi128: 6 known
species, 30 unknown species split 10 exposure / 10 fit / 10 measure by exposure_fraction 0.34; seeds
0, 1, 2; 130 s per training without exposure, 240 s with it; `--seeds 0 1 2 --weights 0 0.5`):

| exposure weight | score | AUROC photo | AUROC find | kept | top-1 |
|---|---|---|---|---|---|
| 0 | msp | 0.721 ± 0.015 | 0.800 ± 0.059 | 0.24 | 0.824 |
| 0 | energy | 0.701 ± 0.029 | 0.805 ± 0.049 | 0.21 | 0.824 |
| 0 | max_logit | 0.714 ± 0.028 | 0.813 ± 0.055 | 0.22 | 0.824 |
| 0 | mahalanobis | 0.663 ± 0.032 | 0.712 ± 0.044 | 0.25 | 0.824 |
| 0 | rel_mahalanobis | 0.790 ± 0.011 | 0.880 ± 0.026 | 0.30 | 0.824 |
| 0.5 | msp | 0.721 ± 0.021 | 0.806 ± 0.025 | 0.28 | 0.824 |
| 0.5 | energy | 0.705 ± 0.021 | 0.801 ± 0.011 | 0.24 | 0.824 |
| 0.5 | max_logit | 0.720 ± 0.014 | 0.818 ± 0.004 | 0.23 | 0.824 |
| 0.5 | mahalanobis | 0.641 ± 0.016 | 0.617 ± 0.036 | 0.15 | 0.824 |
| 0.5 | rel_mahalanobis | 0.809 ± 0.015 | 0.891 ± 0.007 | 0.31 | 0.824 |

Reading: relative Mahalanobis is the best score in every split, with or without exposure (+0.08
per photo over max-logit); outlier exposure at weight 0.5 adds +0.019 per photo and +0.011 per
find to it, in each of the three splits (0.795 -> 0.823, 0.775 -> 0.787, 0.800 -> 0.816), at no
top-1 cost; alone it barely moves the logit scores (+0.006 max-logit). "Kept" (known test photos
below the threshold that flags 95 % of the fit species' photos) stays near 0.3: the least
familiar-looking 5 % of ten fit species sit among the known photos. So the demo trains with
exposure weight 0.5 and evaluate.py picks rel_mahalanobis. Per-split numbers of each score, other
PCA sizes (16: 0.70-0.80, 32: 0.74-0.82, 128: 0.79-0.82) and a z-score fusion with max-logit
(0.77-0.81, no gain) were measured on the same models. rel_mahalanobis_exposure_stats is the
score with the exposure photos in its statistics (open_set.exposure_statistics, the product's
default since 2026-12-04, measured in docs/open-set.md); the table above predates it.

How many exposure species (2026-12-04, seeds 0, 1, 2, 42; the same ten measured species in every
row, the exposure species taken from the fit ones, rel_mahalanobis_exposure_stats):

    --exposure-fraction 0.1667 --unknown-val-fraction 0.6 --work /tmp/oe-e5    # 5 exposure, 15 fit
    --work /tmp/oe-e10                                                          # 10 exposure, 10 fit
    --exposure-fraction 0.5 --unknown-val-fraction 0.33 --work /tmp/oe-e15     # 15 exposure, 5 fit

| exposure species | AUROC photo (seeds 0, 1, 2, 42) | AUROC find | kept | top-1 |
|---|---|---|---|---|
| 5 | 0.757 ± 0.023 (0.759, 0.777, 0.773, 0.720) | 0.844 ± 0.039 | 0.31 | 0.789 |
| 10 | 0.791 ± 0.037 (0.795, 0.832, 0.806, 0.730) | 0.881 ± 0.034 | 0.31 | 0.818 |
| 15 | 0.765 ± 0.044 (0.809, 0.758, 0.797, 0.697) | 0.862 ± 0.048 | 0.34 | 0.804 |

Ten stays: five more species out of the same thirty help in one split (seed 0) and cost in two
(seeds 1 and 42, -0.07 and -0.03), and the per-seed spread of one training (±0.04) is larger than
any step. (Five species drawn at random instead of from the ranking: 0.773 / 0.791 / 0.773, the same
picture.)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mushroom.modelio import ModelFolder  # noqa: E402

def train(work: Path, data_dir: Path, seed: int, weight: float, fraction: float, val_fraction: float,
          extra: list[str]) -> Path:
    folder = work / f"seed{seed}-w{weight:g}"
    model = folder / "demo-mobilenet_v2"
    if ModelFolder(model).is_complete():
        return model
    cmd = [sys.executable, str(ROOT / "train_efficientnet_v2.py"), "--config", str(ROOT / "configs/demo.yaml")]
    for o in [f"paths.data_dir={data_dir}", f"paths.models_dir={folder}", "wandb.mode=disabled", f"seed={seed}",
              f"open_set.exposure_fraction={fraction}", f"open_set.unknown_val_fraction={val_fraction}",
              f"open_set.exposure_weight={weight}", *extra]:
        cmd += ["--set", o]
    print(f"training seed {seed}, exposure weight {weight:g} -> {model}", flush=True)
    log = folder / "train.log"
    folder.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode:
            raise SystemExit(f"training failed: see {log}")
    return model


def score(model_dir: Path, data_dir: Path, seed: int, fraction: float, val_fraction: float, images, rows) -> dict:
    import numpy as np

    from mushroom import metrics, openset
    from mushroom.config import load_config
    from mushroom.keras_env import keras
    from mushroom.models import with_outputs
    from mushroom.species import unknown_partition

    meta = ModelFolder(model_dir).read_meta()
    names = meta["class_names"]
    species = np.array([r["species"] for r in rows])
    split = np.array([r["split"] for r in rows])
    y = np.array([names.index(s) if s in names else -1 for s in species])
    tr, va, te = (y >= 0) & (split == "train"), (y >= 0) & (split == "val"), (y >= 0) & (split == "test")
    model = with_outputs(keras.models.load_model(ModelFolder(model_dir).model_file, compile=False))
    out = {k: np.asarray(v, np.float64) for k, v in model.predict(images.astype("float32"), batch_size=64, verbose=0).items()}
    stats = {**openset.fit_feature_stats(out["embedding"][tr], y[tr], len(names)),
             **openset.fit_rmd_stats(out["embedding"][tr], y[tr], len(names))}
    t = metrics.fit_temperature(openset.log_probs({"logits": out["logits"][va]}), y[va])
    scores = openset.unknown_scores(out, t, stats)
    cfg = load_config(ROOT / "configs/demo.yaml", [f"seed={seed}", f"open_set.exposure_fraction={fraction}",
                                                   f"open_set.unknown_val_fraction={val_fraction}"])
    part = unknown_partition(cfg, set(species), names)
    fit, measure = np.isin(species, part.fit), np.isin(species, part.measure)
    # the product's statistics (open_set.exposure_statistics): exposure photos join the PCA, the
    # within-class covariance and the background
    exposure = np.isin(species, part.exposure)
    scores["rel_mahalanobis_exposure_stats"] = openset.relative_mahalanobis(out["embedding"], openset.fit_rmd_stats(
        out["embedding"][tr], y[tr], len(names), others=out["embedding"][exposure], other_groups=species[exposure]))
    finds = np.array([f"{r['species']}|{r['observation_id']}" for r in rows])
    result = {"top1": float((out["logits"][te].argmax(1) == y[te]).mean()), "scores": {}}
    for name, s in scores.items():
        threshold = openset.fit_threshold(s[fit], 0.95)

        def per_find(mask):
            keys = sorted(set(finds[mask]))
            return np.array([s[mask & (finds == k)].mean() for k in keys])
        result["scores"][name] = {"auroc": openset.auroc(s[measure], s[te]),
                                  "auroc_find": openset.auroc(per_find(measure), per_find(te)),
                                  "kept": float(np.mean(s[te] < threshold))}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="the demo's imported data (make demo)")
    parser.add_argument("--work", default="/tmp/open-set-exposure", help="where models are trained (kept)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--exposure-fraction", type=float, default=0.34)
    parser.add_argument("--unknown-val-fraction", type=float, default=0.5,
                        help="share of the non-exposure unknown species that fits the threshold; with "
                             "--exposure-fraction it moves species between exposure and fit while the measured "
                             "ones stay (one seeded ranking: exposure takes its front, measure its end)")
    parser.add_argument("--set", action="append", default=[], help="further config overrides for training")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import csv

    import numpy as np

    from mushroom.images import load_image

    data_dir, work = Path(args.data_dir).resolve(), Path(args.work)
    if not (data_dir / "manifest.csv").is_file():
        raise SystemExit(f"{data_dir / 'manifest.csv'} is missing: run make demo DATA=../shared/data/fungi128 first")
    rows = list(csv.DictReader((data_dir / "manifest.csv").open()))
    images = None
    table: dict = {}
    for weight in args.weights:
        for seed in args.seeds:
            model = train(work, data_dir, seed, weight, args.exposure_fraction, args.unknown_val_fraction, args.set)
            if images is None:
                size = int(ModelFolder(model).read_meta()["image_size"])
                images = np.stack([load_image(data_dir / r["path"], size) for r in rows])
            r = score(model, data_dir, seed, args.exposure_fraction, args.unknown_val_fraction, images, rows)
            table.setdefault(weight, []).append(r)
            print(f"seed {seed} weight {weight:g}: top-1 {r['top1']:.3f}  " + "  ".join(
                f"{n} {v['auroc']:.3f}/{v['auroc_find']:.3f}/{v['kept']:.2f}" for n, v in r["scores"].items()), flush=True)
    print(f"\nmean ± std over seeds {args.seeds} (AUROC per photo, per find, kept at 95 % of fit-species photos flagged)")
    print("| exposure weight | score | AUROC photo | AUROC find | kept | top-1 |")
    print("|---|---|---|---|---|---|")
    for weight, results in table.items():
        for name in results[0]["scores"]:
            a = np.array([[r["scores"][name]["auroc"], r["scores"][name]["auroc_find"], r["scores"][name]["kept"]]
                         for r in results])
            top1 = np.array([r["top1"] for r in results])
            print(f"| {weight:g} | {name} | {a[:, 0].mean():.3f} ± {a[:, 0].std():.3f} | {a[:, 1].mean():.3f} ± "
                  f"{a[:, 1].std():.3f} | {a[:, 2].mean():.2f} | {top1.mean():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
