"""Per-layer table of parameters and work, and the AlexNet slide's annotated
diagram (parameters in red on the left, FLOPs in green on the right).

Counting conventions (per example, forward pass only):

* parameters: the elements of every variable in the layer's scope (weights
  and biases);
* multiply-accumulates (MACs): ``conv2d``: output elements x (C_in / groups) x
  kh x kw; ``matmul`` ``(N, K) @ (K, M)``: M x K per example (output
  elements x K). Everything else (bias adds, ReLU, LRN, pooling, softmax)
  counts 0 MACs;
* FLOPs = 2 x MACs (one multiply and one add each).

The first dimension of every value is the batch. See docs/diagrams.md for how
other conventions (224 vs 227 inputs, one tower vs two, counting the cheap ops)
change AlexNet's totals.
"""
from __future__ import annotations

import html
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import graphdiff as gd

from ._render import new_diagram
from .dot import LEAVES, as_outputs, shape_label, size_of


def human(n):
    """``60965224`` -> ``"61.0M"``; ``1448813632`` -> ``"1.45G"``."""
    n = int(n)
    if abs(n) < 1000:
        return str(n)
    if abs(n) < 10**6:
        return f"{n / 1e3:.1f}K"
    if abs(n) < 10**9:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e9:.2f}G"


def node_macs(t):
    """Multiply-accumulates per example for one node: ``conv2d`` and
    ``matmul`` (read by op name); 0 for every other op."""
    name = t.op.name
    if name == "conv2d":
        w = t.inputs[1]  # (C_out, C_in / groups, kh, kw)
        return size_of(t.shape[1:]) * size_of(w.shape[1:])
    if name == "matmul":
        a = t.inputs[0]
        k = a.shape[-1]
        # A vector on the left, (k,) @ (.., k, m), has no example axis: the whole product.
        return size_of(t.shape if a.ndim == 1 else t.shape[1:]) * (1 if k is None else k)
    return 0


@dataclass
class Row:
    """One scope (layer) of the summary."""

    layer: str
    output_shape: tuple
    params: int = 0
    macs: int = 0
    ops: list = field(default_factory=list)

    @property
    def flops(self):
        return 2 * self.macs


class Summary:
    """Rows per layer and exact totals; ``str()`` is the printed table."""

    def __init__(self, rows):
        self.rows = rows
        self.total_params = sum(r.params for r in rows)
        self.total_macs = sum(r.macs for r in rows)
        self.total_flops = 2 * self.total_macs

    def __getitem__(self, layer):
        for r in self.rows:
            if r.layer == layer:
                return r
        raise KeyError(layer)

    def as_dicts(self):
        return [dict(layer=r.layer, output_shape=r.output_shape, params=r.params, macs=r.macs, flops=r.flops,
                     ops=list(r.ops)) for r in self.rows]

    def __str__(self):
        head = ("layer", "output shape", "params", "MACs/example", "FLOPs/example")
        lines = [(r.layer, shape_label(r.output_shape), f"{r.params:,}", f"{r.macs:,}", f"{r.flops:,}")
                 for r in self.rows]
        total = ("total", "", f"{self.total_params:,} ({human(self.total_params)})",
                 f"{self.total_macs:,} ({human(self.total_macs)})",
                 f"{self.total_flops:,} ({human(self.total_flops)})")
        widths = [max(len(x[c]) for x in [head, total] + lines) for c in range(5)]

        def fmt(cells):
            return "  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(fmt(head))
        return "\n".join([fmt(head), rule] + [fmt(x) for x in lines] + [rule, fmt(total),
                          "(FLOPs = 2 x MACs; conv2d and matmul only; forward pass, per example)"])

    __repr__ = __str__


def _scope_key(scope, depth):
    if not scope:
        return ""
    return "/".join(scope.split("/")[:depth]) if depth else scope


def _forward_groups(outputs, depth):
    """Forward nodes grouped by scope: OrderedDict key -> list of nodes, and
    the node -> key map. Unscoped ops go under ``""``."""
    nodes = [t for t in gd.toposort(as_outputs(outputs)) if not t.backward]
    groups = OrderedDict()
    key_of = {}
    for t in nodes:
        if t.kind in ("placeholder", "constant"):
            continue
        key = _scope_key(t.scope, depth)
        key_of[id(t)] = key
        groups.setdefault(key, []).append(t)
    return nodes, groups, key_of


def _rows(outputs, depth):
    nodes, groups, key_of = _forward_groups(outputs, depth)
    users = defaultdict(list)
    for t in nodes:
        for i in t.inputs:
            users[id(i)].append(t)
    rows = []
    for key, members in groups.items():
        ops = [t for t in members if t.kind not in LEAVES]
        if not ops and not any(t.kind == "variable" for t in members):
            continue
        # the layer's output: its last op read from outside the layer (or by nobody)
        leaving = [t for t in ops if not users[id(t)] or any(key_of.get(id(u)) != key for u in users[id(t)])]
        out = (leaving or ops or members)[-1]
        rows.append(Row(layer=key or "(no scope)", output_shape=out.shape,
                        params=sum(size_of(t.shape) for t in members if t.kind == "variable"),
                        macs=sum(node_macs(t) for t in ops),
                        ops=list(OrderedDict.fromkeys(t.op.name for t in ops))))
    return rows


def summary(outputs, depth=None, show=True, file=None):
    """Print and return the per-layer table of ``outputs``' forward graph:
    output shape, parameters, MACs and FLOPs per example, with exact totals
    (``60,965,224``) and rounded ones (``61.0M``). ``depth`` groups nested
    scopes by their first ``depth`` levels. Returns a :class:`Summary`
    (``.rows``, ``.total_params``, ``.total_macs``, ``.total_flops``)."""
    s = Summary(_rows(outputs, depth))
    if show:
        print(s, file=file)
    return s


def annotated(outputs, depth=None, title=None, count="flops"):
    """The AlexNet slide's picture: one box per layer, drawn bottom-up, with
    the layer's parameters in red on the left and its FLOPs (or MACs, with
    ``count="macs"``) per example in green on the right; totals in the title."""
    if count not in ("flops", "macs"):
        raise ValueError(f"annotated: count must be 'flops' or 'macs', got {count!r}")
    rows = {r.layer: r for r in _rows(outputs, depth)}
    s = Summary(list(rows.values()))
    nodes, groups, key_of = _forward_groups(outputs, depth)
    work = "FLOPs" if count == "flops" else "MACs"
    total = s.total_flops if count == "flops" else s.total_macs
    d = new_diagram("annotated", title=title or (f"parameters (red): {s.total_params:,}    "
                                                 f"{work} per example (green): {total:,}"),
                    nodesep="0.3", ranksep="0.3")
    gid = {}
    for t in nodes:  # ids: one per layer, one per unscoped op or input
        if t.kind == "placeholder" or (id(t) in key_of and key_of[id(t)] == "" and t.kind not in LEAVES):
            gid[id(t)] = f"n{t.id}"
            label = f"{t.name}\n{shape_label(t.shape)}" if t.kind == "placeholder" else t.op.name
            d.node(gid[id(t)], label, shape="box" if t.kind == "placeholder" else "ellipse",
                   style="rounded,filled" if t.kind == "placeholder" else "", fillcolor="#cfe2f3",
                   fontsize="10")
        elif id(t) in key_of and key_of[id(t)]:
            gid[id(t)] = "layer_" + key_of[id(t)]
    for key, r in rows.items():
        if not key or r.layer == "(no scope)":
            continue
        value = r.flops if count == "flops" else r.macs
        label = ('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4"><TR>'
                 f'<TD WIDTH="56"><FONT COLOR="#d7191c">{human(r.params) if r.params else "0"}</FONT></TD>'
                 f'<TD BGCOLOR="#f2f2f2" WIDTH="150"><B>{html.escape(r.layer)}</B><BR/>'
                 f'<FONT POINT-SIZE="9">{html.escape(shape_label(r.output_shape))}</FONT></TD>'
                 f'<TD WIDTH="56"><FONT COLOR="#1a9641">{human(value) if value else "0"}</FONT></TD>'
                 '</TR></TABLE>>')
        d.node("layer_" + key, label, shape="plaintext", tooltip=f"{r.layer}: {r.params:,} params, "
               f"{value:,} {work}")
    seen = set()
    for t in nodes:
        for i in t.inputs:
            a, b = gid.get(id(i)), gid.get(id(t))
            if a and b and a != b and (a, b) not in seen:
                seen.add((a, b))
                d.edge(a, b, arrowsize="0.6")
    layers = [k for k in rows if k != "(no scope)"]
    d.meta.update(layers=layers, nodes=len(set(gid.values())), edges=len(seen), total_params=s.total_params,
                  total_macs=s.total_macs, total_flops=s.total_flops)
    return d
