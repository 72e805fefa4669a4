"""The forager's offline answer: the five most likely species of each photo, their edibility,
how certain the model is, and a verdict that never calls a mushroom edible on weak evidence.

    python predict.py photo.jpg
    python predict.py ../shared/data/fungi128/Amanita_muscaria --json
    python predict.py photo.jpg --model models/demo-efficientnet_v2_b0/tflite/qat_int8.tflite

Imports neither TensorFlow nor Keras (LiteRT, NumPy and Pillow only). Exit status 1 when any
photo could not be answered (each gets its own one-line error; the others are still answered).
"""
import argparse
import json
import sys

from mushroom import cli
from mushroom.advice import format_text
from mushroom.config import parse
from mushroom.errors import UserError
from mushroom.prediction import Forager, iter_photos


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="+", help="photo files or folders of photos")
    parser.add_argument("--model", help="a .tflite file or a model folder (default: the best int8 model under models/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per photo (keys in README)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the interpreter (default: all)")
    args, cfg = parse(parser, argv)
    forager = Forager.load(cfg, args.model, args.threads)
    if not args.json:
        print(f"model: {forager.path} ({len(forager.species)} species"
              + (f", calibrated with T={forager.temperature:.2f})" if forager.temperature else ", not calibrated)"))
        if len(forager.species) < len(forager.table):
            print(f"note: this model knows {len(forager.species)} of the {len(forager.table)} species in the table; "
                  "a mushroom of any other species will be mistaken for one of these.")
    failed = 0
    for photo in iter_photos(args.photos):
        try:
            answer = forager.answer(photo)
        except UserError as exc:
            failed += 1
            msg = str(exc)
            print(f"error: {msg if str(photo) in msg else f'{photo}: {msg}'}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(answer.to_json(str(photo)), ensure_ascii=False), flush=True)
        else:
            print()
            print(format_text(answer, str(photo)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
