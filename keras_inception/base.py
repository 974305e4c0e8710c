"""The constructor logic every family shares: inputs, head, auxiliary outputs, weights.

A family module provides only its topology (a ``body`` function) and its
:class:`~keras_inception.registry.ModelInfo`; :func:`build_model` does the rest the
same way for all of them, so every constructor validates and behaves alike.
"""

from __future__ import annotations

import functools
import inspect
import os

import keras

from keras_inception import layers as L
from keras_inception.initializers import host_initialization
from keras_inception.registry import ModelInfo

__all__ = ["add_aux_heads", "build_model", "pretrained_constructor"]


def _spatial(shape):
    """(rows, cols) of a (H, W, C) or (C, H, W) shape in the current data format."""
    if keras.config.image_data_format() == "channels_last":
        return shape[0], shape[1]
    return shape[1], shape[2]


def _display_name(info: ModelInfo) -> str:
    return info.constructor.__name__


def _resolve_input(info: ModelInfo, *, include_top, input_tensor, input_shape,
                  aux_logits):
    """Validates the input arguments and returns ``(model_inputs, image_tensor)``."""
    min_size = info.aux_min_size if aux_logits else info.min_size
    channels_last = keras.config.image_data_format() == "channels_last"
    if input_tensor is not None:
        if not keras.utils.is_keras_tensor(input_tensor):
            raise ValueError(
                f"input_tensor must be a Keras tensor (e.g. from keras.Input), got "
                f"{type(input_tensor).__name__}. Pass input_shape= for plain shapes.")
        shape = tuple(input_tensor.shape[1:])
    elif input_shape is not None:
        shape = tuple(input_shape)
    else:
        size = info.default_size if include_top else None
        shape = (size, size, 3) if channels_last else (3, size, size)
    if len(shape) != 3:
        layout = "(height, width, channels)" if channels_last else "(channels, height, width)"
        raise ValueError(
            f"{_display_name(info)} takes image inputs of shape {layout}; got "
            f"input_shape={shape}.")
    rows, cols = _spatial(shape)
    for side in (rows, cols):
        if side is not None and side < min_size:
            why = " with aux_logits=True" if aux_logits else ""
            raise ValueError(
                f"{_display_name(info)}{why} needs inputs of at least "
                f"{min_size}x{min_size} pixels; got input shape {shape}. Resize or pad "
                f"your images to {min_size}x{min_size} or more (the canonical size is "
                f"{info.default_size}).")
    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
        return inputs, input_tensor
    image = keras.Input(shape=shape, name="image")
    return image, image


def _check_arguments(info: ModelInfo, *, include_top, pooling, classes, aux_logits,
                    dropout_rate):
    if pooling not in L.POOLINGS:
        raise ValueError(
            f"Unknown pooling {pooling!r}: use None (4D feature map), 'avg' or 'max'.")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"classes must be a positive integer, got {classes!r}.")
    if not 0.0 <= float(dropout_rate) < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}.")
    if aux_logits:
        if not include_top:
            raise ValueError(
                "aux_logits=True needs include_top=True: the auxiliary heads are "
                "classifiers. Use keras_inception.feature_extractor() for "
                "intermediate features.")


def build_model(info: ModelInfo, body, *, include_top, weights, input_tensor,
                input_shape, pooling, classes, classifier_activation, dropout_rate,
                aux_logits, name, norm):
    """Builds a family's model around its ``body`` and loads ``weights``.

    ``body(image, norm)`` returns ``(features, taps)`` where ``taps`` maps each
    auxiliary head name of ``info.aux_heads`` to the tensor it reads.

    With ``aux_logits=True`` the model returns a dict ``{"logits": ..., "aux": ...}``
    (``aux1``/``aux2`` for GoogLeNet), so ``compile(loss={...})`` addresses heads
    by name.

    Initial values are drawn on the host by
    :func:`~keras_inception.initializers.host_initialization` (Keras' initializer
    distributions and seeds, without JAX's per-shape compilation), and not drawn
    at all when ``weights`` will overwrite them.

    Args:
        info: the family's :class:`~keras_inception.registry.ModelInfo` (input
            sizes, aux heads and their builder).
        body: ``body(image, norm) -> (features, taps)``, the family's topology.
        include_top: add the classifier (``avg_pool``, ``dropout``,
            ``predictions``).
        weights: None, or a weight file (a weights *name* is resolved by
            :func:`pretrained_constructor` before this is called).
        input_tensor: a Keras tensor to build on, or None.
        input_shape: the image shape, or None for the family's default.
        pooling: without the top: None, ``"avg"`` or ``"max"``.
        classes: the classifier's class count.
        classifier_activation: its activation (None for logits).
        dropout_rate: dropout before the classifier, in [0, 1).
        aux_logits: add the family's auxiliary classifiers.
        name: the Keras model name.
        norm: the :class:`~keras_inception.layers.Norm` settings passed to ``body``.

    Returns:
        The ``keras.Model``, with ``weights`` loaded.

    Raises:
        ValueError: an argument out of range, an input below the family's minimum
            size, or ``weights`` that is neither None nor a file.

    Example:
        >>> import keras
        >>> from keras_inception.base import build_model
        >>> from keras_inception.registry import get_model_info
        >>> def body(image, norm):
        ...     return keras.layers.Conv2D(8, 3, name="conv")(image), {}
        >>> model = build_model(
        ...     get_model_info("googlenet"), body, include_top=True, weights=None,
        ...     input_tensor=None, input_shape=(32, 32, 3), pooling=None, classes=4,
        ...     classifier_activation=None, dropout_rate=0.0, aux_logits=False,
        ...     name="tiny", norm=None)
        >>> model.output_shape, model.get_layer("predictions").units
        ((None, 4), 4)
    """
    _check_arguments(info, include_top=include_top, pooling=pooling, classes=classes,
                    aux_logits=aux_logits, dropout_rate=dropout_rate)
    if weights is not None:
        _check_weights_path(info, weights)
    inputs, image = _resolve_input(info, include_top=include_top,
                                  input_tensor=input_tensor, input_shape=input_shape,
                                  aux_logits=aux_logits)
    # Initial values are drawn on the host once the graph is built (same
    # distributions and seeds as Keras'): JAX would compile a random op per weight
    # shape, 30 s for a big model. Loaded weights overwrite them: no draw then.
    with host_initialization(weights_pending=weights is not None):
        features, taps = body(image, norm)
        outputs = L.classifier_head(features, include_top=include_top,
                                    pooling=pooling, classes=classes,
                                    classifier_activation=classifier_activation,
                                    dropout_rate=dropout_rate)
        if aux_logits:
            outputs = {"logits": outputs, **add_aux_heads(
                info, taps, classes, norm=norm,
                classifier_activation=classifier_activation)}
        model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        _load_weights_file(model, weights, info)
    return model


def add_aux_heads(info: ModelInfo, taps, classes, *, norm, classifier_activation):
    """``{head: output}``: the family's auxiliary classifiers on ``taps[head]``.

    Args:
        info: the family's :class:`~keras_inception.registry.ModelInfo`.
        taps: ``{head name: tensor it reads}`` for every head of ``info.aux_heads``.
        classes: the heads' class count.
        norm: the body's :class:`~keras_inception.layers.Norm`.
        classifier_activation: the heads' activation (None for logits).

    Returns:
        ``{head name: output tensor}``.

    Example:
        >>> import keras
        >>> from keras_inception.base import add_aux_heads
        >>> from keras_inception.layers import Norm
        >>> from keras_inception.registry import get_model_info
        >>> tap = keras.Input((4, 4, 512))
        >>> heads = add_aux_heads(get_model_info("googlenet"),
        ...                       {"aux1": tap, "aux2": tap}, 7, norm=Norm(),
        ...                       classifier_activation=None)
        >>> {name: tuple(out.shape) for name, out in heads.items()}
        {'aux1': (None, 7), 'aux2': (None, 7)}
    """
    return {head: info.aux_builder(taps[head], classes, name=head, norm=norm,
                                   classifier_activation=classifier_activation)
            for head in info.aux_heads}


def _is_weights_path(weights) -> bool:
    path = os.fspath(weights)
    return os.path.exists(path) or os.path.exists(f"{path}.index")


def _check_weights_path(info: ModelInfo, weights):
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None, a weights name or a file path, got "
                         f"{weights!r}.")
    if not _is_weights_path(weights):
        from keras_inception.pretrained import WEIGHTS

        known = ", ".join(WEIGHTS.get(info.name, {})) or "none"
        raise ValueError(
            f"weights={os.fspath(weights)!r} is neither an existing file nor a known "
            f"weights name for {info.name} (known: {known}). Pass None for random "
            f"initialisation, a name, or the path to a weight file (.weights.h5, a "
            f"keras .h5, timm .safetensors, torchvision .pth, TF-Slim checkpoint).")


def _load_weights_file(model, path, info: ModelInfo):
    """Loads our or keras' ``.h5``, or converts an upstream checkpoint, by its format."""
    from keras_inception.convert import load_upstream, readers

    try:
        fmt = readers.detect_format(path)
    except readers.SourceFormatError:
        fmt = readers.KERAS_H5  # unknown suffix: let the HDF5 reader say what it is
    if fmt == readers.KERAS_H5:
        from keras_inception import weights_io

        weights_io.load_weights(model, path, info=info)
    else:
        load_upstream(model, path, fmt=fmt, model_name=info.name)


def pretrained_constructor(constructor):
    """Lets a constructor take a weights name (``weights="imagenet"``).

    Before building, the name is looked up in :mod:`keras_inception.pretrained`: the
    model's arguments are checked against the weights (class count, trained aux
    heads), the arguments the upstream arithmetic needs (``arithmetic``,
    ``bn_epsilon``) are filled in, and the file is fetched and converted once into
    the cache. A user argument that contradicts the weights is an error.

    Args:
        constructor: a family constructor taking ``weights=`` (and
            ``include_top``, ``classes``, optionally ``aux_logits``).

    Returns:
        The wrapped constructor; it records the weights' preprocessing on the model
        (see :func:`keras_inception.preprocessing_for`).

    Example:
        >>> import keras_inception
        >>> keras_inception.GoogLeNet(weights="imagenet",
        ...                           classes=10)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: weights='imagenet' for googlenet have a 1000-class classifier; ...
    """
    signature = inspect.signature(constructor)

    @functools.wraps(constructor)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        weights = bound.arguments.get("weights")
        if not isinstance(weights, str) or _is_weights_path(weights):
            return constructor(*args, **kwargs)
        from keras_inception import pretrained
        from keras_inception.registry import constructor_info

        info = constructor_info(wrapper)
        entry = pretrained.get_weights_entry(info.name, weights)
        given = {**{k: p.default for k, p in signature.parameters.items()},
                 **bound.arguments}
        pretrained.check_compatible(entry, include_top=given["include_top"],
                                    classes=given["classes"],
                                    aux_logits=given.get("aux_logits", False))
        for key, value in entry.model_kwargs:
            if key not in signature.parameters:
                raise ValueError(f"weights={weights!r} need {key}={value!r}, which "
                                 f"{constructor.__name__} does not support.")
            if key in bound.arguments and bound.arguments[key] != value:
                raise ValueError(
                    f"weights={weights!r} were trained with {key}={value!r} (upstream "
                    f"arithmetic); got {key}={bound.arguments[key]!r}. Leave {key} "
                    f"out to get the right one.")
            bound.arguments[key] = value
        bound.arguments["weights"] = pretrained.weights_file(
            entry, include_top=given["include_top"], classes=given["classes"])
        model = constructor(*bound.args, **bound.kwargs)
        from keras_inception.preprocessing import attach_preprocessing

        attach_preprocessing(model, entry.preprocessing)
        return model

    return wrapper
