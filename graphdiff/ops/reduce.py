"""Reductions (sum, mean, max) and the broadcasting ops their VJPs need."""
import numpy as np

from ..graph import Op, apply, as_tensor, fmt_shape, normalize_axis


def _reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


class Sum(Op):
    name = "sum"

    def __init__(self, axes, keepdims):
        super().__init__(axes=axes, keepdims=keepdims)

    def infer(self, x):
        dtype = x.dtype if x.dtype.kind in "fc" else np.sum(np.empty(0, x.dtype)).dtype
        return _reduced_shape(x.shape, self.axes, self.keepdims), dtype

    def forward(self, xp, x):
        return xp.sum(x, axis=self.axes, keepdims=self.keepdims)

    def vjp(self, node, g, wrt):
        x = node.inputs[0]
        return [broadcast_like(_keep(g, self.axes, self.keepdims), x)]


def sum(x, axis=None, keepdims=False, name=None):  # noqa: A001 - NumPy's name
    """Sum over ``axis`` (None: all), as ``numpy.sum``."""
    x = as_tensor(x)
    op = Sum(normalize_axis("sum", x, axis), bool(keepdims))
    return apply(op, [x], name=name)


class Count(Op):
    """The number of elements a reduction over ``axes`` combines, as a scalar
    of ``dtype`` (known at run time when the axes include ``None`` dims)."""

    name = "count"
    differentiable = False

    def __init__(self, axes, dtype):
        super().__init__(axes=axes, dtype=np.dtype(dtype))

    def infer(self, x):
        return (), self.dtype

    def forward(self, xp, x):
        n = 1
        for a in self.axes:
            n *= x.shape[a]
        return xp.full((), n, dtype=self.dtype)  # made on the device: no upload


def mean(x, axis=None, keepdims=False, name=None):
    """Mean over ``axis``: ``sum / count``; the count is taken at run time, so a
    mean over the batch works with a ``None`` batch dimension."""
    x = as_tensor(x)
    axes = normalize_axis("sum", x, axis)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype("float64")
    total = sum(x if x.dtype == dtype else _ops().cast(x, dtype), axes, keepdims)
    return _ops().div(total, apply(Count(axes, dtype), [x]), name=name)


class Max(Op):
    name = "max"

    def __init__(self, axes, keepdims):
        super().__init__(axes=axes, keepdims=keepdims)

    def infer(self, x):
        for a in self.axes:
            if x.shape[a] == 0:
                raise self.error(f"cannot take the max over empty axis {a}", x)
        return _reduced_shape(x.shape, self.axes, self.keepdims), x.dtype

    def forward(self, xp, x):
        return xp.max(x, axis=self.axes, keepdims=self.keepdims)

    def vjp(self, node, g, wrt):
        # The gradient goes to the maxima, shared equally between ties.
        ops = _ops()
        x = node.inputs[0]
        y = broadcast_like(_keep(node, self.axes, self.keepdims), x)
        mask = ops.cast(ops.equal(x, y), x.dtype)
        share = mask / sum(mask, self.axes, keepdims=True)
        return [broadcast_like(_keep(g, self.axes, self.keepdims), x) * share]


def max(x, axis=None, keepdims=False, name=None):  # noqa: A001 - NumPy's name
    """Maximum over ``axis``; the gradient is shared between tied maxima."""
    x = as_tensor(x)
    return apply(Max(normalize_axis("max", x, axis), bool(keepdims)), [x], name=name)


# --------------------------------------------------------------------------- broadcasting helpers
def _keep(g, axes, keepdims):
    """Re-insert reduced axes as size 1 so ``g`` broadcasts against the input."""
    return g if keepdims or not axes else _ops().expand_dims(g, axes)


class BroadcastLike(Op):
    """``x`` broadcast to the run-time shape of ``like`` (whose value is only
    read for its shape). VJP: the gradient summed back to ``x``'s shape."""

    name = "broadcast_like"
    is_view = True

    def infer(self, x, like):
        if x.ndim > like.ndim:
            raise self.error("cannot broadcast to fewer dimensions", x, like)
        from ..graph import broadcast_shapes

        shape = broadcast_shapes(self, x, like)
        return like.shape if None not in like.shape else shape, x.dtype

    def forward(self, xp, x, like):
        return xp.broadcast_to(x, like.shape)

    def vjp(self, node, g, wrt):
        return [sum_to(g, node.inputs[0], node.inputs[1].shape), None]


def broadcast_like(x, like):
    """``x`` broadcast to ``like``'s shape: static where that shape is known, so
    ``like`` need not be computed just for its shape."""
    if x.shape == like.shape and None not in x.shape:
        return x
    if None not in like.shape:
        return broadcast_to(x, like.shape)
    return apply(BroadcastLike(), [x, like])


class BroadcastTo(Op):
    name = "broadcast_to"
    is_view = True

    def __init__(self, shape):
        super().__init__(shape=shape)

    def infer(self, x):
        nd = len(self.shape)
        if x.ndim > nd:
            raise self.error(f"cannot broadcast to {fmt_shape(self.shape)}", x)
        for d, t in zip(x.shape[::-1], self.shape[::-1]):
            if d not in (1, t, None):
                raise self.error(f"cannot broadcast to {fmt_shape(self.shape)}", x)
        return self.shape, x.dtype

    def forward(self, xp, x):
        return xp.broadcast_to(x, self.shape)

    def vjp(self, node, g, wrt):
        return [sum_to(g, node.inputs[0])]


def broadcast_to(x, shape, name=None):
    """``numpy.broadcast_to`` with a static target shape."""
    x = as_tensor(x)
    return apply(BroadcastTo(tuple(int(d) for d in shape)), [x], name=name)


class SumTo(Op):
    """Sum ``g`` over the axes along which an input of shape ``target`` was
    broadcast: the VJP of broadcasting. ``lead`` leading axes are summed away,
    ``ones`` are the axes where the input had size 1."""

    name = "sum_to"

    def __init__(self, lead, ones):
        super().__init__(lead=lead, ones=ones)

    def infer(self, g):
        shape = tuple(1 if i in self.ones else d for i, d in enumerate(g.shape))
        return shape[self.lead:], g.dtype

    def forward(self, xp, g):
        r = xp.sum(g, axis=tuple(range(self.lead)) + self.ones, keepdims=True)
        return r.reshape(r.shape[self.lead:])

    def vjp(self, node, gg, wrt):
        lead = _ops().expand_dims(gg, tuple(range(self.lead))) if self.lead else gg
        return [broadcast_like(lead, node.inputs[0])]


class SumToLike(SumTo):
    """:class:`SumTo` where some axes are decided at run time: ``maybe`` are the
    axes (of ``g``) where ``like``, the input that was broadcast (read for its
    shape only), has a ``None`` dimension that may have been 1 and broadcast in
    this call. Each is summed where ``like`` is 1 at run time and ``g`` is not,
    as NumPy's broadcasting and PyTorch decide it; the result has ``like``'s
    run-time shape, and ``None`` in its static shape on those axes."""

    name = "sum_to_like"
    is_view = True  # where nothing is summed, g itself: the compiler keeps g's buffer alive with it

    def __init__(self, lead, ones, maybe):
        Op.__init__(self, lead=lead, ones=ones, maybe=maybe)

    def infer(self, g, like):
        shape = tuple(1 if i in self.ones else (None if i in self.maybe else d) for i, d in enumerate(g.shape))
        return tuple(k if d is None else d for d, k in zip(shape[self.lead:], like.shape)), g.dtype

    def forward(self, xp, g, like):
        lead = self.lead
        axes = tuple(range(lead)) + self.ones + tuple(a for a in self.maybe
                                                       if like.shape[a - lead] == 1 and g.shape[a] != 1)
        r = xp.sum(g, axis=axes, keepdims=True) if axes else g
        return r.reshape(r.shape[lead:])

    def vjp(self, node, gg, wrt):
        return super().vjp(node, gg, wrt) + [None]


def sum_to(g, x, *others):
    """Sum gradient ``g`` back to the shape of input ``x`` (undo broadcasting).

    Where ``x`` has a ``None`` dimension, whether it was broadcast is known only
    at run time (1 against ``g``'s size > 1): those axes are decided then
    (:class:`SumToLike`). ``others`` are the shapes of the operands ``x`` was
    broadcast against, if known: an axis where ``g`` is ``None`` too was broadcast
    only if one of them may be larger than 1 there (without them, any may)."""
    lead = g.ndim - x.ndim
    ones = tuple(lead + i for i, d in enumerate(x.shape) if d == 1 and g.shape[lead + i] != 1)

    def may_broadcast(i):  # axis i of x: None, and could be 1 against a larger g
        size = g.shape[lead + i]
        if size is not None:
            return size != 1
        if not others:
            return True
        k = i - x.ndim  # from the right, as broadcasting aligns
        return any(-k <= len(o) and o[k] != 1 for o in others)

    maybe = tuple(lead + i for i, d in enumerate(x.shape) if d is None and may_broadcast(i))
    if maybe:
        return apply(SumToLike(lead, ones, maybe), [g, x])
    if g.shape == x.shape or (lead == 0 and not ones):
        return g
    return apply(SumTo(lead, ones), [g])


def _ops():
    from .. import ops

    return ops
