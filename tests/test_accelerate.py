"""keras_inception.accelerate: the fast inference paths compute what the model does.

float32 paths equal the plain model to float32 rounding (1e-5); bfloat16 paths keep
every clear top-1 and stay within bfloat16 rounding of the float32 logits.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_inception
from keras_inception import testing
from keras_inception.testing import assert_outputs_close
from keras_inception.accelerate import (InferenceFunction, inference_function,
                                        keep_freed_memory, mixed_precision_model)
from keras_inception.layers import Norm, aux_head

BACKEND = keras.backend.backend()
# The torch translator goes layer by layer: these families hold every layer kind of
# the zoo (v2, v4 and IRv2 add none: same blocks, other widths). JAX and TensorFlow
# compile the Keras graph itself: a plain and a residual family cover them.
FAMILIES = (["googlenet", "inception_v3", "inception_resnet_v1", "xception"]
            if BACKEND == "torch" else ["googlenet", "xception"])
# bfloat16 has 8 significant bits: logits of order one move by about 1 %.
BF16_TOLERANCE = 0.05


def numpy(structure):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, structure)


@pytest.fixture(scope="module")
def googlenet():
    """GoogLeNet with both aux heads (any size from 17 px): cheap on every backend."""
    return testing.zoo_model("googlenet")


@pytest.mark.parametrize("name", FAMILIES)
def test_float32_equals_plain_model(name):
    """The main head at an odd size (asymmetric 'same' padding everywhere)."""
    model = testing.main_head(name)
    x = testing.reference_images(2, testing.ODD_SIZE)
    fn = inference_function(model)
    assert isinstance(fn, InferenceFunction) and fn.precision == "float32"
    assert_outputs_close(fn(x), testing.predict(model, x))


def test_aux_heads(googlenet):
    """Dict outputs (GoogLeNet's aux1/aux2), and the v3/v4/IRv2 aux head alone (5x5/3
    average pool, valid 5x5 convolution): in a whole model it needs 299 px."""
    x = testing.reference_images(2, 40)
    assert_outputs_close(inference_function(googlenet)(x), testing.predict(googlenet, x))
    tap = keras.Input((17, 17, 16))
    head = keras.Model(tap, aux_head(tap, 10, name="aux", norm=Norm(),
                                     classifier_activation="softmax"))
    testing.deterministic_weights(head)
    features = np.random.default_rng(0).normal(size=(2, 17, 17, 16)).astype("float32")
    assert_outputs_close(inference_function(head)(features), testing.predict(head, features))


def test_torch_arithmetic():
    """Torch's explicit paddings, -inf max-pool padding and ceil mode."""
    model = keras_inception.GoogLeNet(input_shape=(None, None, 3), arithmetic="torch",
                                      classifier_activation="softmax")
    testing.deterministic_weights(model)
    x = testing.reference_images(2, 45)
    assert_outputs_close(inference_function(model)(x), testing.predict(model, x))


def test_unfused_and_headless_models(googlenet):
    """Without fusion BN runs as an affine map; without a top the feature map comes
    back in Keras' layout."""
    x = testing.reference_images(2, 40)
    assert_outputs_close(inference_function(googlenet, fuse=False)(x),
                 testing.predict(googlenet, x))
    body = keras_inception.GoogLeNet(include_top=False, input_shape=(40, 40, 3))
    testing.deterministic_weights(body)
    out = inference_function(body)(x)
    assert tuple(out.shape) == (2, 2, 2, 1024)
    assert_outputs_close(out, testing.predict(body, x))


def test_layers_outside_the_zoo():
    """Layers the torch translator does not know run through Keras; nested models."""
    image = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(2.0, offset=-1.0)(image)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
    inner = keras.Model(image, keras.layers.UpSampling2D(2)(x))
    outer = keras.Input((8, 8, 3))
    y = inner(outer)
    y = keras.layers.Concatenate()([y, keras.layers.MaxPooling2D(3, 1, "same")(y)])
    y = keras.layers.BatchNormalization()(keras.layers.Activation("tanh")(y))
    y = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(y))
    model = keras.Model(outer, y)
    testing.deterministic_weights(model)
    data = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    assert_outputs_close(inference_function(model)(data), model(data, training=False))


def test_asymmetric_same_average_pooling():
    """'same' average pooling leaves the padding out of the average, the odd pixel
    after (TensorFlow's and JAX's rule; Keras' torch backend replicates edges)."""
    image = keras.Input((8, 8, 2))
    model = keras.Model(image, keras.layers.AveragePooling2D(3, 2, "same")(image))
    data = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 2)).astype("float32")
    expected = np.zeros((2, 4, 4, 2), "float32")  # 8 px, stride 2: pads (0, 1)
    for i in range(4):
        for j in range(4):
            expected[:, i, j] = data[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].mean(axis=(1, 2))
    if BACKEND != "torch":
        assert_outputs_close(model(data), expected)
    assert_outputs_close(inference_function(model)(data), expected)


@pytest.mark.skipif(BACKEND != "torch", reason="the torch translator's batch chunks")
def test_batch_chunks(googlenet):
    """Stages run in batch chunks whose largest map fits chunk_bytes; the outputs,
    GoogLeNet's aux heads made mid-network included, stay those of the model."""
    x = testing.reference_images(5, 40)
    expected = testing.predict(googlenet, x)
    # At 40 px, per image: conv2d_1a's map 20x20x64 floats = 102400 bytes,
    # conv2d_2c's 10x10x192 = 76800, nothing after the stem more than 48000.
    fn = inference_function(googlenet, chunk_bytes=5 * 48000)
    assert fn.chunks == []
    assert_outputs_close(fn(x), expected)  # the first call measures the maps
    assert [(first, chunk) for first, _, chunk in fn.chunks] == [("conv2d_1a_7x7_conv", 5)]
    assert_outputs_close(fn(x), expected)
    # conv2d_1a: 2 images of 102400 fit; conv2d_2c: 3 of 76800; the rest whole. The
    # chunks only grow along the network (joining them copies a map): 2, 2, 1 | 3, 2.
    assert [(first, chunk) for first, _, chunk in fn.chunks] == [
        ("conv2d_1a_7x7_conv", 2), ("maxpool_2a_3x3", 3), ("maxpool_3a_3x3", 5)]
    assert [last for _, last, _ in fn.chunks][:2] == ["conv2d_1a_7x7_conv",
                                                     "conv2d_2c_3x3_conv"]
    # Another batch size is planned from the maps already measured.
    assert_outputs_close(fn(x[:3]), testing.predict(googlenet, x[:3]))
    assert [chunk for *_, chunk in fn.chunks] == [2, 3]
    whole = inference_function(googlenet, chunk_bytes=None)
    whole(x), whole(x)
    assert [chunk for *_, chunk in whole.chunks] == [5]


@pytest.mark.skipif(BACKEND != "torch", reason="the torch translator's batch chunks")
def test_batch_chunks_of_a_fixed_size_model_from_its_first_call(googlenet):
    """A model of a fixed input size is planned from Keras' shapes: its first call
    already runs in chunks, the very plan that measuring the maps gives."""
    x = testing.reference_images(5, 40)
    fixed = keras.models.clone_model(googlenet, input_tensors=keras.Input((40, 40, 3)),
                                     clone_function=lambda layer: layer)  # same weights
    measured = inference_function(googlenet, chunk_bytes=5 * 48000)
    measured(x)
    planned = inference_function(fixed, chunk_bytes=5 * 48000)
    assert planned._fn._sizes == measured._fn._sizes  # every op's map, in bytes
    assert_outputs_close(planned(x), testing.predict(googlenet, x))
    measured(x)
    assert planned.chunks == measured.chunks and len(planned.chunks) == 3


@pytest.mark.skipif(BACKEND != "torch", reason="the torch translator's batch chunks")
def test_batch_chunks_leave_keras_layers_whole():
    """A layer run through Keras may mix the images of a batch: its stage runs whole."""
    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(image)
    x = keras.layers.UpSampling2D(2, name="up")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(x)
    model = keras.Model(image, keras.layers.Conv2D(2, 1, name="c3")(x))
    testing.deterministic_weights(model)
    data = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 3)).astype("float32")
    fn = inference_function(model, chunk_bytes=1)
    fn(data)
    assert_outputs_close(fn(data), model(data, training=False))
    assert fn.chunks == [("c1", "c1", 1), ("up", "up", 3), ("c2", "c3", 1)]


@pytest.mark.skipif(BACKEND != "torch", reason="the torch translator's batch chunks")
def test_batch_chunks_after_a_separable_convolution():
    """A separable convolution is two ops with a value between them that no Keras
    tensor names: the stages after it are still cut where one map is live."""
    image = keras.Input((16, 16, 3))
    x = keras.layers.SeparableConv2D(8, 3, padding="same", activation="relu",
                                     name="sep")(image)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    model = keras.Model(image, keras.layers.Conv2D(4, 3, padding="same",
                                                   activation="relu", name="c")(x))
    testing.deterministic_weights(model)
    data = np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 3)).astype("float32")
    # Per image: the depthwise map 16x16x3 floats = 3072 bytes, sep's 8192, pool's
    # 2048: sep runs one image at a time, from pool on the batch of 3 fits.
    fn = inference_function(model, chunk_bytes=3 * 2048)
    fn(data)
    assert_outputs_close(fn(data), model(data, training=False))
    assert fn.chunks == [("sep", "sep", 1), ("pool", "c", 3)]


@pytest.mark.skipif(BACKEND != "torch", reason="the torch translator's batch chunks")
def test_batch_chunks_keep_a_model_output_that_later_stages_read():
    """A feature tap (a model output that the next stage reads) comes back whole when
    that stage runs in chunks of another size, and when its own stage is merged
    with the next into one run of chunks."""
    image = keras.Input((16, 16, 3))
    tap = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(image)
    x = keras.layers.MaxPooling2D(2, name="pool")(tap)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    model = keras.Model(image, [tap, x])
    testing.deterministic_weights(model)
    data = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    # Per image: c1's map 16x16x8 floats = 8192 bytes (one image at a time), pool's
    # 2048 and c2's 4096 (two at a time).
    expected = model(data, training=False)
    fn = inference_function(model, chunk_bytes=8192)
    fn(data)
    assert_outputs_close(fn(data), expected)
    assert fn.chunks == [("c1", "c1", 1), ("pool", "c2", 2)]
    fn = inference_function(model, chunk_bytes=4096)  # c2 one image at a time too
    fn(data)
    assert_outputs_close(fn(data), expected)
    assert fn.chunks == [("c1", "c2", 1)]


@pytest.mark.skipif(BACKEND != "torch", reason="the torch translator's batch chunks")
def test_batch_chunks_of_a_zoo_feature_extractor():
    """Xception's four taps (two inside the stages, separable convolutions) in chunks
    of one image: the maps of the whole batch, as the model computes them."""
    extractor = keras_inception.feature_extractor(testing.main_head("xception"))
    x = testing.reference_images(3, testing.ODD_SIZE)
    fn = inference_function(extractor, chunk_bytes=1)
    fn(x)
    assert_outputs_close(fn(x), testing.predict(extractor, x))
    assert [chunk for *_, chunk in fn.chunks] == [1]


def test_bfloat16_keeps_clear_top1(googlenet):
    x = testing.reference_images(16, 40, seed=1)
    reference = testing.predict(googlenet, x)
    fn = inference_function(googlenet, precision="bfloat16")
    out = numpy(fn(x))
    for head, logits in reference.items():
        got = out[head]
        assert got.dtype == np.float32  # the head runs in float32
        error = np.abs(got - logits).max()
        scale = np.abs(logits).max()
        assert 0 < error <= BF16_TOLERANCE * scale, head  # bf16 ran, and closely
        top2 = np.sort(logits, axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * error  # top-1 cannot flip there
        assert clear.sum() >= len(x) // 4, head  # the check is not vacuous
        np.testing.assert_array_equal(got.argmax(-1)[clear], logits.argmax(-1)[clear])


def test_mixed_precision_model_matches_a_mixed_build(googlenet):
    """The copy computes like a model built under mixed_bfloat16, whose classifier and
    aux heads are float32 (keras_inception.layers)."""
    mixed = mixed_precision_model(googlenet)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        built = keras_inception.GoogLeNet(input_shape=(None, None, 3), aux_logits=True,
                                          classifier_activation=None)
    finally:
        keras.config.set_dtype_policy(previous)
    dtypes = {layer.name: layer.compute_dtype for layer in built.layers
              if not isinstance(layer, keras.layers.InputLayer)}
    assert dtypes == {layer.name: layer.compute_dtype for layer in mixed.layers
                      if not isinstance(layer, keras.layers.InputLayer)}
    for head in ("predictions", "aux1_predictions", "aux1_fc1", "avg_pool"):
        assert dtypes[head] == "float32"
    assert dtypes["mixed_5c"] == dtypes["conv2d_1a_7x7_conv"] == "bfloat16"
    assert all(layer.variable_dtype == "float32" for layer in built.layers)
    if BACKEND == "jax":  # its numbers: test_bfloat16_keeps_clear_top1 runs it jitted
        return
    x = testing.reference_images(2, 40)
    out = numpy(mixed(x, training=False))
    assert all(v.dtype == np.float32 for v in out.values())
    logits = testing.predict(googlenet, x)["logits"]
    np.testing.assert_allclose(out["logits"], logits,
                               atol=BF16_TOLERANCE * np.abs(logits).max())


def test_float32_build_is_unchanged():
    """Under the default policy the head layers take the global policy as before."""
    model = keras_inception.GoogLeNet(input_shape=(32, 32, 3))
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}


def test_errors(googlenet):
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_function(googlenet, precision="float16")
    with pytest.raises(ValueError, match="mixed policy"):
        mixed_precision_model(googlenet, "float32")
    if BACKEND != "tensorflow":
        with pytest.raises(ValueError, match="jit_compile is a TensorFlow option"):
            inference_function(googlenet, jit_compile=True)
    for bad in (0, -1, 1.5, True, "all"):
        with pytest.raises(ValueError, match="chunk_bytes must be 'auto', None or"):
            inference_function(googlenet, chunk_bytes=bad)
    for bad in (None, 1, "yes"):
        with pytest.raises(ValueError, match="keep_memory must be True or False"):
            inference_function(googlenet, keep_memory=bad)
    if BACKEND != "torch":
        with pytest.raises(ValueError, match="chunk_bytes is a PyTorch option"):
            inference_function(googlenet, chunk_bytes=2**20)
        assert inference_function(googlenet, chunk_bytes=None).chunks == []


# A 64 MiB block from malloc, written, freed: above glibc's largest adaptive mmap
# threshold (32 MiB) it goes back to the kernel and the next one page-faults in
# again, unless malloc keeps freed memory. (ctypes, not NumPy: NumPy asks for huge
# pages.) In a fresh process: this one may have set it already.
_FAULTS = """
import ctypes, resource
from keras_inception.accelerate import keep_freed_memory

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def faults(size=2**26):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
default = faults()
kept = keep_freed_memory()
faults()  # the heap grows once
print(default, kept, faults(), keep_freed_memory())
"""


@pytest.mark.skipif(BACKEND != "torch" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc, the same on every backend: run once")
def test_keep_freed_memory_stops_page_faults():
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    run = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    default, kept, after, again = run.stdout.split()
    pages = 2**26 // 4096
    assert int(default) > pages // 2, "glibc should map the block afresh by default"
    assert kept == again == "True"
    assert int(after) < pages // 100


def test_inference_function_keeps_freed_memory_on_a_cpu(googlenet):
    """PyTorch and JAX on a CPU (TensorFlow's allocator keeps its memory); the path
    says so, and ``keep_memory=False`` leaves the allocator alone."""
    on_cpu = BACKEND in ("torch", "jax") and _default_device_is_cpu()
    glibc = platform.libc_ver()[0] == "glibc"
    fn = inference_function(googlenet)
    assert ("malloc keeps freed memory" in fn.path) == (on_cpu and glibc)
    if on_cpu and glibc:
        assert keep_freed_memory() is True
    off = inference_function(googlenet, keep_memory=False)
    assert "malloc" not in off.path
    x = testing.reference_images(2, 40)
    assert_outputs_close(off(x), fn(x))


def _default_device_is_cpu():
    if BACKEND == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if BACKEND == "torch":
        import torch

        return not torch.cuda.is_available()
    return True
