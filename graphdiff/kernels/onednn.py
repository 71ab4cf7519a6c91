"""oneDNN convolution primitives through its C API (``ctypes``), float32, NCHW.

An optional CPU kernel library (``pip install -e '.[onednn]'``: the
``onednn-cpu-gomp`` wheel, oneDNN 3.2 built with GNU OpenMP, ``libdnnl.so.3``),
as Chainer used it through iDeep. No compiler is needed: the library is loaded
with ``ctypes`` and driven through a dozen C functions. :func:`available` says
whether it loaded (and :func:`load_error` why not); nothing else in graphdiff
needs it.

:class:`Convolution` holds the primitives of one convolution geometry (input
and weight shapes, stride, padding, groups, bias, ReLU post-op): forward,
backward-data and backward-weights, each created on first use. A primitive
is created for the layouts oneDNN prefers ("any": blocked, e.g. ``nChw16c``
and ``OIhw16i16o`` on AVX-512; measured 1.3-2x faster here than the GEMM-based
implementation it picks for plain NCHW); each operand in another layout than
graphdiff's plain NCHW / OIHW is reordered into (or, for outputs, out of) a
scratch buffer per role (:func:`parallel.workspace`, so all convolutions of a
thread share them). A compiled program keeps one object per instruction and
shapes (see :mod:`graphdiff.kernels.choice`): primitives, reorders and their
buffers are built once; weights change every step, so they are reordered on
every call, as PyTorch does.

Threads: oneDNN runs each primitive on OpenMP threads of the calling thread
(GNU OpenMP, the system's ``libgomp.so.1``). GNU OpenMP reads its settings once,
when it is loaded, so :func:`_load` sets two of them in ``os.environ`` just
before loading the library (only those the user has not set; the environment
is restored right after): ``OMP_NUM_THREADS`` to graphdiff's kernel threads
(``parallel.NUM_THREADS``, the cores we may use) and ``OMP_WAIT_POLICY=PASSIVE``,
so that idle OpenMP workers sleep at once instead of spinning and taking the
cores from the NumPy passes that run between convolutions (the same reason the
BLAS runs on one thread inside a program, see :func:`parallel.blas_on_one_thread`).
graphdiff's own pool threads block while a primitive runs, so the two never
compete.
"""

import ctypes
import os
import sys
import threading

import numpy

from . import parallel
from .conv import pads as conv_pads

# ---------------------------------------------------------------- C API constants (dnnl_types.h, oneDNN 3.2)
_SUCCESS = 0
_F32 = 3                       # dnnl_f32
_TAG_ANY, _TAG_A, _TAG_ABCD, _TAG_ABCDE = 1, 2, 5, 6   # dnnl_format_tag_any, dnnl_a, dnnl_abcd, dnnl_abcde
_CPU = 1                       # dnnl_cpu
_STREAM_DEFAULT = 1            # dnnl_stream_default_flags (in order)
_FORWARD_TRAINING = 64
_CONV_DIRECT = 0x1
_ELTWISE_RELU = 0x20
_QUERY_IMPL_INFO_STR = 8       # dnnl_query_impl_info_str
_QUERY_SRC_MD, _QUERY_DIFF_SRC_MD, _QUERY_WEIGHTS_MD, _QUERY_DIFF_WEIGHTS_MD = 129, 130, 131, 132
_QUERY_DST_MD, _QUERY_DIFF_DST_MD = 133, 134
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_BIAS = 1, 17, 33, 41
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 129, 145, 161
_ARG_FROM, _ARG_TO = 1, 17
_MAX_NDIMS = 12

_ISA_NAMES = {0x0: "default", 0x1: "sse41", 0x3: "avx", 0x7: "avx2", 0xf: "avx2_vnni", 0x1f: "avx2_vnni_2",
              0x27: "avx512_core", 0x67: "avx512_core_vnni", 0xe7: "avx512_core_bf16",
              0x1ef: "avx512_core_fp16", 0xfef: "avx512_core_amx", 0x1fef: "avx512_core_amx_fp16"}

INSTALL = "pip install -e '.[onednn]' (the onednn-cpu-gomp wheel, oneDNN 3.2)"
ALIGN = 64  # bytes; oneDNN's kernels prefer cache-line-aligned buffers

_Dims = ctypes.c_int64 * _MAX_NDIMS
_p = ctypes.c_void_p


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _p)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class OneDNNError(RuntimeError):
    """A oneDNN call failed (the status code and the call are in the message)."""


_lib = None
_error = None
_engine = None
_stream_local = threading.local()
_load_lock = threading.Lock()


def _library_paths():
    """Where ``libdnnl.so.3`` may be: ``GRAPHDIFF_DNNL_LIBRARY``, the files of the
    ``onednn-cpu-gomp`` distribution, ``<prefix>/lib``, then the loader's search path."""
    if os.environ.get("GRAPHDIFF_DNNL_LIBRARY"):
        yield os.environ["GRAPHDIFF_DNNL_LIBRARY"]
        return
    try:
        from importlib import metadata

        for f in metadata.files("onednn-cpu-gomp") or ():
            if f.name == "libdnnl.so.3":
                yield str(f.locate())
    except Exception:  # noqa: BLE001 - not installed as a distribution
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        yield os.path.join(prefix, "lib", "libdnnl.so.3")
    yield "libdnnl.so.3"


def _openmp_environment():
    """The GNU OpenMP settings set just before loading (see the module docstring)."""
    return {"OMP_NUM_THREADS": str(parallel.NUM_THREADS), "OMP_WAIT_POLICY": "PASSIVE"}


def _load():
    """Load the library once; return it, or None (reason in :func:`load_error`)."""
    global _lib, _error, _engine
    if _lib is not None or _error is not None:
        return _lib
    with _load_lock:
        if _lib is not None or _error is not None:
            return _lib
        if os.environ.get("GRAPHDIFF_ONEDNN", "").lower() in ("0", "off", "no", "false"):
            _error = "disabled by GRAPHDIFF_ONEDNN=0"
            return None
        set_here = {k: v for k, v in _openmp_environment().items() if k not in os.environ}
        os.environ.update(set_here)
        reasons = []
        try:
            for path in _library_paths():
                if os.sep in path and not os.path.exists(path):
                    continue
                try:
                    lib = ctypes.CDLL(path)
                    break
                except OSError as exc:
                    reasons.append(f"{path}: {exc}")
            else:
                hint = (" (it needs GNU OpenMP: apt-get install libgomp1)"
                        if any("libgomp" in r for r in reasons) else "")
                _error = (f"libdnnl.so.3 could not be loaded ({'; '.join(reasons) or 'no candidate path exists'})"
                          f"{hint}; {INSTALL}")
                return None
        finally:
            for k in set_here:
                os.environ.pop(k, None)
        try:
            _declare(lib)
            version = lib.dnnl_version().contents
            if version.major != 3:
                raise OneDNNError(f"oneDNN {version.major}.{version.minor} found, version 3 needed")
            engine = _p()
            _check(lib.dnnl_engine_create(ctypes.byref(engine), _CPU, 0), "dnnl_engine_create")
        except (AttributeError, OneDNNError) as exc:
            _error = f"libdnnl.so.3 loaded but unusable: {exc}"
            return None
        _engine, _lib = engine, lib
        return _lib


def _declare(lib):
    """Argument and result types of the functions used (pointers must not be truncated to int)."""
    i, s = ctypes.c_int, ctypes.c_size_t
    sigs = {
        "dnnl_engine_create": (i, [_p, i, s]),
        "dnnl_stream_create": (i, [_p, _p, ctypes.c_uint]),
        "dnnl_stream_wait": (i, [_p]),
        "dnnl_memory_desc_create_with_tag": (i, [_p, i, _Dims, i, i]),
        "dnnl_memory_desc_destroy": (i, [_p]),
        "dnnl_memory_desc_equal": (i, [_p, _p]),
        "dnnl_memory_desc_get_size": (s, [_p]),
        "dnnl_memory_create": (i, [_p, _p, _p, _p]),
        "dnnl_memory_set_data_handle": (i, [_p, _p]),
        "dnnl_memory_destroy": (i, [_p]),
        "dnnl_primitive_attr_create": (i, [_p]),
        "dnnl_primitive_attr_destroy": (i, [_p]),
        "dnnl_primitive_attr_set_post_ops": (i, [_p, _p]),
        "dnnl_post_ops_create": (i, [_p]),
        "dnnl_post_ops_destroy": (i, [_p]),
        "dnnl_post_ops_append_eltwise": (i, [_p, i, ctypes.c_float, ctypes.c_float]),
        "dnnl_convolution_forward_primitive_desc_create":
            (i, [_p, _p, i, i, _p, _p, _p, _p, _Dims, _Dims, _Dims, _Dims, _p]),
        "dnnl_convolution_backward_data_primitive_desc_create":
            (i, [_p, _p, i, _p, _p, _p, _Dims, _Dims, _Dims, _Dims, _p, _p]),
        "dnnl_convolution_backward_weights_primitive_desc_create":
            (i, [_p, _p, i, _p, _p, _p, _p, _Dims, _Dims, _Dims, _Dims, _p, _p]),
        "dnnl_reorder_primitive_desc_create": (i, [_p, _p, _p, _p, _p, _p]),
        "dnnl_primitive_desc_query": (i, [_p, i, i, _p]),
        "dnnl_primitive_desc_query_md": (_p, [_p, i, i]),
        "dnnl_primitive_desc_destroy": (i, [_p]),
        "dnnl_primitive_create": (i, [_p, _p]),
        "dnnl_primitive_execute": (i, [_p, _p, i, ctypes.POINTER(_ExecArg)]),
        "dnnl_primitive_destroy": (i, [_p]),
        "dnnl_get_effective_cpu_isa": (i, []),
        "dnnl_version": (ctypes.POINTER(_Version), []),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def _check(status, what):
    if status != _SUCCESS:
        raise OneDNNError(f"{what} failed with status {status}")


def available():
    """Whether oneDNN loaded (see :func:`load_error` when not)."""
    return _load() is not None


def load_error():
    """Why oneDNN is not available (None when it is)."""
    _load()
    return _error


def info():
    """``"oneDNN 3.2.0 (avx512_core_bf16)"``, or None where it did not load."""
    lib = _load()
    if lib is None:
        return None
    v = lib.dnnl_version().contents
    isa = lib.dnnl_get_effective_cpu_isa()
    return f"oneDNN {v.major}.{v.minor}.{v.patch} ({_ISA_NAMES.get(isa, hex(isa))})"


def _stream():
    """One in-order stream per calling thread (a stream is not shared between threads)."""
    stream = getattr(_stream_local, "stream", None)
    if stream is None:
        stream = _p()
        _check(_lib.dnnl_stream_create(ctypes.byref(stream), _engine, _STREAM_DEFAULT), "dnnl_stream_create")
        _stream_local.stream = stream
    return stream


def _dims(values):
    d = _Dims()
    for k, v in enumerate(values):
        d[k] = int(v)
    return d


class _Desc:
    """An owned memory descriptor (destroyed with the object)."""

    def __init__(self, shape, tag):
        self.handle = _p()
        _check(_lib.dnnl_memory_desc_create_with_tag(ctypes.byref(self.handle), len(shape), _dims(shape), _F32, tag),
               f"dnnl_memory_desc_create_with_tag{tuple(shape)}")

    def __del__(self):
        if _lib is not None and self.handle:
            _lib.dnnl_memory_desc_destroy(self.handle)
            self.handle = None


def _plain_tag(ndim):
    return {1: _TAG_A, 4: _TAG_ABCD, 5: _TAG_ABCDE}[ndim]


class _Operand:
    """One argument of a primitive: a memory object over the caller's array when
    the primitive takes the plain layout, else over a scratch buffer in the
    primitive's layout plus the reorder between the two (built once)."""

    def __init__(self, pd, query, plain_shape, direction, tag):
        self.shape, self.direction, self.tag = tuple(plain_shape), direction, tag
        self.pd, self.query = pd, query
        self.plain = _Desc(self.shape, _plain_tag(len(self.shape)))
        want = _lib.dnnl_primitive_desc_query_md(pd, query, 0)
        self.memory = _memory(want)
        self.reorder = self.user_memory = None
        if not _lib.dnnl_memory_desc_equal(want, self.plain.handle):
            self.nbytes = _lib.dnnl_memory_desc_get_size(want)
            self.user_memory = _memory(self.plain.handle)
            src, dst = (self.plain.handle, want) if direction == "in" else (want, self.plain.handle)
            self.reorder = _Primitive(_reorder_pd(src, dst))

    def bind(self, array, reordered=False):
        """Point the operand at ``array`` (plain layout, C-contiguous); an input in
        another layout is reordered now into a scratch buffer (shared by every
        convolution of this thread with this role: calls run one at a time),
        unless ``reordered``: the buffer already holds ``array`` in this layout
        (the previous primitive of the same convolution reordered it)."""
        if array.size != _size(self.shape) or not array.flags.c_contiguous:
            raise ValueError(f"oneDNN operand: expected a contiguous array of shape {self.shape}, got {array.shape}")
        if self.reorder is None:
            _lib.dnnl_memory_set_data_handle(self.memory, array.ctypes.data)
            return
        raw = parallel.workspace(numpy, self.tag, (self.nbytes + ALIGN,), numpy.uint8)
        _lib.dnnl_memory_set_data_handle(self.memory, raw.ctypes.data + (-raw.ctypes.data) % ALIGN)
        _lib.dnnl_memory_set_data_handle(self.user_memory, array.ctypes.data)
        if self.direction == "in" and not reordered:
            self.reorder.execute({_ARG_FROM: self.user_memory, _ARG_TO: self.memory})

    def finish(self):
        """For an output in the primitive's own layout: reorder it back to the caller's array."""
        if self.reorder is not None and self.direction == "out":
            self.reorder.execute({_ARG_FROM: self.memory, _ARG_TO: self.user_memory})

    def __del__(self):
        if _lib is not None:
            for mem in (self.memory, self.user_memory):
                if mem:
                    _lib.dnnl_memory_destroy(mem)
            self.memory = self.user_memory = None


def _size(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _memory(desc):
    mem = _p()
    _check(_lib.dnnl_memory_create(ctypes.byref(mem), desc, _engine, None), "dnnl_memory_create")
    return mem


def _reorder_pd(src, dst):
    pd = _p()
    _check(_lib.dnnl_reorder_primitive_desc_create(ctypes.byref(pd), src, _engine, dst, _engine, None),
           "dnnl_reorder_primitive_desc_create")
    return pd


class _Primitive:
    """A primitive made from ``pd`` (which it then owns)."""

    def __init__(self, pd):
        self.pd = pd
        self.handle = _p()
        _check(_lib.dnnl_primitive_create(ctypes.byref(self.handle), pd), "dnnl_primitive_create")

    def implementation(self):
        name = ctypes.c_char_p()
        _lib.dnnl_primitive_desc_query(self.pd, _QUERY_IMPL_INFO_STR, 0, ctypes.byref(name))
        return (name.value or b"?").decode()

    def execute(self, args):
        arr = (_ExecArg * len(args))(*[_ExecArg(k, v) for k, v in args.items()])
        stream = _stream()
        _check(_lib.dnnl_primitive_execute(self.handle, stream, len(args), arr), "dnnl_primitive_execute")
        _check(_lib.dnnl_stream_wait(stream), "dnnl_stream_wait")

    def __del__(self):
        if _lib is not None:
            if self.handle:
                _lib.dnnl_primitive_destroy(self.handle)
            if self.pd:
                _lib.dnnl_primitive_desc_destroy(self.pd)
            self.handle = self.pd = None


def _finite(*arrays):
    """Whether the sums of ``arrays`` (None skipped) are finite: false for any
    NaN or infinity (and, harmlessly, for a sum that overflows)."""
    with numpy.errstate(over="ignore", invalid="ignore"):
        return all(numpy.isfinite(numpy.sum(a, dtype=numpy.float32)) for a in arrays if a is not None)


class _Step:
    """A primitive and its operands, ``(exec arg, query, plain shape, "in"/"out", scratch tag)``."""

    def __init__(self, pd, operands):
        self.primitive = _Primitive(pd)
        self.operands = [(arg, _Operand(pd, query, shape, direction, tag))
                         for arg, query, shape, direction, tag in operands]

    def run(self, arrays, extra=None, reordered=()):
        """Execute on ``arrays`` (one per operand, plain layout); ``extra``: more exec
        args; ``reordered``: the exec args whose scratch buffer already holds the array."""
        args = dict(extra or {})
        for (arg, operand), array in zip(self.operands, arrays):
            operand.bind(array, arg in reordered)
            args[arg] = operand.memory
        self.primitive.execute(args)
        for _, operand in self.operands:
            operand.finish()


class Convolution:
    """oneDNN's primitives for one convolution geometry, float32, NCHW::

        y[n, o] = b[o] + sum_{c in group(o), a, b} W[o, c, a, b] Xpad[n, c, i*sh + a, j*sw + b]

    (graphdiff's ``conv2d``; with dilation ``d`` the taps are ``Xpad[i*sh + a*dh, ...]``,
    oneDNN's ``dilates = d - 1``; ``padding`` is ``(ph, pw)`` or ``((top, bottom),
    (left, right))``: oneDNN's ``padding_l`` is the top/left one, its ``padding_r``
    what the floor in the output size leaves of the bottom/right one, so strides
    that skip the last rows work as in NumPy.)
    :meth:`forward` (optionally with the bias and a ReLU post-op),
    :meth:`backward_data` (``dX``) and :meth:`backward_weights` (``dW``) each build
    their primitive (and the reorders of its operands) on first use and keep it;
    :meth:`backward` runs both and reorders ``dy`` once.
    """

    def __init__(self, x_shape, w_shape, stride, padding, groups, bias=False, relu=False, dilation=(1, 1)):
        if _load() is None:
            raise OneDNNError(f"oneDNN is not available: {_error}")
        N, C, H, W = x_shape
        O, Cg, kh, kw = w_shape
        (sh, sw), ((pt, pb), (pl, pr)), g, (dh, dw) = stride, conv_pads(padding), groups, dilation
        keh, kew = (kh - 1) * dh + 1, (kw - 1) * dw + 1  # the dilated kernel
        OH, OW = (H + pt + pb - keh) // sh + 1, (W + pl + pr - kew) // sw + 1
        self.x_shape, self.w_shape, self.y_shape = tuple(x_shape), tuple(w_shape), (N, O, OH, OW)
        self.bias, self.relu = bias, relu
        # oneDNN's grouped weights are (g, O/g, C/g, kh, kw): graphdiff's (O, C/g, kh, kw) in memory.
        self.wg_shape = self.w_shape if g == 1 else (g, O // g, Cg, kh, kw)
        self.geometry = (_dims(stride), _dims((dh - 1, dw - 1)), _dims((pt, pl)),
                         _dims(((OH - 1) * sh + keh - H - pt, (OW - 1) * sw + kew - W - pl)))
        self._fwd = self._fwd_plain = self._bwd_data = self._bwd_weights = None  # built on first use
        self._fwd_pd_hint = None

    def _any(self, shape):
        return _Desc(shape, _TAG_ANY)

    def _forward_pd(self, relu):
        attr = _p()
        post_ops = _p()
        _check(_lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "dnnl_primitive_attr_create")
        try:
            if relu:
                _check(_lib.dnnl_post_ops_create(ctypes.byref(post_ops)), "dnnl_post_ops_create")
                _check(_lib.dnnl_post_ops_append_eltwise(post_ops, _ELTWISE_RELU, 0.0, 0.0), "append_eltwise")
                _check(_lib.dnnl_primitive_attr_set_post_ops(attr, post_ops), "attr_set_post_ops")
            src, wts, dst = self._any(self.x_shape), self._any(self.wg_shape), self._any(self.y_shape)
            bias = _Desc((self.w_shape[0],), _TAG_A) if self.bias else None
            pd = _p()
            _check(_lib.dnnl_convolution_forward_primitive_desc_create(
                ctypes.byref(pd), _engine, _FORWARD_TRAINING, _CONV_DIRECT, src.handle, wts.handle,
                bias.handle if bias else None, dst.handle, *self.geometry, attr), "convolution forward")
            return pd
        finally:
            if post_ops:
                _lib.dnnl_post_ops_destroy(post_ops)
            _lib.dnnl_primitive_attr_destroy(attr)

    def _hint(self):
        """The forward primitive descriptor the backward ones are built against."""
        if self._fwd_pd_hint is None:
            self._fwd_pd_hint = _Primitive(self._forward_pd(False))
        return self._fwd_pd_hint.pd

    def _forward_step(self, relu):
        return _Step(self._forward_pd(relu), [
            (_ARG_SRC, _QUERY_SRC_MD, self.x_shape, "in", "onednn_x"),
            (_ARG_WEIGHTS, _QUERY_WEIGHTS_MD, self.wg_shape, "in", "onednn_w"),
            (_ARG_DST, _QUERY_DST_MD, self.y_shape, "out", "onednn_y")])

    def forward(self, x, w, b=None, out=None):
        """``conv2d(x, w, b)`` (``max(., 0)`` when built with ``relu``) into ``out`` (else a new array).

        oneDNN's ReLU post-op turns NaN into 0, where ``relu`` (``maximum(x, 0)``)
        keeps it: a diverged run must not look healthy. A NaN or infinity in the
        operands (their sums are not finite: one cheap pass over ``x``) takes the
        convolution without the post-op, then NumPy's ``maximum``."""
        x, w = _c32(x), _c32(w)
        relu_post_op = self.relu and _finite(x, w, b)
        if relu_post_op or not self.relu:
            if self._fwd is None:
                self._fwd = self._forward_step(self.relu)
            step = self._fwd
        else:
            if self._fwd_plain is None:
                self._fwd_plain = self._forward_step(False)
            step = self._fwd_plain
        y = numpy.empty(self.y_shape, numpy.float32) if out is None else out
        bias = None
        if self.bias:
            bias = {_ARG_BIAS: self._bias_memory()}
            _lib.dnnl_memory_set_data_handle(bias[_ARG_BIAS], _c32(b).ctypes.data)
        step.run([x, w, y], bias)
        if self.relu and not relu_post_op:
            numpy.maximum(y, numpy.float32(0), out=y)
        return y

    def _bias_memory(self):
        mem = self.__dict__.get("_bias_mem")
        if mem is None:
            self._bias_desc = _Desc((self.w_shape[0],), _TAG_A)
            mem = self._bias_mem = _memory(self._bias_desc.handle)
        return mem

    def backward_data(self, dy, w, out=None):
        """``dX`` of the convolution given ``dy`` (rows no window covered get zero)."""
        dx = numpy.empty(self.x_shape, numpy.float32) if out is None else out
        self._backward_data_step().run([_c32(dy), _c32(w), dx])
        return dx

    def backward(self, dy, w, x, out=(None, None)):
        """``(dX, dW)``: :meth:`backward_data` then :meth:`backward_weights`, with ``dy``
        reordered once where both primitives take it in the same layout (the
        backward-data step leaves it in the ``onednn_y`` scratch buffer)."""
        dx = numpy.empty(self.x_shape, numpy.float32) if out[0] is None else out[0]
        dw = numpy.empty(self.w_shape, numpy.float32) if out[1] is None else out[1]
        dy = _c32(dy)
        data, weights = self._backward_data_step(), self._backward_weights_step()
        self.__dict__.setdefault("_share_dy", _same_layout(data.operands[0][1], weights.operands[1][1]))
        data.run([dy, _c32(w), dx])
        weights.run([_c32(x), dy, dw], reordered=(_ARG_DIFF_DST,) if self._share_dy else ())
        return dx, dw

    def _backward_data_step(self):
        if self._bwd_data is None:
            pd = _p()
            dsrc, wts, ddst = self._any(self.x_shape), self._any(self.wg_shape), self._any(self.y_shape)
            _check(_lib.dnnl_convolution_backward_data_primitive_desc_create(
                ctypes.byref(pd), _engine, _CONV_DIRECT, dsrc.handle, wts.handle, ddst.handle, *self.geometry,
                self._hint(), None), "convolution backward data")
            self._bwd_data = _Step(pd, [
                (_ARG_DIFF_DST, _QUERY_DIFF_DST_MD, self.y_shape, "in", "onednn_y"),
                (_ARG_WEIGHTS, _QUERY_WEIGHTS_MD, self.wg_shape, "in", "onednn_w"),
                (_ARG_DIFF_SRC, _QUERY_DIFF_SRC_MD, self.x_shape, "out", "onednn_x")])
        return self._bwd_data

    def backward_weights(self, x, dy, out=None):
        """``dW`` of the convolution, ``(O, C/g, kh, kw)``, summed over the batch."""
        dw = numpy.empty(self.w_shape, numpy.float32) if out is None else out
        self._backward_weights_step().run([_c32(x), _c32(dy), dw])
        return dw

    def _backward_weights_step(self):
        if self._bwd_weights is None:
            pd = _p()
            src, dwts, ddst = self._any(self.x_shape), self._any(self.wg_shape), self._any(self.y_shape)
            _check(_lib.dnnl_convolution_backward_weights_primitive_desc_create(
                ctypes.byref(pd), _engine, _CONV_DIRECT, src.handle, dwts.handle, None, ddst.handle, *self.geometry,
                self._hint(), None), "convolution backward weights")
            self._bwd_weights = _Step(pd, [
                (_ARG_SRC, _QUERY_SRC_MD, self.x_shape, "in", "onednn_x"),
                (_ARG_DIFF_DST, _QUERY_DIFF_DST_MD, self.y_shape, "in", "onednn_y"),
                (_ARG_DIFF_WEIGHTS, _QUERY_DIFF_WEIGHTS_MD, self.wg_shape, "out", "onednn_w")])
        return self._bwd_weights

    def implementations(self):
        """The implementation oneDNN picked for each primitive built so far, e.g.
        ``{"forward": "brg:avx512_core", ...}``."""
        built = {"forward": self._fwd, "backward_data": self._bwd_data, "backward_weights": self._bwd_weights}
        return {k: v.primitive.implementation() for k, v in built.items() if v is not None}


def _same_layout(a, b):
    """Whether two operands reorder the same array into the same layout and scratch buffer."""
    if a.reorder is None or b.reorder is None:
        return False
    want_a = _lib.dnnl_primitive_desc_query_md(a.pd, a.query, 0)
    want_b = _lib.dnnl_primitive_desc_query_md(b.pd, b.query, 0)
    return a.tag == b.tag and a.shape == b.shape and bool(_lib.dnnl_memory_desc_equal(want_a, want_b))


def _c32(a):
    """``a`` as a C-contiguous float32 array (no copy when it already is one)."""
    if a.dtype != numpy.float32:
        raise TypeError(f"oneDNN kernels take float32, got {a.dtype}")
    return a if a.flags.c_contiguous else numpy.ascontiguousarray(a)


# A kernel library for graphdiff's generic choice (kernels.choice): a ``kernels=`` mode,
# and a candidate wherever an op family declares a oneDNN variant (ops/conv_variants.py).
# Its convolutions read their own inputs: no shared im2col columns (offers nothing).
from . import choice as _choice  # noqa: E402 - choice imports no library: no cycle

LIBRARY = _choice.register_library(_choice.Library("onednn", "oneDNN", available, load_error, info,
                                                   errors=(OneDNNError,)))
