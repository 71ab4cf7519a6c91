"""Shared test set-up: GPU tests (marked ``gpu``) are skipped where CuPy or a GPU is missing."""
import pytest

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
