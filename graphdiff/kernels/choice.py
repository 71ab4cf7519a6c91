"""Which kernel library runs each convolution: NumPy (im2col + BLAS) or oneDNN,
chosen by measurement, like cuDNN's benchmark mode.

A compiled program on NumPy gives each convolution instruction (``conv2d``,
``conv2d_relu``, ``conv2d_grad_input``, ``conv2d_grad_weight`` and the fused
``conv2d_backward``: each direction of each layer) a :class:`ConvolutionKernel`.
The first time it runs with given input shapes it times both libraries on the
real operands (each once to warm up: oneDNN builds its primitive, NumPy its
scratch buffers; then twice each, alternating) and keeps the faster for those
shapes. The decision is remembered for the whole process (and kept in training
checkpoints: :func:`decisions`, :func:`adopt`), keyed by direction
(forward, with or without its ReLU; backward-data; backward-weights; both
gradients as one op) and geometry (shapes, stride, padding, groups, dilation), so every
later program with the same convolution runs the same kernels: two programs
of one model, a node compiled on its own and inside the whole graph, or a run
and its resumption in one process, compute identical results.

The library in use is a program setting, ``gd.compile(..., kernels=...)``,
default from the environment variable ``GRAPHDIFF_KERNELS``:

* ``"auto"`` (default): measure as above where oneDNN loaded, else NumPy;
* ``"numpy"``: always NumPy (the kernels of :mod:`graphdiff.kernels.conv`);
* ``"onednn"``: always oneDNN for float32 (a :class:`~graphdiff.BackendError`
  at compile time where it did not load).

float64 (and every other dtype) stays on NumPy: oneDNN is used in float32 only.
``Program.kernels`` names the library each convolution ran with last, and
``visualize.to_dot(program)`` writes it on those nodes. Without oneDNN
(``pip install -e '.[onednn]'``, or ``GRAPHDIFF_ONEDNN=0``) everything runs on
NumPy as before.
"""

import os
import threading
import time

import numpy

from ..errors import BackendError
from . import onednn
from .conv import pads as conv_pads

MODES = ("auto", "numpy", "onednn")
ENV = "GRAPHDIFF_KERNELS"
TIMED_RUNS = 2  # per library, after one warm-up run each
KEEP_SHAPES = 4  # oneDNN primitives kept per instruction (input shapes seen most recently)

# op name -> how to run it with a oneDNN Convolution (arrays as the op's forward gets them)
_ONEDNN_RUN = {
    "conv2d": lambda c, a, out: c.forward(*a, out=out),
    "conv2d_relu": lambda c, a, out: c.forward(*a, out=out),
    "conv2d_grad_input": lambda c, a, out: c.backward_data(a[0], a[1], out=out),
    "conv2d_grad_weight": lambda c, a, out: c.backward_weights(a[0], a[1], out=out),
    "conv2d_backward": lambda c, a, out: c.backward(a[0], a[1], a[2], out=out),
}

_DIRECTION = {"conv2d": "forward", "conv2d_relu": "forward", "conv2d_grad_input": "backward_data",
              "conv2d_grad_weight": "backward_weights", "conv2d_backward": "backward_data_and_weights"}
# (direction, x shape, w shape, stride, ((top, bottom), (left, right)), groups, dilation) -> "numpy" | "onednn",
# for the process
_decisions = {}
_decisions_lock = threading.Lock()


def resolve_mode(kernels=None):
    """The kernel mode of a program: ``kernels`` if given, else ``GRAPHDIFF_KERNELS``, else ``"auto"``."""
    mode = kernels if kernels is not None else os.environ.get(ENV, "") or "auto"
    if mode not in MODES:
        raise BackendError(f"kernels={mode!r}: expected one of {', '.join(MODES)}"
                           + (f" (from {ENV})" if kernels is None else ""))
    if mode == "onednn" and not onednn.available():
        raise BackendError(f"kernels='onednn': oneDNN is not available ({onednn.load_error()})")
    return mode


def onednn_in_play(mode, backend_name):
    """Whether a program in ``mode`` on ``backend_name`` may run oneDNN kernels."""
    return backend_name == "numpy" and mode != "numpy" and onednn.available()


def offers(mode, backend_name):
    """The layouts every kernel library a program in ``mode`` on ``backend_name`` may
    run offers (see :mod:`graphdiff.rewrite`'s ``ctx.offers``): NumPy's convolutions
    read shared ``"im2col_columns"``; oneDNN's and the GPU's read their own inputs."""
    return frozenset() if onednn_in_play(mode, backend_name) else frozenset({"im2col_columns"})


def status_line():
    """One line for benchmark output: which convolution kernels are available."""
    if onednn.available():
        return f"convolution kernels: NumPy im2col + BLAS, and {onednn.info()} (chosen per layer by measurement)"
    return f"convolution kernels: NumPy im2col + BLAS only; oneDNN not loaded: {onednn.load_error()}"


def cpu_model():
    """The CPU's model name and how many logical CPUs there are, from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0]} x{len(names)}" if names else "unknown"


def kernel_for(op, xp, mode):
    """A :class:`ConvolutionKernel` for ``op`` in a program of ``mode`` on NumPy, or
    None where the op is not a convolution or oneDNN cannot play."""
    if op.name not in _ONEDNN_RUN or xp is not numpy or not onednn_in_play(mode, "numpy"):
        return None
    return ConvolutionKernel(op, mode)


def _geometry(op, arrays):
    """``(x_shape, w_shape, stride, padding, groups, bias, relu, dilation)`` of the convolution
    behind ``op`` (``padding`` as ``((top, bottom), (left, right))``)."""
    name, g, padding, dilation = op.name, op.groups, conv_pads(op.padding), op.dilation
    if name in ("conv2d", "conv2d_relu"):
        x, w = arrays[:2]
        return x.shape, w.shape, op.stride, padding, g, len(arrays) > 2 and arrays[2] is not None, \
            name == "conv2d_relu", dilation
    if name == "conv2d_grad_input":
        dy, w = arrays
        return (dy.shape[0], w.shape[1] * g) + tuple(op.input_size), w.shape, op.stride, padding, g, False, False, \
            dilation
    if name == "conv2d_grad_weight":
        x, dy = arrays
        return x.shape, (dy.shape[1], x.shape[1] // g) + tuple(op.kernel_size), op.stride, padding, g, False, \
            False, dilation
    dy, w, x = arrays  # conv2d_backward: stride 1
    return x.shape, w.shape, (1, 1), padding, g, False, False, dilation


def _key(op, arrays):
    """The decision's key: direction and geometry (shapes, stride, padding, groups, dilation)."""
    x, w, stride, padding, groups, _, _, dilation = _geometry(op, arrays)
    return _DIRECTION[op.name], tuple(x), tuple(w), tuple(stride), padding, groups, tuple(dilation)


class ConvolutionKernel:
    """The kernel of one convolution instruction of a compiled program: NumPy's
    or oneDNN's, per input shapes (see the module docstring). Keeps the oneDNN
    primitives (:class:`onednn.Convolution`) it built, per shapes, for the
    program's lifetime. ``library`` is the one used by the latest call."""

    def __init__(self, op, mode):
        self.op, self.mode = op, mode
        self.library = None  # not run yet
        self.reason = None  # why oneDNN was not used, where it failed
        self._convolutions = {}  # input shapes -> onednn.Convolution
        self._numpy = op.forward
        # A Convolution's memory objects point at one call's arrays: one call at a
        # time per instruction (a program called from several threads).
        self._lock = threading.Lock()

    def __call__(self, *arrays, out=None):
        if out is None and self.op.num_outputs > 1:
            out = (None,) * self.op.num_outputs
        shapes = tuple(a.shape for a in arrays if a is not None)
        if any(a.dtype != numpy.float32 for a in arrays if a is not None):  # oneDNN: float32 only
            self.library = "numpy"
            return self._numpy(numpy, *arrays, out=out)
        key = _key(self.op, arrays)
        library = "onednn" if self.mode == "onednn" else _decisions.get(key)
        if library is None:
            return self._choose(key, shapes, arrays, out)
        self.library = library
        if library == "onednn":
            with self._lock:
                return _ONEDNN_RUN[self.op.name](self._convolution(shapes, arrays), arrays, out)
        return self._numpy(numpy, *arrays, out=out)

    def _convolution(self, shapes, arrays):
        conv = self._convolutions.get(shapes)
        if conv is None:
            if len(self._convolutions) >= KEEP_SHAPES:  # e.g. a last, smaller batch: drop the oldest
                self._convolutions.pop(next(iter(self._convolutions)))
            conv = self._convolutions[shapes] = onednn.Convolution(*_geometry(self.op, arrays))
        return conv

    def _choose(self, key, shapes, arrays, out):
        """Time both libraries on these operands (each once to warm up, then
        ``TIMED_RUNS`` times, alternating) and keep the faster for these shapes;
        returns the kept library's result."""
        runs = {"numpy": lambda: self._numpy(numpy, *arrays, out=out),
                "onednn": lambda: _ONEDNN_RUN[self.op.name](self._convolution(shapes, arrays), arrays, out)}
        best = {}
        with self._lock:
            try:
                for run in runs.values():  # warm-up: primitive creation, scratch buffers
                    run()
                for _ in range(TIMED_RUNS):
                    for name, run in runs.items():
                        best[name] = min(best.get(name, float("inf")), _seconds(name, run))
                library = min(best, key=best.get)
            except onednn.OneDNNError as exc:  # a geometry this build has no primitive for: NumPy
                self.reason, library = str(exc), "numpy"
            with _decisions_lock:
                library = _decisions.setdefault(key, library)  # another thread may have decided first
            self.library, self.timings = library, best
            return runs[library]()


CONVOLUTION_OPS = frozenset(_ONEDNN_RUN) | {"im2col", "conv2d_from_cols", "conv2d_grad_weight_from_cols"}


def _seconds(library, run):
    """Wall time of ``run()`` (``library`` names it: tests substitute a clock)."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def program_kernels(instructions, backend_name):
    """``{node: library}`` for a program's convolution instructions: ``"onednn"`` or
    ``"numpy"`` as the latest run used them (None: not run yet), the backend's
    name (``"numpy"``, ``"cupy"``) where no choice is made. Other ops all run
    graphdiff's own kernels."""
    return {node: kernel.library if isinstance(kernel, ConvolutionKernel) else backend_name
            for kernel, _, _, _, node in instructions if node.op.name in CONVOLUTION_OPS}


def clear_decisions():
    """Forget every measured choice (the next run of each program measures again)."""
    with _decisions_lock:
        _decisions.clear()


def decisions():
    """This process's choices as JSON-able records (``direction``, ``x`` and
    ``w`` shapes, ``stride``, ``padding``, ``groups``, ``library``, and
    ``dilation`` where it is not 1): what a checkpoint keeps, so that a run
    resumed in another process runs each convolution on the library the run
    measured (the two libraries round differently, so re-measuring could change
    the numbers). ``padding`` is ``[ph, pw]``, or ``[[top, bottom], [left, right]]``
    where a side differs."""
    with _decisions_lock:
        items = sorted(_decisions.items())
    records = []
    for (direction, x, w, stride, padding, groups, dilation), library in items:
        symmetric = all(a == b for a, b in padding)
        record = dict(direction=direction, x=list(x), w=list(w), stride=list(stride),
                      padding=[a for a, _ in padding] if symmetric else [list(p) for p in padding],
                      groups=groups, library=library)
        if dilation != (1, 1):
            record["dilation"] = list(dilation)
        records.append(record)
    return records


def adopt(records):
    """Take ``records`` (from :func:`decisions`, e.g. a checkpoint's) as this
    process's choices, in place of any measured for the same convolutions.
    Raises ``ValueError`` naming the first malformed record (nothing is taken)."""
    if not isinstance(records, list):
        raise ValueError(f"kernel choices must be a list, got {type(records).__name__}")
    taken = {}
    for k, r in enumerate(records):
        try:
            direction, library = r["direction"], r["library"]
            x, w, stride = (tuple(int(d) for d in r[f]) for f in ("x", "w", "stride"))
            padding = conv_pads(r["padding"])
            dilation = tuple(int(d) for d in r.get("dilation", (1, 1)))
            groups = int(r["groups"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"kernel choice {k} is malformed ({type(exc).__name__}: {exc})") from None
        if direction not in _DIRECTION.values() or library not in ("numpy", "onednn"):
            raise ValueError(f"kernel choice {k}: unknown direction {direction!r} or library {library!r}")
        taken[(direction, x, w, stride, padding, groups, dilation)] = library
    with _decisions_lock:
        _decisions.update(taken)
