"""Every variant, on the backend of this process: shapes, names, configs, saving."""

from __future__ import annotations

import inspect
import os

import keras
import numpy as np
import pytest

import keras_inception
from keras_inception import manifest
from keras_inception.testing import (
    main_head, predict, reference_images, reference_outputs, zoo_model)
from conftest import BACKEND

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "reference_outputs.npz")


def test_registry_covers_the_family():
    assert keras_inception.list_models() == [
        "googlenet", "inception_resnet_v1", "inception_resnet_v2", "inception_v2",
        "inception_v3", "inception_v4", "xception"]
    assert keras_inception.get_model_info("inception_v1").name == "googlenet"
    assert keras_inception.get_model_info("Inception-V3").name == "inception_v3"


def test_minimum_size_forward(model_name):
    info = keras_inception.get_model_info(model_name)
    x = reference_images(2, info.min_size)
    logits = predict(main_head(model_name), x)
    assert logits.shape == (2, 1000)
    assert np.all(np.isfinite(logits))


def test_minimum_size_is_enforced(model_name):
    info = keras_inception.get_model_info(model_name)
    size = info.min_size
    with pytest.raises(ValueError, match=f"at least {size}x{size}"):
        info.constructor(input_shape=(size - 1, size + 10, 3))
    # The static build at exactly the minimum works, with and without the top.
    assert info.constructor(input_shape=(size, size, 3), classes=7).output_shape == (None, 7)


def test_aux_heads(model_name):
    info = keras_inception.get_model_info(model_name)
    if not info.aux_heads:  # the argument exists only where the paper has aux heads
        assert "aux_logits" not in inspect.signature(info.constructor).parameters
        return
    model = zoo_model(model_name)
    assert set(model.output) == {"logits", *info.aux_heads}
    out = predict(model, reference_images(1, info.aux_min_size))
    for head in ("logits", *info.aux_heads):
        assert out[head].shape == (1, 1000) and np.all(np.isfinite(out[head]))
    # ModelInfo.aux_taps (used by transfer.with_aux_heads) names what each head reads.
    assert [head for head, _ in info.aux_taps] == list(info.aux_heads)
    for head, tap in info.aux_taps:
        entry = [l for l in model.layers if l.name.startswith(f"{head}_")][0]
        assert entry.input._keras_history.operation.name == tap, (head, tap)
    with pytest.raises(ValueError, match=f"aux_logits=True needs inputs of at least"):
        info.constructor(input_shape=(info.aux_min_size - 1,) * 2 + (3,), aux_logits=True)
    with pytest.raises(ValueError, match="needs include_top=True"):
        info.constructor(include_top=False, aux_logits=True)


def test_names_and_layouts_match_manifest(model_name):
    """Layer names, weight shapes and reference layouts are API: see manifest.py."""
    expected = manifest.load_manifest(model_name)
    got = manifest.describe(model_name, zoo_model(model_name))
    assert [l[0] for l in got["layers"]] == [l[0] for l in expected["layers"]]
    assert got["layers"] == expected["layers"]
    assert got["params"] == expected["params"]
    assert got["stages"] == expected["stages"]
    assert got["layouts"].keys() == expected["layouts"].keys()
    for source, rows in expected["layouts"].items():
        assert got["layouts"][source] == rows, source


def test_layouts_cover_every_weight(model_name):
    """Each reference layout maps every weight of ours exactly once."""
    from keras_inception import refmaps

    model = zoo_model(model_name)
    ours = sorted((l.name, w.path.split("/")[-1]) for l in model.layers for w in l.weights)
    for source, rules in manifest.layouts_of(model_name).items():
        entries = refmaps.build_layout(model, rules)
        mapped = sorted((e.layer, e.weight) for e in entries if e.layer is not None)
        # Layouts without aux heads (timm) or without gamma cover the rest.
        assert len(mapped) == len(set(mapped)), source
        missing = set(ours) - set(mapped)
        allowed = ("aux", "predictions") if source in refmaps.HEADLESS_SOURCES else ("aux",)
        assert all(layer.startswith(allowed) for layer, _ in missing), (source, sorted(missing)[:3])
        assert len({e.key for e in entries}) == len(entries), source


def test_cross_backend_reference_outputs(model_name):
    """Logits equal the committed reference (made on TensorFlow by
    tools/make_reference_outputs.py): rtol 1e-4, atol 1e-5, same top-1."""
    ref = np.load(REFERENCE)
    for key, value in reference_outputs(model_name).items():
        expected = ref[f"{model_name}/{key}"]
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5,
                                   err_msg=f"{model_name} {key} on {BACKEND}")
        np.testing.assert_array_equal(value.argmax(-1), expected.argmax(-1))


def test_config_round_trip(model_name):
    model = zoo_model(model_name)
    clone = keras.Model.from_config(model.get_config())
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]
    assert clone.count_params() == model.count_params()


def test_keras_file_round_trip(model_name, tmp_path):
    info = keras_inception.get_model_info(model_name)
    path = tmp_path / f"{model_name}.keras"
    model = main_head(model_name)
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = reference_images(1, info.min_size)
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), rtol=1e-6, atol=1e-6)


def test_features(model_name):
    info = keras_inception.get_model_info(model_name)
    model = zoo_model(model_name)
    strides = sorted(info.feature_layers())
    assert {4, 8, 16, 32} <= set(strides)
    extractor = keras_inception.feature_extractor(model, strides=strides)
    size = 2 * info.min_size + 32
    feats = predict(extractor, reference_images(1, size))
    channels_last = keras.config.image_data_format() == "channels_last"
    for stride in strides:
        fmap = feats[f"stride_{stride}"]
        side = fmap.shape[1] if channels_last else fmap.shape[2]
        # SAME nets give exactly ceil(size / stride); VALID stems lose up to 32
        # input pixels on the way down.
        assert (size - 32) / stride - 1 <= side <= -(-size // stride), (stride, fmap.shape)
    assert info.stage("stem").stride in strides
    by_stage = keras_inception.feature_extractor(model, stages=("stem",))
    assert list(by_stage.output) == ["stem"]
    with pytest.raises(ValueError, match="available strides"):
        keras_inception.feature_extractor(model, strides=(64,))
