"""GoogLeNet, a.k.a. Inception-v1 (Szegedy et al. 2014, "Going Deeper with Convolutions").

The topology is TF-Slim's ``inception_v1`` and torchvision's ``googlenet`` (the same
network: torchvision's weights were ported from TF-Slim), with batch normalization
after every convolution. Layer names are the TF-Slim scopes, lower-cased
(``mixed_4b_branch_1_conv2d_0b_3x3``).

Padding: by default (``arithmetic="tf"``) every convolution and pooling is
``"same"``, as in TF-Slim, so TF-Slim's weights compute exactly what they computed
there. torchvision pads symmetrically instead (``Conv2d(..., padding=3)`` for the
7x7/2 stem, ``MaxPool2d(3, 2, ceil_mode=True)`` for the grid reductions);
``arithmetic="torch"`` builds those ops its way, so torchvision's weights compute
what they compute there. Per layer:

- ``conv2d_1a_7x7`` (7x7/2): torchvision pads 3 on every side; "same" pads 2 before
  and 3 after on even sides, 3 and 3 on odd sides. Same output size always, but on
  even input sides the torchvision stem samples the image one pixel earlier.
- ``maxpool_2a_3x3``, ``maxpool_3a_3x3``, ``maxpool_4a_3x3`` (3x3/2, ceil_mode, no
  padding): identical to "same" (0 before, 1 after) on even input sides; on odd sides
  torchvision gives ``(n - 1) / 2`` outputs where "same" gives ``(n + 1) / 2``.
- ``maxpool_5a_2x2`` (2x2/2, ceil_mode): identical to "same" at every size.
- The branch max pools (3x3/1, padding 1) and the 3x3 convolutions (padding 1):
  identical to "same".

So at 224 (and any side that is a multiple of 16) only the stem convolution differs.
torch's arithmetic needs inputs of at least 15 pixels (:data:`TORCH_MIN_SIZE`: the
ceil-mode pools shrink odd sides), where TF's takes any.
"""

from __future__ import annotations

from keras_inception import base
from keras_inception import layers as L
from keras_inception.layers import Conv, Pool
from keras_inception.refmaps import DENSE_OI_CHW4X4, IDENTITY
from keras_inception.registry import ModelInfo, Stage, register

__all__ = ["GoogLeNet", "InceptionV1"]


def _module(b0, b1_reduce, b1, b2_reduce, b2, pool_proj, *, kernel=3, quirk=False):
    """An Inception module: 1x1 | 1x1-3x3 | 1x1-kxk | maxpool-1x1.

    ``kernel`` is the third branch's second convolution: 3 in TF-Slim and
    torchvision (their weights need it), 5 in the paper. ``quirk``: TF-Slim's
    Mixed_5b names that convolution ``Conv2d_0a_3x3`` instead of ``Conv2d_0b_3x3``.
    """
    b2_name = f"conv2d_0{'a' if quirk else 'b'}_{kernel}x{kernel}"
    return (
        (Conv("conv2d_0a_1x1", b0, 1),),
        (Conv("conv2d_0a_1x1", b1_reduce, 1), Conv("conv2d_0b_3x3", b1, 3)),
        (Conv("conv2d_0a_1x1", b2_reduce, 1), Conv(b2_name, b2, kernel)),
        (Pool("maxpool_0a_3x3", "max", 3), Conv("conv2d_0b_1x1", pool_proj, 1)),
    )


_STEM = (
    Conv("conv2d_1a_7x7", 64, 7, strides=2),
    Pool("maxpool_2a_3x3", "max", 3, strides=2),
    Conv("conv2d_2b_1x1", 64, 1),
    Conv("conv2d_2c_3x3", 192, 3),
    Pool("maxpool_3a_3x3", "max", 3, strides=2),
)
# torchvision's stem: Conv2d(3, 64, 7, stride=2, padding=3), MaxPool2d(3, 2,
# ceil_mode=True); its 1x1 and padded 3x3 convolutions are "same" already.
_TORCH_STEM = (
    Conv("conv2d_1a_7x7", 64, 7, strides=2, padding=3),
    Pool("maxpool_2a_3x3", "max", 3, strides=2, padding=0, ceil_mode=True),
    *_STEM[2:4],
    Pool("maxpool_3a_3x3", "max", 3, strides=2, padding=0, ceil_mode=True),
)

# (name, filters of _module, torchvision module); grid reductions are max pools.
MODULES = (
    ("mixed_3b", (64, 96, 128, 16, 32, 32), "inception3a"),
    ("mixed_3c", (128, 128, 192, 32, 96, 64), "inception3b"),
    ("maxpool_4a_3x3", None, None),
    ("mixed_4b", (192, 96, 208, 16, 48, 64), "inception4a"),
    ("mixed_4c", (160, 112, 224, 24, 64, 64), "inception4b"),
    ("mixed_4d", (128, 128, 256, 24, 64, 64), "inception4c"),
    ("mixed_4e", (112, 144, 288, 32, 64, 64), "inception4d"),
    ("mixed_4f", (256, 160, 320, 32, 128, 128), "inception4e"),
    ("maxpool_5a_2x2", None, None),
    ("mixed_5b", (256, 160, 320, 32, 128, 128), "inception5a"),
    ("mixed_5c", (384, 192, 384, 48, 128, 128), "inception5b"),
)

# The auxiliary heads read Mixed_4b (torchvision's inception4a) and Mixed_4e
# (inception4d).
AUX_TAPS = {"mixed_4b": "aux1", "mixed_4e": "aux2"}

_POOL_SIZES = {"maxpool_4a_3x3": 3, "maxpool_5a_2x2": 2}

# torchvision's ceil-mode pools leave no pixel of smaller inputs (torch raises too).
TORCH_MIN_SIZE = 15


def _check_torch_size(input_shape, input_tensor):
    shape = getattr(input_tensor, "shape", None)
    shape = tuple(shape[1:]) if shape is not None else input_shape
    if shape is None or len(shape) != 3:
        return  # the default size, or a shape build_model rejects itself
    if any(side is not None and side < TORCH_MIN_SIZE for side in base._spatial(shape)):
        raise ValueError(
            f"GoogLeNet with arithmetic='torch' needs inputs of at least "
            f"{TORCH_MIN_SIZE}x{TORCH_MIN_SIZE} pixels (torchvision's ceil-mode pools "
            f"leave nothing of smaller ones); got input shape {tuple(shape)}. Resize "
            f"or pad your images, or use arithmetic='tf'.")


def _branches(name, filters, kernel):
    return _module(*filters, kernel=kernel, quirk=name == "mixed_5b")


def _make_body(branch3_kernel, arithmetic):
    torch = arithmetic == "torch"

    def body(x, norm):
        x = L.apply_ops(x, _TORCH_STEM if torch else _STEM, prefix="", norm=norm)
        taps = {}
        for name, filters, _ in MODULES:
            if filters is None:
                size = _POOL_SIZES[name]
                # torchvision's 2x2/2 ceil-mode pool is "same" at every size.
                ceil = torch and size == 3
                x = L.pool(x, "max", size, strides=2, name=name,
                           padding=0 if ceil else "same", ceil_mode=ceil)
                continue
            x = L.inception_module(x, _branches(name, filters, branch3_kernel),
                                   name=name, norm=norm)
            if name in AUX_TAPS:
                taps[AUX_TAPS[name]] = x
        return x, taps
    return body


@base.pretrained_constructor
def GoogLeNet(include_top=True, weights=None, input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax",
              dropout_rate=0.4, aux_logits=False, name="googlenet", bn_scale=False,
              bn_epsilon=1e-3, branch3_kernel=3, arithmetic="tf"):
    """GoogLeNet (Inception-v1) with batch normalization, as in TF-Slim and torchvision.

    Args:
        include_top: whether to add the global-average-pool + dense classifier.
        weights: None (random initialisation) or the path to a weight file (our
            ``.weights.h5``).
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: input shape, default ``(224, 224, 3)`` with the top and
            ``(None, None, 3)`` without; each side at least 1 (every layer pads
            "same"; 17 with ``aux_logits=True``, where the auxiliary heads' 4x4
            adaptive pooling needs at least a 2x2 map at stride 16).
        pooling: with ``include_top=False``: None (4D output), ``"avg"`` or ``"max"``.
        classes: number of classes of the classifier.
        classifier_activation: activation of the classifier (None for logits).
        dropout_rate: dropout before the classifier (0.4 in the paper; TF-Slim and
            torchvision use 0.2).
        aux_logits: add the two auxiliary classifiers, ``aux1`` on ``mixed_4b``
            (torchvision's inception4a) and ``aux2`` on ``mixed_4e`` (inception4d);
            the model then returns ``{"logits": ..., "aux1": ..., "aux2": ...}``.
        name: model name.
        bn_scale: give BatchNormalization a gamma. TF-Slim trains without one;
            torchvision keeps one (ones in its TF-ported weights), which a converter
            folds exactly into the preceding convolution.
        bn_epsilon: BatchNormalization epsilon (1e-3 in both).
        branch3_kernel: kernel of the third branch's second convolution
            (torchvision's ``branch3``, TF-Slim's ``Branch_2``). 3 (default) is what
            TF-Slim and torchvision build, a known deviation that their weights need;
            5 is the paper's 5x5 convolution (no public weights).
        arithmetic: ``"tf"`` (default: TF-Slim's "same" padding, for TF-Slim's
            weights) or ``"torch"`` (torchvision's symmetric stem padding and
            ceil-mode pools, for torchvision's weights; inputs of at least 15).

    Returns:
        A ``keras.Model``.

    Example:
        >>> import keras_inception
        >>> model = keras_inception.GoogLeNet(input_shape=(64, 64, 3), classes=5,
        ...                                   aux_logits=True)
        >>> {key: tuple(out.shape) for key, out in sorted(model.output.items())}
        {'aux1': (None, 5), 'aux2': (None, 5), 'logits': (None, 5)}
    """
    if branch3_kernel not in (3, 5):
        raise ValueError(
            f"branch3_kernel must be 3 (TF-Slim/torchvision, needed by their weights) "
            f"or 5 (the paper), got {branch3_kernel!r}.")
    if L.check_arithmetic(arithmetic) == "torch":
        _check_torch_size(input_shape, input_tensor)
    return base.build_model(
        INFO, _make_body(branch3_kernel, arithmetic), include_top=include_top,
        weights=weights, input_tensor=input_tensor, input_shape=input_shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        dropout_rate=dropout_rate, aux_logits=aux_logits, name=name,
        norm=L.Norm(scale=bn_scale, epsilon=bn_epsilon))


InceptionV1 = GoogLeNet
"""The paper's name for :func:`GoogLeNet` (the same function)."""


# --- reference weight layouts ---------------------------------------------------------

_TORCH_BRANCHES = (
    ("branch_0_conv2d_0a_1x1", "branch1"),
    ("branch_1_conv2d_0a_1x1", "branch2.0"),
    ("branch_1_conv2d_0b_3x3", "branch2.1"),
    ("branch_2_conv2d_0a_1x1", "branch3.0"),
    ("branch_2_{b2}", "branch3.1"),
    ("branch_3_conv2d_0b_1x1", "branch4.1"),  # branch4.0 is the max pool
)

_SLIM_BRANCHES = (
    ("branch_0_conv2d_0a_1x1", "Branch_0/Conv2d_0a_1x1"),
    ("branch_1_conv2d_0a_1x1", "Branch_1/Conv2d_0a_1x1"),
    ("branch_1_conv2d_0b_3x3", "Branch_1/Conv2d_0b_3x3"),
    ("branch_2_conv2d_0a_1x1", "Branch_2/Conv2d_0a_1x1"),
    ("branch_2_{b2}", "Branch_2/{B2}"),
    ("branch_3_conv2d_0b_1x1", "Branch_3/Conv2d_0b_1x1"),
)

_STEM_CONVS = (("conv2d_1a_7x7", "conv1", "Conv2d_1a_7x7"),
               ("conv2d_2b_1x1", "conv2", "Conv2d_2b_1x1"),
               ("conv2d_2c_3x3", "conv3", "Conv2d_2c_3x3"))


def _b2(module):
    return "conv2d_0a_3x3" if module == "mixed_5b" else "conv2d_0b_3x3"


# torchvision/models/googlenet.py (GoogLeNet, Inception, InceptionAux, BasicConv2d:
# bias-free conv + BatchNorm2d(eps=0.001)), state_dict order: conv1-3, inception3a..5b,
# aux1, aux2 (present in googlenet-1378be20.pth, untrained; here only when the model
# has them), fc.
def _torchvision_layout(b):
    for ours, module, _ in _STEM_CONVS:
        b.torch_conv_bn(ours, module)
    for name, filters, module in MODULES:
        if filters is None:
            continue
        for branch, sub in _TORCH_BRANCHES:
            b.torch_conv_bn(f"{name}_{branch.format(b2=_b2(name))}", f"{module}.{sub}")
    for head in ("aux1", "aux2"):
        if not b.has(f"{head}_fc1"):
            continue
        b.torch_conv_bn(f"{head}_conv", f"{head}.conv")
        b.add(f"{head}.fc1.weight", f"{head}_fc1", "kernel", DENSE_OI_CHW4X4)
        b.add(f"{head}.fc1.bias", f"{head}_fc1", "bias", IDENTITY)
        b.torch_dense(f"{head}_predictions", f"{head}.fc2")
    if b.has("predictions"):
        b.torch_dense("predictions", "fc")


# research/slim/nets/inception_v1.py (inception_v1_base + inception_v1's Logits;
# inception_utils.inception_arg_scope: BN without gamma, eps 1e-3), checkpoint
# inception_v1_2016_08_28: no auxiliary heads, 1001-class logits (class 0 background).
def _slim_layout(b):
    for ours, _, scope in _STEM_CONVS:
        b.slim_conv_bn(ours, f"InceptionV1/{scope}")
    for name, filters, _ in MODULES:
        if filters is None:
            continue
        upper = "Mixed_" + name.split("_")[1]
        b2 = _b2(name)
        for branch, sub in _SLIM_BRANCHES:
            scope = sub.format(B2=b2.replace("conv2d", "Conv2d"))
            b.slim_conv_bn(f"{name}_{branch.format(b2=b2)}",
                                   f"InceptionV1/{upper}/{scope}")
    if b.has("predictions"):
        b.slim_logits("predictions", "InceptionV1/Logits/Conv2d_0c_1x1")


LAYOUTS = {"torchvision": _torchvision_layout, "tf_slim": _slim_layout}


INFO = register(ModelInfo(
    name="googlenet",
    constructor=GoogLeNet,
    default_size=224,
    min_size=1,
    aux_min_size=17,
    aux_heads=("aux1", "aux2"),
    aux_taps=tuple((head, module) for module, head in AUX_TAPS.items()),
    aux_builder=L.aux_head_v1,
    stages=(
        Stage("conv", "conv2d_1a_7x7_act", 2),
        Stage("stem", "conv2d_2c_3x3_act", 4),
        Stage("mixed_3", "mixed_3c", 8),
        Stage("mixed_4", "mixed_4f", 16),
        Stage("mixed_5", "mixed_5c", 32),
    ),
    aliases=("inception_v1",),
    paper="Szegedy et al. 2014, Going Deeper with Convolutions, arXiv:1409.4842",
))
