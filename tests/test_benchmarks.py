"""The benchmark harness (benchmarks/bench.py) runs end to end and reports consistently.

One ``--quick`` run on this process's backend (googlenet at 32 px, in subprocesses,
as a real run) is checked for its files, its JSON schema, and ratios that agree with
the raw numbers next to them. Nothing here asserts a timing: the figures of a quick
run mean nothing, only their bookkeeping is tested.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import statistics
from unittest import mock

import keras
import pytest

import keras_inception
from keras_inception.stats import count_macs

ROOT = pathlib.Path(__file__).resolve().parent.parent
BACKEND = keras.backend.backend()


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``(report, out folder)`` of one quick run on this backend, every path asked for."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out"
    with mock.patch.dict(os.environ, {"KERAS_INCEPTION_CACHE": str(tmp / "cache")}):
        code = bench.main(["--quick", "--backends", BACKEND, "--out", str(out)])
    assert code == 0
    return json.loads((out / "results.json").read_text()), out


def _rows(report, **match):
    return [r for r in report["results"] if all(r.get(k) == v for k, v in match.items())]


def test_writes_json_markdown_and_png(quick):
    report, out = quick
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    measured = _rows(report, available=True)
    assert measured, report["results"]
    for row in measured:  # one table line per measured row
        assert f"| {row['model']} | {row['backend']} | {row['label']}" in table
    for row in _rows(report, available=False):  # and a reason for every other
        assert row["reason"] in table


def test_json_describes_device_versions_and_gemm(quick):
    report, _ = quick
    assert report["schema"] == bench.SCHEMA
    assert report["settings"]["models"] == ["googlenet"]
    assert report["settings"]["backends"] == [BACKEND]
    info = report["backends"][BACKEND]
    assert info["device"]["kind"] in ("cpu", "gpu")
    assert info["device"]["description"]
    assert info["versions"]["keras"] == keras.__version__
    assert info["versions"]["keras_inception"] == keras_inception.__version__
    assert BACKEND in info["versions"]
    libraries = {(g["library"], g["dtype"]) for g in info["gemm"]}
    assert ("numpy", "float32") in libraries
    assert (BACKEND, "float32") in libraries and (BACKEND, "bfloat16") in libraries
    for g in info["gemm"]:
        if "gflops" in g:
            assert g["gflops"] == pytest.approx(2 * g["n"] ** 3 / g["median_s"] / 1e9)
    roofs = report["rooflines"][info["device"]["description"]]
    best = max(g["gflops"] for g in info["gemm"]
               if g.get("dtype") == "float32" and "gflops" in g
               and g["device_description"] == info["device"]["description"])
    assert roofs["float32"]["gflops"] == best
    assert report["loadavg"]["min"] <= report["loadavg"]["max"]


def test_every_path_is_measured_or_says_why(quick):
    report, _ = quick
    assert {r["impl"] for r in report["results"]} == set(bench.IMPLS)
    (ka,) = _rows(report, impl="keras_applications")
    assert not ka["available"] and "keras.applications has no googlenet" in ka["reason"]
    for row in report["results"]:
        assert row["available"] or row["reason"], row
        if row["available"]:
            assert row["infer"]["batch"] == 2 and row["infer_b1"]["batch"] == 1
            assert row["memory"]["rss_peak_mb"] >= row["memory"]["rss_at_start_mb"] > 0
            assert row["device"] == report["backends"][BACKEND]["device"]["description"]
        if row["impl"] in bench.INFERENCE_ONLY:
            assert row.get("train") is None
        if row["available"] and row["impl"] != "plain":
            assert "max_abs_diff_vs_plain" in row  # every fast path is compared


def test_plain_row_has_every_measurement(quick):
    report, _ = quick
    (row,) = _rows(report, impl="plain")
    assert row["available"], row.get("reason")
    for key in ("build_s", "load_s", "params", "flops_per_image"):
        assert row[key] > 0
    weights = row["weights_file"]
    assert weights["bytes"] == os.path.getsize(weights["path"])
    assert "benchmarks" in weights["path"]  # in the keras_inception cache folder
    assert row["train"]["optimizer"] == "sgd" and row["train"]["batch"] == 2
    if row["build_keras_init_s"] is not None:  # the constructors' fast init, off
        assert row["ratios"]["build_speedup_vs_keras_init"] == pytest.approx(
            row["build_keras_init_s"] / row["build_s"])
    model = keras_inception.GoogLeNet(input_shape=(32, 32, 3))
    assert row["params"] == model.count_params()
    assert row["flops_per_image"] == 2 * count_macs(model)


def test_ratios_agree_with_raw_numbers(quick):
    report, _ = quick
    (plain,) = _rows(report, impl="plain")
    for row in _rows(report, available=True):
        for key in ("infer_b1", "infer", "train"):
            timing = row.get(key)
            if not timing:
                continue
            assert timing["median_s"] == statistics.median(timing["times_s"])
            assert timing["images_per_s"] == pytest.approx(timing["batch"]
                                                           / timing["median_s"])
            assert row["ratios"][f"{key}_vs_plain"] == pytest.approx(
                timing["images_per_s"] / plain[key]["images_per_s"])
        r = row["ratios"]
        peak = report["rooflines"][row["device"]][row["dtype"]]["gflops"]
        assert r["roofline_gflops"] == peak
        assert r["roofline_fraction"] == pytest.approx(
            row["infer"]["images_per_s"] * row["flops_per_image"] / (peak * 1e9))
        assert r["roofline_images_per_s"] == pytest.approx(peak * 1e9
                                                           / row["flops_per_image"])
        assert r["infer_vs_keras_applications"] is None  # keras.applications has none
    assert plain["ratios"]["infer_vs_plain"] == 1.0


def test_ratios_against_keras_applications():
    """add_ratios on rows made by hand: a reference row twice as fast, half the build."""
    def row(impl, ips, build):
        timing = {"batch": 4, "median_s": 4 / ips, "images_per_s": ips}
        return {"backend": "jax", "model": "inception_v3", "impl": impl,
                "available": True, "device": "cpu0", "dtype": "float32",
                "flops_per_image": 10e9, "build_s": build, "infer": timing,
                "infer_b1": timing, "train": dict(timing, images_per_s=ips / 4)}

    report = {"rooflines": {"cpu0": {"float32": {"gflops": 100.0}}},
              "results": [row("keras_applications", 8.0, 30.0), row("plain", 4.0, 1.5),
                          dict(row("fused", 6.0, 1.5), train=None),
                          {"backend": "jax", "model": "inception_v3",
                           "impl": "accelerated", "available": False, "reason": "x"}]}
    bench.add_ratios(report)
    ka, plain, fused, missing = report["results"]
    assert plain["ratios"]["infer_vs_keras_applications"] == 0.5
    assert plain["ratios"]["train_vs_keras_applications"] == 0.5
    assert plain["ratios"]["build_speedup_vs_keras_applications"] == 20.0
    assert fused["ratios"]["infer_vs_plain"] == 1.5
    assert fused["ratios"]["train_vs_plain"] is None
    assert ka["ratios"]["roofline_fraction"] == pytest.approx(0.8)
    assert plain["ratios"]["train_roofline_fraction"] == pytest.approx(
        1.0 * 10e9 * bench.TRAIN_FLOPS_FACTOR / 100e9)
    assert missing["ratios"] == {}


def test_publish_updates_the_marked_block(quick, tmp_path, monkeypatch):
    report, out = quick
    page = tmp_path / "benchmarks.md"
    begin, end = bench.markers(out.name)
    other_begin, other_end = bench.markers("another-device")
    original = (f"# Benchmarks\n\nMethod.\n\n{begin}\nold table\n{end}\n\nBetween.\n\n"
                f"{other_begin}\nits table\n{other_end}\n\nAfter.\n")
    page.write_text(original.replace(begin, "<!-- bench:begin elsewhere -->"))
    monkeypatch.setattr(bench, "DOCS_PAGE", page)
    monkeypatch.setattr(bench, "DOCS_ASSETS", tmp_path / "assets" / "benchmarks")
    table = (out / "results.md").read_text()
    with pytest.raises(SystemExit, match=f"put the lines {begin} and {end}"):
        bench.publish(report, out, table)  # no block for this device yet
    page.write_text(original)
    bench.publish(report, out, table)
    text = page.read_text()
    assert "old table" not in text and table in text
    assert text.startswith("# Benchmarks\n\nMethod.") and text.endswith(
        f"\n\nBetween.\n\n{other_begin}\nits table\n{other_end}\n\nAfter.\n")
    assert (tmp_path / "assets" / "benchmarks" / f"{out.name}.png").read_bytes() == \
        (out / "results.png").read_bytes()
    bench.publish(report, out, table)  # idempotent
    assert page.read_text() == text


def test_docs_page_shows_committed_results():
    """docs/benchmarks.md holds published blocks whose charts and JSON exist."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    blocks = bench.BLOCK.findall(text)
    assert blocks and text.count("<!-- bench:begin") == len(blocks)
    for slug, block in blocks:
        assert f"from benchmarks/results/{slug}/;" in block
        images = [line.split("](", 1)[1].rstrip(")") for line in block.splitlines()
                  if line.startswith("![")]
        assert images and all((ROOT / "docs" / image).is_file() for image in images)
        raw = block.split("Raw numbers: `", 1)[1].split("`", 1)[0]
        committed = json.loads((ROOT / raw).read_text())
        assert committed["schema"] == bench.SCHEMA
        assert bench.markdown(committed) in block  # the table is the JSON's


def test_cpus_with_and_without_amx_have_their_own_results(monkeypatch):
    monkeypatch.setattr(bench, "_cpu_name", lambda: "Intel(R) Xeon(R) Processor")
    monkeypatch.setattr(bench, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    plain = bench._cpu_info()
    monkeypatch.setattr(bench, "_cpu_flags",
                        lambda: {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    amx = bench._cpu_info()
    assert amx["slug"] == plain["slug"] + "-amx"
    assert amx["isa"] == ["amx_bf16", "avx512_bf16", "avx512f"]
    assert plain["slug"].startswith("cpu-intel-xeon-processor-")


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        bench.parse_args(["--backends", "theano"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--impls", "plain,turbo"])
    args = bench.parse_args(["--quick"])
    assert (args.models, args.size, args.batch, args.isolate) == (
        ["googlenet"], 32, 2, "backend")
    assert bench.parse_args([]).models == list(bench.DEFAULT_MODELS)


def _per_layer_table(script, *args, timeout=300):
    """Runs a per-layer script of benchmarks/ on Inception-v2 at 32 px (its own
    process: it sets KERAS_BACKEND); its output lines, the kinds in its table and
    its largest relative difference of a layer's output."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--model", "inception_v2",
         "--size", "32", "--batch", "1", "--repeats", "1", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    kinds = {line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith("| ")}
    error = next(line for line in lines if line.startswith("Largest relative"))
    return lines, kinds, float(error.rsplit(" ", 1)[1])


@pytest.mark.skipif(BACKEND != "jax", reason="the per-layer table is about JAX's lowering")
def test_conv_lowering_table():
    """benchmarks/conv_lowering.py times every distinct convolution both ways and
    reports outputs equal to Keras' op; its header says which library runs Keras' op
    (Eigen: its process imported keras_inception, see keras_inception.xla_cpu)."""
    lines, kinds, error = _per_layer_table("conv_lowering.py")
    assert lines[0].endswith("Keras' float32 op on Eigen or the device's convolutions")
    # Inception-v2 has 1x1, padded k x k and the separable 7x7/2 stem (multiplier 8).
    assert {"1x1", "k x k, padded", "separable (depthwise + 1x1)", "all"} <= kinds
    assert error < 1e-5


@pytest.mark.skipif(BACKEND != "jax", reason="the per-layer table is about JAX's lowering")
def test_onednn_ffi_table(tmp_path):
    """benchmarks/onednn_ffi.py fetches oneDNN with pip, compiles its XLA FFI
    convolution, and its outputs equal the zoo's lowering, layer by layer and for the
    whole model; a folder without oneDNN is a clear error."""
    lines, kinds, error = _per_layer_table("onednn_ffi.py", "--cache", str(tmp_path / "c"),
                                           timeout=600)
    assert {"1x1", "k x k, padded", "k x k, padded strided", "all"} <= kinds
    # oneDNN sums in another order than XLA: a difference of exactly 0 everywhere
    # would mean the FFI call never ran
    assert 0 < error < 1e-5
    whole = next(line for line in lines if line.startswith("Whole model"))
    assert float(whole.rsplit(" ", 1)[1]) < 1e-5
    assert not list((tmp_path / "c").glob("tmp*"))  # nothing half-unpacked left

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssertionError, match="holds no oneDNN build"):
        _per_layer_table("onednn_ffi.py", "--onednn", str(empty), "--cache", str(empty))


def test_rows_say_whether_malloc_kept_freed_memory(quick):
    """inference_function makes glibc keep freed memory on PyTorch and JAX on a CPU:
    its rows, and in a shared process every later row, say so in the JSON and the
    table."""
    import platform

    report, out = quick
    keeps = (BACKEND in ("torch", "jax") and platform.libc_ver()[0] == "glibc"
             and report["backends"][BACKEND]["device"]["kind"] == "cpu")
    rows = _rows(report, available=True)
    for row in rows:
        assert isinstance(row["malloc_keeps_freed_memory"], bool)
        if row["impl"].startswith("accelerated"):
            assert row["malloc_keeps_freed_memory"] == keeps
            assert ("malloc keeps freed memory" in row["path"]) == keeps
    first = next((i for i, r in enumerate(rows) if r["malloc_keeps_freed_memory"]), None)
    if first is not None:  # once set it stays, in a shared process (--quick)
        assert all(r["malloc_keeps_freed_memory"] for r in rows[first:])
    table = (out / "results.md").read_text()
    kept = [f"{r['backend']} / {r['label']}" for r in rows if r["malloc_keeps_freed_memory"]]
    assert ("glibc kept the process's freed memory" in table) == bool(kept)
    for label in kept:
        assert label in table.split("glibc kept the process's freed memory")[1]


def test_numpy_gemm_probe_runs_openblas_own_kernels(monkeypatch):
    """The NumPy GEMM probe (part of the roofline) runs in a process of its own
    without the variables that make OpenBLAS use another CPU's kernels, says which
    kernels ran, and its product is checked against float64."""
    import subprocess
    import sys

    def kernel(env):
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"),
                              "--numpy-gemm", "64", "0", "1"], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        return json.loads(run.stdout)["blas_kernel"]

    clean = {k: v for k, v in os.environ.items() if k not in bench.OPENBLAS_OVERRIDES}
    native = kernel(clean)
    if native is None:
        pytest.skip("NumPy here does not bundle OpenBLAS")
    assert kernel(dict(clean, OPENBLAS_CORETYPE="Sandybridge")) == "Sandybridge"  # it obeys

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Sandybridge")
    entry = bench._numpy_gemm(64, 0, 1)
    assert entry["openblas_overrides_dropped"][0] == "OPENBLAS_CORETYPE"
    assert entry["blas_kernel"] == native
    assert entry["max_rel_error"] < 1e-5 and entry["gflops"] > 0


def test_a_wrong_numpy_gemm_is_no_roofline(monkeypatch):
    """A BLAS that computes wrong products on this CPU gives an error entry, not a
    roofline figure."""
    wrong = json.dumps({"times_s": [0.001], "median_s": 0.001, "gflops": 9999.0,
                        "best_gflops": 9999.0, "max_rel_error": 0.3,
                        "blas_kernel": "Haswell"})
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: mock.Mock(stdout=wrong))
    entry = bench._numpy_gemm(2048, 0, 1)
    assert "gflops" not in entry and "wrong" in entry["error"]
    entry.update(device="cpu", device_description="cpu")
    assert bench.rooflines({"jax": {"gemm": [entry]}}) == {}
