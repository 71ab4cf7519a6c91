"""Values fed to a compiled program, and arrays shared with other libraries.

:func:`as_input` turns one value given for a placeholder into the backend's
array, checking it on the way (every failure an :class:`InputError` naming the
input):

* NumPy arrays (CuPy arrays on the GPU) are taken as they are;
* any other object with ``__dlpack__`` (a ``torch.Tensor``, a JAX or CuPy
  array) is taken through DLPack, sharing its memory: no copy where the dtype
  already matches (:func:`from_dlpack`);
* nested lists and scalars become arrays (a ragged list is an error);
* a dtype cast is allowed only where it keeps the values: float64 -> float32
  rounds (as documented), but an integer outside the placeholder's range
  (``2**40 + 3`` into int32, ``-1`` into uint8) or a finite float that
  overflows (``1e300`` into float32) is refused, as is a float into an integer
  placeholder.

:func:`from_dlpack` is the public ``gd.from_dlpack``. Outputs go the other
way by themselves: programs return NumPy arrays (``__dlpack__`` since NumPy
1.22), which ``torch.from_dlpack`` takes without a copy; :func:`exportable`
makes sure of the layout.
"""
import numpy as np

from .errors import InputError
from .graph import Tensor, fmt_shape

# DLPack device types (dlpack.h): where the memory of an exported array lives
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_ROCM, _DL_CUDA_MANAGED = 1, 2, 3, 10, 13
_DL_HOST = (_DL_CPU, _DL_CUDA_HOST)
_DL_GPU = (_DL_CUDA, _DL_ROCM, _DL_CUDA_MANAGED)


def from_dlpack(array):
    """An array of another library as a NumPy array (memory on the CPU) or a
    CuPy array (on a GPU) that **shares its memory**: no copy. ``array`` is
    anything with ``__dlpack__`` and ``__dlpack_device__`` (``torch.Tensor``,
    CuPy, JAX, NumPy itself). A PyTorch tensor that requires grad is read
    through ``.detach()`` (the same memory, outside PyTorch's autograd)."""
    if not hasattr(array, "__dlpack__"):
        raise TypeError(f"from_dlpack: {type(array).__name__} has no __dlpack__ (not a DLPack array)")
    if getattr(array, "requires_grad", False) and hasattr(array, "detach"):
        array = array.detach()  # torch refuses to export a tensor autograd tracks
    try:
        device = int(array.__dlpack_device__()[0])
    except Exception as exc:  # e.g. a torch tensor on the "meta" device
        raise TypeError(f"from_dlpack: {_describe(array)}: no DLPack device ({exc})") from None
    if device in _DL_GPU:
        from .backends import get_backend  # a BackendError that says what to install where CuPy is missing

        xp = get_backend("cupy").xp
    elif device in _DL_HOST:
        xp = np
    else:
        raise TypeError(f"from_dlpack: {_describe(array)} lives on DLPack device type {device}; "
                        f"graphdiff takes CPU (NumPy) and CUDA (CuPy) arrays")
    try:
        return xp.from_dlpack(array)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:  # e.g. bfloat16: no NumPy dtype
        raise TypeError(f"from_dlpack: cannot take {_describe(array)}: {exc}") from None


def _describe(value):
    kind = type(value)
    dtype = getattr(value, "dtype", None)
    return f"a {kind.__module__.split('.')[0]}.{kind.__name__}" + (f" of dtype {dtype}" if dtype is not None else "")


def as_input(p, value, backend):
    """``value`` fed for placeholder ``p``, as an array of ``backend`` of
    ``p``'s dtype (see the module docstring for what is accepted)."""
    xp = backend.xp
    if isinstance(value, Tensor):
        raise InputError(f"input {p.name!r}: got the symbolic tensor {value.name!r}; feed an array "
                         f"(a graph's values exist only inside a running program)")
    if not isinstance(value, (np.ndarray, xp.ndarray)) and hasattr(value, "__dlpack__"):
        try:
            value = from_dlpack(value)
        except TypeError as exc:
            raise InputError(f"input {p.name!r}: {str(exc).removeprefix('from_dlpack: ')}") from None
    if not hasattr(value, "dtype") or not hasattr(value, "shape"):
        value = _host_array(p, value)
    kind, want = value.dtype.kind, p.dtype.kind
    if want in "iub" and kind in "fc":
        raise InputError(f"input {p.name!r}: expected {p.dtype} (integers), got {value.dtype}")
    if kind not in "fiub":
        raise InputError(f"input {p.name!r}: expected {p.dtype}, got {value.dtype}")
    shape = tuple(value.shape)
    if len(shape) != len(p.shape) or any(d is not None and d != s for d, s in zip(p.shape, shape)):
        raise InputError(f"input {p.name!r}: expected shape {fmt_shape(p.shape)}, got {fmt_shape(shape)}")
    if isinstance(value, xp.ndarray) and value.dtype == p.dtype:
        return value
    if value.dtype != p.dtype:
        _check_cast_keeps_values(p, value, xp)
    with np.errstate(over="ignore"):  # an overflow is reported below, as an InputError
        converted = backend.asarray(value, dtype=p.dtype)
    if want == "f" and not np.can_cast(value.dtype, p.dtype, "safe"):
        _check_no_overflow(p, value, converted, xp)
    return converted


def _host_array(p, value):
    """A list, tuple or scalar as a NumPy array; a ragged list is an InputError."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        detail = ("a ragged nested sequence (rows of different lengths) is not an array"
                  if "inhomogeneous" in str(exc) else f"cannot make an array of it ({exc})")
        raise InputError(f"input {p.name!r}: got a {type(value).__name__}: {detail}") from None


def _check_cast_keeps_values(p, value, xp):
    """An integer (or bool) cast that would wrap around or truncate is refused."""
    src, dst = value.dtype, p.dtype
    if src.kind not in "iub" or dst.kind not in "iub" or np.can_cast(src, dst, "safe") or value.size == 0:
        return
    lo, hi = (0, 1) if dst.kind == "b" else (np.iinfo(dst).min, np.iinfo(dst).max)
    low, high = int(value.min()), int(value.max())
    if low < lo or high > hi:
        bad = low if low < lo else high
        raise InputError(f"input {p.name!r}: the {src} value {bad} does not fit in {dst} "
                         f"({lo}..{hi}); the cast would change it")


def _check_no_overflow(p, value, converted, xp):
    """A finite value that becomes infinite in a narrower float is refused
    (rounding, as float64 -> float32 does, is allowed)."""
    if bool(xp.isfinite(converted).all()):
        return
    value = xp.asarray(value)  # on the device of ``converted``
    overflow = xp.isinf(converted) & xp.isfinite(value)
    if bool(overflow.any()):
        bad = value[overflow].reshape(-1)[0]
        raise InputError(f"input {p.name!r}: the {value.dtype} value {bad.item()!r} overflows {p.dtype} "
                         f"(largest {float(np.finfo(p.dtype).max):.8g}); the cast would make it inf")


def exportable(array):
    """A program output that other libraries take through DLPack: as it is,
    unless it is a view with negative strides (``x[::-1]``), which DLPack
    consumers do not support (PyTorch aborts on one); that is copied."""
    if any(s < 0 for s in getattr(array, "strides", ())):
        return array.copy()
    return array
