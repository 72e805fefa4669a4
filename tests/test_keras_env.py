import os
import subprocess
import sys

from mushroom.config import PROJECT_ROOT

# Import TensorFlow through the project and touch the devices, as every stage's child process does.
CODE = "import mushroom.keras_env as k; k.tf.config.list_physical_devices(); k.keras.layers.Dense(2)"
START_UP = ("cudart_stub", "absl::InitializeLog", "cuInit", "cpu_feature_guard", "oneDNN")


def _run(*args: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MUSHROOM_VERBOSE")}
    out = subprocess.run([sys.executable, "-c", CODE, *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         env={**environ, **env}, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_tensorflow_starts_without_a_line_of_output():
    output = _run()
    assert not [word for word in START_UP if word in output], output
    assert output == ""


def test_verbose_brings_tensorflows_own_lines_back():
    # Which lines TensorFlow prints depends on the machine (CPU flags, GPU or not); on any machine
    # it prints some at its default log level, and the quiet run above prints none.
    assert _run("--verbose").strip()
    assert _run(MUSHROOM_VERBOSE="1").strip()
