"""``cupy.cuda`` as far as the engine and its benchmarks use it: streams, devices, runtime queries."""
import contextlib as _contextlib

from .._core import _ALLOCATOR, MemoryPool  # noqa: F401 - cupy.cuda.MemoryPool
from .._ledger import LEDGER as _LEDGER
from . import runtime  # noqa: F401


@_contextlib.contextmanager
def using_allocator(allocator=None):
    """Allocations in the block come from ``allocator(nbytes)`` (e.g. another
    ``MemoryPool().malloc``); None: the default pool."""
    previous = _ALLOCATOR[0]
    _ALLOCATOR[0] = allocator
    try:
        yield
    finally:
        _ALLOCATOR[0] = previous


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0

    def synchronize(self):
        _LEDGER.record("sync")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def use(self):
        return self

    def wait_event(self, event):
        """Later work on this stream waits for ``event`` (one stream here: nothing to wait for)."""

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event


Stream.null = Stream(null=True)
_current = Stream.null


def get_current_stream(device_id=-1):
    return _current


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise RuntimeError(f"stand-in: only device 0 exists, not {self.id}")

    compute_capability = "90"

    def synchronize(self):
        _LEDGER.record("sync")

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __int__(self):
        return self.id

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def get_device_id():
    return 0


def is_available():
    return True


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        import time

        self._time = time
        self._t = None

    def record(self, stream=None):
        self._t = self._time.perf_counter()

    def synchronize(self):
        _LEDGER.record("sync")


def get_elapsed_time(start_event, end_event):
    return (end_event._t - start_event._t) * 1e3
