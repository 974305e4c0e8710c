"""Named weights: the registry, and the whole path from URL to loaded model.

The files are made here and served on 127.0.0.1; the registry entry under test is
pointed at them, so download, hash check, conversion, cache and the offline second
load all run for real.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

import keras_inception
from keras_inception import download, pretrained
from keras_inception.manifest import layouts_of
from keras_inception.testing import deterministic_weights, predict, reference_images
from http_server import http_server  # noqa: F401  (fixture)
from upstream_files import write_upstream


def test_registry_entries_are_complete():
    entries = keras_inception.list_weights()
    assert {e.model for e in entries} == set(keras_inception.list_models()) - {
        "inception_resnet_v1"}  # no public ImageNet weights
    for entry in entries:
        info = keras_inception.get_model_info(entry.model)
        assert "imagenet" in pretrained.WEIGHTS[entry.model]
        assert entry.url.startswith(("http://", "https://")), entry
        if entry.format == "keras_h5":
            assert entry.layout == "keras_applications" and info.keras_applications
            assert entry.md5 and entry.notop_md5
        else:
            assert entry.layout in layouts_of(entry.model), entry
        assert entry.classes == (1001 if entry.layout == "tf_slim" else 1000), entry
        assert entry.preprocessing in ("inception", "torch", "caffe")
        assert entry.input_size in (224, 299)
        for key, _ in entry.model_kwargs:
            assert key in ("arithmetic", "bn_epsilon")


def test_unknown_weights_name_lists_known_ones():
    with pytest.raises(ValueError, match="Known: imagenet, tf_slim, torchvision, timm"):
        keras_inception.InceptionV3(weights="imagenet21k")
    with pytest.raises(ValueError, match="none"):
        keras_inception.get_weights_entry("inception_resnet_v1", "imagenet")


def test_incompatible_arguments_fail_before_any_download(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_INCEPTION_OFFLINE", "1")
    monkeypatch.setenv("KERAS_INCEPTION_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="1000-class classifier; build with classes=1000"):
        keras_inception.InceptionV3(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match="classes=1000 or 1001"):
        keras_inception.InceptionV4(weights="tf_slim", classes=5)
    with pytest.raises(ValueError, match="no trained auxiliary heads"):
        keras_inception.InceptionV3(weights="imagenet", aux_logits=True)
    assert not list(tmp_path.rglob("*.h5"))


def test_offline_message_says_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_INCEPTION_OFFLINE", "1")
    monkeypatch.setenv("KERAS_INCEPTION_CACHE", str(tmp_path))
    entry = keras_inception.get_weights_entry("xception", "imagenet")
    with pytest.raises(download.DownloadError) as error:
        keras_inception.Xception(weights="imagenet", input_shape=(71, 71, 3))
    message = str(error.value)
    assert entry.url in message and str(tmp_path) in message and entry.md5 in message


def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_keras_weights_download_cache_and_offline_reload(http_server, monkeypatch,
                                                         tmp_path):
    """keras.applications' published layout (legacy .h5, Keras-2 names, by order)."""
    monkeypatch.setenv("KERAS_INCEPTION_CACHE", str(tmp_path / "cache"))
    size = 75
    reference = keras.applications.InceptionV3(weights=None, input_shape=(size, size, 3))
    deterministic_weights(reference, seed=7)
    source = tmp_path / "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(source, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    url = http_server.add_file(source.name, source.read_bytes())
    entry = keras_inception.get_weights_entry("inception_v3", "imagenet")
    good = dataclasses.replace(entry, url=url, md5=_md5(source), notop_url=None)
    monkeypatch.setitem(pretrained.WEIGHTS["inception_v3"], "imagenet", good)

    x = reference_images(1, size)
    expected = predict(reference, x)
    model = keras_inception.InceptionV3(weights="imagenet", input_shape=(size, size, 3))
    np.testing.assert_allclose(predict(model, x), expected, rtol=0, atol=1e-6)
    assert http_server.count(source.name) == 1
    assert keras_inception.preprocessing_for(model) == good.preprocessing == "inception"

    http_server.stop()  # second load: from the cache, no network
    again = keras_inception.InceptionV3(weights="imagenet", input_shape=(size, size, 3))
    np.testing.assert_allclose(predict(again, x), expected, rtol=0, atol=1e-6)


def test_wrong_hash_is_refused_and_not_cached(http_server, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("KERAS_INCEPTION_CACHE", str(cache))
    url = http_server.add_file("w.h5", b"not the published file")
    entry = keras_inception.get_weights_entry("xception", "imagenet")
    bad = dataclasses.replace(entry, url=url, notop_url=None)  # keeps the real md5
    monkeypatch.setitem(pretrained.WEIGHTS["xception"], "imagenet", bad)
    with pytest.raises(download.ChecksumError):
        keras_inception.Xception(weights="imagenet", input_shape=(71, 71, 3))
    assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_converted_weights_are_cached_by_source_hash(http_server, monkeypatch, tmp_path):
    """A torchvision .pth: downloaded, verified, converted once, then loaded offline."""
    pytest.importorskip("torch")  # installed with the [torch] extra in CI
    monkeypatch.setenv("KERAS_INCEPTION_CACHE", str(tmp_path / "cache"))
    size = 64
    source = tmp_path / "googlenet-local.pth"
    source_model = write_upstream(source, "googlenet", "torch", "torchvision", size=size,
                                  seed=11)
    url = http_server.add_file(source.name, source.read_bytes())
    digest = download.file_hash(source, "sha256")
    entry = pretrained.WeightsEntry("googlenet", "local", url, "torch", "torchvision",
                                    sha256=digest, input_size=224)
    monkeypatch.setitem(pretrained.WEIGHTS["googlenet"], "local", entry)

    x = reference_images(1, size)
    expected = predict(source_model, x)
    model = keras_inception.GoogLeNet(weights="local", input_shape=(size, size, 3))
    np.testing.assert_allclose(predict(model, x), expected, rtol=0, atol=1e-5)
    converted = list((tmp_path / "cache" / "converted").glob("googlenet-local-*.weights.h5"))
    assert len(converted) == 1 and digest[:16] in converted[0].name
    stamp = os.stat(converted[0]).st_mtime_ns

    http_server.stop()
    again = keras_inception.GoogLeNet(weights="local", input_shape=(size, size, 3))
    np.testing.assert_allclose(predict(again, x), expected, rtol=0, atol=1e-5)
    assert os.stat(converted[0]).st_mtime_ns == stamp  # not converted again
