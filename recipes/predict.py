"""Classify images with a keras-inception model and print the top classes.

Usage:
    python recipes/predict.py IMAGE [IMAGE ...] [--model googlenet]
        [--weights imagenet|none|PATH] [--top 5] [--size N] [--classes N]

The backend is Keras' (``KERAS_BACKEND=tensorflow|jax|torch``). Each image is read
with the evaluation transform of the named weights (size, central crop,
interpolation; else the model's canonical size and the central 87.5%) and scaled
the way the weights were trained (``keras_inception.preprocessing``).
Errors (weights that cannot be obtained, unreadable images) print one line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import keras
import numpy as np

import keras_inception
from keras_inception import cli, preprocessing


def _parser():
    parser = argparse.ArgumentParser(
        prog="predict.py", description="Top-k ImageNet classes of images.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--model", default="googlenet",
                        help="registry name (default: googlenet); one of "
                             + ", ".join(keras_inception.list_models()))
    parser.add_argument("--weights", default="imagenet",
                        help="named weights (default: imagenet), 'none' for random "
                             "initialisation, or the path of a weight file")
    parser.add_argument("--top", type=int, default=5, help="classes per image (5)")
    parser.add_argument("--size", type=int, default=None,
                        help="input side (default: the named weights' evaluation "
                             "size, else the model's canonical size)")
    parser.add_argument("--classes", type=int, default=None,
                        help="classifier width: 1001 for TF-Slim weights with a "
                             "background class (default: the model's)")
    parser.add_argument("--crop-fraction", type=float, default=None,
                        help="central fraction of the shorter side kept (default: "
                             "the named weights' evaluation crop, else 0.875)")
    parser.add_argument("--preprocessing", choices=preprocessing.MODES, default=None,
                        help="override the input scaling the weights call for")
    parser.add_argument("--batch-size", type=int, default=8)
    return parser


def _fail(message: str) -> int:
    return cli.fail("predict.py", message)


def _build(args, size, weights):
    channels_last = keras.config.image_data_format() == "channels_last"
    kwargs = {"weights": weights,
              "input_shape": (size, size, 3) if channels_last else (3, size, size)}
    if args.classes is not None:
        kwargs["classes"] = args.classes
    return keras_inception.create_model(args.model, **kwargs)


def _weights_entry(model_name, weights):
    """The registry entry of named weights (their evaluation transform), or None for
    a path, for none, or for a name the registry lacks (create_model reports it)."""
    if weights is None or os.path.exists(weights):
        return None
    try:
        from keras_inception import pretrained

        return pretrained.get_weights_entry(model_name, weights)
    except (ImportError, AttributeError, ValueError):
        return None


def _weights_hint(err, weights) -> str:
    # Argument errors (ValueError, TypeError) already say what to do; anything else
    # with named weights is most likely a download on a machine offline.
    if (isinstance(err, (ValueError, TypeError)) or weights is None
            or os.path.sep in weights or os.path.exists(weights)):
        return ""
    return (f" -- could not get the '{weights}' weights (offline?): run once with "
            f"network access to cache them, or pass --weights PATH to a local weight "
            f"file (--weights none for random weights).")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.top < 1:
        return _fail(f"--top must be at least 1, got {args.top}.")
    try:
        info = keras_inception.get_model_info(args.model)
    except ValueError as err:
        return _fail(cli.one_line(err))
    weights = None if args.weights.lower() == "none" else args.weights
    entry = _weights_entry(info.name, weights)
    size = args.size if args.size is not None else (
        entry.input_size if entry else info.default_size)
    crop_fraction = args.crop_fraction if args.crop_fraction is not None else (
        entry.crop_fraction if entry else 0.875)
    interpolation = entry.interpolation if entry else "bilinear"
    data_format = keras.config.image_data_format()
    # Images first: a bad path fails in a moment, not after building the model.
    try:
        images = np.stack([
            preprocessing.load_image(path, size, crop_fraction=crop_fraction,
                                     interpolation=interpolation,
                                     data_format=data_format)
            for path in args.images])
    except (OSError, ValueError, ImportError) as err:
        return _fail(cli.one_line(err))

    try:
        model = _build(args, size, weights)
    # Deliberately broad: keras.utils.get_file reports a failed download as a bare
    # Exception, and any failure here is the user's to fix (weights, size, classes).
    except Exception as err:  # noqa: BLE001
        return _fail(cli.one_line(err) + _weights_hint(err, weights))

    mode = args.preprocessing or preprocessing.preprocessing_for(model,
                                                                 weights_entry=entry)
    scores = model.predict(preprocessing.preprocess_input(images, mode, data_format),
                           batch_size=args.batch_size, verbose=0)
    width = scores.shape[-1]
    if width not in (1000, 1001):
        return _fail(f"the model has {width} classes; this script decodes ImageNet's "
                     f"1000 or 1001.")
    label = args.weights if weights is not None else "random"
    print(f"{args.model} ({label} weights), {size}x{size} input, '{mode}' preprocessing")
    for path, rows in zip(args.images,
                          preprocessing.decode_predictions(scores, min(args.top, width))):
        print(f"\n{path}")
        print(f"  {'rank':>4}  {'score':>8}  {'wnid':<10}  class")
        for rank, (wnid, name, score) in enumerate(rows, 1):
            print(f"  {rank:>4}  {score:8.4f}  {wnid:<10}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
