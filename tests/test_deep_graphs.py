"""Deep graphs cost linear work: building, grad, grad of grad, compiling and the
first call of a long chain (graphdiff/autodiff.py, compiler.py, fusion.py).

Work is counted, not timed: Python function calls (cProfile) and peak traced
memory (tracemalloc) per graph node, on a graph ten times larger than another.
Linear work keeps the figure per node; a quadratic piece (a scan of every free
buffer per allocation, expression text rebuilt as nested strings) multiplies
it by about ten. Times are in benchmarks/engine_overhead.py.
"""
import cProfile
import pstats
import tracemalloc

import numpy as np

import graphdiff as gd

# Per-node work on the large graph may exceed the small graph's by this factor
# (fixed costs weigh less there, so linear work stays below 1; quadratic gives ~10).
LINEAR_SLACK = 1.5


def tanh_chain_pipeline(length):
    """Build a chain of ``length`` ops (tanh, * c, + c), take its gradient and the
    gradient of that (a Hessian-vector product), compile all three and run once.
    Returns (number of graph nodes, the three results)."""
    x = gd.placeholder((None, 2), "float64", name="x")
    v = gd.placeholder((None, 2), "float64", name="v")
    h = x
    for i in range(length):
        h = gd.tanh(h) if i % 3 == 0 else (h * 1.0001 if i % 3 == 1 else h + 0.001)
    (g,) = gd.grad(gd.sum(h), [x])
    (hv,) = gd.grad(gd.sum(g * v), [x])
    program = gd.compile([h, g, hv], [x, v])
    xv = np.array([[0.3, -0.2], [1.5, 0.1]])
    return len(gd.toposort([h, g, hv])), program(xv, np.ones_like(xv))


def reference_tanh_chain(length, xv):
    """The chain's value and gradient by the formulas, in NumPy."""
    h, derivative = xv.copy(), np.ones_like(xv)
    for i in range(length):
        if i % 3 == 0:
            h = np.tanh(h)
            derivative = derivative * (1 - h ** 2)
        elif i % 3 == 1:
            h = h * 1.0001
            derivative = derivative * 1.0001
        else:
            h = h + 0.001
    return h, derivative


def calls_by_function(length):
    """Calls of each Python function (and builtin) while running the pipeline."""
    profile = cProfile.Profile()
    profile.enable()
    nodes, results = tanh_chain_pipeline(length)
    profile.disable()
    calls = {f"{path}:{line} {name}": entry[1] for (path, line, name), entry in pstats.Stats(profile).stats.items()}
    return calls, nodes, results


def test_build_grad_grad_of_grad_compile_and_first_call_make_linear_calls():
    """Each function's calls grow with the graph, not faster: per node, no function
    is called more on a 20,000-node graph than on a 2,000-node one (a scan with a
    key function per free buffer, say, grows tenfold)."""
    small, small_nodes, _ = calls_by_function(270)
    large, large_nodes, (h, g, hv) = calls_by_function(2700)
    assert small_nodes < 2500 and large_nodes > 20000  # (run-time sum_to_like where two None dims meet)
    growth = large_nodes / small_nodes
    superlinear = {f: (small.get(f, 0), count) for f, count in large.items()
                   if count > 1000 and count > LINEAR_SLACK * growth * max(small.get(f, 0), 1)}
    assert not superlinear, f"calls at {small_nodes:,} and {large_nodes:,} nodes: {superlinear}"
    assert sum(large.values()) / large_nodes <= LINEAR_SLACK * sum(small.values()) / small_nodes
    xv = np.array([[0.3, -0.2], [1.5, 0.1]])
    h_ref, g_ref = reference_tanh_chain(2700, xv)
    np.testing.assert_allclose(h, h_ref, rtol=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-10)
    assert np.all(np.isfinite(hv))


def fused_chain_memory_per_node(length):
    """Peak traced memory per node while compiling a ``length``-op chain of
    ``* c`` and ``+ c`` (fused into one elementwise op) and running it once."""
    x = gd.placeholder((None, 2), "float64", name="x")
    h = x
    for i in range(length):
        h = h * 1.0001 if i % 2 else h + 0.001
    tracemalloc.start()
    try:
        program = gd.compile(h, [x])
        result = program(np.ones((3, 2)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / length, program, result


def test_a_20000_op_fused_chain_compiles_in_linear_memory_with_a_bounded_label():
    small, _, _ = fused_chain_memory_per_node(2000)
    large, program, result = fused_chain_memory_per_node(20000)
    assert large <= LINEAR_SLACK * small, (
        f"{large:.0f} bytes per op at 20,000 ops against {small:.0f} at 2,000: more than linear memory")
    (fused,) = [n for n in program.nodes if n.op.name == "fused_elementwise"]
    assert len(fused.op.program) == 20000
    # written out, the expression would be 20,000 nested parentheses deep: summarized
    assert fused.op.describe() == "fused: 20,000 elementwise ops (10,000 add, 10,000 mul) on x, 0.001, 1.0001"
    expected = np.ones((3, 2))
    for i in range(20000):
        expected = expected * 1.0001 if i % 2 else expected + 0.001
    np.testing.assert_allclose(result, expected, rtol=1e-12)
