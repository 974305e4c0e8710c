"""The zoo's BatchNormalization computes what Keras' layer computes.

In training on PyTorch and TensorFlow it runs the backend's batch-norm kernel;
elsewhere it is Keras' layer. Either way: same config, weights, outputs, moving
statistics and gradients up to float32 rounding.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_inception
from keras_inception import layers as zoo
from keras_inception.testing import assert_outputs_close

BACKEND = keras.backend.backend()


def _pair(shape, **config):
    """Ours and Keras' layer, same config and random weights, and an input."""
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, shape).astype("float32")
    ours = zoo.BatchNormalization(**config)
    ours.build(x.shape)
    ours.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in ours.weights])
    theirs = keras.layers.BatchNormalization.from_config(ours.get_config())
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    return ours, theirs, x


def _numpy(t):
    return keras.ops.convert_to_numpy(t)


@pytest.mark.parametrize("config", [
    dict(), dict(scale=False, epsilon=1e-3, momentum=0.99),
    dict(center=False, momentum=0.5), dict(axis=1),
    dict(epsilon=1e-6),
], ids=["default", "no-gamma", "no-beta", "channels-first-axis", "small-epsilon"])
def test_training_and_inference_equal_keras(config):
    """Two training calls (outputs, moving mean and variance), then inference."""
    ours, theirs, x = _pair((4, 6, 5, 8), **config)
    for step in range(2):
        batch = x * (step + 1)
        assert_outputs_close(_numpy(ours(batch, training=True)),
                             _numpy(theirs(batch, training=True)))
        for a, b in zip(ours.non_trainable_weights, theirs.non_trainable_weights):
            assert_outputs_close(_numpy(a), _numpy(b))
    assert_outputs_close(_numpy(ours(x, training=False)), _numpy(theirs(x, training=False)))
    frozen = zoo.BatchNormalization.from_config(ours.get_config())
    frozen.build(x.shape)
    frozen.set_weights(ours.get_weights())
    frozen.trainable = False  # frozen: inference arithmetic even with training=True
    assert_outputs_close(_numpy(frozen(x, training=True)), _numpy(ours(x, training=False)))
    assert_outputs_close(_numpy(frozen.moving_mean), _numpy(ours.moving_mean))


def test_one_value_per_channel_gives_keras_moving_statistics():
    """n = 1: the biased variance is 0 (TensorFlow's kernel reports an unbiased one)."""
    ours, theirs, x = _pair((1, 1, 1, 8))
    y = [_numpy(layer(x, training=True)) for layer in (ours, theirs)]
    # (x - mean) / sqrt(epsilon): one rounding of the mean is scaled by ~30 here.
    np.testing.assert_allclose(y[0], y[1], atol=1e-4)
    for a, b in zip(ours.non_trainable_weights, theirs.non_trainable_weights):
        assert_outputs_close(_numpy(a), _numpy(b))


def _kernel_module():
    """(module, name) of the backend's batch-norm kernel that the zoo's layer calls."""
    if BACKEND == "torch":
        import torch
        return torch, "native_batch_norm"
    import tensorflow as tf
    return tf.compat.v1.nn, "fused_batch_norm"


def _gradients(layer, x, probe):
    """d(sum(layer(x) * probe)) / d(x, gamma, beta), in training."""
    if BACKEND == "torch":
        import torch
        images = torch.tensor(x, requires_grad=True)
        loss = (layer(images, training=True) * torch.as_tensor(probe)).sum()
        weights = [v.value for v in layer.trainable_variables]
        return [g.numpy() for g in torch.autograd.grad(loss, [images, *weights])]
    import tensorflow as tf
    images = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(images)
        loss = tf.reduce_sum(layer(images, training=True) * probe)
    return [g.numpy() for g in tape.gradient(
        loss, [images, *[v.value for v in layer.trainable_variables]])]


@pytest.mark.skipif(BACKEND == "jax", reason="JAX has no batch-norm kernel: Keras' ops")
def test_training_runs_the_native_kernel_with_keras_gradients(monkeypatch):
    ours, theirs, x = _pair((4, 6, 5, 8))
    module, name = _kernel_module()
    calls = []
    native = getattr(module, name)
    monkeypatch.setattr(module, name,
                        lambda *a, **k: calls.append(tuple(a[0].shape)) or native(*a, **k))
    probe = np.random.default_rng(1).normal(size=x.shape).astype("float32")
    grads = [_gradients(layer, x, probe) for layer in (ours, theirs)]
    # Ours only; torch's kernel gets the channels on axis 1.
    assert calls == [(4, 8, 6, 5) if BACKEND == "torch" else (4, 6, 5, 8)]
    assert_outputs_close(grads[0], grads[1])  # input, gamma, beta
    # Keras' path: under mixed_bfloat16 (it upcasts to float32 and back), for an
    # epsilon below TensorFlow's floor, and in inference.
    calls.clear()
    mixed = zoo.BatchNormalization(dtype="mixed_bfloat16")
    assert keras.backend.standardize_dtype(mixed(x, training=True).dtype) == "bfloat16"
    tiny_epsilon = zoo.BatchNormalization(epsilon=1e-6)
    tiny_epsilon(x, training=True)
    ours(x, training=False)
    assert calls == ([(4, 8, 6, 5)] if BACKEND == "torch" else [])  # torch has no floor


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's memory formats")
def test_torch_backward_kernel_gets_a_channels_last_gradient():
    """An NCHW-contiguous gradient (what Keras' pooling hands back on PyTorch) reaches
    torch's backward kernel in channels-last memory, the kernel's fast path, with
    Keras' gradients."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    ours, theirs, x = _pair((4, 6, 5, 8))
    layouts = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.native_batch_norm_backward.default:
                layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
            return func(*args, **(kwargs or {}))

    grads = []
    for layer in (ours, theirs):
        inputs = torch.tensor(x, requires_grad=True)
        y = layer(inputs, training=True)
        # The gradient of y comes back as an NHWC view of NCHW-contiguous memory.
        nchw = y.permute(0, 3, 1, 2).contiguous()
        probe = torch.arange(nchw.numel(), dtype=torch.float32).reshape(nchw.shape)
        with Record():
            (nchw * probe.sin()).sum().backward()
        grads.append([inputs.grad] + [w.value.grad for w in layer.trainable_weights])
    assert layouts == [True]  # ours: the native kernel, channels-last gradient
    assert_outputs_close([_numpy(g) for g in grads[0]], [_numpy(g) for g in grads[1]])


def test_zoo_uses_it_and_it_serialises():
    for name in ("googlenet", "xception"):
        model = keras_inception.create_model(name, weights=None, input_shape=(75, 75, 3),
                                             classes=3)
        bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
        assert bns and all(type(l) is zoo.BatchNormalization for l in bns), name
        assert all(zoo.keras_class(l) is keras.layers.BatchNormalization for l in bns)
    config = keras.saving.serialize_keras_object(zoo.BatchNormalization(momentum=0.9))
    assert config["registered_name"] == "keras_inception>BatchNormalization"
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is zoo.BatchNormalization and restored.momentum == 0.9
