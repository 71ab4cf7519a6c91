"""Shared test set-up. Tests marked ``gpu`` run on the real CuPy backend where
CuPy and a GPU are present (``pytest -m gpu`` on a GPU machine), and on the
strict CuPy stand-in (``tests/cupy_standin``) where CuPy does not import, as
in CI; where CuPy imports but finds no GPU they are skipped. Convolutions run
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


def gpu_available():
    try:
        gd.get_backend("cupy")
        return True
    except gd.BackendError:
        return False


def pytest_collection_modifyitems(config, items):
    if not cupy_standin.real_cupy_importable() or gpu_available():
        return  # the stand-in (no CuPy) or the real thing
    skip = pytest.mark.skip(reason="CuPy imports but finds no usable NVIDIA GPU")
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
