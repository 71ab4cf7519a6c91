"""Shape helpers and argument checks shared by the graph and the op modules.

Static shapes are tuples with ``None`` for dimensions known only at run time.
Each op's shape rule uses these to broadcast, unify or count its inputs' shapes
and to read its arguments (an int, a number, a dtype), raising a
:class:`ShapeError` or a ``TypeError`` that names the op and what was wrong.
:mod:`graphdiff.graph` re-exports every name here.
"""
from __future__ import annotations

import operator

import numpy as np

from .errors import ShapeError


def fmt_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------- arguments
def as_int(value, what, expected="an int"):
    """An integer argument (a dimension, a window size, a stride) as a Python
    int. A float (``3.7``, also ``3.0``), a string or a bool is a TypeError
    naming ``what``: ``int()`` would truncate 3.7 to 3 without a word."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be {expected}, got {type(value).__name__} {value!r}") from None


def as_number(value, what):
    """A real-number argument (LRN's alpha, beta and k, a fill value) as a Python
    float; a string, a bool, None or an array is a TypeError naming ``what``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def as_dtype(dtype, what):
    """A NumPy dtype of numbers or booleans (what the kernels compute with);
    anything else (``object``, strings, an unknown name) is a TypeError naming ``what``."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{what}: unknown dtype {dtype!r} ({exc})") from None
    if dt.kind not in "fiub":
        raise TypeError(f"{what}: unsupported dtype {dt} (numbers and booleans only)")
    return dt


# --------------------------------------------------------------------------- shapes
def broadcast_shapes(op, *tensors):
    """NumPy broadcasting of static shapes with ``None`` for unknown dims."""
    ndim = max(t.ndim for t in tensors)
    out = []
    for axis in range(ndim):
        dims = [t.shape[axis - ndim + t.ndim] for t in tensors if axis - ndim + t.ndim >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise op.error(f"shapes do not broadcast (axis {axis - ndim}: {' vs '.join(map(str, dims))})", *tensors)
        if known:
            out.append(known.pop())
        elif None in dims:
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def normalize_axis(opname, node, axis):
    """Axis argument -> sorted tuple of non-negative axes (``None``: all)."""
    if axis is None:
        return tuple(range(node.ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        a = int(a)
        if not -node.ndim <= a < node.ndim:
            raise ShapeError(f"{opname}: {node.name} {fmt_shape(node.shape)}: axis {a} is out of range "
                             f"for {node.ndim} dimensions")
        out.append(a % node.ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"{opname}: {node.name} {fmt_shape(node.shape)}: repeated axis in {axes}")
    return tuple(sorted(out))


def static_size(shape):
    """Product of the dims, or None if any is unknown."""
    n = 1
    for d in shape:
        if d is None:
            return None
        n *= d
    return n


def unify_shapes(op, *tensors):
    """The one shape several inputs must share, with ``None`` for dims known only
    at run time: per axis, the static size where any input knows it (a ``None``
    unifies with any size); a ShapeError naming ``op`` where two known sizes
    differ or the ranks do."""
    if len({t.ndim for t in tensors}) > 1:
        raise op.error("inputs must have the same number of dimensions", *tensors)
    out = []
    for axis, dims in enumerate(zip(*(t.shape for t in tensors))):
        known = {d for d in dims if d is not None}
        if len(known) > 1:
            raise op.error(f"inputs must share their shape (axis {axis}: {' vs '.join(map(str, dims))})", *tensors)
        out.append(known.pop() if known else None)
    return tuple(out)
