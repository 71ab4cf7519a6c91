"""Local response normalization kernels on plain arrays, for NumPy and CuPy (on CuPy the fused kernels
of :mod:`graphdiff.kernels.device` take over where they save passes).

AlexNet's across-channel LRN (Krizhevsky et al. 2012, section 3.3), NCHW::

    y[:, c] = x[:, c] / (k + alpha * sum_{j: |j - c| <= size//2} x[:, j]**2) ** beta

``alpha`` is NOT divided by ``size`` here (the paper's convention). Caffe and
PyTorch's ``local_response_norm`` divide it by ``size``: to match them pass
``alpha * size`` (and ``alpha * size**2`` for Caffe's within-channel mode).
The within-map variant of the slides sums over a ``size x size`` spatial
neighbourhood of the same channel instead (zero beyond the border).

Window sums across channels up to ``DIRECT_MAX_SIZE`` (AlexNet's 5) are
``size - 1`` adds of channel-shifted views of a whole block (long contiguous
runs). Bigger windows, and the within-map sums, cost O(C) whatever ``size``:
cumulative sums within blocks of ``size`` channels, forwards and backwards,
and one add per output (see :func:`_window_sum_into`). Neither subtracts
(unlike ``cumsum[c + size] - cumsum[c]``), so float32 keeps full precision
next to large activations.

Work is done per block of examples, split over threads on NumPy: ~1 MB blocks
for the direct sums, so the ~15 elementwise passes over a block's few buffers
run from cache; ~16 MB for the scans, whose per-channel slices must stay large
enough that NumPy's per-call overhead does not dominate.
"""

from . import device
from .parallel import parallel_blocks, workspace

LRN_BLOCK_SCALE = 16  # scan blocks of ~16 * BLOCK_ELEMENTS elements (see parallel_blocks)
DIRECT_MAX_SIZE = 9  # across-channel windows up to this size are summed directly


def _window_bounds(size, transpose):
    """Neighbours ``c - lo .. c + hi``: ``lo = size//2``, ``hi = (size-1)//2``
    (the same for odd ``size``); the transpose mirrors the window."""
    lo, hi = size // 2, (size - 1) // 2
    return (hi, lo) if transpose else (lo, hi)


def _take(a, axis, start, stop):
    return a[(slice(None),) * axis + (slice(start, stop),)]


def _block_scans(xp, P, I, axis, size):
    """Cut ``P`` along ``axis`` into blocks of ``size``; write into ``I`` the running sums
    from each block's start (inclusive prefix sums) and turn ``P`` in place into the
    running sums to each block's end (inclusive suffix sums). O(length), like a
    cumulative sum. On NumPy as a loop of whole-slice adds: ``cumsum`` along a
    non-last axis runs one short strided loop per pixel and is ~9x slower."""
    L = P.shape[axis]
    if xp.__name__ != "numpy":
        shape = P.shape[:axis] + (L // size, size) + P.shape[axis + 1:]
        Pb, Ib = P.reshape(shape), I.reshape(shape)
        Ib[...] = xp.cumsum(Pb, axis=axis + 1)
        Pb[...] = xp.flip(xp.cumsum(xp.flip(Pb, axis + 1), axis=axis + 1), axis + 1)
        return
    for t in range(L):
        if t % size:
            xp.add(_take(P, axis, t, t + 1), _take(I, axis, t - 1, t), out=_take(I, axis, t, t + 1))
        else:
            _take(I, axis, t, t + 1)[...] = _take(P, axis, t, t + 1)
    for t in range(L - 2, -1, -1):
        if (t + 1) % size:
            cur = _take(P, axis, t, t + 1)
            xp.add(cur, _take(P, axis, t + 1, t + 2), out=cur)


def _window_sum_into(xp, fill, shape, dtype, axis, size, transpose, out, tag):
    """``out[.., c, ..] = sum_{c - lo <= j <= c + hi} v[.., j, ..]`` along ``axis``, where
    ``fill(dst)`` writes ``v`` into ``dst`` (so a product can land there directly).

    Two-pass block scan (van Herk / Gil-Werman, as for running max filters):
    with ``P[t] = v[t - lo]`` zero-padded and cut into blocks of ``size``, the window
    ``P[c .. c+size-1]`` is the suffix sum of ``c`` in its block plus the prefix sum
    of ``c+size-1`` in the next block (none when ``c`` starts a block). O(C) like a
    cumulative sum, but nothing is subtracted: a difference of two global prefix
    sums would lose float32 precision next to large activations.
    """
    lo, hi = _window_bounds(size, transpose)
    n = shape[axis]
    length = -(-(n + size - 1) // size) * size
    pshape = shape[:axis] + (length,) + shape[axis + 1:]
    P, I = workspace(xp, tag + "_s", pshape, dtype), workspace(xp, tag + "_p", pshape, dtype)
    _take(P, axis, 0, lo).fill(0)
    _take(P, axis, lo + n, length).fill(0)
    fill(_take(P, axis, lo, lo + n))
    _block_scans(xp, P, I, axis, size)
    I[(slice(None),) * axis + (slice(size - 1, None, size),)] = 0  # block ends: window = one block
    return xp.add(_take(P, axis, 0, n), _take(I, axis, size - 1, size - 1 + n), out=out)


def _copy_into(v):
    def fill(dst):
        dst[...] = v
    return fill


def _direct(size, within):
    """Small windows across channels are summed directly: ``size - 1`` whole-block
    adds of channel-shifted views (long contiguous runs, no per-channel loop),
    which beats the two block scans up to AlexNet's 5 and beyond."""
    return not within and size <= DIRECT_MAX_SIZE


def _block_scale(size, within):
    """Blocks for parallel_blocks: ~1 MB where the direct sums run (a few
    buffers of one block stay in cache); the scans' per-channel (per-row)
    loops want bigger blocks to amortise NumPy's per-call cost."""
    return 1 if _direct(size, within) else LRN_BLOCK_SCALE


def _shifted_sum_into(xp, v, size, transpose, out):
    """``out[:, c] = sum_{c - lo <= j <= c + hi} v[:, j]`` (channels that exist) by
    shifted adds; ``out`` must not overlap ``v``."""
    lo, hi = _window_bounds(size, transpose)
    C = v.shape[1]
    if lo >= 1 and C > 1:  # the first neighbour rides along with the copy of the centre
        xp.add(v[:, 1:], v[:, :-1], out=out[:, 1:])
        out[:, :1] = v[:, :1]
    else:
        out[...] = v
    for d in range(2 if lo >= 1 else 1, min(lo, C - 1) + 1):  # below: out[c] += v[c - d]
        xp.add(out[:, d:], v[:, :C - d], out=out[:, d:])
    for d in range(1, min(hi, C - 1) + 1):  # above: out[c] += v[c + d]
        xp.add(out[:, :C - d], v[:, d:], out=out[:, :C - d])
    return out


def _neighbour_sum(xp, fill, shape, dtype, size, within, transpose, out):
    """Window sum of the values ``fill`` writes: across channels, or (``within``)
    over the ``size x size`` spatial neighbourhood."""
    if _direct(size, within):
        v = workspace(xp, "lrn_values", shape, dtype)
        fill(v)
        return _shifted_sum_into(xp, v, size, transpose, out)
    if not within:
        return _window_sum_into(xp, fill, shape, dtype, 1, size, transpose, out, "lrn_cumsum")
    tmp = workspace(xp, "lrn_rows", shape, dtype)
    _window_sum_into(xp, fill, shape, dtype, 2, size, transpose, tmp, "lrn_cumsum")
    return _window_sum_into(xp, _copy_into(tmp), shape, dtype, 3, size, transpose, out, "lrn_cumsum")


def window_sum_channels(xp, x, size, transpose=False, out=None):
    """``s[:, c] = sum_{j = c - size//2}^{c + (size-1)//2} x[:, j]`` over channels that exist.

    For odd ``size`` that is ``|j - c| <= size//2``; for even ``size`` the window
    has one more neighbour below ``c`` than above. ``transpose=True`` mirrors the
    window (the same op for odd ``size``): it is the exact adjoint, i.e.
    ``<window_sum_channels(x), y> == <x, window_sum_channels(y, transpose=True)>``.
    Computed by shifted adds up to ``DIRECT_MAX_SIZE``, else from cumulative sums
    within blocks of ``size`` channels along axis 1 (:func:`_window_sum_into`):
    O(C) whatever ``size``.
    """
    return _window_sum(xp, x, size, False, transpose, out)


def window_sum_spatial(xp, x, size, transpose=False, out=None):
    """``s[n, c, i, j] = sum_{a, b} x[n, c, a, b]`` over ``i - size//2 <= a <= i + (size-1)//2``, same for b.

    The ``size x size`` neighbourhood in the same feature map, zero beyond the
    border; separable: a window sum along H, then along W, each from blocked
    cumulative sums. Even ``size`` and ``transpose`` as in :func:`window_sum_channels`.
    """
    return _window_sum(xp, x, size, True, transpose, out)


def _window_sum(xp, x, size, within, transpose, out=None):
    out = xp.empty_like(x) if out is None else out

    def block(lo, hi):
        xb = x[lo:hi]
        _neighbour_sum(xp, _copy_into(xb), xb.shape, x.dtype, size, within, transpose, out[lo:hi])

    parallel_blocks(xp, x.shape[0], x[:1].size, block, scale=_block_scale(size, within))
    return out


def _pow(xp, s, beta, out, tmp):
    """``out = s ** beta``. NumPy's float32 ``power`` is ~15x slower than ``sqrt``,
    so AlexNet's 0.75 is ``sqrt(s) * sqrt(sqrt(s))``."""
    if beta == 0.75:
        xp.sqrt(s, out=out)
        xp.sqrt(out, out=tmp)
        xp.multiply(out, tmp, out=out)
    elif beta == 0.5:
        xp.sqrt(s, out=out)
    elif beta == 1:
        out[...] = s
    else:
        xp.power(s, beta, out=out)
    return out


def _forward(xp, x, size, alpha, beta, k, within):
    if device.on_device(xp) and not within:
        scale = device.lrn_scale(xp, x, size, alpha, k)
        return device.lrn_normalize(xp, x, scale, beta), scale
    y, scale = xp.empty_like(x), xp.empty_like(x)

    def block(lo, hi):
        xb, sb, yb = x[lo:hi], scale[lo:hi], y[lo:hi]
        _neighbour_sum(xp, lambda d: xp.multiply(xb, xb, out=d), xb.shape, x.dtype,
                       size, within, False, sb)
        sb *= alpha
        sb += k
        _pow(xp, sb, beta, yb, workspace(xp, "lrn_pow", xb.shape, x.dtype))
        xp.divide(xb, yb, out=yb)

    parallel_blocks(xp, x.shape[0], x[:1].size, block, scale=_block_scale(size, within))
    return y, scale


def _backward(xp, x, y, scale, dy, size, alpha, beta, within, out=None):
    if device.on_device(xp) and not within:  # three kernels, the last a new array
        return device.lrn_backward(xp, x, y, scale, dy, size, alpha, beta)
    dx = xp.empty_like(x) if out is None else out
    c = 2.0 * alpha * beta

    def block(lo, hi):
        xb, yb, sb, dyb, dxb = x[lo:hi], y[lo:hi], scale[lo:hi], dy[lo:hi], dx[lo:hi]

        def fill(d):  # dy * y / scale
            xp.multiply(dyb, yb, out=d)
            xp.divide(d, sb, out=d)

        t = workspace(xp, "lrn_t", xb.shape, x.dtype)
        _neighbour_sum(xp, fill, xb.shape, x.dtype, size, within, True, t)
        xp.multiply(t, xb, out=t)
        t *= c
        _pow(xp, sb, beta, dxb, workspace(xp, "lrn_pow", xb.shape, x.dtype))
        xp.divide(dyb, dxb, out=dxb)
        xp.subtract(dxb, t, out=dxb)

    parallel_blocks(xp, x.shape[0], x[:1].size, block, scale=_block_scale(size, within))
    return dx


def lrn_scale(xp, x, size, alpha, k, within=False, out=None):
    """``scale = k + alpha * S(x*x)``, ``S`` the window sum across channels (or,
    ``within``, over the spatial neighbourhood): LRN's denominator base, kept
    for the backward. ``alpha`` multiplies each square before the sum (one
    pass fewer). Written into ``out`` when given."""
    if device.on_device(xp) and not within:  # two kernels, the last a new array
        return device.lrn_scale(xp, x, size, alpha, k)
    scale = xp.empty_like(x) if out is None else out
    alpha, k = x.dtype.type(alpha), x.dtype.type(k)

    def block(lo, hi):
        xb, sb = x[lo:hi], scale[lo:hi]

        def fill(d):  # alpha * x^2
            xp.multiply(xb, alpha, out=d)
            xp.multiply(d, xb, out=d)

        _neighbour_sum(xp, fill, xb.shape, x.dtype, size, within, False, sb)
        sb += k

    parallel_blocks(xp, x.shape[0], x[:1].size, block, scale=_block_scale(size, within))
    return scale


def lrn_forward(xp, x, size, alpha, beta, k):
    """``y = x * scale**-beta`` with ``scale = k + alpha * window_sum_channels(x*x)``.

    The slides' ``Y_ijl = X_ijl / (a + alpha * sum_{k in Nbr} X_ijk**2)**beta``
    with ``a = k`` and neighbours the ``size`` channels around ``l``; alpha not
    divided by size (AlexNet; PyTorch/Caffe use ``alpha * size`` for the same
    op). Returns ``(y, scale)``, kept for the backward pass.
    """
    return _forward(xp, x, size, alpha, beta, k, within=False)


def lrn_backward(xp, x, y, scale, dy, size, alpha, beta, out=None):
    """``dx = dy * scale**-beta - 2*alpha*beta * x * S^T(dy * y / scale)``, S the channel window sum.

    From ``dy_c/dx_m = [c = m] scale_c**-beta - 2*alpha*beta * x_c * x_m * scale_c**(-beta-1) [m in Nbr(c)]``
    and ``x_c * scale_c**(-beta-1) = y_c / scale_c``; summing over the ``c`` whose
    window holds ``m`` is the transposed (mirrored) window sum.
    """
    return _backward(xp, x, y, scale, dy, size, alpha, beta, within=False, out=out)


def lrn_within_forward(xp, x, size, alpha, beta, k):
    """Within-map LRN: as :func:`lrn_forward` with ``scale = k + alpha * window_sum_spatial(x*x)``
    (``size x size`` neighbours in the same feature map, zero beyond the border)."""
    return _forward(xp, x, size, alpha, beta, k, within=True)


def lrn_within_backward(xp, x, y, scale, dy, size, alpha, beta, out=None):
    """``dx = dy * scale**-beta - 2*alpha*beta * x * S^T(dy * y / scale)``, S the spatial window sum."""
    return _backward(xp, x, y, scale, dy, size, alpha, beta, within=True, out=out)
