"""Quiet by default: the native libraries (TensorFlow, LiteRT) print start-up notices straight to
file descriptor 2 from C++, where no Python log level reaches them. `--verbose` on any script (or
MUSHROOM_VERBOSE=1, which child processes inherit) shows them. No TensorFlow import here: predict.py
uses this too."""
from __future__ import annotations

import contextlib
import os
import sys


def verbose() -> bool:
    return os.environ.get("MUSHROOM_VERBOSE", "") not in ("", "0") or "--verbose" in sys.argv[1:]


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the block (nothing happens when verbose). A Python
    exception raised inside still propagates after the descriptor is restored, so its message and
    traceback are shown."""
    if verbose():
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
