"""Shared fixtures: the project config, and real photos from ../shared when present (else generated)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mushroom.config import PROJECT_ROOT, load_config  # noqa: E402

SHARED_PHOTOS = PROJECT_ROOT.parent / "shared" / "data" / "fungi128"
INAT_SAMPLES = PROJECT_ROOT.parent / "shared" / "data" / "inat-api-samples"


@pytest.fixture
def cfg():
    return load_config(None, ["wandb.mode=disabled"])


def _make_photo_folder(root: Path, species: list[str], per_species: int) -> Path:
    """A folder laid out like ../shared/data/fungi128, with a manifest grouping photos by date.
    Real photos are copied from ../shared when present (to a temporary folder, never into the
    repository); otherwise each species gets its own colour pattern."""
    rng = np.random.default_rng(0)
    rows = ["path,species,date,source"]
    for k, name in enumerate(species):
        folder = name.replace(" ", "_")
        (root / folder).mkdir(parents=True, exist_ok=True)
        real = sorted((SHARED_PHOTOS / folder).glob("*.jpg"))[:per_species] if SHARED_PHOTOS.is_dir() else []
        for i in range(per_species):
            dest = root / folder / f"{folder.lower()}_{i:03d}.jpg"
            if i < len(real):
                dest.write_bytes(real[i].read_bytes())
            else:
                base = np.zeros((96, 128, 3), np.uint8)
                base[..., k % 3] = 200
                base = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(base).save(dest, quality=90)
            rows.append(f"{folder}/{dest.name},{name},2020-09-{1 + i // 3:02d},test")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def photo_folder(tmp_path):
    """Three species x 12 photos, 4 date groups each."""
    return _make_photo_folder(tmp_path / "photos", ["Amanita muscaria", "Boletus edulis", "Hypholoma fasciculare"], 12)
