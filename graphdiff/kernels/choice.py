"""Which kernel library runs each op that has kernel variants: graphdiff's own
(NumPy) or another library's (oneDNN for the convolutions), chosen by
measurement, like cuDNN's benchmark mode.

The mechanism is generic: an op family declares its variants on its op classes
(``variants = {library: Variant}``, e.g. :mod:`graphdiff.ops.conv_variants`),
and a kernel library registers itself (:func:`register_library`, e.g. at the
end of :mod:`graphdiff.kernels.onednn`). Nothing here names an op. For the
convolutions, as the rest of this text tells:

A compiled program on NumPy gives each convolution instruction (``conv2d``,
``conv2d_relu``, ``conv2d_grad_input``, ``conv2d_grad_weight`` and the fused
``conv2d_backward``: each direction of each layer) a :class:`MeasuredKernel`.
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

ENV = "GRAPHDIFF_KERNELS"
TIMED_RUNS = 2  # per library, after one warm-up run each
KEEP_SHAPES = 4  # primitives kept per instruction (input shapes seen most recently)


class Library:
    """A kernel library besides graphdiff's own: ``name`` (a ``kernels=`` mode),
    ``title`` (for messages), ``available()``, ``load_error()``, ``info()``,
    ``offers`` (the layouts its kernels read, see :func:`offers`) and
    ``errors`` (the exceptions meaning "no kernel for this geometry": NumPy's then)."""

    def __init__(self, name, title, available, load_error, info, offers=frozenset(), errors=()):
        self.name, self.title, self.offers, self.errors = name, title, frozenset(offers), tuple(errors)
        self.available, self.load_error, self.info = available, load_error, info


class Variant:
    """One library's kernel for one op (a direction of a convolution, ...).

    ``kind`` names the decision (checkpoint records carry it); ``geometry(op,
    arrays)`` gives what ``build(*geometry)`` needs to make the library's
    primitive for those shapes; ``key(geometry)`` the decision's key (a tuple);
    ``run(primitive, arrays, out)`` computes the op's result; ``usable(arrays)``
    says whether the library takes these operands (dtype). ``codec`` turns keys
    into checkpoint records and back (:class:`Codec`)."""

    def __init__(self, library, kind, geometry, key, build, run, codec, usable=None):
        self.library, self.kind, self.geometry, self.key = library, kind, geometry, key
        self.build, self.run, self.codec, self.usable = build, run, codec, usable or (lambda arrays: True)
        _kinds[kind] = codec


class Codec:
    """``to_record(kind, key, library) -> dict`` and ``from_record(record) -> key``
    (raising KeyError, TypeError or ValueError on a malformed record)."""

    def __init__(self, to_record, from_record):
        self.to_record, self.from_record = to_record, from_record


_libraries = {}  # name -> Library
_kinds = {}      # decision kind -> Codec
# (kind, *key) -> library name, for the process
_decisions = {}
_decisions_lock = threading.Lock()


def register_library(library):
    """Make ``library`` a ``kernels=`` mode and a candidate where ops declare variants for it."""
    _libraries[library.name] = library
    return library


def modes():
    return ("auto", "numpy") + tuple(_libraries)


def resolve_mode(kernels=None):
    """The kernel mode of a program: ``kernels`` if given, else ``GRAPHDIFF_KERNELS``, else ``"auto"``."""
    mode = kernels if kernels is not None else os.environ.get(ENV, "") or "auto"
    if mode not in modes():
        raise BackendError(f"kernels={mode!r}: expected one of {', '.join(modes())}"
                           + (f" (from {ENV})" if kernels is None else ""))
    library = _libraries.get(mode)
    if library is not None and not library.available():
        raise BackendError(f"kernels={mode!r}: {library.title} is not available ({library.load_error()})")
    return mode


def _in_play(mode, backend_name):
    """The libraries besides NumPy that a program in ``mode`` on ``backend_name`` may run."""
    if backend_name != "numpy" or mode == "numpy":
        return []
    return [lib for name, lib in _libraries.items() if mode in ("auto", name) and lib.available()]


def onednn_in_play(mode, backend_name):
    """Whether a program in ``mode`` on ``backend_name`` may run oneDNN kernels."""
    return any(lib.name == "onednn" for lib in _in_play(mode, backend_name))


class _Offers:
    """The layouts every kernel library in play reads (graphdiff's own read every one)."""

    def __init__(self, libraries):
        self._libraries = libraries

    def __contains__(self, feature):
        return all(feature in lib.offers for lib in self._libraries)


def offers(mode, backend_name):
    """What the rewrite rules may count on (``ctx.offers``, see :mod:`graphdiff.rewrite`):
    a layout is offered where every library in play reads it, e.g. NumPy's shared
    ``"im2col_columns"`` of a convolution, which oneDNN's kernels do not."""
    return _Offers(_in_play(mode, backend_name))


def status_line():
    """One line for benchmark output: which convolution kernels are available."""
    loaded = [lib for lib in _libraries.values() if lib.available()]
    if loaded:
        return (f"convolution kernels: NumPy im2col + BLAS, and {', '.join(lib.info() for lib in loaded)} "
                f"(chosen per layer by measurement)")
    why = "; ".join(f"{lib.title} not loaded: {lib.load_error()}" for lib in _libraries.values())
    return f"convolution kernels: NumPy im2col + BLAS only; {why}"


def cpu_model():
    """The CPU's model name and how many logical CPUs there are, from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0]} x{len(names)}" if names else "unknown"


def kernel_for(op, xp, mode):
    """A :class:`MeasuredKernel` for ``op`` in a program of ``mode`` on NumPy, or
    None where the op declares no variants or none of their libraries can play."""
    variants = getattr(op, "variants", None)
    if not variants or xp is not numpy:
        return None
    in_play = {lib.name for lib in _in_play(mode, "numpy")}
    playing = [v for lib, v in variants.items() if lib in in_play]
    return MeasuredKernel(op, mode, playing) if playing else None


class MeasuredKernel:
    """The kernel of one instruction whose op has variants: NumPy's (the op's own
    forward) or a library's, per input shapes (see the module docstring). Keeps
    the primitives it built, per shapes, for the program's lifetime. ``library``
    is the one used by the latest call."""

    def __init__(self, op, mode, variants):
        self.op, self.mode = op, mode
        self.variants = {v.library: v for v in variants}
        self.library = None  # not run yet
        self.reason = None  # why a library was not used, where it failed
        self._primitives = {}  # (library, input shapes) -> primitive
        self._numpy = op.forward
        # A primitive's memory objects point at one call's arrays: one call at a
        # time per instruction (a program called from several threads).
        self._lock = threading.Lock()

    def __call__(self, *arrays, out=None):
        if out is None and self.op.num_outputs > 1:
            out = (None,) * self.op.num_outputs
        usable = {name: v for name, v in self.variants.items() if v.usable(arrays)}
        if not usable:
            self.library = "numpy"
            return self._numpy(numpy, *arrays, out=out)
        shapes = tuple(a.shape for a in arrays if a is not None)
        first = next(iter(usable.values()))
        geometry = first.geometry(self.op, arrays)
        key = (first.kind,) + first.key(geometry)
        library = self.mode if self.mode in usable else _decisions.get(key)
        if library is None:
            return self._choose(key, shapes, geometry, usable, arrays, out)
        self.library = library
        if library != "numpy":
            with self._lock:
                return self._run(usable[library], shapes, geometry, arrays, out)
        return self._numpy(numpy, *arrays, out=out)

    def _run(self, variant, shapes, geometry, arrays, out):
        primitives = self._primitives
        primitive = primitives.get((variant.library, shapes))
        if primitive is None:
            if len(primitives) >= KEEP_SHAPES * len(self.variants):  # e.g. a last, smaller batch: drop the oldest
                primitives.pop(next(iter(primitives)))
            primitive = primitives[(variant.library, shapes)] = variant.build(*geometry)
        return variant.run(primitive, arrays, out)

    def _choose(self, key, shapes, geometry, usable, arrays, out):
        """Time every library on these operands (each once to warm up, then
        ``TIMED_RUNS`` times, alternating) and keep the fastest for these shapes;
        returns the kept library's result."""
        runs = {"numpy": lambda: self._numpy(numpy, *arrays, out=out)}
        for name, variant in usable.items():
            runs[name] = lambda variant=variant: self._run(variant, shapes, geometry, arrays, out)
        errors = tuple(e for name in usable for e in _libraries[name].errors) or (RuntimeError,)
        best = {}
        with self._lock:
            try:
                for run in runs.values():  # warm-up: primitive creation, scratch buffers
                    run()
                for _ in range(TIMED_RUNS):
                    for name, run in runs.items():
                        best[name] = min(best.get(name, float("inf")), _seconds(name, run))
                library = min(best, key=best.get)
            except errors as exc:  # a geometry a library has no primitive for: NumPy
                self.reason, library = str(exc), "numpy"
            with _decisions_lock:
                library = _decisions.setdefault(key, library)  # another thread may have decided first
            self.library, self.timings = library, best
            return runs[library]()


ConvolutionKernel = MeasuredKernel  # the name it had when convolutions were its only users


def _seconds(library, run):
    """Wall time of ``run()`` (``library`` names it: tests substitute a clock)."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def program_kernels(instructions, backend_name):
    """``{node: library}`` for a program's instructions whose op has variants or
    says it ``reports_kernel`` (a convolution's shared columns): the library the
    latest run used (None: not run yet), the backend's name (``"numpy"``,
    ``"cupy"``) where no choice is made. Other ops all run graphdiff's own kernels."""
    return {node: kernel.library if isinstance(kernel, MeasuredKernel) else backend_name
            for kernel, _, _, _, node in instructions
            if getattr(node.op, "variants", None) or getattr(node.op, "reports_kernel", False)}


def clear_decisions():
    """Forget every measured choice (the next run of each program measures again)."""
    with _decisions_lock:
        _decisions.clear()


def decisions():
    """This process's choices as JSON-able records (each variant's codec writes
    them; a convolution's: ``direction``, ``x`` and ``w`` shapes, ``stride``,
    ``padding``, ``groups``, ``library``, and ``dilation`` where it is not 1):
    what a checkpoint keeps, so that a run resumed in another process runs each
    op on the library the run measured (libraries round differently, so
    re-measuring could change the numbers)."""
    with _decisions_lock:
        items = sorted(_decisions.items())
    return [_kinds[key[0]].to_record(key[0], key[1:], library) for key, library in items]


def adopt(records):
    """Take ``records`` (from :func:`decisions`, e.g. a checkpoint's) as this
    process's choices, in place of any measured for the same ops.
    Raises ``ValueError`` naming the first malformed record (nothing is taken)."""
    if not isinstance(records, list):
        raise ValueError(f"kernel choices must be a list, got {type(records).__name__}")
    taken = {}
    for k, r in enumerate(records):
        try:
            kind, library = r["direction"], r["library"]
            codec = _kinds.get(kind)
            key = codec.from_record(r) if codec is not None else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"kernel choice {k} is malformed ({type(exc).__name__}: {exc})") from None
        if codec is None or library not in ("numpy",) + tuple(_libraries):
            raise ValueError(f"kernel choice {k}: unknown direction {kind!r} or library {library!r}")
        taken[(kind,) + key] = library
    with _decisions_lock:
        _decisions.update(taken)
