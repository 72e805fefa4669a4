import numpy as np
import pytest

from mushroom.errors import UserError
from mushroom.modelio import find_model_folders, load_model_folder, read_meta, save_model_folder


def test_saved_model_is_the_shippable_file_without_optimizer_state(tmp_path):
    from mushroom.keras_env import keras
    from mushroom.models import build_model

    model = build_model("tiny", 3, 32, hidden_units=20000)   # ~0.38 M parameters, 1.5 MB as float32
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)   # Adam now holds 2 more copies
    folder = save_model_folder(tmp_path / "m", model, {"model_name": "tiny", "class_names": ["a", "b", "c"]})
    size = (folder / "model.keras").stat().st_size
    params_bytes = model.count_params() * 4
    assert size < 1.3 * params_bytes
    loaded, meta = load_model_folder(folder)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert meta["class_names"] == ["a", "b", "c"] and "tensorflow" in meta["versions"]
    assert find_model_folders(tmp_path) == [folder]


def test_missing_or_broken_meta_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(UserError, match="model.keras is missing"):
        load_model_folder(tmp_path)
