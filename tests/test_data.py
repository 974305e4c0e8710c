"""The data module: RandomResizedCrop, sources, split, ImageDataset, load_flowers."""

from __future__ import annotations

import io
import math
import os
import sys

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

from keras_inception import data as D
from keras_inception.preprocessing import load_image, preprocess_input

BACKEND = keras.backend.backend()
K = D._ATTEMPTS


# -- NumPy references ------------------------------------------------------------------

def ref_resize_box(image, box, out_h, out_w, interpolation="bilinear"):
    """Crop the integer box, then resize it (half-pixel centres, edges clamped)."""
    top, left, h, w = (int(v) for v in box)
    crop = np.asarray(image, np.float64)[top:top + h, left:left + w]

    def axis(size, extent):
        pos = (np.arange(size) + 0.5) * extent / size
        if interpolation == "nearest":
            i = np.minimum(np.floor(pos), extent - 1).astype(int)
            return i, i, np.zeros(size)
        pos = np.clip(pos - 0.5, 0, extent - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, extent - 1), pos - lo

    y0, y1, wy = axis(out_h, h)
    x0, x1, wx = axis(out_w, w)
    wx = wx[None, :, None]
    rows0 = crop[y0][:, x0] * (1 - wx) + crop[y0][:, x1] * wx
    rows1 = crop[y1][:, x0] * (1 - wx) + crop[y1][:, x1] * wx
    return rows0 * (1 - wy[:, None, None]) + rows1 * wy[:, None, None]


def ref_boxes(u, height, width, scale, ratio):
    """torchvision's RandomResizedCrop.get_params, vectorised, from the same draws."""
    u = np.asarray(u, np.float32)
    area = np.float32(height * width)
    target = area * (np.float32(scale[0]) + np.float32(scale[1] - scale[0]) * u[:, :K])
    lo, hi = np.float32(math.log(ratio[0])), np.float32(math.log(ratio[1]))
    aspect = np.exp(lo + (hi - lo) * u[:, K:2 * K])
    w = np.round(np.sqrt(target * aspect))
    h = np.round(np.sqrt(target / aspect))
    boxes = []
    for b in range(len(u)):
        for i in range(K):
            if 0 < w[b, i] <= width and 0 < h[b, i] <= height:
                bh, bw = h[b, i], w[b, i]
                top = min(np.floor(u[b, 2 * K] * (height - bh + 1)), height - bh)
                left = min(np.floor(u[b, 2 * K + 1] * (width - bw + 1)), width - bw)
                break
        else:  # central crop, aspect clipped into ratio
            in_ratio = width / height
            if in_ratio < ratio[0]:
                bw, bh = width, round(width / ratio[0])
            elif in_ratio > ratio[1]:
                bh, bw = height, round(height * ratio[1])
            else:
                bw, bh = width, height
            top, left = (height - bh) // 2, (width - bw) // 2
        boxes.append([top, left, bh, bw])
    return np.asarray(boxes, np.float64)


def layer_draws(batch, seed):
    """The uniform draws the layer makes from an integer seed."""
    return ops.convert_to_numpy(keras.random.uniform((batch, 2 * K + 2), seed=seed))


def images_nhwc(batch, h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype("float32")


# -- RandomResizedCrop -----------------------------------------------------------------

@pytest.mark.parametrize("out_size", [(8, 9), (25, 31)])  # downsampling, upsampling
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_sampler_matches_numpy_crop_then_resize(out_size, interpolation):
    x = images_nhwc(3, 20, 30)
    boxes = np.array([[3, 5, 10, 12], [0, 0, 20, 30], [19, 29, 1, 1]], "float32")
    layer = D.RandomResizedCrop(*out_size, interpolation=interpolation,
                                data_format="channels_last")
    out = ops.convert_to_numpy(layer.transform_images(x, {"boxes": boxes}))
    assert out.shape == (3, *out_size, 3) and out.dtype == np.float32
    for b in range(3):
        expected = ref_resize_box(x[b], boxes[b], *out_size, interpolation)
        np.testing.assert_allclose(out[b], expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize("out_size", [(7, 9), (24, 30)])
def test_sampler_matches_keras_resize_of_the_crop(out_size):
    # Keras' own bilinear resize (no antialias) of the cropped box, per backend.
    x = images_nhwc(1, 20, 30, seed=1)
    top, left, h, w = 4, 6, 12, 15
    layer = D.RandomResizedCrop(*out_size, data_format="channels_last")
    out = layer.transform_images(x, {"boxes": np.array([[top, left, h, w]], "float32")})
    crop = x[:, top:top + h, left:left + w]
    expected = keras.ops.image.resize(crop, out_size, interpolation="bilinear",
                                      antialias=False, data_format="channels_last")
    np.testing.assert_allclose(ops.convert_to_numpy(out), ops.convert_to_numpy(expected),
                               atol=1e-2, rtol=0)


def test_random_boxes_match_the_reference_when_forced():
    # scale=(s, s), ratio=(1, 1): a square of side round(sqrt(s * area)) at a
    # uniformly drawn integer position, from the layer's own draws.
    layer = D.RandomResizedCrop(16, 16, scale=(0.3, 0.3), ratio=(1, 1),
                                data_format="channels_last")
    x = images_nhwc(32, 40, 50)
    boxes = ops.convert_to_numpy(
        layer.get_random_transformation(x, seed=1234)["boxes"])
    expected = ref_boxes(layer_draws(32, 1234), 40, 50, (0.3, 0.3), (1, 1))
    np.testing.assert_array_equal(boxes, expected)
    assert np.all(boxes[:, 2] == round(math.sqrt(0.3 * 40 * 50)))
    assert len(np.unique(boxes[:, :2], axis=0)) > 16  # positions vary
    out = ops.convert_to_numpy(layer.transform_images(x, {"boxes": boxes}))
    for b in range(0, 32, 7):
        np.testing.assert_allclose(out[b], ref_resize_box(x[b], boxes[b], 16, 16),
                                   atol=2e-3, rtol=0)


def test_random_boxes_follow_torchvision_with_default_ranges():
    layer = D.RandomResizedCrop(8, 8, data_format="channels_last")
    x = np.zeros((256, 30, 45, 3), "float32")
    boxes = ops.convert_to_numpy(layer.get_random_transformation(x, seed=7)["boxes"])
    expected = ref_boxes(layer_draws(256, 7), 30, 45, layer.scale, layer.ratio)
    # Float rounding of exp may move a size across .5 on some platform: 1 pixel.
    assert np.abs(boxes - expected).max() <= 1
    assert np.mean(np.all(boxes == expected, axis=1)) > 0.97
    top, left, h, w = boxes.T
    assert np.all(boxes == np.round(boxes)) and np.all(h >= 1) and np.all(w >= 1)
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= 30) and np.all(left + w <= 45)
    fraction = h * w / (30 * 45)
    assert fraction.min() > 0.05 and fraction.max() <= 1.0
    assert fraction.std() > 0.1  # areas spread over the range


@pytest.mark.parametrize("shape,ratio", [((30, 30), (2.0, 2.0)), ((20, 60), (0.25, 0.5)),
                                         ((60, 20), (1.5, 2.0))])
def test_falls_back_to_a_central_crop_when_nothing_fits(shape, ratio):
    height, width = shape
    layer = D.RandomResizedCrop(8, 8, scale=(1.0, 1.0), ratio=ratio,
                                data_format="channels_last")
    x = images_nhwc(4, height, width)
    boxes = ops.convert_to_numpy(layer.get_random_transformation(x, seed=3)["boxes"])
    expected = ref_boxes(layer_draws(4, 3), height, width, (1.0, 1.0), ratio)
    np.testing.assert_array_equal(boxes, expected)
    assert (boxes[:, 2] < height).all() or (boxes[:, 3] < width).all()  # a real crop


def test_call_shapes_range_randomness_and_seed():
    x = images_nhwc(4, 24, 36)
    layer = D.RandomResizedCrop(12, 10, seed=5, data_format="channels_last")
    a = ops.convert_to_numpy(layer(x, training=True))
    b = ops.convert_to_numpy(layer(x, training=True))
    assert a.shape == (4, 12, 10, 3) and a.dtype == np.float32
    assert not np.allclose(a, b)  # a new draw at each call
    assert a.min() >= x.min() - 1e-3 and a.max() <= x.max() + 1e-3
    same_seed = D.RandomResizedCrop(12, 10, seed=5, data_format="channels_last")
    np.testing.assert_allclose(ops.convert_to_numpy(same_seed(x, training=True)), a,
                               atol=1e-5)
    single = ops.convert_to_numpy(layer(x[0], training=True))
    assert single.shape == (12, 10, 3)
    uint8 = ops.convert_to_numpy(layer(x.astype("uint8"), training=True))
    assert uint8.dtype == np.float32 and uint8.max() <= 255 and uint8.min() >= 0


def test_inference_resizes_the_whole_image():
    x = images_nhwc(2, 24, 36)
    layer = D.RandomResizedCrop(12, 10, data_format="channels_last")
    out = ops.convert_to_numpy(layer(x, training=False))
    for b in range(2):
        np.testing.assert_allclose(out[b], ref_resize_box(x[b], [0, 0, 24, 36], 12, 10),
                                   atol=2e-3, rtol=0)
    same = D.RandomResizedCrop(24, 36, data_format="channels_last")
    np.testing.assert_array_equal(ops.convert_to_numpy(same(x, training=False)), x)


def test_channels_first_matches_channels_last():
    x = images_nhwc(2, 20, 24)
    last = D.RandomResizedCrop(9, 11, seed=2, data_format="channels_last")
    first = D.RandomResizedCrop(9, 11, seed=2, data_format="channels_first")
    a = ops.convert_to_numpy(last(x, training=True))
    b = ops.convert_to_numpy(first(np.transpose(x, (0, 3, 1, 2)), training=True))
    assert b.shape == (2, 3, 9, 11)
    np.testing.assert_allclose(np.transpose(b, (0, 2, 3, 1)), a, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="height"):
        D.RandomResizedCrop(0, 8)
    with pytest.raises(ValueError, match="scale"):
        D.RandomResizedCrop(8, 8, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="scale"):
        D.RandomResizedCrop(8, 8, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="ratio"):
        D.RandomResizedCrop(8, 8, ratio=(0, 1))
    with pytest.raises(ValueError, match="interpolation"):
        D.RandomResizedCrop(8, 8, interpolation="bicubic")
    with pytest.raises(ValueError, match="rank"):
        D.RandomResizedCrop(8, 8)(np.zeros((2, 2, 8, 8, 3)))


def test_config_round_trip_and_keras_file(tmp_path):
    layer = D.RandomResizedCrop(12, 14, scale=(0.2, 0.9), ratio=(0.5, 2.0),
                                interpolation="nearest", seed=9,
                                data_format="channels_last", name="crop")
    clone = D.RandomResizedCrop.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    model = keras.Sequential([keras.Input((20, 20, 3)), layer])
    path = str(tmp_path / "crop.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[0], D.RandomResizedCrop)
    assert loaded.layers[0].get_config() == layer.get_config()
    x = images_nhwc(2, 20, 20)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded.layers[0](x, training=False)),
        ops.convert_to_numpy(layer(x, training=False)), atol=1e-5)


@pytest.mark.skipif(BACKEND not in ("tensorflow", "jax"), reason="graph API of TF / JAX")
def test_runs_in_a_traced_function_with_unknown_sizes():
    layer = D.RandomResizedCrop(10, 10, seed=1, data_format="channels_last")
    x = images_nhwc(3, 20, 26)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda t: layer(t, training=True),
                         input_signature=[tf.TensorSpec([None, None, None, 3])])
        a, b = fn(x).numpy(), fn(x).numpy()
    else:
        import jax

        layer(x[:1])  # builds it
        fn = jax.jit(lambda tv, ntv, t: layer.stateless_call(tv, ntv, t, training=True))
        state = [v.value for v in layer.non_trainable_variables]  # the seed state
        a, state = fn([], state, x)
        b, _ = fn([], state, x)
        a, b = np.asarray(a), np.asarray(b)
    assert a.shape == (3, 10, 10, 3)
    assert not np.allclose(a, b)  # the seed state advances between calls
    assert a.min() >= x.min() - 1e-3 and a.max() <= x.max() + 1e-3


def test_augmentation_is_crop_and_flip():
    augment = D.augmentation((12, 16), seed=0, data_format="channels_last")
    assert [type(layer) for layer in augment.layers] == [D.RandomResizedCrop,
                                                         keras.layers.RandomFlip]
    assert augment.layers[1].mode == "horizontal"
    x = images_nhwc(4, 30, 30)
    out = ops.convert_to_numpy(augment(x, training=True))
    assert out.shape == (4, 12, 16, 3)
    # Inference: the whole image resized, not flipped.
    inference = ops.convert_to_numpy(augment(x, training=False))
    np.testing.assert_allclose(inference[0], ref_resize_box(x[0], [0, 0, 30, 30], 12, 16),
                               atol=2e-3, rtol=0)


# -- image folders ---------------------------------------------------------------------

def write_image(path, value, size=(24, 32), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = np.clip(rng.normal(value, 20, (*size, 3)), 0, 255).astype("uint8")
    Image.fromarray(pixels).save(path, format=fmt)


FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "gif": "GIF"}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pets"
    for name, value in (("cat", 40), ("dog", 200)):
        for i, ext in enumerate(["jpg", "JPEG", "png", "bmp", "gif", "Jpg"]):
            write_image(str(root / name / f"{i}.{ext}"), value + i,
                        fmt=FORMATS[ext.lower()])
        (root / name / "notes.txt").write_text("not an image")
        (root / name / ".hidden.jpg").write_bytes(b"ignored")
    write_image(str(root / "dog" / "more" / "deep.png"), 210)
    return root


def test_image_folder_lists_every_format_in_sorted_classes(folder):
    source = D.image_folder(folder)
    assert source.class_names == ("cat", "dog")
    assert source.name == "pets"
    assert len(source) == 13 and source.skipped == []
    assert source.labels.dtype == np.int32 and source.counts().tolist() == [6, 7]
    assert all(os.path.isfile(p) for p in source.items)
    assert all(os.path.relpath(p, folder).split(os.sep)[0] == source.class_names[label]
               for p, label in zip(source.items, source.labels))


def test_image_folder_explicit_class_names(folder):
    source = D.image_folder(folder, class_names=["dog", "cat"])
    assert source.class_names == ("dog", "cat")
    assert source.counts().tolist() == [7, 6]
    os.makedirs(folder / "bird")
    write_image(str(folder / "bird" / "a.png"), 90)
    subset = D.image_folder(folder, class_names=["cat", "dog"])
    assert subset.class_names == ("cat", "dog") and len(subset) == 13
    listed = r"no subfolder\(s\) \['fish'\].*'bird', 'cat', 'dog'"
    with pytest.raises(ValueError, match=listed):
        D.image_folder(folder, class_names=["cat", "fish"])
    with pytest.raises(ValueError, match="duplicate"):
        D.image_folder(folder, class_names=["cat", "cat"])


def test_unreadable_images_are_skipped_and_counted(folder):
    (folder / "cat" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    good = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), "uint8")).save(good, "JPEG")
    (folder / "dog" / "truncated.jpg").write_bytes(good.getvalue()[:200])
    source = D.image_folder(folder)
    assert len(source) == 13
    skipped = dict(source.skipped)
    assert set(skipped) == {str(folder / "cat" / "garbage.jpg"),
                            str(folder / "dog" / "truncated.jpg")}
    assert all(reason for reason in skipped.values())
    assert not any(p in source.items for p in skipped)


@pytest.mark.parametrize("layout,message", [
    ("missing", "No folder"), ("empty", "is empty"), ("flat", "no class subfolders"),
    ("single", "single class"), ("only_bad", "no readable image"),
    ("no_images", "No image")])
def test_bad_folders_say_what_to_do(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "flat":
        write_image(str(root / "a.jpg"), 1)
    if layout == "single":
        write_image(str(root / "only" / "a.jpg"), 1)
    if layout == "only_bad":
        write_image(str(root / "good" / "a.jpg"), 1)
        (root / "bad").mkdir()
        (root / "bad" / "b.png").write_bytes(b"nope")
    if layout == "no_images":
        (root / "a").mkdir()
        (root / "b").mkdir()
        (root / "a" / "x.txt").write_text("x")
    error = FileNotFoundError if layout == "missing" else ValueError
    with pytest.raises(error, match=message) as info:
        D.image_folder(root)
    if layout != "missing":
        assert "subfolder" in str(info.value)


# -- synthetic-flowers -----------------------------------------------------------------

@pytest.fixture(scope="module")
def flowers_dir(tmp_path_factory):
    return D.synthetic_flowers(tmp_path_factory.mktemp("gen"), classes=5, per_class=12,
                               size=48, seed=0)


def test_synthetic_flowers_is_a_deterministic_image_folder(flowers_dir, tmp_path):
    assert os.path.basename(flowers_dir) == D.SYNTHETIC_NAME
    source = D.image_folder(flowers_dir)
    assert len(source.class_names) == 5 and source.counts().tolist() == [12] * 5
    assert source.skipped == []
    with Image.open(source.items[0]) as image:
        assert image.size == (48, 48) and image.format == "JPEG"
    again = D.image_folder(D.synthetic_flowers(tmp_path, classes=5, per_class=12,
                                               size=48, seed=0))
    other = D.image_folder(D.synthetic_flowers(tmp_path / "o", classes=5, per_class=12,
                                               size=48, seed=1))
    same = [open(a, "rb").read() == open(b, "rb").read()
            for a, b in zip(source.items, again.items)]
    differ = [open(a, "rb").read() != open(b, "rb").read()
              for a, b in zip(source.items, other.items)]
    assert all(same) and all(differ)


def test_synthetic_flowers_are_learnable(flowers_dir):
    # Nearest class centroid on colour histograms, held-out images: far above chance.
    source = D.image_folder(flowers_dir)
    feats = []
    for path in source.items:
        pixels = np.asarray(Image.open(path).convert("HSV"), np.float32).reshape(-1, 3)
        bright = pixels[pixels[:, 1] > 165]  # saturated: petals, not background
        hist = np.histogram(bright[:, 0], bins=24, range=(0, 256))[0]
        feats.append(hist / max(hist.sum(), 1))
    feats = np.asarray(feats)
    train, val = D.split(source, 0.25, seed=0)
    index = {p: i for i, p in enumerate(source.items)}
    tr = np.array([index[p] for p in train.items])
    va = np.array([index[p] for p in val.items])
    centroids = np.stack([feats[tr][train.labels == c].mean(0) for c in range(5)])
    pred = np.argmin(((feats[va][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(pred == val.labels) >= 0.8


def test_synthetic_flowers_reuse_and_atomic_replace(tmp_path):
    path = D.synthetic_flowers(tmp_path, classes=2, per_class=3, size=16)
    marker = os.path.join(path, D._MARKER)
    stamp = os.stat(marker).st_mtime_ns
    assert D.synthetic_flowers(tmp_path, classes=2, per_class=3, size=16) == path
    assert os.stat(marker).st_mtime_ns == stamp  # reused, not rewritten
    # Other parameters: rebuilt in place.
    D.synthetic_flowers(tmp_path, classes=2, per_class=4, size=16)
    assert D.image_folder(path).counts().tolist() == [4, 4]
    # A damaged one (an image gone) is rebuilt, not reused.
    os.remove(os.path.join(path, D.image_folder(path).class_names[0], "0000.jpg"))
    D.synthetic_flowers(tmp_path, classes=2, per_class=4, size=16)
    assert D.image_folder(path).counts().tolist() == [4, 4]
    # A killed run leaves only its work folder, never the real name; work folders
    # of dead processes are cleared.
    dead = tmp_path / f".{D.SYNTHETIC_NAME}.999999999.abc"
    (dead / "half").mkdir(parents=True)
    D.synthetic_flowers(tmp_path, classes=2, per_class=5, size=16)
    assert os.listdir(tmp_path) == [D.SYNTHETIC_NAME]
    with pytest.raises(ValueError, match="per_class"):
        D.synthetic_flowers(tmp_path, per_class=1)


def test_synthetic_flowers_never_replaces_a_foreign_folder(tmp_path):
    write_image(str(tmp_path / D.SYNTHETIC_NAME / "mine" / "a.png"), 1)
    with pytest.raises(FileExistsError, match="not written by synthetic_flowers"):
        D.synthetic_flowers(tmp_path, classes=2, per_class=2, size=16)
    assert os.path.isfile(tmp_path / D.SYNTHETIC_NAME / "mine" / "a.png")


# -- split -----------------------------------------------------------------------------

def make_source(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    return D.ImageSource([f"img{i}" for i in range(len(labels))], labels,
                         [f"c{i}" for i in range(len(counts))], "demo")


def test_split_is_stratified_and_deterministic():
    source = make_source([10, 7, 2, 31])
    train, val = D.split(source, 0.2, seed=3)
    assert val.counts().tolist() == [2, 1, 1, 6]
    assert (train.counts() + val.counts()).tolist() == [10, 7, 2, 31]
    assert not set(train.items) & set(val.items)
    assert set(train.items) | set(val.items) == set(source.items)
    for part in (train, val):
        assert [source.labels[source.items.index(i)] for i in part.items] == \
            part.labels.tolist()
    again = D.split(source, 0.2, seed=3)
    assert again[1].items == val.items
    assert D.split(source, 0.2, seed=4)[1].items != val.items


def test_split_refuses_classes_too_small_and_bad_fractions():
    with pytest.raises(ValueError, match=r"'c1' \(1\)"):
        D.split(make_source([5, 1, 4]))
    with pytest.raises(ValueError, match="validation_fraction"):
        D.split(make_source([5, 5]), 1.0)


# -- tf_flowers ------------------------------------------------------------------------

tfds = pytest.importorskip("tensorflow_datasets")


def test_tfds_flowers_from_mocked_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        source = D.tfds_flowers(str(tmp_path))
    assert source.name == "tf_flowers"
    assert source.class_names == ("dandelion", "daisy", "tulips", "sunflowers", "roses")
    assert len(source) == 40 and all(isinstance(i, bytes) for i in source.items)
    assert source.labels.min() >= 0 and source.labels.max() < 5
    batch, labels = D.ImageDataset(source, batch_size=8, image_size=16, training=False)[0]
    assert batch.shape == (8, 16, 16, 3) and labels.tolist() == source.labels[:8].tolist()
    assert batch.min() >= -1 and batch.max() <= 1


def test_tfds_flowers_offline_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_INCEPTION_OFFLINE", "1")
    with pytest.raises(D.DataUnavailable, match="KERAS_INCEPTION_OFFLINE=1"):
        D.tfds_flowers(str(tmp_path))
    monkeypatch.delenv("KERAS_INCEPTION_OFFLINE")
    monkeypatch.setattr(D, "_probe", lambda url: "nowhere.invalid:80 is unreachable")
    with pytest.raises(D.DataUnavailable, match="cannot download http.*unreachable"):
        D.tfds_flowers(str(tmp_path))


def test_probe_reports_an_unreachable_host():
    assert "unreachable" in D._probe("http://no-such-host.invalid/x.tgz", timeout=2)


def test_missing_packages_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(D.DataUnavailable, match=r"keras-inception\[data\]"):
        D.tfds_flowers(str(tmp_path))
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(D.DataUnavailable, match=r"keras-inception\[tensorflow,data\]"):
        D.tfds_flowers(str(tmp_path))


# -- load_flowers ----------------------------------------------------------------------

def test_load_flowers_falls_back_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_INCEPTION_OFFLINE", "1")
    lines = []
    data = D.load_flowers(work_dir=str(tmp_path), synthetic_per_class=4,
                          tfds_data_dir=str(tmp_path / "tfds"), print_fn=lines.append)
    assert data.fallback and data.source_name == D.SYNTHETIC_NAME
    assert len(lines) == 1
    path = os.path.join(str(tmp_path), D.SYNTHETIC_NAME)
    assert lines[0].startswith("tf_flowers could not be loaded (KERAS_INCEPTION_OFFLINE=1")
    assert f"'synthetic-flowers' (20 images, 5 classes) at {path} instead" in lines[0]
    assert len(data.train) == 15 and len(data.val) == 5
    assert data.class_names == data.train.class_names == data.val.class_names
    assert data.val.counts().tolist() == [1] * 5


def test_load_flowers_uses_mocked_tf_flowers(tmp_path):
    lines = []
    with tfds.testing.mock_data(num_examples=40):
        data = D.load_flowers(work_dir=str(tmp_path), print_fn=lines.append,
                              class_names=["roses", "daisy"])
    assert not data.fallback and data.source_name == "tf_flowers" and lines == []
    assert data.class_names == ("roses", "daisy")
    assert len(data.train) + len(data.val) == (data.train.counts() +
                                               data.val.counts()).sum()
    assert not os.path.exists(os.path.join(str(tmp_path), D.SYNTHETIC_NAME))
    with tfds.testing.mock_data(num_examples=40):
        with pytest.raises(ValueError, match=r"\['tulipz'\].*'dandelion'"):
            D.load_flowers(work_dir=str(tmp_path), class_names=["roses", "tulipz"])


def test_load_flowers_from_a_folder_reports_skips(folder, tmp_path):
    (folder / "cat" / "garbage.png").write_bytes(b"not a png")
    lines = []
    data = D.load_flowers(str(folder), work_dir=str(tmp_path), print_fn=lines.append)
    assert not data.fallback and data.source_name == "pets"
    assert len(data.skipped) == 1
    assert lines == [f"Skipped 1 unreadable image(s) of pets (first: "
                     f"{folder / 'cat' / 'garbage.png'}: {data.skipped[0][1]})."]
    assert len(data.train) + len(data.val) == 13


# -- ImageDataset ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def flowers(flowers_dir):
    return D.image_folder(flowers_dir)


def test_training_batches(flowers):
    data = D.ImageDataset(flowers, batch_size=16, image_size=(20, 24), training=True,
                          seed=1)
    assert len(data) == 4 and data.class_names == flowers.class_names
    x, y = data[0]
    assert x.shape == (16, 20, 24, 3) and x.dtype == np.float32
    assert y.shape == (16,) and y.dtype == np.int32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.05
    last_x, last_y = data[3]
    assert last_x.shape == (12, 20, 24, 3) and last_y.shape == (12,)
    with pytest.raises(IndexError):
        data[4]
    # Deterministic in the seed, whichever order batches are asked for.
    twin = D.ImageDataset(flowers, batch_size=16, image_size=(20, 24), training=True,
                          seed=1)
    twin[2]
    np.testing.assert_allclose(twin[0][0], x, atol=1e-5)
    other = D.ImageDataset(flowers, batch_size=16, image_size=(20, 24), training=True,
                           seed=2)
    assert not np.array_equal(other[0][1], y) or not np.allclose(other[0][0], x)
    # A new epoch: another order, the same images.
    labels_epoch0 = np.concatenate([data[i][1] for i in range(len(data))])
    data.on_epoch_end()
    labels_epoch1 = np.concatenate([data[i][1] for i in range(len(data))])
    assert data.epoch == 1 and not np.array_equal(labels_epoch0, labels_epoch1)
    assert sorted(labels_epoch0) == sorted(labels_epoch1) == sorted(flowers.labels)
    twin.set_epoch(1)
    np.testing.assert_allclose(twin[0][0], data[0][0], atol=1e-5)


def test_eval_batches_are_load_image_crops(flowers, folder):
    source = D.image_folder(folder)
    data = D.ImageDataset(source, batch_size=5, image_size=16, training=False,
                          preprocessing="torch")
    x, y = data[0]
    assert y.tolist() == source.labels[:5].tolist()
    for i in range(5):
        path = source.items[i]
        expected = preprocess_input(load_image(path, 16, data_format="channels_last"),
                                    "torch", data_format="channels_last")
        if path.lower().endswith(".png") or path.lower().endswith(".bmp"):
            np.testing.assert_allclose(x[i], expected, atol=1e-5)
        else:
            assert np.abs(x[i] - expected).mean() < 0.05  # same crop, JPEG decoding
    raw = D.ImageDataset(flowers, batch_size=7, image_size=16, training=False,
                         preprocessing=None)
    xs = raw[0][0]
    assert xs.min() >= 0 and xs.max() <= 255 and xs.max() > 1
    np.testing.assert_array_equal(raw[0][0], xs)  # no randomness at evaluation
    before = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        first = D.ImageDataset(flowers, batch_size=7, image_size=16, training=False,
                               preprocessing=None)[0][0]
    finally:
        keras.config.set_image_data_format(before)
    np.testing.assert_array_equal(first, xs.transpose(0, 3, 1, 2))


def test_a_file_gone_after_listing_is_named(tmp_path):
    root = tmp_path / "d"
    for name in ("a", "b"):
        for i in range(2):
            write_image(str(root / name / f"{i}.png"), i)
    source = D.image_folder(root)
    os.remove(source.items[1])
    (root / "b" / "0.png").write_bytes(b"corrupted later")
    data = D.ImageDataset(source, batch_size=1, image_size=8, training=False)
    data[0]
    with pytest.raises(ValueError, match=r"Cannot decode the image .*1\.png"):
        data[1]
    with pytest.raises(ValueError, match=r"Cannot decode the image .*b.0\.png"):
        data[2]


def test_bad_dataset_arguments(flowers):
    with pytest.raises(ValueError, match="batch_size"):
        D.ImageDataset(flowers, batch_size=0, image_size=8, training=False)
    with pytest.raises(ValueError, match="image_size"):
        D.ImageDataset(flowers, batch_size=2, image_size=(8,), training=False)
    with pytest.raises(ValueError, match="preprocessing mode"):
        D.ImageDataset(flowers, batch_size=2, image_size=8, training=False,
                       preprocessing="tf")
    with pytest.raises(TypeError, match="ImageSource"):
        D.ImageDataset([1, 2], batch_size=2, image_size=8, training=False)


def test_fit_with_worker_threads_and_the_crop_in_the_model(flowers):
    # fit compiles the train step (jax.jit on JAX, tf.function on TF), so the
    # RandomResizedCrop inside the model runs in graph there.
    train = D.ImageDataset(flowers, batch_size=20, image_size=24, training=True,
                           workers=2, use_multiprocessing=False)
    val = D.ImageDataset(flowers, batch_size=30, image_size=24, training=False)
    assert train.workers == 2 and not train.use_multiprocessing
    model = keras.Sequential([keras.Input((24, 24, 3)),
                              D.RandomResizedCrop(16, 16, seed=0),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(5)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and train.epoch >= 2
    assert np.isfinite(history.history["val_loss"]).all()
