"""Symbolic tensors, ops and the graph they form.

A graph is made of immutable :class:`Tensor` nodes. Each node is the output of
one :class:`Op` applied to input nodes; leaves are placeholders (fed at run
time), variables (hold a value between runs) and constants. Every op checks
its inputs and infers the output's shape and dtype when the node is built, so
a mismatch raises :class:`ShapeError` at once, naming the op, the nodes and
the shapes. Dimensions may be ``None`` (unknown until run time, e.g. the batch).

Scopes live in :mod:`graphdiff.scopes`, the shape and argument helpers in
:mod:`graphdiff.shapes`, ``toposort`` and ``gc_paused`` in :mod:`graphdiff.walks`;
this module re-exports them.
"""
from __future__ import annotations

import itertools

import numpy as np

from .errors import InputError, ShapeError
# Re-exported: the op modules, tests and docs import these from here.
from .scopes import _ctx, _in_scope, current_scope, scope  # noqa: F401
from .shapes import (as_dtype, as_int, as_number, broadcast_shapes, fmt_shape,  # noqa: F401
                     normalize_axis, static_size, unify_shapes)
from .walks import gc_paused, toposort  # noqa: F401

_ids = itertools.count()


# --------------------------------------------------------------------------- ops
class Op:
    """One kind of computation. Subclasses define, in one place:

    * ``name``: the op's name in diagrams and error messages;
    * ``infer(*inputs)`` -> ``(shape, dtype)``: the build-time shape rule;
    * ``forward(xp, *arrays)``: the kernel, written against an array module
      ``xp`` (NumPy or CuPy) so one body serves every backend;
    * ``vjp(node, g, wrt)``: the vector-Jacobian product written in graph ops,
      one entry per input (``None`` where ``wrt`` is False or the input is not
      differentiable), so that gradients are graphs and can be differentiated
      again.

    Attributes (stride, axis, ...) are keyword arguments kept in ``attrs``; they
    must be hashable, since the compiler merges nodes with equal op, attributes
    and inputs.
    """

    name = "op"
    #: "forward", or "gradient" for first-class gradient ops (conv2d_grad_input, ...)
    kind = "forward"
    #: an op whose output may be a view of an input (reshape, transpose, ...)
    is_view = False
    #: an op that draws random numbers: never merged, never folded
    is_random = False
    differentiable = True
    #: outputs of the kernel; above 1 it returns a tuple (and takes a tuple ``out``),
    #: read through :class:`Part` nodes (compile-time ops only, see ``fusion``)
    num_outputs = 1

    def __init__(self, **attrs):
        self.attrs = attrs
        # Also plain instance attributes, for speed: a lookup that falls through
        # to __getattr__ costs about a microsecond, paid by every kernel call.
        for k, v in attrs.items():
            if not hasattr(type(self), k):
                self.__dict__[k] = v

    def __getattr__(self, item):
        try:
            return self.__dict__["attrs"][item]
        except KeyError:
            raise AttributeError(item) from None

    def key(self):
        return (type(self), tuple(sorted(self.attrs.items())))

    def infer(self, *inputs):  # pragma: no cover - every op overrides
        raise NotImplementedError

    def forward(self, xp, *arrays):  # pragma: no cover
        raise NotImplementedError

    def vjp(self, node, g, wrt):
        """Default: not differentiable (gradient zero for every input)."""
        return [None] * len(node.inputs)

    def describe(self):
        """Short text for diagrams: the op name and its attributes."""
        if not self.attrs:
            return self.name
        parts = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(self.attrs.items()))
        return f"{self.name}({parts})"

    def error(self, message, *nodes):
        """A ShapeError naming this op and the nodes with their shapes."""
        names = " ".join(f"{n.name} {fmt_shape(n.shape)}" for n in nodes)
        return ShapeError(f"{self.name}: {names}: {message}" if nodes else f"{self.name}: {message}")

    def __call__(self, *inputs, name=None):
        return apply(self, inputs, name=name)


class Part(Op):
    """Output ``index`` of an op with several outputs (``num_outputs > 1``): its
    kernel returns a tuple, and its node carries the first output's shape.
    The compiler makes such ops (max pooling with its argmax; one pass of SGD
    updating ``v`` and ``w``; a stride-1 convolution's two gradients) and reads
    their outputs through parts."""

    name = "part"
    differentiable = False

    def __init__(self, index):
        super().__init__(index=index)

    def forward(self, xp, values):
        return values[self.index]


def _fmt(v):
    if isinstance(v, np.dtype):
        return v.name
    return repr(v) if isinstance(v, str) else str(v)



# --------------------------------------------------------------------------- tensors
class Tensor:
    """A symbolic value: the output of ``op`` applied to ``inputs``.

    ``shape`` is a tuple with ``None`` for dimensions known only at run time;
    ``dtype`` a NumPy dtype. Nodes are immutable and compared by identity.
    ``backward`` is True for nodes built by :func:`graphdiff.grad`.
    """

    __slots__ = ("op", "inputs", "shape", "dtype", "name", "scope", "id", "backward", "__weakref__")
    __array_priority__ = 1000  # so ndarray (op) Tensor defers to Tensor's operators

    def __init__(self, op, inputs, shape, dtype, name=None, scope=None, backward=False):
        self.op = op
        self.inputs = tuple(inputs)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.id = next(_ids)
        self.scope = current_scope() if scope is None else scope
        base = name if name is not None else f"{op.name}_{self.id}"
        if "/" in base and not self.scope:
            self.scope = base.rsplit("/", 1)[0]  # "conv1/w" built outside a scope joins conv1
        self.name = f"{self.scope}/{base}" if self.scope and "/" not in base else base
        self.backward = backward

    # ---- introspection
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def kind(self):
        """One of placeholder, variable, constant, forward, gradient (for diagrams)."""
        if isinstance(self.op, Leaf):
            return self.op.name
        return "gradient" if self.backward or self.op.kind == "gradient" else "forward"

    def __repr__(self):
        return f"<Tensor {self.name!r} {self.op.name} shape={fmt_shape(self.shape)} dtype={self.dtype.name}>"

    __hash__ = object.__hash__

    def __bool__(self):
        raise TypeError(f"the truth value of symbolic tensor {self.name!r} is unknown until it runs")

    def __iter__(self):
        # Without this, Python would iterate through __getitem__ (x[0], x[1], ...) and
        # never stop on a None dimension: list(x), zip(x, ...), a, b = x.
        raise TypeError(f"symbolic tensor {self.name!r} is not iterable: its elements exist only when a "
                        f"compiled program runs (index it, x[0], or pass a list of tensors where one is wanted)")

    # ---- operators (NumPy broadcasting); the op modules fill these in
    def __add__(self, other):
        return _ops.add(self, other)

    def __radd__(self, other):
        return _ops.add(other, self)

    def __sub__(self, other):
        return _ops.sub(self, other)

    def __rsub__(self, other):
        return _ops.sub(other, self)

    def __mul__(self, other):
        return _ops.mul(self, other)

    def __rmul__(self, other):
        return _ops.mul(other, self)

    def __truediv__(self, other):
        return _ops.div(self, other)

    def __rtruediv__(self, other):
        return _ops.div(other, self)

    def __pow__(self, other):
        return _ops.pow(self, other)

    def __rpow__(self, other):
        return _ops.pow(other, self)

    def __matmul__(self, other):
        return _ops.matmul(self, other)

    def __rmatmul__(self, other):
        return _ops.matmul(other, self)

    def __neg__(self):
        return _ops.neg(self)

    def __gt__(self, other):
        return _ops.greater(self, other)

    def __ge__(self, other):
        return _ops.greater_equal(self, other)

    def __lt__(self, other):
        return _ops.less(self, other)

    def __le__(self, other):
        return _ops.less_equal(self, other)

    def __getitem__(self, key):
        return _ops.getitem(self, key)

    @property
    def T(self):
        return _ops.transpose(self)


class _OpsNamespace:
    """Late-bound access to the op functions (the op modules import this one)."""

    def __getattr__(self, item):
        from . import ops

        return getattr(ops, item)


_ops = _OpsNamespace()


# --------------------------------------------------------------------------- leaves
class Leaf(Op):
    def infer(self):  # leaves are built directly
        raise NotImplementedError


class PlaceholderOp(Leaf):
    name = "placeholder"
    differentiable = True


class VariableOp(Leaf):
    name = "variable"


class ConstantOp(Leaf):
    name = "constant"

    def __init__(self, value):
        super().__init__()
        self.value = value

    def key(self):
        v = self.value
        return (ConstantOp, v.dtype.str, v.shape, v.tobytes() if v.size <= 4096 else id(v))

    def describe(self):
        v = self.value
        return f"constant {v.item():g}" if v.size == 1 else f"constant {fmt_shape(v.shape)}"

    def forward(self, xp):
        return self.value


class Variable(Tensor):
    """A trainable value that lives between runs. ``v.value`` reads it (an
    array of the backend that last used it); assigning checks shape and casts
    to the variable's dtype."""

    __slots__ = ("_value",)

    def __init__(self, value, name=None, copy=True):
        value = np.asarray(value) if not hasattr(value, "__cuda_array_interface__") else value
        if value.dtype.kind not in "fiub":
            raise InputError(f"{'variable' if name is None else f'variable {name!r}'}: unsupported dtype "
                             f"{value.dtype} (numbers and booleans only)")
        super().__init__(VariableOp(), (), value.shape, value.dtype, name=name or "variable")
        self._value = value.copy() if copy else value

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, new):
        xp = _array_module(new)
        new = xp.asarray(new)
        if tuple(new.shape) != self.shape:
            raise InputError(
                f"variable {self.name!r}: cannot assign a value of shape {fmt_shape(new.shape)}; "
                f"expected {fmt_shape(self.shape)}")
        if new.dtype.kind == "f" and self.dtype.kind in "iub":
            raise InputError(f"variable {self.name!r}: cannot assign {new.dtype} to an integer variable")
        self._value = new.astype(self.dtype, copy=True)


def _array_module(a):
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def placeholder(shape, dtype="float32", name=None):
    """An input fed when the compiled program runs. ``None`` marks a dimension
    known only then (e.g. the batch); the others are non-negative ints."""
    label = "placeholder" if name is None else f"placeholder {name!r}"
    if isinstance(shape, (int, np.integer)) or not hasattr(shape, "__iter__") or isinstance(shape, str):
        raise TypeError(f"{label}: shape must be a tuple of ints and None, got {shape!r}")
    shape = tuple(None if d is None else as_int(d, f"{label}: dimension {k}", "an int or None")
                  for k, d in enumerate(shape))
    if any(d is not None and d < 0 for d in shape):
        raise ShapeError(f"{label}: negative dimension in {fmt_shape(shape)}")
    return Tensor(PlaceholderOp(), (), shape, as_dtype(dtype, label), name=name or "placeholder")


def variable(value, name=None, copy=True):
    """A trainable variable holding ``value`` (copied; ``copy=False`` adopts a
    fresh array that nothing else holds: no copy, and fresh ``np.zeros`` pages
    stay untouched until the first step writes them)."""
    return Variable(value, name=name, copy=copy)


def constant(value, dtype=None, name=None):
    """A constant: a scalar or an array (copied)."""
    arr = np.array(value, dtype=dtype)
    if dtype is None and arr.dtype == np.float64 and np.ndim(value) == 0 and isinstance(value, float):
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "fiub":  # strings, objects: would fail later inside a NumPy ufunc
        label = f"constant {name!r}" if name else "constant"
        raise TypeError(f"{label}: unsupported dtype {arr.dtype} (numbers and booleans only)")
    op = ConstantOp(arr)
    return Tensor(op, (), arr.shape, arr.dtype, name=name, backward=_ctx().backward > 0)


def as_tensor(x, like=None):
    """Tensors pass through; Python scalars and arrays become constants. A
    Python scalar takes the dtype of ``like`` (weak typing, as in NumPy 2), so
    ``x * 2.0`` keeps a float32 ``x`` float32."""
    if isinstance(x, Tensor):
        return x
    if like is not None and isinstance(x, (int, float, bool)) and not isinstance(x, np.generic):
        dt = like.dtype
        if isinstance(x, float) and dt.kind not in "fc":
            dt = np.dtype("float32")
        return constant(x, dtype=dt)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return constant(x, dtype=np.float32 if isinstance(x, float) else np.int64)
    return constant(x)


def apply(op, inputs, name=None):
    """Build the node ``op(*inputs)``: run the op's shape rule, then make the tensor."""
    inputs = tuple(inputs)
    for i in inputs:
        if not isinstance(i, Tensor):
            raise TypeError(f"{op.name}: inputs must be Tensors, got {type(i).__name__}")
    shape, dtype = op.infer(*inputs)
    ctx = _ctx()
    return Tensor(op, inputs, shape, dtype, name=name, backward=ctx.backward > 0)
