"""``cupy.cuda.runtime`` queries, answered for one pretend device."""
from .._ledger import LEDGER as _LEDGER


class CUDARuntimeError(RuntimeError):
    pass


def getDeviceCount():  # noqa: N802 - CuPy's names
    return 1


def getDeviceProperties(device):  # noqa: N802
    return {"name": b"CuPy stand-in (NumPy on the CPU)", "totalGlobalMem": 80 << 30, "multiProcessorCount": 1,
            "major": 9, "minor": 0}


def runtimeGetVersion():  # noqa: N802
    return 13000


def driverGetVersion():  # noqa: N802
    return 13000


def deviceSynchronize():  # noqa: N802
    _LEDGER.record("sync")
