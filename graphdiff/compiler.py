"""Compile a graph into a program and run it.

``compile(outputs, inputs, updates)`` runs the passes of :mod:`graphdiff.passes`
(prune, simplify, rewrite, fusion; a schedule after each), then plans the
program's instructions (:mod:`graphdiff.planning`) and, on its first call with
given input shapes, its memory (:mod:`graphdiff.memory`); calling it runs the
instructions with the backend's array module, NumPy or CuPy
(:mod:`graphdiff.execution`); :mod:`graphdiff.profiling` times them.

A program may be called from several threads at once: each thread runs with
buffers of its own (recorded on its first call), and a program with updates
runs one call at a time (a step reads the variables that the other writes).
"""
import threading

import numpy as np

from .backends import get_backend
from .errors import CompileArgumentError, InputError, ShapeError
from .execution import Execution
from .graph import PlaceholderOp, Tensor, Variable, fmt_shape, gc_paused
from .kernels import choice as kernel_choice
from .memory import MemoryPlan
from .passes import PassRecord, _check_order, run_passes  # noqa: F401 - the entries of Program.passes; the check
from .planning import Planning, _input_checks
from .profiling import Profiling


@gc_paused()  # deep graphs: see graph.gc_paused
def compile(outputs, inputs=(), updates=None, backend=None, training=True, seed=0, optimize=True,  # noqa: A001
            fuse=None, kernels=None):
    """Compile ``outputs`` (a tensor or a list) into a callable.

    ``inputs`` are placeholders fed positionally (or by name as keywords), a
    list or a single placeholder; ``updates`` a list of ``(variable,
    new_value)`` pairs applied after each run, or a dict ``{variable:
    new_value}``, one pair, or an optimizer's ``(updates, state)`` as returned
    by :func:`graphdiff.optim.sgd_momentum`; ``backend`` names where the arrays
    live: ``"numpy"`` or ``"cupy"`` (default: ``"numpy"``, or the name set by
    :func:`graphdiff.default_backend` around the call);
    ``training=False`` turns dropout off; ``seed`` seeds the program's random
    generator (dropout masks); ``optimize=False`` skips merging, folding and
    fusing; ``fuse=False`` skips only the fusion of elementwise chains;
    ``kernels`` picks the convolutions' kernel library on NumPy: ``"auto"``
    (measured per layer at the first run), ``"numpy"`` or ``"onednn"``; default
    ``GRAPHDIFF_KERNELS`` or ``"auto"`` (see :mod:`graphdiff.kernels.choice`).
    """
    if isinstance(inputs, Tensor):
        inputs = [inputs]
    return Program(outputs, inputs, _update_pairs(updates), backend, training, seed, optimize,
                   optimize if fuse is None else fuse, kernels)


def _update_pairs(updates):
    """``compile``'s ``updates`` as a list of ``(variable, new_value)`` pairs: from a
    list or tuple of pairs, a dict, one pair, or an optimizer's ``(updates, state)``."""
    expected = ("a list of (variable, new_value) pairs or a dict {variable: new_value} "
                "(an optimizer's (updates, state) also works)")
    if updates is None:
        return []
    if (isinstance(updates, tuple) and len(updates) == 2 and isinstance(updates[0], (list, tuple, dict))
            and not isinstance(updates[1], (Tensor, list, tuple))):
        updates = updates[0]  # (updates, state), e.g. from optim.sgd_momentum
    if isinstance(updates, dict):
        return list(updates.items())
    if isinstance(updates, tuple) and len(updates) == 2 and isinstance(updates[0], Variable) \
            and isinstance(updates[1], Tensor):
        return [updates]  # one (variable, new_value) pair
    if isinstance(updates, (Tensor, str, bytes, set, frozenset)) or not hasattr(updates, "__iter__"):
        raise CompileArgumentError(f"compile: updates must be {expected}, got {type(updates).__name__}")
    pairs = []
    for k, pair in enumerate(list(updates)):  # also a generator or zip(variables, values)
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(t, Tensor) for t in pair)):
            if not isinstance(pair, (list, tuple)):
                got = type(pair).__name__
            elif len(pair) != 2:
                got = f"a {len(pair)}-tuple"
            else:
                got = f"a pair of ({', '.join(type(t).__name__ for t in pair)}), not of Tensors"
            raise CompileArgumentError(f"compile: updates[{k}] is {got}; updates must be {expected}")
        pairs.append(tuple(pair))
    return pairs


class Program(Planning, MemoryPlan, Execution, Profiling):
    """A compiled graph. Call it with the input arrays; it returns the outputs
    (a single array for a single output tensor, else a list).

    ``passes``: a :class:`~graphdiff.passes.PassRecord` ``(name, nodes)`` per
    compiler pass (``rules`` on the rewrite pass); ``nodes``: the schedule.
    Its concerns live beside it: instructions (:class:`~graphdiff.planning.Planning`),
    buffers (:class:`~graphdiff.memory.MemoryPlan`), running
    (:class:`~graphdiff.execution.Execution`), timings and kernels
    (:class:`~graphdiff.profiling.Profiling`)."""

    def __init__(self, outputs, inputs, updates, backend, training, seed, optimize, fuse, kernels=None):
        self.backend = get_backend(backend)
        self.kernel_mode = kernel_choice.resolve_mode(kernels)
        self.single = isinstance(outputs, Tensor)
        self.outputs = [outputs] if self.single else _output_list(outputs)
        self.inputs = list(inputs)
        self.updates = list(updates)
        self.training = training
        self.rng = np.random.default_rng(seed)
        self.last_profile = None  # [(node, seconds)] of the latest profile() run
        self._thread = threading.local()  # per calling thread: memory plans, profile timings
        # A step reads the variables another step writes: calls with updates take turns.
        self._step_lock = threading.Lock() if self.updates else None
        self._check_signature()

        roots = self.outputs + [v for _, v in self.updates]
        # The graph after each pass, by pass name (for the explorer's compiler view).
        self.passes, order, roots = run_passes(roots, optimize, fuse,
                                               kernel_choice.offers(self.kernel_mode, self.backend.name))
        self.nodes = order  # the scheduled graph, for inspection and diagrams
        self._input_checks = _input_checks(order, self.inputs)

        needed = {id(n) for n in order if isinstance(n.op, PlaceholderOp)}
        fed = {id(p) for p in self.inputs}
        missing = [n.name for n in order if id(n) in needed - fed]
        if missing:
            raise InputError(f"compile: the outputs need placeholder(s) {', '.join(map(repr, missing))}, "
                             f"which are not among the inputs")
        self._plan(order, roots)

    # ------------------------------------------------------------------ build
    def _check_signature(self):
        for p in self.inputs:
            if not isinstance(p, Tensor) or not isinstance(p.op, PlaceholderOp):
                raise CompileArgumentError(f"compile: inputs must be placeholders, got {p!r}")
        if len({id(p) for p in self.inputs}) != len(self.inputs):
            raise InputError("compile: an input placeholder is listed twice")
        targets = set()
        for pair in self.updates:
            var, value = pair
            if not isinstance(var, Variable):
                raise CompileArgumentError(f"compile: update targets must be variables, got {var!r}")
            if id(var) in targets:
                raise InputError(f"compile: variable {var.name!r} is updated twice")
            targets.add(id(var))
            if value.shape != var.shape:
                raise ShapeError(f"compile: update of {var.name} {fmt_shape(var.shape)} with "
                                 f"{value.name} {fmt_shape(value.shape)}: shapes differ")

    # ------------------------------------------------------------------ state
    def get_rng_state(self):
        """The random generator's state (JSON-able), for checkpoints."""
        return self.rng.bit_generator.state

    def set_rng_state(self, state):
        self.rng.bit_generator.state = state


def _output_list(outputs):
    """``compile``'s outputs as a list of tensors; anything else (None, an array,
    a number) is a :class:`CompileArgumentError` naming its position."""
    if isinstance(outputs, (str, bytes)) or hasattr(outputs, "shape") or not hasattr(outputs, "__iter__"):
        raise CompileArgumentError(f"compile: outputs must be a Tensor or a list of Tensors, got {_what(outputs)}")
    outputs = list(outputs)
    for k, out in enumerate(outputs):
        if not isinstance(out, Tensor):
            hint = "; make an array a graph value with gd.constant" if hasattr(out, "shape") else ""
            raise CompileArgumentError(f"compile: output {k} is {_what(out)}, not a Tensor{hint}")
    return outputs


def _what(value):
    text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return "None" if value is None else f"a {type(value).__name__} {text}"
