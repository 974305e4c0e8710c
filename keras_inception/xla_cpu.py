"""Which library XLA:CPU hands the zoo's float32 convolutions to, on JAX.

jaxlib 0.10's XLA:CPU sends float32 convolutions to YNNPACK by default (its
``--xla_cpu_experimental_ynn_fusion_type`` includes ``individual_convolution``;
bfloat16 ones, and those whose output is larger than their input, stay on Eigen).
On Inception's convolutions Eigen is faster (benchmarks/conv_lowering.py, 2-core
AMD EPYC, batch 16: Inception-v3's 94 convolutions 1477 ms with YNNPACK, 654-791 ms with
Eigen; training steps 2.6 -> 5.2 images/s, docs/benchmarks.md "JAX"). So importing
keras_inception on the JAX backend with jaxlib 0.10 adds
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` to ``XLA_FLAGS``,
which XLA reads when JAX starts its CPU client, i.e. on the first computation. It
does not when:

* ``XLA_FLAGS`` already names that flag (yours wins: ``=+individual_convolution``
  keeps XLA's default);
* ``KERAS_INCEPTION_XLA_CPU_LOWERING=0`` is set (the zoo leaves XLA:CPU alone);
* JAX has already computed something in this process (too late: the flag would
  not take effect); or jaxlib is not 0.10 (other versions may lack the flag, and
  XLA aborts on unknown flags).

Whatever happened, :func:`ynn_convolutions` says what this process's XLA:CPU does,
and :class:`keras_inception.layers.Conv2D` picks its lowering from it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.metadata
import os
import sys

__all__ = ["configure", "eigen_compiler_options", "eigen_convolutions",
           "lowering_off", "user_sets_flag", "ynn_convolutions"]

FLAG = "xla_cpu_experimental_ynn_fusion_type"
_OFF = f"--{FLAG}=-individual_convolution"
# jaxlib 0.10's default list without the convolutions, for one executable's
# compiler_options (which take a list, not "-name"): see accelerate's JAX path.
EIGEN_OPTIONS = {FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
_TRACING_FOR_EIGEN = contextvars.ContextVar("keras_inception_eigen_convolutions",
                                             default=False)


def _jaxlib_0_10() -> bool:
    try:
        return importlib.metadata.version("jaxlib").startswith("0.10.")
    except importlib.metadata.PackageNotFoundError:
        return False


def _jax_started() -> bool:
    """Whether JAX has created its backends (XLA has read ``XLA_FLAGS``)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # a jax without it: assume the worst, leave the flags alone
        return True
    return xla_bridge.backends_are_initialized()


def lowering_off(environ=None) -> bool:
    """Whether ``KERAS_INCEPTION_XLA_CPU_LOWERING=0``: the zoo leaves XLA:CPU alone.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        True where the zoo runs Keras' ops on XLA's default flags.

    Example:
        >>> from keras_inception import xla_cpu
        >>> xla_cpu.lowering_off({"KERAS_INCEPTION_XLA_CPU_LOWERING": "0"})
        True
    """
    environ = os.environ if environ is None else environ
    return environ.get("KERAS_INCEPTION_XLA_CPU_LOWERING", "1") == "0"


def user_sets_flag(environ=None) -> bool:
    """Whether ``XLA_FLAGS`` names the YNNPACK fusion flag.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        True if the flag is there, whoever put it there.

    Example:
        >>> from keras_inception import xla_cpu
        >>> xla_cpu.user_sets_flag({"XLA_FLAGS": "--xla_dump_to=/tmp/x"})
        False
    """
    environ = os.environ if environ is None else environ
    return FLAG in environ.get("XLA_FLAGS", "")


def configure(backend: str, environ=None) -> bool:
    """Takes float32 convolutions off YNNPACK for this process, where that applies.

    Adds ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` to
    ``environ["XLA_FLAGS"]`` (see the module docstring for when it does not).

    Args:
        backend: the Keras backend's name; nothing happens unless ``"jax"``.
        environ: the environment to change (default ``os.environ``).

    Returns:
        Whether it added the flag.

    Example:
        >>> from keras_inception import xla_cpu
        >>> env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"}
        >>> xla_cpu.configure("jax", env), env["XLA_FLAGS"].count("ynn")
        (False, 1)
        >>> xla_cpu.configure("torch", {})
        False
    """
    environ = os.environ if environ is None else environ
    if backend != "jax" or lowering_off(environ):
        return False
    if user_sets_flag(environ) or not _jaxlib_0_10() or _jax_started():
        return False
    environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {_OFF}".strip()
    return True


def eigen_compiler_options():
    """``compiler_options`` for ``jax.jit`` that keep float32 convolutions off YNNPACK.

    For one executable, where this process's flags leave them on it and the
    user has not chosen (no flag named, no ``KERAS_INCEPTION_XLA_CPU_LOWERING=0``);
    otherwise None. Trace such a function inside :func:`eigen_convolutions`.

    Returns:
        A dict for ``jax.jit(..., compiler_options=...)``, or None.

    Example:
        >>> from keras_inception import xla_cpu
        >>> options = xla_cpu.eigen_compiler_options()  # None: this process has the flag
        >>> options is None or options == xla_cpu.EIGEN_OPTIONS
        True
    """
    if lowering_off() or user_sets_flag() or not _jaxlib_0_10() or not ynn_convolutions():
        return None
    return dict(EIGEN_OPTIONS)


@contextlib.contextmanager
def eigen_convolutions():
    """A context in which :func:`ynn_convolutions` is False.

    For tracing a function that is compiled with ``EIGEN_OPTIONS``.

    Yields:
        Nothing; the zoo's layers traced inside pick Eigen's rule.

    Example:
        >>> from keras_inception import xla_cpu
        >>> with xla_cpu.eigen_convolutions():
        ...     xla_cpu.ynn_convolutions()
        False
    """
    token = _TRACING_FOR_EIGEN.set(True)
    try:
        yield
    finally:
        _TRACING_FOR_EIGEN.reset(token)


def ynn_convolutions() -> bool:
    """Whether XLA:CPU computes float32 convolutions with YNNPACK in this process.

    False off JAX's CPU platform, and inside :func:`eigen_convolutions`.

    Returns:
        What one compiled convolution shows (cached for the process).

    Example:
        >>> from keras_inception import xla_cpu
        >>> isinstance(xla_cpu.ynn_convolutions(), bool)
        True
    """
    return not _TRACING_FOR_EIGEN.get() and _probe()


@functools.lru_cache(maxsize=None)
def _probe() -> bool:
    # Compiles (does not run) one 32-channel float32 convolution, the smallest kind
    # YNNPACK takes, and looks for its custom call in the optimised HLO.
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax
    import jax.numpy as jnp
    from jax import lax

    if jax.default_backend() != "cpu":
        return False

    def conv(x, kernel):
        return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x = jax.ShapeDtypeStruct((1, 8, 8, 32), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
    return "__ynn" in jax.jit(conv).lower(x, kernel).compile().as_text()
