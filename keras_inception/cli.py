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
