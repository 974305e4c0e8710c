"""Per-variant manifests: the names, weights and reference layouts we treat as API.

``keras_inception/manifests/<model>.json`` is written by
``python -m keras_inception.manifest`` and checked by the tests, so renaming a layer,
changing a shape or a layout is always a deliberate, reviewed change.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os

import numpy as np

from keras_inception import refmaps
from keras_inception.registry import get_model_info, list_models

__all__ = ["body_layer_names", "describe", "dumps", "layouts_of", "load_manifest", "main"]

MANIFEST_DIR = os.path.join(os.path.dirname(__file__), "manifests")


def _manifest_path(name: str) -> str:
    return os.path.join(MANIFEST_DIR, f"{name}.json")


def load_manifest(name: str) -> dict:
    """The committed manifest of a registered variant.

    Args:
        name: a registry name or alias.

    Returns:
        The manifest: ``model``, ``params``, ``min_size``, ``aux_min_size``,
        ``stages``, ``layers`` (``[name, class, [[weight, shape]]]``), ``layouts``
        (per upstream source, rows ``[key, shape, layer, weight, transform]``) and,
        where there is one, ``keras_applications``.

    Example:
        >>> from keras_inception.manifest import load_manifest
        >>> manifest = load_manifest("googlenet")
        >>> manifest["model"], sorted(manifest["layouts"])
        ('googlenet', ['tf_slim', 'torchvision'])
    """
    with open(_manifest_path(get_model_info(name).name)) as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def body_layer_names(name: str) -> frozenset:
    """Names of a variant's layers other than its classifier and auxiliary heads.

    Args:
        name: a registry name or alias.

    Returns:
        A frozenset of layer names (cached).

    Example:
        >>> from keras_inception.manifest import body_layer_names
        >>> names = body_layer_names("googlenet")
        >>> "mixed_5c" in names, "predictions" in names, "aux1_fc1" in names
        (True, False, False)
    """
    info = get_model_info(name)
    heads = ("avg_pool", "dropout", "predictions") + tuple(info.aux_heads)
    return frozenset(row[0] for row in load_manifest(name)["layers"]
                     if not row[0].startswith(heads))


def layouts_of(name: str) -> dict:
    """The family module's ``LAYOUTS``: upstream source -> layout rules.

    A module defining several variants keys them by model name first; this returns
    the variant's own.

    Args:
        name: a registry name or alias.

    Returns:
        ``{source: rules}`` where ``rules(builder)`` fills a
        :class:`~keras_inception.refmaps.LayoutBuilder`.

    Example:
        >>> from keras_inception.manifest import layouts_of
        >>> sorted(layouts_of("inception_resnet_v2"))
        ['tf_slim', 'timm']
    """
    info = get_model_info(name)
    layouts = getattr(importlib.import_module(info.constructor.__module__), "LAYOUTS", {})
    return layouts[info.name] if info.name in layouts else layouts


def _count(weights):
    return int(sum(int(np.prod(w.shape)) for w in weights))


def describe(name: str, model) -> dict:
    """The manifest of ``model``, as :func:`load_manifest` returns it.

    Args:
        name: the registry name of ``model``'s variant.
        model: the variant built with its top and, where the family has them, its
            auxiliary heads (the input size does not matter).

    Returns:
        The manifest dict (see :func:`load_manifest`).

    Example:
        >>> import keras_inception
        >>> from keras_inception.manifest import describe, load_manifest
        >>> model = keras_inception.GoogLeNet(input_shape=(32, 32, 3), aux_logits=True)
        >>> describe("googlenet", model)["layers"] == load_manifest("googlenet")["layers"]
        True
    """
    info = get_model_info(name)
    aux_layers = {l.name for l in model.layers if l.name.startswith(info.aux_heads)} \
        if info.aux_heads else set()
    main = [l for l in model.layers if l.name not in aux_layers]
    main_weights = [w for l in main for w in l.weights]
    desc = {
        "model": info.name,
        "params": {
            "total": _count(main_weights),
            "trainable": _count([w for w in main_weights if w.trainable]),
            "total_with_aux": _count(model.weights),
        },
        "min_size": info.min_size,
        "aux_min_size": info.aux_min_size,
        "stages": [[s.name, s.layer, s.stride] for s in info.stages],
        "layers": [[l.name, type(l).__name__,
                    [[w.path.split("/")[-1], list(w.shape)] for w in l.weights]]
                   for l in model.layers if type(l).__name__ != "InputLayer"],
        "layouts": {},
    }
    if info.keras_applications:
        desc["keras_applications"] = {
            "model": info.keras_applications,
            "order": [l.name for l in main if l.weights],
        }
    for source, rules in sorted(layouts_of(name).items()):
        offset = 1 if source in refmaps.BACKGROUND_CLASS_HEADS else 0
        desc["layouts"][source] = [e.as_row() for e in
                                   refmaps.build_layout(model, rules, offset)]
    return desc


def dumps(desc: dict) -> str:
    """JSON with one list row per line: small diffs when a manifest changes.

    Args:
        desc: a manifest (see :func:`describe`).

    Returns:
        The JSON text, ending with a newline.

    Example:
        >>> from keras_inception.manifest import dumps
        >>> print(dumps({"model": "m", "layers": [["conv", "Conv2D", []]],
        ...              "layouts": {}}), end="")
        {
          "model": "m",
          "layers": [
            ["conv", "Conv2D", []]
          ],
          "layouts": {}
        }
    """
    lines = ["{"]
    items = list(desc.items())
    for i, (key, value) in enumerate(items):
        end = "," if i < len(items) - 1 else ""
        if key == "layers":
            rows = ",\n    ".join(json.dumps(r) for r in value)
            lines.append(f'  "layers": [\n    {rows}\n  ]{end}')
        elif key == "layouts":
            parts = []
            for source, rows in value.items():
                body = ",\n      ".join(json.dumps(r) for r in rows)
                parts.append(f'    "{source}": [\n      {body}\n    ]')
            inner = ",\n".join(parts)
            lines.append(f'  "layouts": {{\n{inner}\n  }}{end}' if parts
                         else f'  "layouts": {{}}{end}')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{end}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _build_reference_model(name: str):
    """The configuration a manifest describes: top, aux heads, canonical size."""
    info = get_model_info(name)
    size = max(info.default_size, info.aux_min_size)
    return info.constructor(input_shape=(size, size, 3),
                            aux_logits=bool(info.aux_heads)) if info.aux_heads \
        else info.constructor(input_shape=(size, size, 3))


def main(argv=None):
    """``python -m keras_inception.manifest [MODEL ...]``: rewrites the manifests.

    Builds each model (default: every registered one) and writes its manifest
    into ``keras_inception/manifests``; review the diff before committing it.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Example:
        >>> from keras_inception.manifest import main
        >>> try:
        ...     main(["--help"])  # doctest: +ELLIPSIS
        ... except SystemExit as exit:
        ...     print("exit", exit.code)
        usage: ...
        exit 0
    """
    parser = argparse.ArgumentParser(description="Write the per-variant manifests.")
    parser.add_argument("models", nargs="*", help="default: every registered model")
    args = parser.parse_args(argv)
    for name in args.models or list_models():
        desc = describe(name, _build_reference_model(name))
        with open(_manifest_path(get_model_info(name).name), "w") as f:
            f.write(dumps(desc))
        print(f"{name}: {len(desc['layers'])} layers, params {desc['params']}, "
              f"layouts {sorted(desc['layouts'])}")


if __name__ == "__main__":
    main()
