"""Reverse-mode automatic differentiation on the graph.

``grad`` walks the nodes between ``xs`` and ``y`` in reverse topological
order (iteratively: no recursion limit) and applies each op's VJP rule. The
rules build ordinary graph nodes, so the result can be compiled, drawn, and
differentiated again (grad of grad, Hessian-vector products).
"""
import weakref

import numpy as np

from .errors import ShapeError
from .graph import _ids, Op, Tensor, _in_scope, apply, as_tensor, constant, fmt_shape, gc_paused, toposort


class ZerosLike(Op):
    """Zeros of ``x``'s (run-time) shape: the gradient for an input ``y`` does
    not depend on."""

    name = "zeros_like"
    differentiable = False

    def __init__(self, dtype):
        super().__init__(dtype=np.dtype(dtype))

    def infer(self, x):
        return x.shape, self.dtype

    def forward(self, xp, x):
        return xp.zeros(x.shape, self.dtype)


#: Where each backward node came from, for tools that explain the backward pass
#: (the explorer): node -> the forward node whose VJP rule built it, and
#: node -> the node it is the gradient of (the accumulated dE/dnode). Weak keys:
#: recording keeps no graph alive.
_VJP_OF = weakref.WeakKeyDictionary()
_GRADIENT_OF = weakref.WeakKeyDictionary()


def provenance(node):
    """``(vjp_of, gradient_of)`` of a node built by :func:`grad`: the forward
    node whose VJP rule built it and the node whose gradient it is (either may
    be None, e.g. for a forward node)."""
    return _VJP_OF.get(node), _GRADIENT_OF.get(node)


def _record_vjp(source, results, first_id):
    """Tag the nodes that ``source``'s VJP rule just built (ids from ``first_id``)."""
    stack = [r for r in results if r is not None]
    while stack:
        n = stack.pop()
        if n.id >= first_id and n not in _VJP_OF:
            _VJP_OF[n] = source
            stack.extend(n.inputs)


def zeros_like(x, dtype=None):
    return apply(ZerosLike(dtype or x.dtype), [x])


@gc_paused()  # deep graphs: see gc_paused
def grad(y, xs, grad_output=None):
    """Gradients of ``y`` with respect to each of ``xs``, as graph nodes.

    ``y`` must be a scalar unless ``grad_output`` (a tensor of ``y``'s shape)
    seeds the backward pass: then the result is the vector-Jacobian product
    ``grad_output^T dy/dx``. ``xs`` is a tensor (the result is one tensor),
    a list or tuple (a list, in order), or a dict ``name -> tensor`` such as a
    model's ``params`` (a dict with the same keys, in the same order). Each
    gradient has its input's shape; an input that ``y`` does not depend on
    gets zeros.
    """
    if isinstance(xs, dict):
        return dict(zip(xs.keys(), grad(y, list(xs.values()), grad_output)))
    single = isinstance(xs, Tensor)
    if not single and (isinstance(xs, (str, bytes)) or not hasattr(xs, "__iter__")):
        raise TypeError(f"grad: xs must be a Tensor, a list or tuple of Tensors or a dict of them, "
                        f"got {type(xs).__name__}")
    xs = [xs] if single else list(xs)
    if not isinstance(y, Tensor):
        raise TypeError(f"grad: y must be a Tensor, got {type(y).__name__}")
    if y.dtype.kind != "f":
        raise ShapeError(f"grad: {y.name} has dtype {y.dtype}; only float outputs can be differentiated")
    for x in xs:
        if not isinstance(x, Tensor):
            raise TypeError(f"grad: xs must be Tensors, got {type(x).__name__} {x!r}")
        if x.dtype.kind != "f":
            raise ShapeError(f"grad: cannot differentiate with respect to {x.name}: dtype {x.dtype} is not float")
    with _in_scope(y.scope, backward=True):
        if grad_output is None:
            if y.shape != ():
                raise ShapeError(f"grad: {y.name} has shape {fmt_shape(y.shape)}; the gradient of a "
                                 f"non-scalar needs grad_output (a tensor of that shape)")
            seed = constant(1.0, dtype=y.dtype, name="grad_seed")
        else:
            seed = as_tensor(grad_output)
            if len(seed.shape) != len(y.shape) or any(
                    a is not None and b is not None and a != b for a, b in zip(seed.shape, y.shape)):
                raise ShapeError(f"grad: grad_output {seed.name} {fmt_shape(seed.shape)} does not match "
                                 f"{y.name} {fmt_shape(y.shape)}")

    order = toposort([y])
    wanted = {id(x) for x in xs}
    on_path = set()  # nodes that depend on some x
    for node in order:
        if id(node) in wanted or any(id(i) in on_path for i in node.inputs):
            on_path.add(id(node))

    pending = {id(y): [seed]} if id(y) in on_path else {}
    found = {}
    for node in reversed(order):
        parts = pending.pop(id(node), None)
        if parts is None:
            continue
        with _in_scope(node.scope, backward=True):
            g = _accumulate(parts, node)
            _GRADIENT_OF.setdefault(g, node)
            if id(node) in wanted:
                found[id(node)] = g
            if not node.inputs or not node.op.differentiable:
                continue
            wrt = tuple(id(i) in on_path and i.dtype.kind == "f" for i in node.inputs)
            if not any(wrt):
                continue
            first_id = next(_ids)  # every node the rule builds gets a later id
            in_grads = node.op.vjp(node, g, wrt)
            _record_vjp(node, in_grads, first_id)
        for inp, gi, w in zip(node.inputs, in_grads, wrt):
            if w and gi is not None:
                pending.setdefault(id(inp), []).append(gi)

    result = []
    for x in xs:
        g = found.get(id(x))
        if g is None:
            with _in_scope(x.scope, backward=True):
                g = zeros_like(x)
        result.append(g)
    return result[0] if single else result


def _accumulate(parts, node):
    """Sum the contributions that reach ``node``, in ``node``'s dtype."""
    from .ops import add, cast

    total = parts[0]
    for p in parts[1:]:
        total = add(total, p)
    if total.dtype != node.dtype and node.dtype.kind == "f":
        total = cast(total, node.dtype)
    return total
