"""Which library (NumPy or oneDNN) each convolution was measured to run on,
as a training checkpoint keeps it: the two libraries round differently, so a
resumed run must run each convolution where the run measured it to continue
bit for bit.

:func:`measured` gives this process's choices as JSON-able records;
:func:`adopt` takes a checkpoint's (``ValueError`` naming the first malformed
record). This module is the training command's only reach into the engine's
kernel choice. Both look the engine's functions up when called (tests stand
in for ``choice.adopt``); with the engine's public calls, whose functions do
the same, the module is one line::

    from graphdiff import adopt_kernel_choices as adopt, kernel_choices as measured
"""
from graphdiff.kernels import choice as _choice


def measured():
    """This process's kernel choices, for a checkpoint."""
    return _choice.decisions()


def adopt(records):
    """Take a checkpoint's kernel choices as this process's."""
    _choice.adopt(records)
