"""reports/: the comparison table (markdown, CSV), plots (PNG), and the README results block."""
from __future__ import annotations

import csv
import io
import os
import platform
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mushroom import metrics  # noqa: E402
from mushroom.fileio import atomic_write  # noqa: E402
from mushroom.stats import excludes_zero  # noqa: E402


def _is_ci(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)


def _with_ci(key: str, fmt: str, signed: bool = False, star: bool = False):
    """A cell renderer: the value, then its interval (<key>_ci) at two decimals, "0.771 [0.68, 0.86]";
    `star`: "*" when the entry's delta_significant holds (the interval excludes 0 and McNemar agrees,
    see stats.paired). The reference row of a Δ column shows the value alone."""
    ci_fmt = "{:+.2f}" if signed else "{:.2f}"

    def render(entry: dict) -> str | None:
        value = entry.get(key)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        text = fmt.format(value)
        ci = entry.get(f"{key}_ci")
        if _is_ci(ci) and not (signed and entry.get("format") == entry.get("reference_format")):
            text += f" [{ci_fmt.format(ci[0])}, {ci_fmt.format(ci[1])}]"
            if star and entry.get("delta_significant"):
                text += "*"
        return text
    return render


def _p_text(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_value(entry: dict) -> str | None:
    p = entry.get("mcnemar_p")
    if p is None or entry.get("format") == entry.get("reference_format"):
        return None
    return _p_text(p)


# (column title, key, format) of the comparison table; the format is a str.format pattern, or a
# function of the whole entry (None: no value).
TABLE_COLUMNS = (
    ("model", "model", "{}"), ("format", "format", "{}"), ("top-1", "top1", _with_ci("top1", "{:.3f}")),
    ("top-5", "top5", "{:.3f}"), ("macro F1", "macro_f1", "{:.3f}"), ("edible F1", "edible_f1", "{:.3f}"),
    ("dangerous error", "dangerous_error", "{:.3f}"),
    ("dangerous → 'edible' verdict", "dangerous_verdict_edible", "{:.3f}"),
    ("edible → 'edible' verdict", "edible_verdict_edible", "{:.3f}"), ("ECE", "ece", "{:.3f}"),
    ("ECE after T", "ece_calibrated", "{:.3f}"), ("T", "temperature", "{:.2f}"),
    ("size MB", "size_mb", "{:.2f}"), ("latency ms (median)", "latency_ms_median", "{:.1f}"),
    ("p95 ms", "latency_ms_p95", "{:.1f}"), ("invoke ms", "invoke_ms_median", "{:.1f}"),
    ("invoke ÷ float32", "invoke_ratio_float32", "{:.2f}"), ("threads", "threads", "{}"),
    ("Δtop-1", "delta_top1", _with_ci("delta_top1", "{:+.3f}", signed=True, star=True)),
    ("McNemar p", "mcnemar_p", _p_value), ("Δtop-5", "delta_top5", "{:+.3f}"),
    ("ΔECE", "delta_ece", "{:+.3f}"), ("Δdangerous", "delta_dangerous_error", "{:+.3f}"),
    ("n test", "n_test", "{}"),
    # Fidelity to the float reference on every imported photo (no labels needed: mushroom.fidelity).
    ("same species as float (all photos)", "agreement_all", _with_ci("agreement_all", "{:.3f}")),
    ("same verdict", "verdict_agreement_all", _with_ci("verdict_agreement_all", "{:.3f}")),
    ("same unknown flag", "flag_agreement_all", _with_ci("flag_agreement_all", "{:.3f}")),
    ("n all", "agreement_all_n", "{}"),
)
# comparison.csv: the table's keys, then these, intervals as <key>_lo and <key>_hi.
CSV_INTERVALS = ("top1_ci", "top5_ci", "macro_f1_ci", "edible_f1_ci", "ece_calibrated_ci",
                 "dangerous_verdict_edible_ci", "edible_verdict_edible_ci", "delta_top1_ci", "delta_ece_calibrated_ci",
                 "agreement_all_ci", "verdict_agreement_all_ci", "flag_agreement_all_ci")
CSV_EXTRA = ("delta_ece_calibrated", "flip_rate", "mean_abs_dprob", "max_abs_dprob", "delta_significant",
             "mcnemar_b", "mcnemar_c", "bootstrap_samples", "ci_confidence")
# reports/predictions.csv: one row per model x format x test photo (known test and unknown-test species).
PREDICTION_COLUMNS = ("model", "format", "path", "group", "known", "true_species", "predicted_species", "probability",
                      "top5", "verdict", "unknown_score", "unknown_flagged", "top1_correct", "top5_correct",
                      "probability_uncalibrated")
# The open-set table: what happens to photos of species the model never learnt, and to finds.
OPEN_SET_COLUMNS = (
    ("model", "model", "{}"), ("format", "format", "{}"), ("score", "unknown_score", "{}"),
    ("AUROC unknown vs known", "unknown_auroc", _with_ci("unknown_auroc", "{:.3f}")),
    ("AUROC (val, folds of species)", "unknown_auroc_cv", "{:.3f}"),
    ("msp", "unknown_auroc_msp", "{:.3f}"), ("energy", "unknown_auroc_energy", "{:.3f}"),
    ("max-logit", "unknown_auroc_max_logit", "{:.3f}"), ("Mahalanobis", "unknown_auroc_mahalanobis", "{:.3f}"),
    ("rel. Mahalanobis", "unknown_auroc_rel_mahalanobis", "{:.3f}"),
    ("unknown flagged", "unknown_flagged", _with_ci("unknown_flagged", "{:.3f}")),
    ("known kept", "known_coverage", _with_ci("known_coverage", "{:.3f}")),
    ("unknown → 'edible'", "unknown_verdict_edible", _with_ci("unknown_verdict_edible", "{:.3f}")),
    ("poisonous/deadly unknown → 'edible'", "unknown_dangerous_verdict_edible", "{:.3f}"),
    ("same, without the flag", "unknown_dangerous_verdict_edible_unflagged", "{:.3f}"),
    ("top-1 per photo", "top1", "{:.3f}"), ("top-1 per find", "fused_top1", "{:.3f}"),
    ("ECE per find", "fused_ece", "{:.3f}"), ("fusion", "fusion", "{}"),
    ("AUROC per find", "fused_unknown_auroc", _with_ci("fused_unknown_auroc", "{:.3f}")),
    ("n unknown test (species)", "n_unknown_test", lambda e: None if e.get("n_unknown_test") is None else
     f"{e['n_unknown_test']} ({e.get('n_unknown_species_test')})"),
    ("n finds", "n_finds_test", "{}"),
)
README_BEGIN = "<!-- results:begin (generated by `make results` from reports/metrics.json; do not edit) -->"
README_END = "<!-- results:end -->"
SUMMARY_BEGIN = "<!-- summary:begin (generated by `make results` from reports/metrics.json; do not edit) -->"
SUMMARY_END = "<!-- summary:end -->"
# The README's short table: what a forager and a reader of the study look at first.
SUMMARY_COLUMNS = (
    ("model", "model", "{}"), ("format", "format", "{}"), ("top-1", "top1", _with_ci("top1", "{:.3f}")),
    ("unknown AUROC photo / find", "unknown_auroc",
     lambda e: None if e.get("unknown_auroc") is None else
     f"{e['unknown_auroc']:.2f} / " + ("–" if e.get("fused_unknown_auroc") is None else f"{e['fused_unknown_auroc']:.2f}")),
    ("known kept", "known_coverage", "{:.2f}"), ("unknown → 'edible'", "unknown_verdict_edible", "{:.3f}"),
    ("poisonous → 'edible'", "dangerous_verdict_edible", "{:.3f}"),
    ("size MB", "size_mb", "{:.2f}"), ("ms (1 thread)", "latency_ms_median", "{:.1f}"),
    ("same species / verdict as float, all photos", "agreement_all",
     lambda e: None if e.get("agreement_all") is None or e.get("format") == e.get("reference_format") else
     _with_ci("agreement_all", "{:.3f}")(e) + f" / {e['verdict_agreement_all']:.3f}"),
)


def _cell(entry: dict, key: str, fmt) -> str:
    if callable(fmt):
        text = fmt(entry)
        return "–" if text is None else text
    value = entry.get(key)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return fmt.format(value)


def markdown_table(entries: list[dict], columns=TABLE_COLUMNS) -> str:
    head = "| " + " | ".join(t for t, _, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    rows = ["| " + " | ".join(_cell(e, k, f) for _, k, f in columns) + " |" for e in entries]
    return "\n".join([head, sep] + rows)


def csv_table(entries: list[dict]) -> str:
    keys = [k for _, k, _ in TABLE_COLUMNS] + list(CSV_EXTRA)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys + [f"{k}_{end}" for k in CSV_INTERVALS for end in ("lo", "hi")])
    for e in entries:
        values = ["" if e.get(k) is None else e.get(k) for k in keys]
        for k in CSV_INTERVALS:
            values += list(e[k]) if _is_ci(e.get(k)) else ["", ""]
        writer.writerow(values)
    return buf.getvalue()


def _top5_text(probs: np.ndarray, class_names: list[str]) -> str:
    order = np.argsort(-probs, kind="stable")[:5]
    return ";".join(f"{class_names[c]}:{probs[c]:.6f}" for c in order)


def prediction_rows(model: str, arrays: dict):
    """predictions.csv rows of one model (evaluation.evaluate_folder's arrays): every format's answer
    for every known test photo, then for every unknown-test photo (known false; true species = its own
    species, which the model cannot name). Probabilities are calibrated (temperature of the format)."""
    names, labels = arrays["class_names"], arrays["labels"]
    for fmt, probs in arrays["probs"].items():
        calibrated, verdicts = arrays["calibrated"][fmt], arrays["verdicts"][fmt]
        os_arrays = arrays["open_set"].get(fmt) or {}
        pred = metrics.predictions(probs)
        p_true = probs[np.arange(len(labels)), labels]
        rivals = (probs >= p_true[:, None]).sum(axis=1) - 1
        for i, row in enumerate(arrays["rows"]):
            score = os_arrays["known"][i] if os_arrays else None
            yield {"model": model, "format": fmt, "path": row["path"], "group": row["observation_id"],
                   "known": "true", "true_species": row["species"], "predicted_species": names[pred[i]],
                   "probability": f"{calibrated[i, pred[i]]:.6f}", "top5": _top5_text(calibrated[i], names),
                   "verdict": verdicts[i], "unknown_score": "" if score is None else f"{score:.6g}",
                   "unknown_flagged": "" if score is None else str(bool(score >= os_arrays["threshold"])).lower(),
                   "top1_correct": str(bool(rivals[i] < 1)).lower(), "top5_correct": str(bool(rivals[i] < 5)).lower(),
                   "probability_uncalibrated": f"{probs[i].max():.6f}"}
        if not os_arrays:
            continue
        unknown_probs = os_arrays["unknown_calibrated"]
        for i, row in enumerate(arrays["unknown_rows"]):
            pred_u = int(np.argmax(unknown_probs[i]))
            score = os_arrays["unknown"][i]
            yield {"model": model, "format": fmt, "path": row["path"], "group": row["observation_id"],
                   "known": "false", "true_species": row["species"], "predicted_species": names[pred_u],
                   "probability": f"{unknown_probs[i, pred_u]:.6f}", "top5": _top5_text(unknown_probs[i], names),
                   "verdict": os_arrays["unknown_verdicts"][i], "unknown_score": f"{score:.6g}",
                   "unknown_flagged": str(bool(score >= os_arrays["threshold"])).lower(),
                   "top1_correct": "", "top5_correct": "", "probability_uncalibrated": ""}


def write_predictions(arrays_by_model: dict, path: Path) -> Path:
    """reports/predictions.csv (PREDICTION_COLUMNS), so every number of metrics.json can be recomputed."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PREDICTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for model, arrays in arrays_by_model.items():
        writer.writerows(prediction_rows(model, arrays))
    atomic_write(path, buf.getvalue())
    return path


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


def reliability_plot(model: str, labels: np.ndarray, probs_by_format: dict, n_bins: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for fmt, probs in probs_by_format.items():
        bins = metrics.reliability_bins(probs, labels, n_bins)
        used = bins["count"] > 0
        ece = metrics.expected_calibration_error(probs, labels, n_bins)
        ax.plot(bins["confidence"][used], bins["accuracy"][used], "o-", ms=4, label=f"{fmt} (ECE {ece:.3f})")
    ax.set(xlabel="confidence (top-1 probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability: {model}")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def confusion_plot(model: str, fmt: str, labels: np.ndarray, probs: np.ndarray, class_names: list[str], path: Path) -> Path:
    cm = metrics.confusion_matrix(probs, labels)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * n + 2), max(4, 0.35 * n + 1.5)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion: {model} ({fmt})")
    return _save(fig, path)


def risk_coverage_plot(model: str, labels: np.ndarray, probs_by_format: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    for fmt, probs in probs_by_format.items():
        coverage, risk = metrics.risk_coverage(probs, labels)
        ax.plot(coverage, risk, label=fmt)
    ax.set(xlabel="coverage (share of photos answered)", ylabel="error rate among answered",
           xlim=(0, 1), ylim=(0, 1), title=f"Risk-coverage: {model}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def open_set_risk_coverage(known: np.ndarray, unknown: np.ndarray, known_correct: np.ndarray):
    """Photos of known and unknown species together, answered from the least unknown-looking up:
    coverage = share answered, risk = share of the answered that are wrong (a species the model
    does not know counts as wrong, whatever it says)."""
    scores = np.concatenate([known, unknown])
    wrong = np.concatenate([~np.asarray(known_correct, bool), np.ones(len(unknown), bool)]).astype(float)
    order = np.lexsort((-wrong, scores))   # lowest score first; among ties the errors first (pessimistic)
    n = np.arange(1, len(scores) + 1)
    return n / len(scores), np.cumsum(wrong[order]) / n


def open_set_plot(model: str, by_format: dict, path: Path) -> Path:
    """Per format: histograms of the unknown-species score, known vs unknown test photos, with the
    threshold; and the open-set risk-coverage curves of every format."""
    fmts = list(by_format)
    cols = min(4, len(fmts) + 1)
    rows = -(-(len(fmts) + 1) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(fmts) + 1:]:
        ax.axis("off")
    for ax, fmt in zip(axes, fmts):
        a = by_format[fmt]
        lo = min(a["known"].min(), a["unknown"].min())
        hi = max(a["known"].max(), a["unknown"].max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 25)
        ax.hist(a["known"], bins=bins, alpha=0.6, density=True, label="known species")
        ax.hist(a["unknown"], bins=bins, alpha=0.6, density=True, label="unknown species")
        ax.axvline(a["threshold"], color="k", ls="--", lw=1, label="threshold")
        ax.set(title=f"{fmt}: {a['score']} score", xlabel="higher: less like a known species")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    ax = axes[len(fmts)]
    for fmt in fmts:
        a = by_format[fmt]
        coverage, risk = open_set_risk_coverage(a["known"], a["unknown"], a["known_correct"])
        ax.plot(coverage, risk, label=fmt)
    ax.set(xlabel="share of photos answered", ylabel="wrong or unknown among answered", xlim=(0, 1), ylim=(0, 1),
           title="Open-set risk-coverage")
    ax.legend(fontsize=7)
    fig.suptitle(f"Unknown species: {model} (test photos; threshold dashed)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def tradeoff_plot(entries: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for model in dict.fromkeys(e["model"] for e in entries):
        group = [e for e in entries if e["model"] == model]
        ax.plot([e["size_mb"] for e in group], [e["top1"] for e in group], "-", color="0.8", zorder=1)
        # Area grows with latency but is capped, so a slow Keras row does not hide the others.
        sc = ax.scatter([e["size_mb"] for e in group], [e["top1"] for e in group],
                        s=[20 + 6 * min(e["latency_ms_median"] or 0, 40) for e in group], zorder=2, label=model)
        for i, e in enumerate(group):
            ax.annotate(f"{e['format']} {e['latency_ms_median'] or 0:.1f} ms", (e["size_mb"], e["top1"]),
                        fontsize=7, xytext=(5, 4 - 9 * (i % 2)), textcoords="offset points",
                        color=sc.get_facecolor()[0])
    ax.set(xscale="log", xlabel="model file size (MB, log scale)", ylabel="test top-1",
           title="Accuracy / size / latency (marker area ~ latency, capped at 40 ms)")
    legend = ax.legend(fontsize=8)
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    return _save(fig, path)


def _has_deltas(entries: list[dict], model: str) -> bool:
    return any(e["model"] == model and _is_ci(e.get("delta_top1_ci")) for e in entries)


def deltas_plot(model: str, entries: list[dict], path: Path) -> Path:
    """Δtop-1 and ΔECE (after temperature) of each format against the model's float reference, with
    their paired group-bootstrap intervals; red where the interval excludes 0."""
    group = [e for e in entries if e["model"] == model]
    ref = group[0].get("reference_format", group[0]["format"])
    confidence = group[0].get("ci_confidence")
    level = f"{confidence:.0%} " if isinstance(confidence, float) else ""
    fig, axes = plt.subplots(1, 2, figsize=(9, 1.4 + 0.4 * len(group)), sharey=True)
    for ax, key, title in zip(axes, ("delta_top1", "delta_ece_calibrated"),
                              ("Δ top-1 (above 0: better)", "Δ ECE after temperature (below 0: better)")):
        for i, e in enumerate(group):
            value, ci = e.get(key), e.get(f"{key}_ci")
            if value is None:
                continue
            color = "C3" if excludes_zero(ci if _is_ci(ci) else None) else "C0"
            if _is_ci(ci):
                ax.hlines(i, ci[0], ci[1], color=color, lw=2)
            ax.plot(value, i, "o", color=color, ms=5)
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"format − {ref}", fontsize=8)
        ax.tick_params(labelsize=7)
    labels = [e["format"] + ("" if e["format"] == ref or e.get("mcnemar_p") is None
                             else f"\n(McNemar p {_p_text(e['mcnemar_p'])})") for e in group]
    axes[0].set_yticks(range(len(group)), labels)
    axes[0].set_ylim(len(group) - 0.5, -0.5)
    fig.suptitle(f"{model}: each format vs {ref}, {level}paired group-bootstrap intervals "
                 "(red: excludes 0)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def unknown_species_table(model: str, by_format: dict) -> str:
    """Markdown: per unknown-test species, what the model takes its photos for and, per format, the
    species' AUROC against the known photos, the share flagged and the photos answered "edible";
    the hardest species (lowest AUROC of the first format) first."""
    fmts = [f for f in by_format if by_format[f].get("species")]
    if not fmts:
        return ""
    rows = {fmt: {r["species"]: r for r in by_format[fmt]["species"]} for fmt in fmts}
    first = by_format[fmts[0]]["species"]
    lines = [f"# Unknown species, one by one: {model}", "",
             "Photos of each unknown-test species (never used to fit the threshold) against every known test photo. "
             f"AUROC: how well the {by_format[fmts[0]]['score']} score ranks this species' photos above the known "
             "ones (0.5: no better than chance); flagged: share answered \"unknown species\"; edible: photos "
             "answered \"edible\". Taken for: the model's most frequent top-1 class for them "
             f"({fmts[0]}). The hardest species first.", "",
             "| species | photos | taken for | " + " | ".join(f"{f}: AUROC · flagged · edible" for f in fmts) + " |",
             "|---|---|---|" + "---|" * len(fmts)]
    for r in first:
        name = r["species"] + (" (poisonous/deadly)" if r.get("dangerous") else "")
        cells = []
        for fmt in fmts:
            x = rows[fmt].get(r["species"])
            cells.append("–" if x is None else f"{x['auroc']:.2f} · {x['flagged']:.0%} · {x.get('edible', '–')}")
        lines.append(f"| {name} | {r['photos']} | {r['taken_for']} ({r['taken_for_share']:.0%}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reports(entries: list[dict], arrays_by_model: dict, reports_dir: Path, n_bins: int) -> list[Path]:
    """comparison.md/.csv and every plot; returns the plot paths."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(reports_dir / "comparison.md", (markdown_table(entries) + "\n\n"
                                                 + markdown_table(entries, OPEN_SET_COLUMNS) + "\n").encode())
    atomic_write(reports_dir / "comparison.csv", csv_table(entries))
    plots = []
    for model, arrays in arrays_by_model.items():
        labels, probs = arrays["labels"], arrays["probs"]
        plots.append(reliability_plot(model, labels, probs, n_bins, reports_dir / f"reliability_{model}.png"))
        plots.append(risk_coverage_plot(model, labels, probs, reports_dir / f"risk_coverage_{model}.png"))
        if arrays.get("open_set"):
            plots.append(open_set_plot(model, arrays["open_set"], reports_dir / f"open_set_{model}.png"))
            table = unknown_species_table(model, arrays["open_set"])
            if table:
                atomic_write(reports_dir / f"unknown_species_{model}.md", table.encode())
        for fmt in [f for f in ("keras", "qat_int8") if f in probs] or list(probs)[:1]:
            plots.append(confusion_plot(model, fmt, labels, probs[fmt], arrays["class_names"],
                                        reports_dir / f"confusion_{model}_{fmt}.png"))
    for model in dict.fromkeys(e["model"] for e in entries):
        if _has_deltas(entries, model):
            plots.append(deltas_plot(model, entries, reports_dir / f"deltas_{model}.png"))
    plots.append(tradeoff_plot(entries, reports_dir / "tradeoff.png"))
    return plots


def results_block(entries: list[dict], command: str, reports_rel: str = "reports") -> str:
    """The README's results section: the tables, what produced them, and the headline plots."""
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"
    models = list(dict.fromkeys(e["model"] for e in entries))
    scratch = any(e.get("weights") in (None, "null") for e in entries)
    lines = [README_BEGIN, "",
             f"Measured on {date.today().isoformat()}, {machine}, by `{command}`.",
             "Latency: one image per call through the LiteRT runtime (Keras rows: TensorFlow), median and p95 "
             "after warm-up. Δ = format minus the float reference of the same model.", ""]
    if scratch:
        lines += ["**These models were trained from scratch (no ImageNet weights were reachable): the numbers measure "
                  "the pipeline and what quantization costs, not the best accuracy this project can reach.**", ""]
    for model in models:
        note = next((e.get("note") for e in entries if e["model"] == model and e.get("note")), None)
        if note:
            lines += [f"Note on {model}: {note}.", ""]
    lines += [markdown_table(entries), ""]
    with_ci = [e for e in entries if _is_ci(e.get("top1_ci"))]
    if with_ci:
        level, samples = with_ci[0].get("ci_confidence"), with_ci[0].get("bootstrap_samples")
        level_text = f"{level:.0%}" if isinstance(level, float) else "the configured"
        samples_text = f", {samples} resamples" if samples else ""
        lines += [f"[lo, hi]: {level_text} group-bootstrap interval (whole finds resampled{samples_text}); Δtop-1 "
                  "interval paired against the float reference on the same resamples, * when it excludes 0; McNemar "
                  "p: exact test on the test photos whose top-1 correctness differs from the reference. With few finds "
                  "the interval is too narrow: call a loss established only when both agree (docs/evaluation.md, \"Intervals "
                  "and paired tests\").", ""]
    lines += ["Photos of species the model never learnt (unknown-test species, never used "
              "to fit the threshold), and several photos of one find fused into one answer:", "",
              markdown_table(entries, OPEN_SET_COLUMNS), ""]
    for model in models:
        lines.append(f"![reliability {model}]({reports_rel}/reliability_{model}.png)")
        if any(e["model"] == model and e.get("unknown_auroc") is not None for e in entries):
            lines.append(f"![unknown species {model}]({reports_rel}/open_set_{model}.png)")
            lines.append(f"[Unknown species one by one: what {model} takes each for]"
                         f"({reports_rel}/unknown_species_{model}.md)")
        if _has_deltas(entries, model):
            lines.append(f"![format minus float reference with intervals {model}]({reports_rel}/deltas_{model}.png)")
    lines += [f"![accuracy/size/latency trade-off]({reports_rel}/tradeoff.png)", "", README_END]
    return "\n".join(lines)


def results_summary(entries: list[dict], command: str) -> str:
    """The README's results: one short table (SUMMARY_COLUMNS) between the summary markers."""
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    return "\n".join([SUMMARY_BEGIN, "", f"Measured on {date.today().isoformat()} ({machine}) by `{command}`; "
                      "intervals, every metric and the plots: [docs/results.md](docs/results.md).", "",
                      markdown_table(entries, SUMMARY_COLUMNS), "", SUMMARY_END])


def update_readme(readme: Path, block: str, begin: str = README_BEGIN, end: str = README_END) -> bool:
    """Replace the text between the markers; returns False when the markers are missing."""
    text = readme.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        return False
    before, rest = text.split(begin, 1)
    _, after = rest.split(end, 1)
    atomic_write(readme, before + block + after)
    return True
