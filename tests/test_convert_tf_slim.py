"""TF-Slim checkpoints convert exactly: our models reproduce TF-Slim's own logits.

The references (tests/reference/tf_slim_nets.py) are TF-Slim's networks written
independently in raw TensorFlow ops; they define the checkpoints' variable names,
so a wrong scope, shape, transpose or padding in our layouts shows up here as a
missing key or as logits off by O(1). Checkpoints are written as TF-Slim publishes
them (a V1 ``.ckpt`` in a ``.tar.gz``, ``global_step`` included, 1001 classes with
the background first) with random weights and BN statistics.

Sizes: v1 and v2 run at 67 (odd sides exercise "SAME"'s asymmetric padding); v3, v4
and IRv2 at 299, where their auxiliary heads exist (TF-Slim shrinks the aux kernel
below 299, ours needs 299); v3's main head also at its minimum side, 75.
"""

from __future__ import annotations

import functools
import os
import tarfile

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras_inception  # noqa: E402
from keras_inception.convert import ConversionError, load_upstream  # noqa: E402
from keras_inception.convert.__main__ import main as convert_main  # noqa: E402
from keras_inception.convert.readers import SourceFormatError  # noqa: E402
from keras_inception.testing import predict  # noqa: E402
from reference import tf_slim_nets as slim  # noqa: E402

ATOL = 1e-4

# our registry name -> (TF-Slim net, input side, has trained aux heads)
CASES = {
    "googlenet": ("inception_v1", 67, False),
    "inception_v2": ("inception_v2", 67, False),
    "inception_v3": ("inception_v3", 299, True),
    "inception_v4": ("inception_v4", 299, True),
    "inception_resnet_v2": ("inception_resnet_v2", 299, True),
}
SMALL = 75  # the minimum side of v3, v4 and IRv2
KEEP_VARIABLES = ("googlenet", "inception_v3")  # what later tests rewrite or rerun


def _images(batch, size, seed=0):
    """Channels-last images in [-1, 1] (the suite runs channels_last)."""
    x = np.random.default_rng([seed, size]).uniform(-1, 1, (batch, size, size, 3))
    return x.astype("float32")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tf_slim")


class Reference:
    """One TF-Slim net: its variables, its outputs and its published archive."""

    def __init__(self, name, workdir):
        self.net, self.size, self.aux = CASES[name]
        self.images = _images(1 if self.aux else 2, self.size)
        self.store = slim.SlimVariables(seed=1)
        self.outputs = slim.forward(self.net, self.images, self.store, aux=self.aux)
        self.store.freeze()  # any later pass must use the same names and shapes
        self._small = None
        archive, member = slim.PUBLISHED[self.net]
        contents = workdir / f"{self.net}_contents"
        contents.mkdir()
        slim.write_checkpoint(slim.checkpoint_tensors(self.store, global_step=91),
                              str(contents / member), "v1")
        self.archive = str(workdir / archive)
        slim.write_archive(str(contents), self.archive)
        self.shapes = {k: v.shape for k, v in self.store.arrays.items()}
        if name not in KEEP_VARIABLES:  # v4's and IRv2's take 170 and 220 MB
            self.store = None

    def small(self):
        """(images, logits) at the minimum side 75, main head only."""
        if self._small is None:
            images = _images(2, SMALL)
            self._small = images, slim.forward(self.net, images, self.store)["logits"]
        return self._small


@pytest.fixture(scope="module")
def reference(workdir):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Reference(name, workdir)
        return cache[name]
    return get


@functools.lru_cache(maxsize=None)
def _model(name, classes=1000):
    """Ours, logits out, any input size, with aux heads where TF-Slim trains them.
    Shared by the tests of this module: each loads what it needs before use."""
    info = keras_inception.get_model_info(name)
    kwargs = {"aux_logits": True} if CASES[name][2] else {}
    return info.constructor(input_shape=(None, None, 3), classes=classes,
                            classifier_activation=None, **kwargs)


def _main_head(name):
    model = _model(name)
    if isinstance(model.output, dict):
        return keras.Model(model.input, model.output["logits"])
    return model


def _snapshot(model):
    return [w.copy() for w in model.get_weights()]


def _unchanged(model, before):
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def _max_diff(ours, theirs):
    return float(np.max(np.abs(np.asarray(ours) - theirs)))


@pytest.mark.parametrize("name", list(CASES))
def test_published_archive_converts_exactly(name, reference):
    ref = reference(name)
    model = _model(name)
    report = load_upstream(model, ref.archive)
    assert report["layout"] == "tf_slim"
    assert report["dropped_background"] is True
    assert report["ignored"] == ["global_step"]
    out = predict(model, ref.images)
    if ref.aux:
        assert _max_diff(out["logits"], ref.outputs["logits"][:, 1:]) <= ATOL
        assert _max_diff(out["aux"], ref.outputs["aux"][:, 1:]) <= ATOL
    else:
        assert _max_diff(out, ref.outputs["logits"][:, 1:]) <= ATOL


@pytest.mark.parametrize("name", list(CASES))
def test_layout_names_the_reference_variables(name, reference):
    """Our committed tf_slim layout lists exactly the reference's variables and
    shapes (a readable diff where the end-to-end test only names the first)."""
    from keras_inception.manifest import load_manifest

    ours = {key: tuple(shape) for key, shape, *_ in
            load_manifest(name)["layouts"]["tf_slim"]}
    theirs = reference(name).shapes
    assert sorted(set(ours) - set(theirs)) == [], "keys TF-Slim does not have"
    assert sorted(set(theirs) - set(ours)) == [], "TF-Slim keys we do not map"
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


def test_classes_1001_keeps_the_background_class(reference):
    ref = reference("googlenet")
    model = _model("googlenet", classes=1001)
    report = load_upstream(model, ref.archive)
    assert report["dropped_background"] is False
    assert _max_diff(predict(model, ref.images), ref.outputs["logits"]) <= ATOL


def test_v2_checkpoint_forms_read_alike(reference, workdir):
    """A V2 checkpoint (.index + .data, newer TF-Slim archives) read from a
    directory, a prefix, its .index or a .tar.gz loads what the V1 archive loads."""
    ref = reference("googlenet")
    directory = workdir / "googlenet_v2"
    directory.mkdir()
    prefix = slim.write_checkpoint(slim.checkpoint_tensors(ref.store),
                                   str(directory / "model.ckpt-91"), "v2")
    archive = slim.write_archive(str(directory), str(workdir / "googlenet_v2.tar.gz"))
    model = _model("googlenet")
    load_upstream(model, ref.archive)
    expected = _snapshot(model)
    for source in (str(directory), prefix, prefix + ".index", archive):
        model.set_weights([np.zeros_like(w) for w in expected])
        load_upstream(model, source)
        assert _unchanged(model, expected), source


def test_aux_tensors_are_ignored_without_aux_heads(reference):
    """A model without aux heads takes the body and classifier of an archive with
    them, here at v3's minimum side (where TF-Slim would shrink its aux kernel)."""
    ref = reference("inception_v3")
    head = _main_head("inception_v3")  # shares the layers of the aux model
    report = load_upstream(head, ref.archive)
    assert "global_step" in report["ignored"]
    assert any(k.startswith("InceptionV3/AuxLogits/") for k in report["ignored"])
    images, logits = ref.small()
    assert _max_diff(predict(head, images), logits[:, 1:]) <= ATOL


def test_cli_writes_weights_that_load(reference, workdir, capsys):
    """The command line on an archive with trained aux heads: the .weights.h5 keeps
    them, and ``weights=`` loads exactly what load_upstream converts (whose outputs
    test_published_archive_converts_exactly checks)."""
    ref = reference("inception_v3")
    out = str(workdir / "inception_v3_tf_slim.weights.h5")
    assert convert_main([ref.archive, "--model", "inception_v3", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "aux heads: True" in printed and "background class dropped: True" in printed
    loaded = keras_inception.InceptionV3(weights=out, input_shape=(None, None, 3),
                                         aux_logits=True, classifier_activation=None)
    converted = _model("inception_v3")
    load_upstream(converted, ref.archive)
    for layer in converted.layers:
        for ours, theirs in zip(loaded.get_layer(layer.name).get_weights(),
                                layer.get_weights()):
            np.testing.assert_array_equal(ours, theirs, err_msg=layer.name)


def test_cli_reports_errors(workdir, capsys):
    missing = str(workdir / "absent.tar.gz")
    assert convert_main([missing, "--model", "googlenet",
                         "--out", str(workdir / "x.weights.h5")]) == 2
    assert "error:" in capsys.readouterr().err


# --- errors: nothing is assigned, and the message says what is wrong -----------------

def test_truncated_archive_is_refused(reference, workdir):
    ref = reference("googlenet")
    with open(ref.archive, "rb") as f:
        data = f.read()
    truncated = workdir / "inception_v1_truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    model = _model("googlenet")
    before = _snapshot(model)
    with pytest.raises(SourceFormatError, match="Cannot extract"):
        load_upstream(model, str(truncated))
    assert _unchanged(model, before)


def test_not_a_gzip_archive_is_refused(workdir):
    bogus = workdir / "bogus.tar.gz"
    bogus.write_bytes(b"not a tar archive")
    with pytest.raises(SourceFormatError, match="Cannot extract"):
        load_upstream(_model("googlenet"), str(bogus))


def test_archive_without_checkpoint_is_refused(workdir):
    empty = workdir / "empty_contents"
    empty.mkdir()
    (empty / "README").write_text("no checkpoint here\n")
    archive = slim.write_archive(str(empty), str(workdir / "empty.tar.gz"))
    with pytest.raises(SourceFormatError, match="checkpoint"):
        load_upstream(_model("googlenet"), archive)


def test_checkpoint_of_another_net_is_refused(reference):
    ref = reference("googlenet")
    model = _model("inception_v2")
    before = _snapshot(model)
    with pytest.raises(ConversionError, match=r"InceptionV2/.*not a tf_slim inception_v2"):
        load_upstream(model, ref.archive)
    assert _unchanged(model, before)


def test_checkpoint_with_another_class_count_is_refused(reference, workdir):
    ref = reference("googlenet")
    tensors = slim.checkpoint_tensors(ref.store)
    tensors["InceptionV1/Logits/Conv2d_0c_1x1/weights"] = np.zeros((1, 1, 1024, 6),
                                                                   "float32")
    tensors["InceptionV1/Logits/Conv2d_0c_1x1/biases"] = np.zeros((6,), "float32")
    directory = workdir / "googlenet_6_classes"
    directory.mkdir()
    slim.write_checkpoint(tensors, str(directory / "model.ckpt"), "v1")
    with pytest.raises(ConversionError, match=r"classifier tensor .*1001"):
        load_upstream(_model("googlenet"), str(directory))


@pytest.fixture(scope="module")
def v3_without_aux(reference, workdir):
    """inception_v3 saved without its AuxLogits (as if exported aux-less)."""
    ref = reference("inception_v3")
    contents = workdir / "v3_no_aux"
    contents.mkdir()
    slim.write_checkpoint(slim.checkpoint_tensors(ref.store, drop=("/AuxLogits/",)),
                          str(contents / "inception_v3.ckpt"), "v1")
    return slim.write_archive(str(contents), str(workdir / "v3_no_aux.tar.gz"))


def test_missing_aux_tensors_are_an_error_with_aux_logits(reference, v3_without_aux):
    model = _model("inception_v3")
    before = _snapshot(model)
    with pytest.raises(ConversionError, match=r"AuxLogits.*aux_logits=False"):
        load_upstream(model, v3_without_aux)
    assert _unchanged(model, before)


def test_skip_missing_keeps_the_aux_heads_it_lacks(reference, v3_without_aux):
    ref = reference("inception_v3")
    model = _model("inception_v3")
    load_upstream(model, ref.archive)  # a known state
    stem = model.get_layer("conv2d_1a_3x3_conv")
    expected_stem = stem.get_weights()
    stem.set_weights([np.zeros_like(w) for w in expected_stem])
    aux = model.get_layer("aux_predictions")
    aux.set_weights([np.full_like(w, 0.5) for w in aux.get_weights()])
    load_upstream(model, v3_without_aux, skip_missing=True)
    np.testing.assert_array_equal(stem.get_weights()[0], expected_stem[0])
    assert all(np.all(w == 0.5) for w in aux.get_weights())


def test_reference_archive_is_laid_out_as_published(reference):
    """The test archives hold what TF-Slim's do: one V1 ``.ckpt`` at the top level,
    float32 variables and an int64 ``global_step``."""
    import tensorflow as tf

    ref = reference("googlenet")
    with tarfile.open(ref.archive) as tar:
        assert tar.getnames() == ["inception_v1.ckpt"]
    reader = tf.train.load_checkpoint(
        os.path.join(os.path.dirname(ref.archive), "inception_v1_contents",
                     "inception_v1.ckpt"))
    dtypes = reader.get_variable_to_dtype_map()
    assert dtypes.pop("global_step") == tf.int64
    assert set(dtypes.values()) == {tf.float32}
    shapes = reader.get_variable_to_shape_map()
    assert shapes["InceptionV1/Logits/Conv2d_0c_1x1/weights"] == [1, 1, 1024, 1001]
    assert "InceptionV1/Mixed_5b/Branch_2/Conv2d_0a_3x3/weights" in shapes
