"""Kernels for array modules other than NumPy (CuPy): fewer, bigger kernels.

On a GPU each array operation is one kernel launch and one pass over memory,
so what the NumPy kernels do in cache-sized blocks (many small passes) is
done here as one ``cupy.fuse`` kernel per expression: the elementwise chains
the compiler fused, LRN's window sums over a zero-bordered copy of the
channels (max pooling's, beside its NumPy kernels: :mod:`graphdiff.kernels.pool.gpu`). The kernels return new
arrays from CuPy's memory pool, except variable updates, written in place;
padded copies keep their zero borders in persistent buffers (:func:`bordered`),
so padding is one copy, not a fill plus a copy; buffers kept across steps come
from a pool of their own (:func:`long_lived`), so a step's blocks repeat exactly.

Every function here takes ``xp`` and also runs on NumPy (:func:`kernel` then
calls the plain function); the CuPy stand-in in the test suite runs
``cupy.fuse`` as well, so CI compares these kernels with the NumPy ones.
"""
import contextlib
import threading
import warnings

import numpy

_fused = {}      # (array module, maker, spec...) -> the kernel (see kernel())
_bordered = {}   # (thread, array module, device, tag, shape, dtype, fill) -> a padded buffer whose border is kept
_iota = {}       # (array module, device, n) -> arange(n, uint32)
_pools = {}      # (array module, device) -> the memory pool of long-lived buffers


def on_device(xp):
    """Whether ``xp`` is a GPU array module (the kernels here replace the NumPy ones)."""
    return xp.__name__ != "numpy"


def kernel(xp, make, *spec):
    """``make(xp, *spec)``, a function of arrays, as one kernel: wrapped in ``xp.fuse``
    on CuPy, called as it is on NumPy; made once per array module and ``spec``."""
    key = (xp, make) + tuple((type(v), v) for v in spec)  # float32(2) == float64(2): keep the types apart
    f = _fused.get(key)
    if f is None:
        f = make(xp, *spec)
        if hasattr(xp, "fuse"):  # CuPy (a NumPy-like module without it runs the function as it is)
            f = xp.fuse(kernel_name=_kernel_name(make))(f)
        _fused[key] = f
    return f


def _kernel_name(make):
    """The CUDA name of the kernels ``make`` builds (profilers show it)."""
    return f"graphdiff_{make.__name__.strip('_')}"


def _device_id(xp):
    return getattr(getattr(xp, "cuda", None), "get_device_id", lambda: None)()


def long_lived(xp):
    """A context in which device allocations come from a memory pool of their own:
    buffers kept across steps (variables, scratch, bordered copies) then never sit
    between the blocks a step frees and takes again, so the default pool's blocks
    serve the second step exactly as the first (no new device allocation after it).
    Does nothing on NumPy."""
    cuda = getattr(xp, "cuda", None)
    if not on_device(xp) or not hasattr(cuda, "using_allocator"):
        return contextlib.nullcontext()
    key = (xp, _device_id(xp))
    pool = _pools.get(key)
    if pool is None:
        pool = _pools[key] = xp.cuda.MemoryPool()
    return xp.cuda.using_allocator(pool.malloc)


def bordered(xp, tag, shape, dtype, border, fill=0):
    """A buffer of ``shape`` whose region outside ``border`` (a tuple of slices: the
    interior) holds ``fill``, set once when the buffer is made; callers write the
    interior only. Returns ``(buffer, interior view)``. One buffer per thread, tag,
    shape and interior (like :func:`graphdiff.kernels.parallel.workspace`: programs
    may run on several threads at once; two interiors in one shape, e.g. a 5x5 input
    padded by 1 and a 3x3 one by 2, must not share a buffer: each would leave values
    in the other's border)."""
    interior = tuple((k.start, k.stop, k.step) if isinstance(k, slice) else k for k in border)
    key = (threading.get_ident(), xp, _device_id(xp), tag, tuple(shape), numpy.dtype(dtype).str, fill, interior)
    buf = _bordered.get(key)
    if buf is None:
        with long_lived(xp):
            buf = _bordered[key] = xp.full(tuple(shape), fill, dtype=dtype)
    return buf, buf[border]


def clear():
    """Forget the persistent buffers and compiled kernels (tests switch array modules)."""
    _fused.clear()
    _bordered.clear()
    _iota.clear()
    _pools.clear()
    _into_works.clear()


def pad2d(xp, x, padding, tag, fill=0):
    """``x`` padded by ``(ph, pw)`` on both sides, or ``((top, bottom), (left, right))``,
    with ``fill``: one copy into a persistent bordered buffer."""
    (pt, pb), (pl, pr) = ((p, p) if not isinstance(p, (tuple, list)) else p for p in padding)
    N, C, H, W = x.shape
    buf, inner = bordered(xp, tag, (N, C, H + pt + pb, W + pl + pr), x.dtype,
                          (slice(None), slice(None), slice(pt, pt + H), slice(pl, pl + W)), fill)
    inner[...] = x
    return buf


# ------------------------------------------------------------------ GEMM
def gemm(xp, a, b, out=None):
    """``a @ b`` without the copies CuPy's ``matmul`` makes: a batched product whose
    operands are not C-contiguous (cuBLAS's strided-batched GEMM takes only those)
    runs as one 2-D GEMM per batch entry, which cuBLAS takes transposed in place
    (a C- or F-contiguous matrix); a 2-D operand that is neither is copied once here."""
    batched = a.ndim > 2 or b.ndim > 2
    c_ok = a.flags.c_contiguous and b.flags.c_contiguous and (out is None or out.flags.c_contiguous)
    if not batched or c_ok:
        if not batched:
            a, b = _blas_ready(xp, a), _blas_ready(xp, b)
        if out is not None and not out.flags.c_contiguous:
            out[...] = xp.matmul(a, b)
            return out
        return xp.matmul(a, b, out=out)
    shape = numpy.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if out is None:
        out = xp.empty(shape + (a.shape[-2], b.shape[-1]), dtype=numpy.result_type(a.dtype, b.dtype))
    a = xp.broadcast_to(a, shape + a.shape[-2:])
    b = xp.broadcast_to(b, shape + b.shape[-2:])
    for index in numpy.ndindex(*shape):
        o = out[index]
        if o.flags.c_contiguous:
            xp.matmul(_blas_ready(xp, a[index]), _blas_ready(xp, b[index]), out=o)
        else:
            o[...] = xp.matmul(_blas_ready(xp, a[index]), _blas_ready(xp, b[index]))
    return out


def _blas_ready(xp, m):
    """A 2-D operand cuBLAS reads in place (C- or F-contiguous), copied only if neither."""
    if m.ndim != 2 or m.flags.c_contiguous or m.flags.f_contiguous:
        return m
    return xp.ascontiguousarray(m)


# ------------------------------------------------------------------ elementwise programs
def elementwise_program(xp, program, extra_outputs, arrays, apply, value_type, out=None):
    """A :class:`graphdiff.fusion.FusedElementwise` program as one kernel: the steps
    ``(fn, args)`` evaluated by ``apply(xp, fn, values, value_type)`` (``value_type``
    the scalar type of the result, for typed constants). Returns the result, or a
    tuple (result, extra outputs...). Where every output has a buffer in ``out`` (a
    variable's own buffer: an in-place update such as SGD's ``v`` and ``w``), the
    kernel writes them there (``o[...] = value`` inside ``cupy.fuse``; elementwise,
    so an output that is also an input is safe), so variables keep their memory
    from step to step; otherwise its results are new arrays."""
    extra_outputs = tuple(extra_outputs)
    outs = out if isinstance(out, tuple) else (out,)
    if all(o is not None for o in outs) and _into_works.get(xp, True):
        try:
            kernel(xp, _program_into, program, extra_outputs, apply, value_type)(*arrays, *outs)
            return out
        except (TypeError, ValueError, NotImplementedError) as exc:  # a CuPy whose fusion lacks in-place outputs
            # Off for this array module from now on (each step would fail again), said
            # once with the cause: later steps copy each result into its buffer.
            _into_works[xp] = False
            warnings.warn(f"graphdiff: in-place fused updates are off for {xp.__name__} in this process "
                          f"(each update is now a new array plus a copy): the in-place kernel "
                          f"{_kernel_name(_program_into)} failed with {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)
    results = kernel(xp, _program, program, extra_outputs, apply, value_type)(*arrays)
    if all(o is not None for o in outs):
        for o, r in zip(outs, results if isinstance(results, tuple) else (results,)):
            o[...] = r
        return out
    return results


_into_works = {}


def _steps(xp, program, apply, value_type, ins):
    temps = []
    for name, args in program:
        temps.append(apply(xp, name, [ins[k] if kind == "in" else temps[k] for kind, k in args], value_type))
    return temps


def _program(xp, program, extra_outputs, apply, value_type):
    def elementwise(*ins):
        temps = _steps(xp, program, apply, value_type, ins)
        if extra_outputs:
            return (temps[-1],) + tuple(temps[j] for j in extra_outputs)
        return temps[-1]
    return elementwise


def _program_into(xp, program, extra_outputs, apply, value_type):
    count = 1 + len(extra_outputs)

    def elementwise_into(*params):
        ins, outs = params[:-count], params[-count:]
        temps = _steps(xp, program, apply, value_type, ins)
        for o, j in zip(outs, (len(program) - 1,) + extra_outputs):
            o[...] = temps[j]
    return elementwise_into


# ------------------------------------------------------------------ LRN across channels
def _channel_window_views(xp, tag, values, size, transpose):
    """Views ``P[:, d:d + C]``, ``d < size``, of ``values`` copied between zero channel
    borders, so that ``sum_d views[d][:, c] = sum_{c - lo <= j <= c + hi} values[:, j]``."""
    lo, hi = size // 2, (size - 1) // 2
    if transpose:
        lo, hi = hi, lo
    N, C = values.shape[:2]  # (N, C, ...): any trailing dimensions (3-D, 4-D, 5-D inputs)
    buf, inner = bordered(xp, tag, (N, C + lo + hi) + values.shape[2:], values.dtype,
                          (slice(None), slice(lo, lo + C)))
    return buf, inner, [buf[:, d:d + C] for d in range(size)]


def lrn_scale(xp, x, size, alpha, k):
    """``k + alpha * sum_{|j - c| <= size//2} x_j^2``: the squares into a zero-bordered
    copy (one pass), then the window sum and the affine map in one kernel."""
    buf, inner, views = _channel_window_views(xp, "device_lrn_squares", x, size, False)
    xp.multiply(x, x, out=inner)
    t = x.dtype.type
    return kernel(xp, _lrn_scale, size, t(alpha), t(k))(*views)


def _lrn_scale(xp, size, alpha, k):
    def lrn_scale(*views):
        s = views[0]
        for v in views[1:]:
            s = s + v
        return k + alpha * s
    return lrn_scale


def lrn_normalize(xp, x, scale, beta):
    """``y = x * scale^-beta`` in one kernel."""
    return kernel(xp, _lrn_normalize, x.dtype.type(-beta))(x, scale)


def _lrn_normalize(xp, minus_beta):
    def lrn_normalize(x, scale):
        return x * xp.power(scale, minus_beta)
    return lrn_normalize


def lrn_backward(xp, x, y, scale, dy, size, alpha, beta):
    """``dx = dy * scale^-beta - 2 alpha beta x * S^T(dy * y / scale)``: ``dy * y / scale``
    into a zero-bordered copy (two passes), then the mirrored window sum and the rest
    in one kernel."""
    buf, inner, views = _channel_window_views(xp, "device_lrn_t", x, size, True)
    xp.multiply(dy, y, out=inner)
    xp.divide(inner, scale, out=inner)
    t = x.dtype.type
    return kernel(xp, _lrn_backward, size, t(-beta), t(2.0 * alpha * beta))(dy, scale, x, *views)


def _lrn_backward(xp, size, minus_beta, c):
    def lrn_backward(dy, scale, x, *views):
        s = views[0]
        for v in views[1:]:
            s = s + v
        return dy * xp.power(scale, minus_beta) - c * x * s
    return lrn_backward


# ------------------------------------------------------------------ ReLU's switch
def relu_grad(xp, y, g):
    """``where(y > 0, g, 0)`` in one kernel (a select: an infinite ``g`` stays out where closed)."""
    return kernel(xp, _relu_grad, g.dtype.type)(y, g)


def _relu_grad(xp, value_type):
    zero = value_type(0)

    def relu_grad(y, g):
        return xp.where(y > zero, g, zero)
    return relu_grad


# ------------------------------------------------------------------ convolution epilogue
def bias_relu(xp, src, bias, relu):
    """``src + bias`` (then ``max(., 0)``) in one kernel; a new C-contiguous array."""
    return kernel(xp, _bias_relu, bool(relu), src.dtype.type)(src, bias)


def _bias_relu(xp, relu, value_type):
    zero = value_type(0)

    def bias_relu(src, bias):
        y = src + bias
        return xp.maximum(y, zero) if relu else y
    return bias_relu


# ------------------------------------------------------------------ labels
def label_guard(xp, labels, classes, dtype):
    """Integer ``labels`` checked on the device, without the host waiting for it:
    ``(safe, penalty)`` with ``safe = where(0 <= labels < classes, labels, 0)`` (an
    index that cannot leave the row) and ``penalty`` 0 there, NaN elsewhere (added
    to the per-example losses, so one label out of range makes the mean loss NaN).
    One kernel."""
    return kernel(xp, _label_guard, labels.dtype.type(classes), numpy.dtype(dtype).type)(labels)


def _label_guard(xp, classes, value_type):
    zero_index, zero, nan = classes.dtype.type(0), value_type(0), value_type(numpy.nan)

    def label_guard(labels):
        ok = (labels >= zero_index) & (labels < classes)
        return xp.where(ok, labels, zero_index), xp.where(ok, zero, nan)
    return label_guard


# ------------------------------------------------------------------ dropout
def iota(xp, n):
    """``arange(n)`` as uint32, kept (a counter for the hash below)."""
    key = (xp, _device_id(xp), n)
    a = _iota.get(key)
    if a is None:
        with long_lived(xp):
            a = _iota[key] = xp.arange(n, dtype=numpy.uint32)
    return a


def dropout_mask(xp, shape, dtype, rate, keys):
    """Inverted dropout's mask, ``1/(1-rate)`` with probability ``1 - rate`` else 0, from
    a counter-based hash of each element's index and two 32-bit ``keys`` (drawn on
    the host from the program's generator, so a checkpoint's generator state replays
    the same masks): drawn where the mask is used, nothing uploaded (NumPy programs
    keep drawing theirs with the generator; this function gives the same bits on
    both array modules). The hash is murmur3's 32-bit finalizer, applied twice
    with a key mixed in before each; the top 24 bits are compared with ``rate * 2^24``."""
    n = int(numpy.prod(shape, dtype=numpy.int64))
    t = numpy.dtype(dtype).type
    threshold = numpy.uint32(min(1 << 24, int(round(rate * (1 << 24)))))
    f = kernel(xp, _dropout_mask, t(1.0 / (1.0 - rate)), t(0))
    return f(iota(xp, n), numpy.uint32(keys[0]), numpy.uint32(keys[1]), threshold).reshape(shape)


def _dropout_mask(xp, keep_value, zero):
    c1, c2, golden = numpy.uint32(0x85EBCA6B), numpy.uint32(0xC2B2AE35), numpy.uint32(0x9E3779B9)
    s13, s16, s8 = numpy.uint32(13), numpy.uint32(16), numpy.uint32(8)

    def fmix(h):
        h = h ^ (h >> s16)
        h = h * c1
        h = h ^ (h >> s13)
        h = h * c2
        return h ^ (h >> s16)

    def dropout_mask(index, key0, key1, threshold):
        h = fmix(index * golden + key0)
        h = fmix(h ^ key1)
        return xp.where((h >> s8) >= threshold, keep_value, zero)
    return dropout_mask
