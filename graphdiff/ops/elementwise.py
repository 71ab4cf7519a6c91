"""Elementwise ops with NumPy broadcasting.

The VJP rules are a table, one line per op (as in HIPS autograd's ``defvjp``):
each rule takes the input(s) ``x`` (``a, b``), the output ``y`` and the
incoming gradient ``g`` as graph nodes and returns graph nodes, so gradients
are graphs and can be differentiated again. Broadcast inputs get their
gradient summed back to their own shape (``sum_to``).

The ops that the compiler may fuse into one chain (:mod:`graphdiff.fusion`)
declare it here: ``fusable(node)`` says whether this node may join a chain,
``block(xp, *arrays, out=)`` evaluates it on blocks of arrays (NumPy: cache
blocks, see :mod:`graphdiff.kernels.fused`) and ``fused(xp, value_type,
*arrays)`` inside one ``cupy.fuse`` kernel (ufuncs and constants of the
result's scalar type only).
"""
import numpy as np

from ..graph import Op, Tensor, apply, as_dtype, as_tensor, broadcast_shapes
from ..kernels.parallel import workspace, zeros
from .reduce import sum_to


def _result_dtype(ufunc, *dtypes):
    """The dtype NumPy's ufunc gives for these input dtypes (exactly NumPy's rule)."""
    return ufunc(*[np.empty(0, d) for d in dtypes]).dtype


def _sigmoid(xp, x):
    # exp(-log(1 + exp(-x))): no overflow, and full relative precision in the
    # small tail (the tanh form (tanh(x/2) + 1) / 2 cancels to 0 for x < -20 or so)
    return xp.exp(-xp.logaddexp(x.dtype.type(0), -x))


# name: (forward(xp, x), vjp(x, y, g), NumPy ufunc giving the dtype rule)
UNARY = {
    "neg":     (lambda xp, x: xp.negative(x), lambda x, y, g: -g,                  np.negative),
    "exp":     (lambda xp, x: xp.exp(x),      lambda x, y, g: g * y,               np.exp),
    "log":     (lambda xp, x: xp.log(x),      lambda x, y, g: g / x,               np.log),
    "sqrt":    (lambda xp, x: xp.sqrt(x),     lambda x, y, g: g * 0.5 / y,         np.sqrt),
    "tanh":    (lambda xp, x: xp.tanh(x),     lambda x, y, g: g * (1.0 - y * y),   np.tanh),
    "sigmoid": (_sigmoid,                     lambda x, y, g: g * y * (1.0 - y),   np.tanh),
    "abs":     (lambda xp, x: xp.abs(x),      lambda x, y, g: g * sign(x),         np.abs),
    # ReLU's gradient is a switch: dE passes where the forward value was positive.
    "relu":    (lambda xp, x: xp.maximum(x, 0), lambda x, y, g: relu_grad(y, g),   np.positive),
}


# Unary ops that are one NumPy/CuPy ufunc call, so they can write into a
# planned buffer (``out=``), also when ``out`` is their own input.
UFUNC_OF = {"neg": "negative", "exp": "exp", "log": "log", "sqrt": "sqrt", "tanh": "tanh", "abs": "absolute",
            "add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "pow": "power",
            "maximum": "maximum", "minimum": "minimum"}


class Unary(Op):
    def __init__(self, fn):
        super().__init__(fn=fn)
        self.name = fn
        self.supports_out = self.inplace_safe = fn in UFUNC_OF or fn == "relu"

    def describe(self):
        return self.fn

    def infer(self, x):
        return x.shape, _result_dtype(UNARY[self.fn][2], x.dtype)

    def forward(self, xp, x, out=None):
        if out is None:
            return UNARY[self.fn][0](xp, x)
        if self.fn == "relu":
            return xp.maximum(x, 0, out=out)
        return getattr(xp, UFUNC_OF[self.fn])(x, out=out)

    def vjp(self, node, g, wrt):
        return [UNARY[self.fn][1](node.inputs[0], node, g)]

    # ---- chain fusion (see the module docstring)
    def fusable(self, node):
        return node.dtype.kind == "f" and self.supports_out

    def block(self, xp, x, out=None):
        if self.fn == "relu" and out is not None and xp.__name__ == "numpy" and x.ndim == 1 \
                and x.shape == out.shape:
            # NumPy's maximum against a broadcast scalar misses its SIMD loop (~4x slower
            # than against an array), so a block compares with a vector of zeros.
            return xp.maximum(x, zeros(xp, x.size, out.dtype), out=out)
        return self.forward(xp, x, out=out)

    def fused(self, xp, value_type, x):
        if self.fn == "relu":
            return xp.maximum(x, value_type(0))
        return getattr(xp, UFUNC_OF[self.fn])(x)


def _unary(fn):
    def op(x, name=None):
        return apply(Unary(fn), [as_tensor(x)], name=name)

    op.__name__ = fn
    op.__doc__ = f"Elementwise ``{fn}``."
    return op


neg, exp, log, sqrt, tanh, sigmoid, abs_ = (_unary(n) for n in ("neg", "exp", "log", "sqrt", "tanh", "sigmoid", "abs"))


def relu(x, name=None):
    """``y = max(0, x)``. Its VJP is :func:`relu_grad`: a switch decided by one
    forward pass, open where the forward value was positive."""
    return apply(Unary("relu"), [as_tensor(x)], name=name)


def _same_float_dtype(op, node):
    """Chain fusion's test for an op of several inputs: float, every input of its dtype."""
    return node.dtype.kind == "f" and all(i.dtype == node.dtype for i in node.inputs)


class ReluGrad(Op):
    """ReLU's VJP, ``dE/dx = dE/dy if y > 0 else 0``: a switch set by the
    forward output ``y``. A select, not ``dE * step(y)``: a closed switch
    gives 0 also where ``dE`` is infinite or NaN (``inf * 0`` would be NaN),
    as in PyTorch (``d/dx log(relu(x))`` at ``x = 0`` is 0). Its own VJP:
    the same switch for ``dE``, none for ``y`` (piecewise constant)."""

    name = "relu_grad"
    kind = "gradient"
    supports_out = inplace_safe = True

    def infer(self, y, g):
        if g.dtype.kind != "f":
            raise self.error(f"the gradient must be float, got {g.dtype}", y, g)
        return broadcast_shapes(self, y, g), g.dtype

    def forward(self, xp, y, g, out=None):
        return relu_grad_kernel(xp, y, g, out)

    def vjp(self, node, gg, wrt):
        y, _ = node.inputs
        return [None, sum_to(relu_grad(y, gg), node.inputs[1], y.shape) if wrt[1] else None]

    # ---- chain fusion (see the module docstring)
    fusable = _same_float_dtype

    def block(self, xp, y, g, out=None):
        return relu_grad_kernel(xp, y, g, out=out)

    def fused(self, xp, value_type, y, g):  # a select: an infinite g stays finite where closed
        return xp.where(y > value_type(0), g, value_type(0))


def relu_grad_kernel(xp, y, g, out=None):
    """``where(y > 0, g, 0)``, into ``out`` if given (it may be ``y``'s or ``g``'s
    own buffer: the mask is taken before anything is written). The fused
    elementwise kernels call it too.

    As bits: ``g``'s bit pattern AND a mask of all ones where ``y > 0`` (zeros
    elsewhere, NaN included), three integer passes. NumPy's masked copy
    (``copyto(where=)``) or ``where`` cost 4-6x more, the product ``g * step(y)``
    about as much but gives NaN for an infinite ``g``. On a GPU: one kernel, a new array."""
    if xp.__name__ != "numpy":
        from ..kernels import device

        return device.relu_grad(xp, y, g)
    g = xp.asarray(g)
    shape = np.broadcast_shapes(y.shape, g.shape)
    out = xp.empty(shape, g.dtype) if out is None else out
    bits = np.dtype(f"i{g.dtype.itemsize}")
    mask = workspace(xp, "relu_grad_mask", shape, bits)
    xp.greater(y, 0, out=mask)        # 1 where the switch is open, else 0
    xp.negative(mask, out=mask)       # all bits set where open
    xp.bitwise_and(g.view(bits), mask, out=out.view(bits))
    return out


def relu_grad(y, g, name=None):
    """``g`` where ``y > 0``, else 0 (see :class:`ReluGrad`)."""
    return apply(ReluGrad(), [as_tensor(y), as_tensor(g)], name=name)


# name: (forward(xp, a, b), vjp(a, b, y, g) -> (ga, gb), NumPy ufunc for the dtype rule)
BINARY = {
    "add":     (lambda xp, a, b: xp.add(a, b),      lambda a, b, y, g: (g, g),                               np.add),
    "sub":     (lambda xp, a, b: xp.subtract(a, b), lambda a, b, y, g: (g, -g),                              np.subtract),
    "mul":     (lambda xp, a, b: xp.multiply(a, b), lambda a, b, y, g: (g * b, g * a),                       np.multiply),
    "div":     (lambda xp, a, b: xp.divide(a, b),   lambda a, b, y, g: (g / b, -g * y / b),                  np.divide),
    "pow":     (lambda xp, a, b: xp.power(a, b),    lambda a, b, y, g: (g * b * a ** (b - 1.0), g * y * log(a)), np.power),
    # max/min select (not g * mask: an infinite g must give 0 to the input not chosen)
    "maximum": (lambda xp, a, b: xp.maximum(a, b),  lambda a, b, y, g: _select(a >= b, g),                   np.maximum),
    "minimum": (lambda xp, a, b: xp.minimum(a, b),  lambda a, b, y, g: _select(a <= b, g),                   np.minimum),
}


def _select(to_a, g):
    """``g`` split by a mask: to ``a`` where ``to_a``, else to ``b``; zeros elsewhere."""
    zero = as_tensor(0.0, like=g)
    return where(to_a, g, zero), where(to_a, zero, g)


class Binary(Op):
    supports_out = inplace_safe = True

    def __init__(self, fn):
        super().__init__(fn=fn)
        self.name = fn

    def describe(self):
        return self.fn

    def infer(self, a, b):
        return broadcast_shapes(self, a, b), _result_dtype(BINARY[self.fn][2], a.dtype, b.dtype)

    def forward(self, xp, a, b, out=None):
        if out is None:
            return BINARY[self.fn][0](xp, a, b)
        return getattr(xp, UFUNC_OF[self.fn])(a, b, out=out)

    def vjp(self, node, g, wrt):
        a, b = node.inputs
        if self.fn == "pow" and not wrt[1]:
            return [sum_to(g * b * a ** (b - 1.0), a, b.shape), None]  # skip log(a): a may be negative
        ga, gb = BINARY[self.fn][1](a, b, node, g)
        return [sum_to(ga, a, b.shape) if wrt[0] else None, sum_to(gb, b, a.shape) if wrt[1] else None]

    # ---- chain fusion (see the module docstring)
    fusable = _same_float_dtype

    def block(self, xp, a, b, out=None):
        return getattr(xp, UFUNC_OF[self.fn])(a, b, out=out)

    def fused(self, xp, value_type, a, b):
        return getattr(xp, UFUNC_OF[self.fn])(a, b)


def _binary(fn, doc):
    def op(a, b, name=None):
        a, b = _pair(a, b)
        return apply(Binary(fn), [a, b], name=name)

    op.__name__ = fn
    op.__doc__ = doc
    return op


def _pair(a, b):
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    b = as_tensor(b)
    return as_tensor(a, like=b), b


add = _binary("add", "``a + b`` with broadcasting.")
sub = _binary("sub", "``a - b`` with broadcasting.")
mul = _binary("mul", "``a * b`` with broadcasting.")
div = _binary("div", "``a / b`` with broadcasting.")
pow = _binary("pow", "``a ** b`` with broadcasting.")  # noqa: A001 - NumPy's name
maximum = _binary("maximum", "Elementwise ``max(a, b)``; the gradient goes to ``a`` on ties.")
minimum = _binary("minimum", "Elementwise ``min(a, b)``; the gradient goes to ``a`` on ties.")


# --------------------------------------------------------------------------- masks (not differentiable)
COMPARE = {
    "greater": np.greater, "greater_equal": np.greater_equal, "less": np.less,
    "less_equal": np.less_equal, "equal": np.equal, "not_equal": np.not_equal,
}


class Compare(Op):
    """A boolean mask; its gradient is zero for both inputs."""

    differentiable = False

    def __init__(self, fn):
        super().__init__(fn=fn)
        self.name = fn

    def describe(self):
        return self.fn

    def infer(self, a, b):
        return broadcast_shapes(self, a, b), np.dtype(bool)

    def forward(self, xp, a, b):
        return getattr(xp, self.fn)(a, b)


def _compare(fn):
    def op(a, b, name=None):
        a, b = _pair(a, b)
        return apply(Compare(fn), [a, b], name=name)

    op.__name__ = fn
    op.__doc__ = f"Elementwise ``{fn}`` mask (bool); not differentiable."
    return op


greater, greater_equal, less, less_equal, equal, not_equal = (_compare(n) for n in COMPARE)


class _Mask(Op):
    """A not-differentiable elementwise function that keeps shape and dtype."""

    differentiable = False

    def infer(self, x):
        return x.shape, x.dtype


class Step(_Mask):
    """``1`` where ``x > 0`` else ``0``, in x's dtype: ReLU's switch."""

    name = "step"

    def forward(self, xp, x):
        return (x > 0).astype(x.dtype)

    # ---- chain fusion (see the module docstring)
    fusable = _same_float_dtype

    def block(self, xp, x, out=None):
        if out is None:
            return (x > 0).astype(x.dtype)
        return xp.greater(x, 0, out=out)  # one pass, 1.0/0.0 into the float out (NaN: 0)

    def fused(self, xp, value_type, x):
        return xp.where(x > value_type(0), value_type(1), value_type(0))


class Sign(_Mask):
    name = "sign"

    def forward(self, xp, x):
        return xp.sign(x)


def step(x, name=None):
    return apply(Step(), [as_tensor(x)], name=name)


def sign(x, name=None):
    return apply(Sign(), [as_tensor(x)], name=name)


class Where(Op):
    """``cond ? a : b`` elementwise; ``cond`` is a mask (no gradient)."""

    name = "where"

    def infer(self, cond, a, b):
        if cond.dtype != np.bool_:
            raise self.error(f"condition must be bool, got {cond.dtype}", cond)
        return broadcast_shapes(self, cond, a, b), np.result_type(a.dtype, b.dtype)

    def forward(self, xp, cond, a, b):
        return xp.where(cond, a, b)

    def vjp(self, node, g, wrt):
        cond, a, b = node.inputs
        zero = as_tensor(0.0, like=g)
        return [None,
                sum_to(where(cond, g, zero), a, cond.shape, b.shape) if wrt[1] else None,
                sum_to(where(cond, zero, g), b, cond.shape, a.shape) if wrt[2] else None]


def where(cond, a, b, name=None):
    a, b = _pair(a, b)
    return apply(Where(), [as_tensor(cond), a, b], name=name)


class Cast(Op):
    name = "cast"

    def __init__(self, dtype):
        super().__init__(dtype=np.dtype(dtype))

    def infer(self, x):
        return x.shape, self.dtype

    def forward(self, xp, x):
        return x.astype(self.dtype, copy=False)

    def vjp(self, node, g, wrt):
        x = node.inputs[0]
        if x.dtype.kind != "f":
            return [None]
        return [cast(g, x.dtype)]


def cast(x, dtype, name=None):
    """Convert to ``dtype``; the gradient is cast back (none for integer inputs)."""
    x = as_tensor(x)
    dtype = as_dtype(dtype, "cast")
    if x.dtype == dtype:
        return x
    return apply(Cast(dtype), [x], name=name)
