"""Image preprocessing, ImageNet class names and decoding of predictions.

Pretrained weights only work on inputs scaled the way they were trained, so the
scaling is named (a *mode*) and travels with the weights:

* ``"inception"``: ``x / 127.5 - 1`` maps 0..255 to [-1, 1]. TF-Slim and
  keras.applications trained every Inception and Xception on this (keras.applications
  calls it ``"tf"``).
* ``"torch"``: ``(x / 255 - mean) / std`` with the ImageNet RGB statistics, as
  torchvision and most of timm.
* ``"caffe"``: RGB to BGR, then subtract the ImageNet BGR mean (no scaling), as the
  Caffe-era models in keras.applications.

The ImageNet class names (``data/imagenet_classes.json``) are the 1000 ILSVRC-2012
classes in the order every 1000-way ImageNet classifier uses (sorted by WordNet id),
the same content as Keras' ``imagenet_class_index.json``; TF-Slim's 1001-way
classifiers put a ``"background"`` class first. Nothing here touches the network.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import List, Optional, Sequence, Tuple

import keras
import numpy as np

__all__ = ["attach_preprocessing", "decode_predictions", "imagenet_classes", "load_image",
           "preprocess_input", "preprocessing_for"]

MODES = ("inception", "torch", "caffe")

_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

# Every family's reference weights come from TensorFlow (TF-Slim, keras.applications,
# FaceNet's (x - 127.5) / 128, within 0.4% of it), all trained on [-1, 1] inputs.
# Weights converted from elsewhere say otherwise through their registry entry.
_FAMILY_DEFAULT_MODE = "inception"

# Where a model built with named weights records their mode (see attach_preprocessing).
MODEL_ATTRIBUTE = "_keras_inception_preprocessing"

_DATA_DIR = os.path.join(os.path.dirname(__file__), "resources")
_BACKGROUND = ("background", "background")


def _check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(
            f"Unknown preprocessing mode {mode!r}. Use one of: {', '.join(MODES)}.")
    return mode


def _channel_axis(x, data_format: str) -> int:
    shape = tuple(x.shape)
    if data_format == "channels_last":
        if len(shape) < 1 or shape[-1] not in (3, None):
            raise ValueError(
                f"preprocess_input expects RGB images with 3 channels on the last axis "
                f"(data_format='channels_last'); got shape {shape}. Pass "
                f"data_format='channels_first' for (..., 3, height, width) arrays.")
        return len(shape) - 1
    if data_format == "channels_first":
        if len(shape) < 3 or shape[-3] not in (3, None):
            raise ValueError(
                f"preprocess_input expects RGB images of shape (..., 3, height, width) "
                f"with data_format='channels_first'; got shape {shape}.")
        return len(shape) - 3
    raise ValueError(
        f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}.")


def preprocess_input(x, mode: str = "inception", data_format: Optional[str] = None):
    """Scales RGB images with values in 0..255 to what pretrained weights expect.

    Args:
        x: images, a NumPy array (or nested lists) or a backend tensor (also a
            symbolic Keras tensor, to preprocess inside a model), of any leading
            shape, RGB, values in 0..255, any numeric dtype.
        mode: ``"inception"`` (``x / 127.5 - 1``), ``"torch"`` (``x / 255``, then
            ImageNet mean and std per channel) or ``"caffe"`` (RGB to BGR, minus the
            ImageNet BGR mean). :func:`preprocessing_for` tells a model's mode.
        data_format: ``"channels_last"`` (``(..., height, width, 3)``) or
            ``"channels_first"`` (``(..., 3, height, width)``); defaults to
            ``keras.config.image_data_format()``.

    Returns:
        A new float32 array (NumPy in, NumPy out) or tensor; the input is unchanged.

    Example:
        >>> import numpy as np
        >>> from keras_inception.preprocessing import preprocess_input
        >>> x = np.array([[[0, 127.5, 255]]])                 # one RGB pixel
        >>> preprocess_input(x, data_format="channels_last").tolist()
        [[[-1.0, 0.0, 1.0]]]
        >>> print(preprocess_input(x, mode="caffe", data_format="channels_last").round(3))
        [[[ 151.061   10.721 -123.68 ]]]
    """
    _check_mode(mode)
    data_format = data_format or keras.config.image_data_format()
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    axis = _channel_axis(x, data_format)
    # Per-channel constants shaped to broadcast against the channel axis.
    bshape = (3,) + (1,) * (len(x.shape) - 1 - axis)
    if isinstance(x, np.ndarray):
        # Every step below allocates, so the caller's array is never written to.
        x = x.astype(np.float32)
        if mode == "inception":
            return x / np.float32(127.5) - np.float32(1.0)
        if mode == "torch":
            mean = np.reshape(np.asarray(_TORCH_MEAN, np.float32), bshape)
            std = np.reshape(np.asarray(_TORCH_STD, np.float32), bshape)
            return (x / np.float32(255.0) - mean) / std
        mean = np.reshape(np.asarray(_CAFFE_BGR_MEAN, np.float32), bshape)
        return np.flip(x, axis=axis) - mean
    ops = keras.ops
    x = ops.cast(x, "float32")
    if mode == "inception":
        return x / 127.5 - 1.0
    if mode == "torch":
        mean = ops.reshape(ops.convert_to_tensor(_TORCH_MEAN, "float32"), bshape)
        std = ops.reshape(ops.convert_to_tensor(_TORCH_STD, "float32"), bshape)
        return (x / 255.0 - mean) / std
    mean = ops.reshape(ops.convert_to_tensor(_CAFFE_BGR_MEAN, "float32"), bshape)
    return ops.flip(x, axis=axis) - mean


def attach_preprocessing(model, mode: str):
    """Records on ``model`` the preprocessing mode its weights need, and returns it.

    Meant for the code that loads named weights; :func:`preprocessing_for` reads it
    back. The record is a plain attribute: it does not survive saving and reloading.

    Args:
        model: a Keras model.
        mode: ``"inception"``, ``"torch"`` or ``"caffe"``.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: an unknown mode.

    Example:
        >>> import keras
        >>> from keras_inception.preprocessing import attach_preprocessing, preprocessing_for
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()],
        ...                          name="my_net")
        >>> preprocessing_for(attach_preprocessing(model, "torch"))
        'torch'
    """
    setattr(model, MODEL_ATTRIBUTE, _check_mode(mode))
    return model


def _entry_mode(entry):
    mode = entry.get("preprocessing") if isinstance(entry, Mapping) else getattr(
        entry, "preprocessing", None)
    if mode is None:
        raise ValueError(
            f"The weights entry {entry!r} has no 'preprocessing' field; it should name "
            f"one of: {', '.join(MODES)}.")
    return _check_mode(mode)


def _family_mode(name: str) -> Optional[str]:
    from keras_inception.registry import get_model_info

    try:
        get_model_info(name)
    except ValueError:
        return None
    return _FAMILY_DEFAULT_MODE


def preprocessing_for(model_or_name_or_mode, weights_entry=None) -> str:
    """The preprocessing mode (for :func:`preprocess_input`) that weights expect.

    Args:
        model_or_name_or_mode: a mode (returned as is), a registry model name or
            alias (its family's default: ``"inception"`` for every family, whose
            reference weights all come from TensorFlow), or a Keras model: the mode
            recorded by :func:`attach_preprocessing` when its weights were loaded,
            else its family's default if its name is a registry name.
        weights_entry: optional entry of the pretrained-weights registry (a mapping
            or an object with a ``preprocessing`` field); it wins over the rest.

    Returns:
        One of :data:`MODES`.

    Example:
        >>> from keras_inception.preprocessing import preprocessing_for
        >>> preprocessing_for("inception_v3")
        'inception'
        >>> preprocessing_for("googlenet", weights_entry={"preprocessing": "torch"})
        'torch'
    """
    if weights_entry is not None:
        return _entry_mode(weights_entry)
    target = model_or_name_or_mode
    if isinstance(target, str):
        if target in MODES:
            return target
        mode = _family_mode(target)
        if mode is None:
            from keras_inception.registry import list_models

            raise ValueError(
                f"{target!r} is neither a preprocessing mode ({', '.join(MODES)}) nor a "
                f"model name ({', '.join(list_models())}).")
        return mode
    if isinstance(target, keras.Model):
        recorded = getattr(target, MODEL_ATTRIBUTE, None)
        if recorded is not None:
            return _check_mode(recorded)
        mode = _family_mode(target.name)
        if mode is None:
            raise ValueError(
                f"Cannot tell the preprocessing of model {target.name!r}: it records "
                f"none and its name is not a registry name. Pass the mode its weights "
                f"were trained with: one of {', '.join(MODES)}.")
        return mode
    raise TypeError(
        f"preprocessing_for takes a mode, a model name or a keras.Model, got "
        f"{type(target).__name__}.")


@functools.lru_cache(maxsize=1)
def _load_classes() -> Tuple[Tuple[str, str], ...]:
    path = os.path.join(_DATA_DIR, "imagenet_classes.json")
    with open(path, encoding="utf8") as f:
        classes = json.load(f)["classes"]
    return tuple((wnid, name) for wnid, name in classes)


def imagenet_classes(num_classes: int = 1000) -> List[Tuple[str, str]]:
    """The ImageNet classes as ``(wnid, name)`` pairs, in a classifier's output order.

    Args:
        num_classes: 1000 (ILSVRC-2012, sorted by WordNet id) or 1001 (TF-Slim:
            ``("background", "background")`` first, then the 1000).

    Returns:
        A list of ``(wnid, name)`` tuples.

    Raises:
        ValueError: any other ``num_classes``.

    Example:
        >>> from keras_inception.preprocessing import imagenet_classes
        >>> imagenet_classes()[0], imagenet_classes(1001)[1]
        (('n01440764', 'tench'), ('n01440764', 'tench'))
    """
    classes = list(_load_classes())
    if num_classes == 1000:
        return classes
    if num_classes == 1001:
        return [_BACKGROUND] + classes
    raise ValueError(
        f"ImageNet classifiers have 1000 classes (1001 with TF-Slim's background "
        f"class), got num_classes={num_classes!r}.")


def _as_pairs(classes: Sequence) -> List[Tuple[str, str]]:
    pairs = []
    for c in classes:
        pairs.append((c, c) if isinstance(c, str) else (str(c[0]), str(c[1])))
    return pairs


def decode_predictions(preds, top: int = 5, classes: Optional[Sequence] = None):
    """The ``top`` classes of each sample, best first, as ``(wnid, name, score)``.

    Args:
        preds: scores of shape ``(batch, classes)``, NumPy or a backend tensor: 1000
            columns (ImageNet) or 1001 (TF-Slim, column 0 is ``"background"``), or
            any width with ``classes``.
        top: how many classes per sample (at most the number of columns).
        classes: optional class list for other label sets: names, or
            ``(id, name)`` pairs, one per column.

    Returns:
        A list (one per sample) of lists of ``(wnid, name, score)`` tuples.

    Example:
        >>> import numpy as np
        >>> from keras_inception.preprocessing import decode_predictions
        >>> preds = np.zeros((1, 1000)); preds[0, 1] = 0.75
        >>> decode_predictions(preds, top=1)
        [[('n01443537', 'goldfish', 0.75)]]
    """
    if not isinstance(preds, np.ndarray):
        preds = keras.ops.convert_to_numpy(preds)
    if preds.ndim != 2:
        raise ValueError(
            f"decode_predictions expects a batch of scores of shape (batch, classes), "
            f"got shape {preds.shape}.")
    width = preds.shape[1]
    if classes is not None:
        names = _as_pairs(classes)
        if len(names) != width:
            raise ValueError(
                f"decode_predictions got {len(names)} class names for predictions with "
                f"{width} columns.")
    elif width in (1000, 1001):
        names = imagenet_classes(width)
    else:
        raise ValueError(
            f"decode_predictions decodes ImageNet predictions with 1000 or 1001 "
            f"columns, got shape {preds.shape}. Pass classes=[...] for another label "
            f"set.")
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}.")
    results = []
    for row in preds:
        # Stable sort: ties keep column order, so the result is deterministic.
        best = np.argsort(-row, kind="stable")[:top]
        results.append([names[i] + (float(row[i]),) for i in best])
    return results


_RESAMPLING = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def _crop_box(width: int, height: int, out_w: int, out_h: int, crop_fraction):
    """Central box (left, top, right, bottom) of the image, in float pixel units."""
    if crop_fraction is None:
        return 0.0, 0.0, float(width), float(height)
    # Largest central box with the output's aspect ratio, shrunk by crop_fraction:
    # the same region as "resize the shorter side to size / crop_fraction, then
    # center-crop size" (timm's eval), read in one resampling step.
    aspect = out_w / out_h
    box_w, box_h = (height * aspect, float(height)) if width / height > aspect else (
        float(width), width / aspect)
    box_w, box_h = box_w * crop_fraction, box_h * crop_fraction
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return left, top, left + box_w, top + box_h


def load_image(path, size, crop_fraction: Optional[float] = 0.875,
               interpolation: str = "bilinear", data_format: Optional[str] = None):
    """Reads an image file as a float32 RGB array in 0..255, center-cropped and resized.

    The crop is the usual ImageNet evaluation crop: the central square (or the
    output's aspect ratio) covering ``crop_fraction`` of the shorter side, resized to
    ``size``; equivalently, the shorter side resized to ``size / crop_fraction``,
    then the center ``size`` cut out (timm's eval transform). The aspect ratio is
    kept. TF-Slim's eval instead keeps 87.5% of each side and then squeezes the crop
    to a square: on square images the two agree.

    Args:
        path: an image file Pillow can read (JPEG, PNG, ...); converted to RGB.
        size: output side, or ``(height, width)``.
        crop_fraction: fraction of the shorter side kept (``0.875`` is TF-Slim's and
            timm's for 224/299 inputs; ``1.0`` keeps the largest central square);
            None resizes the whole image to ``size``, distorting its aspect ratio.
        interpolation: ``"bilinear"`` (default), ``"bicubic"``, ``"nearest"``,
            ``"lanczos"``, ``"box"`` or ``"hamming"``. Pillow anti-aliases when
            shrinking.
        data_format: ``"channels_last"`` (``(height, width, 3)``) or
            ``"channels_first"`` (``(3, height, width)``); defaults to
            ``keras.config.image_data_format()``.

    Returns:
        A float32 NumPy array; feed it to :func:`preprocess_input`.

    Example:
        >>> import os, tempfile
        >>> import numpy as np, keras
        >>> from keras_inception.preprocessing import load_image
        >>> path = os.path.join(tempfile.mkdtemp(), "gray.png")
        >>> keras.utils.save_img(path, np.full((40, 60, 3), 128, "uint8"),
        ...                      data_format="channels_last", scale=False)
        >>> image = load_image(path, 16, data_format="channels_last")
        >>> image.shape, image.dtype, float(image.max())
        ((16, 16, 3), dtype('float32'), 128.0)
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            "load_image needs Pillow: pip install pillow") from err
    if interpolation not in _RESAMPLING:
        raise ValueError(
            f"Unknown interpolation {interpolation!r}. Use one of: "
            f"{', '.join(_RESAMPLING)}.")
    out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be positive, got {size!r}.")
    if crop_fraction is not None and not 0.0 < crop_fraction <= 1.0:
        raise ValueError(
            f"crop_fraction must be in (0, 1] or None, got {crop_fraction!r}.")
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            f"data_format must be 'channels_last' or 'channels_first', got "
            f"{data_format!r}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file at {path!r}.")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read the image {path!r}: {err}") from err
    resample = getattr(Image.Resampling, interpolation.upper())
    box = _crop_box(image.width, image.height, out_w, out_h, crop_fraction)
    image = image.resize((out_w, out_h), resample=resample, box=box)
    array = np.asarray(image, dtype=np.float32)
    if data_format == "channels_first":
        array = np.ascontiguousarray(array.transpose(2, 0, 1))
    return array
