"""The zoo's Conv2D / SeparableConv2D compute what Keras' layers compute.

On JAX's CPU platform they lower to other XLA ops (1x1 as a matrix product, one
extra zero row for k x k convolutions: in bfloat16, and in float32 while XLA:CPU
gives convolutions to YNNPACK; depthwise as shifted slices); elsewhere they are
Keras' layers. Either way: same config, weights, outputs and gradients up to
float32 rounding, for every kernel size, stride and padding the zoo uses and more.
The tests of the lowering itself pretend YNNPACK's convolutions are on (the test
process turns them off on import, see keras_inception.xla_cpu).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_inception
from keras_inception import layers as zoo
from keras_inception import xla_cpu
from keras_inception.testing import assert_outputs_close

BACKEND = keras.backend.backend()


@pytest.fixture
def ynn(monkeypatch):
    """Float32 convolutions take the lowering, as while YNNPACK computes them."""
    monkeypatch.setattr(xla_cpu, "ynn_convolutions", lambda: True)

# (kernel, strides, padding, input size): 1x1 plain and strided, unpadded k x k
# (the stem's), odd and even "same" (asymmetric pads), strided valid and same,
# non-square kernels (v3's 1x7 / 7x1).
CONV_CASES = [
    (1, 1, "valid", 9), (1, 2, "same", 9), (1, 2, "valid", 8), (3, 1, "valid", 9),
    (3, 2, "valid", 9), (3, 1, "same", 8), (3, 2, "same", 9), (5, 1, "same", 7),
    ((1, 7), 1, "same", 9), ((7, 1), 1, "same", 9), ((3, 3), (2, 1), "valid", 10),
]
# (kernel, strides, padding, depth multiplier, input size): Xception's and the
# Inception-v2 stem's (7x7/2, multiplier 8).
SEPARABLE_CASES = [
    (3, 1, "same", 1, 9), (3, 2, "valid", 1, 9), (7, 2, "same", 8, 11), (3, 1, "valid", 2, 6),
]


def _pair(ours, size, channels=5, seed=0):
    """``ours`` built, Keras' layer of the same config with the same weights, an input."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, size, size, channels)).astype("float32")
    ours.build(x.shape)
    ours.set_weights([rng.normal(size=w.shape).astype("float32") for w in ours.weights])
    theirs = zoo.keras_class(ours).from_config(ours.get_config())
    assert type(theirs) is not type(ours)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    return theirs, x


@pytest.mark.parametrize("kernel,strides,padding,size", CONV_CASES)
def test_conv2d_equals_keras(ynn, kernel, strides, padding, size):
    ours = zoo.Conv2D(6, kernel, strides=strides, padding=padding, use_bias=True,
                      activation="relu")
    theirs, x = _pair(ours, size)
    assert_outputs_close(ours(x), theirs(x))


@pytest.mark.parametrize("kernel,strides,padding,multiplier,size", SEPARABLE_CASES)
def test_separable_conv2d_equals_keras(ynn, kernel, strides, padding, multiplier, size):
    ours = zoo.SeparableConv2D(6, kernel, strides=strides, padding=padding,
                               depth_multiplier=multiplier, use_bias=True)
    theirs, x = _pair(ours, size, channels=3)
    assert_outputs_close(ours(x), theirs(x))


@pytest.mark.skipif(BACKEND != "jax", reason="the other lowering exists on JAX only")
@pytest.mark.parametrize("layer", [
    lambda: zoo.Conv2D(4, 1, use_bias=False),
    lambda: zoo.Conv2D(4, 3, strides=2, padding="valid"),
    lambda: zoo.Conv2D(4, (1, 7), padding="same"),
    lambda: zoo.Conv2D(4, 3, padding="same"),
    lambda: zoo.Conv2D(4, 3, strides=2, padding="same"),
    lambda: zoo.SeparableConv2D(4, 3, padding="same", depth_multiplier=2),
], ids=["1x1", "3x3-valid-s2", "1x7-same", "3x3-same", "3x3-same-s2", "separable"])
def test_gradients_equal_keras(ynn, layer):
    """Training computes the same gradients (inputs and every weight) as Keras' ops."""
    import jax
    import jax.numpy as jnp

    ours = layer()
    theirs, x = _pair(ours, 9)
    probe = None

    def loss(module, weights, images):
        nonlocal probe
        y, _ = module.stateless_call(weights, [], images)
        if probe is None:
            probe = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)
        return jnp.sum(y * probe)

    weights = [v.value for v in ours.trainable_variables]
    grads = [jax.grad(lambda w, images: loss(module, w, images), argnums=(0, 1))(
        weights, jnp.asarray(x)) for module in (ours, theirs)]
    assert_outputs_close(grads[0], grads[1])


@pytest.mark.skipif(BACKEND != "jax", reason="the other lowering exists on JAX only")
@pytest.mark.parametrize("layer", [
    lambda: zoo.Conv2D(4, 3, padding="same"),
    lambda: zoo.Conv2D(4, 3, strides=2, padding="valid"),
], ids=["3x3-same", "3x3-valid-s2"])
def test_second_derivatives_equal_keras(ynn, layer):
    """Derivatives of derivatives (a gradient penalty: the gradient of the input
    gradient's squared norm) go through the custom_jvp's own derivative rule and
    equal those of Keras' op."""
    import jax
    import jax.numpy as jnp

    ours = layer()
    theirs, x = _pair(ours, 9)
    weights = [v.value for v in ours.trainable_variables]
    probe = None

    def penalty(module, w, images):
        def score(images):
            nonlocal probe
            y, _ = module.stateless_call(w, [], images)
            if probe is None:
                probe = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)
            return jnp.sum(jnp.tanh(y) * probe)  # non-linear: the penalty depends on w

        return jnp.sum(jax.grad(score)(images) ** 2)

    grads = [jax.grad(lambda w, images: penalty(module, w, images), argnums=(0, 1))(
        weights, jnp.asarray(x)) for module in (ours, theirs)]
    assert_outputs_close(grads[0], grads[1])


def _conv_paddings(jaxpr):
    """The ``padding`` of every convolution in a jaxpr, sub-jaxprs included."""
    from jax.extend.core import ClosedJaxpr, Jaxpr

    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(tuple(map(tuple, eqn.params["padding"])))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, ClosedJaxpr):
                    found += _conv_paddings(sub.jaxpr)
                elif isinstance(sub, Jaxpr):
                    found += _conv_paddings(sub)
    return found


@pytest.mark.skipif(BACKEND != "jax", reason="the other lowering exists on JAX only")
def test_extra_row_in_the_forward_pass_only(ynn):
    """A padded convolution runs with one more zero row (XLA:CPU's fast path); its
    derivatives, which the backward pass transposes, keep the padding as given
    (with the extra row they made a training step 10x slower). Forward-mode
    derivatives equal Keras' too."""
    import jax

    ours = zoo.Conv2D(4, 3, padding="same")
    theirs, x = _pair(ours, 8)
    assert _conv_paddings(jax.make_jaxpr(ours)(x).jaxpr) == [((1, 2), (1, 1))]
    _, linear = jax.linearize(ours, x)
    assert _conv_paddings(jax.make_jaxpr(linear)(x).jaxpr) == [((1, 1), (1, 1))]
    tangent = np.random.default_rng(2).normal(size=x.shape).astype("float32")
    assert_outputs_close(jax.jvp(ours, (x,), (tangent,)), jax.jvp(theirs, (x,), (tangent,)))


def test_zoo_uses_the_lowered_layers_and_they_serialise():
    """Every convolution of the zoo is one of these two classes (so every family gets
    the lowering); they save as ``keras_inception>...`` and load back as themselves."""
    for name in ("googlenet", "inception_v2", "xception"):
        model = keras_inception.create_model(name, weights=None, input_shape=(75, 75, 3),
                                             classes=3)
        convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)
                 or isinstance(l, keras.layers.SeparableConv2D)]
        assert convs and all(type(l) in (zoo.Conv2D, zoo.SeparableConv2D)
                             for l in convs), name
    for layer in (zoo.Conv2D(2, 3), zoo.SeparableConv2D(2, 3)):
        config = keras.saving.serialize_keras_object(layer)
        assert config["registered_name"] == f"keras_inception>{type(layer).__name__}"
        assert type(keras.saving.deserialize_keras_object(config)) is type(layer)


@pytest.mark.skipif(BACKEND != "jax", reason="the other lowering exists on JAX only")
def test_lowering_follows_ynnpack_and_can_be_turned_off(monkeypatch):
    """A float32 1x1 convolution traces to a matrix product while YNNPACK computes
    convolutions, to Keras' convolution op on Eigen (this test process: the flag set
    on import) or with KERAS_INCEPTION_XLA_CPU_LOWERING=0; a bfloat16 one to the
    float32-accumulated product unless turned off; depthwise steps always to slices."""
    import jax

    def primitives(layer, dtype="float32"):
        x = np.zeros((1, 5, 5, 3), dtype)
        if not layer.built:
            layer.build(x.shape)
        text = str(jax.make_jaxpr(lambda images: layer(images))(x))
        return "conv_general_dilated" in text, "dot_general" in text

    conv = zoo.Conv2D(4, 1, use_bias=False)
    bf16 = zoo.Conv2D(4, 1, use_bias=False, dtype="mixed_bfloat16")
    separable = zoo.SeparableConv2D(4, 3, padding="same")
    assert xla_cpu.ynn_convolutions() is False  # the real probe of this process
    assert primitives(conv) == (True, False)
    assert primitives(bf16) == (False, True)
    assert primitives(separable) == (False, True)
    monkeypatch.setattr(xla_cpu, "ynn_convolutions", lambda: True)
    assert primitives(conv) == (False, True)
    monkeypatch.setenv("KERAS_INCEPTION_XLA_CPU_LOWERING", "0")
    assert primitives(conv) == primitives(bf16) == primitives(separable) == (True, False)


@pytest.mark.parametrize("layer", [
    lambda: zoo.Conv2D(16, 1, use_bias=False, dtype="mixed_bfloat16"),
    lambda: zoo.Conv2D(16, 1, strides=2, dtype="mixed_bfloat16"),
    lambda: zoo.SeparableConv2D(16, 3, padding="same", dtype="mixed_bfloat16"),
], ids=["1x1", "1x1-s2", "separable"])
def test_bfloat16_pointwise_equals_keras(layer):
    """Under ``mixed_bfloat16`` the 1x1 products (a 1x1 convolution, a separable
    convolution's pointwise step) give bfloat16 outputs within one bfloat16 rounding
    of the float32 result, as Keras' layer does; their gradients reach the float32
    weights. On JAX's CPU platform the product accumulates in float32 (XLA:CPU's
    fast bfloat16 GEMM, see layers._matmul)."""
    ours = layer()
    theirs, x = _pair(ours, 9, channels=256)  # long sums: bfloat16 sums would drift
    reference = zoo.keras_class(ours).from_config({**ours.get_config(), "dtype": "float32"})
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())
    # The float32 result from the bfloat16-rounded input, which both layers see.
    x = keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32"))
    expected = keras.ops.convert_to_numpy(reference(x))
    scale = np.abs(expected).max()
    for module in (ours, theirs):
        y = module(x)
        assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
        y = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
        # Weights rounded to bfloat16 (relative 2^-9 each, random signs over 256+
        # terms) and the output rounded once: well within 1 % of the output scale.
        np.testing.assert_allclose(y, expected, rtol=0, atol=0.01 * scale)
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        text = str(jax.make_jaxpr(lambda images: ours(images))(x))
        assert "preferred_element_type=float32" in text, text
        weights = [v.value for v in ours.trainable_variables]
        grads = jax.grad(lambda w: jnp.sum(ours.stateless_call(w, [], x)[0].astype(
            jnp.float32)))(weights)
        assert [g.dtype for g in grads] == [w.dtype for w in weights]
        assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
                   for g in grads)
