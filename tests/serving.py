"""A minimal TensorFlow Serving stand-in for the export contract tests.

``tensorflow_model_server`` is a C++ binary (docker image ``tensorflow/serving``),
neither on PyPI nor runnable here, so the tests serve the exported SavedModel with
this instead. What matters is that it reads the export the way TF Serving does:

* the model folder holds numeric version folders and the highest one is served
  (TF Serving's default ``latest`` version policy); other names are ignored;
* the version is loaded with the TF1 loader, ``tf.compat.v1.saved_model.loader.load``
  with the ``serve`` tag, into a graph and session (what TF Serving's
  ``LoadSavedModel`` does in C++), and requests only use what the ``SignatureDef``
  map of the loaded ``MetaGraphDef`` says: input and output tensor names and dtypes;
* the session is run through the C++ callable API, which like TF Serving's
  ``Session::Run`` feeds tensors without checking them against the placeholders'
  static shapes (Python's ``Session.run`` would), so a wrongly sized input reaches
  the graph exactly as on a real server.

Two front ends, both on 127.0.0.1 at free ports, answer TF Serving's protocols:
gRPC ``tensorflow.serving.PredictionService/Predict`` (``tensorflow-serving-api``
protos, errors as gRPC status codes carrying the TensorFlow message) and REST
``POST /v1/models/<name>[/versions/<v>]:predict`` with the ``instances`` (row) or
``inputs`` (columnar) JSON formats, ``{"b64": ...}`` for binary strings, answers
``{"predictions": ...}`` / ``{"outputs": ...}`` and errors ``{"error": ...}``;
``GET /v1/models/<name>`` reports the version status.

Use: ``with ModelServer(base_dir / "flowers", "flowers") as server:`` then
``server.grpc_stub()`` or ``server.rest_url``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import json
import os
import re
import threading
from typing import Dict, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

__all__ = ["ModelServer", "ServingError"]

DEFAULT_SIGNATURE = "serving_default"
# TF Serving answers REST errors with these HTTP statuses.
_HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.FAILED_PRECONDITION: 400}


class ServingError(Exception):
    """A request failure with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _status_of(error: tf.errors.OpError) -> grpc.StatusCode:
    # TensorFlow's error codes are the gRPC codes.
    for code in grpc.StatusCode:
        if code.value[0] == error.error_code:
            return code
    return grpc.StatusCode.UNKNOWN


class LoadedModel:
    """The highest numeric version under ``model_base_path``, loaded as TF Serving does."""

    def __init__(self, model_base_path: str):
        versions = [int(d) for d in os.listdir(model_base_path)
                    if d.isdigit() and os.path.isdir(os.path.join(model_base_path, d))]
        if not versions:
            raise FileNotFoundError(f"No version folders under {model_base_path}.")
        self.version = max(versions)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(
                self.session, [tf.compat.v1.saved_model.tag_constants.SERVING],
                os.path.join(model_base_path, str(self.version)))
        self.signatures = dict(meta_graph.signature_def)
        self._callables: Dict[tuple, object] = {}
        self._lock = threading.Lock()

    def signature(self, name: str):
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures or name.startswith("__"):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature name: "{name}" not found in signature def')
        return name, self.signatures[name]

    def run(self, signature_name: str, inputs: Dict[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        name, signature = self.signature(signature_name)
        if set(inputs) != set(signature.inputs):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input keys {sorted(inputs)} do not match the signature inputs "
                f"{sorted(signature.inputs)} of {name!r}")
        outputs = list(output_filter) or sorted(signature.outputs)
        unknown = [o for o in outputs if o not in signature.outputs]
        if unknown:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {unknown[0]}")
        feeds = sorted(signature.inputs)
        key = (name, tuple(outputs))
        with self._lock:
            if key not in self._callables:
                options = config_pb2.CallableOptions(
                    feed=[signature.inputs[k].name for k in feeds],
                    fetch=[signature.outputs[k].name for k in outputs])
                self._callables[key] = self.session._make_callable_from_options(options)
            run = self._callables[key]
        try:
            values = run(*[inputs[k] for k in feeds])
        except tf.errors.OpError as err:
            raise ServingError(_status_of(err), err.message) from None
        return dict(zip(outputs, values))

    def close(self):
        self.session.close()


# ------------------------------------------------------------------------------ gRPC

class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server: "ModelServer"):
        self.server = server

    def Predict(self, request, context):
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            model = self.server.model_for(spec.name, version)
            signature_name, _ = model.signature(spec.signature_name)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = model.run(signature_name, inputs, list(request.output_filter))
        except ServingError as err:
            context.abort(err.code, err.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = signature_name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response


# ------------------------------------------------------------------------------ REST

def _from_json(value, dtype: tf.DType):
    """A JSON value (nested lists) as a NumPy array of the signature's dtype."""
    if dtype == tf.string:
        def convert(v):
            if isinstance(v, list):
                return [convert(x) for x in v]
            if isinstance(v, dict) and set(v) == {"b64"}:
                return base64.b64decode(v["b64"], validate=True)
            if isinstance(v, str):
                return v.encode("utf8")
            raise ValueError(f"expected a string or {{\"b64\": ...}}, got {v!r}")
        return np.array(convert(value), dtype=object)
    return np.asarray(value, dtype=dtype.as_numpy_dtype)


def _to_json(name: str, value: np.ndarray):
    if value.dtype == object:
        # TF Serving's convention: string outputs named *_bytes come back base64.
        if name.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()},
                                otypes=[object])(value).tolist()
        return np.vectorize(lambda b: b.decode("utf8"), otypes=[object])(value).tolist()
    return value.tolist()


def _rest_inputs(body: dict, signature) -> tuple:
    """``(inputs, row_format)`` from a predict request body."""
    names = sorted(signature.inputs)
    if ("instances" in body) == ("inputs" in body):
        raise ValueError("the request must have exactly one of 'instances' or 'inputs'")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ValueError("'instances' must be a non-empty list")
        named = all(isinstance(i, dict) and set(i) == set(names) for i in instances)
        if len(names) > 1 and not named:
            raise ValueError(f"every instance must be an object with the inputs {names}")
        columns = {n: [i[n] for i in instances] if named else instances for n in names}
        return {n: _from_json(columns[n], tf.as_dtype(signature.inputs[n].dtype))
                for n in names}, True
    given = body["inputs"]
    if not (isinstance(given, dict) and set(given) == set(names)):
        if len(names) > 1:
            raise ValueError(f"'inputs' must be an object with the inputs {names}")
        given = {names[0]: given}
    return {n: _from_json(given[n], tf.as_dtype(signature.inputs[n].dtype))
            for n in names}, False


class _RestHandler(http.server.BaseHTTPRequestHandler):
    server: "_RestServer"
    _PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
    _STATUS = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?$")

    def log_message(self, *args):
        pass

    def _answer(self, status: int, payload: dict):
        data = json.dumps(payload).encode("utf8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, err: ServingError):
        self._answer(_HTTP_STATUS.get(err.code, 500), {"error": err.message})

    def do_GET(self):
        match = self._STATUS.match(self.path)
        if not match:
            return self._answer(404, {"error": f"Malformed request: GET {self.path}"})
        try:
            model = self.server.owner.model_for(
                match[1], int(match[2]) if match[2] else None)
        except ServingError as err:
            return self._fail(err)
        self._answer(200, {"model_version_status": [{
            "version": str(model.version), "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]})

    def do_POST(self):
        match = self._PREDICT.match(self.path)
        if not match:
            return self._answer(404, {"error": f"Malformed request: POST {self.path}"})
        try:
            model = self.server.owner.model_for(
                match[1], int(match[2]) if match[2] else None)
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name, signature = model.signature(body.get("signature_name", ""))
                inputs, rows = _rest_inputs(body, signature)
            except (ValueError, TypeError, KeyError) as err:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
            outputs = model.run(name, inputs)
        except ServingError as err:
            return self._fail(err)
        converted = {k: _to_json(k, v) for k, v in outputs.items()}
        if not rows:
            single = len(converted) == 1
            return self._answer(200, {"outputs": next(iter(converted.values())) if single
                                      else converted})
        if len(converted) == 1:
            return self._answer(200, {"predictions": next(iter(converted.values()))})
        batch = len(next(iter(converted.values())))
        self._answer(200, {"predictions": [{k: v[i] for k, v in converted.items()}
                                           for i in range(batch)]})


class _RestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "ModelServer"


# ---------------------------------------------------------------------------- server

class ModelServer:
    """Serves ``model_name`` from ``model_base_path`` (TF Serving's
    ``--model_base_path`` and ``--model_name``) over gRPC and REST on 127.0.0.1."""

    def __init__(self, model_base_path: str, model_name: str):
        self.model_name = model_name
        self.model = LoadedModel(model_base_path)
        self._grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._rest = _RestServer(("127.0.0.1", 0), _RestHandler)
        self._rest.owner = self
        self.rest_port = self._rest.server_address[1]
        self._thread: Optional[threading.Thread] = None
        self._channels = []

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def model_for(self, name: str, version: Optional[int]) -> LoadedModel:
        if name != self.model_name:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({name})")
        if version is not None and version != self.model.version:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({name}, {version})")
        return self.model

    def grpc_stub(self):
        """A PredictionService stub on a new channel (closed with the server)."""
        channel = grpc.insecure_channel(self.grpc_target)
        self._channels.append(channel)
        return prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def start(self) -> "ModelServer":
        self._grpc.start()
        self._thread = threading.Thread(target=self._rest.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        for channel in self._channels:
            channel.close()
        self._grpc.stop(grace=None)
        self._rest.shutdown()
        self._rest.server_close()
        self.model.close()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
