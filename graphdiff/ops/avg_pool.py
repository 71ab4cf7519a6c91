"""Average pooling, fixed windows and adaptive bins, with gradients that are ops.

    y  = avg_pool2d(x)                  the mean of each window (zero padding)
    dx = avg_pool2d_grad(dy)            each dy spread evenly over its window
    y  = adaptive_avg_pool2d(x, out)    the mean of each of out[0] x out[1] bins
    dx = adaptive_avg_pool2d_grad(dy)   each dy spread evenly over its bin

All four are linear, and each gradient op is its forward op's transpose, so
each is the other's VJP: grad of grad works. Kernels (two small matrix
products per map, the same code on NumPy and CuPy):
:mod:`graphdiff.kernels.avg_pool`.
"""
from ..graph import Op, apply, as_tensor
from ..kernels import avg_pool as _k
from .conv import _pair
from .pool import _PoolBase


def _check_float(op, x):
    if x.dtype.kind != "f":
        raise op.error(f"needs a float input, got {x.dtype}", x)


def _static_hw(op, x):
    if None in x.shape[2:]:
        raise op.error("the gradient needs static spatial dimensions (H, W)", x)
    return x.shape[2:]


class AvgPool2d(_PoolBase):
    """``y[n, c, i, j] = sum_{a < kh, b < kw} Xpad[n, c, i*sh + a, j*sw + b] / d``,
    zero padding, ``d = kh * kw`` (``count_include_pad``) or the number of real
    (unpadded) inputs in the window. VJP: ``avg_pool2d_grad``."""

    name = "avg_pool2d"

    def __init__(self, size, stride, padding, count_include_pad):
        super().__init__(size=size, stride=stride, padding=padding, count_include_pad=count_include_pad)

    def infer(self, x):
        self._check(x, (x,))  # padding < size: no window is padding only (its divisor would be 0)
        _check_float(self, x)
        return self._out_shape(x.shape, (x,)), x.dtype

    def forward(self, xp, x):
        return _k.avg_pool2d_forward(xp, x, self.size, self.stride, self.padding, self.count_include_pad)

    def vjp(self, node, g, wrt):
        x = node.inputs[0]
        return [avg_pool2d_grad(g, _static_hw(self, x), self.size, self.stride, self.padding,
                                self.count_include_pad)]


def avg_pool2d(x, size, stride=None, padding=0, count_include_pad=True, name=None):
    """Average pooling over ``size`` windows moved by ``stride`` (default:
    ``size``), zero-padded by ``padding`` (< size) on both sides; output size
    ``floor((n + 2p - k) / s) + 1`` (floor mode: PyTorch's ``ceil_mode=False``).
    ``count_include_pad=True`` (PyTorch's default) divides by ``kh * kw``
    everywhere; False divides by the real inputs in each window (ONNX's default)."""
    size = _pair(size, "size")
    stride = size if stride is None else _pair(stride, "stride")
    op = AvgPool2d(size, stride, _pair(padding, "padding"), bool(count_include_pad))
    return apply(op, [as_tensor(x)], name=name)


class AvgPool2dGrad(_PoolBase):
    """The gradient of average pooling: ``dX[n, c, i*sh + a, j*sw + b] += dY[n, c,
    i, j] / d(i, j)`` for every window offset ``(a, b)`` (overlapping windows add
    up; padding is cropped). Linear in ``dy``; VJP: ``avg_pool2d`` (its transpose)."""

    name = "avg_pool2d_grad"
    kind = "gradient"

    def __init__(self, input_size, size, stride, padding, count_include_pad):
        super().__init__(input_size=input_size, size=size, stride=stride, padding=padding,
                         count_include_pad=count_include_pad)

    def infer(self, dy):
        self._check(dy, (dy,))
        _check_float(self, dy)
        N, C = dy.shape[:2]
        self._check_like(dy, self._out_shape((N, C) + self.input_size, (dy,)), (dy,))
        return (N, C) + self.input_size, dy.dtype

    def forward(self, xp, dy):
        return _k.avg_pool2d_backward(xp, dy, self.input_size, self.size, self.stride, self.padding,
                                      self.count_include_pad)

    def vjp(self, node, g, wrt):
        return [avg_pool2d(g, self.size, self.stride, self.padding, self.count_include_pad)]


def avg_pool2d_grad(dy, input_size, size, stride=None, padding=0, count_include_pad=True, name=None):
    """``dE/dX`` of :func:`avg_pool2d` from ``dy = dE/dY`` (input ``(H, W)`` = ``input_size``)."""
    size = _pair(size, "size")
    stride = size if stride is None else _pair(stride, "stride")
    op = AvgPool2dGrad(_pair(input_size, "input_size"), size, stride, _pair(padding, "padding"),
                       bool(count_include_pad))
    return apply(op, [as_tensor(dy)], name=name)


class _AdaptiveBase(Op):
    def _check(self, x):
        if x.ndim != 4:
            raise self.error(f"expects a 4-D tensor (NCHW); {x.name} has {x.ndim} dimensions", x)
        _check_float(self, x)
        if min(self.output_size) < 1:
            raise self.error(f"output size must be >= 1, got {self.output_size}", x)


class AdaptiveAvgPool2d(_AdaptiveBase):
    """``y[n, c, i, j]`` = the mean of ``x[n, c, h, w]`` over PyTorch's bins
    ``floor(i*H/OH) <= h < ceil((i+1)*H/OH)``, ``floor(j*W/OW) <= w <
    ceil((j+1)*W/OW)``: a fixed output size ``(OH, OW)`` whatever the input's.
    VJP: ``adaptive_avg_pool2d_grad``."""

    name = "adaptive_avg_pool2d"

    def __init__(self, output_size):
        super().__init__(output_size=output_size)

    def infer(self, x):
        self._check(x)
        return x.shape[:2] + self.output_size, x.dtype

    def forward(self, xp, x):
        return _k.adaptive_avg_pool2d_forward(xp, x, self.output_size)

    def vjp(self, node, g, wrt):
        return [adaptive_avg_pool2d_grad(g, _static_hw(self, node.inputs[0]), self.output_size)]


def adaptive_avg_pool2d(x, output_size, name=None):
    """Average pooling to a fixed ``output_size`` (an int or a pair), as
    PyTorch's ``adaptive_avg_pool2d`` (torchvision's AlexNet pools to 6 x 6)."""
    return apply(AdaptiveAvgPool2d(_pair(output_size, "output_size")), [as_tensor(x)], name=name)


class AdaptiveAvgPool2dGrad(_AdaptiveBase):
    """``dX[n, c, h, w] = sum over the bins (i, j) holding (h, w) of dY[n, c, i, j] /
    |bin(i, j)|``: the transpose of :class:`AdaptiveAvgPool2d`, and its VJP;
    its own VJP is ``adaptive_avg_pool2d``."""

    name = "adaptive_avg_pool2d_grad"
    kind = "gradient"

    def __init__(self, input_size, output_size):
        super().__init__(input_size=input_size, output_size=output_size)

    def infer(self, dy):
        self._check(dy)
        if any(a is not None and a != b for a, b in zip(dy.shape[2:], self.output_size)):
            raise self.error(f"must have spatial size {self.output_size}", dy)
        return dy.shape[:2] + self.input_size, dy.dtype

    def forward(self, xp, dy):
        return _k.adaptive_avg_pool2d_backward(xp, dy, self.input_size, self.output_size)

    def vjp(self, node, g, wrt):
        return [adaptive_avg_pool2d(g, self.output_size)]


def adaptive_avg_pool2d_grad(dy, input_size, output_size, name=None):
    """``dE/dX`` of :func:`adaptive_avg_pool2d` from ``dy = dE/dY``."""
    op = AdaptiveAvgPool2dGrad(_pair(input_size, "input_size"), _pair(output_size, "output_size"))
    return apply(op, [as_tensor(dy)], name=name)
