"""What oneDNN's convolutions would give JAX on a CPU, called through XLA's FFI.

XLA:CPU's own convolution kernels are what limits JAX on a CPU (docs/benchmarks.md,
benchmarks/conv_lowering.py). This script builds a small XLA FFI handler
(``benchmarks/onednn_ffi_conv.cc``: an NHWC float32 convolution run by oneDNN, the
library behind TensorFlow's and PyTorch's CPU convolutions) and measures in one
process, for every distinct ``Conv2D`` of a family, the zoo's layer (Keras' op
where XLA:CPU runs float32 convolutions on Eigen, the default with
keras_inception imported; else its lowering) against the FFI call (outputs compared), then the whole accelerated model both ways
(``inference_function``, calls alternating). It is a measurement, not a library
path: keras-inception ships no compiled code.

Needs g++ (``CXX``) and a oneDNN build with OpenMP: by default the wheels
``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp`` 2023.2.0 (oneDNN 3.2), fetched
with pip into ``--cache`` once; or ``--onednn DIR`` with ``include/`` and ``lib/``.

    .venv/bin/python benchmarks/onednn_ffi.py                  # inception_v3
    .venv/bin/python benchmarks/onednn_ffi.py --model inception_resnet_v2 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import conv_lowering as lowering  # noqa: E402  (this folder: the per-layer helpers)
import keras_inception  # noqa: E402
from keras_inception import layers as zoo  # noqa: E402
from keras_inception import xla_cpu  # noqa: E402
from keras_inception.accelerate import inference_function  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "onednn_ffi_conv.cc"
WHEELS = ("onednn-cpu-gomp==2023.2.0", "onednn-devel-cpu-gomp==2023.2.0")
TARGET = "keras_inception_onednn_conv"


def onednn_root(cache: pathlib.Path) -> pathlib.Path:
    """``cache/onednn``, with ``include/`` and ``lib/`` from the pip wheels (fetched
    once; unpacked beside it and moved in whole, so an interrupted fetch leaves no
    half-filled folder)."""
    root = cache / "onednn"
    if (root / "lib").is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp = pathlib.Path(tmp)
        fetch = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--dest", str(tmp / "wheels"), *WHEELS], capture_output=True, text=True)
        if fetch.returncode != 0:
            raise SystemExit(f"Could not fetch {', '.join(WHEELS)} with pip "
                             f"({fetch.stderr.strip()[-300:]}); pass --onednn DIR with a "
                             "oneDNN build (include/ and lib/) instead.")
        staged = tmp / "onednn"
        for wheel in (tmp / "wheels").glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    parts = pathlib.PurePosixPath(member).parts
                    # wheel data lives under <name>.data/data/{include,lib}/...
                    if len(parts) > 3 and parts[1] == "data" and parts[2] in ("include", "lib"):
                        target = staged.joinpath(*parts[2:])
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(member))
        os.replace(staged, root)
    return root


def build(root: pathlib.Path, cache: pathlib.Path) -> pathlib.Path:
    """Compiles the FFI handler against ``root``'s oneDNN (again when the source is newer)."""
    libs = sorted((root / "lib").glob("libdnnl.so*"))
    if not (root / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file() or not libs:
        raise SystemExit(f"{root} holds no oneDNN build: expected include/oneapi/dnnl/"
                         "dnnl.hpp and lib/libdnnl.so*.")
    # one build per oneDNN folder: the library records that folder as its rpath
    out = cache / f"libonednn_ffi_conv-{hashlib.sha256(bytes(root.resolve())).hexdigest()[:12]}.so"
    if out.is_file() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise SystemExit(f"No C++ compiler ({cxx}); install g++ or set CXX.")
    partial = out.with_suffix(".partial.so")
    command = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", f"-I{root / 'include'}", str(SOURCE),
               str(libs[0]), f"-Wl,-rpath,{root / 'lib'}", "-o", str(partial)]
    compiled = subprocess.run(command, capture_output=True, text=True)
    if compiled.returncode != 0:
        raise SystemExit(f"Compiling {SOURCE.name} failed:\n{compiled.stderr[-2000:]}")
    os.replace(partial, out)
    return out


def register(library: pathlib.Path) -> None:
    handler = ctypes.cdll.LoadLibrary(str(library)).OnednnConv
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")


def onednn_conv(x, kernel, strides, padding):
    """An NHWC convolution (HWIO kernel, Keras' "same"/"valid" padding) by oneDNN."""
    pads = zoo._explicit_padding(x.shape, kernel.shape[:2], strides, padding)
    rows, cols = zoo._output_size(x.shape, kernel.shape, strides, pads)
    (top, bottom), (left, right) = pads
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(
        (x.shape[0], rows, cols, kernel.shape[3]), x.dtype))
    return call(x, kernel, **{k: np.int64(v) for k, v in dict(
        sh=strides[0], sw=strides[1], top=top, bottom=bottom, left=left,
        right=right).items()})


@contextlib.contextmanager
def onednn_convolutions():
    """Every zoo Conv2D traced inside runs oneDNN's convolution: the function each
    one calls on XLA:CPU is swapped for the FFI call (float32 ones too, which with
    YNNPACK's convolutions off run Keras' op: keras_inception.xla_cpu)."""
    zoo_lowering, ynn = zoo._conv_lowering, xla_cpu.ynn_convolutions
    zoo._conv_lowering, xla_cpu.ynn_convolutions = onednn_conv, lambda: True
    try:
        yield
    finally:
        zoo._conv_lowering, xla_cpu.ynn_convolutions = zoo_lowering, ynn


def layer_table(model, batch, repeats):
    """Every distinct Conv2D timed as the zoo's layer, then with oneDNN's
    convolution (conv_lowering.py's kinds, FLOPs and timing): rows of (kind, GFLOP,
    lowering ms, oneDNN ms, largest relative difference)."""
    rng = np.random.default_rng(0)
    measured, rows = {}, []
    for layer in model.layers:
        if type(layer) is not zoo.Conv2D:
            continue
        shape = (batch, *layer.input.shape[1:])
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        key = (shape, repr(sorted(config.items())))
        if key not in measured:
            x = jax.numpy.asarray(rng.standard_normal(shape, dtype=np.float32))
            ours_ms, expected = lowering._time(layer, x, repeats)
            with onednn_convolutions():
                theirs_ms, actual = lowering._time(layer, x, repeats)
            error = float(np.abs(actual - expected).max() / np.abs(expected).max())
            measured[key] = (ours_ms, theirs_ms, error)
        out_shape = (batch, *layer.output.shape[1:])
        rows.append((lowering._kind(layer, lowering._padding(layer, shape)),
                     lowering._gflop(layer, out_shape), *measured[key]))
    return rows


def whole_model(model, batch, repeats):
    """images/s of the accelerated model with the zoo's layers and with oneDNN's
    convolutions, calls alternating, and the largest difference of their outputs."""
    x = np.random.default_rng(1).random((batch, *model.input.shape[1:]), np.float32)
    ours = inference_function(model)
    expected = np.asarray(ours(x))  # traced and compiled before the swap below
    with onednn_convolutions():
        theirs = inference_function(model)
        actual = np.asarray(theirs(x))
    times = {ours: [], theirs: []}
    for _ in range(repeats):
        for fn in times:
            start = time.perf_counter()
            jax.block_until_ready(fn(x))
            times[fn].append(time.perf_counter() - start)
    rates = [batch / statistics.median(times[fn]) for fn in (ours, theirs)]
    return rates, float(np.abs(actual - expected).max() / np.abs(expected).max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="inception_v3")
    parser.add_argument("--size", type=int, default=None,
                        help="input side (default: the family's default size)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--onednn", type=pathlib.Path, default=None,
                        help="a oneDNN build (include/, lib/); default: pip's wheels")
    parser.add_argument("--cache", type=pathlib.Path,
                        default=pathlib.Path.home() / ".cache" / "keras_inception" / "onednn-ffi",
                        help="where the wheels and the compiled handler are kept")
    args = parser.parse_args(argv)
    if jax.default_backend() != "cpu":
        raise SystemExit(f"JAX runs on {jax.default_backend()}: this compares CPU kernels.")

    register(build(args.onednn or onednn_root(args.cache), args.cache))
    size = args.size or keras_inception.get_model_info(args.model).default_size
    model = keras_inception.create_model(args.model, weights=None,
                                         input_shape=(size, size, 3))
    print(f"{args.model}, {size} px, batch {args.batch}, jax {jax.__version__}, "
          f"median of {args.repeats}\n")
    rows = layer_table(model, args.batch, args.repeats)
    print("| kind | layers | GFLOP | zoo's layer (ms) | oneDNN (ms) | speed-up | "
          "zoo GFLOP/s | oneDNN GFLOP/s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    groups = {kind: [r for r in rows if r[0] == kind] for kind in sorted({r[0] for r in rows})}
    for kind, group in [*groups.items(), ("all", rows)]:
        g, a, b = (sum(r[i] for r in group) for i in (1, 2, 3))
        print(f"| {kind} | {len(group)} | {g:.1f} | {a:.0f} | {b:.0f} | {a / b:.2f}x | "
              f"{g / a * 1e3:.0f} | {g / b * 1e3:.0f} |")
    print(f"\nLargest relative difference of a convolution's output: "
          f"{max(r[4] for r in rows):.1e}")
    (ours, theirs), error = whole_model(model, args.batch, args.repeats)
    print(f"\nWhole model, inference_function: zoo's layers {ours:.3g} images/s, "
          f"oneDNN convolutions {theirs:.3g} images/s ({theirs / ours:.2f}x); "
          f"largest relative difference of the outputs {error:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
