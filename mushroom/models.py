"""Model registry: name -> builder of a flat Functional tf_keras classifier.

Every model takes float pixels in [0, 255] (shape (size, size, 3)) and returns softmax
probabilities. Its backbone's own input scaling is the first layer after the input, so the
scaling lives in exactly one place, inside the model. The head is built on the backbone's output
tensor (no nested Model), so tfmot can annotate the graph layer by layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mushroom.errors import UserError
from mushroom.keras_env import keras
from mushroom.modelio import OUTPUT_LAYERS, output_role

layers = keras.layers

# ImageNet channel means in RGB order; ResNet50's "caffe" mode subtracts them in BGR order.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
SCALING_LAYER_NAMES = ("rescaling", "normalization", "caffe_preprocess")


@dataclass(frozen=True)
class Backbone:
    build: Callable[[keras.layers.Layer, object], tuple]   # (inputs, weights) -> (features, n_backbone_layers)
    preprocessing: str                                      # how raw [0, 255] pixels are scaled, inside the model
    default_size: int


def _keras_application(fn, **kwargs):
    def build(inputs, weights):
        base = fn(include_top=False, weights=weights, input_tensor=inputs, **kwargs)
        return base.output, base
    return build


def _resnet50(inputs, weights):
    # Caffe preprocessing is "RGB->BGR, minus the BGR means". A channel flip has no weight-free
    # Keras layer tfmot accepts, so subtract the means here (Rescaling with a per-channel offset)
    # and flip the input channels of conv1's kernel instead: conv(bgr - m_bgr, W) == conv(rgb - m_rgb, W[:, :, ::-1]).
    x = layers.Rescaling(1.0, offset=[-m for m in CAFFE_MEAN_RGB], name="caffe_preprocess")(inputs)
    base = keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=x)
    if weights is not None:
        conv1 = base.get_layer("conv1_conv")
        kernel, bias = conv1.get_weights()
        conv1.set_weights([kernel[:, :, ::-1, :], bias])
    return base.output, base


def _mobilenet_v2(inputs, weights):
    # MobileNetV2 wants [-1, 1]: x / 127.5 - 1, as the model's first layer (one Rescaling, which the
    # QuantizeConfig table already covers). A .tflite weights file is an int8 checkpoint read by
    # mushroom.tflite_weights (the only ImageNet weights an offline machine has).
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling")(inputs)
    checkpoint = weights if weights not in (None, "imagenet") and str(weights).endswith(".tflite") else None
    base = keras.applications.MobileNetV2(alpha=1.0, include_top=False, input_tensor=x,
                                          weights=None if checkpoint else weights)
    if checkpoint:
        from mushroom.tflite_weights import load_checkpoint

        load_checkpoint(base, checkpoint)
    return base.output, base


def _tiny(inputs, weights):
    """A seconds-to-train stand-in with the same kinds of layers as EfficientNetV2 (Rescaling,
    conv, batch norm, swish, squeeze-excite Multiply) for tests."""
    if weights is not None:
        raise UserError("the 'tiny' test model has no pretrained weights: use --set model.weights=null")
    x = layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    # momentum 0.9: with Keras' default 0.99 the moving statistics lag far behind after a few
    # hundred steps and inference-mode accuracy collapses (measured on this project's photos).
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.Activation("swish", name="stem_act")(x)
    se = layers.GlobalAveragePooling2D(keepdims=True, name="se_squeeze")(x)
    se = layers.Conv2D(4, 1, activation="swish", name="se_reduce")(se)
    se = layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(se)
    x = layers.Multiply(name="se_excite")([x, se])
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name="top_bn")(x)
    x = layers.Activation("swish", name="top_act")(x)
    return x, None


BACKBONES: dict[str, Backbone] = {
    "efficientnet_v2_m": Backbone(_keras_application(keras.applications.EfficientNetV2M), "efficientnet_v2", 480),
    "efficientnet_v2_s": Backbone(_keras_application(keras.applications.EfficientNetV2S), "efficientnet_v2", 384),
    "efficientnet_v2_b0": Backbone(_keras_application(keras.applications.EfficientNetV2B0), "efficientnet_v2", 224),
    "resnet50": Backbone(_resnet50, "resnet50_caffe", 224),
    "mobilenet_v2": Backbone(_mobilenet_v2, "mobilenet_v2", 224),
    "tiny": Backbone(_tiny, "tiny", 64),
}


def model_names() -> list[str]:
    return list(BACKBONES)


def _weights_arg(name: str, weights: str | None):
    if weights in (None, "imagenet"):
        return weights
    from pathlib import Path

    if str(weights).endswith(".tflite") and name != "mobilenet_v2":
        raise UserError(f"model.weights {weights} is a .tflite checkpoint, which only mobilenet_v2 can import; "
                        f"{name} needs a Keras weights file, 'imagenet' or null")
    if not Path(weights).expanduser().is_file():
        raise UserError(f"model.weights file {weights} does not exist: give a Keras weights file (or, for "
                        "mobilenet_v2, a .tflite checkpoint), 'imagenet' or null")
    return str(Path(weights).expanduser())


def build_model(name: str, num_classes: int, image_size: int, weights: str | None = None,
                dropout: float = 0.0, hidden_units: int = 0) -> keras.Model:
    """A flat classifier: input [0, 255] pixels -> backbone (its scaling first) -> pooling ->
    dropout -> optional hidden dense -> softmax over `num_classes`."""
    if name not in BACKBONES:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(BACKBONES)} (config key model.name)")
    spec = BACKBONES[name]
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    try:
        features, _ = spec.build(inputs, _weights_arg(name, weights))
    except UserError:
        raise
    except Exception as exc:  # Keras raises a bare Exception wrapping a URLError when offline
        if weights == "imagenet" and ("URL fetch failure" in str(exc) or "urlopen" in str(exc).lower()
                                      or isinstance(exc.__cause__, OSError)):
            raise UserError(
                f"could not download the ImageNet weights of {name} (no internet?): set "
                "model.weights to the path of a pre-downloaded Keras weights file, or "
                "--set model.weights=null to train from scratch") from None
        raise
    x = layers.GlobalAveragePooling2D(name="head_pool")(features)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    if hidden_units:
        x = layers.Dense(hidden_units, activation="relu", name="head_hidden")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name="head_hidden_dropout")(x)
    # Logits and softmax as two layers: the exported files then expose the logits too, which the
    # energy / max-logit unknown-species scores and the calibrated probabilities are computed from.
    logits = layers.Dense(num_classes, name="head_logits")(x)
    outputs = layers.Activation("softmax", name="head_probs")(logits)
    return keras.Model(inputs, outputs, name=name)


def with_outputs(model: keras.Model) -> keras.Model:
    """The same model (shared layers) with a dict of outputs {role: tensor} for every role in
    OUTPUT_LAYERS that it has (a float or QAT model; older models without head_logits give probs and
    embedding). Exported .tflite files carry the layer names, so the runtime can tell them apart."""
    by_base = {}
    for layer in model.layers:
        role = output_role(layer.name)
        if role is not None:
            by_base[role] = layer.output
    if "probs" not in by_base:
        by_base["probs"] = model.output
    return keras.Model(model.inputs, {role: by_base[role] for role in OUTPUT_LAYERS if role in by_base},
                       name=model.name)


def preprocessing_of(name: str) -> str:
    return BACKBONES[name].preprocessing


def head_layer_names(model: keras.Model) -> set[str]:
    return {l.name for l in model.layers if l.name.startswith("head_")}


def backbone_layers(model: keras.Model) -> list:
    """The backbone's layers in graph order (everything between the input and the head)."""
    head = head_layer_names(model)
    return [l for l in model.layers if l.name not in head and not isinstance(l, keras.layers.InputLayer)]


def scaling_layer(model: keras.Model):
    """The first layer after the input: where raw [0, 255] pixels are scaled for the backbone."""
    first = model.layers[1]
    if not isinstance(first, (layers.Rescaling, layers.Normalization)):
        raise AssertionError(f"{model.name}: first layer {first.name} is not the backbone's input scaling")
    return first
