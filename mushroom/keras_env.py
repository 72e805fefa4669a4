"""The one place TensorFlow is imported for model code.

tensorflow-model-optimization 0.8.1 only handles Keras 2 (tf_keras) models, so Keras 2 must be
chosen before TensorFlow is first imported. Every module that needs Keras imports it from here.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
