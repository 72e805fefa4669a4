"""The LiteRT runtime: input quantization (round, then clip), output dequantization, errors, no TensorFlow."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mushroom.config import PROJECT_ROOT
from mushroom.errors import UserError
from mushroom.litert import TFLiteModel, dequantize_output, quantize_input


def test_importing_the_runtime_loads_no_tensorflow():
    code = ("import sys, mushroom.litert; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_uint8_input_is_rounded_then_clipped_not_truncated():
    x = np.array([0.0, 0.4, 0.6, 12.5, 13.5, 254.4, 254.6, 255.0, 300.0, -0.6, -5.0, 1e6])
    q = quantize_input(x, scale=1.0, zero_point=0, dtype=np.uint8)
    # np.round rounds half to even (12.5 -> 12, 13.5 -> 14), like TFLite's own quantize kernel.
    assert q.tolist() == [0, 0, 1, 12, 14, 254, 255, 255, 255, 0, 0, 255]
    assert q.dtype == np.uint8
    # What the original study did instead: astype truncates and wraps around.
    wrong = x.astype(np.int64).astype(np.uint8)
    assert wrong[6] == 254 and wrong[8] == 44 and wrong[10] == 251


def test_int8_input_uses_scale_and_zero_point():
    x = np.array([[0.0, 1.0, 127.0, 128.0, 255.0, 255.9, -1.0, 400.0]])
    q = quantize_input(x, scale=1.0, zero_point=-128, dtype=np.int8)
    assert q.tolist() == [[-128, -127, -1, 0, 127, 127, -128, 127]]
    q = quantize_input(np.array([0.0, 0.26, 0.74, 1.0, 64.0]), scale=0.5, zero_point=10, dtype=np.int8)
    assert q.tolist() == [10, 11, 11, 12, 127]          # 0.74/0.5 + 10 = 11.48 -> 11; 64/0.5 + 10 = 138 -> clip 127
    assert quantize_input(np.array([3.7]), 0.0, 0, np.uint8).tolist() == [4]   # no parameters: round and clip only


def test_output_dequantization():
    q = np.array([0, 1, 128, 255], np.uint8)
    np.testing.assert_array_equal(dequantize_output(q, 1 / 256, 0), [0.0, 1 / 256, 0.5, 255 / 256])
    q8 = np.array([-128, 0, 127], np.int8)
    np.testing.assert_array_equal(dequantize_output(q8, 1 / 256, -128), [0.0, 0.5, 255 / 256])
    assert dequantize_output(np.array([0.25], np.float32), 0.0, 0).tolist() == [0.25]


def test_missing_empty_and_corrupt_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TFLiteModel(tmp_path / "nope.tflite")
    (tmp_path / "empty.tflite").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        TFLiteModel(tmp_path / "empty.tflite")
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(UserError, match="not a valid TFLite model"):
        TFLiteModel(tmp_path / "bad.tflite")


@pytest.fixture(scope="module")
def known_output_files(tmp_path_factory):
    """A model whose probabilities are known exactly whatever the input (zero kernel, bias = log p),
    converted to float32 and PTQ int8, plus the Keras model."""
    from mushroom.keras_env import keras
    from mushroom.quantization import convert

    probs = np.array([0.5, 0.25, 0.125, 0.125], np.float32)   # multiples of the int8 output step 1/256
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax", kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant(np.log(probs)))(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    reps = rng.integers(0, 256, (8, 8, 8, 3)).astype(np.uint8)
    root = tmp_path_factory.mktemp("known")
    files = {}
    for fmt in ("float32", "ptq_int8"):
        files[fmt] = root / f"{fmt}.tflite"
        files[fmt].write_bytes(convert(model, fmt, reps))
    return probs, files, model


def test_int8_output_dequantization_is_exact_on_a_known_model(known_output_files):
    probs, files, _ = known_output_files
    lite = TFLiteModel(files["ptq_int8"])
    assert lite.output_dtype == np.uint8 and lite.output_quantization == (1 / 256, 0)
    images = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    out = lite.predict(images)
    np.testing.assert_array_equal(out, np.tile(probs, (5, 1)))
    # Probabilities are returned as they are: a second softmax would flatten them towards 0.25.
    assert out.sum(1) == pytest.approx(np.ones(5))


def test_float_file_predicts_like_keras_and_accepts_uint8_or_float(known_output_files):
    probs, files, model = known_output_files
    lite = TFLiteModel(files["float32"], num_threads=1)
    assert lite.input_size == 8 and lite.input_dtype == np.float32 and lite.size_bytes > 0
    images = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_allclose(lite.predict(images), model.predict(images.astype(np.float32), verbose=0), atol=1e-6)
    np.testing.assert_array_equal(lite.predict(images), lite.predict(images.astype(np.float32)))
    assert lite.predict(images[0]).shape == (1, 4)
    with pytest.raises(UserError, match="shape"):
        lite.predict(np.zeros((1, 16, 16, 3), np.uint8))
