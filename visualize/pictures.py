"""The slides' small pictures: the element-level pseudo-graph of a convolution
(forward and backward), ReLU's gradient as a switch, max pooling's gradient as
a multiplexer. All are drawn bottom-up, as in the slides.
"""
from __future__ import annotations

import numpy as np

from ._render import new_diagram

#: one colour per filter position (a, b), so each weight's edges can be followed
PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
           "#1f78b4", "#b15928", "#6a3d9a", "#33a02c", "#e31a1c", "#ff7f00", "#cab2d6", "#fb9a99"]


def _sub(letter, i, j, big):
    """HTML label ``X`` with subscript ``ij`` (``i,j`` once indexes reach 10)."""
    idx = f"{i},{j}" if big else f"{i}{j}"
    return f"<{letter}<SUB>{idx}</SUB>>"


def _keep_order(row, ids):
    """Invisible edges that keep a rank's nodes in the given left-to-right order
    (not drawn, not in the SVG)."""
    for a, b in zip(ids, ids[1:]):
        row.edge(a, b, style="invis")


def conv_pseudograph(n, m, backward=False, weights="nodes"):
    """The slides' pseudo-graph of ``Y = W * X`` for an ``n x n`` input and an
    ``m x m`` filter, element by element::

        Y_ij = sum_{a,b=0}^{m-1} W_ab X_(i+a)(j+b),   0 <= i, j <= n - m

    Forward (``backward=False``), bottom-up: nodes ``X_ij`` (n*n) and
    ``W_ab`` (m*m) at the bottom, ``Y_ij`` ((n-m+1)^2) at the top, one edge per
    term of each sum. With k = n - m + 1 there are exactly:

    * ``k^2 m^2`` edges from the X nodes (each ``Y_ij`` reads m*m inputs),
    * ``k^2 m^2`` edges from the W nodes (each ``Y_ij`` reads every weight),

    so ``2 k^2 m^2`` edges in all; ``weights="labels"`` drops the W nodes
    and labels each X edge with its weight instead (``k^2 m^2`` edges). Edges
    are coloured by the filter position ``(a, b)`` they multiply.

    Backward (``backward=True``): the slides' case 2 after re-factoring,
    ``dE/dX_ij = sum_ab W_ab dE_(i-a)(j-b)`` over ``0 <= i-a, j-b <= n-m``
    (the inversion of indexes): nodes ``dE_ij`` (k^2) at the top, ``dX_ij``
    (n^2) at the bottom, one edge per term, labelled with its weight ``W_ab``
    and drawn downwards, ``k^2 m^2`` edges in all. A corner ``dX`` gathers one
    term, an inner one up to ``m^2``.

    Node names (DOT ids): ``X_i_j``, ``W_a_b``, ``Y_i_j``, ``dE_i_j``, ``dX_i_j``.
    ``d.meta`` holds the node and edge counts.
    """
    n, m = int(n), int(m)
    if not 1 <= m <= n:
        raise ValueError(f"conv_pseudograph: need 1 <= m <= n, got n={n}, m={m}")
    if weights not in ("nodes", "labels"):
        raise ValueError(f"conv_pseudograph: weights must be 'nodes' or 'labels', got {weights!r}")
    k = n - m + 1
    big = n > 10
    colour = {(a, b): PALETTE[(a * m + b) % len(PALETTE)] for a in range(m) for b in range(m)}
    if backward:
        return _conv_backward(n, m, k, big, colour)

    title = (f"Y = W * X, n={n}, m={m}: Y_ij = \u03a3_ab W_ab X_(i+a)(j+b)  "
             f"({k * k * m * m} terms)")
    d = new_diagram("conv_pseudograph", title=title, nodesep="0.12", ranksep="1.6")
    with d.subgraph(name="inputs") as row:
        row.attr(rank="same")
        for i in range(n):
            for j in range(n):
                row.node(f"X_{i}_{j}", _sub("X", i, j, big), shape="box", style="rounded,filled",
                         fillcolor="#cfe2f3", color="#2b5797")
        if weights == "nodes":
            for a in range(m):
                for b in range(m):
                    row.node(f"W_{a}_{b}", _sub("W", a, b, big), shape="box", style="filled",
                             fillcolor="#fff2b3", color=colour[a, b], penwidth="2")
        _keep_order(row, [f"X_{i}_{j}" for i in range(n) for j in range(n)]
                    + ([f"W_{a}_{b}" for a in range(m) for b in range(m)] if weights == "nodes" else []))
    with d.subgraph(name="outputs") as row:
        row.attr(rank="same")
        for i in range(k):
            for j in range(k):
                row.node(f"Y_{i}_{j}", _sub("Y", i, j, big), shape="ellipse")
        _keep_order(row, [f"Y_{i}_{j}" for i in range(k) for j in range(k)])
    x_edges = w_edges = 0
    for i in range(k):
        for j in range(k):
            for a in range(m):
                for b in range(m):
                    attrs = dict(color=colour[a, b], arrowsize="0.5")
                    if weights == "labels":
                        attrs.update(label=_sub("W", a, b, big), fontcolor=colour[a, b])
                    d.edge(f"X_{i + a}_{j + b}", f"Y_{i}_{j}", **attrs)
                    x_edges += 1
                    if weights == "nodes":
                        d.edge(f"W_{a}_{b}", f"Y_{i}_{j}", color=colour[a, b], arrowsize="0.5", style="dotted")
                        w_edges += 1
    d.meta.update(n=n, m=m, x_nodes=n * n, w_nodes=m * m if weights == "nodes" else 0, y_nodes=k * k,
                  x_edges=x_edges, w_edges=w_edges, nodes=n * n + k * k + (m * m if weights == "nodes" else 0),
                  edges=x_edges + w_edges)
    return d


def _conv_backward(n, m, k, big, colour):
    title = (f"backward, n={n}, m={m}: \u2202E/\u2202X_ij = \u03a3_ab W_ab \u2202E_(i\u2212a)(j\u2212b), "
             f"0 \u2264 i\u2212a, j\u2212b \u2264 {n - m}  \u2014 note the inversion of indexes")
    d = new_diagram("conv_pseudograph_backward", title=title, nodesep="0.12", ranksep="1.6")
    with d.subgraph(name="upstream") as row:
        row.attr(rank="same")
        for i in range(k):
            for j in range(k):
                row.node(f"dE_{i}_{j}", f"<\u2202E<SUB>{f'{i},{j}' if big else f'{i}{j}'}</SUB>>",
                         shape="ellipse", style="filled", fillcolor="#f9d0cc", color="#b2182b")
        _keep_order(row, [f"dE_{i}_{j}" for i in range(k) for j in range(k)])
    with d.subgraph(name="inputs") as row:
        row.attr(rank="same")
        for i in range(n):
            for j in range(n):
                row.node(f"dX_{i}_{j}", f"<\u2202E/\u2202X<SUB>{f'{i},{j}' if big else f'{i}{j}'}</SUB>>",
                         shape="box", style="rounded,filled", fillcolor="#fde0dd", color="#b2182b")
        _keep_order(row, [f"dX_{i}_{j}" for i in range(n) for j in range(n)])
    edges = 0
    for i in range(n):
        for j in range(n):
            for a in range(m):
                for b in range(m):
                    if 0 <= i - a <= n - m and 0 <= j - b <= n - m:
                        # drawn dX -> dE with the arrowhead at dX: dE stays on top, flow goes down
                        d.edge(f"dX_{i}_{j}", f"dE_{i - a}_{j - b}", dir="back", label=_sub("W", a, b, big),
                               color=colour[a, b], fontcolor=colour[a, b], arrowsize="0.5")
                        edges += 1
    d.meta.update(n=n, m=m, de_nodes=k * k, dx_nodes=n * n, nodes=k * k + n * n, edges=edges)
    return d


def _fmt(v):
    return f"{v:g}"


def relu_switch(values):
    """ReLU's gradient as a switch (slides: "the gradient of ReLU acts like a
    'switch' ... one forward pass decides which component is open (1) and
    which is not (0)").

    One column per input value ``x_k``: the incoming gradient ``dE/dy_k`` at
    the top, the switch in the middle, ``dE/dx_k`` at the bottom. The switch
    is *open* (passes the gradient, factor 1) where ``x_k > 0`` and shut
    (factor 0) otherwise, ``x_k = 0`` included (``step(0) = 0``).
    Node names: ``dy_k``, ``switch_k``, ``dx_k``; ``d.meta["open"]`` lists
    the switches' states.
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0 or x.size > 64:
        raise ValueError(f"relu_switch: give 1 to 64 values, got {x.size}")
    d = new_diagram("relu_switch", title="ReLU's gradient is a switch: open (\u00d71) where the forward input x > 0",
                    nodesep="0.35", ranksep="0.45")
    opened = [bool(v > 0) for v in x]
    for k, (v, on) in enumerate(zip(x, opened)):
        d.node(f"dy_{k}", f"<\u2202E/\u2202y<SUB>{k}</SUB>>", shape="ellipse", style="filled",
               fillcolor="#f9d0cc", color="#b2182b")
        state = "open (1)" if on else "shut (0)"
        d.node(f"switch_{k}", f"x{k} = {_fmt(v)}\n{state}", shape="box", style="filled,rounded",
               fillcolor="#c7e9c0" if on else "#dddddd", color="#238b45" if on else "#777777",
               penwidth="2" if on else "1")
        passed = f"\u2202E/\u2202y<SUB>{k}</SUB>" if on else "0"
        d.node(f"dx_{k}", f"<\u2202E/\u2202x<SUB>{k}</SUB> = {passed}>",
               shape="box", style="rounded,filled", fillcolor="#fde0dd", color="#b2182b")
        # drawn bottom-up with reversed arrows, so the gradient flows down
        d.edge(f"switch_{k}", f"dy_{k}", dir="back", color="#b2182b")
        if on:
            d.edge(f"dx_{k}", f"switch_{k}", dir="back", color="#238b45", penwidth="2", label="\u00d71")
        else:
            d.edge(f"dx_{k}", f"switch_{k}", dir="back", color="#999999", style="dashed", label="\u00d70")
    d.meta.update(open=opened, values=x.tolist())
    return d


def maxpool_multiplexer(window_values):
    """Max pooling as a multiplexer (slides: "the gradient of max pooling acts
    as a multiplexer; one forward pass is required to determine which channel
    is selected").

    ``window_values``: one pooling window (a 2-D array, or 1-D). The inputs
    sit at the bottom, the multiplexer in the middle, the output ``y = max``
    on top. The routed input, the first maximum in row-major order (the
    engine's tie rule), gets a bold green edge labelled ``selected``; the
    backward sends ``dE/dy`` only there. Where the window holds equal maxima
    the multiplexer says so and names the rule that picked;
    ``d.meta["tied"]`` lists the other maxima. Node names: ``x_k`` (row-major
    position k), ``mux``, ``y``; ``d.meta["selected"]`` is k and
    ``d.meta["selected_index"]`` the (row, column) in the window.
    """
    w = np.asarray(window_values, dtype=float)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.size == 0 or w.size > 64:
        raise ValueError(f"maxpool_multiplexer: give one window (1-D or 2-D, 1 to 64 values), got shape {w.shape}")
    flat = w.ravel()
    sel = int(np.argmax(flat))  # first maximum in row-major order (a NaN, if any: it propagates)
    rows, cols = w.shape
    sel_rc = (sel // cols, sel % cols)
    tied = [k for k in np.flatnonzero(flat == flat[sel]) if k != sel]
    tie_note = ""
    if tied:  # say which rule picked: the engine's (max_pool2d_argmax), the first in row-major order
        others = ", ".join(f"x{k // cols}{k % cols}" for k in tied)
        tie_note = f"\n(tie with {others}:\nthe first in row-major order wins)"
    d = new_diagram("maxpool_multiplexer", nodesep="0.3", ranksep="0.7",
                    title=f"max pooling is a multiplexer: the forward selects x{sel_rc[0]}{sel_rc[1]}; "
                          f"the backward routes \u2202E/\u2202y there")
    with d.subgraph(name="window") as row:
        row.attr(rank="same")
        for k, v in enumerate(flat):
            r, c = divmod(k, cols)
            chosen = k == sel
            row.node(f"x_{k}", f"<x<SUB>{r}{c}</SUB> = {_fmt(v)}>", shape="box", style="rounded,filled",
                     fillcolor="#c7e9c0" if chosen else "#cfe2f3", color="#238b45" if chosen else "#2b5797",
                     penwidth="2" if chosen else "1")
        _keep_order(row, [f"x_{k}" for k in range(flat.size)])
    d.node("mux", f"MUX\nselect x{sel_rc[0]}{sel_rc[1]}{tie_note}", shape="invtrapezium", style="filled",
           fillcolor="#fff2b3")
    d.node("y", f"y = max = {_fmt(flat[sel])}\n\u2202E/\u2202x{sel_rc[0]}{sel_rc[1]} = \u2202E/\u2202y, others 0",
           shape="ellipse")
    for k in range(flat.size):
        if k == sel:
            d.edge(f"x_{k}", "mux", color="#238b45", penwidth="2.5", label="selected", fontcolor="#238b45")
        else:
            d.edge(f"x_{k}", "mux", color="#aaaaaa", style="dashed", arrowsize="0.5")
    d.edge("mux", "y")
    d.meta.update(selected=sel, selected_index=sel_rc, values=flat.tolist(), tied=[int(k) for k in tied])
    return d
