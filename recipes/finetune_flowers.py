"""Fine-tune an Inception on flowers: the new head first, then the top stages.

Usage:
    KERAS_BACKEND=jax python recipes/finetune_flowers.py [--model inception_v3]
        [--weights imagenet|none|PATH] [--data-dir DIR [--class-names a,b,...]]
        [--out-dir runs/finetune_flowers] [--restart] ...

Phase 1 ("head") trains only the new classifier on the frozen pretrained body;
phase 2 ("top_stages") also trains the last ``--unfreeze`` stages of the body at
a lower learning rate. Frozen BatchNormalization layers stay in inference mode.

Data: ``--data-dir`` (one subfolder per class), else TensorFlow Datasets'
``tf_flowers``; when that cannot be downloaded, one line says so and a generated
dataset (``synthetic-flowers``, written into the output folder) is used. Weights
that cannot be downloaded are likewise said in one line, and training starts from
random initialisation. So the command runs end to end on a fresh, offline machine.

The defaults are sized for a CPU: Inception-v3 at 224x224, at most 50 images per
class (40 to train, 10 to validate), 2 + 2 epochs at batch 16: one to two minutes
on two cores with any backend, plus the downloads when online. A full run on
tf_flowers' 3670 photos at the canonical size: ``--limit 0 --image-size 299
--epochs-head 5 --epochs-finetune 10`` (an accelerator helps). Offline, with
random weights, expect chance-level accuracy: the run shows the pipeline.

Resumable: a checkpoint is written after every epoch; run the same command again
after an interruption and it goes on with the next epoch. A finished run is not
trained again; other settings in the same ``--out-dir`` are refused (``--restart``
discards the old run).

Outputs (in ``--out-dir``): ``model.keras``, ``model_info.json``, ``history.csv``
/ ``.json``, ``training_curves.png``, ``confusion_matrix.png`` / ``.csv``,
``evaluation.md`` / ``.json`` (per-class precision, recall, F1), ``predictions.npz``.
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
        prog="finetune_flowers.py",
        description="Fine-tune an Inception on flowers: the new head first, then the "
                    "top stages at a lower learning rate. Resumable: rerun the same "
                    "command after an interruption.",
        epilog="Defaults are sized for a CPU (a minute or two on two cores). Offline, "
               "tf_flowers falls back to the generated 'synthetic-flowers' dataset "
               "and the weights to random initialisation, each said in one line. "
               "A full run: --limit 0 --image-size 299 --epochs-head 5 "
               "--epochs-finetune 10.")
    training.add_finetune_arguments(
        parser, model="inception_v3", image_size=224, limit=50, unfreeze=1,
        out_dir=os.path.join("runs", "finetune_flowers"))
    return parser


def main(argv=None) -> int:
    return training.finetune_cli(_parser().parse_args(argv), "finetune_flowers.py")


if __name__ == "__main__":
    sys.exit(main())
