"""Independent TF-Slim reference networks and checkpoints, in raw TensorFlow ops.

How these references were built: from the facts of TF-Slim's network definitions
(tensorflow/models ``research/slim/nets/inception_v1.py``, ``inception_v2.py``,
``inception_v3.py``, ``inception_v4.py``, ``inception_resnet_v2.py`` and
``inception_utils.py``), read for their scopes, filter counts, kernel sizes,
strides, paddings and heads, and re-expressed here as small specs (nested tuples)
that one interpreter evaluates with ``tf.nn`` ops. Nothing of keras_inception is
imported: the specs are written from the upstream files, not from our layouts, so
they can disagree with us.

What TF-Slim computes, and so what the interpreter does:

* ``slim.conv2d`` under ``inception_arg_scope`` / ``inception_resnet_v2_arg_scope``:
  convolution without bias, then batch normalization without gamma
  (``scale=False``) with epsilon 0.001 from ``moving_mean`` /
  ``moving_variance``, then ReLU. Variables: ``<scope>/weights`` (kh, kw, in,
  out) and ``<scope>/BatchNorm/{beta,moving_mean,moving_variance}``.
* Convolutions with ``normalizer_fn=None`` (the logits, IRv2's residual
  projections ``Conv2d_1x1``) have ``<scope>/biases`` instead; the logits have no
  activation. ``slim.fully_connected`` logits (v4, IRv2) are ``weights`` (in, out)
  + ``biases``.
* Inception-v2's ``Conv2d_1a_7x7`` is ``slim.separable_conv2d`` (depthwise
  multiplier 8, stride 2), which the arg scope gives no batch norm: variables
  ``depthwise_weights`` (7, 7, 3, 8), ``pointwise_weights`` (1, 1, 24, 64),
  ``biases``; ReLU.
* Paddings: v1 and v2 pad everything "SAME"; v3, v4 and IRv2 have "VALID" stems
  and grid reductions and "SAME" elsewhere, exactly as each upstream op says.
  ``tf.nn.avg_pool2d`` with "SAME" excludes the padding from the average, as
  TF-Slim's pools do.
* Quirky scopes kept as upstream has them: v1 ``Mixed_5b/Branch_2/Conv2d_0a_3x3``;
  v3 ``Mixed_5c/Branch_1/Conv2d_0b_1x1`` + ``Conv_1_0c_5x5``, ``Mixed_6a``'s 3x3
  convolutions named ``Conv2d_1a_1x1``, ``Mixed_7b/Branch_1/Conv2d_0b_3x1`` (7c:
  ``Conv2d_0c_3x1``); IRv2 ``Repeat/block35_N``, ``Repeat_1/block17_N``,
  ``Repeat_2/block8_N`` (``slim.repeat``) and the last ``Block8``.
* Heads: global average pool, then 1001-class logits (class 0 is the background):
  a biased 1x1 convolution for v1 (``Logits/Conv2d_0c_1x1``), v2 and v3
  (``Logits/Conv2d_1c_1x1``), a fully connected layer for v4 and IRv2
  (``Logits/Logits``). Auxiliary heads (v3 on ``Mixed_6e``, v4 on ``Mixed_6h``,
  IRv2 on ``PreAuxLogits``): 5x5/3 VALID average pool, 1x1 conv to 128, conv to
  768 with VALID padding whose kernel is the remaining map (5x5 at 299; TF-Slim
  shrinks it on smaller inputs, and names v3's after it: ``Conv2d_2a_5x5``), then
  v3's 1x1-conv logits ``Conv2d_2b_1x1`` or v4's / IRv2's fully connected
  ``Aux_logits`` / ``Logits``.

Deliberate simplifications: inference only (dropout is the identity); the final
pool is a global mean, which is TF-Slim's fixed-window pool at the canonical sizes
(v1's ``AvgPool_0a_7x7``, v2's and v3's reduced kernels, v4's and IRv2's
full-map pools) and its ``global_pool=True`` elsewhere.

Checkpoints: :func:`write_checkpoint` writes name-keyed TF1 checkpoints of float32
variables plus an int64 ``global_step``, either V1 (one file, as the 2016 TF-Slim
archives ship: ``inception_v3_2016_08_28.tar.gz`` holds ``inception_v3.ckpt``) or
V2 (``.index`` + ``.data-00000-of-00001``); :func:`write_archive` packs one as a
``.tar.gz`` with its files at the top level.
"""

from __future__ import annotations

import os
import tarfile
import zlib

import numpy as np

BN_EPSILON = 0.001

# The member each published 2016 archive holds (TF-Slim README and its users).
PUBLISHED = {
    "inception_v1": ("inception_v1_2016_08_28.tar.gz", "inception_v1.ckpt"),
    "inception_v2": ("inception_v2_2016_08_28.tar.gz", "inception_v2.ckpt"),
    "inception_v3": ("inception_v3_2016_08_28.tar.gz", "inception_v3.ckpt"),
    "inception_v4": ("inception_v4_2016_09_09.tar.gz", "inception_v4.ckpt"),
    "inception_resnet_v2": ("inception_resnet_v2_2016_08_30.tar.gz",
                            "inception_resnet_v2_2016_08_30.ckpt"),
}


# --- spec vocabulary -------------------------------------------------------------
# ("conv", scope, filters, (kh, kw), stride, padding)   conv + BN(no gamma) + ReLU
# ("max" | "avg", scope, size, stride, padding)          pooling, no variables
# ("split", (op, op))                                    parallel ops, concatenated
# ("mixed", scope, (branch_ops, ...))                    Branch_i scopes, concatenated
# ("residual", scope, (branch_ops, ...), scale, relu)    IRv2 block
# ("sepconv", scope, filters, size, multiplier, stride)  v2's separable stem conv
# ("endpoint", name)                                     names the current tensor

def _conv(scope, filters, kernel, stride=1, padding="SAME"):
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    return ("conv", scope, filters, kernel, stride, padding)


def _max(scope, size, stride=1, padding="SAME"):
    return ("max", scope, size, stride, padding)


def _avg(scope, size, stride=1, padding="SAME"):
    return ("avg", scope, size, stride, padding)


# --- Inception-v1 (inception_v1.py: every op SAME) --------------------------------
def _v1_mixed(scope, b0, b1, b2, b3, quirk=False):
    return ("mixed", scope, (
        (_conv("Conv2d_0a_1x1", b0, 1),),
        (_conv("Conv2d_0a_1x1", b1[0], 1), _conv("Conv2d_0b_3x3", b1[1], 3)),
        (_conv("Conv2d_0a_1x1", b2[0], 1),
         _conv("Conv2d_0a_3x3" if quirk else "Conv2d_0b_3x3", b2[1], 3)),
        (_max("MaxPool_0a_3x3", 3), _conv("Conv2d_0b_1x1", b3, 1)),
    ))


INCEPTION_V1 = {
    "root": "InceptionV1",
    "body": (
        _conv("Conv2d_1a_7x7", 64, 7, 2),
        _max("MaxPool_2a_3x3", 3, 2),
        _conv("Conv2d_2b_1x1", 64, 1),
        _conv("Conv2d_2c_3x3", 192, 3),
        _max("MaxPool_3a_3x3", 3, 2),
        _v1_mixed("Mixed_3b", 64, (96, 128), (16, 32), 32),
        _v1_mixed("Mixed_3c", 128, (128, 192), (32, 96), 64),
        _max("MaxPool_4a_3x3", 3, 2),
        _v1_mixed("Mixed_4b", 192, (96, 208), (16, 48), 64),
        _v1_mixed("Mixed_4c", 160, (112, 224), (24, 64), 64),
        _v1_mixed("Mixed_4d", 128, (128, 256), (24, 64), 64),
        _v1_mixed("Mixed_4e", 112, (144, 288), (32, 64), 64),
        _v1_mixed("Mixed_4f", 256, (160, 320), (32, 128), 128),
        _max("MaxPool_5a_2x2", 2, 2),
        _v1_mixed("Mixed_5b", 256, (160, 320), (32, 128), 128, quirk=True),
        _v1_mixed("Mixed_5c", 384, (192, 384), (48, 128), 128),
    ),
    "logits": ("conv", "Logits/Conv2d_0c_1x1"),
    "aux": None,
}


# --- Inception-v2 (inception_v2.py, use_separable_conv: every op SAME) ------------
def _v2_mixed(scope, b0, b1, b2, b3, pool="avg"):
    pool_op = _avg("AvgPool_0a_3x3", 3) if pool == "avg" else _max("MaxPool_0a_3x3", 3)
    return ("mixed", scope, (
        (_conv("Conv2d_0a_1x1", b0, 1),),
        (_conv("Conv2d_0a_1x1", b1[0], 1), _conv("Conv2d_0b_3x3", b1[1], 3)),
        (_conv("Conv2d_0a_1x1", b2[0], 1), _conv("Conv2d_0b_3x3", b2[1], 3),
         _conv("Conv2d_0c_3x3", b2[1], 3)),
        (pool_op, _conv("Conv2d_0b_1x1", b3, 1)),
    ))


def _v2_reduction(scope, b0, b1):
    return ("mixed", scope, (
        (_conv("Conv2d_0a_1x1", b0[0], 1), _conv("Conv2d_1a_3x3", b0[1], 3, 2)),
        (_conv("Conv2d_0a_1x1", b1[0], 1), _conv("Conv2d_0b_3x3", b1[1], 3),
         _conv("Conv2d_1a_3x3", b1[1], 3, 2)),
        (_max("MaxPool_1a_3x3", 3, 2),),
    ))


INCEPTION_V2 = {
    "root": "InceptionV2",
    "body": (
        # depthwise multiplier min(int(64 / 3), 8) = 8
        ("sepconv", "Conv2d_1a_7x7", 64, 7, 8, 2),
        _max("MaxPool_2a_3x3", 3, 2),
        _conv("Conv2d_2b_1x1", 64, 1),
        _conv("Conv2d_2c_3x3", 192, 3),
        _max("MaxPool_3a_3x3", 3, 2),
        _v2_mixed("Mixed_3b", 64, (64, 64), (64, 96), 32),
        _v2_mixed("Mixed_3c", 64, (64, 96), (64, 96), 64),
        _v2_reduction("Mixed_4a", (128, 160), (64, 96)),
        _v2_mixed("Mixed_4b", 224, (64, 96), (96, 128), 128),
        _v2_mixed("Mixed_4c", 192, (96, 128), (96, 128), 128),
        _v2_mixed("Mixed_4d", 160, (128, 160), (128, 160), 96),
        _v2_mixed("Mixed_4e", 96, (128, 192), (160, 192), 96),
        _v2_reduction("Mixed_5a", (128, 192), (192, 256)),
        _v2_mixed("Mixed_5b", 352, (192, 320), (160, 224), 128),
        _v2_mixed("Mixed_5c", 352, (192, 320), (192, 224), 128, pool="max"),
    ),
    "logits": ("conv", "Logits/Conv2d_1c_1x1"),
    "aux": None,
}


# --- Inception-v3 (inception_v3.py: VALID stem, SAME blocks) ----------------------
def _v3_35(scope, pool_filters, quirk=False):
    b1 = ((_conv("Conv2d_0b_1x1", 48, 1), _conv("Conv_1_0c_5x5", 64, 5)) if quirk
          else (_conv("Conv2d_0a_1x1", 48, 1), _conv("Conv2d_0b_5x5", 64, 5)))
    return ("mixed", scope, (
        (_conv("Conv2d_0a_1x1", 64, 1),),
        b1,
        (_conv("Conv2d_0a_1x1", 64, 1), _conv("Conv2d_0b_3x3", 96, 3),
         _conv("Conv2d_0c_3x3", 96, 3)),
        (_avg("AvgPool_0a_3x3", 3), _conv("Conv2d_0b_1x1", pool_filters, 1)),
    ))


def _v3_17(scope, w):
    return ("mixed", scope, (
        (_conv("Conv2d_0a_1x1", 192, 1),),
        (_conv("Conv2d_0a_1x1", w, 1), _conv("Conv2d_0b_1x7", w, (1, 7)),
         _conv("Conv2d_0c_7x1", 192, (7, 1))),
        (_conv("Conv2d_0a_1x1", w, 1), _conv("Conv2d_0b_7x1", w, (7, 1)),
         _conv("Conv2d_0c_1x7", w, (1, 7)), _conv("Conv2d_0d_7x1", w, (7, 1)),
         _conv("Conv2d_0e_1x7", 192, (1, 7))),
        (_avg("AvgPool_0a_3x3", 3), _conv("Conv2d_0b_1x1", 192, 1)),
    ))


def _v3_8(scope, second_3x1):
    return ("mixed", scope, (
        (_conv("Conv2d_0a_1x1", 320, 1),),
        (_conv("Conv2d_0a_1x1", 384, 1),
         ("split", (_conv("Conv2d_0b_1x3", 384, (1, 3)),
                    _conv(second_3x1, 384, (3, 1))))),
        (_conv("Conv2d_0a_1x1", 448, 1), _conv("Conv2d_0b_3x3", 384, 3),
         ("split", (_conv("Conv2d_0c_1x3", 384, (1, 3)),
                    _conv("Conv2d_0d_3x1", 384, (3, 1))))),
        (_avg("AvgPool_0a_3x3", 3), _conv("Conv2d_0b_1x1", 192, 1)),
    ))


INCEPTION_V3 = {
    "root": "InceptionV3",
    "body": (
        _conv("Conv2d_1a_3x3", 32, 3, 2, "VALID"),
        _conv("Conv2d_2a_3x3", 32, 3, 1, "VALID"),
        _conv("Conv2d_2b_3x3", 64, 3, 1, "SAME"),
        _max("MaxPool_3a_3x3", 3, 2, "VALID"),
        _conv("Conv2d_3b_1x1", 80, 1, 1, "VALID"),
        _conv("Conv2d_4a_3x3", 192, 3, 1, "VALID"),
        _max("MaxPool_5a_3x3", 3, 2, "VALID"),
        _v3_35("Mixed_5b", 32),
        _v3_35("Mixed_5c", 64, quirk=True),
        _v3_35("Mixed_5d", 64),
        ("mixed", "Mixed_6a", (
            (_conv("Conv2d_1a_1x1", 384, 3, 2, "VALID"),),
            (_conv("Conv2d_0a_1x1", 64, 1), _conv("Conv2d_0b_3x3", 96, 3),
             _conv("Conv2d_1a_1x1", 96, 3, 2, "VALID")),
            (_max("MaxPool_1a_3x3", 3, 2, "VALID"),),
        )),
        _v3_17("Mixed_6b", 128),
        _v3_17("Mixed_6c", 160),
        _v3_17("Mixed_6d", 160),
        _v3_17("Mixed_6e", 192),
        ("endpoint", "Mixed_6e"),
        ("mixed", "Mixed_7a", (
            (_conv("Conv2d_0a_1x1", 192, 1), _conv("Conv2d_1a_3x3", 320, 3, 2, "VALID")),
            (_conv("Conv2d_0a_1x1", 192, 1), _conv("Conv2d_0b_1x7", 192, (1, 7)),
             _conv("Conv2d_0c_7x1", 192, (7, 1)),
             _conv("Conv2d_1a_3x3", 192, 3, 2, "VALID")),
            (_max("MaxPool_1a_3x3", 3, 2, "VALID"),),
        )),
        _v3_8("Mixed_7b", "Conv2d_0b_3x1"),
        _v3_8("Mixed_7c", "Conv2d_0c_3x1"),
    ),
    "logits": ("conv", "Logits/Conv2d_1c_1x1"),
    # v3 names its aux conv after the (possibly shrunk) kernel: Conv2d_2a_{k}x{k}.
    "aux": {"tap": "Mixed_6e", "conv2": "AuxLogits/Conv2d_2a_{}x{}",
            "logits": ("conv", "AuxLogits/Conv2d_2b_1x1")},
}


# --- Inception-v4 (inception_v4.py) -----------------------------------------------
_V4_A = (
    (_conv("Conv2d_0a_1x1", 96, 1),),
    (_conv("Conv2d_0a_1x1", 64, 1), _conv("Conv2d_0b_3x3", 96, 3)),
    (_conv("Conv2d_0a_1x1", 64, 1), _conv("Conv2d_0b_3x3", 96, 3),
     _conv("Conv2d_0c_3x3", 96, 3)),
    (_avg("AvgPool_0a_3x3", 3), _conv("Conv2d_0b_1x1", 96, 1)),
)
_V4_B = (
    (_conv("Conv2d_0a_1x1", 384, 1),),
    (_conv("Conv2d_0a_1x1", 192, 1), _conv("Conv2d_0b_1x7", 224, (1, 7)),
     _conv("Conv2d_0c_7x1", 256, (7, 1))),
    (_conv("Conv2d_0a_1x1", 192, 1), _conv("Conv2d_0b_7x1", 192, (7, 1)),
     _conv("Conv2d_0c_1x7", 224, (1, 7)), _conv("Conv2d_0d_7x1", 224, (7, 1)),
     _conv("Conv2d_0e_1x7", 256, (1, 7))),
    (_avg("AvgPool_0a_3x3", 3), _conv("Conv2d_0b_1x1", 128, 1)),
)
_V4_C = (
    (_conv("Conv2d_0a_1x1", 256, 1),),
    (_conv("Conv2d_0a_1x1", 384, 1),
     ("split", (_conv("Conv2d_0b_1x3", 256, (1, 3)), _conv("Conv2d_0c_3x1", 256, (3, 1))))),
    (_conv("Conv2d_0a_1x1", 384, 1), _conv("Conv2d_0b_3x1", 448, (3, 1)),
     _conv("Conv2d_0c_1x3", 512, (1, 3)),
     ("split", (_conv("Conv2d_0d_1x3", 256, (1, 3)), _conv("Conv2d_0e_3x1", 256, (3, 1))))),
    (_avg("AvgPool_0a_3x3", 3), _conv("Conv2d_0b_1x1", 256, 1)),
)

INCEPTION_V4 = {
    "root": "InceptionV4",
    "body": (
        _conv("Conv2d_1a_3x3", 32, 3, 2, "VALID"),
        _conv("Conv2d_2a_3x3", 32, 3, 1, "VALID"),
        _conv("Conv2d_2b_3x3", 64, 3),
        ("mixed", "Mixed_3a", (
            (_max("MaxPool_0a_3x3", 3, 2, "VALID"),),
            (_conv("Conv2d_0a_3x3", 96, 3, 2, "VALID"),),
        )),
        ("mixed", "Mixed_4a", (
            (_conv("Conv2d_0a_1x1", 64, 1), _conv("Conv2d_1a_3x3", 96, 3, 1, "VALID")),
            (_conv("Conv2d_0a_1x1", 64, 1), _conv("Conv2d_0b_1x7", 64, (1, 7)),
             _conv("Conv2d_0c_7x1", 64, (7, 1)),
             _conv("Conv2d_1a_3x3", 96, 3, 1, "VALID")),
        )),
        ("mixed", "Mixed_5a", (
            (_conv("Conv2d_1a_3x3", 192, 3, 2, "VALID"),),
            (_max("MaxPool_1a_3x3", 3, 2, "VALID"),),
        )),
        *(("mixed", f"Mixed_5{c}", _V4_A) for c in "bcde"),
        ("mixed", "Mixed_6a", (
            (_conv("Conv2d_1a_3x3", 384, 3, 2, "VALID"),),
            (_conv("Conv2d_0a_1x1", 192, 1), _conv("Conv2d_0b_3x3", 224, 3),
             _conv("Conv2d_1a_3x3", 256, 3, 2, "VALID")),
            (_max("MaxPool_1a_3x3", 3, 2, "VALID"),),
        )),
        *(("mixed", f"Mixed_6{c}", _V4_B) for c in "bcdefgh"),
        ("endpoint", "Mixed_6h"),
        ("mixed", "Mixed_7a", (
            (_conv("Conv2d_0a_1x1", 192, 1), _conv("Conv2d_1a_3x3", 192, 3, 2, "VALID")),
            (_conv("Conv2d_0a_1x1", 256, 1), _conv("Conv2d_0b_1x7", 256, (1, 7)),
             _conv("Conv2d_0c_7x1", 320, (7, 1)),
             _conv("Conv2d_1a_3x3", 320, 3, 2, "VALID")),
            (_max("MaxPool_1a_3x3", 3, 2, "VALID"),),
        )),
        *(("mixed", f"Mixed_7{c}", _V4_C) for c in "bcd"),
    ),
    "logits": ("fc", "Logits/Logits"),
    "aux": {"tap": "Mixed_6h", "conv2": "AuxLogits/Conv2d_2a",
            "logits": ("fc", "AuxLogits/Aux_logits")},
}


# --- Inception-ResNet-v2 (inception_resnet_v2.py, output_stride 16) ---------------
_BLOCK35 = (
    (_conv("Conv2d_1x1", 32, 1),),
    (_conv("Conv2d_0a_1x1", 32, 1), _conv("Conv2d_0b_3x3", 32, 3)),
    (_conv("Conv2d_0a_1x1", 32, 1), _conv("Conv2d_0b_3x3", 48, 3),
     _conv("Conv2d_0c_3x3", 64, 3)),
)
_BLOCK17 = (
    (_conv("Conv2d_1x1", 192, 1),),
    (_conv("Conv2d_0a_1x1", 128, 1), _conv("Conv2d_0b_1x7", 160, (1, 7)),
     _conv("Conv2d_0c_7x1", 192, (7, 1))),
)
_BLOCK8 = (
    (_conv("Conv2d_1x1", 192, 1),),
    (_conv("Conv2d_0a_1x1", 192, 1), _conv("Conv2d_0b_1x3", 224, (1, 3)),
     _conv("Conv2d_0c_3x1", 256, (3, 1))),
)


def _repeat(group, block, branches, count, scale):
    """slim.repeat: scopes ``<group>/<block>_1`` ... ``<group>/<block>_<count>``."""
    return tuple(("residual", f"{group}/{block}_{n}", branches, scale, True)
                 for n in range(1, count + 1))


INCEPTION_RESNET_V2 = {
    "root": "InceptionResnetV2",
    "body": (
        _conv("Conv2d_1a_3x3", 32, 3, 2, "VALID"),
        _conv("Conv2d_2a_3x3", 32, 3, 1, "VALID"),
        _conv("Conv2d_2b_3x3", 64, 3),
        _max("MaxPool_3a_3x3", 3, 2, "VALID"),
        _conv("Conv2d_3b_1x1", 80, 1, 1, "VALID"),
        _conv("Conv2d_4a_3x3", 192, 3, 1, "VALID"),
        _max("MaxPool_5a_3x3", 3, 2, "VALID"),
        ("mixed", "Mixed_5b", (
            (_conv("Conv2d_1x1", 96, 1),),
            (_conv("Conv2d_0a_1x1", 48, 1), _conv("Conv2d_0b_5x5", 64, 5)),
            (_conv("Conv2d_0a_1x1", 64, 1), _conv("Conv2d_0b_3x3", 96, 3),
             _conv("Conv2d_0c_3x3", 96, 3)),
            (_avg("AvgPool_0a_3x3", 3), _conv("Conv2d_0b_1x1", 64, 1)),
        )),
        *_repeat("Repeat", "block35", _BLOCK35, 10, 0.17),
        ("mixed", "Mixed_6a", (
            (_conv("Conv2d_1a_3x3", 384, 3, 2, "VALID"),),
            (_conv("Conv2d_0a_1x1", 256, 1), _conv("Conv2d_0b_3x3", 256, 3),
             _conv("Conv2d_1a_3x3", 384, 3, 2, "VALID")),
            (_max("MaxPool_1a_3x3", 3, 2, "VALID"),),
        )),
        *_repeat("Repeat_1", "block17", _BLOCK17, 20, 0.10),
        ("endpoint", "PreAuxLogits"),
        ("mixed", "Mixed_7a", (
            (_conv("Conv2d_0a_1x1", 256, 1), _conv("Conv2d_1a_3x3", 384, 3, 2, "VALID")),
            (_conv("Conv2d_0a_1x1", 256, 1), _conv("Conv2d_1a_3x3", 288, 3, 2, "VALID")),
            (_conv("Conv2d_0a_1x1", 256, 1), _conv("Conv2d_0b_3x3", 288, 3),
             _conv("Conv2d_1a_3x3", 320, 3, 2, "VALID")),
            (_max("MaxPool_1a_3x3", 3, 2, "VALID"),),
        )),
        *_repeat("Repeat_2", "block8", _BLOCK8, 9, 0.20),
        ("residual", "Block8", _BLOCK8, 1.0, False),
        _conv("Conv2d_7b_1x1", 1536, 1),
    ),
    "logits": ("fc", "Logits/Logits"),
    "aux": {"tap": "PreAuxLogits", "conv2": "AuxLogits/Conv2d_2a_5x5",
            "logits": ("fc", "AuxLogits/Logits")},
}

NETS = {
    "inception_v1": INCEPTION_V1,
    "inception_v2": INCEPTION_V2,
    "inception_v3": INCEPTION_V3,
    "inception_v4": INCEPTION_V4,
    "inception_resnet_v2": INCEPTION_RESNET_V2,
}


# --- variables ---------------------------------------------------------------------
class SlimVariables:
    """The checkpoint's variables, by full TF-Slim name, made on first use.

    Values are drawn from a generator seeded by the name alone, so they do not
    depend on evaluation order: He-scaled kernels, random BN statistics (positive
    variances around 1), random biases. After :meth:`freeze`, asking for a name
    that does not exist is an error (a second pass must reuse the same set).
    """

    def __init__(self, seed=0):
        self.seed = seed
        self.arrays = {}
        self.frozen = False

    def freeze(self):
        self.frozen = True
        return self

    def get(self, name, shape, gain=2.0):
        shape = tuple(int(d) for d in shape)
        if name in self.arrays:
            if self.arrays[name].shape != shape:
                raise ValueError(f"{name}: shape {shape} != {self.arrays[name].shape}")
            return self.arrays[name]
        if self.frozen:
            raise KeyError(f"{name} was not created by the first pass")
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode("utf8"))])
        kind = name.rsplit("/", 1)[-1]
        if kind in ("weights", "depthwise_weights", "pointwise_weights"):
            # He scaling (gain 2) before a ReLU; gain 1 for logits.
            fan_in = shape[0] * shape[1] if kind == "depthwise_weights" \
                else int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(gain / fan_in), shape)
        elif kind == "moving_variance":
            # 1 / U(0.75, 1.25): positive, and E[1 / variance] = 1 keeps the
            # activations' scale through a hundred layers.
            value = 1.0 / rng.uniform(0.75, 1.25, shape)
        elif kind in ("moving_mean", "beta"):
            value = rng.normal(0.0, 0.1, shape)
        elif kind == "biases":
            value = rng.normal(0.0, 0.1, shape)
        else:
            raise ValueError(f"unknown variable kind {name}")
        self.arrays[name] = value.astype(np.float32)
        return self.arrays[name]


# --- interpreter ---------------------------------------------------------------------
def _conv_bn_relu(tf, x, op, prefix, store):
    _, scope, filters, (kh, kw), stride, padding = op
    name = f"{prefix}/{scope}"
    w = store.get(f"{name}/weights", (kh, kw, x.shape[-1], filters))
    y = tf.nn.conv2d(x, w, strides=stride, padding=padding)
    y = tf.nn.batch_normalization(
        y, store.get(f"{name}/BatchNorm/moving_mean", (filters,)),
        store.get(f"{name}/BatchNorm/moving_variance", (filters,)),
        offset=store.get(f"{name}/BatchNorm/beta", (filters,)), scale=None,
        variance_epsilon=BN_EPSILON)
    return tf.nn.relu(y)


def _apply(tf, x, ops, prefix, store, endpoints):
    for op in ops:
        kind = op[0]
        if kind == "conv":
            x = _conv_bn_relu(tf, x, op, prefix, store)
        elif kind in ("max", "avg"):
            _, _, size, stride, padding = op
            pool = tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d
            x = pool(x, ksize=size, strides=stride, padding=padding)
        elif kind == "split":
            x = tf.concat([_apply(tf, x, (sub,), prefix, store, endpoints)
                           for sub in op[1]], axis=3)
        elif kind == "mixed":
            _, scope, branches = op
            x = tf.concat([_apply(tf, x, ops_i, f"{prefix}/{scope}/Branch_{i}", store,
                                  endpoints)
                           for i, ops_i in enumerate(branches)], axis=3)
        elif kind == "residual":
            _, scope, branches, scale, relu = op
            mixed = tf.concat([_apply(tf, x, ops_i, f"{prefix}/{scope}/Branch_{i}",
                                      store, endpoints)
                               for i, ops_i in enumerate(branches)], axis=3)
            name = f"{prefix}/{scope}/Conv2d_1x1"
            # gain 1: no ReLU follows the projection itself; keeps IRv2's 40 sums
            # (and so its logits and their float32 rounding) small.
            w = store.get(f"{name}/weights", (1, 1, mixed.shape[-1], x.shape[-1]),
                          gain=1.0)
            up = tf.nn.conv2d(mixed, w, strides=1, padding="SAME")
            up = tf.nn.bias_add(up, store.get(f"{name}/biases", (x.shape[-1],)))
            x = x + scale * up
            if relu:
                x = tf.nn.relu(x)
        elif kind == "sepconv":
            _, scope, filters, size, multiplier, stride = op
            name = f"{prefix}/{scope}"
            cin = x.shape[-1]
            dw = store.get(f"{name}/depthwise_weights", (size, size, cin, multiplier))
            pw = store.get(f"{name}/pointwise_weights", (1, 1, cin * multiplier, filters))
            y = tf.nn.separable_conv2d(x, dw, pw, strides=(1, stride, stride, 1),
                                       padding="SAME")
            y = tf.nn.bias_add(y, store.get(f"{name}/biases", (filters,)))
            x = tf.nn.relu(y)
        elif kind == "endpoint":
            endpoints[op[1]] = x
        else:
            raise ValueError(f"unknown op {op!r}")
    return x


def _logits(tf, x, head, prefix, store, classes):
    """A biased 1x1 conv (``"conv"``) or fully connected layer (``"fc"``) on a
    (batch, 1, 1, channels) or flattened map."""
    kind, scope = head
    name = f"{prefix}/{scope}"
    cin = x.shape[-1]
    if kind == "conv":
        w = store.get(f"{name}/weights", (1, 1, cin, classes), gain=1.0)
        y = tf.nn.conv2d(x, w, strides=1, padding="SAME")
        y = tf.squeeze(y, axis=(1, 2))
    else:
        w = store.get(f"{name}/weights", (cin, classes), gain=1.0)
        y = tf.matmul(tf.reshape(x, (-1, cin)), w)
    return tf.nn.bias_add(y, store.get(f"{name}/biases", (classes,)))


def _aux(tf, x, spec, prefix, store, classes):
    x = tf.nn.avg_pool2d(x, ksize=5, strides=3, padding="VALID")
    x = _conv_bn_relu(tf, x, _conv("AuxLogits/Conv2d_1b_1x1", 128, 1), prefix, store)
    # The kernel is the remaining map (TF-Slim: the map's size, or min(map, 5)).
    kh, kw = min(int(x.shape[1]), 5), min(int(x.shape[2]), 5)
    if spec["logits"][0] == "fc":  # v4 / IRv2: the whole map, whatever its size
        kh, kw = int(x.shape[1]), int(x.shape[2])
    conv2 = spec["conv2"].format(kh, kw)
    x = _conv_bn_relu(tf, x, _conv(conv2, 768, (kh, kw), 1, "VALID"), prefix, store)
    if spec["logits"][0] == "fc":
        x = tf.reshape(x, (-1, int(np.prod(x.shape[1:]))))
    return _logits(tf, x, spec["logits"], prefix, store, classes)


def forward(net: str, images: np.ndarray, store: SlimVariables, *, aux=False,
            classes=1001) -> dict:
    """TF-Slim ``net`` at inference on channels-last ``images``.

    Returns ``{"logits": (batch, classes)}`` and, with ``aux``, ``"aux"``; creates
    the variables it uses in ``store`` (unless frozen).
    """
    import tensorflow as tf

    spec = NETS[net]
    prefix = spec["root"]
    endpoints = {}
    x = tf.constant(np.asarray(images, np.float32))
    x = _apply(tf, x, spec["body"], prefix, store, endpoints)
    pooled = tf.reduce_mean(x, axis=(1, 2), keepdims=True)
    out = {"logits": _logits(tf, pooled, spec["logits"], prefix, store, classes)}
    if aux:
        if spec["aux"] is None:
            raise ValueError(f"{net} has no auxiliary head in TF-Slim")
        out["aux"] = _aux(tf, endpoints[spec["aux"]["tap"]], spec["aux"], prefix,
                          store, classes)
    return {k: v.numpy() for k, v in out.items()}


# --- checkpoints ----------------------------------------------------------------------
def checkpoint_tensors(store: SlimVariables, global_step=0, drop=()) -> dict:
    """The checkpoint's content: every variable (float32) and ``global_step``
    (int64); names containing any of ``drop`` are left out."""
    tensors = {k: v for k, v in store.arrays.items()
               if not any(part in k for part in drop)}
    tensors["global_step"] = np.asarray(global_step, np.int64)
    return tensors


def write_checkpoint(tensors: dict, path: str, version="v1") -> str:
    """Writes a name-keyed TF checkpoint; returns what to read it by.

    ``v1``: the single file ``path`` (tf.compat.v1 Saver's V1 format, the one of
    the 2016 TF-Slim archives). ``v2``: ``path.index`` + ``path.data-00000-of-00001``
    and a ``checkpoint`` state file beside them, as ``Saver.save`` leaves them.
    """
    import tensorflow as tf

    names = sorted(tensors)
    values = [tf.constant(tensors[n]) for n in names]
    if version == "v1":
        tf.raw_ops.Save(filename=path, tensor_names=names, data=values)
    elif version == "v2":
        tf.raw_ops.SaveV2(prefix=path, tensor_names=names,
                          shape_and_slices=[""] * len(names), tensors=values)
        base = os.path.basename(path)
        with open(os.path.join(os.path.dirname(path), "checkpoint"), "w") as f:
            f.write(f'model_checkpoint_path: "{base}"\n'
                    f'all_model_checkpoint_paths: "{base}"\n')
    else:
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    return path


def write_archive(directory: str, archive: str) -> str:
    """Packs the files of ``directory`` into ``archive`` (.tar.gz), at its top level.

    Compression level 0 (stored deflate blocks, still gzip): random weights do not
    compress, so any effort would only cost test time.
    """
    with tarfile.open(archive, "w:gz", compresslevel=0) as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(os.path.join(directory, name), arcname=name)
    return archive
