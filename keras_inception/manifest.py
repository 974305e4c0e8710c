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

MANIFEST_DIR = os.path.join(os.path.dirname(__file__), "manifests")


def manifest_path(name: str) -> str:
    return os.path.join(MANIFEST_DIR, f"{name}.json")


def load_manifest(name: str) -> dict:
    with open(manifest_path(get_model_info(name).name)) as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def body_layer_names(name: str) -> frozenset:
    """Names of a variant's layers other than its classifier and auxiliary heads."""
    info = get_model_info(name)
    heads = ("avg_pool", "dropout", "predictions") + tuple(info.aux_heads)
    return frozenset(row[0] for row in load_manifest(name)["layers"]
                     if not row[0].startswith(heads))


def layouts_of(name: str) -> dict:
    """The family module's ``LAYOUTS`` (upstream source -> layout rules); a module
    defining several variants keys them by model name first."""
    info = get_model_info(name)
    layouts = getattr(importlib.import_module(info.constructor.__module__), "LAYOUTS", {})
    return layouts[info.name] if info.name in layouts else layouts


def _count(weights):
    return int(sum(int(np.prod(w.shape)) for w in weights))


def describe(name: str, model) -> dict:
    """The manifest of ``model``: a registered variant built with its top and, where
    the family has them, its auxiliary heads."""
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
    """JSON with one list row per line: small diffs when a manifest changes."""
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


def build_reference_model(name: str):
    """The configuration a manifest describes: top, aux heads, canonical size."""
    info = get_model_info(name)
    size = max(info.default_size, info.aux_min_size)
    return info.constructor(input_shape=(size, size, 3),
                            aux_logits=bool(info.aux_heads)) if info.aux_heads \
        else info.constructor(input_shape=(size, size, 3))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the per-variant manifests.")
    parser.add_argument("models", nargs="*", help="default: every registered model")
    args = parser.parse_args(argv)
    for name in args.models or list_models():
        desc = describe(name, build_reference_model(name))
        with open(manifest_path(get_model_info(name).name), "w") as f:
            f.write(dumps(desc))
        print(f"{name}: {len(desc['layers'])} layers, params {desc['params']}, "
              f"layouts {sorted(desc['layouts'])}")


if __name__ == "__main__":
    main()
