"""The stand-in's device array, memory pool, ufuncs and routines (NumPy underneath)."""
import bisect
import builtins
import numbers
import weakref

import numpy

from ._ledger import LEDGER

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")


# ------------------------------------------------------------------- memory pool
class _Memory:
    """One device allocation: a host byte buffer standing for device memory, at a
    fake device address (for ``data.ptr`` and ``__cuda_array_interface__``)."""

    __slots__ = ("raw", "ptr", "size", "__weakref__")

    def __init__(self, raw, ptr, size):
        self.raw, self.ptr, self.size = raw, ptr, size


class MemoryPool:
    """CuPy's default pool, modelled: sizes round up to 512 bytes; a request takes
    the smallest free chunk that holds it (splitting off the rest), else a new
    device allocation (recorded as an ``alloc`` event); a chunk is free again when
    the last array viewing it dies, and merges with free neighbours of the same
    allocation. ``empty`` memory is filled with 0xFF bytes (NaN in floats): a
    reused chunk holds garbage."""

    ROUND = 512

    def __init__(self):
        self._free = []       # sorted (size, ptr)
        self._starts = {}     # free chunk start -> (size, arena)
        self._ends = {}       # free chunk end -> start
        self._arenas = {}     # arena start ptr -> (raw bytes, size)
        self._arena_of = {}   # chunk ptr -> arena start (chunks handed out)
        self._next_ptr = 1 << 32
        self._total = 0
        self._used = 0

    def _take_free(self, ptr):
        size, arena = self._starts.pop(ptr)
        del self._ends[ptr + size]
        self._free.remove((size, ptr))
        return size, arena

    def _put_free(self, ptr, size, arena):
        end = ptr + size
        if end in self._starts and self._starts[end][1] == arena:  # merge with the next chunk
            nsize, _ = self._take_free(end)
            size += nsize
        if ptr in self._ends:  # merge with the previous chunk
            prev = self._ends[ptr]
            if self._starts[prev][1] == arena:
                psize, _ = self._take_free(prev)
                ptr, size = prev, size + psize
        self._starts[ptr] = (size, arena)
        self._ends[ptr + size] = ptr
        bisect.insort(self._free, (size, ptr))

    def malloc(self, nbytes):
        size = builtins.max(self.ROUND, -(-int(nbytes) // self.ROUND) * self.ROUND)
        i = bisect.bisect_left(self._free, (size, -1))
        if i < len(self._free):
            csize, ptr = self._free[i]
            _, arena = self._take_free(ptr)
            if csize > size:  # split: the rest stays free
                self._put_free(ptr + size, csize - size, arena)
        else:
            ptr = arena = _NEXT_PTR[0]
            _NEXT_PTR[0] += size + self.ROUND
            self._arenas[arena] = (numpy.empty(size, numpy.uint8), size)
            self._total += size
            LEDGER.record("alloc", bytes=size)
        raw = self._arenas[arena][0][ptr - arena:ptr - arena + size]
        raw.fill(0xFF)
        mem = _Memory(raw, ptr, size)
        self._used += size
        weakref.finalize(mem, self._release, size, ptr, arena)
        return mem

    def _release(self, size, ptr, arena):
        self._used -= size
        self._put_free(ptr, size, arena)

    def used_bytes(self):
        return self._used

    def total_bytes(self):
        return self._total

    def free_bytes(self):
        return self._total - self._used

    def free_all_blocks(self):
        """Return wholly free allocations to the device."""
        for arena, (raw, size) in list(self._arenas.items()):
            if self._starts.get(arena, (None, None))[0] == size:
                self._take_free(arena)
                del self._arenas[arena]
                self._total -= size


_POOL = MemoryPool()
_ALLOCATOR = [None]  # the allocator set by cupy.cuda.using_allocator (None: the default pool)
_NEXT_PTR = [1 << 32]  # fake device addresses, distinct across pools


def get_default_memory_pool():
    return _POOL


# ------------------------------------------------------------------- the array
class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = False

    def __getitem__(self, key):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]


class _MemoryPointer:
    def __init__(self, mem, ptr):
        self.mem, self.ptr = mem, ptr


class ndarray:
    """A device array: not a ``numpy.ndarray``; ``__array__`` raises as CuPy's does."""

    __slots__ = ("_a", "_mem", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("stand-in: ndarray(memptr=, strides=) is not modelled")
        shape = _shape(shape)
        dtype = numpy.dtype(dtype)
        nbytes = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
        # Inside a cupy.fuse'd function temporaries live in registers, not in the pool.
        if _FUSING[0]:
            mem = _Memory(numpy.empty(nbytes, numpy.uint8), 0, nbytes)
        else:
            mem = (_ALLOCATOR[0] or _POOL.malloc)(nbytes)
        a = mem.raw[:nbytes].view(dtype).reshape(shape, order=order)
        _wrap_into(self, a, mem)

    # ------------------------------------------------------------ attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: self.transpose())
    device = property(lambda self: _device())

    @property
    def data(self):
        return _MemoryPointer(self._mem, _address(self))

    @property
    def base(self):
        return None

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (_address(self), False),
                "strides": None if self._a.flags.c_contiguous else self.strides, "version": 3}

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA, device 0

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        """A capsule standing for CUDA memory: only the stand-in's ``from_dlpack`` opens it
        (NumPy refuses a CUDA device, as with CuPy's real capsules)."""
        return _Capsule(self)

    # ------------------------------------------------------------ boundary
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        mine = globals().get(_UFUNC_NAMES.get(ufunc.__name__, ufunc.__name__))
        if not isinstance(mine, ufunc_type):
            return NotImplemented
        if method == "__call__":
            return mine(*inputs, **kwargs)
        return NotImplemented

    def __array_function__(self, func, types, args, kwargs):
        import cupy

        mine = getattr(cupy, func.__name__, None)
        if mine is None or getattr(mine, "__module__", "").startswith("numpy"):
            return NotImplemented
        return mine(*args, **kwargs)

    def get(self, stream=None, order="C", out=None):
        """Device -> host copy (waits for the device)."""
        LEDGER.record("sync")
        LEDGER.record("d2h", bytes=self.nbytes)
        return numpy.array(self._a, order=order)

    def set(self, arr, stream=None):
        if not isinstance(arr, numpy.ndarray) or arr.shape != self.shape:
            raise ValueError("Shape mismatch")
        LEDGER.record("h2d", bytes=arr.nbytes)
        self._a[...] = arr

    def _scalar(self):
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        LEDGER.record("sync")
        LEDGER.record("d2h", bytes=self.itemsize)
        return self._a.reshape(-1)[0].item()

    def item(self):
        return self._scalar()

    def tolist(self):
        return self.get().tolist()

    def __bool__(self):
        return bool(self._scalar())

    def __int__(self):
        return int(self._scalar())

    def __float__(self):
        return float(self._scalar())

    def __index__(self):
        if self.dtype.kind not in "iu":
            raise TypeError("only integer arrays can be used as an index")
        return int(self._scalar())

    def __len__(self):
        if not self.ndim:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if not self.ndim:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self):
        return f"array({numpy.array2string(self._a, separator=', ')}, dtype={self.dtype}) (stand-in device array)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("stand-in: pickling a device array is not modelled")

    # ------------------------------------------------------------ views
    def view(self, dtype=None):
        return _view(self, self._a.view() if dtype is None else self._a.view(dtype))

    def reshape(self, *shape, order="C"):
        shape = _shape(shape[0] if len(shape) == 1 else shape)
        v = self._a.view()
        try:
            v.shape = shape
        except AttributeError:
            out = empty(self._a.reshape(shape).shape, self.dtype)
            _launch("copy", [self], [out], lambda: out._a.__setitem__(Ellipsis, self._a.reshape(shape)))
            return out
        return _view(self, v)

    def ravel(self, order="C"):
        return self.reshape(-1)

    def flatten(self, order="C"):
        return self.copy().reshape(-1)

    def transpose(self, *axes):
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        return _view(self, self._a.transpose(*(axes or ())) if axes else self._a.transpose())

    def swapaxes(self, a1, a2):
        return _view(self, self._a.swapaxes(a1, a2))

    def squeeze(self, axis=None):
        return _view(self, self._a.squeeze(axis))

    # ------------------------------------------------------------ copies and fills
    def copy(self, order="C"):
        out = empty(self.shape, self.dtype, order=order)
        _launch("copy", [self], [out], lambda: out._a.__setitem__(Ellipsis, self._a))
        return out

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        dtype = numpy.dtype(dtype)
        if not copy and dtype == self.dtype:
            return self
        out = empty(self.shape, dtype)
        _launch("astype", [self], [out], lambda: out._a.__setitem__(Ellipsis, self._a.astype(dtype)))
        return out

    def fill(self, value):
        _check_operand(value)
        _launch("fill", [], [self], lambda: self._a.fill(value))

    def __getitem__(self, key):
        key = _index(key)
        if _basic(key):
            return _view(self, _basic_view(self._a, key))
        if builtins.any(isinstance(k, numpy.ndarray) and k.dtype == numpy.bool_ for k in _as_tuple(key)):
            LEDGER.record("sync")  # the result's size depends on the mask's contents
        res = self._a[key]
        out = empty(res.shape, res.dtype)
        _launch("take", [self] + _index_arrays(key), [out], lambda: out._a.__setitem__(Ellipsis, res))
        return out

    def __setitem__(self, key, value):
        if _FUSING[0]:  # CuPy's fusion: only `x[...] = value` (or `x[:]`), an in-place output
            if not (key is Ellipsis or key == slice(None)):
                raise ValueError("The fusion supports `[...]` or `[:]`.")
            _check_operand(value)
            self._a[...] = value._a if isinstance(value, ndarray) else value
            _FUSE_WRITES.append(self)
            return
        key = _index(key)
        _check_operand(value)
        src = value._a if isinstance(value, ndarray) else value
        target = self if _basic(key) else None
        ins = [value] if isinstance(value, ndarray) else []
        if target is not None:
            view = _view(self, _basic_view(self._a, key))
            _launch("copy" if ins else "fill", ins, [view], lambda: view._a.__setitem__(Ellipsis, src))
        else:
            _launch("scatter", ins + _index_arrays(key), [self], lambda: self._a.__setitem__(key, src))

    # ------------------------------------------------------------ reductions
    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return _reduce("sum", self, axis, dtype, out, keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return _reduce("mean", self, axis, dtype, out, keepdims)

    def max(self, axis=None, out=None, keepdims=False):
        return _reduce("max", self, axis, None, out, keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return _reduce("min", self, axis, None, out, keepdims)

    def argmax(self, axis=None, out=None, keepdims=False):
        return _reduce("argmax", self, axis, None, out, keepdims)

    def any(self, axis=None, out=None, keepdims=False):
        return _reduce("any", self, axis, None, out, keepdims)

    def all(self, axis=None, out=None, keepdims=False):
        return _reduce("all", self, axis, None, out, keepdims)

    def dot(self, b, out=None):
        return dot(self, b, out=out)

    # operators (filled in below)


def _wrap_into(arr, a, mem):
    arr._a, arr._mem = a, mem


def _view(base, a):
    if _FUSING[0]:
        raise TypeError("stand-in: views and indexing are not supported inside cupy.fuse")
    v = ndarray.__new__(ndarray)
    _wrap_into(v, a, base._mem)
    return v


def _address(arr):
    raw = arr._mem.raw
    offset = arr._a.__array_interface__["data"][0] - raw.__array_interface__["data"][0]
    return arr._mem.ptr + offset


def _extent(arr):
    """(memory, first byte, end byte) an array's elements span."""
    a = arr._a
    start = _address(arr)
    if a.size == 0:
        return id(arr._mem), start, start
    lo = builtins.sum(s * (n - 1) for s, n in zip(a.strides, a.shape) if s < 0)
    hi = builtins.sum(s * (n - 1) for s, n in zip(a.strides, a.shape) if s > 0)
    return id(arr._mem), start + lo, start + hi + a.itemsize


def _bytes_read(arrays):
    """Union of the operands' byte ranges, per buffer."""
    spans = {}
    for arr in arrays:
        m, lo, hi = _extent(arr)
        spans.setdefault(m, []).append((lo, hi))
    total = 0
    for ranges in spans.values():
        ranges.sort()
        cur_lo, cur_hi = ranges[0]
        for lo, hi in ranges[1:]:
            if lo > cur_hi:
                total += cur_hi - cur_lo
                cur_lo, cur_hi = lo, hi
            else:
                cur_hi = builtins.max(cur_hi, hi)
        total += cur_hi - cur_lo
    return total


_FUSING = [0]  # > 0 inside a cupy.fuse'd function: its ops are one kernel, counted there
_FUSE_WRITES = []  # arrays a fused function wrote in place (`x[...] = v`, a ufunc's out=)


def _launch(name, inputs, outputs, run, flops=0):
    run()
    if not _FUSING[0]:
        LEDGER.record("launch", name=name, read=_bytes_read([a for a in inputs if isinstance(a, ndarray)]),
                      written=builtins.sum(o.nbytes for o in outputs), flops=flops)


def _device():
    from .cuda import Device

    return Device(0)


def _shape(shape):
    if isinstance(shape, (numbers.Integral, numpy.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _as_tuple(key):
    return key if isinstance(key, tuple) else (key,)


def _index(key):
    """Device index arrays -> their NumPy arrays (same device); host index arrays
    travel to the device first, as in CuPy."""
    out = []
    for k in _as_tuple(key):
        if isinstance(k, ndarray):
            k = k._a
        elif isinstance(k, numpy.ndarray):
            LEDGER.record("h2d", bytes=k.nbytes)
        elif isinstance(k, list):
            raise TypeError("stand-in: index with a list; use a device array")
        out.append(k)
    return tuple(out) if isinstance(key, tuple) else out[0]


def _basic(key):
    return builtins.all(k is None or k is Ellipsis or isinstance(k, (slice, numbers.Integral, numpy.integer))
               for k in _as_tuple(key))


def _basic_view(a, key):
    """``a[key]`` for a basic key, always a view: an integer per axis gives a 0-d
    array, as in CuPy (NumPy would give a scalar, a copy)."""
    key = _as_tuple(key)
    return a[key] if builtins.any(k is Ellipsis for k in key) else a[key + (Ellipsis,)]


def _index_arrays(key):
    return [_from_host_nocount(k) for k in _as_tuple(key) if isinstance(k, numpy.ndarray)]


def _from_host_nocount(a):
    v = ndarray.__new__(ndarray)
    _wrap_into(v, a, _Memory(a.view(numpy.uint8).reshape(-1) if a.flags.c_contiguous else numpy.empty(0, "u1"), 0, 0))
    return v


def _check_operand(x):
    """CuPy's rule: device arrays and scalars only, never host arrays."""
    if isinstance(x, ndarray) or x is None:
        return
    if isinstance(x, (bool, numbers.Number, numpy.generic)):
        return
    raise TypeError(f"Unsupported type {type(x)}")


# ------------------------------------------------------------------- ufuncs
class ufunc:
    """A CuPy ufunc: device arrays and scalars in, a device array out (``out=`` a
    device array); host arrays are refused."""

    def __init__(self, name, np_ufunc=None):
        self.__name__ = self.name = name
        self._np = np_ufunc or getattr(numpy, name)
        self.nin, self.nout = self._np.nin, self._np.nout
        self.nargs = self.nin + self.nout

    def __repr__(self):
        return f"<ufunc 'cupy_{self.name}'>"

    def __call__(self, *args, out=None, dtype=None, casting="same_kind"):
        ins = list(args[:self.nin])
        if len(args) > self.nin:
            if out is not None:
                raise TypeError("got multiple values for 'out'")
            out = args[self.nin] if self.nout == 1 else tuple(args[self.nin:])
        if len(ins) != self.nin:
            raise TypeError(f"Wrong number of arguments for {self.name}")
        for x in ins:
            _check_operand(x)
        outs = out if isinstance(out, tuple) else (out,)
        for o in outs:
            if o is not None and not isinstance(o, ndarray):
                raise TypeError(f"Output argument must be cupy.ndarray, got {type(o)}")
        vals = [x._a if isinstance(x, ndarray) else x for x in ins]
        kw = {} if dtype is None else {"dtype": dtype}
        with numpy.errstate(all="ignore"):
            if builtins.all(o is None for o in outs):
                res = self._np(*vals, **kw)
                res = res if isinstance(res, tuple) else (res,)
                made = []
                for r in res:
                    r = numpy.asarray(r)
                    o = empty(r.shape, r.dtype)
                    o._a[...] = r
                    made.append(o)
                _record_ufunc(self.name, ins, made)
                return made[0] if self.nout == 1 else tuple(made)
            if _FUSING[0]:
                _FUSE_WRITES.extend(outs)
            targets = tuple(o._a for o in outs)
            self._np(*vals, out=targets if self.nout > 1 else targets[0], casting=casting, **kw)
        _record_ufunc(self.name, ins, list(outs))
        return out

    def at(self, a, indices, b=None):
        _check_operand(b)
        key = _index(indices)
        vals = () if b is None else (b._a if isinstance(b, ndarray) else b,)
        _launch(f"{self.name}.at", [a] + ([b] if isinstance(b, ndarray) else []) + _index_arrays(key), [a],
                lambda: self._np.at(a._a, key, *vals))

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        return _reduce_with(self._np.reduce, self.name, array, axis, dtype, out, keepdims)


ufunc_type = ufunc


def _record_ufunc(name, ins, outs):
    if not _FUSING[0]:
        LEDGER.record("launch", name=name, read=_bytes_read([x for x in ins if isinstance(x, ndarray)]),
                      written=builtins.sum(o.nbytes for o in outs), flops=0)


_UFUNC_LIST = ["add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "power", "negative",
               "absolute", "exp", "expm1", "log", "log1p", "log2", "log10", "sqrt", "square", "tanh",
               "sin", "cos", "sign", "maximum", "minimum", "fmax", "fmin", "greater", "greater_equal", "less",
               "less_equal", "equal", "not_equal", "logical_and", "logical_or", "logical_not", "logical_xor",
               "bitwise_and", "bitwise_or", "bitwise_xor", "invert", "left_shift", "right_shift", "isnan",
               "isinf", "isfinite", "logaddexp", "reciprocal", "floor", "ceil", "rint", "fmod", "remainder",
               "arctan", "arctanh", "sinh", "cosh", "copysign"]
_UFUNC_NAMES = {"absolute": "absolute", "abs": "absolute"}
for _n in _UFUNC_LIST:
    globals()[_n] = ufunc(_n)
abs = absolute  # noqa: A001,F821 - CuPy's alias


def _binop(name, reflected=False):
    def op(self, other):
        if isinstance(other, numpy.ndarray):
            raise TypeError(f"Unsupported type {type(other)}")
        f = globals()[name]
        return f(other, self) if reflected else f(self, other)
    return op


def _iop(name):
    def op(self, other):
        globals()[name](self, other, out=self)
        return self
    return op


for _d, _n in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
               ("floordiv", "floor_divide"), ("pow", "power"), ("mod", "remainder"), ("and", "bitwise_and"),
               ("or", "bitwise_or"), ("xor", "bitwise_xor"), ("lshift", "left_shift"), ("rshift", "right_shift")]:
    setattr(ndarray, f"__{_d}__", _binop(_n))
    setattr(ndarray, f"__r{_d}__", _binop(_n, reflected=True))
    setattr(ndarray, f"__i{_d}__", _iop(_n))
for _d, _n in [("gt", "greater"), ("ge", "greater_equal"), ("lt", "less"), ("le", "less_equal"),
               ("eq", "equal"), ("ne", "not_equal")]:
    setattr(ndarray, f"__{_d}__", _binop(_n))
ndarray.__hash__ = None
ndarray.__neg__ = lambda self: negative(self)  # noqa: F821
ndarray.__pos__ = lambda self: self.copy()
ndarray.__abs__ = lambda self: absolute(self)  # noqa: F821
ndarray.__invert__ = lambda self: invert(self)  # noqa: F821
ndarray.__matmul__ = lambda self, other: matmul(self, other)
ndarray.__rmatmul__ = lambda self, other: matmul(other, self)


# ------------------------------------------------------------------- reductions
def _reduce(name, a, axis, dtype, out, keepdims):
    fn = {"sum": numpy.sum, "mean": numpy.mean, "max": numpy.max, "min": numpy.min, "argmax": numpy.argmax,
          "any": numpy.any, "all": numpy.all, "prod": numpy.prod}[name]

    def call(x, axis, dtype, out, keepdims):
        kw = {} if dtype is None else {"dtype": dtype}
        if name == "argmax":
            return fn(x, axis=axis, out=out, keepdims=keepdims)
        return fn(x, axis=axis, out=out, keepdims=keepdims, **kw)

    return _reduce_with(call, name, a, axis, dtype, out, keepdims)


def _reduce_with(fn, name, a, axis, dtype, out, keepdims):
    if _FUSING[0]:
        raise NotImplementedError("stand-in: reductions inside cupy.fuse are not modelled")
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")
    if isinstance(axis, list):
        axis = tuple(axis)
    with numpy.errstate(all="ignore"):
        if out is None:
            r = numpy.asarray(fn(a._a, axis, dtype, None, keepdims))
            out = empty(r.shape, r.dtype)
            out._a[...] = r
        else:
            fn(a._a, axis, dtype, out._a, keepdims)
    LEDGER.record("launch", name=name, read=_bytes_read([a]), written=out.nbytes, flops=0)
    return out


def sum(a, axis=None, dtype=None, out=None, keepdims=False):  # noqa: A001
    return _reduce("sum", a, axis, dtype, out, keepdims)


def mean(a, axis=None, dtype=None, out=None, keepdims=False):
    return _reduce("mean", a, axis, dtype, out, keepdims)


def max(a, axis=None, out=None, keepdims=False):  # noqa: A001
    return _reduce("max", a, axis, None, out, keepdims)


amax = max


def min(a, axis=None, out=None, keepdims=False):  # noqa: A001
    return _reduce("min", a, axis, None, out, keepdims)


amin = min


def prod(a, axis=None, dtype=None, out=None, keepdims=False):
    return _reduce("prod", a, axis, dtype, out, keepdims)


def argmax(a, axis=None, out=None, keepdims=False):
    return _reduce("argmax", a, axis, None, out, keepdims)


def any(a, axis=None, out=None, keepdims=False):  # noqa: A001
    return _reduce("any", a, axis, None, out, keepdims)


def all(a, axis=None, out=None, keepdims=False):  # noqa: A001
    return _reduce("all", a, axis, None, out, keepdims)


def cumsum(a, axis=None, dtype=None, out=None):
    r = numpy.cumsum(a._a, axis=axis, dtype=dtype)
    if out is None:
        out = empty(r.shape, r.dtype)
    _launch("cumsum", [a], [out], lambda: out._a.__setitem__(Ellipsis, r))
    return out


# ------------------------------------------------------------------- creation
def empty(shape, dtype=float, order="C"):
    return ndarray(shape, dtype, order=order)


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    return empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def zeros(shape, dtype=float, order="C"):
    return full(shape, 0, dtype, order)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return full_like(a, 0, dtype, shape=shape)


def ones(shape, dtype=float, order="C"):
    return full(shape, 1, dtype, order)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return full_like(a, 1, dtype, shape=shape)


def full(shape, fill_value, dtype=None, order="C"):
    out = empty(shape, numpy.array(fill_value).dtype if dtype is None else dtype, order)
    out.fill(fill_value)
    return out


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    out = empty_like(a, dtype, shape=shape)
    out.fill(fill_value)
    return out


def arange(start, stop=None, step=1, dtype=None):
    r = numpy.arange(start, stop, step, dtype=dtype) if stop is not None else numpy.arange(start, dtype=dtype)
    out = empty(r.shape, r.dtype)
    _launch("arange", [], [out], lambda: out._a.__setitem__(Ellipsis, r))
    return out


def asarray(a, dtype=None, order=None, *, blocking=False):
    """Host data -> a device array (one H2D copy); a device array -> itself (or a cast)."""
    if isinstance(a, ndarray):
        return a if dtype is None or numpy.dtype(dtype) == a.dtype else a.astype(dtype)
    if hasattr(a, "__cuda_array_interface__"):
        raise TypeError("stand-in: foreign CUDA arrays are not modelled")
    host = numpy.asarray(a, dtype=dtype)
    if host.dtype.hasobject:
        raise ValueError("Unsupported dtype object")
    out = empty(host.shape, host.dtype)
    out._a[...] = host
    LEDGER.record("h2d", bytes=host.nbytes)
    return out


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        res = obj.astype(obj.dtype if dtype is None else dtype, copy=copy)
        return res
    return asarray(obj, dtype=dtype)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """Device -> host (a host value passes through)."""
    if isinstance(a, ndarray):
        res = a.get(order=order)
        if out is not None:
            out[...] = res
            return out
        return res
    return numpy.asarray(a, order=order)


def ascontiguousarray(a, dtype=None):
    if a._a.flags.c_contiguous and (dtype is None or numpy.dtype(dtype) == a.dtype):
        return a
    out = empty(a.shape, a.dtype if dtype is None else dtype)
    _launch("copy", [a], [out], lambda: out._a.__setitem__(Ellipsis, a._a))
    return out


def copyto(dst, src, casting="same_kind", where=None):
    _check_operand(src)
    if where is not None:
        raise NotImplementedError("stand-in: copyto(where=) is not modelled")
    s = src._a if isinstance(src, ndarray) else src
    _launch("copy", [src] if isinstance(src, ndarray) else [], [dst], lambda: numpy.copyto(dst._a, s, casting=casting))


class _Capsule:
    def __init__(self, array):
        self.array = array


def from_dlpack(x, *, device=None, copy=None):
    """Another array's device memory as a device array, shared (no copy)."""
    if not hasattr(x, "__dlpack__"):
        raise TypeError(f"{type(x)} has no __dlpack__")
    if int(x.__dlpack_device__()[0]) != 2:
        raise RuntimeError("CuPy can only import arrays on a CUDA device (the stand-in: on its own device)")
    cap = x.__dlpack__()
    if not isinstance(cap, _Capsule):
        raise TypeError("stand-in: only its own device arrays can be imported through DLPack")
    return _view(cap.array, cap.array._a)


# ------------------------------------------------------------------- manipulation
def reshape(a, newshape, order="C"):
    return a.reshape(newshape, order=order)


def transpose(a, axes=None):
    return a.transpose(axes)


def ravel(a, order="C"):
    return a.ravel()


def squeeze(a, axis=None):
    return a.squeeze(axis)


def expand_dims(a, axis):
    return _view(a, numpy.expand_dims(a._a, axis))


def moveaxis(a, source, destination):
    return _view(a, numpy.moveaxis(a._a, source, destination))


def swapaxes(a, a1, a2):
    return a.swapaxes(a1, a2)


def broadcast_to(a, shape):
    return _view(a, numpy.broadcast_to(a._a, shape))


def flip(a, axis=None):
    return _view(a, numpy.flip(a._a, axis))


def concatenate(arrays, axis=0, out=None, dtype=None):
    for x in arrays:
        if not isinstance(x, ndarray):
            raise TypeError(f"Unsupported type {type(x)}")
    r = numpy.concatenate([x._a for x in arrays], axis=axis, dtype=dtype)
    if out is None:
        out = empty(r.shape, r.dtype)
    _launch("concatenate", list(arrays), [out], lambda: out._a.__setitem__(Ellipsis, r))
    return out


def stack(arrays, axis=0, out=None):
    return concatenate([expand_dims(x, axis) for x in arrays], axis=axis, out=out)


def where(condition, x=None, y=None):
    if x is None and y is None:
        raise NotImplementedError("stand-in: where(condition) needs a sync; use nonzero")
    for v in (condition, x, y):
        _check_operand(v)
    vals = [v._a if isinstance(v, ndarray) else v for v in (condition, x, y)]
    r = numpy.where(*vals)
    out = empty(r.shape, r.dtype)
    _launch("where", [v for v in (condition, x, y) if isinstance(v, ndarray)], [out],
            lambda: out._a.__setitem__(Ellipsis, r))
    return out


def take(a, indices, axis=None, out=None, mode="wrap"):
    if not isinstance(indices, ndarray):
        if isinstance(indices, numpy.ndarray):
            raise TypeError(f"Unsupported type {type(indices)}")
        indices = asarray(indices)
    r = numpy.take(a._a, indices._a, axis=axis, mode="wrap")
    if out is None:
        out = empty(r.shape, r.dtype)
    _launch("take", [a, indices], [out], lambda: out._a.__setitem__(Ellipsis, r))
    return out


def pad(array, pad_width, mode="constant", constant_values=0):
    r = numpy.pad(array._a, pad_width, mode=mode, constant_values=constant_values)
    out = empty(r.shape, r.dtype)
    _launch("pad", [array], [out], lambda: out._a.__setitem__(Ellipsis, r))
    return out


def clip(a, a_min, a_max, out=None):
    return minimum(maximum(a, a_min), a_max, out=out)  # noqa: F821


def dot(a, b, out=None):
    if a.ndim > 2 or b.ndim > 2:
        raise NotImplementedError("stand-in: dot of arrays of more than 2 dimensions")
    return matmul(a, b, out=out)


def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    res = numpy.allclose(a._a, b._a, rtol=rtol, atol=atol, equal_nan=equal_nan)
    LEDGER.record("launch", name="allclose", read=_bytes_read([a, b]), written=1, flops=0)
    out = empty((), numpy.bool_)
    out._a[...] = res
    return out


# ------------------------------------------------------------------- GEMM
def _cublas_takes_2d(a):
    """cuBLAS reads a 2-D operand in place when it is C- or F-contiguous (a transpose flag)."""
    return a._a.flags.c_contiguous or a._a.flags.f_contiguous


def _copy_for_gemm(a):
    LEDGER.record("matmul_copy", bytes=a.nbytes)
    return ascontiguousarray(a.copy())


def _overlaps(x, y):
    mx, lx, hx = _extent(x)
    my, ly, hy = _extent(y)
    return mx == my and lx < hy and ly < hx


def matmul(a, b, out=None, dtype=None):
    """CuPy's ``matmul`` with its copies: 2-D operands that are neither C- nor
    F-contiguous are copied; in a batched product (either operand of more than 2
    dimensions) every operand that is not C-contiguous is copied; an ``out`` that
    is not C-contiguous (or overlaps an operand) gets a temporary and a copy."""
    for x in (a, b):
        if not isinstance(x, ndarray):
            raise TypeError(f"Unsupported type {type(x)}")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("Scalar operands are not allowed, use '*' instead")
    batched = builtins.max(a.ndim, b.ndim) > 2
    ops = []
    for x in (a, b):
        ok = x._a.flags.c_contiguous if batched else _cublas_takes_2d(x)
        ops.append(x if ok or x.ndim == 1 else _copy_for_gemm(x))
    a2, b2 = ops
    res_dtype = numpy.result_type(a.dtype, b.dtype)
    shape = numpy.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2] if a.ndim > 1 else 1,
                                                                  b.shape[-1] if b.ndim > 1 else 1)
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b.ndim == 1:
        shape = shape[:-1]
    target = out
    if out is not None:
        if not isinstance(out, ndarray):
            raise TypeError(f"Output argument must be cupy.ndarray, got {type(out)}")
        if out.shape != shape:
            raise ValueError("Output array has an invalid size")
        if not out._a.flags.c_contiguous or out.dtype != res_dtype or _overlaps(out, a2) or _overlaps(out, b2):
            LEDGER.record("matmul_copy", bytes=out.nbytes)
            target = empty(shape, res_dtype)
    else:
        target = empty(shape, res_dtype)
    K = a.shape[-1]
    batch = int(numpy.prod(shape[:-2], dtype=numpy.int64)) if len(shape) > 2 else 1
    M = a.shape[-2] if a.ndim > 1 else 1
    N = b.shape[-1] if b.ndim > 1 else 1
    _launch("gemm", [a2, b2], [target], lambda: numpy.matmul(a2._a, b2._a, out=target._a),
            flops=2 * M * N * K * batch)
    if out is not None and target is not out:
        _launch("copy", [target], [out], lambda: out._a.__setitem__(Ellipsis, target._a))
        return out
    return target


# ------------------------------------------------------------------- stride tricks
def _as_strided(x, shape=None, strides=None):
    shape = x.shape if shape is None else tuple(shape)
    strides = x.strides if strides is None else tuple(strides)
    v = numpy.lib.stride_tricks.as_strided(x._a, shape, strides)
    probe = _view(x, v)
    m, lo, hi = _extent(probe)
    if lo < x._mem.ptr or hi > x._mem.ptr + x._mem.size:
        raise ValueError("stand-in: as_strided view reaches outside its allocation")
    return probe
