"""Max pooling, with the argmax as a graph value and a gradient that is an op.

    y   = max_pool2d(x)                        forward: the max of each window
    idx = max_pool2d_argmax(x, y)              which window element was the max
    dx  = max_pool2d_grad(dy, idx)             the multiplexer: dy routed to idx
    g'  = max_pool2d_gather(g, idx)            its transpose: g read at idx

``max_pool2d_grad`` and ``max_pool2d_gather`` are each other's VJP (both are
linear in their float input; ``idx`` is an integer and gets no gradient), so
grad of grad works. Windows are padded with -inf; ties go to the first
maximum in row-major window order. Kernels: :mod:`graphdiff.kernels.pool`.
"""
import numpy as np

from ..graph import Op, apply, as_tensor, fmt_shape
from ..kernels import device as _device
from ..kernels import pool as _k
from ..kernels.parallel import parallel_blocks, workspace
from .conv import _known_differ, _out, _pair


class _PoolBase(Op):
    def _check(self, x, nodes):
        (kh, kw), (sh, sw), (ph, pw) = self.size, self.stride, self.padding
        if x.ndim != 4:
            raise self.error(f"expects a 4-D tensor (NCHW); {x.name} has {x.ndim} dimensions", *nodes)
        if kh < 1 or kw < 1:
            raise self.error(f"pool size must be >= 1, got {self.size}", *nodes)
        if sh < 1 or sw < 1:
            raise self.error(f"stride must be >= 1, got {self.stride}", *nodes)
        if ph < 0 or pw < 0:
            raise self.error(f"padding must be >= 0, got {self.padding}", *nodes)
        if ph >= kh or pw >= kw:
            # A window made only of padding would have max -inf and no argmax.
            raise self.error(f"padding {self.padding} must be smaller than the pool size {self.size}", *nodes)

    def _out_shape(self, x_shape, nodes):
        N, C, H, W = x_shape
        for axis, n, k, p in zip("HW", (H, W), self.size, self.padding):
            if n is not None and k > n + 2 * p:
                raise self.error(f"pool size {k} is larger than the padded input ({axis}: {n} + 2*{p} = {n + 2 * p})",
                                 *nodes)
        return (N, C) + tuple(_out(n, k, s, p) for n, k, s, p in zip((H, W), self.size, self.stride, self.padding))

    def _check_like(self, t, want, nodes):
        if t.ndim != 4 or any(_known_differ(a, b) for a, b in zip(t.shape, want)):
            raise self.error(f"{t.name} must have shape {fmt_shape(want)}", *nodes)


class MaxPool2d(_PoolBase):
    """``y[n, c, i, j] = max_{a < kh, b < kw} Xpad[n, c, i*sh + a, j*sw + b]`` (-inf padding)."""

    name = "max_pool2d"
    supports_out = True  # forward writes into a planned buffer when the compiler passes one

    def __init__(self, size, stride, padding):
        super().__init__(size=size, stride=stride, padding=padding)

    def infer(self, x):
        self._check(x, (x,))
        if x.dtype.kind != "f":
            raise self.error(f"needs a float input, got {x.dtype}", x)
        return self._out_shape(x.shape, (x,)), x.dtype

    def forward(self, xp, x, out=None):
        # The argmax is its own node (max_pool2d_argmax), computed only where a gradient needs it.
        return _k.max_pool2d_forward(xp, x, self.size, self.stride, self.padding, out=out, argmax=False)[0]

    def vjp(self, node, g, wrt):
        # One forward pass decides which input each window selected (the argmax,
        # a graph value); the gradient is then a multiplexer routed by it.
        x = node.inputs[0]
        if None in x.shape[2:]:
            raise self.error("the gradient needs static spatial dimensions (H, W)", x)
        geometry = dict(size=self.size, stride=self.stride, padding=self.padding)
        idx = apply(MaxPool2dArgmax(**geometry), [x, node])
        return [max_pool2d_grad(g, idx, x.shape[2:], **geometry)]


def max_pool2d(x, size, stride=None, padding=0, name=None):
    """Max pooling over ``size`` windows moved by ``stride`` (default: ``size``,
    non-overlapping; AlexNet overlaps with size 3, stride 2), padded by
    ``padding`` (< size) with -inf. Output size ``floor((n + 2p - k) / s) + 1``.
    Node attributes: ``size``, ``stride``, ``padding`` (pairs)."""
    size = _pair(size, "size")
    stride = size if stride is None else _pair(stride, "stride")
    return apply(MaxPool2d(size, stride, _pair(padding, "padding")), [as_tensor(x)], name=name)


class MaxPool2dArgmax(_PoolBase):
    """``idx[n, c, i, j]`` = the first window offset ``a * kw + b`` (row-major)
    where ``Xpad[n, c, i*sh + a, j*sw + b] == y[n, c, i, j]``: which input the
    forward max selected, read off the forward values ``x`` and ``y`` (the
    same rule as the forward kernel's argmax, without recomputing the max):
    a window's first NaN where it holds one, never a padding cell
    (``kernels.pool.fix_argmax``). Not differentiable: an integer, piecewise
    constant in ``x``."""

    name = "max_pool2d_argmax"
    differentiable = False
    supports_out = True

    def __init__(self, size, stride, padding):
        super().__init__(size=size, stride=stride, padding=padding)

    def infer(self, x, y):
        self._check(x, (x, y))
        self._check_like(y, self._out_shape(x.shape, (x, y)), (x, y))
        return y.shape, _k.argmax_dtype(self.size)  # uint8 up to 16 x 16 windows

    def forward(self, xp, x, y, out=None):
        (kh, kw), (sh, sw), (ph, pw) = self.size, self.stride, self.padding
        N, C, H, W = x.shape
        OH, OW = y.shape[2:]
        dtype, last = _k.argmax_dtype(self.size), kh * kw - 1
        if _device.on_device(xp):  # one kernel, a new array
            return _device.max_pool2d_argmax(xp, x, y, self.size, self.stride, self.padding, dtype)
        idx = xp.empty(y.shape, dtype=dtype) if out is None else out

        def block(lo, hi):  # a few examples at a time, so the passes below run from cache
            xb, yb = x[lo:hi], y[lo:hi]
            if ph or pw:
                xpad = workspace(xp, "pool_argmax_xpad", (hi - lo, C, H + 2 * ph, W + 2 * pw), x.dtype)
                xpad.fill(-np.inf)
                xpad[:, :, ph:ph + H, pw:pw + W] = xb
                xb = xpad
            hit, rank, best = (workspace(xp, f"pool_argmax_{tag}", yb.shape, dt) for tag, dt in
                               (("hit", np.bool_), ("rank", dtype), ("best", dtype)))
            best.fill(0)
            # Arithmetic, not where(): best = max over the offsets equal to y of their rank
            # last - offset, so the first hit wins (ranks fit the index dtype).
            for offset in range(last + 1):
                a, b = divmod(offset, kw)
                xp.equal(xb[:, :, a:a + sh * (OH - 1) + 1:sh, b:b + sw * (OW - 1) + 1:sw], yb, out=hit)
                xp.multiply(hit, dtype.type(last - offset), out=rank)
                xp.maximum(best, rank, out=best)
            xp.subtract(dtype.type(last), best, out=idx[lo:hi])
            _k.fix_argmax(xp, x[lo:hi], yb, idx[lo:hi], self.size, self.stride, self.padding)  # NaN, -inf

        parallel_blocks(xp, N, x[:1].size, block)
        return idx


class MaxPool2dWithArgmax(_PoolBase):
    """``(y, idx)``: :class:`MaxPool2d` and :class:`MaxPool2dArgmax` in one sweep
    over the windows. Compile-time only: the compiler puts it in place of a
    pooling node and the argmax node reading it (outputs read by ``Part`` nodes)."""

    name = "max_pool2d_with_argmax"
    num_outputs = 2
    supports_out = True
    differentiable = False

    def __init__(self, size, stride, padding):
        super().__init__(size=size, stride=stride, padding=padding)

    def forward(self, xp, x, out=(None, None)):
        return _k.max_pool2d_forward(xp, x, self.size, self.stride, self.padding, out=out[0], argmax_out=out[1])


def max_pool2d_argmax(x, y, size, stride=None, padding=0, name=None):
    """The argmax of each window of ``y = max_pool2d(x, ...)`` (see :class:`MaxPool2dArgmax`)."""
    size = _pair(size, "size")
    stride = size if stride is None else _pair(stride, "stride")
    op = MaxPool2dArgmax(size, stride, _pair(padding, "padding"))
    return apply(op, [as_tensor(x), as_tensor(y)], name=name)


class MaxPool2dGrad(_PoolBase):
    """The gradient of max pooling, a multiplexer: ``dX[n, c, i*sh + a, j*sw + b]
    += dY[n, c, i, j]`` where ``a * kw + b = idx[n, c, i, j]`` (overlapping windows
    add up; padding is cropped). VJP wrt ``dy``: the gather ``g[idx]``."""

    name = "max_pool2d_grad"
    kind = "gradient"
    supports_out = True

    def __init__(self, input_size, size, stride, padding):
        super().__init__(input_size=input_size, size=size, stride=stride, padding=padding)

    def infer(self, dy, idx):
        self._check(dy, (dy, idx))
        N, C = dy.shape[:2]
        out = self._out_shape((N, C) + self.input_size, (dy, idx))
        self._check_like(dy, out, (dy, idx))
        self._check_like(idx, out, (dy, idx))
        if idx.dtype.kind not in "iu":
            raise self.error(f"idx must be integers, got {idx.dtype}", dy, idx)
        return (N, C) + self.input_size, dy.dtype

    def forward(self, xp, dy, idx, out=None):
        return _k.max_pool2d_grad(xp, dy, idx, self.input_size, self.size, self.stride, self.padding, out=out)

    def vjp(self, node, g, wrt):
        idx = node.inputs[1]
        return [max_pool2d_gather(g, idx, self.size, self.stride, self.padding), None]


def max_pool2d_grad(dy, idx, input_size, size, stride=None, padding=0, name=None):
    """``dE/dX`` of max pooling from ``dy = dE/dY`` and the window argmax ``idx``."""
    size = _pair(size, "size")
    stride = size if stride is None else _pair(stride, "stride")
    op = MaxPool2dGrad(_pair(input_size, "input_size"), size, stride, _pair(padding, "padding"))
    return apply(op, [as_tensor(dy), as_tensor(idx)], name=name)


class MaxPool2dGather(_PoolBase):
    """``out[n, c, i, j] = Gpad[n, c, i*sh + a, j*sw + b]`` with ``a * kw + b =
    idx[n, c, i, j]``: the value at each window's argmax, the transpose of
    :class:`MaxPool2dGrad` (and its VJP). VJP wrt ``g``: ``max_pool2d_grad``."""

    name = "max_pool2d_gather"
    kind = "gradient"
    supports_out = True

    def __init__(self, size, stride, padding):
        super().__init__(size=size, stride=stride, padding=padding)

    def infer(self, g, idx):
        self._check(g, (g, idx))
        self._check_like(idx, self._out_shape(g.shape, (g, idx)), (g, idx))
        if idx.dtype.kind not in "iu":
            raise self.error(f"idx must be integers, got {idx.dtype}", g, idx)
        return idx.shape, g.dtype

    def forward(self, xp, g, idx, out=None):
        return _k.max_pool2d_gather(xp, g, idx, self.size, self.stride, self.padding, out=out)

    def vjp(self, node, gg, wrt):
        g, idx = node.inputs
        if None in g.shape[2:]:
            raise self.error("the gradient needs static spatial dimensions (H, W)", g)
        return [max_pool2d_grad(gg, idx, g.shape[2:], self.size, self.stride, self.padding), None]


def max_pool2d_gather(g, idx, size, stride=None, padding=0, name=None):
    """``g`` read at each window's argmax ``idx`` (see :class:`MaxPool2dGather`)."""
    size = _pair(size, "size")
    stride = size if stride is None else _pair(stride, "stride")
    return apply(MaxPool2dGather(size, stride, _pair(padding, "padding")), [as_tensor(g), as_tensor(idx)], name=name)
