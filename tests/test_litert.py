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


def test_integer_pixels_take_the_fast_path_with_the_same_values():
    """uint8 pixels at unit scale skip the float path (it cost 0.24 of a 192 px photo's ms); every
    integer input dtype and zero point gives what rounding in float gives, and a copy."""
    rng = np.random.default_rng(0)
    for src in (np.uint8, np.int16, np.int64):
        info = np.iinfo(src)
        x = rng.integers(max(info.min, -400), min(info.max, 400) + 1, (3, 5, 5, 3)).astype(src)
        for dtype, zero_point in ((np.uint8, 0), (np.uint8, 3), (np.int8, -128), (np.int8, 0), (np.int16, 7)):
            fast = quantize_input(x, 1.0, zero_point, dtype)
            slow = quantize_input(x.astype(np.float64), 1.0, zero_point, dtype)
            assert fast.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(fast, slow)
    pixels = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    q = quantize_input(pixels, 1.0, 0, np.uint8)
    np.testing.assert_array_equal(q, pixels)
    assert not np.shares_memory(q, pixels)


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
    converted to PTQ int8: for the output dequantization only. Everything about the input is checked
    on input_sensitive_files below, where a zero kernel would hide any input bug."""
    from mushroom.keras_env import keras
    from mushroom.quantization import convert

    probs = np.array([0.5, 0.25, 0.125, 0.125], np.float32)   # multiples of the int8 output step 1/256
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax", kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant(np.log(probs)))(x)
    model = keras.Model(inputs, outputs)
    reps = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)).astype(np.uint8)
    path = tmp_path_factory.mktemp("known") / "ptq_int8.tflite"
    path.write_bytes(convert(model, "ptq_int8", reps))
    return probs, path


def test_int8_output_dequantization_is_exact_on_a_known_model(known_output_files):
    probs, path = known_output_files
    lite = TFLiteModel(path)
    assert lite.output_dtype == np.uint8 and lite.output_quantization == (1 / 256, 0)
    images = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    out = lite.predict(images)
    np.testing.assert_array_equal(out, np.tile(probs, (5, 1)))
    # Probabilities are returned as they are: a second softmax would flatten them towards 0.25.
    assert out.sum(1) == pytest.approx(np.ones(5))


@pytest.fixture(scope="module")
def input_sensitive_files(tmp_path_factory):
    """A model whose every output depends on every pixel, at its place and in its channel (a seeded
    random dense layer over the flattened 8x8 image), with its files: float32; "ptq_int8" calibrated
    on pixels over [0, 255] (input scale 1, as every exported model); "ptq_int8_half" calibrated on
    [0, 127] (input scale 127/255, so the runtime must quantize with the file's own scale); and the
    calibration images, whose activations lie inside the int8 ranges by construction."""
    from mushroom.keras_env import keras
    from mushroom.quantization import convert

    rng = np.random.default_rng(0)
    inputs = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(4, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))))
    dense.set_weights([rng.normal(0, 0.3, (8 * 8 * 3, 4)).astype(np.float32), rng.normal(0, 0.5, 4).astype(np.float32)])
    reps = rng.integers(0, 256, (8, 8, 8, 3)).astype(np.uint8)
    reps[:, 0, 0], reps[:, 0, 1] = (0, 255, 0), (255, 0, 255)   # calibrated over exactly [0, 255]: input scale 1
    root = tmp_path_factory.mktemp("sensitive")
    files = {}
    for name, fmt, calibration in (("float32", "float32", None), ("ptq_int8", "ptq_int8", reps),
                                   ("ptq_int8_half", "ptq_int8", reps // 2)):
        files[name] = root / f"{name}.tflite"
        files[name].write_bytes(convert(model, fmt, calibration))
    return model, files, reps


def keras_probs(model, images) -> np.ndarray:
    return model.predict(np.asarray(images, np.float32), verbose=0)


def assert_model_tells_apart(model, images, *variants):
    """The Keras model's probabilities for `images` differ by > 0.1 from those of each variant (the
    input transposed, in BGR, wrongly scaled ...): a file fed such a variant cannot pass a
    comparison with keras_probs(model, images) at a tolerance under 0.1."""
    reference = keras_probs(model, images)
    for variant in variants:
        assert np.abs(keras_probs(model, variant) - reference).max() > 0.1


def test_float_file_predicts_like_keras_and_accepts_uint8_or_float(input_sensitive_files):
    model, files, _ = input_sensitive_files
    lite = TFLiteModel(files["float32"], num_threads=1)
    assert lite.input_size == 8 and lite.input_dtype == np.float32 and lite.size_bytes > 0
    images = np.random.default_rng(2).integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)
    assert_model_tells_apart(model, images, images.transpose(0, 2, 1, 3), images[..., ::-1], images / 255.0,
                             images[::-1], np.zeros_like(images))
    probs = lite.predict(images)
    np.testing.assert_allclose(probs, keras_probs(model, images), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(probs, lite.predict(images.astype(np.float32)))
    # A float file takes the pixels as they are, not rounded to integers.
    shifted = images + 0.4
    assert np.abs(keras_probs(model, shifted) - probs).max() > 1e-4
    np.testing.assert_allclose(lite.predict(shifted), keras_probs(model, shifted), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(lite.predict(images[3]), probs[3:4])
    with pytest.raises(UserError, match="shape"):
        lite.predict(np.zeros((1, 16, 16, 3), np.uint8))


def test_int8_file_rounds_and_clips_float_pixels_and_predicts_like_keras(input_sensitive_files):
    model, files, reps = input_sensitive_files
    lite = TFLiteModel(files["ptq_int8"], num_threads=1)
    assert lite.input_dtype == np.uint8 and lite.input_quantization == (1.0, 0)
    images = reps[:6]
    assert_model_tells_apart(model, images, images.transpose(0, 2, 1, 3), images[..., ::-1], images / 255.0)
    probs = lite.predict(images)
    # Within the int8 error (measured 0.008) of the float model; the variants above are 0.1+ away.
    np.testing.assert_allclose(probs, keras_probs(model, images), atol=0.03, rtol=0)
    np.testing.assert_array_equal(probs, lite.predict(images.astype(np.float32)))
    # Float pixels are rounded, not truncated: +0.4 is the same image, +0.6 the next integer up.
    np.testing.assert_array_equal(lite.predict(images + 0.4), probs)
    up = lite.predict(images + 0.6)
    np.testing.assert_array_equal(up, lite.predict(np.minimum(images.astype(np.int64) + 1, 255)))
    assert not np.array_equal(up, probs)
    # ... and clipped to [0, 255], not wrapped around.
    extreme = images.astype(np.float64)
    extreme[:, :4] = 300.0
    extreme[:, 4:] = -20.0
    clipped = np.where(extreme > 0, 255, 0).astype(np.uint8)
    np.testing.assert_array_equal(lite.predict(extreme), lite.predict(clipped))
    assert_model_tells_apart(model, clipped, extreme.astype(np.int64).astype(np.uint8))


def test_int8_file_quantizes_the_input_with_its_own_scale(input_sensitive_files):
    model, files, reps = input_sensitive_files
    lite = TFLiteModel(files["ptq_int8_half"], num_threads=1)
    scale, zero_point = lite.input_quantization
    assert scale == pytest.approx(127 / 255) and zero_point == 0
    images = reps[2:8] // 2
    # Quantized without the scale (q = x), the file would see x * scale: far from the model's answer.
    assert_model_tells_apart(model, images, images * scale)
    probs = lite.predict(images)
    np.testing.assert_allclose(probs, keras_probs(model, images), atol=0.03, rtol=0)
    np.testing.assert_array_equal(probs, lite.predict(images.astype(np.float32)))
