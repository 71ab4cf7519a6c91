"""Array backends: where a compiled program's arrays live and which array
module (``xp``) the op kernels are given. A registry maps names to factories:
``numpy`` (CPU) and ``cupy`` (NVIDIA GPU). ``compile`` uses ``numpy`` unless
told otherwise, or inside ``with default_backend("cupy"):``."""
import contextlib
import contextvars

import numpy as np

from .errors import BackendError

_REGISTRY = {}
_CACHE = {}
_DEFAULT = contextvars.ContextVar("graphdiff_default_backend", default="numpy")


def register_backend(name, factory):
    """Register ``factory() -> Backend`` under ``name`` (it may raise BackendError)."""
    _REGISTRY[name] = factory


@contextlib.contextmanager
def default_backend(name):
    """``with gd.default_backend("cupy"):`` programs compiled in the block without a
    ``backend`` argument (``gd.compile``, and what calls it without one, such as
    ``graphdiff.testing``'s gradient checks) run on ``name``; the previous default
    comes back on exit. The setting belongs to the current thread (a context
    variable): other threads keep theirs, and a thread started in the block starts
    from ``"numpy"``. An unknown name raises ``BackendError`` on entry; a backend
    that does not work here (``"cupy"`` without CuPy) raises when a program is
    compiled, as ``compile(..., backend=name)`` would.

        x = gd.placeholder((2, 3), name="x")
        with gd.default_backend("cupy"):
            f = gd.compile(gd.relu(x), inputs=[x])   # as compile(..., backend="cupy")
    """
    if not isinstance(name, Backend) and name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    token = _DEFAULT.set(name)
    try:
        yield name
    finally:
        _DEFAULT.reset(token)


def get_backend(name=None):
    """The backend called ``name`` (a :class:`Backend` is returned as it is); ``None``:
    the current default (see :func:`default_backend`)."""
    if name is None:
        name = _DEFAULT.get()
    if isinstance(name, Backend):
        return name
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    if name not in _CACHE:
        _CACHE[name] = _REGISTRY[name]()
    return _CACHE[name]


def available_backends():
    """Names of the backends that work on this machine."""
    names = []
    for name in sorted(_REGISTRY):
        try:
            get_backend(name)
            names.append(name)
        except BackendError:
            pass
    return names


class Backend:
    """The array module plus the transfers a program needs."""

    name = "numpy"
    # Whether programs keep planned buffers across calls (see Program._memory_plan):
    # on a CPU that saves page faults; CuPy's memory pool reuses freed blocks itself,
    # and its fused kernels return new arrays, so planned buffers would lie idle.
    plans_memory = True

    def __init__(self, xp):
        self.xp = xp

    def asarray(self, value, dtype=None):
        """Host or device value -> this backend's array (a copy only if needed): a
        device array (CuPy's, or any with ``__cuda_array_interface__`` and ``.get()``),
        e.g. a variable last trained on a GPU, is copied to the host."""
        return self.xp.asarray(to_host_array(value), dtype=dtype)

    def to_host(self, array):
        return array

    def load_variable(self, var):
        """The variable's value on this backend; kept there for the next run."""
        value = var._value
        if not isinstance(value, self.xp.ndarray):
            value = var._value = self.asarray(value)
        return value

    def synchronize(self):
        pass


def to_host_array(value):
    """``value`` as something NumPy reads: a device array is copied to the host with
    ``.get()`` (NumPy cannot read device memory: CuPy's ``__array__`` raises)."""
    if hasattr(value, "__cuda_array_interface__") and hasattr(value, "get"):
        return value.get()
    return value


class CupyBackend(Backend):
    name = "cupy"
    plans_memory = False

    def asarray(self, value, dtype=None):
        return self.xp.asarray(value, dtype=dtype)

    def to_host(self, array):
        return self.xp.asnumpy(array) if isinstance(array, self.xp.ndarray) else array

    def load_variable(self, var):
        from .kernels.device import long_lived

        with long_lived(self.xp):  # variables stay on the device, updated in place
            return super().load_variable(var)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()


def _numpy_backend():
    return Backend(np)


GPU_INSTALL = ("pip install 'graphdiff[gpu]' (CuPy for CUDA 12: cupy-cuda12x) or 'graphdiff[gpu-cuda13]' "
               "(CUDA 13: cupy-cuda13x) on a machine with an NVIDIA GPU")


def _cupy_backend():
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        raise BackendError(f"backend 'cupy' needs CuPy, which is not importable ({exc}); install it with: "
                           f"{GPU_INSTALL}") from None
    try:
        ok = cupy.is_available()
    except Exception:
        ok = False
    if not ok:
        raise BackendError(f"backend 'cupy': CuPy is installed but no usable CUDA GPU was found; "
                           f"it needs an NVIDIA GPU and driver ({GPU_INSTALL})")
    return CupyBackend(cupy)


register_backend("numpy", _numpy_backend)
register_backend("cupy", _cupy_backend)
