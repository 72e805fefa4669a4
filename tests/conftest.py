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

SHARED = PROJECT_ROOT.parent / "shared"
SHARED_PHOTOS = SHARED / "data" / "fungi128"
INAT_SAMPLES = SHARED / "data" / "inat-api-samples"


def in_ci() -> bool:
    """CI=true (any case), as .ci/run's environment sets it: missing test inputs fail there."""
    return os.environ.get("CI", "").lower() == "true"


def need_shared(path: os.PathLike, what: str) -> Path:
    """`path` (a file or folder under ../shared) when it is there; otherwise skip the calling test,
    or fail it when CI=true, where a missing ../shared must not pass as a green run. An empty folder
    counts as missing. Call it inside a test, or in an autouse fixture for a whole module."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        return path
    message = f"{path} ({what}) is missing"
    if in_ci():
        pytest.fail(f"{message}: CI=true needs ../shared next to the repository (see ../shared/README.md)",
                    pytrace=False)
    pytest.skip(message)


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
                base[:16, :16] = 255  # real photos span [0, 255]; so must the stand-ins (int8 calibration)
                Image.fromarray(base).save(dest, quality=90)
            rows.append(f"{folder}/{dest.name},{name},2020-09-{1 + i // 3:02d},test")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def photo_folder(tmp_path):
    """Three species x 12 photos, 4 date groups each."""
    return _make_photo_folder(tmp_path / "photos", ["Amanita muscaria", "Boletus edulis", "Hypholoma fasciculare"], 12)


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """A real, briefly trained 'tiny' model over three species of real photos (32 px), saved as a
    model folder with float32 and ptq_int8 TFLite files, plus the data folder it was trained on,
    which also holds photos of two species the model never learns (the unknowns of the open set:
    Hypholoma fasciculare, poisonous, and Pleurotus ostreatus)."""
    import json

    from mushroom.importer import import_folder
    from mushroom.modelio import save_model_folder
    from mushroom.models import build_model
    from mushroom.manifest import load_split
    from mushroom.quantization import convert
    from mushroom.species import selected_species

    root = tmp_path_factory.mktemp("tiny")
    photos = _make_photo_folder(root / "photos", ["Amanita muscaria", "Boletus edulis", "Macrolepiota procera",
                                                  "Hypholoma fasciculare", "Pleurotus ostreatus"], 12)
    cfg = load_config(None, ["wandb.mode=disabled", "image.size=32", "model.name=tiny", "model.weights=null",
                             "data.species_subset=[Amanita muscaria, Boletus edulis, Macrolepiota procera]",
                             f"paths.data_dir={root / 'data'}", f"paths.models_dir={root / 'models'}",
                             f"paths.reports_dir={root / 'reports'}", "evaluate.latency_runs=3",
                             "evaluate.latency_warmup=1"])
    import_folder(cfg, photos, "date", root / "data")
    species = selected_species(cfg)
    names = [s.name for s in species]
    from mushroom.keras_env import keras

    keras.utils.set_random_seed(0)
    x, y, _ = load_split(root / "data", "train", names, 32)
    model = build_model("tiny", len(names), 32)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=8, batch_size=8, verbose=0)
    folder = root / "models" / "test-tiny"
    save_model_folder(folder, model, {"model_name": "tiny", "run_name": "test-tiny", "class_names": names,
                                      "image_size": 32, "preprocessing": "tiny", "input_range": [0, 255],
                                      "species": [s.to_dict() for s in species], "weights": None, "seed": 0})
    (folder / "tflite").mkdir()
    (folder / "tflite" / "float32.tflite").write_bytes(convert(model, "float32"))
    (folder / "tflite" / "ptq_int8.tflite").write_bytes(convert(model, "ptq_int8", x[:16]))
    (folder / "quantize.json").write_text(json.dumps({"formats": ["float32", "ptq_int8"]}))
    return {"folder": folder, "cfg": cfg, "data_dir": root / "data", "photos": photos, "root": root}
