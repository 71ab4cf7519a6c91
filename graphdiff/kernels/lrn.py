"""Local response normalization kernels on plain arrays (NumPy now, CuPy later).

AlexNet's across-channel LRN (Krizhevsky et al. 2012, section 3.3), NCHW::

    y[:, c] = x[:, c] / (k + alpha * sum_{j: |j - c| <= size//2} x[:, j]**2) ** beta

``alpha`` is NOT divided by ``size`` here (the paper's convention). Caffe and
PyTorch's ``local_response_norm`` divide it by ``size``: to match them pass
``alpha * size`` (and ``alpha * size**2`` for Caffe's within-channel mode).
The within-map variant of the slides sums over a ``size x size`` spatial
neighbourhood of the same channel instead (zero beyond the border).

Window sums use a cumulative sum (O(C), independent of ``size``): with
``P = cumsum`` of the values padded by zeros, ``s[c] = P[c + size] - P[c]``. In
float32 the difference of two prefix sums loses a little precision when a
window is small next to large ones; with AlexNet's ``k = 2`` that is far below
the float32 resolution of the scale.

Work is done per block of a few examples (a few MB, cache-resident) and split
over threads on NumPy, so the ~10 elementwise passes run from cache.
"""

from .conv import parallel_blocks, workspace

def _window_bounds(size, transpose):
    """Neighbours ``c - lo .. c + hi``: ``lo = size//2``, ``hi = (size-1)//2``
    (the same for odd ``size``); the transpose mirrors the window."""
    lo, hi = size // 2, (size - 1) // 2
    return (hi, lo) if transpose else (lo, hi)


def _take(a, axis, start, stop):
    return a[(slice(None),) * axis + (slice(start, stop),)]


def _cumsum_(xp, a, axis):
    """In-place cumulative sum along ``axis``. NumPy's ``cumsum`` on a non-last
    axis runs one short strided loop per pixel (~9x slower than this loop of
    whole-slice adds); other modules use their own ``cumsum``."""
    if xp.__name__ != "numpy":
        xp.cumsum(a, axis=axis, out=a)
        return
    for i in range(1, a.shape[axis]):
        cur = _take(a, axis, i, i + 1)
        xp.add(cur, _take(a, axis, i - 1, i), out=cur)


def _window_sum_into(xp, fill, shape, dtype, axis, size, transpose, out, tag):
    """``out[.., c, ..] = sum_{c - lo <= j <= c + hi} v[.., j, ..]`` along ``axis``, where
    ``fill(dst)`` writes ``v`` into ``dst`` (so a product can land there directly)."""
    lo, hi = _window_bounds(size, transpose)
    n = shape[axis]
    pshape = shape[:axis] + (n + size,) + shape[axis + 1:]
    P = workspace(xp, tag, pshape, dtype)
    # P = [0]*(lo+1) + v + [0]*hi, then prefix sums: s[c] = P[c + size] - P[c].
    _take(P, axis, 0, lo + 1).fill(0)
    _take(P, axis, lo + 1 + n, n + size).fill(0)
    fill(_take(P, axis, lo + 1, lo + 1 + n))
    _cumsum_(xp, P, axis)
    return xp.subtract(_take(P, axis, size, n + size), _take(P, axis, 0, n), out=out)


def _copy_into(v):
    def fill(dst):
        dst[...] = v
    return fill


def window_sum_channels(xp, x, size, transpose=False):
    """``s[:, c] = sum_{j = c - size//2}^{c + (size-1)//2} x[:, j]`` over channels that exist.

    For odd ``size`` that is ``|j - c| <= size//2``; for even ``size`` the window
    has one more neighbour below ``c`` than above. ``transpose=True`` mirrors the
    window (the same op for odd ``size``): it is the exact adjoint, i.e.
    ``<window_sum_channels(x), y> == <x, window_sum_channels(y, transpose=True)>``.
    """
    out = xp.empty_like(x)
    _window_sum_into(xp, _copy_into(x), x.shape, x.dtype, 1, size, transpose, out, "lrn_cumsum")
    return out


def window_sum_spatial(xp, x, size, transpose=False):
    """``s[n, c, i, j] = sum_{|a| <= size//2, |b| <= size//2} x[n, c, i + a, j + b]`` (zero outside).

    Separable: a window sum along H, then along W, each by a cumulative sum.
    Even ``size`` and ``transpose`` as in :func:`window_sum_channels`.
    """
    tmp = workspace(xp, "lrn_spatial_tmp", x.shape, x.dtype)
    _window_sum_into(xp, _copy_into(x), x.shape, x.dtype, 2, size, transpose, tmp, "lrn_cumsum")
    out = xp.empty_like(x)
    _window_sum_into(xp, _copy_into(tmp), x.shape, x.dtype, 3, size, transpose, out, "lrn_cumsum")
    return out


def _neighbour_sum(xp, fill, shape, dtype, size, within, transpose, out):
    """Window sum of the values ``fill`` writes: across channels, or (``within``)
    over the ``size x size`` spatial neighbourhood."""
    if not within:
        return _window_sum_into(xp, fill, shape, dtype, 1, size, transpose, out, "lrn_cumsum")
    tmp = workspace(xp, "lrn_rows", shape, dtype)
    _window_sum_into(xp, fill, shape, dtype, 2, size, transpose, tmp, "lrn_cumsum")
    return _window_sum_into(xp, _copy_into(tmp), shape, dtype, 3, size, transpose, out, "lrn_cumsum")


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
    y, scale = xp.empty_like(x), xp.empty_like(x)

    def block(lo, hi):
        xb, sb, yb = x[lo:hi], scale[lo:hi], y[lo:hi]
        _neighbour_sum(xp, lambda d: xp.multiply(xb, xb, out=d), xb.shape, x.dtype,
                       size, within, False, sb)
        sb *= alpha
        sb += k
        _pow(xp, sb, beta, yb, workspace(xp, "lrn_pow", xb.shape, x.dtype))
        xp.divide(xb, yb, out=yb)

    parallel_blocks(xp, x.shape[0], x[:1].size, block)
    return y, scale


def _backward(xp, x, y, scale, dy, size, alpha, beta, within):
    dx = xp.empty_like(x)
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

    parallel_blocks(xp, x.shape[0], x[:1].size, block)
    return dx


def lrn_forward(xp, x, size, alpha, beta, k):
    """``y = x * scale**-beta`` with ``scale = k + alpha * window_sum_channels(x*x)``.

    The slides' ``Y_ijl = X_ijl / (a + alpha * sum_{k in Nbr} X_ijk**2)**beta``
    with ``a = k`` and neighbours the ``size`` channels around ``l``; alpha not
    divided by size (AlexNet; PyTorch/Caffe use ``alpha * size`` for the same
    op). Returns ``(y, scale)``, kept for the backward pass.
    """
    return _forward(xp, x, size, alpha, beta, k, within=False)


def lrn_backward(xp, x, y, scale, dy, size, alpha, beta):
    """``dx = dy * scale**-beta - 2*alpha*beta * x * S^T(dy * y / scale)``, S the channel window sum.

    From ``dy_c/dx_m = [c = m] scale_c**-beta - 2*alpha*beta * x_c * x_m * scale_c**(-beta-1) [m in Nbr(c)]``
    and ``x_c * scale_c**(-beta-1) = y_c / scale_c``; summing over the ``c`` whose
    window holds ``m`` is the transposed (mirrored) window sum.
    """
    return _backward(xp, x, y, scale, dy, size, alpha, beta, within=False)


def lrn_within_forward(xp, x, size, alpha, beta, k):
    """Within-map LRN: as :func:`lrn_forward` with ``scale = k + alpha * window_sum_spatial(x*x)``
    (``size x size`` neighbours in the same feature map, zero beyond the border)."""
    return _forward(xp, x, size, alpha, beta, k, within=True)


def lrn_within_backward(xp, x, y, scale, dy, size, alpha, beta):
    """``dx = dy * scale**-beta - 2*alpha*beta * x * S^T(dy * y / scale)``, S the spatial window sum."""
    return _backward(xp, x, y, scale, dy, size, alpha, beta, within=True)
