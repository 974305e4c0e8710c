"""Export a classifier for serving: .keras, a TF Serving SavedModel and ONNX, verified.

Usage:
    python recipes/export_serving.py [--model FILE.keras | --model googlenet]
        [--weights imagenet|none|PATH] [--name NAME] [--version 1]
        [--class-names A B ...] [--image IMAGE] [--no-onnx] [--out-dir serving_export]

``--model`` is a ``.keras`` file (e.g. ``finetune_flowers.py``'s ``model.keras``) or a
registry name, built with ``--weights`` (nothing is trained). Through
``keras_inception.export`` it writes

* ``OUT_DIR/NAME.keras`` (main head only);
* ``OUT_DIR/serving/NAME/VERSION/``: a SavedModel in TF Serving's layout, with the
  signatures ``serving_default`` (float32 images, 0..255) and ``serve_bytes``
  (encoded JPEG/PNG), preprocessing in the graph;
* ``OUT_DIR/NAME.onnx`` (unless ``--no-onnx``).

On JAX and PyTorch the SavedModel and ONNX files are written by a TensorFlow-backend
process, transparently. The recipe then prints the signatures, checks the export by
running the SavedModel (and the ONNX file, with onnxruntime) on a test image
(``--image``, else a generated one) against the Keras model (max abs difference),
and prints the ``tensorflow/serving`` docker command and a REST request.

A registry model with 1000 (1001) classes gets the ImageNet class names unless
``--class-names`` says otherwise. Weights that cannot be downloaded fall back to
random initialisation (one line). Errors print one line and exit 2; an export that
disagrees with the Keras model by more than ``--tolerance`` exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import keras
import numpy as np

import keras_inception
from keras_inception import cli, data, export, preprocessing, transfer


def _parser():
    parser = argparse.ArgumentParser(
        prog="export_serving.py",
        description="Export a model as .keras, a TF Serving SavedModel and ONNX, and "
                    "check the export against the Keras model.")
    parser.add_argument("--model", default="googlenet",
                        help="a .keras file, or a registry name (default: googlenet) "
                             "built with --weights; names: "
                             + ", ".join(keras_inception.list_models()))
    parser.add_argument("--weights", default="imagenet",
                        help="for a registry name: named weights (default: imagenet), "
                             "'none' for random initialisation, or a weight file")
    parser.add_argument("--size", type=int, default=None,
                        help="input side (default: the model's; for a registry name "
                             "the weights' size, else the canonical size)")
    parser.add_argument("--name", default=None,
                        help="served model name (default: the file's or the registry "
                             "name)")
    parser.add_argument("--version", type=int, default=1,
                        help="version folder (default: 1; never overwritten)")
    parser.add_argument("--class-names", nargs="+", default=None, metavar="NAME",
                        help="one name per class, for the class_name output")
    parser.add_argument("--image", default=None,
                        help="test image for the check (default: a generated one)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted difference of probabilities (1e-4)")
    parser.add_argument("--out-dir", default="serving_export",
                        help="output folder (default: ./serving_export)")
    return parser


def _fail(message: str) -> int:
    return cli.fail("export_serving.py", message)


def _load(args):
    """(model, served name, description) from a .keras file or a registry name."""
    return cli.model_from_argument(args.model, args.weights, args.size)


def _test_image(path, out_dir):
    if path is not None:
        return path
    folder = data.synthetic_flowers(os.path.join(out_dir, "generated"), classes=2,
                                    per_class=2, size=64)
    path = data.image_folder(folder).items[0]
    print(f"No --image given: checking the export on a generated image, {path}.")
    return path


def _print_signatures(loaded):
    for key in sorted(k for k in loaded.signatures if not k.startswith("__")):
        function = loaded.signatures[key]
        inputs = function.structured_input_signature[1]
        print(f"  signature {key!r}")
        for name, spec in sorted(inputs.items()):
            print(f"    input  {name:<14} {spec.dtype.name:<8} {spec.shape}")
        for name, spec in sorted(function.structured_outputs.items()):
            print(f"    output {name:<14} {spec.dtype.name:<8} {spec.shape}")


def _serving_commands(base, name, version, image_size) -> str:
    source = os.path.abspath(os.path.join(base, name))
    height, width = image_size
    return "\n".join([
        "Serve it with TensorFlow Serving (gRPC on 8500, REST on 8501):",
        "  docker run --rm -p 8500:8500 -p 8501:8501 \\",
        f"    --mount type=bind,source={source},target=/models/{name} \\",
        f"    -e MODEL_NAME={name} -t tensorflow/serving",
        "Then ask it, with an encoded image file:",
        f"  curl -X POST http://localhost:8501/v1/models/{name}:predict -d "
        f"\"{{\\\"signature_name\\\": \\\"{export.SIGNATURE_BYTES}\\\", "
        f"\\\"instances\\\": [{{\\\"b64\\\": \\\"$(base64 -w0 IMAGE.jpg)\\\"}}]}}\"",
        f"or with pixels (signature {export.SIGNATURE_IMAGES}): \"instances\": "
        f"[{height}x{width}x3 nested lists of 0..255 values]. Version {version} is "
        f"served; a higher version folder replaces it live.",
    ])


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.version < 1:
        return _fail(f"--version must be a positive integer, got {args.version}.")
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        model, name, source = _load(args)
    except Exception as err:  # noqa: BLE001 - unknown model, bad file or weights
        return _fail(cli.one_line(err))
    name = args.name or name
    head = transfer.main_head(model)
    classes = int(head.output_shape[-1])
    class_names = args.class_names
    from_file = os.path.isfile(args.model)
    if class_names is None and classes in (1000, 1001) and not from_file:
        class_names = [n for _, n in preprocessing.imagenet_classes(classes)]
    try:
        base = os.path.join(args.out_dir, "serving")
        print(f"Exporting {source} as '{name}' version {args.version} ({classes} "
              f"classes)...")
        # The SavedModel first: an existing version fails before anything is written.
        version_dir = export.export_saved_model(
            head, base, name, args.version, image_size=args.size,
            class_names=class_names)
        keras_path = export.export_keras(head,
                                         os.path.join(args.out_dir, f"{name}.keras"))
        onnx_path = None if args.no_onnx else export.export_onnx(
            head, os.path.join(args.out_dir, f"{name}.onnx"), image_size=args.size)
    except (ValueError, OSError, TypeError) as err:
        return _fail(cli.one_line(err))

    import tensorflow as tf

    with open(os.path.join(version_dir, export.METADATA_FILE), encoding="utf8") as f:
        metadata = json.load(f)
    height, width = metadata["image_size"]
    mode = metadata["preprocessing"]
    loaded = tf.saved_model.load(version_dir)
    print(f"\nSavedModel {version_dir} ('{mode}' preprocessing in the graph):")
    _print_signatures(loaded)

    # The check: one image through the SavedModel and through the Keras model.
    try:
        image_path = _test_image(args.image, args.out_dir)
        image = preprocessing.load_image(image_path, (height, width),
                                         data_format="channels_last")[None]
    except (OSError, ValueError) as err:
        return _fail(cli.one_line(err))
    served = loaded.signatures[export.SIGNATURE_IMAGES](
        **{export.INPUT_IMAGES: tf.constant(image)})
    served_probs = served[export.OUTPUT_PROBABILITIES].numpy()
    x = preprocessing.preprocess_input(image, mode, data_format="channels_last")
    if keras.config.image_data_format() == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    scores = np.asarray(head.predict(x, verbose=0))
    probs = (keras.ops.convert_to_numpy(keras.ops.softmax(scores))
             if metadata["softmax_applied"] else scores)
    diffs = {"saved_model": float(np.max(np.abs(served_probs - probs)))}
    top = int(served[export.OUTPUT_CLASS_ID].numpy()[0])
    label = (f" ({served[export.OUTPUT_CLASS_NAME].numpy()[0].decode()})"
             if export.OUTPUT_CLASS_NAME in served else "")
    print(f"\nCheck on {image_path}: SavedModel class_id {top}{label}, Keras "
          f"class {int(np.argmax(probs))}; max abs difference of probabilities "
          f"{diffs['saved_model']:.2e}")
    if onnx_path is not None:
        try:
            import onnxruntime
        except ImportError:
            print("onnxruntime is not installed: the ONNX file is not checked.")
        else:
            session = onnxruntime.InferenceSession(onnx_path,
                                                   providers=["CPUExecutionProvider"])
            out = session.run(None, {session.get_inputs()[0].name: x})[0]
            diffs["onnx"] = float(np.max(np.abs(out - scores)))
            print(f"ONNX {onnx_path}: max abs difference of outputs from Keras "
                  f"{diffs['onnx']:.2e}")

    print("\n" + _serving_commands(base, name, args.version, (height, width)))
    record = {"source": source, "name": name, "version": args.version,
              "keras": keras_path, "saved_model": version_dir, "onnx": onnx_path,
              "image_size": [height, width], "preprocessing": mode,
              "class_names": class_names, "check_image": image_path,
              "max_abs_diff": diffs, "tolerance": args.tolerance}
    with open(os.path.join(args.out_dir, "export.json"), "w", encoding="utf8") as f:
        json.dump(record, f, indent=1)
    print(f"\nSaved {os.path.basename(keras_path)}, serving/{name}/{args.version}/"
          + (f", {os.path.basename(onnx_path)}" if onnx_path else "")
          + f" and export.json in {os.path.abspath(args.out_dir)}")
    bad = {k: v for k, v in diffs.items() if not v <= args.tolerance}
    if bad:
        print(f"export_serving.py: error: the export disagrees with the Keras model "
              f"({', '.join(f'{k}: {v:.2e}' for k, v in bad.items())} > "
              f"{args.tolerance:g}).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
