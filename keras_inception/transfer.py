"""Transfer learning: freezing by stage, new classifier heads, auxiliary losses.

Every helper works on any keras_inception model (the family is recognised from its
layer names, :func:`~keras_inception.features.infer_info`) and addresses the network
by the stages of its :class:`~keras_inception.registry.ModelInfo`, in order from the
input (``conv``, ``stem``, ``mixed_3``, ... for GoogLeNet). The *body* is everything
up to the end of the last stage; the rest (classifier, auxiliary heads) are *heads*.

Freezing follows Keras 3: a layer with ``trainable=False`` gets no gradient updates,
and a frozen ``BatchNormalization`` runs in inference mode (it normalises with its
moving statistics and does not update them), so a frozen part of a pretrained
network computes exactly what it computed before training. The freezing helpers
are declarative: each sets the trainable flag of every layer, so calling them in
sequence never accumulates. Like any change of ``trainable``, it takes effect at
the next ``model.compile()``.

Models derived here (:func:`replace_head`, :func:`with_aux_heads`,
:func:`main_head`) reuse the layer objects of the model they come from: weights and
trainable flags are shared, not copied.

Example:
    >>> import keras_inception
    >>> from keras_inception import transfer
    >>> backbone = keras_inception.GoogLeNet(include_top=False, input_shape=(32, 32, 3))
    >>> model = transfer.replace_head(backbone, 5)
    >>> model = transfer.with_aux_heads(model)
    >>> frozen = transfer.freeze_stem(model)
    >>> model.compile("adam", **transfer.aux_compile_args(model))
    >>> sorted(model.output)
    ['aux1', 'aux2', 'logits']
    >>> transfer.main_head(model).output_shape
    (None, 5)
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import keras

from keras_inception import base
from keras_inception import layers as L
from keras_inception.features import infer_info
from keras_inception.registry import ModelInfo, _REGISTRY

__all__ = ["aux_compile_args", "freeze_stem", "freeze_up_to", "main_head", "replace_head",
           "trainable_summary", "unfreeze_top", "with_aux_heads"]

MAIN_OUTPUT = "logits"  # the key of the main head in multi-output models (base.py)
POOLINGS = ("avg", "max")


# --------------------------------------------------------------------------- graph

class _Graph:
    """The functional graph of ``model``: each layer's output tensor and parents.

    Walks back from the model's outputs through the Keras history of each tensor,
    so only the nodes of this model count (layers shared with other models may
    have been called elsewhere too).
    """

    def __init__(self, model: keras.Model):
        self.model = model
        inputs = {id(t) for t in model.inputs}
        self.outputs: Dict[str, object] = {}
        self.parents: Dict[str, set] = {}
        stack, seen = list(model.outputs), set()
        while stack:
            tensor = stack.pop()
            if id(tensor) in seen or id(tensor) in inputs:
                continue
            seen.add(id(tensor))
            operation, node_index, _ = tensor._keras_history
            if isinstance(operation, keras.layers.InputLayer):
                continue
            node = operation._inbound_nodes[node_index]
            self.outputs.setdefault(operation.name, tensor)
            sources = [t for t in node.input_tensors if id(t) not in inputs]
            self.parents.setdefault(operation.name, set()).update(
                t._keras_history.operation.name for t in sources
                if not isinstance(t._keras_history.operation, keras.layers.InputLayer))
            stack.extend(sources)

    def output(self, name: str):
        if name not in self.outputs:
            raise ValueError(
                f"Layer {name!r} does not feed any output of model "
                f"{self.model.name!r}, so nothing can be built on it.")
        return self.outputs[name]

    def ancestors(self, name: str) -> set:
        """``name`` and every layer it depends on (input layers excluded)."""
        found, stack = set(), [name]
        while stack:
            current = stack.pop()
            if current in found:
                continue
            found.add(current)
            stack.extend(self.parents.get(current, ()))
        return found


def _layers(model) -> list:
    """The model's layers in order, input layers left out."""
    return [layer for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)]


def _stage_layers(model, info: ModelInfo, graph: _Graph) -> Dict[str, list]:
    """Stage name -> its layers: those the stage's end depends on that no earlier
    stage's end depends on (branches included, whatever the layer order)."""
    assigned, stages = set(), {}
    for stage in info.stages:
        ancestors = graph.ancestors(stage.layer)
        stages[stage.name] = [layer for layer in _layers(model)
                              if layer.name in ancestors and layer.name not in assigned]
        assigned |= ancestors
    return stages


def _resolve(model) -> tuple:
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model, got {type(model).__name__}.")
    info = infer_info(model)
    graph = _Graph(model)
    for stage in info.stages:
        graph.output(stage.layer)  # a clear error if the body was cut short
    return info, graph


def _set_frozen(model, frozen_names: set) -> None:
    # model.trainable = True first: a frozen model hides its layers' own flags.
    model.trainable = True
    for layer in _layers(model):
        layer.trainable = layer.name not in frozen_names


# ------------------------------------------------------------------------ freezing

def freeze_up_to(model: keras.Model, stage: str) -> List[str]:
    """Freezes every layer from the input through the end of ``stage``.

    The end layer of ``stage`` and every layer it depends on (all branches of
    every block before it) get ``trainable=False``; every other layer, heads
    included, ``trainable=True``. Frozen BatchNormalization layers run in inference
    mode. Recompile the model for the change to take effect.

    Args:
        model: a keras_inception model (any head, aux heads included).
        stage: a stage name of the model's family (``get_model_info(name).stages``).

    Returns:
        The names of the frozen layers, in model order.

    Raises:
        ValueError: the family has no such stage (the message lists its stages).

    Example:
        >>> import keras_inception
        >>> from keras_inception.transfer import freeze_up_to
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=5)
        >>> frozen = freeze_up_to(model, "mixed_3")
        >>> frozen[-1], model.get_layer("mixed_3c").trainable
        ('mixed_3c', False)
        >>> model.get_layer("mixed_4b").trainable
        True
    """
    info, graph = _resolve(model)
    frozen = graph.ancestors(info.stage(stage).layer)
    _set_frozen(model, frozen)
    return [layer.name for layer in _layers(model) if layer.name in frozen]


def freeze_stem(model: keras.Model) -> List[str]:
    """Freezes the stem (and everything before it); the rest is trainable.

    The same as ``freeze_up_to(model, "stem")``: every family has a ``stem`` stage.

    Args:
        model: a keras_inception model (any family, head or aux heads).

    Returns:
        The names of the layers frozen, in model order.

    Example:
        >>> import keras_inception
        >>> from keras_inception.transfer import freeze_stem
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=5)
        >>> freeze_stem(model)[:3]
        ['conv2d_1a_7x7_conv', 'conv2d_1a_7x7_bn', 'conv2d_1a_7x7_act']
    """
    return freeze_up_to(model, "stem")


def unfreeze_top(model: keras.Model, n: int) -> List[str]:
    """Freezes the body except its last ``n`` stages; the heads stay trainable.

    ``n=0`` trains only the heads (classifier and auxiliary heads), ``n`` equal to
    the number of stages trains everything. Recompile the model afterwards.

    Args:
        model: a keras_inception model.
        n: how many stages, counted from the top, to train.

    Returns:
        The names of the trainable layers, in model order.

    Raises:
        ValueError: ``n`` is not an integer between 0 and the number of stages.

    Example:
        >>> import keras_inception
        >>> from keras_inception.transfer import unfreeze_top
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=5)
        >>> unfreeze_top(model, 0)
        ['avg_pool', 'dropout', 'predictions']
        >>> model.get_layer("mixed_5c").trainable, model.get_layer("mixed_4f").trainable
        (False, False)
        >>> _ = unfreeze_top(model, 1)
        >>> model.get_layer("mixed_5c").trainable, model.get_layer("mixed_4f").trainable
        (True, False)
    """
    info, graph = _resolve(model)
    count = len(info.stages)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= count:
        names = ", ".join(s.name for s in info.stages)
        raise ValueError(
            f"n must be an integer from 0 (heads only) to {count} (everything): "
            f"{info.name} has {count} stages ({names}); got n={n!r}.")
    frozen = set()
    for stage in info.stages[:count - n]:
        frozen |= graph.ancestors(stage.layer)
    _set_frozen(model, frozen)
    return [layer.name for layer in _layers(model) if layer.name not in frozen]


def _params(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def _head_groups(model, info: ModelInfo, body: set) -> Dict[str, list]:
    """Non-body layers by head: the main classifier (``head``) and each aux head."""
    groups = {"head": []}
    groups.update({head: [] for head in info.aux_heads})
    for layer in _layers(model):
        if layer.name in body:
            continue
        owner = next((head for head in info.aux_heads
                      if layer.name.startswith(f"{head}_")), "head")
        groups[owner].append(layer)
    return {name: group for name, group in groups.items() if group}


def trainable_summary(model: keras.Model,
                      print_fn: Optional[Callable[[str], object]] = print) -> str:
    """A table of what trains, per stage and head, printed and returned.

    Columns: layers, frozen layers, trainable parameters, frozen parameters (those
    no optimizer updates: frozen layers' weights and every BatchNormalization's
    moving statistics, Keras' "non-trainable"), and BatchNormalization layers in
    inference mode (frozen) over all of them. The totals equal
    ``model.trainable_weights`` and ``model.count_params()``.

    Args:
        model: a keras_inception model.
        print_fn: called with the table; ``None`` to only return it.

    Returns:
        The table, as printed.

    Example:
        >>> import keras_inception
        >>> from keras_inception.transfer import freeze_stem, trainable_summary
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=5)
        >>> _ = freeze_stem(model)
        >>> table = trainable_summary(model)  # doctest: +ELLIPSIS
        googlenet: what trains, by stage
        stage    layers  frozen  trainable   frozen      BN in
                         layers     params   params  inference
        ------------------------------------------------------
        conv          3       3          0    9,600        1/1
        stem          7       7          0  115,456        2/2
        mixed_3      41       0    495,088    2,016       0/12
        ...
        total       196      10  5,473,333  138,976       3/57
    """
    info, graph = _resolve(model)
    stages = _stage_layers(model, info, graph)
    body = {layer.name for group in stages.values() for layer in group}
    groups = {**stages, **_head_groups(model, info, body)}

    def row(name, group):
        bns = [l for l in group if isinstance(l, keras.layers.BatchNormalization)]
        trainable = _params(w for l in group for w in l.trainable_weights) \
            if model.trainable else 0
        total = _params(w for l in group for w in l.weights)
        frozen_layers = sum(1 for l in group if not (l.trainable and model.trainable))
        frozen_bns = sum(1 for l in bns if not (l.trainable and model.trainable))
        return (name, len(group), frozen_layers, trainable, total - trainable,
                frozen_bns, len(bns))

    rows = [row(name, group) for name, group in groups.items()]
    totals = ("total",) + tuple(sum(r[i] for r in rows) for i in range(1, 7))
    header = ("stage", "layers", "frozen", "trainable", "frozen", "BN in")
    header2 = ("", "", "layers", "params", "params", "inference")

    def cells(r):
        return (r[0], f"{r[1]}", f"{r[2]}", f"{r[3]:,}", f"{r[4]:,}", f"{r[5]}/{r[6]}")

    table = [header, header2] + [cells(r) for r in rows + [totals]]
    widths = [max(len(line[i]) for line in table) for i in range(6)]

    def fmt(line):
        return "  ".join([line[0].ljust(widths[0])] +
                         [line[i].rjust(widths[i]) for i in range(1, 6)]).rstrip()

    lines = [fmt(line) for line in table]
    rule = "-" * max(len(line) for line in lines)
    lines = lines[:2] + [rule] + lines[2:-1] + [rule] + lines[-1:]
    title = model.name if model.name == info.name else f"{model.name} ({info.name})"
    text = "\n".join([f"{title}: what trains, by stage"] + lines)
    if print_fn is not None:
        print_fn(text)
    return text


# ---------------------------------------------------------------------------- heads

def _check_classes(classes):
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"classes must be a positive integer, got {classes!r}.")
    return classes


def _derived(model, new_model):
    """Carries the preprocessing recorded on ``model`` over to ``new_model``."""
    from keras_inception.preprocessing import MODEL_ATTRIBUTE

    if hasattr(model, MODEL_ATTRIBUTE):
        setattr(new_model, MODEL_ATTRIBUTE, getattr(model, MODEL_ATTRIBUTE))
    return new_model


def replace_head(model: keras.Model, classes: int, *, dropout: float = 0.2,
                 pooling: str = "avg", activation="softmax",
                 name: Optional[str] = None) -> keras.Model:
    """A new classifier on the body of ``model``, whose layers (weights) it shares.

    The old classifier and any auxiliary heads are left out (add aux heads back
    with :func:`with_aux_heads`); the new head is a global pooling, dropout and a
    dense layer named like the constructors' (``avg_pool`` or ``max_pool``,
    ``dropout``, ``predictions``). Works on models built with or without their top.

    Args:
        model: a keras_inception model (pretrained or not).
        classes: number of classes of the new head.
        dropout: dropout rate before the dense layer, in [0, 1) (0: none).
        pooling: ``"avg"`` or ``"max"`` global pooling.
        activation: the dense layer's activation (``None`` for logits).
        name: the new model's name (default: ``model``'s, so the family's
            preprocessing default still applies).

    Returns:
        A ``keras.Model`` with a single output of shape ``(batch, classes)``.

    Example:
        >>> import keras_inception
        >>> from keras_inception.transfer import replace_head
        >>> net = keras_inception.GoogLeNet(input_shape=(32, 32, 3))
        >>> model = replace_head(net, 5, pooling="max")
        >>> model.output_shape, model.get_layer("conv2d_1a_7x7_conv") is net.get_layer(
        ...     "conv2d_1a_7x7_conv")
        ((None, 5), True)
    """
    _check_classes(classes)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}.")
    if not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}.")
    info, graph = _resolve(model)
    features = graph.output(info.stages[-1].layer)
    # The constructors' own pooling layer (named avg_pool / max_pool).
    x = L.classifier_head(features, include_top=False, pooling=pooling, classes=classes,
                          classifier_activation=activation, dropout_rate=dropout)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    outputs = keras.layers.Dense(classes, activation=activation, name="predictions")(x)
    return _derived(model, keras.Model(model.input, outputs, name=name or model.name))


def _main_output(model):
    output = model.output
    if isinstance(output, dict):
        if MAIN_OUTPUT not in output:
            raise ValueError(
                f"Model {model.name!r} returns a dict without a {MAIN_OUTPUT!r} key "
                f"(keys: {', '.join(sorted(output))}): the main head must be "
                f"{MAIN_OUTPUT!r}, as the constructors name it.")
        return output[MAIN_OUTPUT]
    if isinstance(output, (list, tuple)):
        raise ValueError(
            f"Model {model.name!r} has {len(output)} outputs in a list; expected one "
            f"output or a dict with {MAIN_OUTPUT!r}.")
    return output


def _classifier(model, tensor):
    layer = tensor._keras_history.operation
    if not isinstance(layer, keras.layers.Dense):
        raise ValueError(
            f"Model {model.name!r} has no classifier head (its output comes from "
            f"{layer.name!r}, a {type(layer).__name__}). Add one first with "
            f"keras_inception.transfer.replace_head(model, classes).")
    return layer


def _norm_of(body_layers) -> L.Norm:
    """The BatchNormalization settings of the body, for heads built like its own."""
    for layer in body_layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            return L.Norm(scale=layer.scale, epsilon=layer.epsilon,
                          momentum=layer.momentum)
    return L.Norm()


def _families_with_aux() -> str:
    return ", ".join(sorted(name for name, info in _REGISTRY.items() if info.aux_heads))


def with_aux_heads(model: keras.Model, classes: Optional[int] = None, *,
                   activation=None, name: Optional[str] = None) -> keras.Model:
    """The model with its family's auxiliary classifiers added, for aux losses.

    The heads are built by the family's ``aux_builder`` on the layers the
    constructors tap (GoogLeNet's ``aux1`` on ``mixed_4b`` and ``aux2`` on
    ``mixed_4e``; the single ``aux`` of Inception-v3, v4 and Inception-ResNet-v2),
    with the body's BatchNormalization settings, exactly as ``aux_logits=True``
    builds them. The output is a dict ``{"logits": main, "aux": ...}`` (``aux1``,
    ``aux2`` for GoogLeNet); compile it with :func:`aux_compile_args`, and keep
    only the main head for inference and export with :func:`main_head`. A model
    that already has aux heads of the requested classes and activation is
    returned as it is.

    Args:
        model: a keras_inception model with a classifier head (see
            :func:`replace_head`) of a family with auxiliary heads.
        classes: classes of the aux heads (default: the main head's).
        activation: their activation (default: the main head's).
        name: the new model's name (default: ``model``'s).

    Returns:
        A new ``keras.Model`` sharing ``model``'s layers, with a dict output.

    Raises:
        ValueError: the family has no auxiliary heads (the message names those
            that do), the model has no classifier, or its input is smaller than
            the aux heads need (``get_model_info(name).aux_min_size``).

    Example:
        >>> import keras_inception
        >>> from keras_inception.transfer import with_aux_heads
        >>> net = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=5)
        >>> model = with_aux_heads(net)
        >>> {k: v.shape for k, v in sorted(model.output.items())}
        {'aux1': (None, 5), 'aux2': (None, 5), 'logits': (None, 5)}
    """
    info, graph = _resolve(model)
    if not info.aux_heads:
        raise ValueError(
            f"{info.name} has no auxiliary heads (its paper has none); the families "
            f"with auxiliary classifiers are: {_families_with_aux()}.")
    main = _main_output(model)
    classifier = _classifier(model, main)
    classes = classifier.units if classes is None else _check_classes(classes)
    activation = classifier.activation if activation is None \
        else keras.activations.get(activation)
    shape = tuple(model.input.shape[1:])
    if any(side is not None and side < info.aux_min_size for side in base._spatial(shape)):
        raise ValueError(
            f"The auxiliary heads of {info.name} need inputs of at least "
            f"{info.aux_min_size}x{info.aux_min_size} pixels; model {model.name!r} "
            f"takes {shape}. Rebuild it with a larger input_shape (the canonical size "
            f"is {info.default_size}).")
    output = model.output
    if isinstance(output, dict) and set(output) == {MAIN_OUTPUT, *info.aux_heads}:
        heads = [output[head]._keras_history.operation for head in info.aux_heads]
        if all(isinstance(h, keras.layers.Dense) and h.units == classes
               and h.activation is activation for h in heads):
            return model
    stages = _stage_layers(model, info, graph)
    norm = _norm_of(layer for group in stages.values() for layer in group)
    taps = {head: graph.output(layer) for head, layer in info.aux_taps}
    outputs = {MAIN_OUTPUT: main, **base.add_aux_heads(
        info, taps, classes, norm=norm, classifier_activation=activation)}
    return _derived(model, keras.Model(model.input, outputs, name=name or model.name))


def _from_logits(model, key, tensor) -> bool:
    layer = tensor._keras_history.operation
    activation = getattr(layer, "activation", None)
    if activation is keras.activations.linear:
        return True
    if activation is keras.activations.softmax:
        return False
    raise ValueError(
        f"Output {key!r} of model {model.name!r} is not a classifier ending in a "
        f"softmax or in logits (no activation), which sparse categorical "
        f"cross-entropy needs.")


def aux_compile_args(model: keras.Model, aux_weight: float = 0.3) -> dict:
    """``model.compile`` arguments for training with auxiliary losses.

    One sparse categorical cross-entropy per head (on logits or probabilities,
    whichever the head gives), weighted 1.0 for the main head and ``aux_weight``
    for each auxiliary head (0.3, as in the Inception papers), with accuracy on
    the main head only. Fit with the same integer labels for every head:
    ``y={"logits": labels, "aux": labels}``
    (:class:`keras_inception.training.MultiTarget` does it for a dataset).

    Args:
        model: a model from :func:`with_aux_heads` (or built with ``aux_logits=True``).
        aux_weight: loss weight of each auxiliary head, >= 0.

    Returns:
        ``{"loss": {...}, "loss_weights": {...}, "metrics": {"logits": [...]}}``,
        keyed by output name; fit logs then show ``aux_loss`` (``aux1_loss``, ...)
        next to ``logits_loss`` and ``logits_accuracy``.

    Example:
        >>> import keras_inception
        >>> from keras_inception.transfer import aux_compile_args
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=5,
        ...                                   aux_logits=True)
        >>> aux_compile_args(model)["loss_weights"]
        {'logits': 1.0, 'aux1': 0.3, 'aux2': 0.3}
    """
    output = model.output
    if not isinstance(output, dict) or MAIN_OUTPUT not in output or len(output) < 2:
        raise ValueError(
            f"Model {model.name!r} has no auxiliary outputs (expected a dict with "
            f"{MAIN_OUTPUT!r} and aux heads). Add them with "
            f"keras_inception.transfer.with_aux_heads(model).")
    if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) \
            or not math.isfinite(aux_weight) or aux_weight < 0:
        raise ValueError(f"aux_weight must be a finite number >= 0, got {aux_weight!r}.")
    keys = [MAIN_OUTPUT] + sorted(k for k in output if k != MAIN_OUTPUT)
    loss = {key: keras.losses.SparseCategoricalCrossentropy(
                from_logits=_from_logits(model, key, output[key]))
            for key in keys}
    weights = {key: 1.0 if key == MAIN_OUTPUT else float(aux_weight) for key in keys}
    metrics = {MAIN_OUTPUT: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}
    return {"loss": loss, "loss_weights": weights, "metrics": metrics}


def main_head(model: keras.Model) -> keras.Model:
    """Only the main output of ``model``, for inference and export.

    A model whose output is a dict (aux heads) gives a model on the same input
    and layers returning its ``"logits"`` output alone; a single-output model is
    returned as it is.

    Args:
        model: a Keras model with one output, or a dict of outputs with a
            ``"logits"`` key.

    Returns:
        A ``keras.Model`` with the main output only, sharing ``model``'s layers.

    Raises:
        ValueError: a multi-output model without a ``"logits"`` output.

    Example:
        >>> import keras_inception
        >>> from keras_inception.transfer import main_head
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=5,
        ...                                   aux_logits=True)
        >>> main_head(model).output_shape
        (None, 5)
    """
    if not isinstance(model.output, dict):
        _main_output(model)  # a clear error for a list of outputs
        return model
    main = _main_output(model)
    return _derived(model, keras.Model(model.input, main, name=model.name))
