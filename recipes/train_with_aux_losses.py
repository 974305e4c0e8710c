"""Fine-tune with auxiliary losses: GoogLeNet's two aux heads, or v3/v4/IRv2's one.

Usage:
    KERAS_BACKEND=jax python recipes/train_with_aux_losses.py [--model googlenet]
        [--aux-weight 0.3] [--out-dir runs/train_with_aux_losses] ...

The model gets a new classifier and its family's auxiliary classifiers
(``keras_inception.transfer.with_aux_heads``) at the taps of the paper (GoogLeNet:
``mixed_4b`` and ``mixed_4e``; Inception-v3/v4/IRv2: the end of their 17x17 stage).
Its loss is the main cross-entropy plus ``--aux-weight`` (0.3, as in the papers)
times each auxiliary one, with metrics on the main head
(``transfer.aux_compile_args``); the logs show ``aux1_loss`` / ``aux2_loss`` (or
``aux_loss``) next to ``logits_loss`` and ``logits_accuracy``, and so do
``history.csv`` and ``training_curves.png``.

Phase 1 trains the heads (main and auxiliary) on the frozen body; phase 2 also
the top ``--unfreeze`` stages (default 2, which include the taps, so the
auxiliary losses reach the body). ``model.keras`` keeps the main head only, for
inference and export.

Data, weights, offline behaviour, resuming and outputs as in
``recipes/finetune_flowers.py``. The auxiliary heads of v3, v4 and IRv2 need
299x299 inputs (``--image-size 299``); GoogLeNet's work from 17 pixels.
User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

# Fewer of TensorFlow's C++ start-up notices (set the variable to see them all).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_inception import training  # noqa: E402


def _parser():
    parser = argparse.ArgumentParser(
        prog="train_with_aux_losses.py",
        description="Fine-tune with the auxiliary classifiers of the Inception papers "
                    "(weighted auxiliary losses, metrics on the main head); saves the "
                    "main head only.",
        epilog="Defaults are sized for a CPU. Offline, tf_flowers falls back to the "
               "generated 'synthetic-flowers' dataset and the weights to random "
               "initialisation, each said in one line.")
    training.add_finetune_arguments(
        parser, model="googlenet", image_size=224, limit=50, unfreeze=2,
        out_dir=os.path.join("runs", "train_with_aux_losses"))
    parser.add_argument("--aux-weight", type=float, default=0.3,
                        help="loss weight of each auxiliary head (default: 0.3)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return training.finetune_cli(args, "train_with_aux_losses.py",
                                 aux_weight=args.aux_weight)


if __name__ == "__main__":
    sys.exit(main())
