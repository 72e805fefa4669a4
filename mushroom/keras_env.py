"""The one place TensorFlow is imported for model code.

tensorflow-model-optimization 0.8.1 only handles Keras 2 (tf_keras) models, so Keras 2 must be
chosen before TensorFlow is first imported. Every module that needs Keras imports it from here.

Quiet by default: TensorFlow's start-up lines (CUDA probing on a machine without a GPU, absl's
"log messages before InitializeLog", oneDNN notices) and its Python-side warnings are hidden, in
child processes too (they import this module). `--verbose` on any script, or MUSHROOM_VERBOSE=1,
brings them back.
"""
import os

from mushroom.quiet import native_stderr_silenced, verbose

VERBOSE = verbose()

os.environ["TF_USE_LEGACY_KERAS"] = "1"
if VERBOSE:
    os.environ["MUSHROOM_VERBOSE"] = "1"   # inherited by the stages' child processes
else:
    # Level 3: errors that matter reach the user as Python exceptions; the C++ "errors" seen here
    # are the failed cuInit of a machine without a GPU.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The CUDA stub prints while the libraries load, before any log level is read.
with native_stderr_silenced():
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

if not VERBOSE:
    import absl.logging  # noqa: E402

    tf.get_logger().setLevel("ERROR")
    absl.logging.set_verbosity(absl.logging.ERROR)

__all__ = ["tf", "keras", "VERBOSE"]
