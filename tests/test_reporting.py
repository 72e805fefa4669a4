import csv
import io

import numpy as np

from mushroom.evaluation import CONTRACT_KEYS, add_degradation
from mushroom.reporting import README_BEGIN, README_END, csv_table, markdown_table, results_block, update_readme, write_reports


def _entries():
    base = {k: 0.5 for k in CONTRACT_KEYS}
    out = []
    for fmt, top1, size, lat, ci, d_ci, p in [
            ("keras", 0.40, 24.0, 12.0, [0.31, 0.5], [0.0, 0.0], 1.0),
            ("ptq_int8", 0.38, 7.2, 3.0, [0.29, 0.47], [-0.04, -0.006], 0.0312),
            ("qat_int8", 0.41, 7.2, 2.9, [0.32, 0.51], [-0.02, 0.04], 0.0004)]:
        e = dict(base, model="demo-b0", format=fmt, top1=top1, size_mb=size, latency_ms_median=lat,
                 threads=1, n_test=10, dangerous_error=float("nan") if fmt == "keras" else 0.1, weights=None,
                 top1_ci=ci, delta_top1_ci=d_ci, mcnemar_p=p, delta_ece_calibrated=0.01 * len(out),
                 delta_ece_calibrated_ci=[-0.02, 0.03] if out else [0.0, 0.0], ci_confidence=0.95,
                 bootstrap_samples=2000,
                 # as stats.paired decides it: the paired interval excludes 0 and McNemar agrees
                 delta_significant=(d_ci[0] > 0 or d_ci[1] < 0) and p < 0.05)
        out.append(e)
    add_degradation(out)
    return out


def test_degradation_is_relative_to_the_float_reference():
    e = {x["format"]: x for x in _entries()}
    assert e["keras"]["delta_top1"] == 0.0
    assert abs(e["ptq_int8"]["delta_top1"] - (-0.02)) < 1e-12
    assert abs(e["qat_int8"]["delta_top1"] - 0.01) < 1e-12
    assert e["ptq_int8"]["delta_dangerous_error"] is None  # NaN reference: no delta, not a number
    assert all(x["reference_format"] == "keras" for x in e.values())


def test_tables_render_every_entry_and_missing_values():
    entries = _entries()
    md = markdown_table(entries)
    lines = md.splitlines()
    assert len(lines) == 2 + 3
    assert "| demo-b0 | qat_int8 | 0.410 [0.32, 0.51] |" in md
    assert "–" in lines[2]  # the NaN dangerous error of the keras row
    # Δtop-1 with its paired interval, starred when it excludes 0; McNemar p; the reference row plain
    assert "| -0.020 [-0.04, -0.01]* | 0.031 |" in lines[3]
    assert "| +0.010 [-0.02, +0.04] | <0.001 |" in lines[4]
    assert "| +0.000 | – |" in lines[2]
    rows = list(csv.DictReader(io.StringIO(csv_table(entries))))
    assert [r["format"] for r in rows] == ["keras", "ptq_int8", "qat_int8"]
    assert float(rows[1]["size_mb"]) == 7.2
    assert float(rows[1]["delta_top1_ci_lo"]) == -0.04 and float(rows[2]["top1_ci_hi"]) == 0.51
    assert float(rows[1]["mcnemar_p"]) == 0.0312
    # entries without intervals (older metrics.json) still render
    assert "| demo-b0 | keras | 0.400 |" in markdown_table([dict(entries[0], top1_ci=None)])


def test_plots_and_readme_block(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 40)
    probs = {f: rng.dirichlet(np.ones(4), 40) for f in ("keras", "qat_int8")}
    arrays = {"demo-b0": {"labels": labels, "probs": probs, "class_names": list("abcd")}}
    plots = write_reports(_entries(), arrays, tmp_path, 15)
    names = sorted(p.name for p in plots)
    assert names == ["confusion_demo-b0_keras.png", "confusion_demo-b0_qat_int8.png", "deltas_demo-b0.png",
                     "reliability_demo-b0.png", "risk_coverage_demo-b0.png", "tradeoff.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert (tmp_path / "comparison.md").read_text().startswith("| model | format |")

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nold\n{README_END}\n\ntail\n")
    block = results_block(_entries(), "make demo DATA=x")
    assert update_readme(readme, block)
    text = readme.read_text()
    assert "\nold\n" not in text and text.endswith("\ntail\n") and "`make demo DATA=x`" in text
    assert "trained from scratch" in text and "| demo-b0 | ptq_int8 |" in text
    assert "95% group-bootstrap interval" in text and "McNemar" in text
    assert "![format minus float reference with intervals demo-b0](reports/deltas_demo-b0.png)" in text
    assert update_readme(readme, block) and readme.read_text() == text  # idempotent
    (tmp_path / "plain.md").write_text("no markers")
    assert not update_readme(tmp_path / "plain.md", block)
    # the README's short table has markers of its own, so the full block (docs/results.md) and it never mix
    from mushroom.reporting import SUMMARY_BEGIN, SUMMARY_END, results_summary

    summary = results_summary(_entries(), "make demo DATA=x")
    assert summary.startswith(SUMMARY_BEGIN) and summary.endswith(SUMMARY_END)
    assert sum(line.startswith("| demo-b0 |") for line in summary.splitlines()) == len(_entries())
    assert not update_readme(readme, summary, SUMMARY_BEGIN, SUMMARY_END)     # only results markers there
    readme.write_text(f"{SUMMARY_BEGIN}\n{SUMMARY_END}\n{README_BEGIN}\n{README_END}\n")
    assert update_readme(readme, summary, SUMMARY_BEGIN, SUMMARY_END) and update_readme(readme, block)
    text = readme.read_text()
    short, full = text.split(SUMMARY_END)
    assert short.count("| demo-b0 | ptq_int8 |") == 1 and full.count("| demo-b0 | ptq_int8 |") == 2   # + open set


def test_open_set_plot_and_table(tmp_path):
    from mushroom.reporting import OPEN_SET_COLUMNS, markdown_table, open_set_risk_coverage

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 40)
    probs = {"keras": rng.dirichlet(np.ones(4), 40)}
    known, unknown = rng.normal(0, 1, 40), rng.normal(1.5, 1, 30)
    arrays = {"m": {"labels": labels, "probs": probs, "class_names": list("abcd"),
                    "open_set": {"keras": {"known": known, "unknown": unknown, "threshold": 1.0, "score": "msp",
                                           "known_correct": probs["keras"].argmax(1) == labels}}}}
    plots = write_reports(_entries(), arrays, tmp_path, 15)
    assert (tmp_path / "open_set_m.png") in plots
    # answering the least unknown-looking photos first: ends at everything answered, with every
    # unknown photo and every misclassified known one counted wrong
    coverage, risk = open_set_risk_coverage(known, unknown, np.ones(40, bool))
    assert coverage[-1] == 1.0 and risk[-1] == 30 / 70 and risk[0] <= risk[-1]
    entry = {**_entries()[0], "unknown_score": "msp", "unknown_auroc": 0.7, "fusion": "mean"}
    table = markdown_table([entry], OPEN_SET_COLUMNS)
    assert "| msp | 0.700 |" in table and "mean" in table


def test_unknown_species_table_names_the_hardest_species_first(tmp_path):
    from mushroom import openset
    from mushroom.reporting import unknown_species_table

    rng = np.random.default_rng(2)
    known = rng.normal(0, 1, 50)
    # a look-alike scored like the known photos, and a species far from them
    unknown = np.concatenate([rng.normal(0, 1, 20), rng.normal(4, 0.5, 10)])
    names = ["Imleria badia"] * 20 + ["Laetiporus sulphureus"] * 10
    taken = ["Boletus edulis"] * 15 + ["Amanita muscaria"] * 5 + ["Armillaria mellea"] * 10
    verdicts = ["edible"] * 2 + ["unknown"] * 28
    by_format = {}
    for fmt in ("keras", "qat_int8"):
        rows = openset.species_breakdown(known, unknown, names, 1.0, taken, verdicts)
        rows[-1]["dangerous"] = True
        by_format[fmt] = {"known": known, "unknown": unknown, "threshold": 1.0, "score": "rel_mahalanobis",
                          "known_correct": np.ones(50, bool), "species": rows}
    table = unknown_species_table("m", by_format)
    lines = [line for line in table.splitlines() if line.startswith("| Imleria") or line.startswith("| Laetiporus")]
    assert lines[0].startswith("| Imleria badia | 20 | Boletus edulis (75%) |")
    assert lines[1].startswith("| Laetiporus sulphureus (poisonous/deadly) | 10 | Armillaria mellea (100%) |")
    first = by_format["keras"]["species"][0]
    assert f"{first['auroc']:.2f} · {first['flagged']:.0%} · 2" in lines[0]
    assert "qat_int8: AUROC · flagged · edible" in table
    # written beside the open-set plot by write_reports
    arrays = {"m": {"labels": rng.integers(0, 4, 50), "probs": {"keras": rng.dirichlet(np.ones(4), 50)},
                    "class_names": list("abcd"), "open_set": by_format}}
    write_reports(_entries(), arrays, tmp_path, 15)
    assert (tmp_path / "unknown_species_m.md").read_text() == table
    assert unknown_species_table("m", {"keras": {k: v for k, v in by_format["keras"].items() if k != "species"}}) == ""
