"""InceptionV3, InceptionResNetV2 and Xception are keras.applications' models, exactly."""

from __future__ import annotations

import h5py
import keras
import pytest
from keras.src.legacy.saving import legacy_h5_format

import keras_inception
from keras_inception.initializers import host_initialization
from keras_inception.testing import (assert_outputs_close, deterministic_weights, predict,
                                     reference_images)

# (our name, keras.applications constructor, parameter count published by Keras,
#  keras.applications' minimum input size: Xception's 71 is a bound it enforces,
#  our Xception computes down to 7)
CASES = [
    ("inception_v3", "InceptionV3", 23_851_784, 75),
    ("inception_resnet_v2", "InceptionResNetV2", 55_873_736, 75),
    ("xception", "Xception", 22_910_480, 71),
]


def _weighted(model):
    return [layer for layer in model.layers if layer.weights]


def _save_legacy_weights(model, path):
    """The layout of keras.applications' published ``*_tf_kernels.h5`` files."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.parametrize("name,ka_name,params,size", CASES, ids=[c[0] for c in CASES])
def test_weight_compatible_with_keras_applications(name, ka_name, params, size, tmp_path):
    info = keras_inception.get_model_info(name)
    assert info.keras_applications == ka_name
    # Their weights are all overwritten next: no random value drawn (on JAX Keras'
    # per-variable initialisation of InceptionResNetV2 alone takes seconds).
    with host_initialization(weights_pending=True):
        reference = getattr(keras.applications, ka_name)(
            weights=None, input_shape=(size, size, 3), classifier_activation=None)
    deterministic_weights(reference, seed=1)
    ours = info.constructor(input_shape=(size, size, 3), classifier_activation=None)
    assert ours.count_params() == reference.count_params() == params

    # Equal to float32 rounding at the outputs' scale (assert_outputs_close): on JAX our
    # convolutions sum in another order than keras.applications' (XLA:CPU lowering),
    # and the headless feature maps reach ~24.
    # 1. Copying weights layer by layer in keras.applications' order.
    pairs = list(zip(_weighted(reference), _weighted(ours), strict=True))
    for theirs, mine in pairs:
        mine.set_weights(theirs.get_weights())
    x = reference_images(2, size, seed=3)
    expected = predict(reference, x)
    assert_outputs_close(predict(ours, x), expected)

    # 2. Loading keras.applications' legacy .h5 weight file by path (with and
    #    without the top, as the published *_notop.h5 files).
    path = tmp_path / f"{name}.h5"
    _save_legacy_weights(reference, path)
    loaded = info.constructor(input_shape=(size, size, 3), classifier_activation=None,
                              weights=str(path))
    assert_outputs_close(predict(loaded, x), expected)

    with host_initialization(weights_pending=True):
        notop = getattr(keras.applications, ka_name)(
            weights=None, include_top=False, input_shape=(size, size, 3))
    for theirs, mine in zip(_weighted(notop), _weighted(reference)):
        theirs.set_weights(mine.get_weights())
    notop_path = tmp_path / f"{name}_notop.h5"
    _save_legacy_weights(notop, notop_path)
    body = info.constructor(include_top=False, weights=str(notop_path),
                            input_shape=(size, size, 3))
    assert_outputs_close(predict(body, x), predict(notop, x))
    # A file with a top also loads into a headless model (its head is ignored)...
    headless = info.constructor(include_top=False, weights=str(path),
                                input_shape=(size, size, 3))
    assert_outputs_close(predict(headless, x), predict(notop, x))
    # ...but a notop file cannot fill a classifier.
    with pytest.raises(ValueError, match="include_top=False"):
        info.constructor(weights=str(notop_path), input_shape=(size, size, 3))
