"""Figures for the docs, computed from the real models at build time.

``GENERATORS[name](*args) -> str`` (Markdown, possibly with an inline ``<svg>``)
expands a page line ``<!-- gen: name args -->`` (see ``docs/hooks/site.py``). Every
model is built once per process (:func:`model`: its default input size, random
weights, auxiliary heads included) and counted once (:func:`stats`), on whatever
``KERAS_BACKEND`` is set.

Generators (arguments in capitals):

- ``family-table [ROOT]``: every registry model with params, GMACs, input sizes,
  aux heads and the top-1 of its ``"imagenet"`` weights; ``ROOT`` is the path from
  the page to the docs root for the links (``""``, default, or ``../``).
- ``stage-table MODEL``: per stage and head: end layer, output shape, stride,
  params, MACs and share of the MACs.
- ``block-diagram MODEL PREFIX``: an SVG of the layers named ``PREFIX`` or
  ``PREFIX_*``, drawn from the model's graph (conv + BN + ReLU as one box).
- ``layer-table MODEL PREFIX``: the convolutions and dense layers of a block:
  kernel, strides, output shape, params, MACs.
- ``bottleneck-table MODEL PREFIX``: each 1x1 reduction followed by a kxk
  convolution in a block, with the weights and MACs it saves.
- ``weights-table MODEL``: the published weights of a family, with their contract.
"""

from __future__ import annotations

import functools
import html
import math
import time
from typing import Dict, List

import keras

from keras_inception import stats as S
from keras_inception.layers import ScaledResidual
from keras_inception.pretrained import list_weights
from keras_inception.registry import get_model_info, list_models
from keras_inception.transfer import _Graph

# Seconds spent per generator call and per model build, for the build-time budget.
TIMINGS: Dict[str, float] = {}


def _timed(key):
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                label = f"{key} {' '.join(args)}".strip()
                TIMINGS[label] = TIMINGS.get(label, 0.0) + time.perf_counter() - start
        return inner
    return wrap


def timing_report() -> str:
    """One line per model build and generator call, slowest first, and the total."""
    lines = [f"{seconds:7.2f} s  {label}" for label, seconds in
             sorted(TIMINGS.items(), key=lambda kv: -kv[1])]
    # Builds happen inside the first generator that needs them: count calls only.
    total = sum(t for label, t in TIMINGS.items() if not label.startswith("build "))
    return "\n".join(lines + [f"{total:7.2f} s  total of the generator calls"])


# ------------------------------------------------------------------ models and stats

@functools.lru_cache(maxsize=None)
def model(name: str) -> keras.Model:
    """The registry model ``name`` at its default size, aux heads included."""
    info = get_model_info(name)
    start = time.perf_counter()
    kwargs = {"aux_logits": True} if info.aux_heads else {}
    built = info.constructor(weights=None, **kwargs)
    TIMINGS[f"build {info.name}"] = time.perf_counter() - start
    return built


@functools.lru_cache(maxsize=None)
def stats(name: str) -> S.ModelStats:
    """:func:`keras_inception.stats.model_stats` of :func:`model`."""
    return S.model_stats(model(get_model_info(name).name))


@functools.lru_cache(maxsize=None)
def graph(name: str) -> _Graph:
    return _Graph(model(get_model_info(name).name))


def page_of(name: str) -> str:
    """The model page of a registry model: its constructor's module
    (``inception_resnet`` holds v1 and v2)."""
    return get_model_info(name).constructor.__module__.rsplit(".", 1)[-1] + ".md"


# ------------------------------------------------------------------------ formatting

def _int(n) -> str:
    return f"{int(n):,}"


def _millions(n) -> str:
    return f"{n / 1e6:.2f} M"


def _mmacs(n) -> str:
    return f"{n / 1e6:,.1f}"


def _shape(shape) -> str:
    return "×".join("?" if d is None else str(d) for d in shape)


def _table(header: List[str], rows: List[List[str]], align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column (l/r), default l."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule] + rows
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines) + "\n"


def _check_model(name: str) -> str:
    return get_model_info(name).name  # a clear error listing the models


# ------------------------------------------------------------------------- the family

@_timed("family-table")
def family_table(root: str = "") -> str:
    rows = []
    for name in list_models():
        info = get_model_info(name)
        st = stats(name)
        imagenet = [w for w in list_weights(name) if w.tag == "imagenet"]
        top1 = f"{imagenet[0].top1:.1f}" if imagenet and imagenet[0].top1 else \
            "no public weights"
        aux = ", ".join(f"`{h}`" for h in info.aux_heads) or "-"
        size = info.default_size
        rows.append([
            f"[`{name}`]({root}models/{page_of(name)})", f"`{info.constructor.__name__}`",
            _millions(st.main_params), f"{st.main_macs / 1e9:.2f}",
            f"{size} / {info.min_size}", aux, top1])
    return (_table(["model", "constructor", "params", "GMACs", "input: default / min",
                    "aux heads", "top-1 (imagenet)"], rows, "llrrlll")
            + "\n*Params: Keras `count_params()` without the auxiliary heads (BN "
              "moving statistics included). GMACs: multiply-accumulates of the "
              "convolutions and dense layers per image at the default input size "
              "([`keras_inception.stats`](" + root + "api/stats.md)); FLOPs are twice that. Top-1: ImageNet validation "
              "accuracy of the `\"imagenet\"` weights as their publisher reports it.*\n")


@_timed("stage-table")
def stage_table(name: str) -> str:
    name = _check_model(name)
    st = stats(name)
    main = st.main_macs
    rows = []
    for group in st.stages:
        end = next(layer.name for layer in reversed(st.layers)
                   if layer.group == group.name) if group.kind != "stage" else \
            get_model_info(name).stage(group.name).layer
        share = "training only" if group.kind == "aux" else \
            f"{100 * group.macs / main:.1f} %"
        rows.append([f"`{group.name}`", f"`{end}`", _shape(group.output_shape),
                     "" if group.stride is None else str(group.stride),
                     _int(group.params), _mmacs(group.macs), share])
    rows.append(["**total**", "", "", "", _int(st.main_params), _mmacs(main),
                 "100 %"])
    size = get_model_info(name).default_size
    return (_table(["stage", "ends at layer", "output", "stride", "params",
                    "MMACs", "share"], rows, "lllrrrr")
            + f"\n*`{name}` at {size}×{size}: totals without the auxiliary heads "
              f"(used in training only); MMACs: millions of multiply-accumulates "
              f"per image.*\n")


def _block_layers(name: str, prefix: str) -> List[keras.layers.Layer]:
    name = _check_model(name)
    g = graph(name)
    found = [layer for layer in model(name).layers if layer.name in g.outputs and (
        layer.name == prefix or layer.name.startswith(prefix + "_"))]
    if not found:
        raise ValueError(f"{name} has no layer named {prefix!r} or starting with "
                         f"{prefix + '_'!r}.")
    return found


def _kernel(layer) -> str:
    size = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    return "×".join(str(k) for k in size) if size else ""


def _strides(layer) -> str:
    strides = getattr(layer, "strides", None)
    return "×".join(str(s) for s in strides) if strides else ""


_CONVS = (keras.layers.Conv2D, keras.layers.SeparableConv2D,
          keras.layers.DepthwiseConv2D)
_COUNTED = (keras.layers.Conv2D, keras.layers.SeparableConv2D,
            keras.layers.DepthwiseConv2D, keras.layers.Dense)


@_timed("layer-table")
def layer_table(name: str, prefix: str) -> str:
    name = _check_model(name)
    layers = _block_layers(name, prefix)
    by_name = {layer.name: layer for layer in stats(name).layers}
    rows, params, macs = [], 0, 0
    for layer in sorted(layers, key=lambda layer: layer.name):  # branch by branch
        if not isinstance(layer, _COUNTED):
            continue
        st = by_name[layer.name]
        params += st.params
        macs += st.macs
        rows.append([f"`{layer.name}`", type(layer).__name__, _kernel(layer),
                     _strides(layer), _shape(st.output_shape), _int(st.params),
                     _mmacs(st.macs)])
    rows.append(["**total**", "", "", "", "", _int(params), _mmacs(macs)])
    return _table(["layer", "type", "kernel", "strides", "output", "params", "MMACs"],
                  rows, "lllllrr")


def _conv_source(g: _Graph, name: str):
    """The convolution whose output reaches layer ``name`` through BN/activations only."""
    current = name
    while True:
        parents = g.parents.get(current, set())
        if len(parents) != 1:
            return None
        (current,) = parents
        layer = g.model.get_layer(current)
        if isinstance(layer, keras.layers.Conv2D):
            return layer
        if not isinstance(layer, (keras.layers.BatchNormalization,
                                  keras.layers.Activation)):
            return None


def _conv_name(layer, prefix):
    """A conv_bn op's name inside its block (``branch_1_conv2d_0b_3x3``)."""
    return layer.name.removeprefix(prefix + "_").removesuffix("_conv")


@_timed("bottleneck-table")
def bottleneck_table(name: str, prefix: str) -> str:
    """Each 1x1 reduction followed by a kxk conv in a block: their real weights against
    one kxk convolution straight from the reduction's input."""
    name = _check_model(name)
    g = graph(name)
    by_name = {layer.name: layer for layer in stats(name).layers}
    rows = []
    for layer in sorted(_block_layers(name, prefix), key=lambda layer: layer.name):
        if type(layer) is not keras.layers.Conv2D or max(layer.kernel_size) == 1:
            continue
        reduce = _conv_source(g, layer.name)
        if reduce is None or tuple(reduce.kernel_size) != (1, 1):
            continue
        kh, kw, r, c_out = layer.kernel.shape
        c_in = reduce.kernel.shape[2]
        with_reduction = math.prod(reduce.kernel.shape) + math.prod(layer.kernel.shape)
        assert with_reduction == c_in * r + kh * kw * r * c_out
        direct = kh * kw * c_in * c_out
        pixels = math.prod(by_name[layer.name].output_shape[:-1])
        branch = _conv_name(layer, prefix).rsplit("_conv2d", 1)[0]
        rows.append([
            f"`{branch}`: `{_conv_name(reduce, prefix).removeprefix(branch + '_')}` → "
            f"`{_conv_name(layer, prefix).removeprefix(branch + '_')}`",
            f"{c_in} → **{r}** → {kh}×{kw} → {c_out}",
            f"{c_in}·{r} + {kh}·{kw}·{r}·{c_out} = {_int(with_reduction)}",
            f"{kh}·{kw}·{c_in}·{c_out} = {_int(direct)}",
            f"{direct / with_reduction:.1f}×",
            f"{_mmacs(pixels * with_reduction)} / {_mmacs(pixels * direct)}"])
    return _table(["branch", "C_in → r → k×k → C_out", "weights: C_in·r + k·k·r·C_out",
                   "direct k×k: k·k·C_in·C_out", "saving",
                   "MMACs: reduced / direct"], rows, "llrrrr")


# ------------------------------------------------------------------------ weights

@_timed("weights-table")
def weights_table(name: str) -> str:
    name = _check_model(name)
    entries = list_weights(name)
    if not entries:
        return ("No public ImageNet weights exist for this model: build it with "
                "`weights=None` and train it, or load your own weight file.\n")
    rows = []
    for w in entries:
        acc = f"{w.top1:.2f} / {w.top5:.2f}" if w.top1 is not None else "not published"
        if w.md5:
            pin = f"md5 `{w.md5}`"
        elif w.sha256:
            pin = f"sha256 `{w.sha256[:16]}…`"
        elif w.sha256_prefix:
            pin = f"sha256 prefix `{w.sha256_prefix}`"
        elif w.revision:
            pin = f"revision `{w.revision}`"
        else:
            pin = "unpinned"
        kwargs = ", ".join(f"`{k}={v!r}`" for k, v in w.model_kwargs) or "-"
        rows.append([
            f"`{w.tag}`", html.escape(w.source), f"`{w.format}`", str(w.classes),
            f"{w.input_size} / {w.crop_fraction:g} / {w.interpolation}",
            f"`{w.preprocessing}`", acc, "yes" if w.aux_trained else "no",
            html.escape(w.licence), pin, kwargs])
    return _table(["tag", "source", "format", "classes", "input / crop / interpolation",
                   "preprocessing", "top-1 / top-5", "aux trained", "licence", "hash",
                   "sets"], rows)


# ---------------------------------------------------------------------- block diagram

_BOX_W, _BOX_H, _COL_W, _ROW_H, _MARGIN, _GUTTER = 168, 50, 184, 74, 8, 24
_FILL = {"conv": "#dbe4ff", "pool": "#ffe8cc", "merge": "#e9ecef", "input": "#ffffff",
         "act": "#d3f9d8", "dense": "#f3d9fa", "other": "#f8f9fa"}


class _Box:
    def __init__(self, key, layers, external=False):
        self.key = key
        self.layers = list(layers)
        self.external = external
        self.parents: List["_Box"] = []
        self.children: List["_Box"] = []
        self.x = 0.0
        self.row = 0


def _describe(box: _Box, model_: keras.Model, prefix: str):
    """(line 1, line 2, line 3, colour) of a box."""
    head = model_.get_layer(box.layers[0])
    last = model_.get_layer(box.layers[-1])
    shape = _shape(last.output.shape[1:])
    if box.external:
        return "input", shape, head.name, _FILL["input"]
    extras = []
    for member in box.layers[1:]:
        layer = model_.get_layer(member)
        if isinstance(layer, keras.layers.BatchNormalization):
            extras.append("BN")
        elif isinstance(layer, keras.layers.Activation):
            extras.append(_activation(layer))
    suffix = " · " + " · ".join(extras) if extras else ""
    stride = f" /{head.strides[0]}" if getattr(head, "strides", (1,))[0] != 1 else ""
    # "valid" changes nothing for a 1x1 kernel at stride 1.
    valid = " valid" if getattr(head, "padding", "same") == "valid" and (
        _kernel(head) not in ("1×1", "") or stride) else ""
    short = head.name.removeprefix(prefix + "_") if head.name != prefix else head.name
    if isinstance(head, keras.layers.SeparableConv2D):
        return f"SepConv {_kernel(head)}{stride}{valid}", f"{shape}{suffix}", short, \
            _FILL["conv"]
    if isinstance(head, keras.layers.DepthwiseConv2D):
        return f"DWConv {_kernel(head)}{stride}{valid}", f"{shape}{suffix}", short, \
            _FILL["conv"]
    if isinstance(head, keras.layers.Conv2D):
        bias = " +bias" if head.use_bias else ""
        return f"Conv {_kernel(head)}{stride}{valid}{bias}", f"{shape}{suffix}", short, \
            _FILL["conv"]
    if isinstance(head, keras.layers.MaxPooling2D):
        return f"MaxPool {_kernel(head)}{stride}{valid}", shape, short, _FILL["pool"]
    if isinstance(head, keras.layers.AveragePooling2D):
        return f"AvgPool {_kernel(head)}{stride}{valid}", shape, short, _FILL["pool"]
    if isinstance(head, keras.layers.Concatenate):
        return "Concat", shape, short, _FILL["merge"]
    if isinstance(head, keras.layers.Add):
        return "Add", f"{shape}{suffix}", short, _FILL["merge"]
    if isinstance(head, ScaledResidual):
        return f"x + {head.scale:g} · residual", f"{shape}{suffix}", short, _FILL["merge"]
    if isinstance(head, keras.layers.Activation):
        return _activation(head), shape, short, _FILL["act"]
    if isinstance(head, keras.layers.Dense):
        return f"Dense {head.units}", shape, short, _FILL["dense"]
    return type(head).__name__, shape, short, _FILL["other"]


def _activation(layer) -> str:
    name = getattr(layer.activation, "__name__", str(layer.activation))
    return {"relu": "ReLU"}.get(name, name)


def _build_boxes(name: str, prefix: str):
    model_ = model(name)
    g = graph(name)
    layers = _block_layers(name, prefix)
    inside = {layer.name for layer in layers}
    order = [layer.name for layer in layers]

    def parents_of(layer_name):  # in call order (the concatenation's order)
        tensor = g.outputs[layer_name]
        op, index, _ = tensor._keras_history
        node = op._inbound_nodes[index]
        return [t._keras_history.operation.name for t in node.input_tensors]

    children: Dict[str, List[str]] = {n: [] for n in order}
    for n in order:
        for p in parents_of(n):
            if p in inside:
                children[p].append(n)
    # Merge BN into the conv before it and the activation into that BN.
    owner: Dict[str, str] = {}
    members: Dict[str, List[str]] = {}
    for n in order:
        layer = model_.get_layer(n)
        ps = [p for p in parents_of(n)]
        parent = ps[0] if len(ps) == 1 and ps[0] in inside else None
        if parent is not None and len(children[parent]) == 1:
            tail = model_.get_layer(members[owner[parent]][-1])
            if (isinstance(layer, keras.layers.BatchNormalization)
                    and isinstance(tail, _CONVS)) or (
                    isinstance(layer, keras.layers.Activation)
                    and isinstance(tail, keras.layers.BatchNormalization)):
                owner[n] = owner[parent]
                members[owner[n]].append(n)
                continue
        owner[n] = n
        members[n] = [n]
    boxes: Dict[str, _Box] = {key: _Box(key, m) for key, m in members.items()}
    for n in order:
        for p in parents_of(n):
            if p not in inside and f"in:{p}" not in boxes:
                boxes[f"in:{p}"] = _Box(f"in:{p}", [p], external=True)
            parent_box = boxes[owner.get(p, f"in:{p}")] if p in inside else \
                boxes[f"in:{p}"]
            child_box = boxes[owner[n]]
            if parent_box is not child_box and parent_box not in child_box.parents:
                child_box.parents.append(parent_box)
                parent_box.children.append(child_box)
    return model_, boxes


def _layout(boxes: Dict[str, _Box]) -> int:
    """Rows by longest path; columns by a tidy-tree layout of the single-parent
    edges, merges centred under their parents. Returns the number of columns."""
    ordered = []
    pending = {key: len(box.parents) for key, box in boxes.items()}
    ready = [box for box in boxes.values() if not box.parents]
    while ready:
        box = ready.pop(0)
        ordered.append(box)
        for child in box.children:
            pending[child.key] -= 1
            if not pending[child.key]:
                ready.append(child)
    for box in ordered:
        box.row = max((p.row + 1 for p in box.parents), default=0)

    def tree_children(box):
        return sorted((c for c in box.children if len(c.parents) == 1),
                      key=lambda c: c.layers[0])

    @functools.lru_cache(maxsize=None)
    def width(key):
        kids = tree_children(boxes[key])
        return max(1, sum(width(c.key) for c in kids))

    def place(box, left):
        box.x = left + (width(box.key) - 1) / 2
        for child in tree_children(box):
            place(child, left)
            left += width(child.key)

    left = 0
    for root in (b for b in ordered if not b.parents):
        place(root, left)
        left += width(root.key)
    for box in ordered:  # merges: centred under their parents, their chain below
        if len(box.parents) > 1:
            xs = [p.x for p in box.parents]
            place(box, (min(xs) + max(xs)) / 2 - (width(box.key) - 1) / 2)
    low = min(b.x for b in boxes.values())
    for box in boxes.values():
        box.x -= low
    return int(math.ceil(max(b.x for b in boxes.values()) + 1))


@_timed("block-diagram")
def block_diagram(name: str, prefix: str) -> str:
    name = _check_model(name)
    model_, boxes = _build_boxes(name, prefix)
    columns = _layout(boxes)
    rows = max(b.row for b in boxes.values()) + 1
    width = columns * _COL_W + 2 * _MARGIN + _GUTTER
    height = rows * _ROW_H - (_ROW_H - _BOX_H) + 2 * _MARGIN
    marker = f"ki-arrow-{name}-{prefix}"

    def corner(box):
        return (_GUTTER + _MARGIN + box.x * _COL_W + (_COL_W - _BOX_W) / 2,
                _MARGIN + box.row * _ROW_H)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} '
           f'{height:.0f}" width="{width:.0f}" style="max-width:100%;height:auto" '
           f'role="img" aria-label="{html.escape(f"{prefix} of {name}")}" '
           f'font-family="sans-serif">',
           f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="10" refY="5" '
           f'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
           f'<path d="M 0 0 L 10 5 L 0 10 z" fill="#495057"/></marker></defs>']
    def blocked(box, child):
        return any(abs(b.x - box.x) < 0.99 and box.row < b.row < child.row
                   for b in boxes.values())

    for box in boxes.values():  # edges first, under the boxes
        for child in box.children:
            x0, y0 = corner(box)
            x1, y1 = corner(child)
            sx, sy = x0 + _BOX_W / 2, y0 + _BOX_H
            ex, ey = x1 + _BOX_W / 2, y1
            if child.row - box.row > 1 and blocked(box, child):
                # A skip connection past other boxes: along the left gutter, into
                # the child's left side.
                gx = _GUTTER / 2
                sy, ey = y0 + _BOX_H / 2, y1 + _BOX_H / 2
                path = (f"M {x0:.1f} {sy:.1f} L {gx:.1f} {sy:.1f} L {gx:.1f} {ey:.1f} "
                        f"L {x1:.1f} {ey:.1f}")
            elif child.row - box.row > 1:
                # Down its own (empty) column, then into the child in the last gap.
                top = ey - (_ROW_H - _BOX_H)
                mid = (top + ey) / 2
                path = (f"M {sx:.1f} {sy:.1f} L {sx:.1f} {top:.1f} C {sx:.1f} "
                        f"{mid:.1f} {ex:.1f} {mid:.1f} {ex:.1f} {ey:.1f}")
            else:
                mid = (sy + ey) / 2
                path = (f"M {sx:.1f} {sy:.1f} C {sx:.1f} {mid:.1f} {ex:.1f} {mid:.1f} "
                        f"{ex:.1f} {ey:.1f}")
            out.append(f'<path d="{path}" fill="none" stroke="#495057" '
                       f'stroke-width="1.3" marker-end="url(#{marker})"/>')
    for box in boxes.values():
        line1, line2, line3, fill = _describe(box, model_, prefix)
        x, y = corner(box)
        title = html.escape("\n".join(box.layers) + f"\noutput {line2.split(' ')[0]}")
        dash = ' stroke-dasharray="4 3"' if box.external else ""
        out.append(
            f'<g><title>{title}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{_BOX_W}" height="{_BOX_H}" rx="6" '
            f'fill="{fill}" stroke="#343a40" stroke-width="1"{dash}/>'
            f'<text x="{x + _BOX_W / 2:.1f}" y="{y + 16:.1f}" text-anchor="middle" '
            f'font-size="12" font-weight="bold" fill="#212529">{html.escape(line1)}</text>'
            f'<text x="{x + _BOX_W / 2:.1f}" y="{y + 30:.1f}" text-anchor="middle" '
            f'font-size="11" fill="#212529">{html.escape(line2)}</text>'
            f'<text x="{x + _BOX_W / 2:.1f}" y="{y + 43:.1f}" text-anchor="middle" '
            f'font-size="9" fill="#6c757d">{html.escape(_clip(line3, 30))}</text></g>')
    out.append("</svg>")
    caption = (f"<code>{html.escape(prefix)}</code> of <code>{name}</code>, drawn from "
               f"the model's layer graph: each box is a layer (a convolution with "
               f"the BatchNormalization and activation that follow it), with its "
               f"output shape at the default {get_model_info(name).default_size}-pixel "
               f"input; hover for the layer names.")
    return (f'<figure class="ki-diagram">\n{"".join(out)}\n'
            f"<figcaption>{caption}</figcaption>\n</figure>\n")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


GENERATORS = {
    "family-table": family_table,
    "stage-table": stage_table,
    "block-diagram": block_diagram,
    "layer-table": layer_table,
    "bottleneck-table": bottleneck_table,
    "weights-table": weights_table,
}
