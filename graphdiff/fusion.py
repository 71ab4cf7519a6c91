"""Compile-time fusion of elementwise chains.

A chain like the SGD update ``v * 0.9 - lr * (w * 5e-4 + g)`` runs, op by op,
as five full passes over memory with four full-size temporaries. Fused, it
is one op that walks the arrays in cache-sized blocks (split over threads:
NumPy's ufuncs release the GIL), evaluating the whole expression per block:
each operand is read once and the result written once.

The pass groups, walking back from each elementwise node, the elementwise
inputs that only it reads (a tree), of the same shape and dtype, and whose
other operands have that same shape or are scalars (so a flat block of every
operand lines up). A group of two or more ops becomes one ``fused_elementwise``
node; the graph the user built is left as it is (the compiled schedule holds
the fused nodes).
"""
import numpy as np

from .graph import Op, Tensor, static_size
from .kernels.conv import BLOCK_ELEMENTS, parallel_blocks, workspace
from .ops.elementwise import UFUNC_OF, Binary, Step, Unary

SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}


def _fusable(node):
    op = node.op
    if node.dtype.kind != "f":
        return False
    if isinstance(op, Unary):
        return op.fn in UFUNC_OF or op.fn == "relu"
    return isinstance(op, (Binary, Step)) and all(i.dtype == node.dtype for i in node.inputs)


def _fn(node):
    return "step" if isinstance(node.op, Step) else node.op.fn


def _lines_up(operand, head):
    """An operand's flat blocks line up with the output's: same static shape, or one element."""
    return operand.shape == head.shape or static_size(operand.shape) == 1


class FusedElementwise(Op):
    """Several elementwise ops evaluated together, block by block.

    ``program`` is a tuple of steps ``(fn, args)``; an arg ``("in", k)`` is the
    k-th input, ``("t", j)`` the result of step j; the last step is the output.
    """

    name = "fused_elementwise"
    supports_out = inplace_safe = True

    def __init__(self, program, text):
        super().__init__(program=program, text=text)

    def describe(self):
        return f"fused: {self.text}"

    def infer(self, *inputs):  # built by the compiler with the head node's shape
        raise NotImplementedError

    def forward(self, xp, *arrays, out=None):
        shape = np.broadcast_shapes(*[a.shape for a in arrays])
        dtype = arrays[0].dtype if out is None else out.dtype
        if out is None:
            out = xp.empty(shape, dtype)
        size = out.size
        flat_ok = out.flags.c_contiguous and all(a.size in (size, 1) for a in arrays)
        if not flat_ok or size < BLOCK_ELEMENTS or xp.__name__ != "numpy":  # small: blocks cost more than they save
            self._evaluate(xp, arrays, out, None)  # whole arrays, NumPy broadcasting
            return out
        flat = [_flat_operand(a, size) for a in arrays]
        if any(a is None for a in flat):  # a partial broadcast or strided view: no flat blocks
            self._evaluate(xp, arrays, out, None)
            return out
        out_flat = out.reshape(-1)

        def block(lo, hi):
            self._evaluate(xp, [a[lo:hi] if a.ndim else a for a in flat], out_flat[lo:hi], hi - lo)

        parallel_blocks(xp, size, 1, block)
        return out

    def _evaluate(self, xp, arrays, out, block):
        temps = []
        last = len(self.program) - 1
        for j, (fn, args) in enumerate(self.program):
            vals = [arrays[k] if kind == "in" else temps[k] for kind, k in args]
            if j == last:
                dest = out
            elif block is None:
                dest = None
            else:
                dest = workspace(xp, ("fused", j), (block,), out.dtype)
            temps.append(_apply(xp, fn, vals, dest))


def _flat_operand(a, size):
    """A flat view of an operand for block slicing; a 0-d array for one value
    (also a scalar broadcast to full size, e.g. a gradient's seed); None if
    neither works without a copy."""
    if a.size == 1 or (a.ndim and not any(a.strides)):
        return a.reshape(-1)[:1].reshape(()) if a.size == 1 else a[(0,) * a.ndim][()]
    if a.size == size and a.flags.c_contiguous:
        return a.reshape(-1)
    return None


def _apply(xp, fn, vals, out):
    if fn == "relu":
        return xp.maximum(vals[0], 0, out=out)
    if fn == "step":  # 1 where x > 0: max(sign(x), 0), with no bool temporary
        r = xp.sign(vals[0], out=out)
        return xp.maximum(r, 0, out=r)
    return getattr(xp, UFUNC_OF[fn])(*vals, out=out)


def fuse_elementwise(order, roots):
    """The schedule's nodes with elementwise chains fused. Returns a map from
    each node's id to its replacement (itself where unchanged)."""
    uses = {}
    for node in order:
        for i in node.inputs:
            uses[id(i)] = uses.get(id(i), 0) + 1
    rooted = {id(r) for r in roots}
    absorbed, heads = set(), {}
    for node in reversed(order):
        if id(node) in absorbed or not _fusable(node):
            continue
        members, stack = {id(node)}, [node]
        while stack:
            m = stack.pop()
            for i in m.inputs:
                if (_fusable(i) and uses.get(id(i)) == 1 and id(i) not in rooted and i.shape == node.shape
                        and i.dtype == node.dtype and id(i) not in members
                        and all(_lines_up(o, node) for o in i.inputs)):
                    members.add(id(i))
                    stack.append(i)
        if len(members) > 1 and all(_lines_up(o, node) for o in node.inputs):
            absorbed |= members - {id(node)}
            heads[id(node)] = _build(node, members)
    return _rebuild(order, heads)


def _build(head, members):
    """One fused node computing ``head`` from the group's outside operands."""
    inputs, program, text_of, index = [], [], {}, {}

    def visit(node):  # post-order, iterative: operands before the op
        stack = [(node, False)]
        while stack:
            n, done = stack.pop()
            if id(n) in index:
                continue
            if id(n) not in members:
                index[id(n)] = ("in", len(inputs))
                text_of[id(n)] = _operand_text(n)
                inputs.append(n)
                continue
            if not done:
                stack.append((n, True))
                stack.extend((i, False) for i in reversed(n.inputs))
                continue
            program.append((_fn(n), tuple(index[id(i)] for i in n.inputs)))
            index[id(n)] = ("t", len(program) - 1)
            text_of[id(n)] = _op_text(_fn(n), [text_of[id(i)] for i in n.inputs])

    visit(head)
    op = FusedElementwise(tuple(program), text_of[id(head)])
    return Tensor(op, inputs, head.shape, head.dtype, name=head.name, scope=head.scope, backward=head.backward)


def _operand_text(node):
    if node.op.name == "constant" and node.op.value.size == 1:
        return f"{node.op.value.item():g}"
    return node.name.rsplit("/", 1)[-1]


def _op_text(fn, args):
    if fn in SYMBOL and len(args) == 2:
        return f"({args[0]} {SYMBOL[fn]} {args[1]})"
    return f"{fn}({', '.join(args)})"


def _rebuild(order, replaced):
    """Rebuild the nodes downstream of replaced ones with their new inputs."""
    canon = {}
    for node in order:
        if id(node) in replaced:
            new = replaced[id(node)]
            ins = tuple(canon.get(id(i), i) for i in new.inputs)
            if ins != new.inputs:
                new = Tensor(new.op, ins, new.shape, new.dtype, name=new.name, scope=new.scope,
                             backward=new.backward)
        else:
            ins = tuple(canon.get(id(i), i) for i in node.inputs)
            new = node if ins == node.inputs else Tensor(node.op, ins, node.shape, node.dtype, name=node.name,
                                                         scope=node.scope, backward=node.backward)
        canon[id(node)] = new
    return canon
