"""Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions").

The Inception hypothesis taken to its extreme: every convolution after the stem is
depthwise separable, arranged in residual blocks. An entry flow (blocks 2-4, each
halving the resolution), a middle flow (blocks 5-12, eight identical 728-wide
residual blocks) and an exit flow (block 13, then two wide separable convs in
block 14).

Layer names are keras.applications' (``block4_sepconv1_act``, ``block4_sepconv1``,
``block4_sepconv1_bn``), the ReLU placed before each separable convolution of a
residual block as in the paper. The two stem convolutions and the strided 1x1
shortcut of each downsampling block use the shared ``conv_bn`` naming
(``block1_conv1_conv``, ``block2_shortcut_conv``/``_bn``) and each residual sum is
named after its block (``block2``). The topology and the order of the weighted
layers are keras.applications', so its published weights load exactly (by order).
"""

from __future__ import annotations

from keras import layers

from keras_inception import base
from keras_inception import layers as L
from keras_inception import refmaps
from keras_inception.registry import ModelInfo, Stage, register

__all__ = ["Xception", "downsampling_block", "middle_block", "sepconv_bn"]

# Entry flow: (block, widths of its two separable convs, ReLU before the first?).
# Block 2 reads the already activated stem, so it starts without a ReLU.
ENTRY_FLOW = (
    ("block2", (128, 128), False),
    ("block3", (256, 256), True),
    ("block4", (728, 728), True),
)
# Middle flow: eight residual blocks of three 728-wide separable convs.
MIDDLE_FLOW = tuple(f"block{i}" for i in range(5, 13))
MIDDLE_WIDTH = 728
MIDDLE_CONVS = 3
# Exit flow: one downsampling block, then separable convs followed by their ReLU.
EXIT_BLOCK = ("block13", (728, 1024), True)
EXIT_CONVS = (("block14_sepconv1", 1536), ("block14_sepconv2", 2048))


def sepconv_bn(x, filters, *, name, norm, activation="pre"):
    """3x3 separable convolution (no bias) + BatchNormalization, ReLU before or after.

    Creates ``{name}`` (SeparableConv2D), ``{name}_bn`` and ``{name}_act``: the ReLU
    comes before the convolution with ``activation="pre"`` (residual blocks), after
    the BN with ``"post"`` (block 14), and is left out with None.

    Args:
        x: the input tensor.
        filters: output channels.
        name: the layer-name prefix.
        norm: the BatchNormalization settings (:class:`~keras_inception.layers.Norm`).
        activation: ``"pre"``, ``"post"`` or None.

    Returns:
        The output tensor.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Norm
        >>> from keras_inception.xception import sepconv_bn
        >>> y = sepconv_bn(keras.Input((9, 9, 16)), 32, name="sep", norm=Norm())
        >>> tuple(y.shape)
        (None, 9, 9, 32)
    """
    if activation == "pre":
        x = layers.Activation("relu", name=f"{name}_act")(x)
    x = L.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    x = L.BatchNormalization(axis=L.channel_axis(), scale=norm.scale,
                             epsilon=norm.epsilon, momentum=norm.momentum,
                             name=f"{name}_bn")(x)
    if activation == "post":
        x = layers.Activation("relu", name=f"{name}_act")(x)
    return x


def downsampling_block(x, widths, *, name, norm, relu_first=True, arithmetic="tf"):
    """Entry/exit flow block: separable convs, 3x3/2 max pool, + strided 1x1 shortcut.

    The shortcut is a 1x1 stride-2 conv + BN (``{name}_shortcut_conv``/``_bn``); the
    sum is ``{name}``. With ``arithmetic="tf"`` the pool is 'same' with TF's
    padding: (0, 1) on even sides. timm's legacy_xception pools with torch's
    symmetric padding 1 instead (``MaxPool2d(3, 2, 1)``), which differs on even sides
    (block3's 74x74 map at a 299 input); ``arithmetic="torch"`` pads that way
    (``{name}_pool_pad``). The strided 1x1 shortcut samples the same pixels either way.

    Args:
        x: the input tensor.
        widths: the output channels of each separable convolution; the last is the
            block's width.
        name: the layer-name prefix (and the name of the sum).
        norm: the BatchNormalization settings.
        relu_first: whether a ReLU precedes the first separable convolution (not
            in block 2, which follows the stem's ReLU).
        arithmetic: ``"tf"`` or ``"torch"`` pool padding (see above).

    Returns:
        The output tensor, at half the input's resolution.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Norm
        >>> from keras_inception.xception import downsampling_block
        >>> y = downsampling_block(keras.Input((10, 10, 16)), (32, 32), name="block2",
        ...                        norm=Norm(), relu_first=False)
        >>> tuple(y.shape)
        (None, 5, 5, 32)
    """
    shortcut = L.conv_bn(x, widths[-1], 1, strides=2, name=f"{name}_shortcut",
                         norm=norm, activation=None)
    for i, width in enumerate(widths, start=1):
        first_plain = i == 1 and not relu_first
        x = sepconv_bn(x, width, name=f"{name}_sepconv{i}", norm=norm,
                       activation=None if first_plain else "pre")
    x = L.pool(x, "max", 3, strides=2, padding=1 if arithmetic == "torch" else "same",
               name=f"{name}_pool")
    return layers.Add(name=name)([x, shortcut])


def middle_block(x, *, name, norm):
    """Middle flow block: three ReLU-SepConv-BN, identity shortcut; the sum is ``{name}``.

    Args:
        x: the input tensor, with 728 channels.
        name: the layer-name prefix (and the name of the sum).
        norm: the BatchNormalization settings.

    Returns:
        The output tensor, shaped like ``x``.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Norm
        >>> from keras_inception.xception import middle_block
        >>> tuple(middle_block(keras.Input((3, 3, 728)), name="block5", norm=Norm()).shape)
        (None, 3, 3, 728)
    """
    shortcut = x
    for i in range(1, MIDDLE_CONVS + 1):
        x = sepconv_bn(x, MIDDLE_WIDTH, name=f"{name}_sepconv{i}", norm=norm)
    return layers.Add(name=name)([x, shortcut])


def _make_body(arithmetic):
    def body(x, norm):
        # Stem: two plain 3x3 convs, VALID (keras.applications and timm).
        x = L.conv_bn(x, 32, 3, strides=2, padding="valid", name="block1_conv1",
                      norm=norm)
        x = L.conv_bn(x, 64, 3, padding="valid", name="block1_conv2", norm=norm)
        for name, widths, relu_first in ENTRY_FLOW:
            x = downsampling_block(x, widths, name=name, norm=norm,
                                   relu_first=relu_first, arithmetic=arithmetic)
        for name in MIDDLE_FLOW:
            x = middle_block(x, name=name, norm=norm)
        name, widths, relu_first = EXIT_BLOCK
        x = downsampling_block(x, widths, name=name, norm=norm, relu_first=relu_first,
                               arithmetic=arithmetic)
        for name, width in EXIT_CONVS:
            x = sepconv_bn(x, width, name=name, norm=norm, activation="post")
        return x, {}
    return body


# --- reference layouts ----------------------------------------------------------

def _torch_sepconv_bn(b, ours, sep_key, bn_key):
    """timm ``SeparableConv2d`` (``conv1`` depthwise, ``pointwise``) + its BatchNorm2d."""
    b.add(f"{sep_key}.conv1.weight", ours, "depthwise_kernel", refmaps.DEPTHWISE_TORCH)
    b.add(f"{sep_key}.pointwise.weight", ours, "pointwise_kernel", refmaps.CONV_OIHW)
    b.torch_bn(f"{ours}_bn", bn_key)


# Follows timm/models/xception.py (``Xception``, registered as ``legacy_xception``;
# hub checkpoint timm/legacy_xception.tf_in1k, the Keras weights ported by Cadene),
# in state_dict order. timm's ``blockN`` is our ``block{N+1}``; a Block registers
# ``skip``/``skipbn`` before ``rep``, a Sequential of [ReLU, SeparableConv2d,
# BatchNorm2d] per conv (the leading ReLU dropped in block1), then a MaxPool2d.
# No conv has a bias; BatchNorm2d is affine with torch's default eps 1e-5.
def _timm_layout(b: refmaps.LayoutBuilder):
    b.add("conv1.weight", "block1_conv1_conv", "kernel", refmaps.CONV_OIHW)
    b.torch_bn("block1_conv1_bn", "bn1")
    b.add("conv2.weight", "block1_conv2_conv", "kernel", refmaps.CONV_OIHW)
    b.torch_bn("block1_conv2_bn", "bn2")
    blocks = [(n, len(w), True, rf) for n, w, rf in ENTRY_FLOW]
    blocks += [(n, MIDDLE_CONVS, False, True) for n in MIDDLE_FLOW]
    blocks += [(EXIT_BLOCK[0], len(EXIT_BLOCK[1]), True, EXIT_BLOCK[2])]
    for index, (name, convs, strided, relu_first) in enumerate(blocks, start=1):
        module = f"block{index}"
        if strided:
            b.add(f"{module}.skip.weight", f"{name}_shortcut_conv", "kernel",
                  refmaps.CONV_OIHW)
            b.torch_bn(f"{name}_shortcut_bn", f"{module}.skipbn")
        offset = 1 if relu_first else 0
        for i in range(convs):
            sep, bn = 3 * i + offset, 3 * i + offset + 1
            _torch_sepconv_bn(b, f"{name}_sepconv{i + 1}", f"{module}.rep.{sep}",
                              f"{module}.rep.{bn}")
    _torch_sepconv_bn(b, EXIT_CONVS[0][0], "conv3", "bn3")
    _torch_sepconv_bn(b, EXIT_CONVS[1][0], "conv4", "bn4")
    if b.has("predictions"):
        b.torch_dense("predictions", "fc")


LAYOUTS = {"timm": _timm_layout}


@base.pretrained_constructor
def Xception(include_top=True, weights=None, input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax",
             dropout_rate=0.0, name="xception", bn_scale=True, bn_epsilon=1e-3,
             arithmetic="tf"):
    """Xception, weight-compatible with keras.applications (and timm's legacy_xception).

    Args:
        include_top: whether to add the global-average-pool + dense classifier.
        weights: None (random initialisation) or the path to a weight file: our
            ``.weights.h5`` or keras.applications' legacy ``.h5``.
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: input shape, default ``(299, 299, 3)`` with the top and
            ``(None, None, 3)`` without; each side at least 7 (keras.applications
            asks for 71, but only the two VALID stem convolutions can shrink a
            map to nothing: every later op is 'same').
        pooling: with ``include_top=False``: None (4D output), ``"avg"`` or ``"max"``.
        classes: number of classes of the classifier.
        classifier_activation: activation of the classifier (None for logits).
        dropout_rate: dropout before the classifier (none in keras.applications).
        name: model name.
        bn_scale: give BatchNormalization a gamma (keras.applications and timm do).
        bn_epsilon: BatchNormalization epsilon (1e-3 as trained in Keras; timm's
            legacy_xception runs the same weights with torch's 1e-5).
        arithmetic: ``"tf"`` (default: Keras' "same" max pools, for Keras' weights)
            or ``"torch"`` (timm's ``MaxPool2d(3, 2, 1)``, for timm's weights, with
            ``bn_epsilon=1e-5``).

    Returns:
        A ``keras.Model``.

    Example:
        >>> import keras_inception
        >>> model = keras_inception.Xception(input_shape=(71, 71, 3), classes=5)
        >>> model.output_shape
        (None, 5)
    """
    L.check_arithmetic(arithmetic)
    return base.build_model(
        INFO, _make_body(arithmetic), include_top=include_top, weights=weights,
        input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation,
        dropout_rate=dropout_rate, aux_logits=False, name=name,
        norm=L.Norm(scale=bn_scale, epsilon=bn_epsilon))


INFO = register(ModelInfo(
    name="xception",
    constructor=Xception,
    default_size=299,
    min_size=7,
    keras_applications="Xception",
    # Stage taps follow timm's feature_info: the ReLU of each block's output at
    # that stride (the first op of the next block), the stem's ReLU, the last ReLU.
    stages=(
        Stage("stem", "block1_conv2_act", 2),
        Stage("block2", "block3_sepconv1_act", 4),
        Stage("block3", "block4_sepconv1_act", 8),
        Stage("middle_flow", "block13_sepconv1_act", 16),
        Stage("exit_flow", "block14_sepconv2_act", 32),
    ),
    paper="Chollet 2017, Xception: Deep Learning with Depthwise Separable "
          "Convolutions, arXiv:1610.02357",
))
