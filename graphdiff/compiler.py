"""Compile a graph into a program and run it.

``compile(outputs, inputs, updates)`` does, in order:

1. **prune**: keep only the nodes the outputs and updates need;
2. **simplify**: merge identical subexpressions (same op, attributes and
   inputs) and fold constant subgraphs into constants;
3. **order**: a topological schedule (iterative walk);
4. **plan memory**: each intermediate is dropped right after its last reader,
   so peak memory is what the schedule needs at once, not the whole graph;
5. **run** the schedule with the backend's array module (NumPy or CuPy).

Calling the program checks every input (``InputError`` names the input and
expected vs given shape/dtype), runs, then applies ``updates``: all new values
are computed from the old ones before any variable changes.

A program may be called from several threads at once: each thread runs with
buffers of its own (recorded on its first call), and a program with updates
runs one call at a time (a step reads the variables that the other writes).
"""
import bisect
import collections
import contextlib
import functools
import threading
import time

import numpy as np

from .backends import get_backend
from .errors import CompileArgumentError, GraphdiffError, InputError, OutOfMemoryError, ShapeError
from .feed import as_input, exportable
from .fusion import fuse_elementwise
from .rewrite import apply_rules
from .kernels import choice as kernel_choice, parallel
from .graph import (ConstantOp, Part, PlaceholderOp, Tensor, Variable, VariableOp, constant, fmt_shape, gc_paused,
                    toposort)


@gc_paused()  # deep graphs: see graph.gc_paused
def compile(outputs, inputs=(), updates=None, backend=None, training=True, seed=0, optimize=True,  # noqa: A001
            fuse=None, kernels=None):
    """Compile ``outputs`` (a tensor or a list) into a callable.

    ``inputs`` are placeholders fed positionally (or by name as keywords), a
    list or a single placeholder; ``updates`` a list of ``(variable,
    new_value)`` pairs applied after each run, or a dict ``{variable:
    new_value}``, one pair, or an optimizer's ``(updates, state)`` as returned
    by :func:`graphdiff.optim.sgd_momentum`; ``backend`` names where the arrays
    live: ``"numpy"`` or ``"cupy"`` (default: ``"numpy"``, or the name set by
    :func:`graphdiff.default_backend` around the call);
    ``training=False`` turns dropout off; ``seed`` seeds the program's random
    generator (dropout masks); ``optimize=False`` skips merging, folding and
    fusing; ``fuse=False`` skips only the fusion of elementwise chains;
    ``kernels`` picks the convolutions' kernel library on NumPy: ``"auto"``
    (measured per layer at the first run), ``"numpy"`` or ``"onednn"``; default
    ``GRAPHDIFF_KERNELS`` or ``"auto"`` (see :mod:`graphdiff.kernels.choice`).
    """
    if isinstance(inputs, Tensor):
        inputs = [inputs]
    return Program(outputs, inputs, _update_pairs(updates), backend, training, seed, optimize,
                   optimize if fuse is None else fuse, kernels)


def _update_pairs(updates):
    """``compile``'s ``updates`` as a list of ``(variable, new_value)`` pairs: from a
    list or tuple of pairs, a dict, one pair, or an optimizer's ``(updates, state)``."""
    expected = ("a list of (variable, new_value) pairs or a dict {variable: new_value} "
                "(an optimizer's (updates, state) also works)")
    if updates is None:
        return []
    if (isinstance(updates, tuple) and len(updates) == 2 and isinstance(updates[0], (list, tuple, dict))
            and not isinstance(updates[1], (Tensor, list, tuple))):
        updates = updates[0]  # (updates, state), e.g. from optim.sgd_momentum
    if isinstance(updates, dict):
        return list(updates.items())
    if isinstance(updates, tuple) and len(updates) == 2 and isinstance(updates[0], Variable) \
            and isinstance(updates[1], Tensor):
        return [updates]  # one (variable, new_value) pair
    if isinstance(updates, (Tensor, str, bytes, set, frozenset)) or not hasattr(updates, "__iter__"):
        raise CompileArgumentError(f"compile: updates must be {expected}, got {type(updates).__name__}")
    pairs = []
    for k, pair in enumerate(list(updates)):  # also a generator or zip(variables, values)
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(t, Tensor) for t in pair)):
            if not isinstance(pair, (list, tuple)):
                got = type(pair).__name__
            elif len(pair) != 2:
                got = f"a {len(pair)}-tuple"
            else:
                got = f"a pair of ({', '.join(type(t).__name__ for t in pair)}), not of Tensors"
            raise CompileArgumentError(f"compile: updates[{k}] is {got}; updates must be {expected}")
        pairs.append(tuple(pair))
    return pairs


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


class Program:
    """A compiled graph. Call it with the input arrays; it returns the outputs
    (a single array for a single output tensor, else a list)."""

    def __init__(self, outputs, inputs, updates, backend, training, seed, optimize, fuse, kernels=None):
        self.backend = get_backend(backend)
        self.kernel_mode = kernel_choice.resolve_mode(kernels)
        self.single = isinstance(outputs, Tensor)
        self.outputs = [outputs] if self.single else _output_list(outputs)
        self.inputs = list(inputs)
        self.updates = list(updates)
        self.training = training
        self.rng = np.random.default_rng(seed)
        self.last_profile = None  # [(node, seconds)] of the latest profile() run
        self._thread = threading.local()  # per calling thread: memory plans, profile timings
        # A step reads the variables another step writes: calls with updates take turns.
        self._step_lock = threading.Lock() if self.updates else None
        self._check_signature()

        roots = self.outputs + [v for _, v in self.updates]
        # The graph after each pass, by pass name (for the explorer's compiler view).
        self.passes = [("prune", toposort(roots))]
        canon = _simplify(roots) if optimize else {id(n): n for n in self.passes[0][1]}
        roots = [canon[id(r)] for r in roots]
        order = _schedule(roots)
        if optimize:
            self.passes.append(("simplify", order))
        if fuse:
            # The rules of the op families; a layout rule applies only where every
            # kernel library in play offers it (see kernels.choice.offers).
            canon, fired = apply_rules(order, roots, kernel_choice.offers(self.kernel_mode, self.backend.name))
            roots = [canon[id(r)] for r in roots]
            order = _schedule(roots)
            self.passes.append(PassRecord("rewrite", order, fired))
            fused = fuse_elementwise(order, roots)
            roots = [fused[id(r)] for r in roots]
            order = _schedule(roots)
            self.passes.append(("fusion", order))
        self.nodes = order  # the scheduled graph, for inspection and diagrams
        self._input_checks = _input_checks(order, self.inputs)

        needed = {id(n) for n in order if isinstance(n.op, PlaceholderOp)}
        fed = {id(p) for p in self.inputs}
        missing = [n.name for n in order if id(n) in needed - fed]
        if missing:
            raise InputError(f"compile: the outputs need placeholder(s) {', '.join(map(repr, missing))}, "
                             f"which are not among the inputs")
        self._plan(order, roots)

    # ------------------------------------------------------------------ build
    def _check_signature(self):
        for p in self.inputs:
            if not isinstance(p, Tensor) or not isinstance(p.op, PlaceholderOp):
                raise CompileArgumentError(f"compile: inputs must be placeholders, got {p!r}")
        if len({id(p) for p in self.inputs}) != len(self.inputs):
            raise InputError("compile: an input placeholder is listed twice")
        targets = set()
        for pair in self.updates:
            var, value = pair
            if not isinstance(var, Variable):
                raise CompileArgumentError(f"compile: update targets must be variables, got {var!r}")
            if id(var) in targets:
                raise InputError(f"compile: variable {var.name!r} is updated twice")
            targets.add(id(var))
            if value.shape != var.shape:
                raise ShapeError(f"compile: update of {var.name} {fmt_shape(var.shape)} with "
                                 f"{value.name} {fmt_shape(value.shape)}: shapes differ")

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
    def _plans(self):
        """This thread's memory plans: input shapes -> buffers per instruction (see
        :meth:`_memory_plan`). Per thread, so that concurrent calls never share a buffer."""
        plans = getattr(self._thread, "plans", None)
        if plans is None:
            plans = self._thread.plans = {}
        return plans

    def _memory_plan(self, shapes):
        """Buffers for the instructions whose kernel writes into ``out``, from
        the output shapes recorded on a first run with these input shapes.

        Walking the schedule, each instruction takes the smallest free byte
        buffer that holds its output (whatever its shape; at most 4x larger,
        so a small output does not pin a big buffer), or a new one; a buffer
        is free again after the last reader of its alias group. The same
        buffers then serve every later call with these input shapes, so a
        training step allocates (and page-faults) nothing large after the first."""
        xp = self.backend.xp
        plan, releases = [], {}
        # Free buffers by size (oldest first), and their sizes sorted: finding the
        # smallest that fits is a bisection, not a scan of every free buffer (deep
        # graphs free thousands at once).
        free_by_size, sizes = {}, []

        def release(flat):
            if flat.nbytes not in free_by_size:
                free_by_size[flat.nbytes] = collections.deque()
                bisect.insort(sizes, flat.nbytes)
            free_by_size[flat.nbytes].append(flat)

        def take(shape, dtype, release_after):
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if not nbytes:  # empty outputs need no buffer
                return None
            j = bisect.bisect_left(sizes, nbytes)
            if j < len(sizes) and sizes[j] <= 4 * nbytes:
                bucket = free_by_size[sizes[j]]
                flat = bucket.popleft()
                if not bucket:
                    del free_by_size[sizes.pop(j)]
            else:
                flat = _allocate(xp, nbytes, node)
            releases.setdefault(release_after, []).append(flat)
            return flat[:nbytes].view(dtype).reshape(shape)

        for k, (_, ins, out, _, node) in enumerate(self._instrs):
            buf = None
            if getattr(node.op, "supports_out", False) and out in shapes:
                if out in self._parts:  # one buffer per output, free after the last reader of its part
                    parts, inplace = self._parts[out], self._inplace.get(out, {})
                    buf = tuple(None if j in inplace or parts.get(j) in self._escaping
                                else take(*shapes[out][j], self._group_end[parts[j]] if j in parts else out)
                                for j in range(node.op.num_outputs))
                elif out not in self._inplace and self._root[out] == out and out not in self._escaping:
                    buf = take(*shapes[out], self._group_end[out])
            plan.append(buf)
            for flat in releases.pop(out, ()):
                release(flat)
        return plan

    def _outputs_of(self, k, out, plan):
        """The ``out`` tuple of an op with several outputs: planned buffers and the
        variables' own buffers (in-place updates), None where the kernel allocates."""
        planned = plan[k] if plan is not None and plan[k] is not None else (None,) * self._instrs[k][4].op.num_outputs
        inplace = self._inplace.get(out, {})
        return tuple(inplace[j]._value if j in inplace else b for j, b in enumerate(planned))

    # ------------------------------------------------------------------ run
    def _feed(self, args, kwargs):
        if kwargs:
            by_name = {p.name: k for k, p in enumerate(self.inputs)}
            args = list(args) + [None] * (len(self.inputs) - len(args))
            for key, value in kwargs.items():
                if key not in by_name:
                    raise InputError(f"unexpected input {key!r}; the inputs are "
                                     f"{', '.join(p.name for p in self.inputs) or 'none'}")
                if args[by_name[key]] is not None:
                    raise InputError(f"input {key!r} given twice")
                args[by_name[key]] = value
        if len(args) != len(self.inputs) or any(a is None for a in args):
            got = sum(a is not None for a in args)
            names = ", ".join(repr(p.name) for p in self.inputs) or "no inputs"
            missing = [repr(p.name) for p, a in zip(self.inputs, args) if a is None]
            if len(args) < len(self.inputs):
                missing += [repr(p.name) for p in self.inputs[len(args):]]
            detail = f"; missing {', '.join(missing)}" if missing else ""
            raise InputError(f"expected {len(self.inputs)} input(s) ({names}), got {got}{detail}")
        return [self._check_input(p, a) for p, a in zip(self.inputs, args)]

    def _check_input(self, p, value):
        checks = self._input_checks.get(id(p))
        if not checks:
            return as_input(p, value, self.backend)  # checks and converts (DLPack arrays without a copy)
        # Value checks (labels in range) run on the host array before it is uploaded:
        # on a GPU, reading it back mid-step would stall the step. A value already on
        # the device is not read back: the op checks it there (see Op.input_checks).
        host = isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__")
        on_host = get_backend("numpy")
        if not host and self.backend is not on_host:
            return as_input(p, value, self.backend)
        value = as_input(p, value, on_host if host else self.backend)
        for op_name, check in checks:
            problem = check(value)
            if problem:
                raise InputError(f"input {p.name!r}: {op_name}: {problem}")
        # Upload it; on NumPy the first as_input already made the program's array.
        return as_input(p, value, self.backend) if host and self.backend is not on_host else value

    def __call__(self, *args, **kwargs):
        if self._step_lock is None:
            return self._run(args, kwargs)
        with self._step_lock:
            return self._run(args, kwargs)

    def _run(self, args, kwargs):
        fed = self._feed(args, kwargs)
        vals = [None] * self._nslots
        for s, value in zip(self._feeds, fed):
            if s is not None:
                vals[s] = value
        for s, var in self._variables:
            vals[s] = self.backend.load_variable(var)
        for s, value in self._constants:
            vals[s] = value
        signature = tuple(v.shape for v in fed)
        plans = self._plans
        plan = plans.get(signature)
        record = {} if plan is None and self.backend.plans_memory else None
        instr = None
        timings = getattr(self._thread, "timings", None)
        # On NumPy the BLAS runs on one thread and the kernels split the big GEMMs
        # over their own threads (see kernels.parallel.gemm): OpenBLAS's spinning
        # workers would otherwise take the cores from the passes between GEMMs.
        threads = parallel.blas_on_one_thread() if self.backend.name == "numpy" else contextlib.nullcontext()
        with threads:
            try:
                for k, instr in enumerate(self._instrs):
                    kernel, ins, out, frees, _ = instr
                    if timings is not None:
                        timings.append(time.perf_counter())
                    if out in self._parts:  # several outputs: a tuple
                        vals[out] = kernel(*[vals[i] for i in ins], out=self._outputs_of(k, out, plan))
                        if record is not None:
                            record[out] = tuple((v.shape, v.dtype) for v in vals[out])
                    elif plan is not None and plan[k] is not None:
                        vals[out] = kernel(*[vals[i] for i in ins], out=plan[k])
                    elif out in self._inplace:  # an update written into the variable's own buffer
                        vals[out] = kernel(*[vals[i] for i in ins], out=self._inplace[out]._value)
                    else:
                        vals[out] = kernel(*[vals[i] for i in ins])
                        if record is not None:
                            record[out] = (vals[out].shape, vals[out].dtype)
                    for f in frees:
                        vals[f] = None
                if timings is not None:
                    self.backend.synchronize()
                    timings.append(time.perf_counter())
            except GraphdiffError:
                raise
            except MemoryError as exc:
                raise _out_of_memory(instr[4], exc, inputs=_input_shapes(instr, vals)) from None
            except Exception as exc:  # a run-time shape clash (None dims) or a kernel failure
                node, shapes = instr[4], _input_shapes(instr, vals)
                raise ShapeError(f"{node.op.name} {node.name!r} failed at run time on inputs {shapes}: "
                                 f"{type(exc).__name__}: {exc}") from None
        if record is not None:
            if len(plans) >= 2:  # keep the plans of the two latest input shapes
                plans.pop(next(iter(plans)))
            plans[signature] = self._memory_plan(record)
        results = [exportable(self.backend.to_host(vals[s])) for s in self._out_slots]
        results = [r.copy() if s in self._variable_slots else r for r, s in zip(results, self._out_slots)]
        new_values = [(var, vals[s], copy) for var, s, copy in self._update_slots]
        for var, value, copy in new_values:  # all computed from old values; now commit
            var._value = value.astype(var.dtype, copy=copy or value.dtype != var.dtype)
        return results[0] if self.single else results

    def profile(self, *args, **kwargs):
        """Run once (updates included) and return ``(outputs, [(node, seconds)])``:
        the time of each scheduled op, for per-layer breakdowns. On a GPU the
        kernels run asynchronously, so there only the total is exact."""
        self._thread.timings = t = []
        try:
            outputs = self(*args, **kwargs)
        finally:
            self._thread.timings = None
        self.last_profile = [(instr[4], t[k + 1] - t[k]) for k, instr in enumerate(self._instrs)]
        return outputs, list(self.last_profile)

    def buffer_plan(self):
        """The memory plan of the latest input shapes this thread ran, or None before the
        first call: ``(rows, sizes)``, one row ``(node, buffers)`` per scheduled
        op with the number of the planned buffer of each output (None where
        the kernel allocates or writes a variable in place), and each
        buffer's bytes. Buffers are reused along the schedule (see ``_memory_plan``)."""
        if not self._plans:
            return None
        plan = self._plans[next(reversed(self._plans))]
        numbers, sizes, rows = {}, [], []
        for (_, _, _, _, node), planned in zip(self._instrs, plan):
            row = []
            for b in (planned if isinstance(planned, tuple) else (planned,)):
                owner = b if b is None or b.base is None else b.base  # the flat byte buffer
                if owner is not None and id(owner) not in numbers:
                    numbers[id(owner)] = len(sizes)
                    sizes.append(int(owner.nbytes))
                row.append(None if owner is None else numbers[id(owner)])
            rows.append((node, row))
        return rows, sizes

    @property
    def kernels(self):
        """``{node name: library}`` for each convolution instruction: ``"numpy"`` or
        ``"onednn"`` as used by the latest run (None before the first run; ``"cupy"``
        on CuPy); every other op runs graphdiff's own kernels (see
        :mod:`graphdiff.kernels.choice`)."""
        return {node.name: library for node, library in
                kernel_choice.program_kernels(self._instrs, self.backend.name).items()}

    @property
    def in_place_updates(self):
        """The variables whose new value each call writes straight into their own
        buffer (see ``_plan_inplace_updates``), in update order."""
        written = set()
        for target in self._inplace.values():
            written.update(id(v) for v in (target.values() if isinstance(target, dict) else [target]))
        return [var for var, _ in self.updates if id(var) in written]

    # ------------------------------------------------------------------ state
    def get_rng_state(self):
        """The random generator's state (JSON-able), for checkpoints."""
        return self.rng.bit_generator.state

    def set_rng_state(self, state):
        self.rng.bit_generator.state = state


def _output_list(outputs):
    """``compile``'s outputs as a list of tensors; anything else (None, an array,
    a number) is a :class:`CompileArgumentError` naming its position."""
    if isinstance(outputs, (str, bytes)) or hasattr(outputs, "shape") or not hasattr(outputs, "__iter__"):
        raise CompileArgumentError(f"compile: outputs must be a Tensor or a list of Tensors, got {_what(outputs)}")
    outputs = list(outputs)
    for k, out in enumerate(outputs):
        if not isinstance(out, Tensor):
            hint = "; make an array a graph value with gd.constant" if hasattr(out, "shape") else ""
            raise CompileArgumentError(f"compile: output {k} is {_what(out)}, not a Tensor{hint}")
    return outputs


def _what(value):
    text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return "None" if value is None else f"a {type(value).__name__} {text}"


def _schedule(roots):
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


def _allocate(xp, nbytes, node):
    """A planned byte buffer for ``node``'s output (out of memory: which node, how much)."""
    try:
        return xp.empty(nbytes, xp.uint8)
    except MemoryError as exc:
        raise _out_of_memory(node, exc, nbytes) from None


def _input_shapes(instr, vals):
    """``"name (shape), ..."`` of an instruction's inputs at run time, for error messages."""
    return ", ".join(f"{x.name} {fmt_shape(vals[s].shape) if vals[s] is not None else '?'}"
                     for x, s in zip(instr[4].inputs, instr[1]))


def _out_of_memory(node, exc, nbytes=None, inputs=None):
    """An :class:`OutOfMemoryError` (a ``MemoryError``) naming the node and the bytes
    asked for: NumPy's error carries the array's shape and dtype, CuPy's its size."""
    if nbytes is None and getattr(exc, "shape", None) is not None and getattr(exc, "dtype", None) is not None:
        nbytes = int(np.prod(exc.shape, dtype=np.int64)) * np.dtype(exc.dtype).itemsize
    if nbytes is None and isinstance(getattr(exc, "_size", None), (int, np.integer)):
        nbytes = int(exc._size)  # cupy.cuda.memory.OutOfMemoryError(size, total, limit)
    asked = f"{nbytes:,} bytes ({nbytes / 2 ** 30:,.1f} GiB)" if nbytes is not None else "memory"
    on = f" on inputs {inputs}" if inputs else ""
    return OutOfMemoryError(f"out of memory at run time: {node.op.name} {node.name!r} "
                            f"{fmt_shape(node.shape)} {node.dtype}{on} asked for {asked}: {exc}")


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


def _simplify(roots):
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
