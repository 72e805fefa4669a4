"""The phone page's build (mushroom/app.py) and the parity of its JavaScript with the Python it
mirrors: the verdict rules (app/src/decision.js vs advice.advise) and the resize
(app/src/preprocess.js vs images.resize_with_pad), run under Node on thousands of cases. The page
in a real browser is tested in test_app_browser.py."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from mushroom import openset
from mushroom.advice import RULES, UnknownCheck, advise
from mushroom.look_alikes import look_alike_table
from mushroom.app import (BUNDLE_FILE, MODEL_FILE, OPENSET_FILE, build_app, check_same_outputs, fix_batch,
                          openset_binary, rules_bundle, site_bytes, WASM_COMPAT, WASM_SIMD, WASM_THREADED)
from mushroom.config import PROJECT_ROOT
from mushroom.images import resize_with_pad
from mushroom.species import Species, graded_species

from tests.nodejs import IN_CI, SRC, need_node, run_node  # noqa: F401  (IN_CI: test_app_browser imports it)


# --- the model file ------------------------------------------------------------------------------------
def test_fixed_batch_file_has_batch_one_and_the_same_outputs(tiny_model_folder, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    source = tiny_model_folder["folder"] / "tflite" / "ptq_int8.tflite"
    data = source.read_bytes()
    before = Interpreter(model_path=str(source)).get_input_details()[0]["shape_signature"]
    assert before[0] == -1                               # what a Keras conversion writes
    fixed, changed = fix_batch(data)
    assert changed > 0 and len(fixed) == len(data)        # patched in place, nothing moved
    (tmp_path / "fixed.tflite").write_bytes(fixed)
    it = Interpreter(model_path=str(tmp_path / "fixed.tflite"))
    assert list(it.get_input_details()[0]["shape_signature"]) == [1, 32, 32, 3]
    assert all(d["shape_signature"][0] == 1 for d in it.get_output_details())
    assert check_same_outputs(source, tmp_path / "fixed.tflite", n=6) == 0.0
    assert fix_batch(fixed) == (fixed, 0)                 # idempotent


def _with_open_set(tiny_model_folder, root, score="mahalanobis"):
    """A copy of the tiny model folder as evaluate.py leaves it: temperature.json, open_set.json
    and, for Mahalanobis, the class means and whitening matrix of the training embeddings."""
    from mushroom.images import load_image
    from mushroom.litert import TFLiteModel
    from mushroom.manifest import load_split  # noqa: F401  (the fixture's data layout)

    t = tiny_model_folder
    folder = root / t["folder"].name
    shutil.copytree(t["folder"], folder)
    model = TFLiteModel(folder / "tflite" / "ptq_int8.tflite")
    names = [s["name"] for s in json.loads((folder / "meta.json").read_text())["species"]]
    photos, labels = [], []
    for c, name in enumerate(names):
        for p in sorted((t["data_dir"] / "train" / name.replace(" ", "_")).glob("*.jpg")):
            photos.append(load_image(p, 32))
            labels.append(c)
    out = model.run(np.stack(photos))
    stats = {**openset.fit_feature_stats(out["embedding"], np.array(labels), len(names)),
             **openset.fit_rmd_stats(out["embedding"], np.array(labels), len(names), 8)}
    (folder / "open_set").mkdir(exist_ok=True)
    np.savez(folder / "open_set" / "ptq_int8.npz", **openset.stats_for(score, stats))
    scores = openset.unknown_scores({k: v.astype(np.float64) for k, v in out.items()}, 1.3, stats)[score]
    (folder / "open_set.json").write_text(json.dumps({
        "by_format": {"ptq_int8": {"score": score, "threshold": float(np.quantile(scores, 0.9)), "unknown_recall": 0.95,
                                   "edible_threshold": float(np.quantile(scores, 0.8)), "edible_recall": 0.99}},
        "fusion": "mean"}))
    (folder / "temperature.json").write_text(json.dumps({"temperature": 1.3, "by_format": {"ptq_int8": 1.3}}))
    return folder, stats


def test_build_writes_the_site_and_everything_predict_reads(tiny_model_folder, tmp_path):
    node_modules = PROJECT_ROOT / "app" / "node_modules"
    if not (node_modules / "@litertjs/core").is_dir():
        if IN_CI:
            pytest.fail("LiteRT.js is not installed: .ci/run runs npm ci in app/")
        pytest.skip("LiteRT.js not installed (cd app && npm ci)")
    folder, stats = _with_open_set(tiny_model_folder, tmp_path / "models")
    cfg = tiny_model_folder["cfg"]
    out = build_app(cfg, folder, "ptq_int8", tmp_path / "dist")
    dist = tmp_path / "dist"
    for name in ("index.html", "app.js", "decision.js", "preprocess.js", "app.css", "sw.js", "manifest.webmanifest",
                 "litert.js", "litert-wasm-utils.js", "wasm/litert_wasm_internal.wasm", "icon-192.png", "icon-512.png",
                 MODEL_FILE, BUNDLE_FILE, OPENSET_FILE):
        assert (dist / name).is_file(), name
    # the runtime imports its helper by relative path: nothing for a bundler or a CDN to resolve
    assert '"@litertjs/wasm-utils"' not in (dist / "litert.js").read_text()
    b = json.loads((dist / BUNDLE_FILE).read_text())
    meta = json.loads((folder / "meta.json").read_text())
    classes = [Species.from_dict(s) for s in meta["species"]]
    assert [c["name"] for c in b["classes"]] == [s.name for s in classes]
    table = look_alike_table(classes, graded_species(cfg))
    assert {c["name"]: c["look_alikes"] for c in b["classes"]} == table
    assert b["temperature"] == 1.3 and b["fusion"] == "mean"
    assert b["predict"] == {k: cfg.predict[k] for k in b["predict"]}
    assert b["open_set"]["score"] == "mahalanobis"
    spec = b["model"]
    assert spec["input"]["shape"] == [1, 32, 32, 3] and spec["input"]["dtype"] == "uint8"
    assert set(spec["outputs"]) == {"probs", "logits", "embedding"}
    from mushroom.litert import TFLiteModel

    m = TFLiteModel(dist / MODEL_FILE)
    assert (spec["input"]["scale"], spec["input"]["zero_point"]) == tuple(m.input_quantization)
    # the service worker precaches every file but the .wasm builds, under a name from their hashes
    sw = (dist / "sw.js").read_text()
    assert f"mushroom-{out['cache_version']}" in sw and '"model.tflite"' in sw and ".wasm\"" not in sw
    precache = json.loads(sw.split("const PRECACHE = ", 1)[1].split(";\n", 1)[0])
    assert "model.tflite" in precache and not [f for f in precache if f.startswith("wasm/")]   # the page caches its build
    # it isolates the page (a static host may send no such headers), so the threaded build can run
    assert "'Cross-Origin-Opener-Policy': 'same-origin'" in sw and "'Cross-Origin-Embedder-Policy': 'require-corp'" in sw
    # the three builds the page may load (relaxed SIMD, compat, threaded), byte for byte LiteRT.js'; not JSPI
    wasm = PROJECT_ROOT / "app" / "node_modules" / "@litertjs/core/wasm"
    assert sorted(p.name for p in (dist / "wasm").iterdir()) == sorted(WASM_SIMD + WASM_COMPAT + WASM_THREADED)
    for name in WASM_THREADED:
        assert (dist / "wasm" / name).read_bytes() == (wasm / name).read_bytes()
    sizes = site_bytes(dist)
    assert sizes["gzip"] < sizes["total"] and "wasm/litert_wasm_compat_internal.wasm" not in sizes["files"]
    threaded = site_bytes(dist, WASM_THREADED)
    assert "wasm/litert_wasm_threaded_internal.wasm" in threaded["files"]
    assert "wasm/litert_wasm_internal.wasm" not in threaded["files"]
    # no other host anywhere in the page's own files
    for name in ("index.html", "app.js", "sw.js", "manifest.webmanifest"):
        assert "http://" not in (dist / name).read_text() and "https://" not in (dist / name).read_text()


def test_openset_binary_gives_predicts_mahalanobis_distance(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12))
    y = np.repeat(np.arange(3), 20)
    stats = openset.fit_feature_stats(x, y, 4)                 # class 3 has no photo: NaN mean, skipped
    data, layout = openset_binary(stats)
    assert layout["whiten_layout"] == "lower" and layout["classes"] == 3 and len(data) == layout["bytes"]
    queries = rng.normal(size=(5, 12)).astype(np.float32).astype(np.float64)
    got = run_node("""
import {mahalanobis} from './decision.js';
const buf = Buffer.from(input.data, 'base64');
const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length);
const L = input.layout;
const stats = {dim: L.dim, classes: L.classes, layout: L.whiten_layout,
  mw: new Float64Array(ab, L.offsets.mw, L.classes * L.dim), mwNorm: new Float64Array(ab, L.offsets.mw_norm, L.classes),
  whiten: new Float32Array(ab, L.offsets.whiten, (L.bytes - L.offsets.whiten) / 4)};
console.log(JSON.stringify(input.queries.map((q) => mahalanobis(q, stats))));
""", {"data": __import__("base64").b64encode(data).decode(), "layout": layout, "queries": queries.tolist()})
    np.testing.assert_allclose(got, openset.mahalanobis(queries, stats), rtol=1e-12)


def test_openset_binary_gives_predicts_relative_mahalanobis(tmp_path):
    """The page's relative Mahalanobis score (decision.relMahalanobis on openset.bin read by
    decision.readStats) is predict.py's openset.relative_mahalanobis, class without photos included."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 40)) + 3.0
    y = np.repeat(np.arange(4), 20)
    y[y == 3] = 0                                              # class 3 has no photo: NaN mean, skipped
    stats = openset.fit_rmd_stats(x, y, 4, dim=12)
    data, layout = openset_binary(stats, "rel_mahalanobis")
    assert layout["kind"] == "rel_mahalanobis" and layout["k"] == 12 and len(data) == layout["bytes"]
    queries = np.concatenate([rng.normal(size=(4, 40)) + 3.0, x[:3]]).astype(np.float32).astype(np.float64)
    got = run_node("""
import {readStats, relMahalanobis, unknownScore} from './decision.js';
const buf = Buffer.from(input.data, 'base64');
const st = readStats(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length), input.layout);
console.log(JSON.stringify([input.queries.map((q) => relMahalanobis(q, st)),
  input.queries.map((q) => unknownScore('rel_mahalanobis', {logits: [0, 0, 0, 0], embedding: q}, 1.0, st))]));
""", {"data": __import__("base64").b64encode(data).decode(), "layout": layout, "queries": queries.tolist()})
    expected = openset.relative_mahalanobis(queries, stats)
    np.testing.assert_allclose(got[0], expected, rtol=1e-9, atol=1e-9)
    assert got[1] == got[0]
    assert expected[4:].mean() < expected[:4].mean()      # training photos look more familiar than noise


# --- the verdict rules: decision.js vs advice.advise ------------------------------------------------------
def _cases(rng, n_classes, n):
    """Probability vectors that reach every rule: confident, flat, two-way, exactly at a threshold."""
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            p = rng.dirichlet(np.full(n_classes, 0.05))
        elif kind == 1:
            p = rng.dirichlet(np.full(n_classes, 1.0))
        elif kind == 2:                                   # one class near the edible threshold
            p = np.full(n_classes, 0.0)
            top = rng.integers(n_classes)
            p[top] = rng.choice([0.9, 0.5, 0.89999, 0.93, 0.97, 0.985])
            rest = rng.dirichlet(np.full(n_classes - 1, 0.3)) * (1 - p[top])
            p[np.arange(n_classes) != top] = rest
        elif kind == 3:                                   # a dangerous class just above / at 2 %
            p = rng.dirichlet(np.full(n_classes, 0.1))
            p = 0.97 * p / p.sum()
            p[rng.integers(n_classes)] += rng.choice([0.02, 0.03, 0.021, 0.0])
            p = p / p.sum()
        else:
            p = rng.dirichlet(np.full(n_classes, 0.3))
        out.append(p)
    return out


def test_js_verdict_rules_match_advise(cfg):
    """decision.advise gives predict.py's JSON answer, reasons word for word, on 2,300 cases over a
    model of six species (the demo's), one of all the table's species and the demo's without a
    fitted temperature, each read from the bundle model.json carries (app.rules_bundle)."""
    table = graded_species(cfg)
    by_name = {s.name: s for s in table}
    demo = ["Amanita muscaria", "Amanita pantherina", "Armillaria mellea", "Boletus edulis",
            "Hypholoma fasciculare", "Macrolepiota procera"]
    rng = np.random.default_rng(13)
    payload = []
    expected = []
    for classes, temperature, n in (([by_name[n] for n in demo], 1.3, 1000),
                                    ([s for s in table if s.taxon_id is not None], 1.3, 1000),
                                    ([by_name[n] for n in demo], None, 300)):
        bundle = rules_bundle(classes, table, cfg.predict, temperature, None)
        cases = []
        for i, p in enumerate(_cases(rng, len(classes), n)):
            unknown = None
            if i % 3:
                score = float(rng.choice([rng.normal(2800, 300), 2838.267935462564, -3.5, 0.25]))
                threshold = float(rng.choice([2838.267935462564, 0.3, -4.0]))
                # the stricter edible threshold: now and then none (never "edible" then), sometimes
                # between the score and the flagging one
                edible_t = None if i % 16 == 1 else float(min(threshold, rng.choice([score - 1e-3, score + 1e-3, threshold])))
                # a find's highest photo score, now and then, above or below the edible limit
                worst = None if i % 5 < 3 else float(score + rng.choice([-1e-3, 2e-3, 50.0]))
                unknown = UnknownCheck(score, threshold, "mahalanobis", float(rng.choice([0.95, 0.9])) if i % 2 else None,
                                       edible_t, 0.99 if edible_t is not None and i % 8 < 6 else None, worst)
            expected.append(advise(p, classes, cfg.predict, table, image=f"photo{i}.jpg", unknown=unknown,
                                   temperature=temperature).to_json())
            cases.append({"p": p.tolist(), "image": f"photo{i}.jpg",
                          "unknown": None if unknown is None else {"score": unknown.score, "threshold": unknown.threshold,
                                                                   "name": unknown.name, "recall": unknown.recall,
                                                                   "edible_threshold": unknown.edible_threshold,
                                                                   "edible_recall": unknown.edible_recall,
                                                                   "worst_photo_score": unknown.worst_photo_score}})
        payload.append({"bundle": bundle, "cases": cases})
    got = run_node("""
import {advise} from './decision.js';
const out = [];
for (const {bundle, cases} of input) for (const c of cases) out.push(advise(c.p, bundle, c.unknown, c.image));
console.log(JSON.stringify(out));
""", payload)
    assert len(got) == len(expected)
    verdicts = {a["verdict"] for a in expected}
    rules = {r for a in expected for r in a["rules"]}
    assert verdicts == {"edible", "not_edible", "uncertain", "unknown"}       # every branch was reached
    assert rules == set(RULES)                                               # and every rule fired
    mismatches = [(e, g) for e, g in zip(expected, got) if e != g]
    assert not mismatches, json.dumps(mismatches[0], indent=1)[:4000]


def _bad_bundles(good: dict) -> list[dict]:
    import copy

    def edit(path, value):
        b = copy.deepcopy(good)
        d = b
        for k in path[:-1]:
            d = d[k]
        if value is KeyError:
            del d[path[-1]]
        else:
            d[path[-1]] = value
        return b
    return [good, edit(["open_set"], None), edit(["temperature"], None), edit(["temperature"], 0),
            edit(["temperature"], -1.0), edit(["temperature"], "1.3"),
            edit(["open_set", "edible_threshold"], None), edit(["open_set", "edible_threshold"], KeyError),
            edit(["open_set", "threshold"], None), edit(["open_set", "edible_threshold"], 99.0),
            edit(["open_set", "score"], "entropy"), edit(["predict", "edible_threshold"], 1.5),
            edit(["predict", "danger_threshold"], None), edit(["predict", "top_k"], 0), edit(["classes"], []),
            edit(["open_set"], [])]


def test_the_page_refuses_the_bundles_python_refuses(cfg):
    """app.bundle_problems (build_app.py refuses to write such a model.json) and decision.js's
    bundleProblems (the page refuses to answer from one) name the same problems for the same
    bundles: no fitted check, no edible threshold, no temperature, non-finite or loose thresholds."""
    from mushroom.app import bundle_problems

    table = graded_species(cfg)
    record = {"score": "energy", "threshold": 0.5, "unknown_recall": 0.95, "edible_threshold": 0.3, "edible_recall": 0.99}
    good = rules_bundle(table[:4], table, cfg.predict, 1.3, record)
    bundles = _bad_bundles(good)
    expected = [bundle_problems(b) for b in bundles]
    assert expected[0] == [] and all(expected[1:])
    got = run_node("""
import {bundleProblems, validateBundle} from './decision.js';
console.log(JSON.stringify(input.map((b) => {
  let threw = false;
  try { validateBundle(b); } catch (e) { threw = true; }
  return [bundleProblems(b), threw];
})));
""", bundles)
    assert [g[0] for g in got] == expected
    assert [g[1] for g in got] == [bool(e) for e in expected]


def test_page_answers_a_file_without_logits_and_refuses_non_finite_outputs(cfg):
    """answerFind reads probabilities when a file gives no logits (as openset._logits does), and a
    NaN or infinite output is an error for the photo, never a verdict."""
    table = graded_species(cfg)
    classes = table[:4]
    record = {"score": "msp", "threshold": 0.5, "unknown_recall": 0.95, "edible_threshold": 0.3, "edible_recall": 0.99}
    bundle = rules_bundle(classes, table, cfg.predict, 1.3, record)
    probs = [0.01, 0.96, 0.02, 0.01]
    outputs = {"probs": np.array([probs])}
    calibrated = openset.probabilities(outputs, 1.3)[0]
    score = openset.unknown_scores(outputs, 1.3, None, ["msp"])["msp"][0]
    expected = advise(calibrated, classes, cfg.predict, table, image="x.jpg", temperature=1.3,
                      unknown=UnknownCheck.from_record(score, record)).to_json()
    got = run_node("""
import {answerFind} from './decision.js';
const out = [answerFind(input.bundle, [{probs: input.probs}], null, 'x.jpg')];
for (const bad of [NaN, Infinity]) {
  try { answerFind(input.bundle, [{probs: input.probs, logits: [0, bad, 0, 0]}], null, 'x.jpg'); out.push('answered'); }
  catch (e) { out.push(e.message); }
}
console.log(JSON.stringify(out));
""", {"bundle": bundle, "probs": probs})
    assert got[0] == expected
    assert all("non-finite logits" in g for g in got[1:])


def test_js_number_formats_are_pythons():
    values = [0.0, 0.125, 0.375, 2.5, 12.25, 0.9, 89.99, 99.99999, 1e-5, 123456.5, 2838.267935462564, -3.5,
              0.000123, 1234567.0, 95.0, 2.0, 0.02, 100.0, 0.5]
    got = run_node("""
import {fixed, formatG} from './decision.js';
console.log(JSON.stringify(input.map((v) => [[1, 2, 3].map((d) => fixed(v, d)), formatG(v, 3), formatG(v, 6)])));
""", values)
    assert got == [[[f"{v:.{d}f}" for d in (1, 2, 3)], f"{v:.3g}", f"{v:g}"] for v in values]


def test_js_quantize_input_is_literts():
    """decision.quantizeInput (its 256-entry table for 8-bit pixels, and the plain loop) gives
    litert.quantize_input's integers for every pixel value, with the demo's input parameters and
    others that round half to even and clip."""
    from mushroom.litert import quantize_input

    cases = [[1.0, 0, "uint8"], [1 / 255, 0, "uint8"], [0.0078125, 128, "uint8"], [0.5, -3, "int8"],
             [2.0, 7, "int8"], [0.3, 1, "int16"], [0.0, 0, "uint8"]]
    got = run_node("""
import {quantizeInput} from './decision.js';
const pixels = Uint8Array.from({length: 256}, (_, v) => v);
console.log(JSON.stringify(input.map(([s, z, d]) => [Array.from(quantizeInput(pixels, s, z, d)),
  Array.from(quantizeInput(Array.from(pixels), s, z, d))])));
""", cases)
    for (scale, zp, dtype), (table, loop) in zip(cases, got):
        want = quantize_input(np.arange(256), scale, zp, dtype).tolist()
        assert table == want and loop == want, (scale, zp, dtype)


# --- the resize: preprocess.js vs images.resize_with_pad --------------------------------------------------
def test_js_resize_is_pillows_byte_for_byte(tmp_path):
    """Random images of many shapes (downscale by < 3, by more, with Image.reduce first, odd
    remainders, portrait and landscape, upscale, already square at the size): the page's pixels
    are the ones images.resize_with_pad gives."""
    rng = np.random.default_rng(7)
    shapes = [(128, 128, 128), (128, 128, 32), (128, 96, 32), (96, 128, 32), (101, 256, 128), (333, 1001, 128),
              (1000, 700, 128), (2016, 1512, 128), (3000, 17, 64), (50, 20, 128), (129, 128, 128), (640, 480, 192)]
    shapes += [(int(rng.integers(20, 900)), int(rng.integers(20, 900)), int(rng.choice([32, 128, 192])))
               for _ in range(14)]
    payload, expected = [], []
    for i, (w, h, size) in enumerate(shapes):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        a[: h // 2] = ((xx[: h // 2, :, None] * 3 + yy[: h // 2, :, None] * 5 + np.array([0, 80, 160])) % 256)
        rgba = np.concatenate([a, np.full((h, w, 1), 255, np.uint8)], 2)
        path = tmp_path / f"{i}.rgba"
        rgba.tofile(path)
        payload.append([str(path), w, h, size])
        expected.append(resize_with_pad(Image.fromarray(a), size))
    got = run_node("""
import {resizeWithPad} from './preprocess.js';
const out = [];
for (const [path, w, h, size] of input) {
  const px = resizeWithPad(new Uint8ClampedArray(fs.readFileSync(path)), w, h, size);
  out.push(Buffer.from(px).toString('base64'));
}
console.log(JSON.stringify(out));
""", payload)
    import base64

    for (path, w, h, size), exp, b64 in zip(payload, expected, got):
        px = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(size, size, 3)
        assert np.array_equal(px, exp), f"{w}x{h} -> {size}: {int((px != exp).sum())} values differ"


def test_build_refuses_a_model_without_a_fitted_check_or_temperature(tiny_model_folder, tmp_path):
    """A page built without the unknown-species check would call a mushroom of any other species
    edible: build_app.py refuses with one sentence and writes nothing."""
    import subprocess
    import sys

    from mushroom.errors import UserError

    t = tiny_model_folder
    folder, _ = _with_open_set(t, tmp_path / "models", score="energy")
    cfg = t["cfg"]
    for missing in ("open_set.json", "temperature.json"):
        kept = (folder / missing).read_bytes()
        (folder / missing).unlink()
        with pytest.raises(UserError, match="no fitted unknown-species check and temperature for its ptq_int8 file"):
            build_app(cfg, folder, "ptq_int8", tmp_path / "dist")
        assert not (tmp_path / "dist").exists()
        (folder / missing).write_bytes(kept)
    (folder / "open_set.json").unlink()
    out = subprocess.run([sys.executable, "build_app.py", str(folder), "--dist", str(tmp_path / "dist"),
                          "--set", "wandb.mode=disabled"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "run evaluate.py" in out.stderr


def test_the_page_holds_no_sentence_of_the_answer():
    """One source for the answer's words: every template of answer_text (and the reminder, the
    grade meanings, the verdict labels) reaches the page through model.json, none is copied into
    the page's JavaScript."""
    from mushroom.answer_text import GRADE_MEANING, REMINDER, TEMPLATES, VERDICT_TEXT

    sources = {name: (SRC / name).read_text(encoding="utf-8") for name in ("decision.js", "app.js")}
    pieces = [REMINDER, *GRADE_MEANING.values(), *VERDICT_TEXT.values()]
    for text in TEMPLATES.values():      # the fixed words between the fields
        pieces += [p.strip() for p in re.split(r"\{\w+\}", text) if len(p.strip()) >= 12]
    pieces = [p for p in pieces if len(p) >= 12]        # words such as "edible" are also identifiers
    copied = [(name, piece) for name, src in sources.items() for piece in pieces if piece in src]
    assert not copied, copied
