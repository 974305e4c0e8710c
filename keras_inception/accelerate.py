"""The fastest exact inference path of a Keras model on each backend.

:func:`inference_function` returns a callable with the model's outputs:

* **PyTorch**: Keras runs every convolution and pooling as a channels-last to
  channels-first copy, the op and a copy back, and BatchNormalization as three
  elementwise passes: profiled on Inception-v3 (batch 16, 299 px, 2-core CPU) the
  copies take 31 % of the time, BatchNormalization 17 %, the convolutions 28 %. Here
  the functional graph is translated once into native torch calls on NCHW tensors
  kept in ``channels_last`` memory (what oneDNN convolutions want: no layout copy at
  all), with BatchNormalization folded into the convolutions
  (:func:`keras_inception.optimize.fuse_batchnorm`), oneDNN's fused convolution +
  ReLU with weights prepacked once (on CPU), and ``"same"`` padding computed exactly
  as Keras does. Convolutions are then three quarters of the time, and Inception-v3
  runs 3x faster. On a CPU each stage of the network (the stem, each block) runs in
  batch chunks whose feature maps take at most ``chunk_bytes`` (12 MiB): glibc's
  malloc hands larger blocks back to the kernel when they are freed and maps fresh
  zero-filled pages for the next one, so whole batches of 299 px maps (up to 170 MiB
  each) page-fault on every call (Xception, batch 16: 473,000 minor faults and 0.90 s
  of system time per call, against 43,000 and 0.09 s in chunks); and it makes
  glibc keep freed memory altogether (:func:`keep_freed_memory`; JAX too). Layers it
  does not know run through Keras itself, so any functional model works.
* **JAX**: ``jax.jit`` of the BN-folded model's ``stateless_call``. XLA already fuses
  BatchNormalization into elementwise passes; the speed on a CPU comes from float32
  convolutions on Eigen rather than YNNPACK (:mod:`keras_inception.xla_cpu`: set for
  the process on import; where JAX started earlier, this executable is compiled with
  options to that effect) and from the zoo's convolution layers
  (:class:`keras_inception.layers.Conv2D`: depthwise as shifted slices; 1x1 as
  matrix products and an extra zero row for k x k ones in bfloat16, or while YNNPACK
  computes them), which every path of a zoo model uses, training included.
* **TensorFlow**: ``tf.function`` of the BN-folded model; ``jit_compile`` is off by
  default: XLA's CPU convolutions ran at half the speed of TensorFlow's oneDNN ones.

``precision="bfloat16"`` runs the convolutional body in bfloat16 and everything after
the last feature map (global pooling, dense layers, softmax) in float32, like a model
built under Keras' ``mixed_bfloat16`` policy (see :func:`mixed_precision_model`). It
pays off where bfloat16 arithmetic is faster than float32: GPUs, CPUs with AMX
(Inception-v3 at batch 16 on a 2-core CPU with AMX: 3.9-4.5x float32 on TensorFlow
and on PyTorch), and CPUs whose AVX512-BF16 dot product runs at twice the float32
FMA rate (a 2-core AMD EPYC: 2.03x on TensorFlow, 1.62x on PyTorch). Where that
instruction runs at half the FMA rate (the Intel CPU without AMX), oneDNN's
bfloat16 kernels are slower than its float32 ones; JAX's XLA:CPU gains only in its
matrix products, so Inception-v3 is no faster in bfloat16 there on any of these CPUs.
"""

from __future__ import annotations

import contextlib
import functools
import math

import keras

from keras_inception import xla_cpu
from keras_inception.layers import _jax_on_cpu, keras_class, same_padding
from keras_inception.optimize import batchnorm_affine, fuse_batchnorm

__all__ = ["InferenceFunction", "inference_function", "keep_freed_memory",
           "mixed_precision_model"]

PRECISIONS = ("float32", "bfloat16")

CPU_CHUNK_BYTES = 12 * 2**20
"""The default ``chunk_bytes`` of :func:`inference_function` on a CPU (PyTorch).

Below glibc's largest mmap threshold (32 MiB), so freed maps are reused from the
heap. Measured on the 2-core development CPU, batch 16, against whole batches in
the same process (``benchmarks/batch_chunks.py``): Inception-v3 1.03x,
Inception-ResNet-v2 1.04x, Xception 1.41x. Other budgets, one-off, same process:
Inception-v3 at 6 MiB about the same as at 12, at 24 MiB no faster than whole. A
process whose glibc keeps its freed memory (:func:`keep_freed_memory`, which
:func:`inference_function` calls by default) runs whole batches as fast, and both
faster; chunks still pay where it does not."""


# glibc's mallopt(3) parameters (malloc.h) and the values keep_freed_memory sets:
# blocks up to 1 GiB come from the heap, and the heap is never trimmed.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_SETTINGS = ((_M_MMAP_THRESHOLD, 2**30), (_M_TRIM_THRESHOLD, 2**31 - 1))


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep the memory this process frees, for its next use.

    PyTorch's and XLA:CPU's buffers come from ``malloc``. By default glibc serves a
    block larger than its mmap threshold (128 KiB, adapting up to 32 MiB) with fresh
    pages from the kernel and unmaps them when the block is freed, and hands the top
    of its heap back to the kernel; every call of a model then page-faults its
    feature maps in again, zero-filled. Measured on the accelerated models on
    PyTorch (batch 16, 299 px, 2-core CPU, three processes each way, median of six
    calls): Inception-v3 35,000-40,000 minor faults per call, none after this, and
    4-8 % more images/s; Inception-ResNet-v2 5-7 %; Xception, whose maps are
    already chunked small, 0-2 %. The slowest call fell from 0.75-0.99 of the
    median to 0.93-0.98. The peak resident memory stays the same (within 3 %), but
    the process keeps it between calls instead of giving it back. Training
    (Inception-v3, ``train_on_batch`` at batch 16, one process each way, twice):
    PyTorch 10-13 % more images/s with 5-7 % more peak memory, JAX 5 %.

    Process-wide and lasting: the same as starting Python with
    ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647``.
    :func:`inference_function` calls it on PyTorch and JAX on a CPU unless given
    ``keep_memory=False``, and the training recipes call it (their process only
    trains). Does nothing where malloc is not glibc's (macOS, Windows, musl).

    Returns:
        Whether glibc took the settings (once set, later calls return the same).

    Example:
        >>> import platform
        >>> from keras_inception.accelerate import keep_freed_memory
        >>> keep_freed_memory() == (platform.libc_ver()[0] == "glibc")
        True
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # A list, not a generator: every setting is made even if one is refused.
    return all([mallopt(param, value) == 1 for param, value in _KEEP_SETTINGS])


def _float32_layer(layer, output) -> bool:
    """Whether ``layer`` belongs to the float32 head under a mixed policy: every layer
    whose output is no longer a feature map (global pooling, flatten, dense)."""
    return len(output.shape) != 4


def mixed_precision_model(model, policy: str = "mixed_bfloat16"):
    """A copy of ``model`` computing under a mixed ``policy``, with a float32 head.

    Every layer whose output is a feature map (rank 4) computes in the policy's
    dtype; global pooling, flatten and dense layers (the classifier and the
    auxiliary heads) compute in float32, so logits and softmax keep float32's range
    and resolution. Variables stay float32 and are copied from ``model``.

    Args:
        model: a functional Keras model.
        policy: a mixed Keras dtype policy (``"mixed_bfloat16"`` or
            ``"mixed_float16"``).

    Returns:
        The new ``keras.Model`` (same layer names, inputs and outputs).

    Raises:
        ValueError: ``policy`` is not a mixed policy.

    Example:
        >>> import keras_inception
        >>> from keras_inception.accelerate import mixed_precision_model
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), classes=5)
        >>> mixed = mixed_precision_model(model)
        >>> (mixed.get_layer("mixed_5c").compute_dtype,
        ...  mixed.get_layer("predictions").compute_dtype)
        ('bfloat16', 'float32')
    """
    target = keras.DTypePolicy(policy)
    if target.compute_dtype == target.variable_dtype:
        raise ValueError(f"policy must be a mixed policy such as 'mixed_bfloat16', got "
                         f"{policy!r}.")
    float32_names = set()
    for layer in model.layers:
        outputs = [node.outputs for node in layer._inbound_nodes]
        if outputs and all(_float32_layer(layer, out) for outs in outputs
                           for out in outs):
            float32_names.add(layer.name)

    def clone(layer):
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = "float32" if layer.name in float32_names else policy
        return layer.__class__.from_config(config)

    from keras_inception.initializers import host_initialization

    # No random draw for the copy (on JAX each would compile): the weights follow.
    with host_initialization(weights_pending=True):
        mixed = keras.models.clone_model(model, clone_function=clone)
    mixed.set_weights(model.get_weights())
    return mixed


class InferenceFunction:
    """A compiled inference callable: ``outputs = fn(images)``.

    Built by :func:`inference_function`. Outputs have the structure of the model's
    (a tensor, or a dict with auxiliary heads) as backend tensors, always float32.

    Args:
        fn: the compiled callable.
        backend: the Keras backend it runs on.
        precision: ``"float32"`` or ``"bfloat16"``.
        path: what runs, in words (e.g. ``"torch native graph, channels_last"``).
        model: the Keras model it computes (BN-folded and/or mixed-precision copy).

    Attributes:
        backend: as given.
        precision: as given.
        path: as given.
        model: as given.
        chunks: how the last call split its batch (see the property).

    Example:
        >>> import keras, numpy as np
        >>> from keras_inception.accelerate import inference_function
        >>> image = keras.Input((8, 8, 3))
        >>> x = keras.layers.Conv2D(4, 3, use_bias=False)(image)
        >>> x = keras.layers.BatchNormalization()(x)
        >>> x = keras.layers.GlobalAveragePooling2D()(x)
        >>> model = keras.Model(image, keras.layers.Dense(5)(x))
        >>> fn = inference_function(model, precision="bfloat16")
        >>> fn.precision, tuple(fn(np.zeros((2, 8, 8, 3), "float32")).shape)
        ('bfloat16', (2, 5))
    """

    def __init__(self, fn, *, backend, precision, path, model):
        self._fn = fn
        self.backend = backend
        self.precision = precision
        self.path = path
        self.model = model

    def __call__(self, x):
        """Runs inference on a batch ``x`` (NumPy or a backend tensor)."""
        return self._fn(x)

    @property
    def chunks(self):
        """How the last call split its batch (PyTorch): ``[(first layer, last layer,
        images per chunk)]`` for each run of stages, in order; ``[]`` before the
        first call and on the backends that run whole batches. A model of a fixed
        input size is planned from its layers' shapes; otherwise the first call at
        an image size runs the whole batch and measures the feature maps."""
        return list(getattr(self._fn, "last_chunks", []))

    def __repr__(self):
        return (f"<InferenceFunction {self.model.name}: {self.path}, "
                f"{self.precision}>")


def inference_function(model, *, precision: str = "float32", fuse: bool = True,
                       jit_compile=None, chunk_bytes="auto",
                       keep_memory: bool = True) -> InferenceFunction:
    """The fastest exact inference path for ``model`` on the current backend.

    Outputs equal ``model(x, training=False)`` to float32 rounding (1e-5) with
    ``precision="float32"``. With ``"bfloat16"`` the feature maps are computed in
    bfloat16 and the head in float32: logits move by bfloat16 rounding (about 1 %),
    the arg-max class of confident predictions does not.

    Args:
        model: a functional Keras model (any of the zoo's, with or without its
            top or auxiliary heads, or one built on top of them).
        precision: ``"float32"`` or ``"bfloat16"``.
        fuse: fold BatchNormalization into the preceding convolutions first
            (exact up to rounding; only ever off to compare).
        jit_compile: TensorFlow only: compile with XLA (default False, measured
            slower on CPU; try True on a GPU).
        chunk_bytes: PyTorch only: run each stage of the network (the stem, each
            block) in batch chunks whose largest feature map takes at most this
            many bytes, so that the memory allocator reuses the maps' memory
            instead of mapping fresh pages each time (see the module docstring).
            ``"auto"``: :data:`CPU_CHUNK_BYTES` on a CPU, whole
            batches on a GPU; ``None``: whole batches. The outputs are equal to
            float32 rounding; :attr:`InferenceFunction.chunks` shows the split.
        keep_memory: on PyTorch and JAX on a CPU, call :func:`keep_freed_memory`
            (glibc: the process keeps the memory it frees, so feature maps stop
            page-faulting; process-wide). ``False`` leaves the allocator alone.
            TensorFlow's allocator keeps its memory already.

    Returns:
        An :class:`InferenceFunction`; call it on a batch of images in the
        model's data format (NumPy or backend tensors).

    Raises:
        ValueError: an unknown ``precision``, ``jit_compile`` off TensorFlow,
            ``chunk_bytes`` not ``"auto"``, ``None`` or a positive integer, or
            set off PyTorch, ``keep_memory`` not a bool.

    Example:
        >>> import keras, numpy as np
        >>> from keras_inception.accelerate import inference_function
        >>> from keras_inception.testing import deterministic_weights, reference_images
        >>> image = keras.Input((9, 9, 3))
        >>> x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(image)
        >>> x = keras.layers.BatchNormalization()(x)
        >>> x = keras.layers.Activation("relu")(x)
        >>> x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
        >>> x = keras.layers.GlobalAveragePooling2D()(x)
        >>> model = keras.Model(image, keras.layers.Dense(5, activation="softmax")(x))
        >>> deterministic_weights(model)
        >>> x = reference_images(2, 9)
        >>> fast = keras.ops.convert_to_numpy(inference_function(model)(x))
        >>> plain = keras.ops.convert_to_numpy(model(x, training=False))
        >>> bool(np.allclose(fast, plain, atol=1e-5))
        True
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    backend = keras.backend.backend()
    if jit_compile is not None and backend != "tensorflow":
        raise ValueError(f"jit_compile is a TensorFlow option; the {backend} backend "
                         f"always compiles its own way.")
    if chunk_bytes not in ("auto", None) and (
            isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int)
            or chunk_bytes <= 0):
        raise ValueError(f"chunk_bytes must be 'auto', None or a positive number of "
                         f"bytes, got {chunk_bytes!r}.")
    if chunk_bytes not in ("auto", None) and backend != "torch":
        raise ValueError(f"chunk_bytes is a PyTorch option; the {backend} backend runs "
                         f"whole batches (pass 'auto' or leave it out).")
    if not isinstance(keep_memory, bool):
        raise ValueError(f"keep_memory must be True or False, got {keep_memory!r}.")
    if fuse:
        model = _fuse(model)
    if backend == "torch":
        fn = _torch_function(model, precision, chunk_bytes)
        path = "torch native graph, channels_last"
        if fn.chunk_bytes is not None:
            path += f", batch chunks of <= {fn.chunk_bytes / 2**20:g} MiB feature maps"
    else:
        if precision == "bfloat16":
            model = mixed_precision_model(model, "mixed_bfloat16")
        if backend == "jax":
            fn, path = _jax_function(model)
        elif backend == "tensorflow":
            jit_compile = bool(jit_compile)
            fn = _tf_function(model, jit_compile)
            path = f"tf.function(jit_compile={jit_compile})"
        else:
            raise ValueError(f"No accelerated path for the {backend!r} backend; call the "
                             f"model itself.")
    if fuse:
        path += ", BatchNorm folded"
    if keep_memory and _on_cpu(backend, fn) and keep_freed_memory():
        path += ", malloc keeps freed memory"
    return InferenceFunction(fn, backend=backend, precision=precision, path=path,
                             model=model)


def _on_cpu(backend, fn) -> bool:
    """Whether a PyTorch or JAX inference function runs on the CPU."""
    if backend == "torch":
        return fn.device.type == "cpu"
    return backend == "jax" and _jax_on_cpu()


def _fuse(model):
    # Not strict: a BatchNormalization that cannot be folded exactly stays as it is.
    return fuse_batchnorm(model, strict=False)


def _as_float32(structure):
    return keras.tree.map_structure(
        lambda t: t if keras.backend.standardize_dtype(t.dtype) == "float32"
        else keras.ops.cast(t, "float32"), structure)


def _jax_function(model):
    """``(fn, path)``: the jitted ``stateless_call``; on a CPU whose process leaves
    float32 convolutions on YNNPACK (JAX started before keras_inception was
    imported), compiled and traced for Eigen's (:mod:`keras_inception.xla_cpu`)."""
    import jax

    def run(trainable, non_trainable, x):
        outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return _as_float32(outputs)

    options = xla_cpu.eigen_compiler_options()
    run = jax.jit(run, compiler_options=options) if options else jax.jit(run)
    tracing = xla_cpu.eigen_convolutions if options else contextlib.nullcontext
    path = "jax.jit(stateless_call)"
    if _jax_on_cpu():
        eigen = options or not xla_cpu.ynn_convolutions()
        path += f", float32 convolutions on {'Eigen' if eigen else 'YNNPACK'}"

    def call(x):
        # Values are read at each call: Keras' own compiled functions (fit, predict)
        # may donate the buffers of variables this model shares and replace them.
        with tracing():
            return run([v.value for v in model.trainable_variables],
                       [v.value for v in model.non_trainable_variables], x)

    return call, path


def _tf_function(model, jit_compile):
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def run(x):
        return _as_float32(model(x, training=False))

    return lambda x: run(tf.convert_to_tensor(x, dtype="float32"))


# --------------------------------------------------------------------------- torch
# The graph is translated into a list of steps over numbered slots. 4-D tensors live
# as torch's logical NCHW in channels_last memory whatever Keras' data format (a free
# view of NHWC data); other ranks are Keras' own.

_ELEMENTWISE = ("relu", "relu6", "sigmoid", "tanh", "silu", "swish", "gelu", "elu",
                "selu", "softplus", "hard_sigmoid", "leaky_relu", "linear")


def _activation_name(fn):
    name = getattr(fn, "__name__", None)
    return name if name in _ELEMENTWISE or name == "softmax" else None


class _Op:
    """One translated layer: ``fn(*inputs) -> outputs`` with its input/output slots."""

    def __init__(self, kind, layer, inputs, outputs, **params):
        self.kind, self.layer, self.inputs, self.outputs = kind, layer, inputs, outputs
        self.params = params


def _torch_function(model, precision, chunk_bytes):
    import torch

    return _TorchProgram(model, torch.bfloat16 if precision == "bfloat16"
                         else torch.float32, chunk_bytes)


class _TorchProgram:
    """The translated graph of a functional model, run with ``torch.inference_mode``."""

    def __init__(self, model, dtype, chunk_bytes):
        import torch

        self.torch = torch
        self.model = model
        self.dtype = dtype
        variables = model.weights
        self.device = variables[0].value.device if variables else torch.device("cpu")
        self.channels_last = keras.config.image_data_format() == "channels_last"
        self.slots = {}
        self.shapes = []  # Keras' static shape of each value, None where it varies
        self.input_slots = [self._slot(t) for t in model.inputs]
        ops = self._translate(model)
        consumers = {}
        for op in ops:
            for s in op.inputs:
                consumers[s] = consumers.get(s, 0) + 1
        self.output_slots = [self._slot(t) for t in keras.tree.flatten(model.outputs)]
        for s in self.output_slots:
            consumers[s] = consumers.get(s, 0) + 1  # an output is never overwritten
        ops = self._fold(ops, consumers)
        # oneDNN's fused convolution + ReLU with prepacked weights (CPU builds).
        self._onednn = (self.device.type == "cpu" and torch.backends.mkldnn.is_available()
                        and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))
        self.steps = [self._compile(op, consumers) for op in ops]
        self._op_inputs = [op.inputs for op in ops]
        self._layer_names = [op.layer.name for op in ops]
        self.last_chunks = []
        self._op_outputs = [op.outputs for op in ops]
        self.output_structure = model.output
        # Free each intermediate after its last use: peak memory of the eager model.
        last_use = {}
        for i, op in enumerate(ops):
            for s in op.inputs:
                last_use[s] = i
        keep = self._keep = set(self.output_slots)
        self.frees = [[s for s in set(op.inputs) if last_use[s] == i and s not in keep]
                      for i, op in enumerate(ops)]
        if chunk_bytes == "auto":
            chunk_bytes = CPU_CHUNK_BYTES if self.device.type == "cpu" else None
        self.chunk_bytes = chunk_bytes
        self.segments = self._segments(ops, last_use)
        self._plans = {}  # input shapes -> _plan's runs
        self._sizes = {}  # input shapes without the batch -> bytes per image, per op
        # A model of a fixed input size: the sizes from Keras' shapes, so that even
        # the first call runs in chunks (otherwise it runs whole and measures them).
        static = [self._torch_shape(self.shapes[s])[1:] for s in self.input_slots]
        if all(None not in shape for shape in static):
            self._sizes[tuple(static)] = [
                max(math.prod(self.shapes[s][1:]) * (dtype.itemsize
                                                     if len(self.shapes[s]) == 4 else 4)
                    for s in op.outputs)
                for op in ops]

    def _slot(self, tensor):
        key = id(tensor)
        if key not in self.slots:
            self.slots[key] = self._new_slot(tuple(tensor.shape))
        return self.slots[key]

    def _new_slot(self, shape):
        """A value's index in ``values``; ``shapes[index]`` is Keras' static shape."""
        self.shapes.append(shape)
        return len(self.shapes) - 1

    # ---- translation
    def _translate(self, model):
        available = {id(t) for t in model.inputs}
        ops = []
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(t) not in available for t in node.input_tensors):
                    continue
                inputs = [self._slot(t) for t in node.input_tensors]
                outputs = [self._slot(t) for t in node.outputs]
                available.update(id(t) for t in node.outputs)
                op = self._op(node, inputs, outputs)
                if isinstance(op, list):  # a separable conv: depthwise then pointwise
                    # The depthwise map: the output's size, cin x multiplier channels.
                    shape = list(node.outputs[0].shape)
                    shape[-1 if self.channels_last else 1] = op[0].params["weight"].shape[0]
                    slot = self._new_slot(tuple(shape))
                    op[0].outputs, op[1].inputs = [slot], [slot]
                    ops.extend(op)
                else:
                    ops.append(op)
        return ops

    def _weight(self, variable):
        return self.torch.as_tensor(keras.ops.convert_to_numpy(variable),
                                    device=self.device)

    def _op(self, node, inputs, outputs):
        layer = node.operation
        L = keras.layers
        rank_in = [len(self.shapes[s]) for s in inputs]
        spatial = all(r == 4 for r in rank_in)
        kind = keras_class(layer)
        if kind is L.InputLayer or kind in (L.Dropout, L.Identity, L.SpatialDropout2D,
                                            L.GaussianNoise, L.GaussianDropout):
            return _Op("identity", layer, inputs, outputs)
        act = _activation_name(getattr(layer, "activation", None))
        if kind in (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D) and spatial \
                and act is not None and act != "softmax":
            return self._conv_op(layer, inputs, outputs, act)
        if kind is L.BatchNormalization and spatial and layer.axis in (1, 3, -1):
            axis = layer.axis % 4
            if axis == (3 if self.channels_last else 1):
                scale, shift = batchnorm_affine(layer)
                t = lambda a: self.torch.as_tensor(a.astype("float32"), device=self.device)
                return _Op("affine", layer, inputs, outputs, scale=t(scale),
                           shift=t(shift))
        if kind is L.Activation and act is not None and (act != "softmax"
                                                         or rank_in == [2]):
            return _Op("activation", layer, inputs, outputs, act=act)
        if kind is L.ReLU and layer.max_value is None and not layer.negative_slope \
                and not layer.threshold:
            return _Op("activation", layer, inputs, outputs, act="relu")
        if kind in (L.MaxPooling2D, L.AveragePooling2D) and spatial:
            return _Op("pool", layer, inputs, outputs, mode=layer.pool_mode,
                       size=tuple(layer.pool_size), strides=tuple(layer.strides),
                       padding=layer.padding)
        if kind is L.ZeroPadding2D or getattr(kind, "__name__", "") == "ConstantPadding2D":
            (top, bottom), (left, right) = layer.padding
            return _Op("pad", layer, inputs, outputs, pads=(left, right, top, bottom),
                       value=float(getattr(layer, "value", 0.0)))
        if kind in (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D) and spatial:
            return _Op("global_pool", layer, inputs, outputs,
                       mode="avg" if kind is L.GlobalAveragePooling2D else "max",
                       keepdims=layer.keepdims)
        if kind is L.AdaptiveAveragePooling2D and spatial:
            return _Op("adaptive_avg", layer, inputs, outputs,
                       size=tuple(layer.output_size))
        if kind is L.Flatten and rank_in == [4]:
            return _Op("flatten", layer, inputs, outputs)
        if kind is L.Concatenate:
            axis = layer.axis % rank_in[0]
            if rank_in[0] == 4 and self.channels_last:
                axis = {0: 0, 1: 2, 2: 3, 3: 1}[axis]
            return _Op("concat", layer, inputs, outputs, axis=axis)
        if kind is L.Add:
            return _Op("add", layer, inputs, outputs)
        if type(layer).__name__ == "ScaledResidual":
            return _Op("scaled_residual", layer, inputs, outputs, scale=layer.scale)
        if kind is L.Dense and rank_in == [2] and act is not None:
            bias = self._weight(layer.bias) if layer.use_bias else None
            return _Op("dense", layer, inputs, outputs, act=act,
                       weight=self._weight(layer.kernel).T.contiguous(), bias=bias)
        return _Op("keras", layer, inputs, outputs, node=node)

    def _conv_op(self, layer, inputs, outputs, act):
        common = dict(strides=tuple(layer.strides), dilation=tuple(layer.dilation_rate),
                      padding=layer.padding)
        bias = self._weight(layer.bias) if layer.use_bias else None
        if isinstance(layer, keras.layers.SeparableConv2D):
            depthwise = self._weight(layer.depthwise_kernel)  # (kh, kw, cin, mult)
            kh, kw, cin, mult = depthwise.shape
            dw = depthwise.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
            pointwise = self._weight(layer.pointwise_kernel).permute(3, 2, 0, 1)
            first = _Op("conv", layer, inputs, [None], weight=dw, bias=None, groups=cin,
                        act="linear", **common)
            second = _Op("conv", layer, [None], outputs, weight=pointwise, bias=bias,
                         groups=1, act=act, strides=(1, 1), dilation=(1, 1),
                         padding="valid")
            return [first, second]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = self._weight(layer.kernel)  # (kh, kw, cin, mult)
            kh, kw, cin, mult = kernel.shape
            weight = kernel.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
            groups = cin
        else:
            weight = self._weight(layer.kernel).permute(3, 2, 0, 1)
            groups = layer.groups
        return _Op("conv", layer, inputs, outputs, weight=weight, bias=bias,
                   groups=groups, act=act, **common)

    # ---- peephole: symmetric zero padding and ReLU into the convolutions
    def _fold(self, ops, consumers):
        producer = {}
        out = []
        for op in ops:
            src = producer.get(op.inputs[0]) if len(op.inputs) == 1 else None
            alone = len(op.inputs) == 1 and consumers.get(op.inputs[0]) == 1
            if (op.kind == "conv" and src is not None and alone and src.kind == "pad"
                    and src.params["value"] == 0.0 and op.params["padding"] == "valid"):
                left, right, top, bottom = src.params["pads"]
                if left == right and top == bottom:
                    op.params["padding"] = (top, left)
                    op.inputs = src.inputs
                    out.remove(src)
            elif (op.kind == "activation" and op.params["act"] == "relu"
                  and src is not None and alone and src.kind == "conv"
                  and src.params["act"] == "linear"):
                src.params["act"] = "relu"
                src.outputs = op.outputs
                producer.update({s: src for s in op.outputs})
                continue
            out.append(op)
            producer.update({s: op for s in op.outputs})
        return out

    # ---- code generation
    def _compile(self, op, consumers):
        torch = self.torch
        F = torch.nn.functional
        p = op.params
        dtype = self.dtype
        mkldnn = torch.ops.mkldnn
        out_rank = len(self.shapes[op.outputs[0]])
        # Mixed precision: feature maps in ``dtype``, the head (rank < 4) in float32.
        head = out_rank != 4
        if op.kind == "identity":
            return lambda x: x
        if op.kind == "conv":
            weight = p["weight"].to(dtype).contiguous(memory_format=torch.channels_last)
            bias = None if p["bias"] is None else p["bias"].to(dtype)
            strides, dilation, groups = p["strides"], p["dilation"], p["groups"]
            padding, kernel = p["padding"], weight.shape[2:]
            act = p["act"]
            post = _torch_activation(act, inplace=True)

            # oneDNN's blocked weights, per input shape: the same outputs for any
            # batch size, but Xception's batch of 16 ran at 8.3 instead of 13.5
            # images/s with the weights blocked for one image.
            packed = {}
            fused = self._onednn and act in ("linear", "relu")
            attr = "none" if act == "linear" else "relu"

            def conv(x):
                if padding == "same":
                    pads = [same_padding(x.shape[2 + i], kernel[i], strides[i],
                                          dilation[i]) for i in range(2)]
                    if pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]:
                        pad = (pads[0][0], pads[1][0])
                    else:
                        x = F.pad(x, (*pads[1], *pads[0]))
                        pad = (0, 0)
                else:
                    pad = (0, 0) if padding == "valid" else tuple(padding)
                if not fused:
                    return post(F.conv2d(x, weight, bias, strides, pad, dilation, groups))
                # Prepacked once (F.conv2d reorders the weights on every call) and
                # the ReLU computed by the convolution itself.
                key = (tuple(x.shape), pad)
                if key not in packed:
                    packed[key] = mkldnn._reorder_convolution_weight(
                        weight, list(pad), list(strides), list(dilation), groups,
                        list(x.shape))
                return mkldnn._convolution_pointwise(
                    x, packed[key], bias, list(pad), list(strides), list(dilation),
                    groups, attr, [], "")

            return conv
        if op.kind == "affine":
            scale = p["scale"].to(dtype).reshape(1, -1, 1, 1)
            shift = p["shift"].to(dtype).reshape(1, -1, 1, 1)
            return lambda x: torch.addcmul(shift, x, scale)
        if op.kind == "activation":
            inplace = consumers.get(op.inputs[0]) == 1
            fn = _torch_activation(p["act"], inplace=inplace)
            return (lambda x: fn(x.float())) if head else fn
        if op.kind == "pool":
            return _torch_pool(torch, p["mode"], p["size"], p["strides"], p["padding"])
        if op.kind == "pad":
            pads, value = p["pads"], p["value"]
            return lambda x: F.pad(x, pads, value=value)
        if op.kind == "global_pool":
            reduce = torch.mean if p["mode"] == "avg" else torch.amax
            keepdims = p["keepdims"]

            # The head's pooling sums in float32 (mixed precision: a float32 head).
            return lambda x: reduce(x if keepdims else x.float(), dim=(2, 3),
                                    keepdim=keepdims)
        if op.kind == "adaptive_avg":
            size = p["size"]
            return lambda x: F.adaptive_avg_pool2d(x, size)
        if op.kind == "flatten":
            if self.channels_last:
                return lambda x: x.float().permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            return lambda x: x.float().reshape(x.shape[0], -1)
        if op.kind == "concat":
            axis = p["axis"]
            return lambda *xs: torch.cat(xs, axis)
        if op.kind == "add":
            def add(*xs):
                y = xs[0] + xs[1]
                for x in xs[2:]:
                    y = y + x
                return y

            return add
        if op.kind == "scaled_residual":
            scale = p["scale"]
            return lambda shortcut, residual: shortcut + residual * scale
        if op.kind == "dense":
            weight, bias = p["weight"], p["bias"]
            post = _torch_activation(p["act"], inplace=True)
            return lambda x: post(F.linear(x.float(), weight, bias))
        return self._keras_step(op)

    def _keras_step(self, op):
        """Runs a layer the translator does not know through Keras (exact, slower)."""
        torch = self.torch
        node, layer = op.params["node"], op.layer
        dtype = self.dtype
        to_keras = self._to_keras

        def step(*xs):
            values = {id(t): to_keras(x.float()) for t, x in zip(node.input_tensors, xs)}
            args, kwargs = node.arguments.fill_in(values)
            kwargs.pop("training", None)
            outs = layer(*args, **kwargs, training=False)
            outs = [self._from_keras(torch.as_tensor(o)) for o in keras.tree.flatten(outs)]
            outs = [o.to(dtype) if o.ndim == 4 else o for o in outs]
            return outs[0] if len(outs) == 1 else outs

        step.multiple_outputs = len(op.outputs) > 1
        return step

    def _torch_shape(self, shape):
        """A Keras shape in the layout of the torch values (NCHW for images)."""
        if len(shape) == 4 and self.channels_last:
            return (shape[0], shape[3], shape[1], shape[2])
        return tuple(shape)

    def _to_keras(self, x):
        return x.permute(0, 2, 3, 1) if x.ndim == 4 and self.channels_last else x

    def _from_keras(self, x):
        torch = self.torch
        if x.ndim != 4:
            return x
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return x.contiguous(memory_format=torch.channels_last)

    # ---- batch chunks
    def _segments(self, ops, last):
        """Cuts the ops where one feature map is all that later ops read (after the
        stem, between blocks): ``[(start, stop, inputs, outputs, per_sample)]``.

        A segment's outputs are what later ops read and the model outputs it makes;
        ``per_sample``: every op treats the images of the batch independently;
        ``last``: the index of the last op that reads each slot."""
        model_outputs = self._keep
        read_later = {s for s in self.input_slots if s in last}
        made = [s for s in self.input_slots if s in model_outputs]
        segments, start, inputs = [], 0, list(self.input_slots)
        for i, op in enumerate(ops):
            read_later.update(s for s in op.outputs if last.get(s, -1) > i)
            read_later.difference_update(s for s in op.inputs if last[s] == i)
            made += [s for s in op.outputs if s in model_outputs]
            if i + 1 == len(ops) or (len(read_later) == 1
                                     and len(self.shapes[next(iter(read_later))]) == 4):
                outputs = sorted(read_later) + [s for s in dict.fromkeys(made)
                                                if s not in read_later]
                per_sample = all(o.kind != "keras" for o in ops[start:i + 1])
                segments.append((start, i + 1, inputs, outputs, per_sample))
                start, inputs, made = i + 1, sorted(read_later), []
        return segments

    def _plan(self, sizes, batch):
        """``[(start, stop, inputs, outputs, chunk)]``: runs of segments, each in batch
        chunks whose largest feature map takes at most ``chunk_bytes``."""
        parts = []  # the batch in 1, 2, 4, ... chunks, per segment
        for start, stop, inputs, outputs, per_sample in self.segments:
            k = 1
            if per_sample and self.chunk_bytes is not None:
                biggest = max(sizes[start:stop])
                while k < batch and -(-batch // k) * biggest > self.chunk_bytes:
                    k *= 2
            parts.append(k if per_sample else 0)
        # Never more chunks after fewer: joining chunks back into a batch copies the
        # feature map, so the small chunks of the stem go on until it is done.
        for i in range(len(parts) - 2, -1, -1):
            if parts[i] and parts[i + 1]:
                parts[i] = max(parts[i], parts[i + 1])
        runs = []
        for (start, stop, inputs, outputs, _), k in zip(self.segments, parts):
            chunk = -(-batch // max(k, 1))
            if runs and runs[-1][4] == chunk:
                # One run: what it hands on is the last segment's outputs and every
                # model output (a feature tap) its earlier segments made.
                made = [s for s in runs[-1][3] if s in self._keep and s not in outputs]
                runs[-1] = (runs[-1][0], stop, runs[-1][2], made + outputs, chunk)
            else:
                runs.append((start, stop, inputs, outputs, chunk))
        return runs

    # ---- execution
    def __call__(self, *inputs):
        torch = self.torch
        with torch.inference_mode():
            values = [None] * len(self.shapes)
            for s, x in zip(self.input_slots, inputs):
                x = torch.as_tensor(x, device=self.device)
                if x.ndim == 4:
                    x = self._from_keras(x).to(self.dtype)
                values[s] = x
            shapes = tuple(tuple(values[s].shape) for s in self.input_slots)
            batch, per_image = shapes[0][0], tuple(shape[1:] for shape in shapes)
            if shapes not in self._plans and per_image in self._sizes:
                self._plans[shapes] = self._plan(self._sizes[per_image], batch)
            plan = self._plans.get(shapes)
            names = self._layer_names
            self.last_chunks = [(names[start], names[stop - 1], min(chunk, batch))
                                for start, stop, _, _, chunk in
                                plan or [(0, len(self.steps), None, None, batch)]]
            if plan is None:
                # First call at this image size: the whole batch, measuring the maps.
                sizes = self._sizes[per_image] = [0] * len(self.steps)
                self._run(values, 0, len(self.steps), sizes, batch)
                self._plans[shapes] = self._plan(sizes, batch)
            for start, stop, run_inputs, run_outputs, chunk in plan or ():
                if chunk >= batch:
                    self._run(values, start, stop)
                else:
                    self._run_chunked(values, start, stop, run_inputs, run_outputs,
                                      chunk, batch)
            outs = [values[s] for s in self.output_slots]
            outs = [(self._to_keras(o) if o.ndim == 4 else o).float() for o in outs]
        return keras.tree.pack_sequence_as(self.output_structure, outs)

    def _run_chunked(self, values, start, stop, inputs, outputs, chunk, batch):
        whole = [values[s] for s in inputs]
        pieces = [[] for _ in outputs]
        for first in range(0, batch, chunk):
            for s, x in zip(inputs, whole):
                values[s] = x[first:first + chunk]  # channels_last: still contiguous
            self._run(values, start, stop)
            for piece, s in zip(pieces, outputs):
                piece.append(values[s])
        for s, x in zip(inputs, whole):
            if values[s] is not None:  # still needed (a model output): the whole batch
                values[s] = x
        del whole
        for piece, s in zip(pieces, outputs):
            values[s] = self.torch.cat(piece) if len(piece) > 1 else piece[0]

    def _run(self, values, start, stop, sizes=None, batch=1):
        """Runs ops ``start:stop`` on ``values``; ``sizes`` records each op's largest
        output in bytes per image."""
        for i in range(start, stop):
            y = self.steps[i](*[values[s] for s in self._op_inputs[i]])
            outputs = self._op_outputs[i]
            if len(outputs) == 1:
                values[outputs[0]] = y
            else:
                for s, v in zip(outputs, y):
                    values[s] = v
            if sizes is not None:
                sizes[i] = max(values[s].numel() * values[s].element_size()
                               for s in outputs) // max(batch, 1)
            for s in self.frees[i]:
                values[s] = None


def _torch_activation(name, inplace):
    import torch

    if name == "linear":
        return lambda x: x
    if name == "relu":
        return (lambda x: x.relu_()) if inplace else torch.relu
    if name == "softmax":
        return lambda x: torch.softmax(x, dim=-1)
    fn = keras.activations.get(name)
    return lambda x: torch.as_tensor(fn(x))


def _torch_pool(torch, mode, size, strides, padding):
    """Keras pooling on NCHW: "same" pads like TensorFlow (averages exclude padding)."""
    F = torch.nn.functional
    counts = {}

    def pool(x):
        if padding == "valid":
            pads = ((0, 0), (0, 0))
        else:
            pads = tuple(same_padding(x.shape[2 + i], size[i], strides[i])
                         for i in range(2))
        if all(a == b for a, b in pads):
            pad = (pads[0][0], pads[1][0])
            if mode == "max":
                return F.max_pool2d(x, size, strides, pad)
            return F.avg_pool2d(x, size, strides, pad, count_include_pad=False)
        flat = (*pads[1], *pads[0])
        if mode == "max":
            return F.max_pool2d(F.pad(x, flat, value=-math.inf), size, strides)
        # Asymmetric: sum over the window / number of real pixels in it.
        key = (tuple(x.shape[2:]), x.dtype, x.device)
        if key not in counts:
            ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
            counts[key] = F.avg_pool2d(F.pad(ones, flat), size, strides)
        return F.avg_pool2d(F.pad(x, flat), size, strides) / counts[key]

    return pool
