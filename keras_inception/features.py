"""Multi-scale feature extraction from any model of the family."""

from __future__ import annotations

import keras

from keras_inception.registry import ModelInfo, _REGISTRY

__all__ = ["feature_extractor", "infer_info"]


def infer_info(model: keras.Model) -> ModelInfo:
    """The registered family ``model`` was built from.

    Matched on the committed manifests: every body layer of the family (all but
    classifier and auxiliary heads) must be in ``model``; where several families
    fit (a model extended by the user), the one with the most layers wins.

    Args:
        model: a Keras model.

    Returns:
        The family's :class:`~keras_inception.registry.ModelInfo`.

    Raises:
        ValueError: no registered family's layers are all in ``model``.

    Example:
        >>> import keras_inception
        >>> from keras_inception.features import infer_info
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=3)
        >>> infer_info(model).name
        'googlenet'
    """
    from keras_inception.manifest import body_layer_names

    names = {layer.name for layer in model.layers}
    fits = [info for info in _REGISTRY.values() if body_layer_names(info.name) <= names]
    if not fits:
        raise ValueError(
            f"Model {model.name!r} is not a keras_inception model (no registered "
            f"family's layers are all present). Build it with "
            f"keras_inception.create_model().")
    return max(fits, key=lambda info: len(body_layer_names(info.name)))


def feature_extractor(model: keras.Model, strides=(4, 8, 16, 32), *, stages=None):
    """A model returning the feature maps of ``model`` at several output strides.

    Args:
        model: a keras_inception model (any ``include_top``, weights kept and shared).
        strides: output strides to return, among those the family has (2, 4, 8,
            16, 32 for most; see ``get_model_info(name).stages``).
        stages: alternatively, stage names (``("stem", "mixed_6")``); keys of the
            output dict are then the stage names.

    Raises:
        ValueError: a stride or stage the family does not have (the message
            lists those it has), or a model that is not a keras_inception one.

    Returns:
        A ``keras.Model`` sharing ``model``'s layers whose output is a dict
        ``{"stride_4": ..., "stride_8": ...}`` (or keyed by stage name).

    Example:
        >>> import keras, keras_inception
        >>> net = keras_inception.GoogLeNet(include_top=False,
        ...                                 input_shape=(64, 64, 3))
        >>> feats = keras_inception.feature_extractor(net, strides=(8, 32))
        >>> sorted((k, tuple(v.shape[1:3])) for k, v in feats.output.items())
        [('stride_32', (2, 2)), ('stride_8', (8, 8))]
    """
    info = infer_info(model)
    if stages is not None:
        taps = {s: info.stage(s).layer for s in stages}
    else:
        available = info.feature_layers()
        missing = [s for s in strides if s not in available]
        if missing:
            raise ValueError(
                f"{info.name} has no stage at stride(s) {missing}; available strides: "
                f"{sorted(available)}.")
        taps = {f"stride_{s}": available[s] for s in strides}
    outputs = {key: model.get_layer(layer).output for key, layer in taps.items()}
    return keras.Model(model.input, outputs, name=f"{model.name}_features")
