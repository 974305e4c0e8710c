"""Inception-v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture").

Layer names are the TF-Slim scopes, lower-cased (``mixed_6a_branch_1_conv2d_0b_3x3``);
the topology and the branch order are keras.applications' and TF-Slim's, so the
weights of either load exactly.

Arithmetic: the only op where torchvision's Inception3 (and timm's inception_v3,
the same module) computes differently is the 3x3/1 average pool of the branches:
``F.avg_pool2d(x, 3, 1, padding=1)`` counts the zero padding in the border averages
(``count_include_pad=True``), TF-Slim and Keras leave it out. ``arithmetic="torch"``
pads explicitly to count it; every other op (valid strided convs and pools,
symmetric stride-1 padding) is the same in both.
"""

from __future__ import annotations

import dataclasses

from keras_inception import base
from keras_inception import layers as L
from keras_inception.layers import Conv, Fork, Pool
from keras_inception.refmaps import LayoutBuilder
from keras_inception.registry import ModelInfo, Stage, register

__all__ = ["InceptionV3"]

_AVG = Pool("avgpool_0a_3x3", "avg")


# The module whose output the auxiliary classifier reads.
AUX_TAPS = {"mixed_6e": "aux"}


def _block_35(pool_filters, slim_quirk=False):
    """Mixed_5b-d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (5x5 factorised)."""
    b1 = ((Conv("conv2d_0b_1x1", 48, 1), Conv("conv_1_0c_5x5", 64, 5)) if slim_quirk
          else (Conv("conv2d_0a_1x1", 48, 1), Conv("conv2d_0b_5x5", 64, 5)))
    return (
        (Conv("conv2d_0a_1x1", 64, 1),),
        b1,
        (Conv("conv2d_0a_1x1", 64, 1), Conv("conv2d_0b_3x3", 96, 3),
         Conv("conv2d_0c_3x3", 96, 3)),
        (_AVG, Conv("conv2d_0b_1x1", pool_filters, 1)),
    )


def _block_17(width):
    """Mixed_6b-e: 7x7 factorised into asymmetric 1x7 / 7x1 convolutions."""
    return (
        (Conv("conv2d_0a_1x1", 192, 1),),
        (Conv("conv2d_0a_1x1", width, 1), Conv("conv2d_0b_1x7", width, (1, 7)),
         Conv("conv2d_0c_7x1", 192, (7, 1))),
        (Conv("conv2d_0a_1x1", width, 1), Conv("conv2d_0b_7x1", width, (7, 1)),
         Conv("conv2d_0c_1x7", width, (1, 7)), Conv("conv2d_0d_7x1", width, (7, 1)),
         Conv("conv2d_0e_1x7", 192, (1, 7))),
        (_AVG, Conv("conv2d_0b_1x1", 192, 1)),
    )


def _block_8(second):
    """Mixed_7b-c: expanded filter bank, 3x3 split into parallel 1x3 and 3x1."""
    split = lambda a, b: Fork("concat", ((Conv(a, 384, (1, 3)),), (Conv(b, 384, (3, 1)),)))
    return (
        (Conv("conv2d_0a_1x1", 320, 1),),
        (Conv("conv2d_0a_1x1", 384, 1), split("conv2d_0b_1x3", f"conv2d_0{second}_3x1")),
        (Conv("conv2d_0a_1x1", 448, 1), Conv("conv2d_0b_3x3", 384, 3),
         split("conv2d_0c_1x3", "conv2d_0d_3x1")),
        (_AVG, Conv("conv2d_0b_1x1", 192, 1)),
    )


_REDUCTION_6A = (
    (Conv("conv2d_1a_1x1", 384, 3, strides=2, padding="valid"),),
    (Conv("conv2d_0a_1x1", 64, 1), Conv("conv2d_0b_3x3", 96, 3),
     Conv("conv2d_1a_1x1", 96, 3, strides=2, padding="valid")),
    (Pool("maxpool_1a_3x3", "max", 3, strides=2, padding="valid"),),
)

_REDUCTION_7A = (
    (Conv("conv2d_0a_1x1", 192, 1),
     Conv("conv2d_1a_3x3", 320, 3, strides=2, padding="valid")),
    (Conv("conv2d_0a_1x1", 192, 1), Conv("conv2d_0b_1x7", 192, (1, 7)),
     Conv("conv2d_0c_7x1", 192, (7, 1)),
     Conv("conv2d_1a_3x3", 192, 3, strides=2, padding="valid")),
    (Pool("maxpool_1a_3x3", "max", 3, strides=2, padding="valid"),),
)

# The stem (TF-Slim names); the keras.applications topology is identical.
_STEM = (
    Conv("conv2d_1a_3x3", 32, 3, strides=2, padding="valid"),
    Conv("conv2d_2a_3x3", 32, 3, padding="valid"),
    Conv("conv2d_2b_3x3", 64, 3),
    Pool("maxpool_3a_3x3", "max", 3, strides=2, padding="valid"),
    Conv("conv2d_3b_1x1", 80, 1, padding="valid"),
    Conv("conv2d_4a_3x3", 192, 3, padding="valid"),
    Pool("maxpool_5a_3x3", "max", 3, strides=2, padding="valid"),
)

MODULES = (
    ("mixed_5b", _block_35(32)),
    ("mixed_5c", _block_35(64, slim_quirk=True)),
    ("mixed_5d", _block_35(64)),
    ("mixed_6a", _REDUCTION_6A),
    ("mixed_6b", _block_17(128)),
    ("mixed_6c", _block_17(160)),
    ("mixed_6d", _block_17(160)),
    ("mixed_6e", _block_17(192)),
    ("mixed_7a", _REDUCTION_7A),
    ("mixed_7b", _block_8("b")),
    ("mixed_7c", _block_8("c")),
)


def _count_include_pad(op):
    """torch's ``avg_pool2d(3, 1, padding=1)``: zero padding counted in the average."""
    if isinstance(op, Pool) and op.kind == "avg":
        return dataclasses.replace(op, padding=1)
    return op


def _make_body(arithmetic):
    modules = MODULES
    if arithmetic == "torch":
        modules = tuple(
            (name, tuple(L.map_ops(ops, _count_include_pad) for ops in branches))
            for name, branches in MODULES)

    def body(x, norm):
        return L.stem_and_modules(x, _STEM, modules, norm=norm,
                                  aux_taps=AUX_TAPS)
    return body


# --- reference layouts --------------------------------------------------------------
def _slim_scope(name):
    """``mixed_5b`` -> ``Mixed_5b``, ``conv_1_0c_5x5`` -> ``Conv_1_0c_5x5``."""
    return name[0].upper() + name[1:]


def _slim_layout(b: LayoutBuilder):
    """TF-Slim ``research/slim/nets/inception_v3.py`` (inception_v3_2016_08_28)."""
    root = "InceptionV3"
    for conv in L.iter_convs(_STEM):
        b.slim_conv_bn(conv, f"{root}/{_slim_scope(conv)}")
    for module, branches in MODULES:
        for i, conv in L.module_convs(branches, module):
            op = conv[len(f"{module}_branch_{i}_"):]
            b.slim_conv_bn(conv, f"{root}/{_slim_scope(module)}/Branch_{i}/{_slim_scope(op)}")
    if b.has("aux_predictions"):
        b.slim_conv_bn("aux_conv2d_1b_1x1", f"{root}/AuxLogits/Conv2d_1b_1x1")
        b.slim_conv_bn("aux_conv2d_2a_5x5", f"{root}/AuxLogits/Conv2d_2a_5x5")
        b.slim_logits("aux_predictions", f"{root}/AuxLogits/Conv2d_2b_1x1")
    if b.has("predictions"):
        b.slim_logits("predictions", f"{root}/Logits/Conv2d_1c_1x1")


# torchvision/timm module names of each module's convs, in our build order.
_TORCH_BRANCHES = {
    "35": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1",
           "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"),
    "6a": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "17": ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1",
           "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5",
           "branch_pool"),
    "7a": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2",
           "branch7x7x3_3", "branch7x7x3_4"),
    "8": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
          "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
_TORCH_KIND = {"mixed_5": "35", "mixed_6a": "6a", "mixed_6": "17", "mixed_7a": "7a",
               "mixed_7": "8"}


def _torch_kind(module):
    return _TORCH_KIND.get(module) or _TORCH_KIND[module[:-1]]


def _torch_layout(b: LayoutBuilder):
    """torchvision ``models/inception.py`` Inception3 (timm ``inception_v3`` keeps
    the same module names): ``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1...``,
    ``AuxLogits.conv0/conv1/fc`` between Mixed_6e and Mixed_7a, ``fc``."""
    for conv in L.iter_convs(_STEM):
        b.torch_conv_bn(conv, _slim_scope(conv))
    for module, branches in MODULES:
        names = _TORCH_BRANCHES[_torch_kind(module)]
        convs = [conv for _, conv in L.module_convs(branches, module)]
        for conv, torch_name in zip(convs, names, strict=True):
            b.torch_conv_bn(conv, f"{_slim_scope(module)}.{torch_name}")
        if module == "mixed_6e" and b.has("aux_predictions"):
            b.torch_conv_bn("aux_conv2d_1b_1x1", "AuxLogits.conv0")
            b.torch_conv_bn("aux_conv2d_2a_5x5", "AuxLogits.conv1")
            b.torch_dense("aux_predictions", "AuxLogits.fc")
    if b.has("predictions"):
        b.torch_dense("predictions", "fc")


LAYOUTS = {"tf_slim": _slim_layout, "torchvision": _torch_layout}


@base.pretrained_constructor
def InceptionV3(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                dropout_rate=0.2, aux_logits=False, name="inception_v3",
                bn_scale=False, bn_epsilon=1e-3, arithmetic="tf"):
    """Inception-v3, weight-compatible with keras.applications and TF-Slim.

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
        dropout_rate: dropout before the classifier (TF-Slim keeps 0.8).
        aux_logits: add the auxiliary classifier on ``mixed_6e``; the model then
            returns ``{"logits": ..., "aux": ...}``.
        name: model name.
        bn_scale: give BatchNormalization a gamma (keras.applications has none).
        bn_epsilon: BatchNormalization epsilon.
        arithmetic: ``"tf"`` (default: Keras/TF-Slim average pools, which leave the
            padding out) or ``"torch"`` (torchvision's and timm's, which count it:
            for their weights).

    Returns:
        A ``keras.Model``.

    Example:
        >>> import keras_inception
        >>> model = keras_inception.InceptionV3(input_shape=(75, 75, 3), classes=5)
        >>> model.output_shape
        (None, 5)
    """
    L.check_arithmetic(arithmetic)
    return base.build_model(
        INFO, _make_body(arithmetic), include_top=include_top, weights=weights,
        input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation,
        dropout_rate=dropout_rate, aux_logits=aux_logits, name=name,
        norm=L.Norm(scale=bn_scale, epsilon=bn_epsilon))


INFO = register(ModelInfo(
    name="inception_v3",
    constructor=InceptionV3,
    default_size=299,
    min_size=75,
    aux_min_size=299,
    keras_applications="InceptionV3",
    aux_heads=("aux",),
    aux_taps=tuple((head, module) for module, head in AUX_TAPS.items()),
    aux_builder=L.aux_head,
    stages=(
        Stage("conv", "conv2d_2b_3x3_act", 2),
        Stage("stem", "conv2d_4a_3x3_act", 4),
        Stage("mixed_5", "mixed_5d", 8),
        Stage("mixed_6", "mixed_6e", 16),
        Stage("mixed_7", "mixed_7c", 32),
    ),
    paper="Szegedy et al. 2015, Rethinking the Inception Architecture for Computer "
          "Vision, arXiv:1512.00567",
))
