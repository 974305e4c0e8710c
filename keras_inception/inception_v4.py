"""Inception-v4 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact
of Residual Connections on Learning").

Layer names are the TF-Slim scopes, lower-cased (``mixed_6b_branch_2_conv2d_0c_1x7``);
the topology and the branch order are TF-Slim's ``inception_v4`` and timm's
``inception_v4`` (the same network), so the weights of either load exactly.
"""

from __future__ import annotations

from keras_inception import base
from keras_inception import layers as L
from keras_inception import refmaps as R
from keras_inception.layers import Conv, Fork, Pool
from keras_inception.registry import ModelInfo, Stage, register

__all__ = ["InceptionV4"]

_AVG = Pool("avgpool_0a_3x3", "avg")
_MAX_1A = Pool("maxpool_1a_3x3", "max", 3, strides=2, padding="valid")


# The module whose output the auxiliary classifier reads.
AUX_TAPS = {"mixed_6h": "aux"}


def _split(a, b, filters=256):
    """Parallel 1x3 and 3x1 convolutions, concatenated (Inception-C)."""
    return Fork("concat", ((Conv(a, filters, (1, 3)),), (Conv(b, filters, (3, 1)),)))


# The stem (figure 3 of the paper): three convs, then three two-branch modules.
_STEM = (
    Conv("conv2d_1a_3x3", 32, 3, strides=2, padding="valid"),
    Conv("conv2d_2a_3x3", 32, 3, padding="valid"),
    Conv("conv2d_2b_3x3", 64, 3),
)

_MIXED_3A = (
    (Pool("maxpool_0a_3x3", "max", 3, strides=2, padding="valid"),),
    (Conv("conv2d_0a_3x3", 96, 3, strides=2, padding="valid"),),
)

_MIXED_4A = (
    (Conv("conv2d_0a_1x1", 64, 1), Conv("conv2d_1a_3x3", 96, 3, padding="valid")),
    (Conv("conv2d_0a_1x1", 64, 1), Conv("conv2d_0b_1x7", 64, (1, 7)),
     Conv("conv2d_0c_7x1", 64, (7, 1)), Conv("conv2d_1a_3x3", 96, 3, padding="valid")),
)

_MIXED_5A = (
    (Conv("conv2d_1a_3x3", 192, 3, strides=2, padding="valid"),),
    (_MAX_1A,),
)

# Inception-A (35x35, 384 channels in and out).
_INCEPTION_A = (
    (Conv("conv2d_0a_1x1", 96, 1),),
    (Conv("conv2d_0a_1x1", 64, 1), Conv("conv2d_0b_3x3", 96, 3)),
    (Conv("conv2d_0a_1x1", 64, 1), Conv("conv2d_0b_3x3", 96, 3),
     Conv("conv2d_0c_3x3", 96, 3)),
    (_AVG, Conv("conv2d_0b_1x1", 96, 1)),
)

# Reduction-A (35 -> 17; k, l, m, n = 192, 224, 256, 384).
_REDUCTION_A = (
    (Conv("conv2d_1a_3x3", 384, 3, strides=2, padding="valid"),),
    (Conv("conv2d_0a_1x1", 192, 1), Conv("conv2d_0b_3x3", 224, 3),
     Conv("conv2d_1a_3x3", 256, 3, strides=2, padding="valid")),
    (_MAX_1A,),
)

# Inception-B (17x17, 1024 channels): 7x7 factorised into 1x7 / 7x1.
_INCEPTION_B = (
    (Conv("conv2d_0a_1x1", 384, 1),),
    (Conv("conv2d_0a_1x1", 192, 1), Conv("conv2d_0b_1x7", 224, (1, 7)),
     Conv("conv2d_0c_7x1", 256, (7, 1))),
    (Conv("conv2d_0a_1x1", 192, 1), Conv("conv2d_0b_7x1", 192, (7, 1)),
     Conv("conv2d_0c_1x7", 224, (1, 7)), Conv("conv2d_0d_7x1", 224, (7, 1)),
     Conv("conv2d_0e_1x7", 256, (1, 7))),
    (_AVG, Conv("conv2d_0b_1x1", 128, 1)),
)

# Reduction-B (17 -> 8).
_REDUCTION_B = (
    (Conv("conv2d_0a_1x1", 192, 1),
     Conv("conv2d_1a_3x3", 192, 3, strides=2, padding="valid")),
    (Conv("conv2d_0a_1x1", 256, 1), Conv("conv2d_0b_1x7", 256, (1, 7)),
     Conv("conv2d_0c_7x1", 320, (7, 1)),
     Conv("conv2d_1a_3x3", 320, 3, strides=2, padding="valid")),
    (_MAX_1A,),
)

# Inception-C (8x8, 1536 channels): branches 1 and 2 end in a 1x3 | 3x1 split.
_INCEPTION_C = (
    (Conv("conv2d_0a_1x1", 256, 1),),
    (Conv("conv2d_0a_1x1", 384, 1), _split("conv2d_0b_1x3", "conv2d_0c_3x1")),
    (Conv("conv2d_0a_1x1", 384, 1), Conv("conv2d_0b_3x1", 448, (3, 1)),
     Conv("conv2d_0c_1x3", 512, (1, 3)), _split("conv2d_0d_1x3", "conv2d_0e_3x1")),
    (_AVG, Conv("conv2d_0b_1x1", 256, 1)),
)

MODULES = (
    ("mixed_3a", _MIXED_3A),
    ("mixed_4a", _MIXED_4A),
    ("mixed_5a", _MIXED_5A),
    *((f"mixed_5{c}", _INCEPTION_A) for c in "bcde"),
    ("mixed_6a", _REDUCTION_A),
    *((f"mixed_6{c}", _INCEPTION_B) for c in "bcdefgh"),
    ("mixed_7a", _REDUCTION_B),
    *((f"mixed_7{c}", _INCEPTION_C) for c in "bcd"),
)


def _body(x, norm):
    return L.stem_and_modules(x, _STEM, MODULES, norm=norm,
                              aux_taps=AUX_TAPS)


@base.pretrained_constructor
def InceptionV4(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                dropout_rate=0.2, aux_logits=False, name="inception_v4",
                bn_scale=False, bn_epsilon=1e-3):
    """Inception-v4, weight-compatible with TF-Slim and timm.

    Args:
        include_top: whether to add the global-average-pool + dense classifier.
        weights: None (random initialisation) or the path to a weight file
            (our ``.weights.h5``).
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: input shape, default ``(299, 299, 3)`` with the top and
            ``(None, None, 3)`` without; each side at least 75 (299 with
            ``aux_logits=True``).
        pooling: with ``include_top=False``: None (4D output), ``"avg"`` or ``"max"``.
        classes: number of classes of the classifier.
        classifier_activation: activation of the classifier (None for logits).
        dropout_rate: dropout before the classifier (TF-Slim keeps 0.8).
        aux_logits: add the auxiliary classifier on ``mixed_6h``; the model then
            returns ``{"logits": ..., "aux": ...}``.
        name: model name.
        bn_scale: give BatchNormalization a gamma (TF-Slim has none; timm's port
            keeps one, all ones).
        bn_epsilon: BatchNormalization epsilon.

    Returns:
        A ``keras.Model``.

    Example:
        >>> import keras_inception
        >>> model = keras_inception.InceptionV4(input_shape=(75, 75, 3), classes=5)
        >>> model.output_shape
        (None, 5)
    """
    return base.build_model(
        INFO, _body, include_top=include_top, weights=weights,
        input_tensor=input_tensor, input_shape=input_shape, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation,
        dropout_rate=dropout_rate, aux_logits=aux_logits, name=name,
        norm=L.Norm(scale=bn_scale, epsilon=bn_epsilon))


INFO = register(ModelInfo(
    name="inception_v4",
    constructor=InceptionV4,
    default_size=299,
    min_size=75,
    aux_min_size=299,
    aux_heads=("aux",),
    aux_taps=tuple((head, module) for module, head in AUX_TAPS.items()),
    aux_builder=L.aux_head,
    stages=(
        Stage("conv", "conv2d_2b_3x3_act", 2),
        Stage("stem", "mixed_4a", 4),
        Stage("mixed_5", "mixed_5e", 8),
        Stage("mixed_6", "mixed_6h", 16),
        Stage("mixed_7", "mixed_7d", 32),
    ),
    paper="Szegedy et al. 2016, Inception-v4, Inception-ResNet and the Impact of "
          "Residual Connections on Learning, arXiv:1602.07261",
))


# --- reference weight layouts -------------------------------------------------------

def _cap(name):
    return name[0].upper() + name[1:]


# Follows TF-Slim research/slim/nets/inception_v4.py (inception_v4 +
# inception_utils.inception_arg_scope: BN without gamma, eps 1e-3): scopes
# InceptionV4/Mixed_5b/Branch_1/Conv2d_0b_3x3, AuxLogits on Mixed_6h (its 5x5 conv
# scope is "Conv2d_2a", its fc "Aux_logits"), Logits/Logits fc (1536, 1001).
def _slim_layout(b: R.LayoutBuilder):
    root = "InceptionV4"
    for conv in L.iter_convs(_STEM):
        b.slim_conv_bn(conv, f"{root}/{_cap(conv)}")
    for module, branches in MODULES:
        for i, conv in L.module_convs(branches, module):
            op = conv[len(f"{module}_branch_{i}_"):]
            b.slim_conv_bn(conv, f"{root}/{_cap(module)}/Branch_{i}/{_cap(op)}")
    if b.has("aux_predictions"):
        b.slim_conv_bn("aux_conv2d_1b_1x1", f"{root}/AuxLogits/Conv2d_1b_1x1")
        b.slim_conv_bn("aux_conv2d_2a_5x5", f"{root}/AuxLogits/Conv2d_2a")
        b.slim_logits("aux_predictions", f"{root}/AuxLogits/Aux_logits", conv=False)
    if b.has("predictions"):
        b.slim_logits("predictions", f"{root}/Logits/Logits", conv=False)


# timm's modules whose attribute names are not branch{i} / branch{i}.{j}.
_TIMM_NAMED = {
    "mixed_3a": (("branch_1_conv2d_0a_3x3", "conv"),),
    "mixed_5a": (("branch_0_conv2d_1a_3x3", "conv"),),
    "inception_c": (
        ("branch_0_conv2d_0a_1x1", "branch0"),
        ("branch_1_conv2d_0a_1x1", "branch1_0"),
        ("branch_1_conv2d_0b_1x3", "branch1_1a"),
        ("branch_1_conv2d_0c_3x1", "branch1_1b"),
        ("branch_2_conv2d_0a_1x1", "branch2_0"),
        ("branch_2_conv2d_0b_3x1", "branch2_1"),
        ("branch_2_conv2d_0c_1x3", "branch2_2"),
        ("branch_2_conv2d_0d_1x3", "branch2_3a"),
        ("branch_2_conv2d_0e_3x1", "branch2_3b"),
        ("branch_3_conv2d_0b_1x1", "branch3.1"),
    ),
}


def _timm_modules(module, branches):
    """(our conv prefix suffix, timm submodule) pairs of one module, timm's order.

    A one-op branch is the module ``branch{i}`` itself; a longer one is an
    ``nn.Sequential`` whose children are numbered pools included (``branch3.1``).
    """
    kind = "inception_c" if branches is _INCEPTION_C else module
    if kind in _TIMM_NAMED:
        return _TIMM_NAMED[kind]
    pairs = []
    for i, ops in enumerate(branches):
        for j, op in enumerate(ops):
            if isinstance(op, Conv):
                sub = f"branch{i}" if len(ops) == 1 else f"branch{i}.{j}"
                pairs.append((f"branch_{i}_{op.name}", sub))
    return tuple(pairs)


# Follows huggingface/pytorch-image-models timm/models/inception_v4.py (InceptionV4:
# features.N Sequential of the stem convs, Mixed3a/4a/5a, 4x InceptionA,
# ReductionA, 7x InceptionB, ReductionB, 3x InceptionC; ConvNormAct ".conv" /
# ".bn" with BN eps 1e-3 and gamma; classifier "last_linear"; no aux head). The
# hf-hub checkpoint timm/inception_v4.tf_in1k loads into it with no
# checkpoint_filter_fn, so it carries these same keys.
def _timm_layout(b: R.LayoutBuilder):
    for i, op in enumerate(_STEM):
        b.torch_conv_bn(op.name, f"features.{i}")
    for index, (module, branches) in enumerate(MODULES, start=len(_STEM)):
        for ours, sub in _timm_modules(module, branches):
            b.torch_conv_bn(f"{module}_{ours}", f"features.{index}.{sub}")
    if b.has("predictions"):
        b.torch_dense("predictions", "last_linear")


LAYOUTS = {"timm": _timm_layout, "tf_slim": _slim_layout}
