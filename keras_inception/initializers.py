"""Fast model construction: initial values drawn on the host with NumPy.

Keras initialises each variable where it is created, with the backend's random
ops. On JAX every such op is compiled for its shape (about 0.5 s each on a small
CPU), so building a model with a few hundred distinct weight shapes took 30 s
there. :func:`host_initialization` builds under a ``keras.StatelessScope``, which
makes Keras defer every variable's initialisation, then initialises the deferred
variables through Keras' own deferred path with values that
:func:`draw_on_host` computes with NumPy: the same distribution as the variable's
initializer (the same formula, fans and bounds), seeded from the initializer's
seed. Nothing else changes: layers keep their initializer objects, so configs and
saved files are those of a plain build; an initializer's integer seed (drawn
from Python's ``random`` when none is given, which is what
``keras.utils.set_random_seed`` seeds) gives the same values on every build.

Values are the same distribution, not the same numbers, as the backend's random
ops would give (Keras' own values already differ between backends). Initializers
NumPy cannot reproduce exactly (orthogonal, a ``keras.random.SeedGenerator``
seed, a subclass with its own ``__call__``, a dtype NumPy lacks) are left to
Keras, unchanged.

:func:`load_model` applies the same idea to ``.keras`` files: the model is
rebuilt from its config with no random value drawn (the weights overwrite them),
then its weights are read: on JAX Inception-v3 loads in about 1 s instead of
the 11.6 s of ``keras.saving.load_model``, which initialises every variable
first.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile

import keras
import numpy as np
from keras.src.backend.common import global_state
from keras.src.initializers.constant_initializers import Constant, Ones, Zeros
from keras.src.initializers.random_initializers import (
    RandomNormal, RandomUniform, TruncatedNormal, VarianceScaling, compute_fans)

__all__ = ["draw_on_host", "host_initialization", "keras_initialization", "load_model",
           "to_backend"]

# Keras' variance-scaling truncated normal: the std of a unit normal cut at +-2.
_TRUNCATED_STD = 0.87962566103423978
_HOST_DTYPES = ("float16", "float32", "float64")


def _rng(initializer):
    """A NumPy generator from the initializer's integer seed, or None.

    Keras gives an integer-seeded initializer the same values on every call; a
    generator built from the seed does the same. A ``SeedGenerator`` seed
    advances a backend state at each call, which only Keras can do.
    """
    seed = getattr(initializer, "seed", None)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        return None
    return np.random.default_rng(int(seed) % 2 ** 64)


# In place: a big model draws tens of millions of values.
def _affine(x, scale, offset):
    x *= scale
    x += offset
    return x


def _uniform(rng, shape, low, high, dtype):
    return _affine(np.asarray(rng.random(shape, dtype=dtype)), high - low, low)


def _normal(rng, shape, mean, stddev, dtype):
    return _affine(np.asarray(rng.standard_normal(shape, dtype=dtype)), stddev, mean)


def _truncated_normal(rng, shape, mean, stddev, dtype):
    """Keras' truncated normal: a normal cut at two standard deviations."""
    x = rng.standard_normal(shape, dtype=dtype)
    flat = x.reshape(-1)
    bad = np.flatnonzero(np.abs(flat) >= 2.0)
    while bad.size:  # redraw the ~4.6% outside: the tail shrinks geometrically
        flat[bad] = rng.standard_normal(bad.size, dtype=dtype)
        bad = bad[np.abs(flat[bad]) >= 2.0]
    return _affine(np.asarray(x), stddev, mean)


def draw_on_host(initializer, shape, dtype="float32"):
    """Initial values of a Keras initializer, computed with NumPy.

    Supports Keras' ``Zeros``, ``Ones``, ``Constant`` (scalar), ``RandomUniform``,
    ``RandomNormal``, ``TruncatedNormal`` and ``VarianceScaling`` with its
    subclasses (``glorot_*``, ``he_*``, ``lecun_*``): the same distribution as the
    initializer's own ``__call__`` (truncation at two standard deviations
    included); random ones draw from their integer seed, so a seeded initializer
    gives the same values on every call, as in Keras.

    Args:
        initializer: a ``keras.initializers.Initializer``.
        shape: the variable's shape.
        dtype: the variable's dtype.

    Returns:
        A NumPy array of ``shape`` and ``dtype``, or None where NumPy cannot draw
        what the initializer would (another initializer or a subclass with its
        own ``__call__``, a ``SeedGenerator`` seed, a dtype other than float16/32/64).

    Example:
        >>> import keras
        >>> from keras_inception.initializers import draw_on_host
        >>> kernel = draw_on_host(keras.initializers.GlorotUniform(seed=1), (3, 3, 8, 16))
        >>> limit = (6 / (9 * 8 + 9 * 16)) ** 0.5
        >>> kernel.dtype, bool(abs(kernel).max() <= limit), bool(kernel.std() > limit / 2)
        (dtype('float32'), True, True)
        >>> draw_on_host(keras.initializers.Orthogonal(), (4, 4)) is None
        True
    """
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype not in _HOST_DTYPES:
        return None
    shape = tuple(int(d) for d in shape)
    call = type(initializer).__call__
    if call is Zeros.__call__:
        return np.zeros(shape, dtype)
    if call is Ones.__call__:
        return np.ones(shape, dtype)
    if call is Constant.__call__:
        value = initializer.value
        return np.full(shape, value, dtype) if np.ndim(value) == 0 else None
    rng = _rng(initializer)
    if rng is None:
        return None
    # Draw in float32 at least (NumPy's generators have no float16).
    draw = "float64" if dtype == "float64" else "float32"
    if call is VarianceScaling.__call__:
        fan_in, fan_out = compute_fans(shape, input_axes=initializer.input_axes,
                                       output_axes=initializer.output_axes)
        fan = {"fan_in": fan_in, "fan_out": fan_out}.get(initializer.mode,
                                                         (fan_in + fan_out) / 2.0)
        scale = initializer.scale / max(1.0, fan)
        if initializer.distribution == "truncated_normal":
            values = _truncated_normal(rng, shape, 0.0,
                                       math.sqrt(scale) / _TRUNCATED_STD, draw)
        elif initializer.distribution == "untruncated_normal":
            values = _normal(rng, shape, 0.0, math.sqrt(scale), draw)
        elif initializer.distribution == "uniform":
            limit = math.sqrt(3.0 * scale)
            values = _uniform(rng, shape, -limit, limit, draw)
        else:
            return None
    elif call is RandomUniform.__call__:
        values = _uniform(rng, shape, initializer.minval, initializer.maxval, draw)
    elif call is RandomNormal.__call__:
        values = _normal(rng, shape, initializer.mean, initializer.stddev, draw)
    elif call is TruncatedNormal.__call__:
        values = _truncated_normal(rng, shape, initializer.mean, initializer.stddev,
                                   draw)
    else:
        return None
    return values.astype(dtype, copy=False)


def to_backend(values: np.ndarray):
    """A host array as the value of a new variable, without a compilation.

    On JAX ``jax.device_put`` (Keras' ``jnp.asarray`` conversion compiles once per
    shape); elsewhere the array itself, which the backend converts as it would.

    Args:
        values: the initial values (NumPy).

    Returns:
        What an initializer may return for them on the current backend.

    Example:
        >>> import numpy as np
        >>> from keras_inception.initializers import to_backend
        >>> tuple(to_backend(np.zeros((2, 3), "float32")).shape)
        (2, 3)
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.device_put(values)
    return values


def _is_random(initializer) -> bool:
    return type(initializer).__call__ in (
        VarianceScaling.__call__, RandomUniform.__call__, RandomNormal.__call__,
        TruncatedNormal.__call__)


class _HostInitializer:
    """Stands in for a deferred variable's initializer while Keras initialises it.

    Returns a backend tensor already (``jax.device_put`` on JAX: converting a
    NumPy array with ``jnp.asarray`` would compile once per shape again).
    """

    def __init__(self, initializer, *, placeholder):
        self.initializer = initializer
        self.placeholder = placeholder

    def __call__(self, shape, dtype=None):
        dtype = keras.backend.standardize_dtype(dtype)
        if self.placeholder and _is_random(self.initializer):
            values = np.zeros(shape, dtype)  # overwritten by the weights
        else:
            values = draw_on_host(self.initializer, shape, dtype)
        if values is None:
            return self.initializer(shape, dtype=dtype)
        return to_backend(values)


_KERAS_INITIALIZATION = [0]  # depth of keras_initialization() blocks


@contextlib.contextmanager
def keras_initialization():
    """Turns :func:`host_initialization` off inside the block: Keras initialises.

    Models built inside get every initial value from Keras' own per-variable
    initializers (one compiled op per shape on JAX), as before this fast path
    existed: for comparisons and benchmarks.

    Yields:
        None.

    Example:
        >>> import keras
        >>> from keras_inception.initializers import (host_initialization,
        ...                                           keras_initialization)
        >>> with keras_initialization(), host_initialization():
        ...     layer = keras.layers.Dense(2)
        ...     _ = layer(keras.Input((3,)))
        >>> tuple(layer.kernel.shape)
        (3, 2)
    """
    _KERAS_INITIALIZATION[0] += 1
    try:
        yield
    finally:
        _KERAS_INITIALIZATION[0] -= 1


def _fast_path_available() -> bool:
    """Whether construction may be deferred and initialised here.

    Not inside another stateless scope (its owner initialises), not under a
    ``keras.distribution`` (variables are laid out across devices at
    initialisation) and not with Flax NNX variables.
    """
    if _KERAS_INITIALIZATION[0]:
        return False
    if global_state.get_global_attribute("stateless_scope") is not None:
        return False
    if keras.distribution.distribution() is not None:
        return False
    return not (keras.backend.backend() == "jax" and keras.config.is_nnx_enabled())


def _pending_variables():
    return global_state.get_global_attribute("uninitialized_variables") or []


@contextlib.contextmanager
def host_initialization(*, weights_pending=False):
    """Defers the variables created inside and initialises them on the host at exit.

    Layers are built as usual (functional calls, shapes, names, configs); the
    initial values come from :func:`draw_on_host`, which needs no compilation,
    instead of one compiled random op per weight shape. Variables whose
    initializer NumPy cannot reproduce are initialised by Keras itself. Inside
    another ``keras.StatelessScope``, under a ``keras.distribution`` or with Flax
    NNX, nothing is changed: Keras initialises as it would have.

    Args:
        weights_pending: every variable will be overwritten before use (weights
            are loaded next): random initializers then fill zeros, and no random
            value is drawn.

    Yields:
        None. Inside the block variables hold no value yet (reading one gives a
        throw-away draw, as in any ``keras.StatelessScope``); they have it at exit.

    Example:
        >>> import keras
        >>> from keras_inception.initializers import host_initialization
        >>> with host_initialization():
        ...     layer = keras.layers.Dense(4, name="fc")
        ...     y = layer(keras.Input((3,)))
        >>> kernel = keras.ops.convert_to_numpy(layer.kernel)
        >>> kernel.shape, bool(abs(kernel).max() <= (6 / 7) ** 0.5)
        ((3, 4), True)
    """
    if not _fast_path_available():
        yield
        return
    before = {id(v) for v in _pending_variables()}
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
        ours = [v for v in _pending_variables() if id(v) not in before]
        for variable in ours:
            variable._initializer = _HostInitializer(variable._initializer,
                                                     placeholder=weights_pending)
            variable._deferred_initialize()  # Keras' own path: sets the value
    finally:
        # Ours are initialised (or, after an error, abandoned with the model);
        # others' stay pending for their owner's scope.
        global_state.set_global_attribute(
            "uninitialized_variables",
            [v for v in _pending_variables() if id(v) in before])


_WEIGHTS_ENTRY = "model.weights.h5"


def load_model(path, *, compile: bool = True, safe_mode: bool = True):
    """``keras.saving.load_model`` for ``.keras`` files, without the initialisation.

    Keras builds the saved model (initialising every variable with its random
    initializer: one compiled op per weight shape on JAX) and then overwrites
    every variable with the saved weights. This builds it under
    :func:`host_initialization` with ``weights_pending=True``, so nothing random
    is drawn, then loads the same weights with ``Model.load_weights``. The
    result is the model ``keras.saving.load_model`` gives: same config, same
    weights, same outputs (tested). Files this path does not cover (another
    format, assets, or a compiled model whose optimizer state is saved, when
    ``compile``) go to ``keras.saving.load_model`` unchanged.

    Args:
        path: a ``.keras`` file (or anything ``keras.saving.load_model`` reads).
        compile: compile the model as saved (as ``keras.saving.load_model``).
        safe_mode: refuse configs with lambdas (as ``keras.saving.load_model``).

    Returns:
        The model.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable ``.keras`` archive (the message
            names it; the file is only read, never changed).

    Example:
        >>> import os, tempfile, numpy as np, keras
        >>> import keras_inception
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), weights=None,
        ...                                   classes=3)
        >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
        >>> model.save(path)
        >>> loaded = load_model(path)
        >>> x = np.ones((1, 32, 32, 3), "float32")
        >>> bool(np.array_equal(keras.ops.convert_to_numpy(loaded(x)),
        ...                     keras.ops.convert_to_numpy(model(x))))
        True
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    if not path.endswith(".keras"):
        return keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            config = json.loads(archive.read("config.json"))
            # Covered: a config and one weights file; not assets or sharded weights.
            simple = names <= {"metadata.json", "config.json", _WEIGHTS_ENTRY} and \
                _WEIGHTS_ENTRY in names and not (compile and config.get("compile_config"))
            if not simple:
                return keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)
            # Not compiled here: compiling makes an optimizer, whose variables
            # cannot be created in the deferred scope (and compile=False asks none).
            config = {k: v for k, v in config.items() if k != "compile_config"}
            with host_initialization(weights_pending=True):
                model = keras.saving.deserialize_keras_object(config, safe_mode=safe_mode)
            with tempfile.TemporaryDirectory(prefix="keras-inception-load-") as tmp:
                # h5py reads an extracted file far faster than through the zip
                # stream (4 s instead of 0.5 s for Inception-v3).
                archive.extract(_WEIGHTS_ENTRY, tmp)
                model.load_weights(os.path.join(tmp, _WEIGHTS_ENTRY))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable .keras archive ({type(err).__name__}: "
                         f"{err}). Save the model again with model.save().") from err
    return model
