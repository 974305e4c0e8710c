"""Data-parallel training: keras_inception.distribute and --distribute.

The runs on several devices happen in fresh processes (the device count is fixed
when a backend starts): JAX with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``,
TensorFlow with 4 logical CPU devices (``distribute.simulate_cpu_devices``). Each
backend's pass runs its own engine once (tests/distributed_run.py); PyTorch, which
has no Keras engine, checks the error that says so.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_inception import distribute, training
from keras_inception.distribute import DataParallelPlan

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
DEVICES = 4
needs_engine = pytest.mark.skipif(BACKEND == "torch", reason="no Keras engine on torch")


# ------------------------------------------------------------------ unit tests

def test_learning_rate_scaling_rules():
    assert distribute.scale_learning_rate(1e-3, 16) == 1e-3
    assert distribute.scale_learning_rate(1e-3, 128, rule="linear") == pytest.approx(8e-3)
    assert distribute.scale_learning_rate(1e-3, 64, rule="sqrt",
                                          base_batch_size=16) == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="linear"):
        distribute.scale_learning_rate(1e-3, 64, rule="cubic")
    with pytest.raises(ValueError, match="batch_size"):
        distribute.scale_learning_rate(1e-3, 0, rule="linear")


def test_recipe_scales_both_phases_for_the_global_batch():
    import argparse

    parser = argparse.ArgumentParser()
    training.add_finetune_arguments(parser, model="googlenet", image_size=32, limit=4,
                                    unfreeze=1, out_dir="runs")
    args = parser.parse_args(["--batch-size", "64", "--lr-scaling", "linear",
                              "--lr-head", "1e-3", "--lr-finetune", "1e-4"])
    assert [p.learning_rate for p in training.finetune_phases(args)] == [
        pytest.approx(4e-3), pytest.approx(4e-4)]
    args = parser.parse_args(["--batch-size", "64"])  # default: as given
    assert [p.learning_rate for p in training.finetune_phases(args)] == [1e-3, 1e-4]


def test_plan_splits_the_global_batch_and_says_how():
    plan = DataParallelPlan("jax", "keras.distribution.DataParallel",
                            tuple(f"gpu:{i}" for i in range(4)), 2, 1, None)
    assert plan.per_replica_batch(32) == 8 and plan.per_process_batch(32) == 16
    text = plan.summary(32)
    assert "global batch 32 = 8 per device x 4 devices" in text
    assert "2 processes (this is process 1, feeding 16 images per step)" in text
    with pytest.raises(ValueError, match="multiple of 4.*--batch-size 28 or 32"):
        plan.per_replica_batch(30)
    with pytest.raises(ValueError, match="multiple of 4"):
        plan.per_replica_batch(2)


def test_tf_config_gives_the_workers_and_this_ones_index(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute._tf_workers() == (1, 0)
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    for task, index in (({"type": "chief", "index": 0}, 0),
                        ({"type": "worker", "index": 1}, 2)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert distribute._tf_workers() == (3, index)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute._tf_workers()


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch):
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self):
        return -(-len(self.x) // self.batch)

    def __getitem__(self, i):
        part = slice(i * self.batch, (i + 1) * self.batch)
        return self.x[part], self.y[part]


@pytest.mark.parametrize("aux", [False, True])
def test_padded_validation_gives_the_loss_and_accuracy_of_the_real_images(aux):
    """EvenBatches + weighted metrics: Keras' evaluate gives the exact means."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(11, 6)).astype("float32")
    y = rng.integers(0, 3, 11)
    inputs = keras.Input((6,))
    main = keras.layers.Dense(3, name="predictions")(inputs)
    outputs = ({"logits": main, "aux": keras.layers.Dense(3, name="aux")(inputs)}
               if aux else main)
    model = keras.Model(inputs, outputs)
    plain = _Batches(x, y, 4)  # 4 + 4 + 3 images
    padded = training.EvenBatches(plain, 4)
    assert [len(padded[i][0]) for i in range(len(padded))] == [4, 4, 4]
    model.compile(**training.compile_args(model, aux_weight=0.3, sample_weighted=True))
    got = model.evaluate(training._with_heads(padded, model), verbose=0,
                         return_dict=True)

    def cross_entropy(logits):
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(y)), y].mean())

    out = model.predict(x, verbose=0)
    heads = out if aux else {"logits": out}
    expected = {"loss": cross_entropy(heads["logits"])
                + (0.3 * cross_entropy(heads["aux"]) if aux else 0.0)}
    accuracy = float(np.mean(np.argmax(heads["logits"], axis=1) == y))
    if aux:
        expected.update(logits_loss=cross_entropy(heads["logits"]),
                        aux_loss=cross_entropy(heads["aux"]), logits_accuracy=accuracy)
    else:
        expected["accuracy"] = accuracy
    assert set(expected) <= set(got)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    labels, probs = training.predict_dataset(model, plain, verbose=0, pad_to=4)
    labels_ref, probs_ref = training.predict_dataset(model, plain, verbose=0)
    np.testing.assert_array_equal(labels, labels_ref)
    np.testing.assert_allclose(probs, probs_ref, rtol=1e-6, atol=1e-7)


def _images(root: pathlib.Path, classes=5, per_class=10, side=40):
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((side, side, 3)) * 60 + c * 40).astype("uint8")
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_process_shards_make_the_global_batch(tmp_path):
    from keras_inception import data as D

    # 15 images, global batch 8: a whole batch, then 7 images (4 + 3 per process).
    source = D.image_folder(_images(tmp_path / "images", classes=3, per_class=5))
    full = D.ImageDataset(source, batch_size=8, image_size=16, training=True, seed=3)
    parts = [D.ImageDataset(source, batch_size=8, image_size=16, training=True, seed=3,
                            shard=(i, 2)) for i in range(2)]
    for index in range(len(full)):
        x, y = full[index]
        np.testing.assert_array_equal(np.concatenate([p[index][1] for p in parts]), y)
    assert [len(p[1][1]) for p in parts] == [4, 3]
    # Both processes drop the incomplete global batch, so they take the same steps.
    assert [len(training.FullBatches(p)) for p in parts] == [1, 1]
    with pytest.raises(ValueError, match="multiple of count"):
        D.ImageDataset(source, batch_size=7, image_size=16, training=True, shard=(0, 2))


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch backend's answer")
def test_torch_says_what_is_not_supported_and_the_alternatives(capsys):
    with pytest.raises(distribute.DistributionUnsupported) as err:
        distribute.data_parallel()
    message = str(err.value)
    for needed in ("KERAS_BACKEND=jax", "KERAS_BACKEND=tensorflow",
                   "DistributedDataParallel", "keras.distribution supports JAX only"):
        assert needed in message
    parser_args = ["--distribute", "--out-dir", "unused"]
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "finetune_recipe", ROOT / "recipes" / "finetune_flowers.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    assert recipe.main(parser_args) == 2
    assert "not available on the PyTorch backend" in capsys.readouterr().err


@needs_engine
def test_one_device_plan_and_a_late_device_split():
    plan = distribute.data_parallel()
    with plan.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert plan.replicated(model) and plan.num_replicas == len(plan.devices) >= 1
    assert "Only one device is visible" in plan.summary(4)
    # This process started its backend with one CPU device: too late to split.
    with pytest.raises(distribute.DistributionUnsupported, match="before"):
        distribute.simulate_cpu_devices(3)


# -------------------------------------------- several devices, fresh processes

@pytest.mark.skipif(BACKEND != "jax", reason="XLA:CPU's collectives")
def test_simulated_jax_devices_give_collectives_time():
    """Simulated devices share cores: XLA:CPU waits 600 s, not 40, for all of them to
    reach a collective before it ends the process; a value the user set stays. JAX
    parses the flags when its backend starts: an unknown flag would abort there."""
    flag = "--xla_cpu_collective_call_terminate_timeout_seconds"
    code = ("import os, jax; from keras_inception import distribute; "
            "distribute.simulate_cpu_devices(2); print(len(jax.devices())); "
            "print(os.environ['XLA_FLAGS'])")
    for preset, wanted in [("", f"{flag}=600"), (f"{flag}=5", f"{flag}=5")]:
        env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS=preset,
                   TF_CPP_MIN_LOG_LEVEL="2")
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        devices, flags = run.stdout.strip().splitlines()[-2:]
        assert devices == "2" and flags.split().count(wanted) == 1
        assert flags.count(flag) == 1


def _driver(work, data, mode, *args):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    if BACKEND == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={DEVICES}").strip()
    log = work / f"{mode}.log"
    with open(log, "w") as out:
        process = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "distributed_run.py"), "--devices",
             str(DEVICES), "--data", str(data), "--work", str(work), "--mode", mode,
             *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work,
            timeout=900)
    return process.returncode, log.read_text()


def _killed_then_compared(tmp_path, *args):
    data = _images(tmp_path / "images")
    work = tmp_path / "work"
    work.mkdir()
    status, log = _driver(work, data, "kill", *args)
    assert status == -signal.SIGKILL, log[-3000:]
    status, log = _driver(work, data, "compare", *args)
    assert status == 0, log[-3000:]
    return json.loads((work / "report.json").read_text()), log


def _check_layouts(layouts):
    assert layouts["engine"] == {"jax": "keras.distribution.DataParallel",
                                 "tensorflow": "tf.distribute.MirroredStrategy"}[BACKEND]
    assert len(layouts["devices"]) == DEVICES
    # Every model variable and optimizer slot: one full copy on each device.
    assert layouts["replicated"]
    assert list(layouts["variables"]) == [",".join(layouts["devices"])]
    # A global batch of 8: 2 images (and 2 labels) per device, on distinct devices.
    for shards in (layouts["batch_shards"], layouts["label_shards"]):
        assert sorted(d for d, _ in shards) == sorted(layouts["devices"])
        assert [shape[0] for _, shape in shards] == [2] * DEVICES
    assert "built outside the data-parallel scope" in layouts["outside_scope_refused"]


@needs_engine
def test_data_parallel_training_equals_one_device_and_resumes_after_a_kill(tmp_path):
    """Same global batch on 4 devices and on 1: same weights; killed + resumed: same."""
    report, _ = _killed_then_compared(tmp_path, "--model", "tiny", "--image-size", "32",
                                      "--optimizer", "adam", "--learning-rate", "1e-3")
    _check_layouts(report["layouts"])
    assert report["killed_epochs_done"] == 2
    assert report["max_diff"]["parallel_vs_single"] < 1e-5, report["max_diff"]
    assert report["max_diff"]["resumed_vs_parallel"] < 1e-6, report["max_diff"]
    # Frozen layers stay as they were on any number of devices.
    assert report["stem_variables"] and all(report["stem_unchanged"].values())
    single, parallel = report["single"], report["parallel"]
    assert parallel["distribution"]["num_replicas"] == DEVICES
    assert single["distribution"] is None
    assert [r["epoch"] for r in parallel["history"]] == [1, 2, 3]
    for one, many in zip(single["history"], parallel["history"]):
        # Auxiliary losses, main metrics, validation (padded on 4 devices): equal.
        assert one.keys() == many.keys() and "val_aux_loss" in one
        for key in one:
            if isinstance(one[key], float):
                assert many[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    assert parallel["evaluation"]["accuracy"] == single["evaluation"]["accuracy"]
    assert report["resumed"]["history"] == parallel["history"]


@pytest.mark.skipif(BACKEND != "jax", reason="the recipe on DataParallel: JAX's pass")
def test_recipe_distribute_trains_googlenet_with_aux_heads_on_four_devices(tmp_path):
    """train_with_aux_losses.py --distribute --cpu-devices 4, killed and resumed."""
    report, log = _killed_then_compared(tmp_path, "--model", "googlenet",
                                        "--image-size", "64", "--optimizer", "sgd",
                                        "--learning-rate", "1e-4")
    _check_layouts(report["layouts"])
    assert ("Data parallel: keras.distribution.DataParallel on 4 devices (cpu:0, cpu:1, "
            "cpu:2, cpu:3), 1 process; global batch 8 = 2 per device x 4 devices") in log
    assert "Learning rates for the global batch of 8: head 0.0001, top_stages 0.0001" in log
    assert "Resuming from phase 'top_stages' (2/2) epoch 2/2" in log
    # Resumed after SIGKILL == uninterrupted, to the last bit of every variable.
    assert report["max_diff"]["resumed_vs_parallel"] == 0.0
    assert report["resumed"]["history"] == report["parallel"]["history"]
    history = report["parallel"]["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert {"aux1_loss", "aux2_loss", "logits_loss", "val_loss"} <= set(history[0])
    assert report["parallel"]["distribution"]["num_replicas"] == DEVICES
    assert report["stem_variables"] and all(report["stem_unchanged"].values())
