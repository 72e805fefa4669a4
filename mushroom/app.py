"""The phone page (app/): a static site that runs the int8 model in the browser (LiteRT.js) and
gives predict.py's answer offline. This module builds it; the page's own code is app/src/.

    bundle = build_app(cfg, "models/demo-mobilenet_v2", "app/dist")   # what `make app` runs
    fixed = fix_batch(Path("qat_int8.tflite").read_bytes())           # batch 1, for LiteRT.js

What the page needs to give the same answer as predict.py, and where it comes from:
- the model file with a fixed batch of 1 (LiteRT.js rejects a dynamic batch dimension, and a
  converted Keras model has -1 there): the same bytes with shape_signature set to the allocated
  shape, checked to give identical outputs in LiteRT;
- `model.json`: classes with their look-alikes resolved by advice.py (so the page needs no species
  table logic), temperature, predict thresholds, the unknown-species score and its threshold, the
  fusion rule, each tensor's quantization parameters (LiteRT.js exposes none) and the texts;
- `openset.bin` when the unknown-species score is Mahalanobis: the whitening matrix (lower
  triangle, float32, as predict.py reads it from the npz) and the class means already multiplied
  by it (float64, computed here exactly as openset.mahalanobis does), so the page does one
  triangular product per photo;
- LiteRT.js and three of its .wasm builds: relaxed SIMD, compat (for browsers without relaxed
  SIMD) and threaded (relaxed SIMD + threads, which needs a cross-origin isolated page: sw.js adds
  the COOP/COEP headers a static host may not send); not the JSPI build (WebGPU only);
- a web manifest, icons and a service worker whose precache list and cache name come from the
  built files' hashes, so a rebuilt model replaces the cached one.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np

from mushroom import openset
from mushroom.answer_text import GRADE_MEANING, bundle_text
from mushroom.look_alikes import look_alike_table, views_of
from mushroom.config import PROJECT_ROOT, Config
from mushroom.errors import UserError
from mushroom.modelio import ModelFolder, output_role, read_meta, read_temperature
from mushroom.species import DANGEROUS_GRADES, EDIBLE_GRADES, Species, classes_from_table, graded_species

APP_DIR = PROJECT_ROOT / "app"
SRC_DIR = APP_DIR / "src"
NODE_MODULES = APP_DIR / "node_modules"
DIST_DIR = APP_DIR / "dist"
MODEL_FILE = "model.tflite"
BUNDLE_FILE = "model.json"
OPENSET_FILE = "openset.bin"
SW_FILE = "sw.js"
# Page sources copied as they are (sw.js is filled in: its cache name and precache list).
PAGE_FILES = ("index.html", "app.css", "app.js", "decision.js", "preprocess.js", "manifest.webmanifest")
# LiteRT.js: its ES module imports the wasm loader by a bare package name, which a browser cannot
# resolve without a bundler; the copy imports it by relative path instead.
RUNTIME_JS = ("@litertjs/core/dist/index.js", "litert.js")
RUNTIME_UTILS = ("@litertjs/wasm-utils/dist/index.js", "litert-wasm-utils.js")
BARE_IMPORT = '"@litertjs/wasm-utils"'
WASM_DIR = "wasm"
WASM_SIMD = ("litert_wasm_internal.js", "litert_wasm_internal.wasm")
WASM_COMPAT = ("litert_wasm_compat_internal.js", "litert_wasm_compat_internal.wasm")
WASM_THREADED = ("litert_wasm_threaded_internal.js", "litert_wasm_threaded_internal.wasm")
WASM_BUILDS = WASM_SIMD + WASM_COMPAT + WASM_THREADED   # the page caches the one build it runs
# The Tensor table's shape_signature field (schema.fbs: Tensor field 7 -> vtable offset 4 + 2 * 7).
_SHAPE_SIGNATURE_VT = 18
_INT_DTYPES = {np.uint8: "uint8", np.int8: "int8", np.int16: "int16", np.int32: "int32", np.float32: "float32"}


# --- the model file ---------------------------------------------------------------------------------
def fix_batch(data: bytes) -> tuple[bytes, int]:
    """(the same .tflite bytes with every dynamic dimension of every tensor's shape_signature set to
    its allocated size, how many were changed). Patched in place, so weights, buffers and offsets
    stay byte-identical; a file without a dynamic dimension comes back unchanged."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    buf = bytearray(data)
    model = schema.Model.GetRootAs(buf, 0)
    changed = 0
    int32 = flatbuffers.number_types.Int32Flags
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            if tensor.ShapeSignatureLength() == 0:
                continue
            shape, signature = tensor.ShapeAsNumpy(), tensor.ShapeSignatureAsNumpy()
            start = tensor._tab.Vector(tensor._tab.Offset(_SHAPE_SIGNATURE_VT))
            for j, (size, sig) in enumerate(zip(shape.tolist(), signature.tolist())):
                if sig != -1:
                    continue
                pos = start + 4 * j
                if flatbuffers.encode.Get(int32.packer_type, buf, pos) != -1:  # the field is where the schema says
                    raise UserError("unexpected .tflite layout: shape_signature not found where the schema puts it")
                flatbuffers.encode.Write(int32.packer_type, buf, pos, int(size))
                changed += 1
    return bytes(buf), changed


def check_same_outputs(original: Path, fixed: Path, n: int = 4, seed: int = 0) -> float:
    """Run both files in LiteRT on the same random images; the largest |difference| of any output
    (0.0 expected: only the shape metadata differs). Raises UserError otherwise."""
    from mushroom.litert import TFLiteModel

    a, b = TFLiteModel(original, num_threads=1), TFLiteModel(fixed, num_threads=1)
    if a.roles != b.roles:
        raise UserError(f"{fixed} gives outputs {b.roles}, the original {a.roles}")
    images = np.random.default_rng(seed).integers(0, 256, (n, a.input_size, a.input_size, 3), dtype=np.uint8)
    out_a, out_b = a.run(images), b.run(images)
    worst = max(float(np.max(np.abs(out_a[r].astype(np.float64) - out_b[r]))) for r in a.roles)
    if worst != 0.0:
        raise UserError(f"{fixed} differs from {original} by up to {worst} after fixing the batch size")
    return worst


def tensor_details(path: Path) -> dict:
    """Input and outputs by role as the page needs them: signature names (LiteRT.js returns outputs
    by them), dtype, shape and quantization (LiteRT.js exposes no scale or zero point)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise UserError(f"{path} has {len(signatures)} signatures; the page runs a file with exactly one")
    key = next(iter(signatures))
    runner = interpreter.get_signature_runner(key)

    def describe(name: str, d: dict) -> dict:
        scale, zero_point = d["quantization"]
        return {"name": name, "dtype": _INT_DTYPES.get(np.dtype(d["dtype"]).type, str(np.dtype(d["dtype"]))),
                "shape": [int(x) for x in d["shape"]], "shape_signature": [int(x) for x in d["shape_signature"]],
                "scale": float(scale), "zero_point": int(zero_point)}

    inputs = runner.get_input_details()
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs, not one image")
    (in_name, in_details), = inputs.items()
    outputs = {}
    for name, d in runner.get_output_details().items():
        role = output_role(name)
        if role is not None:
            outputs[role] = describe(name, d)
    if "probs" not in outputs or "logits" not in outputs:
        raise UserError(f"{path} does not name its probabilities and logits outputs (head_probs, head_logits): "
                        "re-export it with quantize_qat.py --force")
    return {"signature": key, "input": describe(in_name, in_details), "outputs": outputs}


# --- the unknown-species statistics ---------------------------------------------------------------------
RMD_ARRAYS = ("rmd_centre", "rmd_components", "rmd_means", "rmd_whiten", "rmd_mean_bg", "rmd_whiten_bg")


def openset_binary(stats: dict, score: str = "mahalanobis") -> tuple[bytes, dict]:
    """(openset.bin, its layout for model.json) for a feature score (openset.FEATURE_SCORES)."""
    if score == "rel_mahalanobis":
        return _rmd_binary(stats)
    return _mahalanobis_binary(stats)


def _rmd_binary(stats: dict) -> tuple[bytes, dict]:
    """Relative Mahalanobis: the six float32 arrays of openset.fit_rmd_stats as stored (centre D,
    components D x k, class means C x k with NaN rows for classes without training photos, which
    the page skips as predict.py does, whitening k x k, background mean k, background whitening
    k x k), row-major, one after the other; decision.relMahalanobis repeats
    openset.relative_mahalanobis on them in float64."""
    parts, arrays, offset = [], {}, 0
    for name in RMD_ARRAYS:
        a = np.ascontiguousarray(np.asarray(stats[name], np.float32), "<f4")
        parts.append(a.tobytes())
        arrays[name[len("rmd_"):]] = {"offset": offset, "shape": [int(x) for x in a.shape]}
        offset += a.nbytes
    d, k = (int(x) for x in np.asarray(stats["rmd_components"]).shape)
    layout = {"file": OPENSET_FILE, "kind": "rel_mahalanobis", "dim": d, "k": k,
              "classes": int(np.asarray(stats["rmd_means"]).shape[0]), "arrays": arrays, "bytes": offset}
    return b"".join(parts), layout


def _mahalanobis_binary(stats: dict) -> tuple[bytes, dict]:
    """(openset.bin, its layout for model.json) for a Mahalanobis score. Layout: class means times
    the whitening matrix (float64, C x D), their squared norms (float64, C), then the whitening
    matrix W itself (float32 as stored; only its lower triangle, row by row, when W is lower
    triangular as a Cholesky factor is; else all of it). The page computes x W and then
    |xW|^2 - 2 xW.mW + |mW|^2, the terms of openset.mahalanobis, with mW and |mW|^2 bit-identical
    to predict.py's. Classes without training photos (NaN means) are left out, as there."""
    stats = openset.prepared(stats)   # the whitened means predict.py uses, computed by the same code
    w32 = np.asarray(stats["whiten"], np.float32)
    w = w32.astype(np.float64)
    mw = stats["means_whitened"]
    norms = (mw ** 2).sum(1)
    lower = bool(np.all(np.triu(w32, 1) == 0))
    tri = w32[np.tril_indices(w32.shape[0])] if lower else w32.ravel()
    parts = [np.ascontiguousarray(mw, "<f8").tobytes(), np.ascontiguousarray(norms, "<f8").tobytes(),
             np.ascontiguousarray(tri, "<f4").tobytes()]
    layout = {"file": OPENSET_FILE, "kind": "mahalanobis", "dim": int(w.shape[0]), "classes": int(len(mw)),
              "whiten_layout": "lower" if lower else "full",
              "offsets": {"mw": 0, "mw_norm": len(parts[0]), "whiten": len(parts[0]) + len(parts[1])},
              "bytes": sum(len(p) for p in parts)}
    return b"".join(parts), layout


# --- the JSON the page reads ---------------------------------------------------------------------------
def rules_bundle(classes: list[Species], table: list[Species], predict_cfg, temperature: float | None,
                 open_set: dict | None, fusion: str | None = None, openset_layout: dict | None = None) -> dict:
    """The part of model.json that decision.js's rules read: classes graded by the current table
    with their look-alikes resolved by look_alikes.look_alike_table, thresholds, temperature, the
    unknown-species check, texts. `bundle` builds model.json with it, and the parity tests run the
    page's rules on exactly what it returns."""
    resolved = look_alike_table(classes, table)
    out = {
        "classes": [{"name": s.name, "common_name": s.common_name, "edibility": s.edibility, "notes": s.notes,
                     "look_alikes": resolved[s.name], "views": views_of(s)} for s in classes],
        "temperature": temperature,
        "predict": {k: predict_cfg[k] for k in ("top_k", "edible_threshold", "danger_threshold", "not_edible_threshold")},
        "open_set": None,
        "fusion": fusion or "mean",
        "grades": {"edible": list(EDIBLE_GRADES), "dangerous": list(DANGEROUS_GRADES), "meaning": dict(GRADE_MEANING)},
        "text": bundle_text(),   # every sentence of the answer (answer_text.TEMPLATES): decision.js holds none
    }
    if open_set is not None:
        out["open_set"] = {"score": open_set["score"], "threshold": open_set["threshold"],
                           "unknown_recall": open_set.get("unknown_recall"),
                           "edible_threshold": open_set.get("edible_threshold"),
                           "edible_recall": open_set.get("edible_recall"), "stats": openset_layout}
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def bundle_problems(b: dict) -> list[str]:
    """Why the page must refuse this model.json (empty: it may answer). decision.js's
    validateBundle refuses exactly the same bundles (tests/test_app.py runs both on the same
    cases): the page never answers without a fitted unknown-species check (with its stricter
    edible threshold) and temperature, or with a threshold that is not a finite number."""
    problems = []
    t = b.get("temperature")
    if not (_finite(t) and t > 0):
        problems.append("no fitted temperature")
    os_ = b.get("open_set")
    if not isinstance(os_, dict):
        problems.append("no fitted unknown-species check")
    else:
        for key in ("threshold", "edible_threshold"):
            if not _finite(os_.get(key)):
                problems.append(f"the unknown-species {key.replace('_', ' ')} is not a finite number")
        if _finite(os_.get("threshold")) and _finite(os_.get("edible_threshold")) and os_["edible_threshold"] > os_["threshold"]:
            problems.append("the edible threshold is looser than the unknown-species threshold")
        if os_.get("score") not in openset.SCORES:
            problems.append(f"unknown unknown-species score {os_.get('score')!r}")
        elif os_["score"] in openset.FEATURE_SCORES and not isinstance(os_.get("stats"), dict):
            problems.append(f"no statistics for the {os_['score']} score")
    cfg = b.get("predict") or {}
    for key in ("edible_threshold", "danger_threshold", "not_edible_threshold"):
        if not (_finite(cfg.get(key)) and 0 <= cfg[key] <= 1):
            problems.append(f"predict.{key} is not a probability")
    if not (isinstance(cfg.get("top_k"), int) and cfg["top_k"] >= 1):
        problems.append("predict.top_k is not a positive integer")
    if not b.get("classes"):
        problems.append("no classes")
    return problems


def bundle(cfg: Config, folder: Path, fmt: str, details: dict, open_set: dict | None, fusion: str | None,
           openset_layout: dict | None) -> dict:
    """model.json: everything predict.py reads from the model folder and the config, for one format.
    Classes are graded by the current species table (meta.json gives their order only)."""
    meta = read_meta(folder)
    table = graded_species(cfg)
    classes = classes_from_table(meta["class_names"], table)
    out = {"format_version": 2,
           "model": {"file": MODEL_FILE, "folder": folder.name, "format": fmt, "image_size": int(meta["image_size"]),
                     **details},
           **rules_bundle(classes, table, cfg.predict, read_temperature(folder, fmt), open_set, fusion, openset_layout)}
    problems = bundle_problems(out)
    if problems:
        raise UserError(f"the page for {folder} ({fmt}) would have {'; '.join(problems)}: run evaluate.py {folder} first")
    return out


# --- the site ------------------------------------------------------------------------------------------
def _copy_runtime(dist: Path, node_modules: Path) -> None:
    missing = [p for p in (RUNTIME_JS[0], RUNTIME_UTILS[0]) if not (node_modules / p).is_file()]
    if missing:
        raise UserError(f"LiteRT.js is not installed ({node_modules / missing[0]} missing): run `npm ci` in app/ "
                        "(make app does)")
    js = (node_modules / RUNTIME_JS[0]).read_text(encoding="utf-8")
    if js.count(BARE_IMPORT) != 1:
        raise UserError(f"{RUNTIME_JS[0]} imports {BARE_IMPORT} {js.count(BARE_IMPORT)} times, not once: "
                        "this LiteRT.js version is not the pinned one (app/package-lock.json)")
    (dist / RUNTIME_JS[1]).write_text(js.replace(BARE_IMPORT, f'"./{RUNTIME_UTILS[1]}"'), encoding="utf-8")
    shutil.copyfile(node_modules / RUNTIME_UTILS[0], dist / RUNTIME_UTILS[1])
    (dist / WASM_DIR).mkdir()
    for name in WASM_BUILDS:
        shutil.copyfile(node_modules / "@litertjs/core/wasm" / name, dist / WASM_DIR / name)


def _icons(dist: Path) -> None:
    """Home-screen icons (192 and 512 px PNG, what browsers require to install a page): a mushroom
    drawn with Pillow, so the repository holds no binary icon."""
    from PIL import Image, ImageDraw

    for size in (192, 512):
        img = Image.new("RGB", (size, size), (46, 84, 52))
        d = ImageDraw.Draw(img)
        s = size / 192
        d.pieslice([28 * s, 40 * s, 164 * s, 150 * s], 180, 360, fill=(196, 62, 44))
        for cx, cy, r in ((70, 75, 9), (110, 68, 7), (130, 88, 6), (88, 56, 5)):
            d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=(250, 240, 225))
        d.rounded_rectangle([80 * s, 94 * s, 112 * s, 160 * s], radius=10 * s, fill=(240, 228, 205))
        img.save(dist / f"icon-{size}.png", optimize=True)


def _fill_service_worker(dist: Path) -> str:
    """Write sw.js with the precache list (every built file but the .wasm builds, of which the page
    caches the one its browser runs: 9 MB each) and a cache name from their hashes."""
    files = sorted(p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0" + (dist / rel).read_bytes())
    version = digest.hexdigest()[:16]
    wasm = {f"{WASM_DIR}/{n}" for n in WASM_BUILDS}
    precache = ["./"] + [f for f in files if f not in wasm and f != "index.html"] + ["index.html"]
    sw = (SRC_DIR / SW_FILE).read_text(encoding="utf-8")
    for key, value in (("__CACHE_VERSION__", version), ("__PRECACHE__", json.dumps(precache))):
        if key not in sw:
            raise UserError(f"{SRC_DIR / SW_FILE} lacks its {key} placeholder")
        sw = sw.replace(key, value if key == "__PRECACHE__" else json.dumps(value)[1:-1])
    (dist / SW_FILE).write_text(sw, encoding="utf-8")
    return version


def site_bytes(dist: Path, wasm_build: tuple[str, str] = WASM_SIMD) -> dict:
    """What a phone downloads on its first visit: every file the service worker precaches plus one
    .wasm build (the relaxed-SIMD one by default; a browser that can run threads downloads only
    WASM_THREADED), raw and gzipped (level 9, as a static server with compression would send)."""
    skip = {f"{WASM_DIR}/{n}" for n in WASM_BUILDS if n not in wasm_build}
    total = gz = 0
    by_file = {}
    for p in sorted(dist.rglob("*")):
        rel = p.relative_to(dist).as_posix()
        if not p.is_file() or rel in skip:
            continue
        data = p.read_bytes()
        z = len(gzip.compress(data, 9, mtime=0))
        by_file[rel] = (len(data), z)
        total, gz = total + len(data), gz + z
    return {"total": total, "gzip": gz, "files": by_file}


def build_app(cfg: Config, folder: str | Path, fmt: str, dist: str | Path = DIST_DIR,
              node_modules: str | Path = NODE_MODULES) -> dict:
    """Write the static site for one model folder and format to `dist` (emptied first). Returns a
    summary: files, bytes, what was checked."""
    from mushroom.prediction import read_open_set

    folder, dist, node_modules = Path(folder), Path(dist), Path(node_modules)
    source = ModelFolder(folder).tflite(fmt)
    if not source.is_file():
        raise UserError(f"{source} does not exist: run quantize_qat.py {folder} first")
    record, stats, fusion = read_open_set(folder, fmt)
    if record is None or read_temperature(folder, fmt) is None:
        raise UserError(f"{folder} has no fitted unknown-species check and temperature for its {fmt} file "
                        f"({ModelFolder.OPEN_SET}, {ModelFolder.TEMPERATURE}), so the page would mistake species it does not know "
                        f"for ones it does: run evaluate.py {folder} first")
    if dist.exists():
        shutil.rmtree(dist)
    dist.mkdir(parents=True)
    fixed, changed = fix_batch(source.read_bytes())
    (dist / MODEL_FILE).write_bytes(fixed)
    worst = check_same_outputs(source, dist / MODEL_FILE)
    details = tensor_details(dist / MODEL_FILE)
    if details["input"]["shape_signature"][0] != 1:
        raise UserError(f"{dist / MODEL_FILE} still has a dynamic batch dimension")
    layout = None
    if record is not None and record["score"] in openset.FEATURE_SCORES:   # read_open_set raised if stats are missing
        data, layout = openset_binary(stats, record["score"])
        (dist / OPENSET_FILE).write_bytes(data)
    (dist / BUNDLE_FILE).write_text(json.dumps(bundle(cfg, folder, fmt, details, record, fusion, layout),
                                               indent=1, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in PAGE_FILES:
        shutil.copyfile(SRC_DIR / name, dist / name)
    _copy_runtime(dist, node_modules)
    _icons(dist)
    version = _fill_service_worker(dist)
    return {"dist": dist, "source": source, "dynamic_dims_fixed": changed, "max_output_diff": worst,
            "cache_version": version, "open_set": None if record is None else record["score"],
            "bytes": site_bytes(dist)}
