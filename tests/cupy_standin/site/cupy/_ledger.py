"""What the stand-in counts, per call site (the first frame outside the stand-in).

Every device event is appended to ``LEDGER.events`` as ``(kind, site, amounts)``:

* ``launch``: one kernel; ``name``, ``read`` and ``written`` bytes, ``flops``
  (GEMMs: 2*M*N*K per product). ``read`` is the union of the byte ranges of
  the operands in device memory (views of one buffer read through the cache
  count once), ``written`` the bytes of the outputs.
* ``matmul_copy``: an operand (or output) that CuPy's ``matmul`` copies because
  cuBLAS cannot take its layout; ``bytes`` copied (the copy's launch is counted too).
* ``h2d`` / ``d2h``: host-to-device / device-to-host copies (``bytes``).
* ``sync``: the host waits for the device (explicit synchronize, a D2H copy,
  ``bool()``/``int()``/``float()``/``item()`` of a device value).
* ``alloc``: a new device allocation (the memory pool had no free block);
  ``bytes``. Pool hits are not events.
"""
import collections
import contextlib
import os
import sys
import threading

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../site


class Ledger:
    def __init__(self):
        self.events = []
        self._paused = threading.local()

    def reset(self):
        """Forget every event (the pool keeps its blocks)."""
        self.events = []

    @contextlib.contextmanager
    def paused(self):
        """The calling thread's events in this block are not recorded (a test's
        own read-back); other threads' (a loader's uploads) still are."""
        self._paused.on = True
        try:
            yield
        finally:
            self._paused.on = False

    def record(self, kind, **amounts):
        if not getattr(self._paused, "on", False):
            self.events.append((kind, call_site(), amounts))

    # --------------------------------------------------------------- summaries
    def totals(self):
        """``{"launches", "read", "written", "traffic", "flops", "matmul_copies",
        "matmul_copy_bytes", "h2d", "h2d_bytes", "d2h", "d2h_bytes", "syncs",
        "syncs_before_end", "allocs", "alloc_bytes"}`` over the recorded events."""
        t = collections.Counter({k: 0 for k in ("launches", "read", "written", "flops", "matmul_copies",
                                                 "matmul_copy_bytes", "h2d", "h2d_bytes", "d2h", "d2h_bytes",
                                                 "syncs", "allocs", "alloc_bytes")})
        for kind, _, a in self.events:
            _add(t, kind, a)
        t["traffic"] = t["read"] + t["written"]
        t["syncs_before_end"] = self.syncs_before_end()
        return dict(t)

    def by_site(self):
        """``{site: Counter}`` with the same keys as :meth:`totals`."""
        sites = collections.defaultdict(collections.Counter)
        for kind, site, a in self.events:
            _add(sites[site], kind, a)
        for c in sites.values():
            c["traffic"] = c["read"] + c["written"]
        return dict(sites)

    def syncs_before_end(self):
        """Synchronizations followed by a later kernel launch: the host stalled
        while work was still to be queued (a sync at the very end costs nothing)."""
        last_launch = max((i for i, (k, _, _) in enumerate(self.events) if k == "launch"), default=-1)
        return sum(1 for i, (k, _, _) in enumerate(self.events) if k == "sync" and i < last_launch)

    def sites_of(self, kind):
        """Call sites of the events of ``kind``, with their counts."""
        return collections.Counter(site for k, site, _ in self.events if k == kind)


def _add(counter, kind, a):
    if kind == "launch":
        counter["launches"] += 1
        counter["read"] += a.get("read", 0)
        counter["written"] += a.get("written", 0)
        counter["flops"] += a.get("flops", 0)
    elif kind == "matmul_copy":
        counter["matmul_copies"] += 1
        counter["matmul_copy_bytes"] += a["bytes"]
    elif kind in ("h2d", "d2h"):
        counter[kind] += 1
        counter[kind + "_bytes"] += a["bytes"]
    elif kind == "sync":
        counter["syncs"] += 1
    elif kind == "alloc":
        counter["allocs"] += 1
        counter["alloc_bytes"] += a["bytes"]


def call_site():
    """``"path:line (function)"`` of the innermost frame outside the stand-in."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_HERE):
        f = f.f_back
    if f is None:
        return "?"
    path = f.f_code.co_filename
    try:
        path = os.path.relpath(path)
    except ValueError:
        pass
    return f"{path}:{f.f_lineno} ({f.f_code.co_name})"


LEDGER = Ledger()
