"""Which library (NumPy or oneDNN) each convolution was measured to run on,
as a training checkpoint keeps it: the two libraries round differently, so a
resumed run must run each convolution where the run measured it to continue
bit for bit.

``measured()`` gives this process's choices as JSON-able records;
``adopt(records)`` takes a checkpoint's (``ValueError`` naming the first
malformed record). This line is the training command's only reach into the
engine's kernel choice.
"""
from graphdiff.kernels.choice import adopt, decisions as measured  # noqa: F401 - this module's two calls
