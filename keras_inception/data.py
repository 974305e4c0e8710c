"""Image data for fine-tuning: sources, splits, augmentation and a Keras dataset.

A *source* (:class:`ImageSource`) is a list of images (file paths or encoded
bytes) with integer labels and class names. Three make one:

* :func:`image_folder`: any folder with one subfolder per class (corrupt images
  are found when listing, skipped and counted);
* :func:`tfds_flowers`: TensorFlow Datasets' ``tf_flowers`` (3670 photos, 5
  classes), kept as encoded JPEG bytes so it is decoded exactly like files;
  raises :class:`DataUnavailable` at once when it cannot be downloaded;
* :func:`synthetic_flowers`: writes a small, learnable, generated image folder
  (``"synthetic-flowers"``) for machines without network.

:func:`load_flowers` chooses between them (saying so in one line when it falls
back), :func:`split` makes a stratified validation split and
:class:`ImageDataset` (a ``keras.utils.PyDataset``) decodes, augments and
preprocesses batches for ``model.fit`` on any backend. Augmentation uses core
Keras layers only, plus :class:`RandomResizedCrop` (Inception's crop, which core
Keras lacks), written with ``keras.ops`` so it runs on TensorFlow, JAX and PyTorch,
eagerly or compiled.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from typing import List, Optional, Sequence, Tuple

import keras
import numpy as np
from keras import ops

from keras_inception.download import ENV_OFFLINE, _offline
from keras_inception.preprocessing import _check_mode, _crop_box, preprocess_input

__all__ = [
    "DataUnavailable", "FlowersData", "ImageDataset", "ImageSource", "RandomResizedCrop",
    "augmentation", "image_folder", "load_flowers", "shard_part", "split",
    "synthetic_flowers", "tfds_flowers",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SYNTHETIC_NAME = "synthetic-flowers"
TF_FLOWERS = "tf_flowers"
# Where tfds downloads tf_flowers from (read from the builder when it says).
_TF_FLOWERS_URL = "http://download.tensorflow.org/example_images/flower_photos.tgz"
_PROBE_TIMEOUT = 4.0  # seconds for DNS + TCP connect to the download host
_EVAL_CROP = 0.875  # central crop of the evaluation images (TF-Slim, timm)
_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback
_MARKER = ".synthetic-flowers.json"  # written last: its presence means "complete"
_SYNTHETIC_FORMAT = 1  # bump when the drawing changes, so old folders are rebuilt


class DataUnavailable(RuntimeError):
    """A dataset cannot be had here (no network, or a package missing).

    The message is the reason, short enough to quote in one line. A
    ``RuntimeError``: :func:`load_flowers` catches it to fall back to the
    generated dataset; see :func:`tfds_flowers` for one being raised.

    Example:
        >>> from keras_inception.data import DataUnavailable
        >>> issubclass(DataUnavailable, RuntimeError)
        True
    """


# -- RandomResizedCrop -----------------------------------------------------------------

def _to_nhwc(images, data_format):
    images = ops.convert_to_tensor(images)
    if len(images.shape) not in (3, 4):
        raise ValueError(f"RandomResizedCrop expects images of rank 3 (one image) "
                         f"or 4 (a batch), got shape {tuple(images.shape)}.")
    unbatched = len(images.shape) == 3
    if unbatched:
        images = ops.expand_dims(images, 0)
    if data_format == "channels_first":
        images = ops.transpose(images, (0, 2, 3, 1))
    return images, unbatched


def _from_nhwc(images, unbatched, data_format):
    if data_format == "channels_first":
        images = ops.transpose(images, (0, 3, 1, 2))
    return images[0] if unbatched else images


def _draws(batch, seed):
    # One draw for everything, so that an integer seed yields independent parts:
    # area fractions and log aspects of each attempt, then the two offsets.
    return keras.random.uniform((batch, 2 * _ATTEMPTS + 2), seed=seed)


def _crop_boxes(images, draws, scale, ratio, data_format):
    """torchvision's RandomResizedCrop.get_params, vectorised over batch and attempts.

    Returns float32 ``(batch, 4)`` boxes ``(top, left, height, width)``.
    """
    images, _ = _to_nhwc(images, data_format)
    shape = ops.shape(images)
    height = ops.cast(shape[1], "float32")
    width = ops.cast(shape[2], "float32")
    k = _ATTEMPTS
    u = ops.cast(draws, "float32")
    target = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :k])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = ops.exp(log_lo + (log_hi - log_lo) * u[:, k:2 * k])
    w = ops.round(ops.sqrt(target * aspect))
    h = ops.round(ops.sqrt(target / aspect))
    fits = ops.logical_and(ops.logical_and(w > 0, h > 0),
                           ops.logical_and(w <= width, h <= height))
    # Index of the first attempt that fits (k when none does); argmax's choice
    # among ties is not guaranteed on every backend, a minimum is.
    first = ops.min(ops.where(fits, ops.arange(k, dtype="int32")[None, :], k), axis=1)
    found = first < k
    pick = ops.expand_dims(ops.minimum(first, k - 1), 1)
    w = ops.take_along_axis(w, pick, axis=1)[:, 0]
    h = ops.take_along_axis(h, pick, axis=1)[:, 0]
    # Fallback: the central crop with the aspect ratio clipped into `ratio`.
    in_ratio = width / height
    w = ops.where(found, w, ops.where(in_ratio > ratio[1], ops.round(height * ratio[1]),
                                      width))
    h = ops.where(found, h, ops.where(in_ratio < ratio[0], ops.round(width / ratio[0]),
                                      height))
    top = ops.where(found, ops.floor(u[:, 2 * k] * (height - h + 1)),
                    ops.floor((height - h) / 2))
    left = ops.where(found, ops.floor(u[:, 2 * k + 1] * (width - w + 1)),
                     ops.floor((width - w) / 2))
    # u < 1 keeps the box inside; the minimum guards float rounding.
    top = ops.minimum(top, height - h)
    left = ops.minimum(left, width - w)
    return ops.stack([top, left, h, w], axis=1)


def _resample(images, boxes, size, interpolation, data_format, dtype):
    """Each image's box (the whole image when ``boxes`` is None) resized to ``size``
    in one step: half-pixel centres, edges clamped to the box."""
    out_h, out_w = size
    images, unbatched = _to_nhwc(images, data_format)
    shape = ops.shape(images)
    batch, in_h, in_w, channels = shape[0], shape[1], shape[2], shape[3]
    if boxes is None:
        if isinstance(in_h, int) and isinstance(in_w, int) and (in_h, in_w) == size:
            return _from_nhwc(ops.cast(images, dtype), unbatched, data_format)
        h, w = ops.cast(in_h, "float32"), ops.cast(in_w, "float32")
        boxes = ops.broadcast_to(ops.stack([h * 0.0, w * 0.0, h, w])[None, :], (batch, 4))
    boxes = ops.cast(boxes, "float32")
    top, left, box_h, box_w = (boxes[:, i] for i in range(4))

    def coords(start, extent, n):
        # (i + 0.5) * extent is exact, and so is its division when the result is
        # whole: nearest-neighbour ties fall the same way on every backend.
        offset = (ops.arange(n, dtype="float32")[None, :] + 0.5) * extent[:, None] / n
        first, last = start[:, None], (start + extent - 1.0)[:, None]
        if interpolation == "nearest":
            pos = ops.minimum(start[:, None] + ops.floor(offset), last)
            return pos, pos, ops.zeros_like(pos)
        pos = ops.minimum(ops.maximum(start[:, None] + offset - 0.5, first), last)
        lo = ops.floor(pos)
        return lo, ops.minimum(lo + 1.0, last), pos - lo

    y0, y1, wy = coords(top, box_h, out_h)  # (batch, out_h)
    x0, x1, wx = coords(left, box_w, out_w)  # (batch, out_w)
    flat = ops.reshape(ops.cast(images, "float32"), (-1, channels))
    base = ops.arange(batch, dtype="int32")[:, None, None] * (in_h * in_w)

    def gather(ys, xs):
        index = base + ops.cast(ys, "int32")[:, :, None] * in_w + ops.cast(
            xs, "int32")[:, None, :]
        return ops.take(flat, index, axis=0)  # (batch, out_h, out_w, channels)

    wy = wy[:, :, None, None]
    wx = wx[:, None, :, None]
    top_row = gather(y0, x0) * (1.0 - wx) + gather(y0, x1) * wx
    bottom_row = gather(y1, x0) * (1.0 - wx) + gather(y1, x1) * wx
    out = top_row * (1.0 - wy) + bottom_row * wy
    return _from_nhwc(ops.cast(out, dtype), unbatched, data_format)


def _eager_jax(x) -> bool:
    """True for concrete (not traced) values on the JAX backend."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return not isinstance(x, jax.core.Tracer)


def _jax_key(seed):
    """A JAX random key from a seed: the key Keras itself makes from an int."""
    import jax.numpy as jnp

    if isinstance(seed, keras.random.SeedGenerator):
        return seed.next()
    if isinstance(seed, (int, np.integer)):
        return jnp.asarray([int(seed) & 0xFFFFFFFF, 0], dtype="uint32")
    return seed


# Eager JAX compiles every op for every new shape (seconds per call); one jitted
# function per computation is several times faster, and sharing them between
# layers of the same configuration compiles each once.
_JAX_FUNCTIONS: dict = {}


def _jax_function(kind: str, **config):
    key = (kind,) + tuple(sorted(config.items()))
    if key not in _JAX_FUNCTIONS:
        import functools

        import jax

        if kind == "draws":
            fn = jax.jit(_draws, static_argnums=0)
        elif kind == "boxes":
            fn = jax.jit(functools.partial(_crop_boxes, **config))
        elif kind == "resample":
            fn = jax.jit(functools.partial(_resample, **config))
        elif kind == "augment":  # ImageDataset's: its layers depend on the size only
            layers = augmentation(config["size"], data_format="channels_last").layers
            fn = jax.jit(functools.partial(_augmented, layers))
        else:  # "crop": boxes and resampling in one
            boxes_config = {k: config[k] for k in ("scale", "ratio", "data_format")}
            fn = jax.jit(lambda images, draws: _resample(
                images, _crop_boxes(images, draws, **boxes_config), config["size"],
                config["interpolation"], config["data_format"], config["dtype"]))
        _JAX_FUNCTIONS[key] = fn
    return _JAX_FUNCTIONS[key]


def _pair(value, what: str) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a pair (min, max), got {value!r}.") from err
    if not 0.0 < lo <= hi:
        raise ValueError(f"{what} must satisfy 0 < min <= max, got {value!r}.")
    return lo, hi


@keras.saving.register_keras_serializable(package="keras_inception")
class RandomResizedCrop(keras.layers.Layer):
    """Inception's random crop: a random box of random area and aspect, resized.

    Per image, as torchvision and the Inception papers: the box covers a fraction
    of the image area drawn uniformly from ``scale``, with an aspect ratio
    (width / height) drawn log-uniformly from ``ratio``, at a uniformly random
    integer position. Up to 10 such boxes are drawn (all at once, vectorised over
    the batch); the first that fits the image is used, and if none fits, the
    central crop with the aspect ratio clipped into ``ratio``. The box is then
    resampled to ``(height, width)`` in a single interpolation step, read
    directly from the input (half-pixel centres, edges clamped to the box: the
    same values as cropping the box and resizing it without antialiasing).

    At inference (``training=False``) the whole image is resized to
    ``(height, width)``; an input already of that size comes back unchanged.

    Only ``keras.ops`` are used, so the layer runs on TensorFlow, JAX and PyTorch,
    eagerly and compiled (``model.fit``, ``tf.function``, ``jax.jit`` through
    ``stateless_call``), with any batch size.

    Args:
        height: output height.
        width: output width.
        scale: range of the box's area as a fraction of the image's area.
        ratio: range of the box's aspect ratio (width / height).
        interpolation: ``"bilinear"`` or ``"nearest"``.
        seed: integer seed of the layer's random generator.
        data_format: ``"channels_last"`` or ``"channels_first"``; defaults to
            ``keras.config.image_data_format()``.
        **kwargs: base layer arguments (``name``, ``dtype``).

    Input: images ``(batch, H, W, C)`` or one image ``(H, W, C)`` (channels
    first: ``(batch, C, H, W)``), any numeric dtype. Output: the same rank with
    ``height`` and ``width``, in the layer's compute dtype, values within the
    input's range.

    Example:
        >>> import numpy as np
        >>> from keras_inception.data import RandomResizedCrop
        >>> crop = RandomResizedCrop(8, 8, seed=0, data_format="channels_last")
        >>> images = np.random.default_rng(0).uniform(0, 255, (2, 20, 30, 3))
        >>> tuple(crop(images, training=True).shape), tuple(crop(images[0]).shape)
        ((2, 8, 8, 3), (8, 8, 3))
        >>> same = crop(np.ones((1, 8, 8, 3)), training=False)     # inference: resize
        >>> float(np.abs(np.asarray(same) - 1).max())
        0.0
    """

    def __init__(self, height: int, width: int, scale=(0.08, 1.0),
                 ratio=(3.0 / 4.0, 4.0 / 3.0), interpolation: str = "bilinear",
                 seed: Optional[int] = None, data_format: Optional[str] = None,
                 **kwargs):
        super().__init__(**kwargs)
        for what, v in (("height", height), ("width", width)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{what} must be a positive integer, got {v!r}.")
        self.height, self.width = int(height), int(width)
        self.scale = _pair(scale, "scale")
        if self.scale[1] > 1.0:
            raise ValueError(f"scale is a fraction of the image area: its max must "
                             f"be at most 1, got {scale!r}.")
        self.ratio = _pair(ratio, "ratio")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got "
                             f"{interpolation!r}.")
        self.interpolation = interpolation
        self.data_format = data_format or keras.config.image_data_format()
        if self.data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or "
                             f"'channels_first', got {data_format!r}.")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _box_config(self) -> dict:
        return {"scale": self.scale, "ratio": self.ratio, "data_format": self.data_format}

    def _resample_config(self) -> dict:
        return {"size": (self.height, self.width), "interpolation": self.interpolation,
                "data_format": self.data_format, "dtype": self.compute_dtype}

    def _batch(self, images) -> int:
        shape = ops.shape(images)
        return 1 if len(shape) == 3 else shape[0]

    def get_random_transformation(self, images, training=True, seed=None):
        """Draws the crop box of every image.

        Args:
            images: the images the boxes are for (only their shape is read).
            training: when False, returns None (the whole image is used).
            seed: an integer or a ``keras.random.SeedGenerator`` for this draw;
                defaults to the layer's generator. An integer gives the same
                boxes every time (e.g. per-batch seeds for reproducible input
                pipelines with several workers).

        Returns:
            ``{"boxes": float32 (batch, 4)}`` as ``(top, left, box_height,
            box_width)`` in integer pixel units, or None.
        """
        if not training:
            return None
        seed = self.seed_generator if seed is None else seed
        images = ops.convert_to_tensor(images)
        if _eager_jax(images):
            draws = _jax_function("draws")(self._batch(images), _jax_key(seed))
            return {"boxes": _jax_function("boxes", **self._box_config())(images, draws)}
        draws = _draws(self._batch(images), seed)
        return {"boxes": _crop_boxes(images, draws, **self._box_config())}

    def transform_images(self, images, transformation, training=True):
        """Resamples each image's box (all of it when ``transformation`` is None)."""
        boxes = None if transformation is None or not training else transformation["boxes"]
        if _eager_jax(images):
            return _jax_function("resample", **self._resample_config())(images, boxes)
        return _resample(images, boxes, **self._resample_config())

    def call(self, inputs, training=True):
        if not training:
            return self.transform_images(inputs, None, training=False)
        if _eager_jax(inputs):
            draws = _jax_function("draws")(self._batch(inputs), self.seed_generator.next())
            config = {**self._box_config(), **self._resample_config()}
            crop = _jax_function("crop", **config)
            return crop(inputs, draws)
        return self.transform_images(inputs, self.get_random_transformation(inputs))

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        if self.data_format == "channels_first":
            shape[-2], shape[-1] = self.height, self.width
        else:
            shape[-3], shape[-2] = self.height, self.width
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "height": self.height, "width": self.width, "scale": list(self.scale),
            "ratio": list(self.ratio), "interpolation": self.interpolation,
            "seed": self.seed, "data_format": self.data_format,
        })
        return config


def _augmented(layers, images, *seeds):
    """Applies augmentation layers with one explicit seed each."""
    for layer, seed in zip(layers, seeds):
        transformation = layer.get_random_transformation(images, training=True, seed=seed)
        images = layer.transform_images(images, transformation, training=True)
    return images


def _size_pair(image_size) -> Tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        pair = (int(image_size), int(image_size))
    else:
        try:
            pair = tuple(int(v) for v in image_size)
        except TypeError:
            pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"image_size must be a positive integer or (height, width), "
                         f"got {image_size!r}.")
    return pair


def augmentation(image_size, seed: Optional[int] = None,
                 data_format: Optional[str] = None) -> keras.Sequential:
    """Inception's training augmentation from core Keras layers.

    A :class:`RandomResizedCrop` to ``image_size`` (default scale and aspect
    ranges) and a random horizontal flip. Works on batches or single images, on
    every backend, and inside a model (it is inactive at inference, apart from
    resizing to ``image_size``).

    Args:
        image_size: output side, or ``(height, width)``.
        seed: integer seed (the flip uses ``seed + 1``); None draws one.
        data_format: as :class:`RandomResizedCrop`.

    Returns:
        A ``keras.Sequential`` named ``augmentation``.

    Example:
        >>> import numpy as np
        >>> from keras_inception.data import augmentation
        >>> augment = augmentation(16, seed=0, data_format="channels_last")
        >>> [layer.name for layer in augment.layers]
        ['random_resized_crop', 'random_flip']
        >>> tuple(augment(np.zeros((4, 40, 30, 3)), training=True).shape)
        (4, 16, 16, 3)
    """
    height, width = _size_pair(image_size)
    return keras.Sequential([
        RandomResizedCrop(height, width, seed=seed, data_format=data_format,
                          name="random_resized_crop"),
        keras.layers.RandomFlip("horizontal", seed=None if seed is None else seed + 1,
                                data_format=data_format, name="random_flip"),
    ], name="augmentation")


# -- sources ---------------------------------------------------------------------------

@dataclasses.dataclass
class ImageSource:
    """Images with labels: what a dataset is built from.

    Attributes:
        items: file paths (str) or encoded image bytes, one per image.
        labels: int32 array, the class index of each item.
        class_names: the class of each label index.
        name: what the images are (``"tf_flowers"``, ``"synthetic-flowers"``, a
            folder's name).
        skipped: ``(item, reason)`` for every image found unreadable and left out.

    Example:
        >>> from keras_inception.data import ImageSource
        >>> source = ImageSource(["a.jpg", "b.jpg", "c.jpg"], [0, 1, 1], ("cat", "dog"),
        ...                      "pets")
        >>> len(source), source.counts().tolist(), source.describe(2)
        (3, [1, 2], 'c.jpg')
    """

    items: list
    labels: np.ndarray
    class_names: Tuple[str, ...]
    name: str
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.items = list(self.items)
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        self.class_names = tuple(self.class_names)
        if len(self.items) != len(self.labels):
            raise ValueError(f"ImageSource got {len(self.items)} items but "
                             f"{len(self.labels)} labels.")
        if len(self.labels) and not (0 <= self.labels.min()
                                     and self.labels.max() < len(self.class_names)):
            raise ValueError(f"ImageSource labels must be in [0, "
                             f"{len(self.class_names)}), got {self.labels.min()}.."
                             f"{self.labels.max()}.")

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        """How to name item ``index`` in a message: its path, or its position."""
        item = self.items[index]
        return item if isinstance(item, str) else f"{self.name} item {index}"

    def counts(self) -> np.ndarray:
        """Number of images per class."""
        return np.bincount(self.labels, minlength=len(self.class_names))


def _open(item):
    from PIL import Image

    return Image.open(item if isinstance(item, str) else io.BytesIO(item))


def _unreadable(item) -> Optional[str]:
    """None if Pillow fully decodes ``item``, else why not."""
    from PIL import ImageOps

    try:
        with _open(item) as image:
            # A JPEG decoded at 1/8 scale still reads every byte of the entropy
            # stream (truncation is found) for a fraction of the full decode.
            image.draft("RGB", (64, 64))
            image.load()
            ImageOps.exif_transpose(image)
    except Exception as err:  # noqa: BLE001 - any failure means "skip it, say why"
        return f"{type(err).__name__}: {err}"
    return None


def _check_items(items) -> List[Optional[str]]:
    if len(items) < 16:
        return [_unreadable(item) for item in items]
    # Pillow decodes without the GIL: threads check several images at once.
    workers = min(8, (os.cpu_count() or 1) + 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_unreadable, items, chunksize=16))


def _select_classes(source: ImageSource, class_names) -> ImageSource:
    """The images of ``class_names`` only, relabelled in that order."""
    names = tuple(str(c) for c in class_names)
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {list(names)}.")
    unknown = [c for c in names if c not in source.class_names]
    if unknown:
        raise ValueError(f"Unknown class name(s) {unknown} for {source.name}: its "
                         f"classes are {list(source.class_names)}.")
    remap = np.full(len(source.class_names), -1, np.int32)
    for new, c in enumerate(names):
        remap[source.class_names.index(c)] = new
    new_labels = remap[source.labels]
    keep = np.flatnonzero(new_labels >= 0)
    return ImageSource([source.items[i] for i in keep], new_labels[keep], names,
                       source.name, list(source.skipped))


def _check_classes(source: ImageSource, where: str) -> ImageSource:
    if len(source.class_names) < 2:
        raise ValueError(
            f"{where} has a single class ({list(source.class_names)}): a classifier "
            f"needs at least two. Add a subfolder of images for each other class.")
    counts = source.counts()
    empty = [c for c, n in zip(source.class_names, counts) if n == 0]
    if empty:
        unreadable = f" ({len(source.skipped)} unreadable image(s) skipped)" if (
            source.skipped) else ""
        raise ValueError(f"{where}: no readable image in class(es) {empty}{unreadable}. "
                         f"Add images ({', '.join(IMAGE_EXTENSIONS)}) to those class "
                         f"subfolders, or leave those classes out (class_names).")
    return source


def image_folder(data_dir, class_names: Optional[Sequence[str]] = None) -> ImageSource:
    """The images of a folder with one subfolder per class.

    ``data_dir/<class>/**/<image>``: every ``.jpg``, ``.jpeg``, ``.png``, ``.bmp``
    and ``.gif`` (any case) under a class subfolder, sorted; hidden files and
    folders and other files are ignored. Each image is decoded once here; those
    that fail are left out and recorded in ``skipped``.

    Args:
        data_dir: the folder.
        class_names: the classes to use, in label order; each must be a subfolder
            (others are then ignored). Default: every subfolder, sorted by name.

    Returns:
        An :class:`ImageSource` of file paths named after the folder.

    Raises:
        FileNotFoundError: ``data_dir`` is not a folder.
        ValueError: the folder is empty, has no class subfolders, only one class,
            a class without readable images, or ``class_names`` names a subfolder
            that is not there (the message lists those that are).

    Example:
        >>> import os, tempfile
        >>> from keras_inception.data import image_folder
        >>> root = tempfile.mkdtemp()
        >>> for name in ("cats", "dogs"):
        ...     os.makedirs(os.path.join(root, name))
        >>> _ = open(os.path.join(root, "cats", "broken.jpg"), "wb").write(b"no")
        >>> image_folder(root)
        Traceback (most recent call last):
        ...
        ValueError: ...: no readable image in class(es) ['cats', 'dogs']...
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"No folder at {data_dir!r}: give a folder with one "
                                f"subfolder of images per class.")
    entries = sorted(e for e in os.listdir(data_dir) if not e.startswith("."))
    folders = [e for e in entries if os.path.isdir(os.path.join(data_dir, e))]
    if not folders:
        images = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)]
        what = (f"holds {len(images)} image(s) but no class subfolders" if images
                else "is empty" if not entries else "has no class subfolders")
        raise ValueError(
            f"The image folder {data_dir!r} {what}. Put each class's images in its "
            f"own subfolder: {os.path.join(data_dir, '<class name>', '<image>')}, "
            f"with at least two classes.")
    if class_names is None:
        names = tuple(folders)
    else:
        if isinstance(class_names, str):
            raise TypeError("class_names must be a list of names, not one string.")
        names = tuple(str(c) for c in class_names)
        missing = [c for c in names if c not in folders]
        if missing or len(set(names)) != len(names):
            problem = (f"has no subfolder(s) {missing}" if missing
                       else f"got duplicate class names {list(names)}")
            raise ValueError(f"The image folder {data_dir!r} {problem}. Its class "
                             f"subfolders are: {folders}.")
    paths, labels = [], []
    for label, name in enumerate(names):
        for root, dirs, files in os.walk(os.path.join(data_dir, name), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, f))
                    labels.append(label)
    if not paths:
        raise ValueError(
            f"No image ({', '.join(IMAGE_EXTENSIONS)}) in the class subfolders of "
            f"{data_dir!r} ({list(names)}). Put each class's images in its subfolder.")
    problems = _check_items(paths)
    good = [i for i, p in enumerate(problems) if p is None]
    skipped = [(paths[i], p) for i, p in enumerate(problems) if p is not None]
    source = ImageSource([paths[i] for i in good], [labels[i] for i in good], names,
                         os.path.basename(os.path.abspath(data_dir)), skipped)
    return _check_classes(source, f"The image folder {data_dir!r}")


# -- tf_flowers ------------------------------------------------------------------------

def _tfds_mocked(tfds) -> bool:
    # tfds.testing.mock_data replaces download_and_prepare by a no-op: nothing is
    # downloaded, so there is nothing to probe.
    fn = tfds.core.DatasetBuilder.download_and_prepare
    return getattr(fn, "__module__", "").startswith("tensorflow_datasets.testing")


def _probe(url: str, timeout: float = _PROBE_TIMEOUT) -> Optional[str]:
    """None if a TCP connection to ``url``'s host (or its proxy) opens in time."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "//" in proxy else "//" + proxy)
        host, port = proxy_parts.hostname, proxy_parts.port or 8080
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(f"{host}:{port} is unreachable: {err}")

    # DNS lookups ignore socket timeouts: a daemon thread bounds the whole probe.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not result:
        return f"{host}:{port} did not answer within {timeout + 1.0:.0f} s"
    return result[0]


def tfds_flowers(data_dir: Optional[str] = None) -> ImageSource:
    """TensorFlow Datasets' ``tf_flowers``: 3670 photos of 5 flower classes.

    The images stay encoded (JPEG bytes, ``tfds.decode.SkipDecoding``), so they
    are decoded exactly like image files. If the dataset is not prepared in the
    tfds folder yet it is downloaded (218 MB), but first the download host is
    probed for a few seconds, so that offline this fails at once instead of
    after tfds' minutes of retries. Works under ``tfds.testing.mock_data``.

    Args:
        data_dir: tfds' data folder (default: tfds' own, ``~/tensorflow_datasets``
            or ``$TFDS_DATA_DIR``).

    Returns:
        An :class:`ImageSource` of encoded bytes named ``"tf_flowers"``.

    Raises:
        DataUnavailable: tensorflow-datasets or TensorFlow is not installed,
            ``KERAS_INCEPTION_OFFLINE=1`` is set, the download host cannot be
            reached, or the download failed; the message says which.

    Example:
        >>> import os, tempfile
        >>> from unittest import mock
        >>> from keras_inception.data import DataUnavailable, tfds_flowers
        >>> with mock.patch.dict(os.environ, {"KERAS_INCEPTION_OFFLINE": "1"}):
        ...     try:
        ...         tfds_flowers(data_dir=tempfile.mkdtemp())
        ...     except DataUnavailable as err:
        ...         print(str(err).split(",")[0])
        KERAS_INCEPTION_OFFLINE=1 forbids downloading tf_flowers
    """
    try:
        import tensorflow  # noqa: F401 - tfds needs it to read its files
    except ImportError as err:
        raise DataUnavailable(
            f"TensorFlow is not installed, and tensorflow-datasets needs it ({err}); "
            f"pip install \"keras-inception[tensorflow,data]\"") from err
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataUnavailable(
            f"tensorflow-datasets is not installed ({err}); pip install "
            f"\"keras-inception[data]\"") from err
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # "no dataset_info.json" on a fresh folder
    try:
        builder = tfds.builder(TF_FLOWERS, data_dir=data_dir)
    finally:
        absl_logger.setLevel(level)
    if not (_tfds_mocked(tfds) or builder.is_prepared()):
        url = getattr(sys.modules.get(type(builder).__module__), "_URL", _TF_FLOWERS_URL)
        if _offline():
            raise DataUnavailable(
                f"{ENV_OFFLINE}=1 forbids downloading {TF_FLOWERS}, and it is not "
                f"prepared in {builder.data_dir}")
        reason = _probe(url)
        if reason:
            raise DataUnavailable(f"cannot download {url}: {reason}")
        try:
            builder.download_and_prepare()
        except Exception as err:  # noqa: BLE001 - any download failure, said as is
            first_line = (str(err).strip().splitlines() or [""])[0][:300]
            raise DataUnavailable(f"downloading {TF_FLOWERS} failed: "
                                  f"{type(err).__name__}: {first_line}") from err
    dataset = builder.as_dataset(split="train", shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    items, labels = [], []
    for example in tfds.as_numpy(dataset):
        items.append(bytes(example["image"]))
        labels.append(int(example["label"]))
    names = tuple(builder.info.features["label"].names)
    problems = _check_items(items)
    skipped = [(f"{TF_FLOWERS} item {i}", p) for i, p in enumerate(problems) if p]
    good = [i for i, p in enumerate(problems) if p is None]
    return ImageSource([items[i] for i in good], [labels[i] for i in good], names,
                       TF_FLOWERS, skipped)


# -- synthetic-flowers -----------------------------------------------------------------

# Petal colours (name, hue) away from the greens and browns of the backgrounds,
# most distinct first; classes beyond them get golden-ratio hues.
_COLOURS = (("red", 0.99), ("yellow", 0.14), ("blue", 0.62), ("purple", 0.78),
            ("cyan", 0.51), ("pink", 0.9), ("orange", 0.07), ("indigo", 0.7))
_PETALS = (5, 8, 3, 12, 6, 4, 10, 7, 9, 11)
_SHAPES = ("round", "pointed", "thin")  # petal length / width: 1.6, 2.4 (tapered), 4


def _class_specs(classes: int) -> List[dict]:
    specs = []
    for i in range(classes):
        colour, hue = _COLOURS[i] if i < len(_COLOURS) else (
            f"hue{i}", (0.5 + i * 0.618034) % 1.0)
        petals = _PETALS[i % len(_PETALS)]
        specs.append({"name": f"{colour}_{petals}petals", "hue": hue, "petals": petals,
                      "shape": _SHAPES[i % len(_SHAPES)],
                      "centre": ((230, 190, 40), (90, 50, 20), (250, 250, 235))[i % 3]})
    return specs


def _hsv(h: float, s: float, v: float) -> Tuple[int, int, int]:
    import colorsys

    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _draw_flower(spec: dict, size: int, rng: np.random.Generator):
    from PIL import Image, ImageDraw, ImageFilter

    big = 2 * size  # drawn at twice the size, then downsampled: antialiased edges
    # Backgrounds and clutter: greens and browns, saturation at most 0.6.
    top = np.array(_hsv(rng.uniform(0.15, 0.45), rng.uniform(0.2, 0.6),
                        rng.uniform(0.3, 0.9)), np.float32)
    bottom = np.array(_hsv(rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.6),
                           rng.uniform(0.2, 0.6)), np.float32)
    ramp = np.linspace(0.0, 1.0, big, dtype=np.float32)[:, None, None]
    background = top * (1 - ramp) + bottom * ramp
    image = Image.fromarray(np.broadcast_to(background, (big, big, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):  # leaves and blobs: clutter, not signal
        x, y = rng.uniform(0, big, 2)
        rx, ry = rng.uniform(0.05, 0.2, 2) * big
        draw.ellipse([x - rx, y - ry, x + rx, y + ry],
                     fill=_hsv(rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.6),
                               rng.uniform(0.2, 0.7)))
    radius = rng.uniform(0.18, 0.34) * big
    cx, cy = rng.uniform(radius * 0.8, big - radius * 0.8, 2)
    draw.line([cx, cy, cx + rng.uniform(-0.2, 0.2) * big, big],
              fill=_hsv(0.3, 0.7, 0.45), width=max(2, big // 40))
    length = radius * 0.6
    width = length / {"round": 1.6, "pointed": 2.4, "thin": 4.0}[spec["shape"]]
    hue = spec["hue"] + rng.uniform(-0.025, 0.025)
    colour = _hsv(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    shade = _hsv(hue, 1.0, 0.55)
    t = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False)
    along, across = np.cos(t), np.sin(t)
    if spec["shape"] == "pointed":  # teardrop: wide near the centre, sharp tip
        across = across * (1.0 - along) * 0.75
    spin = rng.uniform(0.0, 2.0 * np.pi)
    for k in range(spec["petals"]):
        angle = spin + 2.0 * np.pi * k / spec["petals"]
        c, s = np.cos(angle), np.sin(angle)
        u = (along + 1.0) * length * 0.5 + radius * 0.3
        v = across * width * 0.5
        xs, ys = cx + u * c - v * s, cy + u * s + v * c
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=colour, outline=shade)
    disk = radius * 0.28
    draw.ellipse([cx - disk, cy - disk, cx + disk, cy + disk], fill=spec["centre"])
    image = image.resize((size, size), Image.Resampling.BOX)
    if rng.uniform() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    pixels = np.asarray(image, np.float32) + rng.normal(0.0, 6.0, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _synthetic_params(classes, per_class, size, seed) -> dict:
    return {"format": _SYNTHETIC_FORMAT, "classes": classes, "per_class": per_class,
            "size": size, "seed": seed}


def _complete(folder: str, params: dict) -> bool:
    try:
        with open(os.path.join(folder, _MARKER), encoding="utf8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    if {k: meta.get(k) for k in params} != params:
        return False
    names = meta.get("class_names") or []
    return len(names) == params["classes"] and all(
        os.path.isdir(os.path.join(folder, name))
        and len(os.listdir(os.path.join(folder, name))) == params["per_class"]
        for name in names)


def _remove_dead_leftovers(out_dir: str) -> None:
    # Work folders are named .synthetic-flowers.<pid>.<random>: one whose process
    # is gone was left by a killed run.
    for entry in os.listdir(out_dir):
        parts = entry.split(".")
        ours = entry.startswith(f".{SYNTHETIC_NAME}.") and len(parts) >= 4
        if ours and parts[2].isdigit():
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True)
            except OSError:
                pass


def synthetic_flowers(out_dir, *, classes: int = 5, per_class: int = 40,
                      size: int = 160, seed: int = 0) -> str:
    """Writes (or reuses) a generated, learnable flower image folder.

    ``out_dir/synthetic-flowers/<class>/<n>.jpg``: each class is a flower of its
    own petal count, colour, petal shape and centre colour, drawn at a random
    position, size and rotation over a random background with clutter, blur and
    noise. Deterministic from ``seed``. Written into a work folder and renamed
    into place when complete, so a killed run never leaves a partial dataset;
    an existing complete one with the same parameters is reused.

    Args:
        out_dir: where to put the ``synthetic-flowers`` folder (created if needed).
        classes: number of classes (at least 2).
        per_class: images per class (at least 2, so every class can be split).
        size: image side in pixels (at least 16).
        seed: random seed.

    Returns:
        The path of the ``synthetic-flowers`` folder, ready for :func:`image_folder`.

    Example:
        >>> import tempfile
        >>> from keras_inception.data import image_folder, synthetic_flowers
        >>> path = synthetic_flowers(tempfile.mkdtemp(), classes=3, per_class=2, size=32)
        >>> source = image_folder(path)
        >>> len(source), source.class_names
        (6, ('blue_3petals', 'red_5petals', 'yellow_8petals'))
    """
    for what, value, least in (("classes", classes, 2), ("per_class", per_class, 2),
                               ("size", size, 16), ("seed", seed, 0)):
        if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                or value < least):
            raise ValueError(f"{what} must be an integer >= {least}, got {value!r}.")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, SYNTHETIC_NAME)
    params = _synthetic_params(int(classes), int(per_class), int(size), int(seed))
    if _complete(target, params):
        return target
    if os.path.exists(target) and not os.path.isfile(os.path.join(target, _MARKER)):
        # Only a finished run renames a folder here, always with its marker.
        raise FileExistsError(
            f"{target!r} exists but was not written by synthetic_flowers (it has no "
            f"{_MARKER}); move it away or choose another folder.")
    _remove_dead_leftovers(out_dir)
    work = tempfile.mkdtemp(prefix=f".{SYNTHETIC_NAME}.{os.getpid()}.", dir=out_dir)
    try:
        specs = _class_specs(int(classes))
        for label, spec in enumerate(specs):
            folder = os.path.join(work, spec["name"])
            os.makedirs(folder)
            for n in range(per_class):
                rng = np.random.default_rng([int(seed), label, n])
                _draw_flower(spec, int(size), rng).save(
                    os.path.join(folder, f"{n:04d}.jpg"), quality=90)
        meta = dict(params, name=SYNTHETIC_NAME, class_names=[s["name"] for s in specs])
        with open(os.path.join(work, _MARKER), "w", encoding="utf8") as f:
            json.dump(meta, f, indent=1)
        if _complete(target, params):  # another process finished first: use its
            return target
        if os.path.isdir(target):  # ours, with other parameters or damaged: replace
            old = tempfile.mkdtemp(prefix=f".{SYNTHETIC_NAME}.{os.getpid()}.", dir=out_dir)
            os.rename(target, os.path.join(old, "old"))
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(work, target)
        except OSError:
            if not _complete(target, params):  # another process won the race: fine
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# -- split -----------------------------------------------------------------------------

def split(source: ImageSource, validation_fraction: float = 0.2,
          seed: int = 0) -> Tuple[ImageSource, ImageSource]:
    """Stratified train / validation split, deterministic in ``seed``.

    Each class gives ``round(n * validation_fraction)`` of its images to
    validation, at least one and at most ``n - 1``, so every class is in both
    parts. Items keep their order within each part; ``skipped`` stays on the
    source (both parts get an empty list).

    Args:
        source: the images to split.
        validation_fraction: the fraction of each class held out, in (0, 1).
        seed: the seed of the shuffle within each class.

    Returns:
        ``(train, val)``, two :class:`ImageSource`.

    Raises:
        ValueError: ``validation_fraction`` is not in (0, 1), or a class has fewer
            than 2 images (the message names it).

    Example:
        >>> import numpy as np
        >>> from keras_inception.data import ImageSource, split
        >>> source = ImageSource(list("abcdefghij"), [0] * 5 + [1] * 5, ("x", "y"), "demo")
        >>> train, val = split(source, 0.2, seed=0)
        >>> len(train), len(val), val.labels.tolist()
        (8, 2, [0, 1])
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got "
                         f"{validation_fraction!r}.")
    counts = source.counts()
    few = [f"{c!r} ({n})" for c, n in zip(source.class_names, counts) if n < 2]
    if few:
        raise ValueError(
            f"Cannot split {source.name}: class(es) {', '.join(few)} have fewer than 2 "
            f"images; each class needs one for training and one for validation. Add "
            f"images or leave those classes out.")
    rng = np.random.default_rng(seed)
    val = []
    for label, n in enumerate(counts):
        members = np.flatnonzero(source.labels == label)
        n_val = min(max(int(round(n * validation_fraction)), 1), int(n) - 1)
        val.extend(rng.permutation(members)[:n_val].tolist())
    is_val = np.zeros(len(source), bool)
    is_val[val] = True

    def part(mask):
        idx = np.flatnonzero(mask)
        return ImageSource([source.items[i] for i in idx], source.labels[idx],
                           source.class_names, source.name, [])

    return part(~is_val), part(is_val)


# -- ImageDataset ----------------------------------------------------------------------

class ImageDataset(keras.utils.PyDataset):
    """Batches of decoded, resized, augmented and preprocessed images for ``fit``.

    Each image is decoded with Pillow (EXIF orientation applied, RGB).

    * Training: the central square (the longer side cut to the shorter) is
      resized to ``image_size / 0.875`` in one cheap Pillow step, so that images
      of any size stack into a batch; then :func:`augmentation` runs on the
      batch with the active backend: a :class:`RandomResizedCrop` to
      ``image_size`` and a horizontal flip. The order is shuffled anew at each
      epoch. Both depend only on ``seed``, the epoch and the batch index, so
      any number of workers gives the same batches.
    * Evaluation: the central 87.5% crop resized to ``image_size``, the crop of
      :func:`keras_inception.load_image`, in source order.

    JPEGs at least twice as large as needed are decoded at reduced scale (DCT
    scaling: much faster, values slightly different from a full decode). On
    JAX, prefer worker threads (``use_multiprocessing=False``): JAX does not
    support ``fork``.

    Then :func:`keras_inception.preprocess_input` with ``preprocessing``.

    Args:
        source: an :class:`ImageSource`.
        batch_size: images per batch (the last batch may be smaller).
        image_size: output side, or ``(height, width)``.
        training: augment and shuffle (True) or not.
        preprocessing: a mode of :func:`~keras_inception.preprocess_input`, or None
            for 0..255 values.
        seed: seed of the shuffling and augmentation.
        shard: ``(index, count)``: yield only the ``index``-th of ``count`` equal,
            contiguous parts of every batch (``batch_size`` stays the global batch
            and must divide by ``count``). For data parallel on several hosts,
            where each process feeds its part of each global batch
            (:mod:`keras_inception.distribute`); the parts of all processes make
            the global batch, in order.
        **pydataset_kwargs: ``workers``, ``use_multiprocessing``,
            ``max_queue_size`` (see ``keras.utils.PyDataset``).

    Yields:
        ``(images, labels)``: float32 ``(batch, height, width, 3)`` (channels
        first if that is Keras' image data format) and int32 ``(batch,)`` NumPy.

    Raises:
        ValueError: at batch time, naming the image that cannot be decoded (it
            changed or disappeared after the source was listed).

    Example:
        >>> import io
        >>> import numpy as np
        >>> from PIL import Image
        >>> from keras_inception.data import ImageDataset, ImageSource
        >>> def png(value):
        ...     out = io.BytesIO()
        ...     Image.fromarray(np.full((24, 32, 3), value, np.uint8)).save(out, "PNG")
        ...     return out.getvalue()
        >>> source = ImageSource([png(0), png(255), png(0)], [0, 1, 0], ("a", "b"), "demo")
        >>> data = ImageDataset(source, batch_size=2, image_size=16, training=True)
        >>> images, labels = data[0]
        >>> len(data), images.shape, images.dtype, labels.dtype
        (2, (2, 16, 16, 3), dtype('float32'), dtype('int32'))
        >>> bool(images.min() >= -1.0 and images.max() <= 1.0)
        True
    """

    def __init__(self, source: ImageSource, *, batch_size: int, image_size,
                 training: bool, preprocessing: Optional[str] = "inception",
                 seed: int = 0, shard: Tuple[int, int] = (0, 1), **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        if not isinstance(source, ImageSource):
            raise TypeError(f"ImageDataset takes an ImageSource (image_folder, "
                            f"tfds_flowers, split), got {type(source).__name__}.")
        if len(source) == 0:
            raise ValueError(f"The image source {source.name!r} is empty.")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        index, count = (int(v) for v in shard)
        if count < 1 or not 0 <= index < count or batch_size % count:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count and "
                             f"batch_size ({batch_size}) a multiple of count, got "
                             f"{tuple(shard)}.")
        self.source = source
        self.batch_size = int(batch_size)
        self.shard = (index, count)
        self.image_size = _size_pair(image_size)
        self.training = bool(training)
        self.preprocessing = None if preprocessing is None else _check_mode(preprocessing)
        self.seed = int(seed)
        self.epoch = 0
        self.data_format = keras.config.image_data_format()
        # Training input side before the random crop: as much context as the
        # evaluation crop (image_size / 0.875), so a full-area crop looks alike.
        self._presize = int(math.ceil(max(self.image_size) / _EVAL_CROP))
        self._augment = augmentation(self.image_size, seed=self.seed,
                                     data_format="channels_last") if training else None
        self._order = self._epoch_order()

    @property
    def class_names(self) -> Tuple[str, ...]:
        return self.source.class_names

    def __len__(self) -> int:
        return int(math.ceil(len(self.source) / self.batch_size))

    def batch_sizes(self) -> List[int]:
        """Images in each (global) batch, known without reading any.

        Returns:
            One size per batch: ``batch_size``, and the remainder last.
        """
        total = len(self.source)
        return [min(self.batch_size, total - i * self.batch_size)
                for i in range(len(self))]

    def _epoch_order(self) -> np.ndarray:
        if not self.training:
            return np.arange(len(self.source))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source))

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch counter (it picks the shuffle and the augmentation).

        The counter starts at 0 and counts ``on_epoch_end`` calls; ``fit`` makes
        one when it starts, then one after each epoch. To resume a run at epoch
        ``e`` with the batches an uninterrupted run would have had, call
        ``set_epoch(e)`` before ``fit(..., initial_epoch=e)``.
        """
        self.epoch = int(epoch)
        self._order = self._epoch_order()

    def on_epoch_end(self):
        # Keras stops the workers before this call, so none sees a half update.
        self.set_epoch(self.epoch + 1)

    def _decode(self, index: int) -> np.ndarray:
        from PIL import Image, ImageOps

        item = self.source.items[index]
        if self.training:
            side = self._presize
            out_w = out_h = side
            crop_fraction = 1.0
        else:
            out_h, out_w = self.image_size
            side = int(math.ceil(max(self.image_size) / _EVAL_CROP))
            crop_fraction = _EVAL_CROP
        try:
            with _open(item) as image:
                # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that still
                # leaves at least `side` pixels each way.
                image.draft("RGB", (side, side))
                image = ImageOps.exif_transpose(image).convert("RGB")
        except Exception as err:  # noqa: BLE001 - any decode failure, named clearly
            raise ValueError(
                f"Cannot decode the image {self.source.describe(index)}: "
                f"{type(err).__name__}: {err}. It was readable when the dataset was "
                f"listed, so it changed or disappeared since: restore or remove it "
                f"and list the images again.") from err
        box = _crop_box(image.width, image.height, out_w, out_h, crop_fraction)
        image = image.resize((out_w, out_h), resample=Image.Resampling.BILINEAR, box=box)
        return np.asarray(image, dtype=np.uint8)

    def _augment_batch(self, images, idx):
        # Seeds from (seed, epoch, batch): the same batch whichever worker makes
        # it, in whatever order.
        state = np.random.SeedSequence([self.seed, self.epoch, idx]).generate_state(
            len(self._augment.layers))
        seeds = [int(s >> 1) for s in state]
        if keras.backend.backend() != "jax":
            return _augmented(self._augment.layers, images, *seeds)
        # One compiled function per image size, shared: see _jax_function.
        augment = _jax_function("augment", size=self.image_size)
        return augment(images, *(_jax_key(s) for s in seeds))

    def __getitem__(self, idx: int):
        if not 0 <= idx < len(self):
            raise IndexError(f"batch index {idx} out of range [0, {len(self)}).")
        indices = self._order[idx * self.batch_size:(idx + 1) * self.batch_size]
        indices = indices[shard_part(len(indices), self.shard)]
        images = np.stack([self._decode(int(i)) for i in indices])
        labels = self.source.labels[indices].astype(np.int32)
        if self.training:
            images = ops.convert_to_numpy(self._augment_batch(images, idx))
        images = images.astype(np.float32)
        if self.preprocessing is not None:
            images = preprocess_input(images, self.preprocessing,
                                      data_format="channels_last")
        if self.data_format == "channels_first":
            images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        return images, labels


def shard_part(length: int, shard: Tuple[int, int]) -> slice:
    """The ``index``-th of ``count`` contiguous parts of ``length`` rows.

    ``shard`` is ``(index, count)``; parts have ``ceil(length / count)`` rows, the
    last one fewer when ``length`` does not divide. The parts of ``index`` 0 to
    ``count - 1`` make the rows, in order: what one process of a data-parallel
    run feeds of a global batch.

    Args:
        length: rows in the batch.
        shard: ``(index, count)``.

    Returns:
        A slice of the batch's rows.

    Example:
        >>> [shard_part(7, (i, 2)) for i in range(2)]
        [slice(0, 4, None), slice(4, 8, None)]
    """
    index, count = shard
    part = -(-length // count)
    return slice(index * part, (index + 1) * part)


# -- load_flowers ----------------------------------------------------------------------

@dataclasses.dataclass
class FlowersData:
    """What :func:`load_flowers` found.

    Attributes:
        train: training part (:class:`ImageSource`).
        val: validation part.
        class_names: the class of each label.
        source_name: ``"tf_flowers"``, ``"synthetic-flowers"`` or the folder's name.
        fallback: True when tf_flowers was unavailable and the generated dataset
            is used instead.
        skipped: ``(item, reason)`` of the unreadable images left out.

    Example:
        >>> from keras_inception.data import FlowersData, ImageSource, split
        >>> source = ImageSource(list("abcdef"), [0, 0, 0, 1, 1, 1], ("x", "y"), "demo")
        >>> data = FlowersData(*split(source, 0.34), class_names=source.class_names,
        ...                    source_name="demo", fallback=False)
        >>> len(data.train), len(data.val)
        (4, 2)
    """

    train: ImageSource
    val: ImageSource
    class_names: Tuple[str, ...]
    source_name: str
    fallback: bool
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)


def load_flowers(data_dir=None, *, class_names: Optional[Sequence[str]] = None,
                 work_dir, validation_fraction: float = 0.2, seed: int = 0,
                 print_fn=print, synthetic_per_class: int = 40,
                 tfds_data_dir: Optional[str] = None) -> FlowersData:
    """The images to fine-tune on, split; says in one line when it falls back.

    * ``data_dir`` given: that image folder (:func:`image_folder`).
    * Else tf_flowers (:func:`tfds_flowers`).
    * If tf_flowers cannot be had (offline, package missing): prints one line
      saying why and that the generated dataset ``"synthetic-flowers"`` (path,
      image and class counts) is used instead, written under ``work_dir``.

    The number of unreadable images skipped, if any, is printed too.

    Args:
        data_dir: an image folder with one subfolder per class, or None.
        class_names: the classes to use, in label order: subfolders of
            ``data_dir``, or tf_flowers classes. The generated fallback has its
            own classes (the line names them when this was given).
        work_dir: where the generated dataset goes.
        validation_fraction: fraction of each class held out (see :func:`split`).
        seed: seed of the split.
        print_fn: where the messages go.
        synthetic_per_class: images per class of the generated dataset.
        tfds_data_dir: tfds' data folder (default: tfds' own).

    Returns:
        A :class:`FlowersData`.

    Example:
        >>> import os, tempfile
        >>> from unittest import mock
        >>> from keras_inception.data import load_flowers
        >>> with mock.patch.dict(os.environ, {"KERAS_INCEPTION_OFFLINE": "1"}):
        ...     data = load_flowers(work_dir=tempfile.mkdtemp(), synthetic_per_class=3,
        ...                         tfds_data_dir=tempfile.mkdtemp(),
        ...                         print_fn=lambda line: None)
        >>> data.source_name, data.fallback, len(data.train), len(data.val)
        ('synthetic-flowers', True, 10, 5)
    """
    fallback = False
    if data_dir is not None:
        source = image_folder(data_dir, class_names)
    else:
        try:
            source = tfds_flowers(tfds_data_dir)
            if class_names is not None:
                source = _select_classes(source, class_names)
        except DataUnavailable as err:
            path = synthetic_flowers(work_dir, per_class=synthetic_per_class)
            source = image_folder(path)
            source.name = SYNTHETIC_NAME
            fallback = True
            note = (f"; its classes are {list(source.class_names)}"
                    if class_names is not None else "")
            print_fn(f"{TF_FLOWERS} could not be loaded ({err}); training on the "
                     f"generated dataset '{SYNTHETIC_NAME}' ({len(source)} images, "
                     f"{len(source.class_names)} classes) at {path} instead{note}.")
        _check_classes(source, source.name)
    if source.skipped:
        first, reason = source.skipped[0]
        print_fn(f"Skipped {len(source.skipped)} unreadable image(s) of {source.name} "
                 f"(first: {first}: {reason}).")
    train, val = split(source, validation_fraction, seed)
    return FlowersData(train, val, source.class_names, source.name, fallback,
                       list(source.skipped))
