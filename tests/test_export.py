"""Export: `.keras`, the TF-Serving SavedModel contract, ONNX, from the current backend.

One small classifier with auxiliary heads is trained for a few steps on this
process's backend (the suite runs once per backend), exported once, and served by
tests/serving.py, which loads the SavedModel the way TF Serving does. Every answer
must agree with the Keras model of this backend within 1e-5.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import logging
import os
import urllib.error
import urllib.request

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2

import keras_inception
from keras_inception import export as E
from keras_inception.layers import ConstantPadding2D
from keras_inception.testing import predict
from conftest import BACKEND
from serving import ModelServer

SIZE = 64
CLASSES = ("daisy", "roses", "tulips")
ATOL = 1e-5


def _softmax(logits):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _textured(height, width, seed):
    """An RGB uint8 image with smooth gradients and noise (not constant anywhere)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255.0 / width, yy * 255.0 / height, (xx + 2 * yy) % 256], -1)
    return (image + rng.normal(0, 25, image.shape)).clip(0, 255).astype("uint8")


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def trained():
    """GoogLeNet with both aux heads and logits outputs, a few SGD steps on this backend.

    Torch arithmetic puts keras_inception's own ConstantPadding2D layers in the
    model, which the TensorFlow-backend export process must deserialise."""
    keras.utils.set_random_seed(0)
    model = keras_inception.GoogLeNet(input_shape=(SIZE, SIZE, 3), classes=len(CLASSES),
                                      aux_logits=True, classifier_activation=None,
                                      arithmetic="torch")
    assert any(isinstance(layer, ConstantPadding2D) for layer in model.layers)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # Compiling the train step costs far more than two steps: TensorFlow runs them
    # eagerly (XLA on CPU alone takes a minute), JAX compiles (its eager mode crawls).
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss={"logits": loss, "aux1": loss, "aux2": loss},
                  loss_weights={"logits": 1.0, "aux1": 0.3, "aux2": 0.3},
                  run_eagerly=BACKEND == "tensorflow", jit_compile=BACKEND == "jax")
    rng = np.random.default_rng(0)
    x = keras_inception.preprocess_input(rng.uniform(0, 255, (8, SIZE, SIZE, 3)))
    y = rng.integers(0, len(CLASSES), 8)
    before = model.get_layer("predictions").get_weights()[0].copy()
    model.fit(x, {"logits": y, "aux1": y, "aux2": y}, batch_size=4, epochs=1, verbose=0)
    assert not np.array_equal(model.get_layer("predictions").get_weights()[0], before)
    head = keras.Model(model.input, model.output["logits"])
    return model, head


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, _ = trained
    root = tmp_path_factory.mktemp("export")
    records = _Records()
    logger = logging.getLogger(E.__name__)
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        # Off TensorFlow each export is a TensorFlow process of its own: run both at
        # once, as a user may.
        with concurrent.futures.ThreadPoolExecutor(
                max_workers=1 if BACKEND == "tensorflow" else 2) as pool:
            saved = pool.submit(E.export_saved_model, model, root / "serving", "flowers",
                                1, class_names=list(CLASSES))
            onnx = pool.submit(E.export_onnx, model, root / "flowers.onnx")
            version_dir, onnx_path = saved.result(), onnx.result()
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    keras_path = E.export_keras(model, root / "flowers.keras")
    return {"root": root, "base": root / "serving", "version_dir": version_dir,
            "onnx": onnx_path, "keras": keras_path, "log": records.messages}


@pytest.fixture(scope="module")
def server(exported):
    with ModelServer(str(exported["base"] / "flowers"), "flowers") as server:
        yield server


def _expected(head, images):
    """(probabilities, class_id) of the Keras model on 0..255 images."""
    logits = predict(head, keras_inception.preprocess_input(images))
    probabilities = _softmax(logits.astype("float64"))
    return probabilities, probabilities.argmax(-1)


def _check(probabilities, class_id, class_name, expected):
    probabilities, class_id = np.asarray(probabilities), np.asarray(class_id)
    np.testing.assert_allclose(probabilities, expected[0], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(class_id, expected[1])
    assert [c.decode() if isinstance(c, bytes) else c for c in class_name] == [
        CLASSES[i] for i in expected[1]]


@pytest.fixture(scope="module")
def encoded():
    """A PNG and a JPEG of other sizes and aspect ratios than the model's."""
    return [_encode(_textured(90, 120, 1), "PNG"), _encode(_textured(77, 50, 2), "JPEG")]


def _bytes_expected(head, files):
    pixels = np.stack([E.decode_and_resize(f, SIZE) for f in files])
    return _expected(head, pixels)


# ------------------------------------------------------------------ layout, metadata

def test_tf_serving_layout_and_export_process(exported):
    model_dir = exported["base"] / "flowers"
    assert exported["version_dir"] == str(model_dir / "1")
    assert sorted(os.listdir(model_dir)) == ["1"]  # no temporary folder left behind
    version = model_dir / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables" / "variables.index").is_file()
    assert any(n.startswith("variables.data-") for n in os.listdir(version / "variables"))
    metadata = json.loads((version / E.METADATA_FILE).read_text())
    assert metadata["image_size"] == [SIZE, SIZE]
    assert metadata["preprocessing"] == "inception"
    assert metadata["softmax_applied"] is True  # the model outputs logits
    # The served graph has every BatchNormalization folded into its convolution
    # (the outputs are checked against the Keras model by the serving tests).
    assert metadata["batchnorm_folded"] == sum(
        isinstance(layer, keras.layers.BatchNormalization) for layer in
        keras_inception.GoogLeNet(input_shape=(SIZE, SIZE, 3), weights=None,
                                  classes=len(CLASSES), arithmetic="torch").layers) > 50
    assert metadata["class_names"] == list(CLASSES)
    assert metadata["trained_on_backend"] == BACKEND
    process = metadata["exported_by"]
    assert process["keras_backend"] == "tensorflow"
    if BACKEND == "tensorflow":
        assert process["pid"] == os.getpid()
        assert exported["log"] == []
    else:
        # Really exported by another process, which reported back its pid.
        assert process["pid"] != os.getpid()
        assert any(f"TensorFlow-backend process (pid {process['pid']})" in m
                   and "SavedModel" in m for m in exported["log"]), exported["log"]
        assert any(m.startswith("ONNX export done by a TensorFlow-backend process")
                   for m in exported["log"]), exported["log"]


def test_signature_defs_as_tf_serving_loads_them(server):
    model = server.model
    assert model.version == 1
    assert {k for k in model.signatures if not k.startswith("__")} == {
        "serving_default", "serve_bytes"}

    def spec(info):
        return (tf.as_dtype(info.dtype).name,
                [d.size for d in info.tensor_shape.dim])

    outputs = {"probabilities": ("float32", [-1, 3]), "class_id": ("int64", [-1]),
               "class_name": ("string", [-1])}
    images = model.signatures["serving_default"]
    assert images.method_name == "tensorflow/serving/predict"
    assert {k: spec(v) for k, v in images.inputs.items()} == {
        "image": ("float32", [-1, SIZE, SIZE, 3])}
    assert {k: spec(v) for k, v in images.outputs.items()} == outputs
    files = model.signatures["serve_bytes"]
    assert files.method_name == "tensorflow/serving/predict"
    assert {k: spec(v) for k, v in files.inputs.items()} == {
        "image_bytes": ("string", [-1])}
    assert {k: spec(v) for k, v in files.outputs.items()} == outputs


# ------------------------------------------------------------------------------ gRPC

def _grpc_predict(server, signature, name, array, **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.get("model", "flowers")
    request.model_spec.signature_name = signature
    request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return server.grpc_stub().Predict(request, timeout=60)


def test_grpc_predict_images(server, trained):
    images = np.random.default_rng(3).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    response = _grpc_predict(server, "serving_default", "image", images)
    assert response.model_spec.name == "flowers"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    out = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    assert out["probabilities"].dtype == np.float32 and out["class_id"].dtype == np.int64
    _check(out["probabilities"], out["class_id"], out["class_name"],
           _expected(trained[1], images))


def test_grpc_predict_encoded_files(server, trained, encoded):
    response = _grpc_predict(server, "serve_bytes", "image_bytes",
                             np.array(encoded, dtype=object))
    out = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    _check(out["probabilities"], out["class_id"], out["class_name"],
           _bytes_expected(trained[1], encoded))


def test_grpc_wrong_image_size_is_a_clear_error(server):
    with pytest.raises(grpc.RpcError) as info:
        _grpc_predict(server, "serving_default", "image",
                      np.zeros((1, 32, 32, 3), "float32"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"[N, {SIZE}, {SIZE}, 3]" in info.value.details()
    assert "[1 32 32 3]" in info.value.details()
    assert "serve_bytes" in info.value.details()


def test_grpc_corrupt_file_is_a_clear_error(server, encoded):
    with pytest.raises(grpc.RpcError) as info:
        _grpc_predict(server, "serve_bytes", "image_bytes",
                      np.array([encoded[0], b"not an image"], dtype=object))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unknown image file format" in info.value.details()


def test_grpc_unknown_model_is_not_found(server):
    with pytest.raises(grpc.RpcError) as info:
        _grpc_predict(server, "serving_default", "image",
                      np.zeros((1, SIZE, SIZE, 3), "float32"), model="roses")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------------------ REST

def _rest(server, body, path="/v1/models/flowers:predict"):
    request = urllib.request.Request(server.rest_url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_instances_images(server, trained):
    images = np.random.default_rng(4).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    status, answer = _rest(server, {"signature_name": "serving_default",
                                    "instances": images.tolist()},
                           path="/v1/models/flowers/versions/1:predict")
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == 2 and set(rows[0]) == {"probabilities", "class_id", "class_name"}
    _check([r["probabilities"] for r in rows], [r["class_id"] for r in rows],
           [r["class_name"] for r in rows], _expected(trained[1], images))


def test_rest_instances_b64_files(server, trained, encoded):
    instances = [{"b64": base64.b64encode(f).decode()} for f in encoded]
    status, answer = _rest(server, {"signature_name": "serve_bytes",
                                    "instances": instances})
    assert status == 200, answer
    rows = answer["predictions"]
    _check([r["probabilities"] for r in rows], [r["class_id"] for r in rows],
           [r["class_name"] for r in rows], _bytes_expected(trained[1], encoded))


def test_rest_errors(server):
    status, answer = _rest(server, {"instances": np.zeros((1, 32, 32, 3)).tolist()})
    assert status == 400
    assert f"[N, {SIZE}, {SIZE}, 3]" in answer["error"]
    status, answer = _rest(server, {"signature_name": "serve_bytes", "instances": [
        {"b64": base64.b64encode(b"\x89PNG broken").decode()}]})
    assert status == 400 and "Unknown image file format" in answer["error"]


# ------------------------------------------------------- decoding vs load_image

@pytest.mark.parametrize("crop_fraction", [0.875, None])
def test_decode_and_resize_matches_load_image(tmp_path, crop_fraction):
    """Same region and filter as load_image; Pillow rounds to 8 bits on the way."""
    array = _textured(101, 67, 5)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    reference = keras_inception.load_image(path, SIZE, crop_fraction=crop_fraction,
                                           data_format="channels_last")
    got = E.decode_and_resize(path.read_bytes(), SIZE, crop_fraction=crop_fraction)
    assert got.shape == reference.shape == (SIZE, SIZE, 3)
    difference = np.abs(got - reference)
    assert difference.max() <= 1.01
    assert difference.mean() < 0.4


def test_decode_and_resize_refuses_garbage():
    with pytest.raises(ValueError, match="Cannot decode the image"):
        E.decode_and_resize(b"GIF89a but not really", SIZE)


# ------------------------------------------------------- versions, .keras, ONNX

def _snapshot(folder):
    return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)),
                                 os.path.getmtime(os.path.join(d, f)))
            for d, _, files in os.walk(folder) for f in files}


def test_existing_version_is_never_overwritten(exported, trained):
    model_dir = exported["base"] / "flowers"
    before = _snapshot(model_dir)
    with pytest.raises(FileExistsError, match="Choose another version.*version=2"):
        E.export_saved_model(trained[0], exported["base"], "flowers", 1)
    assert _snapshot(model_dir) == before
    assert sorted(os.listdir(model_dir)) == ["1"]


def test_keras_file_keeps_the_main_head(exported, trained):
    loaded = keras.saving.load_model(exported["keras"])
    assert not isinstance(loaded.output, dict)
    assert not any(layer.name.startswith("aux") for layer in loaded.layers)
    x = keras_inception.preprocess_input(
        np.random.default_rng(6).uniform(0, 255, (2, SIZE, SIZE, 3)))
    np.testing.assert_allclose(predict(loaded, x), predict(trained[1], x),
                               rtol=0, atol=1e-6)


def test_onnx_matches_keras(exported, trained):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported["onnx"]),
                                           providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 1  # main head only
    x = keras_inception.preprocess_input(
        np.random.default_rng(7).uniform(0, 255, (2, SIZE, SIZE, 3))).astype("float32")
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, predict(trained[1], x), rtol=0, atol=ATOL)


# ---------------------------------------------- checks made before any export work

def _tiny(activation="softmax", shape=(8, 8, 3), final=None):
    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Dense(3, activation=activation, name="predictions")(x)
    if final is not None:
        x = final(x)
    return keras.Model(inputs, x, name="tiny")


@pytest.mark.parametrize("activation, final, logits", [
    ("softmax", None, False), ("sigmoid", None, False), (None, None, True),
    (None, keras.layers.Softmax(), False),
    (None, keras.layers.Activation("softmax"), False),
])
def test_softmax_applied_only_to_logits(activation, final, logits):
    assert E._outputs_logits(_tiny(activation, final=final), None) is logits


def test_unknown_final_activation_needs_from_logits():
    model = _tiny("relu")
    with pytest.raises(ValueError, match="from_logits=True"):
        E._outputs_logits(model, None)
    assert E._outputs_logits(model, True) is True


def test_batchnorm_folding_of_the_exported_graph_is_optional():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="c")(inputs)
    x = keras.layers.BatchNormalization(name="c_bn")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    fused, folded = E._inference_graph(model, True)
    assert folded == 1 and "c_bn" not in [layer.name for layer in fused.layers]
    assert E._inference_graph(model, False) == (model, 0)
    assert E._parser().parse_args(["m.keras", "--fuse-batchnorm", "false"]).fuse_batchnorm \
        is False


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="pass image_size="):
        E.export_saved_model(_tiny(shape=(None, None, 3)), tmp_path,
                             preprocessing="inception")
    with pytest.raises(ValueError, match="disagrees"):
        E.export_saved_model(_tiny(), tmp_path, preprocessing="inception", image_size=9)
    with pytest.raises(ValueError, match="2 class names for a model with 3"):
        E.export_saved_model(_tiny(), tmp_path, preprocessing="inception",
                             class_names=["a", "b"])
    with pytest.raises(ValueError, match="Pass preprocessing="):
        E.export_saved_model(_tiny(), tmp_path)
    with pytest.raises(ValueError, match="positive integer"):
        E.export_saved_model(_tiny(), tmp_path, version=0, preprocessing="inception")
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    two = keras.Model(inputs, {"a": keras.layers.Dense(3)(pooled),
                               "b": keras.layers.Dense(2)(pooled)})
    with pytest.raises(ValueError, match="'logits'"):
        E.export_onnx(two, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="end in '.keras'"):
        E.export_keras(_tiny(), tmp_path / "model.h5")
    assert os.listdir(tmp_path) == []


def test_command_line_error_is_one_line(tmp_path, capfd):
    """Off TensorFlow the command runs itself again on TensorFlow (any KERAS_BACKEND)."""
    missing = tmp_path / "missing.keras"
    assert E.main([str(missing), "--onnx", str(tmp_path / "m.onnx")]) == 2
    errors = [line for line in capfd.readouterr().err.splitlines()
              if line.startswith("error:")]
    assert errors == [f"error: No model file at {str(missing)!r}."]


@pytest.mark.skipif(BACKEND == "tensorflow", reason="exports in process: nothing to relay")
def test_export_process_errors_reach_the_caller(tmp_path):
    @keras.saving.register_keras_serializable(package="test_export_only_here")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((8, 8, 3))
    x = Doubler()(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    with pytest.raises(ValueError, match=r"(?s)Cannot load .* on the TensorFlow backend"
                                         r".*'Doubler'.*register_keras_serializable"):
        E.export_onnx(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
