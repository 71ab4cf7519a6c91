"""Engine overhead: what the executor and the graph machinery cost, apart from
the arithmetic.

(a) Executor overhead per node: a 1,000-node chain of one-element arrays
    (alternating ``+ c1`` and ``* c2``), run by a compiled program, against
    the same sequence of NumPy calls made directly. The arithmetic on one
    element is negligible, so the difference per node is the engine's cost of
    dispatching one op (goal: under 5 microseconds).
(b) Graph machinery: build + grad + compile time of a 200-layer MLP graph
    (width 64, tanh), and one training-step run for scale.
(c) Deep graphs: a chain of 1,000 / 10,000 / 100,000 ops (tanh, * c, + c in
    turn): build, grad, grad of grad (a Hessian-vector product), compile the
    three and the first call, each timed, and the time per graph node (flat
    when every phase is linear; goal: 100,000 through all five in < 60 s).
(d) What thread safety costs a call: the lock of a program with updates and
    the per-thread memory plan lookup, against the rest of a tiny call.

Run (prints figures; not a test):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/engine_overhead.py [--profile] [--chains 1000 10000 100000]

``--profile`` adds a cProfile of the chain program's calls (where the executor
spends its time).
"""
import argparse
import cProfile
import os
import platform
import pstats
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import graphdiff as gd  # noqa: E402
from machine import blas_info, cpu_model, pinned_openblas  # noqa: E402 - this folder is on sys.path when run

CHAIN = 1000
ADD, MUL = 0.001, 1.0001


def machine_info():
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.processor() or 'cpu'}), "
          f"{os.cpu_count()} CPUs (usable: {usable})")
    print(f"numpy {np.__version__}, graphdiff {gd.__version__}")
    print(f"cpu: {cpu_model()}")
    for line in blas_info():
        print(f"BLAS: {line}")
    for setting in pinned_openblas():
        print(f"  {setting}")


def best_of(fn, repeats, number):
    """Best mean time of ``number`` calls, over ``repeats`` rounds (seconds per call)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


# --------------------------------------------------------------------------- (a) executor overhead
def chain_program():
    x = gd.placeholder((1,), "float64", name="x")
    h = x
    for i in range(CHAIN):
        h = h + ADD if i % 2 == 0 else h * MUL
    # fuse=False: one instruction per node (fused, the chain would be one op)
    return gd.compile(h, [x], fuse=False), gd.compile(h, [x])


def numpy_chain(x, c_add, c_mul):
    h = x
    for i in range(CHAIN):
        h = np.add(h, c_add) if i % 2 == 0 else np.multiply(h, c_mul)
    return h


def bench_overhead(profile=False):
    prog, fused = chain_program()
    n_instr = sum(1 for n in prog.nodes if n.op.name in ("add", "mul"))
    assert n_instr == CHAIN, n_instr
    x = np.array([0.5])
    c_add, c_mul = np.array(ADD), np.array(MUL)  # the program's constants are 0-d arrays too
    np.testing.assert_allclose(prog(x), numpy_chain(x, c_add, c_mul), rtol=1e-12)

    prog(x)  # the first call records the memory plan; time the steady state
    t_engine = best_of(lambda: prog(x), repeats=7, number=30)
    t_numpy = best_of(lambda: numpy_chain(x, c_add, c_mul), repeats=7, number=30)
    per_engine, per_numpy = t_engine / CHAIN * 1e6, t_numpy / CHAIN * 1e6
    print(f"\n(a) executor overhead, {CHAIN}-node chain of one-element float64 arrays (add/mul by constants)")
    print(f"    engine program : {per_engine:6.2f} us/node  ({t_engine * 1e3:.2f} ms per call)")
    print(f"    NumPy directly : {per_numpy:6.2f} us/node  ({t_numpy * 1e3:.2f} ms per call)")
    print(f"    overhead       : {per_engine - per_numpy:6.2f} us/node  (goal: < 5)")
    fused(x)
    t_fused = best_of(lambda: fused(x), repeats=7, number=30)
    print(f"    fused (compile's default: the chain is one elementwise op): {t_fused * 1e3:.2f} ms per call")

    if profile:
        print("\n    cProfile of 50 calls (sorted by own time):")
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(50):
            prog(x)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(12)
    return per_engine - per_numpy


# --------------------------------------------------------------------------- (b) graph machinery
def bench_mlp(layers=200, width=64, batch=32):
    rs = np.random.default_rng(0)
    t0 = time.perf_counter()
    x = gd.placeholder((None, width), "float32", name="x")
    t = gd.placeholder((None,), "int64", name="labels")
    params, h = [], x
    for i in range(layers):
        with gd.scope(f"fc{i}"):
            w = gd.variable((rs.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), name="w")
            b = gd.variable(np.zeros(width, np.float32), name="b")
            h = gd.tanh(gd.matmul(h, w) + b)
        params += [w, b]
    loss = gd.softmax_cross_entropy(h, t)
    t1 = time.perf_counter()
    grads = gd.grad(loss, params)
    t2 = time.perf_counter()
    step = gd.compile([loss] + grads, [x, t])
    t3 = time.perf_counter()
    xv = rs.standard_normal((batch, width)).astype(np.float32)
    tv = rs.integers(0, width, batch)
    step(xv, tv)  # first call: records the memory plan
    t_run = best_of(lambda: step(xv, tv), repeats=5, number=5)
    n_fwd = sum(1 for n in step.nodes if not n.backward)
    print(f"\n(b) {layers}-layer MLP, width {width}, tanh ({len(step.nodes)} scheduled nodes, {n_fwd} forward)")
    print(f"    build   : {(t1 - t0) * 1e3:8.1f} ms")
    print(f"    grad    : {(t2 - t1) * 1e3:8.1f} ms")
    print(f"    compile : {(t3 - t2) * 1e3:8.1f} ms")
    print(f"    total   : {(t3 - t0) * 1e3:8.1f} ms")
    print(f"    one forward+backward run at batch {batch}: {t_run * 1e3:.2f} ms "
          f"({t_run / len(step.nodes) * 1e6:.1f} us per scheduled node)")


# --------------------------------------------------------------------------- (c) deep graphs
def bench_deep_chain(length):
    """One chain of ``length`` ops through build, grad, grad of grad, compile, first call."""
    t = [time.perf_counter()]
    x = gd.placeholder((None, 4), "float64", name="x")
    v = gd.placeholder((None, 4), "float64", name="v")
    h = x
    for i in range(length):
        h = gd.tanh(h) if i % 3 == 0 else (h * 1.0001 if i % 3 == 1 else h + 0.001)
    t.append(time.perf_counter())
    (g,) = gd.grad(gd.sum(h), [x])
    t.append(time.perf_counter())
    (hv,) = gd.grad(gd.sum(g * v), [x])
    t.append(time.perf_counter())
    program = gd.compile([h, g, hv], [x, v])
    t.append(time.perf_counter())
    xv = np.random.default_rng(0).standard_normal((3, 4))
    program(xv, np.ones_like(xv))
    t.append(time.perf_counter())
    program(xv, np.ones_like(xv))
    second = time.perf_counter() - t[-1]
    nodes = len(gd.toposort([h, g, hv]))
    phases = [b - a for a, b in zip(t, t[1:])]
    total = t[-1] - t[0]
    print(f"    {length:>7,} ops {nodes:>9,} nodes {len(program.nodes):>8,} scheduled | "
          + " ".join(f"{p:7.2f}" for p in phases) + f" | {total:7.2f} s  {total / nodes * 1e6:5.1f} us/node"
          + f" | second call {second:.3f} s")
    return total


def bench_deep(lengths):
    print(f"\n(c) deep chains (tanh, * c, + c), (3, 4) float64; seconds per phase; load average "
          f"{' '.join(f'{a:.1f}' for a in os.getloadavg())}")
    print(f"    {'':>46} | " + " ".join(f"{name:>7}" for name in ("build", "grad", "gradgrad", "compile", "first"))
          + f" | {'total':>7}")
    for n in lengths:
        bench_deep_chain(n)


# --------------------------------------------------------------------------- (d) thread safety
def bench_thread_safety():
    c = gd.variable(np.zeros(4), name="c")
    step = gd.compile(c * 1.0, updates=[(c, c + 1.0)])  # a program with updates holds a lock per call
    step()
    locked = best_of(step, repeats=7, number=2000)
    unlocked = best_of(lambda: step._run((), {}), repeats=7, number=2000)
    plans = best_of(lambda: step._plans, repeats=7, number=20000)
    print("\n(d) thread safety, per call of a tiny program with one update")
    print(f"    call with the step lock : {locked * 1e6:6.2f} us")
    print(f"    the same without it     : {unlocked * 1e6:6.2f} us  (lock: {(locked - unlocked) * 1e6:+.2f} us)")
    print(f"    per-thread plan lookup  : {plans * 1e6:6.2f} us")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="cProfile the chain program's calls")
    parser.add_argument("--chains", type=int, nargs="*", default=[1000, 10000, 100000],
                        help="lengths of the deep chains of (c)")
    args = parser.parse_args()
    machine_info()
    bench_overhead(profile=args.profile)
    bench_mlp()
    bench_deep(args.chains)
    bench_thread_safety()


if __name__ == "__main__":
    main()
