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
the fused nodes). A member that is also kept (an output or an update value,
like SGD's new ``v``, which ``w + v`` reads again) becomes a second output of
the fused op, read through a ``Part`` node: ``v`` and ``w`` are then updated in
one pass, each written into its own buffer.

Convolutions are rewritten first (:func:`_fuse_convolutions`): a ReLU that is
a convolution's only reader rides along with the convolution's last copy
(``conv2d_relu``), and a strided convolution builds its column matrix once,
in an ``im2col`` node that its weight gradient reads too; a stride-1
convolution's two gradients become one op with two outputs built from one
column matrix of ``dy`` (:func:`_fuse_backward_pairs`). A max pooling and the
argmax node its gradient reads become one op with two outputs
(:func:`_fuse_pooling`).
"""
import numpy as np

from .errors import CompilerError
from .graph import Op, Part, Tensor, static_size
from .kernels import device
from .kernels.parallel import BLOCK_ELEMENTS, parallel_blocks, workspace, zeros
from .kernels.conv import grad_input_as_convolution
from .ops.conv import (Conv2d, Conv2dBackward, Conv2dFromCols, Conv2dGradInput, Conv2dGradWeight,
                       Conv2dGradWeightFromCols, Conv2dReLU, Im2col)
from .ops.elementwise import UFUNC_OF, Binary, ReluGrad, Step, Unary, relu_grad_kernel
from .ops.pool import MaxPool2d, MaxPool2dArgmax, MaxPool2dWithArgmax

SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}


def _fusable(node):
    op = node.op
    if node.dtype.kind != "f":
        return False
    if isinstance(op, Unary):
        return op.fn in UFUNC_OF or op.fn == "relu"
    return isinstance(op, (Binary, Step, ReluGrad)) and all(i.dtype == node.dtype for i in node.inputs)


def _fn(node):
    return node.op.fn if isinstance(node.op, (Unary, Binary)) else node.op.name  # step, relu_grad


def _lines_up(operand, head):
    """An operand's flat blocks line up with the output's: same static shape, or one element."""
    return operand.shape == head.shape or static_size(operand.shape) == 1


class FusedElementwise(Op):
    """Several elementwise ops evaluated together, block by block.

    ``program`` is a tuple of steps ``(fn, args)``; an arg ``("in", k)`` is the
    k-th input, ``("t", j)`` the result of step j; the last step is the output.
    ``extra_outputs`` (step indices) are further results, returned after the
    last step's in a tuple: e.g. SGD's ``v' = 0.9 v - lr (g + 5e-4 w)`` and
    ``w' = w + v'`` in one pass, each written into its variable's buffer.
    """

    name = "fused_elementwise"
    supports_out = inplace_safe = True

    def __init__(self, program, text, extra_outputs=()):
        super().__init__(program=program, text=text, extra_outputs=extra_outputs)
        self.num_outputs = 1 + len(extra_outputs)

    def describe(self):
        return f"fused: {self.text}"

    def infer(self, *inputs):  # built by the compiler with the head node's shape
        raise NotImplementedError

    def forward(self, xp, *arrays, out=None):
        if device.on_device(xp):  # one kernel (cupy.fuse), in place for variable updates
            dtype = next((o.dtype for o in (out if isinstance(out, tuple) else (out,)) if o is not None),
                         arrays[0].dtype)
            return device.elementwise_program(xp, self.program, self.extra_outputs, arrays, _apply_fused,
                                              dtype.type, out)
        shape = np.broadcast_shapes(*[a.shape for a in arrays])
        outs = list(out) if self.num_outputs > 1 else [out]
        dtype = next((o.dtype for o in outs if o is not None), arrays[0].dtype)
        outs = [xp.empty(shape, dtype) if o is None else o for o in outs]
        size = outs[0].size
        blocks = (size >= BLOCK_ELEMENTS and xp.__name__ == "numpy" and all(o.flags.c_contiguous for o in outs)
                  and all(a.size in (size, 1) for a in arrays))
        flat = [_flat_operand(a, size) for a in arrays] if blocks else [None]
        if any(a is None for a in flat):
            # small (blocks cost more than they save), or a partial broadcast or strided
            # view that has no flat blocks: whole arrays, NumPy broadcasting
            self._evaluate(xp, arrays, outs, None)
        else:
            outs_flat = [o.reshape(-1) for o in outs]
            nslots = max(self._slots(), default=-1) + 1
            direct = self._direct_outputs(arrays, outs)  # decided once, on the whole arrays

            def block(lo, hi):
                scratch = workspace(xp, "fused", (nslots, hi - lo), dtype)  # one per thread, reused by every block
                self._evaluate(xp, [a[lo:hi] if a.ndim else a for a in flat], [o[lo:hi] for o in outs_flat], scratch,
                               direct)

            parallel_blocks(xp, size, 1, block)
        return tuple(outs) if self.num_outputs > 1 else outs[0]

    def _evaluate(self, xp, arrays, outs, scratch, direct=None):
        """The steps on whole arrays (``scratch`` None: fresh temporaries) or on one
        block (temporaries in the rows of ``scratch``, see :meth:`_slots`).
        ``direct`` (from :meth:`_direct_outputs`) says which extra outputs each
        step may write straight into its output buffer."""
        temps = []
        last = len(self.program) - 1
        slots = self._slots()
        if direct is None:
            direct = self._direct_outputs(arrays, outs)
        for j, (fn, args) in enumerate(self.program):
            vals = [arrays[k] if kind == "in" else temps[k] for kind, k in args]
            if j == last:
                dest = outs[0]
            elif j in direct:
                dest = outs[direct[j]]
            elif scratch is None:
                dest = None
            else:
                dest = scratch[slots[j]]
            temps.append(_apply(xp, fn, vals, dest))
        # The other extra outputs are written last: each may be the buffer of an
        # input (an in-place update) that a later step still reads.
        for i, (o, j) in enumerate(zip(outs[1:], self.extra_outputs), start=1):
            if direct.get(j) != i:
                o[...] = temps[j]

    def _direct_outputs(self, arrays, outs):
        """``{step: output index}`` for the extra outputs a step can compute straight
        into their buffer, saving a copy pass (SGD's ``v'`` into ``v``): those whose
        buffer no later step reads as an input (an in-place update whose old value
        is still needed must wait for the end)."""
        direct = {}
        for i, j in enumerate(self.extra_outputs, start=1):
            o = outs[i]
            if o is None or j in direct:
                continue
            later = {k for _, args in self.program[j + 1:] for kind, k in args if kind == "in"}
            if not any(np.may_share_memory(o, arrays[k]) for k in later if hasattr(arrays[k], "shape")):
                direct[j] = i
        return direct

    def _slots(self):
        """Scratch slot of each step's result: a step may take over the slot of
        a temporary it reads for the last time (ufuncs work in place), so a
        chain uses two or three block buffers, not one per step, and stays in cache.
        Extra outputs keep their slots to the end."""
        slots = self.__dict__.get("_slot_of_step")
        if slots is None:
            last_read = {j: len(self.program) for j in self.extra_outputs}
            for j, (_, args) in enumerate(self.program):
                for kind, k in args:
                    if kind == "t" and k not in self.extra_outputs:
                        last_read[k] = j
            slots, free, count = [], [], 0
            for j, (_, args) in enumerate(self.program):
                free += sorted({slots[k] for kind, k in args if kind == "t" and last_read[k] == j})
                if free:
                    slots.append(free.pop(0))
                else:
                    slots.append(count)
                    count += 1
            self.__dict__["_slot_of_step"] = slots
        return slots


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
        x = vals[0]
        if out is not None and xp.__name__ == "numpy" and x.ndim == 1 and x.shape == out.shape:
            # NumPy's maximum against a broadcast scalar misses its SIMD loop (~4x slower
            # than against an array), so a block compares with a vector of zeros.
            return xp.maximum(x, zeros(xp, x.size, out.dtype), out=out)
        return xp.maximum(x, 0, out=out)
    if fn == "step":  # 1 where x > 0, else 0 (NaN: 0), as Step: the comparison writes 1.0/0.0 into the float out
        if out is None:
            return (vals[0] > 0).astype(vals[0].dtype)
        return xp.greater(vals[0], 0, out=out)  # one pass; sign + maximum took two and ~6x longer
    if fn == "relu_grad":  # g where y > 0, else 0: a select, as ReluGrad (inf * 0 would be NaN)
        return relu_grad_kernel(xp, *vals, out=out)
    return getattr(xp, UFUNC_OF[fn])(*vals, out=out)


def _apply_fused(xp, fn, vals, value_type):
    """One step of a fused program inside ``cupy.fuse``: ufuncs and constants of the
    result's scalar type only. ``step`` is ``where(x > 0, 1, 0)``, ``relu_grad``
    ``where(y > 0, g, 0)``."""
    if fn == "relu":
        return xp.maximum(vals[0], value_type(0))
    if fn == "step":
        return xp.where(vals[0] > value_type(0), value_type(1), value_type(0))
    if fn == "relu_grad":  # g where y > 0, else 0 (a select: an infinite g stays finite where closed)
        return xp.where(vals[0] > value_type(0), vals[1], value_type(0))
    return getattr(xp, UFUNC_OF[fn])(*vals)


def fuse_elementwise(order, roots, share_columns=True):
    """The schedule's nodes with elementwise chains fused, and convolutions
    rewritten (:func:`_fuse_convolutions`: a ReLU into its convolution, and,
    with ``share_columns``, columns shared with the weight gradient: a layout
    of the NumPy kernels only). Returns a map from each node's id to its
    replacement (itself where unchanged)."""
    uses = {}
    for node in order:
        for i in node.inputs:
            uses[id(i)] = uses.get(id(i), 0) + 1
    rooted = {id(r) for r in roots}
    heads, absorbed = _fuse_convolutions(order, uses, rooted, share_columns)
    heads.update(_fuse_pooling(order))
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
            heads.update(_parts(fused, [node] + extras) if extras else {id(node): fused})
    return _rebuild(order, heads)


def _parts(multi, replaced):
    """Replacements of the nodes ``replaced`` by the outputs of ``multi``, an op
    with one output per node, in order: ``{id(node): Part node}``."""
    return {id(old): Tensor(Part(index), (multi,), old.shape, old.dtype, name=old.name, scope=old.scope,
                            backward=old.backward) for index, old in enumerate(replaced)}


# A convolution and its weight gradient share one column matrix (one im2col
# instead of two) when its windows overlap little: kh*kw <= this * sh*sw. The
# columns then stay alive from the forward to the backward pass, so only where
# they are small next to the work they save: AlexNet's conv1 (11x11 / 4x4 = 7.6;
# 140 MB at batch 32, whose strided gather is the dearest copy per byte), not
# the stride-1 layers (9 and 25 times their input).
SHARE_COLUMNS_MAX_EXPANSION = 8


def _fuse_convolutions(order, uses, rooted, share_columns=True):
    """Rewrites of ``conv2d`` nodes. A ReLU that is the only reader of a
    convolution rides along with it (``conv2d_relu``); a convolution whose
    ``conv2d_grad_weight`` (same input and geometry) is in the schedule, with
    little window overlap, reads an ``im2col`` node that the weight gradient
    reads too (``conv2d_from_cols``, ``conv2d_grad_weight_from_cols``).
    Returns ``(heads, absorbed)``: replacements by node id, and the ids of
    nodes folded into them."""
    heads, absorbed = {}, set()
    relu_of = {}
    for node in order:
        conv = node.inputs[0] if node.inputs else None
        if (isinstance(node.op, Unary) and node.op.fn == "relu" and type(conv.op) is Conv2d
                and uses.get(id(conv)) == 1 and id(conv) not in rooted and conv.dtype == node.dtype):
            relu_of[id(conv)] = node
    grads = {}  # (input, kernel size, stride, padding, groups, dilation) -> weight gradients
    for node in order:
        if type(node.op) is Conv2dGradWeight:
            op = node.op
            grads.setdefault((id(node.inputs[0]), op.kernel_size, op.stride, op.padding, op.groups, op.dilation),
                             []).append(node)
    columns = {}
    for node in order:
        if type(node.op) is not Conv2d:
            continue
        op, (x, w) = node.op, node.inputs[:2]
        relu = relu_of.get(id(node))
        head = node if relu is None else relu
        (kh, kw), (sh, sw) = w.shape[2:], op.stride
        key = (id(x), (kh, kw), op.stride, op.padding, op.groups, op.dilation)
        if (share_columns and key in grads and None not in node.shape[2:] and None not in (kh, kw)
                and kh * kw <= SHARE_COLUMNS_MAX_EXPANSION * sh * sw):
            if key not in columns:
                im2col = Im2col((kh, kw), op.stride, op.padding, op.groups, op.dilation)
                shape, dtype = im2col.infer(x)
                columns[key] = cols = Tensor(im2col, (x,), shape, dtype, name=f"im2col_{node.name}",
                                             scope=node.scope, backward=node.backward)
                for gw in grads[key]:
                    heads[id(gw)] = Tensor(Conv2dGradWeightFromCols((kh, kw), op.groups), (cols, gw.inputs[1]),
                                           gw.shape, gw.dtype, name=gw.name, scope=gw.scope, backward=gw.backward)
            new_op = Conv2dFromCols(tuple(node.shape[2:]), op.groups, relu is not None)
            inputs = (columns[key],) + tuple(node.inputs[1:])
        elif relu is not None:
            new_op, inputs = Conv2dReLU(**op.attrs), node.inputs
        else:
            continue
        heads[id(head)] = Tensor(new_op, inputs, head.shape, head.dtype, name=head.name, scope=head.scope,
                                 backward=head.backward)
        if relu is not None:
            absorbed.add(id(node))
    _fuse_backward_pairs(order, heads)
    return heads, absorbed


def _fuse_backward_pairs(order, heads):
    """A stride-1 convolution's input and weight gradients (same ``dy``) become one
    ``conv2d_backward`` op with two outputs, built from one column matrix of ``dy``
    instead of one of ``dy`` and one of ``x`` (AlexNet conv3-5: 7-17 ms each at
    batch 32). One op, so the columns live in scratch memory between the two
    products, not in a buffer kept across the backward pass.

    The merged op reads ``(dy, w, x)``: it must not be merged where ``x`` depends
    on the input gradient or ``w`` on the weight gradient (a second-order graph:
    the weight gradient's ``x`` may be read, for its shape, through the input
    gradient being replaced), which would be a cycle. Each merge is checked
    (:func:`_reaches`, under a work budget linear in the graph), and the merges
    together once more (:func:`_drop_cyclic_merges`)."""
    weight_grads = {}  # (dy, kernel size, stride, padding, groups, dilation) -> weight gradients
    for node in order:
        if type(node.op) is Conv2dGradWeight and id(node) not in heads:
            op = node.op
            weight_grads.setdefault((id(node.inputs[1]), op.kernel_size, op.stride, op.padding, op.groups,
                                     op.dilation), []).append(node)
    position = {id(n): k for k, n in enumerate(order)}
    budget = [4 * len(order) + 64]  # search steps left for all the checks together
    merges = []
    for gi in order:
        if type(gi.op) is not Conv2dGradInput:
            continue
        (dy, w), op = gi.inputs, gi.op
        O, Cg, kh, kw = w.shape
        if None in (O, Cg, kh, kw) or not grad_input_as_convolution(O, Cg * op.groups, op.stride, op.padding,
                                                                    (kh, kw), op.dilation):
            continue
        for gw in weight_grads.get((id(dy), (kh, kw), op.stride, op.padding, op.groups, op.dilation), []):
            x = gw.inputs[0]
            if (id(gw) not in heads and id(gi) not in heads and x.shape[2:] == op.input_size
                    and gw.dtype == gi.dtype and not _reaches(x, gi, position, budget)
                    and not _reaches(w, gw, position, budget)):
                both = Tensor(Conv2dBackward(op.padding, op.groups, op.dilation), (dy, w, x), gi.shape, gi.dtype,
                              name=gi.name, scope=gi.scope, backward=gi.backward)
                merges.append((gi, gw, both))
                heads.update(_parts(both, [gi, gw]))
                break
    for gi, gw, _ in _drop_cyclic_merges(order, merges):
        del heads[id(gi)], heads[id(gw)]


def _reaches(source, target, position, budget):
    """Whether ``target`` is ``source`` or one of its inputs, transitively (in the
    graph as built). A walk back from ``source`` over the nodes scheduled after
    ``target`` (no other can lead to it); ``budget[0]`` counts the steps left for
    every such walk of a pass, so the pass stays linear in the graph: past it the
    answer is True, and the merge asking is refused (merging is optional)."""
    low = position.get(id(target))
    if low is None or position.get(id(source), -1) < low:
        return False
    stack, seen = [source], {id(source)}
    while stack:
        node = stack.pop()
        if node is target:
            return True
        budget[0] -= 1
        if budget[0] < 0:
            return True
        for i in node.inputs:
            if id(i) not in seen and position.get(id(i), -1) >= low:
                seen.add(id(i))
                stack.append(i)
    return False


def _drop_cyclic_merges(order, merges):
    """The merges of ``merges`` (``(gi, gw, merged node)``) to undo so that the graph
    with the rest merged has no cycle. Each was checked alone (:func:`_reaches`);
    two together may still close one (each merge adds the other's inputs to a
    node). Kahn's algorithm over the merged graph, in linear time: the nodes it
    cannot order lie on a cycle or after one, and undoing every merge among them
    leaves them as built, which is acyclic."""
    if not merges:
        return []
    group = {}
    for k, (gi, gw, _) in enumerate(merges):
        group[id(gi)] = group[id(gw)] = ("merge", k)

    def key(n):
        return group.get(id(n), id(n))

    preds, users = {}, {}
    for node in order:
        p = preds.setdefault(key(node), set())
        for i in node.inputs:
            if key(i) != key(node):
                p.add(key(i))
    for k, p in preds.items():
        for i in p:
            users.setdefault(i, []).append(k)
    waiting = {k: len(p) for k, p in preds.items()}
    ready = [k for k, c in waiting.items() if c == 0]
    done = 0
    while ready:
        k = ready.pop()
        done += 1
        for u in users.get(k, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if done == len(waiting):
        return []
    return [m for k, m in enumerate(merges) if waiting[("merge", k)] > 0]


def _fuse_pooling(order):
    """A max pooling whose argmax node (read by its gradient) is in the schedule
    computes both in one sweep over the windows (``max_pool2d_with_argmax``, two
    outputs) instead of a second sweep comparing ``x`` with ``y``. Returns the
    replacements of both nodes by id: the two ``Part`` nodes."""
    heads = {}
    for node in order:
        if type(node.op) is not MaxPool2dArgmax:
            continue
        x, pooled = node.inputs
        if type(pooled.op) is not MaxPool2d or pooled.inputs[0] is not x or pooled.op.attrs != node.op.attrs:
            continue
        if id(pooled) in heads:  # two argmax nodes of one pooling: the compiler merged them already
            continue
        both = Tensor(MaxPool2dWithArgmax(**pooled.op.attrs), (x,), pooled.shape, pooled.dtype,
                      name=pooled.name, scope=pooled.scope, backward=pooled.backward)
        heads.update(_parts(both, [pooled, node]))
    return heads


def _build(head, members, extras=()):
    """One fused node computing ``head`` (and the ``extras``, further outputs
    among the members) from the group's outside operands."""
    inputs, program, text_of, index = [], [], {}, {}
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
            program.append((_fn(n), tuple(index[id(i)] for i in n.inputs)))
            index[id(n)] = ("t", len(program) - 1)
            # A member's text is read once, by its one reader: popped, so only the
            # frontier's texts are alive; each is cut past TEXT_LIMIT, so a long chain
            # costs linear time and memory, not nested strings of every length.
            args = [text_of.pop(id(i)) if id(i) in members else text_of[id(i)] for i in n.inputs]
            text_of[id(n)] = _op_text(_fn(n), args)[:TEXT_LIMIT + 1]
            if id(n) in kept:
                kept_text[id(n)], text_of[id(n)] = text_of[id(n)], _operand_text(n)

    visit(head)
    texts = [text_of[id(head)]] + [kept_text[id(n)] for n in extras]
    if max(map(len, texts)) <= TEXT_LIMIT:
        text = "; ".join(texts[:1] + [f"{_operand_text(n)} = {t}" for n, t in zip(extras, texts[1:])])
    else:
        text = _summary(program, inputs, extras)
    op = FusedElementwise(tuple(program), text, tuple(index[id(n)][1] for n in extras))
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


def _rebuild(order, replaced):
    """Rebuild the nodes downstream of replaced ones with their new inputs
    (also the inputs of nodes the rewrites added, e.g. shared columns).

    A depth-first walk: each node is expanded once (linear in the graph), and an
    input that is still being expanded is a cycle that the replacements made:
    a :class:`~graphdiff.errors.CompilerError`, never an endless loop."""
    canon, active = {}, set()
    for node in order:
        # Schedule nodes come in order, so mostly the inputs are done already; added
        # nodes (and a fused op's operands scheduled after one of its outputs) wait
        # on a stack (iterative: no recursion limit) until their inputs are.
        stack = [node]
        while stack:
            n = stack[-1]
            if id(n) in canon:
                stack.pop()
                continue
            new = replaced.get(id(n), n)
            todo = [i for i in new.inputs if id(i) not in canon]
            if todo:
                cycle = next((i for i in todo if id(i) in active), None)
                if cycle is not None:
                    raise CompilerError(f"fusion made a cycle: {new.op.name} {new.name!r} would read "
                                        f"{cycle.op.name} {cycle.name!r}, which depends on it (a bug in "
                                        f"graphdiff; compile with fuse=False to work around it)")
                active.add(id(n))
                stack.extend(todo)
                continue
            stack.pop()
            active.discard(id(n))
            ins = tuple(canon[id(i)] for i in new.inputs)
            canon[id(n)] = new if ins == new.inputs else Tensor(new.op, ins, new.shape, new.dtype, name=new.name,
                                                                scope=new.scope, backward=new.backward)
    return canon
