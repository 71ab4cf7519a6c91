"""Shared test set-up: GPU tests (marked ``gpu``) are skipped where CuPy or a GPU is missing;
fixtures several test files use. Convolutions run NumPy's kernels unless
``GRAPHDIFF_KERNELS`` says otherwise (deterministic: no choice by timing);
tests/test_onednn.py forces oneDNN's, and ``GRAPHDIFF_KERNELS=onednn pytest``
runs the whole suite on them."""
import os

import pytest

os.environ.setdefault("GRAPHDIFF_KERNELS", "numpy")

import graphdiff as gd


def gpu_available():
    try:
        gd.get_backend("cupy")
        return True
    except gd.BackendError:
        return False


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and an NVIDIA GPU (pip install '.[gpu]')")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
