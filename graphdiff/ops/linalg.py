"""Matrix products."""
from ..errors import ShapeError
from ..graph import Op, apply, as_tensor, broadcast_shapes, fmt_shape
from ..kernels import linalg as _k
from .reduce import sum_to


def _swap_last(t):
    from .shape import transpose

    axes = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    return transpose(t, axes)


def _promoted(a_shape, b_shape):
    """NumPy's rule for 1-D operands: ``a`` (k,) is the row ``(1, k)``, ``b`` (k,) the
    column ``(k, 1)``; the added dimension is dropped from the result."""
    return ((1,) + a_shape if len(a_shape) == 1 else a_shape,
            b_shape + (1,) if len(b_shape) == 1 else b_shape)


class MatMul(Op):
    """``a @ b`` as ``numpy.matmul``: ``(..., n, k) @ (..., k, m) -> (..., n, m)``
    (batch dims broadcast); a 1-D ``a`` (k,) is a row, a 1-D ``b`` (k,) a column,
    whose added dimension the result drops: ``(k,) @ (k, m) -> (m,)``,
    ``(n, k) @ (k,) -> (n,)``, ``(k,) @ (k,) -> ()`` (the dot product).

    VJP: ``dA = dE @ B^T``, ``dB = A^T @ dE`` (summed over broadcast batch dims),
    with 1-D operands and ``dE`` promoted as in the forward (``expand_dims``) and
    the gradient squeezed back: ``(k,) @ (k, m)`` gives ``dA = B dE``, ``dB = A dE^T``
    (an outer product); the dot product gives ``dA = dE B``, ``dB = dE A``."""

    name = "matmul"
    supports_out = True  # the compiler may pass a planned buffer

    def infer(self, a, b):
        if a.ndim < 1 or b.ndim < 1:
            raise self.error("operands need at least 1 dimension (a scalar product is mul)", a, b)
        a_shape, b_shape = _promoted(a.shape, b.shape)
        ka, kb = a_shape[-1], b_shape[-2]
        if ka is not None and kb is not None and ka != kb:
            raise ShapeError(f"matmul: {a.name} {fmt_shape(a.shape)} @ {b.name} {fmt_shape(b.shape)}: "
                             f"inner dimensions {ka} != {kb}")
        if a.dtype != b.dtype:
            raise self.error(f"dtypes differ ({a.dtype} vs {b.dtype}); cast one first", a, b)

        class _Batch:  # broadcast only the batch dims
            def __init__(self, t, shape):
                self.shape, self.ndim, self.name = shape[:-2], len(shape) - 2, t.name

        try:
            batch = broadcast_shapes(self, _Batch(a, a_shape), _Batch(b, b_shape))
        except ShapeError:  # name the operands with their full shapes, not just the batch part
            raise self.error(f"batch dimensions {fmt_shape(a.shape[:-2])} and {fmt_shape(b.shape[:-2])} "
                             f"do not broadcast", a, b) from None
        rows = (a_shape[-2],) if a.ndim > 1 else ()
        cols = (b_shape[-1],) if b.ndim > 1 else ()
        return batch + rows + cols, a.dtype

    def forward(self, xp, a, b, out=None):
        if a.ndim > 1 and b.ndim > 1:
            return _k.matmul(xp, a, b, out=out)
        # A vector operand: the product of the promoted matrices, the added axis dropped.
        r = _k.matmul(xp, a[None] if a.ndim == 1 else a, b[:, None] if b.ndim == 1 else b)
        r = r.reshape(r.shape[:-2] + r.shape[-2:-1] * (a.ndim > 1) + r.shape[-1:] * (b.ndim > 1))
        if out is None:
            return r
        out[...] = r
        return out

    def vjp(self, node, g, wrt):
        from .shape import expand_dims, squeeze

        a, b = node.inputs
        a2 = expand_dims(a, 0) if a.ndim == 1 else a
        b2 = expand_dims(b, 1) if b.ndim == 1 else b
        g2 = g  # dE in the promoted product's shape (..., n, m)
        if a.ndim == 1:
            g2 = expand_dims(g2, g2.ndim - (b.ndim > 1))
        if b.ndim == 1:
            g2 = expand_dims(g2, g2.ndim)
        # only the batch dims broadcast: the other operand's last two count as 1 there
        da = sum_to(matmul(g2, _swap_last(b2)), a2, b2.shape[:-2] + (1, 1)) if wrt[0] else None
        db = sum_to(matmul(_swap_last(a2), g2), b2, a2.shape[:-2] + (1, 1)) if wrt[1] else None
        if da is not None and a.ndim == 1:
            da = squeeze(da, 0)
        if db is not None and b.ndim == 1:
            db = squeeze(db, 1)
        return [da, db]


def matmul(a, b, name=None):
    """Matrix product, as ``numpy.matmul`` (also ``a @ b``), 1-D operands included:
    ``(k,) @ (k, m) -> (m,)``, ``(n, k) @ (k,) -> (n,)``, ``(k,) @ (k,) -> ()``."""
    a, b = as_tensor(a), as_tensor(b)
    return apply(MatMul(), [a, b], name=name)
