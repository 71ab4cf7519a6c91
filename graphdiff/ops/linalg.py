"""Matrix products."""
from ..errors import ShapeError
from ..graph import Op, apply, as_tensor, broadcast_shapes, fmt_shape
from ..kernels import linalg as _k
from .reduce import sum_to


def _swap_last(t):
    from .shape import transpose

    axes = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    return transpose(t, axes)


class MatMul(Op):
    """``a @ b`` for 2-D and batched operands: ``(..., n, k) @ (..., k, m)``.

    VJP: ``dA = dE @ B^T``, ``dB = A^T @ dE`` (summed over broadcast batch dims)."""

    name = "matmul"
    supports_out = True  # the compiler may pass a planned buffer

    def infer(self, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise self.error("operands need at least 2 dimensions (use reshape for vectors)", a, b)
        ka, kb = a.shape[-1], b.shape[-2]
        if ka is not None and kb is not None and ka != kb:
            raise ShapeError(f"matmul: {a.name} {fmt_shape(a.shape)} @ {b.name} {fmt_shape(b.shape)}: "
                             f"inner dimensions {ka} != {kb}")
        if a.dtype != b.dtype:
            raise self.error(f"dtypes differ ({a.dtype} vs {b.dtype}); cast one first", a, b)

        class _Batch:  # broadcast only the batch dims
            def __init__(self, t):
                self.shape, self.ndim, self.name = t.shape[:-2], t.ndim - 2, t.name

        try:
            batch = broadcast_shapes(self, _Batch(a), _Batch(b))
        except ShapeError:  # name the operands with their full shapes, not just the batch part
            raise self.error(f"batch dimensions {fmt_shape(a.shape[:-2])} and {fmt_shape(b.shape[:-2])} "
                             f"do not broadcast", a, b) from None
        return batch + (a.shape[-2], b.shape[-1]), a.dtype

    def forward(self, xp, a, b, out=None):
        return _k.matmul(xp, a, b, out=out)

    def vjp(self, node, g, wrt):
        a, b = node.inputs
        # only the batch dims broadcast: the other operand's last two count as 1 there
        return [sum_to(matmul(g, _swap_last(b)), a, b.shape[:-2] + (1, 1)) if wrt[0] else None,
                sum_to(matmul(_swap_last(a), g), b, a.shape[:-2] + (1, 1)) if wrt[1] else None]


def matmul(a, b, name=None):
    """Matrix product, as ``numpy.matmul`` for operands of 2 or more dimensions."""
    a, b = as_tensor(a), as_tensor(b)
    return apply(MatMul(), [a, b], name=name)
