"""Ops that move data without arithmetic: reshape, transpose, expand/squeeze,
concatenate, split and slicing."""
import numpy as np

from ..graph import Op, apply, as_number, as_tensor, fmt_shape, normalize_axis, static_size


class Reshape(Op):
    """``x.reshape(shape)``; one ``-1`` is inferred, ``None`` dims stay unknown."""

    name = "reshape"
    is_view = True

    def __init__(self, shape):
        super().__init__(shape=shape)

    def infer(self, x):
        target = self.shape
        if sum(d == -1 for d in target) > 1:
            raise self.error(f"at most one -1 in the target shape {target}", x)
        if any(d < -1 for d in target):
            raise self.error(f"negative dimension in the target shape {target}", x)
        known = int(np.prod([d for d in target if d != -1]))
        total = static_size(x.shape)
        if total is None:  # unknown input size: -1 stands for an unknown dim
            return tuple(None if d == -1 else d for d in target), x.dtype
        if -1 in target:
            if known == 0 or total % known:
                raise self.error(f"cannot reshape {total} elements into {target}", x)
            return tuple(total // known if d == -1 else d for d in target), x.dtype
        if known != total:
            raise self.error(f"cannot reshape {total} elements into {fmt_shape(target)}", x)
        return target, x.dtype

    def forward(self, xp, x):
        return x.reshape(self.shape)

    def vjp(self, node, g, wrt):
        return [reshape_as(g, node.inputs[0])]


def reshape(x, shape, name=None):
    """Reshape; ``-1`` marks the one dimension to infer (NumPy's rule)."""
    x = as_tensor(x)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    return apply(Reshape(shape), [x], name=name)


class ReshapeLike(Op):
    """``g`` reshaped to the run-time shape of ``like`` (read for its shape only)."""

    name = "reshape_like"
    is_view = True

    def infer(self, g, like):
        return like.shape, g.dtype

    def forward(self, xp, g, like):
        return g.reshape(like.shape)

    def vjp(self, node, gg, wrt):
        return [reshape_as(gg, node.inputs[0]), None]


def reshape_as(g, x):
    """Reshape ``g`` back to ``x``'s shape; static when at most one dim is unknown."""
    if g.shape == x.shape and None not in x.shape:
        return g
    if sum(d is None for d in x.shape) <= 1:
        return reshape(g, tuple(-1 if d is None else d for d in x.shape))
    return apply(ReshapeLike(), [g, x])


class Transpose(Op):
    name = "transpose"
    is_view = True

    def __init__(self, axes):
        super().__init__(axes=axes)

    def infer(self, x):
        if sorted(self.axes) != list(range(x.ndim)):
            raise self.error(f"axes {self.axes} are not a permutation of {x.ndim} dimensions", x)
        return tuple(x.shape[a] for a in self.axes), x.dtype

    def forward(self, xp, x):
        return xp.transpose(x, self.axes)

    def vjp(self, node, g, wrt):
        return [transpose(g, tuple(int(i) for i in np.argsort(self.axes)))]


def transpose(x, axes=None, name=None):
    """Permute axes (default: reverse them), as ``numpy.transpose``."""
    x = as_tensor(x)
    # negative axes count from the end; out-of-range ones are left for infer() to reject (no wrap-around)
    axes = tuple(range(x.ndim))[::-1] if axes is None else tuple(int(a) + x.ndim * (int(a) < 0) for a in axes)
    return apply(Transpose(axes), [x], name=name)


class ExpandDims(Op):
    name = "expand_dims"
    is_view = True

    def __init__(self, axes):
        super().__init__(axes=axes)

    def infer(self, x):
        nd = x.ndim + len(self.axes)
        if any(not 0 <= a < nd for a in self.axes) or len(set(self.axes)) != len(self.axes):
            raise self.error(f"axes {self.axes} out of range or repeated for {nd} dimensions", x)
        dims = iter(x.shape)
        return tuple(1 if i in self.axes else next(dims) for i in range(nd)), x.dtype

    def forward(self, xp, x):
        return xp.expand_dims(x, self.axes)

    def vjp(self, node, g, wrt):
        return [squeeze(g, self.axes)]


def expand_dims(x, axes, name=None):
    x = as_tensor(x)
    axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
    nd = x.ndim + len(axes)
    return apply(ExpandDims(tuple(sorted(int(a) + nd * (int(a) < 0) for a in axes))), [x], name=name)


class Squeeze(Op):
    name = "squeeze"
    is_view = True

    def __init__(self, axes):
        super().__init__(axes=axes)

    def infer(self, x):
        for a in self.axes:
            if x.shape[a] not in (1, None):
                raise self.error(f"cannot squeeze axis {a} of size {x.shape[a]}", x)
        return tuple(d for i, d in enumerate(x.shape) if i not in self.axes), x.dtype

    def forward(self, xp, x):
        return xp.squeeze(x, self.axes)

    def vjp(self, node, g, wrt):
        return [expand_dims(g, self.axes)]


def squeeze(x, axes, name=None):
    x = as_tensor(x)
    return apply(Squeeze(normalize_axis("squeeze", x, axes)), [x], name=name)


class Concatenate(Op):
    name = "concatenate"

    def __init__(self, axis):
        super().__init__(axis=axis)

    def infer(self, *xs):
        first = xs[0]
        if any(x.ndim != first.ndim for x in xs):
            raise self.error("inputs differ in number of dimensions", *xs)
        if not 0 <= self.axis < first.ndim:
            raise self.error(f"axis {self.axis} out of range", *xs)
        shape = list(first.shape)
        for i in range(first.ndim):
            dims = [x.shape[i] for x in xs]
            if i == self.axis:
                shape[i] = None if None in dims else int(np.sum(dims))
            else:
                known = {d for d in dims if d is not None}
                if len(known) > 1:
                    raise self.error(f"sizes differ along axis {i}", *xs)
                shape[i] = known.pop() if known else None
        return tuple(shape), np.result_type(*[x.dtype for x in xs])

    def forward(self, xp, *xs):
        return xp.concatenate(xs, axis=self.axis)

    def vjp(self, node, g, wrt):
        sizes = [x.shape[self.axis] for x in node.inputs]
        if None in sizes:
            raise self.error(f"the gradient needs static sizes along axis {self.axis}", *node.inputs)
        return split(g, list(np.cumsum(sizes)[:-1]), axis=self.axis)


def concatenate(xs, axis=0, name=None):
    xs = [as_tensor(x) for x in xs]
    if not xs:
        raise ValueError("concatenate: needs at least one input")
    return apply(Concatenate(int(axis) + xs[0].ndim * (int(axis) < 0)), xs, name=name)


def split(x, indices_or_sections, axis=0):
    """``numpy.split`` as slices: a list of tensors."""
    x = as_tensor(x)
    axis = normalize_axis("split", x, axis)[0]
    n = x.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        if n is None or n % int(indices_or_sections):
            from ..errors import ShapeError

            raise ShapeError(f"split: {x.name} {fmt_shape(x.shape)}: axis {axis} of size {n} "
                             f"does not split into {indices_or_sections} equal parts")
        step = n // int(indices_or_sections)
        bounds = list(range(step, n, step))
    else:
        bounds = [int(i) for i in indices_or_sections]
    edges = [0] + bounds + [None]
    lead = (slice(None),) * axis
    return [x[lead + (slice(a, b),)] for a, b in zip(edges[:-1], edges[1:])]


# --------------------------------------------------------------------------- padding
class Pad(Op):
    """Constant padding: ``y[before_k + i_k] = x[i]`` on every axis ``k``, ``value`` elsewhere.

    ``y`` has ``before_k + d_k + after_k`` entries along axis ``k``. The VJP
    is the window of the gradient that lies over ``x``: ``dx = g[before_k :
    before_k + d_k]`` on every axis (a slice, ``getitem``); the VJP of that
    slice writes its cotangent into zeros, which is this padding again with
    ``value = 0``, so grad of grad comes from the slicing ops' own rules.
    """

    name = "pad"

    def __init__(self, pads, value):
        super().__init__(pads=pads, value=value)

    def describe(self):
        return f"pad {list(map(list, self.pads))}" + (f" with {self.value:g}" if self.value else "")

    def infer(self, x):
        if len(self.pads) != x.ndim:
            raise self.error(f"{len(self.pads)} (before, after) pairs for {x.ndim} dimensions", x)
        return tuple(None if d is None else d + lo + hi for d, (lo, hi) in zip(x.shape, self.pads)), x.dtype

    def forward(self, xp, x):
        shape = tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, self.pads))
        y = xp.full(shape, self.value, dtype=x.dtype)
        y[self._window()] = x
        return y

    def _window(self):
        """Where ``x`` sits in ``y``: ``before : -after`` per axis (also for run-time dims)."""
        return tuple(slice(lo, -hi if hi else None) for lo, hi in self.pads)

    def vjp(self, node, g, wrt):
        return [getitem(g, self._window())]


def pad(x, pads, value=0.0, name=None):
    """``numpy.pad(x, pads, constant_values=value)``: ``pads`` holds one
    ``(before, after)`` pair of non-negative ints per axis (or one pair for
    every axis); see :class:`Pad`."""
    x = as_tensor(x)
    pairs = np.asarray(pads, dtype=object)
    if pairs.shape == (2,):
        pairs = np.array([tuple(pads)] * x.ndim, dtype=object).reshape(x.ndim, 2)
    if pairs.ndim != 2 or pairs.shape[1:] != (2,) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in pairs.ravel()):
        raise TypeError(f"pad: pads must be (before, after) pairs of non-negative ints, one per axis, got {pads!r}")
    value = as_number(value, "pad: value")
    return apply(Pad(tuple((int(lo), int(hi)) for lo, hi in pairs), value), [x], name=name)


# --------------------------------------------------------------------------- slicing
def _freeze_key(key, ndim):
    """Index -> hashable tuple: ints, ("s", start, stop, step) and None (new axis)."""
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis")
    used = sum(k is not None and k is not Ellipsis for k in key)
    out = []
    for k in key:
        if k is Ellipsis:
            out.extend([("s", None, None, None)] * (ndim - used))
        elif isinstance(k, slice):
            out.append(("s", k.start, k.stop, k.step))
        elif k is None:
            out.append(None)
        elif isinstance(k, (int, np.integer)):
            out.append(int(k))
        else:
            raise TypeError(f"getitem: only ints, slices, None and ... are supported, got {type(k).__name__}")
    return tuple(out)


def _thaw_key(key):
    return tuple(slice(*k[1:]) if isinstance(k, tuple) else k for k in key)


class GetItem(Op):
    """Basic slicing ``x[key]`` (ints, slices, ``None``, ``...``)."""

    name = "getitem"
    is_view = True

    def __init__(self, key):
        super().__init__(index=key)

    def describe(self):
        return f"getitem[{', '.join(':' if k == ('s', None, None, None) else str(k) for k in self.index)}]"

    def infer(self, x):
        shape, axis = [], 0
        for k in self.index:
            if k is None:
                shape.append(1)
                continue
            if axis >= x.ndim:
                raise self.error(f"too many indices for {x.ndim} dimensions", x)
            d = x.shape[axis]
            if isinstance(k, tuple):
                if k[3] == 0:
                    raise self.error(f"slice step cannot be zero (axis {axis})", x)
                shape.append(None if d is None else len(range(*slice(*k[1:]).indices(d))))
            elif d is not None and not -d <= k < d:
                raise self.error(f"index {k} is out of bounds for axis {axis} of size {d}", x)
            axis += 1
        return tuple(shape) + x.shape[axis:], x.dtype

    def forward(self, xp, x):
        return x[_thaw_key(self.index)]

    def vjp(self, node, g, wrt):
        return [apply(GetItemGrad(self.index), [g, node.inputs[0]])]


class GetItemGrad(Op):
    """VJP of slicing: zeros of ``like``'s shape with ``g`` written at ``key``."""

    name = "getitem_grad"
    kind = "gradient"

    def __init__(self, key):
        super().__init__(index=key)

    def infer(self, g, like):
        return like.shape, g.dtype

    def forward(self, xp, g, like):
        out = xp.zeros(like.shape, g.dtype)
        out[_thaw_key(self.index)] = g
        return out

    def vjp(self, node, gg, wrt):
        return [apply(GetItem(self.index), [gg]), None]


def getitem(x, key):
    x = as_tensor(x)
    return apply(GetItem(_freeze_key(key, x.ndim)), [x])
