"""``cupyx`` of the CuPy stand-in: ``scatter_add``, ``empty_pinned`` and ``distributed``."""
from cupy import _core


def scatter_add(a, slices, value):
    """``a[slices] += value`` with repeated indices summed (CuPy: float atomics, so the
    order of the additions, and the rounding, differ from run to run on a GPU)."""
    _core.add.at(a, slices, value)


def empty_pinned(shape, dtype=float, order="C"):
    """Page-locked host memory (CuPy: a NumPy array over pinned memory; here plain NumPy)."""
    import numpy

    return numpy.empty(shape, dtype, order)
