"""The engine's error types (contract: ``gd.ShapeError``, ``gd.InputError``, ``gd.BackendError``)."""


class GraphdiffError(Exception):
    """Base class of every error the engine raises on purpose."""


class ShapeError(GraphdiffError, ValueError):
    """A shape or dtype rule failed: raised while the graph is built (or, for
    dimensions only known at run time, while it runs), naming the op, the nodes
    and the shapes."""


class InputError(GraphdiffError, ValueError):
    """A compiled program was called with a missing, extra, mis-shaped or
    mis-typed input, or a value assigned to a variable does not fit it."""


class CompileArgumentError(InputError, TypeError):
    """``gd.compile`` was given something that is not what it takes (an output
    that is not a Tensor, an input that is not a placeholder, an update that is
    not a (variable, value) pair). An :class:`InputError`, like every mistake
    in what a program is compiled for or called with, and a ``TypeError``, as
    Python's own functions report an argument of the wrong kind."""


class OutOfMemoryError(GraphdiffError, MemoryError):
    """A compiled program ran out of memory: names the node whose output (or
    scratch) did not fit and the bytes it asked for."""


class BackendError(GraphdiffError, RuntimeError):
    """An unknown backend, or one whose library or device is missing."""


class ModelFormatError(GraphdiffError, ValueError):
    """A model file (ONNX) that cannot be written or read: malformed or
    truncated, or using an op or attribute graphdiff does not support. The
    message names the file, the node and the attribute."""


class CompilerError(GraphdiffError, RuntimeError):
    """A compiler pass produced a graph it must never produce (e.g. a cycle from a
    rewrite): a bug in graphdiff, reported instead of looping. ``optimize=False``
    (or ``fuse=False``) compiles without the rewriting passes meanwhile."""
