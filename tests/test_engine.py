"""Tests for the engine around the ops: placeholders, variables, scopes, grad
(graphdiff/autodiff.py), compile and run (graphdiff/compiler.py), backends."""
import importlib.util
import sys
import weakref

import numpy as np
import pytest

import graphdiff as gd


def rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- placeholders and variables
def test_placeholder_with_unknown_dims_accepts_any_size():
    x = gd.placeholder((None, 3), "float64", name="x")
    m = gd.placeholder((None, None), "float64", name="m")
    f = gd.compile([gd.sum(x * 2.0, axis=1), gd.sum(m)], [x, m])
    for n, (r, c) in [(1, (2, 3)), (7, (5, 1)), (0, (1, 1))]:
        xv, mv = rng(n).standard_normal((n, 3)), rng(n).standard_normal((r, c))
        sx, sm = f(xv, mv)
        assert sx.shape == (n,)
        np.testing.assert_allclose(sx, 2 * xv.sum(1))
        np.testing.assert_allclose(sm, mv.sum())


def test_inputs_by_keyword():
    x = gd.placeholder((2,), "float64", name="x")
    y = gd.placeholder((2,), "float64", name="y")
    f = gd.compile(x - y, [x, y])
    np.testing.assert_array_equal(f(y=np.array([1.0, 2.0]), x=np.array([5.0, 5.0])), [4.0, 3.0])
    np.testing.assert_array_equal(f(np.array([5.0, 5.0]), y=np.array([1.0, 1.0])), [4.0, 4.0])


def test_float64_input_to_float32_placeholder_is_cast():
    x = gd.placeholder((2,), "float32")
    out = gd.compile(x * 2.0, [x])(np.array([1.0, 2.5]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [2.0, 5.0])


def test_variable_value_is_a_copy_readable_and_settable():
    init = np.array([1.0, 2.0, 3.0], np.float32)
    v = gd.variable(init, name="v")
    init[0] = 100.0  # the variable copied its initial value
    np.testing.assert_array_equal(v.value, [1.0, 2.0, 3.0])
    assert v.shape == (3,) and v.dtype == np.float32

    f = gd.compile(v * 2.0)
    np.testing.assert_array_equal(f(), [2.0, 4.0, 6.0])
    v.value = np.array([1.0, 1.0, 1.0], np.float64)  # cast to the variable's dtype
    assert v.value.dtype == np.float32
    np.testing.assert_array_equal(f(), [2.0, 2.0, 2.0])  # the program reads the new value
    v.value = [4, 5, 6]  # integers and lists are cast too
    assert v.value.dtype == np.float32
    np.testing.assert_array_equal(f(), [8.0, 10.0, 12.0])
    with pytest.raises(gd.InputError, match=r"'v'.*\(2,\).*expected \(3,\)"):
        v.value = np.zeros(2)
    np.testing.assert_array_equal(v.value, [4.0, 5.0, 6.0])  # unchanged by the failed assignment


def test_integer_variable_rejects_floats():
    n = gd.variable(np.array([1, 2], np.int64), name="n")
    n.value = np.array([3, 4], np.int32)
    assert n.value.dtype == np.int64
    with pytest.raises(gd.InputError, match="integer"):
        n.value = np.array([0.5, 1.5])


# --------------------------------------------------------------------------- scopes
def test_scopes_name_nodes_and_nest():
    x = gd.placeholder((2, 3), name="x")
    with gd.scope("conv1") as full:
        assert full == "conv1"
        w = gd.variable(np.ones((3, 3), np.float32), name="w")
        h = gd.matmul(x, w)
    assert w.name == "conv1/w" and w.scope == "conv1"
    assert h.name.startswith("conv1/matmul") and h.scope == "conv1"
    with gd.scope("block"):
        with gd.scope("conv2") as full:
            assert full == "block/conv2"
            r = gd.relu(h, name="act")
        s = gd.tanh(r)
    assert r.name == "block/conv2/act" and r.scope == "block/conv2"
    assert s.scope == "block" and s.name.startswith("block/")
    outside = gd.exp(s)
    assert outside.scope == "" and "/" not in outside.name
    assert x.name == "x"


def test_gradient_nodes_sit_in_the_forward_scope():
    x = gd.placeholder((2, 3), name="x")
    with gd.scope("fc"):
        w = gd.variable(np.ones((3, 4), np.float32), name="w")
        h = gd.tanh(gd.matmul(x, w))
    (gw,) = gd.grad(gd.sum(h), [w])
    assert gw.scope.startswith("fc") and gw.kind == "gradient" and gw.backward
    assert h.kind == "forward" and w.kind == "variable" and x.kind == "placeholder"


# --------------------------------------------------------------------------- grad
def test_grad_of_an_unrelated_input_is_zeros_of_its_shape():
    x = gd.placeholder((None, 3), "float64", name="x")
    z = gd.placeholder((None, 2), "float64", name="z")
    v = gd.variable(np.ones((4,)), name="unused")
    y = gd.sum(x * x)
    gx, gz, gv = gd.grad(y, [x, z, v])
    assert gz.shape == (None, 2) and gv.shape == (4,)
    xv = rng(0).standard_normal((5, 3))
    gxv, gzv, gvv = gd.compile([gx, gz, gv], [x, z])(xv, np.ones((6, 2)))
    np.testing.assert_allclose(gxv, 2 * xv)
    np.testing.assert_array_equal(gzv, np.zeros((6, 2)))
    np.testing.assert_array_equal(gvv, np.zeros(4))


def test_grad_of_a_non_scalar_needs_grad_output():
    x = gd.placeholder((3,), "float64", name="x")
    with pytest.raises(gd.ShapeError, match="non-scalar needs grad_output"):
        gd.grad(x * 2.0, [x])


def test_grad_with_respect_to_an_integer_input_raises():
    x = gd.placeholder((3,), "float64", name="x")
    n = gd.placeholder((3,), "int64", name="n")
    with pytest.raises(gd.ShapeError, match="cannot differentiate with respect to n"):
        gd.grad(gd.sum(x * gd.cast(n, "float64")), [n])


def test_grad_output_seeds_a_vjp():
    x = gd.placeholder((3,), "float64", name="x")
    w = gd.placeholder((3,), "float64", name="w")
    seed = gd.placeholder((3,), "float64", name="seed")
    y = gd.tanh(x) * w
    (g,) = gd.grad(y, [x], grad_output=seed)
    xv, wv, sv = rng(0).standard_normal(3), rng(1).standard_normal(3), rng(2).standard_normal(3)
    np.testing.assert_allclose(gd.compile(g, [x, w, seed])(xv, wv, sv), sv * wv * (1 - np.tanh(xv) ** 2))
    with pytest.raises(gd.ShapeError, match="grad_output"):
        gd.grad(y, [x], grad_output=gd.placeholder((4,), "float64"))


def test_grad_of_grad_is_a_hessian_vector_product():
    x = gd.placeholder((4,), "float64", name="x")
    v = gd.placeholder((4,), "float64", name="v")
    a = gd.constant(rng(0).standard_normal((4, 4)))
    f = gd.sum(gd.tanh(gd.matmul(a, gd.reshape(x, (4, 1)))) ** 3) + gd.sum(x * x * x)
    (g,) = gd.grad(f, [x])
    (hv,) = gd.grad(gd.sum(g * v), [x])
    grad_fn = gd.compile(g, [x])
    hvp_fn = gd.compile(hv, [x, v])
    xv, vv = rng(1).standard_normal(4) * 0.5, rng(2).standard_normal(4)
    eps = 1e-5
    finite = (grad_fn(xv + eps * vv) - grad_fn(xv - eps * vv)) / (2 * eps)
    np.testing.assert_allclose(hvp_fn(xv, vv), finite, rtol=1e-7, atol=1e-8)


def test_hessian_vector_product_of_a_cubic_is_exact():
    x = gd.placeholder((3,), "float64")
    v = gd.placeholder((3,), "float64")
    (g,) = gd.grad(gd.sum(x ** 3), [x])
    (hv,) = gd.grad(gd.sum(g * v), [x])
    xv, vv = np.array([1.0, -2.0, 0.5]), np.array([3.0, 1.0, -1.0])
    np.testing.assert_allclose(gd.compile(hv, [x, v])(xv, vv), 6 * xv * vv)


def test_a_10000_node_chain_builds_differentiates_compiles_and_runs():
    assert sys.getrecursionlimit() < 10000  # any recursive walk would fail
    x = gd.placeholder((2,), "float64", name="x")
    h = x
    for i in range(10000):
        h = h * 1.0001 if i % 2 else h + 0.001
    (g,) = gd.grad(gd.sum(h), [x])
    assert len(gd.toposort([h, g])) > 10000
    xv = np.array([1.0, -1.0])
    expected = xv.copy()
    for i in range(10000):
        expected = expected * 1.0001 if i % 2 else expected + 0.001
    plain = gd.compile([h, g], [x], optimize=False)
    assert len(plain.nodes) > 10000
    fused = gd.compile([h, g], [x])  # the chain fuses into one elementwise op
    assert len(fused.nodes) < 100
    for f in (plain, fused):
        hv, gv = f(xv)
        np.testing.assert_allclose(hv, expected, rtol=1e-12)
        np.testing.assert_allclose(gv, np.full(2, 1.0001 ** 5000), rtol=1e-12)


# --------------------------------------------------------------------------- updates
def test_updates_read_old_values_and_apply_after_the_outputs():
    a = gd.variable(np.array([1.0, 2.0]), name="a")
    b = gd.variable(np.array([10.0, 20.0]), name="b")
    swap = gd.compile([a, b, a + b], updates=[(a, b), (b, a)])
    av, bv, sv = swap()
    np.testing.assert_array_equal(av, [1.0, 2.0])  # an output equal to a variable: the old value
    np.testing.assert_array_equal(bv, [10.0, 20.0])
    np.testing.assert_array_equal(sv, [11.0, 22.0])
    np.testing.assert_array_equal(a.value, [10.0, 20.0])  # swapped: both read the old values
    np.testing.assert_array_equal(b.value, [1.0, 2.0])
    swap()
    np.testing.assert_array_equal(a.value, [1.0, 2.0])
    np.testing.assert_array_equal(b.value, [10.0, 20.0])


def test_updates_as_a_training_step():
    x = gd.placeholder((None, 2), "float64", name="x")
    w = gd.variable(np.zeros(2), name="w")
    steps = gd.variable(np.array(0, np.int64), name="steps")
    loss = gd.mean((gd.sum(x * w, axis=1) - 1.0) ** 2)
    (gw,) = gd.grad(loss, [w])
    train = gd.compile(loss, [x], updates=[(w, w - 0.1 * gw), (steps, steps + 1)])
    xv = np.array([[1.0, 0.0], [0.0, 1.0]])
    losses = [float(train(xv)) for _ in range(50)]
    assert losses[0] == 1.0  # computed with the old w
    assert losses[-1] < 1e-3 and all(b <= a for a, b in zip(losses, losses[1:]))
    assert int(steps.value) == 50 and steps.value.dtype == np.int64
    np.testing.assert_allclose(w.value, [1.0, 1.0], atol=0.02)


def test_in_place_update_leaves_the_returned_variable_copy_alone():
    w = gd.variable(np.array([1.0, 2.0]), name="w")
    f = gd.compile([w, w * 1.0], updates=[(w, w + 10.0)])
    first = f()
    second = f()
    np.testing.assert_array_equal(first[0], [1.0, 2.0])
    np.testing.assert_array_equal(second[0], [11.0, 12.0])
    np.testing.assert_array_equal(w.value, [21.0, 22.0])


def test_an_output_that_views_a_variable_shows_the_old_value():
    w = gd.variable(np.array([1.0, 2.0]), name="w")
    f = gd.compile(gd.reshape(w, (2, 1)), updates=[(w, w + 10.0)])
    first = f()
    np.testing.assert_array_equal(first, [[1.0], [2.0]])  # outputs are computed before the updates
    f()
    np.testing.assert_array_equal(first, [[1.0], [2.0]])  # and a later call does not change them


def test_an_update_may_write_a_variable_nothing_reads():
    a = gd.variable(np.array([1.0, 2.0]), name="a")
    b = gd.variable(np.array([10.0, 20.0]), name="b")
    f = gd.compile(b * 2.0, updates=[(a, b + 1.0)])  # e.g. a moving average written, never read
    np.testing.assert_array_equal(f(), [20.0, 40.0])
    np.testing.assert_array_equal(a.value, [11.0, 21.0])


def _update_from_another_variable():
    a = gd.variable(np.array([1.0, 2.0]), name="a")
    b = gd.variable(np.array([10.0, 20.0]), name="b")
    gd.compile(a * 1.0, updates=[(a, b)])()  # a <- b
    gd.compile([], updates=[(b, b * 2.0)])()  # b doubles in place
    np.testing.assert_array_equal(a.value, [10.0, 20.0])


def _update_from_a_constant():
    v = gd.variable(np.ones(3), name="v")  # reset to a constant, then step in place
    reset = gd.compile(v * 1.0, updates=[(v, gd.constant(np.zeros(3)))])
    step = gd.compile([], updates=[(v, v + 1.0)])
    reset(), step(), reset()
    np.testing.assert_array_equal(v.value, np.zeros(3))


def _update_from_an_input():
    x = gd.placeholder((3,), "float64", name="x")  # load from an input, then step in place
    u = gd.variable(np.zeros(3), name="u")
    load = gd.compile(u * 1.0, [x], updates=[(u, x)])
    users_array = np.ones(3)
    load(users_array)
    gd.compile([], updates=[(u, u * 2.0)])()
    np.testing.assert_array_equal(users_array, np.ones(3))  # the caller's array is never written


@pytest.mark.parametrize("case", [_update_from_another_variable, _update_from_a_constant, _update_from_an_input],
                         ids=["variable", "constant", "input"])
def test_updates_never_share_buffers_with_other_variables_constants_or_inputs(case):
    case()


# --------------------------------------------------------------------------- compile: simplification
def test_compile_merges_identical_subexpressions():
    x = gd.placeholder((3,), "float64", name="x")
    a = gd.exp(x * 2.0)
    b = gd.exp(x * 2.0)  # built separately: the same op, attributes and inputs
    y = a + b
    merged = gd.compile(y, [x], fuse=False)  # fusion would also merge mul+exp
    plain = gd.compile(y, [x], optimize=False)
    assert len(plain.nodes) == 8  # x, 2 constants, 2 mul, 2 exp, add
    assert len(merged.nodes) == 5  # x, constant, mul, exp, add
    xv = np.array([0.0, 1.0, -1.0])
    np.testing.assert_allclose(merged(xv), 2 * np.exp(2 * xv))
    np.testing.assert_allclose(plain(xv), merged(xv))


def test_compile_folds_constant_subgraphs():
    x = gd.placeholder((2,), "float64", name="x")
    c = gd.constant(np.array([2.0, 3.0])) * gd.constant(3.0, dtype="float64") + gd.exp(gd.constant(0.0, "float64"))
    f = gd.compile(x * c, [x], fuse=False)
    kinds = [n.op.name for n in f.nodes]
    assert sorted(kinds) == ["constant", "mul", "placeholder"]
    (const,) = [n for n in f.nodes if n.op.name == "constant"]
    np.testing.assert_array_equal(const.op.value, [7.0, 10.0])
    np.testing.assert_array_equal(f(np.array([1.0, 2.0])), [7.0, 20.0])


def test_compile_never_merges_random_nodes():
    x = gd.placeholder((100,), "float64", name="x")
    f = gd.compile([gd.dropout(x, 0.5), gd.dropout(x, 0.5)], [x])
    a, b = f(np.ones(100))
    assert not np.array_equal(a, b)


def test_compile_merges_subexpressions_that_feed_dropout():
    x = gd.placeholder((3,), "float64", name="x")
    a = x * 2.0
    b = x * 2.0
    f = gd.compile(a + gd.dropout(b, 0.5), [x], fuse=False)
    assert [n.op.name for n in f.nodes].count("mul") == 2  # x * 2 once, then (x * 2) * mask


# --------------------------------------------------------------------------- compile: memory planning
class _Tracked(gd.Op):
    """x + 1, remembering a weak reference to each array it makes."""

    name = "tracked"

    def __init__(self, log, tag):
        super().__init__(tag=tag)
        self.log = log

    def infer(self, x):
        return x.shape, x.dtype

    def forward(self, xp, x):
        out = x + 1.0
        self.log.append(weakref.ref(out))
        return out


class _CountAlive(gd.Op):
    """Identity that records how many tracked arrays are still alive when it runs."""

    name = "count_alive"

    def __init__(self, log, counts):
        super().__init__(tag="probe")
        self.log, self.counts = log, counts

    def infer(self, x):
        return x.shape, x.dtype

    def forward(self, xp, x):
        self.counts.append(sum(r() is not None for r in self.log))
        return x * 1.0


def _tracked_chain(extra_outputs=()):
    log, counts = [], []
    x = gd.placeholder((1000,), "float64", name="x")
    h = [x]
    for k in range(4):
        h.append(_Tracked(log, k)(h[-1]))
    probe = _CountAlive(log, counts)(h[-1])
    return x, h, probe, log, counts


def test_memory_plan_frees_each_intermediate_after_its_last_use():
    x, h, probe, log, counts = _tracked_chain()
    f = gd.compile(probe, [x])
    out = f(np.zeros(1000))
    np.testing.assert_array_equal(out, np.full(1000, 4.0))
    assert len(log) == 4
    assert counts == [1]  # only the probe's own input is alive; the first three were freed
    assert all(r() is None for r in log)  # nothing is kept after the run


def test_memory_plan_keeps_outputs_alive():
    x, h, probe, log, counts = _tracked_chain()
    f = gd.compile([h[1], probe], [x])
    first, out = f(np.zeros(1000))
    assert counts == [2]  # h[1] is an output: kept; h[2] and h[3] freed
    np.testing.assert_array_equal(first, np.ones(1000))
    np.testing.assert_array_equal(out, np.full(1000, 4.0))


def test_reused_buffers_never_change_earlier_results():
    """The program reuses intermediate buffers across calls with the same input
    shapes: outputs (and views of intermediates that are outputs) must stay
    intact, and every call must be right, also when the input shapes alternate."""
    x = gd.placeholder((None, 3), "float64", name="x")
    w = gd.variable(rng(0).standard_normal((3, 3)), name="w")
    h = gd.tanh(gd.matmul(x, w) * 2.0 + 1.0)
    e = gd.exp(h) - h
    outputs = [e, gd.reshape(e, (-1,)), gd.transpose(h), h[:, 1], gd.sum(e * e), gd.relu(e - 1.0) * 3.0]
    f = gd.compile(outputs, [x])
    w0 = w.value

    def reference(xv):
        hv = np.tanh(xv @ w0 * 2.0 + 1.0)
        ev = np.exp(hv) - hv
        return [ev, ev.reshape(-1), hv.T, hv[:, 1], np.sum(ev * ev), np.maximum(ev - 1.0, 0) * 3.0]

    kept = []
    for k, n in enumerate([2, 2, 5, 2, 7, 5, 5, 2]):
        xv = rng(k + 10).standard_normal((n, 3))
        kept.append((reference(xv), f(xv)))
    for expected, got in kept:  # checked at the end: later calls overwrote nothing returned
        for e_, g_ in zip(expected, got):
            np.testing.assert_allclose(g_, e_, rtol=1e-12)


# --------------------------------------------------------------------------- dtypes
def test_float64_end_to_end():
    rs = rng(0)
    xv, yv = rs.standard_normal((8, 3)), rs.standard_normal((8, 2))
    w0, b0 = rs.standard_normal((3, 2)), rs.standard_normal(2)
    x = gd.placeholder((None, 3), "float64", name="x")
    y = gd.placeholder((None, 2), "float64", name="y")
    w, b = gd.variable(w0, name="w"), gd.variable(b0, name="b")
    loss = gd.mean((gd.matmul(x, w) + b - y) ** 2)
    gw, gb = gd.grad(loss, [w, b])
    f = gd.compile([loss, gw, gb], [x, y])
    assert all(n.dtype == np.float64 for n in f.nodes if n.dtype.kind == "f")
    lv, gwv, gbv = f(xv, yv)
    r = xv @ w0 + b0 - yv
    assert lv.dtype == gwv.dtype == gbv.dtype == np.float64
    np.testing.assert_allclose(lv, np.mean(r ** 2), rtol=1e-14)
    np.testing.assert_allclose(gwv, 2 * xv.T @ r / r.size, rtol=1e-13)
    np.testing.assert_allclose(gbv, 2 * r.sum(0) / r.size, rtol=1e-13)


def test_float32_graph_stays_float32_with_python_scalars():
    x = gd.placeholder((None, 3), "float32", name="x")
    t = gd.placeholder((None,), "int64", name="t")
    w = gd.variable(rng(0).standard_normal((3, 4)).astype(np.float32), name="w")
    h = gd.tanh(gd.matmul(x, w) * 2.0 + 1) ** 2 / 3 - 0.5
    h = gd.sigmoid(gd.sqrt(gd.abs(h) + 1e-3)) + gd.mean(h, axis=0) + 2 * gd.relu(h) - 1.5 * h
    loss = gd.softmax_cross_entropy(h, t) + 0.01 * gd.sum(w * w)
    (gw,) = gd.grad(loss, [w])
    f = gd.compile([loss, gw, h], [x, t])
    floats = [n for n in f.nodes if n.dtype.kind == "f"]
    assert floats and all(n.dtype == np.float32 for n in floats), [n for n in floats if n.dtype != np.float32]
    lv, gwv, hv = f(rng(1).standard_normal((5, 3)), np.array([0, 1, 2, 3, 0]))
    assert lv.dtype == gwv.dtype == hv.dtype == np.float32
    assert np.isfinite(lv)


# --------------------------------------------------------------------------- backends
def test_unknown_backend_names_the_available_ones():
    x = gd.placeholder((2,), name="x")
    with pytest.raises(gd.BackendError, match=r"unknown backend 'tpu'.*available: .*numpy") as info:
        gd.compile(x * 2.0, [x], backend="tpu")
    assert isinstance(info.value, RuntimeError) and "cupy" in str(info.value)
    assert "numpy" in gd.available_backends()


def _gpu_available():
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


@pytest.mark.skipif(_gpu_available(), reason="CuPy and a GPU are present: the backend works here")
def test_cupy_backend_without_a_gpu_says_what_to_install():
    x = gd.placeholder((2,), name="x")
    with pytest.raises(gd.BackendError, match="cupy") as info:
        gd.compile(x * 2.0, [x], backend="cupy")
    assert "pip install" in str(info.value) and "cupy-cuda12x" in str(info.value)
    assert "cupy" not in gd.available_backends()


def test_default_backend_sets_compiles_default_for_a_block_and_this_thread(monkeypatch):
    import threading

    from graphdiff import backends

    class Other(backends.Backend):
        name = "other"

    monkeypatch.setitem(backends._REGISTRY, "other", lambda: Other(np))
    monkeypatch.delitem(backends._CACHE, "other", raising=False)
    x = gd.placeholder((2,), name="x")
    assert gd.compile(x * 2.0, [x]).backend.name == "numpy"
    seen = []
    with gd.default_backend("other"):
        f = gd.compile(x * 2.0, [x])
        assert f.backend.name == "other"
        np.testing.assert_array_equal(f(np.array([1.0, 2.0])), [2.0, 4.0])
        assert gd.compile(x * 2.0, [x], backend="numpy").backend.name == "numpy"  # an explicit name wins
        with gd.default_backend("numpy"):
            assert gd.compile(x, [x]).backend.name == "numpy"
        assert gd.get_backend().name == "other"  # the outer default is back
        thread = threading.Thread(target=lambda: seen.append(gd.compile(x, [x]).backend.name))
        thread.start()
        thread.join()
    assert seen == ["numpy"]  # another thread keeps its own default
    assert gd.compile(x, [x]).backend.name == "numpy"
    with pytest.raises(gd.BackendError, match=r"unknown backend 'tpu'.*available: "):
        with gd.default_backend("tpu"):
            pass


def test_grad_keeps_the_structure_of_xs():
    """A dict gives a dict with the same keys in the same order (a model's
    ``params``); a list or tuple gives a list; one tensor gives one tensor."""
    x = gd.placeholder((3,), "float64", name="x")
    params = {"fc/w": gd.variable(np.full(3, 2.0), name="fc/w"), "fc/b": gd.variable(np.ones(3), name="fc/b")}
    loss = gd.sum(x * params["fc/w"] + params["fc/b"] * params["fc/b"])
    grads = gd.grad(loss, params)
    assert isinstance(grads, dict) and list(grads) == ["fc/w", "fc/b"]
    xv = np.array([1.0, 2.0, 3.0])
    gw, gb = gd.compile([grads["fc/w"], grads["fc/b"]], [x])(xv)
    np.testing.assert_array_equal(gw, xv)
    np.testing.assert_array_equal(gb, [2.0, 2.0, 2.0])
    as_list = gd.grad(loss, (params["fc/w"], params["fc/b"]))
    assert isinstance(as_list, list) and len(as_list) == 2
    assert isinstance(gd.grad(loss, params["fc/b"]), gd.Tensor)
    assert len(gd.grad(loss, params.values())) == 2
    with pytest.raises(TypeError, match="grad: xs must be Tensors, got str"):
        gd.grad(loss, ["fc/w"])
    with pytest.raises(TypeError, match="grad: xs must be a Tensor, a list or tuple"):
        gd.grad(loss, "fc/w")
