"""Convolution kernels on plain arrays (NumPy now, CuPy later).

Every function takes the array module ``xp`` first and uses only functions that
NumPy and CuPy share. Layout is NCHW, weights are ``(O, C // groups, kh, kw)``,
``stride`` and ``padding`` are already-normalised pairs ``(sh, sw)``, ``(ph, pw)``.

The slides' formula (cross-correlation, no kernel flip), per example, filter and
group, with zero padding ``p`` on both sides and stride ``s``::

    Y_ij = sum_ab W_ab X_(i*s + a)(j*s + b)        output size floor((n + 2p - k) / s) + 1

Implementation: im2col + GEMM. ``x`` is zero-padded into a scratch buffer, the
``kh*kw`` shifted, strided windows are read through one ``as_strided`` view and
copied once into a column matrix laid out ``(C*kh*kw, N*OH*OW)``, and each group
is one GEMM (``matmul`` over a leading group axis). The same column layout makes
the weight gradient a GEMM against ``dy`` with no further copy of the columns,
and the input gradient a GEMM to columns followed by ``col2im``: ``kh*kw``
strided adds into a zeroed, padded buffer.

Scratch buffers (padded input, columns, transposed ``dy``) come from a small
per-thread cache (:func:`workspace`): allocating 50-250 MB afresh costs tens of
milliseconds of page faults per call on a CPU. They are never returned to the
caller; every returned array is freshly allocated.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_local = threading.local()
_pool = None
# Threads for NumPy copies/elementwise passes (GEMMs use the BLAS's own threads).
NUM_THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
PARALLEL_MIN_WORK = 1 << 20  # elements; below this, threads cost more than they save
BLOCK_ELEMENTS = 1 << 18  # elements per cache block (parallel_blocks): ~1 MB of float32


def workspace(xp, tag, shape, dtype):
    """Scratch array of ``shape``/``dtype`` for ``tag``, reused across calls.

    One flat byte buffer per ``(array module, device, tag)`` that only grows, so
    memory is bounded by the largest request per tag. Callers must not return
    it (or a view of it) and must not use one tag twice at the same time.
    Contents are garbage on entry.
    """
    cache = _local.__dict__.setdefault("cache", {})
    device = getattr(getattr(xp, "cuda", None), "get_device_id", lambda: None)()
    key = (xp.__name__, device, tag)
    dtype = xp.dtype(dtype)
    size = 1
    for d in shape:
        size *= int(d)
    nbytes = size * dtype.itemsize
    buf = cache.get(key)
    if buf is None or buf.nbytes < nbytes:
        cache.pop(key, None)  # free the old one before allocating the new one
        buf = xp.empty(max(nbytes, 1), dtype=xp.uint8)
        cache[key] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def clear_workspace():
    """Release this thread's scratch buffers (e.g. after a large one-off batch)."""
    _local.__dict__.pop("cache", None)


def parallel_for(xp, n, fn, work):
    """Call ``fn(lo, hi)`` on chunks covering ``range(n)``.

    NumPy copies and ufuncs run on one core while releasing the GIL, and the
    GEMMs between them already use all cores; splitting the big copies and
    strided adds over a small thread pool makes them ~1.7x faster on two cores.
    Chunks must touch disjoint memory. Other array modules (CuPy) run
    ``fn(0, n)`` at once, and so does ``work`` (elements) below PARALLEL_MIN_WORK.
    """
    global _pool
    t = min(NUM_THREADS, n)
    if xp.__name__ != "numpy" or t < 2 or work < PARALLEL_MIN_WORK:
        fn(0, n)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(NUM_THREADS, thread_name_prefix="graphdiff-kernels")
    bounds = [n * i // t for i in range(t + 1)]
    futures = [_pool.submit(fn, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    for f in futures:
        f.result()


def parallel_blocks(xp, n, item_size, fn):
    """``fn(lo, hi)`` over blocks of items (examples) covering ``range(n)``.

    Threads split ``range(n)`` and each walks its share a few items at a time
    (about BLOCK_ELEMENTS elements, items of ``item_size``), so that a chain
    of elementwise passes over a block runs from cache instead of memory.
    Other array modules (CuPy) get one call ``fn(0, n)``.
    """
    if xp.__name__ != "numpy":
        fn(0, n)
        return
    per = max(1, BLOCK_ELEMENTS // max(1, item_size))

    def walk(lo, hi):
        for b in range(lo, hi, per):
            fn(b, min(b + per, hi))

    parallel_for(xp, n, walk, n * item_size)


def _split_axis(shape, axes):
    """The axis among ``axes`` with the largest extent: the one to split work on."""
    return max(axes, key=lambda a: shape[a])


def _take(a, axis, lo, hi):
    """``a[..., lo:hi, ...]`` along ``axis``."""
    return a[(slice(None),) * axis + (slice(lo, hi),)]


def parallel_copy(xp, dst, src, axes=(0, 1, 2, 3)):
    """``dst[...] = src`` with the work split along the longest of ``axes``."""
    ax = _split_axis(dst.shape, axes)

    def copy(lo, hi):
        _take(dst, ax, lo, hi)[...] = _take(src, ax, lo, hi)

    parallel_for(xp, dst.shape[ax], copy, dst.size)


def conv_output_size(n, k, s, p):
    """``floor((n + 2p - k) / s) + 1``; raises if the kernel does not fit."""
    out = (n + 2 * p - k) // s + 1
    if out < 1:
        raise ValueError(f"kernel {k} larger than padded input {n} + 2*{p}")
    return out


def _pad(xp, x, padding, tag, fill=0):
    """``x`` padded by ``(ph, pw)`` with ``fill`` on both sides (a scratch buffer,
    or ``x`` itself when there is no padding)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    xp_ = workspace(xp, tag, (N, C, H + 2 * ph, W + 2 * pw), x.dtype)
    # Only the border is filled: the interior is overwritten right after.
    xp_[:, :, :ph] = fill
    xp_[:, :, H + ph:] = fill
    xp_[:, :, :, :pw] = fill
    xp_[:, :, :, W + pw:] = fill
    xp_[:, :, ph:ph + H, pw:pw + W] = x
    return xp_


def _windows(xp, xpad, kernel_size, stride, out_size, order):
    """Strided view of all windows: ``v[n, c, a, b, i, j] = xpad[n, c, i*sh + a, j*sw + b]``,
    axes permuted by ``order`` (no copy)."""
    (kh, kw), (sh, sw), (OH, OW) = kernel_size, stride, out_size
    N, C = xpad.shape[:2]
    sN, sC, sH, sW = xpad.strides
    shape = (N, C, kh, kw, OH, OW)
    strides = (sN, sC, sH, sW, sH * sh, sW * sw)
    return xp.lib.stride_tricks.as_strided(
        xpad, tuple(shape[o] for o in order), tuple(strides[o] for o in order))


def _im2col(xp, x, kernel_size, stride, padding, out_size):
    """Column matrix ``cols[(c, a, b), (n, i, j)] = Xpad[n, c, i*sh + a, j*sw + b]``,
    shape ``(C*kh*kw, N*OH*OW)``: one copy out of a strided view (scratch buffer)."""
    N, C = x.shape[:2]
    (kh, kw), (OH, OW) = kernel_size, out_size
    xpad = _pad(xp, x, padding, "conv_xpad")
    view = _windows(xp, xpad, kernel_size, stride, out_size, (1, 2, 3, 0, 4, 5))
    cols = workspace(xp, "conv_cols", view.shape, x.dtype)
    parallel_copy(xp, cols, view)
    return cols.reshape(C * kh * kw, N * OH * OW)


def _dy_by_channel(xp, dy):
    """``dy`` (N, O, OH, OW) copied to channel-major ``(O, N*OH*OW)`` (scratch)."""
    N, O, OH, OW = dy.shape
    dyt = workspace(xp, "conv_dyt", (O, N, OH, OW), dy.dtype)
    parallel_copy(xp, dyt, dy.transpose(1, 0, 2, 3))
    return dyt.reshape(O, N * OH * OW)


def conv2d_forward(xp, x, w, b, stride, padding, groups):
    """``y[n, o] = b[o] + sum_{c in group(o), a, b} W[o, c, a, b] Xpad[n, c, i*sh + a, j*sw + b]``.

    The slides' ``Y_ij = sum_ab W_ab X_(i+a)(j+b)`` per filter, with stride,
    zero padding and groups (filter ``o`` sees input channels of group
    ``o // (O / groups)`` only). ``b`` may be None. Returns ``(N, O, OH, OW)``.
    """
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    g = groups
    OH = conv_output_size(H, kh, stride[0], padding[0])
    OW = conv_output_size(W, kw, stride[1], padding[1])
    K, M = Cg * kh * kw, N * OH * OW
    cols = _im2col(xp, x, (kh, kw), stride, padding, (OH, OW)).reshape(g, K, M)
    # One GEMM per group, batched over the group axis: (g, O/g, K) @ (g, K, M).
    yt = workspace(xp, "conv_yt", (g, O // g, M), x.dtype)
    xp.matmul(w.reshape(g, O // g, K), cols, out=yt)
    # Back to NCHW; the bias add rides along with that copy.
    yt = yt.reshape(O, N, OH, OW).transpose(1, 0, 2, 3)
    y = xp.empty((N, O, OH, OW), dtype=x.dtype)
    if b is None:
        parallel_copy(xp, y, yt)
    else:
        b4 = b.reshape(1, O, 1, 1)
        parallel_for(xp, N, lambda lo, hi: xp.add(yt[lo:hi], b4, out=y[lo:hi]), y.size)
    return y


def conv2d_grad_weight(xp, x, dy, kernel_size, stride, padding, groups):
    """Slides' case 1: ``dE/dW_lk = sum_ij dE_ij X_(i+l)(j+k)``, summed over the batch.

    With stride and padding: ``dW[o, c, l, k] = sum_{n,i,j} dy[n, o, i, j] Xpad[n, c', i*sh + l, j*sw + k]``
    where ``c'`` is channel ``c`` of ``o``'s group. Returns ``(O, C // groups, kh, kw)``.
    """
    N, C, H, W = x.shape
    _, O, OH, OW = dy.shape
    kh, kw = kernel_size
    g = groups
    K, M = (C // g) * kh * kw, N * OH * OW
    cols = _im2col(xp, x, (kh, kw), stride, padding, (OH, OW)).reshape(g, K, M)
    dyt = _dy_by_channel(xp, dy).reshape(g, O // g, M)
    # (g, O/g, M) @ (g, M, K): the transposed columns are read in place (GEMM "T" flag).
    dw = xp.matmul(dyt, cols.transpose(0, 2, 1))
    return dw.reshape(O, C // g, kh, kw)


def _grad_input_as_correlation(xp, dy, w, groups):
    """Stride 1 only: ``dx = correlation of dy (zero-padded by k-1-p) with the flipped,
    transposed kernel``, i.e. the slides' ``dX_ij = sum_ab W_ab dE_(i-a)(j-b)`` run as
    a forward convolution (im2col of dy + GEMM, no col2im)."""
    O, Cg, kh, kw = w.shape
    g = groups
    # w_t[g*Cg + c, o', a, b] = w[g*Og + o', c, kh-1-a, kw-1-b]
    w_t = w.reshape(g, O // g, Cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    w_t = xp.ascontiguousarray(w_t).reshape(g * Cg, O // g, kh, kw)
    return w_t


def conv2d_grad_input(xp, dy, w, input_size, stride, padding, groups):
    """Slides' case 2: each X gathers from every Y it fed, ``dX_ij = sum_ab W_ab dE_(i-a)(j-b)``.

    A full correlation of ``dE`` with the flipped kernel ("inversion of
    indexes"); with stride, padding and groups: ``dXpad[n, c, i*sh + a, j*sw + b]
    += sum_o W[o, c, a, b] dy[n, o, i, j]``, then the padding is cropped. Rows and
    columns that no window covered get zero. Computed as ``cols = W^T @ dy`` (one
    GEMM per group) and col2im: ``kh*kw`` strided adds. Returns ``(N, C, H, W)``.
    """
    N, O, OH, OW = dy.shape
    _, Cg, kh, kw = w.shape
    H, W = input_size
    (sh, sw), (ph, pw) = stride, padding
    g = groups
    C, K, M = Cg * g, Cg * kh * kw, N * OH * OW
    dyt = _dy_by_channel(xp, dy).reshape(g, O // g, M)
    cols = workspace(xp, "conv_cols", (g, K, M), dy.dtype)
    xp.matmul(w.reshape(g, O // g, K).transpose(0, 2, 1), dyt, out=cols)
    cols = cols.reshape(C, kh, kw, N, OH, OW)
    # col2im, channel-major like the columns so every add streams both operands.
    dxpad = workspace(xp, "conv_dxpad", (C, N, H + 2 * ph, W + 2 * pw), dy.dtype)
    # Threads split the channels (or the batch), so each owns its part of dxpad.
    split_c = C >= N

    def col2im(lo, hi):
        d = dxpad[lo:hi] if split_c else dxpad[:, lo:hi]
        c = cols[lo:hi] if split_c else cols[:, :, :, lo:hi]
        d.fill(0)
        for a in range(kh):
            for b in range(kw):
                dst = d[:, :, a:a + sh * (OH - 1) + 1:sh, b:b + sw * (OW - 1) + 1:sw]
                xp.add(dst, c[:, a, b], out=dst)

    parallel_for(xp, C if split_c else N, col2im, cols.size)
    dx = xp.empty((N, C, H, W), dtype=dy.dtype)
    parallel_copy(xp, dx, dxpad[:, :, ph:ph + H, pw:pw + W].transpose(1, 0, 2, 3))
    return dx
