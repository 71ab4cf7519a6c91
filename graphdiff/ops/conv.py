"""2-D convolution and its two gradients, each a first-class op with its own VJP.

Layout NCHW; weights ``(O, C // groups, kh, kw)``. The kernels (im2col + GEMM)
live in :mod:`graphdiff.kernels.conv`; a compiled program on NumPy may run a
convolution on oneDNN instead (the ops' ``variants``, :mod:`graphdiff.ops.conv_variants`,
chosen by :mod:`graphdiff.kernels.choice`). This module
holds the shape rules and the VJP rules. The three ops close under differentiation, so grad of grad works:

    conv2d(x, w)               -> VJP: conv2d_grad_input(dy, w), conv2d_grad_weight(x, dy)
    conv2d_grad_weight(x, dy)  -> VJP: conv2d_grad_input(dy, g), conv2d(x, g)
    conv2d_grad_input(dy, w)   -> VJP: conv2d(g, w),             conv2d_grad_weight(g, dy)

(``conv2d`` is linear in ``x`` and in ``w``; the gradients are its two transposes.)

Geometry attributes, shared by the three ops: ``stride`` ``(sh, sw)``, ``dilation``
``(dh, dw)`` (default ``(1, 1)``; diagrams leave it out at that value), ``groups``,
and ``padding``: ``(ph, pw)`` where both sides of each axis are padded alike (as
before), else ``((top, bottom), (left, right))``; :func:`graphdiff.kernels.conv.pads`
gives the latter form for either. The strings ``"valid"`` and ``"same"`` are
resolved to numbers when the node is built. Reading them, the output size and the
checks the three ops share live in :mod:`graphdiff.ops.conv_geometry`.
"""
from ..graph import Op, apply, as_int, as_tensor, fmt_shape
from ..kernels import conv as _k
from . import conv_variants as _variants
# The geometry (padding, output sizes, shared checks); pool, avg_pool and the ONNX
# importer import _pair, _known_differ and same_padding from here.
from .conv_geometry import (_ConvBase, _describe, _dilation, _geometry, _input_size,  # noqa: F401
                            _known_differ, _pair, _resolve_padding, _sizes, same_padding)
from .reduce import sum as _sum


class Conv2d(_ConvBase):
    """``Y_ij = sum_ab W_ab X_(i+a)(j+b)``, per example and filter, summed over the
    filter's input channels; with stride ``s``, zero padding ``p``, dilation ``d``
    (``X_(i*s+a*d)(j*s+b*d)``) and groups."""

    name = "conv2d"
    variants = _variants.FORWARD  # kernels of other libraries (oneDNN), chosen by measurement
    supports_out = True  # forward writes into a planned buffer when the compiler passes one

    def __init__(self, stride, padding, groups, dilation=(1, 1)):
        super().__init__(stride=stride, padding=padding, groups=groups, dilation=dilation)

    def infer(self, x, w, b=None):
        nodes = (x, w) if b is None else (x, w, b)
        self._check_geometry((x, w), self.stride, self.padding, self.groups, self.dilation)
        g = self.groups
        N, C, H, W = x.shape
        O, Cg, kh, kw = w.shape
        if C is not None and C % g:
            raise self.error(f"input channels {C} are not divisible by groups={g}", *nodes)
        if O is not None and O % g:
            raise self.error(f"output channels {O} are not divisible by groups={g}", *nodes)
        if C is not None and Cg is not None and Cg * g != C:
            raise self.error(f"weight expects {Cg} * groups={g} = {Cg * g} input channels, input has {C}", *nodes)
        if b is not None and (b.ndim != 1 or _known_differ(b.shape[0], O)):
            raise self.error(f"bias must have shape ({O},), got {fmt_shape(b.shape)}", *nodes)
        self._check_fits(nodes, (H, W), (kh, kw), self.padding, self.dilation)
        self._check_dtypes(*nodes)
        return (N, O) + tuple(_sizes((H, W), (kh, kw), self.stride, self.padding, self.dilation)), x.dtype

    def forward(self, xp, x, w, b=None, out=None):
        return _k.conv2d_forward(xp, x, w, b, self.stride, self.padding, self.groups, out=out,
                                 dilation=self.dilation)

    def vjp(self, node, g, wrt):
        x, w = node.inputs[:2]
        if None in w.shape[2:]:
            raise self.error("the gradient needs a static kernel size", x, w)
        geometry = _geometry(self)
        gx = conv2d_grad_input(g, w, _input_size(self, x, w), **geometry) if wrt[0] else None
        gw = conv2d_grad_weight(x, g, w.shape[2:], **geometry) if wrt[1] else None
        grads = [gx, gw]
        if len(node.inputs) == 3:  # bias: broadcast over (N, H, W), so its gradient sums over them
            grads.append(_sum(g, axis=(0, 2, 3)) if wrt[2] else None)
        return grads


class Conv2dReLU(Conv2d):
    """``max(conv2d(x, w, b), 0)`` in one kernel: the ReLU rides along with the
    bias add and the copy of the GEMM's output to NCHW (one pass over the
    activations fewer). Built only by the compiler's fusion
    (the ``conv2d_relu`` rule of :mod:`graphdiff.ops.conv_rewrites`), in place of a ReLU whose input is
    a convolution nothing else reads; gradients are taken on the user's graph
    before that, so this op has no VJP of its own."""

    name = "conv2d_relu"
    variants = _variants.FORWARD  # oneDNN: the ReLU as a post-op

    def forward(self, xp, x, w, b=None, out=None):
        return _k.conv2d_forward(xp, x, w, b, self.stride, self.padding, self.groups, out=out, relu=True,
                                 dilation=self.dilation)

    def vjp(self, node, g, wrt):
        raise self.error("is a compile-time fusion of conv2d and relu; differentiate the graph it was "
                         "compiled from", *node.inputs)


class _CompiledOnly(Op):
    """Ops that only the compiler builds, after the gradients were taken: no VJP."""

    def vjp(self, node, g, wrt):
        raise self.error("is built by the compiler after differentiation; differentiate the graph it was "
                         "compiled from", *node.inputs)


class Im2col(_CompiledOnly):
    """The column matrix of a convolution's input, ``(groups, C/groups*kh*kw, N*OH*OW)``
    (:func:`graphdiff.kernels.conv.im2col`), built once for both the forward
    convolution and its weight gradient (:class:`Conv2dFromCols`,
    :class:`Conv2dGradWeightFromCols`) when the compiler shares it."""

    name = "im2col"
    reports_kernel = True  # Program.kernels names its library (NumPy's layout)
    supports_out = True
    describe = _describe

    def __init__(self, kernel_size, stride, padding, groups, dilation=(1, 1)):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding, groups=groups, dilation=dilation)

    def infer(self, x):
        N, C, H, W = x.shape
        (kh, kw), g = self.kernel_size, self.groups
        OH, OW = _sizes((H, W), self.kernel_size, self.stride, self.padding, self.dilation)
        M = None if None in (N, OH, OW) else N * OH * OW
        return (g, None if C is None else C // g * kh * kw, M), x.dtype

    def forward(self, xp, x, out=None):
        return _k.im2col(xp, x, self.kernel_size, self.stride, self.padding, self.groups, out=out,
                         dilation=self.dilation)


class Conv2dFromCols(_CompiledOnly):
    """``conv2d`` (and ``relu`` when ``relu``) from the input's :class:`Im2col` columns."""

    name = "conv2d_from_cols"
    reports_kernel = True
    supports_out = True

    def __init__(self, out_size, groups, relu):
        super().__init__(out_size=out_size, groups=groups, relu=relu)

    def infer(self, cols, w, b=None):  # built with the convolution's own shape
        raise NotImplementedError

    def forward(self, xp, cols, w, b=None, out=None):
        return _k.conv2d_from_cols(xp, cols, w, b, self.out_size, self.groups, out=out, relu=self.relu)


class Conv2dGradWeightFromCols(_CompiledOnly):
    """``conv2d_grad_weight`` from the input's :class:`Im2col` columns."""

    name = "conv2d_grad_weight_from_cols"
    reports_kernel = True
    kind = "gradient"
    supports_out = True

    def __init__(self, kernel_size, groups):
        super().__init__(kernel_size=kernel_size, groups=groups)

    def infer(self, cols, dy):  # built with the weight gradient's own shape
        raise NotImplementedError

    def forward(self, xp, cols, dy, out=None):
        return _k.conv2d_grad_weight_from_cols(xp, cols, dy, self.kernel_size, self.groups, out=out)


class Conv2dBackward(_CompiledOnly):
    """``(conv2d_grad_input, conv2d_grad_weight)`` of a stride-1 convolution from one
    column matrix of ``dy`` (:func:`graphdiff.kernels.conv.conv2d_backward`): the
    compiler's replacement for the pair, read through two ``Part`` nodes. Inputs
    ``(dy, w, x)``."""

    name = "conv2d_backward"
    variants = _variants.BACKWARD_BOTH
    kind = "gradient"
    num_outputs = 2
    supports_out = True
    describe = _describe

    def __init__(self, padding, groups, dilation=(1, 1)):
        super().__init__(padding=padding, groups=groups, dilation=dilation)

    def infer(self, dy, w, x):  # built with the two gradients' own shapes
        raise NotImplementedError

    def forward(self, xp, dy, w, x, out=(None, None)):
        return _k.conv2d_backward(xp, x, dy, w, self.padding, self.groups, out=out, dilation=self.dilation)


def conv2d(x, w, b=None, stride=1, padding=0, groups=1, name=None, dilation=1):
    """2-D convolution (cross-correlation, no kernel flip), as in the slides::

        Y_ij = sum_ab W_ab X_(i+a)(j+b)

    for each example ``n`` and filter ``o``, summed over the input channels of
    ``o``'s group, plus ``b[o]``. ``x`` is ``(N, C, H, W)``, ``w`` is
    ``(O, C // groups, kh, kw)``, ``b`` is ``(O,)`` or None. With stride ``s``
    and zero padding ``p`` on both sides (ints or ``(h, w)`` pairs) the output
    is ``(N, O, floor((H + 2p - kh) / s) + 1, floor((W + 2p - kw) / s) + 1)``.
    ``groups`` splits the channels into independent convolutions (AlexNet's two
    GPU halves).

    ``dilation`` ``d`` (an int or ``(dh, dw)``; PyTorch's, Chainer's and
    TensorFlow's ``dilation``/``dilations``) spaces the kernel's taps ``d`` apart,
    ``Y_ij = sum_ab W_ab X_(i*s+a*d)(j*s+b*d)``: an effective kernel of
    ``(k - 1) * d + 1``, which takes ``k``'s place in the output size.

    ``padding`` may also be ``((top, bottom), (left, right))`` (asymmetric; an
    axis may be given as an int, e.g. ``(1, (0, 2))``), ``"valid"`` (no padding)
    or ``"same"``: TensorFlow's SAME, ``ceil(n / s)`` outputs from a total padding
    of ``max((ceil(n/s) - 1) * s + (k-1)*d + 1 - n, 0)``, the odd one at the
    bottom/right. With stride 1 that is PyTorch's ``padding="same"`` (``n``
    outputs); PyTorch refuses "same" with a stride above 1, graphdiff takes it the
    TensorFlow way (and then needs the static ``H``/``W``). The output size is
    ``floor((n + p_begin + p_end - (k-1)*d - 1) / s) + 1``.

    Node attributes: ``stride``, ``dilation`` (pairs), ``groups``, and ``padding``:
    ``(ph, pw)`` where both sides are padded alike, else ``((top, bottom), (left, right))``
    (the strings are resolved to numbers here).
    """
    x, w = as_tensor(x), as_tensor(w)
    inputs = [x, w] if b is None else [x, w, as_tensor(b)]
    stride, dilation = _pair(stride, "stride"), _dilation(dilation)
    padding = _resolve_padding("conv2d", padding, x.shape[2:] if x.ndim == 4 else (None, None),
                               w.shape[2:] if w.ndim == 4 else (None, None), stride, dilation, inputs)
    op = Conv2d(stride, padding, as_int(groups, "conv2d: groups"), dilation)
    return apply(op, inputs, name=name)


class Conv2dGradWeight(_ConvBase):
    """Slides' case 1, the gradient with respect to the weights::

        dE/dW_lk = sum_ij dE_ij X_(i+l)(j+k)

    summed over the batch (with stride and dilation: ``X_(i*s+l*d)(j*s+k*d)`` of the padded input).
    Linear in ``x`` and in ``dy``; its VJP: wrt ``x`` the input gradient of a
    convolution with weights ``g``, wrt ``dy`` the convolution of ``x`` with ``g``."""

    name = "conv2d_grad_weight"
    variants = _variants.BACKWARD_WEIGHTS
    kind = "gradient"
    supports_out = True

    def __init__(self, kernel_size, stride, padding, groups, dilation=(1, 1)):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding, groups=groups, dilation=dilation)

    def infer(self, x, dy):
        self._check_geometry((x, dy), self.stride, self.padding, self.groups, self.dilation)
        g, (kh, kw) = self.groups, self.kernel_size
        N, C, H, W = x.shape
        O = dy.shape[1]
        if C is not None and C % g:
            raise self.error(f"input channels {C} are not divisible by groups={g}", x, dy)
        if O is not None and O % g:
            raise self.error(f"output channels {O} are not divisible by groups={g}", x, dy)
        if _known_differ(N, dy.shape[0]):
            raise self.error("batch sizes differ", x, dy)
        self._check_fits((x, dy), (H, W), (kh, kw), self.padding, self.dilation)
        self._check_dy(dy, (x, dy), _sizes((H, W), (kh, kw), self.stride, self.padding, self.dilation))
        self._check_dtypes(x, dy)
        return (O, None if C is None else C // g, kh, kw), x.dtype

    def forward(self, xp, x, dy, out=None):
        return _k.conv2d_grad_weight(xp, x, dy, self.kernel_size, self.stride, self.padding, self.groups, out=out,
                                     dilation=self.dilation)

    def vjp(self, node, g, wrt):
        x, dy = node.inputs
        geometry = _geometry(self)
        return [conv2d_grad_input(dy, g, _input_size(self, x, dy), **geometry) if wrt[0] else None,
                conv2d(x, g, **geometry) if wrt[1] else None]


def conv2d_grad_weight(x, dy, kernel_size, stride=1, padding=0, groups=1, name=None, dilation=1):
    """``dE/dW`` of ``conv2d(x, w, stride, padding, groups, dilation=dilation)`` given
    ``dy = dE/dY`` (``kernel_size`` is ``w``'s ``(kh, kw)``; ``padding`` as
    :func:`conv2d` takes it). See :class:`Conv2dGradWeight`."""
    x, dy = as_tensor(x), as_tensor(dy)
    kernel_size, stride, dilation = _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _dilation(dilation)
    padding = _resolve_padding("conv2d_grad_weight", padding, x.shape[2:] if x.ndim == 4 else (None, None),
                               kernel_size, stride, dilation, (x, dy))
    op = Conv2dGradWeight(kernel_size, stride, padding, as_int(groups, "conv2d: groups"), dilation)
    return apply(op, [x, dy], name=name)


class Conv2dGradInput(_ConvBase):
    """Slides' case 2, the gradient with respect to the input: each ``X`` gathers
    from every ``Y`` it fed, a full correlation of ``dE`` with the flipped kernel::

        dE/dX_ij = sum_ab W_ab dE_(i-a)(j-b)        ((i-a), (j-b) >= 0: note the inversion of indexes)

    With stride and dilation the sum runs over ``i = i'*s + a*d``; padding is cropped off, and
    rows/columns no window covered get zero, hence the static ``input_size``.
    Linear in ``dy`` and in ``w``; its VJP: wrt ``dy`` the convolution of ``g``
    with ``w``, wrt ``w`` the weight gradient of ``g`` against ``dy``."""

    name = "conv2d_grad_input"
    variants = _variants.BACKWARD_DATA
    kind = "gradient"
    supports_out = True

    def __init__(self, input_size, stride, padding, groups, dilation=(1, 1)):
        super().__init__(input_size=input_size, stride=stride, padding=padding, groups=groups, dilation=dilation)

    def infer(self, dy, w):
        self._check_geometry((dy, w), self.stride, self.padding, self.groups, self.dilation)
        g, (H, W) = self.groups, self.input_size
        N, O = dy.shape[:2]
        Cg, kh, kw = w.shape[1:]
        if _known_differ(O, w.shape[0]):
            raise self.error(f"gradient has {O} channels, weight has {w.shape[0]} filters", dy, w)
        if w.shape[0] is not None and w.shape[0] % g:
            raise self.error(f"output channels {w.shape[0]} are not divisible by groups={g}", dy, w)
        self._check_fits((dy, w), (H, W), (kh, kw), self.padding, self.dilation)
        self._check_dy(dy, (dy, w), _sizes((H, W), (kh, kw), self.stride, self.padding, self.dilation))
        self._check_dtypes(dy, w)
        return (N, None if Cg is None else Cg * g, H, W), dy.dtype

    def forward(self, xp, dy, w, out=None):
        return _k.conv2d_grad_input(xp, dy, w, self.input_size, self.stride, self.padding, self.groups, out=out,
                                    dilation=self.dilation)

    def vjp(self, node, g, wrt):
        dy, w = node.inputs
        geometry = _geometry(self)
        return [conv2d(g, w, **geometry) if wrt[0] else None,
                conv2d_grad_weight(g, dy, w.shape[2:], **geometry) if wrt[1] else None]


def conv2d_grad_input(dy, w, input_size, stride=1, padding=0, groups=1, name=None, dilation=1):
    """``dE/dX`` of ``conv2d(x, w, stride, padding, groups, dilation=dilation)`` given
    ``dy = dE/dY``, for an input of spatial size ``input_size = (H, W)`` (``padding``
    as :func:`conv2d` takes it). See :class:`Conv2dGradInput`."""
    dy, w = as_tensor(dy), as_tensor(w)
    input_size, stride, dilation = _pair(input_size, "input_size"), _pair(stride, "stride"), _dilation(dilation)
    padding = _resolve_padding("conv2d_grad_input", padding, input_size,
                               w.shape[2:] if w.ndim == 4 else (None, None), stride, dilation, (dy, w))
    op = Conv2dGradInput(input_size, stride, padding, as_int(groups, "conv2d: groups"), dilation)
    return apply(op, [dy, w], name=name)
