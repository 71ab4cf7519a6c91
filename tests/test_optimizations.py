"""Every compile-time optimization keeps results equal to the plain program's
(``optimize=False``: no merging, folding, fusion): fused elementwise chains,
the memory plan (buffers reused within and across calls), in-place updates."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphdiff as gd
from graphdiff.kernels.conv import BLOCK_ELEMENTS

UNARY = [gd.tanh, gd.relu, gd.exp, gd.neg, gd.sigmoid, lambda t: gd.sqrt(t * t + 1.0), gd.step]
BINARY = [gd.add, gd.sub, gd.mul, lambda a, b: a / (b * b + 1.0), gd.maximum, gd.minimum]


def _random_expression(draw_ops, leaves):
    """Combine ``leaves`` with a random sequence of elementwise ops."""
    values = list(leaves)
    for kind, i, j in draw_ops:
        a, b = values[i % len(values)], values[j % len(values)]
        values.append(UNARY[i % len(UNARY)](a) if kind == "u" else BINARY[j % len(BINARY)](a, b))
    return values[-1]


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("ub"), st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=12),
       large=st.booleans(), dtype=st.sampled_from(["float32", "float64"]))
def test_fused_elementwise_equals_op_by_op(ops, large, dtype):
    # large arrays are split into blocks over threads; small ones run whole
    shape = (2 * BLOCK_ELEMENTS // 64 + 7, 64) if large else (3, 5)
    x = gd.placeholder(shape, dtype, name="x")
    y = gd.placeholder(shape, dtype, name="y")
    s = gd.placeholder((), dtype, name="s")
    out = _random_expression(ops, [x, y * s, gd.tanh(x)])
    (gx,) = gd.grad(gd.sum(out * out), [x])
    rng = np.random.default_rng(len(ops))
    xv, yv = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    sv = np.asarray(0.7, dtype)
    fused = gd.compile([out, gx], [x, y, s])
    plain = gd.compile([out, gx], [x, y, s], optimize=False)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for _ in range(2):  # the second call runs on the memory plan
        for a, b in zip(fused(xv, yv, sv), plain(xv, yv, sv)):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_fusion_happens_and_reads_scalars_broadcast_to_full_size():
    x = gd.placeholder((4, BLOCK_ELEMENTS), name="x")
    loss = gd.sum(gd.tanh(x) * 3.0)
    (g,) = gd.grad(loss, [x])  # the seed is broadcast to x's shape with stride 0
    f = gd.compile(g, [x])
    assert any(n.op.name == "fused_elementwise" for n in f.nodes)
    xv = np.random.default_rng(0).standard_normal((4, BLOCK_ELEMENTS)).astype(np.float32)
    np.testing.assert_allclose(f(xv), 3.0 * (1 - np.tanh(xv) ** 2), rtol=1e-5, atol=1e-6)


def test_memory_plan_keeps_results_equal_across_calls_and_shapes():
    x = gd.placeholder((None, 6), name="x")
    w = gd.variable(np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32), name="w")
    h = gd.tanh(x @ w)
    h = gd.relu(h @ w) + h
    loss = gd.sum(h * h)
    (g,) = gd.grad(loss, [w])
    fast, plain = gd.compile([loss, g], [x]), gd.compile([loss, g], [x], optimize=False)
    rng = np.random.default_rng(1)
    for n in (4, 4, 7, 4, 7, 7):  # two plans in turn
        xv = rng.standard_normal((n, 6)).astype(np.float32)
        got, want = fast(xv), plain(xv)
        kept = [a.copy() for a in got]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        fast(xv * 2)  # a later call must not change arrays returned earlier
        for a, b in zip(got, kept):
            np.testing.assert_array_equal(a, b)


def test_in_place_sgd_steps_equal_the_plain_program():
    from graphdiff.optim import sgd_momentum

    def build():
        rng = np.random.default_rng(0)
        x = gd.placeholder((None, 5), name="x")
        t = gd.placeholder((None,), "int64", name="t")
        w1 = gd.variable(rng.standard_normal((5, 8)).astype(np.float32) * 0.3, name="w1")
        w2 = gd.variable(rng.standard_normal((8, 3)).astype(np.float32) * 0.3, name="w2")
        loss = gd.softmax_cross_entropy(gd.relu(x @ w1) @ w2, t)
        updates, _ = sgd_momentum(loss, {"w1": w1, "w2": w2}, lr=0.1)
        return x, t, loss, updates, (w1, w2)

    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((6, 5)).astype(np.float32), rng.integers(0, 3, 6)) for _ in range(5)]
    runs = []
    for optimize in (True, False):
        x, t, loss, updates, params = build()
        step = gd.compile(loss, [x, t], updates=updates, optimize=optimize)
        runs.append(([float(step(xb, tb)) for xb, tb in batches], [p.value.copy() for p in params]))
        if optimize:
            assert step._inplace, "the SGD updates should be written in place"
    (losses_a, params_a), (losses_b, params_b) = runs
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-6)
    for a, b in zip(params_a, params_b):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_cnn_training_steps_equal_the_plain_program(seed):
    """conv + ReLU + LRN + pooling + dropout + dense, three SGD steps: the
    optimized program (merging, folding, fusion, memory plan, in-place
    updates) gives the plain program's losses and parameters."""
    from graphdiff.optim import sgd_momentum

    def build():
        rng = np.random.default_rng(seed)
        x = gd.placeholder((None, 3, 12, 12), name="x")
        t = gd.placeholder((None,), "int64", name="t")
        w = gd.variable(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, name="conv/w")
        b = gd.variable(np.full(8, 0.1, np.float32), name="conv/b")
        wf = gd.variable(rng.standard_normal((8 * 5 * 5, 4)).astype(np.float32) * 0.1, name="fc/w")
        h = gd.max_pool2d(gd.lrn(gd.relu(gd.conv2d(x, w, b, padding=1)), 5, 1e-3, 0.75, 2.0), 3, 2)
        h = gd.dropout(gd.reshape(h, (-1, 8 * 5 * 5)), 0.3)
        loss = gd.softmax_cross_entropy(h @ wf, t)
        updates, _ = sgd_momentum(loss, {"w": w, "b": b, "wf": wf}, lr=0.05)
        return x, t, loss, updates, (w, b, wf)

    rng = np.random.default_rng(5)
    xb = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    tb = rng.integers(0, 4, 4)
    results = []
    for optimize in (True, False):
        x, t, loss, updates, params = build()
        step = gd.compile(loss, [x, t], updates=updates, optimize=optimize, seed=seed)
        results.append(([float(step(xb, tb)) for _ in range(3)], [p.value.copy() for p in params]))
    (la, pa), (lb, pb) = results
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for a, b in zip(pa, pb):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
