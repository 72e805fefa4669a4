"""The one place TensorFlow is imported for model code.

tensorflow-model-optimization 0.8.1 only handles Keras 2 (tf_keras) models, so Keras 2 must be
chosen before TensorFlow is first imported. Every module that needs Keras imports it from here.

Quiet by default: TensorFlow's start-up lines (CUDA probing on a machine without a GPU, absl's
"log messages before InitializeLog", oneDNN notices) and its Python-side warnings are hidden, in
child processes too (they import this module). `--verbose` on any script, or MUSHROOM_VERBOSE=1,
brings them back.
"""
import contextlib
import os
import sys

VERBOSE = os.environ.get("MUSHROOM_VERBOSE", "") not in ("", "0") or "--verbose" in sys.argv[1:]

os.environ["TF_USE_LEGACY_KERAS"] = "1"
if VERBOSE:
    os.environ["MUSHROOM_VERBOSE"] = "1"   # inherited by the stages' child processes
else:
    # Level 3: errors that matter reach the user as Python exceptions; the C++ "errors" seen here
    # are the failed cuInit of a machine without a GPU.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _quiet_fd2():
    """Point file descriptor 2 at /dev/null: the CUDA stub prints there from C++ while the
    libraries load, before any log level is read. A failing import still raises after the
    descriptor is restored, so its traceback is shown."""
    if VERBOSE:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_fd2():
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

if not VERBOSE:
    import absl.logging  # noqa: E402

    tf.get_logger().setLevel("ERROR")
    absl.logging.set_verbosity(absl.logging.ERROR)

__all__ = ["tf", "keras", "VERBOSE"]
