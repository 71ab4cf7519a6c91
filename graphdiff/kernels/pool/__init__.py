"""Max pooling's kernels, all here: on plain arrays for NumPy and CuPy, and on CuPy
the fused kernels of :mod:`graphdiff.kernels.pool.gpu` where they save passes.

Layout NCHW; ``size``, ``stride`` and ``dilation`` are pairs, ``padding`` is
``(ph, pw)`` (both sides) or ``((top, bottom), (left, right))``. Windows may
overlap (AlexNet: size 3, stride 2). Padding is -inf, so it never wins a window
(the ops refuse a window made only of padding)::

    y[n, c, i, j] = max_{a < kh, b < kw} Xpad[n, c, i*sh + a*dh, j*sw + b*dw]

``ceil_mode`` rounds the output size up (PyTorch's rule, :func:`pool_output_size`);
the cells the last windows read past the end padding count as -inf padding too.

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
v*sw + q]`` (one copy). Window offset ``(a, b)``, at shift ``(ra, rb) = (a*dh,
b*dw)``, then reads phase ``(ra % sh, rb % sw)`` shifted by ``(ra // sh,
rb // sw)``; computing "wide" output maps as large as a phase plane (``Hq x Wq``,
the extra rows and columns are discarded) turns that into one contiguous run
over the whole block. The argmax
is tracked by arithmetic, not ``where``/``copyto(where=)`` (~20x slower).
Backward and gather: the argmax becomes a flat index into the padded input,
then one scatter-add (``add.at``) or one ``take``.
"""

import numpy

from .. import device
from . import gpu

# The gradient on a GPU as a gather (deterministic); False: CuPy's scatter_add (float
# atomics: the order of the additions, and so the rounding, changes from run to run).
DETERMINISTIC_GRAD = True
from ..parallel import parallel_blocks, workspace


def argmax_dtype(size):
    """Smallest unsigned integer dtype holding window offsets ``0 .. kh*kw - 1``."""
    n = size[0] * size[1]
    if n <= 1 << 8:
        return numpy.dtype(numpy.uint8)
    if n <= 1 << 16:
        return numpy.dtype(numpy.uint16)
    return numpy.dtype(numpy.int64)


pool_pads = gpu.pool_pads
pool_output_size = gpu.pool_output_size


class _Plan:
    """Geometry shared by the kernels: output size, padded extent, phase planes, wide rows.

    ``padding`` is ``(ph, pw)`` (both sides) or ``((top, bottom), (left, right))``;
    window offset ``(a, b)`` reads ``Xpad[i*sh + a*dh, j*sw + b*dw]`` (``dilation``);
    ``ceil_mode`` rounds the output size up (:func:`pool_output_size`); the cells
    the last windows read past the bottom/right padding are -inf as well."""

    def __init__(self, input_size, size, stride, padding, dilation=(1, 1), ceil_mode=False):
        (self.H, self.W), (self.kh, self.kw) = input_size, size
        (self.sh, self.sw), (self.dh, self.dw) = stride, dilation
        pads = pool_pads(padding)
        (self.ph, _), (self.pw, _) = pads  # leading (top, left) padding: where the input starts
        self.OH = pool_output_size(self.H, self.kh, self.sh, pads[0], self.dh, ceil_mode)
        self.OW = pool_output_size(self.W, self.kw, self.sw, pads[1], self.dw, ceil_mode)
        if self.OH < 1 or self.OW < 1:
            raise ValueError(f"pool window {tuple(size)} (dilation {tuple(dilation)}) larger than the padded input")
        # The padded block: the input and every cell a window reads.
        self.Hp, self.Wp = gpu.pool_padded_size(input_size, size, stride, pads, dilation, (self.OH, self.OW))
        self.padded = (self.Hp, self.Wp) != (self.H, self.W)
        eh, ew = self.dh * (self.kh - 1), self.dw * (self.kw - 1)  # window extent - 1
        self.Ph, self.Pw = min(self.sh, eh + 1), min(self.sw, ew + 1)  # phases in use
        self.Hq = self.OH + eh // self.sh  # phase plane: rows and columns
        self.Wq = self.OW + ew // self.sw  # that some window reads
        self.L = self.Hq * self.Wq  # one feature map, in planes and in wide outputs
        self.offsets = [(a, b) for a in range(self.kh) for b in range(self.kw)]  # idx = a*kw + b
        self.shifts = [(a * self.dh, b * self.dw) for a, b in self.offsets]  # where offset idx reads

    def phase_slices(self, p, q):
        """``(plane region, input region)`` holding the entries of x in phase ``(p, q)``."""
        rp, rx = _phase_range(self.H, self.sh, self.ph, p, self.Hq)
        cp, cx = _phase_range(self.W, self.sw, self.pw, q, self.Wq)
        return (rp, cp), (rx, cx)

    def run(self, buf, ra, rb, count):
        """Window view ``v[m*L + i*Wq + j] = Xpad_m[i*sh + ra, j*sw + rb]`` over ``count``
        wide positions of a phase buffer (see :func:`_to_phases`): one contiguous run."""
        start = (ra // self.sh) * self.Wq + rb // self.sw
        return buf[ra % self.sh, rb % self.sw, start:start + count]

    def window(self, xpad, ra, rb):
        """The strided view ``xpad[:, :, i*sh + ra, j*sw + rb]`` (OH x OW) of a padded block."""
        return xpad[:, :, ra:ra + self.sh * (self.OH - 1) + 1:self.sh, rb:rb + self.sw * (self.OW - 1) + 1:self.sw]

    def pad(self, xp, x, tag, fill=0):
        """A block ``x`` in its padded extent ``(n, C, Hp, Wp)``, ``fill`` around it
        (``x`` itself when nothing is padded)."""
        if not self.padded:
            return x
        n, C = x.shape[:2]
        out = workspace(xp, tag, (n, C, self.Hp, self.Wp), x.dtype)
        out.fill(fill)
        out[:, :, self.ph:self.ph + self.H, self.pw:self.pw + self.W] = x
        return out

    def real(self, xp, ra, rb):
        """Bool ``(OH, OW)``: the windows whose cell at shift ``(ra, rb)`` is the input's own."""
        rows, cols = xp.arange(self.OH) * self.sh + ra, xp.arange(self.OW) * self.sw + rb
        return (((rows >= self.ph) & (rows < self.ph + self.H))[:, None]
                & ((cols >= self.pw) & (cols < self.pw + self.W))[None, :])


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


def max_pool2d_forward(xp, x, size, stride, padding, out=None, argmax=True, argmax_out=None, dilation=(1, 1),
                       ceil_mode=False):
    """``y = max_ab Xpad[i*sh + a*dh, j*sw + b*dw]`` and ``argmax = a*kw + b`` of the first maximum.

    Returns ``(y, argmax)``, both ``(N, C, OH, OW)``; ``argmax`` has dtype
    :func:`argmax_dtype`. One sweep over the window offsets: a strictly greater
    value takes over the running maximum and its offset, so ties keep the first
    (offsets grow along the sweep, so "take over" is a max of ``mask * idx``).
    ``y`` is written into ``out`` and the argmax into ``argmax_out`` when given;
    ``argmax=False`` skips the argmax (3 of the 4 passes per offset) and returns
    ``(y, None)``. ``padding``, ``dilation``, ``ceil_mode``: see :class:`_Plan`.
    """
    N, C, H, W = x.shape
    plan = _Plan((H, W), size, stride, padding, dilation, ceil_mode)
    idt = argmax_dtype(size)
    if device.on_device(xp):  # one kernel over the window views; new arrays
        return gpu.max_pool2d_forward(xp, x, size, stride, padding, (plan.OH, plan.OW),
                                         idt if argmax else None, dilation=dilation)
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
        for idx, (ra, rb) in enumerate(plan.shifts[1:], start=1):
            v = plan.run(buf, ra, rb, count)
            if argmax:
                xp.greater(v, ys, out=ms)
                xp.multiply(ms, idt.type(idx), out=ts)
                xp.maximum(ams, ts, out=ams)
            xp.maximum(ys, v, out=ys)
        _narrow(ys, plan, y[lo:hi])
        if argmax:
            _narrow(ams, plan, am[lo:hi])
            _fix_argmax(xp, x[lo:hi], y[lo:hi], am[lo:hi], plan)

    parallel_blocks(xp, N, x[:1].size, block)
    return y, am


def max_pool2d_argmax(xp, x, y, size, stride, padding, out=None, dilation=(1, 1), ceil_mode=False):
    """``idx[n, c, i, j]`` = the first window offset ``a*kw + b`` (row-major) where
    ``Xpad[i*sh + a*dh, j*sw + b*dw] == y[i, j]``: the forward kernel's argmax read off
    the forward values ``x`` and ``y`` (no max recomputed), then :func:`fix_argmax`
    for NaN and -inf windows."""
    plan = _Plan(x.shape[2:], size, stride, padding, dilation, ceil_mode)
    dtype, last = argmax_dtype(size), len(plan.shifts) - 1
    if device.on_device(xp):  # one kernel, a new array
        return gpu.max_pool2d_argmax(xp, x, y, size, stride, padding, dtype, dilation=dilation)
    idx = xp.empty(y.shape, dtype=dtype) if out is None else out

    def block(lo, hi):  # a few examples at a time, so the passes below run from cache
        xb, yb = plan.pad(xp, x[lo:hi], "pool_argmax_xpad", -numpy.inf), y[lo:hi]
        hit, rank, best = (workspace(xp, f"pool_argmax_{tag}", yb.shape, dt) for tag, dt in
                           (("hit", numpy.bool_), ("rank", dtype), ("best", dtype)))
        best.fill(0)
        # Arithmetic, not where(): best = max over the offsets equal to y of their rank
        # last - offset, so the first hit wins (ranks fit the index dtype).
        for offset, (ra, rb) in enumerate(plan.shifts):
            xp.equal(plan.window(xb, ra, rb), yb, out=hit)
            xp.multiply(hit, dtype.type(last - offset), out=rank)
            xp.maximum(best, rank, out=best)
        xp.subtract(dtype.type(last), best, out=idx[lo:hi])
        _fix_argmax(xp, x[lo:hi], yb, idx[lo:hi], plan)  # NaN, -inf

    parallel_blocks(xp, x.shape[0], x[:1].size, block)
    return idx


def fix_argmax(xp, x, y, argmax, size, stride, padding, dilation=(1, 1), ceil_mode=False):
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
    return _fix_argmax(xp, x, y, argmax, _Plan(x.shape[2:], size, stride, padding, dilation, ceil_mode))


def _fix_argmax(xp, x, y, argmax, plan):
    total = float(y.sum())
    if not (total != total or (total == -numpy.inf and plan.padded)):
        return argmax
    xpad = plan.pad(xp, x, "pool_fix_xpad", fill=-numpy.inf)
    best = xp.full(y.shape, -numpy.inf, dtype=x.dtype)
    taken = xp.zeros(y.shape, dtype=bool)   # a cell of the input's own was taken
    on_nan = xp.zeros(y.shape, dtype=bool)  # that cell was a NaN: final
    for offset, (ra, rb) in enumerate(plan.shifts):
        v = plan.window(xpad, ra, rb)
        nan = xp.isnan(v)
        take = plan.real(xp, ra, rb) & ~on_nan & (nan | ~taken | (v > best))
        best = xp.where(take, v, best)
        argmax[take] = offset
        taken |= take
        on_nan |= take & nan
    return argmax


def _flat_index(xp, argmax, plan):
    """``idx[n, c, i, j]``: flat position, in a padded block ``(n, C, Hp, Wp)``, of the
    argmax of window ``(i, j)`` (int32 unless the block is huge)."""
    n, C, OH, OW = argmax.shape
    Hp, Wp = plan.Hp, plan.Wp
    itype = numpy.int32 if n * C * Hp * Wp < 2**31 else numpy.int64
    offsets = xp.asarray([ra * Wp + rb for ra, rb in plan.shifts], dtype=itype)
    idx = xp.take(offsets, argmax)  # window offset a*kw + b -> a*dh*Wp + b*dw
    corner = (xp.arange(OH, dtype=itype) * (plan.sh * Wp))[:, None] + xp.arange(OW, dtype=itype) * plan.sw
    idx += corner  # window (i, j) starts at row i*sh, column j*sw
    idx += (xp.arange(n * C, dtype=itype) * (Hp * Wp)).reshape(n, C, 1, 1)
    return idx


def max_pool2d_grad(xp, dy, argmax, input_size, size, stride, padding, out=None, dilation=(1, 1), ceil_mode=False):
    """The multiplexer: ``dX[i*sh + a*dh, j*sw + b*dw] += dy[i, j]`` where ``a*kw + b = argmax[i, j]``.

    Where windows overlap the contributions add up. A scatter-add at the argmax
    positions: ``xp.add.at`` with flat int32 indices, which NumPy 2 runs on a
    fast path (2-3x faster than one masked strided add per window offset;
    CuPy provides ``add.at`` too). Returns ``(N, C, H, W)`` (``out`` if given);
    gradient aimed at padding is dropped.
    """
    if device.on_device(xp) and DETERMINISTIC_GRAD:
        return gpu.max_pool2d_grad(xp, dy, argmax, input_size, size, stride, padding, out=out,
                                      dilation=dilation, ceil_mode=ceil_mode)
    N, C = dy.shape[:2]
    H, W = input_size
    plan = _Plan(input_size, size, stride, padding, dilation, ceil_mode)
    dx = xp.empty((N, C, H, W), dtype=dy.dtype) if out is None else out

    def block(lo, hi):
        if plan.padded:
            d = workspace(xp, "pool_dxpad", (hi - lo, C, plan.Hp, plan.Wp), dy.dtype)
        else:
            d = dx[lo:hi]  # scatter straight into the result
        d.fill(0)  # per block, so the zeroing runs in cache just before the scatter
        idx = _flat_index(xp, argmax[lo:hi], plan)
        _scatter_add(xp, d.reshape(-1), idx.reshape(-1), dy[lo:hi].reshape(-1))
        if plan.padded:
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


def max_pool2d_gather(xp, dx_like, argmax, size, stride, padding, out=None, dilation=(1, 1), ceil_mode=False):
    """``out[i, j] = V[i*sh + a*dh, j*sw + b*dw]`` with ``a*kw + b = argmax[i, j]``, V input-shaped.

    The transpose (adjoint) of :func:`max_pool2d_grad`, used for double
    backward; ``max_pool2d_gather(x, argmax)`` equals the pooled ``y``. A
    ``take`` at the same flat indices.
    """
    if device.on_device(xp):  # one kernel over the window views, nothing uploaded
        return gpu.max_pool2d_gather(xp, dx_like, argmax, size, stride, padding, dilation=dilation)
    N, C, H, W = dx_like.shape
    plan = _Plan((H, W), size, stride, padding, dilation, ceil_mode)
    res = xp.empty(argmax.shape, dtype=dx_like.dtype) if out is None else out

    def block(lo, hi):
        v = xp.ascontiguousarray(plan.pad(xp, dx_like[lo:hi], "pool_gpad"))
        idx = _flat_index(xp, argmax[lo:hi], plan)
        xp.take(v.reshape(-1), idx, out=res[lo:hi])

    parallel_blocks(xp, N, dx_like[:1].size, block)
    return res
