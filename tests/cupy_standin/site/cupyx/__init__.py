"""``cupyx`` of the CuPy stand-in: ``scatter_add`` and ``distributed``."""
from cupy import _core


def scatter_add(a, slices, value):
    """``a[slices] += value`` with repeated indices summed (CuPy: float atomics, so the
    order of the additions, and the rounding, differ from run to run on a GPU)."""
    _core.add.at(a, slices, value)
