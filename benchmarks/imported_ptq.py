"""How much post-training int8 quantization costs the imported MobileNetV2 before any fine-tuning
(a benchmark script, not a test): the number behind the study's int8-grid caveat.

    python benchmarks/imported_ptq.py                      # 160 real photos from ../shared, 224 px
    python benchmarks/imported_ptq.py --photos 400 --size 128

The checkpoint of weights/ was trained in float, then quantized: its weights sit on an int8
grid already. Imported into Keras (float) with its ImageNet classifier and quantized again by this
project's PTQ conversion, the int8 file should agree with its float model almost everywhere; a
float-trained backbone loses more. Prints top-1 agreement (ImageNet's 1001 classes) of the PTQ
int8 file with its float Keras model, and of both with the original checkpoint.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mushroom.config import PROJECT_ROOT  # noqa: E402

CHECKPOINT = PROJECT_ROOT / "weights" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"   # shipped with the project
PHOTOS = PROJECT_ROOT.parent / "shared" / "data" / "fungi128"


def checkpoint_top1(path: Path, images: np.ndarray) -> np.ndarray:
    """The checkpoint's own top-1: it takes the uint8 pixels as they are (its input scale maps them
    to [-1, 1] itself), unlike this project's files, which take pixels with scale 1."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    top1 = []
    for image in images:
        interp.set_tensor(inp["index"], image[None].astype(np.uint8))
        interp.invoke()
        top1.append(int(interp.get_tensor(out["index"])[0].argmax()))
    return np.array(top1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=160, help="real photos to compare on")
    parser.add_argument("--size", type=int, default=224, help="input size of the imported model")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    args = parser.parse_args()

    from mushroom import models
    from mushroom.images import load_image
    from mushroom.keras_env import keras
    from mushroom.litert import TFLiteModel
    from mushroom.quantization import convert
    from mushroom.tflite_weights import checkpoint_classifier

    paths = sorted(PHOTOS.rglob("*.jpg"))
    paths = paths[:: max(1, len(paths) // args.photos)][: args.photos]
    images = np.stack([load_image(p, args.size) for p in paths])
    reps = np.stack([load_image(p, args.size) for p in sorted(PHOTOS.rglob("*.jpg"))[1::37][:32]])

    base = models.build_model("mobilenet_v2", 2, args.size, weights=str(args.checkpoint))
    logits = keras.layers.Dense(1001, name="head_logits")
    z = logits(base.get_layer("head_pool").output)
    imagenet = keras.Model(base.input, keras.layers.Activation("softmax", name="head_probs")(z))
    logits.set_weights(list(checkpoint_classifier(args.checkpoint, 52)))
    float_top1 = imagenet.predict(images.astype(np.float32), batch_size=32, verbose=0).argmax(1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ptq_int8.tflite"
        path.write_bytes(convert(imagenet, "ptq_int8", reps))
        ptq_top1 = TFLiteModel(path).predict(images).argmax(1)
    lines = [f"{len(images)} photos at {args.size} px, ImageNet top-1 (1001 classes):",
             f"  PTQ int8 of the imported model vs its float model: {np.mean(ptq_top1 == float_top1):.3f}"]
    if args.size == 224:
        original = checkpoint_top1(args.checkpoint, images)
        lines += [f"  imported float model vs the original checkpoint:    {np.mean(float_top1 == original):.3f}",
                  f"  PTQ int8 of the imported model vs the checkpoint:   {np.mean(ptq_top1 == original):.3f}"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
