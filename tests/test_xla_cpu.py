"""keras_inception.xla_cpu: the YNNPACK flag on import, its opt-outs, the probe, and
accelerate's per-executable options where JAX started before keras_inception."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest

from keras_inception import xla_cpu

BACKEND = keras.backend.backend()
OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


@pytest.mark.parametrize("environ,backend,added", [
    ({}, "jax", True),
    ({"XLA_FLAGS": "--xla_dump_to=/tmp/x"}, "jax", True),
    ({}, "torch", False),
    ({}, "tensorflow", False),
    ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"},
     "jax", False),
    ({"KERAS_INCEPTION_XLA_CPU_LOWERING": "0"}, "jax", False),
], ids=["jax", "jax-other-flags", "torch", "tensorflow", "user-flag", "lowering-off"])
def test_configure_adds_the_flag_only_where_it_applies(environ, backend, added,
                                                        monkeypatch):
    monkeypatch.setattr(xla_cpu, "_jax_started", lambda: False)
    monkeypatch.setattr(xla_cpu, "_jaxlib_0_10", lambda: True)
    before = dict(environ)
    assert xla_cpu.configure(backend, environ) is added
    if added:  # appended: the user's other flags are kept, in front
        assert environ["XLA_FLAGS"] == f"{before.get('XLA_FLAGS', '')} {OFF}".strip()
    else:
        assert environ == before


def test_configure_leaves_a_started_jax_and_other_jaxlibs_alone(monkeypatch):
    """Too late once JAX has computed (XLA read the flags); unknown to other jaxlibs,
    whose XLA would abort on it."""
    monkeypatch.setattr(xla_cpu, "_jaxlib_0_10", lambda: True)
    monkeypatch.setattr(xla_cpu, "_jax_started", lambda: True)
    assert xla_cpu.configure("jax", {}) is False
    monkeypatch.setattr(xla_cpu, "_jax_started", lambda: False)
    monkeypatch.setattr(xla_cpu, "_jaxlib_0_10", lambda: False)
    assert xla_cpu.configure("jax", {}) is False


_CHILD = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "jax"
if sys.argv[1] == "jax-first":  # JAX computes before keras_inception is imported
    import jax.numpy as jnp
    jnp.ones(2).block_until_ready()
import jax
import numpy as np
import keras_inception
from keras_inception import xla_cpu

out = {"flags": os.environ.get("XLA_FLAGS", ""), "ynn": xla_cpu.ynn_convolutions()}
options = xla_cpu.eigen_compiler_options()
out["options"] = options
if options:  # the options keep a convolution off YNNPACK in this executable
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")
    x, k = np.ones((1, 32, 8, 8), "float32"), np.ones((32, 32, 3, 3), "float32")
    out["ynn_default"] = "__ynn" in jax.jit(conv).lower(x, k).compile().as_text()
    out["ynn_options"] = "__ynn" in jax.jit(conv, compiler_options=options).lower(
        x, k).compile().as_text()
model = keras_inception.InceptionV3(weights=None, input_shape=(75, 75, 3), classes=4)
images = np.random.default_rng(0).random((2, 75, 75, 3), "float32")
fn = keras_inception.inference_function(model)
out["path"] = fn.path
out["diff"] = float(np.abs(np.asarray(fn(images)) - np.asarray(model(images))).max())
print(json.dumps(out))
"""


def _child(mode, **env):
    env = {**{k: v for k, v in os.environ.items()
              if k not in ("XLA_FLAGS", "KERAS_INCEPTION_XLA_CPU_LOWERING")}, **env}
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's flag; one set of subprocesses")
def test_import_turns_ynnpack_convolutions_off_before_jax_starts():
    out = _child("fresh")
    assert out["flags"] == OFF and out["ynn"] is False and out["options"] is None
    assert "float32 convolutions on Eigen" in out["path"] and out["diff"] < 1e-5


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's flag; one set of subprocesses")
def test_after_jax_started_accelerate_compiles_for_eigen():
    """The flag would come too late: the probe sees YNNPACK's convolutions on (so the
    plain model takes the lowering), and accelerate compiles its executable with
    options that keep them off, traced for Eigen; same outputs."""
    out = _child("jax-first")
    assert out["flags"] == "" and out["ynn"] is True
    assert out["options"] == xla_cpu.EIGEN_OPTIONS
    assert out["ynn_default"] is True and out["ynn_options"] is False
    assert "float32 convolutions on Eigen" in out["path"] and out["diff"] < 1e-5


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's flag; one set of subprocesses")
@pytest.mark.parametrize("env", [
    {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"},
    {"KERAS_INCEPTION_XLA_CPU_LOWERING": "0"},
], ids=["user-flag", "lowering-off"])
def test_opt_outs_keep_xla_defaults(env):
    out = _child("fresh", **env)
    assert out["flags"] == env.get("XLA_FLAGS", "") and out["ynn"] is True
    assert out["options"] is None
    assert "float32 convolutions on YNNPACK" in out["path"] and out["diff"] < 1e-5
