"""recipes/predict.py end to end, offline: generated images, deterministic weights."""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import keras
import numpy as np
import pytest
from PIL import Image

import keras_inception
from keras_inception import preprocessing as P
from keras_inception.testing import main_head, predict

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


@functools.lru_cache(maxsize=None)
def recipe():
    spec = importlib.util.spec_from_file_location("predict_recipe",
                                                  ROOT / "recipes" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    weights = root / "googlenet.weights.h5"
    # GoogLeNet's logits with deterministic weights, shared with the other tests.
    main_head("googlenet").save_weights(weights)
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("wide.png", (40, 56, 3)), ("tall.jpg", (64, 48, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name)
        paths.append(str(root / name))
    return {"weights": str(weights), "images": paths, "root": root}


def parse_table(text):
    """{image: [(wnid, name, score), ...]} from the script's output."""
    tables, current = {}, None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if not fields or fields[0] == "rank":
            continue
        if len(fields) == 1:
            current = tables.setdefault(fields[0], [])
        else:
            current.append((fields[2], fields[3], float(fields[1])))
    return tables


def test_predict_with_weight_file(files, capsys):
    if keras.config.image_data_format() != "channels_last":
        pytest.skip("the reference model is channels_last")
    rc = recipe().main([*files["images"], "--model", "googlenet",
                        "--weights", files["weights"], "--size", str(SIZE), "--top", "3"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.splitlines()[0].startswith(
        f"googlenet ({files['weights']} weights), {SIZE}x{SIZE} input, 'inception'")
    tables = parse_table(out)
    assert list(tables) == files["images"]
    # What the script prints is the model's top-3 on the same crop and scaling.
    x = np.stack([P.load_image(p, SIZE, data_format="channels_last")
                  for p in files["images"]])
    logits = predict(main_head("googlenet"), P.preprocess_input(x, "inception"))
    scores = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    for path, expected in zip(files["images"], P.decode_predictions(scores, top=3)):
        got = tables[path]
        assert [(w, n) for w, n, _ in got] == [(w, n) for w, n, _ in expected]
        np.testing.assert_allclose([s for *_, s in got], [s for *_, s in expected],
                                   atol=1e-4)


def test_random_weights_and_1001_classes(files, capsys):
    rc = recipe().main([files["images"][0], "--weights", "none", "--size", "16",
                        "--classes", "1001", "--top", "1001",
                        "--preprocessing", "torch"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "(random weights), 16x16 input, 'torch' preprocessing" in out
    rows = parse_table(out)[files["images"][0]]
    assert len(rows) == 1001
    assert ("background", "background") in [(w, n) for w, n, _ in rows]


def test_named_weights_offline_is_one_line(files, capsys, monkeypatch):
    def offline(*args, **kwargs):
        # What keras.utils.get_file raises when a download fails.
        raise Exception("URL fetch failure on https://example.invalid/w.h5: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras_inception, "create_model", offline)
    rc = recipe().main([files["images"][0], "--weights", "imagenet"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "could not get the 'imagenet' weights" in err
    assert "--weights PATH" in err and "Traceback" not in err


def test_named_weights_use_their_evaluation_transform(files, capsys, monkeypatch):
    pretrained = pytest.importorskip("keras_inception.pretrained")
    if not hasattr(pretrained, "get_weights_entry"):
        pytest.skip("no weights registry")
    entry = pretrained.get_weights_entry("googlenet", "imagenet")
    calls = []

    def fake_create_model(name, **kwargs):
        # Stands in for the download: a tiny model with the entry's classifier width.
        calls.append((name, kwargs))
        inputs = keras.Input(kwargs["input_shape"])
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        return keras.Model(inputs, keras.layers.Dense(entry.classes)(pooled))

    monkeypatch.setattr(keras_inception, "create_model", fake_create_model)
    rc = recipe().main([files["images"][0], "--weights", "imagenet", "--top", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    size = entry.input_size
    channels_last = keras.config.image_data_format() == "channels_last"
    assert calls == [("googlenet", {"weights": "imagenet", "input_shape": (
        (size, size, 3) if channels_last else (3, size, size))})]
    assert f"{size}x{size} input, '{entry.preprocessing}' preprocessing" in out
    assert len(parse_table(out)[files["images"][0]]) == 2


def test_user_errors_exit_2_with_one_line(files, capsys):
    bad = files["root"] / "notes.png"
    bad.write_text("not an image")
    cases = [
        ([str(bad)], "notes.png"),
        ([str(files["root"] / "missing.jpg")], "missing.jpg"),
        ([files["images"][0], "--model", "resnet50"], "Unknown model 'resnet50'"),
        ([files["images"][0], "--top", "0"], "--top must be at least 1"),
        ([files["images"][0], "--weights", str(files["root"] / "nope.h5"), "--size",
          "16"], "nope.h5"),
    ]
    for argv, expected in cases:
        assert recipe().main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1, err
        assert expected in err
