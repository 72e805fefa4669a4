"""Writing outputs so that a reader, or a rerun after kill -9, finds either the old file or the whole
new one, never a part: everything is written under a `.partial-` name beside its target (the same
folder, so the rename is atomic on every filesystem) and renamed over it once complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PARTIAL_PREFIX = ".partial-"   # what a cleanup after an interruption may delete
OLD_PREFIX = ".old-"


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary name beside `path`, for writers that want a file name (Keras' save, np.savez);
    renamed over `path` when the block ends, removed when it raises. The suffix is kept because
    such writers choose their format by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write bytes (or UTF-8 text) to `path` atomically. fsync before the rename: after a power cut
    the name must not point at blocks that never reached the disk."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, data) -> None:
    """Indented JSON, NaN refused (it is not JSON, and other tools reject it), NumPy values as numbers."""
    atomic_write(path, json.dumps(data, indent=2, allow_nan=False, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def replacing_folder(path: str | os.PathLike) -> Iterator[Path]:
    """An empty folder beside `path` to fill; swapped in for `path` when the block ends, so no file
    of an older `path` survives beside the new ones and an interruption leaves the old folder whole.
    A leftover from a killed run is removed first."""
    path = Path(path)
    partial = path.parent / f"{PARTIAL_PREFIX}{path.name}"
    old = path.parent / f"{OLD_PREFIX}{path.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(partial, path)
    shutil.rmtree(old, ignore_errors=True)


def remove_partials(folder: str | os.PathLike) -> int:
    """Delete the temporary files an interrupted run left under `folder`; returns how many."""
    n = 0
    for p in Path(folder).rglob(PARTIAL_PREFIX + "*"):
        p.unlink(missing_ok=True)
        n += 1
    return n
