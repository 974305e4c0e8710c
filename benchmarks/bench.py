#!/usr/bin/env python
"""Speed and memory of the Inception family next to keras.applications, per backend.

One command measures, for each chosen family (``--models``) on each chosen backend
(``--backends``):

- model construction time (random initialisation) and the time to load a cached
  ``.weights.h5`` into the built model;
- inference images/s at batch 1 and at ``--batch`` (default 16), float32, at the
  family's default input size (``--size``), the median of ``--repeats`` timed calls
  after ``--warmup`` untimed ones (which compile);
- training-step images/s (``train_on_batch`` with a loss and SGD, same batch);
- peak memory: the process's RSS high-water mark (each row runs in a fresh process,
  so the peak is that row's), and the accelerator allocator's peak on a GPU;

for several *paths* (rows): keras.applications' model of the same architecture,
our model as built (``plain``), and the fast paths when they are importable
(``fused``: :func:`keras_inception.optimize.fuse_batchnorm`; ``accelerated``:
:mod:`keras_inception.accelerate`; ``accelerated_whole``: the same without its batch
chunks, PyTorch only; ``mixed_bf16``: the model built under Keras'
``mixed_bfloat16`` policy; ``accelerated_bf16``). A path that cannot run says why
in the results instead of failing the run.

It also measures the machine's matrix-multiply throughput (a 2048x2048 GEMM in
float32 and bfloat16, on NumPy, in a process of its own with OpenBLAS's kernels for
this CPU, and on the backend's own library, on the backend's device), so that every inference figure is also a fraction of the roofline
``images/s x FLOPs per image / GEMM FLOP/s``, with FLOPs = 2 x
:func:`keras_inception.stats.count_macs`.

Each backend runs in its own subprocesses with ``KERAS_BACKEND`` set; the parent
process never imports Keras, collects the JSON the children write, computes the
ratios and writes ``results.json`` (everything), ``results.md`` (a table) and
``results.png`` (a chart) into ``--out`` (default
``benchmarks/results/<device>/``). On a machine with a GPU the backends use it
unchanged, and the results say which device each row ran on.

Usage::

    python benchmarks/bench.py                                   # 3 families x 3 backends
    python benchmarks/bench.py --models inception_v3 --backends torch --repeats 5
    python benchmarks/bench.py --quick --backends jax --out /tmp/bench   # harness check
    python benchmarks/bench.py --publish    # also update docs/benchmarks.md and its chart

Timings are meaningful only on a quiet machine: the load average is recorded at the
start and end of every row (and a warning printed above ``--max-load``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA = "keras-inception-benchmark/1"
BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_MODELS = ("inception_v3", "inception_resnet_v2", "xception")
# Row order in tables: the reference first, then ours from plain to fastest.
IMPLS = ("keras_applications", "plain", "fused", "accelerated", "accelerated_whole",
         "mixed_bf16", "accelerated_bf16")
LABELS = {
    "keras_applications": "keras.applications",
    "plain": "keras-inception",
    "fused": "+ fuse_batchnorm",
    "accelerated": "+ accelerate",
    "accelerated_whole": "+ accelerate, whole batches",
    "mixed_bf16": "mixed_bfloat16",
    "accelerated_bf16": "+ accelerate, bf16",
}
# Paths that only infer (no training step, no build of their own to compare).
INFERENCE_ONLY = ("fused", "accelerated", "accelerated_whole", "accelerated_bf16",
                  "mixed_bf16")
BF16 = ("mixed_bf16", "accelerated_bf16")
# A training step costs about three forward passes (forward, and the backward pass's
# two products per layer: gradients of the inputs and of the weights).
TRAIN_FLOPS_FACTOR = 3
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
DOCS_ASSETS = ROOT / "docs" / "assets" / "benchmarks"
# The docs page holds one published block per device (results folder name).
BLOCK = re.compile(r"<!-- bench:begin (\S+) -->\n(.*?)<!-- bench:end \1 -->", re.S)


def markers(slug: str) -> Tuple[str, str]:
    """The comments that enclose a device's published table on the docs page."""
    return f"<!-- bench:begin {slug} -->", f"<!-- bench:end {slug} -->"


# What --threads sets in the children: OpenMP (PyTorch, oneDNN), MKL, TensorFlow's pools.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                    "TF_NUM_INTEROP_THREADS")


class NotAvailable(Exception):
    """A path that cannot run here (a module not importable, a size too small)."""


# --------------------------------------------------------------------------- child

def _rss_mb() -> float:
    """Current resident set size of this process, in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb(*seen: float) -> float:
    """This process's RSS high-water mark, in MB (Linux reports kB), at least the
    current RSS and any RSS ``seen`` before: Linux folds its per-thread RSS counters
    into the high-water mark in batches, so the mark can lag the current RSS."""
    import resource

    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _rss_mb(), *seen)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_info() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    flags = _cpu_flags()
    isa = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16"})
    # Virtual machines report one model name ("Intel(R) Xeon(R) Processor") for CPUs
    # with and without AMX, whose bfloat16 speeds differ 10x: their results apart.
    amx = " amx" if "amx_bf16" in flags else ""
    return {"model": _cpu_name(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "isa": isa, "slug": _slug(f"cpu {_cpu_name()} {usable} cores{amx}"),
            "description": f"{_cpu_name()}, {usable} cores"
                           + (f" ({', '.join(isa)})" if isa else "")}


def _device(backend: str) -> dict:
    """The device the backend computes on: kind, name and a description."""
    cpu = _cpu_info()
    name = None
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
    elif backend == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            name = f"{dev.device_kind}"
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            name = details.get("device_name", gpus[0].name)
    if name:
        return {"kind": "gpu", "name": name, "description": f"{name} (GPU)",
                "slug": _slug(f"gpu {name}"), "cpu": cpu}
    return {"kind": "cpu", "name": cpu["model"], "description": cpu["description"],
            "slug": cpu["slug"], "cpu": cpu}


def _versions(backend: str) -> dict:
    import keras

    import keras_inception

    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "keras_inception": keras_inception.__version__,
                backend: __import__(module).__version__}
    import numpy

    versions["numpy"] = numpy.__version__
    return versions


def _times(fn, warmup: int, repeats: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _gemm(backend: str, device: dict, n: int, warmup: int, repeats: int) -> List[dict]:
    """FLOP/s of an n x n matrix product, float32 and bfloat16, per library."""
    import numpy as np

    rng = np.random.default_rng(0)
    a32 = rng.standard_normal((n, n), dtype=np.float32)
    b32 = rng.standard_normal((n, n), dtype=np.float32)
    results = [dict(_numpy_gemm(n, warmup, repeats), device="cpu",
                    device_description=device["cpu"]["description"])]
    cases = []
    on = device["kind"]
    if backend == "torch":
        import torch

        dev = "cuda" if on == "gpu" else "cpu"
        sync = torch.cuda.synchronize if on == "gpu" else (lambda: None)
        for dtype in ("float32", "bfloat16"):
            a = torch.from_numpy(a32).to(dev, getattr(torch, dtype))
            b = torch.from_numpy(b32).to(dev, getattr(torch, dtype))
            cases.append(("torch", dtype, on,
                          lambda a=a, b=b: (torch.matmul(a, b), sync())))
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        matmul = jax.jit(jnp.matmul)
        for dtype in ("float32", "bfloat16"):
            a, b = jnp.asarray(a32, dtype), jnp.asarray(b32, dtype)
            cases.append(("jax", dtype, on,
                          lambda a=a, b=b: matmul(a, b).block_until_ready()))
    elif backend == "tensorflow":
        import tensorflow as tf

        for dtype in ("float32", "bfloat16"):
            a = tf.cast(tf.constant(a32), dtype)
            b = tf.cast(tf.constant(b32), dtype)
            # Reading one element waits for the product (asynchronous on a GPU).
            cases.append(("tensorflow", dtype, on,
                          lambda a=a, b=b: tf.linalg.matmul(a, b)[0, 0].numpy()))
    for library, dtype, where, fn in cases:
        try:
            times = _times(fn, warmup, repeats)
        except Exception as err:  # e.g. no bfloat16 kernel on this device
            results.append({"library": library, "dtype": dtype, "n": n,
                            "device": where, "error": _error(err)})
            continue
        results.append({
            "library": library, "dtype": dtype, "n": n, "device": where,
            "device_description": (device["description"] if where == on
                                   else device["cpu"]["description"]),
            **_gemm_timing(n, times)})
    return results


def _gemm_timing(n: int, times: List[float]) -> dict:
    """The timing fields of a GEMM entry: raw times, median, GFLOP/s (median, best)."""
    median = statistics.median(times)
    return {"times_s": times, "median_s": median, "gflops": 2 * n**3 / median / 1e9,
            "best_gflops": 2 * n**3 / min(times) / 1e9}


# Environment variables that make OpenBLAS use another CPU's kernels. Some machines
# set them because older OpenBLAS builds compute wrong results on their CPU; NumPy's
# current build does not, and with them its GEMM ran at half its speed (AMD EPYC,
# Haswell kernels: 199 vs 376-394 GFLOP/s). The roofline is what the CPU can do.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _numpy_gemm(n: int, warmup: int, repeats: int) -> dict:
    """NumPy's float32 GEMM, timed in a process of its own with OpenBLAS choosing its
    kernels for this CPU (:data:`OPENBLAS_OVERRIDES` dropped), checked against a
    float64 product: a wrong kernel gives an error entry, never a roofline."""
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_OVERRIDES}
    cmd = [sys.executable, os.path.abspath(__file__), "--numpy-gemm", str(n), str(warmup),
           str(repeats)]
    entry = {"library": "numpy", "dtype": "float32", "n": n,
             "openblas_overrides_dropped": sorted(set(os.environ) & set(OPENBLAS_OVERRIDES))}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        return dict(entry, error=f"NumPy GEMM probe failed: {_error(err)}")
    entry.update(out)
    if entry.get("max_rel_error", 0) > 1e-4:  # float32 sums of 2048 terms: ~1e-6
        entry.pop("gflops", None)
        entry["error"] = (f"NumPy's GEMM is wrong here (max relative error "
                          f"{entry['max_rel_error']:.1e}); not used as a roofline")
    return entry


def numpy_gemm_child(n: int, warmup: int, repeats: int) -> dict:
    """The timing of :func:`_numpy_gemm`, in its process; prints nothing else."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    times = _times(lambda: np.matmul(a, b), warmup, repeats)
    rows = slice(0, min(n, 64))
    exact = a[rows].astype(np.float64) @ b.astype(np.float64)
    error = np.abs(np.matmul(a, b)[rows] - exact).max() / np.abs(exact).max()
    return dict(_gemm_timing(n, times), max_rel_error=float(error),
                blas_kernel=_openblas_kernel())


def _openblas_kernel() -> Optional[str]:
    """The CPU kernel set NumPy's bundled OpenBLAS runs (e.g. ``SkylakeX``), if known."""
    import ctypes
    import glob

    import numpy as np

    for path in glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs",
                                       "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename_",
                     "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def _error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text.splitlines()[0][:400] if text else type(err).__name__


def _probe(spec: dict) -> dict:
    """Device, versions and GEMM throughput of this process's backend."""
    backend = spec["backend"]
    device = _device(backend)
    return {"device": device, "versions": _versions(backend),
            "gemm": _gemm(backend, device, spec["gemm_n"], spec["gemm_warmup"],
                          spec["gemm_repeats"])}


def _to_numpy(outputs):
    """Host copies of ``outputs`` (any structure): also waits for the device."""
    import keras
    import numpy as np

    return keras.tree.map_structure(lambda t: np.asarray(keras.ops.convert_to_numpy(t)),
                                    outputs)


def _main_output(outputs):
    if isinstance(outputs, dict):
        return outputs.get("logits", next(iter(outputs.values())))
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


def _build(spec: dict):
    """``(model, build seconds)`` for the row's path (the source model for fast paths)."""
    import keras

    import keras_inception

    size = spec["size"]
    shape = (size, size, 3)
    if spec["impl"] == "keras_applications":
        name = spec["keras_applications"]
        if not name:  # the registry knows no keras.applications model of that family
            raise NotAvailable(f"keras.applications has no {spec['model']}")
        constructor = getattr(keras.applications, name)
        start = time.perf_counter()
        try:
            model = constructor(weights=None, input_shape=shape)
        except ValueError as err:  # its own minimum input size
            raise NotAvailable(f"keras.applications.{name}: {_error(err)}") from err
        return model, time.perf_counter() - start
    start = time.perf_counter()
    model = keras_inception.create_model(spec["model"], weights=None, input_shape=shape)
    return model, time.perf_counter() - start


def _build_with_keras_init(spec: dict) -> Optional[float]:
    """Build seconds of our model with Keras' own initialisation (each variable's
    initializer run by the backend) instead of keras_inception's host
    initialisation: what the constructors did before that fast path. None when
    the constructors have no such fast path to turn off."""
    try:
        from keras_inception.initializers import keras_initialization
    except ImportError:
        return None
    with keras_initialization():
        return _build(spec)[1]


def _weights_file(spec: dict, model) -> dict:
    """A ``.weights.h5`` of this model in the keras_inception cache (made once).

    Offline there are no published files to load, so the file is saved from a
    model of the same path and family (random initialisation): the same tensors,
    shapes and file format as a cached converted file.
    """
    from keras_inception import download

    owner = "keras_applications" if spec["impl"] == "keras_applications" else "ours"
    key = f"bench-{owner}-{spec['model']}"
    path = download.cached_or_build(key, model.save_weights, subdir="benchmarks",
                                    suffix=".weights.h5")
    return {"path": path, "bytes": os.path.getsize(path),
            "made_by": "save_weights() of a randomly initialised model of this path "
                       "(offline stand-in for a cached converted file); created once, "
                       "then read from the OS page cache"}


def _load(spec: dict, model, path: str) -> float:
    import keras_inception

    start = time.perf_counter()
    if spec["impl"] == "keras_applications":
        model.load_weights(path)
    else:
        keras_inception.load_weights(model, path)
    return time.perf_counter() - start


def _accelerate(model, bf16: bool, whole: bool = False):
    """The fast inference callable of keras_inception.accelerate, if there is one;
    ``whole``: without batch chunks."""
    try:
        from keras_inception import accelerate
    except ImportError as err:
        raise NotAvailable(f"keras_inception.accelerate is not importable ({_error(err)})")
    fn = getattr(accelerate, "inference_function", None)
    if fn is None:
        raise NotAvailable("keras_inception.accelerate has no inference_function")
    import inspect

    params = inspect.signature(fn).parameters
    if whole:
        if "chunk_bytes" not in params:
            raise NotAvailable("keras_inception.accelerate.inference_function has no "
                               "chunk_bytes option")
        return fn(model, chunk_bytes=None)
    if not bf16:
        return fn(model)
    for name, value in (("dtype", "bfloat16"), ("precision", "bfloat16"),
                        ("compute_dtype", "bfloat16"), ("mixed_precision", True),
                        ("bf16", True), ("bfloat16", True)):
        if name in params:
            return fn(model, **{name: value})
    raise NotAvailable("keras_inception.accelerate.inference_function has no bfloat16 "
                       "option")


def _device_memory_reset(backend: str, kind: str) -> None:
    if kind != "gpu":
        return
    if backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")


def _device_memory_peak_mb(backend: str, kind: str) -> Optional[float]:
    if kind != "gpu":
        return None
    try:
        if backend == "torch":
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else peak / 2**20
    except Exception:
        return None


def _timing(times: List[float], batch: int, warmup: int) -> dict:
    median = statistics.median(times)
    return {"batch": batch, "warmup": warmup, "repeats": len(times), "times_s": times,
            "median_s": median, "images_per_s": batch / median}


def _row(spec: dict, device: dict) -> dict:
    """Measures one path of one family on this process's backend."""
    import keras
    import numpy as np

    from keras_inception.stats import count_macs

    import keras_inception

    info = keras_inception.get_model_info(spec["model"])  # unknown name: a failed row
    spec = dict(spec, model=info.name, size=spec["size"] or info.default_size,
                keras_applications=info.keras_applications or None)
    backend, impl = spec["backend"], spec["impl"]
    row = {"backend": backend, "model": spec["model"], "impl": impl,
           "label": LABELS[impl], "size": spec["size"], "batch": spec["batch"],
           "device": device["description"], "available": True, "reason": None,
           "dtype": "bfloat16" if impl in BF16 else "float32",
           "loadavg_start": list(os.getloadavg())}
    if not spec["isolated"]:
        keras.backend.clear_session()  # the previous row's models and functions
    start = time.perf_counter()
    rss_before = _rss_mb()
    _device_memory_reset(backend, device["kind"])
    rng = np.random.default_rng(0)
    size, batch = spec["size"], spec["batch"]
    x_batch = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    x_one = x_batch[:1]
    policy = keras.config.dtype_policy().name
    if backend == "jax" and device["kind"] == "cpu":
        from keras_inception import xla_cpu

        row["xla_cpu_convolutions"] = "YNNPACK" if xla_cpu.ynn_convolutions() else "Eigen"
    try:
        if impl == "accelerated_whole" and backend != "torch":
            raise NotAvailable("only the PyTorch path runs batch chunks: whole batches "
                               "are its 'accelerated' row")
        if impl == "mixed_bf16":
            keras.config.set_dtype_policy("mixed_bfloat16")
        model, row["build_s"] = _build(spec)
        row["params"] = int(model.count_params())
        row["flops_per_image"] = 2 * int(count_macs(model))
        if impl in ("keras_applications", "plain", "mixed_bf16"):
            row["weights_file"] = _weights_file(spec, model)
            row["load_s"] = _load(spec, model, row["weights_file"]["path"])
        predict = model.predict_on_batch
        row["path"] = "model.predict_on_batch"
        row["jit_compile"] = getattr(model, "jit_compile", None)  # as predict uses it
        if impl in INFERENCE_ONLY:
            if impl == "mixed_bf16":
                keras.config.set_dtype_policy(policy)
                reference_model, _ = _build(dict(spec, impl="plain"))
                reference_model.set_weights(model.get_weights())
            else:
                reference_model = model
            reference = _main_output(_to_numpy(reference_model(x_one, training=False)))
            prepare = time.perf_counter()
            if impl == "fused":
                try:
                    from keras_inception.optimize import fuse_batchnorm
                except ImportError as err:
                    raise NotAvailable(f"keras_inception.optimize.fuse_batchnorm is "
                                       f"not importable ({_error(err)})") from err
                fast = fuse_batchnorm(model)
                row["path"] = "fuse_batchnorm(model).predict_on_batch"
                predict = fast.predict_on_batch
                row["jit_compile"] = getattr(fast, "jit_compile", None)
                row["params"] = int(fast.count_params())
            elif impl.startswith("accelerated"):
                fn = _accelerate(model, bf16=impl == "accelerated_bf16",
                                 whole=impl == "accelerated_whole")
                row["path"] = getattr(fn, "path", None) or repr(fn)
                row["jit_compile"] = None  # the function compiles its own way

                def predict(x, fn=fn):
                    return _to_numpy(fn(x))
            row["prepare_s"] = time.perf_counter() - prepare
            got = np.asarray(_main_output(predict(x_one)), dtype="float32")
            row["max_abs_diff_vs_plain"] = float(np.max(np.abs(got - reference)))
            row["top1_agrees_with_plain"] = bool(
                np.array_equal(got.argmax(-1), reference.argmax(-1)))
            del reference_model
        warmup, repeats = spec["warmup"], spec["repeats"]
        row["infer_b1"] = _timing(_times(lambda: predict(x_one), warmup, repeats),
                                  1, warmup)
        row["infer"] = _timing(_times(lambda: predict(x_batch), warmup, repeats),
                               batch, warmup)
        row["train"] = None
        if spec["train"] and impl not in INFERENCE_ONLY:
            optimizer = (keras.optimizers.Adam(1e-4) if spec["optimizer"] == "adam"
                         else keras.optimizers.SGD(0.01, momentum=0.9))
            model.compile(optimizer=optimizer,
                          loss=keras.losses.SparseCategoricalCrossentropy())
            labels = rng.integers(0, model.outputs[0].shape[-1], (batch,))
            times = _times(lambda: model.train_on_batch(x_batch, labels),
                                 warmup, repeats)
            row["train"] = dict(_timing(times, batch, warmup),
                                optimizer=spec["optimizer"],
                                jit_compile=getattr(model, "jit_compile", None))
    except NotAvailable as why:
        row.update(available=False, reason=str(why))
    finally:
        keras.config.set_dtype_policy(policy)
    row["memory"] = {"rss_at_start_mb": rss_before,
                     "rss_peak_mb": _peak_rss_mb(rss_before),
                     "device_peak_mb": _device_memory_peak_mb(backend, device["kind"]),
                     "isolated": spec["isolated"]}
    row["malloc_keeps_freed_memory"] = _malloc_keeps_freed_memory()
    if impl == "plain" and row["available"]:  # after the memory peak: a second model
        row["build_keras_init_s"] = _build_with_keras_init(spec)
    row["loadavg_end"] = list(os.getloadavg())
    row["wall_s"] = time.perf_counter() - start
    return row


def child_main(spec_path: str, result_path: str) -> int:
    """Runs the tasks of ``spec_path`` and writes their JSON to ``result_path``."""
    sys.path.insert(0, str(ROOT))
    with open(spec_path) as f:
        spec = json.load(f)
    result = {"backend": os.environ.get("KERAS_BACKEND")}
    start = time.perf_counter()
    import keras  # noqa: F401  (the backend's import time is not part of any row)

    import keras_inception  # noqa: F401

    result["import_s"] = time.perf_counter() - start
    if spec.get("probe"):
        result["probe"] = _probe(spec["probe"])
        _write_json(result_path, result)
    device = _device(result["backend"])
    rows = []
    for row_spec in spec.get("rows", ()):
        try:
            rows.append(_row(row_spec, device))
        except Exception as err:  # a real failure: reported, the run goes on
            import traceback

            rows.append({"backend": row_spec["backend"], "model": row_spec["model"],
                         "impl": row_spec["impl"], "label": LABELS[row_spec["impl"]],
                         "available": False, "reason": f"failed: {_error(err)}",
                         "traceback": traceback.format_exc()[-3000:]})
        result["rows"] = rows
        _write_json(result_path, result)  # after every row: a killed child keeps them
    _write_json(result_path, result)
    return 0


def _write_json(path: str, data, indent=None) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=indent)
    os.replace(path + ".tmp", path)


# -------------------------------------------------------------------------- parent

def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:80] or "device"


def _run_child(spec: dict, backend: str, timeout: float, log, threads=None) -> dict:
    """Runs a child process on ``backend``; its result, or an error description."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        spec_path, result_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        env = dict(os.environ, KERAS_BACKEND=backend)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        rows = spec.get("rows", ())
        if rows and all(r["impl"] == "keras_applications" for r in rows):
            # keras.applications as its users run it: XLA's default flags (importing
            # keras_inception would turn YNNPACK's convolutions off on JAX).
            env["KERAS_INCEPTION_XLA_CPU_LOWERING"] = "0"
        if threads:
            env.update({name: str(threads) for name in THREAD_VARIABLES})
        cmd = [sys.executable, os.path.abspath(__file__), "--child", spec_path, result_path]
        try:
            proc = subprocess.run(cmd, env=env, cwd=str(ROOT), timeout=timeout,
                                  capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s (--timeout)"
        else:
            error = None
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-15:]
                log(f"  child failed (exit {proc.returncode}):\n    " + "\n    ".join(tail))
                error = f"exit {proc.returncode}: {tail[-1] if tail else 'no output'}"
        result = {}
        if os.path.exists(result_path):  # what it finished before failing, if anything
            with open(result_path) as f:
                result = json.load(f)
        if error:
            result["error"] = error
        return result


def rooflines(backends: dict) -> Dict[str, dict]:
    """Device description -> {dtype: best median GEMM GFLOP/s on it, and by which}."""
    out: Dict[str, dict] = {}
    for info in backends.values():
        for g in info.get("gemm", ()):
            if "gflops" not in g:
                continue
            entry = out.setdefault(g["device_description"], {})
            best = entry.get(g["dtype"])
            if best is None or g["gflops"] > best["gflops"]:
                entry[g["dtype"]] = {"gflops": g["gflops"], "library": g["library"],
                                     "n": g["n"]}
    return out


def _ips(row: Optional[dict], key: str) -> Optional[float]:
    if not row or not row.get("available") or not row.get(key):
        return None
    return row[key]["images_per_s"]


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def add_ratios(report: dict) -> dict:
    """Adds ``row["ratios"]`` to every row of ``report`` (in place; returns it).

    - ``*_vs_keras_applications``: images/s of the row over keras.applications'
      on the same backend and family (``build_speedup``: its build time over ours);
    - ``*_vs_plain``: over our plain model's;
    - ``roofline_fraction``: inference images/s x FLOPs per image over the GEMM
      FLOP/s of the row's device in the row's compute dtype (``train_roofline_
      fraction`` counts 3 x the forward FLOPs per training image).
    """
    roofs = report.get("rooflines") or rooflines(report.get("backends", {}))
    index = {(r["backend"], r["model"], r["impl"]): r for r in report["results"]}
    for row in report["results"]:
        ka = index.get((row["backend"], row["model"], "keras_applications"))
        plain = index.get((row["backend"], row["model"], "plain"))
        ratios = {}
        if row.get("available"):
            for key, name in (("infer", "infer"), ("infer_b1", "infer_b1"),
                              ("train", "train")):
                ratios[f"{name}_vs_keras_applications"] = _ratio(_ips(row, key),
                                                                 _ips(ka, key))
                ratios[f"{name}_vs_plain"] = _ratio(_ips(row, key), _ips(plain, key))
            ka_build = ka.get("build_s") if ka and ka.get("available") else None
            ratios["build_speedup_vs_keras_applications"] = _ratio(ka_build,
                                                                   row.get("build_s"))
            if row.get("build_keras_init_s") is not None:
                ratios["build_speedup_vs_keras_init"] = _ratio(
                    row["build_keras_init_s"], row.get("build_s"))
            roof = roofs.get(row.get("device"), {}).get(row.get("dtype"))
            ratios["roofline_gflops"] = roof["gflops"] if roof else None
            flops = row.get("flops_per_image")
            peak = roof["gflops"] * 1e9 if roof else None
            ips = _ips(row, "infer")
            ratios["roofline_images_per_s"] = _ratio(peak, flops)
            ratios["roofline_fraction"] = _ratio(ips * flops if ips and flops else None,
                                                 peak)
            tips = _ips(row, "train")
            ratios["train_roofline_fraction"] = _ratio(
                tips * flops * TRAIN_FLOPS_FACTOR if tips and flops else None, peak)
        row["ratios"] = ratios
    return report


def _fmt(value, kind: str = "num") -> str:
    if value is None:
        return "–"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "pct":
        return f"{100 * value:.0f}%"
    if kind == "s":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.2g}"


def _malloc_keeps_freed_memory() -> bool:
    """Whether this process has had glibc keep its freed memory (``inference_function``
    sets it on PyTorch and JAX on a CPU): in a shared process, for every later row."""
    from keras_inception import accelerate

    called = accelerate.keep_freed_memory.cache_info().currsize > 0
    return called and accelerate.keep_freed_memory()


def _xla_cpu_note(report: dict) -> str:
    """Which library ran JAX's float32 convolutions on the CPU, per path."""
    seen = {}
    for row in report["results"]:
        if row.get("xla_cpu_convolutions"):
            seen.setdefault(row["xla_cpu_convolutions"], set()).add(row["label"])
    if not seen:
        return ""
    parts = [f"{', '.join(sorted(labels))} on {lib}" for lib, labels in sorted(seen.items())]
    return f" JAX's float32 CPU convolutions: {'; '.join(parts)}."


def markdown(report: dict) -> str:
    """The results as Markdown: a header of facts, the table, GEMMs, what was not run."""
    s = report["settings"]
    devices = sorted({b["device"]["description"] for b in report["backends"].values()
                      if "device" in b})
    versions = {}
    for info in report["backends"].values():
        versions.update(info.get("versions", {}))
    vtext = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if k != "python")
    batch = s["batch"]
    load = report["loadavg"]
    sizes = ", ".join(sorted({f"{r['model']} {r['size']} px" for r in report["results"]
                              if r.get("size")})) or "default"
    lines = [] if report.get("complete", True) else [
        "**Incomplete: the run was still going when this was written.**", ""]
    lines += [
        f"Device: **{'; '.join(devices) or 'unknown'}**. Run {report['date']} "
        f"({report['duration_s'] / 60:.1f} min), {vtext}.",
        "",
        f"Inputs: {sizes}; float32 unless noted; random data; "
        f"images/s are the median of {s['repeats']} timed calls after "
        f"{s['warmup']} warm-up call(s); training: `train_on_batch`, {s['optimizer']}, "
        f"batch {batch}. Load average (1 min) over the run: "
        f"{load['min']:.2f} to {load['max']:.2f}.{_xla_cpu_note(report)}",
        "",
        f"| model | backend | path | build (s) | load (s) | b1 (img/s) | b{batch} (img/s) "
        f"| vs k.a. | vs plain | of roofline | train (img/s) | train vs k.a. "
        f"| peak mem (MB) |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    skipped = []
    for row in report["results"]:
        if not row.get("available"):
            skipped.append(f"- {row['model']} / {row['backend']} / {row['label']}: "
                           f"{row.get('reason')}")
            continue
        r = row["ratios"]
        mem = row["memory"]
        peak = mem.get("device_peak_mb") or mem.get("rss_peak_mb")
        label = row["label"] + (" (bf16)" if row["impl"] == "mixed_bf16" else "")
        lines.append(
            f"| {row['model']} | {row['backend']} | {label} | {_fmt(row.get('build_s'), 's')}"
            f" | {_fmt(row.get('load_s'), 's')} | {_fmt(_ips(row, 'infer_b1'))}"
            f" | {_fmt(_ips(row, 'infer'))} | {_fmt(r.get('infer_vs_keras_applications'), 'x')}"
            f" | {_fmt(r.get('infer_vs_plain'), 'x')} | {_fmt(r.get('roofline_fraction'), 'pct')}"
            f" | {_fmt(_ips(row, 'train'))} | {_fmt(r.get('train_vs_keras_applications'), 'x')}"
            f" | {_fmt(peak, 'num')} |")
    kept = {f"{r['backend']} / {r['label']}" for r in report["results"]
            if r.get("available") and r.get("malloc_keeps_freed_memory")}
    if kept:
        lines += ["", "glibc kept the process's freed memory "
                      "(`keras_inception.accelerate.keep_freed_memory`) in these rows: "
                      + ", ".join(sorted(kept)) + "."]
    builds = [r for r in report["results"] if r.get("available") and r["impl"] == "plain"]
    if builds:
        lines += ["", "Construction with random initialisation (seconds; keras-inception "
                      "with Keras' own per-variable initialisation for comparison):", "",
                  "| model | backend | keras.applications | keras-inception | with Keras' "
                  "initialisation | vs k.a. |", "|---|---|--:|--:|--:|--:|"]
        for row in builds:
            ka = next((r for r in report["results"] if r.get("available")
                       and r["impl"] == "keras_applications" and r["model"] == row["model"]
                       and r["backend"] == row["backend"]), {})
            lines.append(
                f"| {row['model']} | {row['backend']} | {_fmt(ka.get('build_s'), 's')} | "
                f"{_fmt(row.get('build_s'), 's')} | {_fmt(row.get('build_keras_init_s'), 's')}"
                f" | {_fmt(row['ratios'].get('build_speedup_vs_keras_applications'), 'x')} |")
    lines += ["", "Matrix-multiply throughput (GFLOP/s, median; the roofline is the best "
                  "median per device and dtype):", "",
              "| backend | library | dtype | n | device | GFLOP/s |", "|---|---|---|--:|---|--:|"]
    for backend, info in report["backends"].items():
        for g in info.get("gemm", ()):
            library = g["library"] + (f" (OpenBLAS {g['blas_kernel']})"
                                      if g.get("blas_kernel") else "")
            lines.append(f"| {backend} | {library} | {g['dtype']} | {g['n']} | "
                         f"{g['device']} | {_fmt(g.get('gflops'))}"
                         f"{'' if 'gflops' in g else ' ' + g.get('error', '')} |")
    errors = [f"- {b}: {info['error']}" for b, info in report["backends"].items()
              if info.get("error")]
    if skipped or errors:
        lines += ["", "Not measured:", ""] + errors + skipped
    return "\n".join(lines) + "\n"


def chart(report: dict, path: str) -> None:
    """Inference and training images/s per path, family and backend, with rooflines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r.get("available")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    backends = [b for b in report["settings"]["backends"]
                if any(r["backend"] == b for r in rows)]
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    if not rows:
        models, backends, impls = ["(nothing measured)"], [""], []
    fig, axes = plt.subplots(2, len(models), figsize=(max(8.0, 4.5 * len(models)), 7.5),
                             squeeze=False)
    colors = plt.get_cmap("tab10")
    index = {(r["backend"], r["model"], r["impl"]): r for r in rows}
    for col, model in enumerate(models):
        for line, (key, title) in enumerate((("infer", "inference"), ("train", "training"))):
            ax = axes[line][col]
            shown = [i for i in impls if any(_ips(r, key) for r in rows if r["impl"] == i)]
            width = 0.8 / max(1, len(shown))
            for impl in shown:
                k = impls.index(impl)  # the same colour in both rows
                xs, ys = [], []
                for b, backend in enumerate(backends):
                    value = _ips(index.get((backend, model, impl)), key)
                    if value is not None:
                        xs.append(b - 0.4 + width * (shown.index(impl) + 0.5))
                        ys.append(value)
                if xs:
                    bars = ax.bar(xs, ys, width, color=colors(k), label=LABELS[impl])
                    ax.bar_label(bars, labels=[_fmt(y) for y in ys], fontsize=6,
                                 padding=1)
            if key == "infer":  # the fp32 GEMM bound of each backend's device
                for b, backend in enumerate(backends):
                    plain = index.get((backend, model, "plain")) or next(
                        (r for r in rows if r["backend"] == backend and r["model"] == model),
                        None)
                    roof = plain and plain["ratios"].get("roofline_images_per_s")
                    if roof and plain["dtype"] == "float32":
                        ax.hlines(roof, b - 0.45, b + 0.45, colors="black",
                                  linestyles="dashed",
                                  label="fp32 GEMM roofline" if b == 0 else None)
            ax.set_xticks(range(len(backends)), backends)
            ax.set_xlim(-0.5, len(backends) - 0.5)
            batch = report["settings"]["batch"]
            ax.set_title(f"{model}: {title}, batch {batch}", fontsize=10)
            ax.set_ylabel("images/s")
            ax.grid(axis="y", alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
                   ncol=min(4, len(handles)), fontsize=8, frameon=False)
    devices = sorted({r["device"] for r in rows})
    fig.suptitle(f"keras-inception vs keras.applications\n{'; '.join(devices)}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def publish(report: dict, out: pathlib.Path, table: str) -> List[str]:
    """Copies the chart under docs/ and puts the table into docs/benchmarks.md."""
    DOCS_ASSETS.mkdir(parents=True, exist_ok=True)
    slug = out.name
    image = DOCS_ASSETS / f"{slug}.png"
    shutil.copyfile(out / "results.png", image)
    text = DOCS_PAGE.read_text()
    begin, end = markers(slug)
    if begin not in text or end not in text:
        raise SystemExit(f"{DOCS_PAGE} has no block for this device: put the lines "
                         f"{begin} and {end} where its table should go, then run "
                         f"--publish again.")
    rel = os.path.relpath(out, ROOT)
    block = (f"{begin}\n<!-- written by benchmarks/bench.py --publish from {rel}/; "
             f"do not edit by hand -->\n\n{table}\n"
             f"![Images/s per path, model and backend](assets/benchmarks/{slug}.png)\n\n"
             f"Raw numbers: `{rel}/results.json`.\n{end}")
    head, rest = text.split(begin, 1)
    text = head + block + rest.split(end, 1)[1]
    DOCS_PAGE.write_text(text)
    return [str(image), str(DOCS_PAGE)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark keras-inception against keras.applications on each "
                    "backend (see the module docstring).")
    p.add_argument("--models", default=None,
                   help=f"comma-separated families (default: {','.join(DEFAULT_MODELS)})")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated Keras backends (default: all three)")
    p.add_argument("--impls", default=",".join(IMPLS),
                   help=f"comma-separated paths to measure (default: all: {','.join(IMPLS)})")
    p.add_argument("--size", type=int, default=None,
                   help="input side in pixels (default: each family's default size)")
    p.add_argument("--batch", type=int, default=16, help="the larger batch (default 16)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls before timing, which compile (default 1)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed calls; the median is reported (default 3)")
    p.add_argument("--no-train", dest="train", action="store_false",
                   help="skip the training steps")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--gemm-n", type=int, default=2048, help="GEMM side (default 2048)")
    p.add_argument("--isolate", choices=("row", "backend"), default="row",
                   help="a fresh process per row (peak memory per row; default) or "
                        "one per backend (faster; peaks accumulate)")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds before a child process is killed (default 3600)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per child (sets " + ", ".join(THREAD_VARIABLES) +
                        "; default: the libraries' own, all cores)")
    p.add_argument("--max-load", type=float, default=2.5,
                   help="warn when the 1-minute load average exceeds this")
    p.add_argument("--out", default=None,
                   help="output folder (default benchmarks/results/<device>/)")
    p.add_argument("--quick", action="store_true",
                   help="harness check: googlenet at 32 px, batch 2, 1 warm-up, 2 "
                        "repeats, 256 GEMM, one process per backend, 1 thread (numbers are "
                        "meaningless)")
    p.add_argument("--publish", action="store_true",
                   help="also copy the chart to docs/assets/benchmarks/ and the table "
                        "into docs/benchmarks.md")
    p.add_argument("--child", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    p.add_argument("--numpy-gemm", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or "googlenet"
        args.size = args.size or 32
        args.batch, args.warmup, args.repeats = 2, 1, 2
        args.gemm_n, args.isolate = 256, "backend"
        # One thread: a harness check must not slow to a crawl when other work
        # holds the cores (OpenMP threads waiting for each other).
        args.threads = args.threads or 1
    args.models = [m.strip() for m in (args.models or ",".join(DEFAULT_MODELS)).split(",")
                   if m.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for b in args.backends:
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    for i in args.impls:
        if i not in IMPLS:
            p.error(f"unknown path {i!r}; choose from {', '.join(IMPLS)}")
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch and --repeats must be at least 1, --warmup at least 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.numpy_gemm:
        print(json.dumps(numpy_gemm_child(*args.numpy_gemm)))
        return 0
    if args.child:
        return child_main(*args.child)
    log = lambda text: print(text, flush=True)  # noqa: E731
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    loads = [os.getloadavg()[0]]
    report = {"schema": SCHEMA, "date": started.isoformat(timespec="seconds"),
              "command": [os.path.relpath(__file__, ROOT)] + list(argv if argv is not None
                                                                  else sys.argv[1:]),
              "settings": {k: getattr(args, k) for k in (
                  "models", "backends", "impls", "size", "batch", "warmup", "repeats",
                  "train", "optimizer", "gemm_n", "isolate", "threads", "quick")},
              "host": {"platform": platform.platform(), "cpu": _cpu_info(),
                       "git": _git(), "env": {k: os.environ[k] for k in (
                           "JAX_COMPILATION_CACHE_DIR", "OMP_NUM_THREADS",
                           "TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES",
                           "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                           "MALLOC_TOP_PAD_", "LD_PRELOAD")
                           if k in os.environ}},
              "backends": {}, "results": []}
    if loads[0] > args.max_load:
        log(f"WARNING: load average {loads[0]:.2f} > {args.max_load}: other work is "
            f"running; timings will be low and noisy.")
    gemm = {"gemm_n": args.gemm_n, "gemm_warmup": 1 if args.quick else 2,
            "gemm_repeats": 2 if args.quick else 5}
    for backend in args.backends:
        specs = [{"backend": backend, "model": name, "impl": impl, "size": args.size,
                  "batch": args.batch, "warmup": args.warmup, "repeats": args.repeats,
                  "train": args.train, "optimizer": args.optimizer,
                  "isolated": args.isolate == "row"}
                 for name in args.models for impl in args.impls]
        probe = dict(gemm, backend=backend)
        if args.isolate == "row":  # the probe alone, then a fresh process per row
            jobs = [{"probe": probe}] + [{"rows": [spec]} for spec in specs]
        else:
            jobs = [{"probe": probe, "rows": specs}]
        for job in jobs:
            rows = job.get("rows", [])
            what = (f"{rows[0]['model']} {rows[0]['impl']}" if len(rows) == 1
                    else f"{len(rows)} rows")
            log(f"[{backend}] " + ("probing device, versions and GEMM throughput"
                                   + (f", then {what}" if rows else "")
                                   if "probe" in job else what) + " ...")
            out = _run_child(job, backend, args.timeout, log, args.threads)
            if "probe" in job:
                if "probe" not in out:
                    error = out.get("error", "probe failed")
                    report["backends"][backend] = {"error": error}
                    log(f"[{backend}] unavailable: {error}")
                    break
                info = out["probe"]
                report["backends"][backend] = dict(info, import_s=out["import_s"])
                log(f"[{backend}] {info['device']['description']}; " + ", ".join(
                    f"{g['library']} {g['dtype']} {g['gflops']:.0f} GFLOP/s"
                    for g in info["gemm"] if "gflops" in g))
            done = out.get("rows", [])
            missing = rows[len(done):]  # a child measures its rows in order
            done += [{"backend": backend, "model": s["model"], "impl": s["impl"],
                      "label": LABELS[s["impl"]], "available": False,
                      "reason": f"child process failed: {out.get('error')}"}
                     for s in missing]
            for row in done:
                report["results"].append(row)
                loads += row.get("loadavg_start", [])[:1] + row.get("loadavg_end", [])[:1]
                log(f"  {_line(row)}")
            if report["results"]:  # JSON and table so far: a long run can be read early
                _finish(report, args, loads, t0, complete=False)
    loads.append(os.getloadavg()[0])
    out, table = _finish(report, args, loads, t0, complete=True)
    chart(report, str(out / "results.png"))
    written = [str(out / n) for n in ("results.json", "results.md", "results.png")]
    if args.publish:
        written += publish(report, out, table)
    log("\n" + table)
    log(f"Wrote {', '.join(written)} in {report['duration_s'] / 60:.1f} min.")
    if max(loads) > args.max_load:
        log(f"WARNING: the load average reached {max(loads):.2f} during the run: "
            f"re-run on a quiet machine before quoting these numbers.")
    return 0


def _finish(report: dict, args, loads: list, t0: float, *, complete: bool):
    """Adds the totals and ratios to ``report``, writes its JSON and Markdown."""
    report["complete"] = complete
    report["duration_s"] = time.perf_counter() - t0
    report["loadavg"] = {"min": min(loads), "max": max(loads), "samples_1min": loads}
    report["rooflines"] = rooflines(report["backends"])
    add_ratios(report)
    slugs = [b["device"]["slug"] for b in report["backends"].values() if "device" in b]
    slug = (slugs[0] if slugs else "unknown-device") + ("-quick" if args.quick else "")
    out = pathlib.Path(args.out) if args.out else ROOT / "benchmarks" / "results" / slug
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    _write_json(str(out / "results.json"), report, indent=1)
    (out / "results.md").write_text(table)
    return out, table


def _line(row: dict) -> str:
    head = f"{row['model']} {row['backend']} {row['label']}:"
    if not row.get("available"):
        return f"{head} not measured ({row.get('reason')})"
    parts = [f"build {row.get('build_s', float('nan')):.2f} s"]
    for key, name in (("infer_b1", "b1"), ("infer", f"b{row.get('batch')}"),
                      ("train", "train")):
        if row.get(key):
            parts.append(f"{name} {row[key]['images_per_s']:.3g} img/s")
    return f"{head} " + ", ".join(parts)


def _git() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


if __name__ == "__main__":
    sys.exit(main())
