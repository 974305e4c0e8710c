"""Building blocks shared by every Inception family.

Every block takes a ``name`` prefix and derives the names of the layers it creates
from it, so that weight maps, feature taps and freezing helpers can address them.
Branch layouts are data (tuples of :class:`Conv`, :class:`Pool` and :class:`Fork`
ops), so an Inception module is written once and each family only lists its
branches. Op names follow the TF-Slim scopes, lower-cased.

Two padding arithmetics coexist upstream. TF-Slim and Keras pad "same" (the extra
pixel of an even total after the data) and leave padding out of averages; PyTorch
pads explicitly and symmetrically, counts zero padding in averages by default, and
rounds pooled sizes up with ``ceil_mode``. Weights run with the arithmetic they come
from: an op whose ``padding`` is a number pads torch's way (a ``{name}_pad`` layer,
then a valid op), see :func:`conv_bn` and :func:`pool`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence, Union

import keras
from keras import layers

from keras_inception import xla_cpu

__all__ = [
    "ConstantPadding2D", "Conv", "Conv2D", "Fork", "Norm", "Pool", "ScaledResidual",
    "SeparableConv2D", "apply_ops", "aux_head", "aux_head_v1", "channel_axis",
    "check_arithmetic", "classifier_head", "conv_bn", "inception_module",
    "inception_resnet_block", "iter_convs", "keras_class", "map_ops", "module_convs",
    "pool", "same_padding", "stem_and_modules",
]


@dataclasses.dataclass(frozen=True)
class Norm:
    """BatchNormalization settings of a family.

    TF-Slim and keras.applications' v3/IRv2 train without gamma (``scale=False``);
    torch ports and Xception keep it. The epsilon travels with the weights.

    Attributes:
        scale: whether BatchNormalization has a gamma.
        epsilon: its epsilon.
        momentum: its moving-average momentum.

    Example:
        >>> from keras_inception.layers import Norm
        >>> Norm(scale=True, epsilon=1e-5)
        Norm(scale=True, epsilon=1e-05, momentum=0.99)
    """

    scale: bool = False
    epsilon: float = 1e-3
    momentum: float = 0.99


# Padding arithmetic of a model: "tf" (TF-Slim / Keras) or "torch" (torchvision, timm).
ARITHMETICS = ("tf", "torch")


def check_arithmetic(arithmetic: str) -> str:
    """Validates a constructor's ``arithmetic`` argument.

    Args:
        arithmetic: ``"tf"`` (TF-Slim/Keras padding and pooling) or ``"torch"``.

    Returns:
        ``arithmetic``.

    Raises:
        ValueError: anything else (the message says which to pick when).

    Example:
        >>> from keras_inception.layers import check_arithmetic
        >>> check_arithmetic("torch")
        'torch'
    """
    if arithmetic not in ARITHMETICS:
        raise ValueError(
            f"arithmetic must be 'tf' (TF-Slim/Keras padding and pooling, for weights "
            f"trained or converted there) or 'torch' (torchvision/timm's, for weights "
            f"converted from them), got {arithmetic!r}.")
    return arithmetic


@dataclasses.dataclass(frozen=True)
class Conv:
    """A conv + BN + ReLU op inside a branch (kernel may be ``(rows, cols)``).

    Attributes:
        name: the op name (its layers are ``{prefix}_{name}_conv``, ``_bn``, ``_act``).
        filters: output channels.
        kernel: kernel size, an int or ``(rows, cols)``.
        strides: the stride.
        padding: ``"same"``, ``"valid"``, or a number of zeros padded on every
            side first (torch's ``Conv2d(padding=n)``).

    Example:
        >>> from keras_inception.layers import Conv
        >>> Conv("conv2d_0b_1x7", 192, (1, 7)).kernel
        (1, 7)
    """

    name: str
    filters: int
    kernel: Union[int, tuple]
    strides: int = 1
    padding: Union[str, int] = "same"


@dataclasses.dataclass(frozen=True)
class Pool:
    """A pooling op inside a branch (``kind`` is ``"max"`` or ``"avg"``).

    Attributes:
        name: the op name (the pooling layer is ``{prefix}_{name}``).
        kind: ``"max"`` or ``"avg"``.
        size: the window side.
        strides: the stride.
        padding: ``"same"``, ``"valid"``, or torch's symmetric padding (a number;
            averages count it as zeros, as ``count_include_pad=True``).
        ceil_mode: torch's rounding up of the output size (a partial last window
            is kept).

    Example:
        >>> from keras_inception.layers import Pool
        >>> Pool("maxpool_0a_3x3", "max", strides=2, padding="valid").size
        3
    """

    name: str
    kind: str
    size: int = 3
    strides: int = 1
    padding: Union[str, int] = "same"
    ceil_mode: bool = False


@dataclasses.dataclass(frozen=True)
class Fork:
    """Splits a branch into parallel sub-branches and concatenates them (v3's 7b/7c).

    Attributes:
        name: the name of the concatenation (``{prefix}_{name}``).
        paths: the sub-branches, each a tuple of ops.

    Example:
        >>> from keras_inception.layers import Conv, Fork
        >>> fork = Fork("concat", ((Conv("conv2d_0b_1x3", 384, (1, 3)),),
        ...                        (Conv("conv2d_0c_3x1", 384, (3, 1)),)))
        >>> len(fork.paths)
        2
    """

    name: str
    paths: tuple


Op = Union[Conv, Pool, Fork]


def channel_axis() -> int:
    """The channel axis of the current Keras image data format.

    Returns:
        -1 for ``channels_last``, 1 for ``channels_first``.

    Example:
        >>> import keras
        >>> from keras_inception.layers import channel_axis
        >>> channel_axis() == (-1 if keras.config.image_data_format() == "channels_last"
        ...                    else 1)
        True
    """
    return -1 if keras.config.image_data_format() == "channels_last" else 1


@keras.saving.register_keras_serializable(package="keras_inception")
class ConstantPadding2D(layers.Layer):
    """Pads rows and columns with ``value``: ``((top, bottom), (left, right))``.

    Torch's max pooling pads with -inf (padding never wins), which
    ``ZeroPadding2D`` cannot express.

    Args:
        padding: ``((top, bottom), (left, right))`` in pixels.
        value: the padding value.
        data_format: ``"channels_last"`` or ``"channels_first"`` (default: Keras').
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ...).

    Example:
        >>> import math, numpy as np
        >>> from keras_inception.layers import ConstantPadding2D
        >>> pad = ConstantPadding2D(((1, 0), (0, 2)), value=-math.inf,
        ...                         data_format="channels_last")
        >>> out = np.asarray(pad(np.ones((1, 2, 2, 1), "float32")))
        >>> out.shape, out[0, 0, 0, 0], out[0, 1, 1, 0]
        ((1, 3, 4, 1), np.float32(-inf), np.float32(1.0))
    """

    def __init__(self, padding, value=0.0, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = tuple(tuple(int(p) for p in side) for side in padding)
        self.value = float(value)
        self.data_format = data_format or keras.config.image_data_format()

    def _pad_width(self):
        (top, bottom), (left, right) = self.padding
        if self.data_format == "channels_last":
            return [(0, 0), (top, bottom), (left, right), (0, 0)]
        return [(0, 0), (0, 0), (top, bottom), (left, right)]

    def call(self, inputs):
        return keras.ops.pad(inputs, self._pad_width(), constant_values=self.value)

    def compute_output_shape(self, input_shape):
        return tuple(None if dim is None else dim + before + after
                     for dim, (before, after) in zip(input_shape, self._pad_width()))

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "value": self.value,
                "data_format": self.data_format}


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple:
    """Keras' ``"same"`` padding of one spatial axis: ``(before, after)``.

    The odd pixel of an odd total goes after the data (TensorFlow's rule, which
    Keras follows on every backend).

    Args:
        size: the input length.
        kernel: the kernel (or pooling window) length.
        stride: the stride.
        dilation: the dilation rate.

    Returns:
        ``(before, after)`` in pixels.

    Example:
        >>> from keras_inception.layers import same_padding
        >>> same_padding(35, 3, 1), same_padding(8, 3, 2), same_padding(8, 1, 2)
        ((1, 1), (0, 1), (0, 0))
    """
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


# ----------------------------------------------------------------- XLA:CPU lowering
# Measured on XLA:CPU (jax 0.10.2, 2-core AVX-512 CPU, batch 16) by
# benchmarks/conv_lowering.py on Inception-v3 (docs/benchmarks.md, "JAX"). XLA gives
# float32 convolutions to YNNPACK by default, and YNNPACK's are slow on these shapes:
# 1x1 convolutions run 2.1x faster as one matrix product, k x k ones 1.1-2.8x faster
# given one more zero row after the data (which YNNPACK does not take: the output
# would be larger than the input, so XLA runs them on Eigen). With YNNPACK's
# convolutions off (keras_inception.xla_cpu, the default on import), Keras' op beats
# both tricks (all 94 convolutions 654 ms vs 740), so float32 convolutions take them
# only while YNNPACK's are on. bfloat16 ones always run on Eigen and keep them
# (1x1 products accumulate in float32: _matmul). Depthwise convolutions
# (feature_group_count = channels) are slow on both (Xception 1.6 images/s), 5.7x
# faster as a sum of shifted, scaled slices. Other backends and accelerators (cuDNN)
# run Keras' own op.


def _xla_cpu(layer) -> bool:
    """Whether ``layer`` runs the XLA:CPU lowering: JAX on CPU, channels_last, no
    dilation (evaluated while tracing: a model moved to a GPU runs Keras' op), unless
    the environment sets ``KERAS_INCEPTION_XLA_CPU_LOWERING=0``."""
    if keras.backend.backend() != "jax" or layer.data_format != "channels_last":
        return False
    if xla_cpu.lowering_off():
        return False
    if any(d != 1 for d in layer.dilation_rate):
        return False
    return _jax_on_cpu()


def _conv_lowering_pays(inputs) -> bool:
    """Whether a (non-depthwise) convolution of ``inputs`` is faster lowered (see
    above): bfloat16 ones, and float32 ones while YNNPACK computes them."""
    return keras.backend.standardize_dtype(inputs.dtype) == "bfloat16" or \
        xla_cpu.ynn_convolutions()


def _jax_on_cpu() -> bool:
    """Whether JAX computes on its CPU platform (evaluated when called)."""
    import jax

    return jax.default_backend() == "cpu"


def _explicit_padding(shape, kernel, strides, padding):
    """``((top, bottom), (left, right))`` of a "same" or "valid" NHWC convolution."""
    if padding == "valid":
        return (0, 0), (0, 0)
    return tuple(same_padding(shape[1 + i], kernel[i], strides[i]) for i in range(2))


def _output_size(shape, kernel, strides, pads):
    """``(rows, cols)`` of an NHWC convolution's output, explicit ``pads``."""
    return tuple((shape[1 + i] + sum(pads[i]) - kernel[i]) // strides[i] + 1
                 for i in range(2))


def _conv_lowering(x, kernel, strides, padding):
    """An NHWC convolution (HWIO kernel), as XLA:CPU computes it fastest."""
    import jax.numpy as jnp

    kh, kw, cin, cout = kernel.shape
    (sh, sw), pads = strides, _explicit_padding(x.shape, (kh, kw), strides, padding)
    if (kh, kw) == (1, 1):  # "same" pads nothing for a 1x1 kernel either
        x = x[:, ::sh, ::sw] if (sh, sw) != (1, 1) else x
        return _matmul(x, kernel[0, 0])
    return _row_padded_conv()(x, kernel, (sh, sw), pads)


def _matmul(x, kernel):
    """``x @ kernel`` over the last axis; bfloat16 operands accumulate in float32,
    rounded once to bfloat16 at the end.

    XLA:CPU runs a bfloat16 x bfloat16 -> float32 product on the CPU's bfloat16
    dot-product instructions: 1.7-5.6x faster than the bfloat16 -> bfloat16 one on
    eight of Inception-v3's 1x1 shapes (AMD EPYC with AVX512-BF16; docs/benchmarks.md,
    "bfloat16"); the sums are as exact or more."""
    import jax.numpy as jnp

    if x.dtype != jnp.bfloat16:
        return jnp.dot(x, kernel)
    return jnp.dot(x, kernel, preferred_element_type=jnp.float32).astype(x.dtype)


def _xla_conv(x, kernel, strides, pads, extra_row):
    """``lax.conv_general_dilated`` (NHWC, HWIO) with explicit ``pads``; with
    ``extra_row``, one zero row more after the data and the extra output row
    dropped: the same sums (each kept output reads the rows it read before)."""
    from jax import lax

    rows, cols = _output_size(x.shape, kernel.shape, strides, pads)
    if extra_row:
        pads = ((pads[0][0], pads[0][1] + 1), pads[1])
    y = lax.conv_general_dilated(x, kernel, strides, pads,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[:, :rows, :cols]


@functools.lru_cache(maxsize=None)
def _row_padded_conv():
    """A k x k convolution computed with one extra zero row (``_xla_conv``), whose
    derivatives are those of the convolution as given, except that an unpadded one
    keeps the extra row.

    XLA:CPU runs most convolutions 1.1-2.8x faster with the extra row, whatever
    their padding (benchmarks/conv_lowering.py: Inception-v3's 47 padded ones 1.33x
    in all, a few small ones slower), but the gradients of a padded one with
    it took Inception-v3's training step from 2.5 to 0.23 images/s; those of an
    unpadded one are fast. So the forward pass takes the row, and the derivatives
    (a linear map, which JAX transposes for the backward pass) take it only where
    they are fast."""
    import jax
    import jax.numpy as jnp
    from jax.custom_derivatives import SymbolicZero

    @functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
    def conv(x, kernel, strides, pads):
        return _xla_conv(x, kernel, strides, pads, extra_row=True)

    @functools.partial(conv.defjvp, symbolic_zeros=True)
    def conv_jvp(strides, pads, primals, tangents):
        (x, kernel), (dx, dkernel) = primals, tangents
        y = conv(x, kernel, strides, pads)
        extra_row = pads == ((0, 0), (0, 0))
        terms = []
        if not isinstance(dx, SymbolicZero):
            terms.append(_xla_conv(dx, kernel, strides, pads, extra_row))
        if not isinstance(dkernel, SymbolicZero):
            terms.append(_xla_conv(x, dkernel, strides, pads, extra_row))
        return y, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)

    return conv


def _depthwise_lowering(x, kernel, strides, padding):
    """An NHWC depthwise convolution (kernel ``(kh, kw, channels, multiplier)``) as the
    sum over the window of shifted input slices times per-channel weights."""
    import jax.numpy as jnp

    kh, kw, channels, multiplier = kernel.shape
    (sh, sw), pads = strides, _explicit_padding(x.shape, (kh, kw), strides, padding)
    rows, cols = _output_size(x.shape, kernel.shape, strides, pads)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    if multiplier > 1:  # output channel c * multiplier + m reads input channel c
        x = x[..., None]
    y = None
    for i in range(kh):
        for j in range(kw):
            tap = x[:, i:i + (rows - 1) * sh + 1:sh, j:j + (cols - 1) * sw + 1:sw]
            term = tap * (kernel[i, j] if multiplier > 1 else kernel[i, j, :, 0])
            y = term if y is None else y + term
    return y.reshape(*y.shape[:3], channels * multiplier)


@functools.lru_cache(maxsize=None)
def _jitted(fn):
    # One compiled computation per shape when a layer runs eagerly (a depthwise 7x7 is
    # 98 small ops otherwise); inside a traced function it is simply inlined.
    import jax

    return jax.jit(fn, static_argnums=(2, 3))


def _xla_cpu_conv(x, kernel, strides, padding):
    return _jitted(_conv_lowering)(x, kernel, tuple(strides), padding)


def _xla_cpu_depthwise(x, kernel, strides, padding):
    return _jitted(_depthwise_lowering)(x, kernel, tuple(strides), padding)


@keras.saving.register_keras_serializable(package="keras_inception")
class Conv2D(layers.Conv2D):
    """``keras.layers.Conv2D`` with a faster lowering on JAX's CPU platform.

    Same arguments, config, weights and outputs (up to float32 rounding) as Keras'
    layer. On JAX on a CPU, in bfloat16 or while XLA:CPU gives float32 convolutions
    to YNNPACK (:mod:`keras_inception.xla_cpu`), it computes a 1x1 convolution as one
    matrix product and gives a k x k one an extra zero row (then drops the extra
    output row), which run 2.1x and 1.1-2.8x faster there; everywhere else, or with
    ``KERAS_INCEPTION_XLA_CPU_LOWERING=0`` in the environment, it is Keras' layer.

    Example:
        >>> import keras, numpy as np
        >>> from keras_inception.layers import Conv2D
        >>> x = np.random.default_rng(0).random((2, 9, 9, 3), "float32")
        >>> ours = Conv2D(4, 3, strides=2, name="c")
        >>> ours.build(x.shape)
        >>> theirs = keras.layers.Conv2D.from_config(ours.get_config())
        >>> theirs.build(x.shape)
        >>> theirs.set_weights(ours.get_weights())
        >>> y, expected = keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(theirs(x))
        >>> bool(np.allclose(y, expected, atol=1e-5))
        True
    """

    def convolution_op(self, inputs, kernel):
        if self.groups != 1 or not _xla_cpu(self) or not _conv_lowering_pays(inputs):
            return super().convolution_op(inputs, kernel)
        return _xla_cpu_conv(inputs, keras.ops.convert_to_tensor(kernel),
                             self.strides, self.padding)


@keras.saving.register_keras_serializable(package="keras_inception")
class SeparableConv2D(layers.SeparableConv2D):
    """``keras.layers.SeparableConv2D`` with a faster lowering on JAX's CPU platform.

    Same arguments, config, weights and outputs (up to float32 rounding) as Keras'
    layer. On JAX on a CPU the depthwise step is a sum of shifted slices times the
    per-channel weights and the pointwise step one matrix product (Xception: 5.7x
    faster than with XLA:CPU's grouped convolution); everywhere else it is Keras'
    layer.

    Example:
        >>> import keras, numpy as np
        >>> from keras_inception.layers import SeparableConv2D
        >>> stem = SeparableConv2D(64, 7, strides=2, padding="same", depth_multiplier=8)
        >>> tuple(stem(np.zeros((1, 15, 15, 3), "float32")).shape)
        (1, 8, 8, 64)
        >>> [w.name for w in stem.weights], type(stem).__name__
        (['depthwise_kernel', 'pointwise_kernel', 'bias'], 'SeparableConv2D')
    """

    def call(self, inputs):
        if not _xla_cpu(self):
            return super().call(inputs)
        tensor = keras.ops.convert_to_tensor
        x = _xla_cpu_depthwise(inputs, tensor(self.depthwise_kernel), self.strides,
                               self.padding)
        x = _xla_cpu_conv(x, tensor(self.pointwise_kernel), (1, 1), "valid")
        if self.use_bias:
            x = x + tensor(self.bias)
        return x if self.activation is None else self.activation(x)



# Keras' BatchNormalization computes the batch moments and the normalisation as
# ~10 separate elementwise ops, forward and backward. PyTorch and TensorFlow each have
# one kernel for it (torch.native_batch_norm, TensorFlow's FusedBatchNormV3). Measured
# on Inception-v3's training step (batch 16, 299 px): ~20 % of the step on PyTorch
# (torch.profiler); the zoo's models then train faster than keras.applications' (bench
# figures in docs/benchmarks.md), same outputs and moving statistics.

# TensorFlow's op raises a smaller epsilon to this (cuDNN's floor): Keras' path below it.
_TF_MIN_EPSILON = 1.001e-5


def _native_batch_norm(layer, inputs, mask) -> bool:
    """Whether a training call of ``layer`` can run the backend's own batch-norm kernel:
    PyTorch, or TensorFlow with 4-D inputs and epsilon >= 1.001e-5; float32,
    statistics over every axis but the last, no mask, renorm or synchronisation."""
    backend = keras.backend.backend()
    if backend not in _BATCH_NORM_KERNELS or mask is not None:
        return False
    if layer.renorm or layer.synchronized:
        return False
    if backend == "tensorflow" and (len(inputs.shape) != 4 or layer.epsilon < _TF_MIN_EPSILON):
        return False
    if keras.backend.standardize_dtype(inputs.dtype) != "float32":
        return False
    return layer.compute_dtype == "float32" and layer.axis in (-1, len(inputs.shape) - 1)


def _torch_batch_norm(x, gamma, beta, epsilon):
    """(outputs, batch mean, biased batch variance) from torch's kernel; x channels last."""
    import torch

    # Channels to axis 1: a view (channels-last memory), which the kernel reads as is.
    # No running statistics given: the kernel returns the batch mean and 1/std.
    y, mean, inverse_std = torch.native_batch_norm(
        torch.movedim(x, -1, 1), gamma, beta, None, None, True, 0.0, epsilon)
    with torch.no_grad():
        variance = inverse_std.pow(-2) - epsilon
    if y.ndim == 4:
        y = _channels_last_gradient()(y)
    return torch.movedim(y, 1, -1), mean.detach(), variance


@functools.lru_cache(maxsize=None)
def _channels_last_gradient():
    """An identity whose gradient comes back in channels-last memory.

    The backward kernel of a channels-last batch norm takes a generic path when the
    gradient is NCHW-contiguous, which is what Keras' pooling hands back on PyTorch:
    267 ms instead of 19 ms on a 16x128x74x74 map. Xception (a batch norm before
    each of its max pools) trains 1.3x faster with the gradient made channels-last
    (one-off, batch 16, same process: 1.65-1.72 -> 2.17-2.24 images/s); a gradient
    already in that memory passes unchanged (Inception-v3 and -ResNet-v2 run the
    same ops as before)."""
    import torch

    class ChannelsLastGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return y.view_as(y)

        @staticmethod
        def backward(ctx, grad):
            return grad.contiguous(memory_format=torch.channels_last)

    return ChannelsLastGradient.apply


def _tensorflow_batch_norm(x, gamma, beta, epsilon):
    """(outputs, batch mean, biased batch variance) from TensorFlow's fused kernel."""
    import tensorflow as tf

    channels = x.shape[-1]
    gamma = tf.ones([channels], x.dtype) if gamma is None else gamma
    beta = tf.zeros([channels], x.dtype) if beta is None else beta
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, epsilon=epsilon, data_format="NHWC", is_training=True)
    # The op returns the unbiased (n - 1) variance for its own moving average; Keras
    # averages the biased one, which the normalisation used.
    n = tf.cast(tf.size(x) // channels, variance.dtype)
    return y, mean, variance * tf.maximum(n - 1.0, 0.0) / n


_BATCH_NORM_KERNELS = {"torch": _torch_batch_norm, "tensorflow": _tensorflow_batch_norm}


@keras.saving.register_keras_serializable(package="keras_inception")
class BatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a faster training step on PyTorch and
    TensorFlow.

    Same arguments, config, weights and outputs (up to float32 rounding) as Keras'
    layer. In training on PyTorch or TensorFlow (float32, channels last) it
    normalises with the backend's own batch-norm kernel (``torch.native_batch_norm``,
    TensorFlow's ``FusedBatchNormV3``), one kernel forward and one backward instead
    of Keras' separate ops for the moments and the normalisation, and updates the
    moving statistics as Keras does (biased batch variance, ``momentum``).
    Everywhere else (JAX, whose compiler fuses Keras' ops anyway; inference; masks,
    renorm, synchronised statistics, mixed precision) it is Keras' layer.

    Example:
        >>> import keras, numpy as np
        >>> from keras_inception.layers import BatchNormalization
        >>> x = np.random.default_rng(0).normal(2, 3, (4, 5, 5, 8)).astype("float32")
        >>> ours = BatchNormalization(momentum=0.9)
        >>> theirs = keras.layers.BatchNormalization(momentum=0.9)
        >>> y = [keras.ops.convert_to_numpy(bn(x, training=True)) for bn in (ours, theirs)]
        >>> bool(np.allclose(y[0], y[1], atol=1e-5))
        True
        >>> bool(np.allclose(ours.moving_variance.numpy(), theirs.moving_variance.numpy()))
        True
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and _native_batch_norm(self, inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        tensor = keras.ops.convert_to_tensor
        y, mean, variance = _BATCH_NORM_KERNELS[keras.backend.backend()](
            inputs, tensor(self.gamma) if self.scale else None,
            tensor(self.beta) if self.center else None, self.epsilon)
        m = self.momentum
        self.moving_mean.assign(tensor(self.moving_mean) * m + mean * (1.0 - m))
        self.moving_variance.assign(tensor(self.moving_variance) * m + variance * (1.0 - m))
        return y


# The zoo's layers that compute exactly what a Keras layer computes (another lowering
# only): graph tools that key on exact Keras types (BatchNorm folding, the torch
# translator) treat them as that type.
_KERAS_EQUIVALENT = {Conv2D: layers.Conv2D, SeparableConv2D: layers.SeparableConv2D,
                     BatchNormalization: layers.BatchNormalization}


def keras_class(layer) -> type:
    """The Keras layer class whose computation ``layer`` has.

    Its own class, or for the zoo's :class:`Conv2D`, :class:`SeparableConv2D` and
    :class:`BatchNormalization` the Keras layer they compute another way.

    Args:
        layer: a Keras layer.

    Returns:
        A class.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Conv2D, keras_class
        >>> keras_class(Conv2D(4, 1)) is keras.layers.Conv2D
        True
        >>> keras_class(keras.layers.ReLU()) is keras.layers.ReLU
        True
    """
    return _KERAS_EQUIVALENT.get(type(layer), type(layer))

def conv_bn(x, filters, kernel_size, *, name, norm, strides=1, padding="same",
            activation="relu"):
    """Convolution (no bias) + BatchNormalization + activation.

    Creates ``{name}_conv``, ``{name}_bn`` and, unless ``activation`` is None,
    ``{name}_act``; a numeric ``padding`` (torch's symmetric zeros) adds
    ``{name}_pad`` before a valid convolution.

    Args:
        x: the input tensor.
        filters: output channels.
        kernel_size: an int or ``(rows, cols)``.
        name: the layer-name prefix.
        norm: the BatchNormalization settings (:class:`Norm`).
        strides: the stride.
        padding: ``"same"``, ``"valid"`` or a number (torch's symmetric zeros).
        activation: the activation, or None for none.

    Returns:
        The output tensor.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Norm, conv_bn
        >>> y = conv_bn(keras.Input((9, 9, 3)), 8, 3, strides=2, padding=1,
        ...             name="stem", norm=Norm())
        >>> tuple(y.shape), y._keras_history.operation.name
        ((None, 5, 5, 8), 'stem_act')
    """
    if not isinstance(padding, str):
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        padding = "valid"
    x = Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
               name=f"{name}_conv")(x)
    x = BatchNormalization(axis=channel_axis(), scale=norm.scale, epsilon=norm.epsilon,
                           momentum=norm.momentum, name=f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def pool(x, kind, size, *, name, strides=1, padding="same", ceil_mode=False):
    """Max or average pooling; ``kind`` is ``"max"`` or ``"avg"``.

    ``padding`` is ``"same"``, ``"valid"`` or, with ``ceil_mode``, torch's: see
    :class:`Pool`. Torch's padding is a ``{name}_pad`` layer before a valid pool.

    Args:
        x: the input tensor.
        kind: ``"max"`` or ``"avg"``.
        size: the window side.
        name: the pooling layer's name.
        strides: the stride.
        padding: ``"same"``, ``"valid"`` or a number (torch's).
        ceil_mode: torch's rounding up of the output size (max pooling without
            padding only).

    Returns:
        The output tensor.

    Raises:
        ValueError: an unknown kind, or ``ceil_mode`` with ``"same"`` padding or a
            case torch's ceil mode cannot be emulated exactly.

    Example:
        >>> import keras
        >>> from keras_inception.layers import pool
        >>> x = keras.Input((8, 8, 4))
        >>> tuple(pool(x, "max", 3, strides=2, padding="valid", name="p").shape)
        (None, 3, 3, 4)
        >>> tuple(pool(x, "max", 3, strides=2, padding=0, ceil_mode=True,
        ...            name="p_ceil").shape)
        (None, 4, 4, 4)
    """
    if kind not in ("max", "avg"):
        raise ValueError(f"Unknown pooling kind {kind!r}: use 'max' or 'avg'.")
    if ceil_mode and padding == "same":
        raise ValueError("ceil_mode is torch's: give torch's padding (a number).")
    if ceil_mode or not isinstance(padding, str):
        x = _torch_pool_padding(x, kind, size, strides, 0 if padding == "valid"
                                else int(padding), ceil_mode, name=f"{name}_pad")
        padding = "valid"
    if kind == "max":
        return layers.MaxPooling2D(size, strides=strides, padding=padding, name=name)(x)
    if kind == "avg":
        return layers.AveragePooling2D(size, strides=strides, padding=padding,
                                       name=name)(x)


def _torch_pool_padding(x, kind, size, strides, pad, ceil_mode, *, name):
    """Torch pooling's padding, explicit: ``pad`` on every side and, with
    ``ceil_mode``, ``strides - 1`` more after, which keeps the partial last window
    torch keeps (``ceil((n + 2 pad - size) / strides) + 1`` outputs).

    Exact where torch never drops a window starting in the padding: without
    padding (``size >= strides``) or at stride 1; other cases raise.
    """
    extra = strides - 1 if ceil_mode else 0
    if extra and (pad or kind != "max" or size < strides):
        raise ValueError(
            f"ceil_mode is emulated for max pooling without padding only (got "
            f"{kind} pooling, size {size}, strides {strides}, padding {pad}).")
    if not pad and not extra:
        return x
    sides = ((pad, pad + extra), (pad, pad + extra))
    if kind == "avg":  # count_include_pad=True: zeros enter the average
        return layers.ZeroPadding2D(sides, name=name)(x)
    return ConstantPadding2D(sides, value=-math.inf, name=name)(x)


def map_ops(ops: Sequence[Op], fn) -> tuple:
    """``ops`` with every :class:`Conv` and :class:`Pool` replaced by ``fn(op)``.

    :class:`Fork` paths are mapped too: one topology, another arithmetic.

    Args:
        ops: a branch (sequence of ops).
        fn: ``fn(op) -> op``, applied to every Conv and Pool.

    Returns:
        The mapped ops, as a tuple.

    Example:
        >>> import dataclasses
        >>> from keras_inception.layers import Conv, Pool, map_ops
        >>> ops = (Conv("conv", 8, 3), Pool("pool", "max"))
        >>> [op.padding for op in map_ops(ops, lambda op: dataclasses.replace(
        ...     op, padding=1))]
        [1, 1]
    """
    out = []
    for op in ops:
        if isinstance(op, Fork):
            out.append(dataclasses.replace(
                op, paths=tuple(map_ops(path, fn) for path in op.paths)))
        else:
            out.append(fn(op))
    return tuple(out)


def apply_ops(x, ops: Sequence[Op], *, prefix, norm):
    """Applies a branch (a sequence of ops); layer names are ``{prefix}_{op.name}``.

    With an empty ``prefix`` the op names are used as they are (stems).

    Args:
        x: the input tensor.
        ops: the branch's :class:`Conv`, :class:`Pool` and :class:`Fork` ops.
        prefix: the layer-name prefix.
        norm: the BatchNormalization settings.

    Returns:
        The branch's output tensor.

    Raises:
        TypeError: an op of another type.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Conv, Norm, Pool, apply_ops
        >>> ops = (Conv("conv2d_0a_1x1", 8, 1), Pool("maxpool_0b_3x3", "max", strides=2))
        >>> y = apply_ops(keras.Input((8, 8, 3)), ops, prefix="b0", norm=Norm())
        >>> tuple(y.shape), y._keras_history.operation.name
        ((None, 4, 4, 8), 'b0_maxpool_0b_3x3')
    """
    for op in ops:
        name = f"{prefix}_{op.name}" if prefix else op.name
        if isinstance(op, Conv):
            x = conv_bn(x, op.filters, op.kernel, strides=op.strides,
                        padding=op.padding, name=name, norm=norm)
        elif isinstance(op, Pool):
            x = pool(x, op.kind, op.size, strides=op.strides, padding=op.padding,
                     ceil_mode=op.ceil_mode, name=name)
        elif isinstance(op, Fork):
            outs = [apply_ops(x, path, prefix=prefix, norm=norm) for path in op.paths]
            x = layers.Concatenate(axis=channel_axis(), name=name)(outs)
        else:
            raise TypeError(f"Unknown op {op!r}")
    return x


def iter_convs(ops: Sequence[Op], prefix=""):
    """Yields the layer-name prefix of every :class:`Conv` in ``ops``, in build order.

    Args:
        ops: a branch (sequence of ops, :class:`Fork` paths included).
        prefix: the branch's layer-name prefix.

    Yields:
        ``{prefix}_{conv.name}`` (or the bare name without a prefix).

    Example:
        >>> from keras_inception.layers import Conv, Fork, Pool, iter_convs
        >>> ops = (Conv("a", 8, 1), Pool("p", "avg"),
        ...        Fork("cat", ((Conv("b", 8, (1, 3)),), (Conv("c", 8, (3, 1)),))))
        >>> list(iter_convs(ops, "mixed_7b_branch_1"))
        ['mixed_7b_branch_1_a', 'mixed_7b_branch_1_b', 'mixed_7b_branch_1_c']
    """
    for op in ops:
        if isinstance(op, Conv):
            yield f"{prefix}_{op.name}" if prefix else op.name
        elif isinstance(op, Fork):
            for path in op.paths:
                yield from iter_convs(path, prefix)


def module_convs(branches, name):
    """Yields ``(branch_index, conv_prefix)`` for every conv of a module.

    Args:
        branches: the module's branches (sequences of ops).
        name: the module's name.

    Yields:
        ``(i, prefix)``: the branch index and the conv's layer-name prefix.

    Example:
        >>> from keras_inception.layers import Conv, Pool, module_convs
        >>> branches = ((Conv("conv2d_0a_1x1", 8, 1),),
        ...             (Pool("avgpool_0a_3x3", "avg"), Conv("conv2d_0b_1x1", 8, 1)))
        >>> list(module_convs(branches, "mixed_5b"))
        [(0, 'mixed_5b_branch_0_conv2d_0a_1x1'), (1, 'mixed_5b_branch_1_conv2d_0b_1x1')]
    """
    for i, ops in enumerate(branches):
        for conv in iter_convs(ops, f"{name}_branch_{i}"):
            yield i, conv


def _branches_concat(x, branches: Sequence[Sequence[Op]], *, name, norm,
                    concat_name=None):
    """Runs ``branches`` in parallel on ``x`` and concatenates them on channels.

    Branch ``i`` names its layers ``{name}_branch_{i}_{op}``; the concatenation is
    ``concat_name`` (default ``name``), the name the feature taps use.
    """
    outs = [apply_ops(x, ops, prefix=f"{name}_branch_{i}", norm=norm)
            for i, ops in enumerate(branches)]
    return layers.Concatenate(axis=channel_axis(), name=concat_name or name)(outs)


def inception_module(x, branches, *, name, norm):
    """An Inception module: parallel branches concatenated (v1-v4, grid reductions).

    Branch ``i`` names its layers ``{name}_branch_{i}_{op}``; the concatenation is
    ``{name}``, the name feature taps and freezing helpers use.

    Args:
        x: the input tensor.
        branches: the branches, each a sequence of ops.
        name: the module's name.
        norm: the BatchNormalization settings.

    Returns:
        The concatenated output tensor.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Conv, Norm, Pool, inception_module
        >>> branches = ((Conv("conv2d_0a_1x1", 16, 1),),
        ...             (Conv("conv2d_0a_1x1", 8, 1), Conv("conv2d_0b_3x3", 24, 3)),
        ...             (Pool("maxpool_0a_3x3", "max"), Conv("conv2d_0b_1x1", 8, 1)))
        >>> y = inception_module(keras.Input((8, 8, 32)), branches, name="mixed_3b",
        ...                      norm=Norm())
        >>> tuple(y.shape), y._keras_history.operation.name
        ((None, 8, 8, 48), 'mixed_3b')
    """
    return _branches_concat(x, branches, name=name, norm=norm)


def stem_and_modules(x, stem, modules, *, norm, aux_taps=None):
    """A stem (ops) then named Inception modules in sequence.

    Args:
        x: the image tensor.
        stem: the stem's ops (layer names are the op names).
        modules: ``((name, branches), ...)``, in order.
        norm: the BatchNormalization settings.
        aux_taps: maps a module name to the aux head that reads its output
            (``{"mixed_6e": "aux"}``).

    Returns:
        ``(features, taps)``: the last module's output and ``{head: tensor}``.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Conv, Norm, stem_and_modules
        >>> stem = (Conv("conv2d_1a_3x3", 8, 3, strides=2),)
        >>> modules = (("mixed_1", ((Conv("conv2d_0a_1x1", 4, 1),),
        ...                         (Conv("conv2d_0a_3x3", 4, 3),))),)
        >>> features, taps = stem_and_modules(keras.Input((8, 8, 3)), stem, modules,
        ...                                   norm=Norm(), aux_taps={"mixed_1": "aux"})
        >>> tuple(features.shape), list(taps)
        ((None, 4, 4, 8), ['aux'])
    """
    x = apply_ops(x, stem, prefix="", norm=norm)
    taps = {}
    for name, branches in modules:
        x = inception_module(x, branches, name=name, norm=norm)
        if aux_taps and name in aux_taps:
            taps[aux_taps[name]] = x
    return x, taps


@keras.saving.register_keras_serializable(package="keras_inception")
class ScaledResidual(layers.Layer):
    """``shortcut + scale * residual``: the residual scaling of Inception-ResNet.

    Scaling by 0.1-0.3 is what keeps the very deep Inception-ResNets from dying
    early in training (Szegedy et al. 2016, section 3.3).

    Args:
        scale: the residual's scale.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ...).

    Example:
        >>> import numpy as np
        >>> from keras_inception import ScaledResidual
        >>> out = ScaledResidual(0.2)([np.ones((1, 2), "float32"),
        ...                            np.full((1, 2), 5.0, "float32")])
        >>> np.asarray(out).tolist()
        [[2.0, 2.0]]
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        shortcut, residual = inputs
        return shortcut + residual * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def inception_resnet_block(x, branches, *, name, scale, norm, activation="relu"):
    """A residual Inception block (Inception-ResNet v1/v2 A, B and C).

    The branches are concatenated (``{name}_mixed``), projected back to the input
    width by a biased 1x1 convolution without BN (``{name}_conv2d_1x1``), scaled and
    added to the input (``{name}``), then activated (``{name}_act``) unless
    ``activation`` is None (the last IRv2 block).

    Args:
        x: the input tensor.
        branches: the residual branches, each a sequence of ops.
        name: the block's name.
        scale: the residual scale (:class:`ScaledResidual`).
        norm: the BatchNormalization settings.
        activation: the activation after the sum, or None.

    Returns:
        The output tensor, shaped like ``x``.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Conv, Norm, inception_resnet_block
        >>> branches = ((Conv("conv2d_1x1", 8, 1),), (Conv("conv2d_0b_3x3", 8, 3),))
        >>> y = inception_resnet_block(keras.Input((5, 5, 16)), branches,
        ...                            name="block35_1", scale=0.17, norm=Norm())
        >>> tuple(y.shape), y._keras_history.operation.name
        ((None, 5, 5, 16), 'block35_1_act')
    """
    mixed = _branches_concat(x, branches, name=name, norm=norm,
                            concat_name=f"{name}_mixed")
    up = Conv2D(x.shape[channel_axis()], 1, use_bias=True,
                name=f"{name}_conv2d_1x1")(mixed)
    x = ScaledResidual(scale, name=name)([x, up])
    if activation:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def aux_head(x, classes, *, name, norm, classifier_activation, dropout_rate=0.0):
    """The auxiliary classifier of Inception-v3, v4 and Inception-ResNet-v2.

    5x5/3 average pool, 1x1 conv to 128, 5x5 conv to 768 (both with BN), global
    average pool, dense. At the canonical 299 input the 5x5 conv leaves a 1x1 map,
    so the pool is the identity there (TF-Slim flattens, torchvision pools).

    Args:
        x: the tapped tensor (17x17 at the canonical input).
        classes: the head's class count.
        name: the head's name (``aux``), prefix of its layers.
        norm: the BatchNormalization settings.
        classifier_activation: the head's activation (None for logits).
        dropout_rate: dropout before the dense layer.

    Returns:
        The head's output tensor.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Norm, aux_head
        >>> y = aux_head(keras.Input((17, 17, 32)), 10, name="aux", norm=Norm(),
        ...              classifier_activation=None)
        >>> tuple(y.shape), y._keras_history.operation.name
        ((None, 10), 'aux_predictions')
    """
    x = layers.AveragePooling2D(5, strides=3, padding="valid",
                                name=f"{name}_avgpool_1a_5x5")(x)
    x = conv_bn(x, 128, 1, name=f"{name}_conv2d_1b_1x1", norm=norm)
    x = conv_bn(x, 768, 5, padding="valid", name=f"{name}_conv2d_2a_5x5", norm=norm)
    dtype = _head_dtype()  # float32 from the pooling on, as classifier_head
    x = layers.GlobalAveragePooling2D(name=f"{name}_pool", dtype=dtype)(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name=f"{name}_dropout", dtype=dtype)(x)
    return layers.Dense(classes, activation=classifier_activation,
                        name=f"{name}_predictions", dtype=dtype)(x)


def aux_head_v1(x, classes, *, name, norm, classifier_activation, dropout_rate=0.7):
    """GoogLeNet's auxiliary classifier (torchvision layout).

    Adaptive average pool to 4x4 (the paper's 5x5/3 pool gives the same 4x4 at the
    canonical 224 input), 1x1 conv to 128 with BN, flatten, 1024-unit ReLU dense,
    dropout 0.7, dense.

    Args:
        x: the tapped tensor (``mixed_4b`` or ``mixed_4e``).
        classes: the head's class count.
        name: the head's name (``aux1``, ``aux2``), prefix of its layers.
        norm: the BatchNormalization settings.
        classifier_activation: the head's activation (None for logits).
        dropout_rate: dropout before the last dense layer.

    Returns:
        The head's output tensor.

    Example:
        >>> import keras
        >>> from keras_inception.layers import Norm, aux_head_v1
        >>> y = aux_head_v1(keras.Input((4, 4, 512)), 10, name="aux1", norm=Norm(),
        ...                 classifier_activation="softmax")
        >>> tuple(y.shape)
        (None, 10)
    """
    x = layers.AdaptiveAveragePooling2D((4, 4), name=f"{name}_avgpool")(x)
    x = conv_bn(x, 128, 1, name=f"{name}_conv", norm=norm)
    dtype = _head_dtype()  # float32 from the flatten on, as classifier_head
    # Flatten in (H, W, C) order whatever the data format, so fc1 weights port.
    x = layers.Flatten(name=f"{name}_flatten", dtype=dtype)(x)
    x = layers.Dense(1024, activation="relu", name=f"{name}_fc1", dtype=dtype)(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name=f"{name}_dropout", dtype=dtype)(x)
    return layers.Dense(classes, activation=classifier_activation,
                        name=f"{name}_predictions", dtype=dtype)(x)


POOLINGS = (None, "avg", "max")


def _head_dtype():
    """``"float32"`` under a mixed precision policy, else None (the global policy).

    Under ``mixed_bfloat16`` or ``mixed_float16`` the body computes in 16 bits but
    the head's pooling, dense layer and softmax stay in float32: pooled features,
    logits and probabilities keep float32's range and resolution, as Keras' mixed
    precision guide advises. Under a plain policy nothing changes (configs neither).
    """
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype != policy.variable_dtype else None


def classifier_head(x, *, include_top, pooling, classes, classifier_activation,
                    dropout_rate):
    """Global pooling + dropout + dense (``avg_pool``, ``dropout``, ``predictions``).

    With ``include_top=False`` only the optional global pooling is applied. Under a
    mixed precision policy (``keras.config.set_dtype_policy("mixed_bfloat16")``) the
    head computes in float32 (pooled features, logits, softmax).

    Args:
        x: the body's feature map.
        include_top: add the classifier.
        pooling: without the top: None, ``"avg"`` or ``"max"``.
        classes: the classifier's class count.
        classifier_activation: its activation (None for logits).
        dropout_rate: dropout before the dense layer (0 for none).

    Returns:
        The output tensor.

    Example:
        >>> import keras
        >>> from keras_inception.layers import classifier_head
        >>> x = keras.Input((7, 7, 64))
        >>> y = classifier_head(x, include_top=True, pooling=None, classes=10,
        ...                     classifier_activation="softmax", dropout_rate=0.2)
        >>> tuple(y.shape), y._keras_history.operation.name
        ((None, 10), 'predictions')
    """
    dtype = _head_dtype()
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool", dtype=dtype)(x)
        if dropout_rate:
            x = layers.Dropout(dropout_rate, name="dropout", dtype=dtype)(x)
        return layers.Dense(classes, activation=classifier_activation,
                            name="predictions", dtype=dtype)(x)
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool", dtype=dtype)(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool", dtype=dtype)(x)
    return x
