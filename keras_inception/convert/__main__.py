"""``python -m keras_inception.convert SOURCE --model NAME --out FILE.weights.h5``."""

import argparse
import sys

from keras_inception.convert import ConversionError, convert_file
from keras_inception.convert.readers import SourceFormatError
from keras_inception.registry import list_models

__all__ = ["main"]


def main(argv=None) -> int:
    """The ``python -m keras_inception.convert`` command line.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 once the file is written, 2 on an error (printed to
        stderr in one line).

    Example:
        >>> from keras_inception.convert.__main__ import main
        >>> main(["weights.xyz", "--model", "googlenet", "--out", "g.weights.h5"])
        2
    """
    parser = argparse.ArgumentParser(
        prog="python -m keras_inception.convert",
        description="Convert a TF-Slim, torchvision or timm checkpoint into a "
                    "keras_inception .weights.h5 file, offline.")
    parser.add_argument("source", help="timm .safetensors, torchvision .pth, or a "
                                       "TF-Slim checkpoint (directory, prefix, .tar.gz)")
    parser.add_argument("--model", required=True, help=", ".join(list_models()))
    parser.add_argument("--out", required=True, help="output path, ending .weights.h5")
    parser.add_argument("--layout", help="reference layout (default: by file format)")
    parser.add_argument("--classes", type=int, default=None,
                        help="1000 (default; TF-Slim's background class dropped) or "
                             "1001 to keep it")
    args = parser.parse_args(argv)
    if not args.out.endswith(".weights.h5"):
        parser.error("--out must end with .weights.h5 (Keras' weights format)")
    try:
        report = convert_file(args.source, args.model, args.out, layout=args.layout,
                              classes=args.classes)
    except (ConversionError, SourceFormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {report['out']}: {report['tensors']} tensors read by the "
          f"{report['layout']} layout, {len(report['ignored'])} ignored, "
          f"{report['folded_gammas']} BN gammas folded, aux heads: {report['aux']}, "
          f"background class dropped: {report['dropped_background']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
