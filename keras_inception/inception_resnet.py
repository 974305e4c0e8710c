"""Inception-ResNet-v1 and -v2 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet
and the Impact of Residual Connections on Learning").

Both networks are one family: a stem, residual Inception blocks at 35x35 (A),
17x17 (B) and 8x8 (C) separated by the reductions ``mixed_6a`` and ``mixed_7a``;
they differ only in widths, repeat counts and stem, which :class:`Variant` holds
as data. Layer names are the TF-Slim scopes, lower-cased, with the ``Repeat``
scopes dropped (``block17_3_branch_1_conv2d_0b_1x7``; the last, unactivated C
block is TF-Slim's ``Block8``: ``block8``).

Inception-ResNet-v2 has keras.applications' topology and layer order, so its
weights copy layer by layer; it also maps to TF-Slim's and timm's checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

from keras_inception import base
from keras_inception import layers as L
from keras_inception import refmaps as R
from keras_inception.inception_v3 import _STEM as V3_STEM
from keras_inception.layers import Conv, Pool
from keras_inception.registry import ModelInfo, Stage, register

__all__ = ["InceptionResNetV1", "InceptionResNetV2"]

_MAX_1A = Pool("maxpool_1a_3x3", "max", 3, strides=2, padding="valid")


def _stem(tail):
    """Inception-v3's stem up to ``conv2d_4a_3x3`` (stride 4, 192 channels), then
    ``tail``: v2 keeps v3's max pool, v1 (facenet) a stride-2 conv."""
    names = [op.name for op in V3_STEM]
    return (*V3_STEM[:names.index("conv2d_4a_3x3") + 1], tail)


def _block35(b0, b1, b2):
    """Inception-ResNet-A: 1x1 | 1x1-3x3 | 1x1-3x3-3x3."""
    return (
        (Conv("conv2d_1x1", b0, 1),),
        (Conv("conv2d_0a_1x1", b1[0], 1), Conv("conv2d_0b_3x3", b1[1], 3)),
        (Conv("conv2d_0a_1x1", b2[0], 1), Conv("conv2d_0b_3x3", b2[1], 3),
         Conv("conv2d_0c_3x3", b2[2], 3)),
    )


def _block17(b0, b1):
    """Inception-ResNet-B: 1x1 | 1x1-1x7-7x1."""
    return (
        (Conv("conv2d_1x1", b0, 1),),
        (Conv("conv2d_0a_1x1", b1[0], 1), Conv("conv2d_0b_1x7", b1[1], (1, 7)),
         Conv("conv2d_0c_7x1", b1[2], (7, 1))),
    )


def _block8(b0, b1):
    """Inception-ResNet-C: 1x1 | 1x1-1x3-3x1."""
    return (
        (Conv("conv2d_1x1", b0, 1),),
        (Conv("conv2d_0a_1x1", b1[0], 1), Conv("conv2d_0b_1x3", b1[1], (1, 3)),
         Conv("conv2d_0c_3x1", b1[2], (3, 1))),
    )


def _reduction_a(k, l, m, n):
    """Reduction-A (35 -> 17), the paper's k, l, m, n filter counts."""
    return (
        (Conv("conv2d_1a_3x3", n, 3, strides=2, padding="valid"),),
        (Conv("conv2d_0a_1x1", k, 1), Conv("conv2d_0b_3x3", l, 3),
         Conv("conv2d_1a_3x3", m, 3, strides=2, padding="valid")),
        (_MAX_1A,),
    )


def _reduction_b(b0, b1, b2):
    """Reduction-B (17 -> 8): three 1x1-3x3/2 towers and a max pool."""
    return (
        (Conv("conv2d_0a_1x1", 256, 1),
         Conv("conv2d_1a_3x3", b0, 3, strides=2, padding="valid")),
        (Conv("conv2d_0a_1x1", 256, 1),
         Conv("conv2d_1a_3x3", b1, 3, strides=2, padding="valid")),
        (Conv("conv2d_0a_1x1", 256, 1), Conv("conv2d_0b_3x3", b2[0], 3),
         Conv("conv2d_1a_3x3", b2[1], 3, strides=2, padding="valid")),
        (_MAX_1A,),
    )


@dataclasses.dataclass(frozen=True)
class Repeat:
    """``count`` residual blocks ``{block}_1`` ... ``{block}_{count}``."""

    block: str
    branches: tuple
    count: int
    scale: float


@dataclasses.dataclass(frozen=True)
class Variant:
    """What tells Inception-ResNet-v1 and -v2 apart.

    The body is: ``stem``, ``mixed_5b`` (v2 only), the A blocks, ``mixed_6a``,
    the B blocks, ``mixed_7a``, the C blocks, one more C block ``block8`` with
    scale 1 and no activation, then ``top`` (v2's 1x1 conv to 1536).
    """

    slim_scope: str
    stem: tuple
    mixed_5b: Tuple[tuple, ...]
    block_a: Repeat
    mixed_6a: tuple
    block_b: Repeat
    mixed_7a: tuple
    block_c: Repeat
    top: tuple


V2 = Variant(
    slim_scope="InceptionResnetV2",
    stem=_stem(Pool("maxpool_5a_3x3", "max", 3, strides=2, padding="valid")),
    mixed_5b=(
        (Conv("conv2d_1x1", 96, 1),),
        (Conv("conv2d_0a_1x1", 48, 1), Conv("conv2d_0b_5x5", 64, 5)),
        (Conv("conv2d_0a_1x1", 64, 1), Conv("conv2d_0b_3x3", 96, 3),
         Conv("conv2d_0c_3x3", 96, 3)),
        (Pool("avgpool_0a_3x3", "avg"), Conv("conv2d_0b_1x1", 64, 1)),
    ),
    block_a=Repeat("block35", _block35(32, (32, 32), (32, 48, 64)), 10, 0.17),
    mixed_6a=_reduction_a(256, 256, 384, 384),
    block_b=Repeat("block17", _block17(192, (128, 160, 192)), 20, 0.10),
    mixed_7a=_reduction_b(384, 288, (288, 320)),
    block_c=Repeat("block8", _block8(192, (192, 224, 256)), 9, 0.20),
    top=(Conv("conv2d_7b_1x1", 1536, 1),),
)

# facenet's layout: the stem ends in a stride-2 conv instead of pool + mixed_5b.
V1 = Variant(
    slim_scope="InceptionResnetV1",
    stem=_stem(Conv("conv2d_4b_3x3", 256, 3, strides=2, padding="valid")),
    mixed_5b=(),
    block_a=Repeat("block35", _block35(32, (32, 32), (32, 32, 32)), 5, 0.17),
    mixed_6a=_reduction_a(192, 192, 256, 384),
    block_b=Repeat("block17", _block17(128, (128, 128, 128)), 10, 0.10),
    mixed_7a=_reduction_b(384, 256, (256, 256)),
    block_c=Repeat("block8", _block8(192, (192, 192, 192)), 5, 0.20),
    top=(),
)

FINAL_BLOCK = "block8"


def _repeat(x, spec: Repeat, norm):
    for n in range(1, spec.count + 1):
        x = L.inception_resnet_block(x, spec.branches, name=f"{spec.block}_{n}",
                                     scale=spec.scale, norm=norm)
    return x


def _body_of(variant: Variant):
    def body(x, norm):
        x = L.apply_ops(x, variant.stem, prefix="", norm=norm)
        if variant.mixed_5b:
            x = L.inception_module(x, variant.mixed_5b, name="mixed_5b", norm=norm)
        x = _repeat(x, variant.block_a, norm)
        x = L.inception_module(x, variant.mixed_6a, name="mixed_6a", norm=norm)
        x = _repeat(x, variant.block_b, norm)
        taps = {"aux": x}  # TF-Slim's PreAuxLogits
        x = L.inception_module(x, variant.mixed_7a, name="mixed_7a", norm=norm)
        x = _repeat(x, variant.block_c, norm)
        x = L.inception_resnet_block(x, variant.block_c.branches, name=FINAL_BLOCK,
                                     scale=1.0, norm=norm, activation=None)
        x = L.apply_ops(x, variant.top, prefix="", norm=norm)
        return x, taps
    return body


def _stages(variant: Variant):
    last = f"{variant.top[-1].name}_act" if variant.top else FINAL_BLOCK
    a, b = variant.block_a, variant.block_b
    return (
        Stage("conv", "conv2d_2b_3x3_act", 2),
        Stage("stem", "conv2d_4a_3x3_act", 4),
        Stage(a.block, f"{a.block}_{a.count}_act", 8),
        Stage(b.block, f"{b.block}_{b.count}_act", 16),
        Stage(variant.block_c.block, last, 32),
    )


@base.pretrained_constructor
def InceptionResNetV2(include_top=True, weights=None, input_tensor=None,
                      input_shape=None, pooling=None, classes=1000,
                      classifier_activation="softmax", dropout_rate=0.2,
                      aux_logits=False, name="inception_resnet_v2", bn_scale=False,
                      bn_epsilon=1e-3):
    """Inception-ResNet-v2, weight-compatible with keras.applications, TF-Slim, timm.

    Its layers come in keras.applications' order, so that model's weights copy
    over layer by layer (``set_weights(reference.get_weights())``).

    Args:
        include_top: whether to add the global-average-pool + dense classifier.
        weights: None (random initialisation) or the path to a weight file: our
            ``.weights.h5`` or keras.applications' legacy ``.h5``.
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: input shape, default ``(299, 299, 3)`` with the top and
            ``(None, None, 3)`` without; each side at least 75 (299 with
            ``aux_logits=True``).
        pooling: with ``include_top=False``: None (4D output), ``"avg"`` or ``"max"``.
        classes: number of classes of the classifier.
        classifier_activation: activation of the classifier (None for logits).
        dropout_rate: dropout before the classifier (TF-Slim keeps 0.8;
            keras.applications has none).
        aux_logits: add TF-Slim's auxiliary classifier on the last 17x17 block
            (``block17_20_act``); the model then returns
            ``{"logits": ..., "aux": ...}``.
        name: model name.
        bn_scale: give BatchNormalization a gamma (keras.applications has none).
        bn_epsilon: BatchNormalization epsilon.

    Returns:
        A ``keras.Model``.

    Example:
        >>> import keras_inception
        >>> model = keras_inception.InceptionResNetV2(input_shape=(75, 75, 3),
        ...                                           classes=5)
        >>> model.output_shape
        (None, 5)
    """
    return base.build_model(
        INFO_V2, _body_of(V2), include_top=include_top, weights=weights,
        input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation,
        dropout_rate=dropout_rate, aux_logits=aux_logits, name=name,
        norm=L.Norm(scale=bn_scale, epsilon=bn_epsilon))


@base.pretrained_constructor
def InceptionResNetV1(include_top=True, weights=None, input_tensor=None,
                      input_shape=None, pooling=None, classes=1000,
                      classifier_activation="softmax", dropout_rate=0.2,
                      name="inception_resnet_v1", bn_scale=False, bn_epsilon=1e-3):
    """Inception-ResNet-v1, the paper's cheaper residual network (1792 features).

    The layout is facenet's (davidsandberg/facenet ``inception_resnet_v1.py``):
    5 A blocks (scale 0.17), 10 B blocks (0.10), 5 C blocks (0.20) and a last C
    block without activation. There are no public ImageNet weights; facenet's
    face-recognition checkpoints map onto the body (``include_top=False``). The
    paper gives this network no auxiliary classifier, so there is no
    ``aux_logits``.

    Args:
        include_top: whether to add the global-average-pool + dense classifier.
        weights: None (random initialisation) or the path to a weight file
            (our ``.weights.h5``).
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: input shape, default ``(299, 299, 3)`` with the top and
            ``(None, None, 3)`` without; each side at least 75.
        pooling: with ``include_top=False``: None (4D output), ``"avg"`` or ``"max"``.
        classes: number of classes of the classifier.
        classifier_activation: activation of the classifier (None for logits).
        dropout_rate: dropout before the classifier (the paper keeps 0.8).
        name: model name.
        bn_scale: give BatchNormalization a gamma (facenet has none).
        bn_epsilon: BatchNormalization epsilon.

    Returns:
        A ``keras.Model``.

    Example:
        >>> import keras_inception
        >>> model = keras_inception.InceptionResNetV1(include_top=False,
        ...                                           input_shape=(160, 160, 3))
        >>> model.output_shape
        (None, 3, 3, 1792)
    """
    return base.build_model(
        INFO_V1, _body_of(V1), include_top=include_top, weights=weights,
        input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation,
        dropout_rate=dropout_rate, aux_logits=False, name=name,
        norm=L.Norm(scale=bn_scale, epsilon=bn_epsilon))


_PAPER = ("Szegedy et al. 2016, Inception-v4, Inception-ResNet and the Impact of "
          "Residual Connections on Learning, arXiv:1602.07261")

INFO_V2 = register(ModelInfo(
    name="inception_resnet_v2",
    constructor=InceptionResNetV2,
    default_size=299,
    min_size=75,
    aux_min_size=299,
    keras_applications="InceptionResNetV2",
    aux_heads=("aux",),
    aux_builder=L.aux_head,
    # TF-Slim's PreAuxLogits: the output of the last block_b repeat.
    aux_taps=(("aux", f"{V2.block_b.block}_{V2.block_b.count}_act"),),
    stages=_stages(V2),
    paper=_PAPER,
))

INFO_V1 = register(ModelInfo(
    name="inception_resnet_v1",
    constructor=InceptionResNetV1,
    default_size=299,
    min_size=75,
    stages=_stages(V1),
    paper=_PAPER,
))


# --- reference weight layouts -------------------------------------------------------

def _cap(name):
    return name[0].upper() + name[1:]


def _sections(variant: Variant):
    """The modules and residual blocks after the stem, in network order.

    Yields ``(ours, slim_scope, timm_module, branches, residual)``. Residual blocks
    follow slim.repeat's scopes ``Repeat/block35_N``, ``Repeat_1/block17_N``,
    ``Repeat_2/block8_N`` (N from 1), then ``Block8``; timm's ``repeat.N``,
    ``repeat_1.N``, ``repeat_2.N`` (N from 0), then ``block8``.
    """
    def blocks(spec: Repeat, k):
        suffix = f"_{k}" if k else ""
        for n in range(1, spec.count + 1):
            yield (f"{spec.block}_{n}", f"Repeat{suffix}/{spec.block}_{n}",
                   f"repeat{suffix}.{n - 1}", spec.branches, True)

    if variant.mixed_5b:
        yield "mixed_5b", "Mixed_5b", "mixed_5b", variant.mixed_5b, False
    yield from blocks(variant.block_a, 0)
    yield "mixed_6a", "Mixed_6a", "mixed_6a", variant.mixed_6a, False
    yield from blocks(variant.block_b, 1)
    yield "mixed_7a", "Mixed_7a", "mixed_7a", variant.mixed_7a, False
    yield from blocks(variant.block_c, 2)
    yield FINAL_BLOCK, "Block8", "block8", variant.block_c.branches, True


def _slim_body(b: R.LayoutBuilder, variant: Variant):
    """The body in TF-Slim naming, in network order."""
    root = variant.slim_scope
    for conv in L.iter_convs(variant.stem):
        b.slim_conv_bn(conv, f"{root}/{_cap(conv)}")
    for ours, scope, _, branches, residual in _sections(variant):
        for i, conv in L.module_convs(branches, ours):
            op = conv[len(f"{ours}_branch_{i}_"):]
            b.slim_conv_bn(conv, f"{root}/{scope}/Branch_{i}/{_cap(op)}")
        if residual:
            b.add(f"{root}/{scope}/Conv2d_1x1/weights", f"{ours}_conv2d_1x1",
                  "kernel", R.IDENTITY)
            b.add(f"{root}/{scope}/Conv2d_1x1/biases", f"{ours}_conv2d_1x1",
                  "bias", R.IDENTITY)
    for conv in L.iter_convs(variant.top):
        b.slim_conv_bn(conv, f"{root}/{_cap(conv)}")


# Follows TF-Slim research/slim/nets/inception_resnet_v2.py (inception_resnet_v2 +
# inception_resnet_v2_arg_scope: BN without gamma, eps 1e-3): scopes
# InceptionResnetV2/Mixed_5b/Branch_0/Conv2d_1x1, Repeat/block35_N (N = 1..10),
# Repeat_1/block17_N, Repeat_2/block8_N, Block8, each with a biased
# Conv2d_1x1 projection; Conv2d_7b_1x1; AuxLogits (on PreAuxLogits) with
# Conv2d_1b_1x1, Conv2d_2a_5x5 and the fc Logits; Logits/Logits fc (1536, 1001).
def _slim_layout_v2(b: R.LayoutBuilder):
    root = V2.slim_scope
    _slim_body(b, V2)
    if b.has("aux_predictions"):
        b.slim_conv_bn("aux_conv2d_1b_1x1", f"{root}/AuxLogits/Conv2d_1b_1x1")
        b.slim_conv_bn("aux_conv2d_2a_5x5", f"{root}/AuxLogits/Conv2d_2a_5x5")
        b.slim_logits("aux_predictions", f"{root}/AuxLogits/Logits", conv=False)
    if b.has("predictions"):
        b.slim_logits("predictions", f"{root}/Logits/Logits", conv=False)


# Follows huggingface/pytorch-image-models timm/models/inception_resnet_v2.py
# (InceptionResnetV2: conv2d_1a ... conv2d_4a, mixed_5b, repeat (10x Block35),
# mixed_6a, repeat_1 (20x Block17), mixed_7a, repeat_2 (9x Block8), block8,
# conv2d_7b, classifier "classif"; ConvNormAct ".conv"/".bn" with BN eps 1e-3 and
# gamma; each block's biased projection "conv2d"; no aux head). The hf-hub
# checkpoints inception_resnet_v2.tf_in1k / .tf_ens_adv_in1k load with no
# checkpoint_filter_fn, so they carry these same keys.
def _timm_layout_v2(b: R.LayoutBuilder):
    for conv in L.iter_convs(V2.stem):  # conv2d_1a_3x3 -> conv2d_1a
        b.torch_conv_bn(conv, conv[:len("conv2d_1a")])
    for ours, _, module, branches, residual in _sections(V2):
        # A one-op branch is the module branch{i} itself; a longer one is an
        # nn.Sequential whose children are numbered pools included (branch3.1).
        for i, ops in enumerate(branches):
            for j, op in enumerate(ops):
                if isinstance(op, Conv):
                    sub = f"branch{i}" if len(ops) == 1 else f"branch{i}.{j}"
                    b.torch_conv_bn(f"{ours}_branch_{i}_{op.name}", f"{module}.{sub}")
        if residual:
            b.add(f"{module}.conv2d.weight", f"{ours}_conv2d_1x1", "kernel",
                  R.CONV_OIHW)
            b.add(f"{module}.conv2d.bias", f"{ours}_conv2d_1x1", "bias", R.IDENTITY)
    b.torch_conv_bn("conv2d_7b_1x1", "conv2d_7b")
    if b.has("predictions"):
        b.torch_dense("predictions", "classif")


# Follows davidsandberg/facenet src/models/inception_resnet_v1.py
# (inception_resnet_v1: scope InceptionResnetV1, BN without gamma, eps 1e-3;
# Conv2d_1a_3x3 ... Conv2d_4b_3x3, Repeat/block35_N (N = 1..5), Mixed_6a,
# Repeat_1/block17_N (1..10), Mixed_7a, Repeat_2/block8_N (1..5), Block8). Body
# only: facenet's head (Logits avg pool + dropout, then the fully connected
# Bottleneck to 128 or 512 with its BatchNorm, size set per checkpoint) has no
# counterpart here and is not listed.
def _facenet_layout_v1(b: R.LayoutBuilder):
    _slim_body(b, V1)


LAYOUTS_V2 = {"timm": _timm_layout_v2, "tf_slim": _slim_layout_v2}
LAYOUTS_V1 = {"facenet": _facenet_layout_v1}
LAYOUTS = {"inception_resnet_v2": LAYOUTS_V2, "inception_resnet_v1": LAYOUTS_V1}
