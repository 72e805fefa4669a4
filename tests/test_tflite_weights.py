"""Importing the int8 ImageNet checkpoint of weights/ into the Keras MobileNetV2: the
imported float network must compute what the checkpoint computes, on real photos."""
from __future__ import annotations

import numpy as np
import pytest

from mushroom import models
from mushroom.config import PROJECT_ROOT
from mushroom.errors import UserError
from mushroom.images import load_image
from mushroom.keras_env import keras
from mushroom.tflite_weights import checkpoint_classifier, load_checkpoint, read_checkpoint
from tests.conftest import need_shared

CHECKPOINT = PROJECT_ROOT / "weights" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"   # shipped with the project
PHOTOS = PROJECT_ROOT.parent / "shared" / "data" / "fungi128"


def _checkpoint_logits(images: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The checkpoint's own int8 logits (dequantized), its logit quantization step, and the real
    input values it saw ((q - zero point) * scale)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(CHECKPOINT), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    logits = next(t for t in interp.get_tensor_details()
                  if t["name"].startswith("MobileNetV2/top/SpatialSqueeze") and tuple(t["shape"]) == (1, 1001))
    scale, zero_point = logits["quantization"]
    out = []
    for image in images:
        interp.set_tensor(inp["index"], image[None].astype(np.uint8))
        interp.invoke()
        out.append((interp.get_tensor(logits["index"])[0].astype(np.float32) - zero_point) * scale)
    in_scale, in_zero = inp["quantization"]
    return np.array(out), scale, (images.astype(np.float32) - in_zero) * in_scale


def test_imported_network_reproduces_the_checkpoint_on_real_photos():
    paths = sorted(need_shared(PHOTOS, "the fungi128 photos").rglob("*.jpg"))
    assert paths, f"{PHOTOS} holds no .jpg photo"
    paths = paths[:: max(1, len(paths) // 120)]
    images = np.stack([load_image(p, 224) for p in paths])
    int8_logits, step, real_inputs = _checkpoint_logits(images)

    model = models.build_model("mobilenet_v2", 5, 224, weights=str(CHECKPOINT))
    features = model.get_layer("head_pool").output
    classifier = keras.layers.Dense(1001)
    imagenet = keras.Model(model.input, classifier(features))
    classifier.set_weights(list(checkpoint_classifier(CHECKPOINT, 52)))
    # The model's Rescaling maps x -> x / 127.5 - 1; feed it the pixels whose image is exactly
    # what the checkpoint's quantized input represented.
    float_logits = imagenet.predict((real_inputs + 1.0) * 127.5, batch_size=32, verbose=0)

    agree = float_logits.argmax(1) == int8_logits.argmax(1)
    top2 = np.sort(int8_logits, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 8 * step   # the checkpoint's top-1 is not a near-tie
    err = np.abs(float_logits - int8_logits)
    print(f"top-1 agreement {agree.mean():.3f} on {len(agree)} photos, {agree[clear].mean():.3f} on the "
          f"{clear.sum()} whose int8 top-1 leads by > 8 steps; |dlogit| mean {err.mean() / step:.2f} steps, "
          f"p99 {np.percentile(err, 99) / step:.2f} steps")
    # The float network cannot copy the int8 rounding of 52 layers, so the checkpoint's near-ties
    # (a lead of a few quantization steps between, say, 'agaric' and 'mushroom') may flip; every
    # clear answer must be the same, and the logits must sit within the int8 noise.
    assert agree[clear].mean() >= 0.99 and clear.sum() >= 0.6 * len(agree)
    assert agree.mean() >= 0.95
    assert err.mean() <= 2.0 * step and np.percentile(err, 99) <= 8.0 * step


def test_checkpoint_holds_the_keras_convolutions_in_order():
    convs = read_checkpoint(CHECKPOINT)
    assert len(convs) == 53   # 52 backbone convolutions, then the 1x1 ImageNet classifier
    assert [c.op for c in convs[:3]] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"]
    assert convs[0].kernel.shape == (3, 3, 3, 32) and convs[1].kernel.shape == (3, 3, 32, 1)
    assert convs[-1].kernel.shape == (1, 1, 1280, 1001)
    model = models.build_model("mobilenet_v2", 3, 96, weights=str(CHECKPOINT))
    bn = model.get_layer("bn_Conv1")
    gamma, beta, mean, var = bn.get_weights()
    np.testing.assert_allclose(gamma, 1.0)
    np.testing.assert_allclose(mean, 0.0)
    np.testing.assert_allclose(var + bn.epsilon, 1.0, rtol=1e-6)   # BN(x) = x + bias exactly
    np.testing.assert_allclose(beta, convs[0].bias)


def test_a_checkpoint_of_another_network_is_a_clear_error():
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    with pytest.raises(UserError, match="convolution"):
        load_checkpoint(resnet, CHECKPOINT)
    with pytest.raises(UserError, match="mobilenet_v2"):
        models.build_model("efficientnet_v2_b0", 3, 64, weights=str(CHECKPOINT))


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    fake = tmp_path / "weights.tflite"
    fake.write_bytes(b"not a flatbuffer")
    with pytest.raises(UserError, match="is not a TFLite model"):
        read_checkpoint(fake)
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.tflite")


def test_the_shipped_checkpoint_is_verified_and_a_damaged_copy_is_one_clear_error(tmp_path):
    """weights/ holds the checkpoint the demo starts from; its sha256 is checked on every load, so a
    truncated download or an altered file stops with one sentence instead of training on garbage."""
    import hashlib

    from mushroom.tflite_weights import CHECKPOINTS, verify_checkpoint

    assert hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest() == CHECKPOINTS[CHECKPOINT.name]
    assert (PROJECT_ROOT / "weights" / "LICENSE-google-coral-test_data").is_file()   # Apache-2.0 asks for it
    assert verify_checkpoint(CHECKPOINT) == CHECKPOINT
    data = CHECKPOINT.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "altered": data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]}
    for kind, content in damaged.items():
        bad = tmp_path / kind / CHECKPOINT.name
        bad.parent.mkdir()
        bad.write_bytes(content)
        with pytest.raises(UserError, match="is not the expected checkpoint .* truncated or altered") as err:
            read_checkpoint(bad)
        assert "\n" not in str(err.value)
        with pytest.raises(UserError, match="not the expected checkpoint"):
            models.build_model("mobilenet_v2", 3, 96, weights=str(bad))


def test_a_clone_without_shared_builds_the_demo_model_from_its_own_weights(tmp_path):
    """The demo's model.weights is a path inside the project: a clone placed where no ../shared
    exists (and run from another directory) loads and verifies it."""
    import subprocess
    import sys

    clone = tmp_path / "elsewhere" / "mushroom-quant"
    out = subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(PROJECT_ROOT), str(clone)], capture_output=True,
                         text=True)
    if out.returncode:
        pytest.skip(f"this checkout is not a git repository with the weights committed: {out.stderr.strip()}")
    assert not (clone.parent.parent / "shared").exists()
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); os.chdir('/');"
            "from mushroom.config import load_config; from mushroom import models;"
            "cfg = load_config(sys.argv[1] + '/configs/demo.yaml', ['wandb.mode=disabled']);"
            "m = models.build_model(cfg.model.name, 6, 96, weights=cfg.model.weights);"
            "print(cfg.model.weights, m.get_layer('bn_Conv1').get_weights()[1][:2])")
    run = subprocess.run([sys.executable, "-c", code, str(clone)], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("weights/tf2_mobilenet_v2_1.0_224_ptq.tflite")
    expected = read_checkpoint(CHECKPOINT)[0].bias[:2]
    got = np.array([float(v) for v in run.stdout.split("[", 1)[1].rstrip().rstrip("]").split()])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
