"""Writes tests/data/reference_outputs.npz: the outputs every backend must reproduce.

Run on the TensorFlow backend after a deliberate change of a topology:
    KERAS_BACKEND=tensorflow python tools/make_reference_outputs.py
The tests then compare TensorFlow, JAX and PyTorch against it (rtol 1e-4, atol 1e-5).
"""

import os

import keras
import numpy as np

import keras_inception
from keras_inception.testing import reference_outputs

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "reference_outputs.npz")

if __name__ == "__main__":
    arrays = {}
    for name in keras_inception.list_models():
        for key, value in reference_outputs(name).items():
            arrays[f"{name}/{key}"] = value.astype("float32")
            print(f"{name}/{key}: shape {value.shape}, |max| {np.abs(value).max():.3g}")
    np.savez_compressed(OUT, backend=np.array(keras.backend.backend()), **arrays)
