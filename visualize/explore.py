"""An interactive explorer of forward and backward graphs, with real values.

    import visualize as vz
    page = vz.explore([loss, *grads], feed={x: images, t: labels}, path="explorer.html")
    page            # in Jupyter: the explorer inline

:func:`explore` writes one self-contained HTML page (its JavaScript and CSS,
``visualize/explorer_assets/``, are written for it and inlined: nothing is
fetched when the page is viewed). The page lays the graph out bottom-up as in
the slides, scopes collapsed; it shows every node's values (statistics,
histogram, feature-map and filter thumbnails), lights the gradient path of a
chosen parameter, steps through the backward schedule with each VJP rule's
formula (typeset from :mod:`visualize.formulas` by KaTeX, beside the op's
docstring) and the slides' element-level pictures filled with real numbers,
checks every VJP rule against a float64 finite difference
(:mod:`visualize.gradcheck`), shows one SGD step on the batch
(:mod:`visualize.update_step`), draws each collapsed layer with a strip of
its feature maps, and, given a compiled program, the graph after each
compiler pass, the memory plan and the profile.

The values are those of a compiled program: every node of the graph is made an
output of one ``gd.compile(...)`` and run on ``feed``, so they are exactly what
``gd.compile(node, inputs)(feed)`` returns.
"""
from __future__ import annotations

import base64
import html
import inspect
import json
import os
import re

import numpy as np

import graphdiff as gd
from graphdiff.atomic import atomic_write
from graphdiff.autodiff import provenance
from graphdiff.backends import to_host_array

from .dot import as_outputs, op_label, shape_label, shown_scopes
from .formulas import FORMULAS
from .gradcheck import FAIL_ABOVE, check_nodes
from .update_step import loss_after, sgd_settings, sgd_step

ASSETS = os.path.join(os.path.dirname(__file__), "explorer_assets")
#: a graph with more visible units than this opens with every scope collapsed
#: and nothing else expanded (the page stays quick to open)
MAX_OPEN_UNITS = 400
HIST_BINS = 24
STATS_BLOCK = 1 << 18  # elements per block of the statistics' float64 sums
HIST_SAMPLE = 1 << 20  # histograms of bigger arrays take every k-th element
THUMB_MAPS = 8      # feature maps / filters per 4-D value
THUMB_SIDE = 32     # pixels (a bigger map is subsampled)
#: seconds the gradient checks may take when the page is written (the rest are marked "not computed")
CHECK_SECONDS = 3.0


# --------------------------------------------------------------------------- values
def value_stats(value, gradient=False):
    """Statistics of one array, as the explorer and ``to_dot(feed=...)`` show them:
    ``shape, dtype, mean, std, min, max, zero`` (fraction of exact zeros: dead
    ReLUs), ``norm`` (2-norm), over the finite elements with float64 sums, and
    a histogram (``hist``: HIST_BINS counts over ``[hist_lo, hist_hi]``; of
    every ``hist_step``-th element where there are more than HIST_SAMPLE)."""
    a = np.asarray(value)
    out = {"shape": [int(d) for d in a.shape], "dtype": a.dtype.name, "size": int(a.size),
           "gradient": bool(gradient)}
    if a.size == 0 or a.dtype.kind not in "fiub":
        return out
    flat = a.reshape(-1)
    if a.dtype.kind == "b":
        flat = flat.astype(np.uint8)
    elif a.dtype.kind == "f" and not np.isfinite(flat).all():
        flat = flat[np.isfinite(flat)]
        out["nonfinite"] = int(a.size - flat.size)
        if flat.size == 0:
            return out
    n = flat.size
    mean = float(np.sum(flat, dtype=np.float64)) / n
    sumsq = deviations = 0.0
    buf, sq = np.empty(min(n, STATS_BLOCK)), np.empty(min(n, STATS_BLOCK))
    for k in range(0, n, STATS_BLOCK):  # float64 blocks in reused buffers: no float64 copy of a big weight
        m = min(STATS_BLOCK, n - k)
        f, f2 = buf[:m], sq[:m]
        f[...] = flat[k:k + m]
        sumsq += float(np.multiply(f, f, out=f2).sum())  # ufuncs, not BLAS dot: no spinning BLAS threads
        f -= mean
        deviations += float(np.multiply(f, f, out=f2).sum())
    lo, hi = float(flat.min()), float(flat.max())
    step = max(1, -(-n // HIST_SAMPLE))
    counts, _ = np.histogram(flat[::step], bins=HIST_BINS, range=(lo, hi if hi > lo else lo + 1.0))
    out.update(mean=mean, std=float(np.sqrt(deviations / n)), min=lo, max=hi,
               zero=int(np.count_nonzero(flat == 0)) / n, norm=float(np.sqrt(sumsq)),
               hist=[int(c) for c in counts], hist_lo=lo, hist_hi=hi, hist_step=step)
    return out


def _thumbnails(value, is_weight):
    """Up to THUMB_MAPS maps of a 4-D value as 8-bit pictures (base64): example 0's
    feature maps of an activation, the first filters of a weight (RGB where it
    has 3 input channels). Each map is scaled to its own min..max."""
    a = np.asarray(value)
    if a.ndim != 4 or a.dtype.kind != "f" or a.size == 0:
        return None
    if is_weight:
        rgb = a.shape[1] == 3
        maps = [a[o].transpose(1, 2, 0) if rgb else a[o, 0] for o in range(min(THUMB_MAPS, a.shape[0]))]
    else:
        rgb = False
        maps = [a[0, c] for c in range(min(THUMB_MAPS, a.shape[1]))]
    h, w = maps[0].shape[:2]
    step = max(1, -(-max(h, w) // THUMB_SIDE))
    pictures = []
    for m in maps:
        m = np.asarray(m[::step, ::step], dtype=np.float64)
        m = np.nan_to_num(m)
        lo, hi = m.min(), m.max()
        u8 = np.zeros(m.shape, np.uint8) if hi <= lo else ((m - lo) / (hi - lo) * 255).round().astype(np.uint8)
        pictures.append(base64.b64encode(np.ascontiguousarray(u8).tobytes()).decode("ascii"))
    sh, sw = maps[0][::step, ::step].shape[:2]
    return {"h": int(sh), "w": int(sw), "channels": 3 if rgb else 1, "step": step, "maps": pictures,
            "what": "filters" if is_weight else "feature maps of example 0"}


def _normalize_feed(feed):
    """``{placeholder Tensor or its name: array}`` -> ``{Tensor: array}``, names
    resolved later against the graph's placeholders."""
    if feed is None:
        return None
    if not isinstance(feed, dict):
        raise TypeError(f"feed must be a dict {{placeholder: array}}, got {type(feed).__name__}")
    return dict(feed)


def compute_values(nodes, feed, training=False, seed=0):
    """Every node's value, from one compiled program whose outputs are all the
    op nodes (so the numbers are the compiled program's): ``{id(node): array}``.
    A feed that does not fit the placeholders raises ``gd.InputError`` from
    the program, exactly as a direct call would."""
    placeholders = [n for n in nodes if n.kind == "placeholder"]
    by_name = {p.name: p for p in placeholders}
    resolved = {}
    for key, value in feed.items():
        if isinstance(key, str):
            if key not in by_name:
                raise gd.InputError(f"explore: feed names {key!r}, which is not a placeholder of the graph "
                                    f"(placeholders: {', '.join(by_name) or 'none'})")
            key = by_name[key]
        if not isinstance(key, gd.Tensor) or key.kind != "placeholder":
            raise gd.InputError(f"explore: feed keys must be placeholders (or their names), got {key!r}")
        resolved[id(key)] = (key, value)
    extra = [t.name for i, (t, _) in resolved.items() if i not in {id(p) for p in placeholders}]
    if extra:
        raise gd.InputError(f"explore: feed gives placeholder(s) {', '.join(map(repr, extra))}, "
                            f"which the graph does not read")
    ops = [n for n in nodes if n.kind not in ("placeholder", "variable", "constant")]
    values = {}
    if ops:
        # where the variables live on the GPU (a model trained with CuPy), run there
        on_gpu = any(type(n.value).__module__.startswith("cupy") for n in nodes if n.kind == "variable")
        program = gd.compile(ops, inputs=placeholders, training=training, seed=seed,
                             backend="cupy" if on_gpu else "numpy")
        # every placeholder in its place, None where the feed has none: the program
        # then names what is missing, as a direct call does
        results = program(*[resolved[id(p)][1] if id(p) in resolved else None for p in placeholders])
        values.update((id(n), np.asarray(r)) for n, r in zip(ops, results))
    for n in nodes:
        if n.kind == "placeholder" and id(n) in resolved:
            values[id(n)] = np.asarray(resolved[id(n)][1]).astype(n.dtype, copy=False)  # as the program cast it
        elif n.kind == "variable":
            values[id(n)] = np.asarray(to_host_array(n.value))  # a CuPy variable: copied to the host
        elif n.kind == "constant":
            values[id(n)] = np.asarray(n.op.value)
    return values


# --------------------------------------------------------------------------- rules (docstrings)
def _doc(obj):
    text = inspect.getdoc(obj) or ""
    return text.strip()


def _table_rule(table, fn):
    """The VJP line of an elementwise op from its table (``lambda x, y, g: relu_grad(y, g)``)."""
    entry = table.get(fn)
    if entry is None:
        return ""
    try:
        line = inspect.getsource(entry[1]).strip()
    except (OSError, TypeError):
        return ""
    m = re.search(r"lambda ((?:a, b, )?(?:x, )?y, g): (.*?),\s+np\.\w+\),?$", line)
    return f"vjp({m.group(1)}) = {m.group(2).strip()}" if m else line


def rule_text(op):
    """What the explorer shows as an op's rule: its formula and VJP, from the
    op's own docstring (an elementwise op: its line of the VJP table)."""
    from graphdiff.ops import elementwise as ew

    if isinstance(op, ew.Unary):
        func = getattr(gd, op.fn, None)
        doc = _doc(func) if func is not None and op.fn == "relu" else f"Elementwise {op.fn}."
        return f"{doc}\n\n{op.fn}: {_table_rule(ew.UNARY, op.fn)}"
    if isinstance(op, ew.Binary):
        return f"Elementwise {op.fn}, NumPy broadcasting.\n\n{op.fn}: {_table_rule(ew.BINARY, op.fn)}"
    doc = _doc(type(op))
    if not doc or doc == _doc(gd.Op):
        module = inspect.getmodule(type(op))
        func = getattr(module, op.name, None) if module is not None else None
        doc = _doc(func) if func is not None else ""
    return doc


# --------------------------------------------------------------------------- element-level pictures
def _grid(a):
    return [[float(v) for v in row] for row in np.asarray(a, dtype=np.float64)]


def _conv_picture(node, values, grad_at):
    """The slides' pseudo-graph of one small slice of a real convolution:
    example 0, input channel 0, filter 0, an n x n crop of the (unpadded) input.
    ``Y`` is that channel's share over the crop, ``dX`` the input gradient the
    crop's ``dE`` gathers (``sum_ab W_ab dE_(i-a)(j-b)``)."""
    x, w = node.inputs[:2]
    if id(x) not in values or id(w) not in values:
        return None
    X, W = values[id(x)], values[id(w)]
    m = W.shape[2]
    if W.shape[2] != W.shape[3] or m > 5 or min(X.shape[2:]) < m or node.op.attrs.get("dilation", (1, 1)) != (1, 1):
        return None  # the picture draws the slides' undilated Y_ij = sum_ab W_ab X_(i+a)(j+b)
    n = min(min(X.shape[2:]), m + 3)
    k = n - m + 1
    Xc, Wc = X[0, 0, :n, :n].astype(np.float64), W[0, 0].astype(np.float64)
    Y = np.array([[np.sum(Wc * Xc[i:i + m, j:j + m]) for j in range(k)] for i in range(k)])
    pic = {"kind": "conv", "n": n, "m": m, "X": _grid(Xc), "W": _grid(Wc), "Y": _grid(Y),
           "caption": f"{node.name}: example 0, input channel 0, filter 0, a {n}x{n} crop of the input "
                      f"(without padding or stride): Y_ij = sum_ab W_ab X_(i+a)(j+b), this channel's share"}
    g = grad_at.get(id(node))
    if g is not None and id(g) in values and node.op.stride == (1, 1):
        # The crop's own dE: the outputs whose windows lie inside it, at their position in Y
        # (offset by the top/left padding; padding may be ((top, bottom), (left, right))).
        ph, pw = (p if isinstance(p, int) else p[0] for p in node.op.padding)
        dY = values[id(g)][0, 0].astype(np.float64)
        if dY.shape[0] >= ph + k and dY.shape[1] >= pw + k:
            dE = dY[ph:ph + k, pw:pw + k]
            dX = np.zeros((n, n))
            for i in range(n):
                for j in range(n):
                    dX[i, j] = sum(Wc[a, b] * dE[i - a, j - b] for a in range(m) for b in range(m)
                                   if 0 <= i - a < k and 0 <= j - b < k)
            pic.update(dE=_grid(dE), dX=_grid(dX))
    return pic


def _relu_picture(node, values, grad_at, made_by):
    """ReLU as a switch from a real forward pass: the first elements of ``x``,
    the switch ``y > 0``, the gradient arriving and the gradient leaving."""
    x = node.inputs[0]
    if id(x) not in values or id(node) not in values:
        return None
    count = 8
    X, Y = values[id(x)].reshape(-1)[:count], values[id(node)].reshape(-1)[:count]
    pic = {"kind": "relu", "x": [float(v) for v in X], "y": [float(v) for v in Y],
           "switch": [bool(v > 0) for v in Y],
           "caption": f"{node.name}: the first {len(X)} elements; the switch is open where y > 0"}
    g = grad_at.get(id(node))
    out = next((b for b in made_by.get(id(node), ()) if b.shape == node.shape and b.op.name in ("relu_grad", "mul")
                and g is not None and g in b.inputs), None)
    if g is not None and id(g) in values and out is not None and id(out) in values:
        gin, gout = np.broadcast_to(values[id(g)], values[id(node)].shape), values[id(out)]
        pic.update(g_in=[float(v) for v in gin.reshape(-1)[:count]], g_out=[float(v) for v in gout.reshape(-1)[:count]],
                   g_in_node=g.name, g_out_node=out.name)
    return pic


def _pool_picture(node, values, grad_at):
    """Max pooling's gradient as a multiplexer on a real input: example 0,
    channel 0, the crop under the first 2x2 windows; each window's maximum
    routes its ``dE`` to one input."""
    x = node.inputs[0]
    (kh, kw), (sh, sw), (ph, pw) = node.op.size, node.op.stride, node.op.padding
    # Drawn for plain windows only: no padding on either side, no dilation.
    if id(x) not in values or (ph, pw) != (0, 0) or node.op.padding_end != (0, 0) or node.op.dilation != (1, 1):
        return None
    X = values[id(x)][0, 0].astype(np.float64)
    oh, ow = (X.shape[0] - kh) // sh + 1, (X.shape[1] - kw) // sw + 1
    wi, wj = min(2, oh), min(2, ow)
    rows, cols = kh + sh * (wi - 1), kw + sw * (wj - 1)
    crop = X[:rows, :cols]
    windows = []
    for i in range(wi):
        for j in range(wj):
            win = crop[i * sh:i * sh + kh, j * sw:j * sw + kw]
            a, b = np.unravel_index(int(np.argmax(win)), win.shape)
            windows.append({"i": i, "j": j, "r0": i * sh, "c0": j * sw, "argmax": [int(i * sh + a), int(j * sw + b)],
                            "max": float(win[a, b])})
    pic = {"kind": "pool", "X": _grid(crop), "size": [kh, kw], "stride": [sh, sw], "windows": windows,
           "caption": f"{node.name}: example 0, channel 0, the input under the first {wi}x{wj} windows"}
    g = grad_at.get(id(node))
    if g is not None and id(g) in values:
        dY = np.broadcast_to(values[id(g)], values[id(node)].shape)[0, 0].astype(np.float64)
        routed = np.zeros_like(crop)
        for win in windows:
            win["dE"] = float(dY[win["i"], win["j"]])
            routed[tuple(win["argmax"])] += win["dE"]
        pic["dX"] = _grid(routed)
    return pic


def _lrn_picture(node, values, grad_at, made_by):
    """LRN's refactored gradient on real numbers: example 0, pixel (0, 0), the
    first channels: ``x``, ``scale = k + alpha S(x^2)``, ``y = x scale^-beta``
    and, with the backward pass, ``dy``, ``S^T(dy y / scale)`` (summed here
    over all the channels) and ``dx`` (the ``lrn_grad`` node's value), so that
    ``dx_l = dy_l scale_l^-beta - 2 alpha beta x_l S^T(dy y / scale)_l`` can be
    read off with its numbers."""
    x, scale = node.inputs
    if any(id(t) not in values for t in (x, scale, node)) or len(node.shape) != 4:
        return None
    op = node.op
    X, SC, Y = (values[id(t)][0, :, 0, 0].astype(np.float64) for t in (x, scale, node))
    channels = X.shape[0]
    count = min(channels, 8)
    pic = {"kind": "lrn", "size": int(op.size), "alpha": float(op.alpha), "beta": float(op.beta), "k": float(op.k),
           "x": [float(v) for v in X[:count]], "scale": [float(v) for v in SC[:count]], "y": [float(v) for v in Y[:count]],
           "caption": f"{node.name}: example 0, pixel (0, 0), channels 0-{count - 1} of {channels}; "
                      f"scale_l = k + alpha sum_(q in Nbr(l)) x_q^2 (size {op.size})"}
    g = grad_at.get(id(node))
    out = next((b for b in made_by.get(id(node), ()) if b.op.name.endswith("_grad") and g is not None and g in b.inputs), None)
    if g is not None and out is not None and id(g) in values and id(out) in values:
        dY = np.broadcast_to(values[id(g)], values[id(node)].shape)[0, :, 0, 0].astype(np.float64)
        t = dY * Y / SC
        lo, hi = (op.size - 1) // 2, op.size // 2  # S^T sums the q whose window holds l
        st = [float(t[max(0, c - lo):min(channels, c + hi + 1)].sum()) for c in range(count)]
        pic.update(dy=[float(v) for v in dY[:count]], st=st,
                   dx=[float(v) for v in values[id(out)][0, :count, 0, 0]], dx_node=out.name)
    return pic


# --------------------------------------------------------------------------- memory plan
def _static_bytes(node, batch):
    n = 1
    for d in node.shape:
        n *= batch if d is None else d
    return int(n) * node.dtype.itemsize


def memory_plan(program, batch=1):
    """The memory plan of a compiled program's schedule, for the timeline.

    Lifetimes: one per alias group (a view shares its input's buffer) of op
    nodes, from the op that writes it to the last reader of the group (an
    output lives to the end), with bytes from the static shapes (``None``
    dimensions as ``batch``); ``live`` sums them per step, ``peak_bytes`` is
    its maximum. Where the program has run, ``planned`` holds its real buffers
    (``Program.buffer_plan``): each output written into buffer number
    ``buffer``, so that reuse along the schedule shows; else ``buffer`` is a
    lane packed here."""
    order = program.nodes
    slot = {id(n): i for i, n in enumerate(order)}
    last = {}
    for i, n in enumerate(order):
        for x in n.inputs:
            last[slot[id(x)]] = i
    root, end = {}, {}
    for i, n in enumerate(order):
        root[i] = root[slot[id(n.inputs[0])]] if n.op.is_view and n.inputs else i
        r = root[i]
        end[r] = max(end.get(r, i), last.get(i, i))
    last_named = {n.name: i for i, n in enumerate(order)}  # rewrites keep names
    kept = {last_named[r.name] for r in program.outputs if r.name in last_named}
    parts = {}  # (slot of a multi-output op, output index) -> slot of its Part node
    for i, n in enumerate(order):
        if isinstance(n.op, gd.graph.Part):
            parts[(slot[id(n.inputs[0])], n.op.index)] = i
    leaf = ("placeholder", "variable", "constant")
    buffers, live = [], [0] * len(order)
    for i, n in enumerate(order):
        if root[i] != i or n.kind in leaf or isinstance(n.op, gd.graph.Part) or n.op.num_outputs > 1:
            continue
        stop = len(order) - 1 if i in kept else end[i]
        buffers.append({"id": n.id, "name": n.name, "start": i, "end": stop, "bytes": _static_bytes(n, batch),
                        "backward": bool(n.backward)})
    for i, n in enumerate(order):  # each output of a multi-output op lives as long as its part
        if n.op.num_outputs > 1:
            for j in range(n.op.num_outputs):
                p = parts.get((i, j))
                if p is not None and root[p] == p:
                    stop = len(order) - 1 if p in kept else end[p]
                    buffers.append({"id": order[p].id, "name": order[p].name, "start": i, "end": stop,
                                    "bytes": _static_bytes(order[p], batch), "backward": bool(n.backward)})
    for b in buffers:
        for k in range(b["start"], b["end"] + 1):
            live[k] += b["bytes"]
    out = {"buffers": buffers, "steps": len(order), "peak_bytes": int(max(live, default=0)), "live": live,
           "batch": batch, "peak_step": int(np.argmax(live)) if live else 0, "planned": None}
    real = program.buffer_plan() if hasattr(program, "buffer_plan") else None
    if real is not None:
        rows, sizes = real
        number = {}
        for node, row in rows:
            i = slot[id(node)]
            for j, k in enumerate(row):
                number[order[parts[(i, j)]].id if (i, j) in parts else node.id] = k
        for b in buffers:
            b["buffer"] = number.get(b["id"])
        out["planned"] = {"sizes": sizes, "total_bytes": int(sum(sizes)),
                          "outputs": sum(1 for b in buffers if b.get("buffer") is not None)}
    return out


# --------------------------------------------------------------------------- the page's data
def _node_record(t):
    vjp_of, gradient_of = provenance(t)
    rec = {"id": t.id, "name": t.name, "op": t.op.name, "label": _label(t), "kind": t.kind,
           "backward": bool(t.backward), "grad_op": t.op.kind == "gradient", "scope": t.scope or "",
           "shape": shape_label(t.shape), "dtype": t.dtype.name, "inputs": [i.id for i in t.inputs]}
    if vjp_of is not None:
        rec["vjp_of"] = vjp_of.id
    if gradient_of is not None:
        rec["gradient_of"] = gradient_of.id
    if t.kind == "constant" and t.op.value.size == 1:
        rec["label"] = f"{t.op.value.item():g}" if t.name.rsplit("/", 1)[-1] != "grad_seed" else "grad_seed 1"
    return rec


def _label(t):
    if t.kind in ("placeholder", "variable"):
        return t.name.rsplit("/", 1)[-1] if t.scope else t.name
    if t.kind == "constant":
        return t.op.describe()
    return op_label(t.op, width=30, max_lines=2).replace("\n", " ")


def _fused_members(node, previous):
    """The nodes of the graph before fusion that a fused node replaces: walking
    down from the node of the same name, stopping at the fused node's inputs."""
    by_name = {}
    for n in previous:
        by_name.setdefault(n.name, n)
    head = by_name.get(node.name)
    if head is None:
        return []
    stop = {i.name for i in node.inputs}
    members, stack, seen = [], [head], set()
    while stack:
        n = stack.pop()
        if id(n) in seen or n.name in stop or n.kind in ("placeholder", "variable", "constant"):
            continue
        seen.add(id(n))
        members.append(n)
        stack.extend(n.inputs)
    return members if len(members) > 1 else []


def build_data(outputs, feed=None, params=None, program=None, title=None, training=False,
               check_seconds=CHECK_SECONDS, sgd=None):
    """The explorer's data (a JSON-able dict): nodes, values, rules (text and
    TeX), pictures, parameters with their gradients, the gradient checks, one
    SGD step, and the compiler's passes."""
    outputs = as_outputs(outputs) if outputs is not None else []
    param_names = {}
    if params is not None:
        if isinstance(params, dict):
            param_names = {id(p): name for name, p in params.items()}
        params = _params_list(params)
        have = {id(provenance(n)[1]) for n in gd.toposort(outputs) if provenance(n)[1] is not None}
        missing = [p for p in params if id(p) not in have]
        if missing and outputs:
            loss = outputs[0]
            outputs = outputs + gd.grad(loss, missing)
    nodes = gd.toposort(outputs)
    records = {}
    for t in nodes:
        records[t.id] = _node_record(t)
    shown = shown_scopes(nodes)  # a loose parameter is shown in the layer that reads it
    for t in nodes:
        records[t.id]["scope"] = shown[id(t)]
    values = compute_values(nodes, _normalize_feed(feed), training=training) if feed is not None else {}

    grad_at = {}   # id(forward node) -> the accumulated gradient node reaching it
    made_by = {}   # id(forward node) -> backward nodes its VJP rule built
    for t in nodes:
        vjp_of, gradient_of = provenance(t)
        if gradient_of is not None:
            grad_at.setdefault(id(gradient_of), t)
        if vjp_of is not None:
            made_by.setdefault(id(vjp_of), []).append(t)
    in_graph = {id(t) for t in nodes}

    rules, pictures = {}, {}
    for t in nodes:
        rec = records[t.id]
        if id(t) in values:
            rec["stats"] = value_stats(values[id(t)], gradient=t.backward)
            of = provenance(t)[1]
            thumbs = _thumbnails(values[id(t)], t.kind == "variable" or (of is not None and of.kind == "variable"))
            if thumbs is not None:
                rec["thumbs"] = thumbs
        if t.kind not in ("placeholder", "variable", "constant"):
            key = type(t.op).__name__ if not hasattr(t.op, "fn") else f"{type(t.op).__name__}.{t.op.fn}"
            if key not in rules:
                rules[key] = rule_text(t.op)
            rec["rule"] = key
        if values and t.kind == "forward" and id(t) in made_by:
            pic = None
            if t.op.name == "conv2d":
                pic = _conv_picture(t, values, grad_at)
            elif t.op.name == "relu":
                pic = _relu_picture(t, values, grad_at, made_by)
            elif t.op.name == "max_pool2d":
                pic = _pool_picture(t, values, grad_at)
            elif t.op.name == "lrn_normalize":
                pic = _lrn_picture(t, values, grad_at, made_by)
            if pic is not None:
                pictures[t.id] = pic

    param_list = params if params is not None else [t for t in nodes if t.kind == "variable"]
    param_recs = []
    for p in param_list:
        g = grad_at.get(id(p))
        if id(p) in in_graph:
            param_recs.append({"name": p.name, "id": p.id, "grad": g.id if g is not None and id(g) in in_graph else None})
    backward = [t.id for t in nodes if t.backward and t.kind not in ("constant",)]
    used_ops = {t.op.name for t in nodes}
    formulas = {name: tex for name, tex in FORMULAS.items() if name in used_ops}

    checks = {}
    if values and check_seconds:
        # the VJP rules the backward pass used, in the order it runs them (from the loss down)
        checked = [t for t in reversed(nodes) if t.kind == "forward" and id(t) in made_by]
        results = check_nodes(checked, values, budget_s=check_seconds)
        for t in checked:
            checks[str(t.id)] = _json_check(results[id(t)])
    update = _update_step(outputs, nodes, values, param_list, param_names, grad_at, in_graph, sgd, training,
                          records) if values else None

    program_data = _program_data(program, records, feed) if program is not None else None  # adds records
    data = {"title": title or "graphdiff explorer", "nodes": list(records.values()),
            "graph": [t.id for t in nodes], "outputs": [o.id for o in outputs], "rules": rules,
            "pictures": {str(k): v for k, v in pictures.items()}, "params": param_recs,
            "backward_schedule": backward, "has_values": bool(values), "max_open_units": MAX_OPEN_UNITS,
            "formulas": formulas, "checks": checks, "check_fail_above": FAIL_ABOVE,
            "check_seconds": check_seconds if values else 0}
    if update is not None:
        data["update"] = update
    if program_data is not None:
        data["program"] = program_data
    return data


def _json_check(r):
    """A check's result for the page: no infinities (JSON), numbers as floats."""
    def clean(d):
        d = dict(d)
        for k in ("error", "analytic", "numeric", "seconds"):
            if k in d and d[k] is not None and not np.isfinite(d[k]):
                d[k] = None
        return d

    out = clean(r)
    if "inputs" in out:
        out["inputs"] = [clean(i) for i in out["inputs"]]
    if "error" in out and out["error"] is None:
        out["ok"] = False
    return out


def _update_step(outputs, nodes, values, param_list, param_names, grad_at, in_graph, sgd, training, records):
    """One SGD step on the batch shown (see :mod:`visualize.update_step`): per
    parameter ``w``, ``w'`` and ``v`` with statistics, filter thumbnails and
    the ratio ``||v|| / ||w||``; the loss before and after. ``w``'s statistics
    and thumbnails are its node record's (``records``), already computed."""
    lr, momentum, decay, velocities, source = sgd_settings(sgd)
    rows, new_values = [], {}
    for p in param_list:
        g = grad_at.get(id(p))
        if id(p) not in in_graph or g is None or id(g) not in values or id(p) not in values:
            continue
        name = param_names.get(id(p), p.name)
        vel = velocities.get(name, velocities.get(p.name))
        v_prev = None if vel is None else np.asarray(to_host_array(vel.value))
        w = values[id(p)]
        v, after = sgd_step(w, values[id(g)], v_prev, lr, momentum, decay)
        new_values[p] = after
        before_st = records[p.id]["stats"]  # p is in the graph and has a value: its record has them
        after_st, v_st = value_stats(after), value_stats(v)
        row = {"name": p.name, "id": p.id, "grad": g.id, "before": before_st, "after": after_st, "v": v_st,
               "ratio": (v_st.get("norm", 0.0) / before_st["norm"]) if before_st.get("norm") else None,
               "momentum_buffer": v_prev is not None}
        # the ratio weight by weight, log10 |v| / |w| (every k-th weight of a big one, as the histograms)
        step = max(1, -(-w.size // HIST_SAMPLE))
        ws, vs = np.abs(w.reshape(-1)[::step]).astype(np.float64), np.abs(v.reshape(-1)[::step]).astype(np.float64)
        keep = (ws > 0) & (vs > 0)
        if keep.any():
            row["log_ratio"] = value_stats(np.log10(vs[keep] / ws[keep]))
            row["log_ratio"]["hist_step"] = step
        for key, a in (("before", w), ("after", after), ("v", v)):
            # a variable's w is drawn in its record already (as filters, the same pictures)
            th = records[p.id].get("thumbs") if key == "before" and p.kind == "variable" else _thumbnails(a, True)
            if th is not None:
                row["thumbs_" + key] = th
        rows.append(row)
    out = {"lr": lr, "momentum": momentum, "weight_decay": decay, "source": source, "params": rows,
           "training": bool(training)}
    loss = outputs[0] if outputs else None
    if (rows and loss is not None and loss.shape == () and loss.dtype.kind == "f" and id(loss) in values
            and not any(type(p.value).__module__.startswith("cupy") for p in new_values)):
        out["loss_before"] = float(values[id(loss)])
        try:
            out["loss_after"] = loss_after(loss, nodes, values, new_values, training=training)
        except Exception:  # noqa: BLE001 - the loss after is a bonus; the step's numbers stand without it
            pass
    return out


def _params_list(params):
    if isinstance(params, gd.Tensor):
        return [params]
    if isinstance(params, dict):
        return list(params.values())
    return list(params)


def _program_data(program, records, feed):
    if not isinstance(program, gd.Program):
        raise TypeError(f"program must be a compiled gd.Program, got {type(program).__name__}")
    passes = list(getattr(program, "passes", None) or [("schedule", program.nodes)])
    out = {"passes": []}
    previous = unfused = None  # unfused: the graph before the rewriting passes, what their ops replace
    for record in passes:
        name, order = record
        for t in order:
            if t.id not in records:
                records[t.id] = _node_record(t)
        entry = {"name": name, "nodes": [t.id for t in order]}
        if name == "rewrite":  # how often each rewrite rule fired, by rule name
            entry["rules"] = dict(getattr(record, "rules", {}))
        if previous is not None:
            # A pass rebuilds every node downstream of one it replaces (same name, same op):
            # "new" are the nodes it made (a fused op, a folded constant), "removed" those it dropped.
            before = {id(t) for t in previous}
            kinds_before = {(t.name, t.op.name) for t in previous}
            kinds_now = {(t.name, t.op.name) for t in order}
            entry["new"] = [t.id for t in order if id(t) not in before and (t.name, t.op.name) not in kinds_before]
            entry["removed"] = sum((t.name, t.op.name) not in kinds_now for t in previous)
            if name in ("rewrite", "fusion"):  # a fused op (conv + ReLU, a chain) opens into its members
                unfused = previous if unfused is None else unfused
                base = {id(t) for t in unfused}
                members = {}
                for t in order:
                    if id(t) not in base and t.op.name != "part":
                        m = _fused_members(t, unfused)
                        if m:
                            members[str(t.id)] = [x.id for x in m]
                            for x in m:
                                records.setdefault(x.id, _node_record(x))
                entry["members"] = members
        out["passes"].append(entry)
        previous = order
    for t in program.nodes:
        op = t.op
        if op.name == "fused_elementwise":
            steps = [f"t{j} = {fn}({', '.join(('in' if kind == 'in' else 't') + str(k) for kind, k in args)})"
                     for j, (fn, args) in enumerate(op.program)]
            records[t.id]["fused"] = {"text": op.text, "steps": steps,
                                      "inputs": [f"in{k} = {i.name}" for k, i in enumerate(t.inputs)]}
    batch = 1
    if feed:
        first = next(iter(feed.values()))
        batch = int(np.shape(first)[0]) if np.ndim(first) else 1
    out["memory"] = memory_plan(program, batch)
    out["schedule"] = [t.id for t in program.nodes]
    if getattr(program, "last_profile", None):
        out["profile"] = {str(n.id): float(s) for n, s in program.last_profile}
    return out


# --------------------------------------------------------------------------- the page
def _asset(name):
    with open(os.path.join(ASSETS, name), encoding="utf-8") as f:
        return f.read()


def page_html(data):
    """The self-contained page: CSS, data and scripts inlined (KaTeX, vendored
    in ``explorer_assets/katex`` with its fonts as data URLs, typesets the
    formulas: about 0.5 MB of the page)."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = html.escape(data.get("title", "graphdiff explorer"))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n"
            f"<style>{_asset('katex/katex.css')}</style>\n"
            f"<style>{_asset('explorer.css')}</style></head>\n<body>\n{_asset('explorer.html')}\n"
            f"<script id=\"gd-data\" type=\"application/json\">{payload}</script>\n"
            f"<script>{_asset('katex/katex.min.js')}</script>\n"
            f"<script>{_asset('explorer.js')}</script>\n</body></html>\n")


class Explorer:
    """The explorer page: ``.html`` (the page's text), ``.data`` (what it shows),
    ``.path`` (where it was written, or None), ``save(path)``; shows inline
    in Jupyter (``_repr_html_``: the page in an iframe, so that several
    explorers in one notebook keep their own scripts and styles)."""

    def __init__(self, data):
        self.data = data
        self.html = page_html(data)
        self.path = None

    def save(self, path):
        """Write the page to ``path`` atomically (a temporary file, then a rename:
        a failed write, e.g. a full disk, leaves neither a half page nor the
        temporary file)."""
        path = os.fspath(path)
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(self.html)
        self.path = path
        return path

    def _repr_html_(self):
        return (f'<iframe class="graphdiff-explorer" srcdoc="{html.escape(self.html, quote=True)}" '
                f'style="width:100%;height:720px;border:1px solid #ccc" sandbox="allow-scripts"></iframe>')

    def __repr__(self):
        n = len(self.data["graph"])
        return f"<Explorer: {n} nodes{', values' if self.data['has_values'] else ''}" + \
            (f", written to {self.path}>" if self.path else ">")


def explore(outputs, feed=None, params=None, program=None, path=None, *, title=None, training=False,
            check_seconds=CHECK_SECONDS, sgd=None):
    """Build the interactive explorer of the graph ``outputs`` depend on.

    * ``outputs``: a Tensor, a list (``[loss, *grads]`` for both passes), or a
      model with ``.loss`` (then its ``.params`` are the default ``params``).
    * ``feed``: ``{placeholder: array}`` (or placeholder names): every node's
      values are computed by one compiled program and shown (statistics,
      histogram, thumbnails, the element-level pictures). A feed that does not
      fit raises ``gd.InputError`` as the compiled program would.
    * ``params``: parameters (Variables, a list or a ``name -> Variable``
      dict) to offer for the gradient path; where the outputs lack their
      gradients, ``gd.grad(outputs[0], params)`` adds them.
    * ``program``: a compiled ``gd.Program``: the graph after each compiler
      pass, fused ops' members, the memory plan, and the profile if
      ``program.profile(...)`` ran.
    * ``path``: write the page there (one self-contained HTML file).
    * ``training``: compile the values with dropout on (default off).
    * ``check_seconds``: the time the gradient checks may take (one float64
      finite-difference check of each VJP rule the backward pass uses, see
      :mod:`visualize.gradcheck`; 0: none). Nodes past it are marked.
    * ``sgd``: the settings of the update view's SGD step: a training step
      (``models.alexnet.train_step(...)``: its rate, momentum, decay and
      momentum buffers), an ``SGDState``, or a dict of ``lr``, ``momentum``,
      ``weight_decay``; default ``sgd_momentum``'s (the training command's
      defaults) with a zero momentum buffer.

    Returns an :class:`Explorer` (inline in Jupyter).
    """
    if params is None and not isinstance(outputs, (gd.Tensor, list, tuple, gd.Program)) \
            and hasattr(outputs, "params") and hasattr(outputs, "loss"):
        params = outputs.params
    if outputs is None and program is not None:
        outputs = program.outputs
    if outputs is None or (isinstance(outputs, (list, tuple)) and not outputs):
        raise ValueError("explore: no outputs to show (give a tensor, a list of tensors, a model or program=)")
    page = Explorer(build_data(outputs, feed=feed, params=params, program=program, title=title,
                               training=training, check_seconds=check_seconds, sgd=sgd))
    if path is not None:
        page.save(path)
    return page
