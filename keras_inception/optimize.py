"""Inference-time graph optimisation: BatchNormalization folded into the layer before it.

In inference mode a BatchNormalization is a per-channel affine map,
``y = (x - mean) * gamma / sqrt(var + eps) + beta``, so when ``x`` comes straight
from a convolution or a dense layer the map can be folded into that layer's kernel
(scaled per output channel) and bias. Every Inception family normalises every
convolution this way, so a fused model runs one op where the plain model runs two
(and saves a full read and write of every activation), with the same outputs up to
float32 rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np

from keras_inception.layers import keras_class
from keras_inception.initializers import to_backend

__all__ = ["FusionError", "batchnorm_affine", "fuse_batchnorm"]


class FusionError(ValueError):
    """A BatchNormalization that :func:`fuse_batchnorm` cannot fold exactly.

    The message names every such layer and why; ``fuse_batchnorm(model,
    strict=False)`` keeps them as they are instead (the model stays exact, only
    those layers are not folded).

    Example:
        >>> import keras
        >>> from keras_inception.optimize import FusionError, fuse_batchnorm
        >>> x = keras.Input((4, 4, 3), name="image")
        >>> y = keras.layers.BatchNormalization(name="input_bn")(x)
        >>> try:
        ...     fuse_batchnorm(keras.Model(x, y))
        ... except FusionError as error:
        ...     print(str(error).splitlines()[1])  # doctest: +ELLIPSIS
        - input_bn: its input comes from 'image' (InputLayer), not a Conv, ...
    """


# The layers a following BatchNormalization folds into, by exact type (a subclass
# may compute anything; the zoo's own Conv2D, SeparableConv2D and BatchNormalization
# count as the Keras layer they compute another way: layers.keras_class), and the
# weight whose last axis (or last two, for a depthwise kernel: input channel x
# multiplier) indexes the output channels.
_SCALED_KERNEL = {
    keras.layers.Conv1D: "kernel",
    keras.layers.Conv2D: "kernel",
    keras.layers.Conv3D: "kernel",
    keras.layers.DepthwiseConv1D: "kernel",
    keras.layers.DepthwiseConv2D: "kernel",
    keras.layers.SeparableConv1D: "pointwise_kernel",
    keras.layers.SeparableConv2D: "pointwise_kernel",
    keras.layers.Dense: "kernel",
}
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
# The constructor argument that initialises each weight (set to the folded value while
# building, then restored).
_INITIALIZER = {"kernel": "kernel_initializer", "bias": "bias_initializer",
                "depthwise_kernel": "depthwise_initializer",
                "pointwise_kernel": "pointwise_initializer"}
_DEPTHWISE_INITIALIZER = {**_INITIALIZER, "kernel": "depthwise_initializer"}


@dataclasses.dataclass
class _Fold:
    layer: keras.layers.Layer  # the convolution or dense layer
    bn: keras.layers.BatchNormalization  # folded into it


def _graph(model):
    """The functional graph of ``model`` (a Sequential's is the Functional it wraps)."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(
                f"Sequential model {model.name!r} is not built: give it an "
                f"keras.Input first (or call it once on data).")
        return functional
    if hasattr(model, "_nodes_by_depth") and hasattr(model, "_outputs_struct"):
        return model
    raise TypeError(
        f"fuse_batchnorm needs a functional or Sequential keras.Model; "
        f"{model.name!r} is a subclassed {type(model).__name__}, whose call() it "
        f"cannot rewrite. Fold its BatchNormalization layers in its own code.")


def _nodes_in_order(graph):
    """The graph's nodes, producers before consumers (as Keras runs them)."""
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def _is_graph_model(layer) -> bool:
    return isinstance(layer, keras.Model) and (
        isinstance(layer, keras.Sequential) or hasattr(layer, "_nodes_by_depth"))


def _channel_axis(layer, rank: int) -> int:
    if isinstance(layer, keras.layers.Dense):
        return rank - 1
    return 1 if layer.data_format == "channels_first" else rank - 1


def _why_not(bn, bn_node, consumers, output_ids, calls):
    """Why ``bn_node`` cannot be folded (None if it can), and the layer it folds into."""
    if keras_class(bn) is not keras.layers.BatchNormalization:
        return f"it is a {type(bn).__name__}, a subclass whose call() may differ", None
    if calls[id(bn)] > 1:
        return "the layer is called more than once (shared)", None
    if bn_node.arguments.kwargs.get("training") is True:
        return ("it is called with training=True (batch statistics, which no "
                "fixed kernel reproduces)"), None
    (tensor,) = bn_node.input_tensors
    layer = tensor._keras_history.operation
    if keras_class(layer) not in _SCALED_KERNEL:
        return (f"its input comes from {layer.name!r} ({type(layer).__name__}), not "
                f"a Conv, DepthwiseConv, SeparableConv or Dense layer"), None
    if calls[id(layer)] > 1:
        return f"{layer.name!r} is called more than once (shared)", None
    if len(consumers.get(id(tensor), ())) > 1 or id(tensor) in output_ids:
        return (f"the output of {layer.name!r} is also used elsewhere (it must feed "
                f"only the BatchNormalization)"), None
    if layer.activation is not keras.activations.linear:
        return (f"{layer.name!r} applies an activation "
                f"({keras.activations.serialize(layer.activation)!r}) before it"), None
    if getattr(layer, "lora_enabled", False):
        return f"{layer.name!r} has LoRA enabled (its kernel is not a plain weight)", None
    if getattr(layer.dtype_policy, "quantization_mode", None):
        return f"{layer.name!r} is quantized", None
    rank = len(tensor.shape)
    if bn.axis % rank != _channel_axis(layer, rank):
        return (f"it normalises axis {bn.axis}, not the output channels of "
                f"{layer.name!r}"), None
    return None, layer


def _hidden_batchnorms(layer):
    """BatchNormalization layers inside ``layer`` (a custom layer or subclassed model)."""
    return [sub.name for sub in layer._flatten_layers(include_self=False)
            if isinstance(sub, keras.layers.BatchNormalization)]


def _plan(graph):
    """``({id(bn_node): _Fold}, [(layer name, reason)])`` for every BN of ``graph``."""
    nodes = list(_nodes_in_order(graph))
    consumers, calls = {}, {}
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node)
    output_ids = {id(t) for t in graph.outputs}
    folds, refused = {}, []
    for node in nodes:
        op = node.operation
        if isinstance(op, keras.layers.BatchNormalization):
            reason, layer = _why_not(op, node, consumers, output_ids, calls)
            if reason:
                refused.append((op.name, reason))
            else:
                folds[id(node)] = _Fold(layer, op)
        elif not _is_graph_model(op):
            refused += [(name, f"it is inside {op.name!r} ({type(op).__name__}), "
                         f"whose call() fuse_batchnorm cannot see into")
                        for name in _hidden_batchnorms(op)]
    return folds, refused


def _numpy(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def batchnorm_affine(bn) -> tuple:
    """The per-channel ``(scale, shift)`` an inference-mode BatchNormalization applies.

    ``bn(x) == x * scale + shift`` with ``scale = gamma / sqrt(moving_variance +
    epsilon)`` (gamma 1 without ``scale``) and ``shift = beta - moving_mean * scale``
    (beta 0 without ``center``), computed in float64.

    Args:
        bn: a built ``keras.layers.BatchNormalization``.

    Returns:
        ``(scale, shift)``, two float64 arrays of one value per channel.

    Raises:
        FusionError: ``moving_variance + epsilon`` is not positive and finite.

    Example:
        >>> import keras
        >>> from keras_inception.optimize import batchnorm_affine
        >>> bn = keras.layers.BatchNormalization(epsilon=0.0, scale=False)
        >>> bn.build((None, 2))
        >>> _ = bn.moving_variance.assign([4.0, 1.0])
        >>> _ = bn.moving_mean.assign([1.0, 2.0])
        >>> [a.tolist() for a in batchnorm_affine(bn)]
        [[0.5, 1.0], [-0.5, -2.0]]
    """
    mean, variance = _numpy(bn.moving_mean), _numpy(bn.moving_variance)
    denominator = variance + float(bn.epsilon)
    if not np.all(np.isfinite(denominator)) or np.any(denominator <= 0):
        raise FusionError(
            f"BatchNormalization {bn.name!r} has a moving_variance + epsilon that is "
            f"not positive and finite: it divides by zero or NaN, and folding it "
            f"would hide that. Check the weights it was loaded with.")
    scale = 1.0 / np.sqrt(denominator)
    if bn.scale:
        scale = scale * _numpy(bn.gamma)
    shift = (_numpy(bn.beta) if bn.center else np.zeros_like(mean)) - mean * scale
    return scale, shift


def _folded_weights(fold: _Fold) -> dict:
    """``{weight name: float64 value}`` of the fused layer (bias included)."""
    layer = fold.layer
    scale, shift = batchnorm_affine(fold.bn)
    weights = {w.name: _numpy(w) for w in layer.weights}
    bias = weights.pop("bias", np.zeros_like(scale))
    kernel = _SCALED_KERNEL[keras_class(layer)]
    if isinstance(layer, _DEPTHWISE):  # output channel c * multiplier + m
        weights[kernel] = weights[kernel] * scale.reshape(weights[kernel].shape[-2:])
    else:
        weights[kernel] = weights[kernel] * scale
    weights["bias"] = shift + bias * scale
    return weights


class _Value:
    """An initializer returning a fixed array: builds a layer with its final weights
    without drawing the random ones first."""

    def __init__(self, value):
        self.value = value

    def host(self, dtype):
        dtype = keras.backend.standardize_dtype(dtype or "float32")
        if dtype == "bfloat16":
            import ml_dtypes

            return self.value.astype(ml_dtypes.bfloat16)
        return self.value.astype(dtype)

    def __call__(self, shape, dtype=None):
        if tuple(shape) != self.value.shape:
            raise ValueError(f"expected shape {self.value.shape}, got {tuple(shape)}")
        return to_backend(self.host(dtype))


def _fused_layer(fold: _Fold, args, kwargs):
    """A copy of the fold's layer with a bias and its folded weights, called on ``args``."""
    layer = fold.layer
    weights = _folded_weights(fold)
    new = type(layer).from_config({**layer.get_config(), "use_bias": True})
    # Build with the folded values (no random draw: on JAX each one compiles), then
    # put the configured initializers back so the config is the original's.
    attrs = _DEPTHWISE_INITIALIZER if isinstance(layer, _DEPTHWISE) else _INITIALIZER
    configured = {attr: getattr(new, attr) for attr in attrs.values()
                  if hasattr(new, attr)}
    for name, value in weights.items():
        if attrs[name] in configured:
            setattr(new, attrs[name], _Value(value))
    outputs = new(*args, **kwargs)
    for attr, initializer in configured.items():
        setattr(new, attr, initializer)
    variables = {w.name: w for w in new.weights}
    if set(variables) != set(weights):  # a Keras change in weight names: never guess
        raise FusionError(f"{layer.name!r}: expected weights {sorted(weights)} after "
                          f"folding, got {sorted(variables)}.")
    for name, value in weights.items():  # had an initializer not been honoured
        expected = _Value(value).host(variables[name].dtype)
        if not np.array_equal(keras.ops.convert_to_numpy(variables[name]), expected):
            variables[name].assign(expected)
    return outputs


def fuse_batchnorm(model: keras.Model, *, strict: bool = True,
                   name: Optional[str] = None) -> keras.Model:
    """An inference model equal to ``model`` with its BatchNormalizations folded away.

    Every ``BatchNormalization`` that directly follows a ``Conv1D/2D/3D``,
    ``DepthwiseConv1D/2D``, ``SeparableConv1D/2D`` (its pointwise kernel) or
    ``Dense`` layer without activation, and is the only reader of that layer's
    output, is folded into it: the kernel is scaled per output channel by
    ``gamma / sqrt(moving_variance + epsilon)`` (gamma 1 without ``scale``) and the
    bias becomes ``beta + (bias - moving_mean) * scale``, computed in float64 and
    cast to the variables' dtype. The folded layer keeps its name and config, with
    ``use_bias=True``; the BatchNormalization layers disappear. Every other layer is
    reused as is (the fused model shares those layers' weights with ``model``, as
    :func:`keras_inception.transfer.replace_head` does); nested functional and
    Sequential models are fused recursively. Inputs, the output structure (a dict
    of aux heads included), the model name and the preprocessing recorded on
    ``model`` are kept.

    The result computes what ``model`` computes in inference mode, up to float32
    rounding (on every family: within 1e-5 of the output scale, as close to a
    float64 run as ``model`` is) and saves and loads as ``.keras``. It is for
    inference only: Keras lets you train it, but BatchNormalization is gone, so
    ``training=True`` no longer normalises with batch statistics and fine-tuning
    it is not fine-tuning ``model``. Fuse after training. What needs the
    ``*_bn`` layers (weight files and converters, ``feature_extractor``, the
    freezing helpers) works on ``model``, not on the fused model.

    Args:
        model: a functional or Sequential ``keras.Model`` (any keras_inception model,
            with or without top, aux heads, or a new head from ``transfer``).
        strict: raise :class:`FusionError` if some BatchNormalization cannot be
            folded exactly (after a non-linear layer, a shared input or layer, a
            ``training=True`` call, inside a custom layer); with False those are
            kept as they are.
        name: the fused model's name (default: ``model``'s, so the family's
            preprocessing default still applies).

    Returns:
        The fused ``keras.Model``.

    Raises:
        FusionError: with ``strict``, every BatchNormalization that cannot be
            folded, each with the reason; also a moving variance that is not
            positive (whatever ``strict``).
        TypeError: a subclassed model (its ``call`` cannot be rewritten).

    Example:
        >>> import keras_inception
        >>> from keras_inception.optimize import fuse_batchnorm
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=10)
        >>> fused = fuse_batchnorm(model)
        >>> len(model.layers) - len(fused.layers)  # one BatchNormalization per conv
        57
        >>> fused.get_layer("conv2d_1a_7x7_conv").use_bias, fused.output_shape
        (True, (None, 10))
    """
    graph = _graph(model)
    folds, refused = _plan(graph)
    if strict and refused:
        lines = "\n".join(f"- {bn}: {reason}" for bn, reason in refused)
        raise FusionError(
            f"{len(refused)} BatchNormalization layer(s) of {model.name!r} cannot be "
            f"folded exactly:\n{lines}\nPass strict=False to keep them unfolded (the "
            f"model stays exact), or move them after a convolution.")
    folded_by_layer = {id(fold.layer): fold for fold in folds.values()}
    values = {id(t): t for t in graph.inputs}  # original tensor -> new tensor
    nested = {}
    for node in _nodes_in_order(graph):
        if any(id(t) not in values for t in node.input_tensors):
            continue  # not computable from the inputs: Keras skips it too
        op = node.operation
        if id(node) in folds:  # the folded layer already produced this output
            (source,) = node.input_tensors
            (target,) = node.outputs
            values[id(target)] = values[id(source)]
            continue
        args, kwargs = node.arguments.fill_in(values)
        if id(op) in folded_by_layer:
            outputs = _fused_layer(folded_by_layer[id(op)], args, kwargs)
        elif _is_graph_model(op) and any(_plan(_graph(op))):
            if id(op) not in nested:  # one fused copy per nested model, even if shared
                nested[id(op)] = fuse_batchnorm(op, strict=strict)
            outputs = nested[id(op)](*args, **kwargs)
        else:
            outputs = op(*args, **kwargs)
        for original, new in zip(node.outputs, keras.tree.flatten(outputs)):
            values[id(original)] = new
    missing = [t.name for t in graph.outputs if id(t) not in values]
    if missing:
        raise ValueError(f"Outputs {missing} of {model.name!r} are not connected to "
                         f"its inputs.")
    outputs = keras.tree.map_structure(lambda t: values[id(t)], graph._outputs_struct)
    fused = keras.Model(graph._inputs_struct, outputs, name=name or model.name)
    from keras_inception.preprocessing import MODEL_ATTRIBUTE

    if hasattr(model, MODEL_ATTRIBUTE):
        setattr(fused, MODEL_ATTRIBUTE, getattr(model, MODEL_ATTRIBUTE))
    return fused
