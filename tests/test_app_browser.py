"""The phone page in a real browser (Debian's chromium + chromium-driver, through selenium), served
from 127.0.0.1: it loads and answers a real photo, rejects a non-image with a clear message and
keeps working, gives predict.py's answers (same top-1 and verdict, same probabilities), answers
offline after one visit, and fits a 360 px wide screen. Its service worker makes it cross-origin
isolated on a server that sends no COOP/COEP headers, so it runs LiteRT.js' threaded build, with
the same answers as the single-thread build; unisolated, or when the threaded build fails, it runs
the single-thread build. The site is built here from the tiny test
model with an unknown-species threshold (CI has no models/); test_parity_on_the_demo_test_photos
also runs on the demo model when this checkout has one.

Without chromium, chromedriver, selenium or LiteRT.js (app/node_modules) these tests skip, except
under CI=true, where they fail: .ci/run installs all of them."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.browser import (INSTALL_HINT, StaticServer, answer_photos, chromium, find_browser, load_page,
                              screenshot_360, wait_for)
from mushroom.config import PROJECT_ROOT, load_config
from mushroom.images import load_image
from tests.conftest import SHARED_PHOTOS
from tests.test_app import IN_CI, _with_open_set

NODE_MODULES = PROJECT_ROOT / "app" / "node_modules"
DEMO = PROJECT_ROOT / "models" / "demo-mobilenet_v2"
DEMO_SPECIES = ["Amanita_muscaria", "Amanita_pantherina", "Armillaria_mellea", "Boletus_edulis",
                "Hypholoma_fasciculare", "Macrolepiota_procera"]
# Thresholds low enough that the tiny model's answers reach every verdict (the rules are the same).
TINY_PREDICT = ["predict.edible_threshold=0.55", "predict.not_edible_threshold=0.45"]


def _missing() -> str | None:
    if find_browser() is None:
        return f"chromium/chromedriver missing ({INSTALL_HINT})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing (pip install -r requirements-dev.txt -c constraints.txt, as make test does)"
    if not (NODE_MODULES / "@litertjs/core").is_dir():
        return "LiteRT.js missing (cd app && npm ci)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = _missing()
    if why:
        if IN_CI:
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def site(tiny_model_folder, tmp_path_factory):
    """The tiny model (with a Mahalanobis unknown-species threshold) built into a site."""
    from mushroom.app import build_app

    root = tmp_path_factory.mktemp("app")
    folder, _ = _with_open_set(tiny_model_folder, root / "models")
    overrides = [f"paths.models_dir={root / 'models'}", "wandb.mode=disabled", *TINY_PREDICT]
    cfg = load_config(None, overrides)
    build_app(cfg, folder, "ptq_int8", root / "dist")
    return {"dist": root / "dist", "folder": folder, "overrides": overrides, "root": root}


def _photos(tmp_dir, per_species: int = 8) -> list:
    """Real photos of the demo's species from ../shared (read in place, never copied into the
    repository), else generated ones; plus made-up camera-like photos: large, EXIF-rotated, PNG."""
    photos = []
    if SHARED_PHOTOS.is_dir():
        for name in DEMO_SPECIES:
            photos += sorted((SHARED_PHOTOS / name).glob("*.jpg"))[:per_species]
    rng = np.random.default_rng(3)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    base = photos[0] if photos else None
    for i, (w, h) in enumerate([(1600, 1200), (900, 1400), (640, 480)]):
        if base is not None:
            img = Image.open(base).convert("RGB").resize((w, h), Image.BICUBIC)
        else:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        path = tmp_dir / f"camera{i}.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6 if i == 1 else 1          # orientation: rotate 90 degrees on display
        img.save(path, quality=92, exif=exif)
        photos.append(path)
    png = tmp_dir / "with_alpha.png"
    Image.fromarray(np.dstack([rng.integers(0, 256, (300, 200, 3)), np.full((300, 200), 255)]).astype(np.uint8)).save(png)
    photos.append(png)
    return photos


def _predict_json(photos, model, overrides, *extra) -> list[dict]:
    args = [sys.executable, "predict.py", *map(str, photos), "--json", "--model", str(model)]
    for o in overrides:
        args += ["--set", o]
    out = subprocess.run(args + list(extra), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


def compare(page: list[dict], python: list[dict]) -> dict:
    """Agreement of the page's answers with predict.py's: top-1, verdict, rules and reasons, and
    the largest probability difference over the top five."""
    assert len(page) == len(python)
    top1 = sum(a["top5"][0]["species"] == b["top5"][0]["species"] for a, b in zip(page, python))
    verdict = sum(a["verdict"] == b["verdict"] for a, b in zip(page, python))
    same = sum(a["reasons"] == b["reasons"] and a["rules"] == b["rules"] and a["look_alikes"] == b["look_alikes"]
               for a, b in zip(page, python))
    dp = 0.0
    for a, b in zip(page, python):
        pa = {t["species"]: t["probability"] for t in a["top5"]}
        for t in b["top5"]:
            dp = max(dp, abs(pa.get(t["species"], 0.0) - t["probability"]))
    return {"n": len(page), "top1": top1 / len(page), "verdict": verdict / len(page), "identical": same / len(page),
            "max_abs_dprob": dp, "verdicts": sorted({b["verdict"] for b in python})}


def test_page_answers_a_photo_and_survives_a_non_image(browser, site, tmp_path):
    photo = _photos(tmp_path / "p", 1)[0]
    with StaticServer(site["dist"]) as server:
        load_page(browser, server.url)
        assert browser.execute_script("return window.mushroomApp.offlineReady") in (True, False)
        a = answer_photos(browser, [photo])
        assert a["error"] is None and a["verdict"] in ("edible", "not_edible", "uncertain", "unknown")
        assert len(a["top5"]) == 3 and a["known_species"] == 3          # the tiny model knows three species
        text = browser.find_element("id", "answer").text
        assert a["top5"][0]["species"] in text and "Certainty" in text
        assert "never enough to eat a wild mushroom" in browser.find_element("tag name", "body").text
        # a file that is not a photo: one clear sentence, the page keeps its answer and keeps working
        bad = tmp_path / "notes.txt"
        bad.write_text("not a photo")
        b = answer_photos(browser, [bad])
        assert b["error"] and "notes.txt" in b["error"] and "not a photo" in b["error"]
        assert browser.execute_script("return window.mushroomApp.error") is None
        c = answer_photos(browser, [photo])
        assert c["error"] is None and c["top5"] == a["top5"]


def _answer_each(browser, photos) -> tuple[list[dict], list]:
    page, inputs = [], []
    for p in photos:
        page.append(answer_photos(browser, [p]))
        inputs.append(browser.execute_script("return Array.from(window.mushroomApp.lastInputs[0]);"))
    return page, inputs


def _same_answers(a: list[dict], b: list[dict]) -> bool:
    keys = ("top5", "verdict", "reasons", "rules", "look_alikes", "unknown_score", "certainty")
    return [{k: x.get(k) for k in keys} for x in a] == [{k: x.get(k) for k in keys} for x in b]


def test_parity_with_predict(browser, site, tmp_path):
    """Every photo answered by the page and by predict.py on the same model file: same top-1 and
    verdict on >= 99 %, probabilities within 0.01 (measured: identical); one find of three photos
    too. The page's 128 px inputs are Pillow's to the byte; camera-size JPEGs may differ where
    Chromium's JPEG decoder rounds differently from Pillow's (reported, not asserted).

    The server sends no COOP/COEP headers (as a static host): the first visit reloads once and the
    page is then cross-origin isolated by its service worker and runs LiteRT.js' threaded build
    (min(4, cores) threads, when the machine has more than one core); the page with ?threads=1
    (the single-thread build) gives the same answers to the bit."""
    photos = _photos(tmp_path / "p")
    python = _predict_json(photos, site["dist"].parent / "models" / site["folder"].name / "tflite" / "ptq_int8.tflite",
                           site["overrides"])
    cores = browser.execute_script("return navigator.hardwareConcurrency")
    with StaticServer(site["dist"]) as server:
        import urllib.request

        with urllib.request.urlopen(server.url) as r:          # the host itself isolates nothing
            assert r.headers.get("Cross-Origin-Embedder-Policy") is None
        engine = load_page(browser, server.url)
        assert browser.execute_script("return self.crossOriginIsolated && typeof SharedArrayBuffer === 'function'")
        assert engine["isolated"] and engine["relaxed_simd"] and engine["fallback"] is None
        # the headers come from the service worker, on what it serves
        coep = browser.execute_async_script("const done = arguments[0]; fetch('model.json').then("
                                            "(r) => done(r.headers.get('Cross-Origin-Embedder-Policy')), (e) => done(String(e)));")
        assert coep == "require-corp"
        if cores > 1:
            assert engine["build"] == "threaded" and engine["threads"] == min(4, cores) > 1
            assert browser.execute_script("return document.documentElement.dataset.engine") == f"threaded:{engine['threads']}"
            assert f"{engine['threads']} threads" in browser.find_element("id", "engine").text
        page, inputs = _answer_each(browser, photos)
        fused = answer_photos(browser, photos[:3])
        single = load_page(browser, server.url + "?threads=1")
        assert single["build"] == "simd" and single["threads"] == 1 and single["isolated"]
        page_single, inputs_single = _answer_each(browser, photos)
    assert all(a["error"] is None for a in page)
    assert _same_answers(page_single, page) and inputs_single == inputs       # threads change nothing
    stats = compare(page, python)
    # the model's input pixels, page vs images.load_image: equal for lossless PNG by construction;
    # for JPEG they depend on Chromium's decoder matching Pillow's (reported)
    same_pixels = [np.array_equal(np.asarray(x, np.uint8).reshape(32, 32, 3), load_image(p, 32))
                   for p, x in zip(photos, inputs)]
    assert all(s for p, s in zip(photos, same_pixels) if p.suffix == ".png")
    stats["same_input_pixels"] = f"{sum(same_pixels)}/{len(same_pixels)}"
    print(f"\nparity, tiny model: {stats}")
    assert stats["top1"] >= 0.99 and stats["verdict"] >= 0.99 and stats["max_abs_dprob"] <= 0.01
    if SHARED_PHOTOS.is_dir():                    # generated noise photos all come out "unknown"
        assert len(stats["verdicts"]) >= 2       # the thresholds make the answers differ
    one = _predict_json(photos[:3], site["dist"].parent / "models" / site["folder"].name / "tflite" / "ptq_int8.tflite",
                        site["overrides"], "--one-mushroom")[0]
    assert compare([fused], [one])["verdict"] == 1.0 and fused["unknown_score"] == pytest.approx(one["unknown_score"], rel=1e-9)


def test_the_page_answers_unisolated_with_one_thread(browser, site, tmp_path):
    """The fallback: a page that stays unisolated (here: the one reload already spent in this tab,
    as in a browser whose service worker cannot isolate it) runs the single-thread build without
    reloading again, and gives predict.py's answers."""
    photos = _photos(tmp_path / "p", 1)[:4]
    python = _predict_json(photos, site["dist"].parent / "models" / site["folder"].name / "tflite" / "ptq_int8.tflite",
                           site["overrides"])
    with StaticServer(site["dist"]) as server:                 # a new port: a new origin, never visited
        browser.get(server.url + "model.json")
        browser.execute_script("sessionStorage.setItem('mushroom-isolation-reload', '1');")
        engine = load_page(browser, server.url)
        assert not browser.execute_script("return self.crossOriginIsolated")
        assert (engine["isolated"], engine["build"], engine["threads"]) == (False, "simd", 1)
        assert "not cross-origin isolated" in browser.find_element("id", "engine").text
        page = [answer_photos(browser, [p]) for p in photos]
        wait_for(browser, "window.mushroomApp.offlineReady", 60, "caching the page")   # and no reload came
        assert browser.execute_script("return window.mushroomApp.answered") == len(photos)
    stats = compare(page, python)
    assert stats["top1"] == 1.0 and stats["verdict"] == 1.0 and stats["max_abs_dprob"] <= 0.01


def test_a_threaded_build_that_fails_leaves_the_single_thread_one(browser, site, tmp_path):
    """An isolated page whose threaded build does not start (here: its file is missing, as offline
    with only the single-thread build cached) runs the single-thread build and says why."""
    import shutil

    dist = tmp_path / "dist"
    shutil.copytree(site["dist"], dist)
    (dist / "wasm" / "litert_wasm_threaded_internal.js").unlink()
    photo = _photos(tmp_path / "p", 1)[0]
    with StaticServer(dist) as server:
        engine = load_page(browser, server.url)
        if browser.execute_script("return navigator.hardwareConcurrency") > 1:
            assert engine["isolated"] and engine["fallback"] and (engine["build"], engine["threads"]) == ("simd", 1)
            assert "the threaded build failed" in browser.find_element("id", "engine").text
        a = answer_photos(browser, [photo])
    assert a["error"] is None and a["verdict"] in ("edible", "not_edible", "uncertain", "unknown")


def test_a_service_worker_that_cannot_install_leaves_the_page_unisolated_at_once(browser, site, tmp_path):
    """A worker whose install fails (a file it precaches is missing) never takes control: the first
    visit does not wait for it (up to 30 s) but loads the single-thread build and answers."""
    import shutil
    import time

    dist = tmp_path / "dist"
    shutil.copytree(site["dist"], dist)
    (dist / "icon-512.png").unlink()
    photo = _photos(tmp_path / "p", 1)[0]
    with StaticServer(dist) as server:
        t0 = time.monotonic()
        engine = load_page(browser, server.url)
        assert time.monotonic() - t0 < 15
        assert (engine["isolated"], engine["build"], engine["threads"]) == (False, "simd", 1)
        a = answer_photos(browser, [photo])
    assert a["error"] is None and a["verdict"] in ("edible", "not_edible", "uncertain", "unknown")


def test_offline_after_one_visit(browser, site, tmp_path):
    photo = _photos(tmp_path / "p", 1)[0]
    server = StaticServer(site["dist"]).start()
    try:
        load_page(browser, server.url)
        wait_for(browser, "window.mushroomApp.offlineReady", 60, "caching the page for offline use")
        online = answer_photos(browser, [photo])
        engine = browser.execute_script("return window.mushroomApp.engine")
    finally:
        server.stop()
    with pytest.raises(Exception):               # the server is really gone
        import urllib.request

        urllib.request.urlopen(server.url, timeout=2)
    browser.refresh()
    assert load_page(browser, server.url) == engine      # isolated from the cache too: the same runtime
    offline = answer_photos(browser, [photo])
    assert offline["error"] is None and offline["top5"] == online["top5"] and offline["verdict"] == online["verdict"]


def test_readable_at_360_px(browser, site, tmp_path):
    """A 360 px wide phone screen: nothing wider than the screen; the screenshot is saved to
    reports/app_360px.png (docs/app_360px.png, in docs/phone-page.md, is the same view of the demo model,
    from benchmarks/app_latency.py --screenshot)."""
    photo = _photos(tmp_path / "p", 1)[0]
    with StaticServer(site["dist"]) as server:
        try:
            out = screenshot_360(browser, server.url, [photo], PROJECT_ROOT / "reports" / "app_360px.png")
        finally:
            browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert out["scroll_width"] <= 360 and out["verdict_visible"]
    assert Image.open(out["path"]).size[0] == 360 * 2


def demo_test_photos() -> list:
    """The demo's test split (data/manifest.csv, known species only), when this checkout has it."""
    manifest = PROJECT_ROOT / "data" / "manifest.csv"
    if not (DEMO / "meta.json").is_file() or not manifest.is_file():
        return []
    known = {s["name"] for s in json.loads((DEMO / "meta.json").read_text())["species"]}
    with manifest.open(newline="") as fh:
        return [PROJECT_ROOT / "data" / r["path"] for r in csv.DictReader(fh) if r["split"] == "test" and r["species"] in known]


@pytest.mark.skipif(not demo_test_photos(), reason="no demo model and data in this checkout (make demo)")
def test_parity_on_the_demo_test_photos(browser, tmp_path):
    from mushroom.app import build_app
    from mushroom.prediction import resolve_model

    cfg = load_config(None, ["wandb.mode=disabled"])
    path, folder, fmt = resolve_model(None, cfg.paths.models_dir, cfg.paths.reports_dir)
    build_app(cfg, folder, fmt, tmp_path / "dist")
    photos = demo_test_photos()
    python = _predict_json(photos, path, [])
    with StaticServer(tmp_path / "dist") as server:
        engine = load_page(browser, server.url)
        page = [answer_photos(browser, [p]) for p in photos]
    stats = compare(page, python)
    print(f"\nparity, {folder.name} {fmt} on {len(photos)} demo test photos ({engine['build']} build, "
          f"{engine['threads']} threads): {stats}")
    assert stats["top1"] >= 0.99 and stats["verdict"] >= 0.99 and stats["max_abs_dprob"] <= 0.01
