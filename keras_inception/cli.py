"""What every command line of the project (recipes, ``python -m`` tools) shares."""

from __future__ import annotations

import sys


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type if it has none).

    Example:
        >>> one_line(ValueError("bad size\\n  use 299"))
        'bad size use 299'
    """
    return " ".join(str(err).split()) or type(err).__name__


def fail(prog: str, message: str) -> int:
    """Prints ``prog: error: message`` to stderr, as argparse does; returns 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def add_training_data_arguments(parser, *, data_help: str = "image folder") -> None:
    """The data and short-training options of the recipes that train briefly.

    ``--data-dir``, ``--class-names``, ``--batch-size``, ``--learning-rate``,
    ``--synthetic-per-class``, ``--seed``, ``--run-eagerly`` (the arguments of
    :func:`keras_inception.data.load_flowers` and ``model.compile``).
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
