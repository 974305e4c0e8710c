"""Freeze the stem of a pretrained network, train the rest, check the stem is untouched.

Usage:
    python recipes/freeze_stem.py [--model googlenet] [--weights imagenet|none|PATH]
        [--up-to stem] [--data-dir FOLDER] [--epochs 1] [--out-dir freeze_stem]

Builds the model with its pretrained body and a new classifier for the data's
classes (``training.build_classifier``), freezes every layer through the end of the stage
``--up-to`` (``transfer.freeze_up_to``; frozen BatchNormalization layers run in
inference mode), prints what trains (``transfer.trainable_summary``), trains briefly,
and verifies that the frozen weights and BatchNormalization statistics are
bit-identical after training (a SHA-256 of every frozen tensor, before and after).

Data: ``--data-dir`` (one subfolder per class), else tfds' ``tf_flowers``, else,
offline, a generated dataset (``synthetic-flowers``), said in one line. Weights that
cannot be downloaded fall back to random initialisation, said in one line too.

Writes ``OUT_DIR/model.keras`` and ``OUT_DIR/freeze_stem.json`` (frozen layers,
checksums, history). Exit status: 0; 1 if a frozen tensor changed; 2 on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import keras
import numpy as np

import keras_inception
from keras_inception import accelerate, cli, data, export, pretrained, training, transfer


def _parser():
    parser = argparse.ArgumentParser(
        prog="freeze_stem.py",
        description="Freeze the stem (or up to a stage), train the rest briefly, and "
                    "check the frozen weights and BN statistics did not change.")
    parser.add_argument("--model", default="googlenet",
                        help="registry name (default: googlenet); one of "
                             + ", ".join(keras_inception.list_models()))
    parser.add_argument("--weights", default="imagenet",
                        help="named weights (default: imagenet), 'none' for random "
                             "initialisation, or a weight file")
    parser.add_argument("--up-to", default="stem", metavar="STAGE",
                        help="freeze through the end of this stage (default: stem); "
                             "see get_model_info(MODEL).stages")
    parser.add_argument("--size", type=int, default=None,
                        help="input side (default: the weights' size, else the "
                             "model's canonical size)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (default: 1)")
    parser.add_argument("--dropout", type=float, default=0.2,
                        help="dropout of the new head (default: 0.2)")
    cli.add_training_data_arguments(parser)
    parser.add_argument("--out-dir", default="freeze_stem",
                        help="output folder (default: ./freeze_stem)")
    return parser


def _fail(message: str) -> int:
    return cli.fail("freeze_stem.py", message)


def checksum(layers) -> dict:
    """SHA-256 of every tensor of ``layers`` (weights and BN moving statistics):
    ``{"sha256": all of them, "tensors": n, "bn_statistics": n}``."""
    digest, tensors, stats = hashlib.sha256(), 0, 0
    for layer in layers:
        for weight in layer.weights:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
            digest.update(weight.path.encode("utf8"))
            digest.update(value.tobytes())
            tensors += 1
            stats += weight.path.endswith(("moving_mean", "moving_variance"))
    return {"sha256": digest.hexdigest(), "tensors": tensors, "bn_statistics": stats}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            return _fail(f"{flag} must be at least 1, got {value}.")
    try:
        info = keras_inception.get_model_info(args.model)
        info.stage(args.up_to)
    except ValueError as err:
        return _fail(cli.one_line(err))
    weights = None if args.weights.lower() == "none" else args.weights
    entry = pretrained.find_weights_entry(info.name, weights)
    size = args.size or (entry.input_size if entry else info.default_size)
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        flowers = data.load_flowers(args.data_dir, class_names=args.class_names,
                                    work_dir=args.out_dir, seed=args.seed,
                                    synthetic_per_class=args.synthetic_per_class)
    except (OSError, ValueError) as err:
        return _fail(cli.one_line(err))
    classes = len(flowers.class_names)
    print(f"Data: {flowers.source_name}, {classes} classes, {len(flowers.train)} "
          f"training and {len(flowers.val)} validation images.")

    try:
        # Pretrained body (else random, said in one line) and a new head.
        model, is_pretrained = training.build_classifier(
            info.name, classes, image_size=size, weights=weights, dropout=args.dropout)
    except Exception as err:  # noqa: BLE001 - a bad size or weight file
        return _fail(cli.one_line(err))
    used = weights if is_pretrained else None
    accelerate.keep_freed_memory()  # a training process: see its docstring
    frozen_names = transfer.freeze_up_to(model, args.up_to)
    frozen = [model.get_layer(name) for name in frozen_names]
    print(f"Froze {len(frozen)} layers through the end of stage '{args.up_to}' "
          f"({frozen_names[-1]}).")
    transfer.trainable_summary(model)

    trainable = [layer for layer in model.layers if layer.trainable_weights]
    before = checksum(frozen)
    trained_before = checksum(trainable)
    print(f"Frozen part before training: {before['tensors']} tensors "
          f"({before['bn_statistics']} BN moving statistics), sha256 "
          f"{before['sha256']}")

    mode = keras_inception.preprocessing_for(model)
    keras.utils.set_random_seed(args.seed)
    train = data.ImageDataset(flowers.train, batch_size=args.batch_size,
                              image_size=size, training=True, preprocessing=mode,
                              seed=args.seed)
    val = data.ImageDataset(flowers.val, batch_size=args.batch_size, image_size=size,
                            training=False, preprocessing=mode)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  run_eagerly=args.run_eagerly, **training.compile_args(model))
    history = model.fit(train, validation_data=val, epochs=args.epochs, verbose=1)

    after = checksum(frozen)
    trained_after = checksum(trainable)
    unchanged = after["sha256"] == before["sha256"]
    print(f"Frozen part after training:  {after['tensors']} tensors, sha256 "
          f"{after['sha256']}: "
          + ("bit-identical, BN statistics unchanged." if unchanged else "CHANGED."))
    print(f"Trainable part: sha256 {trained_before['sha256'][:16]}... -> "
          f"{trained_after['sha256'][:16]}... ("
          + ("changed by training" if trained_after != trained_before else "unchanged")
          + ")")

    model_path = export.export_keras(model, os.path.join(args.out_dir, "model.keras"))
    record = {
        "model": info.name, "weights": used or "random", "input_size": size,
        "up_to": args.up_to, "frozen_layers": frozen_names,
        "frozen_before": before, "frozen_after": after, "frozen_unchanged": unchanged,
        "trainable_before": trained_before, "trainable_after": trained_after,
        "data": {"source": flowers.source_name,
                 "class_names": list(flowers.class_names),
                 "train": len(flowers.train), "val": len(flowers.val),
                 "fallback": flowers.fallback},
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    with open(os.path.join(args.out_dir, "freeze_stem.json"), "w",
              encoding="utf8") as f:
        json.dump(record, f, indent=1)
    print(f"Saved {os.path.basename(model_path)} and freeze_stem.json in "
          f"{os.path.abspath(args.out_dir)}")
    if not unchanged:
        print("freeze_stem.py: error: frozen weights changed during training.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
