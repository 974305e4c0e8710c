"""Preprocessing modes, ImageNet class names, decode_predictions and load_image."""

from __future__ import annotations

import hashlib
import json
import types

import keras
import numpy as np
import pytest
from PIL import Image

from keras_inception import preprocessing as P

TORCH_MEAN = [0.485, 0.456, 0.406]
TORCH_STD = [0.229, 0.224, 0.225]
CAFFE_BGR_MEAN = [103.939, 116.779, 123.68]


def hand_preprocess(x, mode, channels_first):
    """Pixel by pixel, channel by channel, in float64: the definition of each mode."""
    img = np.asarray(x, np.float64)
    if channels_first:
        img = np.moveaxis(img, -3, -1)
    out = np.empty_like(img)
    for c in range(3):
        if mode == "inception":
            out[..., c] = img[..., c] / 127.5 - 1.0
        elif mode == "torch":
            out[..., c] = (img[..., c] / 255.0 - TORCH_MEAN[c]) / TORCH_STD[c]
        else:  # caffe: output channel c is input channel 2 - c (BGR), minus its mean
            out[..., c] = img[..., 2 - c] - CAFFE_BGR_MEAN[c]
    return np.moveaxis(out, -1, -3) if channels_first else out


def images(channels_first, dtype="uint8"):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 5, 4, 3)).astype(dtype)
    return np.ascontiguousarray(np.moveaxis(x, -1, 1)) if channels_first else x


# -- preprocess_input ------------------------------------------------------------

@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("mode", P.MODES)
def test_numpy_matches_hand_computation(mode, data_format):
    first = data_format == "channels_first"
    for dtype in ("uint8", "float32", "float64"):
        x = images(first, dtype)
        before = x.copy()
        y = P.preprocess_input(x, mode, data_format=data_format)
        assert isinstance(y, np.ndarray) and y.dtype == np.float32
        assert y.shape == x.shape
        np.testing.assert_allclose(y, hand_preprocess(x, mode, first), rtol=1e-6,
                                   atol=1e-4)
        np.testing.assert_array_equal(x, before)  # the input is never written to


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("mode", P.MODES)
def test_backend_tensors(mode, data_format):
    first = data_format == "channels_first"
    x = images(first, "float32")
    tensor = keras.ops.convert_to_tensor(x)
    y = P.preprocess_input(tensor, mode, data_format=data_format)
    assert keras.ops.is_tensor(y)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y),
                               hand_preprocess(x, mode, first), rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tensor), x)


def test_integer_tensor_and_single_image_and_lists():
    x = images(False)[0]  # (5, 4, 3), no batch axis
    y = P.preprocess_input(keras.ops.convert_to_tensor(x), "torch",
                           data_format="channels_last")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y),
                               hand_preprocess(x, "torch", False), atol=1e-5)
    np.testing.assert_allclose(
        P.preprocess_input(x.tolist(), "caffe", data_format="channels_last"),
        hand_preprocess(x, "caffe", False), atol=1e-4)


def test_symbolic_input_builds_into_a_model():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, P.preprocess_input(inputs, "torch",
                                                   data_format="channels_last"))
    x = images(False, "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)),
                               hand_preprocess(x, "torch", False), atol=1e-5)


def test_default_data_format_is_keras_config():
    previous = keras.config.image_data_format()
    try:
        for data_format in ("channels_last", "channels_first"):
            keras.config.set_image_data_format(data_format)
            x = images(data_format == "channels_first")
            np.testing.assert_array_equal(
                P.preprocess_input(x, "caffe"),
                P.preprocess_input(x, "caffe", data_format=data_format))
    finally:
        keras.config.set_image_data_format(previous)


def test_errors():
    x = images(False)
    with pytest.raises(ValueError, match="inception, torch, caffe"):
        P.preprocess_input(x, "tf")
    with pytest.raises(ValueError, match=r"3 channels on the last axis.*\(2, 5, 4, 4\)"):
        P.preprocess_input(np.zeros((2, 5, 4, 4)), data_format="channels_last")
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, height, width\)"):
        P.preprocess_input(x, data_format="channels_first")
    with pytest.raises(ValueError, match="data_format"):
        P.preprocess_input(x, data_format="NHWC")


# -- preprocessing_for -----------------------------------------------------------

def tiny_model(name):
    inputs = keras.Input((4, 4, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs), name=name)


def test_preprocessing_for_modes_and_names():
    for mode in P.MODES:
        assert P.preprocessing_for(mode) == mode
    for name in ("googlenet", "inception_v1", "Inception-V3", "xception",
                 "inception_resnet_v1"):
        assert P.preprocessing_for(name) == "inception"
    with pytest.raises(ValueError, match="neither a preprocessing mode.*googlenet"):
        P.preprocessing_for("resnet50")
    with pytest.raises(TypeError, match="keras.Model"):
        P.preprocessing_for(3)


def test_preprocessing_for_models_and_weight_entries():
    assert P.preprocessing_for(tiny_model("inception_v4")) == "inception"
    stranger = tiny_model("my_net")
    with pytest.raises(ValueError, match="my_net.*inception, torch, caffe"):
        P.preprocessing_for(stranger)
    assert P.preprocessing_for(P.attach_preprocessing(stranger, "caffe")) == "caffe"
    assert P.preprocessing_for(P.attach_preprocessing(tiny_model("googlenet"),
                                                      "torch")) == "torch"
    with pytest.raises(ValueError, match="Unknown preprocessing mode"):
        P.attach_preprocessing(stranger, "bgr")
    # A weights-registry entry wins, as a mapping or as an object.
    assert P.preprocessing_for("googlenet", weights_entry={"preprocessing": "torch"}) \
        == "torch"
    entry = types.SimpleNamespace(preprocessing="caffe", url="file://x")
    assert P.preprocessing_for(tiny_model("xception"), weights_entry=entry) == "caffe"
    with pytest.raises(ValueError, match="no 'preprocessing' field"):
        P.preprocessing_for("googlenet", weights_entry={"url": "x"})
    with pytest.raises(ValueError, match="Unknown preprocessing mode"):
        P.preprocessing_for("googlenet", weights_entry={"preprocessing": "tf"})


# -- class names and decode_predictions ------------------------------------------

def test_label_file():
    classes = P.imagenet_classes()
    assert len(classes) == 1000
    wnids = [w for w, _ in classes]
    assert len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert all(w.startswith("n") and len(w) == 9 for w in wnids)
    assert classes[0] == ("n01440764", "tench")
    assert classes[207] == ("n02099601", "golden_retriever")
    assert classes[281] == ("n02123045", "tabby")
    assert classes[409] == ("n02708093", "analog_clock")
    assert classes[999] == ("n15075141", "toilet_tissue")
    # Byte for byte the content of Keras' imagenet_class_index.json, whose MD5
    # keras.applications checks on download.
    index = {str(i): list(pair) for i, pair in enumerate(classes)}
    assert hashlib.md5(json.dumps(index).encode()).hexdigest() == \
        "c2c37ea517e94d9795004a39431a14cb"
    slim = P.imagenet_classes(1001)
    assert slim[0] == ("background", "background") and slim[1:] == classes
    classes.append(("x", "y"))  # the caller's copy; the cache stays intact
    assert len(P.imagenet_classes()) == 1000
    with pytest.raises(ValueError, match="1000 classes.*1001"):
        P.imagenet_classes(10)


def test_decode_1000_and_tensor_input():
    preds = np.zeros((2, 1000), np.float32)
    preds[0, [0, 999, 207]] = [0.5, 0.3, 0.2]
    preds[1, 281] = 1.0
    decoded = P.decode_predictions(keras.ops.convert_to_tensor(preds), top=3)
    assert [(w, n) for w, n, _ in decoded[0]] == [
        ("n01440764", "tench"), ("n15075141", "toilet_tissue"),
        ("n02099601", "golden_retriever")]
    np.testing.assert_allclose([s for *_, s in decoded[0]], [0.5, 0.3, 0.2])
    assert all(isinstance(s, float) for *_, s in decoded[0])
    assert decoded[1][0] == ("n02123045", "tabby", 1.0)
    # Ties keep column order: the zeros follow the winner in index order.
    assert [w for w, *_ in decoded[1][1:]] == ["n01440764", "n01443537"]


def test_decode_1001_background():
    preds = np.zeros((1, 1001))
    preds[0, 0], preds[0, 1], preds[0, 1000] = 0.6, 0.3, 0.1
    assert P.decode_predictions(preds, top=3) == [[
        ("background", "background", 0.6), ("n01440764", "tench", 0.3),
        ("n15075141", "toilet_tissue", 0.1)]]


def test_decode_custom_classes_and_errors():
    preds = np.array([[0.1, 0.7, 0.2]])
    assert P.decode_predictions(preds, top=5, classes=["cat", "dog", "eel"]) == [[
        ("dog", "dog", 0.7), ("eel", "eel", 0.2), ("cat", "cat", 0.1)]]
    assert P.decode_predictions(preds, top=1, classes=[("c", "cat"), ("d", "dog"),
                                                       ("e", "eel")]) == [
        [("d", "dog", 0.7)]]
    with pytest.raises(ValueError, match=r"1000 or 1001 columns.*\(1, 3\).*classes="):
        P.decode_predictions(preds)
    with pytest.raises(ValueError, match="2 class names for predictions with 3"):
        P.decode_predictions(preds, classes=["a", "b"])
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        P.decode_predictions(np.zeros(1000))
    with pytest.raises(ValueError, match="top must be a positive integer"):
        P.decode_predictions(np.zeros((1, 1000)), top=0)


# -- load_image ------------------------------------------------------------------

def write_marked_image(path):
    """Black 300x200 image with a red 100x100 square in its center (x 100..200,
    y 50..150)."""
    pixels = np.zeros((200, 300, 3), np.uint8)
    pixels[50:150, 100:200, 0] = 255
    Image.fromarray(pixels).save(path)
    return path


def test_load_image_crop_geometry(tmp_path):
    path = write_marked_image(tmp_path / "marked.png")
    # Half of the shorter side (200) is exactly the red square.
    red = P.load_image(path, 10, crop_fraction=0.5, interpolation="nearest",
                       data_format="channels_last")
    assert red.shape == (10, 10, 3) and red.dtype == np.float32
    np.testing.assert_array_equal(red[..., 0], 255.0)
    # The whole central 200x200 square: the red square fills its middle half.
    full = P.load_image(path, 20, crop_fraction=1.0, interpolation="nearest",
                        data_format="channels_last")[..., 0]
    np.testing.assert_array_equal(full[5:15, 5:15], 255.0)
    assert full.sum() == 255.0 * 100
    # No crop: the 300x200 image squeezed to 30x20 (width x height) keeps the
    # square at a third of the width and half of the height.
    squeezed = P.load_image(path, (20, 30), crop_fraction=None, interpolation="nearest",
                            data_format="channels_last")[..., 0]
    assert squeezed.shape == (20, 30)
    np.testing.assert_array_equal(np.argwhere(squeezed[:, 15] == 255)[[0, -1], 0],
                                  [5, 14])
    np.testing.assert_array_equal(np.argwhere(squeezed[10] == 255)[[0, -1], 0], [10, 19])
    # The default (0.875, bilinear) keeps the same center, in 0..255.
    default = P.load_image(path, 16, data_format="channels_last")
    assert 0.0 <= default.min() and default.max() <= 255.0
    assert default[8, 8, 0] == 255.0 and default[0, 0, 0] == 0.0


def test_load_image_gradient_matches_timm_crop(tmp_path):
    # Horizontal ramp 0..255 on a 256x128 image: crop 0.875 of 128 = 112 centered at
    # x = 128, i.e. x in [72, 184); nearest sampling at 14 px reads x = 72 + 8k + 4.
    pixels = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (128, 256, 3))
    path = tmp_path / "ramp.png"
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)
    row = P.load_image(path, 14, interpolation="nearest",
                       data_format="channels_last")[7, :, 0]
    np.testing.assert_array_equal(row, 72 + 8 * np.arange(14) + 4)


def test_load_image_channels_first_and_errors(tmp_path):
    path = write_marked_image(tmp_path / "marked.png")
    last = P.load_image(path, 8, data_format="channels_last")
    first = P.load_image(path, 8, data_format="channels_first")
    np.testing.assert_array_equal(first, last.transpose(2, 0, 1))
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="Cannot read the image.*notes.jpg"):
        P.load_image(bad, 8)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        P.load_image(tmp_path / "missing.png", 8)
    with pytest.raises(ValueError, match="interpolation"):
        P.load_image(path, 8, interpolation="cubic")
    with pytest.raises(ValueError, match="crop_fraction"):
        P.load_image(path, 8, crop_fraction=1.5)
