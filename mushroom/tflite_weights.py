"""Pretrained weights from an int8 .tflite checkpoint, for machines that cannot download Keras' own.

    load_checkpoint(model, "weights/tf2_mobilenet_v2_1.0_224_ptq.tflite")

The only ImageNet weights an offline machine has are a post-training-quantized MobileNetV2, shipped
in weights/ (Apache-2.0, see weights/README.md): int8 kernels with one scale per output channel,
batch norm folded into the convolutions, the folded bias as int32. Reading it needs only the LiteRT
interpreter. A checkpoint this module knows by name (CHECKPOINTS) is checked against its sha256
before it is read: a truncated or altered file is one clear error, never a model trained on garbage.

How the weights land in a tf_keras MobileNetV2 (every convolution there has no bias and is followed
by a BatchNormalization):
- kernel: dequantized per output channel, (q - zero_point) * scale, and transposed from TFLite's
  [out, h, w, in] (CONV_2D) or [1, h, w, c] (DEPTHWISE_CONV_2D) to Keras' [h, w, in, out] or
  [h, w, c, 1];
- the folded bias goes into the batch norm after the convolution as beta, with gamma 1, moving mean
  0 and moving variance 1 - epsilon, so that BN(x) = x + bias exactly: the network computes what
  the checkpoint computes, in float.
Convolutions are matched by execution order and shape (the checkpoint names them TF-Slim style,
`MobileNetV2/expanded_conv_1/...`, not as Keras does); any mismatch is an error naming both sides.
The checkpoint's last convolution (the 1x1 ImageNet logits, 1001 classes, background first) is not
part of the backbone; `checkpoint_classifier` returns it for tests that want the original network.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mushroom.errors import UserError

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
# Checkpoints known by file name -> sha256 (weights/README.md says where each comes from).
CHECKPOINTS = {
    "tf2_mobilenet_v2_1.0_224_ptq.tflite": "5d3137241276e79c86d14a74fe43581398ae0e815191d3dba45495b810840e8c",
}


def resolve_weights_path(weights: str | os.PathLike) -> Path:
    """A weights path as given (relative to the working directory), else relative to the project
    root, so `weights/...` in a config works from any directory."""
    from mushroom.config import PROJECT_ROOT

    path = Path(weights).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


def verify_checkpoint(path: str | os.PathLike) -> Path:
    """`path` when it is a file and, if its name is in CHECKPOINTS, has that sha256; else a UserError."""
    import hashlib

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights checkpoint {path} does not exist (config key model.weights)")
    expected = CHECKPOINTS.get(path.name)
    if expected is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise UserError(f"{path} is not the expected checkpoint (sha256 {digest[:12]}..., expected "
                            f"{expected[:12]}..., {path.stat().st_size} bytes): it is truncated or altered; restore "
                            "it from the repository's weights/ folder (git checkout -- weights/)")
    return path


@dataclass(frozen=True)
class ConvWeights:
    op: str                  # CONV_2D | DEPTHWISE_CONV_2D
    name: str                # the checkpoint's tensor name (TF-Slim style)
    kernel: np.ndarray       # float32, Keras layout: [h, w, in, out] or depthwise [h, w, c, 1]
    bias: np.ndarray         # float32 (out,)


def _dequantize(tensor: np.ndarray, params: dict, axis: int) -> np.ndarray:
    scales = np.asarray(params["scales"], np.float64)
    zero_points = np.asarray(params["zero_points"], np.float64)
    if scales.size == 0:  # a float tensor: nothing to undo
        return tensor.astype(np.float32)
    shape = [1] * tensor.ndim
    if scales.size > 1:
        shape[axis] = scales.size
    return ((tensor.astype(np.float64) - zero_points.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def read_checkpoint(path: str | os.PathLike) -> list[ConvWeights]:
    """Every convolution of a quantized .tflite file in execution order, dequantized, Keras layout."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = verify_checkpoint(resolve_weights_path(path))
    try:
        # Without the default XNNPACK delegate the constant tensors stay readable and every op keeps
        # its own entry in the op list.
        interp = Interpreter(model_path=str(path),
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is not a TFLite model ({str(exc).strip().splitlines()[0]}): "
                        "model.weights must be a .tflite checkpoint, 'imagenet' or null") from None
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    convs = []
    for op in interp._get_ops_details():  # the public API has no op list; this is LiteRT's own accessor
        if op["op_name"] not in CONV_OPS:
            continue
        _, w_index, b_index = (list(op["inputs"]) + [-1, -1])[:3]
        w_info = tensors[w_index]
        q = interp.get_tensor(w_index)
        w = _dequantize(q, w_info["quantization_parameters"], int(w_info["quantization_parameters"]["quantized_dimension"]))
        # One transpose serves both: [out, h, w, in] -> [h, w, in, out] and [1, h, w, c] -> [h, w, c, 1].
        kernel = np.transpose(w, (1, 2, 3, 0))
        out_channels = kernel.shape[3] if op["op_name"] == "CONV_2D" else kernel.shape[2]
        if b_index >= 0:
            b_info = tensors[b_index]
            bias = _dequantize(interp.get_tensor(b_index), b_info["quantization_parameters"], 0)
        else:
            bias = np.zeros(out_channels, np.float32)
        convs.append(ConvWeights(op["op_name"], w_info["name"].split(";")[0], kernel.astype(np.float32),
                                 bias.astype(np.float32)))
    if not convs:
        raise UserError(f"{path} holds no convolutions: it is not an image-model checkpoint")
    return convs


def _conv_layers(model) -> list:
    from mushroom.keras_env import keras

    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]


def _batch_norm_after(model, conv):
    from mushroom.keras_env import keras

    consumers = [node.outbound_layer for node in conv._outbound_nodes]
    if len(consumers) != 1 or not isinstance(consumers[0], keras.layers.BatchNormalization):
        names = ", ".join(c.name for c in consumers) or "nothing"
        raise UserError(f"{model.name}: convolution {conv.name} feeds {names}, not one BatchNormalization: "
                        "the checkpoint's folded biases have nowhere to go")
    return consumers[0]


def _keras_kind(layer) -> str:
    from mushroom.keras_env import keras

    return "DEPTHWISE_CONV_2D" if isinstance(layer, keras.layers.DepthwiseConv2D) else "CONV_2D"


def load_checkpoint(model, path: str | os.PathLike) -> int:
    """Load a .tflite checkpoint's convolutions into `model`'s backbone convolutions (matched in
    order, kind and shape; a batch norm after each). Extra trailing checkpoint convolutions (its
    classifier) are ignored. Returns the number of convolutions loaded."""
    ckpt = read_checkpoint(path)
    layers = _conv_layers(model)
    if len(ckpt) < len(layers):
        raise UserError(f"{path} holds {len(ckpt)} convolutions, fewer than the {len(layers)} of {model.name}: "
                        "it is a checkpoint of another network")
    for i, (layer, cw) in enumerate(zip(layers, ckpt)):
        if layer.use_bias:
            raise UserError(f"{model.name}: convolution {layer.name} has its own bias; the importer expects "
                            "bias-free convolutions followed by batch norm")
        kernel = layer.get_weights()[0]
        if _keras_kind(layer) != cw.op or kernel.shape != cw.kernel.shape:
            raise UserError(f"convolution {i} does not match: {model.name} has {layer.name} "
                            f"({_keras_kind(layer)} {kernel.shape}), {Path(path).name} has {cw.name} "
                            f"({cw.op} {cw.kernel.shape}): the checkpoint is not this network")
        bn = _batch_norm_after(model, layer)
        layer.set_weights([cw.kernel])
        n = cw.bias.shape[0]
        # gamma 1, beta = bias, mean 0, variance 1 - eps: BN(x) = (x - 0) / sqrt(1 - eps + eps) + bias.
        values = {"gamma": np.ones(n, np.float32), "beta": cw.bias,
                  "moving_mean": np.zeros(n, np.float32),
                  "moving_variance": np.full(n, 1.0 - bn.epsilon, np.float32)}
        bn.set_weights([values[_bn_role(w.name)] for w in bn.weights])
    return len(layers)


def _bn_role(variable_name: str) -> str:
    base = variable_name.split("/")[-1].split(":")[0]
    if base not in ("gamma", "beta", "moving_mean", "moving_variance"):
        raise UserError(f"unexpected batch-norm variable {variable_name}: use a BatchNormalization with "
                        "center=True, scale=True")
    return base


def checkpoint_classifier(path: str | os.PathLike, n_backbone: int) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (features, classes), bias) of the checkpoint's classifier: the 1x1 convolution after
    the first `n_backbone` convolutions, as a Dense layer's weights."""
    ckpt = read_checkpoint(path)
    if len(ckpt) <= n_backbone:
        raise UserError(f"{path} has no classifier after its {n_backbone} backbone convolutions")
    top = ckpt[n_backbone]
    if top.op != "CONV_2D" or top.kernel.shape[:2] != (1, 1):
        raise UserError(f"{path}: convolution {n_backbone} ({top.name}) is not a 1x1 classifier")
    return top.kernel[0, 0], top.bias
