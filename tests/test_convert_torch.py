"""torchvision and timm checkpoints convert exactly: our models reproduce their logits.

The references (tests/reference/torch_nets.py) are torchvision's and timm's networks
written independently in PyTorch with the upstream module names, so their state
dicts are the published checkpoints' (checked against the committed manifests).
Checkpoints get random weights, BN statistics and gammas (some negative: where our
BN has no gamma the converter folds it into the convolution) and are written as
upstream publishes them: ``torch.save(state_dict)`` for torchvision's ``.pth``,
``safetensors.torch.save_file`` for timm's hub files.

The padding arithmetic travels with the weights (:data:`BUILD`): torchvision's
GoogLeNet and Inception3 (timm's inception_v3 is the same module) and timm's legacy
Xception need ``arithmetic="torch"``; timm's v4 and IRv2 compute what TF-Slim does.
Sizes are chosen where the arithmetics differ: GoogLeNet at 46 (even stem input,
odd inputs to all three ceil-mode pools), Xception at 97 (even inputs to three of
its four strided pools), v3 at 299 with its aux head (the head's minimum) and at 75
without (its average pools differ at every size), v4 and IRv2 at their minimum 75.

Our v4 and IRv2 are :func:`keras_inception.testing.zoo_model`'s, shared with the
rest of the suite (building them, and on JAX compiling them, is the slow part):
they are lent to this module and get their own weights back at its end.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

import keras_inception  # noqa: E402
from keras_inception.convert import ConversionError, load_upstream  # noqa: E402
from keras_inception.convert.__main__ import main as convert_main  # noqa: E402
from keras_inception.convert.readers import SourceFormatError  # noqa: E402
from keras_inception.manifest import load_manifest  # noqa: E402
from keras_inception.testing import (  # noqa: E402
    ODD_SIZE, deterministic_weights, main_head, predict, zoo_model)
from reference import torch_nets  # noqa: E402

ATOL = 1e-4

# How upstream weights must be built to compute what they compute upstream, per
# (our model, layout): the arguments our constructors need besides the usual ones.
BUILD = {
    ("googlenet", "torchvision"): {"arithmetic": "torch", "bn_epsilon": 1e-3},
    ("inception_v3", "torchvision"): {"arithmetic": "torch", "bn_epsilon": 1e-3},
    ("inception_v4", "timm"): {"bn_epsilon": 1e-3},
    ("inception_resnet_v2", "timm"): {"bn_epsilon": 1e-3},
    ("xception", "timm"): {"arithmetic": "torch", "bn_epsilon": 1e-5},
}


@dataclasses.dataclass(frozen=True)
class Case:
    model: str         # our registry name
    layout: str        # the reference layout the file is read by
    fmt: str           # "pth" (torch.save) or "safetensors"
    size: int          # input side
    aux: tuple = ()    # aux outputs the checkpoint has (compared too)
    seed: int = 0


CASES = {
    "googlenet-torchvision": Case("googlenet", "torchvision", "pth", 46,
                                  ("aux1", "aux2")),
    "inception_v3-torchvision": Case("inception_v3", "torchvision", "pth", 299,
                                     ("aux",)),
    # timm's hub file for the TF-ported weights: torchvision's names, no AuxLogits.
    "inception_v3-timm": Case("inception_v3", "torchvision", "safetensors", 75, seed=1),
    "inception_v4-timm": Case("inception_v4", "timm", "safetensors", 75),
    "inception_resnet_v2-timm": Case("inception_resnet_v2", "timm", "safetensors", 75),
    "xception-timm": Case("xception", "timm", "safetensors", ODD_SIZE),
}


def _images(size, seed=0):
    """(ours in the current data format, NCHW for torch); batch 1 at 299, else 2."""
    batch = 1 if size > 100 else 2
    x = np.random.default_rng([seed, size]).uniform(-1, 1, (batch, size, size, 3))
    nchw = x.astype("float32").transpose(0, 3, 1, 2)
    if keras.config.image_data_format() == "channels_first":
        return nchw, nchw
    return nchw.transpose(0, 2, 3, 1), nchw


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("torch_checkpoints")


class Reference:
    """One upstream network: its state dict, its checkpoint file and its outputs."""

    def __init__(self, case: Case, workdir):
        self.case = case
        self.net = torch_nets.build(case.model, seed=case.seed)
        if not case.aux and getattr(self.net, "AuxLogits", None) is not None:
            self.net.AuxLogits = None  # timm's v3 without the aux head
        self.state = self.net.state_dict()
        self.path = str(workdir / f"{case.model}_{case.seed}.{case.fmt}")
        if case.fmt == "pth":
            torch.save(self.state, self.path)
        else:
            safetensors_torch.save_file(self.state, self.path)
        self._outputs = {}

    def run(self, size):
        """``(our images, upstream outputs)`` at ``size``."""
        if size not in self._outputs:
            ours, nchw = _images(size)
            with torch.no_grad():
                out = self.net(torch.from_numpy(nchw))
            self._outputs[size] = ours, {k: v.numpy() for k, v in out.items()}
        return self._outputs[size]


@pytest.fixture(scope="module")
def reference(workdir):
    cache = {}

    def get(case_id):
        if case_id not in cache:
            cache[case_id] = Reference(CASES[case_id], workdir)
        return cache[case_id]
    return get


@pytest.fixture(scope="module")
def zoo():
    """Lends :func:`zoo_model` (shared with the suite: built once, and its compiled
    predict reused at the suite's input shapes) and restores its weights after."""
    saved = {}

    def lend(name):
        model = zoo_model(name)
        saved.setdefault(name, model.get_weights())
        return model

    yield lend
    for name, weights in saved.items():
        zoo_model(name).set_weights(weights)


@pytest.fixture(scope="module")
def ours(zoo):
    """Our model for a case, built as :data:`BUILD` says: the zoo's where that is
    our default build, else one with torch's arithmetic (cached); its main head
    (layers shared) where the checkpoint has no aux heads."""
    def get(case: Case):
        kwargs = BUILD[case.model, case.layout]
        if "arithmetic" not in kwargs:
            assert _first_bn(zoo(case.model)).epsilon == kwargs["bn_epsilon"]
            return main_head(case.model)
        model = _torch_model(case.model, case.layout)
        return model if case.aux else _logits_only(model)
    return get


def _first_bn(model):
    return next(layer for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization))


@functools.lru_cache(maxsize=None)
def _torch_model(name, layout):
    """Ours with torch's arithmetic and every head the family has, logits out."""
    info = keras_inception.get_model_info(name)
    kwargs = {"aux_logits": True} if info.aux_heads else {}
    return info.constructor(input_shape=(None, None, 3), classifier_activation=None,
                            **kwargs, **BUILD[name, layout])


@functools.lru_cache(maxsize=None)
def _logits_only(model):
    if isinstance(model.output, dict):
        return keras.Model(model.input, model.output["logits"])
    return model


def _outputs(model, images):
    out = predict(model, images)
    return out if isinstance(out, dict) else {"logits": out}


def _max_diff(ours, theirs):
    return float(np.max(np.abs(np.asarray(ours) - theirs)))


@pytest.mark.parametrize("case_id", list(CASES))
def test_reference_state_dict_is_the_published_layout(case_id, reference):
    """Keys, order, shapes and dtypes of the reference are the manifest's rows."""
    ref = reference(case_id)
    rows = [row for row in load_manifest(ref.case.model)["layouts"][ref.case.layout]
            if ref.case.aux or not row[0].startswith("AuxLogits.")]
    assert list(ref.state) == [row[0] for row in rows]
    for key, shape, *_ in rows:
        tensor = ref.state[key]
        assert tuple(tensor.shape) == tuple(shape), key
        want = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        assert tensor.dtype == want, key


@pytest.mark.parametrize("case_id", list(CASES))
def test_checkpoint_converts_exactly(case_id, reference, ours):
    ref = reference(case_id)
    model = ours(ref.case)
    report = load_upstream(model, ref.path, model_name=ref.case.model)
    assert report["layout"] == ref.case.layout
    assert report["dropped_background"] is False
    assert report["tensors"] == len(ref.state)
    bn_scale = any(w.path.endswith("gamma") for w in model.weights)
    assert (report["folded_gammas"] > 0) == (not bn_scale)
    images, want = ref.run(ref.case.size)
    got = _outputs(model, images)
    for head in ("logits", *ref.case.aux):
        assert _max_diff(got[head], want[head]) <= ATOL, head


@pytest.mark.parametrize("case_id", ["googlenet-torchvision", "inception_v3-timm",
                                     "xception-timm"])
def test_default_build_does_not_reproduce_torch(case_id, reference, zoo):
    """The arithmetic matters: built with our defaults (TF-Slim's and Keras' padding,
    Keras' BN epsilon) the same weights give other logits. Run at shapes the suite
    runs the zoo at: v3 at its minimum 75, the others at the odd size 97."""
    ref = reference(case_id)
    name = ref.case.model
    model = zoo(name)  # lent: its main head shares its layers
    load_upstream(model if ref.case.aux else main_head(name), ref.path, model_name=name)
    images, want = ref.run(75 if name == "inception_v3" else ODD_SIZE)
    assert _max_diff(_outputs(main_head(name), images)["logits"], want["logits"]) > 1e-2


def test_aux_heads_missing_from_the_checkpoint(reference):
    """timm's inception_v3 files lack AuxLogits: an aux model says which tensor, or
    with ``skip_missing=True`` keeps its aux heads' weights and takes the rest."""
    ref = reference("inception_v3-timm")
    model = _torch_model("inception_v3", "torchvision")
    with pytest.raises(ConversionError, match="AuxLogits"):
        load_upstream(model, ref.path)
    deterministic_weights(model, seed=5)  # so only the file can make it match
    aux_before = model.get_layer("aux_predictions").get_weights()
    load_upstream(model, ref.path, skip_missing=True)
    for a, b in zip(aux_before, model.get_layer("aux_predictions").get_weights()):
        np.testing.assert_array_equal(a, b)
    images, want = ref.run(ref.case.size)
    got = _outputs(_logits_only(model), images)
    assert _max_diff(got["logits"], want["logits"]) <= ATOL


def test_aux_tensors_are_ignored_without_aux_heads(reference):
    """torchvision's googlenet file carries (untrained) aux heads: a model built
    without them takes the rest and reports the aux tensors ignored."""
    ref = reference("googlenet-torchvision")
    head = _logits_only(_torch_model("googlenet", "torchvision"))
    report = load_upstream(head, ref.path, model_name="googlenet")
    ignored = report["ignored"]
    assert ignored and all(key.startswith(("aux1.", "aux2.")) for key in ignored)
    assert len(ignored) == sum(key.startswith("aux") for key in ref.state)
    images, want = ref.run(ref.case.size)
    assert _max_diff(_outputs(head, images)["logits"], want["logits"]) <= ATOL


def test_cli_converts_a_torchvision_checkpoint(reference, workdir, capsys):
    ref = reference("googlenet-torchvision")
    out = str(workdir / "googlenet_torchvision.weights.h5")
    assert convert_main([ref.path, "--model", "googlenet", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "torchvision layout" in printed and "aux heads: True" in printed
    model = _torch_model("googlenet", "torchvision")
    deterministic_weights(model, seed=3)  # so only the file can make it match
    keras_inception.load_weights(model, out)
    images, want = ref.run(ref.case.size)
    got = _outputs(model, images)
    for head in ("logits", "aux1", "aux2"):
        assert _max_diff(got[head], want[head]) <= ATOL, head


# --- torch's padding arithmetic, op by op -------------------------------------------

@pytest.mark.parametrize("side", [6, 7])
@pytest.mark.parametrize("kind, size, strides, padding, ceil_mode", [
    ("max", 3, 2, 1, False),   # legacy Xception's MaxPool2d(3, 2, 1)
    ("max", 3, 2, 0, True),    # GoogLeNet's MaxPool2d(3, 2, ceil_mode=True)
    ("max", 2, 2, 0, True),
    ("avg", 3, 1, 1, False),   # Inception3's avg_pool2d(3, 1, 1), padding counted
])
def test_torch_pooling_matches_torch(side, kind, size, strides, padding, ceil_mode):
    from keras_inception import layers as L

    x = np.random.default_rng(side).normal(size=(1, 3, side, side)).astype("float32")
    inputs = keras.Input((3, side, side) if keras.config.image_data_format() ==
                         "channels_first" else (side, side, 3))
    pooled = keras.Model(inputs, L.pool(inputs, kind, size, strides=strides, name="p",
                                        padding=padding, ceil_mode=ceil_mode))
    ours = x if keras.config.image_data_format() == "channels_first" \
        else x.transpose(0, 2, 3, 1)
    got = np.asarray(keras.ops.convert_to_numpy(pooled(ours)))
    if keras.config.image_data_format() == "channels_last":
        got = got.transpose(0, 3, 1, 2)
    pool = torch.nn.functional.max_pool2d if kind == "max" else \
        torch.nn.functional.avg_pool2d
    want = pool(torch.from_numpy(x), size, strides, padding, ceil_mode=ceil_mode).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_arithmetic_arguments_are_checked():
    from keras_inception import layers as L

    with pytest.raises(ValueError, match="arithmetic must be 'tf'"):
        keras_inception.InceptionV3(arithmetic="pytorch")
    with pytest.raises(ValueError, match="at least 15x15"):
        keras_inception.GoogLeNet(arithmetic="torch", input_shape=(14, 14, 3))
    with pytest.raises(ValueError, match="ceil_mode"):
        L.pool(keras.Input((8, 8, 3)), "avg", 3, strides=2, padding=0, ceil_mode=True,
               name="p")


# --- errors: named tensor, both shapes, nothing assigned ---------------------------

def _save_variant(ref, workdir, name, change):
    state = dict(ref.state)
    change(state)
    path = str(workdir / f"{name}.pth")
    torch.save(state, path)
    return path


def _load_fails(model, path, match):
    """Asserts the load raises and assigns nothing (the first layer keeps zeros)."""
    first = model.get_layer("conv2d_1a_7x7_conv")
    first.set_weights([np.zeros(w.shape, "float32") for w in first.weights])
    with pytest.raises(ConversionError, match=match) as info:
        load_upstream(model, path)
    assert not np.any(first.get_weights()[0]), "partly loaded"
    return str(info.value)


def test_wrong_shape_names_the_tensor_and_both_shapes(reference, workdir):
    ref = reference("googlenet-torchvision")
    key = "inception4a.branch2.1.conv.weight"

    def change(state):
        state[key] = torch.zeros(208, 96, 5, 5)
    path = _save_variant(ref, workdir, "wrong_shape", change)
    message = _load_fails(_torch_model("googlenet", "torchvision"), path, key)
    assert "(208, 96, 5, 5)" in message and "(208, 96, 3, 3)" in message


def test_missing_tensor_is_named(reference, workdir):
    ref = reference("googlenet-torchvision")
    key = "inception5b.branch4.1.bn.running_var"
    path = _save_variant(ref, workdir, "missing", lambda state: state.pop(key))
    _load_fails(_torch_model("googlenet", "torchvision"), path, key)


def test_unexpected_tensor_is_named(reference, workdir):
    ref = reference("googlenet-torchvision")
    key = "inception5b.branch5.conv.weight"

    def change(state):
        state[key] = torch.zeros(8, 832, 1, 1)
    path = _save_variant(ref, workdir, "extra", change)
    _load_fails(_torch_model("googlenet", "torchvision"), path, key)


def test_class_count_mismatch_says_how_to_build(reference, workdir):
    ref = reference("googlenet-torchvision")

    def change(state):
        for head in ("aux1.fc2", "aux2.fc2", "fc"):
            state[f"{head}.weight"] = state[f"{head}.weight"][:10].clone()
            state[f"{head}.bias"] = state[f"{head}.bias"][:10].clone()
    path = _save_variant(ref, workdir, "ten_classes", change)
    message = _load_fails(_torch_model("googlenet", "torchvision"), path, "class count")
    assert "(10, 1024)" in message and "(1000, 1024)" in message


class _Payload:
    """Pickles as a call of :func:`_touch`: code that a plain ``torch.load`` runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _touch, (self.marker,)


def _touch(path):
    with open(path, "w"):
        pass
    return path


def test_pickled_code_is_refused(reference, workdir):
    ref = reference("googlenet-torchvision")
    marker = str(workdir / "code_ran")
    path = _save_variant(ref, workdir, "with_code",
                         lambda state: state.__setitem__("payload", _Payload(marker)))
    model = _torch_model("googlenet", "torchvision")
    with pytest.raises(SourceFormatError, match="weights_only=True"):
        load_upstream(model, path)
    assert not os.path.exists(marker)
    torch.load(path, weights_only=False)  # the payload is live: proof of the above
    assert os.path.exists(marker)
