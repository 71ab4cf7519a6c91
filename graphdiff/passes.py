"""The compiler's passes, in order (``Program.passes`` records the graph after each):

1. **prune**: keep only the nodes the outputs and updates need;
2. **simplify**: merge identical subexpressions (same op, attributes and
   inputs) and fold constant subgraphs into constants;
3. **rewrite**: the op families' rules (:mod:`graphdiff.rewrite`), e.g. a ReLU
   into its convolution, pooling with its argmax; the record counts each
   rule's firings;
4. **fusion**: elementwise chains into one op (:mod:`graphdiff.fusion`).

After each, **schedule** orders the graph (a topological walk); the program
then plans its instructions and memory (:mod:`graphdiff.planning`,
:mod:`graphdiff.memory`).
"""
import numpy as np

from .fusion import fuse_elementwise
from .errors import CompilerError
from .graph import ConstantOp, PlaceholderOp, Tensor, VariableOp, constant, toposort
from .rewrite import apply_rules


class PassRecord(tuple):
    """One entry of ``Program.passes``: ``(name, nodes)`` (the schedule after the
    pass), with ``rules``: ``{rule name: firings}`` for the ``rewrite`` pass, else {}."""

    def __new__(cls, name, nodes, rules=None):
        record = super().__new__(cls, (name, nodes))
        record.rules = dict(rules or {})
        return record

    @property
    def name(self):
        return self[0]

    @property
    def nodes(self):
        return self[1]


def run_passes(roots, optimize=True, fuse=True, offers=frozenset()):
    """The pipeline on ``roots`` (outputs, then update values): returns ``(passes,
    order, roots)``: the :class:`PassRecord` of each pass that ran, the final
    schedule and the roots in it. ``offers`` the layouts of the kernel libraries
    in play (for the rewrite rules, see ``kernels.choice.offers``)."""
    passes = [PassRecord("prune", toposort(roots))]
    canon = simplify(roots) if optimize else {id(n): n for n in passes[0].nodes}
    roots = [canon[id(r)] for r in roots]
    order = schedule(roots)
    if optimize:
        passes.append(PassRecord("simplify", order))
    if fuse:
        for name, rewrite in (("rewrite", lambda o, r: apply_rules(o, r, offers)),
                              ("fusion", lambda o, r: (fuse_elementwise(o, r), None))):
            canon, fired = rewrite(order, roots)
            roots = [canon[id(r)] for r in roots]
            order = schedule(roots)
            _check_order(order, name)
            passes.append(PassRecord(name, order, fired))
    return passes, order, roots


def schedule(roots):
    """The order the program runs: a topological walk from the roots, except
    that nodes whose op has a ``schedule_early`` key (the start of a
    communication, e.g. a gradient bucket's all-reduce) are walked from
    first, in key order. Each then runs as soon as its inputs exist, and what
    waits for it comes after the last of them: communication overlaps the
    computation between (see ``graphdiff.distributed``)."""
    order = toposort(roots)
    early = [n for n in order if getattr(n.op, "schedule_early", None) is not None]
    if not early:
        return order
    return toposort(sorted(early, key=lambda n: n.op.schedule_early) + list(roots))


def _check_order(order, after):
    """Every node's inputs run before it (what a rewrite that made a cycle would
    break): one pass over the edges; a CompilerError naming the node otherwise."""
    done = set()
    for node in order:
        late = next((i for i in node.inputs if id(i) not in done), None)
        if late is not None:
            raise CompilerError(f"after {after}: {node.op.name} {node.name!r} is scheduled before its input "
                                f"{late.op.name} {late.name!r} (a bug in graphdiff; compile with fuse=False "
                                f"to work around it)")
        done.add(id(node))


def simplify(roots):
    """Merge identical subexpressions and fold constant subgraphs.

    Returns a map from each node's id to its canonical node: a node whose
    op, attributes and (canonical) inputs equal an earlier one's maps to that
    one; a deterministic node whose inputs are all constants is computed once
    here and becomes a constant.
    """
    canon, table = {}, {}
    for node in toposort(roots):
        ins = tuple(canon[id(i)] for i in node.inputs)
        op = node.op
        if isinstance(op, (PlaceholderOp, VariableOp)):
            canon[id(node)] = node
            continue
        if op.is_random:  # never merged nor folded, but reads the merged inputs
            canon[id(node)] = node if ins == node.inputs else Tensor(
                op, ins, node.shape, node.dtype, name=node.name, scope=node.scope, backward=node.backward)
            continue
        key = (op.key(), tuple(id(i) for i in ins))
        if key in table:
            canon[id(node)] = table[key]
            continue
        if ins and all(isinstance(i.op, ConstantOp) for i in ins):
            value = np.asarray(op.forward(np, *[i.op.value for i in ins]))
            new = constant(value, dtype=node.dtype, name=None)
            new.name, new.scope, new.backward = node.name, node.scope, node.backward
            key = (new.op.key(), ())
            new = table.setdefault(key, new)
        elif ins != node.inputs:
            new = Tensor(op, ins, node.shape, node.dtype, name=node.name, scope=node.scope, backward=node.backward)
        else:
            new = node
        table[key] = new
        canon[id(node)] = new
    return canon
