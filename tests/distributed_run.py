"""Driver of tests/test_distribute.py: data-parallel fine-tuning on simulated devices.

Run in a fresh process (the device count is fixed when the backend starts):

    python tests/distributed_run.py --devices 4 --data DIR --work DIR --mode kill
    python tests/distributed_run.py --devices 4 --data DIR --work DIR --mode compare

``kill``: the data-parallel run in WORK/resumed, SIGKILLed (no cleanup at all)
right after its second epoch's checkpoint: mid-phase, so the optimizer state
matters. ``compare``: resumes that run to the end, makes the same run
uninterrupted on all devices ("parallel") and, for ``--model tiny``, on one device
("single"), then writes WORK/report.json: the largest weight differences between them (last
checkpoints), their histories and evaluations, and the layouts Keras used
(variables and optimizer slots per device, a batch's parts per device).

``--model tiny``: a small classifier shaped like ours (stem, body, main and
auxiliary heads, BatchNorm) trained through ``training.Run``: the runs can be
compared number for number. ``--model googlenet``: the
``recipes/train_with_aux_losses.py`` command itself (``--distribute
--cpu-devices N``), GoogLeNet with both auxiliary heads: killed, resumed and
compared with its uninterrupted run. It is not also run on one device: the
arithmetic of 4 devices against 1 (the same ``training.Run`` and loss weighting)
is compared number for number on the tiny model, where rounding differences do
not grow chaotically as in a randomly initialised GoogLeNet's BatchNorm.

Two things are pinned in every run: the starting weights (saved once in
WORK/initial/) and dropout (off: TensorFlow's replicas draw their own masks and
a resumed run reseeds). What is compared is the data-parallel arithmetic
(gradient all-reduce, synchronised BatchNorm, loss weighting, padded
validation), not random streams.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_inception import distribute, training  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = training.build_classifier
FINETUNE = training.finetune


def recipe(name):
    spec = importlib.util.spec_from_file_location(
        f"{name}_recipe", os.path.join(ROOT, "recipes", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_callbacks(finetune, callbacks):
    def wrapped(**kwargs):
        return finetune(**kwargs, callbacks=callbacks)
    return wrapped


def pinned_builder(initial_path):
    """build_classifier, then the same starting weights for every run, no dropout."""
    def pinned(*args, **kwargs):
        model, pretrained = BUILD(*args, **kwargs)
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
        if not os.path.exists(initial_path):
            training.save_checkpoint(model, initial_path, optimizer=False)
        training.load_checkpoint(model, initial_path, optimizer=False)
        return model, pretrained

    return pinned


class KillAfter(keras.callbacks.Callback):
    """SIGKILL (no cleanup at all) once the run has checkpointed ``epochs`` epochs."""

    def __init__(self, out_dir, epochs):
        super().__init__()
        self.state = os.path.join(out_dir, training.STATE_FILE)
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        with open(self.state) as f:
            if json.load(f)["epochs_done"] >= self.epochs:
                os.kill(os.getpid(), signal.SIGKILL)


def tiny_classifier(classes, size):
    """A small classifier shaped like ours: stem, body, main and auxiliary heads."""
    def conv_bn(x, filters, name):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                                name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.Activation("relu", name=f"{name}_act")(x)

    inputs = keras.Input((size, size, 3))
    stem = conv_bn(inputs, 8, "stem")
    body = conv_bn(stem, 16, "body")
    aux = keras.layers.Dense(classes, name="aux_predictions")(
        keras.layers.GlobalAveragePooling2D(name="aux_pool")(stem))
    main = keras.layers.Dense(classes, name="predictions")(
        keras.layers.GlobalAveragePooling2D(name="avg_pool")(body))
    return keras.Model(inputs, {"logits": main, "aux": aux}, name="tiny")


def train_heads(model):
    for layer in model.layers:
        layer.trainable = layer.name.endswith("predictions")


def train_body(model):
    for layer in model.layers:
        layer.trainable = not layer.name.startswith("stem")


def fit_tiny(out, args, distribution, callbacks):
    """The same run on the small classifier, through training.Run directly."""
    from keras_inception import data as D

    flowers = D.load_flowers(args.data, work_dir=out, print_fn=lambda *a: None)
    train = training.FullBatches(D.ImageDataset(flowers.train, batch_size=8,
                                                image_size=args.image_size, training=True))
    val = D.ImageDataset(flowers.val, batch_size=len(flowers.val),
                         image_size=args.image_size, training=False)
    scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
    with scope:
        model = tiny_classifier(len(flowers.class_names), args.image_size)
    pinned = os.path.join(args.work, "initial")
    if not os.path.exists(pinned):
        training.save_checkpoint(model, pinned, optimizer=False)
    training.load_checkpoint(model, pinned, optimizer=False)
    steps = [training.Phase("head", 1, args.learning_rate, trainable=train_heads,
                            optimizer=args.optimizer),
             training.Phase("top_stages", 2, args.learning_rate, trainable=train_body,
                            optimizer=args.optimizer)]
    run = training.Run(out, steps, config={"model": "tiny"}, print_fn=lambda *a: None)
    run.fit(model, train, val, class_names=flowers.class_names, seed=0, verbose=0,
            plots=False, callbacks=callbacks, distribution=distribution)


def last_weights(out_dir, checkpoint=None):
    """(state, {variable path: array}) of a run's last checkpoint (or a checkpoint)."""
    state = {}
    if checkpoint is None:
        with open(os.path.join(out_dir, training.STATE_FILE)) as f:
            state = json.load(f)
        out_dir = os.path.join(out_dir, training.CHECKPOINTS, state["checkpoint"])
    path = os.path.join(out_dir, "weights.npz")
    with np.load(path) as saved:
        names = [str(n) for n in saved["names"]]
        return state, {n: saved[f"arr_{i}"] for i, n in enumerate(names)}


def layouts(plan, args, work):
    """Where Keras put the variables, optimizer slots and a batch's parts."""
    from keras_inception import data as D

    with plan.scope():
        if args.model == "tiny":
            model = tiny_classifier(5, args.image_size)
        else:
            model, _ = BUILD("googlenet", 5, image_size=args.image_size, weights=None,
                             dropout=0.0, aux_heads=True, print_fn=lambda *a: None)
        model.compile(optimizer="adam", **training.compile_args(model))
        model.optimizer.build(model.trainable_variables)
    variables = list(model.weights) + list(model.optimizer.variables)
    placements = {}
    for v in variables:
        placements.setdefault(",".join(plan.variable_devices(v)), []).append(v.path)
    flowers = D.load_flowers(args.data, work_dir=work, print_fn=lambda *a: None)
    batch = D.ImageDataset(flowers.train, batch_size=8, image_size=args.image_size,
                           training=True)[0]
    stray = tiny_classifier(5, args.image_size)  # built outside the scope
    try:
        plan.check_model(stray)
        refused = None
    except ValueError as err:
        refused = str(err)
    return {"devices": list(plan.devices), "engine": plan.engine,
            "outside_scope_refused": refused,
            "replicated": plan.replicated(model),
            "variables": {k: len(v) for k, v in placements.items()},
            "batch_shards": [[d, list(shape)] for d, shape in plan.batch_shards(batch[0])],
            "label_shards": [[d, list(shape)] for d, shape in plan.batch_shards(batch[1])]}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--mode", choices=("kill", "compare"), required=True)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--model", choices=("googlenet", "tiny"), default="googlenet")
    args = parser.parse_args(argv)
    distribute.simulate_cpu_devices(args.devices)
    plan = distribute.data_parallel()
    training.build_classifier = pinned_builder(os.path.join(args.work, "initial"))

    def run(name, distribution, callbacks=()):
        out = os.path.join(args.work, name)
        if args.model == "tiny":
            fit_tiny(out, args, distribution, callbacks)
            return out
        # The recipe itself, in this process (so the pinned builder applies).
        argv = ["--model", "googlenet", "--weights", "none", "--data-dir", args.data,
                "--out-dir", out, "--image-size", str(args.image_size),
                "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "2",
                "--lr-head", str(args.learning_rate), "--lr-finetune",
                str(args.learning_rate), "--optimizer", args.optimizer, "--unfreeze", "2",
                "--dropout", "0", "--limit", "0", "--verbose", "0"]
        if distribution is not None:
            argv += ["--distribute", "--cpu-devices", str(args.devices)]
        if callbacks:
            training.finetune = with_callbacks(training.finetune, callbacks)
        try:
            status = recipe("train_with_aux_losses").main(argv)
        finally:
            training.finetune = FINETUNE
        if status:
            raise SystemExit(f"train_with_aux_losses.py {' '.join(argv)}: status {status}")
        return out

    if args.mode == "kill":
        out = os.path.join(args.work, "resumed")
        run("resumed", plan, callbacks=[KillAfter(out, 2)])
        raise SystemExit("the run was not killed")

    report = {"layouts": layouts(plan, args, os.path.join(args.work, "layouts"))}
    killed, _ = last_weights(os.path.join(args.work, "resumed"))
    report["killed_epochs_done"] = killed["epochs_done"]
    names = ("resumed", "parallel") + (("single",) if args.model == "tiny" else ())
    runs = {name: run(name, plan if name != "single" else None) for name in names}
    weights = {}
    for name, out in runs.items():
        state, weights[name] = last_weights(out)
        report[name] = {"history": state["history"], "epochs_done": state["epochs_done"],
                        "distribution": state["distribution"],
                        "finished": state["finished"]}
        with open(os.path.join(out, "evaluation.json")) as f:
            report[name]["evaluation"] = json.load(f)

    def max_diff(a, b):
        assert list(weights[a]) == list(weights[b])
        return max(float(np.max(np.abs(weights[a][k] - weights[b][k]))) for k in weights[a])

    _, initial = last_weights(os.path.join(args.work, "initial"), checkpoint="")
    # Frozen in both phases (the stem): never changed, on any number of devices.
    stem = [k for k in weights["parallel"] if k.startswith(("conv2d_1a", "stem"))]
    report["stem_variables"] = stem
    report["stem_unchanged"] = {
        name: all(np.array_equal(weights[name][k], initial[k]) for k in stem)
        for name in runs}
    report["max_diff"] = {"resumed_vs_parallel": max_diff("resumed", "parallel")}
    if "single" in runs:
        report["max_diff"]["parallel_vs_single"] = max_diff("parallel", "single")
    with open(os.path.join(args.work, "report.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
