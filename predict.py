"""The forager's offline answer: the five most likely species of each photo, their edibility,
how certain the model is, whether the photo looks like a species the model does not know, and a
verdict that never calls a mushroom edible on weak evidence.

    python predict.py photo.jpg
    python predict.py ../shared/data/fungi128/Amanita_muscaria --json
    python predict.py --one-mushroom top.jpg gills.jpg stem.jpg       # several photos of one find
    python predict.py --find-per-folder finds/*/                      # one answer per folder
    python predict.py photo.jpg --model models/demo-mobilenet_v2/tflite/qat_int8.tflite

Imports neither TensorFlow nor Keras (LiteRT, NumPy and Pillow only). Exit status 1 when any
photo could not be answered (each gets its own one-line error; the others are still answered).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mushroom import cli
from mushroom.advice import format_text
from mushroom.config import parse
from mushroom.errors import UserError
from mushroom.prediction import Forager, iter_photos


def finds(args) -> list[list[Path]]:
    """The photos to answer, grouped into finds: each photo alone, all together (--one-mushroom),
    or one find per folder given (--find-per-folder)."""
    if args.one_mushroom:
        return [list(iter_photos(args.photos))]
    if args.find_per_folder:
        return [list(iter_photos([p])) if Path(p).is_dir() else [Path(p)] for p in args.photos]
    return [[p] for p in iter_photos(args.photos)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="+", help="photo files or folders of photos")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--one-mushroom", action="store_true",
                       help="all the photos show one mushroom: fuse them into one answer")
    group.add_argument("--find-per-folder", action="store_true",
                       help="each folder given holds the photos of one mushroom: one fused answer per folder")
    parser.add_argument("--model", help="a .tflite file or a model folder (default: the best int8 model under models/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per answer (keys in README)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the interpreter (default: all)")
    args, cfg = parse(parser, argv)
    forager = Forager.load(cfg, args.model, args.threads)
    missing = forager.missing()
    if missing:   # one line, on stderr so that --json output stays one JSON object per line
        print(f"note: {forager.folder} lacks {' and '.join(missing)}, so no answer will be 'edible': "
              f"run evaluate.py {forager.folder}", file=sys.stderr)
    if not args.json:
        check = (f"photos unlike all of them are flagged by the unknown-species check ({forager.open_set['score']}, "
                 f"fitted to flag {forager.open_set['unknown_recall']:.0%} of photos of species it never learnt)"
                 if forager.open_set else "no unknown-species threshold is fitted, so a mushroom of any other "
                 "species may be mistaken for one of these")
        print(f"model: {forager.path} ({len(forager.species)} species"
              + (f", calibrated with T={forager.temperature:.2f})" if forager.temperature else ", not calibrated)"))
        print(f"note: this model knows {len(forager.species)} species; {check}.")
    failed = 0
    for photos in finds(args):
        readable, outputs = [], []
        for photo in photos:  # an unreadable photo is reported and left out; the rest still answer
            try:
                outputs.append(forager.outputs([photo]))
                readable.append(str(photo))
            except UserError as exc:
                failed += 1
                msg = str(exc)
                print(f"error: {msg if str(photo) in msg else f'{photo}: {msg}'}", file=sys.stderr)
        if not readable:
            continue
        answer = forager.answer_outputs({k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}, readable)
        if args.json:
            print(json.dumps(answer.to_json(), ensure_ascii=False), flush=True)
        else:
            print()
            if len(readable) > 1:
                print(f"one mushroom, {len(readable)} photos fused ({forager.fusion} of calibrated log-probabilities):")
            print(format_text(answer), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
