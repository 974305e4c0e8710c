"""Fine-tuning in named phases, resumable after a kill, with its report.

A :class:`Run` trains a model through :class:`Phase` s (typically the new head
alone, then the top stages of the body at a lower learning rate), each with its
own trainable layers (set through :mod:`keras_inception.transfer`), its own
optimizer and learning rate, and Keras' progress bars. Everything lands in one
output folder:

* ``checkpoints/epoch-NNNN/``: after **every** epoch, all model variables (BN
  statistics included) and the optimizer's variables, written into a fresh folder
  that is renamed into place; then ``state.json`` (phase, epochs done, history so
  far, the run's settings) is replaced atomically. ``state.json`` is the commit
  point: a kill at any moment leaves the previous checkpoint whole, and a
  restart with the same folder continues with the next epoch of the right phase,
  optimizer state restored;
* ``history.json`` / ``history.csv``: one record per epoch (phase, learning rate,
  every loss and metric Keras logged, auxiliary losses included);
* ``training_curves.png``: loss and accuracy per epoch, phases marked;
* ``confusion_matrix.png`` / ``.csv``, ``predictions.npz`` (labels and class
  probabilities of the validation split), ``evaluation.md`` / ``.json``:
  per-class precision, recall, F1 and support, accuracy (and top-5 accuracy with
  more than five classes), also printed;
* ``model.keras``: the trained model, main head only (and, from :func:`finetune`,
  ``model_info.json``: model, class names, image size, preprocessing).

The settings of a run (the recipe's arguments, the phases, the data) are stored
with it: reopening the folder with other settings is an error
(:class:`RunMismatchError`) unless ``restart=True``; a finished run is not trained
again.

Works the same on TensorFlow, JAX and PyTorch: checkpoints are NumPy arrays, so a
run may even be resumed on another backend.

Example (a tiny model on random data; a real run has a head phase, then one
with the top stages, see ``recipes/finetune_flowers.py``):

>>> import tempfile, numpy as np, keras
>>> inputs = keras.Input((4,))
>>> hidden = keras.layers.Dense(8, activation="relu", name="body")(inputs)
>>> model = keras.Model(inputs, keras.layers.Dense(
...     2, activation="softmax", name="predictions")(hidden))
>>> rng = np.random.default_rng(0)
>>> data = (rng.normal(size=(8, 4)).astype("float32"), rng.integers(0, 2, 8))
>>> phases = [Phase("main", epochs=2, learning_rate=1e-2, trainable="all")]
>>> with tempfile.TemporaryDirectory() as out:
...     run = Run(out, phases, config={"seed": 0}, print_fn=lambda *a: None)
...     result = run.fit(model, data, data, class_names=["a", "b"], batch_size=4,
...                      verbose=0, plots=False)
...     again = Run(out, phases, config={"seed": 0}, print_fn=lambda *a: None)
>>> [(r["epoch"], r["phase"]) for r in result.history]
[(1, 'main'), (2, 'main')]
>>> again.finished, again.epochs_done
(True, 2)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import keras

from keras_inception.cli import one_line
from keras_inception.distribute import LR_SCALING
import numpy as np

__all__ = [
    "CheckpointError", "EvenBatches", "FullBatches", "MultiTarget", "Phase", "Run", "RunMismatchError",
    "RunResult", "add_finetune_arguments", "apply_trainable", "atomic_write",
    "atomic_write_json", "build_classifier", "classification_report", "compile_args",
    "evaluation_markdown", "finetune", "finetune_cli", "finetune_phases",
    "load_checkpoint", "plot_confusion_matrix", "plot_history", "predict_dataset",
    "save_checkpoint", "take_per_class",
]

STATE_FILE = "state.json"
CHECKPOINTS = "checkpoints"
_STATE_VERSION = 1
# Everything a run writes in its folder; restart=True removes exactly these.
OUTPUT_FILES = ("history.json", "history.csv", "training_curves.png",
                "confusion_matrix.png", "confusion_matrix.csv", "predictions.npz",
                "evaluation.md", "evaluation.json", "model.keras", "model_info.json")


class RunMismatchError(ValueError):
    """An output folder holds a run with other settings than the ones given.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = atomic_write_json(f"{tmp}/{STATE_FILE}", {
        ...         "version": 1, "epochs_done": 1, "history": [],
        ...         "fingerprint": {"config": {"model": "googlenet"}, "phases": []}})
        ...     try:
        ...         Run(tmp, [Phase("head", 1, 1e-3)], config={"model": "xception"},
        ...             print_fn=None)
        ...     except RunMismatchError as err:
        ...         print(type(err).__name__)
        RunMismatchError
    """


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (or optimizer) it is loaded into.

    Example:
        >>> import tempfile, keras
        >>> small = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> large = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = save_checkpoint(small, tmp)
        ...     try:
        ...         load_checkpoint(large, tmp, optimizer=False)
        ...     except CheckpointError as err:
        ...         print(type(err).__name__)
        CheckpointError
    """


# --------------------------------------------------------------------------- files

def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; rename is atomic there anyway.
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[str], Any]) -> str:
    """Writes a file so that ``path`` is always either the old or the new file whole.

    ``write(tmp_path)`` writes to a temporary file beside ``path`` (same suffix, so
    writers that check it are content); it is flushed to disk and renamed over
    ``path`` only once ``write`` returned. A failure or a kill leaves ``path``
    untouched (and at worst a ``.tmp`` file, removed on failure).

    Args:
        path: the destination file.
        write: a function writing the content to the path it is given.

    Returns:
        ``path``.

    Example:
        >>> import pathlib, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     target = pathlib.Path(tmp, "a.txt")
        ...     _ = atomic_write(target, lambda p: pathlib.Path(p).write_text("hi"))
        ...     try:
        ...         atomic_write(target, lambda p: 1 / 0)
        ...     except ZeroDivisionError:
        ...         pass
        ...     target.read_text(), sorted(p.name for p in pathlib.Path(tmp).iterdir())
        ('hi', ['a.txt'])
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, dot, suffix = name.partition(".")
    tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}{dot}{suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
    return path


def _write_text(path, text: str) -> str:
    def write(tmp):
        with open(tmp, "w", encoding="utf8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path, obj) -> str:
    """Writes ``obj`` as indented JSON with :func:`atomic_write`.

    Args:
        path: the destination file.
        obj: a JSON-serialisable object.

    Returns:
        ``path``.

    Example:
        >>> import json, os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = atomic_write_json(os.path.join(tmp, "s.json"), {"epochs": 3})
        ...     json.load(open(path))
        {'epochs': 3}
    """
    return _write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def _jsonable(obj):
    """``obj`` as plain JSON types (tuples become lists), for exact comparisons."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable: {obj!r}")


# --------------------------------------------------------------------- checkpoints

def _save_arrays(path, variables) -> None:
    names = [v.path for v in variables]
    arrays = [keras.ops.convert_to_numpy(v) for v in variables]

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, *arrays, names=np.array(names, dtype=str))

    atomic_write(path, write)


def _key(path: str, what: str) -> str:
    # Optimizer variables are prefixed by the optimizer's unique name ("adam_1/"),
    # which depends on how many optimizers the process made before.
    return path.split("/", 1)[-1] if what == "optimizer" else path


def _load_arrays(path, variables, what: str) -> None:
    """Assigns the arrays of ``path`` to ``variables`` once all of them fit."""
    with np.load(path, allow_pickle=False) as saved:
        names = [str(n) for n in saved["names"]]
        arrays = [saved[f"arr_{i}"] for i in range(len(names))]
    variables = list(variables)
    if len(arrays) != len(variables):
        raise CheckpointError(
            f"{path} holds {len(arrays)} {what} variables; the {what} has "
            f"{len(variables)}. The checkpoint was written for another model or "
            f"phase setting: restart the run (--restart) or use another output folder.")
    for name, array, variable in zip(names, arrays, variables):
        if (_key(name, what) != _key(variable.path, what)
                or tuple(array.shape) != tuple(variable.shape)):
            raise CheckpointError(
                f"{path}: saved {what} variable {name!r} {tuple(array.shape)} does not "
                f"fit {variable.path!r} {tuple(variable.shape)}. The checkpoint was "
                f"written for another model: restart the run (--restart) or use another "
                f"output folder.")
    # Checked in full above: a bad file never leaves the model half loaded.
    for array, variable in zip(arrays, variables):
        variable.assign(array)


def save_checkpoint(model, directory, *, optimizer: bool = True) -> str:
    """Saves every variable of ``model`` (and of its optimizer) as NumPy arrays.

    Writes ``weights.npz`` (``model.weights``: trainable or not, so BatchNorm
    statistics too) and, when ``optimizer`` and the model has a built optimizer,
    ``optimizer.npz`` (its iteration count, learning rate and slots). Each file is
    written atomically. Arrays are plain NumPy, so any backend can read them.

    Args:
        model: a Keras model.
        directory: the folder to write into (created).
        optimizer: also save the optimizer state.

    Returns:
        ``directory``.

    Example:
        >>> import os, tempfile, keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = save_checkpoint(model, tmp)
        ...     sorted(os.listdir(tmp))
        ['weights.npz']
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    _save_arrays(os.path.join(directory, "weights.npz"), model.weights)
    opt = getattr(model, "optimizer", None)
    if optimizer and opt is not None and opt.built:
        _save_arrays(os.path.join(directory, "optimizer.npz"), opt.variables)
    return directory


def load_checkpoint(model, directory, *, optimizer: bool = True) -> None:
    """Restores what :func:`save_checkpoint` wrote.

    The model's variables are checked in full (count, names, shapes) before any
    is assigned. With ``optimizer``, the model must be compiled with the same kind
    of optimizer and the same trainable layers as when saved: the optimizer is
    built on the model's trainable variables and its state restored.

    Args:
        model: the model to restore (built as when saved).
        directory: the checkpoint folder.
        optimizer: also restore the optimizer's state.

    Raises:
        CheckpointError: the checkpoint does not fit, or has no optimizer state.

    Example:
        >>> import tempfile, numpy as np, keras
        >>> def make():
        ...     inputs = keras.Input((3,))
        ...     return keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
        >>> a, b = make(), make()
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = save_checkpoint(a, tmp)
        ...     load_checkpoint(b, tmp, optimizer=False)
        >>> all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
        True
    """
    directory = os.fspath(directory)
    _load_arrays(os.path.join(directory, "weights.npz"), model.weights, "model")
    if not optimizer:
        return
    path = os.path.join(directory, "optimizer.npz")
    opt = getattr(model, "optimizer", None)
    if opt is None:
        raise CheckpointError("load_checkpoint(optimizer=True) needs a compiled model.")
    if not os.path.exists(path):
        raise CheckpointError(f"{directory} holds no optimizer state (optimizer.npz).")
    if not opt.built:
        opt.build(model.trainable_variables)
    _load_arrays(path, opt.variables, "optimizer")


# ------------------------------------------------------------------------- phases

_OPTIMIZERS = {
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr),
    "sgd": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr),
}

TrainableSpec = Union[str, int, Callable[[keras.Model], Any]]


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a run: which layers train, for how long, at what rate.

    Attributes:
        name: shown in logs, history and plots (unique within a run).
        epochs: epochs of this phase (0 skips it).
        learning_rate: the optimizer's learning rate for the phase.
        trainable: which layers train, applied before the phase compiles:
            ``"head"`` (the body frozen: ``transfer.unfreeze_top(model, 0)``), an
            int ``n`` (the top ``n`` stages and the heads:
            ``transfer.unfreeze_top(model, n)``), ``"stem"`` (all but the stem:
            ``transfer.freeze_stem``), ``"all"``, or a callable ``fn(model)`` that
            sets ``layer.trainable`` itself.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9), ``"rmsprop"``,
            or a callable ``fn(learning_rate) -> keras.optimizers.Optimizer``. A
            fresh optimizer is made for every phase.

    Example:
        >>> phase = Phase("top_blocks", epochs=2, learning_rate=1e-4, trainable=2)
        >>> phase.describe()["trainable"], type(phase.make_optimizer()).__name__
        ('top 2 stages + heads', 'Adam')
    """

    name: str
    epochs: int
    learning_rate: float
    trainable: TrainableSpec = "head"
    optimizer: Union[str, Callable[[float], Any]] = "adam"

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"A phase needs a name, got {self.name!r}.")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"Phase {self.name!r}: epochs must be an integer >= 0, got "
                             f"{self.epochs!r}.")
        if not (isinstance(self.learning_rate, (int, float))
                and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"Phase {self.name!r}: learning_rate must be a positive "
                             f"number, got {self.learning_rate!r}.")
        _describe_trainable(self.trainable)  # validates
        if isinstance(self.optimizer, str) and self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"Phase {self.name!r}: unknown optimizer {self.optimizer!r};"
                             f" use one of {', '.join(_OPTIMIZERS)} or a callable.")

    def make_optimizer(self):
        """A fresh optimizer for this phase."""
        if callable(self.optimizer):
            return self.optimizer(self.learning_rate)
        return _OPTIMIZERS[self.optimizer](self.learning_rate)

    def describe(self) -> dict:
        """The phase as plain data (stored with the run, compared on resume)."""
        optimizer = (self.optimizer if isinstance(self.optimizer, str)
                     else getattr(self.optimizer, "__qualname__", repr(self.optimizer)))
        return {"name": self.name, "epochs": self.epochs,
                "learning_rate": float(self.learning_rate),
                "trainable": _describe_trainable(self.trainable), "optimizer": optimizer}


def _describe_trainable(spec) -> str:
    if isinstance(spec, bool):
        raise ValueError(f"trainable must be 'head', 'stem', 'all', an int or a "
                         f"callable, got {spec!r}.")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"trainable={spec}: the number of top stages must be >= 0.")
        return f"top {spec} stages + heads" if spec else "heads"
    if spec in ("head", "heads"):
        return "heads"
    if spec in ("stem", "all"):
        return {"stem": "all but the stem", "all": "all"}[spec]
    if callable(spec):
        return getattr(spec, "__qualname__", repr(spec))
    raise ValueError(f"trainable must be 'head', 'stem', 'all', an int (top stages) or "
                     f"a callable fn(model), got {spec!r}.")


def apply_trainable(model, spec: TrainableSpec) -> List[str]:
    """Sets which layers of ``model`` train, as :attr:`Phase.trainable` describes.

    Frozen BatchNormalization layers run in inference mode (Keras 3: a layer with
    ``trainable=False`` uses its moving statistics and leaves them unchanged).

    Args:
        model: the model (a keras_inception one for ``"head"``, ``"stem"`` and
            stage counts; any model for ``"all"`` and callables).
        spec: ``"head"``, ``"stem"``, ``"all"``, an int, or ``fn(model)``.

    Returns:
        The names of the layers that have trainable weights afterwards.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((3,)),
        ...                           keras.layers.Dense(2, name="d")])
        >>> model.trainable = False
        >>> apply_trainable(model, "all")
        ['d']
    """
    _describe_trainable(spec)
    if spec == "all":
        model.trainable = True
        for layer in model.layers:
            layer.trainable = True
    elif callable(spec) and not isinstance(spec, str):
        spec(model)
    else:
        # The transfer helpers set every layer's flag (declarative): nothing left
        # over from the previous phase.
        from keras_inception import transfer

        if spec == "stem":
            transfer.freeze_stem(model)
        else:
            transfer.unfreeze_top(model, 0 if spec in ("head", "heads") else int(spec))
    return [layer.name for layer in model.layers if layer.trainable_weights]


# ---------------------------------------------------------------------- compiling

def _is_zoo_model(model) -> bool:
    from keras_inception.features import infer_info

    try:
        infer_info(model)
    except ValueError:  # any other Keras model: trained just the same
        return False
    return True


def _main_output(model):
    return model.output["logits"] if isinstance(model.output, dict) else model.output


def _outputs_probabilities(model) -> bool:
    """Whether the main head ends in a softmax (else it gives logits)."""
    tensor = _main_output(model)
    layer = tensor._keras_history.operation
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def _num_classes(model) -> int:
    return int(_main_output(model).shape[-1])


def compile_args(model, *, aux_weight: float = 0.3, top_k: int = 5,
                 sample_weighted: bool = False) -> dict:
    """Loss and metrics for a classifier with integer labels (``model.compile(**...)``).

    A plain model gets sparse categorical cross-entropy (on logits or
    probabilities, whichever its head gives) with ``accuracy`` and, with more
    than ``top_k`` classes, ``top5_accuracy``. A model with auxiliary outputs (a
    dict with ``"logits"``) gets :func:`keras_inception.transfer.aux_compile_args`
    with ``aux_weight`` per auxiliary loss, plus the same top-k metric on the main
    head.

    Args:
        model: the classifier.
        aux_weight: loss weight of each auxiliary head.
        top_k: k of the top-k accuracy metric.
        sample_weighted: for data with sample weights (:class:`EvenBatches`):
            the metrics become ``weighted_metrics`` (without weights they give
            the same values).

    Returns:
        ``{"loss": ..., "metrics": ...}`` (and ``"loss_weights"`` with aux heads;
        ``"weighted_metrics"`` instead of ``"metrics"`` when ``sample_weighted``).

    Example:
        >>> import keras
        >>> inputs = keras.Input((3,))
        >>> outputs = keras.layers.Dense(10, activation="softmax")(inputs)
        >>> model = keras.Model(inputs, outputs)
        >>> [m.name for m in compile_args(model)["metrics"]]
        ['accuracy', 'top5_accuracy']
    """
    classes = _num_classes(model)
    topk = ([keras.metrics.SparseTopKCategoricalAccuracy(k=top_k,
                                                          name=f"top{top_k}_accuracy")]
            if classes > top_k else [])
    if isinstance(model.output, dict):
        from keras_inception import transfer

        args = dict(transfer.aux_compile_args(model, aux_weight=aux_weight))
        metrics = dict(args.get("metrics") or {})
        main = list(metrics.get("logits") or [])
        names = [getattr(m, "name", m) for m in main]
        metrics["logits"] = main + [m for m in topk if m.name not in names]
        args["metrics"] = metrics
    else:
        args = {"loss": keras.losses.SparseCategoricalCrossentropy(
                    from_logits=not _outputs_probabilities(model)),
                "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
                + topk}
    if sample_weighted:
        args["weighted_metrics"] = args.pop("metrics")
    return args


# -------------------------------------------------------------------------- data

class _Wrapper(keras.utils.PyDataset):
    """A dataset over another: same length, epoch ends passed on."""

    def __init__(self, dataset, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def on_epoch_end(self):
        hook = getattr(self.dataset, "on_epoch_end", None)
        if hook is not None:
            hook()


class MultiTarget(_Wrapper):
    """Gives every output of a multi-output model the same labels.

    Keras wants one target per output of a model whose output is a dict
    (``{"logits", "aux"}``); this wraps a dataset of ``(x, y)`` batches to yield
    ``(x, {head: y for head in heads})`` (sample weights, when the batches have
    them, pass unchanged: Keras applies them to every head), and passes epoch
    ends on (shuffling).

    Args:
        dataset: a ``keras.utils.PyDataset`` of ``(x, y)`` batches.
        heads: the output names of the model.
        **kwargs: ``keras.utils.PyDataset`` arguments (``workers``, ...).

    Example:
        >>> import numpy as np
        >>> class Batches(keras.utils.PyDataset):
        ...     def __len__(self):
        ...         return 1
        ...     def __getitem__(self, i):
        ...         return np.zeros((2, 3)), np.array([0, 1])
        >>> x, y = MultiTarget(Batches(), ["logits", "aux"])[0]
        >>> sorted(y), y["aux"].tolist()
        (['aux', 'logits'], [0, 1])
    """

    def __init__(self, dataset, heads: Sequence[str], **kwargs):
        super().__init__(dataset, **kwargs)
        self.heads = tuple(heads)

    def __getitem__(self, index):
        x, y, *weights = self.dataset[index]
        return (x, {head: y for head in self.heads}, *weights)


class FullBatches(_Wrapper):
    """A dataset without its last, incomplete batch (when it has more than one).

    Every distinct batch shape costs a compilation of the training step (tens of
    seconds for the larger models on JAX); a training set reshuffled at each
    epoch loses no image for good by dropping the remainder. Epoch ends (and
    ``set_epoch``) are passed on.

    Args:
        dataset: a ``keras.utils.PyDataset``.
        **kwargs: ``keras.utils.PyDataset`` arguments (``workers``, ...).

    Example:
        >>> import numpy as np
        >>> class Batches(keras.utils.PyDataset):
        ...     def __len__(self):
        ...         return 3
        ...     def __getitem__(self, i):
        ...         n = 1 if i == 2 else 4
        ...         return np.zeros((n, 3)), np.zeros(n)
        >>> len(FullBatches(Batches()))
        2
    """

    def __init__(self, dataset, **kwargs):
        super().__init__(dataset, **kwargs)
        count = len(dataset)
        known = _known_batch_sizes(dataset)
        if known is not None:
            # Global batches (an ImageDataset shard yields a part of each): every
            # process of a data-parallel run drops the same batch.
            full, last = (known[0], known[-1]) if count else (0, 0)
        else:
            full, last = (len(dataset[0][1]), len(dataset[count - 1][1])) if count else (0, 0)
        self._len = count - 1 if count > 1 and last < full else count
        self._known = None if known is None else known[:self._len]

    def __len__(self):
        return self._len

    def batch_sizes(self) -> Optional[List[int]]:
        """Images in each kept (global) batch, when the wrapped dataset knows them."""
        return self._known

    def __getitem__(self, index):
        return self.dataset[index]

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the wrapped dataset (when it has one)."""
        hook = getattr(self.dataset, "set_epoch", None)
        if hook is not None:
            hook(epoch)


class EvenBatches(_Wrapper):
    """Batches padded to a multiple of ``multiple`` rows, the padding weighted 0.

    Data parallel splits every batch evenly across the devices, so a validation
    batch of 10 images cannot go to 4 devices. This pads each batch with copies
    of its first images and yields ``(x, y, sample_weight)``: 0 for the copies,
    and for the real images one constant, ``padded rows / real rows`` over the
    whole dataset. Keras divides a batch's weighted loss by its padded size and
    averages batches by padded size, so this constant makes the loss exactly the
    mean over the real images, on every replica layout; weighted metrics
    (:func:`compile_args` ``(..., sample_weighted=True)``) count the real images
    alone.

    Args:
        dataset: a dataset of ``(x, y)`` batches (len and indexing; with
            ``batch_size`` and ``source`` attributes, like
            :class:`keras_inception.data.ImageDataset`, the batch sizes are known
            without reading the batches).
        multiple: the row count every batch is padded to a multiple of.
        shard: ``(index, count)``: yield only this process's contiguous part of
            each padded batch (data parallel on several hosts; ``multiple`` must
            be a multiple of ``count``).
        **kwargs: ``keras.utils.PyDataset`` arguments.

    Example:
        >>> import numpy as np
        >>> class Batches(keras.utils.PyDataset):
        ...     def __len__(self):
        ...         return 1
        ...     def __getitem__(self, i):
        ...         return np.arange(3.0)[:, None], np.array([0, 1, 2])
        >>> x, y, w = EvenBatches(Batches(), 4)[0]
        >>> x.ravel().tolist(), y.tolist(), w.tolist()
        ([0.0, 1.0, 2.0, 0.0], [0, 1, 2, 0], [1.3333333730697632, 1.3333333730697632, 1.3333333730697632, 0.0])
    """

    def __init__(self, dataset, multiple: int, *, shard: Tuple[int, int] = (0, 1),
                 **kwargs):
        super().__init__(dataset, **kwargs)
        self.multiple = int(multiple)
        self.shard = (int(shard[0]), int(shard[1]))
        if self.multiple % self.shard[1]:
            raise ValueError(f"multiple ({multiple}) must be a multiple of the shard "
                             f"count ({shard[1]}).")
        sizes = _known_batch_sizes(dataset)
        if sizes is None:  # read once: padding needs every batch's size
            sizes = [len(dataset[i][1]) for i in range(len(dataset))]
        padded = sum(len(_padded_rows(n, self.multiple)) for n in sizes)
        self.weight = padded / max(1, sum(sizes))

    def __getitem__(self, index):
        from keras_inception.data import shard_part

        x, y = self.dataset[index][:2]
        count = len(y)
        rows = _padded_rows(count, self.multiple)
        weights = np.where(np.arange(len(rows)) < count, self.weight, 0.0)
        mine = shard_part(len(rows), self.shard)
        return (np.asarray(x)[rows][mine], np.asarray(y)[rows][mine],
                weights.astype("float32")[mine])


def _padded_rows(count: int, multiple: int) -> np.ndarray:
    """Row indices of a batch of ``count`` padded with copies of its first rows."""
    return np.arange(count + (-count) % multiple) % count


def _known_batch_sizes(dataset) -> Optional[List[int]]:
    """The (global) batch sizes a dataset states (``batch_sizes()``), else None."""
    sizes = getattr(dataset, "batch_sizes", None)
    return None if sizes is None else sizes()


def _global_batch(data, batch_size: int) -> int:
    """Images per (global) training step: ``batch_size`` for arrays, else the first
    batch's (as the dataset states it, else read)."""
    if _is_arrays(data):
        return int(batch_size)
    known = _known_batch_sizes(data)
    return known[0] if known else len(data[0][1])


def _is_arrays(data) -> bool:
    return isinstance(data, tuple) and len(data) == 2


def _with_heads(data, model):
    """``data`` with one target per output for a multi-output model."""
    if data is None or not isinstance(model.output, dict):
        return data
    heads = list(model.output)
    if _is_arrays(data):
        return data[0], {head: data[1] for head in heads}
    return MultiTarget(data, heads)


def _batches(data, batch_size: int):
    """(x, y) batches of a dataset (``len`` and indexing) or an ``(x, y)`` tuple."""
    if _is_arrays(data):
        x, y = data
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], np.asarray(y[start:start + batch_size])
    else:
        for index in range(len(data)):
            batch = data[index]
            yield batch[0], np.asarray(batch[1])


def predict_dataset(model, data, *, batch_size: int = 32, verbose: int = 1,
                    pad_to: int = 1):
    """Labels and class probabilities of the main head over a whole dataset.

    Args:
        model: a classifier (with auxiliary outputs, the main head is used).
        data: a dataset of ``(x, y)`` batches in a fixed order (a
            ``keras.utils.PyDataset`` or anything with ``len`` and indexing), or
            an ``(x, y)`` tuple of arrays.
        batch_size: for arrays only.
        verbose: show a progress bar.
        pad_to: pad each batch to a multiple of this many images (copies whose
            outputs are dropped): data parallel needs batches that split evenly
            across the devices.

    Returns:
        ``(labels int64 [N], probabilities float32 [N, classes])``; a softmax is
        applied when the head gives logits.

    Example:
        >>> import numpy as np, keras
        >>> inputs = keras.Input((3,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
        >>> labels, probs = predict_dataset(model, (np.ones((5, 3)), np.arange(5) % 4),
        ...                                 verbose=0)
        >>> labels.tolist(), probs.shape, bool(np.allclose(probs.sum(1), 1, atol=1e-5))
        ([0, 1, 2, 3, 0], (5, 4), True)
    """
    if isinstance(model.output, dict):
        model = keras.Model(model.input, model.output["logits"])
    softmax = not _outputs_probabilities(model)
    steps = (math.ceil(len(data[0]) / batch_size) if _is_arrays(data) else len(data))
    bar = keras.utils.Progbar(steps, verbose=1 if verbose else 0, unit_name="batch")
    labels, outputs = [], []
    for step, (x, y) in enumerate(_batches(data, batch_size), 1):
        count = len(x)
        if count % pad_to:
            x = np.asarray(x)[_padded_rows(count, pad_to)]
        out = keras.ops.convert_to_numpy(model.predict_on_batch(x))[:count]
        outputs.append(out.astype("float32"))
        labels.append(np.asarray(y).reshape(-1).astype("int64"))
        bar.update(step)
    probs = np.concatenate(outputs) if outputs else np.zeros((0, _num_classes(model)),
                                                            "float32")
    if softmax:
        shifted = np.exp(probs - probs.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
    return (np.concatenate(labels) if labels else np.zeros((0,), "int64")), probs


# -------------------------------------------------------------------- evaluation

def classification_report(labels, probabilities, class_names: Sequence[str], *,
                          top_k: int = 5) -> dict:
    """Per-class precision, recall, F1 and support, accuracy and confusion matrix.

    Args:
        labels: true class indices, shape ``[N]``.
        probabilities: class scores, shape ``[N, C]`` (the prediction is the
            argmax).
        class_names: the ``C`` class names.
        top_k: also report top-k accuracy when there are more than ``top_k``
            classes.

    Returns:
        A JSON-ready dict: ``samples``, ``accuracy``, ``top5_accuracy`` (when
        ``C > 5``), ``classes`` (a list of ``{name, precision, recall, f1,
        support}``), ``macro_avg``, ``weighted_avg``, ``confusion_matrix``
        (rows: true class, columns: predicted) and ``class_names``. A class never
        predicted has precision 0 (likewise recall and F1 for a class without
        samples).

    Example:
        >>> r = classification_report([0, 0, 1, 1], [[.9, .1], [.2, .8], [.3, .7],
        ...                                         [.6, .4]], ["cat", "dog"])
        >>> r["accuracy"], r["confusion_matrix"]
        (0.5, [[1, 1], [1, 1]])
        >>> r["classes"][1]
        {'name': 'dog', 'precision': 0.5, 'recall': 0.5, 'f1': 0.5, 'support': 2}
    """
    labels = np.asarray(labels).astype("int64").reshape(-1)
    probabilities = np.asarray(probabilities, dtype="float64")
    names = [str(n) for n in class_names]
    classes = len(names)
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), classes):
        raise ValueError(f"probabilities must have shape ({len(labels)}, {classes}) "
                         f"for {len(labels)} labels and {classes} class names; got "
                         f"{probabilities.shape}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be class indices in [0, {classes}); got "
                         f"{labels.min()}..{labels.max()}.")
    predicted = probabilities.argmax(axis=-1) if len(labels) else labels
    matrix = np.zeros((classes, classes), "int64")
    np.add.at(matrix, (labels, predicted), 1)
    correct = np.diag(matrix).astype("float64")
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    precision = np.divide(correct, predicted_count, out=np.zeros(classes),
                          where=predicted_count > 0)
    recall = np.divide(correct, support, out=np.zeros(classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(classes),
                   where=denominator > 0)
    total = int(support.sum())
    report = {"samples": total,
              "accuracy": float(correct.sum() / total) if total else 0.0}
    if classes > top_k:
        top = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
        hits = (top == labels[:, None]).any(axis=-1)
        report[f"top{top_k}_accuracy"] = float(hits.mean()) if total else 0.0
    report["classes"] = [
        {"name": name, "precision": float(p), "recall": float(r), "f1": float(f),
         "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, support)]
    weights = support / total if total else np.zeros(classes)
    report["macro_avg"] = {"precision": float(precision.mean()),
                           "recall": float(recall.mean()), "f1": float(f1.mean())}
    report["weighted_avg"] = {"precision": float(precision @ weights),
                              "recall": float(recall @ weights),
                              "f1": float(f1 @ weights)}
    report["class_names"] = names
    report["confusion_matrix"] = matrix.tolist()
    return report


def evaluation_markdown(report: dict) -> str:
    """The :func:`classification_report` as a Markdown table (also fine in a terminal).

    Args:
        report: what :func:`classification_report` returned.

    Returns:
        The table and an accuracy line.

    Example:
        >>> r = classification_report([0, 1], [[.9, .1], [.8, .2]], ["cat", "dog"])
        >>> print(evaluation_markdown(r))
        | class | precision | recall | f1 | support |
        |---|---:|---:|---:|---:|
        | cat | 0.5000 | 1.0000 | 0.6667 | 1 |
        | dog | 0.0000 | 0.0000 | 0.0000 | 1 |
        | macro avg | 0.2500 | 0.5000 | 0.3333 | 2 |
        | weighted avg | 0.2500 | 0.5000 | 0.3333 | 2 |
        <BLANKLINE>
        accuracy: 0.5000 (1 of 2)
    """
    lines = ["| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for row in report["classes"]:
        lines.append(f"| {row['name']} | {row['precision']:.4f} | {row['recall']:.4f} | "
                     f"{row['f1']:.4f} | {row['support']} |")
    for key, label in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        avg = report[key]
        lines.append(f"| {label} | {avg['precision']:.4f} | {avg['recall']:.4f} | "
                     f"{avg['f1']:.4f} | {report['samples']} |")
    correct = int(np.trace(np.asarray(report["confusion_matrix"])))
    lines += ["", f"accuracy: {report['accuracy']:.4f} ({correct} of "
                  f"{report['samples']})"]
    for key in sorted(k for k in report if k.startswith("top") and
                      k.endswith("_accuracy")):
        lines.append(f"{key.replace('_', ' ').replace('top', 'top-', 1)}: "
                     f"{report[key]:.4f}")
    return "\n".join(lines)


def _confusion_csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = report["class_names"]
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, report["confusion_matrix"]):
        writer.writerow([name, *row])
    return buffer.getvalue()


def _history_csv(history: Sequence[dict]) -> str:
    columns = ["epoch", "phase", "phase_epoch", "learning_rate"]
    metrics = sorted({k for record in history for k in record} - set(columns),
                     key=lambda k: (k.startswith("val_"), k != "loss" and k != "val_loss",
                                    k))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns + metrics, lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow(record)
    return buffer.getvalue()


# ------------------------------------------------------------------------- plots

def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # an optional dependency
        raise ImportError("Plots need matplotlib: pip install matplotlib (or "
                          "keras-inception[recipes]).") from err
    # A bare Figure renders with Agg when saved: no pyplot, no display, no global
    # backend switch in the user's process.
    return Figure(**kwargs)


def _save_figure(fig, path) -> str:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def plot_history(history: Sequence[dict], path) -> str:
    """Saves loss and accuracy per epoch as a PNG, phases marked.

    Args:
        history: records as in ``history.json`` (``epoch``, ``phase`` and the logged
            metrics: ``loss``, ``val_loss``, ``accuracy``, auxiliary losses...).
        path: the PNG to write (atomically).

    Returns:
        ``path``.

    Example:
        >>> import os, tempfile
        >>> records = [{"epoch": 1, "phase": "head", "loss": 1.0, "accuracy": 0.5},
        ...            {"epoch": 2, "phase": "top", "loss": 0.5, "accuracy": 0.7}]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     png = plot_history(records, os.path.join(tmp, "curves.png"))
        ...     open(png, "rb").read(4)
        b'\\x89PNG'
    """
    fig = _figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    keys = [k for k in dict.fromkeys(k for r in history for k in r)
            if isinstance(history[0].get(k, 0.0), (int, float)) and
            k not in ("epoch", "phase_epoch", "learning_rate")]
    groups = (("loss", [k for k in keys if k.endswith("loss")]),
              ("accuracy", [k for k in keys if k.endswith("accuracy")]))
    for ax, (title, names) in zip(axes, groups):
        for name in names:
            values = [r.get(name, float("nan")) for r in history]
            aux = "aux" in name
            ax.plot(epochs, values, marker="o", markersize=3,
                    linestyle=":" if aux else ("--" if name.startswith("val_") else "-"),
                    linewidth=1 if aux else 1.6, label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
        _mark_phases(ax, history)
    fig.suptitle("training curves")
    return _save_figure(fig, path)


def _mark_phases(ax, history):
    """Shades each phase's epochs and names it at the top of the axes."""
    spans, start = [], 0
    for i in range(1, len(history) + 1):
        if i == len(history) or history[i]["phase"] != history[start]["phase"]:
            spans.append((history[start]["phase"], history[start]["epoch"],
                          history[i - 1]["epoch"]))
            start = i
    for index, (name, first, last) in enumerate(spans):
        ax.axvspan(first - 0.5, last + 0.5, color=f"C{index % 10}", alpha=0.07, lw=0)
        if index:
            ax.axvline(first - 0.5, color="gray", linestyle="--", linewidth=0.8)
        ax.text((first + last) / 2, 1.0, name, transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="dimgray")
    if spans:
        ax.set_xlim(spans[0][1] - 0.5, spans[-1][2] + 0.5)


def plot_confusion_matrix(matrix, class_names: Sequence[str], path, *,
                          title: str = "confusion matrix (validation)") -> str:
    """Saves a confusion matrix (rows: true class, columns: predicted) as a PNG.

    Args:
        matrix: the counts, shape ``(classes, classes)``.
        class_names: one per class.
        path: the PNG to write (atomically).
        title: the figure's title.

    Returns:
        ``path``.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     png = plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"],
        ...                                 os.path.join(tmp, "cm.png"))
        ...     open(png, "rb").read(4)
        b'\\x89PNG'
    """
    matrix = np.asarray(matrix)
    n = len(class_names)
    side = max(4.0, 0.5 * n + 2.5)
    fig = _figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), [str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(range(n), [str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:  # beyond that the numbers are unreadable anyway
        high = matrix.max() if matrix.size else 0
        for (row, col), value in np.ndenumerate(matrix):
            ax.text(col, row, str(value), ha="center", va="center", fontsize=8,
                    color="white" if high and value > high / 2 else "black")
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- runs

@dataclasses.dataclass
class RunResult:
    """What :meth:`Run.fit` did and wrote.

    Example:
        >>> result = RunResult("runs/flowers", history=[{"epoch": 1, "loss": 0.9}],
        ...                    evaluation=None, trained_epochs=1, resumed_from=0,
        ...                    files={"history": "runs/flowers/history.json"})
        >>> result.trained_epochs + result.resumed_from
        1

    Attributes:
        out_dir: the run's folder.
        history: one record per epoch of the whole run (resumed parts included).
        evaluation: the :func:`classification_report` of the validation split
            (None for a finished run whose ``evaluation.json`` was removed).
        trained_epochs: epochs trained by this call (0 for a finished run).
        resumed_from: epochs already done when this call started.
        files: output name -> path.
    """

    out_dir: str
    history: List[dict]
    evaluation: Optional[dict]
    trained_epochs: int
    resumed_from: int
    files: Dict[str, str]


class _EpochCheckpoint(keras.callbacks.Callback):
    def __init__(self, run: "Run", phase_index: int, train_data):
        super().__init__()
        self.run = run
        self.phase_index = phase_index
        self.train_data = train_data
        self.offset = sum(p.epochs for p in run.phases[:phase_index])

    def set_epoch(self, phase_epoch: int) -> None:
        """Tells the training data the run's epoch (0-based) about to start.

        Keras also ends a dataset's epoch when fit starts, so the dataset's own
        count depends on how often fit was called; with the run's epoch, a resumed
        run shuffles and augments exactly as an uninterrupted one.
        """
        set_epoch = getattr(self.train_data, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.offset + phase_epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.set_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.run._commit(self.model, self.phase_index, epoch + 1, logs or {})


class Run:
    """A resumable fine-tuning run in an output folder.

    Opening a folder reads its ``state.json`` (if any) and checks that it was made
    with the same ``config`` and ``phases``; :meth:`fit` then trains the epochs
    still to do, checkpointing after each, and writes the report. See the module
    docstring for the files.

    Args:
        out_dir: the run's folder (created on the first checkpoint).
        phases: the :class:`Phase` s, in order.
        config: the settings that define the run (e.g. a recipe's arguments: model,
            image size, batch size, seed...), JSON-serialisable; stored with the
            run and compared when it is reopened. Leave out what does not change
            the result (output folder, verbosity).
        restart: discard a previous run in ``out_dir`` (its checkpoints and the
            output files listed in :data:`OUTPUT_FILES`; nothing else is touched).
        print_fn: where messages go.

    Raises:
        RunMismatchError: ``out_dir`` holds a run with other settings.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     run = Run(tmp, [Phase("head", epochs=2, learning_rate=1e-3),
        ...                     Phase("top", epochs=1, learning_rate=1e-4, trainable=2)],
        ...               config={"model": "googlenet"})
        ...     run.total_epochs, run.epochs_done, run.finished
        (3, 0, False)
    """

    def __init__(self, out_dir, phases: Sequence[Phase], *, config: Optional[dict] = None,
                 restart: bool = False, print_fn: Callable[..., Any] = print):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.phases = tuple(phases)
        if not self.phases or not all(isinstance(p, Phase) for p in self.phases):
            raise ValueError("A run needs at least one Phase.")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"Phase names must be unique, got {names}.")
        if not any(p.epochs for p in self.phases):
            raise ValueError("Every phase has 0 epochs: nothing to train.")
        self.config = _jsonable(config or {})
        self.print = print_fn
        self._data = None
        self._distribution = None
        if restart:
            self._clear()
        self.state = self._read_state()
        if self.state is not None:
            self._check("settings", self.state["fingerprint"].get("config"), self.config)
            self._check("phases", self.state["fingerprint"].get("phases"),
                        self._phases_description())

    # ---- state

    @property
    def total_epochs(self) -> int:
        """Epochs of all phases together."""
        return sum(p.epochs for p in self.phases)

    @property
    def epochs_done(self) -> int:
        """Epochs completed and checkpointed so far."""
        return int(self.state["epochs_done"]) if self.state else 0

    @property
    def finished(self) -> bool:
        """Whether every epoch is done and the report written."""
        return bool(self.state and self.state.get("finished"))

    @property
    def history(self) -> List[dict]:
        """The per-epoch records so far."""
        return list(self.state["history"]) if self.state else []

    def position(self, epochs_done: Optional[int] = None) -> Tuple[int, int]:
        """``(phase index, epochs done within it)`` after ``epochs_done`` epochs.

        A finished phase is reported as the start of the next one; past the last
        phase, ``(len(phases), 0)``.

        Example:
            >>> run = Run.__new__(Run)
            >>> run.phases = (Phase("a", 2, 1e-3), Phase("b", 3, 1e-4))
            >>> [run.position(n) for n in (0, 1, 2, 4, 5)]
            [(0, 0), (0, 1), (1, 0), (1, 2), (2, 0)]
        """
        remaining = self.epochs_done if epochs_done is None else epochs_done
        for index, phase in enumerate(self.phases):
            if remaining < phase.epochs:
                return index, remaining
            remaining -= phase.epochs
        return len(self.phases), 0

    def _phases_description(self):
        return _jsonable([p.describe() for p in self.phases])

    def _path(self, *parts) -> str:
        return os.path.join(self.out_dir, *parts)

    def _read_state(self) -> Optional[dict]:
        path = self._path(STATE_FILE)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf8") as f:
                state = json.load(f)
            missing = [key for key in ("fingerprint", "epochs_done", "history")
                       if key not in state]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except (OSError, ValueError, TypeError) as err:
            raise RunMismatchError(
                f"{path} is not a readable run state ({err}). Restart the run "
                f"(--restart / restart=True) or use another output folder.") from None
        if state.get("version") != _STATE_VERSION:
            raise RunMismatchError(
                f"{path} was written by another version of keras_inception.training "
                f"(state version {state.get('version')}, this one reads "
                f"{_STATE_VERSION}). Restart the run (--restart / restart=True) or use "
                f"another output folder.")
        return state

    def _check(self, what: str, saved, now) -> None:
        if saved == now:
            return
        if isinstance(saved, dict) and isinstance(now, dict):
            unset = "(unset)"
            keys = sorted(set(saved) | set(now))
            detail = "; ".join(
                f"{k}: {saved.get(k, unset)!r} there, {now.get(k, unset)!r} now"
                for k in keys if saved.get(k, unset) != now.get(k, unset))
        else:
            detail = f"{saved!r} there, {now!r} now"
        raise RunMismatchError(
            f"{self.out_dir} holds a run with other {what} ({detail}). Resume it with "
            f"the same settings, or discard it with --restart (restart=True), or choose "
            f"another output folder.")

    def _clear(self) -> None:
        for name in (STATE_FILE, *OUTPUT_FILES):
            path = self._path(name)
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(self._path(CHECKPOINTS), ignore_errors=True)

    # ---- checkpoints

    def _commit(self, model, phase_index: int, phase_epoch: int, logs: dict) -> None:
        """Checkpoints the epoch just finished; ``state.json`` is replaced last."""
        phase = self.phases[phase_index]
        epoch = self.epochs_done + 1
        record = {"epoch": epoch, "phase": phase.name, "phase_epoch": phase_epoch,
                  "learning_rate": float(phase.learning_rate)}
        record.update({k: float(v) for k, v in logs.items()
                       if np.ndim(v) == 0 and k != "learning_rate"})
        name = f"epoch-{epoch:04d}"
        folder = self._path(CHECKPOINTS)
        final = os.path.join(folder, name)
        tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(model, tmp)
        if os.path.exists(final):  # left by a run killed before it committed
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
        history = self.history + [record]
        state = {"version": _STATE_VERSION,
                 "fingerprint": {**(self.state or {}).get("fingerprint", {}),
                                 "config": self.config,
                                 "phases": self._phases_description(),
                                 "data": self._data},
                 "epochs_done": epoch, "total_epochs": self.total_epochs,
                 "phase_index": phase_index, "phase": phase.name,
                 "phase_epochs_done": phase_epoch, "checkpoint": name,
                 "backend": keras.backend.backend(), "history": history,
                 "distribution": self._distribution, "finished": False}
        atomic_write_json(self._path(STATE_FILE), state)
        self.state = state
        self._prune_checkpoints(keep=name)
        self._write_history(history)

    def _prune_checkpoints(self, keep: str) -> None:
        folder = self._path(CHECKPOINTS)
        for entry in os.listdir(folder):
            if entry != keep:
                shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)

    def _write_history(self, history) -> None:
        atomic_write_json(self._path("history.json"), history)
        _write_text(self._path("history.csv"), _history_csv(history))

    def _files(self) -> Dict[str, str]:
        return {name: self._path(name) for name in OUTPUT_FILES
                if os.path.exists(self._path(name))}

    # ---- training

    def fit(self, model, train_data, validation_data, *, class_names: Sequence[str],
            data_info: Optional[dict] = None, aux_weight: float = 0.3,
            compile_kwargs: Optional[dict] = None, batch_size: int = 32,
            seed: Optional[int] = None, verbose="auto", plots: bool = True,
            save_model: bool = True, callbacks: Sequence[Any] = (),
            distribution=None) -> RunResult:
        """Trains the epochs still to do, then evaluates and writes the report.

        On a resumed run the model's variables come from the last checkpoint (the
        model must be built the same way as before; its current weights are
        replaced), and a phase interrupted mid-way gets its optimizer state back.
        A finished run trains nothing and returns what it saved.

        Args:
            model: the model to train; its output is the class scores, or a dict
                with ``"logits"`` and auxiliary heads (trained with
                ``aux_weight`` per auxiliary loss; the report and ``model.keras``
                use the main head only).
            train_data: a dataset of ``(images, labels)`` batches (e.g.
                :class:`keras_inception.data.ImageDataset`, shuffled per epoch by
                itself; one with ``set_epoch(n)`` is told the run's epoch, counted
                from 0, before each epoch) or an ``(x, y)`` tuple of arrays.
            validation_data: the same, evaluated after every epoch and reported at
                the end.
            class_names: one per class, in label order.
            data_info: what identifies the data (source, sizes); stored with the
                run and compared on resume.
            aux_weight: loss weight of every auxiliary head.
            compile_kwargs: extra ``model.compile`` arguments (e.g. ``jit_compile``).
            batch_size: for array data only.
            seed: seeds Keras' random generators (dropout...) at the start, offset
                by the epochs already done.
            verbose: ``model.fit``'s verbosity (progress bars by default).
            plots: write the PNGs.
            save_model: write ``model.keras``.
            callbacks: more Keras callbacks for every phase's ``fit`` (they run
                after the epoch's checkpoint is written).
            distribution: a :class:`keras_inception.distribute.DataParallelPlan`
                to train data-parallel (the model must have been built inside its
                ``scope()``; the data must be a dataset whose training batches
                split evenly across the devices). Checkpoints are the same as on
                one device: a run may resume on another number of devices.

        Returns:
            A :class:`RunResult`.

        Raises:
            RunMismatchError: the folder's run used other data.
            CheckpointError: its checkpoint does not fit ``model``.
            ValueError: a model built outside the distribution's scope, or a
                batch that does not split across its devices.
        """
        if distribution is not None:
            distribution.check_model(model)
            if distribution.even_batches and (_is_arrays(train_data)
                                              or _is_arrays(validation_data)):
                raise ValueError(
                    "Data parallel needs datasets whose batches split evenly across "
                    "the devices, not arrays: wrap them in a keras.utils.PyDataset "
                    "(e.g. keras_inception.training.FullBatches over an ImageDataset).")
            # A stated size is the global batch; a read one is this process's part.
            parts = 1 if _known_batch_sizes(train_data) else distribution.data_shard[1]
            distribution.per_replica_batch(_global_batch(train_data, batch_size) * parts)
        with (distribution.scope() if distribution is not None
              else contextlib.nullcontext()):
            return self._fit(model, train_data, validation_data, class_names=class_names,
                             data_info=data_info, aux_weight=aux_weight,
                             compile_kwargs=compile_kwargs, batch_size=batch_size,
                             seed=seed, verbose=verbose, plots=plots,
                             save_model=save_model, callbacks=callbacks,
                             distribution=distribution)

    def _fit(self, model, train_data, validation_data, *, class_names, data_info,
             aux_weight, compile_kwargs, batch_size, seed, verbose, plots, save_model,
             callbacks, distribution) -> RunResult:
        self._distribution = None if distribution is None else distribution.describe()
        self._data = _jsonable(data_info) if data_info is not None else None
        if self.state is not None:
            self._check("data", self.state["fingerprint"].get("data"), self._data)
        names = [str(c) for c in class_names]
        if len(names) != _num_classes(model):
            raise ValueError(f"{len(names)} class names for a model with "
                             f"{_num_classes(model)} classes.")
        if self.finished:
            self.print(f"The run in {self.out_dir} is already finished "
                       f"({self.epochs_done}/{self.total_epochs} epochs): nothing to "
                       f"train. Pass --restart (restart=True) to train it again.")
            return self._saved_result(trained=0)
        start = self.epochs_done
        if start:
            index, done = self.position(start)
            where = (f"phase '{self.phases[index].name}' ({index + 1}/"
                     f"{len(self.phases)}) epoch {done + 1}/{self.phases[index].epochs}"
                     if index < len(self.phases) else "the final evaluation")
            self.print(f"Resuming from {where}: {start} of {self.total_epochs} epochs "
                       f"already done in {self.out_dir} (checkpoint "
                       f"{self.state['checkpoint']}).")
            load_checkpoint(model, self._path(CHECKPOINTS, self.state["checkpoint"]),
                            optimizer=False)
        if seed is not None:
            keras.utils.set_random_seed(int(seed) + start)
        even = distribution is not None and distribution.even_batches
        # A dataset told its epoch (set_epoch) shuffles itself from (seed, epoch):
        # Keras' own shuffle of its batch order would draw from Python's global
        # random state, so a resumed run would see other batches.
        shuffle = not hasattr(train_data, "set_epoch")
        train = _with_heads(train_data, model)
        val = _with_heads(
            EvenBatches(validation_data, distribution.num_replicas,
                        shard=distribution.data_shard)
            if even and validation_data is not None else validation_data, model)
        first, done_in_first = self.position(start)
        sync = (distribution.synchronized_batchnorm(model) if distribution is not None
                else contextlib.nullcontext())
        with sync:  # not around _finish: model.keras keeps the layers' own settings
            for index in range(first, len(self.phases)):
                done = done_in_first if index == first else 0
                if done >= self.phases[index].epochs:  # a phase of 0 epochs
                    continue
                checkpoint = _EpochCheckpoint(self, index, train_data)
                # Before fit: Keras reads a first batch (for its shapes) before any
                # callback runs.
                checkpoint.set_epoch(done)
                self._train_phase(model, index, done, train, val, aux_weight=aux_weight,
                                  compile_kwargs=compile_kwargs, batch_size=batch_size,
                                  verbose=verbose, callbacks=[checkpoint, *callbacks],
                                  sample_weighted=even, shuffle=shuffle)
        return self._finish(model, validation_data, names,
                            trained=self.epochs_done - start, start=start,
                            batch_size=batch_size, verbose=verbose, plots=plots,
                            save_model=save_model,
                            pad_to=distribution.num_replicas if even else 1)

    def _train_phase(self, model, index, done, train, val, *, aux_weight,
                     compile_kwargs, batch_size, verbose, callbacks, sample_weighted,
                     shuffle):
        phase = self.phases[index]
        trainable = apply_trainable(model, phase.trainable)
        if _is_zoo_model(model):
            from keras_inception import transfer

            transfer.trainable_summary(model, print_fn=self.print)
        params = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
        self.print(f"\nPhase '{phase.name}' ({index + 1}/{len(self.phases)}): "
                   f"{phase.epochs} epoch(s) at learning rate {phase.learning_rate:g}, "
                   f"training {_describe_trainable(phase.trainable)} "
                   f"({len(trainable)} layers, {params:,} parameters).")
        model.compile(optimizer=phase.make_optimizer(),
                      **compile_args(model, aux_weight=aux_weight,
                                     sample_weighted=sample_weighted),
                      **(compile_kwargs or {}))
        if done:
            # Same phase, same trainable layers: the saved slots fit one by one.
            load_checkpoint(model, self._path(CHECKPOINTS, self.state["checkpoint"]),
                            optimizer=True)
        fit_kwargs = ({"x": train[0], "y": train[1], "batch_size": batch_size,
                       "shuffle": True} if _is_arrays(train) else
                      {"x": train, "shuffle": shuffle})
        if val is not None:
            fit_kwargs["validation_data"] = val
        model.fit(**fit_kwargs, epochs=phase.epochs, initial_epoch=done,
                  callbacks=callbacks, verbose=verbose)

    def _finish(self, model, validation_data, names, *, trained, start, batch_size,
                verbose, plots, save_model, pad_to=1) -> RunResult:
        self.print("\nEvaluating on the validation split...")
        labels, probs = predict_dataset(model, validation_data, batch_size=batch_size,
                                        verbose=verbose not in (0, 2), pad_to=pad_to)
        report = classification_report(labels, probs, names)
        markdown = evaluation_markdown(report)
        self.print(markdown)

        def write_predictions(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, labels=labels, probabilities=probs,
                         class_names=np.array(names, dtype=str))

        atomic_write(self._path("predictions.npz"), write_predictions)
        atomic_write_json(self._path("evaluation.json"), report)
        _write_text(self._path("evaluation.md"),
                    f"# Evaluation on the validation split\n\n{markdown}\n")
        _write_text(self._path("confusion_matrix.csv"), _confusion_csv(report))
        self._write_history(self.history)
        if plots:
            plot_history(self.history, self._path("training_curves.png"))
            plot_confusion_matrix(report["confusion_matrix"], names,
                                  self._path("confusion_matrix.png"))
        if save_model:
            if isinstance(model.output, dict):
                from keras_inception import transfer

                head = transfer.main_head(model)
            else:
                head = keras.Model(model.input, model.output, name=model.name)
            # A fresh, uncompiled model: model.keras carries no optimizer state.
            atomic_write(self._path("model.keras"), head.save)
        state = dict(self.state or {})
        state["finished"] = True
        atomic_write_json(self._path(STATE_FILE), state)
        self.state = state
        return self._saved_result(trained=trained, start=start, evaluation=report)

    def _saved_result(self, *, trained, start=None, evaluation=None) -> RunResult:
        if evaluation is None and os.path.exists(self._path("evaluation.json")):
            with open(self._path("evaluation.json"), encoding="utf8") as f:
                evaluation = json.load(f)
        return RunResult(out_dir=self.out_dir, history=self.history,
                         evaluation=evaluation, trained_epochs=trained,
                         resumed_from=self.epochs_done if start is None else start,
                         files=self._files())


# ----------------------------------------------------------------- the recipes' job

def build_classifier(model_name: str, classes: int, *, image_size: int,
                     weights: Optional[str] = "imagenet", dropout: float = 0.2,
                     aux_heads: bool = False,
                     print_fn: Callable[..., Any] = print) -> Tuple[keras.Model, bool]:
    """A registry model with a new ``classes``-way head, pretrained when possible.

    The body is built without its top (``include_top=False``) with ``weights``,
    then given a new head (:func:`keras_inception.transfer.replace_head`) and,
    with ``aux_heads``, its family's auxiliary classifiers
    (:func:`~keras_inception.transfer.with_aux_heads`). When named weights cannot
    be downloaded (offline), one line says so and the body starts from random
    initialisation.

    Args:
        model_name: a registry name or alias.
        classes: classes of the new head(s).
        image_size: input side.
        weights: a weights name, a weight file, or None (random initialisation).
        dropout: dropout rate of the new head.
        aux_heads: add auxiliary heads (the output is then a dict).
        print_fn: where the offline line goes.

    Returns:
        ``(model, pretrained)``: ``pretrained`` is False when the body was randomly
        initialised.

    Example:
        >>> model, pretrained = build_classifier("googlenet", 3, image_size=32,
        ...                                      weights=None)
        >>> model.output_shape, pretrained
        ((None, 3), False)
    """
    from keras_inception import pretrained as pretrained_lib, registry, transfer

    info = registry.get_model_info(model_name)
    channels_last = keras.config.image_data_format() == "channels_last"
    shape = (image_size, image_size, 3) if channels_last else (3, image_size, image_size)

    # Offline: one line, and a random body (the run still shows the whole pipeline,
    # at chance-level accuracy).
    backbone, used = pretrained_lib.create_or_random(
        info.name, weights, print_fn=print_fn, include_top=False, input_shape=shape,
        note="Expect chance-level accuracy: the run shows the whole pipeline.")
    pretrained = used is not None
    model = transfer.replace_head(backbone, classes, dropout=dropout)
    if aux_heads:
        model = transfer.with_aux_heads(model)
    return model, pretrained


def take_per_class(source, limit: Optional[int]):
    """The first ``limit`` images of each class of an image source (all if None).

    Args:
        source: a :class:`keras_inception.data.ImageSource`.
        limit: images kept per class, or None for all.

    Returns:
        An :class:`~keras_inception.data.ImageSource` (``source`` itself for None).

    Example:
        >>> from keras_inception.data import ImageSource
        >>> source = ImageSource(list("abcde"), [0, 1, 0, 0, 1], ("x", "y"), "demo")
        >>> take_per_class(source, 2).items
        ['a', 'b', 'c', 'e']
    """
    if limit is None:
        return source
    seen: Dict[int, int] = {}
    keep = []
    for index, label in enumerate(source.labels):
        seen[int(label)] = seen.get(int(label), 0) + 1
        if seen[int(label)] <= limit:
            keep.append(index)
    return dataclasses.replace(source, items=[source.items[i] for i in keep],
                               labels=source.labels[keep])


_ONE_BATCH = 64  # validation sets up to this size are evaluated in a single batch


def finetune(*, out_dir, model_name: str = "inception_v3",
             weights: Optional[str] = "imagenet", data_dir=None,
             class_names: Optional[Sequence[str]] = None, image_size: int = 160,
             batch_size: int = 16, phases: Sequence[Phase],
             aux_weight: Optional[float] = None, dropout: float = 0.2, seed: int = 0,
             limit: Optional[int] = None, synthetic_per_class: int = 50,
             validation_fraction: float = 0.2, restart: bool = False, workers: int = 1,
             verbose="auto", run_eagerly: bool = False, distribution=None,
             callbacks: Sequence[Any] = (),
             print_fn: Callable[..., Any] = print) -> RunResult:
    """Fine-tunes a registry model on flowers (or any image folder), resumably.

    What ``recipes/finetune_flowers.py`` and ``recipes/train_with_aux_losses.py``
    run: opens the :class:`Run` in ``out_dir`` (a finished run returns at once,
    other settings are refused unless ``restart``), loads the data
    (:func:`keras_inception.data.load_flowers`: ``data_dir``, else tf_flowers, else
    the generated ``synthetic-flowers``, said in one line), builds the model
    (:func:`build_classifier`: pretrained, or random initialisation said in one
    line), trains the ``phases`` and writes the report, plus ``model_info.json``
    (model, class names, image size, preprocessing) for inference and export.

    Args:
        out_dir: the run's folder (the generated dataset goes there too).
        model_name: a registry model name.
        weights: weights name, file, or None.
        data_dir: an image folder (one subfolder per class), else tf_flowers.
        class_names: the classes to use, in label order.
        image_size: input side (at least the model's minimum; with ``aux_weight``
            at least the aux heads' minimum).
        batch_size: images per batch.
        phases: the training phases.
        aux_weight: None trains the main head only; a number adds the family's
            auxiliary heads, each loss weighted so.
        dropout: dropout rate of the new head.
        seed: seeds the split, the shuffling, augmentation and Keras' RNG.
        limit: at most this many images per class (smoke runs), split as the
            rest; None for all.
        synthetic_per_class: images per class of the generated fallback dataset.
        validation_fraction: share of each class held out for validation.
        restart: discard a previous run in ``out_dir``.
        workers: ``keras.utils.PyDataset`` worker threads decoding images.
        verbose: ``model.fit``'s verbosity.
        run_eagerly: Keras' ``run_eagerly`` (debugging; on TensorFlow also quicker
            than tracing for a few tiny batches). Not part of the run's settings.
        distribution: a :class:`keras_inception.distribute.DataParallelPlan`:
            train data-parallel, ``batch_size`` being the global batch (it must
            split evenly across the devices). The model is built in the plan's
            scope; with several processes each feeds its part of every batch. Not
            part of the run's settings: a run may resume on another number of
            devices with the same global batch.
        callbacks: more Keras callbacks for every phase (after each epoch's
            checkpoint is written), e.g. ``keras.callbacks.TensorBoard``.
        print_fn: where messages go.

    Raises:
        RunMismatchError: ``out_dir`` holds a run with other settings.
        ValueError: bad arguments or data (the message says which).
        keras_inception.data.DataUnavailable: no usable data.

    Returns:
        The :class:`RunResult`.

    Example:
        A whole run takes seconds to minutes (``recipes/finetune_flowers.py``, the
        flowers tutorial); arguments are checked before any work:

        >>> finetune(out_dir="runs/flowers", model_name="googlenet", limit=1,
        ...          phases=[Phase("head", epochs=1, learning_rate=1e-3)])
        Traceback (most recent call last):
        ...
        ValueError: limit must be at least 2 images per class (one to train, one to validate), got 1.
    """
    from keras_inception import data as D
    from keras_inception import preprocessing, registry

    info = registry.get_model_info(model_name)  # an unknown name fails first
    if limit is not None and limit < 2:
        raise ValueError(f"limit must be at least 2 images per class (one to train, one "
                         f"to validate), got {limit}.")
    config = {"model": info.name, "weights": weights,
              "data_dir": None if data_dir is None else os.path.abspath(data_dir),
              "class_names": None if class_names is None else list(class_names),
              "image_size": image_size, "batch_size": batch_size,
              "aux_weight": aux_weight, "dropout": dropout, "seed": seed,
              "limit": limit, "synthetic_per_class": synthetic_per_class,
              "validation_fraction": validation_fraction}
    if distribution is not None:
        # Before any work: a batch that does not split fails here, said plainly.
        print_fn(distribution.summary(batch_size))
    run = Run(out_dir, phases, config=config, restart=restart, print_fn=print_fn)
    if run.finished:
        # Nothing to build or load: say so and hand back what was saved.
        print_fn(f"The run in {run.out_dir} is already finished ({run.epochs_done}/"
                 f"{run.total_epochs} epochs): nothing to train. Pass --restart "
                 f"(restart=True) to train it again.")
        return run._saved_result(trained=0)
    flowers = D.load_flowers(data_dir, class_names=class_names, work_dir=run.out_dir,
                             validation_fraction=validation_fraction, seed=seed,
                             print_fn=print_fn, synthetic_per_class=synthetic_per_class)
    train = take_per_class(flowers.train, None if limit is None else
                           max(1, limit - max(1, round(limit * validation_fraction))))
    val = take_per_class(flowers.val, None if limit is None else
                         max(1, round(limit * validation_fraction)))
    names = list(flowers.class_names)
    # Inside the plan's scope, the variables are made replicated on every device.
    with (distribution.scope() if distribution is not None else contextlib.nullcontext()):
        model, pretrained = build_classifier(info.name, len(names), image_size=image_size,
                                             weights=weights, dropout=dropout,
                                             aux_heads=aux_weight is not None,
                                             print_fn=print_fn)
    mode = preprocessing.preprocessing_for(model)
    print_fn(f"{info.name} ({'pretrained ' + repr(weights) if pretrained else 'random'} "
             f"weights), {image_size}x{image_size} input, '{mode}' preprocessing; "
             f"data: {flowers.source_name}, {len(names)} classes, {len(train)} training "
             f"and {len(val)} validation images.")
    # Several hosts on JAX: each process feeds its part of every global batch.
    shard = distribution.data_shard if distribution is not None else (0, 1)
    train_data = FullBatches(D.ImageDataset(
        train, batch_size=batch_size, image_size=image_size, training=True,
        preprocessing=mode, seed=seed, shard=shard, workers=workers))
    # Small validation sets in one batch: one batch shape, so one compilation of
    # the evaluation step (JAX compiles each shape anew).
    val_batch = len(val) if len(val) <= max(batch_size, _ONE_BATCH) else batch_size
    val_data = D.ImageDataset(val, batch_size=val_batch, image_size=image_size,
                              training=False, preprocessing=mode, workers=workers)
    if not run.epochs_done:
        # Written by the run that starts (a resumed one takes its weights, pretrained
        # or not, from the checkpoint): what inference and export need.
        atomic_write_json(os.path.join(run.out_dir, "model_info.json"), {
            "model": info.name, "class_names": names, "image_size": image_size,
            "preprocessing": mode, "weights": weights if pretrained else None,
            "aux_heads": list(info.aux_heads) if aux_weight is not None else [],
            "data": flowers.source_name})
    return run.fit(model, train_data, val_data, class_names=names,
                   data_info={"source": flowers.source_name, "class_names": names,
                              "train": len(train), "val": len(val)},
                   aux_weight=0.3 if aux_weight is None else aux_weight, seed=seed,
                   verbose=verbose, batch_size=batch_size, distribution=distribution,
                   callbacks=callbacks,
                   compile_kwargs={"run_eagerly": True} if run_eagerly else None)


# ------------------------------------------------------------ the recipes' CLI

def add_finetune_arguments(parser, *, model: str, image_size: int, limit: int,
                           unfreeze: int, out_dir: str) -> None:
    """Adds the arguments of the fine-tuning recipes to an ``argparse`` parser.

    The keyword arguments are the recipe's defaults; :func:`finetune_cli` reads
    the parsed result.

    Args:
        parser: an ``argparse.ArgumentParser``.
        model: default ``--model``.
        image_size: default ``--image-size``.
        limit: default ``--limit`` (and ``--synthetic-per-class``).
        unfreeze: default ``--unfreeze``.
        out_dir: default ``--out-dir``.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser()
        >>> add_finetune_arguments(parser, model="googlenet", image_size=96, limit=20,
        ...                        unfreeze=2, out_dir="runs/flowers")
        >>> args = parser.parse_args(["--epochs-head", "1"])
        >>> args.model, args.image_size, args.epochs_head, args.unfreeze
        ('googlenet', 96, 1, 2)
    """
    from keras_inception import registry

    parser.add_argument("--model", default=model,
                        help=f"registry name (default: {model}); one of "
                             + ", ".join(registry.list_models()))
    parser.add_argument("--weights", default="imagenet",
                        help="weights of the body: a weights name (default: imagenet), "
                             "'none' for random initialisation, or a weight file")
    parser.add_argument("--data-dir", default=None,
                        help="image folder with one subfolder per class (default: "
                             "tf_flowers, else the generated synthetic-flowers)")
    parser.add_argument("--class-names", default=None,
                        help="comma-separated classes to use, in label order "
                             "(default: all)")
    parser.add_argument("--out-dir", default=out_dir,
                        help=f"results and checkpoints (default: {out_dir})")
    parser.add_argument("--restart", action="store_true",
                        help="discard a previous run in --out-dir and start over")
    parser.add_argument("--image-size", type=int, default=image_size,
                        help=f"input side in pixels (default: {image_size}; the "
                             f"canonical one is 299, or 224 for googlenet and v2)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="images per batch (default: 16)")
    parser.add_argument("--epochs-head", type=int, default=2,
                        help="epochs of phase 1, the new head alone (default: 2)")
    parser.add_argument("--epochs-finetune", type=int, default=2,
                        help="epochs of phase 2, head and top stages (default: 2)")
    parser.add_argument("--lr-head", type=float, default=1e-3,
                        help="learning rate of phase 1 (default: 1e-3)")
    parser.add_argument("--lr-finetune", type=float, default=1e-4,
                        help="learning rate of phase 2 (default: 1e-4)")
    parser.add_argument("--unfreeze", type=int, default=unfreeze,
                        help=f"stages of the body, from the top, trained in phase 2 "
                             f"(default: {unfreeze})")
    parser.add_argument("--optimizer", default="adam",
                        choices=("adam", "adamw", "sgd", "rmsprop"),
                        help="optimizer of both phases (default: adam)")
    parser.add_argument("--dropout", type=float, default=0.2,
                        help="dropout rate of the new head (default: 0.2)")
    parser.add_argument("--limit", type=int, default=limit,
                        help=f"at most N images per class, split 80/20 into training "
                             f"and validation (default: {limit}, so the run takes "
                             f"minutes on a CPU; 0: all images)")
    parser.add_argument("--synthetic-per-class", type=int, default=limit,
                        help=f"images per class of the generated dataset used offline "
                             f"(default: {limit})")
    parser.add_argument("--validation-fraction", type=float, default=0.2,
                        help="share of each class held out for validation (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split, shuffling, augmentation (default: 0)")
    parser.add_argument("--workers", type=int, default=1,
                        help="threads decoding images (default: 1)")
    parser.add_argument("--run-eagerly", action="store_true",
                        help="run Keras eagerly, without tracing or compiling "
                             "(debugging; results are the same)")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras progress: 1 bars (default), 2 one line per epoch, "
                             "0 silent")
    scale = parser.add_argument_group(
        "data parallel", "Several devices, one model replica each; --batch-size is the "
                         "global batch. See the 'Scaling out' page of the docs.")
    scale.add_argument("--distribute", action="store_true",
                       help="train data-parallel on every visible device: "
                            "keras.distribution.DataParallel on JAX, "
                            "tf.distribute.MirroredStrategy on TensorFlow "
                            "(MultiWorkerMirroredStrategy with TF_CONFIG); not "
                            "available on PyTorch")
    scale.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                       help="split the CPU into N devices, to rehearse --distribute "
                            "without GPUs (same cores: no speed-up)")
    scale.add_argument("--lr-scaling", default="none", choices=LR_SCALING,
                       help="scale both learning rates with the global batch: linear "
                            "(x batch/base), sqrt, or none (default)")
    scale.add_argument("--base-batch-size", type=int, default=16,
                       help="the batch the learning rates are set for, with "
                            "--lr-scaling (default: 16)")


def finetune_phases(args) -> List[Phase]:
    """Head first, then the top stages at the lower learning rate.

    Both learning rates are scaled for the global batch as ``--lr-scaling``
    says (:func:`keras_inception.distribute.scale_learning_rate`).

    Args:
        args: parsed :func:`add_finetune_arguments` arguments.

    Returns:
        The two :class:`Phase` s, ``head`` and ``top_stages``.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser()
        >>> add_finetune_arguments(parser, model="googlenet", image_size=96, limit=20,
        ...                        unfreeze=2, out_dir="runs")
        >>> [(p.name, p.trainable) for p in finetune_phases(parser.parse_args([]))]
        [('head', 'head'), ('top_stages', 2)]
    """
    from keras_inception.distribute import scale_learning_rate

    def rate(value):
        return scale_learning_rate(value, args.batch_size, rule=args.lr_scaling,
                                   base_batch_size=args.base_batch_size)

    return [Phase("head", epochs=args.epochs_head, learning_rate=rate(args.lr_head),
                  trainable="head", optimizer=args.optimizer),
            Phase("top_stages", epochs=args.epochs_finetune,
                  learning_rate=rate(args.lr_finetune), trainable=args.unfreeze,
                  optimizer=args.optimizer)]


def _enable_jax_cache():
    """A persistent JAX compilation cache, so a rerun (a resume) compiles in seconds."""
    if keras.backend.backend() != "jax" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    from keras_inception import download

    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(download.cache_dir(), "jax-compilation-cache"))
    # Every compilation, small ones too: a model's initialisers are hundreds of
    # small programs, which make most of a JAX model build.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def finetune_cli(args, prog: str, *, aux_weight: Optional[float] = None) -> int:
    """Runs :func:`finetune` as the parsed ``args`` say; returns the exit status.

    User errors (bad arguments, data, another run in the folder) print one line
    on stderr and give 2; an interruption says how to resume and gives 130.

    Args:
        args: parsed :func:`add_finetune_arguments` arguments.
        prog: the program name for error lines.
        aux_weight: None trains the main head only; a number adds the auxiliary
            heads (see :func:`finetune`).

    Returns:
        The exit status: 0, 2 or 130.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser()
        >>> add_finetune_arguments(parser, model="googlenet", image_size=96, limit=20,
        ...                        unfreeze=2, out_dir="runs")
        >>> finetune_cli(parser.parse_args(["--batch-size", "0"]), "finetune.py")
        2
    """
    from keras_inception import accelerate, data, distribute

    def fail(message):
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2

    for name in ("image_size", "batch_size", "synthetic_per_class", "base_batch_size"):
        if getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')} must be at least 1, got "
                        f"{getattr(args, name)}.")
    try:
        steps = finetune_phases(args)
    except ValueError as err:
        return fail(one_line(err))
    class_names = ([c.strip() for c in args.class_names.split(",") if c.strip()]
                   if args.class_names else None)
    weights = None if args.weights.lower() == "none" else args.weights
    _enable_jax_cache()
    plan = None
    try:
        if args.cpu_devices is not None:
            distribute.simulate_cpu_devices(args.cpu_devices)
        if args.distribute:
            plan = distribute.data_parallel()
    except (ValueError, distribute.DistributionUnsupported) as err:
        return fail(one_line(err))
    # This process only trains: glibc keeps the memory it frees (Inception-v3's
    # training step at batch 16 on a CPU: PyTorch 10-13 %, JAX 5 % faster).
    accelerate.keep_freed_memory()
    if args.distribute or args.lr_scaling != "none":
        print(f"Learning rates for the global batch of {args.batch_size}: "
              + ", ".join(f"{p.name} {p.learning_rate:g}" for p in steps)
              + (f" ({args.lr_scaling} scaling of --lr-head {args.lr_head:g} / "
                 f"--lr-finetune {args.lr_finetune:g}, set for batch "
                 f"{args.base_batch_size})" if args.lr_scaling != "none" else
                 " (as given: --lr-scaling linear or sqrt scales them from "
                 f"--base-batch-size {args.base_batch_size})") + ".")
    try:
        result = finetune(
            out_dir=args.out_dir, model_name=args.model, weights=weights,
            data_dir=args.data_dir, class_names=class_names, image_size=args.image_size,
            batch_size=args.batch_size, phases=steps, aux_weight=aux_weight,
            dropout=args.dropout, seed=args.seed, limit=args.limit or None,
            synthetic_per_class=args.synthetic_per_class,
            validation_fraction=args.validation_fraction, restart=args.restart,
            workers=args.workers, verbose=args.verbose, run_eagerly=args.run_eagerly,
            distribution=plan)
    except (ValueError, FileNotFoundError, NotADirectoryError, data.DataUnavailable,
            CheckpointError) as err:
        # RunMismatchError is a ValueError; each message says what to do.
        return fail(one_line(err))
    except KeyboardInterrupt:
        print(f"\nInterrupted. Run the same command again to resume from the last "
              f"finished epoch (checkpoints in {os.path.abspath(args.out_dir)}).",
              file=sys.stderr)
        return 130
    files = ", ".join(os.path.basename(p) for p in result.files.values())
    print(f"\nOutputs are in {result.out_dir}: {files}")
    return 0
