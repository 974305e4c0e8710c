"""Fast construction: initial values drawn on the host follow Keras' initializers.

Every model is built under :func:`keras_inception.initializers.host_initialization`.
These tests check what users get from it is what Keras would give: the same
distributions (against Keras' own draws and against the initializers' formulas),
reproducible builds under ``keras.utils.set_random_seed``, distinct values per
layer, configs and saved files of a plain build, Keras' own values where NumPy
cannot reproduce the initializer. Seeds are fixed, so the statistics are too.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state

import keras_inception
from keras_inception import base
from keras_inception.initializers import (draw_on_host, host_initialization,
                                          keras_initialization)
from keras_inception.layers import Norm, conv_bn
from keras_inception.registry import get_model_info

# Initializer attribute of each weight kind, per layer class family.
_INITIALIZER_OF = {
    "kernel": "kernel_initializer", "bias": "bias_initializer",
    "depthwise_kernel": "depthwise_initializer",
    "pointwise_kernel": "pointwise_initializer",
    "gamma": "gamma_initializer", "beta": "beta_initializer",
    "moving_mean": "moving_mean_initializer",
    "moving_variance": "moving_variance_initializer",
}


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _ks_two_sample(a, b):
    """Kolmogorov-Smirnov distance between the empirical CDFs of ``a`` and ``b``."""
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    grid = np.concatenate([a, b])
    return np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size -
                         np.searchsorted(b, grid, side="right") / b.size))


def _ks_uniform(x):
    """KS distance of ``x`` to U(-1, 1)."""
    x = np.sort(x.ravel())
    cdf = np.clip((x + 1.0) / 2.0, 0.0, 1.0)
    i = np.arange(1, x.size + 1)
    return max(np.max(i / x.size - cdf), np.max(cdf - (i - 1) / x.size))


def _weights(model):
    """The model's variables but the dropout layers' RNG states (auto-numbered)."""
    return [v for v in model.variables if "seed_generator" not in v.path]


def _fans(shape):
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def _initialised_weights(model):
    """``(layer, kind, numpy value, initializer)`` of every weight with an initializer."""
    for layer in model.layers:
        for kind, attr in _INITIALIZER_OF.items():
            variable = getattr(layer, kind, None)
            if isinstance(variable, keras.Variable) and hasattr(layer, attr):
                yield layer, kind, _numpy(variable), getattr(layer, attr)


def _build(name, seed, **kwargs):
    keras.utils.set_random_seed(seed)
    info = get_model_info(name)
    return info.constructor(input_shape=(32, 32, 3), **kwargs)


@pytest.fixture(scope="module")
def googlenet():
    return _build("googlenet", 0, aux_logits=True)


@pytest.fixture(scope="module")
def xception():  # separable convolutions, BN gammas
    return _build("xception", 0, classes=10)


# Keras' own draws, one shape: compiled once per distribution on JAX.
_SHAPE = (3, 3, 32, 64)


@pytest.mark.parametrize("initializer", [
    keras.initializers.GlorotUniform(seed=1),
    keras.initializers.GlorotNormal(seed=1),
    keras.initializers.HeUniform(seed=1),
    keras.initializers.HeNormal(seed=1),
    keras.initializers.LecunNormal(seed=1),
    keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal", seed=1),
    keras.initializers.RandomUniform(-1.0, 3.0, seed=1),
    keras.initializers.RandomNormal(1.0, 2.0, seed=1),
    keras.initializers.TruncatedNormal(1.0, 2.0, seed=1),
], ids=lambda init: type(init).__name__ + "_" + str(getattr(init, "mode", "")))
def test_host_draws_follow_keras_distribution(initializer):
    ours = draw_on_host(initializer, _SHAPE)
    theirs = _numpy(initializer(_SHAPE, dtype="float32")).astype(np.float64)
    assert ours.shape == _SHAPE and ours.dtype == np.float32
    n = ours.size
    # Two samples of the same law: KS distance under its 0.1% critical value.
    assert _ks_two_sample(ours, theirs) < 1.95 * math.sqrt(2.0 / n)
    spread = theirs.std()
    assert abs(ours.mean() - theirs.mean()) < 6 * spread / math.sqrt(n)
    assert abs(ours.std() / spread - 1.0) < 0.03
    bounded = isinstance(initializer, (keras.initializers.RandomUniform,
                                       keras.initializers.TruncatedNormal)) or \
        getattr(initializer, "distribution", None) in ("uniform", "truncated_normal")
    if bounded:  # same support: Keras' sample reaches within 1% of its bounds
        assert ours.min() >= theirs.min() - 0.01 * spread
        assert ours.max() <= theirs.max() + 0.01 * spread
    # An integer seed gives the same values on every call, as in Keras.
    np.testing.assert_array_equal(ours, draw_on_host(initializer, _SHAPE))


def test_host_constants_are_keras_constants():
    for initializer in (keras.initializers.Zeros(), keras.initializers.Ones(),
                        keras.initializers.Constant(0.25)):
        for dtype in ("float16", "float32"):
            values = draw_on_host(initializer, (2, 3), dtype)
            assert values.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(
                values, _numpy(initializer((2, 3), dtype=dtype)))


def test_what_numpy_cannot_reproduce_is_left_to_keras():
    class Custom(keras.initializers.GlorotUniform):
        def __call__(self, shape, dtype=None):
            return keras.ops.full(shape, 3.0, dtype=dtype)

    generator = keras.random.SeedGenerator(3)
    declined = [
        (keras.initializers.Orthogonal(seed=1), "float32"),
        (keras.initializers.GlorotUniform(seed=generator), "float32"),
        (Custom(seed=1), "float32"),
        (keras.initializers.GlorotUniform(seed=1), "bfloat16"),
    ]
    for initializer, dtype in declined:
        assert draw_on_host(initializer, (4, 4), dtype) is None
    # ...and Keras gives them its own values inside host_initialization too.
    def dense(initializer):
        layer = keras.layers.Dense(4, kernel_initializer=initializer)
        layer(keras.Input((4,)))
        return _numpy(layer.kernel)

    plain = [dense(keras.initializers.Orthogonal(seed=5)), dense(Custom(seed=1)),
             dense(keras.initializers.RandomNormal(seed=keras.random.SeedGenerator(7)))]
    with host_initialization():
        layers = [keras.layers.Dense(4, kernel_initializer=init) for init in (
            keras.initializers.Orthogonal(seed=5), Custom(seed=1),
            keras.initializers.RandomNormal(seed=keras.random.SeedGenerator(7)))]
        for layer in layers:
            layer(keras.Input((4,)))
    for layer, expected in zip(layers, plain):
        np.testing.assert_allclose(_numpy(layer.kernel), expected, rtol=1e-6)


@pytest.mark.parametrize("fixture", ["googlenet", "xception"])
def test_model_weights_follow_their_initializers(fixture, request):
    model = request.getfixturevalue(fixture)
    seen, pooled = 0, []
    for layer, kind, value, init in _initialised_weights(model):
        seen += 1
        where = f"{layer.name}.{kind}"
        if isinstance(init, (keras.initializers.Zeros, keras.initializers.Ones)):
            constant = _numpy(init((1,), dtype=value.dtype))[0]
            assert np.all(value == constant), where
            continue
        # Every random weight here is Keras' default glorot_uniform.
        assert isinstance(init, keras.initializers.GlorotUniform), where
        fan_in, fan_out = _fans(value.shape)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        assert np.all(np.abs(value) <= limit), where
        if value.size >= 100:  # U(-limit, limit): std limit/sqrt(3)
            tolerance = 6 * 0.45 / math.sqrt(value.size)
            assert abs(value.std() * math.sqrt(3) / limit - 1) < tolerance, where
            assert abs(value.mean()) < 6 * limit / math.sqrt(3 * value.size), where
        pooled.append(value.ravel() / limit)
    assert seen == len(_weights(model))  # every variable was checked
    pooled = np.concatenate(pooled)
    assert _ks_uniform(pooled) < 1.95 / math.sqrt(pooled.size)


def test_layers_get_different_values(googlenet):
    random = [value for _, _, value, init in _initialised_weights(googlenet)
              if isinstance(init, keras.initializers.GlorotUniform)]
    assert len({value.tobytes() for value in random}) == len(random)
    # Same shape, different layers: unrelated values.
    by_shape = {}
    for value in random:
        by_shape.setdefault(value.shape, []).append(value.ravel())
    pairs = [group[:2] for group in by_shape.values() if len(group) >= 2]
    assert pairs, "expected two kernels of one shape"
    for a, b in pairs:
        if a.size >= 100:
            assert abs(np.corrcoef(a, b)[0, 1]) < 6 / math.sqrt(a.size)


def test_builds_are_reproducible_under_set_random_seed(googlenet):
    again = _build("googlenet", 0, aux_logits=True)
    for a, b in zip(_weights(googlenet), _weights(again)):
        assert a.path == b.path
        np.testing.assert_array_equal(_numpy(a), _numpy(b), err_msg=a.path)
    other = _build("googlenet", 1, aux_logits=True)
    kernel = "mixed_3b_branch_0_conv2d_0a_1x1_conv"
    assert not np.array_equal(_numpy(googlenet.get_layer(kernel).kernel),
                              _numpy(other.get_layer(kernel).kernel))


def _tiny(image_size=16):
    """A family's build_model around a small body: cheap to build plainly on JAX."""
    def body(image, norm):
        x = conv_bn(image, 8, 3, strides=2, name="stem", norm=norm)
        return keras.layers.SeparableConv2D(16, 3, name="sep")(x), {}

    keras.utils.set_random_seed(3)
    return base.build_model(
        get_model_info("xception"), body, include_top=True, weights=None,
        input_tensor=None, input_shape=(image_size, image_size, 3), pooling=None,
        classes=5, classifier_activation="softmax", dropout_rate=0.2,
        aux_logits=False, name="tiny", norm=Norm(scale=True))


def test_configs_and_saved_files_are_those_of_a_plain_build(tmp_path):
    fast = _tiny()
    with keras_initialization():
        plain = _tiny()
    config = keras.saving.serialize_keras_object(fast)
    assert config == keras.saving.serialize_keras_object(plain)
    assert "Host" not in repr(config)
    # Same structure and the same initial distributions as plain Keras: only
    # the values differ (another RNG).
    assert [v.path for v in _weights(fast)] == [v.path for v in _weights(plain)]
    for a, b in zip(_weights(fast), _weights(plain)):
        assert a.shape == b.shape and a.dtype == b.dtype and a.trainable == b.trainable
    path = os.path.join(tmp_path, "tiny.keras")
    fast.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.to_json() == fast.to_json()  # JSON: Keras' tuples come back lists
    for a, b in zip(_weights(fast), _weights(loaded)):
        np.testing.assert_array_equal(_numpy(a), _numpy(b), err_msg=a.path)


def test_weights_file_sets_every_variable(googlenet, tmp_path):
    path = os.path.join(tmp_path, "g.weights.h5")
    googlenet.save_weights(path)
    loaded = keras_inception.GoogLeNet(input_shape=(32, 32, 3), aux_logits=True,
                                       weights=path)
    for a, b in zip(_weights(googlenet), _weights(loaded)):
        np.testing.assert_array_equal(_numpy(a), _numpy(b), err_msg=a.path)


def test_an_outer_stateless_scope_keeps_keras_semantics():
    initializer = keras.initializers.GlorotUniform(seed=11)
    with keras.StatelessScope():
        with host_initialization():
            layer = keras.layers.Dense(3, kernel_initializer=initializer)
            layer(keras.Input((5,)))
        assert layer.kernel._value is None  # still deferred: the outer scope owns it
    np.testing.assert_allclose(_numpy(layer.kernel),
                               _numpy(initializer((5, 3), dtype="float32")),
                               rtol=1e-6)


def test_an_error_inside_leaves_nothing_pending():
    with pytest.raises(RuntimeError, match="boom"):
        with host_initialization():
            keras.layers.Dense(3)(keras.Input((5,)))
            raise RuntimeError("boom")
    with host_initialization():
        layer = keras.layers.Dense(2)
        layer(keras.Input((4,)))
    assert _numpy(layer.kernel).shape == (4, 2)
    # No abandoned variable left for the next stateless scope to initialise.
    assert not global_state.get_global_attribute("uninitialized_variables")


# ------------------------------------------------------------------ load_model

@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A zoo model with aux heads and our own layers, plain and compiled, on disk."""
    root = tmp_path_factory.mktemp("load_model")
    keras.utils.set_random_seed(3)
    model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), weights=None, classes=4,
                                      aux_logits=True, arithmetic="torch")
    # Non-default values everywhere, BN statistics included.
    model.set_weights([w + np.random.default_rng(i).normal(0, 0.01, w.shape)
                       .astype(w.dtype) for i, w in enumerate(model.get_weights())])
    plain = root / "plain.keras"
    model.save(plain)
    # Any compiled model with optimizer state: the fallback does not depend on it.
    compiled = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    compiled.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                     run_eagerly=True)
    compiled.train_on_batch(np.ones((2, 4), "float32"), np.array([0, 1]))
    with_optimizer = root / "compiled.keras"
    compiled.save(with_optimizer)
    return model, plain, with_optimizer


def test_load_model_gives_what_keras_load_model_gives(saved_models):
    model, plain, _ = saved_models
    fast = keras_inception.load_model(plain)
    reference = keras.saving.load_model(plain)
    assert fast.get_config() == reference.get_config()
    assert [w.path for w in fast.weights] == [w.path for w in reference.weights]
    for got, want in zip(fast.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    got, want = fast(x), reference(x)
    for key in want:
        np.testing.assert_array_equal(_numpy(got[key]), _numpy(want[key]))


def test_load_model_keeps_compiled_state_by_falling_back(saved_models):
    _, _, with_optimizer = saved_models
    reference = keras.saving.load_model(with_optimizer)
    loaded = keras_inception.load_model(with_optimizer)
    assert loaded.optimizer is not None and loaded.optimizer.built
    for got, want in zip(loaded.optimizer.variables, reference.optimizer.variables):
        np.testing.assert_array_equal(_numpy(got), _numpy(want))
    fast = keras_inception.load_model(with_optimizer, compile=False)  # the fast path
    for got, want in zip(fast.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_load_model_errors_name_the_file_and_change_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model file"):
        keras_inception.load_model(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.keras is not a readable .keras archive"):
        keras_inception.load_model(bad)
    assert bad.read_bytes() == b"not a zip"
