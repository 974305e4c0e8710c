"""The constructor logic every family shares: inputs, head, auxiliary outputs, weights.

A family module provides only its topology (a ``body`` function) and its
:class:`~keras_inception.registry.ModelInfo`; :func:`build_model` does the rest the
same way for all of them, so every constructor validates and behaves alike.
"""

from __future__ import annotations

import os

import keras

from keras_inception import layers as L
from keras_inception.registry import ModelInfo


def _spatial(shape):
    """(rows, cols) of a (H, W, C) or (C, H, W) shape in the current data format."""
    if keras.config.image_data_format() == "channels_last":
        return shape[0], shape[1]
    return shape[1], shape[2]


def _display_name(info: ModelInfo) -> str:
    return info.constructor.__name__


def resolve_input(info: ModelInfo, *, include_top, input_tensor, input_shape,
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


def check_arguments(info: ModelInfo, *, include_top, pooling, classes, aux_logits,
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
    """
    check_arguments(info, include_top=include_top, pooling=pooling, classes=classes,
                    aux_logits=aux_logits, dropout_rate=dropout_rate)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None or a file path, got {weights!r}.")
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(
            f"weights={str(weights)!r} is not an existing file. Pass None for random "
            f"initialisation or the path to a weight file (.weights.h5, or a "
            f"keras.applications .h5).")
    inputs, image = resolve_input(info, include_top=include_top,
                                  input_tensor=input_tensor, input_shape=input_shape,
                                  aux_logits=aux_logits)
    features, taps = body(image, norm)
    outputs = L.classifier_head(features, include_top=include_top, pooling=pooling,
                                classes=classes,
                                classifier_activation=classifier_activation,
                                dropout_rate=dropout_rate)
    if aux_logits:
        heads = {"logits": outputs}
        for head in info.aux_heads:
            heads[head] = info.aux_builder(taps[head], classes, name=head, norm=norm,
                                           classifier_activation=classifier_activation)
        outputs = heads
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        from keras_inception import weights_io

        weights_io.load_weights(model, weights, info=info)
    return model
