"""keras-inception: the Inception family for Keras 3 on TensorFlow, JAX and PyTorch."""

import keras as _keras

from keras_inception import xla_cpu

# Before anything computes: XLA reads XLA_FLAGS once, when JAX starts (see xla_cpu).
xla_cpu.configure(_keras.backend.backend())

from keras_inception import accelerate, distribute, optimize, stats, transfer
from keras_inception.accelerate import inference_function, mixed_precision_model
from keras_inception.optimize import fuse_batchnorm
from keras_inception.initializers import load_model
from keras_inception.features import feature_extractor
from keras_inception.googlenet import GoogLeNet, InceptionV1
from keras_inception.inception_v2 import InceptionV2
from keras_inception.inception_v3 import InceptionV3
from keras_inception.inception_v4 import InceptionV4
from keras_inception.inception_resnet import InceptionResNetV1, InceptionResNetV2
from keras_inception.layers import ScaledResidual
from keras_inception.preprocessing import (
    decode_predictions, imagenet_classes, load_image, preprocess_input, preprocessing_for)
from keras_inception.pretrained import WeightsEntry, get_weights_entry, list_weights
from keras_inception.weights_io import WeightFileError, load_weights
from keras_inception.xception import Xception
from keras_inception.registry import (
    ModelInfo, Stage, create_model, get_model_info, list_models)

__version__ = "0.1.0"

__all__ = [
    "GoogLeNet", "InceptionV1", "InceptionV2", "InceptionV3", "InceptionV4",
    "InceptionResNetV1", "InceptionResNetV2", "Xception",
    "ModelInfo", "Stage", "create_model", "get_model_info", "list_models",
    "WeightsEntry", "get_weights_entry", "list_weights",
    "WeightFileError", "load_weights",
    "decode_predictions", "imagenet_classes", "load_image", "preprocess_input",
    "preprocessing_for",
    "feature_extractor", "ScaledResidual", "stats", "transfer", "distribute",
    "optimize", "xla_cpu", "fuse_batchnorm", "load_model", "accelerate", "inference_function", "mixed_precision_model",
]
