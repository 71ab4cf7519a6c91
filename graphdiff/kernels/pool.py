"""Max-pooling kernels on plain arrays, for NumPy and CuPy (on CuPy the fused kernels
of :mod:`graphdiff.kernels.device` take over where they save passes).

Layout NCHW; ``size``, ``stride`` and ``padding`` are pairs. Windows may overlap
(AlexNet: size 3, stride 2). Padding is -inf, so it never wins a window (a
window made only of padding cannot occur when padding < size)::

    y[n, c, i, j] = max_{a < kh, b < kw} Xpad[n, c, i*sh + a, j*sw + b]

The argmax is kept as the window offset ``a*kw + b`` of the maximum, ties going
to the FIRST maximum in row-major window order. Its dtype is the smallest
unsigned type that holds ``kh*kw - 1`` (:func:`argmax_dtype`: uint8 up to
16x16 windows). A NaN propagates (``y`` is NaN, as in NumPy and PyTorch), and
the argmax is then the window's first NaN, so the gradient goes to the value
that made ``y``; the argmax is never a padding cell, also where every value of
the window is -inf (:func:`fix_argmax`, the exact rule for the rare blocks
where the fast sweeps' comparisons cannot see it).

How it is fast. Forward: a loop over the ``kh*kw`` window offsets only, one
vectorised operation on a whole block of examples per step. Strided operands
would make NumPy ~8x slower than contiguous ones, so the padded input is first
split into its ``sh*sw`` stride phases ``planes[p, q][u, v] = Xpad[u*sh + p,
v*sw + q]`` (one copy). Window offset ``(a, b)`` then reads phase
``(a % sh, b % sw)`` shifted by ``(a // sh, b // sw)``; computing "wide" output
maps as large as a phase plane (``Hq x Wq``, the extra rows and columns are
discarded) turns that into one contiguous run over the whole block. The argmax
is tracked by arithmetic, not ``where``/``copyto(where=)`` (~20x slower).
Backward and gather: the argmax becomes a flat index into the padded input,
then one scatter-add (``add.at``) or one ``take``.
"""

import numpy

from . import device
from .conv import conv_output_size, pad2d

# The gradient on a GPU as a gather (deterministic); False: CuPy's scatter_add (float
# atomics: the order of the additions, and so the rounding, changes from run to run).
DETERMINISTIC_GRAD = True
from .parallel import parallel_blocks, workspace


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
        self.Hq = self.OH + (self.kh - 1) // self.sh  # phase plane: rows and columns
        self.Wq = self.OW + (self.kw - 1) // self.sw  # that some window reads
        self.L = self.Hq * self.Wq  # one feature map, in planes and in wide outputs
        self.offsets = [(a, b) for a in range(self.kh) for b in range(self.kw)]  # idx = a*kw + b

    def phase_slices(self, p, q):
        """``(plane region, input region)`` holding the entries of x in phase ``(p, q)``."""
        rp, rx = _phase_range(self.H, self.sh, self.ph, p, self.Hq)
        cp, cx = _phase_range(self.W, self.sw, self.pw, q, self.Wq)
        return (rp, cp), (rx, cx)

    def run(self, buf, a, b, count):
        """Window view ``v[m*L + i*Wq + j] = Xpad_m[i*sh + a, j*sw + b]`` over ``count``
        wide positions of a phase buffer (see :func:`_to_phases`): one contiguous run."""
        start = (a // self.sh) * self.Wq + b // self.sw
        return buf[a % self.sh, b % self.sw, start:start + count]


def _phase_range(n, s, pad, phase, length):
    """Plane indices ``u`` (< length) whose input index ``u*s + phase - pad`` lies in
    ``[0, n)``, as ``(plane slice, input slice)``."""
    first = phase - pad  # input index of plane index 0
    u0 = max(0, -(first // s))  # ceil(-first / s)
    u1 = max(u0, min(length, (n - 1 - first) // s + 1))
    start = u0 * s + first
    return slice(u0, u1), slice(start, start + s * (u1 - u0), s)


def _to_phases(xp, x, plan, fill):
    """Phase planes of a block ``x`` padded with ``fill``, flat: ``buf (Ph, Pw, n*C*L + L)``.
    The last ``L`` of each phase is slack for the wide garbage rows of the last
    map, which read past its end."""
    n, C = x.shape[:2]
    buf = workspace(xp, "pool_planes", (plan.Ph, plan.Pw, (n * C + 1) * plan.L), x.dtype)
    buf.fill(fill)
    planes = buf[:, :, :n * C * plan.L].reshape(plan.Ph, plan.Pw, n, C, plan.Hq, plan.Wq)
    for p in range(plan.Ph):
        for q in range(plan.Pw):
            (rp, cp), (rx, cx) = plan.phase_slices(p, q)
            planes[p, q][:, :, rp, cp] = x[:, :, rx, cx]
    return buf


def _narrow(w, plan, out):
    """The valid part of flat wide maps ``w`` copied to ``out`` (n, C, OH, OW)."""
    n, C = out.shape[:2]
    out[...] = w.reshape(n, C, plan.Hq, plan.Wq)[:, :, :plan.OH, :plan.OW]


def _scratch(xp, shape, *specs):
    """Per-thread scratch arrays of one shape: ``specs`` are (tag, dtype) pairs."""
    return [workspace(xp, tag, shape, dtype) for tag, dtype in specs]


def max_pool2d_forward(xp, x, size, stride, padding, out=None, argmax=True, argmax_out=None):
    """``y = max_ab Xpad[i*sh + a, j*sw + b]`` and ``argmax = a*kw + b`` of the first maximum.

    Returns ``(y, argmax)``, both ``(N, C, OH, OW)``; ``argmax`` has dtype
    :func:`argmax_dtype`. One sweep over the window offsets: a strictly greater
    value takes over the running maximum and its offset, so ties keep the first
    (offsets grow along the sweep, so "take over" is a max of ``mask * idx``).
    ``y`` is written into ``out`` and the argmax into ``argmax_out`` when given;
    ``argmax=False`` skips the argmax (3 of the 4 passes per offset) and returns
    ``(y, None)``.
    """
    N, C, H, W = x.shape
    plan = _Plan((H, W), size, stride, padding)
    idt = argmax_dtype(size)
    if device.on_device(xp):  # one kernel over the window views; new arrays
        return device.max_pool2d_forward(xp, x, size, stride, padding, (plan.OH, plan.OW),
                                         idt if argmax else None)
    y = xp.empty((N, C, plan.OH, plan.OW), dtype=x.dtype) if out is None else out
    am = (xp.empty(y.shape, dtype=idt) if argmax_out is None else argmax_out) if argmax else None

    def block(lo, hi):
        buf = _to_phases(xp, x[lo:hi], plan, -numpy.inf)
        count = (hi - lo) * C * plan.L
        (ys,) = _scratch(xp, (count,), ("pool_y", x.dtype))
        if argmax:
            ams, ms, ts = _scratch(xp, (count,), ("pool_am", idt), ("pool_mask", numpy.bool_), ("pool_t", idt))
            ams.fill(0)
        ys[...] = plan.run(buf, 0, 0, count)
        for idx, (a, b) in enumerate(plan.offsets[1:], start=1):
            v = plan.run(buf, a, b, count)
            if argmax:
                xp.greater(v, ys, out=ms)
                xp.multiply(ms, idt.type(idx), out=ts)
                xp.maximum(ams, ts, out=ams)
            xp.maximum(ys, v, out=ys)
        _narrow(ys, plan, y[lo:hi])
        if argmax:
            _narrow(ams, plan, am[lo:hi])
            fix_argmax(xp, x[lo:hi], y[lo:hi], am[lo:hi], size, stride, padding)

    parallel_blocks(xp, N, x[:1].size, block)
    return y, am


def fix_argmax(xp, x, y, argmax, size, stride, padding):
    """Correct ``argmax`` (in place) for a block of windows where the fast rules
    ("strictly greater takes over", "first offset equal to y") can go wrong:

    * a window holding a NaN: ``y`` is NaN, which neither compares greater nor
      equal; the argmax must be the window's first NaN (the value ``y`` came
      from, where PyTorch sends the gradient too);
    * with padding, a window whose maximum is -inf: its -inf padding cells tie
      with the input's, and a padding cell must never get the gradient (it is
      cropped away: the gradient would be lost). The first -inf of the input wins.

    Both show in ``y.sum()`` (NaN, or -inf with padding), one cheap pass over
    ``y``; only then is the block's argmax recomputed by the full rule: the
    first NaN, else the first maximum among the input's own cells."""
    total = float(y.sum())
    if not (total != total or (total == -numpy.inf and (padding[0] or padding[1]))):
        return argmax
    N, C, H, W = x.shape
    plan = _Plan((H, W), size, stride, padding)
    xpad = pad2d(xp, x, padding, "pool_fix_xpad", fill=-numpy.inf)
    best = xp.full(y.shape, -numpy.inf, dtype=x.dtype)
    taken = xp.zeros(y.shape, dtype=bool)   # a cell of the input's own was taken
    on_nan = xp.zeros(y.shape, dtype=bool)  # that cell was a NaN: final
    rows, cols = xp.arange(plan.OH) * plan.sh, xp.arange(plan.OW) * plan.sw
    for offset, (a, b) in enumerate(plan.offsets):
        v = xpad[:, :, a:a + plan.sh * (plan.OH - 1) + 1:plan.sh, b:b + plan.sw * (plan.OW - 1) + 1:plan.sw]
        real = (((rows + a >= plan.ph) & (rows + a < plan.ph + H))[:, None]
                & ((cols + b >= plan.pw) & (cols + b < plan.pw + W))[None, :])
        nan = xp.isnan(v)
        take = real & ~on_nan & (nan | ~taken | (v > best))
        best = xp.where(take, v, best)
        argmax[take] = offset
        taken |= take
        on_nan |= take & nan
    return argmax


def _flat_index(xp, argmax, plan, Hp, Wp):
    """``idx[n, c, i, j]``: flat position, in a padded block ``(n, C, Hp, Wp)``, of the
    argmax of window ``(i, j)`` (int32 unless the block is huge)."""
    n, C, OH, OW = argmax.shape
    itype = numpy.int32 if n * C * Hp * Wp < 2**31 else numpy.int64
    offsets = xp.asarray([a * Wp + b for a, b in plan.offsets], dtype=itype)
    idx = xp.take(offsets, argmax)  # window offset a*kw + b -> a*Wp + b
    corner = (xp.arange(OH, dtype=itype) * (plan.sh * Wp))[:, None] + xp.arange(OW, dtype=itype) * plan.sw
    idx += corner  # window (i, j) starts at row i*sh, column j*sw
    idx += (xp.arange(n * C, dtype=itype) * (Hp * Wp)).reshape(n, C, 1, 1)
    return idx


def max_pool2d_grad(xp, dy, argmax, input_size, size, stride, padding, out=None):
    """The multiplexer: ``dX[i*sh + a, j*sw + b] += dy[i, j]`` where ``a*kw + b = argmax[i, j]``.

    Where windows overlap the contributions add up. A scatter-add at the argmax
    positions: ``xp.add.at`` with flat int32 indices, which NumPy 2 runs on a
    fast path (2-3x faster than one masked strided add per window offset;
    CuPy provides ``add.at`` too). Returns ``(N, C, H, W)`` (``out`` if given);
    gradient aimed at padding is dropped.
    """
    if device.on_device(xp) and DETERMINISTIC_GRAD:
        return device.max_pool2d_grad(xp, dy, argmax, input_size, size, stride, padding, out=out)
    N, C = dy.shape[:2]
    H, W = input_size
    plan = _Plan(input_size, size, stride, padding)
    Hp, Wp = H + 2 * plan.ph, W + 2 * plan.pw
    dx = xp.empty((N, C, H, W), dtype=dy.dtype) if out is None else out
    padded = (Hp, Wp) != (H, W)

    def block(lo, hi):
        if padded:
            d = workspace(xp, "pool_dxpad", (hi - lo, C, Hp, Wp), dy.dtype)
        else:
            d = dx[lo:hi]  # scatter straight into the result
        d.fill(0)  # per block, so the zeroing runs in cache just before the scatter
        idx = _flat_index(xp, argmax[lo:hi], plan, Hp, Wp)
        _scatter_add(xp, d.reshape(-1), idx.reshape(-1), dy[lo:hi].reshape(-1))
        if padded:
            dx[lo:hi] = d[:, :, plan.ph:plan.ph + H, plan.pw:plan.pw + W]

    parallel_blocks(xp, N, dx[:1].size, block)
    return dx


def _scatter_add(xp, target, index, values):
    """``target[index] += values``, summing repeated indices (``numpy.add.at``;
    CuPy spells it ``cupyx.scatter_add``, an atomic add on the GPU)."""
    if xp.__name__ == "numpy":
        xp.add.at(target, index, values)
    else:
        import cupyx

        cupyx.scatter_add(target, index, values)


def max_pool2d_gather(xp, dx_like, argmax, size, stride, padding, out=None):
    """``out[i, j] = V[i*sh + a, j*sw + b]`` with ``a*kw + b = argmax[i, j]``, V input-shaped.

    The transpose (adjoint) of :func:`max_pool2d_grad`, used for double
    backward; ``max_pool2d_gather(x, argmax)`` equals the pooled ``y``. A
    ``take`` at the same flat indices.
    """
    if device.on_device(xp):  # one kernel over the window views, nothing uploaded
        return device.max_pool2d_gather(xp, dx_like, argmax, size, stride, padding)
    N, C, H, W = dx_like.shape
    plan = _Plan((H, W), size, stride, padding)
    Hp, Wp = H + 2 * plan.ph, W + 2 * plan.pw
    res = xp.empty(argmax.shape, dtype=dx_like.dtype) if out is None else out

    def block(lo, hi):
        v = xp.ascontiguousarray(pad2d(xp, dx_like[lo:hi], padding, "pool_gpad"))
        idx = _flat_index(xp, argmax[lo:hi], plan, Hp, Wp)
        xp.take(v.reshape(-1), idx, out=res[lo:hi])

    parallel_blocks(xp, N, dx_like[:1].size, block)
    return res
