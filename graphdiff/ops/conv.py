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
resolved to numbers when the node is built.
"""
import numpy as np

from ..errors import ShapeError
from ..graph import Op, apply, as_int, as_tensor, fmt_shape
from ..kernels import conv as _k
from . import conv_variants as _variants
from .reduce import sum as _sum


def _pair(value, what):
    """An int or a pair -> a pair of Python ints (a float such as 2.7 is a TypeError, not 2)."""
    if isinstance(value, (int, np.integer)):
        return (as_int(value, what),) * 2
    try:
        a, b = value
        return (as_int(a, what), as_int(b, what))
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be an int or a pair of ints, got {value!r}") from None


def _padding(value):
    """``padding`` as an op attribute: an int, ``(ph, pw)`` (each may be a
    ``(begin, end)`` pair) or ``((top, bottom), (left, right))`` -> ``(ph, pw)``
    where every axis is padded alike on both sides, else ``((top, bottom), (left, right))``."""
    what = "conv2d: padding"
    expected = "an int, a pair (ph, pw), ((top, bottom), (left, right)), 'valid' or 'same'"
    if isinstance(value, (int, np.integer)):
        p = as_int(value, what, expected)
        return (p, p)
    try:
        h, w = value
        axes = []
        for v in (h, w):
            if isinstance(v, (int, np.integer)):
                axes.append((as_int(v, what, expected),) * 2)
            else:
                a, b = v
                axes.append((as_int(a, what, expected), as_int(b, what, expected)))
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be {expected}, got {value!r}") from None
    if all(a == b for a, b in axes):
        return tuple(a for a, _ in axes)
    return tuple(axes)


def same_padding(n, k, s, d):
    """TensorFlow's SAME along one axis: ``ceil(n / s)`` outputs; the total padding
    ``max((ceil(n/s) - 1) * s + (k-1)*d + 1 - n, 0)`` split with the extra one at the
    end (bottom/right; ONNX's ``SAME_UPPER``). With stride 1 it is ``(k-1)*d`` for
    any ``n``, PyTorch's ``padding="same"``. Returns ``(begin, end)``."""
    ke = (k - 1) * d + 1
    total = ke - 1 if s == 1 else max((-(-n // s) - 1) * s + ke - n, 0)
    return (total // 2, total - total // 2)


def _resolve_padding(op_name, padding, in_size, kernel_size, stride, dilation, nodes):
    """``"valid"`` -> 0; ``"same"`` -> :func:`same_padding` per axis (it needs the
    kernel size, and the input size where the stride is above 1); anything else
    as :func:`_padding` reads it."""
    if not isinstance(padding, str):
        return _padding(padding)
    if padding in ("valid", "same") and any(t.ndim != 4 for t in nodes[:2]):
        return (0, 0)  # the shape rule reports the dimensions
    names = " ".join(f"{t.name} {fmt_shape(t.shape)}" for t in nodes)
    if padding == "valid":
        return (0, 0)
    if padding != "same":
        raise ShapeError(f"{op_name}: {names}: padding must be an int, a pair (ph, pw), ((top, bottom), "
                         f"(left, right)), 'valid' or 'same', got {padding!r}")
    axes = []
    for axis, n, k, st, d in zip("HW", in_size, kernel_size, stride, dilation):
        if k is None:
            raise ShapeError(f"{op_name}: {names}: padding='same' needs a static kernel size ({axis})")
        if n is None and st != 1:
            raise ShapeError(f"{op_name}: {names}: padding='same' with stride {st} needs a static input size "
                             f"({axis}): TensorFlow's SAME padding depends on it")
        axes.append(same_padding(n, k, st, d))
    return _padding(tuple(axes))


def _dilation(value):
    return _pair(value, "conv2d: dilation")


def _out(n, k, s, p, d=1):
    """``floor((n + p_begin + p_end - (k-1)*d - 1) / s) + 1`` (``p`` an int or a
    ``(begin, end)`` pair), or None where ``n`` or ``k`` is unknown."""
    if n is None or k is None:
        return None
    p0, p1 = (p, p) if isinstance(p, int) else p
    return (n + p0 + p1 - (k - 1) * d - 1) // s + 1


def _sizes(in_size, kernel_size, stride, padding, dilation):
    """The output ``(OH, OW)`` (None where unknown)."""
    return [_out(n, k, s, p, d) for n, k, s, p, d in zip(in_size, kernel_size, stride, padding, dilation)]


def _known_differ(a, b):
    return a is not None and b is not None and a != b


def _describe(op):
    """The op and its attributes; ``dilation`` only where it is not 1 (diagrams as before)."""
    if op.attrs.get("dilation") != (1, 1):
        return Op.describe(op)
    parts = ", ".join(f"{k}={v}" for k, v in sorted(op.attrs.items()) if k != "dilation")
    return f"{op.name}({parts})"


class _ConvBase(Op):
    """Checks the attributes and the layout shared by the three ops."""

    describe = _describe

    def _check_geometry(self, nodes, stride, padding, groups, dilation=(1, 1)):
        if any(s < 1 for s in stride):
            raise self.error(f"stride must be >= 1, got {stride}", *nodes)
        if any(d < 1 for d in dilation):
            raise self.error(f"dilation must be >= 1, got {dilation}", *nodes)
        if any(p < 0 for side in _k.pads(padding) for p in side):
            raise self.error(f"padding must be >= 0, got {padding}", *nodes)
        if groups < 1:
            raise self.error(f"groups must be >= 1, got {groups}", *nodes)
        for t in nodes:
            if t.ndim != 4:
                raise self.error(f"expects 4-D tensors (NCHW / OIHW); {t.name} has {t.ndim} dimensions", *nodes)

    def _check_fits(self, nodes, in_size, kernel_size, padding, dilation=(1, 1)):
        for axis, n, k, p, d in zip("HW", in_size, kernel_size, padding, dilation):
            if k is not None and k < 1:
                raise self.error(f"kernel size must be >= 1, got {k} ({axis})", *nodes)
            if n is None or k is None:
                continue
            (p0, p1), ke = (p, p) if isinstance(p, int) else p, (k - 1) * d + 1
            if ke > n + p0 + p1:
                kernel = f"kernel {k}" if d == 1 else f"dilated kernel {ke} = ({k} - 1) * {d} + 1"
                padded = f"{n} + 2*{p0}" if p0 == p1 else f"{n} + {p0} + {p1}"
                raise self.error(f"{kernel} is larger than the padded input ({axis}: {padded} = {n + p0 + p1})",
                                 *nodes)

    def _check_dtypes(self, *nodes):
        dtypes = {t.dtype for t in nodes}
        if len(dtypes) > 1 or next(iter(dtypes)).kind != "f":
            raise self.error(f"needs float inputs of one dtype, got {', '.join(t.dtype.name for t in nodes)}",
                             *nodes)

    def _check_dy(self, dy, nodes, out_size):
        for axis, got, want in zip("HW", dy.shape[2:], out_size):
            if _known_differ(got, want):
                raise self.error(f"gradient {axis} size {got} does not match the convolution's output size {want}",
                                 *nodes)


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


def _input_size(op, x, *others):
    """The static ``(H, W)`` the input gradient must restore (strides may leave
    the last rows/columns uncovered, so it cannot be read off ``dy``)."""
    if None in x.shape[2:]:
        raise op.error("the gradient with respect to the input needs static spatial dimensions "
                       "(H, W); feed a placeholder with known height and width", x, *others)
    return tuple(x.shape[2:])


def _geometry(op):
    """The geometry keywords a VJP passes on to the ops it builds."""
    return dict(stride=op.stride, padding=op.padding, groups=op.groups, dilation=op.dilation)


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
