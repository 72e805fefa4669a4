"""Model registry: name -> builder of a flat Functional tf_keras classifier.

Every model takes float pixels in [0, 255] (shape (size, size, 3)) and returns softmax
probabilities. Its backbone's own input scaling is the first layer after the input, so the
scaling lives in exactly one place, inside the model. The head is built on the backbone's output
tensor (no nested Model), so tfmot can annotate the graph layer by layer. For QAT the graph is
rebuilt once more (rebuild_for_int8: same weights, identical outputs, no tensor left inside a layer
without a QAT range), so that every op of the qat_int8 file runs in int8; model.keras keeps the original.
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
    build: Callable[[keras.layers.Layer, object], tuple]   # (inputs, weights) -> (features, Keras application or None)
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
    if str(weights).endswith(".tflite") and name != "mobilenet_v2":
        raise UserError(f"model.weights {weights} is a .tflite checkpoint, which only mobilenet_v2 can import; "
                        f"{name} needs a Keras weights file, 'imagenet' or null")
    from mushroom.tflite_weights import resolve_weights_path

    path = resolve_weights_path(weights)
    if not path.is_file():
        raise UserError(f"model.weights file {weights} does not exist: give a Keras weights file (or, for "
                        "mobilenet_v2, a .tflite checkpoint), 'imagenet' or null")
    return str(path)


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


# --- the graph the int8 converter sees ---------------------------------------------------------

# Activations that tfmot quantizes only after they are applied (swish) and that TFLite cannot fuse
# into an int8 convolution (it lowers swish to LOGISTIC + MUL): inside a conv they leave the
# pre-activation tensor without a QAT range, so the converter keeps the conv float.
SPLIT_ACTIVATIONS = ("swish", "silu")
_CONV_TYPES = ("Conv2D", "DepthwiseConv2D", "Dense")


def rebuild_for_int8(model: keras.Model) -> keras.Model:
    """The same flat network, with the same weights and bit-identical float outputs, rebuilt so that
    every TFLite op of the qat_int8 file has a QAT range on its input and output (quantizing it
    gives tfmot one output quantizer per layer, never one inside a layer). Three rewrites:

    - a Conv2D/DepthwiseConv2D/Dense with a swish activation becomes the linear layer (same name,
      same weights) followed by `Activation(swish)` named `<name>_activation` (EfficientNetV2's
      squeeze-excite reduce convs): conv, bias, then swish is what the layer computed;
    - `Rescaling(s, offset=o)` with s != 1 and o != 0 (MobileNetV2, EfficientNetV2-S/M: a MUL then
      an ADD) becomes `Rescaling(s)` named `<name>_scale`, then `Rescaling(1, offset=o)` under the
      original name: (x * s + 0) * 1 + o is x * s + o exactly;
    - `Normalization(mean, variance)` (EfficientNetV2-B0..B3: a SUB then a DIV) becomes
      `Normalization(mean, 1)` named `<name>_center`, then `Normalization(0, variance)` under the
      original name: (x - m) / 1 - 0 divided by the same sqrt(variance) is exact too.

    The layer under the original name outputs what the original layer did, so its consumers and
    output names are unchanged. Without the rewrites the qat_int8 file kept those ops float behind
    DEQUANTIZE (measured, random weights, 128 px: B0 89 float32 tensors and 0.37x float32 in size,
    MobileNetV2 5), because tfmot quantizes a layer's output, not the tensor between its two ops.
    A model with nothing to rewrite (ResNet50, or one already rebuilt) is returned as it is. Used
    for QAT only (mushroom.qat_configs): the float model.keras keeps the layers it was trained with."""
    config = model.get_config()
    names = {spec["name"] for spec in config["layers"]}
    layers_out, renamed = [], {}

    def fresh(name: str) -> str:
        if name in names:
            raise ValueError(f"rebuild_for_int8: {model.name} already has a layer named {name}")
        names.add(name)
        return name

    def step(spec: dict, name: str, inbound, **changes) -> dict:
        new = {**spec, "name": name, "config": {**spec["config"], "name": name, **changes}, "inbound_nodes": inbound}
        new.pop("build_config", None)
        return new

    for spec in config["layers"]:
        cls, cfg, name = spec["class_name"], spec["config"], spec["name"]
        single = len(spec["inbound_nodes"]) == 1   # a layer called once (shared layers are left alone)
        if single and cls in _CONV_TYPES and cfg.get("activation") in SPLIT_ACTIVATIONS:
            act = fresh(f"{name}_activation")
            layers_out.append(step(spec, name, spec["inbound_nodes"], activation="linear"))
            layers_out.append({"module": "keras.layers", "class_name": "Activation", "registered_name": None,
                               "name": act, "inbound_nodes": [[[name, 0, 0, {}]]],
                               "config": {"name": act, "trainable": cfg.get("trainable", True), "dtype": cfg.get("dtype"),
                                          "activation": cfg["activation"]}})
            renamed[name] = act
        elif single and cls == "Rescaling" and _any_nonzero(cfg["offset"]) and not _all_equal(cfg["scale"], 1.0):
            first = fresh(f"{name}_scale")
            layers_out.append(step(spec, first, spec["inbound_nodes"], offset=0.0))
            layers_out.append(step(spec, name, [[[first, 0, 0, {}]]], scale=1.0))
        elif (single and cls == "Normalization" and not cfg.get("invert") and cfg.get("mean") is not None
              and cfg.get("variance") is not None and _any_nonzero(cfg["mean"]) and not _all_equal(cfg["variance"], 1.0)):
            import numpy as np

            first = fresh(f"{name}_center")
            ones = np.ones_like(np.asarray(cfg["variance"], np.float64)).tolist()
            zeros = np.zeros_like(np.asarray(cfg["mean"], np.float64)).tolist()
            layers_out.append(step(spec, first, spec["inbound_nodes"], variance=ones))
            layers_out.append(step(spec, name, [[[first, 0, 0, {}]]], mean=zeros))
        else:
            layers_out.append(spec)
    if len(layers_out) == len(config["layers"]):
        return model
    for spec in layers_out:   # consumers of a split conv read its activation
        if spec["name"] not in renamed.values():
            spec["inbound_nodes"] = [[[renamed.get(ref[0], ref[0]), *ref[1:]] for ref in node]
                                     for node in spec["inbound_nodes"]]
    config["layers"] = layers_out
    config["output_layers"] = [[renamed.get(ref[0], ref[0]), *ref[1:]] for ref in config["output_layers"]]
    rebuilt = keras.Model.from_config(config)
    original = {layer.name: layer for layer in model.layers}
    for layer in rebuilt.layers:
        if layer.weights and layer.name in original:
            layer.set_weights(original[layer.name].get_weights())
    return rebuilt


def _any_nonzero(value) -> bool:
    import numpy as np

    return bool(np.any(np.asarray(value, np.float64) != 0))


def _all_equal(value, target: float) -> bool:
    import numpy as np

    return bool(np.all(np.asarray(value, np.float64) == target))


def scaling_layer(model: keras.Model):
    """The first layer after the input: where raw [0, 255] pixels are scaled for the backbone."""
    first = model.layers[1]
    if not isinstance(first, (layers.Rescaling, layers.Normalization)):
        raise AssertionError(f"{model.name}: first layer {first.name} is not the backbone's input scaling")
    return first
