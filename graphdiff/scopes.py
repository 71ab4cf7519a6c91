"""Name scopes and the build context: the thread's stack of scope names
(``gd.scope("conv1")``) and whether the nodes being built are backward nodes
(inside ``grad``). :mod:`graphdiff.graph` re-exports these names.
"""
from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def _ctx():
    if not hasattr(_state, "scopes"):
        _state.scopes = []
        _state.backward = 0
    return _state


@contextlib.contextmanager
def scope(name):
    """Group the nodes built inside into a named scope (a layer), e.g.
    ``with gd.scope("conv1"): ...``. Scopes nest as ``"block/conv1"``; diagrams
    and summaries cluster and total by scope."""
    ctx = _ctx()
    ctx.scopes.append(str(name))
    try:
        yield "/".join(ctx.scopes)
    finally:
        ctx.scopes.pop()


def current_scope():
    return "/".join(_ctx().scopes)


@contextlib.contextmanager
def _in_scope(full_name, backward):
    """Replace the scope stack (used by ``grad`` to put gradient nodes beside
    the forward node they come from) and mark the nodes built as backward."""
    ctx = _ctx()
    saved = ctx.scopes
    ctx.scopes = [full_name] if full_name else []
    ctx.backward += bool(backward)
    try:
        yield
    finally:
        ctx.scopes = saved
        ctx.backward -= bool(backward)
