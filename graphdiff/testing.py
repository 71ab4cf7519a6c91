"""Gradient checking: central finite differences in float64 along random
directions, for a VJP and for a double VJP.

For ``f: inputs -> outputs`` and random directions ``u`` (per input) and ``w``
(per output) the check compares

    analytic  = sum_i < VJP_i(w), u_i >        (from ``graphdiff.grad``)
    numeric   = sum_k < w_k, (f(x + eps u) - f(x - eps u)) / (2 eps) >

and returns the relative error ``|analytic - numeric| / max(1, |numeric|)`` (one
number per direction). A double VJP is the VJP of ``(x, w) -> VJP(w)``.

    from graphdiff.testing import check_vjp, check_double_vjp
    assert max(check_vjp(lambda x: gd.tanh(x) * x, [np.random.randn(3, 4)])) < 1e-7
"""
import numpy as np

from .autodiff import grad
from .compiler import compile
from .graph import placeholder
from .ops import mul, sum


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _placeholders(arrays):
    return [placeholder(np.shape(a), dtype=np.asarray(a).dtype if np.asarray(a).dtype.kind in "iub" else "float64",
                        name=f"input{i}") for i, a in enumerate(arrays)]


def _is_float(a):
    return np.asarray(a).dtype.kind == "f"


def check_vjp(build, arrays, directions=3, eps=1e-6, seed=0, wrt=None):
    """Relative errors of the VJP of ``build`` at ``arrays`` along random directions.

    ``build(*tensors)`` returns a tensor or a list of tensors; ``arrays`` are the
    input values (float arrays are checked in float64; integer arrays, e.g.
    labels, are fed as they are and not differentiated). ``wrt`` picks the input
    indices to differentiate (default: every float input).
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) if _is_float(a) else np.asarray(a) for a in arrays]
    wrt = [i for i, a in enumerate(arrays) if _is_float(a)] if wrt is None else list(wrt)
    xs = _placeholders(arrays)
    outs = _as_list(build(*xs))
    f = compile(outs, inputs=xs)
    values = [np.asarray(v, dtype=np.float64) for v in _as_list(f(*arrays))]
    ws = [placeholder(v.shape, "float64", name=f"w{k}") for k, v in enumerate(values)]
    objective = None
    for o, w in zip(outs, ws):
        term = sum(mul(o, w))
        objective = term if objective is None else objective + term
    grads = grad(objective, [xs[i] for i in wrt])
    g = compile(grads, inputs=xs + ws)

    errors = []
    for _ in range(directions):
        wv = [rng.standard_normal(v.shape) for v in values]
        us = {i: rng.standard_normal(arrays[i].shape) for i in wrt}
        analytic = float(np.sum([np.vdot(gi, us[i]) for gi, i in zip(_as_list(g(*arrays, *wv)), wrt)]))

        def along(t):
            shifted = [a + t * us[i] if i in us else a for i, a in enumerate(arrays)]
            return sum_products(_as_list(f(*shifted)), wv)

        numeric = (along(eps) - along(-eps)) / (2 * eps)
        errors.append(abs(analytic - numeric) / max(1.0, abs(numeric)))
    return errors


def sum_products(values, ws):
    return float(np.sum([np.vdot(np.asarray(v, np.float64), w) for v, w in zip(values, ws)]))


def check_double_vjp(build, arrays, directions=3, eps=1e-6, seed=0, wrt=None):
    """Relative errors of the double VJP: the VJP of ``(x, w) -> VJP_x(w)``,
    checked by finite differences like :func:`check_vjp` (the second-order
    rules every op's VJP is built from)."""
    arrays = [np.asarray(a, dtype=np.float64) if _is_float(a) else np.asarray(a) for a in arrays]
    wrt = [i for i, a in enumerate(arrays) if _is_float(a)] if wrt is None else list(wrt)
    probe_xs = _placeholders(arrays)
    probe = compile(_as_list(build(*probe_xs)), inputs=probe_xs)
    out_shapes = [np.shape(v) for v in _as_list(probe(*arrays))]
    rng = np.random.default_rng(seed + 1)
    w_arrays = [rng.standard_normal(s) for s in out_shapes]
    n = len(arrays)

    def first_vjp(*tensors):
        xs, ws = tensors[:n], tensors[n:]
        objective = None
        for o, w in zip(_as_list(build(*xs)), ws):
            term = sum(mul(o, w))
            objective = term if objective is None else objective + term
        return grad(objective, [xs[i] for i in wrt])

    return check_vjp(first_vjp, arrays + w_arrays, directions=directions, eps=eps, seed=seed,
                     wrt=wrt + list(range(n, n + len(w_arrays))))


__all__ = ["check_vjp", "check_double_vjp"]
