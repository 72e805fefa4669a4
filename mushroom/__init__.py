"""Quantized mushroom classifier: data, training, quantization, evaluation and offline advice."""

__version__ = "0.1.0"
