"""Parameters and multiply-accumulates (MACs), per layer, per stage and in total.

The cost of a network is dominated by its convolutions and dense layers; those
are what :func:`model_stats` counts, from the layer configurations and the shapes
of the real model's graph (nothing is run):

- ``Conv1D/2D/3D``: ``output pixels x kernel size`` (``kh * kw * C_in/groups *
  C_out`` per output pixel);
- ``DepthwiseConv2D``: ``output pixels x kh * kw * C_in * multiplier``;
- ``SeparableConv2D``: its depthwise part plus its pointwise part
  (``output pixels x C_in * multiplier * C_out``);
- ``Dense``: ``units x inputs`` (times any non-batch leading dimensions).

Not counted (0 MACs): biases (additions, not multiply-accumulates), batch
normalisation, activations, pooling, padding, concatenations, residual additions
and scalings. Together they are a few percent of a forward pass's arithmetic and
are memory-bound rather than compute-bound; a floating-point operation count for a
roofline is ``2 x MACs`` (:attr:`ModelStats.flops`). Counts are per image.

Stages are those of the family's :class:`~keras_inception.registry.ModelInfo`: a
stage holds the layers its end layer depends on that no earlier stage's end layer
depends on (all branches of its modules), as the freezing helpers of
:mod:`keras_inception.transfer` use them. Layers after the last stage form the
``head`` group (classifier) and one group per auxiliary head (``aux``, ``aux1``,
``aux2``).

Example:
    >>> import keras_inception
    >>> from keras_inception.stats import model_stats
    >>> model = keras_inception.GoogLeNet(input_shape=(64, 64, 3))
    >>> stats = model_stats(model)
    >>> stats.params == model.count_params()
    True
    >>> [s.name for s in stats.stages]
    ['conv', 'stem', 'mixed_3', 'mixed_4', 'mixed_5', 'head']
    >>> sum(s.macs for s in stats.stages) == stats.macs
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import keras

from keras_inception.transfer import _Graph, _head_groups, _stage_layers

__all__ = ["LayerStats", "GroupStats", "ModelStats", "layer_macs", "model_stats",
           "count_macs", "stats_table"]

HEAD = "head"  # the group of the main classifier's layers (after the last stage)


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """The cost of one layer.

    Attributes:
        name: the layer's name.
        type: its class name (``"Conv2D"``).
        group: the stage or head it belongs to (``"mixed_4"``, ``"head"``,
            ``"aux1"``); ``""`` for a model that is not of a registered family.
        output_shape: its output shape, without the batch dimension.
        params: its parameter count (every weight, BatchNormalization's moving
            statistics included, as ``count_params()``).
        macs: its multiply-accumulates per image (see the module docstring).

    Example:
        >>> import keras
        >>> from keras_inception.stats import model_stats
        >>> image = keras.Input((8, 8, 3))
        >>> net = keras.Model(image, keras.layers.Conv2D(4, 3, name="c")(image))
        >>> layer = model_stats(net).layers[0]
        >>> layer.name, layer.type, layer.output_shape, layer.params, layer.macs
        ('c', 'Conv2D', (6, 6, 4), 112, 3888)
    """

    name: str
    type: str
    group: str
    output_shape: Tuple[Optional[int], ...]
    params: int
    macs: int


@dataclasses.dataclass(frozen=True)
class GroupStats:
    """The cost of one stage (or head) of a network.

    Attributes:
        name: the stage's name, ``"head"`` or an auxiliary head's name.
        kind: ``"stage"``, ``"head"`` (the main classifier) or ``"aux"``.
        stride: the stage's output stride (None for heads).
        output_shape: the output shape of the stage's end layer (of the head's last
            layer), without the batch dimension.
        layers: how many layers it has.
        params: parameters of its layers.
        macs: multiply-accumulates per image of its layers.

    Example:
        >>> import keras_inception
        >>> from keras_inception.stats import model_stats
        >>> model = keras_inception.GoogLeNet(input_shape=(None, None, 3))
        >>> stem = model_stats(model, input_shape=(64, 64, 3)).stage("stem")
        >>> stem.kind, stem.stride, stem.output_shape
        ('stage', 4, (16, 16, 192))
    """

    name: str
    kind: str
    stride: Optional[int]
    output_shape: Tuple[Optional[int], ...]
    layers: int
    params: int
    macs: int


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """Parameters and MACs of a model, per layer and per stage.

    Attributes:
        model: the model's name.
        family: the registry name of its family (``""`` if none).
        input_shape: the input shape counted, without the batch dimension.
        layers: one :class:`LayerStats` per layer, in model order.
        stages: one :class:`GroupStats` per stage, then the heads (main classifier,
            auxiliary heads); empty for a model of no registered family.
        params: total parameters (equals ``model.count_params()``).
        macs: total multiply-accumulates per image, every output included.

    Example:
        >>> import keras
        >>> from keras_inception.stats import model_stats
        >>> image = keras.Input((4,))
        >>> net = keras.Model(image, keras.layers.Dense(10)(image))
        >>> stats = model_stats(net)
        >>> stats.params, stats.macs, stats.flops, stats.stages
        (50, 40, 80, ())
    """

    model: str
    family: str
    input_shape: Tuple[Optional[int], ...]
    layers: Tuple[LayerStats, ...]
    stages: Tuple[GroupStats, ...]
    params: int
    macs: int

    @property
    def main_macs(self) -> int:
        """MACs of a prediction by the main classifier: auxiliary heads left out."""
        return self.macs - sum(s.macs for s in self.stages if s.kind == "aux")

    @property
    def main_params(self) -> int:
        """Parameters without the auxiliary heads."""
        return self.params - sum(s.params for s in self.stages if s.kind == "aux")

    @property
    def flops(self) -> int:
        """Floating-point operations per image of the main prediction, ``2 x MACs``
        (a multiply and an add each), the figure a roofline needs."""
        return 2 * self.main_macs

    def stage(self, name: str) -> GroupStats:
        """The :class:`GroupStats` of stage (or head) ``name``."""
        for group in self.stages:
            if group.name == name:
                return group
        known = ", ".join(s.name for s in self.stages) or "none"
        raise ValueError(f"{self.model} has no stage or head {name!r}; it has: {known}.")


def _numel(shape) -> int:
    return int(math.prod(int(d) for d in shape))


def _pixels(layer, output_shape) -> int:
    """Output positions of a convolution (``output_shape`` without batch)."""
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    spatial = output_shape[1:] if channels_first else output_shape[:-1]
    if any(d is None for d in spatial):
        raise ValueError(
            f"Layer {layer.name!r} has an output of unknown size {tuple(output_shape)}: "
            f"MACs depend on the input size. Build the model with a fixed "
            f"input_shape, or pass input_shape= to model_stats().")
    return _numel(spatial)


def layer_macs(layer, output_shape: Sequence[Optional[int]]) -> int:
    """Multiply-accumulates per image of ``layer`` producing ``output_shape``.

    Convolutions (plain, depthwise, separable) and dense layers are counted; every
    other layer counts 0 (see the module docstring). Biases are not counted.

    Args:
        layer: a built Keras layer.
        output_shape: its output shape without the batch dimension.

    Returns:
        The multiply-accumulates for one image (0 for layers that are not counted).

    Raises:
        ValueError: a convolution's output size is unknown (``None``).

    Example:
        >>> import keras
        >>> from keras_inception.stats import layer_macs
        >>> conv = keras.layers.Conv2D(32, 3, padding="same")
        >>> conv.build((None, 8, 8, 16))
        >>> layer_macs(conv, (8, 8, 32)) == 8 * 8 * (3 * 3 * 16 * 32)
        True
    """
    output_shape = tuple(output_shape)
    layers = keras.layers
    if isinstance(layer, layers.SeparableConv2D):
        pixels = _pixels(layer, output_shape)
        return pixels * (_numel(layer.depthwise_kernel.shape)
                         + _numel(layer.pointwise_kernel.shape))
    if isinstance(layer, layers.DepthwiseConv2D):
        return _pixels(layer, output_shape) * _numel(layer.kernel.shape)
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)) and not \
            isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose,
                               layers.Conv3DTranspose)):
        return _pixels(layer, output_shape) * _numel(layer.kernel.shape)
    if isinstance(layer, layers.Dense):
        leading = output_shape[:-1]
        if any(d is None for d in leading):
            raise ValueError(f"Dense layer {layer.name!r} has an output of unknown "
                             f"size {output_shape}.")
        return _numel(leading) * _numel(layer.kernel.shape)
    return 0


def _topological(graph: _Graph) -> List[str]:
    """The graph's layer names, each after every layer it reads (Kahn's order)."""
    pending = {name: set(parents) for name, parents in graph.parents.items()}
    children: Dict[str, list] = {}
    for name, parents in pending.items():
        for parent in parents:
            children.setdefault(parent, []).append(name)
    ready = sorted(name for name, parents in pending.items() if not parents)
    order = []
    while ready:
        name = ready.pop()
        order.append(name)
        for child in children.get(name, ()):
            pending[child].discard(name)
            if not pending[child]:
                ready.append(child)
    return order


def _shapes(model, graph: _Graph, input_shape) -> Dict[str, tuple]:
    """Layer name -> output shape (no batch), as built or re-derived for another
    input shape from the layers' own shape inference (no weights, no compute)."""
    if input_shape is None:
        return {name: tuple(tensor.shape[1:]) for name, tensor in graph.outputs.items()}
    if len(model.inputs) != 1:
        raise ValueError(f"input_shape= needs a model with one input; {model.name!r} "
                         f"has {len(model.inputs)}.")
    input_shape = tuple(input_shape)
    built = tuple(model.inputs[0].shape[1:])
    if len(input_shape) != len(built) or any(
            b is not None and b != s for b, s in zip(built, input_shape)):
        raise ValueError(
            f"input_shape={input_shape} does not fit the input {built} of model "
            f"{model.name!r}: build it with input_shape=(None, None, 3) to count it at "
            f"any size.")
    specs = {id(model.inputs[0]): keras.KerasTensor((None,) + input_shape,
                                                    dtype=model.inputs[0].dtype)}
    for name in _topological(graph):
        tensor = graph.outputs[name]
        layer, node_index, _ = tensor._keras_history
        node = layer._inbound_nodes[node_index]
        args = [specs[id(t)] for t in node.input_tensors]
        out = layer.compute_output_spec(args[0] if len(args) == 1 else args)
        for original, new in zip(node.output_tensors, keras.tree.flatten(out)):
            specs[id(original)] = new
    return {name: tuple(specs[id(tensor)].shape[1:])
            for name, tensor in graph.outputs.items()}


def _family(model):
    from keras_inception.features import infer_info

    try:
        return infer_info(model)
    except ValueError:
        return None  # any other functional model: totals and layers only


def model_stats(model: keras.Model, input_shape=None) -> ModelStats:
    """Counts the parameters and MACs of ``model``, per layer and per stage.

    Args:
        model: a functional Keras model, normally a keras_inception model (any
            head, auxiliary heads included, or a :mod:`~keras_inception.transfer`
            derivative); other models get totals and per-layer counts, no stages.
        input_shape: count at this input shape (without the batch dimension, e.g.
            ``(299, 299, 3)``) instead of the model's own, which must then leave
            those sides free (``input_shape=(None, None, 3)``): the shapes are
            re-derived by the layers' shape inference, nothing is rebuilt.

    Returns:
        A :class:`ModelStats`.

    Raises:
        ValueError: an output size needed for a convolution is unknown (build
            the model with a fixed input shape or pass ``input_shape``), or
            ``input_shape`` does not fit the model's input.

    Example:
        >>> import keras_inception
        >>> from keras_inception.stats import model_stats
        >>> model = keras_inception.GoogLeNet(input_shape=(None, None, 3))
        >>> small = model_stats(model, input_shape=(32, 32, 3))
        >>> small.stage("mixed_4").output_shape, small.stage("mixed_4").stride
        ((2, 2, 832), 16)
        >>> big = model_stats(model, input_shape=(64, 64, 3))
        >>> conv = big.stage("mixed_3").macs / small.stage("mixed_3").macs
        >>> conv  # every map has four times the pixels
        4.0
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs"):
        raise TypeError(f"Expected a functional keras.Model, got {type(model).__name__}.")
    graph = _Graph(model)
    shapes = _shapes(model, graph, input_shape)
    info = _family(model)
    groups: Dict[str, list] = {}
    kinds: Dict[str, tuple] = {}
    if info is not None:
        present = [s for s in info.stages if s.layer in graph.outputs]
        staged = _stage_layers(model, dataclasses.replace(info, stages=tuple(present)),
                               graph)
        for stage in present:
            groups[stage.name] = staged[stage.name]
            kinds[stage.name] = ("stage", stage.stride, stage.layer)
        body = {layer.name for group in staged.values() for layer in group}
        for name, group in _head_groups(model, info, body).items():
            group = [layer for layer in group if layer.name in graph.outputs]
            if group:
                groups[name] = group
                kinds[name] = ("head" if name == HEAD else "aux", None, group[-1].name)
    owner = {layer.name: name for name, group in groups.items() for layer in group}
    layer_stats = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name not in graph.outputs:
            continue
        shape = shapes[layer.name]
        layer_stats.append(LayerStats(
            name=layer.name, type=type(layer).__name__, group=owner.get(layer.name, ""),
            output_shape=shape, params=_numel_all(layer.weights),
            macs=layer_macs(layer, shape)))
    by_group: Dict[str, list] = {}
    for stats in layer_stats:
        by_group.setdefault(stats.group, []).append(stats)
    stages = tuple(
        GroupStats(name=name, kind=kinds[name][0], stride=kinds[name][1],
                   output_shape=shapes[kinds[name][2]], layers=len(by_group[name]),
                   params=sum(s.params for s in by_group[name]),
                   macs=sum(s.macs for s in by_group[name]))
        for name in groups if by_group.get(name))
    if input_shape is None:
        input_shape = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else ()
    return ModelStats(
        model=model.name, family=info.name if info else "",
        input_shape=tuple(input_shape), layers=tuple(layer_stats), stages=stages,
        params=_numel_all(model.weights), macs=sum(s.macs for s in layer_stats))


def _numel_all(weights) -> int:
    return int(sum(_numel(w.shape) for w in weights))


def count_macs(model: keras.Model, input_shape=None) -> int:
    """Multiply-accumulates per image of the main prediction of ``model``.

    Auxiliary heads are left out (they only run in training); double it for
    floating-point operations.

    Args:
        model: a built Keras model (a zoo model, or one derived from it).
        input_shape: count at this input shape (without batch) instead of the
            model's own, as in :func:`model_stats`.

    Returns:
        The multiply-accumulates of one image through the main prediction.

    Example:
        >>> import keras_inception
        >>> from keras_inception.stats import count_macs
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=10)
        >>> round(count_macs(model) / 1e6, 1)  # millions
        30.6
    """
    return model_stats(model, input_shape).main_macs


def stats_table(stats: ModelStats, print_fn=print) -> str:
    """A table of ``stats`` per stage and head, printed and returned.

    Columns: output shape, stride, parameters, MACs (millions) and share of the
    total MACs.

    Args:
        stats: from :func:`model_stats`.
        print_fn: called with the table; ``None`` to only return it.

    Returns:
        The table as text.

    Example:
        >>> import keras_inception
        >>> from keras_inception.stats import model_stats, stats_table
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3))
        >>> table = stats_table(model_stats(model))  # doctest: +ELLIPSIS
        googlenet at (32, 32, 3): 6,632,184 params, 0.03 GMACs
        stage    output shape  stride     params  MMACs   share
        -------------------------------------------------------
        conv     (16, 16, 64)       2      9,600    2.4    7.6%
        ...
        head          (1000,)          1,025,000    1.0    3.2%
        -------------------------------------------------------
        total                          6,632,184   31.6  100.0%
    """
    rows = [("stage", "output shape", "stride", "params", "MMACs", "share")]
    total = stats.macs or 1
    for group in stats.stages:
        rows.append((group.name, str(group.output_shape),
                     "" if group.stride is None else str(group.stride),
                     f"{group.params:,}", f"{group.macs / 1e6:.1f}",
                     f"{100 * group.macs / total:.1f}%"))
    rows.append(("total", "", "", f"{stats.params:,}", f"{stats.macs / 1e6:.1f}",
                 "100.0%"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join([r[0].ljust(widths[0])] + [r[i].rjust(widths[i])
                                                   for i in range(1, 6)]).rstrip()
             for r in rows]
    rule = "-" * max(len(line) for line in lines)
    title = (f"{stats.model} at {stats.input_shape}: {stats.params:,} params, "
             f"{stats.macs / 1e9:.2f} GMACs")
    text = "\n".join([title, lines[0], rule] + lines[1:-1] + [rule, lines[-1]])
    if print_fn is not None:
        print_fn(text)
    return text
