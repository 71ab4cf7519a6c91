"""The kernel of a fused elementwise chain (:class:`graphdiff.fusion.FusedElementwise`).

``program`` is a tuple of steps ``(name, args)``; an arg ``("in", k)`` is the
k-th input, ``("t", j)`` the result of step j; the last step is the output.
``ops`` holds each step's op, which evaluates it: ``op.block(xp, *values,
out=)`` on arrays or blocks of them, ``op.fused(xp, value_type, *values)``
inside ``cupy.fuse`` (each elementwise op declares both beside its forward, see
:mod:`graphdiff.ops.elementwise`). ``extra_outputs`` (step indices) are further
results, returned after the last step's in a tuple.

On NumPy the arrays are walked in cache-sized blocks split over threads
(NumPy's ufuncs release the GIL), evaluating the whole expression per block:
each operand is read once and the result written once. On a GPU the program
is one kernel (:func:`graphdiff.kernels.device.elementwise_program`).
"""
import numpy as np

from . import device
from .parallel import BLOCK_ELEMENTS, parallel_blocks, workspace


class StepOps:
    """The ops of a program's steps by name, for the device kernel (hashable by the
    ops' keys, so equal programs share one compiled kernel)."""

    def __init__(self, program, ops):
        self.by_name = {name: op for (name, _), op in zip(program, ops)}
        self._key = tuple(sorted((name, op.key()) for name, op in self.by_name.items()))

    def __call__(self, xp, name, vals, value_type):
        return self.by_name[name].fused(xp, value_type, *vals)

    def __eq__(self, other):
        return isinstance(other, StepOps) and self._key == other._key

    def __hash__(self):
        return hash(self._key)


def run(xp, program, ops, extra_outputs, arrays, out=None, slots=None):
    """Evaluate the program on ``arrays``; ``out`` a buffer (a tuple of them with
    extra outputs, None where to allocate); ``slots`` the program's
    :func:`scratch_slots` (computed here if not given). Returns the result (a
    tuple with extra outputs)."""
    num_outputs = 1 + len(extra_outputs)
    if device.on_device(xp):  # one kernel (cupy.fuse), in place for variable updates
        dtype = next((o.dtype for o in (out if isinstance(out, tuple) else (out,)) if o is not None),
                     arrays[0].dtype)
        return device.elementwise_program(xp, program, extra_outputs, arrays, StepOps(program, ops),
                                          dtype.type, out)
    shape = np.broadcast_shapes(*[a.shape for a in arrays])
    outs = list(out) if num_outputs > 1 else [out]
    dtype = next((o.dtype for o in outs if o is not None), arrays[0].dtype)
    outs = [xp.empty(shape, dtype) if o is None else o for o in outs]
    size = outs[0].size
    blocks = (size >= BLOCK_ELEMENTS and xp.__name__ == "numpy" and all(o.flags.c_contiguous for o in outs)
              and all(a.size in (size, 1) for a in arrays))
    flat = [_flat_operand(a, size) for a in arrays] if blocks else [None]
    if any(a is None for a in flat):
        # small (blocks cost more than they save), or a partial broadcast or strided
        # view that has no flat blocks: whole arrays, NumPy broadcasting
        _evaluate(xp, program, ops, extra_outputs, arrays, outs, None)
    else:
        outs_flat = [o.reshape(-1) for o in outs]
        slots = scratch_slots(program, extra_outputs) if slots is None else slots
        nslots = max(slots, default=-1) + 1
        direct = _direct_outputs(program, extra_outputs, arrays, outs)  # decided once, on the whole arrays

        def block(lo, hi):
            scratch = workspace(xp, "fused", (nslots, hi - lo), dtype)  # one per thread, reused by every block
            _evaluate(xp, program, ops, extra_outputs, [a[lo:hi] if a.ndim else a for a in flat],
                      [o[lo:hi] for o in outs_flat], scratch, direct, slots)

        parallel_blocks(xp, size, 1, block)
    return tuple(outs) if num_outputs > 1 else outs[0]


def _evaluate(xp, program, ops, extra_outputs, arrays, outs, scratch, direct=None, slots=None):
    """The steps on whole arrays (``scratch`` None: fresh temporaries) or on one
    block (temporaries in the rows of ``scratch``, see :func:`scratch_slots`).
    ``direct`` (from :func:`_direct_outputs`) says which extra outputs each
    step may write straight into its output buffer."""
    temps = []
    last = len(program) - 1
    if direct is None:
        direct = _direct_outputs(program, extra_outputs, arrays, outs)
    for j, ((_, args), op) in enumerate(zip(program, ops)):
        vals = [arrays[k] if kind == "in" else temps[k] for kind, k in args]
        if j == last:
            dest = outs[0]
        elif j in direct:
            dest = outs[direct[j]]
        elif scratch is None:
            dest = None
        else:
            dest = scratch[slots[j]]
        temps.append(op.block(xp, *vals, out=dest))
    # The other extra outputs are written last: each may be the buffer of an
    # input (an in-place update) that a later step still reads.
    for i, (o, j) in enumerate(zip(outs[1:], extra_outputs), start=1):
        if direct.get(j) != i:
            o[...] = temps[j]


def _direct_outputs(program, extra_outputs, arrays, outs):
    """``{step: output index}`` for the extra outputs a step can compute straight
    into their buffer, saving a copy pass (SGD's ``v'`` into ``v``): those whose
    buffer no later step reads as an input (an in-place update whose old value
    is still needed must wait for the end)."""
    direct = {}
    for i, j in enumerate(extra_outputs, start=1):
        o = outs[i]
        if o is None or j in direct:
            continue
        later = {k for _, args in program[j + 1:] for kind, k in args if kind == "in"}
        if not any(np.may_share_memory(o, arrays[k]) for k in later if hasattr(arrays[k], "shape")):
            direct[j] = i
    return direct


def scratch_slots(program, extra_outputs):
    """Scratch slot of each step's result: a step may take over the slot of
    a temporary it reads for the last time (ufuncs work in place), so a
    chain uses two or three block buffers, not one per step, and stays in cache.
    Extra outputs keep their slots to the end."""
    last_read = {j: len(program) for j in extra_outputs}
    for j, (_, args) in enumerate(program):
        for kind, k in args:
            if kind == "t" and k not in extra_outputs:
                last_read[k] = j
    slots, free, count = [], [], 0
    for j, (_, args) in enumerate(program):
        free += sorted({slots[k] for kind, k in args if kind == "t" and last_read[k] == j})
        if free:
            slots.append(free.pop(0))
        else:
            slots.append(count)
            count += 1
    return slots


def _flat_operand(a, size):
    """A flat view of an operand for block slicing; a 0-d array for one value
    (also a scalar broadcast to full size, e.g. a gradient's seed); None if
    neither works without a copy."""
    if a.size == 1 or (a.ndim and not any(a.strides)):
        return a.reshape(-1)[:1].reshape(()) if a.size == 1 else a[(0,) * a.ndim][()]
    if a.size == size and a.flags.c_contiguous:
        return a.reshape(-1)
    return None
