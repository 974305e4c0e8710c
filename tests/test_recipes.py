"""The transfer-learning recipes end to end, in process, offline, at tiny sizes.

recipes/freeze_stem.py, replace_head.py, export_serving.py, visualize_features.py and
compare_models.py each run with ``KERAS_INCEPTION_OFFLINE=1`` and an empty weights
cache, so the named weights cannot be had and the one-line fallback to random
initialisation (and, without data, to the generated dataset) is what runs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import pathlib
import re
from unittest import mock

import keras
import numpy as np
import pytest
from PIL import Image

import keras_inception
from keras_inception import accelerate, data, preprocessing
from keras_inception.manifest import load_manifest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ("freeze_stem", "replace_head", "export_serving", "visualize_features",
           "compare_models")
WEIGHTS_FALLBACK = "random initialisation"
CHANNELS_LAST = keras.config.image_data_format() == "channels_last"
# The quickest way through a couple of tiny batches: TensorFlow spends seconds
# tracing a graph (eager is faster), JAX compiles every op when eager (a jitted
# step is faster and stays in the compilation cache), PyTorch is eager either way.
FIT_FAST = ["--run-eagerly"] if keras.backend.backend() == "tensorflow" else []


@functools.lru_cache(maxsize=None)
def recipe(name):
    spec = importlib.util.spec_from_file_location(f"{name}_recipe",
                                                  ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """No network, an empty weights cache and an empty tfds folder."""
    root = tmp_path_factory.mktemp("offline")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_INCEPTION_OFFLINE", "1")
        patch.setenv("KERAS_INCEPTION_CACHE", str(root / "cache"))
        patch.setenv("TFDS_DATA_DIR", str(root / "tfds"))
        yield


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """A tiny image folder: 2 classes of 2 images, 32 px."""
    return data.synthetic_flowers(tmp_path_factory.mktemp("flowers"), classes=2,
                                  per_class=2, size=32)


def run(name, argv, capsys):
    """(exit status, stdout, stderr) of a recipe's main(argv)."""
    code = recipe(name).main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fallback_lines(out):
    """The lines saying that named weights could not be had."""
    return [line for line in out.splitlines() if WEIGHTS_FALLBACK in line.lower()]


def ends_with_out_dir(out, out_dir):
    """The last line says where the results are."""
    return out.rstrip().splitlines()[-1].endswith(str(out_dir))


def one_error_line(err, *expected):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("name", RECIPES)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe(name).main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}.py") and "--out-dir" in out


@pytest.mark.parametrize("name, argv", [
    ("freeze_stem", ["--model", "resnet50"]),
    ("replace_head", ["--model", "resnet50", "--classes", "2"]),
    ("export_serving", ["--model", "resnet50"]),
    ("visualize_features", ["--model", "resnet50"]),
    ("compare_models", ["--models", "googlenet,resnet50"]),
])
def test_unknown_model_is_one_clear_line(name, argv, tmp_path, capsys):
    code, out, err = run(name, argv + ["--out-dir", tmp_path], capsys)
    assert code == 2 and out == ""
    one_error_line(err, "Unknown model 'resnet50'", "Known models: googlenet")


def test_bad_arguments_are_one_clear_line(tmp_path, capsys):
    cases = [
        ("freeze_stem", ["--up-to", "mixed_9"], "googlenet has no stage 'mixed_9'"),
        ("visualize_features", ["--stage", "mixed_9"], "its stages are: conv, stem"),
        ("replace_head", ["--classes", "0"], "--classes must be a positive number"),
        ("compare_models", ["--models", "googlenet,xception", "--size", "5"],
         "below the minimum input side of xception (7)"),
        ("export_serving", ["--model", tmp_path / "missing.keras"], "missing.keras"),
    ]
    for name, argv, expected in cases:
        code, out, err = run(name, argv + ["--out-dir", tmp_path], capsys)
        assert code == 2, (name, argv, out, err)
        one_error_line(err, expected)


def test_wrong_classes_for_the_data(two_classes, tmp_path, capsys):
    # The data are read first: a --classes that does not fit fails before any build.
    code, _, err = run("replace_head", ["--classes", "3", "--epochs", "1", "--data-dir",
                                        two_classes, "--out-dir", tmp_path], capsys)
    assert code == 2
    one_error_line(err, "--classes 3 does not fit the data", "has 2 classes",
                   "Pass --classes 2")


@pytest.fixture(scope="module")
def googlenet_weights(tmp_path_factory):
    """A GoogLeNet weight file with deterministic values, channels-last, 32 px."""
    from keras_inception.testing import deterministic_weights

    if not CHANNELS_LAST:
        pytest.skip("the weight file is channels-last")
    model = keras_inception.GoogLeNet(input_shape=(32, 32, 3))
    deterministic_weights(model)
    path = tmp_path_factory.mktemp("weights") / "googlenet.weights.h5"
    model.save_weights(path)
    return model, str(path)


def test_freeze_stem(googlenet_weights, tmp_path, capsys):
    original, weights = googlenet_weights
    out_dir = tmp_path / "out"
    with mock.patch.object(accelerate, "keep_freed_memory",
                           wraps=accelerate.keep_freed_memory) as keep:
        code, out, err = run("freeze_stem", [
            "--model", "googlenet", "--weights", weights, "--size", 32,
            "--synthetic-per-class", 2, "--batch-size", 8, "--epochs", 1,
            "--out-dir", out_dir, *FIT_FAST], capsys)
    assert code == 0, err
    keep.assert_called_once_with()  # a training process keeps its freed memory
    # No --data-dir and no tf_flowers offline: the generated dataset, said in one line.
    fallback = [line for line in out.splitlines() if "synthetic-flowers" in line]
    assert fallback and "tf_flowers could not be loaded" in fallback[0]
    assert "googlenet: what trains, by stage" in out
    assert "bit-identical, BN statistics unchanged" in out
    assert ends_with_out_dir(out, out_dir)

    record = json.loads((out_dir / "freeze_stem.json").read_text())
    stem_end = keras_inception.get_model_info("googlenet").stage("stem").layer
    assert record["frozen_layers"][-1] == stem_end
    assert record["frozen_unchanged"]
    assert record["frozen_before"] == record["frozen_after"]
    assert record["frozen_before"]["bn_statistics"] > 0
    assert record["trainable_before"] != record["trainable_after"]
    assert len(record["history"]["loss"]) == 1

    # Independently: the saved model's frozen tensors equal the weight file's,
    # while a trained BatchNormalization's moving statistics moved.
    trained = keras.saving.load_model(out_dir / "model.keras")
    assert trained.output_shape == (None, 5)
    for name in record["frozen_layers"]:
        assert len(original.get_layer(name).weights) == len(
            trained.get_layer(name).weights)
        for before, after in zip(original.get_layer(name).weights,
                                 trained.get_layer(name).weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(before),
                                          keras.ops.convert_to_numpy(after))
    bn = "mixed_3b_branch_0_conv2d_0a_1x1_bn"
    assert bn not in record["frozen_layers"]
    moving = [w for w in trained.get_layer(bn).weights if w.path.endswith("moving_mean")]
    original_mean = [w for w in original.get_layer(bn).weights
                     if w.path.endswith("moving_mean")]
    assert not np.array_equal(keras.ops.convert_to_numpy(moving[0]),
                              keras.ops.convert_to_numpy(original_mean[0]))


def test_replace_head_and_train_it(two_classes, tmp_path, capsys):
    out_dir = tmp_path / "out"
    with mock.patch.object(accelerate, "keep_freed_memory",
                           wraps=accelerate.keep_freed_memory) as keep:
        code, out, err = run("replace_head", [
            "--model", "googlenet", "--size", 32, "--classes", 2, "--pooling", "max",
            "--dropout", 0.3, "--activation", "linear", "--epochs", 1,
            "--data-dir", two_classes, "--batch-size", 4,
            "--out-dir", out_dir, *FIT_FAST], capsys)
    assert code == 0, err
    keep.assert_called_once_with()  # a training process keeps its freed memory
    assert len(fallback_lines(out)) == 1
    model = keras.saving.load_model(out_dir / "model.keras")
    features = model.get_layer("predictions").kernel.shape[0]
    for classes, activation in ((1000, "softmax"), (2, "linear")):
        params = f"{(features + 1) * classes:,}"
        assert re.search(rf"predictions\s+Dense\s+{params} params, {classes} units, "
                         rf"{activation}", out), (classes, out)
    assert "Training the new head (max_pool, dropout, predictions)" in out
    assert ends_with_out_dir(out, out_dir)

    assert model.output_shape == (None, 2)
    assert model.get_layer("dropout").rate == pytest.approx(0.3)
    assert model.get_layer("predictions").activation.__name__ == "linear"
    assert isinstance(model.get_layer("max_pool"), keras.layers.GlobalMaxPooling2D)
    record = json.loads((out_dir / "replace_head.json").read_text())
    total = load_manifest("googlenet")["params"]["total"]
    assert record["before"]["total_params"] == total
    # Only the dense layer's size changed: 1000 classes -> 2.
    assert record["after"]["total_params"] == total - 1000 * (features + 1) + 2 * (
        features + 1)
    assert record["class_names"] == list(data.image_folder(two_classes).class_names)
    assert len(record["history"]["loss"]) == 1


def test_visualize_features_grid(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run("visualize_features", [
        "--model", "googlenet", "--size", 64, "--channels", 10, "--scale", 2,
        "--out-dir", out_dir], capsys)
    assert code == 0, err
    assert "No --image given: using a generated flower image" in out
    assert ends_with_out_dir(out, out_dir)
    assert len(fallback_lines(out)) == 1
    record = json.loads((out_dir / "features.json").read_text())
    info = keras_inception.get_model_info("googlenet")
    first = [s.name for s in info.stages].index("stem") + 1
    assert record["stage"] == info.stages[first].name
    assert record["layer"] == info.stages[first].layer
    side = 64 // info.stages[first].stride
    assert record["feature_shape"][:2] == [side, side]
    assert len(set(record["channels"])) == 10
    cols = math.ceil(math.sqrt(10))
    rows = math.ceil(10 / cols)
    tile = side * 2
    gap = record["gap"]
    with Image.open(out_dir / "feature_grid.png") as grid:
        assert grid.size == (cols * tile + (cols + 1) * gap,
                             rows * tile + (rows + 1) * gap)
        pixels = np.asarray(grid.convert("RGB"))
    assert (pixels[:gap] == 255).all() and (pixels[:, :gap] == 255).all()
    # Each tile is normalised to its own range: not a constant colour.
    first_tile = pixels[gap:gap + tile, gap:gap + tile]
    assert len(np.unique(first_tile.reshape(-1, 3), axis=0)) > 1
    with Image.open(out_dir / "input.png") as image:
        assert image.size == (64, 64)


def test_visualize_any_layer_of_xception(tmp_path, capsys):
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
                    ).save(image)
    code, out, err = run("visualize_features", [
        "--model", "xception", "--weights", "none", "--size", 32, "--image", image,
        "--layer", "block2_sepconv2_bn", "--channels", 300, "--scale", 1,
        "--out-dir", tmp_path / "out"], capsys)
    assert code == 0, err
    assert not fallback_lines(out)  # none asked for: nothing to fall back from
    record = json.loads((tmp_path / "out" / "features.json").read_text())
    assert record["layer"] == "block2_sepconv2_bn" and record["stage"] is None
    channels = record["feature_shape"][2]
    assert len(record["channels"]) == min(300, channels)  # at most all channels


def parse_markdown_table(lines):
    """Rows of the first markdown table in ``lines`` as dicts by header."""
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_compare_models(tmp_path, capsys):
    out_dir = tmp_path / "out"
    models = ["googlenet", "xception"]
    code, out, err = run("compare_models", [
        "--models", ",".join(models), "--size", 32, "--generated", 1,
        "--batch-size", 2, "--repeats", 1, "--out-dir", out_dir], capsys)
    assert code == 0, err
    assert ends_with_out_dir(out, out_dir)
    for name in models:
        assert any(f"weights of {name} " in line for line in fallback_lines(out)), name

    markdown = (out_dir / "comparison.md").read_text().splitlines()
    table = parse_markdown_table(markdown)
    assert [row["model"] for row in table] == models
    speeds = [float(row["images/s"]) for row in table]
    params = [int(row["params"].replace(",", "")) for row in table]
    assert params == [load_manifest(m)["params"]["total"] for m in models]
    assert all(s > 0 for s in speeds)
    for row, speed, count in zip(table, speeds, params):
        assert row["weights"] == "random" and row["input"] == "32"
        assert float(row["params ratio"]) == pytest.approx(count / params[0], abs=0.006)
        assert float(row["speed ratio"]) == pytest.approx(speed / speeds[0], rel=0.02,
                                                          abs=0.006)

    record = json.loads((out_dir / "comparison.json").read_text())
    assert record["reference"] == "googlenet" and len(record["images"]) == 1
    names = {name for _, name in preprocessing.imagenet_classes()}
    for model in record["models"]:
        (predictions,) = model["predictions"].values()
        assert len(predictions) == 5
        scores = [score for _, _, score in predictions]
        assert scores == sorted(scores, reverse=True)
        assert {name for _, name, _ in predictions} <= names
    # The per-image table has one column per model and five ranks.
    image_table = parse_markdown_table(markdown[markdown.index(
        f"## {record['images'][0]}"):])
    assert [row["rank"] for row in image_table] == ["1", "2", "3", "4", "5"]
    assert list(image_table[0])[1:] == models


def test_export_serving(tmp_path, capsys):
    tf = pytest.importorskip("tensorflow")
    out_dir = tmp_path / "out"
    # ONNX through the TensorFlow-backend process is export.py's to test; here it
    # runs where it is in process.
    onnx = keras.backend.backend() == "tensorflow"
    code, out, err = run("export_serving", [
        "--model", "googlenet", "--size", 32, "--name", "tiny", "--version", 3,
        "--out-dir", out_dir] + ([] if onnx else ["--no-onnx"]), capsys)
    assert code == 0, err
    assert len(fallback_lines(out)) == 1
    assert "signature 'serving_default'" in out and "signature 'serve_bytes'" in out
    base = out_dir / "serving" / "tiny"
    assert f"--mount type=bind,source={base},target=/models/tiny" in out
    assert "-e MODEL_NAME=tiny -t tensorflow/serving" in out
    assert ends_with_out_dir(out, out_dir)

    record = json.loads((out_dir / "export.json").read_text())
    assert record["max_abs_diff"]["saved_model"] <= 1e-4
    assert ("onnx" in record["max_abs_diff"]) == onnx
    assert (out_dir / "tiny.onnx").exists() == onnx
    # The SavedModel loads and answers like the exported .keras model.
    loaded = tf.saved_model.load(str(out_dir / "serving" / "tiny" / "3"))
    assert {"serving_default", "serve_bytes"} <= set(loaded.signatures)
    image = preprocessing.load_image(record["check_image"], 32,
                                     data_format="channels_last")[None]
    served = loaded.signatures["serving_default"](image=tf.constant(image))
    model = keras.saving.load_model(out_dir / "tiny.keras")
    x = preprocessing.preprocess_input(image, "inception", "channels_last")
    if not CHANNELS_LAST:
        x = x.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               model.predict(x, verbose=0), atol=1e-5)
    assert served["class_name"].numpy()[0].decode() in {
        name for _, name in preprocessing.imagenet_classes()}

    # Exporting the .keras file again to the same version is refused, in one line.
    code, out, err = run("export_serving", [
        "--model", out_dir / "tiny.keras", "--version", 3, "--no-onnx",
        "--out-dir", out_dir], capsys)
    assert code == 2
    one_error_line(err, "already exists", "version=4")
