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
from ..kernels import pool as _k
from ..rewrite import like, parts, rule
from .conv import _known_differ, _pair


class _PoolBase(Op):
    """Geometry attributes shared by the pooling ops: ``size``, ``stride``,
    ``padding`` (top, left), ``padding_end`` (bottom, right), ``dilation`` (pairs)
    and ``ceil_mode`` (bool)."""

    def __init__(self, size, stride, padding, dilation=(1, 1), ceil_mode=False, padding_end=None, **more):
        super().__init__(**more, size=size, stride=stride, padding=padding,
                         padding_end=padding if padding_end is None else padding_end,
                         dilation=dilation, ceil_mode=bool(ceil_mode))

    @property
    def pads(self):
        """``((top, bottom), (left, right))``, the kernels' form."""
        return tuple(zip(self.padding, self.padding_end))

    @property
    def geometry(self):
        """The attributes as keyword arguments of the public functions and the kernels' extras."""
        return dict(size=self.size, stride=self.stride, padding=self.pads, dilation=self.dilation,
                    ceil_mode=self.ceil_mode)

    def _kernel_args(self):
        return dict(dilation=self.dilation, ceil_mode=self.ceil_mode)

    def _check(self, x, nodes):
        (kh, kw), (sh, sw), (dh, dw) = self.size, self.stride, self.dilation
        if x.ndim != 4:
            raise self.error(f"expects a 4-D tensor (NCHW); {x.name} has {x.ndim} dimensions", *nodes)
        if kh < 1 or kw < 1:
            raise self.error(f"pool size must be >= 1, got {self.size}", *nodes)
        if sh < 1 or sw < 1:
            raise self.error(f"stride must be >= 1, got {self.stride}", *nodes)
        if dh < 1 or dw < 1:
            raise self.error(f"dilation must be >= 1, got {self.dilation}", *nodes)
        if min(self.padding + self.padding_end) < 0:
            raise self.error(f"padding must be >= 0, got {self._padding_text()}", *nodes)
        extent = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        if any(p >= e for pair, e in zip(self.pads, extent) for p in pair):
            # A window made only of padding would have max -inf and no argmax.
            what = f"the pool size {self.size}" if self.dilation == (1, 1) else \
                f"the dilated window {extent} (size {self.size}, dilation {self.dilation})"
            raise self.error(f"padding {self._padding_text()} must be smaller than {what}", *nodes)

    def _padding_text(self):
        return str(self.padding) if self.padding == self.padding_end else str(self.pads)

    def _out_shape(self, x_shape, nodes):
        N, C, H, W = x_shape
        out = []
        for axis, n, k, s, (pb, pe), d in zip("HW", (H, W), self.size, self.stride, self.pads, self.dilation):
            if n is None:
                out.append(None)
                continue
            padded = f"{n} + 2*{pb}" if pb == pe else f"{n} + {pb} + {pe}"
            what = f"pool size {k}" if d == 1 else f"pool size {k} dilated by {d} ({d * (k - 1) + 1})"
            if d * (k - 1) + 1 > n + pb + pe:
                raise self.error(f"{what} is larger than the padded input ({axis}: {padded} = {n + pb + pe})",
                                 *nodes)
            o = _k.pool_output_size(n, k, s, (pb, pe), d, self.ceil_mode)
            empty = _padding_only_window(n, k, s, pb, d, o)
            if empty is not None:
                raise self.error(f"window {empty} along {axis} reads only padding (input {n}, {what}, stride {s}, "
                                 f"padding {(pb, pe)}): it would have no maximum", *nodes)
            out.append(o)
        return (N, C) + tuple(out)

    def _check_like(self, t, want, nodes):
        if t.ndim != 4 or any(_known_differ(a, b) for a, b in zip(t.shape, want)):
            raise self.error(f"{t.name} must have shape {fmt_shape(want)}", *nodes)


def _padding_only_window(n, k, s, pb, d, out):
    """The first window (along one axis) none of whose cells ``i*s - pb + a*d`` is in
    ``[0, n)``, or None: dilation can step over a short input."""
    cells = np.arange(out)[:, None] * s - pb + np.arange(k)[None, :] * d
    real = ((cells >= 0) & (cells < n)).any(axis=1)
    return None if real.all() else int(np.argmin(real))


class MaxPool2d(_PoolBase):
    """``y[n, c, i, j] = max_{a < kh, b < kw} Xpad[n, c, i*sh + a*dh, j*sw + b*dw]`` (-inf padding)."""

    name = "max_pool2d"
    supports_out = True  # forward writes into a planned buffer when the compiler passes one

    def infer(self, x):
        self._check(x, (x,))
        if x.dtype.kind != "f":
            raise self.error(f"needs a float input, got {x.dtype}", x)
        return self._out_shape(x.shape, (x,)), x.dtype

    def forward(self, xp, x, out=None):
        _check_windows(self, x.shape)
        # The argmax is its own node (max_pool2d_argmax), computed only where a gradient needs it.
        return _k.max_pool2d_forward(xp, x, self.size, self.stride, self.pads, out=out, argmax=False,
                                     **self._kernel_args())[0]

    def vjp(self, node, g, wrt):
        # One forward pass decides which input each window selected (the argmax,
        # a graph value); the gradient is then a multiplexer routed by it.
        x = node.inputs[0]
        if None in x.shape[2:]:
            raise self.error("the gradient needs static spatial dimensions (H, W)", x)
        idx = apply(MaxPool2dArgmax(**self.attrs), [x, node])
        return [max_pool2d_grad(g, idx, x.shape[2:], **self.geometry)]


def _check_windows(op, x_shape):
    """The build-time checks again at run time (a ``None`` H or W is known only then),
    once per input shape: the forward runs on every call of the program."""
    checked = op.__dict__.setdefault("_checked_shapes", set())
    if x_shape not in checked:
        op._out_shape(tuple(x_shape), ())
        checked.add(x_shape)


def _geometry(size, stride, padding, dilation=1, ceil_mode=False):
    """The public functions' geometry as op attributes: ``padding`` an int, a pair
    ``(ph, pw)`` (both sides) or ``((top, bottom), (left, right))``."""
    size = _pair(size, "size")
    stride = size if stride is None else _pair(stride, "stride")
    if isinstance(padding, (int, np.integer)) or all(isinstance(p, (int, np.integer)) for p in padding):
        begin = end = _pair(padding, "padding")
    else:
        try:
            (top, bottom), (left, right) = padding
        except (TypeError, ValueError):
            raise TypeError("padding must be an int, a pair (ph, pw) or ((top, bottom), (left, right)), "
                            f"got {padding!r}") from None
        begin, end = _pair((top, left), "padding"), _pair((bottom, right), "padding")
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    return dict(size=size, stride=stride, padding=begin, padding_end=end, dilation=_pair(dilation, "dilation"),
                ceil_mode=bool(ceil_mode))


def max_pool2d(x, size, stride=None, padding=0, dilation=1, ceil_mode=False, name=None):
    """Max pooling over ``size`` windows moved by ``stride`` (default: ``size``,
    non-overlapping; AlexNet overlaps with size 3, stride 2), padded with -inf::

        y[n, c, i, j] = max_{a < kh, b < kw} Xpad[n, c, i*sh + a*dh, j*sw + b*dw]

    ``padding``: an int, ``(ph, pw)`` (both sides), or ``((top, bottom), (left,
    right))`` (asymmetric, as TensorFlow's SAME or ONNX's ``pads``); each side
    smaller than the (dilated) window. ``dilation`` ``(dh, dw)`` spaces the
    window's cells (extent ``d*(k-1) + 1``), as PyTorch's and ONNX's. Output size
    ``floor((n + begin + end - d*(k-1) - 1) / s) + 1``; with ``ceil_mode=True``
    ``ceil(...) + 1``, less one where the last window would start past the input
    and the leading padding (PyTorch's ``ceil_mode`` and ONNX's rule; Caffe always
    rounds up, Theano's ``ignore_border=False`` and Chainer's ``cover_all=True``
    are the same windows where that last rule does not bite, e.g. without
    padding). Ties send the gradient to the first maximum in row-major window
    order. Node attributes: ``size``, ``stride``, ``padding`` (top, left),
    ``padding_end`` (bottom, right), ``dilation`` (pairs), ``ceil_mode``."""
    return apply(MaxPool2d(**_geometry(size, stride, padding, dilation, ceil_mode)), [as_tensor(x)], name=name)


class MaxPool2dArgmax(_PoolBase):
    """``idx[n, c, i, j]`` = the first window offset ``a * kw + b`` (row-major)
    where ``Xpad[n, c, i*sh + a*dh, j*sw + b*dw] == y[n, c, i, j]``: which input
    the forward max selected, read off the forward values ``x`` and ``y`` (the
    same rule as the forward kernel's argmax, without recomputing the max):
    a window's first NaN where it holds one, never a padding cell
    (``kernels.pool.fix_argmax``). Not differentiable: an integer, piecewise
    constant in ``x``."""

    name = "max_pool2d_argmax"
    differentiable = False
    supports_out = True

    def infer(self, x, y):
        self._check(x, (x, y))
        self._check_like(y, self._out_shape(x.shape, (x, y)), (x, y))
        return y.shape, _k.argmax_dtype(self.size)  # uint8 up to 16 x 16 windows

    def forward(self, xp, x, y, out=None):
        return _k.max_pool2d_argmax(xp, x, y, self.size, self.stride, self.pads, out=out, **self._kernel_args())


class MaxPool2dWithArgmax(_PoolBase):
    """``(y, idx)``: :class:`MaxPool2d` and :class:`MaxPool2dArgmax` in one sweep
    over the windows. Compile-time only: the compiler puts it in place of a
    pooling node and the argmax node reading it (outputs read by ``Part`` nodes)."""

    name = "max_pool2d_with_argmax"
    num_outputs = 2
    supports_out = True
    differentiable = False

    def forward(self, xp, x, out=(None, None)):
        _check_windows(self, x.shape)
        return _k.max_pool2d_forward(xp, x, self.size, self.stride, self.pads, out=out[0], argmax_out=out[1],
                                     **self._kernel_args())


@rule("max_pool2d_with_argmax", MaxPool2dArgmax)
def _pool_with_argmax(node, ctx):
    """A max pooling whose argmax node (read by its gradient) is in the program
    computes both in one sweep over the windows (``max_pool2d_with_argmax``, two
    outputs) instead of a second sweep comparing ``x`` with ``y``. A compile-time
    rewrite (see :mod:`graphdiff.rewrite`)."""
    x, pooled = node.inputs
    if type(pooled.op) is not MaxPool2d or pooled.inputs[0] is not x or pooled.op.attrs != node.op.attrs:
        return None
    if ctx.replaced(pooled):  # two argmax nodes of one pooling: the compiler merged them already
        return None
    return parts(like(pooled, MaxPool2dWithArgmax(**pooled.op.attrs), (x,)), [pooled, node])


def max_pool2d_argmax(x, y, size, stride=None, padding=0, dilation=1, ceil_mode=False, name=None):
    """The argmax of each window of ``y = max_pool2d(x, ...)`` (see :class:`MaxPool2dArgmax`)."""
    op = MaxPool2dArgmax(**_geometry(size, stride, padding, dilation, ceil_mode))
    return apply(op, [as_tensor(x), as_tensor(y)], name=name)


class MaxPool2dGrad(_PoolBase):
    """The gradient of max pooling, a multiplexer: ``dX[n, c, i*sh + a*dh, j*sw + b*dw]
    += dY[n, c, i, j]`` where ``a * kw + b = idx[n, c, i, j]`` (overlapping windows
    add up; padding is cropped). VJP wrt ``dy``: the gather ``g[idx]``."""

    name = "max_pool2d_grad"
    kind = "gradient"
    supports_out = True

    def __init__(self, input_size, size, stride, padding, dilation=(1, 1), ceil_mode=False, padding_end=None):
        super().__init__(size, stride, padding, dilation, ceil_mode, padding_end, input_size=input_size)

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
        return _k.max_pool2d_grad(xp, dy, idx, self.input_size, self.size, self.stride, self.pads, out=out,
                                  **self._kernel_args())

    def vjp(self, node, g, wrt):
        idx = node.inputs[1]
        return [max_pool2d_gather(g, idx, **self.geometry), None]


def max_pool2d_grad(dy, idx, input_size, size, stride=None, padding=0, dilation=1, ceil_mode=False, name=None):
    """``dE/dX`` of max pooling from ``dy = dE/dY`` and the window argmax ``idx``."""
    op = MaxPool2dGrad(_pair(input_size, "input_size"), **_geometry(size, stride, padding, dilation, ceil_mode))
    return apply(op, [as_tensor(dy), as_tensor(idx)], name=name)


class MaxPool2dGather(_PoolBase):
    """``out[n, c, i, j] = Gpad[n, c, i*sh + a*dh, j*sw + b*dw]`` with ``a * kw + b =
    idx[n, c, i, j]``: the value at each window's argmax, the transpose of
    :class:`MaxPool2dGrad` (and its VJP). VJP wrt ``g``: ``max_pool2d_grad``."""

    name = "max_pool2d_gather"
    kind = "gradient"
    supports_out = True

    def infer(self, g, idx):
        self._check(g, (g, idx))
        self._check_like(idx, self._out_shape(g.shape, (g, idx)), (g, idx))
        if idx.dtype.kind not in "iu":
            raise self.error(f"idx must be integers, got {idx.dtype}", g, idx)
        return idx.shape, g.dtype

    def forward(self, xp, g, idx, out=None):
        return _k.max_pool2d_gather(xp, g, idx, self.size, self.stride, self.pads, out=out, **self._kernel_args())

    def vjp(self, node, gg, wrt):
        g, idx = node.inputs
        if None in g.shape[2:]:
            raise self.error("the gradient needs static spatial dimensions (H, W)", g)
        return [max_pool2d_grad(gg, idx, g.shape[2:], **self.geometry), None]


def max_pool2d_gather(g, idx, size, stride=None, padding=0, dilation=1, ceil_mode=False, name=None):
    """``g`` read at each window's argmax ``idx`` (see :class:`MaxPool2dGather`)."""
    op = MaxPool2dGather(**_geometry(size, stride, padding, dilation, ceil_mode))
    return apply(op, [as_tensor(g), as_tensor(idx)], name=name)
