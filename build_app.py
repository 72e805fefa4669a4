"""The phone page: a static site in app/dist/ that runs the int8 model in the browser (LiteRT.js)
and gives predict.py's answer offline (top five, edibility, calibrated certainty, verdict with
reasons and look-alikes). Serve the folder with any static server and open it once on the phone.

    python build_app.py                                    # the model predict.py picks (best int8)
    python build_app.py models/demo-mobilenet_v2           # a model folder (its QAT int8 file first)
    python build_app.py models/demo-mobilenet_v2/tflite/ptq_int8.tflite --dist /tmp/site
    make app && cd app/dist && python -m http.server 8000  # then open http://<this machine>:8000/

Needs LiteRT.js installed by `npm ci` in app/ (`make app` does it). Thresholds come from the
config's `predict` section (--config/--set as for predict.py), the temperature, unknown-species
threshold and fusion rule from the model folder, exactly as predict.py reads them.
"""
import argparse

from mushroom import cli
from mushroom.app import DIST_DIR, NODE_MODULES, build_app
from mushroom.config import parse
from mushroom.prediction import resolve_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a model folder or .tflite file (default: the one predict.py picks)")
    parser.add_argument("--dist", default=str(DIST_DIR), help="where the site goes (default app/dist; emptied first)")
    parser.add_argument("--node-modules", default=str(NODE_MODULES), help="where `npm ci` installed LiteRT.js")
    args, cfg = parse(parser, argv)
    path, folder, fmt = resolve_model(args.model, cfg.paths.models_dir, cfg.paths.reports_dir)
    if not fmt.endswith("int8"):
        print(f"note: {path} is {fmt}, not an int8 file: the page works but downloads and runs a larger, slower model")
    out = build_app(cfg, folder, fmt, args.dist, args.node_modules)
    b = out["bytes"]
    print(f"model: {path} ({out['dynamic_dims_fixed']} dynamic dimensions fixed to batch 1; outputs identical in LiteRT)")
    print(f"unknown-species check: {out['open_set'] or 'none fitted (run evaluate.py)'}")
    print(f"wrote {out['dist']}: {len(b['files'])} files a phone downloads on its first visit, "
          f"{b['total'] / 1e6:.2f} MB ({b['gzip'] / 1e6:.2f} MB gzipped)")
    for name, (raw, gz) in sorted(b["files"].items(), key=lambda kv: -kv[1][0])[:6]:
        print(f"  {name:40s} {raw / 1e6:7.2f} MB  gzip {gz / 1e6:6.2f} MB")
    print(f"serve it: cd {out['dist']} && python -m http.server 8000")
    return 0


if __name__ == "__main__":
    cli.run(main)
