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


GPU_INSTALL = ("pip install 'graphdiff[gpu]' (CUDA 12: cupy-cuda12x[ctk], driver >= 525) or "
               "'graphdiff[gpu-cuda13]' (CUDA 13: cupy-cuda13x[ctk], driver >= 580) on a machine with an NVIDIA GPU")

# CUDA libraries CuPy loads when first used (not at import), and the wheels that
# bring them, by CUDA major version: the NVIDIA wheels of CUDA 13 dropped the suffix.
_LIBRARIES = ("nvrtc", "cublas", "cufft", "curand", "cusolver", "cusparse", "nccl")


def library_package(library, cuda_major):
    """The pip package with CUDA library ``library`` (``"nvrtc"``, ``"cublas"``...)
    for CUDA ``cuda_major``: ``nvidia-cuda-nvrtc-cu12``, ``nvidia-cublas`` (13)."""
    name = "cuda-nvrtc" if library == "nvrtc" else library
    if cuda_major >= 13 and library != "nccl":
        return f"nvidia-{name}"
    return f"nvidia-{name}-cu{cuda_major}"


def _missing_library(exc):
    """The CUDA library that ``exc`` (from CuPy's first kernel or GEMM) says is
    missing, or None: CuPy 14 raises ``DynamicLibNotFoundError`` ("Failure finding
    libnvrtc.so...") or ``ImportError`` ("libcublas.so.12: cannot open...")."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if "libnotfound" not in text and "cannot open shared object" not in text and "failure finding" not in text:
        return None
    return next((lib for lib in _LIBRARIES if f"lib{lib}" in text), None)


def _check_cupy(cupy):
    """Run what the first step needs of CuPy's CUDA libraries: one fused kernel
    (NVRTC compiles it) and one matmul (cuBLAS), ``x * x + 1`` and ``X @ X`` on
    a 2x2 matrix, compared with their known values. Raises BackendError naming
    the package to install where a library is missing (``cupy.is_available()``
    checks the driver only, so without this the first step would fail)."""
    try:
        cuda_major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    except Exception:  # noqa: BLE001 - only names the package below
        cuda_major = 12
    extra = "gpu" if cuda_major < 13 else "gpu-cuda13"
    try:
        x = cupy.asarray(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
        square_plus_one = cupy.fuse(kernel_name="graphdiff_backend_check")(lambda a: a * a + np.float32(1))
        got = (cupy.asnumpy(square_plus_one(x)), cupy.asnumpy(cupy.matmul(x, x)))
    except Exception as exc:  # noqa: BLE001 - turned into a BackendError that says what to do
        library = _missing_library(exc)
        if library is not None:
            package = library_package(library, cuda_major)
            raise BackendError(f"backend 'cupy': CuPy {cupy.__version__} (CUDA {cuda_major}) cannot load the CUDA "
                               f"library {library} ({type(exc).__name__}: {exc}); install it with "
                               f"pip install {package}, or all of CuPy's CUDA libraries with "
                               f"pip install 'graphdiff[{extra}]'") from None
        raise BackendError(f"backend 'cupy': CuPy {cupy.__version__} (CUDA {cuda_major}) failed its first kernel "
                           f"({type(exc).__name__}: {exc}); a driver older than the CUDA version CuPy was built "
                           f"for fails so: {GPU_INSTALL}") from None
    want = (np.array([[2.0, 5.0], [10.0, 17.0]], np.float32), np.array([[7.0, 10.0], [15.0, 22.0]], np.float32))
    if any(not np.array_equal(g, w) for g, w in zip(got, want)):
        raise BackendError(f"backend 'cupy': CuPy {cupy.__version__} computed wrong values in its first kernel "
                           f"and matmul ({got[0].tolist()}, {got[1].tolist()}); its CUDA install is broken")


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
    _check_cupy(cupy)
    return CupyBackend(cupy)


register_backend("numpy", _numpy_backend)
register_backend("cupy", _cupy_backend)
