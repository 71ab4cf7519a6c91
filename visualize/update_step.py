"""One SGD step on the batch shown, for the explorer's update view.

The rule is :func:`graphdiff.optim.sgd_momentum`'s (the AlexNet paper's)::

    v  <- momentum * v - lr * (weight_decay * w + dE/dw)
    w' <- w + v

with ``v`` the momentum buffer before the step (zero for a fresh optimizer,
the training step's own buffer when it is given), ``dE/dw`` the gradient of
the batch shown (as the explorer computed it: dropout off). For each
parameter the view shows ``w``, ``w'`` and ``v`` (statistics, histograms, the
filters of a convolution) and the update/weight ratio ``||v|| / ||w||``
(about 1e-3 is the usual rule of thumb for a healthy learning rate).
"""
from __future__ import annotations

import inspect

import numpy as np

import graphdiff as gd
from graphdiff.backends import to_host_array
from graphdiff.optim import sgd_momentum

_DEFAULTS = {k: v.default for k, v in inspect.signature(sgd_momentum).parameters.items()
             if k in ("lr", "momentum", "weight_decay")}


def sgd_settings(sgd=None):
    """``(lr, momentum, weight_decay, velocities, source)`` from ``sgd``: a
    training step (``models.alexnet.TrainStep``: its optimizer), a
    :class:`graphdiff.optim.SGDState` (its rate, momentum, decay and momentum
    buffers), a dict with some of ``lr``, ``momentum``, ``weight_decay``, or
    None (``sgd_momentum``'s defaults, the training command's too)."""
    state = getattr(sgd, "optimizer", sgd)
    if sgd is None:
        return _DEFAULTS["lr"], _DEFAULTS["momentum"], _DEFAULTS["weight_decay"], {}, "sgd_momentum's defaults"
    if isinstance(state, dict):
        unknown = set(state) - set(_DEFAULTS)
        if unknown:
            raise ValueError(f"explore: sgd= takes lr, momentum and weight_decay, not {', '.join(sorted(unknown))}")
        s = {**_DEFAULTS, **state}
        return float(s["lr"]), float(s["momentum"]), float(s["weight_decay"]), {}, "as given"
    if all(hasattr(state, k) for k in ("lr", "momentum", "weight_decay", "velocities")):
        return (float(state.lr), float(state.momentum), float(state.weight_decay), dict(state.velocities),
                "the training step's optimizer")
    raise TypeError(f"explore: sgd= must be a training step, an SGDState or a dict, got {type(sgd).__name__}")


def sgd_step(w, g, v_prev, lr, momentum, weight_decay):
    """``(v, w')`` of one step, in the parameter's dtype as the compiled step computes it."""
    w = np.asarray(w)
    t = w.dtype.type
    v = np.multiply(w, t(weight_decay))  # in place from here: AlexNet's fc6 has 38 M weights
    v += np.asarray(g, dtype=w.dtype)
    v *= -t(lr)
    if v_prev is not None:
        v += np.asarray(v_prev, dtype=w.dtype) * t(momentum)
    return v, w + v


def loss_after(loss, nodes, values, new_values, training=False):
    """The loss on the same batch with the parameters set to ``new_values``
    (``{Variable: array}``): one compiled run, the variables restored after."""
    placeholders = [n for n in nodes if n.kind == "placeholder"]
    if any(id(p) not in values for p in placeholders):
        return None
    program = gd.compile(loss, inputs=placeholders, training=training)
    saved = {v: v.value for v in new_values}
    try:
        for v, a in new_values.items():
            v.value = a
        out = program(*[values[id(p)] for p in placeholders])
    finally:
        for v, a in saved.items():
            v._value = a  # the very array it held (nothing else sees a copy)
    return float(np.asarray(to_host_array(out)))
