"""Profiling a program and naming its kernels. Part of :class:`graphdiff.compiler.Program`."""
from .kernels import choice as kernel_choice


class Profiling:
    """Per-op timings and kernel libraries of a :class:`~graphdiff.compiler.Program` (a mixin)."""

    def profile(self, *args, **kwargs):
        """Run once (updates included) and return ``(outputs, [(node, seconds)])``:
        the time of each scheduled op, for per-layer breakdowns. On a GPU the
        kernels run asynchronously, so there only the total is exact."""
        self._thread.timings = t = []
        try:
            outputs = self(*args, **kwargs)
        finally:
            self._thread.timings = None
        self.last_profile = [(instr[4], t[k + 1] - t[k]) for k, instr in enumerate(self._instrs)]
        return outputs, list(self.last_profile)

    @property
    def kernels(self):
        """``{node name: library}`` for each convolution instruction: ``"numpy"`` or
        ``"onednn"`` as used by the latest run (None before the first run; ``"cupy"``
        on CuPy); every other op runs graphdiff's own kernels (see
        :mod:`graphdiff.kernels.choice`)."""
        return {node.name: library for node, library in
                kernel_choice.program_kernels(self._instrs, self.backend.name).items()}


# ---------------------------------------------------------------------- kernel choices (public)
def kernel_choices():
    """The kernel libraries measured so far in this process, as JSON-able records
    (one per op direction and geometry; see :func:`graphdiff.kernels.choice.decisions`):
    what a training checkpoint saves, so that a resumed run computes with the same kernels."""
    return kernel_choice.decisions()


def adopt_kernel_choices(records):
    """Take ``records`` (from :func:`kernel_choices`, e.g. a checkpoint's) as this
    process's choices; ``ValueError`` naming the first malformed record, nothing taken."""
    return kernel_choice.adopt(records)


def clear_kernel_choices():
    """Forget every measured choice (the next run of each program measures again)."""
    kernel_choice.clear_decisions()
