"""Convolution kernels on plain arrays, for NumPy and CuPy (on CuPy the fused kernels
of :mod:`graphdiff.kernels.device` take over where they save passes).

Every function takes the array module ``xp`` first and uses only functions that
NumPy and CuPy share. Layout is NCHW, weights are ``(O, C // groups, kh, kw)``,
``stride`` and ``dilation`` are already-normalised pairs ``(sh, sw)``, ``(dh, dw)``;
``padding`` is ``(ph, pw)`` (both sides alike) or ``((top, bottom), (left, right))``
(:func:`pads` turns either into the latter).

The slides' formula (cross-correlation, no kernel flip), per example, filter and
group, with zero padding ``p`` on both sides, stride ``s`` and dilation ``d``
(kernel taps ``d`` apart: an effective kernel of ``(k - 1) * d + 1``)::

    Y_ij = sum_ab W_ab X_(i*s + a*d)(j*s + b*d)    output size floor((n + 2p - (k-1)*d - 1) / s) + 1

(with ``p_begin + p_end`` in place of ``2p`` where the padding is asymmetric).

Implementation: im2col + GEMM. ``x`` is zero-padded into a scratch buffer, the
``kh*kw`` shifted, strided windows are read through one ``as_strided`` view and
copied once into a column matrix laid out ``(C*kh*kw, N*OH*OW)``, and each group
is one GEMM (``matmul`` over a leading group axis). The same column layout makes
the weight gradient a GEMM against ``dy`` with no further copy of the columns,
and the input gradient a GEMM to columns followed by col2im: ``kh*kw`` strided
adds into a zeroed, padded buffer (stride 1 has two cheaper routes, see
:func:`conv2d_grad_input`). GEMM orientations are chosen for OpenBLAS: products
with few output rows thread badly, worst when another process shares the cores.

Scratch buffers (padded input, columns, transposed ``dy``) come from a small
per-thread cache (:func:`workspace`): allocating 50-250 MB afresh costs tens of
milliseconds of page faults per call on a CPU. They are never returned to the
caller. Every kernel returns a fresh array, or writes into ``out`` when the
caller passes one (the compiler's planned buffers, reused across calls).
"""

from . import device
from .parallel import gemm, gemms_split, parallel_blocks, parallel_copy, parallel_for, workspace, zeros


PIXEL_MAJOR_MIN_K = 1024  # reductions this long may take the pixel-major product (see conv2d_from_cols)


def pads(padding):
    """``(ph, pw)`` or ``((top, bottom), (left, right))`` -> ``((top, bottom), (left, right))``."""
    return tuple((int(p), int(p)) if not isinstance(p, (tuple, list)) else (int(p[0]), int(p[1]))
                 for p in padding)


def conv_output_size(n, k, s, p, d=1):
    """``floor((n + 2p - (k-1)*d - 1) / s) + 1`` (``p`` an int, or ``(begin, end)``);
    raises if the (dilated) kernel does not fit."""
    p0, p1 = (p, p) if not isinstance(p, (tuple, list)) else p
    ke = (k - 1) * d + 1
    out = (n + p0 + p1 - ke) // s + 1
    if out < 1:
        raise ValueError(f"kernel {ke} larger than padded input {n} + {p0} + {p1}")
    return out


def pad2d(xp, x, padding, tag, fill=0):
    """``x`` padded with ``fill`` by ``(ph, pw)`` on both sides, or by
    ``((top, bottom), (left, right))`` (a scratch buffer, or ``x`` itself when
    there is no padding)."""
    (pt, pb), (pl, pr) = pads(padding)
    if pt == pb == pl == pr == 0:
        return x
    if device.on_device(xp):  # one copy: the border is kept in a persistent buffer
        return device.pad2d(xp, x, padding, tag, fill)
    N, C, H, W = x.shape
    out = workspace(xp, tag, (N, C, H + pt + pb, W + pl + pr), x.dtype)
    # Only the border is filled: the interior is overwritten right after.
    out[:, :, :pt] = fill
    out[:, :, H + pt:] = fill
    out[:, :, :, :pl] = fill
    out[:, :, :, W + pl:] = fill
    out[:, :, pt:pt + H, pl:pl + W] = x
    return out


def _windows(xp, xpad, kernel_size, stride, out_size, order, dilation=(1, 1)):
    """Strided view of all windows: ``v[n, c, a, b, i, j] = xpad[n, c, i*sh + a*dh, j*sw + b*dw]``,
    axes permuted by ``order`` (no copy)."""
    (kh, kw), (sh, sw), (OH, OW), (dh, dw) = kernel_size, stride, out_size, dilation
    N, C = xpad.shape[:2]
    sN, sC, sH, sW = xpad.strides
    shape = (N, C, kh, kw, OH, OW)
    strides = (sN, sC, sH * dh, sW * dw, sH * sh, sW * sw)
    return xp.lib.stride_tricks.as_strided(
        xpad, tuple(shape[o] for o in order), tuple(strides[o] for o in order))


def _im2col(xp, x, kernel_size, stride, padding, out_size, out=None, dilation=(1, 1)):
    """Column matrix ``cols[(c, a, b), (n, i, j)] = Xpad[n, c, i*sh + a*dh, j*sw + b*dw]``,
    shape ``(C*kh*kw, N*OH*OW)``: one copy out of a strided view (into ``out``,
    else a scratch buffer)."""
    N, C = x.shape[:2]
    (kh, kw), (OH, OW) = kernel_size, out_size
    xpad = pad2d(xp, x, padding, "conv_xpad")
    view = _windows(xp, xpad, kernel_size, stride, out_size, (1, 2, 3, 0, 4, 5), dilation)
    cols = workspace(xp, "conv_cols", view.shape, x.dtype) if out is None else out.reshape(view.shape)
    parallel_copy(xp, cols, view)
    return cols.reshape(C * kh * kw, N * OH * OW)


def _out_size(x_size, kernel_size, stride, padding, dilation):
    """``(OH, OW)`` of a convolution of an input ``(H, W)``."""
    return tuple(conv_output_size(n, k, s, p, d)
                 for n, k, s, p, d in zip(x_size, kernel_size, stride, pads(padding), dilation))


def im2col(xp, x, kernel_size, stride, padding, groups, out=None, dilation=(1, 1)):
    """The column matrix of a convolution's input, per group: ``(g, C/g*kh*kw, N*OH*OW)``
    with ``cols[g, (c, a, b), (n, i, j)] = Xpad[n, g*C/g + c, i*sh + a*dh, j*sw + b*dw]``.
    What :func:`conv2d_forward` and :func:`conv2d_grad_weight` build for themselves;
    the compiler has one node build it once for both where that pays
    (:func:`conv2d_from_cols`, :func:`conv2d_grad_weight_from_cols`)."""
    N, C, H, W = x.shape
    kh, kw = kernel_size
    OH, OW = _out_size((H, W), kernel_size, stride, padding, dilation)
    if out is None:
        out = xp.empty((groups, C // groups * kh * kw, N * OH * OW), dtype=x.dtype)
    _im2col(xp, x, (kh, kw), stride, padding, (OH, OW), out=out, dilation=dilation)
    return out


def _dy_by_channel(xp, dy):
    """``dy`` (N, O, OH, OW) copied to channel-major ``(O, N*OH*OW)`` (scratch)."""
    N, O, OH, OW = dy.shape
    dyt = workspace(xp, "conv_dyt", (O, N, OH, OW), dy.dtype)
    parallel_copy(xp, dyt, dy.transpose(1, 0, 2, 3))
    return dyt.reshape(O, N * OH * OW)


def conv2d_forward(xp, x, w, b, stride, padding, groups, out=None, relu=False, dilation=(1, 1)):
    """``y[n, o] = b[o] + sum_{c in group(o), a, b} W[o, c, a, b] Xpad[n, c, i*sh + a*dh, j*sw + b*dw]``.

    The slides' ``Y_ij = sum_ab W_ab X_(i+a)(j+b)`` per filter, with stride,
    zero padding, dilation and groups (filter ``o`` sees input channels of group
    ``o // (O / groups)`` only). ``b`` may be None. Returns ``(N, O, OH, OW)``
    (``out`` if given); ``relu=True`` returns ``max(y, 0)`` instead (the compiler's
    conv + ReLU fusion).
    """
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    g = groups
    if C != Cg * g or O % g:
        raise ValueError(f"conv2d: x {x.shape}, w {w.shape} and groups={g} do not match")
    OH, OW = _out_size((H, W), (kh, kw), stride, padding, dilation)
    cols = _im2col(xp, x, (kh, kw), stride, padding, (OH, OW), dilation=dilation)
    return conv2d_from_cols(xp, cols.reshape(g, Cg * kh * kw, N * OH * OW), w, b, (OH, OW), g, out=out, relu=relu)


def conv2d_from_cols(xp, cols, w, b, out_size, groups, out=None, relu=False):
    """:func:`conv2d_forward` from the input's column matrix ``cols`` (see :func:`im2col`):
    one GEMM per group, then back to NCHW with the bias (and the ReLU)."""
    O, Cg, kh, kw = w.shape
    g, (OH, OW) = groups, out_size
    K, M = Cg * kh * kw, cols.shape[2]
    N = M // (OH * OW)
    wg = w.reshape(g, O // g, K)
    # One GEMM per group, batched over the group axis. When OpenBLAS threads the
    # GEMM itself, a long reduction (K >= 1024) takes the pixel-major product
    # cols^T @ W^T: OpenBLAS splits its many rows over threads cleanly and stays
    # fast when another process competes for the cores (W @ cols can then be
    # 1.5x slower), though its output needs a strided transpose. When gemm()
    # splits the work itself (a compiled program), W @ cols is 3-7% faster.
    if K >= PIXEL_MAJOR_MIN_K and not gemms_split():
        yt = workspace(xp, "conv_yt", (g, N, OH, OW, O // g), cols.dtype)
        gemm(xp, cols.transpose(0, 2, 1), wg.transpose(0, 2, 1), out=yt.reshape(g, M, O // g))
        src = yt.transpose(1, 0, 4, 2, 3)
    else:
        yt = workspace(xp, "conv_yt", (g, O // g, N, OH, OW), cols.dtype)
        gemm(xp, wg, cols, out=yt.reshape(g, O // g, M))
        src = yt.transpose(2, 0, 1, 3, 4)
    # Back to NCHW; the bias add and the ReLU ride along with that copy.
    if device.on_device(xp) and (b is not None or relu):  # one kernel, a new array
        bias = xp.zeros((1, g, O // g, 1, 1), cols.dtype) if b is None else b.reshape(1, g, O // g, 1, 1)
        return device.bias_relu(xp, src, bias, relu).reshape(N, O, OH, OW)
    y = xp.empty((N, O, OH, OW), dtype=cols.dtype) if out is None else out
    y5 = y.reshape(N, g, O // g, OH, OW)
    b5 = None if b is None else b.reshape(1, g, O // g, 1, 1)

    def finish(lo, hi):
        if b5 is None:
            y5[lo:hi] = src[lo:hi]
        else:
            xp.add(src[lo:hi], b5, out=y5[lo:hi])
        if relu:
            flat = y5[lo:hi].reshape(-1)
            xp.maximum(flat, zeros(xp, flat.size, y.dtype), out=flat)

    parallel_blocks(xp, N, O * OH * OW, finish, scale=4)  # a few examples at a time: the ReLU runs from cache
    return y


def conv2d_grad_weight(xp, x, dy, kernel_size, stride, padding, groups, out=None, dilation=(1, 1)):
    """Slides' case 1: ``dE/dW_lk = sum_ij dE_ij X_(i+l)(j+k)``, summed over the batch.

    With stride, padding and dilation:
    ``dW[o, c, l, k] = sum_{n,i,j} dy[n, o, i, j] Xpad[n, c', i*sh + l*dh, j*sw + k*dw]``
    where ``c'`` is channel ``c`` of ``o``'s group. Returns ``(O, C // groups, kh, kw)``
    (``out`` if given).
    """
    N, C, H, W = x.shape
    _, O, OH, OW = dy.shape
    kh, kw = kernel_size
    cols = _im2col(xp, x, (kh, kw), stride, padding, (OH, OW), dilation=dilation)
    return conv2d_grad_weight_from_cols(xp, cols.reshape(groups, C // groups * kh * kw, N * OH * OW), dy,
                                        kernel_size, groups, out=out)


def conv2d_grad_weight_from_cols(xp, cols, dy, kernel_size, groups, out=None):
    """:func:`conv2d_grad_weight` from the input's column matrix ``cols`` (see :func:`im2col`)."""
    _, O, OH, OW = dy.shape
    (kh, kw), g = kernel_size, groups
    K, M = cols.shape[1], cols.shape[2]
    Cg = K // (kh * kw)
    dyt = _dy_by_channel(xp, dy).reshape(g, O // g, M)
    # dW^T = cols @ dy^T, (g, K, M) @ (g, M, O/g): the transposed dy is read in place
    # (GEMM "T" flag). The other orientation, dy @ cols^T, has few output rows
    # and OpenBLAS threads it badly: up to 20x slower when another process
    # competes for the cores.
    dwt = workspace(xp, "conv_dwt", (g, K, O // g), dy.dtype)
    gemm(xp, cols, dyt.transpose(0, 2, 1), out=dwt)
    dw = xp.empty((O, Cg, kh, kw), dtype=dy.dtype) if out is None else out
    dw.reshape(g, O // g, K)[...] = dwt.transpose(0, 2, 1)
    return dw


def _flip_transpose(xp, w, groups):
    """The kernel of the input gradient as a correlation: in/out channels swapped per
    group and both spatial axes flipped, ``wt[g*Cg + c, o, a, b] = w[g*Og + o, c, kh-1-a, kw-1-b]``."""
    O, Cg, kh, kw = w.shape
    wt = w.reshape(groups, O // groups, Cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    return xp.ascontiguousarray(wt).reshape(groups * Cg, O // groups, kh, kw)


def _grad_input_by_rows(xp, dy, w, input_size, padding, groups, out):
    """Stride 1: ``dX[n, c, h, x] = sum_{o, a, b} W[o, c, a, b] dy[n, o, h + ph - a, x + pw - b]``
    split by axis: the shifts along W are gathered from ``dy`` (one copy,
    ``R[(o, b), (n, i, x)] = dy[n, o, i, x + pw - (kw-1-b)]``), one GEMM per group gives
    ``T[(c, a), (n, i, x)] = sum_{o,b} W[o, c, a, kw-1-b] R[(o, b), (n, i, x)]``, and the
    shifts along H are ``kh`` adds of whole row blocks, ``dX[c, n, i + a - ph] += T[c, a, n, i]``:
    long contiguous runs, unlike col2im's rows of OW elements."""
    N, O, OH, OW = dy.shape
    _, Cg, kh, kw = w.shape
    H, W = input_size
    ph, pw = padding
    g, C, Og = groups, Cg * groups, O // groups
    dyw = pad2d(xp, dy, (0, kw - 1 - pw), "conv_xpad")  # width OW + 2(kw-1-pw) = W + kw - 1
    sN, sO, sH, sW = dyw.strides
    R = workspace(xp, "conv_cols", (O, kw, N, OH, W), dy.dtype)
    parallel_copy(xp, R, xp.lib.stride_tricks.as_strided(dyw, R.shape, (sO, sW, sN, sH, sW)))
    wr = w.reshape(g, Og, Cg, kh, kw)[..., ::-1].transpose(0, 2, 3, 1, 4)
    wr = xp.ascontiguousarray(wr).reshape(g, Cg * kh, Og * kw)
    T = workspace(xp, "conv_yt", (g, Cg * kh, N * OH * W), dy.dtype)
    gemm(xp, wr, R.reshape(g, Og * kw, N * OH * W), out=T)
    T = T.reshape(C, kh, N, OH, W)
    dxc = workspace(xp, "conv_dxpad", (C, N, H, W), dy.dtype)

    def rows(lo, hi):
        d = dxc[lo:hi]
        d.fill(0)
        for a in range(kh):
            i0, i1 = max(0, ph - a), min(OH, H + ph - a)  # output rows landing inside dX
            dst = d[:, :, i0 + a - ph:i1 + a - ph]
            xp.add(dst, T[lo:hi, a, :, i0:i1], out=dst)

    parallel_for(xp, C, rows, T.size)
    dx = xp.empty((N, C, H, W), dtype=dy.dtype) if out is None else out
    parallel_copy(xp, dx, dxc.transpose(1, 0, 2, 3))
    return dx


def _transposed_padding(kernel_size, padding, dilation):
    """The padding of ``dy`` that makes a stride-1 input gradient a forward
    convolution: ``ke - 1 - p`` on each side, ``ke = (k - 1) * d + 1``."""
    return tuple(((k - 1) * d - p0, (k - 1) * d - p1) for k, (p0, p1), d in zip(kernel_size, pads(padding), dilation))


def grad_input_as_convolution(out_channels, in_channels, stride, padding, kernel_size, dilation=(1, 1)):
    """Whether :func:`conv2d_grad_input` runs as a forward convolution of ``dy``
    (padded by ``ke - 1 - p``, ``ke`` the dilated kernel size) with the flipped
    kernel: stride 1, padding below the dilated kernel size on every side, and
    ``O <= 2C`` (its im2col copies ``O*kh*kw`` rows where col2im would add
    ``C*kh*kw``, and an add costs 2-3 copies)."""
    fits = all(p >= 0 for side in _transposed_padding(kernel_size, padding, dilation) for p in side)
    return tuple(stride) == (1, 1) and fits and out_channels <= 2 * in_channels


def conv2d_backward(xp, x, dy, w, padding, groups, out=(None, None), dilation=(1, 1)):
    """Both gradients of a stride-1 convolution (where :func:`grad_input_as_convolution`)
    from one column matrix of ``dy``, ``D[(o, a, b), (n, i, j)] = dypad[n, o, i + a*dh, j + b*dw]``
    (``dy`` padded by ``ke - 1 - p``), instead of one of ``dy`` and one of ``x``:

    * input:  ``dX = flip(W)^T @ D``, the input gradient as a convolution of ``dy``;
    * weight: ``dW[o, c, a, b] = sum_{n,i,j} x[n, c, i, j] D[(o, kh-1-a, kw-1-b), (n, i, j)]``,
      the slides' case 1 with ``i + a`` moved onto ``dy``'s side; ``x`` only needs a
      channel-major copy (9x smaller than its columns for a 3x3 kernel).

    Returns ``(dx, dw)`` (into ``out``'s arrays where given)."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    g = groups
    Og, M = O // g, N * H * W
    cols = _im2col(xp, dy, (kh, kw), (1, 1), _transposed_padding((kh, kw), padding, dilation), (H, W),
                   dilation=dilation).reshape(g, Og * kh * kw, M)
    dx = conv2d_from_cols(xp, cols, _flip_transpose(xp, w, g), None, (H, W), g, out=out[0])
    xc = workspace(xp, "conv_xc", (C, N, H, W), x.dtype)
    parallel_copy(xp, xc, x.transpose(1, 0, 2, 3))
    r = workspace(xp, "conv_dwt", (g, Cg, Og, kh, kw), x.dtype)
    gemm(xp, xc.reshape(g, Cg, M), cols.transpose(0, 2, 1), out=r.reshape(g, Cg, Og * kh * kw))
    dw = xp.empty(w.shape, dtype=x.dtype) if out[1] is None else out[1]
    dw.reshape(g, Og, Cg, kh, kw)[...] = r.transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    return dx, dw


def conv2d_grad_input(xp, dy, w, input_size, stride, padding, groups, out=None, dilation=(1, 1)):
    """Slides' case 2: each X gathers from every Y it fed, ``dX_ij = sum_ab W_ab dE_(i-a)(j-b)``.

    A full correlation of ``dE`` with the flipped kernel ("inversion of
    indexes"); with stride, padding, dilation and groups: ``dXpad[n, c, i*sh + a*dh, j*sw + b*dw]
    += sum_o W[o, c, a, b] dy[n, o, i, j]``, then the padding is cropped. Rows and
    columns that no window covered get zero. Returns ``(N, C, H, W)`` (``out`` if given).

    General path: ``cols = W^T @ dy`` (one GEMM per group) and col2im, ``kh*kw``
    strided adds into a zeroed padded buffer. Stride 1 has two faster paths:
    the correlation run literally as a forward convolution of ``dy`` when
    ``O <= 2C`` (its im2col copies ``O*kh*kw`` rows where col2im adds
    ``C*kh*kw`` rows, and an add costs 2-3 copies), else :func:`_grad_input_by_rows`
    (undilated, symmetric padding).
    """
    N, O, OH, OW = dy.shape
    _, Cg, kh, kw = w.shape
    H, W = input_size
    (sh, sw), (dh, dw) = stride, dilation
    (pt, pb), (pl, pr) = pads(padding)
    g = groups
    C, K, M = Cg * g, Cg * kh * kw, N * OH * OW
    if grad_input_as_convolution(O, C, stride, padding, (kh, kw), dilation):  # AlexNet conv3-5
        return conv2d_forward(xp, dy, _flip_transpose(xp, w, g), None, (1, 1),
                              _transposed_padding((kh, kw), padding, dilation), g, out=out, dilation=dilation)
    if (sh, sw) == (1, 1) and (dh, dw) == (1, 1) and pt == pb < kh and pl == pr < kw:
        return _grad_input_by_rows(xp, dy, w, input_size, (pt, pl), g, out)  # AlexNet conv2
    dyt = _dy_by_channel(xp, dy).reshape(g, O // g, M)
    cols = workspace(xp, "conv_cols", (g, K, M), dy.dtype)
    gemm(xp, w.reshape(g, O // g, K).transpose(0, 2, 1), dyt, out=cols)
    cols = cols.reshape(C, kh, kw, N, OH, OW)
    # col2im, channel-major like the columns so every add streams both operands.
    dxpad = workspace(xp, "conv_dxpad", (C, N, H + pt + pb, W + pl + pr), dy.dtype)
    # Threads split the channels (or the batch), so each owns its part of dxpad.
    split_c = C >= N

    def col2im(lo, hi):
        d = dxpad[lo:hi] if split_c else dxpad[:, lo:hi]
        c = cols[lo:hi] if split_c else cols[:, :, :, lo:hi]
        d.fill(0)
        for a in range(kh):
            for b in range(kw):
                dst = d[:, :, a * dh:a * dh + sh * (OH - 1) + 1:sh, b * dw:b * dw + sw * (OW - 1) + 1:sw]
                xp.add(dst, c[:, a, b], out=dst)

    parallel_for(xp, C if split_c else N, col2im, cols.size)
    dx = xp.empty((N, C, H, W), dtype=dy.dtype) if out is None else out
    parallel_copy(xp, dx, dxpad[:, :, pt:pt + H, pl:pl + W].transpose(1, 0, 2, 3))
    return dx
