"""Loading weight files into our models: validated in full, then assigned at once.

Two formats are read here:

* Keras 3 ``.weights.h5`` (what ``model.save_weights`` writes): matched by layer
  name, which Keras stores with every layer's variables;
* legacy Keras HDF5 (``.h5``: keras.applications' published files, Keras 2 saves):
  matched by name when the names are ours, else by the order of weighted layers,
  which is how Keras itself loads keras.applications' files (their layer names are
  Keras 2's automatic ``conv2d_37``); our v3, IRv2 and Xception keep
  keras.applications' order for that reason.

Every tensor is checked before any is assigned, so a bad file never leaves a model
half loaded, and the error names the first layer that does not fit.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np

__all__ = ["WeightFileError", "assign_plan", "is_classifier_layer", "is_head_layer",
           "load_weights"]


class WeightFileError(ValueError):
    """A weight file that cannot be read or does not fit the model.

    A ``ValueError``; nothing has been assigned when it is raised.

    Example:
        >>> import os, tempfile
        >>> import keras_inception
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=3)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "empty.weights.h5")
        ...     _ = open(path, "wb").write(b"not hdf5")
        ...     try:
        ...         keras_inception.load_weights(model, path)
        ...     except keras_inception.WeightFileError as err:
        ...         print(str(err).split(":")[0])  # doctest: +ELLIPSIS
        Cannot read weight file '...empty.weights.h5'
    """


def is_classifier_layer(layer_name) -> bool:
    """A layer with one output per class: the classifier or an aux head's.

    Args:
        layer_name: a layer name (None and ``""`` are no layer).

    Returns:
        True for ``predictions`` and ``*_predictions``.

    Example:
        >>> from keras_inception.weights_io import is_classifier_layer
        >>> is_classifier_layer("aux_predictions"), is_classifier_layer("mixed_5b")
        (True, False)
    """
    return bool(layer_name) and (layer_name == "predictions" or
                                 layer_name.endswith("_predictions"))


def _read_keras3(f) -> Dict[str, List[np.ndarray]]:
    found: Dict[str, List[np.ndarray]] = {}

    def visit(path, obj):
        if isinstance(obj, h5py.Group) and path.endswith("vars") and "name" in obj.attrs:
            arrays = [np.asarray(obj[k]) for k in sorted(obj.keys(), key=int)]
            if arrays:
                found[str(obj.attrs["name"])] = arrays

    f.visititems(visit)
    return found


def _decode(names):
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def _read_legacy(f) -> List[Tuple[str, List[np.ndarray]]]:
    group = f["model_weights"] if "model_weights" in f else f
    layers = []
    for name in _decode(group.attrs["layer_names"]):
        weight_names = _decode(group[name].attrs.get("weight_names", []))
        arrays = [np.asarray(group[name][w]) for w in weight_names]
        if arrays:
            layers.append((name, arrays))
    return layers


def _read_weight_file(path) -> Tuple[str, object]:
    """Returns ``("keras3", {layer: arrays})`` or ``("legacy", [(layer, arrays)])``."""
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or (
                    "model_weights" in f and "layer_names" in f["model_weights"].attrs):
                return "legacy", _read_legacy(f)
            found = _read_keras3(f)
    except (OSError, KeyError) as e:
        raise WeightFileError(
            f"Cannot read weight file {os.fspath(path)!r}: {e}. Expected a Keras "
            f".weights.h5 or a legacy Keras .h5 file; re-download or re-save it.") from e
    if not found:
        raise WeightFileError(
            f"Weight file {os.fspath(path)!r} holds no layer weights: is it a Keras "
            f"weights file?")
    return "keras3", found


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


def _plan_by_name(model, found: Dict[str, List[np.ndarray]], skip_missing):
    plan, missing = [], []
    for layer in _weighted_layers(model):
        if layer.name in found:
            plan.append((layer, found[layer.name]))
        else:
            missing.append(layer.name)
    extra = [name for name in found if name not in {l.name for l in model.layers}]
    extra_heads = [n for n in extra if is_classifier_layer(n)]
    other_extra = [n for n in extra if n not in extra_heads and not is_head_layer(n)]
    if missing and not skip_missing:
        head = [n for n in missing if is_classifier_layer(n)]
        if head:
            raise WeightFileError(
                f"The weight file has no weights for the classifier layer(s) {head}: "
                f"it was saved without them (include_top=False or aux_logits=False). "
                f"Build the model the same way, or call "
                f"keras_inception.load_weights(model, path, skip_missing=True) to keep "
                f"those layers' initial weights.")
        raise WeightFileError(
            f"The weight file has no weights for layer {missing[0]!r} "
            f"({len(missing)} layers missing): it was saved from a different "
            f"architecture or variant.")
    if other_extra:
        raise WeightFileError(
            f"The weight file has weights for layer {other_extra[0]!r}, which this "
            f"model lacks ({len(other_extra)} such layers): it belongs to a different "
            f"architecture or variant.")
    return plan


def is_head_layer(layer_name) -> bool:
    """Head layers a headless model may ignore (classifier, aux heads).

    Args:
        layer_name: a layer name (None and ``""`` are no layer).

    Returns:
        True for the classifier and every auxiliary-head layer (``aux*``).

    Example:
        >>> from keras_inception.weights_io import is_head_layer
        >>> is_head_layer("aux1_fc1"), is_head_layer("predictions"), is_head_layer("stem")
        (True, True, False)
    """
    return bool(layer_name) and (layer_name.startswith("aux") or
                                 is_classifier_layer(layer_name))


def _plan_by_order(model, layers, order: List[str]):
    by_name = {layer.name: layer for layer in model.layers}
    targets = [by_name[name] for name in order if name in by_name]
    if len(layers) < len(targets):
        raise WeightFileError(
            f"The legacy weight file has {len(layers)} weighted layers, the model "
            f"expects {len(targets)}: was it saved with include_top=False? Build the "
            f"model with include_top=False to load it.")
    if len(layers) > len(targets):
        heads = [l for l in targets if not is_classifier_layer(l.name)]
        if len(layers) - len(targets) == 1 and len(heads) == len(targets):
            layers = layers[:len(targets)]  # the file's classifier; headless model
        else:
            raise WeightFileError(
                f"The legacy weight file has {len(layers)} weighted layers, the model "
                f"expects {len(targets)}: it belongs to a different architecture.")
    return [(layer, arrays) for layer, (_, arrays) in zip(targets, layers)]


def _check_plan(plan):
    """Raises :class:`WeightFileError` on the first ``(layer, arrays)`` that does not fit."""
    for layer, arrays in plan:
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected == got:
            continue
        if is_classifier_layer(layer.name) and len(expected) == len(got) and \
                expected[0][:-1] == got[0][:-1]:
            raise WeightFileError(
                f"The weight file's classifier {layer.name!r} has {got[0][-1]} classes "
                f"but the model was built with classes={expected[0][-1]}. Build it "
                f"with classes={got[0][-1]}, or with include_top=False and your own "
                f"head to reuse the body.")
        hint = ""
        if "bn" in layer.name and len(got) != len(expected):
            has = "has" if len(got) > len(expected) else "lacks"
            hint = (f" The file's BatchNormalization {has} gamma: build with "
                    f"bn_scale={len(got) > len(expected)}.")
        raise WeightFileError(
            f"Weights of layer {layer.name!r} do not fit: the file has shapes {got}, "
            f"the model expects {expected}.{hint} Nothing was loaded.")


def assign_plan(plan):
    """Checks every ``(layer, arrays)`` of ``plan``, then assigns them all.

    A plan that does not fit raises before any weight changes.

    Args:
        plan: ``[(layer, [numpy arrays])]``, the arrays in ``layer.weights`` order.

    Raises:
        WeightFileError: the first layer whose arrays do not fit (both shapes in
            the message, with a hint for class counts and BN gamma).

    Example:
        >>> import numpy as np, keras
        >>> from keras_inception.weights_io import assign_plan
        >>> dense = keras.layers.Dense(2)
        >>> dense.build((None, 3))
        >>> assign_plan([(dense, [np.ones((3, 2)), np.zeros(2)])])
        >>> float(np.asarray(dense.kernel).sum())
        6.0
    """
    _check_plan(plan)
    for layer, arrays in plan:
        layer.set_weights(arrays)


def load_weights(model, path, *, info=None, skip_missing=False):
    """Loads a weight file into ``model`` after checking every tensor.

    Args:
        model: a keras_inception model.
        path: a Keras ``.weights.h5`` file, or a legacy Keras ``.h5`` (including
            keras.applications' published files for InceptionV3,
            InceptionResNetV2 and Xception).
        info: the model's :class:`~keras_inception.registry.ModelInfo` (inferred
            from the model when omitted).
        skip_missing: keep the initial weights of layers the file lacks (e.g. aux
            heads absent from keras.applications' files) instead of raising.

    Raises:
        WeightFileError: unreadable file, a missing or extra layer, or a tensor
            whose shape differs (named, with both shapes). Nothing is assigned then.

    Example:
        >>> import os, tempfile
        >>> import keras_inception
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=3)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "googlenet.weights.h5")
        ...     model.save_weights(path)
        ...     keras_inception.load_weights(model, path)
    """
    kind, content = _read_weight_file(path)
    if kind == "keras3":
        plan = _plan_by_name(model, content, skip_missing)
    else:
        ours = {layer.name for layer in model.layers}
        if all(name in ours or is_head_layer(name) for name, _ in content):
            plan = _plan_by_name(model, dict(content), skip_missing)
        else:
            plan = _plan_by_order(model, content, _legacy_order(model, info))
    assign_plan(plan)


def _legacy_order(model, info) -> List[str]:
    from keras_inception.features import infer_info

    info = info or infer_info(model)
    if not info.keras_applications:
        raise WeightFileError(
            f"This legacy .h5 file's layer names are not {info.name}'s, and "
            f"{info.name} has no keras.applications counterpart to match by order. "
            f"Convert the file (python -m keras_inception.convert) or save weights "
            f"from a keras_inception model.")
    return [layer.name for layer in _weighted_layers(model)]
