"""Several Inception families on the same images: top-5 predictions, size and speed.

Usage:
    python recipes/compare_models.py [IMAGE ...] [--models googlenet,inception_v3,...]
        [--weights imagenet|none] [--size N] [--batch-size 8] [--repeats 5]
        [--out-dir compare_models]

Each model is built with its named weights (offline: random initialisation, said in
one line per model, and its predictions are then meaningless), reads every image
with its weights' evaluation transform (size, central crop; ``--size`` forces one
size for all) and preprocessing, and gives its top-5 ImageNet classes
(``decode_predictions``). Speed is inference throughput in images/s, measured in one
run per model: a warm-up batch (graph tracing / compilation), then ``--repeats``
batches of ``--batch-size`` images timed together. The table also gives each model's
parameters and speed relative to the first model. Without images, generated ones
(``keras_inception.data.synthetic_flowers``) are used.

Writes ``OUT_DIR/comparison.md`` (the tables) and ``OUT_DIR/comparison.json``.
Errors (unknown model name, unreadable image) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

import keras_inception
from keras_inception import cli, data, preprocessing, pretrained

DEFAULT_MODELS = "googlenet,inception_v2,inception_v3,xception"


def _parser():
    parser = argparse.ArgumentParser(
        prog="compare_models.py",
        description="Compare Inception families on the same images: top-5 "
                    "predictions, parameters and inference speed.")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files (default: generated images)")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated registry names, the first is the "
                             f"reference of the ratios (default: {DEFAULT_MODELS}); "
                             f"known: {', '.join(keras_inception.list_models())}")
    parser.add_argument("--weights", default="imagenet",
                        help="named weights of every model (default: imagenet), or "
                             "'none' for random initialisation")
    parser.add_argument("--size", type=int, default=None,
                        help="one input side for all models (default: each weights' "
                             "evaluation size, else each model's canonical size)")
    parser.add_argument("--generated", type=int, default=2,
                        help="number of generated images when none are given (2)")
    parser.add_argument("--top", type=int, default=5, help="classes per image (5)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images per timed batch (default: 8, or the number of "
                             "images if more)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed batches per model after the warm-up (default: 5)")
    parser.add_argument("--out-dir", default="compare_models",
                        help="output folder (default: ./compare_models)")
    return parser


def _fail(message: str) -> int:
    return cli.fail("compare_models.py", message)


def _generated_images(out_dir, count):
    folder = data.synthetic_flowers(os.path.join(out_dir, "generated"),
                                    classes=max(2, count), per_class=2, size=160)
    source = data.image_folder(folder)
    # One image per class, so the images differ.
    firsts = [source.items[int(np.flatnonzero(source.labels == c)[0])]
              for c in range(len(source.class_names))]
    print(f"No images given: using {count} generated flower image(s) from {folder}.")
    return firsts[:count]


def throughput(model, batch, repeats, label):
    """(images per second, outputs of the warm-up batch) of
    ``model.predict_on_batch(batch)``: one warm-up call (graph tracing, compilation),
    then ``repeats`` calls timed together."""
    from tqdm import tqdm

    outputs = keras.ops.convert_to_numpy(model.predict_on_batch(batch))  # warm-up
    start = time.perf_counter()
    for _ in tqdm(range(repeats), desc=f"{label} speed", unit="batch", leave=False):
        keras.ops.convert_to_numpy(model.predict_on_batch(batch))
    return repeats * len(batch) / (time.perf_counter() - start), outputs


def _markdown(rows, images, top) -> str:
    first = rows[0]
    lines = [
        f"# Model comparison ({keras.backend.backend()} backend)", "",
        f"Speed: inference images/s, batches of {first['batch_size']}, after a warm-up "
        f"batch; ratios relative to `{first['model']}`.", "",
        "| model | weights | input | preprocessing | params | images/s | "
        "params ratio | speed ratio |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['input_size']} | "
            f"{r['preprocessing']} | {r['params']:,} | {r['images_per_s']:.2f} | "
            f"{r['params'] / first['params']:.2f} | "
            f"{r['images_per_s'] / first['images_per_s']:.2f} |")
    if any(r["weights"] == "random" for r in rows):
        lines += ["", "Models with random weights give meaningless predictions."]
    for image in images:
        lines += ["", f"## {image}", "",
                  "| rank | " + " | ".join(r["model"] for r in rows) + " |",
                  "|---:|" + "---|" * len(rows)]
        for rank in range(top):
            cells = []
            for r in rows:
                wnid, name, score = r["predictions"][image][rank]
                cells.append(f"{name} ({score:.3f})")
            lines.append(f"| {rank + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        return _fail("--models is empty; give at least one registry name.")
    for flag, value in (("--top", args.top), ("--batch-size", args.batch_size),
                        ("--repeats", args.repeats), ("--generated", args.generated)):
        if value < 1:
            return _fail(f"{flag} must be at least 1, got {value}.")
    try:  # every name checked before anything is built
        infos = [keras_inception.get_model_info(n) for n in names]
    except ValueError as err:
        return _fail(cli.one_line(err))
    small = [f"{i.name} ({i.min_size})" for i in infos
             if args.size and args.size < i.min_size]
    if small:
        return _fail(f"--size {args.size} is below the minimum input side of "
                     f"{', '.join(small)}; pass a larger --size or leave those out.")
    weights = None if args.weights.lower() == "none" else args.weights
    os.makedirs(args.out_dir, exist_ok=True)
    images = args.images or _generated_images(args.out_dir, args.generated)
    for path in images:
        if not os.path.isfile(path):
            return _fail(f"No image file at {path!r}.")
    channels_last = keras.config.image_data_format() == "channels_last"

    rows = []
    for info in infos:
        entry = pretrained.find_weights_entry(info.name, weights)
        size = args.size or (entry.input_size if entry else info.default_size)
        try:
            pixels = np.stack([preprocessing.load_image(
                path, size, crop_fraction=entry.crop_fraction if entry else 0.875,
                interpolation=entry.interpolation if entry else "bilinear",
                data_format=keras.config.image_data_format()) for path in images])
            model, used = pretrained.create_or_random(info.name, weights, input_shape=(
                (size, size, 3) if channels_last else (3, size, size)))
        except Exception as err:  # noqa: BLE001 - unreadable image, bad size
            return _fail(cli.one_line(err))
        mode = preprocessing.preprocessing_for(model)
        x = preprocessing.preprocess_input(pixels, mode)
        # The images, repeated to fill a batch: the warm-up call predicts them.
        batch = np.resize(x, (max(args.batch_size, len(x)),) + x.shape[1:])
        speed, outputs = throughput(model, batch, args.repeats, info.name)
        scores = outputs[:len(x)]
        decoded = preprocessing.decode_predictions(scores, top=min(args.top,
                                                                   scores.shape[-1]))
        rows.append({
            "model": info.name, "weights": used or "random", "input_size": size,
            "preprocessing": mode, "params": int(model.count_params()),
            "images_per_s": speed, "batch_size": len(batch),
            "repeats": args.repeats,
            "predictions": {path: [list(p) for p in preds]
                            for path, preds in zip(images, decoded)},
        })
        print(f"{info.name}: {rows[-1]['params']:,} params, {speed:.2f} images/s at "
              f"{size}x{size}; top-1 of {os.path.basename(images[0])}: "
              f"{decoded[0][0][1]} ({decoded[0][0][2]:.3f})")
        del model
        keras.backend.clear_session()

    reference = rows[0]
    for r in rows:
        r["params_ratio"] = r["params"] / reference["params"]
        r["speed_ratio"] = r["images_per_s"] / reference["images_per_s"]
    markdown = _markdown(rows, images, len(rows[0]["predictions"][images[0]]))
    print("\n" + markdown)
    with open(os.path.join(args.out_dir, "comparison.md"), "w", encoding="utf8") as f:
        f.write(markdown)
    with open(os.path.join(args.out_dir, "comparison.json"), "w", encoding="utf8") as f:
        json.dump({"backend": keras.backend.backend(), "images": images,
                   "reference": reference["model"], "models": rows}, f, indent=1)
    print(f"Saved comparison.md and comparison.json in {os.path.abspath(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
