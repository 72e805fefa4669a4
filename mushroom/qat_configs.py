"""The layer-type -> QuantizeConfig table that makes the project's flat models quantizable by tfmot.

tfmot's default 8-bit registry (the model for this table) knows Conv2D, DepthwiseConv2D, Dense,
Activation, Add, pooling, Dropout, Reshape, ... but not the squeeze-excite `Multiply` nor the input
scaling layers, so `quantize_model` rejects EfficientNetV2. This table fills exactly those gaps:

- Multiply: no weights or activations to quantize, one 8-bit per-tensor asymmetric moving-average
  quantizer on its output (what the registry does for Add).
- Rescaling / Normalization: the same output-only config. Measured here (TF 2.21): with a no-op
  config the converter folds the constant 1/255 scaling into the first conv's kernel but keeps
  the kernel's fake-quant ranges of the unscaled kernel, so every stem weight rounds to 0 and the
  qat_int8 file predicts one class for every photo (33 % agreement with its Keras model). An
  output quantizer keeps the scaling as its own int8 op and the file agrees with Keras.
  An output quantizer covers one op only: MobileNetV2's Rescaling(1/127.5, offset=-1) is a MUL
  then an ADD, B0's Normalization a SUB then a DIV, and the tensor between them got no range, so
  the qat_int8 file (converted without calibration) kept both ops float behind a DEQUANTIZE
  (measured, TF 2.21: 5 float32 tensors in each). quantize() therefore annotates the graph of
  models.rebuild_for_int8, where each such layer is two layers of one op each (bit-identical float
  outputs), and each gets this output quantizer: both files are then integer throughout.

Convolutions with swish inside (EfficientNetV2's squeeze-excite reduce convs) are the same problem
on the registry's side: tfmot quantizes swish only after it is applied, TFLite lowers it to
LOGISTIC + MUL outside the conv, and the conv's own output had no range. Measured on B0 (128 px,
random weights): 89 float32 tensors and 17 DEQUANTIZE in the qat_int8 file, 0.37x the float32
file. rebuild_for_int8 gives each its own Activation(swish) layer, which the registry quantizes:
0 float32 tensors, 0.30x, the size of the ptq_int8 file.

BatchNormalization is not in the registry either; tfmot's layout transforms handle it when it
follows a Conv2D/DepthwiseConv2D (every BN of the registered backbones does), see TRANSFORM_HANDLED.

One registry entry is replaced rather than added to (a custom QuantizeConfig on a convolution would
stop tfmot's conv + batch-norm folding transforms): DepthwiseConv2D gets per-channel kernel ranges.
tfmot's conv weight quantizer is per-axis on the kernel's last axis, which for a depthwise kernel
[h, w, channels, 1] has size 1: one range for all channels. Measured on the demo's MobileNetV2
(ImageNet weights, batch norm folded, so channel scales differ by orders of magnitude): the QAT
model fell from val top-1 0.76 to 0.32 and its qat_int8 file (which the converter quantizes per
channel anyway) agreed with it on 75-91 % of photos.
"""
from __future__ import annotations

from mushroom.keras_env import keras, tf  # noqa: F401  (chooses Keras 2 before tfmot loads TensorFlow)

import tensorflow_model_optimization as tfmot  # noqa: E402

from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # noqa: E402
    default_8bit_quantize_registry as _registry, default_8bit_quantize_scheme as _scheme)
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (  # noqa: E402
    QuantizeLayer as _QuantizeLayer)

from mushroom.models import rebuild_for_int8  # noqa: E402

_q = tfmot.quantization.keras
layers = keras.layers


class DepthwiseWeightsQuantizer(_q.quantizers.LastValueQuantizer):
    """8-bit symmetric, narrow-range, one range per channel of a depthwise kernel [h, w, c, 1]
    (what TFLite's int8 DEPTHWISE_CONV_2D uses): the channel axis is moved last for the per-axis
    fake quant and back, as tfmot's own Conv2DTranspose quantizer does."""

    def __init__(self):
        super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    def build(self, tensor_shape, name, layer):
        shape = (tensor_shape[-2],)
        return {"min_var": layer.add_weight(name + "_min", shape=shape, trainable=False,
                                            initializer=keras.initializers.Constant(-6.0)),
                "max_var": layer.add_weight(name + "_max", shape=shape, trainable=False,
                                            initializer=keras.initializers.Constant(6.0))}

    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.transpose(inputs, (0, 1, 3, 2))
        return tf.transpose(super().__call__(x, training, weights, **kwargs), (0, 1, 3, 2))


class DepthwiseQuantizeConfig(_registry.Default8BitConvQuantizeConfig):
    """tfmot's depthwise config with DepthwiseWeightsQuantizer for the kernel."""

    def __init__(self, weight_attrs=("depthwise_kernel",), activation_attrs=("activation",), quantize_output=False):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = DepthwiseWeightsQuantizer()


class Registry(_registry.Default8BitQuantizeRegistry):
    """tfmot's default 8-bit registry with per-channel depthwise kernels (module docstring)."""

    def __init__(self):
        super().__init__(disable_per_axis=False)
        self._layer_quantize_map[layers.DepthwiseConv2D] = DepthwiseQuantizeConfig()


class Scheme(_scheme.Default8BitQuantizeScheme):
    def get_quantize_registry(self):
        return Registry()


class _NoWeightsQuantizeConfig(_q.QuantizeConfig):
    """Shared base: layers with nothing to quantize inside (no kernels, no activation attribute)."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_config(self):
        return {}


class OutputQuantizeConfig(_NoWeightsQuantizeConfig):
    """Quantize only the layer's output: 8 bits, per tensor, asymmetric, moving-average range."""

    def get_output_quantizers(self, layer):
        return [_q.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]


# The table: layer type -> QuantizeConfig class. Exact types (like tfmot's registry), no subclasses.
QUANTIZE_CONFIGS: dict[type, type] = {
    layers.Multiply: OutputQuantizeConfig,
    layers.Rescaling: OutputQuantizeConfig,
    layers.Normalization: OutputQuantizeConfig,
}

# Not in the registry nor the table, yet quantizable: tfmot's default 8-bit layout transforms
# rewrite Conv2D/DepthwiseConv2D + BatchNormalization (+ activation) patterns into quantized ones.
TRANSFORM_HANDLED: tuple[type, ...] = (layers.BatchNormalization,)

# For quantize_scope / load_model: the custom classes a saved QAT model refers to.
CUSTOM_OBJECTS = {cls.__name__: cls for cls in (OutputQuantizeConfig, DepthwiseQuantizeConfig, DepthwiseWeightsQuantizer)}


def registry_supports(layer) -> bool:
    """Whether tfmot's default 8-bit registry quantizes this layer on its own."""
    return Registry().supports(layer)


def config_for(layer):
    """A fresh QuantizeConfig from the table, or None to let tfmot's registry decide."""
    cls = QUANTIZE_CONFIGS.get(type(layer))
    return cls() if cls is not None else None


def unsupported_layers(model) -> list[str]:
    """'name (Type)' of every non-input layer that neither the registry, the table nor the
    conv+BN transforms cover; empty means quantize_apply will accept the model."""
    out = []
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer) or type(layer) in QUANTIZE_CONFIGS or registry_supports(layer):
            continue
        if isinstance(layer, TRANSFORM_HANDLED) and _follows_conv(layer):
            continue
        out.append(f"{layer.name} ({type(layer).__name__})")
    return out


def _follows_conv(layer) -> bool:
    inbound = [n.inbound_layers for n in layer._inbound_nodes]
    return bool(inbound) and all(isinstance(l, (layers.Conv2D, layers.DepthwiseConv2D)) for l in inbound)


def annotate(model):
    """A clone of `model` rebuilt for int8 (models.rebuild_for_int8: same weights, identical float
    outputs, no unquantized tensor inside a layer) with every layer but the input annotated for
    quantization, using the table's config where the layer type is in it (tfmot's registry
    elsewhere). The clone shares the rebuilt model's layers, so the weights carry over;
    quantize_apply then copies them."""
    model = rebuild_for_int8(model)

    def annotate_layer(layer):
        if isinstance(layer, layers.InputLayer):
            return layer
        return _q.quantize_annotate_layer(layer, quantize_config=config_for(layer))

    return keras.models.clone_model(model, clone_function=annotate_layer)


def quantize(model):
    """The quantization-aware (fake-quant) version of a flat float model, weights copied."""
    with _q.quantize_scope(CUSTOM_OBJECTS):
        return _q.quantize_apply(annotate(model), scheme=Scheme())


# Activation-range variables of a wrapped layer, by the suffix tfmot gives them: both hold the wrapped
# layer's output (output_*, and post_activation_* of a linear activation). The input's range lives in
# the QuantizeLayer tfmot puts after the model input.
RANGE_SUFFIXES = ("output", "post_activation")


def calibrate_ranges(qat, float_model, images, batch_size: int = 32) -> int:
    """Set every activation range of a fresh QAT model from the float model's activations on
    `images` (uint8 or float pixels), as the converged moving average would: the mean over batches
    of each batch's min and max, widened to include 0 (tfmot's rule). Returns how many ranges were set.

    Why: tfmot starts every range at [-6, 6] and moves it by a 0.999 moving average, so a short QAT
    fine-tune (the demo's 8 steps) leaves them there. Measured on the demo's MobileNetV2: the
    Rescaling output ([-1, 1]) then gets ~40 of 256 levels and QAT val top-1 falls 0.76 -> 0.41,
    the qat_int8 file agreeing with its Keras model on 75 %; calibrated, both match the float model."""
    import numpy as np

    float_model = rebuild_for_int8(float_model)   # the graph quantize() annotated, layer names included
    targets = []   # (min variable, max variable, index into the probe's outputs or None for the input)
    probe_layers = []
    float_names = {layer.name for layer in float_model.layers}
    for layer in qat.layers:
        variables = {v.name.split("/")[-1].split(":")[0]: v for v in layer.weights}
        if isinstance(layer, _QuantizeLayer):
            # the input quantizer; Keras numbers its name per session (quantize_layer_1, ...)
            lo = next((v for k, v in variables.items() if k.endswith("_min")), None)
            hi = next((v for k, v in variables.items() if k.endswith("_max")), None)
            if lo is not None and hi is not None:
                targets.append((lo, hi, None))
            continue
        for kind in RANGE_SUFFIXES:
            lo, hi = variables.get(f"{kind}_min"), variables.get(f"{kind}_max")
            if lo is None or hi is None or lo.shape.rank != 0:
                continue
            base = layer.name[len("quant_"):] if layer.name.startswith("quant_") else layer.name
            if base not in float_names:
                continue
            targets.append((lo, hi, len(probe_layers)))
            probe_layers.append(float_model.get_layer(base).output)
    if not targets:
        return 0
    probe = keras.Model(float_model.inputs, probe_layers) if probe_layers else None
    lows, highs, n = np.zeros(len(probe_layers) + 1), np.zeros(len(probe_layers) + 1), 0
    x_all = np.asarray(images, np.float32)
    for start in range(0, len(x_all), batch_size):
        x = x_all[start:start + batch_size]
        outs = probe(x, training=False) if probe is not None else []
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        values = [np.asarray(o) for o in outs] + [x]
        lows += np.array([v.min() for v in values])
        highs += np.array([v.max() for v in values])
        n += 1
    lows, highs = np.minimum(lows / n, 0.0), np.maximum(highs / n, 0.0)
    for lo, hi, index in targets:
        i = len(probe_layers) if index is None else index
        lo.assign(lows[i])
        hi.assign(highs[i])
    return len(targets) + _calibrate_kernel_ranges(qat)


def _calibrate_kernel_ranges(qat) -> int:
    """Kernel ranges as tfmot's symmetric last-value quantizer sets them at a training step (the
    largest |weight| per output channel, or per tensor), so a calibrated model is right before any."""
    import numpy as np

    count = 0
    for layer in qat.layers:
        variables = {v.name.split("/")[-1].split(":")[0]: v for v in layer.weights}
        for attr in ("kernel", "depthwise_kernel"):
            kernel, lo, hi = variables.get(attr), variables.get(f"{attr}_min"), variables.get(f"{attr}_max")
            if kernel is None or lo is None or hi is None:
                continue
            k = np.abs(kernel.numpy())
            if lo.shape.rank == 0:
                m = k.max()
            elif attr == "depthwise_kernel":
                m = k.max(axis=(0, 1, 3))                  # [h, w, c, 1]: one range per channel c
            else:
                m = k.reshape(-1, k.shape[-1]).max(axis=0)  # one range per output channel
            lo.assign(-m)
            hi.assign(m)
            count += 1
    return count


def scope():
    """Context manager to load or clone a saved QAT model."""
    return _q.quantize_scope(CUSTOM_OBJECTS)
