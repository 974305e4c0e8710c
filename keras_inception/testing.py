"""Utilities for tests that must agree across backends and processes.

Random initialisers differ between TensorFlow, JAX and PyTorch, so cross-backend
comparisons set weights from NumPy instead: each tensor is drawn from a generator
seeded by its own path, so the values depend on nothing but the layer and weight
names (not on build order or backend).
"""

from __future__ import annotations

import zlib

import numpy as np


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


def deterministic_weights(model, seed: int = 0) -> None:
    """Sets every weight of ``model`` to backend-independent pseudo-random values.

    Example:
        >>> import keras_inception
        >>> from keras_inception.testing import deterministic_weights
        >>> model = keras_inception.GoogLeNet(input_shape=(64, 64, 3), classes=4)
        >>> deterministic_weights(model)
    """
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([
                _draw(w.path, w.shape, seed).astype(w.dtype if isinstance(w.dtype, str)
                                                   else "float32")
                for w in layer.weights])


def reference_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed batch of channels-last images in [-1, 1] (the Inception input range)."""
    rng = np.random.default_rng([seed, size, batch])
    return rng.uniform(-1.0, 1.0, (batch, size, size, 3)).astype("float32")
