"""BatchNormalization folding: the fused model computes what the plain one does.

Every model here has testing.deterministic_weights (random BN statistics and gammas),
so a wrong scale, shift, epsilon or channel order shows in the outputs.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_inception
from keras_inception import transfer
from keras_inception.optimize import FusionError, fuse_batchnorm
from keras_inception.preprocessing import attach_preprocessing, preprocessing_for
from keras_inception.registry import get_model_info
from keras_inception.testing import (assert_outputs_close, deterministic_weights,
                                     main_head, predict, reference_images, zoo_model)
from conftest import ALL_MODELS

# Float32 rounding grows with depth and output scale: Inception-ResNet-v2's logits
# (up to ~12) differ by 1.5e-5 between batch 1 and batch 2 of the plain model itself,
# and plain and fused are equally far from a float64 run. So 1e-5 of the output scale.
RTOL = 1e-5
SIZE = 32  # GoogLeNet computes down to 1 px, its aux heads from 17


def _assert_same(fused, model, x, *, eager=False):
    # eager: tiny models, not worth a JAX compilation
    assert_outputs_close(predict(fused, x, eager=eager), predict(model, x, eager=eager),
                         rtol=RTOL)


def _shapes(outputs):
    return keras.tree.map_structure(lambda t: tuple(t.shape), outputs)


def _kinds(model):
    return [type(layer).__name__ for layer in model.layers]


def _all_layers(model):
    return model._flatten_layers(include_self=False)


def _googlenet(**kwargs):
    kwargs.setdefault("input_shape", (SIZE, SIZE, 3))
    kwargs.setdefault("classifier_activation", None)
    model = keras_inception.GoogLeNet(**kwargs)
    deterministic_weights(model)
    return model


@pytest.fixture(scope="module")
def googlenet_aux():
    """Torch arithmetic (explicit padding layers, ceil-mode pools), gamma, both aux heads."""
    return _googlenet(arithmetic="torch", aux_logits=True, bn_scale=True, bn_epsilon=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_family_computes_the_same_at_its_minimum_size(name):
    model = zoo_model(name)  # aux heads, deterministic weights, any input size
    fused = fuse_batchnorm(model)
    bns = [layer for layer in model.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and "BatchNormalization" not in _kinds(fused)
    assert len(fused.layers) == len(model.layers) - len(bns)
    assert _shapes(fused.output) == _shapes(model.output)  # dict of heads or tensor
    for bn in bns:  # every conv keeps its name and now carries the shift
        conv = fused.get_layer(bn._inbound_nodes[0].input_tensors[0]._keras_history
                               .operation.name)
        assert conv.use_bias and conv is not model.get_layer(conv.name)
    if isinstance(fused.output, dict):
        fused = keras.Model(fused.input, fused.output["logits"])
    # main_head (shared with the other test modules) runs at the minimum size.
    _assert_same(fused, main_head(name), reference_images(2, get_model_info(name).min_size))


def test_aux_heads_torch_arithmetic_and_gamma(googlenet_aux):
    fused = fuse_batchnorm(googlenet_aux)
    assert sorted(fused.output) == ["aux1", "aux2", "logits"]
    assert {"ZeroPadding2D", "ConstantPadding2D"} <= set(_kinds(fused))
    assert fused.name == googlenet_aux.name
    for layer in fused.layers:  # every layer but the folded convs is reused
        if not isinstance(layer, keras.layers.Conv2D):
            assert layer is googlenet_aux.get_layer(layer.name)
    _assert_same(fused, googlenet_aux, reference_images(2, SIZE))


def test_new_head_and_keras_file_round_trip(tmp_path, googlenet_aux):
    model = attach_preprocessing(transfer.replace_head(googlenet_aux, 3, activation=None),
                                 "torch")
    fused = fuse_batchnorm(model)
    assert preprocessing_for(fused) == "torch"
    assert fused.get_layer("predictions") is model.get_layer("predictions")
    path = str(tmp_path / "fused.keras")
    fused.save(path)
    loaded = keras.saving.load_model(path)
    assert len(loaded.layers) == len(fused.layers) < len(model.layers)
    assert "BatchNormalization" not in _kinds(loaded)
    _assert_same(loaded, model, reference_images(2, SIZE))


def test_nested_models_without_top_are_fused_once_each():
    backbone = _googlenet(include_top=False, pooling="max")
    left, right = keras.Input((SIZE, SIZE, 3)), keras.Input((SIZE, SIZE, 3))
    distance = keras.layers.Subtract(name="distance")([backbone(left), backbone(right)])
    outer = keras.Model([left, right], keras.layers.Dense(2, name="head")(distance))
    fused = fuse_batchnorm(outer)
    (inner,) = [layer for layer in fused.layers if isinstance(layer, keras.Model)]
    assert inner.name == backbone.name and inner is not backbone
    assert inner.output_shape == backbone.output_shape == (None, 1024)
    assert not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in _all_layers(fused))
    _assert_same(fused, outer, [reference_images(2, SIZE), reference_images(2, SIZE, 1)])


def _tiny(layer, bn, *, shape=(6, 6, 4)):
    x = keras.Input(shape, name="x")
    model = keras.Model(x, keras.layers.ReLU(name="relu")(bn(layer(x))))
    deterministic_weights(model)
    return model


@pytest.mark.parametrize("make", [
    lambda: keras.layers.Conv2D(5, 3, use_bias=True, name="conv"),
    lambda: keras.layers.Conv2D(6, 1, groups=2, use_bias=False, name="conv"),
    lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="conv"),
    lambda: keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, strides=2,
                                         use_bias=False, name="conv"),
    lambda: keras.layers.Dense(5, name="conv"),
], ids=["conv_bias", "grouped", "depthwise", "separable", "dense"])
@pytest.mark.parametrize("scale", [True, False], ids=["gamma", "no_gamma"])
def test_each_foldable_layer(make, scale):
    model = _tiny(make(), keras.layers.BatchNormalization(scale=scale, epsilon=0.01,
                                                         name="bn"))
    fused = fuse_batchnorm(model)
    assert _kinds(fused) == ["InputLayer", type(model.get_layer("conv")).__name__, "ReLU"]
    assert fused.get_layer("conv").get_config() == {
        **model.get_layer("conv").get_config(), "use_bias": True}
    _assert_same(fused, model, np.random.default_rng(1).normal(size=(3, 6, 6, 4)),
                 eager=True)


def test_channels_first():
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        model = _googlenet(input_shape=(3, SIZE, SIZE))
    finally:
        keras.config.set_image_data_format(previous)
    fused = fuse_batchnorm(model)
    assert fused.get_layer("mixed_3b_branch_0_conv2d_0a_1x1_conv").data_format == (
        "channels_first")
    _assert_same(fused, model, np.moveaxis(reference_images(2, SIZE), -1, 1))


def test_refuses_what_it_cannot_fold_and_keeps_it_when_asked():
    x = keras.Input((6, 6, 4), name="x")
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    after_relu = keras.layers.BatchNormalization(name="bn_after_relu")(
        keras.layers.ReLU(name="relu")(conv))
    shared_input = keras.layers.BatchNormalization(name="bn_shared_input")(conv)
    active = keras.layers.Conv2D(4, 1, activation="relu", name="active")(x)
    after_activation = keras.layers.BatchNormalization(name="bn_after_act")(active)
    batch_stats = keras.layers.BatchNormalization(name="bn_training")(
        keras.layers.Conv2D(4, 1, name="conv_t")(x), training=True)
    folded = keras.layers.BatchNormalization(name="bn_ok")(
        keras.layers.Conv2D(4, 1, name="conv_ok")(x))
    model = keras.Model(x, [after_relu, shared_input, after_activation, batch_stats,
                            folded])
    deterministic_weights(model)
    with pytest.raises(FusionError) as error:
        fuse_batchnorm(model)
    message = str(error.value)
    for name, why in [("bn_after_relu", "'relu' (ReLU)"),
                      ("bn_shared_input", "also used elsewhere"),
                      ("bn_after_act", "activation ('relu')"),
                      ("bn_training", "training=True")]:
        assert f"- {name}: " in message and why in message
    assert "bn_ok" not in message and "strict=False" in message

    fused = fuse_batchnorm(model, strict=False)
    kept = {layer.name for layer in fused.layers
            if isinstance(layer, keras.layers.BatchNormalization)}
    assert kept == {"bn_after_relu", "bn_shared_input", "bn_after_act", "bn_training"}
    inputs = np.random.default_rng(3).normal(size=(2, 6, 6, 4)).astype("float32")
    expected = predict(model, inputs, eager=True)
    got = predict(fused, inputs, eager=True)
    for i in (0, 1, 2, 4):  # bn_training normalises with each batch's own statistics
        assert_outputs_close(got[i], expected[i], rtol=RTOL)


def test_refuses_hidden_and_broken_batchnorms():
    inner = keras.Sequential([keras.layers.Conv2D(4, 1),
                              keras.layers.BatchNormalization(name="inner_bn")])

    class Block(keras.layers.Layer):  # a custom layer: its call() is opaque
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.bn = keras.layers.BatchNormalization(name="hidden_bn")

        def call(self, x):
            return self.bn(x)

    x = keras.Input((5, 5, 3))
    with pytest.raises(FusionError, match="hidden_bn: it is inside 'block'"):
        fuse_batchnorm(keras.Model(x, Block(name="block")(inner(x))))

    model = _tiny(keras.layers.Conv2D(3, 1, name="conv"),
                  keras.layers.BatchNormalization(name="bn"))
    model.get_layer("bn").moving_variance.assign(-np.ones(3, "float32"))
    with pytest.raises(FusionError, match="'bn' has a moving_variance"):
        fuse_batchnorm(model)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="subclassed"):
        fuse_batchnorm(Subclassed())
