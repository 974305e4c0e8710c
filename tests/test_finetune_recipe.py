"""recipes/finetune_flowers.py and train_with_aux_losses.py end to end, at tiny sizes.

GoogLeNet at 32 px, a few images per class, one or two epochs per phase, batch 4:
offline (generated dataset, random initialisation, each said in one line), on an
image folder (killed with SIGKILL in the middle of the run, then resumed), on
tfds' mocked tf_flowers, and with auxiliary losses. Every run of finetune_flowers
has five classes and the same batch shapes, so JAX's persistent compilation cache
(scripts/test.sh sets one) compiles each step once for all of them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from unittest import mock

import keras
import numpy as np
import pytest
from PIL import Image

from keras_inception import accelerate, data, training

ROOT = pathlib.Path(__file__).resolve().parents[1]
# One epoch per phase; 4 images per class: 3 to train, 1 to validate.
TINY = ["--model", "googlenet", "--image-size", "32", "--batch-size", "4",
        "--epochs-head", "1", "--epochs-finetune", "1", "--limit", "4",
        "--synthetic-per-class", "4", "--verbose", "2"]
EPOCHS = 2
# On TensorFlow, tracing the steps takes longer than running a few tiny batches
# eagerly: the runs that are not about the traced path run eagerly there (the
# offline run and the killed process keep tf.function).
EAGER = ["--run-eagerly"] if keras.backend.backend() == "tensorflow" else []
OUTPUTS = ("model.keras", "model_info.json", "history.csv", "history.json",
           "training_curves.png", "confusion_matrix.png", "confusion_matrix.csv",
           "evaluation.md", "evaluation.json", "predictions.npz")


@functools.lru_cache(maxsize=None)
def recipe(name):
    spec = importlib.util.spec_from_file_location(f"{name}_recipe",
                                                  ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """No network, an empty weights cache and an empty tfds folder."""
    root = tmp_path_factory.mktemp("offline")
    return {"KERAS_INCEPTION_OFFLINE": "1", "KERAS_INCEPTION_CACHE": str(root / "cache"),
            "TFDS_DATA_DIR": str(root / "tfds")}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, offline_env):
    """The default command's path, offline: fallback data and random weights."""
    out = tmp_path_factory.mktemp("offline_run")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in offline_env.items():
            patch.setenv(key, value)
        stdout, stderr, rc = capture(recipe("finetune_flowers").main,
                                     [*TINY, "--weights", "imagenet",
                                      "--out-dir", str(out)])
    return out, stdout, stderr, rc


def capture(fn, argv):
    """Runs a recipe's main in process; returns (stdout, stderr, status)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = fn(argv)
    return out.getvalue(), err.getvalue(), rc


def check_outputs(out, epochs=EPOCHS):
    """Every output is there and consistent; returns the history."""
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    for name in ("training_curves.png", "confusion_matrix.png"):
        with Image.open(out / name) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 100
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert [r["phase"] for r in history] == ["head"] * (epochs - 1) + ["top_stages"]
    # The evaluation is what the saved predictions say, recomputed here by hand.
    saved = np.load(out / "predictions.npz")
    labels, probs = saved["labels"], saved["probabilities"]
    names = [str(n) for n in saved["class_names"]]
    report = json.loads((out / "evaluation.json").read_text())
    predicted = probs.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(np.mean(predicted == labels))
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == len(labels)
    for i, row in enumerate(report["classes"]):
        assert row["name"] == names[i] and row["support"] == np.sum(labels == i)
        assert matrix[i, i] == np.sum((labels == i) & (predicted == i))
        assert row["recall"] == pytest.approx(matrix[i, i] / max(1, matrix[i].sum()))
        assert row["precision"] == pytest.approx(
            matrix[i, i] / matrix[:, i].sum() if matrix[:, i].sum() else 0.0)
    csv_rows = (out / "confusion_matrix.csv").read_text().splitlines()
    assert [int(v) for v in csv_rows[1].split(",")[1:]] == matrix[0].tolist()
    assert f"accuracy: {report['accuracy']:.4f}" in (out / "evaluation.md").read_text()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    info = json.loads((out / "model_info.json").read_text())
    assert info["class_names"] == names and info["image_size"] == 32
    model = keras.saving.load_model(out / "model.keras")
    assert model.output_shape == (None, len(names))
    return history


def test_offline_default_path_says_so_and_runs_end_to_end(offline_run):
    out, stdout, stderr, rc = offline_run
    assert rc == 0, stderr
    data_lines = [line for line in stdout.splitlines() if "could not be loaded" in line]
    assert len(data_lines) == 1 and "'synthetic-flowers'" in data_lines[0]
    assert str(out / "synthetic-flowers") in data_lines[0]
    weight_lines = [line for line in stdout.splitlines() if line.startswith("Weights:")]
    assert len(weight_lines) == 1
    assert "RANDOM initialisation" in weight_lines[0] and "'imagenet'" in weight_lines[0]
    assert "googlenet (random weights), 32x32 input" in stdout
    assert "what trains, by stage" in stdout  # the trainable printout of each phase
    assert f"Outputs are in {out}" in stdout
    check_outputs(out)


def test_mocked_tf_flowers(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=40):
        rc = recipe("finetune_flowers").main([*TINY, *EAGER, "--weights", "none",
                                              "--out-dir", str(out)])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    assert "data: tf_flowers, 5 classes, 15 training and 5 validation images" in stdout
    assert "could not be loaded" not in stdout
    check_outputs(out)
    names = json.loads((out / "model_info.json").read_text())["class_names"]
    assert names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]


def test_aux_losses_are_logged_and_the_main_head_saved(tmp_path, capsys):
    folder = data.synthetic_flowers(tmp_path / "images", classes=2, per_class=4, size=40)
    out = tmp_path / "run"
    # The head phase alone (it trains the auxiliary heads too): the two-phase path
    # is the same code as finetune_flowers'.
    with mock.patch.object(accelerate, "keep_freed_memory",
                           wraps=accelerate.keep_freed_memory) as keep:
        rc = recipe("train_with_aux_losses").main([
            *TINY, *EAGER, "--weights", "none", "--data-dir", folder, "--aux-weight",
            "0.5", "--epochs-finetune", "0", "--out-dir", str(out)])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    keep.assert_called_once_with()  # a training process keeps its freed memory
    # Keras' per-epoch log lines (verbose 2) show both auxiliary losses.
    assert any("aux1_loss" in line and "aux2_loss" in line and "logits_accuracy" in line
               for line in stdout.splitlines())
    history = json.loads((out / "history.json").read_text())
    for record in history:
        assert {"aux1_loss", "aux2_loss", "logits_loss", "val_aux1_loss"} <= set(record)
        # The total is the main loss plus 0.5 x each auxiliary loss.
        assert record["val_loss"] == pytest.approx(
            record["val_logits_loss"] + 0.5 * (record["val_aux1_loss"]
                                               + record["val_aux2_loss"]), rel=1e-4)
    model = keras.saving.load_model(out / "model.keras")
    assert not isinstance(model.output, dict) and model.output_shape == (None, 2)
    assert not any(layer.name.startswith("aux") for layer in model.layers)
    info = json.loads((out / "model_info.json").read_text())
    assert info["aux_heads"] == ["aux1", "aux2"]


def test_killed_run_resumes_without_losing_epochs(offline_run, offline_env, tmp_path):
    """On an image folder (--data-dir): killed after its first checkpoint, resumed."""
    reference = offline_run[0]
    # Five classes as in the reference run: the same shapes, so JAX's compilation
    # cache (scripts/test.sh sets one) serves both.
    folder = data.synthetic_flowers(tmp_path / "images", classes=5, per_class=4, size=40)
    out = tmp_path / "run"
    argv = [*TINY, "--weights", "none", "--data-dir", folder, "--out-dir", str(out)]
    env = {**os.environ, **offline_env,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "killed.log"  # a file, not a pipe: a full pipe would block it
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "recipes" / "finetune_flowers.py"), *argv],
            env=env, stdout=sink, stderr=subprocess.STDOUT)
    state = out / training.STATE_FILE
    try:
        deadline = time.monotonic() + 240
        while not state.exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    # Killed, not finished (nor failed) on its own.
    assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    killed = json.loads(state.read_text())
    assert not killed["finished"] and 1 <= killed["epochs_done"] < EPOCHS
    assert not (out / "evaluation.json").exists()

    # The same command again: it goes on from the next epoch.
    stdout, stderr, rc = capture(recipe("finetune_flowers").main, [*argv, *EAGER])
    assert rc == 0, stderr
    assert "data: synthetic-flowers, 5 classes, 15 training and 5 validation" in stdout
    done = killed["epochs_done"]
    assert "Resuming from phase" in stdout and f"{done} of {EPOCHS} epochs" in stdout
    history = check_outputs(out)
    uninterrupted = json.loads((reference / "history.json").read_text())
    assert len(history) == len(uninterrupted) == EPOCHS
    assert [r["epoch"] for r in history] == [r["epoch"] for r in uninterrupted]
    # The epochs done before the kill are kept as they were logged.
    assert history[:done] == killed["history"]

    # Once more: a finished run trains nothing.
    stdout, stderr, rc = capture(recipe("finetune_flowers").main, argv)
    assert rc == 0 and "already finished" in stdout and "nothing to train" in stdout
    assert "Phase 'head'" not in stdout
    assert json.loads((out / "history.json").read_text()) == history

    # Other settings in the same folder: one clear line, exit status 2.
    stdout, stderr, rc = capture(recipe("finetune_flowers").main,
                                 [*argv, "--lr-head", "0.01"])
    assert rc == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1
    assert "other phases" in stderr and "--restart" in stderr


def test_user_errors_are_one_line(tmp_path):
    cases = [(["--model", "resnet50"], "Unknown model 'resnet50'"),
             (["--batch-size", "0"], "--batch-size must be at least 1"),
             (["--epochs-head", "-1"], "epochs must be an integer >= 0"),
             (["--data-dir", str(tmp_path / "missing")], "missing")]
    for extra, expected in cases:
        stdout, stderr, rc = capture(recipe("finetune_flowers").main,
                                     [*TINY, *extra, "--out-dir", str(tmp_path / "o")])
        assert rc == 2, (extra, stderr)
        assert len(stderr.strip().splitlines()) == 1 and expected in stderr, stderr


def test_help_states_the_defaults(capsys):
    for name in ("finetune_flowers", "train_with_aux_losses"):
        with pytest.raises(SystemExit) as exit_info:
            recipe(name).main(["--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        for option in ("--epochs-head", "--unfreeze", "--limit", "--restart", "--out-dir"):
            assert option in text
        assert "(default: 224" in text
