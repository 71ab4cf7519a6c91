"""A gradient check per op node, for the explorer: each VJP rule the backward
pass used, checked against a float64 finite difference at the batch shown.

For a forward node ``y = f(x_1, ..., x_n)`` with the batch's input values,
a random cotangent ``w`` (the shape of ``y``) and, for each differentiated
input ``x_k`` in turn, a random direction ``u`` (nonzero at ``SPARSE`` random
elements)::

    analytic = < VJP_k(w), u >                                         (the op's vjp, through gd.grad)
    numeric  = < w, f(.., x_k + eps u, ..) - f(.., x_k - eps u, ..) > / (2 eps)   (float64)
    error    = |analytic - numeric| / max(|analytic|, |numeric|, 1e-6 |VJP_k(w)| |u|)

The node's error is the largest over its inputs.

The inputs are cast to float64 (integer inputs, e.g. labels, are kept and
not differentiated). Ties and kinks are nudged off the activations (not the
weights: nothing takes a max over them): exact zeros (dead ReLUs feeding a
max pool) by ``TIE_JITTER`` of the input's RMS, every other element by a
relative ``RELATIVE_JITTER`` (an upsampled image repeats values: equal
inputs of one max), so that no difference straddles a kink; the direction is
sparse so that the few elements it moves are unlikely to cross one. An input the op's VJP leaves
to another path (LRN's ``scale``, a function of ``x``: ``lrn_normalize``'s
VJP wrt ``x`` is the whole derivative) is rebuilt from the others inside
the checked function. A check that fails is tried once more at a fresh
direction (a kink crossed by chance does not repeat; a wrong rule does).
"""
from __future__ import annotations

import time

import numpy as np

import graphdiff as gd
from graphdiff.graph import apply

#: a relative error above this marks the node red
FAIL_ABOVE = 1e-3
SPARSE = 32          # elements of each input the direction moves
EPS = 1e-7           # step, relative to the input's RMS
TIE_JITTER = 1e-2    # exact zeros become +-(1..2) * this * RMS
RELATIVE_JITTER = 1e-4  # every other element is scaled by 1 + this * N(0, 1)
LEAF = ("placeholder", "variable", "constant")


def _positions(rng, size):
    """SPARSE distinct positions out of ``size`` (all where there are fewer), without
    shuffling ``size`` numbers (a 38 M weight)."""
    if size <= 4 * SPARSE:
        return rng.choice(size, min(SPARSE, size), replace=False)
    pick = np.unique(rng.integers(0, size, 2 * SPARSE))
    return rng.permutation(pick)[:SPARSE]


def _sumsq(a):
    a = np.asarray(a, np.float64).reshape(-1)
    return float(np.einsum("i,i->", a, a))  # not BLAS: its threads crawl on a loaded machine


def _rms(a):
    a = np.asarray(a)
    r = float(np.sqrt(_sumsq(a) / a.size)) if a.size else 0.0
    return r if r > 0 and np.isfinite(r) else 1.0


def _position(node, j):
    return next(p for p, x in enumerate(node.inputs) if x is j)


def _plan(node):
    """``(wrt, derived)``: the input positions to differentiate, and those to
    rebuild from the others (a non-leaf input whose own inputs are all inputs of
    ``node``, that the op's VJP gives no gradient or whose op requires the
    structure, as ``lrn_normalize`` does). None: not checkable."""
    op = node.op
    if op.is_random or not op.differentiable or node.dtype.kind != "f" or not node.inputs:
        return None
    inputs = node.inputs
    candidates = [k for k, i in enumerate(inputs) if i.dtype.kind == "f" and i.kind not in LEAF and i.inputs
                  and all(any(j is x for x in inputs) for j in i.inputs)]
    for rebuilt in ([], candidates):
        try:
            probe = [gd.placeholder(tuple(1 if d is None else d for d in i.shape), i.dtype) for i in inputs]
            for k in rebuilt:
                probe[k] = apply(inputs[k].op, [probe[_position(node, j)] for j in inputs[k].inputs])
            y = apply(op, probe)
            rule = op.vjp(y, gd.placeholder(y.shape, y.dtype), [True] * len(probe))
        except Exception:  # noqa: BLE001 - an op that cannot be rebuilt alone is not checked
            continue
        wrt = [k for k, (i, r) in enumerate(zip(inputs, rule))
               if i.dtype.kind == "f" and i.kind != "constant" and k not in rebuilt and r is not None]
        derived = list(rebuilt) + [k for k in candidates if k not in rebuilt and rule[k] is None]
        return (wrt, derived) if wrt else None
    return None


def check_node(node, values, seed=0, tries=2):
    """The check of one forward node's VJP (see the module's docstring):
    ``{"error", "ok", "numeric", "analytic", "wrt" (input names), "tries"}``,
    or ``{"skipped": why}``."""
    plan = _plan(node)
    if plan is None:
        return {"skipped": "not differentiable here (random, integer or constant inputs)"}
    wrt, derived = plan
    if any(id(i) not in values for i in node.inputs):
        return {"skipped": "no values"}
    rng = np.random.default_rng([seed, node.id])
    arrays = []  # float inputs as float64 copies (also a float64 value: it is changed in place below)
    for k, i in enumerate(node.inputs):
        a = np.asarray(values[id(i)])
        if a.dtype.kind == "f":
            a = a.astype(np.float64, copy=True)
            if k in wrt and a.size and node.inputs[k].kind != "variable":
                # ties (an upsampled image repeats values; a max over equal inputs) and kinks (dead
                # ReLUs' zeros) nudged off: every element by a relative RELATIVE_JITTER, zeros to
                # +-(1..2) TIE_JITTER of the RMS. Not the weights: nothing takes a max over them
                # (and fc6's 38 M would cost seconds)
                zeros = a == 0
                a *= 1 + RELATIVE_JITTER * rng.standard_normal(a.shape)
                if zeros.any():
                    a[zeros] = (rng.random(int(zeros.sum())) + 1) * TIE_JITTER * _rms(a) \
                        * rng.choice([-1.0, 1.0], int(zeros.sum()))
        arrays.append(a)
    used = [k for k in range(len(arrays)) if k not in derived]
    xs = {k: gd.placeholder(arrays[k].shape, arrays[k].dtype, name=f"in{k}") for k in used}

    def build(inputs):
        ins = [inputs.get(k) for k in range(len(arrays))]
        for k in derived:
            src = node.inputs[k]
            ins[k] = apply(src.op, [inputs[_position(node, j)] for j in src.inputs])
        return apply(node.op, ins)

    y = build(xs)
    w = gd.placeholder(y.shape, "float64", name="w")
    grads = gd.grad(gd.sum(y * w), [xs[k] for k in wrt])
    order = [xs[k] for k in used]
    forward = gd.compile(y, inputs=order)
    backward = gd.compile(grads, inputs=order + [w])
    worst, per_input, pending = None, {}, list(wrt)
    for attempt in range(tries):
        wv = rng.standard_normal(tuple(y.shape))
        g = backward(*[arrays[k] for k in used], wv)
        g = dict(zip(wrt, g if isinstance(g, (list, tuple)) else [g]))
        for k in pending:  # one input at a time: a wrong rule for one input is not diluted by the others
            # the sparse direction u: values at the positions pick; x + eps u is written in place
            # and undone (no copy of a big weight)
            flat = arrays[k].reshape(-1)
            pick = _positions(rng, flat.size)
            u = rng.standard_normal(pick.size)
            gk = np.asarray(g[k], np.float64).reshape(-1)
            eps = EPS * _rms(arrays[k])
            saved = flat[pick].copy()
            try:
                flat[pick] = saved + eps * u
                # copies: a view's output (reshape) would change with the input below
                plus = np.array(forward(*[arrays[j] for j in used]), np.float64)
                flat[pick] = saved - eps * u
                minus = np.array(forward(*[arrays[j] for j in used]), np.float64)
            finally:
                flat[pick] = saved
            analytic = float(np.dot(gk[pick], u))
            numeric = float(np.vdot(wv, plus - minus)) / (2 * eps)
            # the floor: where the rule gives exact zeros at the moved elements (max pooling's unchosen
            # inputs), rounding noise in the difference must not count as a relative error of 1
            floor = 1e-6 * float(np.sqrt(_sumsq(gk) * _sumsq(u)))
            denom = max(abs(analytic), abs(numeric), floor)
            error = abs(analytic - numeric) / denom if denom > 0 else 0.0
            per_input[k] = {"input": node.inputs[k].name, "error": error if np.isfinite(error) else float("inf"),
                            "analytic": analytic, "numeric": numeric, "tries": attempt + 1}
        pending = [k for k in pending if not per_input[k]["error"] <= FAIL_ABOVE]
        if not pending:
            break
    worst = max(per_input.values(), key=lambda r: r["error"])
    return {"error": worst["error"], "ok": bool(worst["error"] <= FAIL_ABOVE), "analytic": worst["analytic"],
            "numeric": worst["numeric"], "wrt": [node.inputs[k].name for k in wrt],
            "inputs": [per_input[k] for k in wrt], "tries": max(r["tries"] for r in per_input.values())}


def check_nodes(nodes, values, budget_s=3.0, seed=0):
    """Checks of ``nodes`` (forward nodes whose VJP the graph used), cheapest
    first, until ``budget_s`` seconds are spent: ``{id(node): result}`` in the
    order of ``nodes``; the nodes past the budget get ``{"skipped": "time budget ..."}``."""
    out, start = {}, time.perf_counter()
    # the cheap checks first (cost ~ the elements read and written), so that a budget spent on a
    # huge dense layer leaves the fewest nodes unchecked
    cost = {id(n): sum(_size(i) for i in n.inputs) + _size(n) for n in nodes}
    for n in sorted(nodes, key=lambda n: cost[id(n)]):
        if time.perf_counter() - start > budget_s:
            out[id(n)] = {"skipped": f"time budget ({budget_s:g} s) spent"}
            continue
        t = time.perf_counter()
        try:
            r = check_node(n, values, seed=seed)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run says why, the page is still written
            r = {"skipped": f"{type(exc).__name__}: {exc}"}
        r["seconds"] = time.perf_counter() - t
        out[id(n)] = r
    return {id(n): out[id(n)] for n in nodes}


def _size(t):
    n = 1
    for d in t.shape:
        n *= 1 if d is None else d
    return n
