"""Walks over a graph: the topological order, and pausing the garbage collector
while ``grad`` and ``compile`` build and walk large graphs.
:mod:`graphdiff.graph` re-exports both names.
"""
from __future__ import annotations

import contextlib
import gc
import threading

_gc_lock = threading.Lock()
_gc_pauses = 0  # threads inside gc_paused()
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector for the block (``grad`` and ``compile``).

    They build hundreds of thousands of nodes at a time on deep graphs; each
    full collection walks every live object again, which made them two to
    three times slower on 30,000- to 100,000-node chains. The nodes form no cycles (inputs point back only), so
    reference counting frees them anyway. The first block in pauses, the last
    out resumes (if it was on)."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if not _gc_pauses:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if not _gc_pauses and _gc_was_enabled:
                gc.enable()


def toposort(outputs):
    """Every node the outputs depend on, inputs before users. Iterative, so a
    10,000-deep chain needs no recursion; shared nodes appear once."""
    from .graph import Tensor  # here: graph imports this module

    order, seen = [], set()
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    stack = [(o, False) for o in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for i in reversed(node.inputs):
            if id(i) not in seen:
                stack.append((i, False))
    return order
