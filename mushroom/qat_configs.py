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
  NoOpQuantizeConfig stays available for layers that must pass through untouched.

BatchNormalization is not in the registry either; tfmot's layout transforms handle it when it
follows a Conv2D/DepthwiseConv2D (every BN of the registered backbones does), see TRANSFORM_HANDLED.
"""
from __future__ import annotations

from mushroom.keras_env import keras, tf  # noqa: F401  (chooses Keras 2 before tfmot loads TensorFlow)

import tensorflow_model_optimization as tfmot  # noqa: E402

_q = tfmot.quantization.keras
layers = keras.layers


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


class NoOpQuantizeConfig(_NoWeightsQuantizeConfig):
    """Quantize nothing: the layer passes through quantize_apply unchanged."""

    def get_output_quantizers(self, layer):
        return []


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
CUSTOM_OBJECTS = {cls.__name__: cls for cls in (OutputQuantizeConfig, NoOpQuantizeConfig)}


def registry_supports(layer) -> bool:
    """Whether tfmot's default 8-bit registry quantizes this layer on its own."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as reg)

    return reg.Default8BitQuantizeRegistry().supports(layer)


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
    """A clone of `model` with every layer but the input annotated for quantization, using the
    table's config where the layer type is in it (tfmot's registry elsewhere). The clone shares
    the original's layers, so the weights carry over; quantize_apply then copies them."""
    def annotate_layer(layer):
        if isinstance(layer, layers.InputLayer):
            return layer
        return _q.quantize_annotate_layer(layer, quantize_config=config_for(layer))

    return keras.models.clone_model(model, clone_function=annotate_layer)


def quantize(model):
    """The quantization-aware (fake-quant) version of a flat float model, weights copied."""
    with _q.quantize_scope(CUSTOM_OBJECTS):
        return _q.quantize_apply(annotate(model))


def scope():
    """Context manager to load or clone a saved QAT model."""
    return _q.quantize_scope(CUSTOM_OBJECTS)
