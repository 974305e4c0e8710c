"""Inception-v2 / BN-Inception (Ioffe & Szegedy 2015, "Batch Normalization").

The topology is TF-Slim's ``inception_v2`` (depth_multiplier 1.0,
``use_separable_conv=True``), the network of the public checkpoint
``inception_v2_2016_08_28``, so its weights load exactly. Layer names are the TF-Slim
scopes, lower-cased (``mixed_4a_branch_1_conv2d_1a_3x3``).

As in TF-Slim every convolution and pooling pads "same" (stride 2 included; the only
average pools are 3x3/1, which pad symmetrically and exclude the padding from the
count on every backend), BN has no gamma and epsilon 1e-3, and there are no auxiliary
classifiers. The stem convolution ``Conv2d_1a_7x7`` is a separable convolution (7x7/2
depthwise with multiplier 8, then 1x1 to 64); TF-Slim's ``inception_arg_scope`` only
gives ``slim.conv2d`` batch normalization, so this one layer has a bias and no BN.
"""

from __future__ import annotations

from keras import layers

from keras_inception import base
from keras_inception import layers as L
from keras_inception.layers import Conv, Pool
from keras_inception.refmaps import IDENTITY
from keras_inception.registry import ModelInfo, Stage, register

__all__ = ["InceptionV2"]

_AVG = Pool("avgpool_0a_3x3", "avg")
_MAX = Pool("maxpool_0a_3x3", "max")


def _module(b0, b1_reduce, b1, b2_reduce, b2, pool_proj, pool=_AVG):
    """1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool-1x1 (the paper's 5x5 as two 3x3)."""
    return (
        (Conv("conv2d_0a_1x1", b0, 1),),
        (Conv("conv2d_0a_1x1", b1_reduce, 1), Conv("conv2d_0b_3x3", b1, 3)),
        (Conv("conv2d_0a_1x1", b2_reduce, 1), Conv("conv2d_0b_3x3", b2, 3),
         Conv("conv2d_0c_3x3", b2, 3)),
        (pool, Conv("conv2d_0b_1x1", pool_proj, 1)),
    )


def _reduction(b0_reduce, b0, b1_reduce, b1):
    """Grid reduction: 1x1-3x3/2 | 1x1-3x3-3x3/2 | maxpool/2, all "same"."""
    return (
        (Conv("conv2d_0a_1x1", b0_reduce, 1), Conv("conv2d_1a_3x3", b0, 3, strides=2)),
        (Conv("conv2d_0a_1x1", b1_reduce, 1), Conv("conv2d_0b_3x3", b1, 3),
         Conv("conv2d_1a_3x3", b1, 3, strides=2)),
        (Pool("maxpool_1a_3x3", "max", 3, strides=2),),
    )


# After the separable conv2d_1a_7x7 (see _stem_conv).
_STEM = (
    Pool("maxpool_2a_3x3", "max", 3, strides=2),
    Conv("conv2d_2b_1x1", 64, 1),
    Conv("conv2d_2c_3x3", 192, 3),
    Pool("maxpool_3a_3x3", "max", 3, strides=2),
)

MODULES = (
    ("mixed_3b", _module(64, 64, 64, 64, 96, 32)),
    ("mixed_3c", _module(64, 64, 96, 64, 96, 64)),
    ("mixed_4a", _reduction(128, 160, 64, 96)),
    ("mixed_4b", _module(224, 64, 96, 96, 128, 128)),
    ("mixed_4c", _module(192, 96, 128, 96, 128, 128)),
    ("mixed_4d", _module(160, 128, 160, 128, 160, 96)),
    ("mixed_4e", _module(96, 128, 192, 160, 192, 96)),
    ("mixed_5a", _reduction(128, 192, 192, 256)),
    ("mixed_5b", _module(352, 192, 320, 160, 224, 128)),
    ("mixed_5c", _module(352, 192, 320, 192, 224, 128, pool=_MAX)),
)

# TF-Slim: depthwise_multiplier = min(int(depth(64) / 3), 8) = 8.
_STEM_FILTERS, _STEM_MULTIPLIER = 64, 8


def _stem_conv(x, name="conv2d_1a_7x7"):
    """Separable 7x7/2 conv (depthwise x8, pointwise to 64) + bias + ReLU, no BN."""
    x = L.SeparableConv2D(_STEM_FILTERS, 7, strides=2, padding="same",
                          depth_multiplier=_STEM_MULTIPLIER, use_bias=True,
                          name=f"{name}_conv")(x)
    return layers.Activation("relu", name=f"{name}_act")(x)


def _body(x, norm):
    return L.stem_and_modules(_stem_conv(x), _STEM, MODULES, norm=norm)


@base.pretrained_constructor
def InceptionV2(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                dropout_rate=0.2, name="inception_v2", bn_scale=False,
                bn_epsilon=1e-3):
    """Inception-v2 (BN-Inception) as in TF-Slim, weight-compatible with it.

    Args:
        include_top: whether to add the global-average-pool + dense classifier.
        weights: None (random initialisation) or the path to a weight file (our
            ``.weights.h5``).
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: input shape, default ``(224, 224, 3)`` with the top and
            ``(None, None, 3)`` without; each side at least 1 (every layer pads
            "same").
        pooling: with ``include_top=False``: None (4D output), ``"avg"`` or ``"max"``.
        classes: number of classes of the classifier.
        classifier_activation: activation of the classifier (None for logits).
        dropout_rate: dropout before the classifier (TF-Slim keeps 0.8).
        name: model name.
        bn_scale: give BatchNormalization a gamma (TF-Slim has none).
        bn_epsilon: BatchNormalization epsilon.

    Returns:
        A ``keras.Model``.

    Example:
        >>> import keras_inception
        >>> model = keras_inception.InceptionV2(input_shape=(64, 64, 3), classes=5)
        >>> model.output_shape
        (None, 5)
    """
    return base.build_model(
        INFO, _body, include_top=include_top, weights=weights,
        input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation,
        dropout_rate=dropout_rate, aux_logits=False, name=name,
        norm=L.Norm(scale=bn_scale, epsilon=bn_epsilon))


# research/slim/nets/inception_v2.py (inception_v2_base with use_separable_conv=True,
# depth_multiplier 1.0, + inception_v2's Logits; inception_utils.inception_arg_scope:
# BN without gamma on slim.conv2d only), checkpoint inception_v2_2016_08_28:
# no auxiliary heads, 1001-class logits (class 0 background).
def _slim_layout(b):
    scope = "InceptionV2/Conv2d_1a_7x7"
    b.add(f"{scope}/depthwise_weights", "conv2d_1a_7x7_conv", "depthwise_kernel",
          IDENTITY)
    b.add(f"{scope}/pointwise_weights", "conv2d_1a_7x7_conv", "pointwise_kernel",
          IDENTITY)
    b.add(f"{scope}/biases", "conv2d_1a_7x7_conv", "bias", IDENTITY)
    for op in _STEM:
        if isinstance(op, Conv):
            b.slim_conv_bn(op.name, "InceptionV2/" + _slim_scope(op.name))
    for name, branches in MODULES:
        for i, ops in enumerate(branches):
            for op in ops:
                if isinstance(op, Conv):
                    b.slim_conv_bn(
                        f"{name}_branch_{i}_{op.name}",
                        f"InceptionV2/{_slim_scope(name)}/Branch_{i}/"
                        f"{_slim_scope(op.name)}")
    if b.has("predictions"):
        b.slim_logits("predictions", "InceptionV2/Logits/Conv2d_1c_1x1")


def _slim_scope(name):
    """``mixed_4a`` -> ``Mixed_4a``, ``conv2d_0b_3x3`` -> ``Conv2d_0b_3x3``."""
    return name[0].upper() + name[1:]


LAYOUTS = {"tf_slim": _slim_layout}


INFO = register(ModelInfo(
    name="inception_v2",
    constructor=InceptionV2,
    default_size=224,
    min_size=1,
    stages=(
        Stage("conv", "conv2d_1a_7x7_act", 2),
        Stage("stem", "conv2d_2c_3x3_act", 4),
        Stage("mixed_3", "mixed_3c", 8),
        Stage("mixed_4", "mixed_4e", 16),
        Stage("mixed_5", "mixed_5c", 32),
    ),
    paper="Ioffe & Szegedy 2015, Batch Normalization: Accelerating Deep Network "
          "Training by Reducing Internal Covariate Shift, arXiv:1502.03167",
))
