"""Local response normalization (the slides' three forms), each twice differentiable.

Across feature maps (AlexNet), ``lrn``; within a feature map, ``lrn_within``::

    scale = k + alpha * sum_{j in Nbr} x_j^2        lrn_scale / lrn_within_scale   (a forward value)
    y     = x * scale^-beta                         lrn_normalize / lrn_within_normalize
    dx    = dy * scale^-beta - 2 alpha beta x * S^T(dy * y / scale)     lrn_grad / lrn_within_grad

where ``S`` is the window sum over the neighbours (``window_sum_channels`` or
``window_sum_spatial``, each an op whose VJP is the transposed window sum) and
``S^T`` its transpose. The backward is one fused kernel that reuses ``scale``
and ``y`` from the forward pass; its own VJP is written in graph ops, so grad of
grad works. The simplified form ``normalize_cross_map`` (``y = x / sum_k x_k``)
has the slides' refactored gradient, also in graph ops. Kernels:
:mod:`graphdiff.kernels.lrn`.
"""
from ..graph import Op, apply, as_int, as_number, as_tensor, unify_shapes
from ..kernels import device as _device
from ..kernels import lrn as _k
from ..kernels.parallel import parallel_blocks, workspace
from .reduce import sum as _sum


def _check_4d(op, x):
    """The layout: ``(N, C, ...)`` of any ndim >= 3 across channels (the window runs
    along axis 1: 3-D ``(N, C, L)``, 4-D NCHW, 5-D ``(N, C, D, H, W)``, as PyTorch's
    LocalResponseNorm); NCHW within a map (a 2-D neighbourhood)."""
    if getattr(getattr(op, "window", None), "within", False) or isinstance(op, WindowSumSpatial):
        if x.ndim != 4:
            raise op.error(f"expects a 4-D tensor (NCHW); {x.name} has {x.ndim} dimensions", x)
    elif x.ndim < 3:
        raise op.error(f"expects a tensor (N, C, ...) of 3 or more dimensions, channels on axis 1; "
                       f"{x.name} has {x.ndim} dimensions", x)
    if x.dtype.kind != "f":
        raise op.error(f"needs a float input, got {x.dtype}", x)


# --------------------------------------------------------------------------- window sums
class _WindowSum(Op):
    """A sum over each element's neighbours; linear, so its VJP is the
    transposed sum (the same window mirrored: equal for odd sizes)."""

    supports_out = True  # forward writes into a planned buffer when the compiler passes one

    def __init__(self, size, transpose=False):
        super().__init__(size=size, transpose=transpose)

    def infer(self, x):
        _check_4d(self, x)
        if self.size < 1:
            raise self.error(f"size must be >= 1, got {self.size}", x)
        return x.shape, x.dtype

    def vjp(self, node, g, wrt):
        return [apply(type(self)(self.size, not self.transpose), [g])]


class WindowSumChannels(_WindowSum):
    """``S(x)[n, c] = sum_{j = c - size//2}^{c + (size-1)//2} x[n, j]`` over the
    channels that exist (axis 1; a running sum, O(C) whatever the size). For odd
    ``size`` that is ``|j - c| <= size//2``; an even window has one more
    neighbour below ``c`` than above (as in PyTorch), and its transpose mirrors it."""

    name = "window_sum_channels"

    def forward(self, xp, x, out=None):
        return _k.window_sum_channels(xp, x, self.size, self.transpose, out=out)


class WindowSumSpatial(_WindowSum):
    """``S(x)[n, c, i, j] = sum_{|a - i| <= size//2, |b - j| <= size//2} x[n, c, a, b]``
    (a ``size x size`` neighbourhood in the same feature map, zeros outside; an
    even window reaches one further up/left, as in :class:`WindowSumChannels`)."""

    name = "window_sum_spatial"

    def forward(self, xp, x, out=None):
        return _k.window_sum_spatial(xp, x, self.size, self.transpose, out=out)


def window_sum_channels(x, size, transpose=False, name=None):
    """Sum over ``size`` neighbouring channels (see :class:`WindowSumChannels`)."""
    op = WindowSumChannels(as_int(size, "window_sum_channels: size"), bool(transpose))
    return apply(op, [as_tensor(x)], name=name)


def window_sum_spatial(x, size, transpose=False, name=None):
    """Sum over a ``size x size`` spatial neighbourhood (see :class:`WindowSumSpatial`)."""
    op = WindowSumSpatial(as_int(size, "window_sum_spatial: size"), bool(transpose))
    return apply(op, [as_tensor(x)], name=name)


# --------------------------------------------------------------------------- LRN: scale, normalize, grad
class _LRNScale(Op):
    """``scale = k + alpha * S(x^2)``. VJP: ``2 alpha x S^T(g)``."""

    supports_out = True

    def __init__(self, size, alpha, k):
        super().__init__(size=size, alpha=alpha, k=k)

    def infer(self, x):
        _check_4d(self, x)
        if self.size < 1:
            raise self.error(f"size must be >= 1, got {self.size}", x)
        return x.shape, x.dtype

    def forward(self, xp, x, out=None):
        return _k.lrn_scale(xp, x, self.size, self.alpha, self.k, within=self.window.within, out=out)

    def vjp(self, node, g, wrt):
        x = node.inputs[0]
        return [(2.0 * self.alpha) * x * self.window.apply(g, self.size, transpose=True)]


class _LRNNormalize(Op):
    """``y = x * scale^-beta`` where ``scale`` is this family's scale of the same
    ``x``. Its VJP is the whole chain rule through both paths (``x`` directly and
    through ``scale``) in one fused op, ``lrn_grad(x, y, scale, dy)``; ``scale``
    therefore gets no gradient of its own here (it would be counted twice)."""

    supports_out = True

    def __init__(self, size, alpha, beta, k):
        super().__init__(size=size, alpha=alpha, beta=beta, k=k)

    def infer(self, x, scale):
        _check_4d(self, x)
        made = scale.op
        if not (isinstance(made, self.scale_op) and scale.inputs[0] is x
                and (made.size, made.alpha, made.k) == (self.size, self.alpha, self.k)):
            raise self.error(f"scale must be {self.scale_op.name}(x) with size={self.size}, alpha={self.alpha}, "
                             f"k={self.k}", x, scale)
        return x.shape, x.dtype

    def forward(self, xp, x, scale, out=None):
        if _device.on_device(xp):  # one kernel, a new array
            return _device.lrn_normalize(xp, x, scale, self.beta)
        y = xp.empty_like(x) if out is None else out

        def block(lo, hi):
            yb, sb = y[lo:hi], scale[lo:hi]
            if self.beta == 0.75:  # AlexNet's power as square roots: ~15x faster than power()
                root4 = workspace(xp, "lrn_op_root4", yb.shape, x.dtype)
                xp.sqrt(sb, out=yb)
                xp.sqrt(yb, out=root4)
                xp.multiply(yb, root4, out=yb)
            else:
                xp.power(sb, x.dtype.type(self.beta), out=yb)
            xp.divide(x[lo:hi], yb, out=yb)

        parallel_blocks(xp, x.shape[0], x[:1].size, block)
        return y

    def vjp(self, node, g, wrt):
        x, scale = node.inputs
        return [apply(self.grad_op(self.size, self.alpha, self.beta), [x, node, scale, g]), None]


class _LRNGrad(Op):
    """``dx = dy * scale^-beta - 2 alpha beta x * S^T(dy * y / scale)``: the
    fused backward of LRN. Its VJP treats ``x, y, scale, dy`` as independent
    (the graph adds the paths through ``y`` and ``scale``); with ``m = S(g x)``::

        d/d dy    = g scale^-beta - 2 alpha beta (y / scale) m
        d/d x     = -2 alpha beta g S^T(dy y / scale)
        d/d y     = -2 alpha beta (dy / scale) m
        d/d scale = -beta g dy scale^(-beta-1) + 2 alpha beta dy y m / scale^2
    """

    kind = "gradient"
    supports_out = True

    def __init__(self, size, alpha, beta):
        super().__init__(size=size, alpha=alpha, beta=beta)

    def infer(self, x, y, scale, dy):
        _check_4d(self, x)
        if any(t.dtype != x.dtype for t in (y, scale, dy)):
            raise self.error("x, y, scale and dy must share their dtype", x, y, scale, dy)
        # a None dim (a batch known at run time) unifies with a static one (dy may know it)
        return unify_shapes(self, x, y, scale, dy), x.dtype

    def forward(self, xp, x, y, scale, dy, out=None):
        return self.kernel(xp, x, y, scale, dy, self.size, self.alpha, self.beta, out=out)

    def vjp(self, node, g, wrt):
        x, y, scale, dy = node.inputs
        c = 2.0 * self.alpha * self.beta
        window = self.window.apply
        m = window(g * x, self.size)
        scale_pow = scale ** -self.beta
        return [
            -c * g * window(dy * y / scale, self.size, transpose=True) if wrt[0] else None,
            -c * (dy / scale) * m if wrt[1] else None,
            (dy / scale) * (c * y * m / scale - self.beta * g * scale_pow) if wrt[2] else None,
            g * scale_pow - c * (y / scale) * m if wrt[3] else None,
        ]


class _Window:
    """A window-sum family: its graph op (and whether it sums within a map)."""

    def __init__(self, op, within):
        self.op, self.within = op, within

    def apply(self, x, size, transpose=False):
        return apply(self.op(size, transpose), [x])


_ACROSS = _Window(WindowSumChannels, within=False)
_WITHIN = _Window(WindowSumSpatial, within=True)


class LRNScale(_LRNScale):
    name, window = "lrn_scale", _ACROSS


class LRNWithinScale(_LRNScale):
    name, window = "lrn_within_scale", _WITHIN


class LRNGrad(_LRNGrad):
    name, window = "lrn_grad", _ACROSS

    def kernel(self, xp, *args, out=None):
        return _k.lrn_backward(xp, *args, out=out)


class LRNWithinGrad(_LRNGrad):
    name, window = "lrn_within_grad", _WITHIN

    def kernel(self, xp, *args, out=None):
        return _k.lrn_within_backward(xp, *args, out=out)


class LRNNormalize(_LRNNormalize):
    name, scale_op, grad_op = "lrn_normalize", LRNScale, LRNGrad


class LRNWithinNormalize(_LRNNormalize):
    name, scale_op, grad_op = "lrn_within_normalize", LRNWithinScale, LRNWithinGrad


def _lrn(scale_op, normalize_op, x, size, alpha, beta, k, name):
    x = as_tensor(x)
    what = normalize_op.name.replace("_normalize", "")  # lrn or lrn_within
    size = as_int(size, f"{what}: size")
    alpha, beta, k = (as_number(v, f"{what}: {n}") for n, v in (("alpha", alpha), ("beta", beta), ("k", k)))
    scale = apply(scale_op(size, alpha, k), [x])
    return apply(normalize_op(size, alpha, beta, k), [x, scale], name=name)


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0, name=None):
    """Local response normalization across feature maps (AlexNet, section 3.3)::

        y[n, c, ...] = x[n, c, ...] / (k + alpha * sum_{|j - c| <= size//2} x[n, j, ...]^2) ** beta

    on ``(N, C, ...)`` inputs of 3 or more dimensions (3-D ``(N, C, L)``, 4-D
    NCHW, 5-D ``(N, C, D, H, W)``; channels on axis 1, as PyTorch's
    ``LocalResponseNorm``),
    with the paper's hyperparameters as defaults (an even ``size`` sums channels
    ``c - size//2 .. c + (size-1)//2``, as PyTorch does). ``alpha`` is used as
    written in the paper, **not** divided by ``size``: Caffe's and PyTorch's
    ``local_response_norm`` divide it by ``size``, so ``lrn(x, alpha=a)`` equals
    their LRN with ``alpha = a * size``. Two nodes: ``lrn_scale`` (the
    denominator's base, kept for the backward) and ``lrn_normalize``; the
    gradient is the fused op ``lrn_grad``.
    """
    return _lrn(LRNScale, LRNNormalize, x, size, alpha, beta, k, name)


def lrn_within(x, size=5, alpha=1e-4, beta=0.75, k=2.0, name=None):
    """Local response normalization within each feature map (the slides' second
    variant)::

        y[n, c, i, j] = x[n, c, i, j] / (k + alpha * sum_{|a-i|, |b-j| <= size//2} x[n, c, a, b]^2) ** beta

    over a ``size x size`` neighbourhood (zeros beyond the border), ``alpha``
    not divided by ``size^2`` (Caffe's WITHIN_CHANNEL divides). Nodes:
    ``lrn_within_scale``, ``lrn_within_normalize``; gradient ``lrn_within_grad``.
    """
    return _lrn(LRNWithinScale, LRNWithinNormalize, x, size, alpha, beta, k, name)


# --------------------------------------------------------------------------- the slides' simplified form
class NormalizeCrossMap(Op):
    """``Y_l = X_l / sum_k X_k`` over the feature maps (axis 1). VJP, in the
    slides' refactored form with ``c = sum_k X_k``::

        dX_l = dE_l / c - sum_k Y_k dE_k / c
    """

    name = "normalize_cross_map"

    def infer(self, x):
        if x.ndim < 2 or x.dtype.kind != "f":
            raise self.error("expects a float tensor with a channel axis (axis 1)", x)
        return x.shape, x.dtype

    def forward(self, xp, x):
        return x / xp.sum(x, axis=1, keepdims=True)

    def vjp(self, node, g, wrt):
        c = _sum(node.inputs[0], axis=1, keepdims=True)
        return [(g - _sum(node * g, axis=1, keepdims=True)) / c]


def normalize_cross_map(x, name=None):
    """The slides' simplified cross-map normalization ``Y_l = X_l / sum_k X_k``
    (sum over channels, axis 1); meant for positive inputs."""
    return apply(NormalizeCrossMap(), [as_tensor(x)], name=name)
