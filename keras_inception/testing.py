"""Utilities for tests that must agree across backends and processes.

Random initialisers differ between TensorFlow, JAX and PyTorch, so cross-backend
comparisons set weights from NumPy instead: each tensor is drawn from a generator
seeded by its own path, so the values depend on nothing but the layer and weight
names (not on build order or backend).
"""

from __future__ import annotations

import contextlib
import functools
import zlib

import keras
import numpy as np

from keras_inception.registry import get_model_info

__all__ = ["assert_outputs_close", "deterministic_weights", "main_head", "predict",
           "reference_images", "reference_outputs", "zoo_model"]


def _draw(path: str, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(path.encode("utf8"))])
    kind = path.rsplit("/", 1)[-1]
    shape = tuple(shape)
    if kind in ("kernel", "pointwise_kernel"):
        fan_in = int(np.prod(shape[:-1]))
        # He scaling for ReLU nets; dense (rank-2) kernels unit-variance logits.
        std = np.sqrt((2.0 if len(shape) == 4 else 1.0) / fan_in)
        return rng.normal(0.0, std, shape)
    if kind == "depthwise_kernel":
        return rng.normal(0.0, np.sqrt(1.0 / (shape[0] * shape[1])), shape)
    if kind == "gamma":
        return rng.uniform(0.8, 1.2, shape)
    if kind == "moving_variance":
        return rng.uniform(0.8, 1.2, shape)
    if kind in ("beta", "moving_mean"):
        return rng.normal(0.0, 0.05, shape)
    return rng.normal(0.0, 0.01, shape)


def _identity_residual_bns(model) -> set:
    """BatchNormalizations that end a residual branch added to an identity shortcut."""
    names = set()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Add):
            sources = [t._keras_history.operation for t in layer.input]
            bns = [s for s in sources if isinstance(s, keras.layers.BatchNormalization)]
            # A pooled branch beside a BN is a projection shortcut, not identity.
            pooled = any(isinstance(s, (keras.layers.MaxPooling2D,
                                        keras.layers.AveragePooling2D)) for s in sources)
            if len(sources) == 2 and len(bns) == 1 and not pooled:
                names.add(bns[0].name)
    return names


def deterministic_weights(model, seed: int = 0) -> None:
    """Sets every weight of ``model`` to backend-independent pseudo-random values.

    Like a trained network's, activations stay of order one: He-scaled kernels,
    BN statistics near identity, and small gammas where a residual branch joins
    an identity shortcut (Goyal et al. 2017), else the eight middle blocks of
    Xception compound their variance into logits in the hundreds, whose float32
    rounding then exceeds any fixed tolerance.

    Args:
        model: any Keras model; each value depends only on its weight's path,
            shape and ``seed``.
        seed: another seed gives other values.

    Example:
        >>> import keras, numpy as np
        >>> from keras_inception.testing import deterministic_weights
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> deterministic_weights(model)
        >>> first = model.get_weights()
        >>> deterministic_weights(model)
        >>> all(np.array_equal(a, b) for a, b in zip(first, model.get_weights()))
        True
    """
    damped = _identity_residual_bns(model)
    for layer in model.layers:
        if layer.weights:
            values = []
            for w in layer.weights:
                value = _draw(w.path, w.shape, seed)
                if layer.name in damped and w.path.endswith("gamma"):
                    value = value * 0.1
                values.append(value.astype("float32"))
            layer.set_weights(values)


def reference_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed batch of channels-last images in [-1, 1] (the Inception input range).

    Args:
        batch: number of images.
        size: their side in pixels.
        seed: another seed gives other images.

    Returns:
        A float32 array of shape ``(batch, size, size, 3)``.

    Example:
        >>> from keras_inception.testing import reference_images
        >>> x = reference_images(2, 8)
        >>> x.shape, x.dtype.name, bool(x.min() >= -1 and x.max() <= 1)
        ((2, 8, 8, 3), 'float32', True)
    """
    rng = np.random.default_rng([seed, size, batch])
    return rng.uniform(-1.0, 1.0, (batch, size, size, 3)).astype("float32")


@functools.lru_cache(maxsize=None)
def zoo_model(name: str):
    """The model the cross-backend references describe, built once per process.

    A variant with its top, its aux heads (if any), logits out, any input size and
    :func:`deterministic_weights`. Cached per process (building is the slow part):
    never mutate it.

    Args:
        name: a registry name or alias.

    Returns:
        The cached ``keras.Model``.

    Example:
        >>> from keras_inception.testing import zoo_model
        >>> sorted(zoo_model("googlenet").output)
        ['aux1', 'aux2', 'logits']
        >>> zoo_model("googlenet") is zoo_model("googlenet")
        True
    """
    info = get_model_info(name)
    kwargs = {"aux_logits": True} if info.aux_heads else {}
    model = info.constructor(input_shape=(None, None, 3), classifier_activation=None,
                             **kwargs)
    deterministic_weights(model)
    return model


@functools.lru_cache(maxsize=None)
def main_head(name: str):
    """:func:`zoo_model` restricted to its main output.

    It runs at the family's minimum input size, where the aux heads cannot.

    Args:
        name: a registry name or alias.

    Returns:
        A ``keras.Model`` (cached) sharing :func:`zoo_model`'s layers.

    Example:
        >>> from keras_inception.testing import main_head
        >>> main_head("googlenet").output_shape
        (None, 1000)
    """
    model = zoo_model(name)
    if isinstance(model.output, dict):
        return keras.Model(model.input, model.output["logits"])
    return model


def _no_autograd():
    """PyTorch's ``no_grad`` (no autograd graph: a third faster), else nothing."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def predict(model, x, *, eager: bool = False):
    """Inference outputs as NumPy, by the fastest route for a one-off call.

    JAX runs op by op very slowly, so it goes through the compiled ``predict``;
    TensorFlow would spend seconds tracing a graph, so it (and PyTorch, without
    recording gradients) call the model eagerly.

    Args:
        model: a Keras model.
        x: a batch of inputs (NumPy).
        eager: call the model directly on JAX too (a tiny model runs eagerly
            faster than it compiles).

    Returns:
        The outputs as NumPy arrays, in the model's output structure.

    Example:
        >>> from keras_inception.testing import main_head, predict, reference_images
        >>> predict(main_head("googlenet"), reference_images(2, 32)).shape
        (2, 1000)
    """
    with _no_autograd():
        if keras.backend.backend() == "jax" and not eager:
            out = model.predict(x, verbose=0, batch_size=len(x))
        else:
            out = model(x, training=False)
    return keras.tree.map_structure(keras.ops.convert_to_numpy, out)


def assert_outputs_close(actual, expected, *, rtol: float = 1e-5) -> None:
    """Asserts two output structures equal to float32 rounding.

    The absolute tolerance is ``rtol`` times the outputs' scale (at least 1): the
    logits of the residual families reach ~12, where float32 rounding of the same
    model run twice (batch 1 vs batch 2, or vs float64) already differs by ~1.5e-5.

    Args:
        actual: outputs (a tensor, an array, or a dict/list of them).
        expected: the reference outputs, same structure and shapes.
        rtol: relative tolerance, and the absolute one per unit of output scale.

    Raises:
        AssertionError: different structures, shapes or values.

    Example:
        >>> import numpy as np
        >>> from keras_inception.testing import assert_outputs_close
        >>> assert_outputs_close({"logits": np.float32([12.0, 1.0])},
        ...                      {"logits": np.float32([12.0001, 1.0])})
    """
    actual = keras.tree.map_structure(keras.ops.convert_to_numpy, actual)
    expected = keras.tree.map_structure(keras.ops.convert_to_numpy, expected)
    keras.tree.assert_same_structure(actual, expected)
    for a, e in zip(keras.tree.flatten(actual), keras.tree.flatten(expected)):
        np.testing.assert_allclose(a, e, rtol=rtol,
                                   atol=rtol * max(1.0, float(np.abs(e).max())))


# An odd side, at least every family's minimum: exercises asymmetric 'same' padding.
ODD_SIZE = 97


def reference_outputs(name: str) -> dict:
    """Outputs of :func:`zoo_model` on :func:`reference_images`.

    Main logits at the minimum size and at ``ODD_SIZE`` (97 px, batch 2), and every
    head at the aux minimum size (batch 1): what ``tests/reference`` stores and the
    other backends must reproduce.

    Args:
        name: a registry name or alias.

    Returns:
        ``{output name: NumPy array}``.

    Example:
        >>> from keras_inception.testing import reference_outputs
        >>> outputs = reference_outputs("googlenet")
        >>> sorted(outputs)
        ['aux_input/aux1', 'aux_input/aux2', 'aux_input/logits', 'logits', 'odd_size/logits']
        >>> outputs["odd_size/logits"].shape
        (2, 1000)
    """
    info = get_model_info(name)
    out = {"logits": predict(main_head(name), reference_images(2, info.min_size)),
           "odd_size/logits": predict(main_head(name), reference_images(2, ODD_SIZE))}
    if info.aux_heads:
        heads = predict(zoo_model(name), reference_images(1, info.aux_min_size))
        out.update({f"aux_input/{k}": v for k, v in heads.items()})
    return out
