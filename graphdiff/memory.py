"""A program's memory plan: planned byte buffers reused along the schedule.

Part of :class:`graphdiff.compiler.Program`: on a first call with given input
shapes the program records each output's shape; :meth:`MemoryPlan._memory_plan`
then assigns buffers that every later call with those shapes reuses.
"""
import bisect
import collections

import numpy as np

from .errors import OutOfMemoryError
from .graph import fmt_shape


class MemoryPlan:
    """The planned buffers of a :class:`~graphdiff.compiler.Program` (a mixin)."""

    @property
    def _plans(self):
        """This thread's memory plans: input shapes -> buffers per instruction (see
        :meth:`_memory_plan`). Per thread, so that concurrent calls never share a buffer."""
        plans = getattr(self._thread, "plans", None)
        if plans is None:
            plans = self._thread.plans = {}
        return plans

    def _memory_plan(self, shapes):
        """Buffers for the instructions whose kernel writes into ``out``, from
        the output shapes recorded on a first run with these input shapes.

        Walking the schedule, each instruction takes the smallest free byte
        buffer that holds its output (whatever its shape; at most 4x larger,
        so a small output does not pin a big buffer), or a new one; a buffer
        is free again after the last reader of its alias group. The same
        buffers then serve every later call with these input shapes, so a
        training step allocates (and page-faults) nothing large after the first."""
        xp = self.backend.xp
        plan, releases = [], {}
        # Free buffers by size (oldest first), and their sizes sorted: finding the
        # smallest that fits is a bisection, not a scan of every free buffer (deep
        # graphs free thousands at once).
        free_by_size, sizes = {}, []

        def release(flat):
            if flat.nbytes not in free_by_size:
                free_by_size[flat.nbytes] = collections.deque()
                bisect.insort(sizes, flat.nbytes)
            free_by_size[flat.nbytes].append(flat)

        def take(shape, dtype, release_after):
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if not nbytes:  # empty outputs need no buffer
                return None
            j = bisect.bisect_left(sizes, nbytes)
            if j < len(sizes) and sizes[j] <= 4 * nbytes:
                bucket = free_by_size[sizes[j]]
                flat = bucket.popleft()
                if not bucket:
                    del free_by_size[sizes.pop(j)]
            else:
                flat = _allocate(xp, nbytes, node)
            releases.setdefault(release_after, []).append(flat)
            return flat[:nbytes].view(dtype).reshape(shape)

        for k, (_, ins, out, _, node) in enumerate(self._instrs):
            buf = None
            if getattr(node.op, "supports_out", False) and out in shapes:
                if out in self._parts:  # one buffer per output, free after the last reader of its part
                    parts, inplace = self._parts[out], self._inplace.get(out, {})
                    buf = tuple(None if j in inplace or parts.get(j) in self._escaping
                                else take(*shapes[out][j], self._group_end[parts[j]] if j in parts else out)
                                for j in range(node.op.num_outputs))
                elif out not in self._inplace and self._root[out] == out and out not in self._escaping:
                    buf = take(*shapes[out], self._group_end[out])
            plan.append(buf)
            for flat in releases.pop(out, ()):
                release(flat)
        return plan

    def _outputs_of(self, k, out, plan):
        """The ``out`` tuple of an op with several outputs: planned buffers and the
        variables' own buffers (in-place updates), None where the kernel allocates."""
        planned = plan[k] if plan is not None and plan[k] is not None else (None,) * self._instrs[k][4].op.num_outputs
        inplace = self._inplace.get(out, {})
        return tuple(inplace[j]._value if j in inplace else b for j, b in enumerate(planned))

    def buffer_plan(self):
        """The memory plan of the latest input shapes this thread ran, or None before the
        first call: ``(rows, sizes)``, one row ``(node, buffers)`` per scheduled
        op with the number of the planned buffer of each output (None where
        the kernel allocates or writes a variable in place), and each
        buffer's bytes. Buffers are reused along the schedule (see ``_memory_plan``)."""
        if not self._plans:
            return None
        plan = self._plans[next(reversed(self._plans))]
        numbers, sizes, rows = {}, [], []
        for (_, _, _, _, node), planned in zip(self._instrs, plan):
            row = []
            for b in (planned if isinstance(planned, tuple) else (planned,)):
                owner = b if b is None or b.base is None else b.base  # the flat byte buffer
                if owner is not None and id(owner) not in numbers:
                    numbers[id(owner)] = len(sizes)
                    sizes.append(int(owner.nbytes))
                row.append(None if owner is None else numbers[id(owner)])
            rows.append((node, row))
        return rows, sizes


def _allocate(xp, nbytes, node):
    """A planned byte buffer for ``node``'s output (out of memory: which node, how much)."""
    try:
        return xp.empty(nbytes, xp.uint8)
    except MemoryError as exc:
        raise _out_of_memory(node, exc, nbytes) from None


def _out_of_memory(node, exc, nbytes=None, inputs=None):
    """An :class:`OutOfMemoryError` (a ``MemoryError``) naming the node and the bytes
    asked for: NumPy's error carries the array's shape and dtype, CuPy's its size."""
    if nbytes is None and getattr(exc, "shape", None) is not None and getattr(exc, "dtype", None) is not None:
        nbytes = int(np.prod(exc.shape, dtype=np.int64)) * np.dtype(exc.dtype).itemsize
    if nbytes is None and isinstance(getattr(exc, "_size", None), (int, np.integer)):
        nbytes = int(exc._size)  # cupy.cuda.memory.OutOfMemoryError(size, total, limit)
    asked = f"{nbytes:,} bytes ({nbytes / 2 ** 30:,.1f} GiB)" if nbytes is not None else "memory"
    on = f" on inputs {inputs}" if inputs else ""
    return OutOfMemoryError(f"out of memory at run time: {node.op.name} {node.name!r} "
                            f"{fmt_shape(node.shape)} {node.dtype}{on} asked for {asked}: {exc}")
