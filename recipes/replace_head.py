"""Put a new classifier head on a (pretrained) Inception body, optionally train it.

Usage:
    python recipes/replace_head.py --classes 5 [--model googlenet | --model FILE.keras]
        [--weights imagenet|none|PATH] [--dropout 0.2] [--pooling avg|max]
        [--activation softmax|sigmoid|linear] [--epochs 0] [--data-dir FOLDER]
        [--out-dir replace_head]

``--model`` is a registry name (built with ``--weights``) or a ``.keras`` file saved
from a keras_inception model. The head (global pooling, dropout, dense
``predictions``) is replaced by ``transfer.replace_head``, which keeps the body's
layers and so its pretrained weights; auxiliary heads are dropped. The heads and
parameter counts before and after are printed. With ``--epochs N`` the new head is
trained for N epochs with the body frozen (``transfer.unfreeze_top(model, 0)``) on
``--data-dir``, else tf_flowers, else (offline) the generated ``synthetic-flowers``
dataset, said in one line; ``--classes`` must then equal the data's class count.

Weights that cannot be downloaded fall back to random initialisation (one line).
Writes ``OUT_DIR/model.keras`` and ``OUT_DIR/replace_head.json``. Errors (unknown
model, bad ``--classes``, an unreadable file) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import keras

import keras_inception
from keras_inception import accelerate, cli, data, export, training, transfer
from keras_inception.features import infer_info
from keras_inception.manifest import body_layer_names

ACTIVATIONS = ("softmax", "sigmoid", "linear")


def _parser():
    parser = argparse.ArgumentParser(
        prog="replace_head.py",
        description="Replace the classifier head of a keras_inception model, keeping "
                    "its (pretrained) body; optionally train the new head.")
    parser.add_argument("--model", default="googlenet",
                        help="registry name (default: googlenet) or a .keras file; "
                             "names: " + ", ".join(keras_inception.list_models()))
    parser.add_argument("--weights", default="imagenet",
                        help="for a registry name: named weights (default: imagenet), "
                             "'none' for random initialisation, or a weight file")
    parser.add_argument("--size", type=int, default=None,
                        help="input side of a model built by name (default: the "
                             "weights' size, else the model's canonical size)")
    parser.add_argument("--classes", type=int, required=True,
                        help="classes of the new head")
    parser.add_argument("--dropout", type=float, default=0.2,
                        help="dropout rate before the new dense layer (default: 0.2)")
    parser.add_argument("--pooling", choices=transfer.POOLINGS, default="avg",
                        help="global pooling of the new head (default: avg)")
    parser.add_argument("--activation", choices=ACTIVATIONS, default="softmax",
                        help="activation of the new dense layer; linear gives logits "
                             "(default: softmax)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="train the new head (body frozen) for this many epochs "
                             "(default: 0, no training)")
    cli.add_training_data_arguments(parser, data_help="image folder for --epochs")
    parser.add_argument("--out-dir", default="replace_head",
                        help="output folder (default: ./replace_head)")
    return parser


def _fail(message: str) -> int:
    return cli.fail("replace_head.py", message)


def _load(args):
    """(model, description) from a .keras file or a registry name."""
    model, _, description = cli.model_from_argument(args.model, args.weights, args.size)
    return model, description


def _params(weights) -> int:
    return int(sum(int(keras.ops.size(w)) for w in weights))


def describe_head(model) -> dict:
    """The layers after the body (classifier and auxiliary heads) and the counts."""
    body = body_layer_names(infer_info(model).name)
    layers = []
    for layer in model.layers:
        if layer.name in body or isinstance(layer, keras.layers.InputLayer):
            continue
        detail = {"name": layer.name, "type": type(layer).__name__,
                  "params": _params(layer.weights)}
        if isinstance(layer, keras.layers.Dense):
            activation = getattr(layer.activation, "__name__", str(layer.activation))
            detail["detail"] = f"{layer.units} units, {activation}"
        elif isinstance(layer, keras.layers.Dropout):
            detail["detail"] = f"rate {layer.rate:g}"
        layers.append(detail)
    return {"layers": layers, "total_params": model.count_params(),
            "trainable_params": _params(model.trainable_weights),
            "output_shape": str(model.output_shape)}


def _print_head(title, head):
    print(f"\n{title}: output {head['output_shape']}, {head['total_params']:,} "
          f"parameters ({head['trainable_params']:,} trainable)")
    for layer in head["layers"]:
        extra = f", {layer['detail']}" if "detail" in layer else ""
        print(f"  {layer['name']:<28} {layer['type']:<24} {layer['params']:>10,} "
              f"params{extra}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.classes < 1:
        return _fail(f"--classes must be a positive number of classes, got "
                     f"{args.classes}.")
    if args.epochs < 0 or args.batch_size < 1:
        return _fail("--epochs must be >= 0 and --batch-size >= 1.")
    os.makedirs(args.out_dir, exist_ok=True)
    flowers = None
    if args.epochs:
        # Data first: a --classes that does not fit fails before any model is built.
        try:
            flowers = data.load_flowers(args.data_dir, class_names=args.class_names,
                                        work_dir=args.out_dir, seed=args.seed,
                                        synthetic_per_class=args.synthetic_per_class)
        except (OSError, ValueError) as err:
            return _fail(cli.one_line(err))
        if len(flowers.class_names) != args.classes:
            found = flowers.class_names
            return _fail(
                f"--classes {args.classes} does not fit the data: {flowers.source_name} "
                f"has {len(found)} classes ({', '.join(found)}). Pass --classes "
                f"{len(found)}, or --class-names to choose {args.classes} of them.")
    try:
        model, source = _load(args)
        before = describe_head(model)
        new = transfer.replace_head(
            model, args.classes, dropout=args.dropout, pooling=args.pooling,
            activation=None if args.activation == "linear" else args.activation)
    except Exception as err:  # noqa: BLE001 - unknown model, bad file or argument
        return _fail(cli.one_line(err))
    _print_head(f"Before: {source}", before)
    after = describe_head(new)
    _print_head(f"After: new head for {args.classes} classes", after)
    shared = sum(1 for layer in new.layers if layer in model.layers)
    print(f"The body's {shared} layers (and their weights) are shared, not copied.")

    history = None
    if flowers is not None:
        trainable = transfer.unfreeze_top(new, 0)
        print(f"\nTraining the new head ({', '.join(trainable)}) for {args.epochs} "
              f"epoch(s) on {flowers.source_name}, body frozen.")
        size = tuple(new.input_shape[1:3] if keras.config.image_data_format()
                     == "channels_last" else new.input_shape[2:4])
        if None in size:
            return _fail(f"the model takes any input size {new.input_shape}; rebuild "
                         f"it with a fixed size to train it here.")
        mode = keras_inception.preprocessing_for(new)
        accelerate.keep_freed_memory()  # a training process: see its docstring
        keras.utils.set_random_seed(args.seed)
        train = data.ImageDataset(flowers.train, batch_size=args.batch_size,
                                  image_size=size, training=True, preprocessing=mode,
                                  seed=args.seed)
        val = data.ImageDataset(flowers.val, batch_size=args.batch_size,
                                image_size=size, training=False, preprocessing=mode)
        new.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                    run_eagerly=args.run_eagerly, **training.compile_args(new))
        fit = new.fit(train, validation_data=val, epochs=args.epochs, verbose=1)
        history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}

    path = export.export_keras(new, os.path.join(args.out_dir, "model.keras"))
    record = {"source": source, "classes": args.classes, "dropout": args.dropout,
              "pooling": args.pooling, "activation": args.activation,
              "before": before, "after": after, "history": history,
              "class_names": list(flowers.class_names) if flowers else None}
    with open(os.path.join(args.out_dir, "replace_head.json"), "w",
              encoding="utf8") as f:
        json.dump(record, f, indent=1)
    print(f"\nSaved {os.path.basename(path)} and replace_head.json in "
          f"{os.path.abspath(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
