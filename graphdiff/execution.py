"""Running a program: feeding and checking the inputs, the interpreter loop over
the instructions, committing the updates. Part of :class:`graphdiff.compiler.Program`.

Calling the program checks every input (``InputError`` names the input and
expected vs given shape/dtype), runs, then applies ``updates``: all new values
are computed from the old ones before any variable changes.
"""
import contextlib
import time

import numpy as np

from .backends import get_backend
from .errors import GraphdiffError, InputError, ShapeError
from .feed import as_input, exportable
from .graph import fmt_shape
from .kernels import parallel
from .memory import _out_of_memory


class Execution:
    """The interpreter of a :class:`~graphdiff.compiler.Program` (a mixin)."""

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


def _input_shapes(instr, vals):
    """``"name (shape), ..."`` of an instruction's inputs at run time, for error messages."""
    return ", ".join(f"{x.name} {fmt_shape(vals[s].shape) if vals[s] is not None else '?'}"
                     for x, s in zip(instr[4].inputs, instr[1]))
