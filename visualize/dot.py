"""Forward and backward graphs as Graphviz diagrams, drawn bottom-up as in the
course slides: inputs at the bottom, the loss at the top.

Node kinds are styled apart:

===============  ========================================================
placeholder      blue rounded box (inputs fed at run time)
variable         yellow box (trainable parameters)
constant         small grey dashed box
forward op       white ellipse
backward node    red ellipse (built by ``grad``); first-class gradient ops
                 (``conv2d_grad_input``, ``max_pool2d_grad``, ...) get a
                 double outline
gradient output  a requested gradient (``dE/dW``): a thick dark red outline,
                 labelled ``∂E/∂<variable>``
===============  ========================================================

In a graph holding both passes the backward flows top-down beside the
forward (its edges are drawn reversed, arrowheads still on the user), and the
values the backward reuses from the forward pass (ReLU's output that opens the
switch, the pooling argmax's inputs, LRN's scale, a layer's input (the images
too) for its weight gradient, ...) are drawn as dashed blue edges labelled
``reused``. Edges carry the shape of the value they carry (``?`` for a
dimension known only at run time). Scopes (layers) are clusters;
``collapse=True`` draws one box per scope instead (forward boxes white and
rounded, backward boxes red), with edge counts summed, which keeps AlexNet's
forward+backward graph readable; a compiled program is drawn collapsed by
default, its fused ops in the layers they came from and its updates (SGD's)
in one box. The legend shows the styles the picture uses, and only those.
"""
from __future__ import annotations

import os
import textwrap
from collections import OrderedDict, defaultdict

import graphviz
import numpy as np

import graphdiff as gd
from graphdiff.atomic import atomic_write

from ._render import PURE_FORMATS, Diagram, RendererNotFound, find_renderer, new_diagram, pipe_source

LEAVES = ("placeholder", "variable", "constant")

STYLE = {
    "placeholder": dict(shape="box", style="rounded,filled", fillcolor="#cfe2f3", color="#2b5797"),
    "variable": dict(shape="box", style="filled", fillcolor="#fff2b3", color="#9c7c00"),
    "constant": dict(shape="box", style="filled,dashed", fillcolor="#eeeeee", color="#888888",
                     fontsize="9", height="0.25"),
    "forward": dict(shape="ellipse", style="filled", fillcolor="white", color="black"),
    "gradient": dict(shape="ellipse", style="filled", fillcolor="#f9d0cc", color="#b2182b",
                     fontcolor="#67000d"),
}
REUSED = dict(style="dashed", color="#2166ac", fontcolor="#2166ac", penwidth="1.6", constraint="false")
BACKWARD_EDGE = dict(color="#b2182b", fontcolor="#b2182b")
#: a requested gradient (an output of the backward pass), drawn over its kind's style
GRADIENT_OUTPUT = dict(penwidth="3", color="#67000d")
#: parameters and gradients flowing into a compiled program's update box (thin: many of them)
UPDATE_EDGE = dict(color="#8c8c8c", fontcolor="#6b6b6b", penwidth="0.8", arrowsize="0.6", constraint="false")
#: collapsed view: one box per layer and pass
LAYER_BOX = {False: dict(STYLE["forward"], shape="box", style="filled,rounded"),
             True: dict(STYLE["gradient"], shape="box")}


def shape_label(shape):
    """``(None, 96, 55, 55)`` -> ``"(?, 96, 55, 55)"``."""
    return gd.nx.shape_str(shape)


def size_of(shape):
    """Elements in ``shape``; a dimension of None counts as 1 (per example)."""
    n = 1
    for dim in shape:
        n *= 1 if dim is None else dim
    return n


def as_outputs(outputs):
    """A Tensor, a list of Tensors, a model with ``.loss``, a loaded ONNX model
    (its outputs) or a compiled program (its schedule, as the compiler rewrote
    it) -> list of Tensors."""
    if isinstance(outputs, gd.Tensor):
        return [outputs]
    if isinstance(outputs, gd.Program):
        return list(outputs.nodes)
    if hasattr(outputs, "loss") and isinstance(outputs.loss, gd.Tensor):
        return [outputs.loss]
    if isinstance(getattr(outputs, "outputs", None), list):  # a loaded ONNX model (gd.onnx.load)
        return as_outputs(outputs.outputs)
    if isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__iter__"):
        raise TypeError(f"expected a Tensor, a list of Tensors, a compiled Program or a model with .loss, "
                        f"got {type(outputs).__name__} {outputs!r}"[:200])
    outputs = list(outputs)
    for o in outputs:
        if not isinstance(o, gd.Tensor):
            raise TypeError(f"expected graphdiff Tensors, got {type(o).__name__}")
    return outputs


def is_op(t):
    return t.kind not in LEAVES


def is_reused(src, dst):
    """A forward value read by a backward node: an op's output, or an input
    placeholder (the images that the first layer's weight gradient reads,
    like every other layer's input)."""
    return (is_op(src) or src.kind == "placeholder") and not src.backward and dst.backward


def gradient_outputs(outputs, nodes):
    """``id -> "∂E/∂<variable>"`` for the backward nodes among ``outputs`` (the
    gradients asked for): the variable is the one of the gradient's shape in
    its scope, ``∂E/∂(...)`` where that is not unique."""
    variables = defaultdict(list)
    for t in nodes:
        if t.kind == "variable":
            variables[(t.scope, t.shape)].append(t)
    marks = {}
    for o in outputs:
        if o.backward and is_op(o):
            match = variables.get((o.scope, o.shape), [])
            marks[id(o)] = "\u2202E/\u2202" + (match[0].name if len(match) == 1 else f"({o.name})")
    return marks


class _Key:
    """The styles a diagram uses, in first-use order, for its legend."""

    def __init__(self):
        self.nodes, self.edges = OrderedDict(), OrderedDict()

    def node(self, text, style):
        self.nodes.setdefault(text, style)

    def edge(self, text, style):
        self.edges.setdefault(text, style)


_KIND_TEXT = {"placeholder": "placeholder", "variable": "variable", "constant": "constant",
              "forward": "forward op", "gradient": "backward op"}


def _note_node(key, t, style):
    if t.kind == "gradient" and style.get("peripheries") == "2":
        key.node("gradient op (its own VJP)", style)
    else:
        key.node(_KIND_TEXT[t.kind], style)


def _note_edge(key, attrs):
    if attrs.get("style") == "dashed" and attrs.get("color") == REUSED["color"]:
        key.edge("reused forward value", REUSED)
    elif attrs.get("color") == BACKWARD_EDGE["color"]:
        key.edge("backward", BACKWARD_EDGE)
    elif attrs.get("color") == UPDATE_EDGE["color"]:
        key.edge("into the updates", UPDATE_EDGE)


def _compact(value):
    """Attribute values for labels: (2, 2) -> 2, (0, 2, 3) -> 0,2,3, dtypes by name."""
    if isinstance(value, tuple):
        if len(value) == 2 and value[0] == value[1] and not isinstance(value[0], tuple):
            return _compact(value[0])
        return ",".join(_compact(v) for v in value) if value else "()"
    if isinstance(value, np.dtype):
        return value.name
    return str(value)


def op_label(op, width=24, max_lines=4):
    """The op's name, then its attributes ``k=v`` wrapped to ``width`` characters;
    an op with its own ``describe`` (a fused chain: its expression) shows that,
    wrapped, at most ``max_lines`` lines."""
    text = op.describe()
    if type(op).describe is not gd.Op.describe:
        lines = textwrap.wrap(text, width=max(width, 36))
        return "\n".join(lines[:max_lines]) + (" ..." if len(lines) > max_lines else "")
    attrs = getattr(op, "attrs", None)
    if not attrs or "(" not in text:
        return text
    lines, line = [op.name], ""
    for k, v in sorted(attrs.items()):
        part = f"{k}={_compact(v)}"
        if line and len(line) + len(part) + 2 > width:
            lines.append(line)
            line = part
        else:
            line = f"{line}, {part}" if line else part
    lines.append(line)
    return "\n".join(lines)


def _node_label(t, stats=None, kernels=None):
    if t.kind in ("placeholder", "variable"):
        text = f"{t.name}\n{shape_label(t.shape)}"
    elif t.kind == "constant":
        text = t.op.describe()
    else:
        text = op_label(t.op)
    if kernels and id(t) in kernels:  # a compiled convolution's kernel library
        text += f"\nkernel: {kernels[id(t)]}"
    st = stats.get(id(t)) if stats else None
    if st is not None and "mean" in st:
        text += f"\nmean {st['mean']:.3g} std {st['std']:.3g} zero {100 * st['zero']:.0f}%"
    return text


def _feed_stats(nodes, feed):
    """Value statistics of every node (``visualize.explore.value_stats``) from one
    compiled run on ``feed``; {} without a feed."""
    if feed is None:
        return {}
    from .explore import compute_values, value_stats

    values = compute_values(nodes, feed)
    return {k: value_stats(v) for k, v in values.items()}


def _node_style(t):
    style = dict(STYLE[t.kind])
    if t.kind == "gradient" and t.op.kind == "gradient":
        style["peripheries"] = "2"
    return style


def _edge_attrs(src, dst, shapes, label=None):
    attrs = {}
    text = label if label is not None else (shape_label(src.shape) if shapes else "")
    if is_reused(src, dst):
        attrs.update(REUSED)
        text = "reused " + text if text else "reused"
    elif src.backward and dst.backward:
        attrs.update(BACKWARD_EDGE)
    if src.backward and dst.backward:
        attrs["dir"] = "back"  # drawn from dst to src so that the backward descends
    if text:
        attrs["label"] = text
    return attrs


def _edge(d, src_id, dst_id, attrs):
    if attrs.get("dir") == "back":
        d.edge(dst_id, src_id, **attrs)
    else:
        d.edge(src_id, dst_id, **attrs)


def _scope_key(scope, depth):
    if not scope:
        return ""
    parts = scope.split("/")
    return "/".join(parts[:depth]) if depth else scope


def to_dot(outputs, *, collapse=None, title=None, shapes=True, clusters=True, constants=True,
           legend=False, rankdir="BT", feed=None):
    """The graph ``outputs`` depend on, as a :class:`Diagram` (a
    ``graphviz.Digraph``).

    * ``outputs``: a Tensor, a list of Tensors, or a model with ``.loss``;
      pass ``[loss, *grads]`` to draw both passes. A compiled program
      (``gd.compile(...)``) draws the graph it runs: fused elementwise chains,
      ``conv2d_relu``, ops with two outputs and the ``part`` nodes reading them;
      once it has run, each convolution (or layer box) names its kernel
      library (``kernel: onednn``, see ``Program.kernels``).
    * ``collapse``: False draws every node; True one box per scope (an int
      ``k`` groups by the first ``k`` levels of nested scopes). Edges between
      boxes are summed (``x3``); ops outside any scope stay single nodes.
      Default: True for a compiled program (its fused ops sit in their
      layers' boxes, its updates in one box), False otherwise.
    * ``shapes``: label edges with the shapes they carry.
    * ``clusters``: draw scopes as boxes around their nodes (full view).
    * ``constants``: draw constant nodes (full view; collapsed views fold them
      into their user's box).
    * ``legend``: add a key of the node and edge styles the picture uses.
    * ``feed``: ``{placeholder: array}``: run the graph (one compiled program)
      and print each node's mean, std and fraction of zeros (dead ReLUs) on it
      (the full view; in a collapsed view the nodes drawn alone).

    Backward nodes among ``outputs`` (the gradients asked for, ``dE/dW``) are
    marked ``∂E/∂<variable>`` with a thick outline.

    ``d.meta`` has ``nodes``, ``edges`` (as drawn), ``reused`` (crossing
    edges) and ``legend`` (the node and edge styles drawn, by legend text).
    """
    program = outputs if isinstance(outputs, gd.Program) else None
    if collapse is None:
        collapse = program is not None
    kernels = _kernel_notes(program)
    outputs = as_outputs(outputs)
    nodes = gd.toposort(outputs)
    marks = {} if program is not None else gradient_outputs(outputs, nodes)
    updating = {new.name for _, new in program.updates} if program is not None else set()
    d = new_diagram("graphdiff", title=title, rankdir=rankdir, newrank="true", nodesep="0.25", ranksep="0.35")
    key = _Key()
    stats = _feed_stats(nodes, feed)
    if collapse:
        _collapsed(d, nodes, 0 if collapse is True else int(collapse), shapes, marks, updating, key, stats, kernels)
    else:
        _full(d, nodes, shapes, clusters, constants, marks, key, stats, kernels)
    d.meta["legend"] = {"nodes": list(key.nodes), "edges": list(key.edges)}
    if legend:
        _legend(d, key)
    return d


def _kernel_notes(program):
    """``{node id: library}`` for a compiled program's convolutions that have run
    (``Program.kernels``: ``"onednn"`` or ``"numpy"``); {} for a graph."""
    if program is None:
        return {}
    by_name = program.kernels
    return {id(n): by_name[n.name] for n in program.nodes if by_name.get(n.name) and n.op.name != "part"}


def shown_scopes(nodes):
    """``{id(t): scope}``: the layer each node is drawn in. Its own scope; for a
    parameter built outside any scope (an imported model's ``features.0.weight``)
    the one layer whose forward ops read it, when they all belong to one, so
    that the layer's box holds its weights as for graphdiff's own models (the
    tensor's name and scope are left as they are)."""
    readers = defaultdict(set)
    for t in nodes:
        if not t.backward:
            for x in t.inputs:
                readers[id(x)].add(t.scope or "")
    shown = {}
    for t in nodes:
        scope, around = t.scope or "", readers.get(id(t), set())
        if t.kind == "variable" and not scope and len(around) == 1 and "" not in around:
            scope = next(iter(around))
        shown[id(t)] = scope
    return shown


def _full(d, nodes, shapes, clusters, constants, marks, key, stats=None, kernels=None):
    drawn = [t for t in nodes if constants or t.kind != "constant"]
    shown = shown_scopes(nodes)
    ids = {id(t): f"n{t.id}" for t in drawn}
    users = defaultdict(list)
    for t in drawn:
        for i in t.inputs:
            users[id(i)].append(t)

    # Cluster key (scope, backward): a layer's backward nodes get a cluster of
    # their own beside the forward one, so both passes stack as two columns.
    def cluster_of(t):
        scope = shown[id(t)]
        if not clusters or not scope:
            return ("", False)
        if t.kind == "constant" and users[id(t)]:
            first = users[id(t)][0]
            return (scope, bool(first.backward)) if first.scope == scope else (scope, False)
        return (scope, bool(t.backward) and is_op(t))

    by_cluster = defaultdict(list)
    for t in drawn:
        by_cluster[cluster_of(t)].append(t)

    def emit(graph, t):
        style, label = _node_style(t), _node_label(t, stats, kernels)
        _note_node(key, t, style)
        if id(t) in marks:
            style, label = dict(style, **GRADIENT_OUTPUT), f"{marks[id(t)]}\n{label}"
            key.node("gradient output \u2202E/\u2202W", style)
        graph.node(ids[id(t)], label, tooltip=f"{t.name} {t.dtype.name}", **style)

    # Nested clusters: "block/conv1" is drawn inside "block".
    tree = {}
    for scope, backward in by_cluster:
        if scope:
            parts = scope.split("/")
            for k in range(1, len(parts) + 1):
                parent = ("/".join(parts[:k - 1]), backward and k > 1)
                tree.setdefault(parent, set()).add(("/".join(parts[:k]), backward))

    def emit_scope(graph, key):
        for t in by_cluster.get(key, ()):
            emit(graph, t)
        for child in sorted(tree.get(key, ())):
            scope, backward = child
            name = f"cluster_{scope}" + ("_backward" if backward else "")
            with graph.subgraph(name=name) as c:
                c.attr(label=scope.rsplit("/", 1)[-1] + (" (backward)" if backward else ""), style="rounded",
                       color="#d6604d" if backward else "#999999", fontcolor="#555555", fontname="Helvetica",
                       fontsize="11")
                emit_scope(c, child)

    emit_scope(d, ("", False))
    n_edges = n_reused = 0
    for t in drawn:
        for i in t.inputs:
            if id(i) not in ids:
                continue
            attrs = _edge_attrs(i, t, shapes)
            _note_edge(key, attrs)
            _edge(d, ids[id(i)], ids[id(t)], attrs)
            n_edges += 1
            n_reused += is_reused(i, t)
    d.meta.update(nodes=len(drawn), edges=n_edges, reused=n_reused)


def _collapsed(d, nodes, depth, shapes, marks, updating, key, stats=None, kernels=None):
    # Group key per node: ("scope", scope, backward) or ("node", id). Constants
    # join their first user's group; scoped variables join their scope's box.
    users = defaultdict(list)
    for t in nodes:
        for i in t.inputs:
            users[id(i)].append(t)
    group, shown = {}, shown_scopes(nodes)
    for t in nodes:
        scope_key = _scope_key(shown[id(t)], depth)
        if t.kind in ("placeholder",) or (not scope_key and t.kind != "constant"):
            group[id(t)] = ("node", t.id)
        elif t.kind != "constant":
            group[id(t)] = ("scope", scope_key, bool(t.backward) and is_op(t))
    for t in nodes:
        if t.kind == "constant" and id(t) not in group:
            first = users[id(t)]
            group[id(t)] = group.get(id(first[0])) if first else None
            if group[id(t)] is None or group[id(t)][0] == "node":
                group[id(t)] = None  # a constant beside a lone op is not drawn

    members = OrderedDict()
    for t in nodes:
        g = group[id(t)]
        if g is not None:
            members.setdefault(g, []).append(t)

    gid, update_groups = {}, set()
    for k, (g, ts) in enumerate(members.items()):
        gid[g] = f"g{k}"
        if g[0] == "node":
            t = ts[0]
            style, label = _node_style(t), _node_label(t, stats, kernels)
            _note_node(key, t, style)
            if id(t) in marks:
                style, label = dict(style, **GRADIENT_OUTPUT), f"{marks[id(t)]}\n{label}"
                key.node("gradient output \u2202E/\u2202W", style)
            d.node(gid[g], label, tooltip=t.name, **style)
            continue
        _, scope, backward = g
        ops = list(OrderedDict.fromkeys(t.op.name for t in ts if is_op(t)))
        values = sum(size_of(t.shape) for t in ts if t.kind == "variable")
        updates = len({t.name for t in ts if is_op(t) and t.name in updating})  # a fused pass and its parts share names
        lines = [scope + (" (backward)" if backward else "")]
        if updates:
            lines.append(f"updates {updates} variables")
        for k0 in range(0, len(ops), 3):
            lines.append(", ".join(ops[k0:k0 + 3]))
        n_ops = sum(is_op(t) for t in ts)
        held = "values held" if updates else "params"  # an update box holds state (momentum), not weights
        lines.append(f"{n_ops} op{'s' if n_ops != 1 else ''}" + (f", {values:,} {held}" if values else ""))
        libraries = sorted({kernels[id(t)] for t in ts if kernels and id(t) in kernels})
        if libraries:  # the convolutions' kernel library (Program.kernels)
            lines.append(f"kernel: {', '.join(libraries)}")
        style = dict(LAYER_BOX[bool(backward)])
        key.node("layer, backward pass" if backward else "layer (forward pass)", style)
        grads = [marks[id(t)] for t in ts if id(t) in marks]
        if grads:  # the gradients asked for: dE/dW of this layer's variables
            lines.append(", ".join(grads))
            style.update(GRADIENT_OUTPUT)
            key.node("layer holding gradient outputs \u2202E/\u2202W", style)
        if updates:
            update_groups.add(g)
        d.node(gid[g], "\n".join(lines), tooltip=scope, **style)

    counts = OrderedDict()
    for t in nodes:
        gt = group[id(t)]
        for i in t.inputs:
            gi = group[id(i)]
            if gi is None or gt is None or gi == gt:
                continue
            c = counts.setdefault((gi, gt), {"n": 0, "shapes": OrderedDict(), "reused": 0, "src": i, "dst": t})
            c["n"] += 1
            c["shapes"][shape_label(i.shape)] = True
            c["reused"] += is_reused(i, t)
    n_reused = 0
    for (gi, gt), c in counts.items():
        src, dst = c["src"], c["dst"]
        text = ""
        if shapes:
            text = " ".join(list(c["shapes"])[:2]) + (" ..." if len(c["shapes"]) > 2 else "")
        if c["n"] > 1:
            text = (text + " " if text else "") + f"x{c['n']}"
        # a box's kind decides the style: forward box -> backward box is "reused"
        s_back = gi[0] == "scope" and gi[2] or gi[0] == "node" and src.backward
        t_back = gt[0] == "scope" and gt[2] or gt[0] == "node" and dst.backward
        attrs = {}
        if gt in update_groups and gi not in update_groups:
            # every layer's parameters and gradients go to the updates: thin, counted, unlabelled by shape
            attrs.update(UPDATE_EDGE)
            text = f"x{c['n']}" if c["n"] > 1 else ""
        elif c["reused"] and not s_back and t_back:
            attrs.update(REUSED)
            text = "reused " + text
            n_reused += 1
        elif s_back and t_back:
            attrs.update(BACKWARD_EDGE, dir="back")
        if text:
            attrs["label"] = text.strip()
        _note_edge(key, attrs)
        _edge(d, gid[gi], gid[gt], attrs)
    d.meta.update(nodes=len(members), edges=len(counts), reused=n_reused)


def _legend(d, key):
    """A key of exactly the node and edge styles drawn (``key``), each with
    the shape and colours it has in the picture."""
    with d.subgraph(name="cluster_legend") as c:
        c.attr(label="legend", style="rounded", color="#bbbbbb", fontname="Helvetica", fontsize="10")
        for k, (text, style) in enumerate(key.nodes.items()):
            c.node(f"legend_n{k}", text, **style)
        for k, (text, style) in enumerate(key.edges.items()):
            c.node(f"legend_e{k}_from", "", shape="point", width="0.05", color=style.get("color", "black"))
            c.node(f"legend_e{k}_to", "", shape="point", width="0.05", color=style.get("color", "black"))
            attrs = {a: v for a, v in style.items() if a not in ("constraint", "dir")}
            c.edge(f"legend_e{k}_from", f"legend_e{k}_to", label=text, **attrs)


def render(outputs_or_digraph, path, format=None, **to_dot_kwargs):
    """Write a diagram to ``path`` and return the path.

    ``outputs_or_digraph``: a ``graphviz`` graph (e.g. from :func:`to_dot`) or
    what :func:`to_dot` takes (then ``to_dot_kwargs`` go to it). The format
    comes from the path's suffix unless ``format`` is given: ``svg`` and
    ``png`` always render (system ``dot`` or ``graphviz-pure``); ``pdf`` and
    other formats need system Graphviz; ``dot``/``gv`` write the DOT source.
    Raises :class:`RendererNotFound` (a RuntimeError) naming the remedies.
    """
    if isinstance(outputs_or_digraph, (graphviz.Digraph, graphviz.Graph, graphviz.Source)):
        diagram = outputs_or_digraph
    else:
        diagram = to_dot(outputs_or_digraph, **to_dot_kwargs)
    path = os.fspath(path)
    fmt = (format or os.path.splitext(path)[1].lstrip(".") or "svg").lower()
    if fmt in ("dot", "gv"):
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(diagram.source)
        return path
    data = pipe_source(diagram.source, fmt, getattr(diagram, "engine", "dot"))
    with atomic_write(path) as f:  # a failed write leaves the previous picture whole
        f.write(data)
    return path


__all__ = ["to_dot", "render", "Diagram", "RendererNotFound", "find_renderer", "PURE_FORMATS"]
