"""Upstream checkpoint files made from a model of ours, for tests that need a
"published" file without the network.

A randomly initialised model of ours is written out in an upstream format and
layout (the inverse of the conversion in :mod:`keras_inception.convert`), so that
loading the file back through the real download/convert path must give the same
outputs. Weights do not depend on the input size (every head follows a global
pooling), so the source model is built small unless auxiliary heads need more.

>>> import tempfile, os
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = os.path.join(tmp, "googlenet.pth")
...     _ = write_upstream(path, "googlenet", "torch", "torchvision", size=32)
...     os.path.getsize(path) > 1_000_000
True
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np

import keras_inception
from keras_inception import refmaps
from keras_inception.manifest import layouts_of
from keras_inception.testing import deterministic_weights

__all__ = ["upstream_tensors", "write_upstream", "source_model"]


def _inverse(value: np.ndarray, transform: str, shape) -> np.ndarray:
    """Our tensor in the upstream layout (refmaps.apply_transform backwards)."""
    if transform == refmaps.CONV_OIHW:
        out = np.transpose(value, (3, 2, 0, 1))
    elif transform == refmaps.DENSE_OI:
        out = np.transpose(value, (1, 0))
    elif transform == refmaps.DENSE_OI_CHW4X4:
        channels_out = value.shape[-1]
        out = value.reshape(4, 4, -1, channels_out).transpose(3, 2, 0, 1).reshape(
            channels_out, -1)
    elif transform == refmaps.DEPTHWISE_TORCH:
        kh, kw, cin, mult = value.shape
        out = np.transpose(value, (2, 3, 0, 1)).reshape(cin * mult, 1, kh, kw)
    elif transform == refmaps.SLIM_LOGITS:
        out = value.reshape(1, 1, *value.shape)
    else:
        out = value
    shape = tuple(shape)
    if out.shape != shape:
        # A TF-Slim head: one more class, the background, at index 0.
        axis = [i for i, (a, b) in enumerate(zip(out.shape, shape)) if a != b]
        if len(axis) != 1 or shape[axis[0]] != out.shape[axis[0]] + 1:
            raise ValueError(f"cannot write {out.shape} as {shape}")
        pad = [(0, 0)] * out.ndim
        pad[axis[0]] = (1, 0)
        out = np.pad(out, pad)
    return np.ascontiguousarray(out, dtype=np.float32)


def upstream_tensors(model, model_name: str, layout: str) -> dict:
    """``model``'s weights keyed and shaped as the upstream ``layout`` publishes them."""
    ours = {(layer.name, w.path.split("/")[-1]): keras.ops.convert_to_numpy(w)
            for layer in model.layers for w in layer.weights}
    offset = 1 if layout in refmaps.BACKGROUND_CLASS_HEADS else 0
    rules = layouts_of(model_name)[layout]
    tensors = {}
    for e in refmaps.build_layout(model, rules, classes_offset=offset):
        if e.transform == refmaps.SKIP:
            tensors[e.key] = np.asarray(0, np.int64)
        elif e.transform == refmaps.FOLD_GAMMA:
            tensors[e.key] = np.ones(e.shape, np.float32)  # folds to no change
        else:
            tensors[e.key] = _inverse(ours[(e.layer, e.weight)], e.transform, e.shape)
    return tensors


def source_model(model_name: str, *, size=None, seed=0, aux=False, **kwargs):
    """A deterministic random model of ours; its weights become the upstream file."""
    info = keras_inception.get_model_info(model_name)
    if size is None:
        size = max(info.aux_min_size, 75) if aux else max(info.min_size, 75)
    model = info.constructor(weights=None, input_shape=(size, size, 3),
                             aux_logits=aux, **kwargs) if info.aux_heads else \
        info.constructor(weights=None, input_shape=(size, size, 3), **kwargs)
    deterministic_weights(model, seed=seed)
    return model


def write_upstream(path, model_name: str, fmt: str, layout: str, *, size=None, seed=0,
                   aux=False, model=None, **kwargs):
    """Writes ``path`` in ``fmt`` (torch, safetensors, tf_checkpoint, keras_h5) and
    ``layout``; returns the source model whose outputs a correct load reproduces."""
    model = model or source_model(model_name, size=size, seed=seed, aux=aux, **kwargs)
    path = os.fspath(path)
    if fmt == "keras_h5":
        # keras.applications' legacy file: weighted layers in order (names unused).
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
        return model
    tensors = upstream_tensors(model, model_name, layout)
    if fmt == "torch":
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, path)
    elif fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file({k: v for k, v in tensors.items() if v.ndim}, path)
    elif fmt == "tf_checkpoint":
        from reference import tf_slim_nets as slim

        tensors["global_step"] = np.asarray(0, np.int64)
        with tempfile.TemporaryDirectory() as tmp:
            stem = os.path.basename(path).split(".")[0]
            slim.write_checkpoint(tensors, os.path.join(tmp, stem + ".ckpt"), "v1")
            slim.write_archive(tmp, path)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return model
