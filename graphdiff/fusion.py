"""Compile-time fusion of elementwise chains.

A chain like the SGD update ``v * 0.9 - lr * (w * 5e-4 + g)`` runs, op by op,
as five full passes over memory with four full-size temporaries. Fused, it
is one op that walks the arrays in cache-sized blocks (split over threads:
NumPy's ufuncs release the GIL), evaluating the whole expression per block:
each operand is read once and the result written once (the kernel:
:mod:`graphdiff.kernels.fused`).

The pass groups, walking back from each elementwise node, the elementwise
inputs that only it reads (a tree), of the same shape and dtype, and whose
other operands have that same shape or are scalars (so a flat block of every
operand lines up). Which ops may join is theirs to say: an op with a
``block`` kernel and ``fusable(node)`` true (see
:mod:`graphdiff.ops.elementwise`). A group of two or more ops becomes one
``fused_elementwise`` node; the graph the user built is left as it is (the
compiled schedule holds the fused nodes). A member that is also kept (an
output or an update value, like SGD's new ``v``, which ``w + v`` reads again)
becomes a second output of the fused op, read through a ``Part`` node: ``v``
and ``w`` are then updated in one pass, each written into its own buffer.

Rewrites of particular op families (a ReLU into its convolution, pooling with
its argmax, ...) are rules of :mod:`graphdiff.rewrite`, declared beside the
ops; they run before this pass.
"""
from .graph import Op, Tensor, static_size
from .kernels import fused as _kernel
from .rewrite import parts, rebuild

SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}


def _fusable(node):
    fusable = getattr(node.op, "fusable", None)
    return fusable is not None and hasattr(node.op, "block") and bool(fusable(node))


def _lines_up(operand, head):
    """An operand's flat blocks line up with the output's: same static shape, or one element."""
    return operand.shape == head.shape or static_size(operand.shape) == 1


class FusedElementwise(Op):
    """Several elementwise ops evaluated together, block by block.

    ``program`` is a tuple of steps ``(name, args)``; an arg ``("in", k)`` is the
    k-th input, ``("t", j)`` the result of step j; the last step is the output;
    ``ops`` the op of each step (it evaluates the step: ``op.block``).
    ``extra_outputs`` (step indices) are further results, returned after the
    last step's in a tuple: e.g. SGD's ``v' = 0.9 v - lr (g + 5e-4 w)`` and
    ``w' = w + v'`` in one pass, each written into its variable's buffer.
    """

    name = "fused_elementwise"
    supports_out = inplace_safe = True

    def __init__(self, program, text, extra_outputs=(), ops=()):
        super().__init__(program=program, text=text, extra_outputs=extra_outputs, ops=ops)
        self.num_outputs = 1 + len(extra_outputs)

    def describe(self):
        return f"fused: {self.text}"

    def infer(self, *inputs):  # built by the compiler with the head node's shape
        raise NotImplementedError

    def forward(self, xp, *arrays, out=None):
        slots = self.__dict__.get("_slots")
        if slots is None:
            slots = self.__dict__["_slots"] = _kernel.scratch_slots(self.program, self.extra_outputs)
        return _kernel.run(xp, self.program, self.ops, self.extra_outputs, arrays, out, slots)


def fuse_elementwise(order, roots):
    """The schedule's nodes with elementwise chains fused. Returns a map from
    each node's id to its replacement (itself where unchanged)."""
    uses = {}
    for node in order:
        for i in node.inputs:
            uses[id(i)] = uses.get(id(i), 0) + 1
    rooted = {id(r) for r in roots}
    heads, absorbed = {}, set()
    for node in reversed(order):
        if (id(node) in absorbed or id(node) in heads or not _fusable(node)
                or not all(_lines_up(o, node) for o in node.inputs)):
            continue  # (the head's operands are checked first: a search is never made twice)
        # An input that only this chain reads joins it; if the input is also kept
        # (an output, an update value: SGD's new v, read again by w + v), it
        # becomes an extra output of the fused op, so both are one pass.
        members, stack, extras = {id(node)}, [node], []
        while stack:
            m = stack.pop()
            for i in m.inputs:
                if (_fusable(i) and uses.get(id(i)) == 1 and i.shape == node.shape
                        and i.dtype == node.dtype and id(i) not in members and id(i) not in heads
                        and all(_lines_up(o, node) for o in i.inputs)):
                    members.add(id(i))
                    stack.append(i)
                    if id(i) in rooted:
                        extras.append(i)
        if len(members) > 1:
            absorbed |= members - {id(node)}
            fused = _build(node, members, extras)
            if extras:
                heads.update((id(old), new) for old, new in parts(fused, [node] + extras).items())
            else:
                heads[id(node)] = fused
    return rebuild(order, heads) if heads else {id(n): n for n in order}


def _build(head, members, extras=()):
    """One fused node computing ``head`` (and the ``extras``, further outputs
    among the members) from the group's outside operands."""
    inputs, program, ops, text_of, index = [], [], [], {}, {}
    # An extra output appears by name in the expressions that read it, and once in full.
    kept, kept_text = {id(n) for n in extras}, {}

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
            program.append((n.op.name, tuple(index[id(i)] for i in n.inputs)))
            ops.append(n.op)
            index[id(n)] = ("t", len(program) - 1)
            # A member's text is read once, by its one reader: popped, so only the
            # frontier's texts are alive; each is cut past TEXT_LIMIT, so a long chain
            # costs linear time and memory, not nested strings of every length.
            args = [text_of.pop(id(i)) if id(i) in members else text_of[id(i)] for i in n.inputs]
            text_of[id(n)] = _op_text(n.op.name, args)[:TEXT_LIMIT + 1]
            if id(n) in kept:
                kept_text[id(n)], text_of[id(n)] = text_of[id(n)], _operand_text(n)

    visit(head)
    texts = [text_of[id(head)]] + [kept_text[id(n)] for n in extras]
    if max(map(len, texts)) <= TEXT_LIMIT:
        text = "; ".join(texts[:1] + [f"{_operand_text(n)} = {t}" for n, t in zip(extras, texts[1:])])
    else:
        text = _summary(program, inputs, extras)
    op = FusedElementwise(tuple(program), text, tuple(index[id(n)][1] for n in extras), tuple(ops))
    return Tensor(op, inputs, head.shape, head.dtype, name=head.name, scope=head.scope, backward=head.backward)


# Characters of a fused op's expression text (a diagram shows the first 150 or
# so); a longer expression is summarized instead (see _summary).
TEXT_LIMIT = 1000


def _summary(program, inputs, extras):
    """The text of a fused op too long to write out: how many ops of each kind,
    on which operands, e.g. ``20,000 elementwise ops (10,000 add, 10,000 mul) on
    x, 0.001, 1.0001``."""
    counts = {}
    for fn, _ in program:
        counts[fn] = counts.get(fn, 0) + 1
    kinds = ", ".join(f"{c:,} {fn}" for fn, c in sorted(counts.items(), key=lambda item: -item[1]))
    names = list(dict.fromkeys(_operand_text(n) for n in inputs))
    on = ", ".join(names[:6]) + (f" and {len(names) - 6:,} more" if len(names) > 6 else "")
    also = f"; also returns {', '.join(_operand_text(n) for n in extras)}" if extras else ""
    return f"{len(program):,} elementwise ops ({kinds}) on {on}{also}"


def _operand_text(node):
    if node.op.name == "constant" and node.op.value.size == 1:
        return f"{node.op.value.item():g}"
    return node.name.rsplit("/", 1)[-1]


def _op_text(fn, args):
    if fn in SYMBOL and len(args) == 2:
        return f"({args[0]} {SYMBOL[fn]} {args[1]})"
    return f"{fn}({', '.join(args)})"
