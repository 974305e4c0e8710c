"""Utilities for tests that must agree across backends and processes.

Random initialisers differ between TensorFlow, JAX and PyTorch, so cross-backend
comparisons set weights from NumPy instead: each tensor is drawn from a generator
seeded by its own path, so the values depend on nothing but the layer and weight
names (not on build order or backend).
"""

from __future__ import annotations

import functools
import zlib

import keras
import numpy as np

from keras_inception.registry import get_model_info


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

    Example:
        >>> import keras_inception
        >>> from keras_inception.testing import deterministic_weights
        >>> model = keras_inception.GoogLeNet(input_shape=(64, 64, 3), classes=4)
        >>> deterministic_weights(model)
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
    """A fixed batch of channels-last images in [-1, 1] (the Inception input range)."""
    rng = np.random.default_rng([seed, size, batch])
    return rng.uniform(-1.0, 1.0, (batch, size, size, 3)).astype("float32")


@functools.lru_cache(maxsize=None)
def zoo_model(name: str):
    """A variant with its top, its aux heads (if any), logits out, any input size and
    :func:`deterministic_weights`: the model the cross-backend references describe.
    Cached per process (building is the slow part): never mutate it."""
    info = get_model_info(name)
    kwargs = {"aux_logits": True} if info.aux_heads else {}
    model = info.constructor(input_shape=(None, None, 3), classifier_activation=None,
                             **kwargs)
    deterministic_weights(model)
    return model


@functools.lru_cache(maxsize=None)
def main_head(name: str):
    """:func:`zoo_model` restricted to its main output (it runs at the minimum size,
    where the aux heads cannot)."""
    model = zoo_model(name)
    if isinstance(model.output, dict):
        return keras.Model(model.input, model.output["logits"])
    return model


def predict(model, x):
    """Inference outputs as NumPy, by the fastest route for a one-off call.

    JAX runs op by op very slowly, so it goes through the compiled ``predict``;
    TensorFlow would spend seconds tracing a graph, so it (and PyTorch) call the
    model eagerly.
    """
    if keras.backend.backend() == "jax":
        out = model.predict(x, verbose=0, batch_size=len(x))
    else:
        out = model(x, training=False)
    return keras.tree.map_structure(keras.ops.convert_to_numpy, out)


# An odd side, at least every family's minimum: exercises asymmetric 'same' padding.
ODD_SIZE = 97


def reference_outputs(name: str) -> dict:
    """Outputs of :func:`zoo_model` on :func:`reference_images`: main logits at the
    minimum size and at :data:`ODD_SIZE` (batch 2), and every head at the aux
    minimum size (batch 1)."""
    info = get_model_info(name)
    out = {"logits": predict(main_head(name), reference_images(2, info.min_size)),
           "odd_size/logits": predict(main_head(name), reference_images(2, ODD_SIZE))}
    if info.aux_heads:
        heads = predict(zoo_model(name), reference_images(1, info.aux_min_size))
        out.update({f"aux_input/{k}": v for k, v in heads.items()})
    return out
