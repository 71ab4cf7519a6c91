"""Optimizers as graph updates.

An optimizer here does not run anything: it builds, from a loss and its
parameters, the list of ``(variable, new_value)`` pairs that
:func:`graphdiff.compile` applies after each run. One compiled program is
therefore one training step, and its optimizer state (momentum buffers, the
learning rate) lives in ordinary variables that can be read, assigned and
checkpointed.

SGD with momentum and weight decay, the AlexNet paper's rule (section 5)::

    v <- momentum * v - weight_decay * lr * w - lr * dE/dw
    w <- w + v

With a fixed learning rate this equals PyTorch's ``torch.optim.SGD(params,
lr, momentum, weight_decay)`` (no dampening, no Nesterov), whose buffer is
``b <- momentum * b + (dE/dw + weight_decay * w)`` and step ``w <- w - lr * b``:
``v = -lr * b``. (When the learning rate changes the two differ: the paper's
``v`` carries the old rate's steps, PyTorch's ``b`` is rescaled by the new one.)
Weight decay applies to every parameter, biases included, as in the paper.
"""
import numpy as np

from .autodiff import grad
from .graph import Variable, scope, variable
from .ops import cast


class SGDState:
    """The optimizer's variables: ``lr`` (a scalar variable, so the rate can
    change between steps without recompiling) and ``velocities`` (name ->
    momentum buffer ``v``, the shape of its parameter, starting at zero)."""

    def __init__(self, lr_variable, lr, velocities, grads, momentum, weight_decay):
        self.lr_variable = lr_variable
        self.velocities = velocities
        self.grads = grads  # name -> gradient node (for diagrams of the backward graph)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self._lr = float(lr)

    @property
    def lr(self):
        """The learning rate as set (a Python float; the variable holds it in float32)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self.lr_variable.value = np.asarray(value, dtype=self.lr_variable.dtype)
        self._lr = float(value)


def sgd_momentum(loss, params, lr=0.01, momentum=0.9, weight_decay=5e-4, reduce_gradients=None):
    """Updates for one step of SGD with momentum and weight decay.

    ``params`` is a dict ``name -> Variable`` (or a list of variables, named by
    their ``.name``). ``reduce_gradients`` maps ``{name: gradient}`` to the
    gradients the updates use (data-parallel training: their sum over the
    ranks, :class:`graphdiff.distributed.GradientReducer`). Returns ``(updates, state)``: ``updates`` the list of
    ``(variable, new_value)`` pairs for ``compile(..., updates=updates)`` (each
    parameter and each momentum buffer), ``state`` an :class:`SGDState`.
    """
    if not isinstance(params, dict):
        params = {p.name: p for p in params}
    for name, p in params.items():
        if not isinstance(p, Variable):
            raise TypeError(f"sgd_momentum: parameter {name!r} is not a variable: {p!r}")
    names = list(params)
    grads = grad(loss, [params[n] for n in names])
    if reduce_gradients is not None:
        reduced = reduce_gradients(dict(zip(names, grads)))
        grads = [reduced[n] for n in names]
    with scope("sgd"):
        lr_var = variable(np.asarray(lr, dtype=np.float32), name="lr")
        updates, velocities = [], {}
        for name, g in zip(names, grads):
            w = params[name]
            v = variable(np.zeros(w.shape, w.dtype), name=f"v_{name.replace('/', '_')}", copy=False)
            step_lr = lr_var if w.dtype == lr_var.dtype else cast(lr_var, w.dtype)
            # v <- momentum*v - lr*(weight_decay*w + g); Python floats take w's dtype
            new_v = v * float(momentum) - step_lr * (w * float(weight_decay) + g)
            new_v.name = f"{v.name}_next"  # diagrams and fused expressions read better
            updates.append((v, new_v))
            updates.append((w, w + new_v))
            velocities[name] = v
    return updates, SGDState(lr_var, lr, velocities, dict(zip(names, grads)), momentum, weight_decay)

