"""A strict CPU stand-in for CuPy (13/14), for tests and cost counts; see
``tests/cupy_standin/__init__.py``. Never installed: it is put on ``sys.path``
only where real CuPy does not import."""
import numpy as _np

from . import cuda, lib  # noqa: F401
from ._core import *  # noqa: F401,F403
from ._core import (_POOL, _FUSING, _FUSE_WRITES, _bytes_read, _check_operand, _launch, abs, all, any, max, min,  # noqa: F401
                    ndarray, get_default_memory_pool, sum, ufunc)
from ._ledger import LEDGER as _LEDGER

for _mod in ("bisect", "builtins", "numbers", "weakref", "numpy",  # _core's imports and helpers, not CuPy names
             "MemoryPool", "ufunc_type", "LEDGER"):
    globals().pop(_mod, None)
del _mod

__version__ = "14.0.0+standin"
STANDIN = True  # not in CuPy: tells a reader (and gpu_session.sh) this is the stand-in

newaxis = None
inf, nan, pi, e = _np.inf, _np.nan, _np.pi, _np.e
dtype, result_type, can_cast, iinfo, finfo, promote_types = (_np.dtype, _np.result_type, _np.can_cast, _np.iinfo,
                                                             _np.finfo, _np.promote_types)
for _name in ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
              "float32", "float64", "complex64", "complex128", "intp", "uintp"):
    globals()[_name] = getattr(_np, _name)


def is_available():
    return True


def get_array_module(*args):
    import sys

    return sys.modules[__name__] if _any(isinstance(a, ndarray) for a in args) else _np


def _any(it):
    for x in it:
        if x:
            return True
    return False


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    from ._core import asnumpy as _asnumpy

    return _asnumpy(a, stream=stream, order=order, out=out, blocking=blocking)


class _Fusion:
    """``cupy.fuse``: the function's elementwise ops run as ONE kernel. Inside,
    only ufuncs and arithmetic on whole arrays and scalars are allowed (no views,
    indexing or reductions are modelled); returned results are new arrays, as
    CuPy's; a parameter may be written in place with ``x[...] = value`` or a
    ufunc's ``out`` (then the function may return None)."""

    def __init__(self, func, kernel_name=None):
        self.func = func
        self.name = kernel_name or func.__name__
        self.__name__ = self.name
        self.__doc__ = func.__doc__

    def __call__(self, *args):
        if not _any(isinstance(a, ndarray) for a in args):
            return self.func(*args)  # CuPy: NumPy arguments run the plain function
        for a in args:
            _check_operand(a)
        _FUSING[0] += 1
        del _FUSE_WRITES[:]
        try:
            res = self.func(*args)
        finally:
            _FUSING[0] -= 1
            written = {id(a): a for a in _FUSE_WRITES if _any(a is p for p in args)}
            del _FUSE_WRITES[:]
        many = isinstance(res, tuple)
        outs = []
        for r in (() if res is None else res if many else (res,)):
            if not isinstance(r, ndarray):
                raise TypeError(f"stand-in: a fused function must return device arrays, got {type(r)}")
            o = ndarray(r.shape, r.dtype)
            o._a[...] = r._a
            outs.append(o)
        _LEDGER.record("launch", name=f"fused:{self.name}", read=_bytes_read([a for a in args if isinstance(a, ndarray)]),
                       written=_sum(o.nbytes for o in list(outs) + list(written.values())), flops=0)
        if res is None:
            return None
        return tuple(outs) if many else outs[0]


def _sum(it):
    t = 0
    for x in it:
        t += x
    return t


def fuse(*args, **kwargs):
    """CuPy's signature, exactly: ``cupy.fuse(f)``, ``@cupy.fuse()`` or
    ``cupy.fuse(kernel_name=...)(f)`` (``cupy.fuse(f, kernel_name=...)`` returns a
    decorator, not a fused function, as in CuPy)."""
    def wrapper(f, kernel_name=None):
        return _Fusion(f, kernel_name)

    if len(args) == 1 and not kwargs and callable(args[0]):
        return wrapper(args[0])
    return lambda f: wrapper(f, *args, **kwargs)


class _CudaSource:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"the CuPy stand-in cannot run CUDA C ({type(self).__name__}); the engine "
                                  f"must give this kernel a NumPy/CuPy-routine twin for the stand-in")


class ElementwiseKernel(_CudaSource):
    pass


class ReductionKernel(_CudaSource):
    pass


class RawKernel(_CudaSource):
    pass


class RawModule(_CudaSource):
    pass
