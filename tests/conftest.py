"""Shared fixtures. Built models are cached per process in keras_inception.testing."""

from __future__ import annotations

import keras
import pytest

import keras_inception

BACKEND = keras.backend.backend()
ALL_MODELS = keras_inception.list_models()


@pytest.fixture(params=ALL_MODELS)
def model_name(request):
    return request.param
