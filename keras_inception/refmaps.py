"""Reference weight layouts: how our weights map to the upstream checkpoints' tensors.

A layout is a readable list of :class:`Entry`: one per upstream tensor, giving its
key and shape as published, the layer and weight of ours it becomes, and the
explicit transform between the two. Each family module defines its layouts with the
small helpers below (``conv_bn`` / ``dense`` per upstream naming style); the
committed manifests (``keras_inception/manifests/*.json``) record them, and the
weight converters read them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["Entry", "LayoutBuilder", "apply_transform", "build_layout"]

# Transforms from an upstream tensor to ours (all exact, no arithmetic but layout).
IDENTITY = "identity"
CONV_OIHW = "conv_oihw"          # torch conv (out, in, kh, kw) -> keras (kh, kw, in, out)
DENSE_OI = "dense_oi"            # torch linear (out, in) -> keras (in, out)
DEPTHWISE_TORCH = "depthwise_torch"  # torch (in*mult, 1, kh, kw) -> keras (kh, kw, in, mult)
# torchvision GoogLeNet's aux fc1 (1024, 2048) reads a flattened (C, H, W) =
# (128, 4, 4) map; ours flattens (H, W, C) whatever the data format.
DENSE_OI_CHW4X4 = "dense_oi_chw4x4"
SLIM_LOGITS = "slim_logits"      # TF-Slim 1x1 conv logits (1, 1, in, out) -> dense (in, out)
# Upstream BN gamma where ours has none: folded exactly into the convolution before
# the BN (kernel and moving mean scaled per output channel).
FOLD_GAMMA = "fold_gamma"
SKIP = "skip"                    # bookkeeping tensors (num_batches_tracked)

# Upstream tensors of a head carry 1001 classes where class 0 is the background.
BACKGROUND_CLASS_HEADS = ("tf_slim",)
# Upstream checkpoints with no ImageNet classifier (facenet's face embeddings).
HEADLESS_SOURCES = ("facenet",)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One upstream tensor and where it goes in our model.

    Attributes:
        key: the tensor's key in the upstream checkpoint.
        shape: its shape as published (upstream layout).
        layer: the name of our layer it becomes; None for bookkeeping tensors.
        weight: the name of our weight in that layer (``kernel``, ``gamma``, ...).
        transform: how to turn it into ours (``identity``, ``conv_oihw``, ...).

    Example:
        >>> from keras_inception.refmaps import Entry
        >>> Entry("fc.bias", (10,), "predictions", "bias", "identity").as_row()
        ['fc.bias', [10], 'predictions', 'bias', 'identity']
    """

    key: str
    shape: Tuple[int, ...]
    layer: Optional[str]
    weight: Optional[str]
    transform: str

    def as_row(self):
        """The entry as the list row the manifests store.

        Returns:
            ``[key, list(shape), layer, weight, transform]``.
        """
        return [self.key, list(self.shape), self.layer, self.weight, self.transform]


def _to_torch_shape(shape, transform):
    if transform == CONV_OIHW:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    if transform in (DENSE_OI, DENSE_OI_CHW4X4):
        i, o = shape
        return (o, i)
    if transform == DEPTHWISE_TORCH:
        kh, kw, i, m = shape
        return (i * m, 1, kh, kw)
    if transform == SLIM_LOGITS:
        i, o = shape
        return (1, 1, i, o)
    return tuple(shape)


def apply_transform(array: np.ndarray, transform: str) -> np.ndarray:
    """Turns an upstream tensor into our layout (see the transform constants).

    Args:
        array: the tensor as published.
        transform: one of the transform constants of this module (``conv_oihw``:
            torch ``(out, in, kh, kw)`` to Keras ``(kh, kw, in, out)``, ...);
            ``identity``, ``fold_gamma`` and ``skip`` leave it as it is.

    Returns:
        The array in our layout.

    Example:
        >>> import numpy as np
        >>> from keras_inception.refmaps import CONV_OIHW, apply_transform
        >>> apply_transform(np.zeros((64, 3, 7, 5)), CONV_OIHW).shape
        (7, 5, 3, 64)
    """
    if transform == CONV_OIHW:
        return np.transpose(array, (2, 3, 1, 0))
    if transform == DENSE_OI:
        return np.transpose(array, (1, 0))
    if transform == DENSE_OI_CHW4X4:
        out = array.shape[0]
        return array.reshape(out, -1, 4, 4).transpose(2, 3, 1, 0).reshape(-1, out)
    if transform == DEPTHWISE_TORCH:
        out, _, kh, kw = array.shape
        return np.transpose(array.reshape(out, 1, kh, kw), (2, 3, 0, 1))
    if transform == SLIM_LOGITS:
        return array.reshape(array.shape[-2], array.shape[-1])
    return array


class LayoutBuilder:
    """Collects the entries of one layout from a built model of ours.

    Our weights are looked up by layer name, so a layout written against a wrong
    name or a missing layer fails at once. A family's layout rules call the
    per-naming-style helpers (:meth:`slim_conv_bn`, :meth:`torch_conv_bn`, ...).

    Args:
        model: a built keras_inception model.
        classes_offset: classes the upstream heads have beyond ours (1 for
            TF-Slim's background class when ours has 1000).

    Attributes:
        entries: the :class:`Entry` list collected so far.

    Example:
        >>> import keras
        >>> from keras_inception.refmaps import LayoutBuilder
        >>> model = keras.Sequential([keras.Input((4,)),
        ...                           keras.layers.Dense(3, name="predictions")])
        >>> builder = LayoutBuilder(model)
        >>> builder.torch_dense("predictions", "fc")
        >>> [(e.key, e.shape, e.transform) for e in builder.entries]
        [('fc.weight', (3, 4), 'dense_oi'), ('fc.bias', (3,), 'identity')]
    """

    def __init__(self, model, classes_offset=0):
        self.model = model
        self.entries: List[Entry] = []
        self._shapes: Dict[str, Dict[str, Tuple[int, ...]]] = {}
        for layer in model.layers:
            if layer.weights:
                self._shapes[layer.name] = {
                    w.path.split("/")[-1]: tuple(w.shape) for w in layer.weights}
        self.classes_offset = classes_offset

    def has(self, layer: str) -> bool:
        """Whether the model has a weighted layer called ``layer``."""
        return layer in self._shapes

    def _shape(self, layer, weight):
        try:
            return self._shapes[layer][weight]
        except KeyError:
            raise KeyError(f"layout names {layer}/{weight}, which the model lacks") from None

    def add(self, key, layer, weight, transform, shape=None):
        """One entry: upstream ``key`` becomes our ``layer``'s ``weight``.

        Args:
            key: the upstream tensor key.
            layer: our layer name.
            weight: our weight name in that layer.
            transform: the transform constant.
            shape: the upstream shape (default: ours, mapped by ``transform``).
        """
        if shape is None:
            shape = _to_torch_shape(self._shape(layer, weight), transform)
        self.entries.append(Entry(key, tuple(int(d) for d in shape), layer, weight,
                                  transform))

    def extra(self, key, shape, transform):
        """An upstream tensor with no weight of ours (bookkeeping)."""
        self.entries.append(Entry(key, tuple(shape), None, None, transform))

    # --- one conv + BN block, per naming style -------------------------------------
    def slim_conv_bn(self, ours: str, scope: str):
        """TF-Slim ``scope/weights`` + ``scope/BatchNorm/{gamma,beta,moving_*}``."""
        self.add(f"{scope}/weights", f"{ours}_conv", "kernel", IDENTITY)
        bn = f"{ours}_bn"
        if "gamma" in self._shapes[bn]:
            self.add(f"{scope}/BatchNorm/gamma", bn, "gamma", IDENTITY)
        self.add(f"{scope}/BatchNorm/beta", bn, "beta", IDENTITY)
        self.add(f"{scope}/BatchNorm/moving_mean", bn, "moving_mean", IDENTITY)
        self.add(f"{scope}/BatchNorm/moving_variance", bn, "moving_variance", IDENTITY)

    def torch_conv_bn(self, ours: str, module: str, conv="conv", bn="bn",
                      batches_tracked=True):
        """torch ``module.conv.weight`` + ``module.bn.{weight,bias,running_*}``."""
        self.add(f"{module}.{conv}.weight", f"{ours}_conv", "kernel", CONV_OIHW)
        self.torch_bn(f"{ours}_bn", f"{module}.{bn}", batches_tracked=batches_tracked)

    def torch_bn(self, ours_bn: str, key: str, batches_tracked=True):
        """torch BatchNorm2d ``key.{weight,bias,running_mean,running_var}``; an
        upstream gamma where ours has none is recorded as :data:`FOLD_GAMMA`."""
        if "gamma" in self._shapes[ours_bn]:
            self.add(f"{key}.weight", ours_bn, "gamma", IDENTITY)
        else:
            self.entries.append(Entry(f"{key}.weight", self._shape(ours_bn, "beta"),
                                      ours_bn, "gamma", FOLD_GAMMA))
        self.add(f"{key}.bias", ours_bn, "beta", IDENTITY)
        self.add(f"{key}.running_mean", ours_bn, "moving_mean", IDENTITY)
        self.add(f"{key}.running_var", ours_bn, "moving_variance", IDENTITY)
        if batches_tracked:
            self.extra(f"{key}.num_batches_tracked", (), SKIP)

    def torch_dense(self, ours: str, module: str):
        """torch ``nn.Linear`` ``module.{weight,bias}`` into our dense ``ours``."""
        self.add(f"{module}.weight", ours, "kernel", DENSE_OI,
                 shape=self._head_shape(ours, "kernel", DENSE_OI))
        self.add(f"{module}.bias", ours, "bias", IDENTITY,
                 shape=self._head_shape(ours, "bias", IDENTITY))

    def slim_logits(self, ours: str, scope: str, conv=True):
        """TF-Slim logits: a biased 1x1 conv (v1, v3) or a fully connected layer."""
        transform = SLIM_LOGITS if conv else IDENTITY
        self.add(f"{scope}/weights", ours, "kernel", transform,
                 shape=self._head_shape(ours, "kernel", transform))
        self.add(f"{scope}/biases", ours, "bias", IDENTITY,
                 shape=self._head_shape(ours, "bias", IDENTITY))

    def _head_shape(self, layer, weight, transform):
        shape = list(_to_torch_shape(self._shape(layer, weight), transform))
        shape[0 if transform == DENSE_OI else -1] += self.classes_offset
        return tuple(shape)


def build_layout(model, rules: Callable[[LayoutBuilder], None], classes_offset=0):
    """Runs a family's layout ``rules`` against ``model`` and returns the entries.

    Args:
        model: a built model of the family.
        rules: a function that calls a :class:`LayoutBuilder`'s helpers (each
            family module's ``LAYOUTS`` values).
        classes_offset: see :class:`LayoutBuilder`.

    Returns:
        The list of :class:`Entry`, in upstream order.

    Example:
        >>> import keras
        >>> from keras_inception.refmaps import build_layout
        >>> model = keras.Sequential([keras.Input((4,)),
        ...                           keras.layers.Dense(3, name="predictions")])
        >>> rows = build_layout(model, lambda b: b.slim_logits(
        ...     "predictions", "Logits", conv=False), classes_offset=1)
        >>> [(e.key, e.shape) for e in rows]
        [('Logits/weights', (4, 4)), ('Logits/biases', (4,))]
    """
    builder = LayoutBuilder(model, classes_offset=classes_offset)
    rules(builder)
    return builder.entries
