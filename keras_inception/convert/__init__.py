"""Converting upstream checkpoints (TF-Slim, torchvision, timm) into our models.

A conversion is the family's reference layout (:mod:`keras_inception.refmaps`) read
backwards: every upstream tensor is looked up by its published key, checked against
its published shape, transformed explicitly (transposes, background-class drop,
gamma folding) and placed in the layer the layout names. Every tensor is checked
before any is assigned; keys the layout does not know are an error, except
bookkeeping (``global_step``, optimizer slots) and the heads of a model built
without them.

Command line::

    python -m keras_inception.convert SOURCE --model NAME --out FILE.weights.h5
"""

from __future__ import annotations

import collections
import logging
from typing import Dict, Mapping, Optional

import numpy as np

from keras_inception import refmaps
from keras_inception.convert import readers
from keras_inception.weights_io import (
    WeightFileError, assign_plan, is_classifier_layer, is_head_layer)

__all__ = ["ConversionError", "convert_file", "load_upstream"]

log = logging.getLogger(__name__)

# Which layouts read which file format, in order of preference (timm's
# inception_v3 keeps torchvision's module names, so one layout serves both).
LAYOUTS_FOR_FORMAT = {
    readers.SAFETENSORS: ("timm", "torchvision"),
    readers.TORCH: ("torchvision", "timm"),
    readers.TF_CHECKPOINT: ("tf_slim", "facenet"),
}
# Variables in TF checkpoints that are not weights of the network.
_TF_BOOKKEEPING = ("global_step", "/ExponentialMovingAverage", "/Momentum", "/RMSProp")


class ConversionError(WeightFileError):
    """An upstream checkpoint that does not fit the model (named tensor and shapes).

    A :class:`~keras_inception.weights_io.WeightFileError`; nothing has been
    assigned when it is raised.

    Example:
        >>> import keras_inception
        >>> from keras_inception.convert import ConversionError
        >>> issubclass(ConversionError, keras_inception.WeightFileError)
        True
    """


def _pick_layout(model_name: str, fmt: str, layout: Optional[str] = None) -> str:
    """The layout of ``model_name`` that reads files of format ``fmt``."""
    from keras_inception.manifest import layouts_of

    available = layouts_of(model_name)
    if layout is not None:
        if layout not in available:
            raise ConversionError(
                f"{model_name} has no {layout!r} layout; it has: {sorted(available)}.")
        return layout
    for candidate in LAYOUTS_FOR_FORMAT.get(fmt, ()):
        if candidate in available:
            return candidate
    raise ConversionError(
        f"{model_name} has no layout for {fmt} files (its layouts: "
        f"{sorted(available)}).")


def _classes(model) -> Optional[int]:
    names = {layer.name: layer for layer in model.layers}
    head = names.get("predictions")
    return int(head.weights[0].shape[-1]) if head is not None else None


def _head_keys_absent_from(model, model_name, layout) -> set:
    """Upstream keys of heads (classifier, aux) that ``model`` was built without."""
    from keras_inception.manifest import load_manifest

    present = {layer.name for layer in model.layers}
    rows = load_manifest(model_name)["layouts"][layout]
    # Bookkeeping rows (num_batches_tracked) name no layer: those of absent heads
    # are as ignorable as the heads' weights.
    return {key for key, _, layer, _, transform in rows
            if (is_head_layer(layer) and layer not in present) or transform == refmaps.SKIP}


def _plan_from_tensors(model, tensors: Mapping[str, np.ndarray], layout: str, *,
                      model_name=None, skip_missing=False):
    """Turns upstream ``tensors`` into ``[(layer, arrays)]`` for ``model``.

    Returns ``(plan, report)``; raises :class:`ConversionError` naming the first
    tensor that is missing, unexpected or of the wrong shape.
    """
    from keras_inception.features import infer_info
    from keras_inception.manifest import layouts_of

    name = model_name or infer_info(model).name
    classes = _classes(model)
    drop_background = layout in refmaps.BACKGROUND_CLASS_HEADS and classes == 1000
    entries = refmaps.build_layout(model, layouts_of(name)[layout],
                                   classes_offset=1 if drop_background else 0)
    values: Dict[str, Dict[str, np.ndarray]] = collections.defaultdict(dict)
    gammas = {}
    for entry in entries:
        tensor = tensors.get(entry.key)
        if tensor is None:
            if entry.transform == refmaps.SKIP:
                continue  # bookkeeping some exports leave out (num_batches_tracked)
            if is_head_layer(entry.layer) and entry.layer != "predictions":
                if skip_missing:
                    continue
                raise ConversionError(
                    f"The checkpoint has no tensor {entry.key!r} of the auxiliary "
                    f"head {entry.layer!r}: build the model with aux_logits=False, or "
                    f"pass skip_missing=True to keep the aux heads' initial weights.")
            raise ConversionError(
                f"The checkpoint has no tensor {entry.key!r} (for our layer "
                f"{entry.layer!r}): it is not a {layout} {name} checkpoint, or it was "
                f"saved without that part.")
        if tuple(tensor.shape) != entry.shape:
            if is_head_layer(entry.layer):
                raise ConversionError(
                    f"The checkpoint's classifier tensor {entry.key!r} has shape "
                    f"{tuple(tensor.shape)}, the model's {entry.shape}: build the model "
                    f"with the checkpoint's class count (1000 or, for TF-Slim, 1001 "
                    f"with the background class), or include_top=False.")
            raise ConversionError(
                f"Tensor {entry.key!r} has shape {tuple(tensor.shape)}, but our layer "
                f"{entry.layer!r} needs {entry.shape} (upstream layout): the checkpoint "
                f"does not match {name}.")
        if entry.transform == refmaps.SKIP:
            continue
        value = refmaps.apply_transform(np.asarray(tensor), entry.transform)
        if drop_background and is_classifier_layer(entry.layer):
            value = value[..., 1:]
        if entry.transform == refmaps.FOLD_GAMMA:
            gammas[entry.layer] = value
        else:
            values[entry.layer][entry.weight] = value
    for bn, gamma in gammas.items():
        _fold_gamma(values, bn, gamma)
    used = {e.key for e in entries}
    ignorable = _head_keys_absent_from(model, name, layout)
    ignored, unexpected = [], []
    for key in tensors:
        if key in used:
            continue
        if key in ignorable or any(part in key for part in _TF_BOOKKEEPING):
            ignored.append(key)
        else:
            unexpected.append(key)
    if unexpected:
        raise ConversionError(
            f"The checkpoint has {len(unexpected)} tensor(s) the {layout} layout of "
            f"{name} does not know, first {unexpected[0]!r}: it is a different "
            f"architecture or variant.")
    plan = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in values:
            if skip_missing and is_head_layer(layer.name):
                continue
            raise ConversionError(
                f"The checkpoint has no weights for our layer {layer.name!r}"
                + (" (the checkpoint has no auxiliary heads: build with "
                   "aux_logits=False, or pass skip_missing=True to train them from "
                   "their initial weights)" if layer.name.startswith("aux") else "")
                + ".")
        names = [w.path.split("/")[-1] for w in layer.weights]
        plan.append((layer, [values[layer.name][n] for n in names]))
    report = {"layout": layout, "tensors": len(tensors), "ignored": sorted(ignored),
              "folded_gammas": len(gammas), "dropped_background": drop_background}
    return plan, report


def _fold_gamma(values, bn: str, gamma: np.ndarray):
    """gamma * (W x - m) / s + b == (gamma W x - gamma m) / s + b: exact, any sign."""
    if np.all(gamma == 1.0):
        return
    conv = bn[: -len("_bn")] + "_conv"
    if conv not in values or "kernel" not in values[conv]:
        raise ConversionError(
            f"Cannot fold the upstream gamma of {bn!r}: no convolution {conv!r} "
            f"before it. Build the model with bn_scale=True.")
    values[conv]["kernel"] = values[conv]["kernel"] * gamma
    values[bn]["moving_mean"] = values[bn]["moving_mean"] * gamma


def convert_file(path, model_name: str, out: str, *, layout=None, fmt=None,
                 classes=None) -> dict:
    """Converts an upstream checkpoint into our ``.weights.h5`` (offline).

    The model is built with its classifier (``classes`` defaults to 1000) and, when
    the checkpoint has trained auxiliary heads, with them, so ``out`` keeps every
    tensor; ``weights=out`` then loads into any configuration of the family.

    Args:
        path: a timm ``.safetensors``, a torchvision ``.pth`` or a TF-Slim
            checkpoint (directory, prefix or ``.tar.gz``).
        model_name: the registry name of the checkpoint's family.
        out: the ``.weights.h5`` file to write.
        layout: the reference layout to read it by (default: by file format).
        fmt: the file format (default: from the name).
        classes: 1001 keeps TF-Slim's background class; default 1000.

    Returns:
        The report of :func:`load_upstream`, plus ``aux`` (whether the aux heads
        were converted) and ``out``.

    Raises:
        ConversionError: a missing, unexpected or misshapen tensor (named).
        keras_inception.convert.readers.SourceFormatError: an unreadable file.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from safetensors.numpy import save_file
        >>> from keras_inception.convert import convert_file
        >>> from keras_inception.manifest import load_manifest
        >>> rows = load_manifest("googlenet")["layouts"]["torchvision"]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     source = os.path.join(tmp, "googlenet.pth.safetensors")
        ...     save_file({k: np.zeros(s, "float32") for k, s, *_ in rows}, source)
        ...     out = os.path.join(tmp, "googlenet.weights.h5")
        ...     report = convert_file(source, "googlenet", out, layout="torchvision")
        ...     os.path.isfile(out)
        True
        >>> report["layout"], report["aux"]
        ('torchvision', True)
    """
    from keras_inception.manifest import load_manifest
    from keras_inception.registry import get_model_info

    info = get_model_info(model_name)
    fmt = fmt or readers.detect_format(path)
    layout = _pick_layout(info.name, fmt, layout)
    tensors = readers.read(path, fmt)
    rows = load_manifest(info.name)["layouts"][layout]
    has_aux = any(layer and layer.startswith("aux") and key in tensors
                  for key, _, layer, _, _ in rows)
    kwargs = {"aux_logits": True} if has_aux and info.aux_heads else {}
    model = info.constructor(input_shape=(None, None, 3), classes=classes or 1000,
                             **kwargs)
    plan, report = _plan_from_tensors(model, tensors, layout, model_name=info.name)
    assign_plan(plan)
    model.save_weights(out)
    return {**report, "aux": bool(kwargs), "out": out}


def load_upstream(model, path, *, layout=None, fmt=None, model_name=None,
                  skip_missing=False) -> dict:
    """Loads an upstream checkpoint file into ``model`` (all checked, then assigned).

    Args:
        model: a keras_inception model of the checkpoint's family.
        path: a timm ``.safetensors``, a torchvision ``.pth`` or a TF-Slim
            checkpoint (directory, prefix or ``.tar.gz``).
        layout: the reference layout to read it by (default: by file format).
        fmt: the file format (default: from the name).
        model_name: the registry name of ``model`` (default: inferred).
        skip_missing: keep initial weights for heads the checkpoint lacks.

    Returns:
        A report: the layout used, tensors read and ignored, gammas folded.

    Raises:
        ConversionError: a missing, unexpected or misshapen tensor (named); nothing
            is assigned then.
        keras_inception.convert.readers.SourceFormatError: an unreadable file.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from safetensors.numpy import save_file
        >>> import keras_inception
        >>> from keras_inception.convert import load_upstream
        >>> from keras_inception.manifest import load_manifest
        >>> rows = load_manifest("xception")["layouts"]["timm"]
        >>> model = keras_inception.Xception(input_shape=(71, 71, 3))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "x.safetensors")
        ...     save_file({k: np.ones(s, "float32") for k, s, *_ in rows}, path)
        ...     load_upstream(model, path)["layout"]
        'timm'
    """
    from keras_inception.features import infer_info

    fmt = fmt or readers.detect_format(path)
    name = model_name or infer_info(model).name
    layout = _pick_layout(name, fmt, layout)
    tensors = readers.read(path, fmt)
    plan, report = _plan_from_tensors(model, tensors, layout, model_name=name,
                                     skip_missing=skip_missing)
    assign_plan(plan)
    log.info("Loaded %s (%s layout): %s", path, layout, report)
    return report
