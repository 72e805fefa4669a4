"""The model registry: flat graphs whose first layer scales raw [0, 255] pixels."""
from __future__ import annotations

import numpy as np
import pytest

from mushroom import models
from mushroom.errors import UserError
from mushroom.keras_env import keras


@pytest.fixture(scope="module")
def every_model():
    """Each registered model at 32 px from scratch (~13 s for all five on 2 cores)."""
    return {name: models.build_model(name, 3, 32, weights=None, dropout=0.2) for name in models.model_names()}


def test_registry_names():
    assert set(models.model_names()) == {"efficientnet_v2_m", "efficientnet_v2_s", "efficientnet_v2_b0",
                                         "mobilenet_v2", "resnet50", "tiny"}


def test_every_model_scales_pixels_inside_itself_and_is_flat(every_model):
    for name, model in every_model.items():
        scaling = models.scaling_layer(model)               # raises unless the first layer scales
        assert model.layers[1] is scaling, name
        assert not any(isinstance(l, keras.Model) for l in model.layers), f"{name} has a nested Model"
        assert {"head_pool", "head_dropout", "head_probs"} <= models.head_layer_names(model), name
        assert models.preprocessing_of(name) in ("efficientnet_v2", "mobilenet_v2", "resnet50_caffe", "tiny")
        # raw [0, 255] pixels are what the scaling expects: it maps them into the backbone's range
        out = scaling(np.full((1, 32, 32, 3), 255.0, np.float32)).numpy()
        assert out.max() < 200.0, name


@pytest.mark.parametrize("name", ["efficientnet_v2_b0", "mobilenet_v2", "resnet50", "tiny"])
def test_build_outputs_probabilities(name, every_model):
    model = every_model[name]
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert models.backbone_layers(model)[0] is models.scaling_layer(model)


def test_hidden_head_layer():
    model = models.build_model("tiny", 4, 32, hidden_units=8)
    assert model.get_layer("head_hidden").units == 8 and model.output_shape == (None, 4)


def test_unknown_model_is_user_error():
    with pytest.raises(UserError, match="unknown model 'efficientnet_v3'.*model.name"):
        models.build_model("efficientnet_v3", 3, 32)


def test_missing_weights_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        models.build_model("efficientnet_v2_b0", 3, 32, weights=str(tmp_path / "nope.h5"))


def test_imagenet_offline_names_both_alternatives():
    try:
        models.build_model("efficientnet_v2_b0", 3, 32, weights="imagenet")
    except UserError as exc:
        assert "model.weights=null" in str(exc) and "weights file" in str(exc)
    else:
        pytest.skip("the ImageNet weights were reachable (or cached) on this machine")
