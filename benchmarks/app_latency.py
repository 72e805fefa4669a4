"""The phone page's costs next to predict.py's, on this CPU: model load time and per-photo latency
in the browser (headless chromium, LiteRT.js on wasm, single-thread and threaded) and in Python
(LiteRT, one thread and all threads), and the bytes a phone downloads on its first visit (total
and gzipped).

    python benchmarks/app_latency.py                                  # the model predict.py picks
    python benchmarks/app_latency.py --model models/demo-mobilenet_v2 --photos ../shared/data/fungi128/Boletus_edulis
    python benchmarks/app_latency.py --rounds 5 --n 40                # more rounds on a noisy machine
    python benchmarks/app_latency.py --screenshot docs/app_360px.png  # also the README's 360 px screenshot

Browser: the site is built to a temporary folder and served from 127.0.0.1 by a server that sends
no COOP/COEP headers, as a static host would; the first visit reloads once, cross-origin isolated by
the page's service worker. Then each round loads the page twice, `?threads=1` (LiteRT.js'
single-thread relaxed-SIMD build, the fallback of a page that is not isolated) and the default
(the threaded build, min(4, cores) threads), and gives it the photos one at a time through its file
input. Load = fetching model.json, starting the wasm runtime, compiling the model and reading
openset.bin (the first visit's from the network, the others from the service worker's cache). Per
photo = reading the file, decoding, resizing, the model, the unknown-species score and the verdict
(window.mushroomApp.timings: photos_ms + answers_ms). Python, in the same rounds: Forager.load (the
same .tflite), then load_image + model + answer per photo (Forager.answer), one thread and all
threads. Medians and p95 over every round's photos after --warmup in each; on a machine shared
with other jobs run it with --rounds 3 or more and read the medians. Page/python ratios compare the
same thread setting. A benchmark that prints numbers, not a test.

Measured 2026-12-03 (demo MobileNetV2 QAT int8, 192 px, 60 photos of ../shared/data/fungi128,
3 rounds, headless Chromium 156, 2 cores shared with other jobs): see docs/benchmarks.md.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mushroom.app import WASM_SIMD, WASM_THREADED, build_app, site_bytes  # noqa: E402
from tests.browser import StaticServer, answer_photos, chromium, load_page, screenshot_360  # noqa: E402
from mushroom.config import load_config  # noqa: E402
from mushroom.prediction import Forager, iter_photos, resolve_model  # noqa: E402

PAGE_MODES = {"single": "?threads=1", "threaded": ""}


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def python_times(cfg, model, photos, warmup, threads):
    t0 = time.perf_counter()
    forager = Forager.load(cfg, str(model), threads)
    load = time.perf_counter() - t0
    times = []
    for i, p in enumerate(photos):
        t0 = time.perf_counter()
        forager.answer(p)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return load, times


def page_round(driver, url, photos, warmup):
    """Load the page at `url`, answer the photos one at a time; (engine, load s, per-photo s, stages)."""
    engine = load_page(driver, url)
    for p in photos:
        answer_photos(driver, [p])
    t = driver.execute_script("return window.mushroomApp.timings")
    if not (len(t["photos_ms"]) == len(t["answers_ms"]) == len(photos)):
        raise RuntimeError(f"the page answered {len(t['photos_ms'])} of {len(photos)} photos")
    per = [(a + b) / 1000 for a, b in zip(t["photos_ms"], t["answers_ms"])][warmup:]
    stages = [dict(s, answer=a) for s, a in zip(t["stages_ms"], t["answers_ms"])][warmup:]
    return engine, t["load_ms"] / 1000, per, stages


def row(name, loads, times, versus=None):
    ratio = f"{statistics.median(times) / statistics.median(versus):.2f}x" if versus else ""
    load = f"{loads[0]:.2f} first, {statistics.median(loads[1:]):.2f} again" if len(loads) > 1 else f"{loads[0]:.2f}"
    return (f"| {name} | {load} | {1000 * statistics.median(times):.1f} | {1000 * p95(times):.1f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .tflite file or model folder (default: predict.py's default)")
    parser.add_argument("--photos", default=str(ROOT.parent / "shared/data/fungi128"), help="photos or a folder of them")
    parser.add_argument("--n", type=int, default=60, help="photos to time per round and runtime (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each times every runtime on the same photos")
    parser.add_argument("--screenshot", help="save a 360 px wide screenshot of an answer here (PNG)")
    parser.add_argument("--screenshot-photo", default=str(ROOT.parent / "shared/data/fungi128/Amanita_pantherina"),
                        help="the photo (or the first photo of the folder) the screenshot answers")
    args = parser.parse_args()
    cfg = load_config(None, ["wandb.mode=disabled"])
    path, folder, fmt = resolve_model(args.model, cfg.paths.models_dir, cfg.paths.reports_dir)
    photos = list(iter_photos([args.photos]))[: args.n + args.warmup]
    # spread over species: a folder of folders is sorted by species, take every k-th photo
    if len(photos) == args.n + args.warmup and Path(args.photos).is_dir():
        every = list(iter_photos([args.photos]))
        step = max(1, len(every) // (args.n + args.warmup))
        photos = every[::step][: args.n + args.warmup]

    page = {m: {"loads": [], "times": [], "stages": [], "engine": None} for m in PAGE_MODES}
    python = {1: {"loads": [], "times": []}, None: {"loads": [], "times": []}}
    t_start, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        dist = Path(tmp) / "dist"
        built = build_app(cfg, folder, fmt, dist)
        with StaticServer(dist) as server, chromium() as driver:
            t0 = time.perf_counter()
            first = load_page(driver, server.url)         # the first visit: reloads once, isolated
            first_visit = time.perf_counter() - t0
            first_load = driver.execute_script("return window.mushroomApp.timings.load_ms") / 1000
            for r in range(args.rounds):
                for mode, query in PAGE_MODES.items():
                    engine, load, times, stages = page_round(driver, server.url + query, photos, args.warmup)
                    page[mode]["engine"] = engine
                    page[mode]["loads"].append(load)
                    page[mode]["times"] += times
                    page[mode]["stages"] += stages
                for threads, rec in python.items():
                    load, times = python_times(cfg, path, photos, args.warmup, threads)
                    rec["loads"].append(load)
                    rec["times"] += times
                print(f"round {r + 1}/{args.rounds}: page " + ", ".join(
                    f"{m} {1000 * statistics.median(page[m]['times'][-args.n:]):.1f}" for m in PAGE_MODES)
                    + " ms; python " + ", ".join(f"{t or 'all'} {1000 * statistics.median(rec['times'][-args.n:]):.1f}"
                                                 for t, rec in python.items()) + " ms", flush=True)
            if args.screenshot:
                shot = screenshot_360(driver, server.url, list(iter_photos([args.screenshot_photo]))[:1], Path(args.screenshot))
                print(f"screenshot: {shot['path']} (page width {shot['scroll_width']} px at a 360 px screen)")
        sizes = {build: site_bytes(dist, files) for build, files in (("threaded", WASM_THREADED), ("simd", WASM_SIMD))}

    single, threaded = page["single"]["engine"], page["threaded"]["engine"]
    print(f"\nmodel: {path} ({built['open_set'] or 'no'} unknown-species score); {args.n} photos x {args.rounds} rounds "
          f"from {args.photos}; {os.cpu_count()} CPU cores; load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after {time.time() - t_start:.0f} s")
    print(f"page: first visit {first_visit:.2f} s to ready (one reload; engine {first['build']}, {first['threads']} "
          f"threads, isolated {first['isolated']}); threaded rounds: {threaded['build']} build, {threaded['threads']} threads, "
          f"isolated {threaded['isolated']}, relaxed SIMD {threaded['relaxed_simd']}; single rounds: {single['build']} build")
    print("\n| runtime | model load (s) | per photo median (ms) | per photo p95 (ms) | page / python |")
    print("|---|---|---|---|---|")
    print(row("page, 1 thread (LiteRT.js wasm, relaxed SIMD)", page["single"]["loads"],
              page["single"]["times"], python[1]["times"]))
    print(row(f"page, {threaded['threads']} threads (threaded wasm, isolated)", [first_load] + page["threaded"]["loads"],
              page["threaded"]["times"], python[None]["times"]))
    print(row("predict.py: LiteRT Python, 1 thread", python[1]["loads"], python[1]["times"]))
    print(row("predict.py: LiteRT Python, all threads", python[None]["loads"], python[None]["times"]))
    for mode in PAGE_MODES:
        st = page[mode]["stages"]
        print(f"page {mode}, per photo median ms: " + ", ".join(
            f"{k} {statistics.median(x[k] for x in st):.1f}" for k in ("decode", "resize", "model", "answer"))
            + " (decode includes reading the file)")
    print("\nfirst visit (what the service worker caches: the page, the model and the threaded .wasm build):")
    print("\n| file | bytes | gzipped |")
    print("|---|---|---|")
    for name, (raw, gz) in sorted(sizes["threaded"]["files"].items(), key=lambda kv: -kv[1][0]):
        if raw >= 20_000:
            print(f"| {name} | {raw / 1e6:.2f} MB | {gz / 1e6:.2f} MB |")
    rest = [(raw, gz) for raw, gz in sizes["threaded"]["files"].values() if raw < 20_000]
    print(f"| {len(rest)} other files | {sum(r for r, _ in rest) / 1e6:.2f} MB | {sum(g for _, g in rest) / 1e6:.2f} MB |")
    for build in ("threaded", "simd"):
        print(f"| **total, {build} build** | **{sizes[build]['total'] / 1e6:.2f} MB** | **{sizes[build]['gzip'] / 1e6:.2f} MB** |")


if __name__ == "__main__":
    main()
