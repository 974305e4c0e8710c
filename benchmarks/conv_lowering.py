"""Per-layer timing of the zoo's convolutions on JAX: Keras' op vs our XLA:CPU lowering.

For every distinct convolution of a family (shape, kernel, stride, padding), times
``jax.jit`` of Keras' layer and of the zoo's layer (same config and weights) on the
same input in one process, and prints a table per kind of convolution with the
ratio, then the slowest layers. It is the measurement behind
:class:`keras_inception.layers.Conv2D` and ``SeparableConv2D``; re-run it when JAX
changes. "ours" is the lowering whatever this process's XLA flags (the zoo's float32
layers take it only while XLA:CPU gives convolutions to YNNPACK, see
:mod:`keras_inception.xla_cpu`; the header says which library runs Keras' op). The
lowering is used on JAX's CPU platform only; on a GPU this script compares Keras'
op with itself.

    .venv/bin/python benchmarks/conv_lowering.py                 # inception_v3, Eigen
    .venv/bin/python benchmarks/conv_lowering.py --model xception --batch 8
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution \
        .venv/bin/python benchmarks/conv_lowering.py             # XLA's default: YNNPACK
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_inception  # noqa: E402
from keras_inception import layers as zoo  # noqa: E402
from keras_inception import xla_cpu  # noqa: E402


def _kind(layer, padding) -> str:
    if isinstance(layer, keras.layers.SeparableConv2D):
        return "separable (depthwise + 1x1)"
    if tuple(layer.kernel_size) == (1, 1):
        return "1x1" + (" strided" if max(layer.strides) > 1 else "")
    if padding == ((0, 0), (0, 0)):
        return "k x k, unpadded" + (" strided" if max(layer.strides) > 1 else "")
    return "k x k, padded" + (" strided" if max(layer.strides) > 1 else "")


def _padding(layer, shape):
    if layer.padding == "valid":
        return (0, 0), (0, 0)
    return tuple(zoo.same_padding(shape[1 + i], layer.kernel_size[i], layer.strides[i])
                 for i in range(2))


def _gflop(layer, out_shape) -> float:
    n, h, w, c = out_shape
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw, cin, mult = layer.depthwise_kernel.shape
        return 2 * n * h * w * (kh * kw * cin * mult + cin * mult * c) / 1e9
    kh, kw, cin, _ = layer.kernel.shape
    return 2 * n * h * w * kh * kw * cin * c / 1e9


def _time(layer, x, repeats):
    variables = [v.value for v in layer.trainable_variables]
    fn = jax.jit(lambda weights, images: layer.stateless_call(weights, [], images)[0])
    y = fn(variables, x).block_until_ready()  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(variables, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, np.asarray(y)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="inception_v3")
    parser.add_argument("--size", type=int, default=None, help="input side (default: "
                        "the family's default size)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=10, help="slowest layers listed")
    args = parser.parse_args(argv)

    info = keras_inception.get_model_info(args.model)
    size = args.size or info.default_size
    model = keras_inception.create_model(args.model, weights=None,
                                         input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    library = "YNNPACK" if xla_cpu.ynn_convolutions() else "Eigen or the device's"
    print(f"{args.model}, {size} px, batch {args.batch}, jax {jax.__version__} on "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}); Keras' float32 "
          f"op on {library} convolutions\n")
    xla_cpu.ynn_convolutions = lambda: True  # "ours": the lowering, whatever the flags
    measured = {}
    rows = []
    for layer in model.layers:
        if type(layer) not in (zoo.Conv2D, zoo.SeparableConv2D):
            continue
        shape = (args.batch, *layer.input.shape[1:])
        padding = _padding(layer, shape)
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        key = (type(layer).__name__, shape, repr(sorted(config.items())))
        if key not in measured:
            ours = type(layer).from_config(layer.get_config())
            theirs = zoo.keras_class(layer).from_config(layer.get_config())
            for conv in (ours, theirs):
                conv.build(shape)
            theirs.set_weights(ours.get_weights())
            x = jax.numpy.asarray(rng.standard_normal(shape, dtype=np.float32))
            keras_ms, expected = _time(theirs, x, args.repeats)
            ours_ms, actual = _time(ours, x, args.repeats)
            error = float(np.abs(actual - expected).max() / np.abs(expected).max())
            measured[key] = (keras_ms, ours_ms, error)
        keras_ms, ours_ms, error = measured[key]
        out_shape = (args.batch, *layer.output.shape[1:])
        rows.append(dict(name=layer.name, kind=_kind(layer, padding),
                         gflop=_gflop(layer, out_shape), keras=keras_ms, ours=ours_ms,
                         error=error, shape=shape[1:], kernel=tuple(layer.kernel_size),
                         strides=tuple(layer.strides), padding=layer.padding))

    print("| kind | layers | GFLOP | Keras' op (ms) | ours (ms) | speed-up | "
          "Keras GFLOP/s | ours GFLOP/s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for kind in sorted({r["kind"] for r in rows}):
        group = [r for r in rows if r["kind"] == kind]
        g = sum(r["gflop"] for r in group)
        a = sum(r["keras"] for r in group)
        b = sum(r["ours"] for r in group)
        print(f"| {kind} | {len(group)} | {g:.1f} | {a:.0f} | {b:.0f} | {a / b:.2f}x | "
              f"{g / a * 1e3:.0f} | {g / b * 1e3:.0f} |")
    g = sum(r["gflop"] for r in rows)
    a = sum(r["keras"] for r in rows)
    b = sum(r["ours"] for r in rows)
    print(f"| all | {len(rows)} | {g:.1f} | {a:.0f} | {b:.0f} | {a / b:.2f}x | "
          f"{g / a * 1e3:.0f} | {g / b * 1e3:.0f} |")
    print(f"\nLargest relative difference of any output from Keras' op: "
          f"{max(r['error'] for r in rows):.1e}")
    print(f"\nSlowest {args.top} layers with the lowering:\n")
    print("| layer | input | kernel | strides | padding | Keras' op (ms) | ours (ms) |")
    print("|---|---|---|---|---|--:|--:|")
    for r in sorted(rows, key=lambda r: -r["ours"])[:args.top]:
        print(f"| {r['name']} | {'x'.join(map(str, r['shape']))} | "
              f"{'x'.join(map(str, r['kernel']))} | {r['strides'][0]} | {r['padding']} | "
              f"{r['keras']:.1f} | {r['ours']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
