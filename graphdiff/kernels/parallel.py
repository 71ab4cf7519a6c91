"""Threads, scratch buffers and GEMMs shared by the kernels (NumPy; CuPy runs whole arrays).

NumPy releases the GIL inside copies, ufuncs and BLAS calls, so a small
thread pool splits the big passes over the cores (:func:`parallel_for`,
:func:`parallel_blocks`, :func:`parallel_copy`). Scratch arrays come from a
per-thread cache (:func:`workspace`): allocating 50-250 MB afresh costs tens of
milliseconds of page faults per call on a CPU.

GEMMs (:func:`gemm`) are split over the same threads while a compiled program
runs with the BLAS on one thread (:func:`blas_on_one_thread`). OpenBLAS's own
worker threads spin for a long while after each GEMM and take the cores from
the copies and elementwise passes that run between GEMMs; one-threaded BLAS
calls from our pool, whose idle workers block instead, leave them free.
"""

import contextlib
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy

_local = threading.local()
_pool = None
_pool_lock = threading.Lock()
_POOL_PREFIX = "graphdiff-kernels"


class _Cache(dict):
    """One thread's scratch buffers: a dict with identity semantics, so that it
    can sit in a WeakSet."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__


_caches = weakref.WeakSet()  # every live thread's cache, for clear_workspace

# Threads for NumPy copies, elementwise passes and split GEMMs (see gemm).
NUM_THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
PARALLEL_MIN_WORK = 1 << 20  # elements; below this, threads cost more than they save
BLOCK_ELEMENTS = 1 << 18  # elements per cache block (parallel_blocks): ~1 MB of float32


def workspace(xp, tag, shape, dtype):
    """Scratch array of ``shape``/``dtype`` for ``tag``, reused across calls.

    One flat byte buffer per ``(array module, device, tag)`` that only grows, so
    memory is bounded by the largest request per tag. Callers must not return
    it (or a view of it) and must not use one tag twice at the same time.
    Contents are garbage on entry.
    """
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = _Cache()
        with _pool_lock:
            _caches.add(cache)
    # (NumPy has no devices; asking its module for "cuda" goes through its slow __getattr__)
    device = None if xp is numpy else getattr(getattr(xp, "cuda", None), "get_device_id", lambda: None)()
    key = (xp.__name__, device, tag)
    dtype = numpy.dtype(dtype)
    size = 1
    for d in shape:
        size *= int(d)
    nbytes = size * dtype.itemsize
    buf = cache.get(key)
    if buf is None or buf.nbytes < nbytes:
        cache.pop(key, None)  # free the old one before allocating the new one
        if xp is numpy:
            buf = xp.empty(max(nbytes, 1), dtype=xp.uint8)
        else:
            from .device import long_lived

            with long_lived(xp):  # kept across steps: out of the way of a step's own blocks
                buf = xp.empty(max(nbytes, 1), dtype=xp.uint8)
        cache[key] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def clear_workspace():
    """Release all threads' scratch buffers (e.g. after a large one-off batch);
    they are re-created on demand."""
    with _pool_lock:
        for cache in list(_caches):
            cache.clear()


def parallel_for(xp, n, fn, work):
    """Call ``fn(lo, hi)`` on chunks covering ``range(n)``.

    NumPy copies and ufuncs run on one core while releasing the GIL (so do the
    parts of a split GEMM, see :func:`gemm`); splitting the big copies and
    strided adds over a small thread pool makes them ~1.7x faster on two cores.
    Chunks must touch disjoint memory. Other array modules (CuPy) run
    ``fn(0, n)`` at once, and so does ``work`` (elements) below PARALLEL_MIN_WORK.
    """
    global _pool
    t = min(NUM_THREADS, n)
    nested = threading.current_thread().name.startswith(_POOL_PREFIX)  # never wait on our own pool
    if xp.__name__ != "numpy" or t < 2 or work < PARALLEL_MIN_WORK or nested:
        fn(0, n)
        return
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, NUM_THREADS - 1), thread_name_prefix=_POOL_PREFIX)
    bounds = [n * i // t for i in range(t + 1)]
    futures = [_pool.submit(fn, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    try:
        fn(bounds[0], bounds[1])  # the first chunk runs on the calling thread
    finally:
        for f in futures:
            f.result()


def parallel_blocks(xp, n, item_size, fn, scale=1):
    """``fn(lo, hi)`` over blocks of items (examples) covering ``range(n)``.

    Threads split ``range(n)`` and each walks its share a few items at a time
    (about ``scale * BLOCK_ELEMENTS`` elements, items of ``item_size``), so that a
    chain of elementwise passes over a block runs from cache instead of memory.
    Other array modules (CuPy) get one call ``fn(0, n)``.
    """
    if xp.__name__ != "numpy":
        fn(0, n)
        return
    per = max(1, scale * BLOCK_ELEMENTS // max(1, item_size))

    def walk(lo, hi):
        for b in range(lo, hi, per):
            fn(b, min(b + per, hi))

    parallel_for(xp, n, walk, n * item_size)


def _split_axis(shape, axes):
    """The axis among ``axes`` with the largest extent: the one to split work on."""
    return max(axes, key=lambda a: shape[a])


def _take(a, axis, lo, hi):
    """``a[..., lo:hi, ...]`` along ``axis``."""
    return a[(slice(None),) * axis + (slice(lo, hi),)]


def parallel_copy(xp, dst, src, axes=(0, 1, 2, 3)):
    """``dst[...] = src`` with the work split along the longest of ``axes``."""
    ax = _split_axis(dst.shape, axes)

    def copy(lo, hi):
        _take(dst, ax, lo, hi)[...] = _take(src, ax, lo, hi)

    parallel_for(xp, dst.shape[ax], copy, dst.size)


_zeros = {}  # (array module, dtype) -> a zero-filled vector, only ever read


def zeros(xp, n, dtype):
    """A read-only vector of ``n`` zeros. ``maximum(x, zeros)`` is NumPy's fast
    ReLU: against a broadcast scalar ``maximum`` misses its SIMD loop (~4x slower)."""
    key = (xp.__name__, numpy.dtype(dtype).str)
    z = _zeros.get(key)
    if z is None or z.size < n:
        z = _zeros[key] = xp.zeros(max(n, BLOCK_ELEMENTS), dtype)
    return z[:n]


# ---------------------------------------------------------------- GEMMs

GEMM_SPLIT_MIN_WORK = 1 << 22  # multiply-adds; smaller products run whole on the calling thread
_gemm_split = False  # True while blas_on_one_thread() is active
_blas = None  # threadpoolctl's view of the BLAS libraries, made on first use
_blas_lock = threading.Lock()
# Blocks inside blas_on_one_thread (threads running programs, nested blocks): the
# BLAS's thread count is changed by the first in and restored by the last out,
# never while another thread's GEMM runs.
_blas_users = 0
_blas_saved = []


def gemm(xp, a, b, out=None):
    """``a @ b`` with ``matmul`` semantics (2-D or batched), into ``out`` when given.

    Under :func:`blas_on_one_thread`, a NumPy product of at least
    ``GEMM_SPLIT_MIN_WORK`` multiply-adds is split along its longer output
    axis (rows of ``a`` or columns of ``b``) into one single-threaded GEMM per
    thread: as fast as the BLAS's own threading (measured 131-156 against
    98-161 GFLOP/s at AlexNet's conv shapes), without the spinning workers.
    """
    if xp is not numpy:
        from . import device

        return device.gemm(xp, a, b, out=out)
    if not _gemm_split or a.ndim < 2 or b.ndim < 2:
        return xp.matmul(a, b, out=out)
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = numpy.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if M * K * N * int(numpy.prod(batch, dtype=numpy.int64)) < GEMM_SPLIT_MIN_WORK:
        return xp.matmul(a, b, out=out)
    if out is None:
        out = xp.empty(batch + (M, N), dtype=numpy.result_type(a, b))
    if M >= N:
        def part(lo, hi):
            xp.matmul(a[..., lo:hi, :], b, out=out[..., lo:hi, :])
    else:
        def part(lo, hi):
            xp.matmul(a, b[..., lo:hi], out=out[..., lo:hi])
    parallel_for(xp, max(M, N), part, PARALLEL_MIN_WORK)
    return out


def gemms_split():
    """Whether :func:`gemm` splits products over the kernel threads right now
    (inside :func:`blas_on_one_thread`), for kernels whose best GEMM layout depends on it."""
    return _gemm_split


def _blas_controller():
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas = ThreadpoolController().select(user_api="blas")
        except Exception:  # noqa: BLE001 - no threadpoolctl or an unknown BLAS: leave it alone
            _blas = False
    return _blas or None


@contextlib.contextmanager
def blas_on_one_thread():
    """Run the block with the BLAS on one thread and :func:`gemm` splitting the
    big products over the kernel threads. A compiled program's run is such a
    block on NumPy. Re-entrant and shared by concurrent threads; the BLAS's thread
    count is restored when the last block exits.
    Where threadpoolctl cannot drive the BLAS, where there is one core, or where
    the BLAS has more threads than the kernels (``NUM_THREADS``), nothing changes."""
    global _gemm_split, _blas_saved, _blas_users
    blas = _blas_controller() if NUM_THREADS > 1 else None
    libs = [] if blas is None else blas.lib_controllers
    with _blas_lock:
        if _blas_users:  # nested, or another thread's program is running: already set
            enter = True
        else:
            counts = [lib.num_threads for lib in libs]
            # Only where the kernel threads are as many as the BLAS's: on a bigger machine
            # (NUM_THREADS is capped at 8) the BLAS's own threading keeps all the cores.
            enter = bool(counts) and max(counts) <= NUM_THREADS
            if enter:
                for lib in libs:
                    lib.set_num_threads(1)
                _gemm_split, _blas_saved = True, counts
        if enter:
            _blas_users += 1
    try:
        yield
    finally:
        if enter:
            with _blas_lock:
                _blas_users -= 1
                if not _blas_users:  # the last one out restores the BLAS's threads
                    _gemm_split = False
                    for lib, count in zip(libs, _blas_saved):
                        lib.set_num_threads(count)
