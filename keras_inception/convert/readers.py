"""Readers of upstream weight files: each returns ``{key: numpy array}`` as published.

Only tensors are read: torch files go through ``torch.load(weights_only=True)``,
which refuses pickled code; safetensors and TF checkpoints hold no code at all.
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
from typing import Dict

import numpy as np

__all__ = ["SourceFormatError", "detect_format", "read"]

SAFETENSORS = "safetensors"
TORCH = "torch"
TF_CHECKPOINT = "tf_checkpoint"
KERAS_H5 = "keras_h5"


class SourceFormatError(ValueError):
    """An upstream file that cannot be read or recognised.

    A ``ValueError``; its message says which formats are expected.

    Example:
        >>> from keras_inception.convert.readers import SourceFormatError, detect_format
        >>> try:
        ...     detect_format("weights.xyz")
        ... except SourceFormatError as err:
        ...     print(str(err).split(":")[0])
        Cannot tell the format of 'weights.xyz' from its name
    """


def detect_format(path: str) -> str:
    """The format of ``path`` from its name (a directory is a TF checkpoint).

    Args:
        path: a file, a TF checkpoint prefix or a directory.

    Returns:
        One of ``"safetensors"``, ``"torch"``, ``"tf_checkpoint"``, ``"keras_h5"``.

    Raises:
        SourceFormatError: the name says no known format.

    Example:
        >>> from keras_inception.convert.readers import detect_format
        >>> detect_format("model.safetensors"), detect_format("inception_v3.tar.gz")
        ('safetensors', 'tf_checkpoint')
    """
    name = os.fspath(path).lower()
    if os.path.isdir(path) or name.endswith((".tar.gz", ".tgz", ".index", ".ckpt")) \
            or os.path.exists(f"{path}.index"):
        return TF_CHECKPOINT
    if name.endswith(".safetensors"):
        return SAFETENSORS
    if name.endswith((".pth", ".pt", ".bin")):
        return TORCH
    if name.endswith(".h5"):
        return KERAS_H5
    raise SourceFormatError(
        f"Cannot tell the format of {path!r} from its name: expected .safetensors "
        f"(timm), .pth (torchvision), a TF-Slim checkpoint (directory, .tar.gz or "
        f"checkpoint prefix) or .h5 (Keras).")


def _read_safetensors(path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(os.fspath(path)))
    except Exception as e:  # safetensors raises its own error types
        raise SourceFormatError(f"Cannot read safetensors file {path!r}: {e}") from e


def _read_torch(path) -> Dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise SourceFormatError(
            f"Reading {path!r} needs PyTorch (pip install torch; CPU build: see the "
            f"README), or convert it on a machine that has it with "
            f"`python -m keras_inception.convert`.") from e
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise SourceFormatError(
            f"Cannot read {path!r} as a PyTorch state dict with weights_only=True "
            f"(only plain tensors are accepted, never pickled code): {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise SourceFormatError(f"{path!r} does not hold a state dict of tensors.")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def _checkpoint_prefix(directory: str) -> str:
    """The one checkpoint under ``directory``: a V2 prefix (``prefix.index`` +
    ``prefix.data-*``) or a V1 single file (``*.ckpt``, ``*.ckpt-N``), the format of
    TF-Slim's 2016 archives (``inception_v3.ckpt``)."""
    found = []
    for root, _, files in os.walk(directory):
        for f in sorted(files):
            if f.endswith(".index"):
                found.append(os.path.join(root, f[: -len(".index")]))
            elif re.fullmatch(r".+\.ckpt(-\d+)?", f):
                found.append(os.path.join(root, f))
    if not found:
        raise SourceFormatError(
            f"No TF checkpoint (a *.index file, or a V1 *.ckpt file) in {directory!r}.")
    if len(found) > 1:
        raise SourceFormatError(
            f"Several checkpoints in {directory!r} ({', '.join(found)}): pass the "
            f"prefix of the one to convert.")
    return found[0]


def _read_tf_checkpoint(path) -> Dict[str, np.ndarray]:
    """A TF checkpoint: a directory, a prefix, or a ``.tar.gz`` as TF-Slim publishes."""
    path = os.fspath(path)
    if path.lower().endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                with tarfile.open(path, "r:gz") as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise SourceFormatError(f"Cannot extract {path!r}: {e}") from e
            return _read_tf_checkpoint(tmp)
    prefix = _checkpoint_prefix(path) if os.path.isdir(path) else path
    if prefix.endswith(".index"):
        prefix = prefix[: -len(".index")]
    try:
        import tensorflow as tf
    except ImportError as e:
        raise SourceFormatError(
            f"Reading the TF checkpoint {path!r} needs TensorFlow (pip install "
            f"tensorflow-cpu), or convert it on a machine that has it with "
            f"`python -m keras_inception.convert`.") from e
    try:
        reader = tf.train.load_checkpoint(prefix)
        return {name: np.asarray(reader.get_tensor(name))
                for name in reader.get_variable_to_shape_map()}
    except Exception as e:
        raise SourceFormatError(f"Cannot read TF checkpoint {prefix!r}: {e}") from e


READERS = {SAFETENSORS: _read_safetensors, TORCH: _read_torch,
           TF_CHECKPOINT: _read_tf_checkpoint}


def read(path, fmt=None) -> Dict[str, np.ndarray]:
    """Every tensor of an upstream weight file, keyed as published.

    Args:
        path: a timm ``.safetensors``, a torchvision ``.pth`` (read with
            ``weights_only=True``) or a TF-Slim checkpoint (directory, prefix or
            ``.tar.gz``).
        fmt: the format (default: :func:`detect_format`).

    Returns:
        ``{key: numpy array}``.

    Raises:
        SourceFormatError: an unreadable file, a format without a reader, or a
            missing framework (torch for ``.pth``, TensorFlow for checkpoints).

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from safetensors.numpy import save_file
        >>> from keras_inception.convert.readers import read
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "w.safetensors")
        ...     save_file({"fc.weight": np.ones((2, 3), "float32")}, path)
        ...     {key: value.shape for key, value in read(path).items()}
        {'fc.weight': (2, 3)}
    """
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise SourceFormatError(f"No tensor reader for format {fmt!r}.")
    return READERS[fmt](path)
