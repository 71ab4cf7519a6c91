"""A program's instructions from its schedule: slots, what each reads and frees,
alias groups of views, and the variable updates written in place.

Each scheduled node gets a slot; an op becomes an instruction ``(kernel,
input slots, output slot, slots to free, node)``. An intermediate is dropped
right after its last reader, so peak memory is what the schedule needs at
once, not the whole graph. Part of :class:`graphdiff.compiler.Program`.
"""
import functools

from .graph import ConstantOp, Part, PlaceholderOp, VariableOp
from .kernels import choice as kernel_choice


class Planning:
    """The instruction plan of a :class:`~graphdiff.compiler.Program` (a mixin)."""

    def _plan(self, order, roots):
        slot = {id(n): i for i, n in enumerate(order)}
        keep = {slot[id(r)] for r in roots}
        last_use = {}
        for i, node in enumerate(order):
            for inp in node.inputs:
                last_use[slot[id(inp)]] = i
        frees = [[] for _ in order]
        for s, i in last_use.items():
            if s not in keep:
                frees[i].append(s)
        # Alias groups: a view (reshape, transpose, ...) shares its input's memory,
        # so a buffer is free again only when every slot viewing it is dead.
        root = {}
        for i, node in enumerate(order):
            root[i] = root[slot[id(node.inputs[0])]] if node.op.is_view and node.inputs else i
        group_end, escaping = {}, set()
        for i in range(len(order)):
            r = root[i]
            group_end[r] = max(group_end.get(r, -1), last_use.get(i, i), i)
            if i in keep:
                escaping.add(r)
        self._root, self._group_end, self._escaping = root, group_end, escaping
        self._escaping_outputs = {root[slot[id(r)]] for r in roots[:len(self.outputs)]}
        # Ops with several outputs: slot -> {output index: slot of its Part node}
        self._parts = {i: {} for i, node in enumerate(order) if node.op.num_outputs > 1}
        for i, node in enumerate(order):
            if isinstance(node.op, Part):
                self._parts[slot[id(node.inputs[0])]][node.op.index] = i
        self._inplace = self._plan_inplace_updates(order, slot, roots, last_use, root, group_end, keep)
        xp = self.backend.xp
        self._feeds = [slot[id(p)] if id(p) in slot else None for p in self.inputs]
        self._variables = []  # (slot, variable)
        self._constants = []  # (slot, value on this backend)
        self._instrs = []     # (kernel, input slots, output slot, slots to free, node)
        for i, node in enumerate(order):
            op = node.op
            if isinstance(op, VariableOp):
                self._variables.append((i, node))
            elif isinstance(op, ConstantOp):
                self._constants.append((i, self.backend.asarray(op.value)))
            elif isinstance(op, PlaceholderOp):
                pass
            else:
                self._instrs.append((_kernel(op, xp, self), tuple(slot[id(x)] for x in node.inputs),
                                     i, tuple(frees[i]), node))
        self._out_slots = [slot[id(r)] for r in roots[:len(self.outputs)]]
        # An update value that is (a view of) a leaf, or that another update
        # also takes, is copied on commit: variables never share a buffer with
        # each other, a constant or the caller's input (in-place steps write them).
        self._update_slots, taken = [], set()
        for (var, _), r in zip(self.updates, roots[len(self.outputs):]):
            s = slot[id(r)]
            leaf = isinstance(order[root[s]].op, (PlaceholderOp, VariableOp, ConstantOp))
            self._update_slots.append((var, s, leaf or root[s] in taken))
            taken.add(root[s])
        self._nslots = len(order)
        self._variable_slots = {s for s, _ in self._variables}

    def _plan_inplace_updates(self, order, slot, roots, last_use, root, group_end, keep):
        """Updates whose new value can be written straight into the variable's
        own buffer: an elementwise op (safe when ``out`` is also an input) that
        is the variable's last reader, with no view of the old value alive and
        the value not returned. Returns {instruction slot: variable}."""
        inplace = {}
        for (var, _), value in zip(self.updates, roots[len(self.outputs):]):
            v, s = slot.get(id(var)), slot[id(value)]
            node, writer, part = order[s], s, None
            if isinstance(node.op, Part):  # an output of an op with several: that op writes it
                writer, part = slot[id(node.inputs[0])], node.op.index
            if (v is not None and getattr(order[writer].op, "inplace_safe", False) and node.dtype == var.dtype
                    and root[v] == v and v not in self._escaping and group_end[v] <= writer
                    and root[s] == s and s not in self._escaping_outputs):
                if part is None and s not in inplace:
                    inplace[s] = var
                elif part is not None and part not in inplace.setdefault(writer, {}):
                    inplace[writer][part] = var  # {output index: variable}
        return inplace

    @property
    def in_place_updates(self):
        """The variables whose new value each call writes straight into their own
        buffer (see ``_plan_inplace_updates``), in update order."""
        written = set()
        for target in self._inplace.values():
            written.update(id(v) for v in (target.values() if isinstance(target, dict) else [target]))
        return [var for var, _ in self.updates if id(var) in written]


def _input_checks(order, inputs):
    """``{id(placeholder): [(op name, check)]}``: the value checks that ops declare on
    inputs fed straight from a placeholder (``Op.input_checks``), run where the value
    is fed, e.g. labels in range before they are uploaded to a GPU."""
    fed = {id(p) for p in inputs}
    checks = {}
    for node in order:
        declared = getattr(node.op, "input_checks", None)
        for index, check in (declared(node) if declared else {}).items():
            source = node.inputs[index]
            if id(source) in fed:
                checks.setdefault(id(source), []).append((node.op.name, check))
    return checks


def _kernel(op, xp, program):
    if op.is_random:
        def run(*arrays):
            return op.forward(xp, *arrays, rng=program.rng, training=program.training)
        return run
    return kernel_choice.kernel_for(op, xp, program.kernel_mode) or functools.partial(op.forward, xp)
