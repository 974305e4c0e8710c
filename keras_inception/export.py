"""Export a trained classifier for deployment: ``.keras``, a TF-Serving SavedModel, ONNX.

Every export keeps the main head only: a model trained with auxiliary losses (its
output a dict ``{"logits": ..., "aux": ...}``) is exported as its ``"logits"``
output, which is what inference needs.

The SavedModel is laid out the way TensorFlow Serving polls a model directory,
``base_dir/name/<version>/`` (``saved_model.pb``, ``variables/``), and answers two
signatures, both with the preprocessing inside the graph so that clients send plain
pixels or files:

* ``"serving_default"``: input ``"image"``, float32 ``[N, H, W, 3]``, RGB values in
  0..255 at the model's input size;
* ``"serve_bytes"``: input ``"image_bytes"``, string ``[N]``, each an encoded JPEG,
  PNG, GIF, BMP or WebP file, decoded to RGB, center-cropped and resized in the graph
  like :func:`keras_inception.load_image` (see :func:`decode_and_resize`).

Both output ``"probabilities"`` (float32 ``[N, C]``: the model's own scores when it
ends in softmax or sigmoid, the softmax of its logits when its last layer is linear),
``"class_id"`` (int64 ``[N]``, the arg-max) and, when class names are given,
``"class_name"`` (string ``[N]``). ``assets.extra/keras_inception.json`` records the
export settings (TF Serving ignores it).

Keras writes SavedModels and ONNX files from the TensorFlow backend only (PyTorch
cannot, JAX through jax2tf). On JAX and PyTorch the model is therefore saved to a
temporary ``.keras`` file and exported by this module's command line run with
``KERAS_BACKEND=tensorflow``: same result, same errors, nothing to do for the caller.
The command line is also usable directly (on any ``KERAS_BACKEND``)::

    python -m keras_inception.export model.keras --saved-model serving --name flowers \\
        --version 1 --onnx flowers.onnx --class-names daisy dandelion roses
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from typing import Optional, Sequence

import keras
import numpy as np

from keras_inception import preprocessing as P

__all__ = ["ExportError", "decode_and_resize", "export_keras", "export_onnx",
           "export_saved_model", "main"]

logger = logging.getLogger(__name__)

SIGNATURE_IMAGES = "serving_default"
SIGNATURE_BYTES = "serve_bytes"
INPUT_IMAGES = "image"
INPUT_BYTES = "image_bytes"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASS_ID = "class_id"
OUTPUT_CLASS_NAME = "class_name"
METADATA_FILE = os.path.join("assets.extra", "keras_inception.json")
DEFAULT_CROP_FRACTION = 0.875

# Last-layer activations whose outputs already are per-class probabilities.
_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")
# Errors raised in the TensorFlow-backend process that are re-raised as themselves.
_PASSED_ERRORS = {e.__name__: e for e in (ValueError, FileExistsError, FileNotFoundError,
                                          ImportError, TypeError)}


class ExportError(RuntimeError):
    """The TensorFlow-backend export process failed unexpectedly.

    Its output is in the message. Expected failures (a bad argument, a model that
    cannot load) are raised as their own type instead, in the calling process.

    Example:
        >>> from keras_inception.export import ExportError
        >>> issubclass(ExportError, RuntimeError)
        True
    """


# --------------------------------------------------------------------------- checks

def _main_head(model) -> keras.Model:
    """The model restricted to its main output (the ``"logits"`` of an aux model)."""
    from keras_inception.transfer import main_head

    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model, got {type(model).__name__}.")
    return main_head(model)


def _model_preprocessing(model) -> str:
    try:
        return P.preprocessing_for(model)
    except ValueError:
        pass
    from keras_inception.features import infer_info

    try:
        return P.preprocessing_for(infer_info(model).name)
    except ValueError:
        raise ValueError(
            f"Cannot tell the preprocessing of model {model.name!r}: it records none "
            f"and is not a keras_inception model. Pass preprocessing= one of "
            f"{', '.join(P.MODES)} (the mode its weights were trained with).") from None


def _parse_size(image_size):
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif (isinstance(image_size, (tuple, list)) and len(image_size) == 2
          and all(isinstance(s, (int, np.integer)) for s in image_size)):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(
            f"image_size must be an int or (height, width), got {image_size!r}.")
    if min(size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}.")
    return size


def _geometry(model, image_size):
    """``(height, width, channels_first)`` the exported signatures use."""
    if len(model.inputs) != 1:
        raise ValueError(f"Model {model.name!r} has {len(model.inputs)} inputs; export "
                         f"takes single-input image classifiers.")
    shape = tuple(model.inputs[0].shape)
    if len(shape) == 4 and shape[-1] == 3:
        rows, cols, channels_first = shape[1], shape[2], False
    elif len(shape) == 4 and shape[1] == 3:
        rows, cols, channels_first = shape[2], shape[3], True
    else:
        raise ValueError(f"Model {model.name!r} takes inputs of shape {shape}; export "
                         f"needs RGB images (batch, height, width, 3).")
    if image_size is None:
        if rows is None or cols is None:
            raise ValueError(
                f"Model {model.name!r} takes any input size ({shape}); pass "
                f"image_size= (an int or (height, width)): the size the signatures "
                f"take and resize to.")
        return rows, cols, channels_first
    height, width = _parse_size(image_size)
    if (rows is not None and rows != height) or (cols is not None and cols != width):
        raise ValueError(
            f"image_size={image_size!r} disagrees with the model's input size "
            f"{rows}x{cols}; leave image_size out or build the model for "
            f"{height}x{width}.")
    return height, width, channels_first


def _num_classes(model) -> int:
    shape = tuple(model.outputs[0].shape)
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            f"Model {model.name!r} outputs shape {shape}; export takes classifiers "
            f"with outputs (batch, classes) (build it with include_top=True).")
    return int(shape[-1])


def _outputs_logits(model, from_logits: Optional[bool]) -> bool:
    """Whether the signatures must apply softmax: the last layer's activation decides."""
    if from_logits is not None:
        return bool(from_logits)
    layer = model.outputs[0]._keras_history[0]
    if isinstance(layer, keras.layers.Softmax):
        return False
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    if name in _PROBABILITY_ACTIVATIONS:
        return False
    if name == "linear":
        return True
    raise ValueError(
        f"Cannot tell whether the output of layer {layer.name!r} "
        f"({type(layer).__name__}, activation {name!r}) is probabilities or logits. "
        f"Pass from_logits=True (softmax is applied in the signatures) or False.")


def _check_class_names(class_names, classes: int):
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
        raise ValueError(f"class_names must be a sequence of strings, got "
                         f"{class_names!r}.")
    names = [str(c) for c in class_names]
    if len(names) != classes:
        raise ValueError(f"Got {len(names)} class names for a model with {classes} "
                         f"classes.")
    return names


def _check_crop_fraction(crop_fraction):
    if crop_fraction is not None and not 0.0 < float(crop_fraction) <= 1.0:
        raise ValueError(
            f"crop_fraction must be in (0, 1] or None, got {crop_fraction!r}.")
    return None if crop_fraction is None else float(crop_fraction)


def _version_dir(base_dir, name, version) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"name must be a plain folder name (letters, digits, '.', '_', "
                         f"'-'), got {name!r}.")
    if (isinstance(version, bool) or not isinstance(version, (int, np.integer))
            or version < 1):
        raise ValueError(f"version must be a positive integer (TF Serving serves the "
                         f"highest), got {version!r}.")
    target = os.path.join(os.fspath(base_dir), name, str(int(version)))
    if os.path.lexists(target):
        model_dir = os.path.dirname(target)
        existing = sorted(int(d) for d in os.listdir(model_dir) if d.isdigit())
        raise FileExistsError(
            f"{target} already exists: a served version is never overwritten. Choose "
            f"another version (existing: {', '.join(map(str, existing))}; e.g. "
            f"version={existing[-1] + 1}), or remove it first.")
    return target


# --------------------------------------------------------------- in-graph decoding

def _decode_and_resize_tf(data, height: int, width: int, crop_fraction):
    """One encoded image (string scalar) -> float32 [height, width, 3] in 0..255."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.cast(image, tf.float32)
    in_h = tf.cast(tf.shape(image)[0], tf.float32)
    in_w = tf.cast(tf.shape(image)[1], tf.float32)
    if crop_fraction is None:
        top, left, box_h, box_w = 0.0, 0.0, in_h, in_w
    else:
        # keras_inception.preprocessing._crop_box: the largest central box with the
        # output's aspect ratio, shrunk by crop_fraction.
        aspect = width / height
        wide = in_w / in_h > aspect
        box_w = tf.where(wide, in_h * aspect, in_w) * crop_fraction
        box_h = tf.where(wide, in_h, in_w / aspect) * crop_fraction
        top, left = (in_h - box_h) / 2.0, (in_w - box_w) / 2.0
    scale = tf.stack([height / box_h, width / box_w])
    # ScaleAndTranslate samples output pixel i at (i + 0.5 - t) / s in the input, with
    # a triangle kernel widened when shrinking: Pillow's bilinear resize of a
    # (fractional) box, which load_image uses, without its 8-bit rounding.
    out = tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=tf.constant([height, width], tf.int32), scale=scale,
        translation=-tf.stack([top, left]) * scale, kernel_type="triangle",
        antialias=True)
    return tf.ensure_shape(out[0], (height, width, 3))


def decode_and_resize(data: bytes, size,
                      crop_fraction: Optional[float] = DEFAULT_CROP_FRACTION):
    """Decodes and resizes an encoded image as the ``"serve_bytes"`` signature does.

    JPEG, PNG, GIF (first frame), BMP or WebP bytes are decoded to RGB; the central
    box with the output's aspect ratio covering ``crop_fraction`` of the shorter side
    is resized to ``size`` with an antialiased bilinear filter: the region and filter of
    :func:`keras_inception.load_image`, whose Pillow arithmetic rounds to 8 bits, so
    values agree with it within about one level. Needs TensorFlow (any Keras backend).

    Args:
        data: the encoded file's bytes.
        size: output side, or ``(height, width)``.
        crop_fraction: fraction of the shorter side kept; None resizes the whole
            image (distorting its aspect ratio).

    Returns:
        float32 NumPy array ``(height, width, 3)`` with values in 0..255 (not rounded).

    Example:
        >>> import io
        >>> import numpy as np
        >>> from PIL import Image
        >>> from keras_inception.export import decode_and_resize
        >>> buffer = io.BytesIO()
        >>> Image.fromarray(np.full((40, 60, 3), 200, "uint8")).save(buffer, "PNG")
        >>> image = decode_and_resize(buffer.getvalue(), 16)
        >>> image.shape, image.dtype, bool(np.allclose(image, 200, atol=1e-3))
        ((16, 16, 3), dtype('float32'), True)
    """
    import tensorflow as tf

    height, width = _parse_size(size)
    crop_fraction = _check_crop_fraction(crop_fraction)
    try:
        out = _decode_and_resize_tf(tf.constant(data, tf.string), height, width,
                                    crop_fraction)
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"Cannot decode the image: {err.message}") from None
    return out.numpy()


# ---------------------------------------------------------- TensorFlow-backend work

def _require_tensorflow_backend(what: str):
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"{what} runs on the TensorFlow backend only (internal).")


def _write_saved_model(model, target, *, height, width, channels_first, mode,
                       crop_fraction, logits, class_names, metadata):
    """Writes the SavedModel into ``target`` (must not exist). TensorFlow backend."""
    _require_tensorflow_backend("_write_saved_model")
    import tensorflow as tf

    def heads(images):
        x = P.preprocess_input(images, mode, data_format="channels_last")
        if channels_first:
            x = tf.transpose(x, (0, 3, 1, 2))
        scores = tf.cast(model(x, training=False), tf.float32)
        probabilities = tf.nn.softmax(scores, axis=-1) if logits else scores
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        out = {OUTPUT_PROBABILITIES: probabilities, OUTPUT_CLASS_ID: class_id}
        if class_names is not None:
            out[OUTPUT_CLASS_NAME] = tf.gather(tf.constant(class_names), class_id)
        return out

    # One trace of the model, called by both signatures (tracing is the slow part).
    heads = tf.function(heads, autograph=False, input_signature=[
        tf.TensorSpec((None, height, width, 3), tf.float32)])
    expected = f"[N, {height}, {width}, 3]"

    def serve_images(image):
        # The signature's static shape is not enforced when a server feeds the graph
        # (global pooling would then answer any size, wrongly): check it here.
        shape = tf.shape(image)
        ok = tf.cond(tf.equal(tf.size(shape), 4),
                     lambda: tf.reduce_all(tf.equal(shape[1:], [height, width, 3])),
                     lambda: tf.constant(False))
        check = tf.debugging.Assert(ok, summarize=8, data=[
            f"{SIGNATURE_IMAGES} takes float32 images of shape {expected} (RGB, "
            f"values 0..255); resize them to {height}x{width}, or send encoded files "
            f"to the {SIGNATURE_BYTES} signature, which resizes. Got shape:",
            shape])
        with tf.control_dependencies([check]):
            image = tf.identity(image)
        return heads(image)

    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda data: _decode_and_resize_tf(data, height, width, crop_fraction),
            image_bytes,
            fn_output_signature=tf.TensorSpec((height, width, 3), tf.float32))
        return heads(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_IMAGES, serve_images, input_signature=[
        tf.TensorSpec((None, height, width, 3), tf.float32, name=INPUT_IMAGES)])
    archive.add_endpoint(SIGNATURE_BYTES, serve_bytes, input_signature=[
        tf.TensorSpec((None,), tf.string, name=INPUT_BYTES)])
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    # Written beside the target under a non-numeric name (TF Serving ignores it), then
    # renamed: a server polling the folder never sees a half-written version.
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        archive.write_out(tmp, verbose=False)
        os.makedirs(os.path.join(tmp, os.path.dirname(METADATA_FILE)), exist_ok=True)
        with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf8") as f:
            json.dump(metadata, f, indent=2)
        if os.path.lexists(target):
            raise FileExistsError(f"{target} appeared while exporting; nothing was "
                                  f"overwritten. Choose another version.")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _inference_graph(head, fuse: bool):
    """``head`` with every foldable BatchNormalization folded into its convolution.

    The exported graphs are for inference: folding computes the same outputs
    (within 1e-5 of their scale, :func:`keras_inception.optimize.fuse_batchnorm`)
    with fewer ops and less memory. Returns ``(model, layers folded)``.
    """
    if not fuse:
        return head, 0
    from keras_inception.optimize import fuse_batchnorm

    def count(model):
        return sum(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in model._flatten_layers(include_self=False))

    before = count(head)
    if not before:
        return head, 0
    fused = fuse_batchnorm(head, strict=False)
    return fused, before - count(fused)


def _write_onnx(model, path, image_size, fuse=True):
    _require_tensorflow_backend("_write_onnx")
    model, _ = _inference_graph(model, fuse)
    # Keras refuses to export a model that has never been called.
    shape = list(model.inputs[0].shape)
    spatial = (1, 2) if shape[-1] == 3 else (2, 3)
    fill = image_size or (75, 75)  # 75: every family's minimum input
    for axis, side in zip(spatial, fill):
        shape[axis] = shape[axis] or side
    shape[0] = 1
    model(np.zeros(shape, "float32"), training=False)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # tf2onnx probes np.object, deprecated in NumPy: noise for the caller.
            warnings.simplefilter("ignore", FutureWarning)
            model.export(tmp, format="onnx", verbose=False)
        os.replace(tmp, path)
    except ImportError as err:
        raise ImportError(f"ONNX export needs tf2onnx and onnx: pip install "
                          f"'keras-inception[export]' ({err}).") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


_CHILD = ("import sys; from keras_inception.export import main; "
          "sys.exit(main(sys.argv[1:]))")


def _tensorflow_env() -> dict:
    """This process's environment with the TensorFlow backend and this package first."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _in_tensorflow_process(model, args: Sequence[str], what: str) -> dict:
    """Saves ``model`` to a temporary ``.keras`` and runs this module's command line on
    it with the TensorFlow backend; returns the result it reports."""
    with tempfile.TemporaryDirectory(prefix="keras-inception-export-") as tmp:
        keras_path = os.path.join(tmp, "model.keras")
        model.save(keras_path)
        result_path = os.path.join(tmp, "result.json")
        # `-c` rather than `-m keras_inception.export`: runpy warns when the package
        # has imported the module it then runs as __main__.
        command = [sys.executable, "-c", _CHILD, keras_path, *args,
                   "--source-backend", keras.backend.backend(),
                   "--result-json", result_path]
        proc = subprocess.run(command, env=_tensorflow_env(), capture_output=True,
                              text=True)
        result = None
        if os.path.exists(result_path):
            with open(result_path, encoding="utf8") as f:
                result = json.load(f)
    if result is not None and not result.get("ok"):
        error = _PASSED_ERRORS.get(result.get("error"))
        if error is not None:
            raise error(result["message"])
        raise ExportError(f"{what} failed in the TensorFlow-backend process "
                          f"({result.get('error')}): {result.get('message')}\n"
                          f"{proc.stderr[-3000:]}")
    if proc.returncode != 0 or result is None:
        raise ExportError(
            f"{what} failed in the TensorFlow-backend process (exit status "
            f"{proc.returncode}); its output ends with:\n{proc.stderr[-3000:]}")
    logger.info("%s done by a TensorFlow-backend process (pid %s) for a model on %s.",
                what, result["pid"], keras.backend.backend())
    return result


# ------------------------------------------------------------------------ public API

def export_keras(model, path, *, include_aux: bool = False) -> str:
    """Saves ``model`` as a ``.keras`` file, main head only unless ``include_aux``.

    Any backend; the file loads on all three (``keras.saving.load_model`` after
    ``import keras_inception``, which registers the custom layers). The file is
    written beside ``path`` and renamed over it, so a reader never sees half a file.

    Args:
        model: a functional classifier; with a dict output (auxiliary heads) only
            ``"logits"`` is kept, which is what inference needs.
        path: the file, ending in ``.keras``.
        include_aux: keep every output (to resume training with the aux losses).

    Returns:
        ``path``.

    Example:
        >>> import os, tempfile, keras
        >>> from keras_inception.export import export_keras
        >>> image = keras.Input((8, 8, 3))
        >>> pooled = keras.layers.GlobalAveragePooling2D()(image)
        >>> model = keras.Model(image, {"logits": keras.layers.Dense(3)(pooled),
        ...                             "aux": keras.layers.Dense(3)(pooled)})
        >>> path = export_keras(model, os.path.join(tempfile.mkdtemp(), "m.keras"))
        >>> keras.saving.load_model(path).output_shape      # "logits" only
        (None, 3)
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"A Keras model file must end in '.keras', got {path!r}.")
    head = model if include_aux else _main_head(model)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".keras", dir=folder)
    os.close(fd)
    try:
        head.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def export_saved_model(model, base_dir, name: str = "model", version: int = 1, *,
                       image_size=None, preprocessing: Optional[str] = None,
                       class_names: Optional[Sequence[str]] = None,
                       crop_fraction: Optional[float] = DEFAULT_CROP_FRACTION,
                       from_logits: Optional[bool] = None,
                       fuse_batchnorm: bool = True) -> str:
    """Writes a TF-Serving SavedModel of ``model`` to ``base_dir/name/version/``.

    Signatures ``"serving_default"`` (float32 ``image`` ``[N, H, W, 3]``, values
    0..255) and ``"serve_bytes"`` (string ``image_bytes`` ``[N]``, encoded files,
    decoded and resized by :func:`decode_and_resize`); preprocessing in the graph;
    outputs ``"probabilities"`` ``[N, C]``, ``"class_id"`` ``[N]`` and, with
    ``class_names``, ``"class_name"`` ``[N]``. See the module docs. On JAX and
    PyTorch the export runs in a TensorFlow-backend process, transparently.

    Args:
        model: a trained classifier (main head kept, see :func:`export_keras`).
        base_dir: the folder TF Serving's ``--model_base_path`` points above.
        name: the model name (the folder under ``base_dir``, and the name clients
            request).
        version: positive integer; an existing version is never overwritten.
        image_size: int or ``(height, width)``: needed when the model takes any
            size; must match the model's size otherwise.
        preprocessing: mode of :func:`keras_inception.preprocess_input`; default
            :func:`keras_inception.preprocessing_for` the model.
        class_names: one name per class, for the ``"class_name"`` output.
        crop_fraction: the central crop of ``"serve_bytes"`` (0.875 as
            :func:`keras_inception.load_image`; None: resize the whole image).
        from_logits: whether the model outputs logits (softmax applied in the
            graph); default: decided from the last layer's activation.
        fuse_batchnorm: fold every BatchNormalization that follows a convolution
            into it (:func:`keras_inception.optimize.fuse_batchnorm`, non-strict):
            the same outputs within 1e-5 of their scale, faster and lighter to
            serve; recorded as ``batchnorm_folded`` in the metadata. False exports
            the layers as they are.

    Returns:
        The version folder.

    Raises:
        FileExistsError: the version folder exists (choose another version).
        ValueError: bad arguments; ExportError: the export process failed.

    Example:
        >>> import os, tempfile
        >>> import keras_inception
        >>> from keras_inception.export import export_saved_model
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3))  # doctest: +SKIP
        >>> base = tempfile.mkdtemp()
        >>> version = export_saved_model(model, base, "flowers", 1)   # doctest: +SKIP
        >>> sorted(os.listdir(version))                               # doctest: +SKIP
        ['assets', 'assets.extra', 'fingerprint.pb', 'saved_model.pb', 'variables']
    """
    target = _version_dir(base_dir, name, version)
    mode = P._check_mode(preprocessing) if preprocessing is not None else \
        _model_preprocessing(model)
    crop_fraction = _check_crop_fraction(crop_fraction)
    head = _main_head(model)
    height, width, channels_first = _geometry(head, image_size)
    logits = _outputs_logits(head, from_logits)
    names = _check_class_names(class_names, _num_classes(head))
    if keras.backend.backend() != "tensorflow":
        args = ["--saved-model", os.fspath(base_dir), "--name", name,
                "--version", str(int(version)), "--image-size", f"{height}x{width}",
                "--preprocessing", mode, "--from-logits", str(logits).lower(),
                "--crop-fraction",
                "none" if crop_fraction is None else repr(crop_fraction),
                "--fuse-batchnorm", str(bool(fuse_batchnorm)).lower()]
        if names is not None:
            args += ["--class-names", *names]
        _in_tensorflow_process(head, args, "SavedModel export")
        return target
    return _export_saved_model_here(head, target, height=height, width=width,
                                    channels_first=channels_first, mode=mode,
                                    crop_fraction=crop_fraction, logits=logits,
                                    class_names=names, source_backend="tensorflow",
                                    fuse=fuse_batchnorm)


def _export_saved_model_here(head, target, *, height, width, channels_first, mode,
                             crop_fraction, logits, class_names, source_backend,
                             fuse=True):
    import tensorflow as tf

    from keras_inception import __version__

    head, folded = _inference_graph(head, fuse)
    metadata = {
        "model": head.name,
        "signatures": {
            SIGNATURE_IMAGES: {INPUT_IMAGES: f"float32 [N, {height}, {width}, 3], RGB "
                                             f"0..255"},
            SIGNATURE_BYTES: {INPUT_BYTES: "string [N], encoded JPEG/PNG/GIF/BMP/WebP"},
        },
        "outputs": [OUTPUT_PROBABILITIES, OUTPUT_CLASS_ID]
        + ([OUTPUT_CLASS_NAME] if class_names is not None else []),
        "image_size": [height, width],
        "preprocessing": mode,
        "crop_fraction": crop_fraction,
        "softmax_applied": logits,
        "batchnorm_folded": folded,
        "class_names": class_names,
        "trained_on_backend": source_backend,
        "exported_by": {"keras_backend": keras.backend.backend(), "pid": os.getpid(),
                        "keras": keras.__version__, "tensorflow": tf.__version__,
                        "keras_inception": __version__},
    }
    return _write_saved_model(head, target, height=height, width=width,
                              channels_first=channels_first, mode=mode,
                              crop_fraction=crop_fraction, logits=logits,
                              class_names=class_names, metadata=metadata)


def export_onnx(model, path, *, image_size=None, fuse_batchnorm: bool = True) -> str:
    """Writes ``model`` (main head) as an ONNX file through tf2onnx.

    The ONNX graph is the Keras model as is: it takes the model's input (already
    preprocessed images, e.g. by :func:`keras_inception.preprocess_input`) and
    returns its output. On JAX and PyTorch it runs in a TensorFlow-backend process.

    Args:
        model: a functional model (dict outputs: ``"logits"`` kept).
        path: the ``.onnx`` file (replaced atomically if it exists).
        image_size: optional size the model is traced at when its input size is
            free (the ONNX input keeps free dimensions).
        fuse_batchnorm: fold BatchNormalization into the convolutions first (as
            :func:`export_saved_model`).

    Returns:
        ``path``.

    Example:
        >>> import os, tempfile
        >>> import keras_inception
        >>> from keras_inception.export import export_onnx
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3))  # doctest: +SKIP
        >>> path = os.path.join(tempfile.mkdtemp(), "m.onnx")
        >>> export_onnx(model, path) == path                   # doctest: +SKIP
        True
    """
    path = os.fspath(path)
    head = _main_head(model)
    size = None if image_size is None else _parse_size(image_size)
    if keras.backend.backend() != "tensorflow":
        args = ["--onnx", os.path.abspath(path),
                "--fuse-batchnorm", str(bool(fuse_batchnorm)).lower()]
        if size is not None:
            args += ["--image-size", f"{size[0]}x{size[1]}"]
        _in_tensorflow_process(head, args, "ONNX export")
        return path
    return _write_onnx(head, path, size, fuse_batchnorm)


# ---------------------------------------------------------------------- command line

def _size_arg(text: str):
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return (int(match[1]), int(match[2] or match[1]))


def _bool_arg(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def _fraction_arg(text: str):
    return None if text.lower() == "none" else float(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_inception.export",
        description="Export a .keras classifier as a TF-Serving SavedModel "
                    "(BASE/NAME/VERSION/) and/or an ONNX file. Runs on the TensorFlow "
                    "backend whatever KERAS_BACKEND says.")
    parser.add_argument("model", help="the .keras file")
    parser.add_argument("--saved-model", metavar="BASE", help="TF Serving base folder")
    parser.add_argument("--name", default="model", help="model name (default: model)")
    parser.add_argument("--version", type=int, default=1, help="version (default: 1)")
    parser.add_argument("--onnx", metavar="PATH", help="write an ONNX file")
    parser.add_argument("--image-size", type=_size_arg, metavar="N|HxW",
                        help="input size (needed when the model takes any size)")
    parser.add_argument("--preprocessing", choices=P.MODES,
                        help="preprocessing mode (default: the model family's)")
    parser.add_argument("--class-names", nargs="+", metavar="NAME",
                        help="one name per class (adds the class_name output)")
    parser.add_argument("--crop-fraction", type=_fraction_arg,
                        default=DEFAULT_CROP_FRACTION,
                        help="central crop of serve_bytes (default 0.875; none: resize "
                             "the whole image)")
    parser.add_argument("--from-logits", type=_bool_arg, default=None,
                        metavar="true|false",
                        help="whether the model outputs logits (default: from its last "
                             "activation)")
    parser.add_argument("--fuse-batchnorm", type=_bool_arg, default=True,
                        metavar="true|false",
                        help="fold BatchNormalization into the convolutions (default: "
                             "true; same outputs within 1e-5 of their scale)")
    parser.add_argument("--source-backend", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-json", default=None, help=argparse.SUPPRESS)
    return parser


def _load(path):
    import importlib

    import keras_inception  # noqa: F401  (registers the custom layers)

    # Optional modules whose layers a trained model may contain.
    for module in ("keras_inception.data",):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    try:
        return keras_inception.load_model(path, compile=False)
    except (TypeError, ValueError) as err:
        # Keras appends the whole config to the cause: keep the cause.
        reason = str(err)
        reason = reason.split("Exception encountered: ")[-1]
        reason = reason.split(" Full object config")[0]
        raise ValueError(
            f"Cannot load {path!r} on the TensorFlow backend: {reason} A model with "
            f"custom layers needs them registered with "
            f"@keras.saving.register_keras_serializable in an importable "
            f"module.") from err


def _run(args) -> dict:
    _require_tensorflow_backend("_run")
    if not args.saved_model and not args.onnx:
        raise ValueError("Nothing to do: pass --saved-model BASE and/or --onnx PATH.")
    model = _load(args.model)
    head = _main_head(model)
    written = {}
    if args.saved_model:
        target = _version_dir(args.saved_model, args.name, args.version)
        mode = args.preprocessing or _model_preprocessing(head)
        crop_fraction = _check_crop_fraction(args.crop_fraction)
        height, width, channels_first = _geometry(head, args.image_size)
        logits = _outputs_logits(head, args.from_logits)
        names = _check_class_names(args.class_names, _num_classes(head))
        written["saved_model"] = _export_saved_model_here(
            head, target, height=height, width=width, channels_first=channels_first,
            mode=mode, crop_fraction=crop_fraction, logits=logits, class_names=names,
            source_backend=args.source_backend or "tensorflow", fuse=args.fuse_batchnorm)
    if args.onnx:
        written["onnx"] = _write_onnx(head, args.onnx, args.image_size,
                                      args.fuse_batchnorm)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line, ``python -m keras_inception.export``.

    On another backend than TensorFlow it runs itself again in a TensorFlow-backend
    process.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 with one ``error:`` line on stderr.

    Example:
        >>> from keras_inception.export import main
        >>> try:
        ...     main(["--help"])  # doctest: +ELLIPSIS
        ... except SystemExit as exit:
        ...     print("exit", exit.code)
        usage: ...
        exit 0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        # The backend is fixed once Keras is imported: run again on TensorFlow.
        return subprocess.run([sys.executable, "-c", _CHILD, *argv],
                              env=_tensorflow_env()).returncode
    result = {"pid": os.getpid()}
    try:
        result.update(ok=True, written=_run(args))
    except Exception as err:  # reported to the caller, who re-raises it
        result.update(ok=False, error=type(err).__name__, message=str(err))
        if type(err).__name__ not in _PASSED_ERRORS:
            traceback.print_exc()
    if args.result_json:
        with open(args.result_json, "w", encoding="utf8") as f:
            json.dump(result, f)
    if not result["ok"]:
        print(f"error: {result['message']}", file=sys.stderr)
        return 2
    for kind, path in result["written"].items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
