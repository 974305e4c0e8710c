"""The model pages (``models/*.md``), generated from the registry at build time.

One page per family module (``googlenet``, ``inception_v2``, ``inception_v3``,
``inception_v4``, ``inception_resnet`` (v1 and v2), ``xception``) and an index.
Everything on them comes from :mod:`keras_inception.registry`,
:mod:`keras_inception.pretrained` and the real models (:mod:`figures`), so they
cannot drift from the code; the code examples are generated from the same data.
"""

from __future__ import annotations

import inspect
import sys
from typing import Dict, List

from keras_inception.pretrained import list_weights
from keras_inception.preprocessing import preprocessing_for
from keras_inception.registry import get_model_info, list_models

from . import figures as F

# The block drawn on each model's page: a typical module of the family (editorial
# choice; a name that no longer exists fails the build).
REPRESENTATIVE = {
    "googlenet": "mixed_3b",
    "inception_v2": "mixed_3b",
    "inception_v3": "mixed_6b",
    "inception_v4": "mixed_5b",
    "inception_resnet_v1": "block17_1",
    "inception_resnet_v2": "block35_1",
    "xception": "block5",
}

_MODE_TEXT = {
    "inception": "`x / 127.5 - 1` (pixels in [-1, 1])",
    "torch": "`x / 255`, then ImageNet mean/std per channel",
    "caffe": "RGB to BGR, minus the ImageNet BGR mean",
}


def _families() -> Dict[str, List[str]]:
    """Page stem -> registry names on that page (in registry order)."""
    pages: Dict[str, List[str]] = {}
    for name in list_models():
        pages.setdefault(F.page_of(name)[:-3], []).append(name)
    return dict(sorted(pages.items(), key=lambda kv: _ORDER.index(kv[0])
                       if kv[0] in _ORDER else len(_ORDER)))


# Navigation order: the family's history.
_ORDER = ["googlenet", "inception_v2", "inception_v3", "inception_v4",
          "inception_resnet", "xception"]


def _intro(module_name: str) -> str:
    doc = inspect.getdoc(sys.modules[module_name]) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def _variants(names: List[str]) -> str:
    rows = []
    for name in names:
        info = get_model_info(name)
        ctor = info.constructor.__name__
        rows.append([f"`{name}`", ", ".join(f"`{a}`" for a in info.aliases) or "-",
                     f"[`keras_inception.{ctor}`](#constructor-reference)", info.paper or "-",
                     f"`keras.applications.{info.keras_applications}`"
                     if info.keras_applications else "-"])
    return F._table(["registry name", "aliases", "constructor", "paper",
                     "same weight layout as"], rows)


def _inputs(names: List[str]) -> str:
    rows = []
    for name in names:
        info = get_model_info(name)
        modes = sorted({w.preprocessing for w in list_weights(name)}) or \
            [preprocessing_for(name)]
        rows.append([f"`{name}`", f"{info.default_size}×{info.default_size}",
                     f"{info.min_size}×{info.min_size}",
                     f"{info.aux_min_size}×{info.aux_min_size}" if info.aux_heads
                     else "-",
                     "; ".join(f"`{m}`: {_MODE_TEXT.get(m, m)}" for m in modes)])
    return F._table(["model", "default input", "minimum input", "minimum with aux heads",
                     "preprocessing (`preprocess_input(x, mode)`)"], rows)


def _aux(names: List[str]) -> str:
    parts = []
    for name in names:
        info = get_model_info(name)
        if not info.aux_heads:
            continue
        st = F.stats(name)
        trained = [w.tag for w in list_weights(name) if w.aux_trained]
        rows = []
        for head, tap in info.aux_taps:
            group = st.stage(head)
            stride = next(s.stride for s in info.stages
                          if tap in F.graph(name).ancestors(s.layer))
            rows.append([f"`{head}`", f"`{tap}`", str(stride), F._int(group.params),
                         F._mmacs(group.macs)])
        keys = ", ".join(f'"{h}": ...' for h in ("logits",) + info.aux_heads)
        parts.append(
            f"`{name}` with `aux_logits=True` returns `{{{keys}}}` "
            f"(inputs of at least {info.aux_min_size}×{info.aux_min_size}). Trained "
            f"auxiliary weights: "
            + (", ".join(f"`{t}`" for t in trained) if trained else "none published "
               "(the heads start from random weights)") + ".\n\n"
            + F._table(["head", "reads layer", "at stride", "params", "MMACs"], rows,
                       "llrrr"))
    if not parts:
        return ("No auxiliary classifiers: the paper has none, so `aux_logits` is not "
                "an argument here.\n")
    return "\n".join(parts) + (
        "\nTrain with them through "
        "[`transfer.with_aux_heads` and `transfer.aux_compile_args`]"
        "(../api/transfer.md); keep only the main head for inference with "
        "`transfer.main_head`.\n")


def _features(name: str) -> str:
    info = get_model_info(name)
    strides = sorted(info.feature_layers())
    taps = ", ".join(f"{s}: `{layer}`" for s, layer in sorted(info.feature_layers().items()))
    return (f"`feature_extractor(model, strides={tuple(strides)})` taps the last "
            f"layer at each stride ({taps}); `stages=(...)` taps by stage name, and "
            f"the [freezing helpers](../api/transfer.md) use the same stages.\n")


def _usage(name: str) -> str:
    info = get_model_info(name)
    ctor = info.constructor.__name__
    size = info.default_size
    weights = [w for w in list_weights(name)]
    tag = '"imagenet"' if weights else "None"
    mode = preprocessing_for(name)
    strides = sorted(info.feature_layers())[-3:]
    lines = [
        "import keras_inception as ki",
        "",
        f"model = ki.{ctor}(weights={tag})"
        + ("  # no public weights: random initialisation" if not weights
           else f"  # {size}x{size} input, 1000 ImageNet classes"),
        f'image = ki.load_image("cat.jpg", size={size})',
        f"x = ki.preprocess_input(image[None], mode=ki.preprocessing_for(model))"
        f"  # {mode!r}",
    ]
    if weights:
        lines.append("print(ki.decode_predictions(model.predict(x), top=5))")
    else:
        lines.append("probabilities = model.predict(x)")
    lines += [
        "",
        "# A new head for 5 classes, or multi-scale features",
        f'model = ki.create_model("{name}", weights={tag}, classes=5)'
        if not weights else
        f'backbone = ki.{ctor}(include_top=False, weights={tag})',
    ]
    if weights:
        lines.append("model = ki.transfer.replace_head(backbone, classes=5)")
    else:
        lines.append(f"backbone = ki.{ctor}(include_top=False)")
    lines.append(f"features = ki.feature_extractor(backbone, strides={tuple(strides)})")
    aux = [w.tag for w in weights if w.aux_trained]
    if info.aux_heads:
        lines += ["", "# Training with the auxiliary classifiers"
                  + (f" (trained in {aux[0]!r})" if aux else ""),
                  f"model = ki.{ctor}(aux_logits=True"
                  + (f', weights="{aux[0]}"' if aux else "") + ")",
                  "sorted(model.output)  # "
                  + repr(sorted(["logits", *info.aux_heads]))]
    return "```python\n" + "\n".join(lines) + "\n```\n"


def _family_page(stem: str, names: List[str]) -> str:
    module = get_model_info(names[0]).constructor.__module__
    ctors = [get_model_info(n).constructor.__name__ for n in names]
    title = " and ".join(ctors)
    out = [f"# {title}\n", _intro(module) + "\n",
           "<!-- Generated by docs/_gen/model_pages.py from the registry: edit the code, "
           "not this page. -->\n",
           "## Variants\n", _variants(names),
           "\nCounts at the default input size (more in the [family table](index.md)):\n",
           F._table(["model", "params", "GMACs", "weights"], [
               [f"`{n}`", F._int(F.stats(n).main_params),
                f"{F.stats(n).main_macs / 1e9:.2f}",
                ", ".join(f"`{w.tag}`" for w in list_weights(n)) or "none published"]
               for n in names], "lrrl"),
           "\n## Usage\n"]
    for name in names:
        if len(names) > 1:
            out.append(f"`{name}`:\n")
        out.append(_usage(name))
    out += ["\n## Input size and preprocessing\n", _inputs(names),
            "\nLoad and crop images with [`load_image`](../api/preprocessing.md) and scale "
            "them with `preprocess_input(x, mode=preprocessing_for(model))`: a model "
            "built with named weights knows their mode.\n",
            "\n## Pretrained weights\n"]
    for name in names:
        if len(names) > 1:
            out.append(f"\n### `{name}`\n")
        out.append(F.weights_table(name))
    out.append(
        "\nTop-1/top-5: ImageNet-1k validation accuracy as the publisher reports it. "
        "Hash: what the download is checked against; *unpinned* entries (TF-Slim and "
        "the Hugging Face hub publish no hash) print the SHA-256 they got. *sets*: "
        "constructor arguments the weights set for you (their upstream padding "
        "arithmetic). See [`keras_inception.pretrained`](../api/pretrained.md).\n")
    out.append("\n## Stages and multi-scale features\n")
    for name in names:
        if len(names) > 1:
            out.append(f"\n### `{name}`\n")
        out += [F.stage_table(name), "\n" + _features(name)]
    out += ["\n## Auxiliary classifiers\n", _aux(names)]
    out.append("\n## A representative block\n")
    for name in names:
        block = REPRESENTATIVE[name]
        out += [f"\n`{block}` of `{name}`:\n\n", F.block_diagram(name, block),
                "\n", F.layer_table(name, block)]
    out.append("\n## Constructor reference\n")
    for ctor in ctors:
        out.append(f"\n::: keras_inception.{ctor}\n"
                   f"    options:\n      heading_level: 3\n      show_root_full_path: false\n")
    out.append(f"\nThe module: [`keras_inception.{module.rsplit('.', 1)[-1]}`]"
               f"(../api/{module.rsplit('.', 1)[-1]}.md).\n")
    return "\n".join(out)


def _index(families: Dict[str, List[str]]) -> str:
    rows = []
    for entry in list_weights():
        acc = f"{entry.top1:.2f}" if entry.top1 is not None else "not published"
        rows.append([f"[`{entry.model}`]({F.page_of(entry.model)})", f"`{entry.tag}`",
                     entry.source.split(" (")[0], str(entry.classes), acc,
                     "yes" if entry.aux_trained else "no"])
    pages = "\n".join(
        f"- [{' and '.join(get_model_info(n).constructor.__name__ for n in names)}]"
        f"({stem}.md): " + ", ".join(f"`{n}`" for n in names) for stem, names in
        families.items())
    return (
        "# Models\n\n"
        "Every family of the zoo, its cost at the default input size and the accuracy "
        "of its default weights. Each page is generated from the registry "
        "(`keras_inception.list_models()`, `get_model_info()`, `list_weights()`), "
        "with figures computed from the real models.\n\n"
        + F.family_table("../") + "\n" + pages + "\n\n## All published weights\n\n"
        + F._table(["model", "tag", "source", "classes", "top-1", "aux trained"], rows,
                   "lllrrl")
        + "\nPass the tag as `weights=` (`\"imagenet\"` is each family's default); "
          "each model page lists the full contract of its weights.\n")


def model_pages() -> Dict[str, str]:
    """``{"models/index.md": ..., "models/<family>.md": ...}``: the model pages."""
    families = _families()
    pages = {"models/index.md": _index(families)}
    for stem, names in families.items():
        pages[f"models/{stem}.md"] = _family_page(stem, names)
    return pages
