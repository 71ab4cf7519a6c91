"""Which library (NumPy or oneDNN) each convolution was measured to run on,
as a training checkpoint keeps it: the two libraries round differently, so a
resumed run must run each convolution where the run measured it to continue
bit for bit.

``measured()`` gives this process's choices as JSON-able records;
``adopt(records)`` takes a checkpoint's (``ValueError`` naming the first
malformed record, nothing taken). The engine's public calls; this module is
the training command's one place that names them.
"""
from graphdiff import adopt_kernel_choices as adopt, kernel_choices as measured  # noqa: F401 - this module's calls
