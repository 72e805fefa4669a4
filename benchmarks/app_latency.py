"""The phone page's costs next to predict.py's, on this CPU: model load time and per-photo latency
in the browser (headless chromium, LiteRT.js on wasm) and in Python (LiteRT), and the bytes a
phone downloads on its first visit (total and gzipped).

    python benchmarks/app_latency.py                                  # the model predict.py picks
    python benchmarks/app_latency.py --model models/demo-mobilenet_v2 --photos ../shared/data/fungi128/Boletus_edulis
    python benchmarks/app_latency.py --screenshot docs/app_360px.png  # also the README's 360 px screenshot

Browser: the site is built to a temporary folder and served from 127.0.0.1; load = fetching
model.json, starting the wasm runtime, compiling the model and reading openset.bin (median of
--loads page loads, the second and later from the browser's HTTP cache, as a phone's reopen would
be from the service worker); per photo = decode, resize, model, unknown score and verdict, as the
page does when a photo is chosen (median and p95 over --photos after --warmup). Python: Forager.load
(the same .tflite), then load_image + model + answer per photo, one thread and all threads.
A benchmark that prints numbers, not a test.
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

from mushroom.app import build_app, site_bytes  # noqa: E402
from tests.browser import StaticServer, answer_photos, chromium, load_page, screenshot_360  # noqa: E402
from mushroom.config import load_config  # noqa: E402
from mushroom.prediction import Forager, iter_photos, resolve_model  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .tflite file or model folder (default: predict.py's default)")
    parser.add_argument("--photos", default=str(ROOT.parent / "shared/data/fungi128"), help="photos or a folder of them")
    parser.add_argument("--n", type=int, default=60, help="photos to time (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--loads", type=int, default=5, help="page loads to time")
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

    with tempfile.TemporaryDirectory() as tmp:
        dist = Path(tmp) / "dist"
        built = build_app(cfg, folder, fmt, dist)
        sizes = site_bytes(dist)
        with StaticServer(dist) as server, chromium() as driver:
            loads = []
            for _ in range(args.loads):
                load_page(driver, server.url)
                loads.append(driver.execute_script("return window.mushroomApp.timings.load_ms") / 1000)
            for p in photos:
                answer_photos(driver, [p])
            page_times = [t / 1000 for t in driver.execute_script("return window.mushroomApp.timings.photos_ms")]
            page_times = page_times[args.warmup:]
            if args.screenshot:
                shot = screenshot_360(driver, server.url, list(iter_photos([args.screenshot_photo]))[:1], Path(args.screenshot))
                print(f"screenshot: {shot['path']} (page width {shot['scroll_width']} px at a 360 px screen)")
    py_load1, py_one = python_times(cfg, path, photos, args.warmup, 1)
    py_load, py_all = python_times(cfg, path, photos, args.warmup, None)

    print(f"\nmodel: {path} ({built['open_set'] or 'no'} unknown-species score); {len(page_times)} photos "
          f"from {args.photos}; {os.cpu_count()} CPU cores")
    print("\n| runtime | model load (s) | per photo median (ms) | per photo p95 (ms) |")
    print("|---|---|---|---|")
    print(f"| browser: chromium, LiteRT.js wasm | {loads[0]:.2f} first, {statistics.median(loads[1:] or loads):.2f} again "
          f"| {1000 * statistics.median(page_times):.1f} | {1000 * p95(page_times):.1f} |")
    print(f"| predict.py: LiteRT Python, 1 thread | {py_load1:.2f} | {1000 * statistics.median(py_one):.1f} "
          f"| {1000 * p95(py_one):.1f} |")
    print(f"| predict.py: LiteRT Python, all threads | {py_load:.2f} | {1000 * statistics.median(py_all):.1f} "
          f"| {1000 * p95(py_all):.1f} |")
    print("\nfirst visit (what the service worker caches, with the relaxed-SIMD .wasm build):")
    print("\n| file | bytes | gzipped |")
    print("|---|---|---|")
    for name, (raw, gz) in sorted(sizes["files"].items(), key=lambda kv: -kv[1][0]):
        if raw >= 20_000:
            print(f"| {name} | {raw / 1e6:.2f} MB | {gz / 1e6:.2f} MB |")
    rest = [(raw, gz) for raw, gz in sizes["files"].values() if raw < 20_000]
    print(f"| {len(rest)} other files | {sum(r for r, _ in rest) / 1e6:.2f} MB | {sum(g for _, g in rest) / 1e6:.2f} MB |")
    print(f"| **total** | **{sizes['total'] / 1e6:.2f} MB** | **{sizes['gzip'] / 1e6:.2f} MB** |")


if __name__ == "__main__":
    main()
