"""Bad input gets a clear error that says what to do; nothing is loaded halfway."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import keras_inception
from keras_inception import WeightFileError
from keras_inception.testing import deterministic_weights, predict, reference_images

SIZE = 75


def _v3(**kwargs):
    kwargs.setdefault("input_shape", (SIZE, SIZE, 3))
    return keras_inception.InceptionV3(**kwargs)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 3-class InceptionV3 and its .weights.h5."""
    model = _v3(classes=3)
    deterministic_weights(model, seed=5)
    path = str(tmp_path_factory.mktemp("w") / "v3.weights.h5")
    model.save_weights(path)
    return model, path


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="Known models: googlenet, inception_resnet_v1"):
        keras_inception.create_model("inception_v9")


def test_create_model_passes_arguments():
    model = keras_inception.create_model("inception_v3", input_shape=(SIZE, SIZE, 3),
                                         classes=4, name="mine")
    assert model.name == "mine" and model.output_shape == (None, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(include_top=False, pooling="mean"), "Unknown pooling 'mean'"),
    (dict(classes=0), "classes must be a positive integer"),
    (dict(input_shape=(SIZE, SIZE)), r"\(height, width, channels\)"),
    (dict(weights="imagenet_v9"), r"Unknown weights 'imagenet_v9' for inception_v3\. "
                                  "Known: imagenet, tf_slim"),
    (dict(weights=pathlib.Path("missing.weights.h5")),
     "neither an existing file nor a known weights name"),
    (dict(weights=3), "weights must be None, a weights name or a file path"),
    (dict(dropout_rate=1.5), "dropout_rate"),
    (dict(input_tensor=np.zeros((1, SIZE, SIZE, 3))), "must be a Keras tensor"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _v3(**kwargs)


def test_pooling_and_input_tensor():
    import keras

    assert _v3(include_top=False, pooling="avg").output_shape == (None, 2048)
    assert _v3(include_top=False, pooling="max").output_shape == (None, 2048)
    assert _v3(include_top=False).output_shape == (None, 1, 1, 2048)
    assert keras_inception.InceptionV3(include_top=False).output_shape == (None, None, None, 2048)
    image = keras.Input((SIZE, SIZE, 3))
    model = keras_inception.InceptionV3(input_tensor=image, classes=2)
    assert model.inputs[0] is image and model.output_shape == (None, 2)


def test_own_weight_file_round_trip(saved):
    model, path = saved
    x = reference_images(1, SIZE)
    loaded = _v3(classes=3, weights=path)
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))


def test_wrong_class_count_says_which(saved):
    _, path = saved
    with pytest.raises(WeightFileError, match=r"has 3 classes .* classes=5\. Build it with classes=3"):
        _v3(classes=5, weights=path)
    # The body of a 3-class file loads into a headless model.
    assert _v3(include_top=False, weights=path).output_shape == (None, 1, 1, 2048)


def test_mismatched_file_names_layer_and_shapes_and_loads_nothing(saved):
    _, path = saved
    model = _v3(classes=3, bn_scale=True)  # BN with gamma: 4 tensors, file has 3
    before = _weights(model)
    with pytest.raises(WeightFileError, match=r"layer 'conv2d_1a_3x3_bn'.*file has shapes "
                       r"\[\(32,\), \(32,\), \(32,\)\].*bn_scale=False"):
        keras_inception.load_weights(model, path)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_missing_layer_names_it(saved, tmp_path):
    _, path = saved
    other = keras_inception.GoogLeNet(input_shape=(64, 64, 3), classes=3)
    with pytest.raises(WeightFileError, match="has no weights for layer 'conv2d_1a_7x7_conv'"):
        keras_inception.load_weights(other, path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_files(saved, tmp_path, damage):
    _, path = saved
    bad = tmp_path / "bad.weights.h5"
    data = open(path, "rb").read()
    bad.write_bytes({"garbage": os.urandom(4096), "truncated": data[: len(data) // 3],
                     "empty": b""}[damage])
    model = _v3(classes=3)
    before = _weights(model)
    with pytest.raises(WeightFileError, match="Cannot read weight file"):
        keras_inception.load_weights(model, str(bad))
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)
