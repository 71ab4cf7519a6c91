"""Shared test set-up. Tests marked ``gpu`` run on the real CuPy backend where
its check passes (CuPy, its CUDA libraries and a GPU: ``pytest -m gpu`` on a GPU
machine), and on the strict CuPy stand-in (``tests/cupy_standin``) everywhere
else, CuPy installed or not (CI installs it to compile the kernels with NVRTC
but has no GPU): they never skip. ``GRAPHDIFF_GPU_TESTS=gpu`` makes them fail
where the GPU is not usable (a GPU session), ``=standin`` puts them on the
stand-in; pytest's header says where they ran. A test (or test
module) marked ``each_backend`` runs twice: with ``gd.default_backend("numpy")``
and with ``gd.default_backend("cupy")``, the latter marked ``gpu`` (so every
program it compiles without a ``backend`` argument, the gradient checks' too,
runs on the stand-in in CI and on the GPU under ``pytest -m gpu``); a test there
that is about NumPy-only internals says so with ``numpy_only(reason)``. Convolutions run
NumPy's kernels unless ``GRAPHDIFF_KERNELS`` says otherwise (deterministic: no
choice by timing); tests/test_onednn.py forces oneDNN's, and
``GRAPHDIFF_KERNELS=onednn pytest`` runs the whole suite on them. Also
fixtures several test files use."""
import os
import sys

import pytest

os.environ.setdefault("GRAPHDIFF_KERNELS", "numpy")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for cupy_standin

import cupy_standin  # noqa: E402

import graphdiff as gd  # noqa: E402

pytest_plugins = ["cupy_standin.plugin"]


BACKEND_RUNS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]


def pytest_generate_tests(metafunc):
    each = metafunc.definition.get_closest_marker("each_backend")
    only = metafunc.definition.get_closest_marker("numpy_only")
    if only is not None and not only.kwargs.get("reason"):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: numpy_only needs reason=")
    gpu = metafunc.definition.get_closest_marker("gpu")  # a gpu test picks its backends itself
    if each is not None and only is None and gpu is None:
        metafunc.parametrize("array_backend", BACKEND_RUNS, indirect=True)


@pytest.fixture(autouse=True)
def array_backend(request):
    """The default backend of the test's programs: ``"numpy"`` or ``"cupy"`` in a
    test marked ``each_backend`` (parametrized above), else None (compile's own default)."""
    name = getattr(request, "param", None)
    if name is None:
        yield None
        return
    with gd.default_backend(name):
        yield name


class DLPackOnly:
    """An array reachable only through the DLPack protocol (as a JAX array is
    to graphdiff): no ``__array__``, no NumPy or CuPy type."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


@pytest.fixture
def dlpack_only():
    """``dlpack_only(array)`` wraps an array in :class:`DLPackOnly`."""
    return DLPackOnly
