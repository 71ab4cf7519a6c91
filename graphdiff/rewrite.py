"""Compile-time rewrites as data: rules declared beside their op families, one driver.

A rule (as in tinygrad's ``PatternMatcher``) is a name, the op types it matches
and a function ``fn(node, ctx)`` that returns the replacements it makes,
``{old node: new node}``, or None where it does not apply. Each op family
registers its own (:func:`rule`, e.g. ``graphdiff/ops/conv_rewrites.py``:
a ReLU into its convolution, shared columns, both gradients in one op;
``graphdiff/ops/pool.py``: max pooling with its argmax), so the compiler names
no op. The driver (:func:`apply_rules`) walks the schedule once per rule, in
registration order; a rule sees the graph as the rules before it left it
(``ctx.current``), so a later rule may rewrite what an earlier one made.

The context (:class:`Context`) gives a rule what it may decide on: how many
nodes read a node (``uses``), whether it is kept (an output or update value,
``is_root``), the nodes of an op type (``nodes``), a bounded reachability test
(``reaches``) and what the kernel libraries in play offer (``offers``, e.g.
``"im2col_columns"``: NumPy's convolution layout).

Guarantees kept whatever the rules: the driver's work is linear in the graph
(one walk per rule; ``reaches`` shares one budget per pass), a rule declared
``merges=True`` (its new node reads the inputs of several replaced nodes) is
checked with the others for a cycle they make together
(:func:`_drop_cyclic_merges` undoes those), and the rebuild (:func:`rebuild`)
raises a :class:`~graphdiff.errors.CompilerError` on a cycle instead of looping.
``fired`` counts each rule's firings by name (``Program.passes`` shows them).
"""
import collections

from .errors import CompilerError
from .graph import Part, Tensor


class Rule:
    """A rewrite: ``name``, the op types it matches (exact types), ``fn(node, ctx)``
    returning ``{old: new}`` or None, and ``merges`` (see the module docstring)."""

    __slots__ = ("name", "ops", "fn", "merges")

    def __init__(self, name, ops, fn, merges=False):
        self.name, self.ops, self.fn, self.merges = name, tuple(ops), fn, merges

    def __repr__(self):
        return f"Rule({self.name!r}, {', '.join(t.__name__ for t in self.ops)})"


RULES = []  # every registered rule, in registration (= application) order


def register(new_rule):
    """Add ``new_rule`` to the registry (replacing one of the same name); returns it."""
    for k, r in enumerate(RULES):
        if r.name == new_rule.name:
            RULES[k] = new_rule
            return new_rule
    RULES.append(new_rule)
    return new_rule


def unregister(name):
    """Remove the rule called ``name`` (a test's toy rule, for instance)."""
    RULES[:] = [r for r in RULES if r.name != name]


def rule(name, ops, merges=False):
    """Decorator: register ``fn(node, ctx)`` as the rule ``name`` matching ``ops``."""
    def decorate(fn):
        register(Rule(name, ops if isinstance(ops, (tuple, list)) else (ops,), fn, merges))
        return fn
    return decorate


class Context:
    """What a rule sees of the graph being rewritten (see the module docstring)."""

    def __init__(self, order, roots, offers=frozenset()):
        self.order = order
        self.position = {id(n): k for k, n in enumerate(order)}
        self._uses = collections.Counter(id(i) for n in order for i in n.inputs)
        self._rooted = {id(r) for r in roots}
        self._offers = offers  # a container: "feature in offers"
        self.heads = {}       # id(original node) -> its replacement
        self.absorbed = set()  # ids of nodes folded into a replacement
        self.memo = {}        # per-rule scratch (e.g. an index built once per pass)
        self._origin = {}     # id(replacement) -> the original node it replaces
        self.budget = [4 * len(order) + 64]  # search steps left for every reaches() of the pass

    def uses(self, node):
        """How many input slots of the scheduled graph read ``node``."""
        return self._uses.get(id(node), 0)

    def is_root(self, node):
        """Whether ``node`` is kept: an output or an update value."""
        return id(node) in self._rooted

    def offers(self, feature):
        """Whether the kernel libraries in play all offer ``feature`` (a layout, e.g.
        ``"im2col_columns"``)."""
        return feature in self._offers

    def current(self, node):
        """``node`` as the rules so far left it (its replacement, or itself)."""
        return self.heads.get(id(self._origin.get(id(node), node)), node)

    def replaced(self, node):
        return id(self._origin.get(id(node), node)) in self.heads

    def nodes(self, *op_types):
        """The scheduled nodes whose current op is of one of ``op_types``, in order."""
        return [n for n in self.order if id(n) not in self.absorbed and type(self.current(n).op) in op_types]

    def absorb(self, node):
        """Mark ``node`` as folded into a replacement (no other rule matches it)."""
        self.absorbed.add(id(self._origin.get(id(node), node)))

    def reaches(self, source, target):
        """Whether ``target`` is ``source`` or among its inputs, transitively (bounded: see :func:`_reaches`)."""
        return _reaches(source, target, self.position, self.budget)

    def _set(self, old, new):
        original = self._origin.get(id(old), old)
        self.heads[id(original)] = new
        self._origin[id(new)] = original
        return original


def like(old, op, inputs):
    """A node computing ``op`` on ``inputs`` in place of ``old`` (same shape, dtype, name)."""
    return Tensor(op, inputs, old.shape, old.dtype, name=old.name, scope=old.scope, backward=old.backward)


def parts(multi, replaced):
    """Replacements of the nodes ``replaced`` by the outputs of ``multi``, an op
    with one output per node, in order: ``{old node: Part node}``."""
    return {old: Tensor(Part(index), (multi,), old.shape, old.dtype, name=old.name, scope=old.scope,
                        backward=old.backward) for index, old in enumerate(replaced)}


def apply_rules(order, roots, offers=frozenset(), rules=None):
    """Apply ``rules`` (default: every registered one) to the schedule ``order``.
    Returns ``(canon, fired)``: a map from each node's id to its replacement
    (itself where unchanged, see :func:`rebuild`) and ``{rule name: firings}``."""
    ctx = Context(order, roots, offers)
    fired = collections.Counter()
    merges = []  # (rule, old nodes..., None): firings checked together for cycles
    for r in RULES if rules is None else rules:
        for node in order:
            if id(node) in ctx.absorbed:
                continue
            cur = ctx.current(node)
            if type(cur.op) not in r.ops:
                continue
            replacements = r.fn(cur, ctx)
            if not replacements:
                continue
            olds = [ctx._set(old, new) for old, new in replacements.items()]
            fired[r.name] += 1
            if r.merges:
                merges.append((*olds, r))
    for merge in _drop_cyclic_merges(order, merges):
        for old in merge[:-1]:
            del ctx.heads[id(old)]
        fired[merge[-1].name] -= 1
    fired = {name: n for name, n in fired.items() if n}
    if not ctx.heads:
        return {id(n): n for n in order}, fired
    return rebuild(order, ctx.heads), fired


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
    """The merges of ``merges`` (tuples: the merged nodes, then anything, e.g. the
    rule) to undo so that the graph with the rest merged has no cycle. Each was
    checked alone (:func:`_reaches`); two together may still close one (each merge
    adds the other's inputs to a node). Kahn's algorithm over the merged graph, in
    linear time: the nodes it cannot order lie on a cycle or after one, and undoing
    every merge among them leaves them as built, which is acyclic."""
    if not merges:
        return []
    group = {}
    for k, merge in enumerate(merges):
        for node in merge[:-1]:
            group[id(node)] = ("merge", k)

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


def rebuild(order, replaced):
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
                    raise CompilerError(f"a rewrite made a cycle: {new.op.name} {new.name!r} would read "
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
