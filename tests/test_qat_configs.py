"""The layer-type -> QuantizeConfig table covers every registered model; quantize_apply accepts them."""
from __future__ import annotations

import numpy as np
import pytest

from mushroom import qat_configs as qc
from mushroom.config import PROJECT_ROOT
from mushroom.images import load_image
from mushroom.keras_env import keras
from mushroom.models import SPLIT_ACTIVATIONS, build_model, model_names, rebuild_for_int8
from tests.conftest import need_shared

# quantize_apply is run on tiny, b0 and resnet50 here; on V2-S/M it takes tens of seconds each
# (see the report), so for those the layer-type coverage check below stands in for it.
APPLY_IN_TESTS = ("tiny", "efficientnet_v2_b0", "mobilenet_v2", "resnet50")


@pytest.fixture(scope="module")
def models():
    return {name: build_model(name, 3, 32) for name in model_names()}


def test_every_layer_type_of_every_registered_model_is_covered(models):
    for name, model in models.items():
        assert qc.unsupported_layers(model) == [], name
        for layer in model.layers[1:]:
            covered = (type(layer) in qc.QUANTIZE_CONFIGS or qc.registry_supports(layer)
                       or isinstance(layer, qc.TRANSFORM_HANDLED))
            assert covered, f"{name}: {layer.name} ({type(layer).__name__})"


def test_the_table_fills_what_the_registry_lacks(models):
    types = {type(l) for m in models.values() for l in m.layers}
    for cls in (keras.layers.Multiply, keras.layers.Rescaling):
        assert cls in types
        assert not qc.registry_supports(cls.__new__(cls)), cls   # the registry really lacks it
        assert cls in qc.QUANTIZE_CONFIGS


def test_a_batch_norm_not_after_a_conv_is_reported():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization(name="lonely_bn")(inputs)
    x = keras.layers.Multiply(name="mul")([x, x])
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2, name="lam")(x))
    assert qc.unsupported_layers(model) == ["lonely_bn (BatchNormalization)", "lam (Lambda)"]


def test_multiply_and_rescaling_get_only_an_output_quantizer():
    model = build_model("tiny", 3, 32)
    for layer in model.layers:
        config = qc.config_for(layer)
        if isinstance(layer, (keras.layers.Multiply, keras.layers.Rescaling)):
            assert config.get_weights_and_quantizers(layer) == [] and config.get_activations_and_quantizers(layer) == []
            (quantizer,) = config.get_output_quantizers(layer)
            assert quantizer.get_config() == {"num_bits": 8, "per_axis": False, "symmetric": False, "narrow_range": False}
        else:
            assert config is None, layer.name


@pytest.mark.parametrize("name", APPLY_IN_TESTS)
def test_quantize_apply_succeeds_and_keeps_the_weights(models, name):
    model = models[name]
    qat = qc.quantize(model)
    wrapped = [l for l in qat.layers if l.name.startswith("quant_")]
    assert len(wrapped) == len(rebuild_for_int8(model).layers) - 1   # every layer of the rebuilt graph but the input
    conv = next(l for l in model.layers if isinstance(l, keras.layers.Conv2D))
    kernel = next(w for w in qat.get_layer("quant_" + conv.name).weights if w.name.endswith("/kernel:0"))
    np.testing.assert_array_equal(kernel.numpy(), conv.kernel.numpy())
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    probs = qat.predict(x, verbose=0)
    assert probs.shape == (2, 3) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)


def split_layers(model) -> set[str]:
    """What rebuild_for_int8 adds to a registered model: an activation after each squeeze-excite
    reduce conv (swish inside), the first half of a Rescaling with offset (MobileNetV2, V2-S/M) or
    of a Normalization (V2-B0); ResNet50 has nothing to split."""
    added = {f"{l.name}_activation" for l in model.layers if l.name.endswith("se_reduce")}
    scaling = model.layers[1:3]
    added |= {f"{l.name}_scale" for l in scaling if isinstance(l, keras.layers.Rescaling) and l.offset != 0 and l.scale != 1}
    added |= {f"{l.name}_center" for l in scaling if isinstance(l, keras.layers.Normalization)}
    return added


SPLIT_LAYERS = {"tiny": 1, "mobilenet_v2": 1, "resnet50": 0, "efficientnet_v2_b0": 17}   # how many


@pytest.mark.parametrize("name", sorted(SPLIT_LAYERS))
def test_rebuild_for_int8_keeps_weights_and_float_outputs_exactly(models, name):
    model = models[name]
    rebuilt = rebuild_for_int8(model)
    added = {l.name for l in rebuilt.layers} - {l.name for l in model.layers}
    assert added == split_layers(model) and len(added) == SPLIT_LAYERS[name]
    assert {l.name for l in model.layers} <= {l.name for l in rebuilt.layers}   # head_*, rescaling, ... all kept
    assert rebuild_for_int8(rebuilt) is rebuilt                                 # nothing left to split
    if not added:
        assert rebuilt is model
    for layer in model.layers:
        for w, v in zip(layer.get_weights(), rebuilt.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(w, v)
    # no layer computes two TFLite ops with an unquantized tensor between them
    for layer in rebuilt.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            assert keras.activations.serialize(layer.activation) not in SPLIT_ACTIVATIONS, layer.name
        if isinstance(layer, keras.layers.Rescaling):
            assert layer.scale == 1.0 or np.all(np.asarray(layer.offset) == 0), layer.name
    x = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    outputs = ("head_pool", "head_logits", "head_probs")
    before = keras.Model(model.input, [model.get_layer(n).output for n in outputs])(x)
    after = keras.Model(rebuilt.input, [rebuilt.get_layer(n).output for n in outputs])(x)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    scaled = rebuilt.get_layer(model.layers[1].name)        # the scaling's output is unchanged too
    np.testing.assert_array_equal(keras.Model(rebuilt.input, scaled.output)(x).numpy(), model.layers[1](x).numpy())


def test_annotate_leaves_the_input_alone_and_wraps_the_rest():
    model = build_model("tiny", 3, 32)
    annotated = qc.annotate(model)
    assert isinstance(annotated.layers[0], keras.layers.InputLayer)
    assert all(type(l).__name__ == "QuantizeAnnotate" for l in annotated.layers[1:])
    multiply = next(l for l in annotated.layers[1:] if l.layer.name == "se_excite")
    assert isinstance(multiply.quantize_config, qc.OutputQuantizeConfig)


def _mobilenet_with_spread_channels():
    """A MobileNetV2 whose depthwise kernels have per-channel scales spread over two orders of
    magnitude, as batch-norm folded ImageNet weights do (random init gives them all one scale)."""
    model = build_model("mobilenet_v2", 3, 32, weights=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            k = layer.get_weights()[0]
            layer.set_weights([k * np.exp(rng.uniform(-2.5, 2.5, size=(1, 1, k.shape[2], 1))).astype(np.float32)])
    return model


def test_depthwise_kernels_get_one_range_per_channel():
    model = _mobilenet_with_spread_channels()
    qat = qc.quantize(model)
    dw = next(l for l in model.layers if isinstance(l, keras.layers.DepthwiseConv2D))
    wrapper = qat.get_layer("quant_" + dw.name)
    ranges = [w for w in wrapper.weights if w.name.endswith("depthwise_kernel_min:0")]
    assert len(ranges) == 1 and ranges[0].shape == (dw.depthwise_kernel.shape[2],)
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    qat(x, training=True)   # one training call sets the kernels' last-value ranges
    kmax = [w for w in wrapper.weights if w.name.endswith("depthwise_kernel_max:0")][0].numpy()
    np.testing.assert_allclose(kmax, np.abs(dw.depthwise_kernel.numpy()).max(axis=(0, 1, 3)), rtol=1e-5)


CHECKPOINT = PROJECT_ROOT / "weights" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"   # shipped with the project


def test_calibrated_ranges_make_the_qat_model_compute_what_the_float_model_does():
    """Fresh tfmot ranges are [-6, 6] and a short fine-tune barely moves them; calibrated from the
    float model's activations, the QAT model's outputs match the float model's (real ImageNet
    weights: random ones give near-zero activations that say nothing)."""
    model = build_model("mobilenet_v2", 3, 64, weights=str(CHECKPOINT))
    # real photos: uniform noise gives activations far from a photo's, and the bound below is for photos
    photos = sorted(need_shared(PROJECT_ROOT.parent / "shared" / "data" / "fungi128", "the fungi128 photos")
                    .rglob("*.jpg"))[::40][:32]
    x = np.stack([load_image(p, 64) for p in photos]).astype(np.float32)
    float_logits = keras.Model(model.input, model.get_layer("head_logits").output)(x).numpy()

    def relative_error(calibrate: bool) -> float:
        qat = qc.quantize(model)
        if calibrate:
            assert qc.calibrate_ranges(qat, model, x) > 100    # activation and kernel ranges
        probe = keras.Model(qat.input, qat.get_layer("quant_head_logits").output)
        return float(np.abs(probe(x, training=False).numpy() - float_logits).mean() / np.abs(float_logits).mean())

    fresh, calibrated = relative_error(False), relative_error(True)
    assert calibrated < 0.15 and fresh > 3 * calibrated
    rescaling = qc.quantize(model)
    qc.calibrate_ranges(rescaling, model, x)
    lo = [w for w in rescaling.get_layer("quant_rescaling").weights if w.name.endswith("output_min:0")][0]
    assert -1.0 <= float(lo.numpy()) < -0.9   # the [-1, 1] of MobileNetV2's scaling, not tfmot's -6
