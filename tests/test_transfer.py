"""Transfer-learning helpers: freezing by stage, new heads, auxiliary losses."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_inception
from keras_inception import transfer
from keras_inception.features import feature_extractor

SIZE = 32  # GoogLeNet computes down to 1 px, its aux heads from 17
CLASSES = 4
GOOGLENET_STAGES = ("conv", "stem", "mixed_3", "mixed_4", "mixed_5")


def _googlenet(**kwargs):
    kwargs.setdefault("input_shape", (SIZE, SIZE, 3))
    kwargs.setdefault("classes", CLASSES)
    return keras_inception.GoogLeNet(**kwargs)


def _images(n=4, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


def _weights(model):
    return {layer.name: [np.array(w) for w in layer.weights] for layer in model.layers}


def _parents(layer):
    return {t._keras_history.operation for t in layer._inbound_nodes[0].input_tensors}


@pytest.fixture(scope="module")
def net():
    """A GoogLeNet with its top; tests set the trainable flags they need."""
    return _googlenet()


@pytest.fixture(scope="module")
def trained():
    """A GoogLeNet backbone -> new head -> aux heads, stem frozen, one training step.

    The main head's loss weight is 0, so every change below the aux taps comes
    from the auxiliary losses' gradients.
    """
    backbone = _googlenet(include_top=False)
    model = transfer.with_aux_heads(transfer.replace_head(backbone, CLASSES,
                                                          activation=None))
    frozen = transfer.freeze_stem(model)
    args = transfer.aux_compile_args(model)
    args["loss_weights"]["logits"] = 0.0
    model.compile(keras.optimizers.SGD(0.1), **args)
    before = _weights(model)
    labels = np.array([0, 1, 2, 3])
    history = model.fit(_images(), {key: labels for key in model.output},
                        batch_size=4, epochs=1, verbose=0)
    return model, frozen, history.history, before, _weights(model)


# ------------------------------------------------------------------------ freezing

def test_frozen_stem_is_bit_identical_after_training(trained):
    model, frozen, _, before, after = trained
    stem_end = model.get_layer("conv2d_2c_3x3_act")
    assert "conv2d_2c_3x3_bn" in frozen and stem_end.name in frozen
    assert not any(name.startswith(("mixed", "aux", "predictions")) for name in frozen)
    for name in frozen:
        for old, new in zip(before[name], after[name]):
            assert np.array_equal(old, new), name  # BN moving mean/variance included
    # Meanwhile training did happen right above the stem, BN statistics included.
    bn = model.get_layer("mixed_3b_branch_0_conv2d_0a_1x1_bn")
    assert any(not np.array_equal(o, n) for o, n in
               zip(before[bn.name], after[bn.name]))
    assert not np.array_equal(before["mixed_3b_branch_0_conv2d_0a_1x1_conv"][0],
                              after["mixed_3b_branch_0_conv2d_0a_1x1_conv"][0])


def test_aux_losses_are_logged_and_their_gradients_reach_the_body(trained):
    model, _, history, before, after = trained
    for key in ("aux1_loss", "aux2_loss", "logits_loss", "loss", "logits_accuracy"):
        assert key in history and np.isfinite(history[key]).all(), key
    assert not any(key.startswith("aux") and "accuracy" in key for key in history)

    def changed(name):
        return not np.array_equal(before[name][0], after[name][0])

    # Below both taps (mixed_4b, mixed_4e) and inside them: aux gradients arrive.
    for name in ("mixed_3c_branch_1_conv2d_0b_3x3_conv",
                 "mixed_4b_branch_2_conv2d_0b_3x3_conv",
                 "mixed_4d_branch_0_conv2d_0a_1x1_conv"):
        assert changed(name), name
    # Above the last tap only the main loss (weight 0 here) reaches: untouched.
    for name in ("mixed_4f_branch_0_conv2d_0a_1x1_conv",
                 "mixed_5c_branch_3_conv2d_0b_1x1_conv", "predictions"):
        assert not changed(name), name


def test_frozen_batchnorm_runs_in_inference_mode(net):
    stem = feature_extractor(net, stages=("stem",))
    x = _images(n=8)

    def run(training):
        return keras.ops.convert_to_numpy(stem(x, training=training)["stem"])

    transfer.freeze_stem(net)
    np.testing.assert_allclose(run(True), run(False), atol=1e-6)
    transfer.unfreeze_top(net, len(GOOGLENET_STAGES))  # batch statistics again
    assert not np.allclose(run(True), run(False), atol=1e-3)


def test_freeze_up_to_follows_every_branch(net):
    frozen = transfer.freeze_up_to(net, "mixed_3")
    mixed_3 = [l.name for l in net.layers if l.name.startswith(("mixed_3b", "mixed_3c"))]
    assert set(mixed_3) <= set(frozen)
    assert "mixed_3b_branch_3_maxpool_0a_3x3" in frozen  # the pool branch too
    assert not any(name.startswith(("mixed_4", "mixed_5")) for name in frozen)
    for layer in net.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        assert layer.trainable == (layer.name not in frozen), layer.name
        if layer.name in frozen:  # closed under dependencies
            assert all(p.name in frozen for p in _parents(layer)
                       if not isinstance(p, keras.layers.InputLayer)), layer.name


def test_freezing_is_declarative(net):
    net.trainable = False
    transfer.freeze_up_to(net, "mixed_4")
    frozen = transfer.freeze_stem(net)
    assert net.get_layer("mixed_4b").trainable and net.get_layer("predictions").trainable
    assert {w.path for w in net.trainable_weights}.isdisjoint(
        w.path for name in frozen for w in net.get_layer(name).weights)


def test_unfreeze_top(net):
    heads = ["avg_pool", "dropout", "predictions"]
    assert transfer.unfreeze_top(net, 0) == heads
    assert [w.path for w in net.trainable_weights] == [
        w.path for w in net.get_layer("predictions").weights]
    trainable = transfer.unfreeze_top(net, 2)
    assert trainable[-3:] == heads
    assert all(name.startswith(("mixed_4", "mixed_5", "maxpool_4a", "maxpool_5a"))
               for name in trainable[:-3])
    assert "mixed_4b_branch_3_maxpool_0a_3x3" in trainable
    assert not net.get_layer("mixed_3c").trainable
    everything = transfer.unfreeze_top(net, len(GOOGLENET_STAGES))
    assert len(everything) == len(net.layers) - 1  # all but the input


@pytest.mark.parametrize("n", [6, -1, 1.0, True])
def test_unfreeze_top_rejects_bad_n(net, n):
    with pytest.raises(ValueError, match="from 0 .* to 5 .*conv, stem, mixed_3"):
        transfer.unfreeze_top(net, n)


def test_unknown_stage_names_the_stages(net):
    with pytest.raises(ValueError, match="no stage 'mixed_6'.*conv, stem, mixed_3"):
        transfer.freeze_up_to(net, "mixed_6")


def test_freezing_another_family():
    # Xception has no "conv" stage: its stem comes first, then block2..exit_flow.
    model = keras_inception.Xception(input_shape=(SIZE, SIZE, 3), classes=CLASSES)
    frozen = transfer.freeze_stem(model)
    assert frozen[-1] == "block1_conv2_act"
    assert all(name.startswith("block1_") for name in frozen)
    trainable = transfer.unfreeze_top(model, 1)
    # exit_flow starts after middle_flow's end, block13_sepconv1_act (timm's tap).
    assert "block13_sepconv1_act" not in trainable and "block12" not in trainable
    assert {"block13_sepconv1", "block13", "block14_sepconv2_act"} <= set(trainable)
    with pytest.raises(ValueError, match="no auxiliary heads.*googlenet, inception_resnet_v2"
                                         ", inception_v3, inception_v4"):
        transfer.with_aux_heads(model)


# ------------------------------------------------------------------------- summary

def test_trainable_summary_adds_up(trained):
    model, frozen, *_ = trained
    printed = []
    transfer.freeze_stem(model)
    table = transfer.trainable_summary(model, print_fn=printed.append)
    assert printed == [table]
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[4:]
            if not line.startswith("-")}
    assert list(rows) == [*GOOGLENET_STAGES, "head", "aux1", "aux2", "total"]

    def number(text):
        return int(text.replace(",", ""))

    total = rows.pop("total")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert number(total[2]) == trainable
    assert number(total[2]) + number(total[3]) == model.count_params()
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    assert number(total[0]) == len(layers) and number(total[1]) == len(frozen)
    bns = [l for l in layers if isinstance(l, keras.layers.BatchNormalization)]
    assert total[4] == f"{sum(not l.trainable for l in bns)}/{len(bns)}"
    for column in range(4):
        assert sum(number(r[column]) for r in rows.values()) == number(total[column])
    frozen_params = sum(model.get_layer(n).count_params() for n in frozen)
    assert number(rows["conv"][3]) + number(rows["stem"][3]) == frozen_params
    for name, row in rows.items():
        is_frozen = name in ("conv", "stem")
        assert (number(row[2]) == 0) == is_frozen, name
        assert (row[1] == row[0]) == is_frozen, name


# --------------------------------------------------------------------------- heads

def test_replace_head_shares_the_body(net):
    model = transfer.replace_head(net, 3, dropout=0.0, pooling="max")
    assert model.output_shape == (None, 3) and model.name == net.name
    assert [l.name for l in model.layers[-2:]] == ["max_pool", "predictions"]
    body = [l for l in net.layers if l.name not in ("avg_pool", "dropout", "predictions")]
    for layer in body:
        assert model.get_layer(layer.name) is layer
    kernel = net.get_layer("conv2d_1a_7x7_conv").kernel
    assert any(w is kernel for w in model.weights)
    assert model.get_layer("predictions") is not net.get_layer("predictions")


def test_replace_head_drops_aux_heads():
    model = transfer.replace_head(_googlenet(aux_logits=True), 2, activation=None)
    assert model.output_shape == (None, 2)
    assert not any(l.name.startswith("aux") for l in model.layers)
    assert [l.name for l in model.layers[-3:]] == ["avg_pool", "dropout", "predictions"]


@pytest.mark.parametrize("kwargs, match", [
    ({"classes": 0}, "classes must be a positive integer"),
    ({"classes": 2.0}, "classes must be a positive integer"),
    ({"classes": True}, "classes must be a positive integer"),
    ({"classes": 2, "pooling": None}, "pooling must be 'avg' or 'max'"),
    ({"classes": 2, "dropout": 1.0}, r"dropout must be a rate in \[0, 1\)"),
])
def test_replace_head_errors(net, kwargs, match):
    with pytest.raises(ValueError, match=match):
        transfer.replace_head(net, **kwargs)


def _aux_layout(model, heads):
    """Per aux layer: name, type, weight shapes, BN settings, and the layer it reads."""
    rows = []
    for layer in model.layers:
        if not layer.name.startswith(tuple(f"{h}_" for h in heads)):
            continue
        bn = (layer.scale, layer.epsilon, layer.momentum) \
            if isinstance(layer, keras.layers.BatchNormalization) else None
        rows.append((layer.name, type(layer).__name__,
                     [tuple(w.shape) for w in layer.weights], bn,
                     sorted(p.name for p in _parents(layer))))
    return rows


def test_with_aux_heads_builds_what_the_constructor_builds():
    info = keras_inception.get_model_info("googlenet")
    reference = _googlenet(aux_logits=True, bn_scale=True, bn_epsilon=1e-5)
    model = transfer.with_aux_heads(_googlenet(bn_scale=True, bn_epsilon=1e-5))
    assert model.output_shape == reference.output_shape
    assert _aux_layout(model, info.aux_heads) == _aux_layout(reference, info.aux_heads)
    assert transfer.with_aux_heads(reference) is reference  # already there


def test_with_aux_heads_inception_v3_build():
    # v3's aux head needs 299 px: build-level check only (no training).
    info = keras_inception.get_model_info("inception_v3")
    reference = keras_inception.InceptionV3(classes=3, aux_logits=True,
                                            classifier_activation=None)
    # Other classes and activation: new heads on the same taps.
    model = transfer.with_aux_heads(reference, 2, activation="softmax")
    assert {k: v.shape for k, v in model.output.items()} == {
        "logits": (None, 3), "aux": (None, 2)}
    ours, theirs = _aux_layout(model, ("aux",)), _aux_layout(reference, ("aux",))
    assert [r[:2] + r[3:] for r in ours] == [r[:2] + r[3:] for r in theirs]
    assert ours[-1][2] == [(768, 2), (2,)] and theirs[-1][2] == [(768, 3), (3,)]
    assert model.get_layer("aux_predictions").activation is keras.activations.softmax
    assert info.aux_heads == ("aux",)


def test_with_aux_heads_errors(net):
    with pytest.raises(ValueError, match="at least 17x17 pixels"):
        transfer.with_aux_heads(_googlenet(input_shape=(16, 16, 3)))
    pooled = keras.Model(net.input, net.get_layer("avg_pool").output, name="pooled")
    with pytest.raises(ValueError, match="no classifier head.*replace_head"):
        transfer.with_aux_heads(pooled)
    with pytest.raises(ValueError, match="classes must be a positive integer"):
        transfer.with_aux_heads(net, 0)


def test_aux_compile_args(trained):
    model = trained[0]
    args = transfer.aux_compile_args(model, aux_weight=0.5)
    assert args["loss_weights"] == {"logits": 1.0, "aux1": 0.5, "aux2": 0.5}
    assert transfer.aux_compile_args(model)["loss_weights"]["aux1"] == 0.3
    assert set(args["loss"]) == {"logits", "aux1", "aux2"}
    assert all(loss.from_logits for loss in args["loss"].values())  # activation=None
    assert list(args["metrics"]) == ["logits"]
    softmax = transfer.aux_compile_args(_googlenet(aux_logits=True))
    assert not any(loss.from_logits for loss in softmax["loss"].values())
    with pytest.raises(ValueError, match="no auxiliary outputs.*with_aux_heads"):
        transfer.aux_compile_args(transfer.main_head(model))
    with pytest.raises(ValueError, match="aux_weight must be a finite number >= 0"):
        transfer.aux_compile_args(model, aux_weight=-0.1)


def test_main_head_keeps_only_the_main_output(trained):
    model = trained[0]
    main = transfer.main_head(model)
    assert main.output_shape == (None, CLASSES)
    assert not any(l.name.startswith("aux") for l in main.layers)
    assert main.get_layer("mixed_4b") is model.get_layer("mixed_4b")
    assert main.output is model.output["logits"]  # the very same computation
    assert transfer.main_head(main) is main
