"""Feature maps of an early Inception block, as an image grid.

Usage:
    python recipes/visualize_features.py [--image cat.jpg] [--model googlenet]
        [--weights imagenet|none|PATH] [--stage NAME | --layer NAME]
        [--channels 64] [--size N] [--out-dir feature_maps]

The default tap is the first stage after the stem, i.e. the first group of Inception
modules (``mixed_3`` of GoogLeNet, ``mixed_5`` of Inception-v3; ``get_model_info(name)
.stages`` lists them all). The ``--channels`` most active channels of that stage's
output (largest mean activation) are drawn in a grid, each tile normalised to its own
min..max and coloured with ``--cmap``; ``features.json`` records which channels, in
which order, and the grid's geometry.

Writes ``OUT_DIR/feature_grid.png``, ``OUT_DIR/input.png`` (the image the network
saw: cropped and resized) and ``OUT_DIR/features.json``.

Offline, named weights that cannot be downloaded fall back to random initialisation
(said in one line: the maps then show untrained filters); without ``--image`` a
generated flower image (``keras_inception.data.synthetic_flowers``) is used.
Errors (unknown model, stage or layer, unreadable image) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import keras
import numpy as np

import keras_inception
from keras_inception import cli, data, preprocessing, pretrained

GAP = 2  # pixels between tiles


def _parser():
    parser = argparse.ArgumentParser(
        prog="visualize_features.py",
        description="Feature maps of an early Inception block as an image grid PNG.")
    parser.add_argument("--image", default=None,
                        help="an image file (default: a generated flower image)")
    parser.add_argument("--model", default="googlenet",
                        help="registry name (default: googlenet); one of "
                             + ", ".join(keras_inception.list_models()))
    parser.add_argument("--weights", default="imagenet",
                        help="named weights (default: imagenet), 'none' for random "
                             "initialisation, or a weight file")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--stage", default=None,
                       help="stage whose output is shown (default: the first stage "
                            "after 'stem')")
    where.add_argument("--layer", default=None,
                       help="any layer name instead of a stage (e.g. mixed_3b)")
    parser.add_argument("--channels", type=int, default=64,
                        help="number of channels drawn (default: 64; at most all)")
    parser.add_argument("--size", type=int, default=None,
                        help="input side (default: the weights' evaluation size, else "
                             "the model's canonical size)")
    parser.add_argument("--scale", type=int, default=None,
                        help="pixels per feature-map pixel (default: enough for tiles "
                             "of at least 48 px)")
    parser.add_argument("--cmap", default="viridis",
                        help="matplotlib colormap of the tiles (default: viridis)")
    parser.add_argument("--out-dir", default="feature_maps",
                        help="output folder (default: ./feature_maps)")
    return parser


def _fail(message: str) -> int:
    return cli.fail("visualize_features.py", message)


def _default_tap(info) -> str:
    names = [s.name for s in info.stages]
    return names[names.index("stem") + 1]


def _input_image(path, out_dir, size, crop_fraction, interpolation):
    """(image 0..255 channels-last, path): ``path`` or a generated flower image."""
    if path is None:
        folder = data.synthetic_flowers(os.path.join(out_dir, "generated"), classes=2,
                                        per_class=2, size=max(size, 16))
        source = data.image_folder(folder)
        path = source.items[0]
        print(f"No --image given: using a generated flower image "
              f"({source.class_names[source.labels[0]]}) at {path}.")
    image = preprocessing.load_image(path, size, crop_fraction=crop_fraction,
                                     interpolation=interpolation,
                                     data_format="channels_last")
    return image, path


def feature_grid(maps, count, scale, cmap):
    """(PIL image, channels drawn, (rows, cols)) for a channels-last (H, W, C) map.

    The ``count`` channels with the largest mean activation, strongest first, row
    by row; each tile normalised to its own min..max (a constant one is drawn as 0).
    """
    import matplotlib
    from PIL import Image

    height, width, channels = maps.shape
    order = np.argsort(-maps.mean(axis=(0, 1)), kind="stable")[:min(count, channels)]
    cols = math.ceil(math.sqrt(len(order)))
    rows = math.ceil(len(order) / cols)
    tile_h, tile_w = height * scale, width * scale
    canvas = np.full((rows * tile_h + (rows + 1) * GAP, cols * tile_w + (cols + 1) * GAP,
                      3), 255, np.uint8)
    colour = matplotlib.colormaps[cmap]
    for i, channel in enumerate(order):
        tile = maps[..., channel].astype(np.float64)
        span = tile.max() - tile.min()
        tile = (tile - tile.min()) / span if span > 0 else np.zeros_like(tile)
        rgb = (colour(tile)[..., :3] * 255).round().astype(np.uint8)
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
        r, c = divmod(i, cols)
        top, left = GAP + r * (tile_h + GAP), GAP + c * (tile_w + GAP)
        canvas[top:top + tile_h, left:left + tile_w] = rgb
    return Image.fromarray(canvas), [int(c) for c in order], (rows, cols)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.channels < 1:
        return _fail(f"--channels must be at least 1, got {args.channels}.")
    if args.scale is not None and args.scale < 1:
        return _fail(f"--scale must be at least 1, got {args.scale}.")
    try:
        import matplotlib

        matplotlib.colormaps[args.cmap]
    except KeyError:
        return _fail(f"Unknown colormap {args.cmap!r} (try viridis, magma, gray).")
    try:
        info = keras_inception.get_model_info(args.model)
        tap = args.layer or info.stage(args.stage or _default_tap(info)).layer
    except ValueError as err:
        return _fail(cli.one_line(err))
    weights = None if args.weights.lower() == "none" else args.weights
    entry = pretrained.find_weights_entry(info.name, weights)
    size = args.size or (entry.input_size if entry else info.default_size)
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        image, image_path = _input_image(
            args.image, args.out_dir, size, entry.crop_fraction if entry else 0.875,
            entry.interpolation if entry else "bilinear")
    except (OSError, ValueError) as err:
        return _fail(cli.one_line(err))

    channels_last = keras.config.image_data_format() == "channels_last"
    try:
        model, used = pretrained.create_or_random(info.name, weights, include_top=False, input_shape=(
            (size, size, 3) if channels_last else (3, size, size)))
        # Model(...) rather than feature_extractor: --layer may name any layer.
        extractor = keras.Model(model.input, model.get_layer(tap).output,
                                name=f"{info.name}_{tap}")
    except Exception as err:  # noqa: BLE001 - a bad size, layer or weight file
        return _fail(cli.one_line(err))
    mode = preprocessing.preprocessing_for(model)  # the weights' own, else the family's
    x = preprocessing.preprocess_input(image[None], mode, data_format="channels_last")
    if not channels_last:
        x = x.transpose(0, 3, 1, 2)
    maps = np.asarray(extractor.predict(x, verbose=0))
    if maps.ndim != 4:
        return _fail(f"layer {tap!r} outputs shape {maps.shape}, not feature maps.")
    maps = maps[0] if channels_last else maps[0].transpose(1, 2, 0)
    scale = args.scale or max(1, math.ceil(48 / max(maps.shape[:2])))
    grid, order, (rows, cols) = feature_grid(maps, args.channels, scale, args.cmap)

    from PIL import Image

    grid_path = os.path.join(args.out_dir, "feature_grid.png")
    input_path = os.path.join(args.out_dir, "input.png")
    grid.save(grid_path)
    Image.fromarray(image.round().clip(0, 255).astype(np.uint8)).save(input_path)
    record = {
        "model": info.name, "weights": used or "random", "image": image_path,
        "input_size": size, "preprocessing": mode, "layer": tap,
        "stage": None if args.layer else (args.stage or _default_tap(info)),
        "feature_shape": list(maps.shape), "channels": order, "grid": [rows, cols],
        "scale": scale, "gap": GAP, "cmap": args.cmap,
    }
    with open(os.path.join(args.out_dir, "features.json"), "w", encoding="utf8") as f:
        json.dump(record, f, indent=1)
    print(f"{info.name} ({used or 'random'} weights), layer {tap}: feature maps "
          f"{maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}; the {len(order)} most "
          f"active channels in a {rows}x{cols} grid.")
    print(f"Saved {grid_path}, {input_path} and features.json in "
          f"{os.path.abspath(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
