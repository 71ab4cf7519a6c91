"""The convolution's geometry: reading ``stride``, ``dilation`` and ``padding``
(an int, pairs, ``((top, bottom), (left, right))``, ``"valid"``, ``"same"``),
the output size, and the checks of attributes and layout that ``conv2d`` and its
two gradient ops (:mod:`graphdiff.ops.conv`) share. :mod:`graphdiff.ops.conv`
re-exports the names the pooling ops and the ONNX importer take from it.

Output size along one axis, with padding ``p_begin``/``p_end``, kernel ``k``,
stride ``s`` and dilation ``d``: ``floor((n + p_begin + p_end - (k-1)*d - 1) / s) + 1``.
"""
import numpy as np

from ..errors import ShapeError
from ..graph import Op, as_int, fmt_shape
from ..kernels import conv as _k


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
