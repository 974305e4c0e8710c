"""keras_inception.training: atomic checkpoints, resume logic, the report.

Tiny dense models on arrays, so the logic is tested in seconds on every backend;
the recipes' tests run the same code on real models and images.
"""

from __future__ import annotations

import csv
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_inception import training as T

CLASSES = ["a", "b", "c"]


def tiny_model(seed=0, hidden=6):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(hidden, activation="relu", name="body")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax",
                                                   name="predictions")(h))
    rng = np.random.default_rng(seed)
    # Backend-independent initial values, so two models start identical.
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1)
    return x, y


PHASES = [T.Phase("head", epochs=2, learning_rate=0.05, trainable="all"),
          T.Phase("top", epochs=2, learning_rate=0.01, trainable="all")]


def fit(run, model, data, **kwargs):
    # One batch per epoch: the shuffle order cannot change the result, so an
    # interrupted-then-resumed run can be compared with an uninterrupted one.
    # `data` trains; the arrays of the fixture validate.
    # TF and torch eager: tracing a step costs more than running it on 12 samples
    # (the recipe tests run the compiled path); JAX op by op is the slower one.
    eager = keras.backend.backend() != "jax"
    val = data if isinstance(data, tuple) else data.data
    return run.fit(model, data, val, class_names=CLASSES, batch_size=len(val[0]),
                   verbose=0, compile_kwargs={"run_eagerly": eager},
                   plots=kwargs.pop("plots", False),
                   save_model=kwargs.pop("save_model", False), **kwargs)


class Stop(keras.callbacks.Callback):
    """Interrupts training after a given epoch of the whole run (as a kill would)."""

    def __init__(self, run, after):
        super().__init__()
        self.run, self.after = run, after

    def on_epoch_end(self, epoch, logs=None):
        if self.run.epochs_done == self.after:
            raise KeyboardInterrupt


def quiet(messages):
    return lambda *args: messages.append(" ".join(map(str, args)))


# ---------------------------------------------------------------- atomic writes

def test_atomic_write_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "state.json"
    T.atomic_write_json(target, {"epochs_done": 1})

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write('{"epochs_do')
        raise KeyboardInterrupt  # what a kill in the middle of the write looks like

    with pytest.raises(KeyboardInterrupt):
        T.atomic_write(target, half_then_fail)
    assert json.loads(target.read_text()) == {"epochs_done": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    T.atomic_write_json(target, {"epochs_done": 2})
    assert json.loads(target.read_text()) == {"epochs_done": 2}


def test_checkpoint_round_trip_with_optimizer_state(tmp_path, data):
    a = tiny_model()
    a.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    a.fit(*data, epochs=2, verbose=0)
    T.save_checkpoint(a, tmp_path)
    b = tiny_model(seed=1)
    b.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    T.load_checkpoint(b, tmp_path)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    saved = [keras.ops.convert_to_numpy(v) for v in a.optimizer.variables]
    loaded = [keras.ops.convert_to_numpy(v) for v in b.optimizer.variables]
    assert int(loaded[0]) == 2  # iterations
    for x, y in zip(saved, loaded):
        np.testing.assert_array_equal(x, y)


def test_checkpoint_of_another_model_is_refused_whole(tmp_path):
    T.save_checkpoint(tiny_model(hidden=5), tmp_path)
    model = tiny_model(hidden=6)
    before = model.get_weights()
    with pytest.raises(T.CheckpointError, match="body/kernel.*does not fit"):
        T.load_checkpoint(model, tmp_path, optimizer=False)
    for x, y in zip(before, model.get_weights()):
        np.testing.assert_array_equal(x, y)  # nothing was half loaded


# ------------------------------------------------------------------ resume logic

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("uninterrupted")
    model = tiny_model()
    result = fit(T.Run(out, PHASES, config={"k": 1}, print_fn=quiet([])), model, data,
                 plots=True, save_model=True)
    return out, model, result


def test_run_writes_history_report_and_plots(uninterrupted, data):
    out, model, result = uninterrupted
    assert [(r["epoch"], r["phase"], r["phase_epoch"]) for r in result.history] == [
        (1, "head", 1), (2, "head", 2), (3, "top", 1), (4, "top", 2)]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(result.history[0])
    assert [r["learning_rate"] for r in result.history] == [0.05, 0.05, 0.01, 0.01]
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert json.loads((out / "history.json").read_text()) == result.history
    for png in ("training_curves.png", "confusion_matrix.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.size[0] > 100
    # The report is what the saved predictions say, and they are the model's.
    saved = np.load(out / "predictions.npz")
    np.testing.assert_array_equal(saved["labels"], data[1])
    np.testing.assert_allclose(saved["probabilities"],
                               keras.ops.convert_to_numpy(model(data[0])), atol=1e-5)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation == T.classification_report(saved["labels"],
                                                 saved["probabilities"], CLASSES)
    assert evaluation == result.evaluation
    matrix = np.array(evaluation["confusion_matrix"])
    assert matrix.sum() == len(data[1])
    assert evaluation["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert "| macro avg |" in (out / "evaluation.md").read_text()
    reloaded = keras.saving.load_model(out / "model.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(data[0])),
                               saved["probabilities"], atol=1e-5)
    # Only the last checkpoint is kept.
    assert os.listdir(out / "checkpoints") == ["epoch-0004"]


@pytest.mark.parametrize("stop_after, where", [
    (3, "phase 'top' (2/2) epoch 2/2"),   # mid-phase: the optimizer state comes back
    (2, "phase 'top' (2/2) epoch 1/2"),   # at a phase boundary: a fresh optimizer
])
def test_resume_after_interruption_matches_uninterrupted(tmp_path, data, uninterrupted,
                                                         stop_after, where):
    _, reference, reference_result = uninterrupted
    first = T.Run(tmp_path, PHASES, config={"k": 1}, print_fn=quiet([]))
    with pytest.raises(KeyboardInterrupt):
        fit(first, tiny_model(), data, callbacks=[Stop(first, stop_after)])
    assert not (tmp_path / "evaluation.json").exists()

    messages = []
    again = T.Run(tmp_path, PHASES, config={"k": 1}, print_fn=quiet(messages))
    assert again.epochs_done == stop_after and not again.finished
    # A freshly built model: its weights come from the checkpoint.
    resumed = tiny_model(seed=7)
    result = fit(again, resumed, data)
    assert any(f"Resuming from {where}: {stop_after} of 4 epochs" in m for m in messages)
    assert result.trained_epochs == 4 - stop_after and result.resumed_from == stop_after
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert [r["phase"] for r in result.history] == ["head", "head", "top", "top"]
    # Same weights as without the interruption: weights, BN-free body and the
    # Adam moments and step count were all restored.
    for x, y in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r["loss"] for r in result.history],
                               [r["loss"] for r in reference_result.history], rtol=1e-4)


class EpochRecorder(keras.utils.PyDataset):
    """One batch per epoch; records the epoch it was told before each fetch."""

    def __init__(self, data):
        super().__init__()
        self.data, self.epoch, self.seen = data, 0, []

    def __len__(self):
        return 1

    def __getitem__(self, index):
        self.seen.append(self.epoch)
        return self.data

    def on_epoch_end(self):
        self.epoch += 1  # what Keras also calls when fit starts

    def set_epoch(self, epoch):
        self.epoch = epoch


def test_datasets_are_told_the_run_epoch_also_when_resumed(tmp_path, data):
    first = T.Run(tmp_path, PHASES, print_fn=quiet([]))
    train = EpochRecorder(data)
    with pytest.raises(KeyboardInterrupt):
        fit(first, tiny_model(), train, callbacks=[Stop(first, 1)])
    assert sorted(set(train.seen)) == [0]
    resumed = EpochRecorder(data)
    fit(T.Run(tmp_path, PHASES, print_fn=quiet([])), tiny_model(), resumed)
    # Epochs 2, 3 and 4 of the run, as an uninterrupted run would number them.
    assert sorted(set(resumed.seen)) == [1, 2, 3]


def test_kill_between_checkpoint_and_state_keeps_previous_epoch(tmp_path, data,
                                                                monkeypatch):
    real = T.atomic_write_json

    def crash_on_second_state(path, obj):
        if os.path.basename(path) == T.STATE_FILE and obj["epochs_done"] == 2:
            raise KeyboardInterrupt  # the checkpoint folder is written, state.json not
        return real(path, obj)

    monkeypatch.setattr(T, "atomic_write_json", crash_on_second_state)
    with pytest.raises(KeyboardInterrupt):
        fit(T.Run(tmp_path, PHASES, print_fn=quiet([])), tiny_model(), data)
    monkeypatch.setattr(T, "atomic_write_json", real)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch-0001", "epoch-0002"]
    run = T.Run(tmp_path, PHASES, print_fn=quiet([]))
    assert run.epochs_done == 1 and run.state["checkpoint"] == "epoch-0001"
    result = fit(run, tiny_model(), data)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert os.listdir(tmp_path / "checkpoints") == ["epoch-0004"]


def test_finished_run_trains_nothing(uninterrupted, data):
    out, reference, reference_result = uninterrupted
    messages = []
    run = T.Run(out, PHASES, config={"k": 1}, print_fn=quiet(messages))
    assert run.finished and run.epochs_done == 4
    model = tiny_model(seed=3)
    before = model.get_weights()
    result = fit(run, model, data)
    assert result.trained_epochs == 0 and result.history == reference_result.history
    assert result.evaluation == reference_result.evaluation
    assert any("already finished" in m and "nothing to train" in m for m in messages)
    for x, y in zip(before, model.get_weights()):
        np.testing.assert_array_equal(x, y)


def test_other_settings_are_refused_unless_restarted(tmp_path, data):
    fit(T.Run(tmp_path, PHASES[:1], config={"model": "googlenet", "seed": 0},
              print_fn=quiet([])), tiny_model(), data, data_info={"source": "x"})
    with pytest.raises(T.RunMismatchError,
                       match=r"seed: 0 there, 1 now.*--restart"):
        T.Run(tmp_path, PHASES[:1], config={"model": "googlenet", "seed": 1})
    with pytest.raises(T.RunMismatchError, match="other phases"):
        T.Run(tmp_path, PHASES, config={"model": "googlenet", "seed": 0})
    with pytest.raises(T.RunMismatchError, match="other data"):
        fit(T.Run(tmp_path, PHASES[:1], config={"model": "googlenet", "seed": 0}),
            tiny_model(), data, data_info={"source": "y"})
    (tmp_path / "notes.txt").write_text("mine")
    run = T.Run(tmp_path, PHASES, config={"model": "googlenet", "seed": 1},
                restart=True, print_fn=quiet([]))
    assert run.epochs_done == 0 and not (tmp_path / "evaluation.json").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's files go
    assert fit(run, tiny_model(), data).trained_epochs == 4


def test_unreadable_state_is_a_clear_error(tmp_path):
    (tmp_path / T.STATE_FILE).write_text("{not json")
    with pytest.raises(T.RunMismatchError, match="not a readable run state.*--restart"):
        T.Run(tmp_path, PHASES)


def test_phase_validation():
    with pytest.raises(ValueError, match="learning_rate must be a positive"):
        T.Phase("a", 1, 0.0)
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad2'"):
        T.Phase("a", 1, 1e-3, optimizer="adagrad2")
    with pytest.raises(ValueError, match="trainable must be"):
        T.Phase("a", 1, 1e-3, trainable="body")
    with pytest.raises(ValueError, match="unique"):
        T.Run("unused", [T.Phase("a", 1, 1e-3), T.Phase("a", 1, 1e-4)])


# ------------------------------------------------------------------------ report

def test_classification_report_by_hand():
    labels = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 0, 1]
    probs = np.eye(3)[predicted] * 0.6 + 0.1
    report = T.classification_report(labels, probs, CLASSES)
    assert report["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    a, b, c = report["classes"]
    assert (a["precision"], a["recall"], a["support"]) == (2 / 3, 2 / 3, 3)
    assert (b["precision"], b["recall"]) == (1 / 3, 1 / 2)
    assert b["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)  # never predicted
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert "top5_accuracy" not in report  # only three classes


def test_top5_accuracy_with_more_classes():
    rng = np.random.default_rng(0)
    probs = rng.random((50, 8))
    labels = rng.integers(0, 8, 50)
    report = T.classification_report(labels, probs, list("abcdefgh"))
    ranks = (probs > probs[np.arange(50), labels][:, None]).sum(axis=1)
    assert report["top5_accuracy"] == pytest.approx(np.mean(ranks < 5))
    assert "top-5 accuracy" in T.evaluation_markdown(report)
