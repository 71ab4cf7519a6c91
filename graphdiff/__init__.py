"""graphdiff: a define-then-run computation-graph engine with reverse-mode
autodiff, for the convolutional networks of the AlexNet lecture.

    import graphdiff as gd
    x = gd.placeholder((None, 3, 227, 227), name="x")
    ...
    gw, gb = gd.grad(loss, [w, b])
    f = gd.compile([loss, gw, gb], inputs=[x, t])
"""
from .autodiff import grad, zeros_like
from .backends import available_backends, default_backend, get_backend, register_backend
from .compiler import Program, compile
from .errors import BackendError, GraphdiffError, InputError, ModelFormatError, OutOfMemoryError, ShapeError
from .feed import from_dlpack
from .graph import Op, Tensor, Variable, constant, placeholder, scope, toposort, variable
# The measured kernel choices, for checkpoints: records to save, and to adopt when resuming.
from .profiling import adopt_kernel_choices, clear_kernel_choices, kernel_choices  # noqa: F401
from .nx import to_networkx, graph_stats
from .ops import *  # noqa: F401,F403 - the op functions are the public API
from .ops import abs, max, pow, sum  # noqa: A004 - NumPy's names, as in the DESIGN contract
from . import onnx  # noqa: E402 - graphdiff.onnx.export / load (the onnx package is imported only when used)

__version__ = "0.1.0"
