"""Running the exported .tflite files with the LiteRT runtime (ai-edge-litert), no TensorFlow.

Every exported model takes pixels in [0, 255] and returns softmax probabilities. For int8/uint8
models the runtime quantizes the pixels with the model's own input scale and zero point (round,
then clip to the integer range: astype alone would truncate 254.6 to 254 and wrap 300 to 44) and
dequantizes the integer probabilities with the output scale and zero point. Softmax is inside the
model, so it is never applied again here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from mushroom.errors import UserError
from mushroom.quiet import native_stderr_silenced

INTEGER_DTYPES = (np.uint8, np.int8, np.int16)


def quantize_input(x, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Real values -> integers of `dtype`: round(x / scale + zero_point), clipped to the dtype's range.
    A scale of 0 means the tensor has no quantization parameters: the values are only rounded and clipped."""
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    x = np.asarray(x)
    if scale == 1.0 and np.issubdtype(x.dtype, np.integer):
        # Integer pixels at unit scale (every int8 file exported here: input scale 1): rounding is the
        # identity, so only shift and clip, in integers. The same values, 10x faster than the float
        # path (0.02 against 0.24 ms for a 192 px photo), which end-to-end latency counts.
        if x.dtype == dtype and zero_point == 0:
            return x.astype(dtype)   # a copy
        return np.clip(x.astype(np.int64) + int(zero_point), info.min, info.max).astype(dtype)
    x = x.astype(np.float64)
    q = np.round(x / scale + zero_point) if scale else np.round(x)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_output(q, scale: float, zero_point: int) -> np.ndarray:
    """Integers -> real values: (q - zero_point) * scale, as float32 (no quantization parameters: unchanged)."""
    q = np.asarray(q)
    if not scale:
        return q.astype(np.float32)
    return ((q.astype(np.float64) - zero_point) * scale).astype(np.float32)


def _output_roles(interpreter, outputs: list[dict]) -> dict[str, dict]:
    """role -> output details. Files exported by this project name their outputs after the layers
    (serving signature: head_probs, head_logits, head_pool, or quant_* for QAT files); a file with a
    single unnamed output is taken to give probabilities."""
    from mushroom.modelio import output_role

    roles = {}
    signatures = interpreter.get_signature_list()
    if signatures:
        runner_outputs = interpreter.get_signature_runner(next(iter(signatures)))
        by_index = {o["index"]: o for o in outputs}
        for name, details in runner_outputs.get_output_details().items():
            role = output_role(name)
            if role is not None and details["index"] in by_index:
                roles[role] = by_index[details["index"]]
    if "probs" not in roles and len(outputs) == 1:
        roles["probs"] = outputs[0]
    return roles


class TFLiteModel:
    """One .tflite classifier: predict(images in [0, 255]) -> probabilities (N, classes);
    run(images) -> every output it has by role ("probs", and "logits", "embedding" for files
    exported by this project), dequantized to float32."""

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path} does not exist: export it with quantize_qat.py <model folder>")
        if self.path.stat().st_size == 0:
            raise UserError(f"{self.path} is empty: re-export it with quantize_qat.py <model folder> --force")
        try:
            with native_stderr_silenced():   # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{self.path} is not a valid TFLite model ({first}): "
                            "re-export it with quantize_qat.py <model folder> --force") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        self._outputs = _output_roles(self._interpreter, outputs)
        if len(inputs) != 1 or "probs" not in self._outputs:
            raise UserError(f"{self.path} has {len(inputs)} inputs and {len(outputs)} outputs, not one image "
                            "input and a probability output: it is not a model exported by this project")
        self._input, self._output = inputs[0], self._outputs["probs"]
        shape = tuple(int(d) for d in self._input["shape"])
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise UserError(f"{self.path} expects input shape {shape}, not (1, size, size, 3): "
                            "it is not an image classifier exported by this project")
        self.num_threads = num_threads

    @property
    def input_size(self) -> int:
        return int(self._input["shape"][1])

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._input["dtype"])

    @property
    def output_dtype(self) -> np.dtype:
        return np.dtype(self._output["dtype"])

    @property
    def num_classes(self) -> int:
        return int(self._output["shape"][-1])

    @property
    def input_quantization(self) -> tuple[float, int]:
        return tuple(self._input["quantization"])

    @property
    def output_quantization(self) -> tuple[float, int]:
        return tuple(self._output["quantization"])

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One (H, W, 3) image in [0, 255] -> the (1, H, W, 3) tensor the model's input takes."""
        x = np.asarray(image)[None]
        if self.input_dtype.type in INTEGER_DTYPES:
            scale, zero_point = self.input_quantization
            return quantize_input(x, scale, zero_point, self.input_dtype)
        return x.astype(self.input_dtype)

    @property
    def roles(self) -> tuple[str, ...]:
        """The outputs this file gives: "probs", and "logits" / "embedding" when exported with them."""
        return tuple(self._outputs)

    def set_input(self, tensor: np.ndarray) -> None:
        """Set the input to one prepared tensor (prepare()), for invoke()."""
        self._interpreter.set_tensor(self._input["index"], tensor)

    def invoke(self) -> None:
        """The runtime alone, on the input already set (what mushroom.latency times as "invoke")."""
        self._interpreter.invoke()

    def run_one(self, tensor: np.ndarray) -> np.ndarray:
        """Invoke on one prepared tensor; the raw probability output (integers for int8 models)."""
        self.set_input(tensor)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])[0].copy()

    def _check_images(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        size = self.input_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise UserError(f"{self.path.name} takes images of shape (N, {size}, {size}, 3), got {images.shape}: "
                            f"load photos with images.load_image(path, {size})")
        return images

    def _read(self, details: dict) -> np.ndarray:
        raw = self._interpreter.get_tensor(details["index"])[0]
        if np.dtype(details["dtype"]).type in INTEGER_DTYPES:
            scale, zero_point = details["quantization"]
            return dequantize_output(raw, scale, zero_point)
        return raw.astype(np.float32)

    def run(self, images, roles: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """{role: float32 array (N, ...)} for images (N, H, W, 3), uint8 or float, in [0, 255]."""
        images = self._check_images(images)
        wanted = [r for r in (roles or self.roles) if r in self._outputs]
        out: dict[str, list] = {r: [] for r in wanted}
        # One image per invoke: the exported graphs have batch 1, and looping keeps memory flat.
        for image in images:
            self._interpreter.set_tensor(self._input["index"], self.prepare(image))
            self._interpreter.invoke()
            for r in wanted:
                out[r].append(self._read(self._outputs[r]))
        return {r: np.stack(v).astype(np.float32) if v else np.empty((0,), np.float32) for r, v in out.items()}

    def predict(self, images) -> np.ndarray:
        """Probabilities (N, classes) float32 for images (N, H, W, 3), uint8 or float, in [0, 255]."""
        images = self._check_images(images)
        if not len(images):
            return np.empty((0, self.num_classes), np.float32)
        return self.run(images, ("probs",))["probs"]

    def __repr__(self) -> str:
        return f"TFLiteModel({str(self.path)!r}, input {self.input_size}px {self.input_dtype}, {self.size_bytes} bytes)"
