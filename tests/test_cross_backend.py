"""A `.keras` file saved on this backend loads on the next one with the same outputs.

The backend is fixed per process, so the next backend of the cycle TensorFlow ->
JAX -> PyTorch -> TensorFlow runs in a subprocess, which loads every variant's file
and writes its outputs for this process to compare. Over the suite's three passes
every backend saves and every backend loads (one child per pass: loading on both
other backends in every pass took 44 s of the JAX pass and tested each mechanism
twice).
(Numerical equivalence of the architectures across backends is checked in
test_zoo.py against committed reference outputs.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

import keras_inception
from keras_inception.testing import main_head, predict, reference_images
from conftest import BACKEND

NEXT_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}

# keras_inception.load_model: the file's config through Keras' deserialisation, then its
# weights, without Keras' per-variable initialisation first (on a cold JAX process that
# compiles a random op per weight shape: this test took 86 s of the TensorFlow pass of
# a CI run with an empty compilation cache). tests/test_fast_build.py checks that it
# gives what keras.saving.load_model gives.
LOADER = r"""
import json, sys
import numpy as np
import keras_inception
from keras_inception.testing import predict, reference_images
jobs = json.loads(sys.argv[1])
out = {}
for name, (path, size) in jobs.items():
    out[name] = predict(keras_inception.load_model(path), reference_images(1, size))
np.savez(sys.argv[2], **out)
"""


def test_keras_files_load_on_the_next_backend(tmp_path):
    jobs, expected = {}, {}
    for name in keras_inception.list_models():
        size = keras_inception.get_model_info(name).min_size
        path = str(tmp_path / f"{name}.keras")
        main_head(name).save(path)
        jobs[name] = (path, size)
        expected[name] = predict(main_head(name), reference_images(1, size))
    other = NEXT_BACKEND[BACKEND]
    result = tmp_path / f"{other}.npz"
    env = {**os.environ, "KERAS_BACKEND": other}
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(jobs), str(result)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"loading on {other} failed:\n{proc.stderr[-3000:]}"
    got = np.load(result)
    for name in jobs:
        # Other kernels, other float32 rounding: the absolute tolerance grows with
        # the logits' scale (Inception-ResNet-v2's reach 7.5 at its minimum size;
        # the same model run at batch 1 and 2 already differs by ~1.5e-5).
        scale = max(1.0, float(np.abs(expected[name]).max()))
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4,
                                   atol=1e-5 * scale,
                                   err_msg=f"{name}: saved on {BACKEND}, loaded on {other}")
