"""Max-pooling kernels on plain arrays (NumPy now, CuPy later).

Layout NCHW; ``size``, ``stride`` and ``padding`` are pairs. Windows may overlap
(AlexNet: size 3, stride 2). Padding is -inf, so it never wins a window (a
window made only of padding cannot occur when padding < size)::

    y[n, c, i, j] = max_{a < kh, b < kw} Xpad[n, c, i*sh + a, j*sw + b]

The argmax is kept as the window offset ``a*kw + b`` of the maximum, ties going
to the FIRST maximum in row-major window order. Its dtype is the smallest
unsigned type that holds ``kh*kw - 1`` (:func:`argmax_dtype`: uint8 up to
16x16 windows). NaNs are not propagated (a NaN never beats the running max).

How it is fast: every kernel loops over the ``kh*kw`` window offsets only, one
vectorised operation on the whole batch per step. Strided operands would make
NumPy ~8x slower than contiguous ones, so the padded input is first split into
its ``sh*sw`` stride phases ``planes[p, q][u, v] = Xpad[u*sh + p, v*sw + q]``
(one copy). Window offset ``(a, b)`` then reads phase ``(a % sh, b % sw)``
shifted by ``(a // sh, b // sw)``; computing "wide" output rows as long as a
phase row (``Wq = OW + (kw-1)//sw``, the extra columns are discarded) turns that
into one contiguous run per feature map. Masks are applied by arithmetic and
bit operations, not ``where``/``copyto(where=)``, which are ~20x slower.
"""

import numpy

from .conv import conv_output_size, parallel_blocks, workspace


def argmax_dtype(size):
    """Smallest unsigned integer dtype holding window offsets ``0 .. kh*kw - 1``."""
    n = size[0] * size[1]
    if n <= 1 << 8:
        return numpy.dtype(numpy.uint8)
    if n <= 1 << 16:
        return numpy.dtype(numpy.uint16)
    return numpy.dtype(numpy.int64)


class _Plan:
    """Geometry shared by the kernels: output size, phase planes, wide rows."""

    def __init__(self, input_size, size, stride, padding):
        (self.H, self.W), (self.kh, self.kw) = input_size, size
        (self.sh, self.sw), (self.ph, self.pw) = stride, padding
        self.OH = conv_output_size(self.H, self.kh, self.sh, self.ph)
        self.OW = conv_output_size(self.W, self.kw, self.sw, self.pw)
        self.Ph, self.Pw = min(self.sh, self.kh), min(self.sw, self.kw)  # phases in use
        self.Hq = self.OH + (self.kh - 1) // self.sh + 1  # +1 row: the last wide run spills
        self.Wq = self.OW + (self.kw - 1) // self.sw
        self.offsets = [(a, b) for a in range(self.kh) for b in range(self.kw)]  # idx = a*kw + b

    def phase_slices(self, p, q):
        """``(plane region, input region)`` holding the entries of x in phase ``(p, q)``."""
        rp, rx = _phase_range(self.H, self.sh, self.ph, p, self.Hq)
        cp, cx = _phase_range(self.W, self.sw, self.pw, q, self.Wq)
        return (rp, cp), (rx, cx)

    def run(self, flat, a, b):
        """Wide window view ``v[..., i*Wq + j] = Xpad[i*sh + a, j*sw + b]`` of flat phase
        planes ``(Ph, Pw, N, C, Hq*Wq)``: a contiguous run per feature map."""
        start = (a // self.sh) * self.Wq + b // self.sw
        return flat[a % self.sh, b % self.sw, :, :, start:start + self.OH * self.Wq]


def _phase_range(n, s, pad, phase, length):
    """Plane indices ``u`` (< length) whose input index ``u*s + phase - pad`` lies in
    ``[0, n)``, as ``(plane slice, input slice)``."""
    first = phase - pad  # input index of plane index 0
    u0 = max(0, -(first // s))  # ceil(-first / s)
    u1 = max(u0, min(length, (n - 1 - first) // s + 1))
    start = u0 * s + first
    return slice(u0, u1), slice(start, start + s * (u1 - u0), s)


def _to_phases(xp, x, plan, fill, tag):
    """Flat phase planes ``(Ph, Pw, n, C, Hq*Wq)`` of a block ``x`` padded with ``fill``."""
    n, C = x.shape[:2]
    planes = workspace(xp, tag, (plan.Ph, plan.Pw, n, C, plan.Hq, plan.Wq), x.dtype)
    for p in range(plan.Ph):
        for q in range(plan.Pw):
            (rp, cp), (rx, cx) = plan.phase_slices(p, q)
            planes[p, q].fill(fill)
            planes[p, q][:, :, rp, cp] = x[:, :, rx, cx]
    return planes.reshape(plan.Ph, plan.Pw, n, C, plan.Hq * plan.Wq)


def _from_phases(xp, flat, plan, out):
    """Write phase planes back to ``out`` (a block of dx); entries that no plane
    holds (gaps between windows, rows after the last window) are left alone."""
    planes = flat.reshape(flat.shape[:4] + (plan.Hq, plan.Wq))
    for p in range(plan.Ph):
        for q in range(plan.Pw):
            (rp, cp), (rx, cx) = plan.phase_slices(p, q)
            out[:, :, rx, cx] = planes[p, q][:, :, rp, cp]
    return out


def _widen(xp, a, plan, tag):
    """A block ``a`` (n, C, OH, OW) copied to wide rows ``(n, C, OH*Wq)``, extra columns 0."""
    n, C = a.shape[:2]
    w = workspace(xp, tag, (n, C, plan.OH, plan.Wq), a.dtype)
    w[..., plan.OW:] = 0
    w[..., :plan.OW] = a
    return w.reshape(n, C, plan.OH * plan.Wq)


def _narrow(w, plan, out):
    """The valid columns of wide rows ``w`` copied to ``out`` (n, C, OH, OW)."""
    out[...] = w.reshape(out.shape[:2] + (plan.OH, plan.Wq))[..., :plan.OW]


def _select_bits(xp, v, mask, ibuf, out):
    """``out = v where mask else +0.0``, bit-exact (also for inf/nan in ``v``):
    the bits of ``v`` ANDed with 0 - mask (all ones or all zeros)."""
    itype = xp.dtype(f"i{v.dtype.itemsize}")
    xp.subtract(itype.type(0), mask, out=ibuf)
    xp.bitwise_and(v.view(itype), ibuf, out=out.view(itype))
    return out


def _scratch(xp, shape, *specs):
    """Per-thread scratch arrays of one shape: ``specs`` are (tag, dtype) pairs."""
    return [workspace(xp, tag, shape, dtype) for tag, dtype in specs]


def max_pool2d_forward(xp, x, size, stride, padding):
    """``y = max_ab Xpad[i*sh + a, j*sw + b]`` and ``argmax = a*kw + b`` of the first maximum.

    Returns ``(y, argmax)``, both ``(N, C, OH, OW)``; ``argmax`` has dtype
    :func:`argmax_dtype`. One sweep over the window offsets: a strictly greater
    value takes over the running maximum and its offset, so ties keep the first
    (offsets grow along the sweep, so "take over" is a max of ``mask * idx``).
    """
    N, C, H, W = x.shape
    plan = _Plan((H, W), size, stride, padding)
    idt = argmax_dtype(size)
    y = xp.empty((N, C, plan.OH, plan.OW), dtype=x.dtype)
    am = xp.empty(y.shape, dtype=idt)

    def block(lo, hi):
        flat = _to_phases(xp, x[lo:hi], plan, -numpy.inf, "pool_planes")
        ys, ams, ms, ts = _scratch(xp, (hi - lo, C, plan.OH * plan.Wq), ("pool_y", x.dtype),
                                   ("pool_am", idt), ("pool_mask", numpy.bool_), ("pool_t", idt))
        ys[...] = plan.run(flat, 0, 0)
        ams.fill(0)
        for idx, (a, b) in enumerate(plan.offsets[1:], start=1):
            v = plan.run(flat, a, b)
            xp.greater(v, ys, out=ms)
            xp.multiply(ms, idt.type(idx), out=ts)
            xp.maximum(ams, ts, out=ams)
            xp.maximum(ys, v, out=ys)
        _narrow(ys, plan, y[lo:hi])
        _narrow(ams, plan, am[lo:hi])

    parallel_blocks(xp, N, x[:1].size, block)
    return y, am


def max_pool2d_grad(xp, dy, argmax, input_size, size, stride, padding):
    """The multiplexer: ``dX[i*sh + a, j*sw + b] += dy[i, j]`` where ``a*kw + b = argmax[i, j]``.

    Where windows overlap the contributions add up. One masked add per window
    offset into phase planes, then one copy back. Returns ``(N, C, H, W)``;
    gradient aimed at padding is dropped.
    """
    N, C = dy.shape[:2]
    plan = _Plan(input_size, size, stride, padding)
    dx = xp.zeros((N, C) + tuple(input_size), dtype=dy.dtype)
    itype = f"i{dy.dtype.itemsize}"

    def block(lo, hi):
        ds, ams = _widen(xp, dy[lo:hi], plan, "pool_y"), _widen(xp, argmax[lo:hi], plan, "pool_am")
        ms, ts, ib = _scratch(xp, ds.shape, ("pool_mask", numpy.bool_), ("pool_dt", dy.dtype),
                              ("pool_ibuf", itype))
        flat = workspace(xp, "pool_planes", (plan.Ph, plan.Pw, hi - lo, C, plan.Hq * plan.Wq), dy.dtype)
        flat.fill(0)
        for idx, (a, b) in enumerate(plan.offsets):
            xp.equal(ams, argmax.dtype.type(idx), out=ms)
            _select_bits(xp, ds, ms, ib, ts)
            dst = plan.run(flat, a, b)
            xp.add(dst, ts, out=dst)
        _from_phases(xp, flat, plan, dx[lo:hi])

    parallel_blocks(xp, N, dx[:1].size, block)
    return dx


def max_pool2d_gather(xp, dx_like, argmax, size, stride, padding):
    """``out[i, j] = V[i*sh + a, j*sw + b]`` with ``a*kw + b = argmax[i, j]``, V input-shaped.

    The transpose (adjoint) of :func:`max_pool2d_grad`, used for double
    backward; ``max_pool2d_gather(x, argmax)`` equals the pooled ``y``. Exact:
    each window's value is OR-ed in bitwise from the one offset that matches.
    """
    N, C, H, W = dx_like.shape
    plan = _Plan((H, W), size, stride, padding)
    res = xp.empty(argmax.shape, dtype=dx_like.dtype)
    itype = f"i{dx_like.dtype.itemsize}"

    def block(lo, hi):
        flat = _to_phases(xp, dx_like[lo:hi], plan, 0, "pool_planes")
        ams = _widen(xp, argmax[lo:hi], plan, "pool_am")
        rs, ms, ts, ib = _scratch(xp, ams.shape, ("pool_y", dx_like.dtype), ("pool_mask", numpy.bool_),
                                  ("pool_dt", dx_like.dtype), ("pool_ibuf", itype))
        rs.fill(0)
        for idx, (a, b) in enumerate(plan.offsets):
            xp.equal(ams, argmax.dtype.type(idx), out=ms)
            _select_bits(xp, plan.run(flat, a, b), ms, ib, ts)
            xp.bitwise_or(rs.view(itype), ts.view(itype), out=rs.view(itype))
        _narrow(rs, plan, res[lo:hi])

    parallel_blocks(xp, N, dx_like[:1].size, block)
    return res
