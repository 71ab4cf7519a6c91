"""Max pooling's GPU kernels (CuPy): each a fused kernel over the window views, where
the NumPy kernels of :mod:`graphdiff.kernels.pool` make many small passes. The
shared machinery (one fused kernel per spec, persistent bordered buffers) is
:mod:`graphdiff.kernels.device`'s.
"""
import numpy

from ..conv import pads as pool_pads  # ((top, bottom), (left, right)) from (ph, pw) or that form itself
from ..device import _bordered, _device_id, bordered, kernel, long_lived  # noqa: F401 - the GPU machinery


def pool_output_size(n, k, s, pads, d=1, ceil_mode=False):
    """Windows along one axis of length ``n``, padded by ``pads = (begin, end)``,
    window ``k`` dilated by ``d`` (extent ``d*(k-1) + 1``), stride ``s``:
    ``floor((n + begin + end - d*(k-1) - 1) / s) + 1``, or with ``ceil_mode``
    ``ceil(...) + 1`` less one where the last window would start past the input
    and the leading padding (``(out - 1) * s >= n + begin``): PyTorch's rule."""
    span = n + pads[0] + pads[1] - d * (k - 1) - 1
    if span < 0:
        return 0
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + pads[0]:
        out -= 1
    return out


def pool_padded_size(input_size, size, stride, pads, dilation, out_size):
    """``(Hp, Wp)``: the input with its leading padding and every cell a window reads
    (past the trailing padding with ``ceil_mode``; short of it where no window reaches)."""
    return tuple(max(p[0] + n, (o - 1) * s + d * (k - 1) + 1)
                 for n, k, s, p, d, o in zip(input_size, size, stride, pool_pads(pads), dilation, out_size))


def _pool_pad(xp, x, pads, padded_size, tag, fill):
    """``x`` at ``(top, left)`` in a persistent bordered buffer of ``padded_size`` (``x``
    itself when that is its own size)."""
    N, C, H, W = x.shape
    if tuple(padded_size) == (H, W):
        return x
    (pt, _), (pl, _) = pool_pads(pads)
    buf, inner = bordered(xp, tag, (N, C) + tuple(padded_size), x.dtype,
                          (slice(None), slice(None), slice(pt, pt + H), slice(pl, pl + W)), fill)
    inner[...] = x
    return buf


def _windows(xpad, size, stride, out_size, dilation=(1, 1)):
    """The ``kh*kw`` strided views ``xpad[:, :, i*sh + a*dh, j*sw + b*dw]``, in offset ``a*kw + b`` order."""
    (kh, kw), (sh, sw), (OH, OW), (dh, dw) = size, stride, out_size, dilation
    return [xpad[:, :, a * dh:a * dh + sh * (OH - 1) + 1:sh, b * dw:b * dw + sw * (OW - 1) + 1:sw]
            for a in range(kh) for b in range(kw)]


def max_pool2d_forward(xp, x, size, stride, padding, out_size, argmax_dtype=None, dilation=(1, 1)):
    """``y = max_ab Xpad[i*sh + a*dh, j*sw + b*dw]`` and, with ``argmax_dtype``, its offset
    ``a*kw + b``: ONE kernel over the ``kh*kw`` window views (-inf padding in a
    persistent bordered copy). The NumPy kernels' rule: a NaN propagates and the
    argmax is the window's first NaN; else the first maximum among the input's own
    cells, never a padding cell (also where the window is all -inf). ``padding``
    is ``(ph, pw)`` or ``((top, bottom), (left, right))``; ``out_size`` (OH, OW)
    says how far the windows reach (``ceil_mode``). Returns ``(y, argmax or None)``."""
    input_size = x.shape[2:]
    padded_size = pool_padded_size(input_size, size, stride, padding, dilation, out_size)
    x = _pool_pad(xp, x, padding, padded_size, "device_pool_xpad", -numpy.inf)
    views = _windows(x, size, stride, out_size, dilation)
    if argmax_dtype is None:
        return kernel(xp, _pool_max, len(views))(*views), None
    masks = _real_cells(xp, input_size, padded_size, size, stride, padding, out_size, dilation)
    return kernel(xp, _pool_with_argmax, len(views), numpy.dtype(argmax_dtype).type, x.dtype.type,
                  masks is not None)(*views, *(masks or ()))


def _real_cells(xp, input_size, padded_size, size, stride, padding, out_size, dilation=(1, 1)):
    """Per window offset, a bool ``(OH, OW)`` mask of the windows whose cell at that
    offset is the input's own (not padding); None without padding. Made (uploaded)
    once per geometry and kept."""
    if tuple(padded_size) == tuple(input_size):
        return None
    pads = pool_pads(padding)
    key = (xp, _device_id(xp), "real", tuple(input_size), tuple(padded_size), tuple(size), tuple(stride), pads,
           tuple(out_size), tuple(dilation))
    masks = _bordered.get(key)
    if masks is None:
        (kh, kw), (sh, sw), (OH, OW), (dh, dw) = size, stride, out_size, dilation
        (pt, _), (pl, _) = pads
        H, W = input_size
        rows, cols = numpy.arange(OH) * sh, numpy.arange(OW) * sw
        host = [((rows + a * dh >= pt) & (rows + a * dh < pt + H))[:, None]
                & ((cols + b * dw >= pl) & (cols + b * dw < pl + W))[None, :]
                for a in range(kh) for b in range(kw)]
        with long_lived(xp):
            masks = _bordered[key] = tuple(xp.asarray(m) for m in host)
    return masks


def _pool_max(xp, count):
    def pool_max(*views):
        y = views[0]
        for v in views[1:]:
            y = xp.maximum(y, v)  # NaN propagates
        return y
    return pool_max


def _pool_with_argmax(xp, count, index_type, value_type, padded):
    def pool_with_argmax(*params):
        views, real = params[:count], params[count:]
        # The first real cell is taken, then a NaN (final) or a strictly greater value
        # takes over: ties keep the first, -inf windows keep a cell of the input.
        best = views[0]
        taken = real[0] if padded else None
        on_nan = (views[0] != views[0]) if taken is None else (views[0] != views[0]) & taken
        am = xp.where(views[0] == views[0], index_type(0), index_type(0))
        for k in range(1, count):
            v = views[k]
            nan = v != v
            take = ~on_nan & (nan | (v > best))
            if padded:
                take = real[k] & (take | ~taken)
                take = take & ~on_nan
                taken = taken | take
            best = xp.where(take, v, best)
            am = xp.where(take, index_type(k), am)
            on_nan = on_nan | (take & nan)
        return best, am
    return pool_with_argmax


def max_pool2d_argmax(xp, x, y, size, stride, padding, argmax_dtype, dilation=(1, 1)):
    """The argmax op (which cell ``y`` came from) on the device: the same one-kernel
    sweep as :func:`max_pool2d_forward`, by the same rule (``y`` is recomputed in
    registers rather than compared, so NaN and -inf windows need no second pass)."""
    return max_pool2d_forward(xp, x, size, stride, padding, y.shape[2:], argmax_dtype, dilation=dilation)[1]


def max_pool2d_gather(xp, g, argmax, size, stride, padding, dilation=(1, 1)):
    """``out[i, j] = Gpad[i*sh + a*dh, j*sw + b*dw]`` with ``a*kw + b = argmax[i, j]`` (the
    gradient's transpose, for double backward): one kernel over the window views."""
    out_size = argmax.shape[2:]
    padded_size = pool_padded_size(g.shape[2:], size, stride, padding, dilation, out_size)
    g = _pool_pad(xp, g, padding, padded_size, "device_pool_gpad", 0)
    views = _windows(g, size, stride, out_size, dilation)
    return kernel(xp, _pool_pick, len(views), g.dtype.type, argmax.dtype.type)(argmax, *views)


def _pool_pick(xp, count, value_type, index_type):
    def pool_pick(argmax, *views):
        out = xp.where(argmax == index_type(0), views[0], value_type(0))
        for k in range(1, count):
            out = out + xp.where(argmax == index_type(k), views[k], value_type(0))
        return out
    return pool_pick


def max_pool2d_grad(xp, dy, argmax, input_size, size, stride, padding, out=None, dilation=(1, 1), ceil_mode=False):
    """The multiplexer as a gather, deterministic: each input position sums, in a fixed
    order, ``dy`` of the windows that cover it and chose it, ``dX[u*sh + p] =
    sum_a [argmax[u - t] == a*kw + ...] dy[u - t]`` (per axis; ``p`` the position's
    stride phase, ``a`` over the window offsets with ``a*dh = t*sh + p``). One kernel
    computes the ``sh*sw`` phase planes from views of ``dy`` and ``argmax`` padded
    with zeros (persistent borders), then one strided copy per phase lays them into
    ``dX``. No atomic adds, so runs repeat bit for bit (CuPy's ``scatter_add`` does
    not). ``ceil_mode`` is implied by ``dy``'s shape (accepted for the NumPy kernel's
    signature)."""
    (kh, kw), (sh, sw), (dh, dw) = size, stride, dilation
    (pt, _), (pl, _) = pool_pads(padding)
    H, W = input_size
    N, C, OH, OW = dy.shape
    Hp, Wp = pool_padded_size(input_size, size, stride, padding, dilation, (OH, OW))
    Th, Tw = (dh * (kh - 1)) // sh, (dw * (kw - 1)) // sw  # most windows back along each axis
    U, V = -(-Hp // sh), -(-Wp // sw)  # phase-plane rows and columns
    interior = (slice(None), slice(None), slice(Th, Th + OH), slice(Tw, Tw + OW))
    dyp, inner = bordered(xp, "device_pool_dy", (N, C, Th + U, Tw + V), dy.dtype, interior)
    inner[...] = dy
    amp, inner = bordered(xp, "device_pool_am", (N, C, Th + U, Tw + V), argmax.dtype, interior)
    inner[...] = argmax
    terms, views = [], []  # terms[phase] = offsets read; views: dy and argmax views, in that order
    for p in range(sh):
        for q in range(sw):
            codes = []
            for a in range(kh):
                for b in range(kw):
                    if (a * dh) % sh == p and (b * dw) % sw == q:
                        t, s = (a * dh) // sh, (b * dw) // sw
                        rows, cols = slice(Th - t, Th - t + U), slice(Tw - s, Tw - s + V)
                        views += [dyp[:, :, rows, cols], amp[:, :, rows, cols]]
                        codes.append(a * kw + b)
            terms.append(tuple(codes))
    planes = kernel(xp, _pool_gather, tuple(terms), dy.dtype.type, argmax.dtype.type)(*views)
    planes = planes if isinstance(planes, tuple) else (planes,)
    dx = xp.empty((N, C, H, W), dtype=dy.dtype) if out is None else out
    dxp = dx if (Hp, Wp) == (H, W) else xp.empty((N, C, Hp, Wp), dtype=dy.dtype)
    planes = iter(planes)
    for phase, codes in enumerate(terms):
        p, q = divmod(phase, sw)
        target = dxp[:, :, p::sh, q::sw]
        if codes:
            target[...] = next(planes)[:, :, :target.shape[2], :target.shape[3]]
        else:  # stride larger than the window: no window covers this phase
            target.fill(0)
    if dxp is not dx:
        dx[...] = dxp[:, :, pt:pt + H, pl:pl + W]
    return dx


def _pool_gather(xp, terms, value_type, index_type):
    zero = value_type(0)

    def pool_gather(*views):
        planes, k = [], 0
        for codes in terms:
            acc = None
            for code in codes:
                picked = xp.where(views[k + 1] == index_type(code), views[k], zero)
                acc = picked if acc is None else acc + picked
                k += 2
            if acc is not None:
                planes.append(acc)
        return tuple(planes) if len(planes) > 1 else planes[0]
    return pool_gather
