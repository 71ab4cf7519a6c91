"""A strict CPU stand-in for CuPy, so that CI (which has no GPU) runs the CuPy
backend and counts what a step would cost on a device.

Layout: ``site/`` holds modules named ``cupy`` and ``cupyx`` (``cupyx.scipy``,
``cupyx.distributed``); :func:`activate` takes any real ``cupy`` modules out of
``sys.modules`` and puts ``site/`` first on ``sys.path``, :func:`deactivate`
restores ``sys.modules``, ``sys.path``, the engine's backend cache and its
scratch buffers. The pytest plugin (``tests/cupy_standin/plugin.py``)
activates it around every test marked ``gpu`` wherever no GPU is usable
(:func:`gpu_tests_run_on`: real CuPy installed or not, e.g. CI, which installs
CuPy and NVRTC to compile the kernels but has no GPU), or that asks for the
``cupy_standin`` fixture.

What it enforces (CuPy's rules at its boundary):

* ``cupy.ndarray`` is not a ``numpy.ndarray`` subclass; ``numpy.asarray(d)``
  raises ``TypeError`` ("Implicit conversion to a NumPy array is not allowed");
  ufuncs, ``matmul``, ``where``, ``take``, ``concatenate`` and ``setitem``
  refuse host arrays (``TypeError: Unsupported type <class 'numpy.ndarray'>``);
  ``cupy.asarray`` (host -> device), ``cupy.asnumpy`` and ``.get()`` (device ->
  host) are the only crossings; ``bool()``, ``int()``, ``float()``,
  ``.item()`` of a device value are a device-to-host copy and a sync;
* ``empty`` memory comes from a modelled memory pool and is filled with 0xFF
  bytes (NaN in floats): code that reads before it writes shows;
* ``cupy.fuse`` runs its function as one kernel (ufuncs and arithmetic only:
  views, indexing and reductions inside raise); ``ElementwiseKernel``,
  ``RawKernel`` and friends raise when called (CUDA C cannot run here: such a
  kernel needs a NumPy twin);
* only names CuPy 13/14 has (a subset), plus ``cupy.STANDIN = True``.

What it counts (``ledger()``: a :class:`cupy._ledger.Ledger`; events per call
site, the first frame outside the stand-in): kernel launches with the bytes
they read (the union of the operands' byte ranges) and write, GEMM FLOPs, the
copies CuPy's ``matmul`` makes of operands cuBLAS cannot take (2-D: neither C-
nor F-contiguous; batched: not C-contiguous; an ``out`` not C-contiguous),
host-to-device and device-to-host copies, synchronizations, and new device
allocations (the pool had no free block). ``Ledger.totals()``,
``Ledger.by_site()``, ``Ledger.syncs_before_end()``.
"""
import importlib
import os
import sys

SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
_NAMES = ("cupy", "cupyx")
_saved = []  # stack of (modules, backend cache entry)


def real_cupy_importable():
    """Whether ``import cupy`` finds the real CuPy (installed: with or without a GPU)."""
    if any(m == "cupy" and getattr(sys.modules[m], "STANDIN", False) for m in sys.modules):
        return False
    path = [p for p in sys.path if os.path.abspath(p or ".") != SITE]
    spec = importlib.machinery.PathFinder.find_spec("cupy", path)
    if spec is None:
        return False
    try:
        import cupy  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def _ours(name):
    return name in _NAMES or name.startswith(tuple(n + "." for n in _NAMES))


def activate():
    """Make ``import cupy`` give the stand-in (real CuPy's modules, if imported, are
    set aside until :func:`deactivate`); returns the stand-in module."""
    from graphdiff import backends

    modules = {k: sys.modules.pop(k) for k in list(sys.modules) if _ours(k)}
    _saved.append((modules, backends._CACHE.pop("cupy", None)))
    sys.path.insert(0, SITE)
    import cupy

    ledger().reset()
    return cupy


def deactivate():
    """Undo the latest :func:`activate`."""
    from graphdiff import backends
    from graphdiff.kernels import parallel

    modules, cached = _saved.pop()
    while SITE in sys.path:
        sys.path.remove(SITE)
    for k in [k for k in sys.modules if _ours(k)]:
        del sys.modules[k]
    sys.modules.update(modules)
    backends._CACHE.pop("cupy", None)
    if cached is not None:
        backends._CACHE["cupy"] = cached
    from graphdiff.kernels import device

    parallel.clear_workspace()  # scratch arrays of the stand-in's module
    device.clear()
    for key in [k for k in parallel._zeros if k[0] == "cupy"]:
        del parallel._zeros[key]


_RUN_ON = []  # the decision of gpu_tests_run_on(), made once per process


def gpu_tests_run_on():
    """Where tests marked ``gpu`` run: ``"gpu"`` (real CuPy, whose backend check
    passes: a GPU, its driver and CuPy's CUDA libraries) or ``"standin"``
    (everywhere else: no CuPy, or CuPy without a usable GPU). The environment
    variable ``GRAPHDIFF_GPU_TESTS`` may force ``gpu`` (a GPU session: then
    :class:`RuntimeError` says why the GPU is not usable, rather than letting the
    tests pass on the stand-in) or ``standin``."""
    if not _RUN_ON:
        want = os.environ.get("GRAPHDIFF_GPU_TESTS", "auto")
        if want not in ("auto", "gpu", "standin"):
            raise RuntimeError(f"GRAPHDIFF_GPU_TESTS must be auto, gpu or standin, got {want!r}")
        why = None
        if want != "standin":
            why = _gpu_unusable()
        if want == "gpu" and why:
            raise RuntimeError(f"GRAPHDIFF_GPU_TESTS=gpu, but the GPU is not usable: {why}")
        _RUN_ON.append(("gpu" if why is None and want != "standin" else "standin", why))
    return _RUN_ON[0][0]


def gpu_tests_reason():
    """Why the GPU tests run where they run (a line for pytest's report header)."""
    gpu_tests_run_on()
    where, why = _RUN_ON[0]
    if where == "gpu":
        return "gpu tests: on the GPU (real CuPy)"
    return f"gpu tests: on the CuPy stand-in ({why or 'GRAPHDIFF_GPU_TESTS=standin'})"


def _gpu_unusable():
    """None if the real CuPy backend works here, else why not."""
    if not real_cupy_importable():
        return "CuPy is not installed"
    from graphdiff import backends
    from graphdiff.errors import BackendError

    try:
        backends.get_backend("cupy")
    except BackendError as exc:
        return str(exc)
    return None


def ledger():
    """The active stand-in's ledger."""
    from cupy._ledger import LEDGER

    return LEDGER


class active:
    """``with active() as cupy:`` the stand-in for the block."""

    def __enter__(self):
        return activate()

    def __exit__(self, *exc):
        deactivate()
        return False
