"""Average-pooling kernels on plain arrays (NumPy or CuPy), layout NCHW.

Every average pooling here is *separable*: output ``(i, j)`` averages the
rows of window ``i`` times the columns of window ``j``, and its divisor is a
product too (``kh * kw``; or, without counting padding, the real rows times
the real columns of the window). So one pooling is two small matrix
products per feature map::

    Y = P_H X P_W^T          P_H (OH, H): P_H[i, h] = 1 / rows(i) where row h is in window i
    dX = P_H^T dY P_W        (the gradient: the transpose, the same two products)

with ``P`` from :func:`pool_matrix` (fixed windows, ``avg_pool2d``) or
:func:`adaptive_matrix` (PyTorch's adaptive bins ``floor(i*H/OH) ..
ceil((i+1)*H/OH)``). Padding never appears in ``P``: zero padding adds
nothing to a sum, it only changes the divisor. The products run as one GEMM
over all rows of all maps plus one broadcast matmul: no loops over pixels,
no scatter (``add.at``), the same code on CuPy.
"""
import functools

import numpy


def _window_matrix(starts, ends, n, divisors):
    """``M[i, h] = 1 / divisors[i]`` for ``starts[i] <= h < ends[i]``, else 0 (float64)."""
    h = numpy.arange(n)[None, :]
    inside = (h >= starts[:, None]) & (h < ends[:, None])
    return inside / numpy.asarray(divisors, dtype=numpy.float64)[:, None]


@functools.lru_cache(maxsize=256)
def pool_matrix(n, size, stride, padding, count_include_pad):
    """``(out, n)`` averaging matrix of a fixed window ``size`` moved by ``stride``
    over ``n`` inputs padded by ``padding`` on both sides; ``out = floor((n + 2p
    - k) / s) + 1``. Divisor ``size``, or the real inputs in the window when
    ``count_include_pad`` is False."""
    out = (n + 2 * padding - size) // stride + 1
    starts = numpy.arange(out) * stride - padding  # in unpadded coordinates
    ends = starts + size
    lo, hi = numpy.maximum(starts, 0), numpy.minimum(ends, n)
    divisors = numpy.full(out, size) if count_include_pad else hi - lo
    return _window_matrix(lo, hi, n, divisors)


@functools.lru_cache(maxsize=256)
def adaptive_matrix(n, out):
    """``(out, n)`` averaging matrix of PyTorch's adaptive bins: bin ``i`` covers
    ``floor(i * n / out) <= h < ceil((i + 1) * n / out)`` (bins overlap or
    repeat when ``out`` does not divide ``n``, or exceeds it)."""
    i = numpy.arange(out)
    starts = (i * n) // out
    ends = -((-(i + 1) * n) // out)  # ceil
    return _window_matrix(starts, ends, n, ends - starts)


def separable_pool(xp, x, rows, cols, out=None):
    """``y[n, c] = rows @ x[n, c] @ cols^T`` for every map: ``x (N, C, H, W)``,
    ``rows (OH, H)``, ``cols (OW, W)`` (host float64 matrices, cast to x's dtype)
    -> ``(N, C, OH, OW)``."""
    N, C, H, W = x.shape
    rows = xp.asarray(rows, dtype=x.dtype)
    cols_t = xp.asarray(cols.T, dtype=x.dtype)
    narrow = xp.matmul(x.reshape(N * C * H, W), cols_t).reshape(N, C, H, cols.shape[0])  # columns: one GEMM
    y = xp.matmul(rows, narrow)  # rows: (OH, H) @ (N, C, H, OW), broadcast over the maps
    if out is None:
        return y
    out[...] = y
    return out


def avg_pool2d_forward(xp, x, size, stride, padding, count_include_pad):
    """``y[i, j] = sum_{a < kh, b < kw} Xpad[i*sh + a, j*sw + b] / divisor(i, j)`` (zero padding)."""
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    H, W = x.shape[2:]
    return separable_pool(xp, x, pool_matrix(H, kh, sh, ph, count_include_pad),
                          pool_matrix(W, kw, sw, pw, count_include_pad))


def avg_pool2d_backward(xp, dy, input_size, size, stride, padding, count_include_pad):
    """``dX[i*sh + a, j*sw + b] += dy[i, j] / divisor(i, j)`` (padding cropped): the transpose."""
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    H, W = input_size
    return separable_pool(xp, dy, pool_matrix(H, kh, sh, ph, count_include_pad).T,
                          pool_matrix(W, kw, sw, pw, count_include_pad).T)


def adaptive_avg_pool2d_forward(xp, x, output_size):
    """The mean of each adaptive bin (see :func:`adaptive_matrix`)."""
    H, W = x.shape[2:]
    return separable_pool(xp, x, adaptive_matrix(H, output_size[0]), adaptive_matrix(W, output_size[1]))


def adaptive_avg_pool2d_backward(xp, dy, input_size, output_size):
    """Each ``dy[i, j] / |bin|`` spread over its bin (overlapping bins add up)."""
    H, W = input_size
    return separable_pool(xp, dy, adaptive_matrix(H, output_size[0]).T, adaptive_matrix(W, output_size[1]).T)
