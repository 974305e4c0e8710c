"""What every command line of the project (recipes, ``python -m`` tools) shares."""

from __future__ import annotations

import sys

__all__ = ["add_training_data_arguments", "fail", "model_from_argument", "one_line"]


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type if it has none).

    Args:
        err: any exception.

    Returns:
        Its message with every run of whitespace made one space.

    Example:
        >>> one_line(ValueError("bad size\\n  use 299"))
        'bad size use 299'
    """
    return " ".join(str(err).split()) or type(err).__name__


def fail(prog: str, message: str) -> int:
    """Prints ``prog: error: message`` to stderr, as argparse does; returns 2.

    Args:
        prog: the program name.
        message: what went wrong and what to do.

    Returns:
        2, argparse's exit status for usage errors.

    Example:
        >>> from keras_inception.cli import fail
        >>> fail("predict.py", "no image at cat.jpg")
        2
    """
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def add_training_data_arguments(parser, *, data_help: str = "image folder") -> None:
    """The data and short-training options of the recipes that train briefly.

    ``--data-dir``, ``--class-names``, ``--batch-size``, ``--learning-rate``,
    ``--synthetic-per-class``, ``--seed``, ``--run-eagerly`` (the arguments of
    :func:`keras_inception.data.load_flowers` and ``model.compile``).

    Args:
        parser: an ``argparse.ArgumentParser``.
        data_help: how the recipe's help describes ``--data-dir``.

    Example:
        >>> import argparse
        >>> from keras_inception.cli import add_training_data_arguments
        >>> parser = argparse.ArgumentParser()
        >>> add_training_data_arguments(parser)
        >>> args = parser.parse_args(["--batch-size", "8"])
        >>> args.batch_size, args.learning_rate, args.data_dir
        (8, 0.001, None)
    """
    parser.add_argument("--data-dir", default=None,
                        help=f"{data_help}, one subfolder per class (default: "
                             f"tf_flowers, else a generated dataset)")
    parser.add_argument("--class-names", nargs="+", default=None, metavar="NAME",
                        help="classes to use, in label order (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--synthetic-per-class", type=int, default=40,
                        help="images per class of the generated dataset (default: 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-eagerly", action="store_true",
                        help="no graph compilation: faster for a few tiny batches, "
                             "slower for real runs")


def model_from_argument(model: str, weights: str = "imagenet", size=None, *,
                        print_fn=print):
    """A recipe's ``--model``: a ``.keras`` file, or a registry name built with weights.

    A registry name is built at ``size`` (default: the weights' input size, else
    the family's canonical one) with ``weights`` (``"none"``: random), falling back
    to random initialisation, said in one line, when they cannot be downloaded.

    Args:
        model: a ``.keras`` file or a registry name.
        weights: a weights name, ``"none"`` (random) or a weight file.
        size: the input side (default: see above).
        print_fn: where the fallback line goes.

    Returns:
        ``(model, name, description)``: ``name`` is the registry name, or the file's
        stem for a ``.keras`` file.

    Raises:
        FileNotFoundError: a ``.keras`` path that does not exist.
        ValueError: an unknown model name.

    Example:
        >>> from keras_inception.cli import model_from_argument
        >>> model, name, description = model_from_argument("googlenet", "none", 32)
        >>> name, description, model.input_shape
        ('googlenet', 'googlenet (random weights)', (None, 32, 32, 3))
    """
    import os

    import keras

    from keras_inception import pretrained, registry
    from keras_inception.initializers import load_model

    if model.endswith(".keras") or os.path.isfile(model):
        if not os.path.isfile(model):
            raise FileNotFoundError(f"No model file at {model!r}.")
        stem = os.path.basename(model)[:-len(".keras")] or "model"
        return load_model(model, compile=False), stem, model
    info = registry.get_model_info(model)
    weights = None if weights is None or weights.lower() == "none" else weights
    entry = pretrained.find_weights_entry(info.name, weights)
    size = size or (entry.input_size if entry else info.default_size)
    shape = ((size, size, 3) if keras.config.image_data_format() == "channels_last"
             else (3, size, size))
    built, used = pretrained.create_or_random(info.name, weights, print_fn=print_fn,
                                              input_shape=shape)
    return built, info.name, f"{info.name} ({used or 'random'} weights)"
