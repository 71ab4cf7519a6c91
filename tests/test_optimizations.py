"""Every compile-time optimization keeps results equal to the plain program's
(``optimize=False``: no merging, folding, fusion): fused elementwise chains,
the memory plan (buffers reused within and across calls), in-place updates."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphdiff as gd
from graphdiff.kernels.parallel import BLOCK_ELEMENTS
from graphdiff.kernels import fused as fused_kernel

UNARY = [gd.tanh, gd.relu, gd.exp, gd.neg, gd.sigmoid, lambda t: gd.sqrt(t * t + 1.0), gd.step]
BINARY = [gd.add, gd.sub, gd.mul, lambda a, b: a / (b * b + 1.0), gd.maximum, gd.minimum]


def _random_expression(draw_ops, leaves, all_values=False):
    """Combine ``leaves`` with a random sequence of elementwise ops (the last
    value, or every value with ``all_values``)."""
    values = list(leaves)
    for kind, i, j in draw_ops:
        a, b = values[i % len(values)], values[j % len(values)]
        values.append(UNARY[i % len(UNARY)](a) if kind == "u" else BINARY[j % len(BINARY)](a, b))
    return values if all_values else values[-1]


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


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("ub"), st.integers(0, 50), st.integers(0, 50)), min_size=2, max_size=12),
       kept=st.lists(st.integers(0, 50), min_size=1, max_size=3), large=st.booleans(), in_place=st.booleans())
def test_fused_chains_with_kept_intermediates_equal_op_by_op(ops, kept, large, in_place):
    """Intermediates that are also outputs (or update values) become extra
    outputs of the fused op; every output, and every variable after the
    updates, equals the plain program's."""
    shape = (2 * BLOCK_ELEMENTS // 64 + 7, 64) if large else (3, 5)
    rng = np.random.default_rng(len(ops) + 7 * len(kept))
    x = gd.placeholder(shape, name="x")
    v = gd.variable(rng.standard_normal(shape).astype(np.float32), name="v")
    w = gd.variable(rng.standard_normal(shape).astype(np.float32), name="w")
    values = _random_expression(ops, [x, v, w * 0.5], all_values=True)[3:]
    extra = [values[k % len(values)] for k in kept]
    if in_place:  # like SGD: v's new value is read again by w's
        outputs, updates = [values[-1]], [(v, extra[0]), (w, values[-1])] if extra[0] is not values[-1] else []
    else:
        outputs, updates = [values[-1]] + extra, []
    xv = rng.standard_normal(shape).astype(np.float32)
    start = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    results = []
    for optimize in (True, False):
        v.value, w.value = (a.copy() for a in start)
        program = gd.compile(outputs, [x], updates=updates, optimize=optimize)
        results.append([[np.array(a, copy=True) for a in program(xv)] + [v.value.copy(), w.value.copy()]
                        for _ in range(2)])  # the second call runs on the memory plan
    for fast_run, plain_run in zip(*results):
        for a, b in zip(fast_run, plain_run):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fusion_happens_and_reads_scalars_broadcast_to_full_size():
    x = gd.placeholder((4, BLOCK_ELEMENTS), name="x")
    loss = gd.sum(gd.tanh(x) * 3.0)
    (g,) = gd.grad(loss, [x])  # the seed is broadcast to x's shape with stride 0
    f = gd.compile(g, [x])
    assert any(n.op.name == "fused_elementwise" for n in f.nodes)
    xv = np.random.default_rng(0).standard_normal((4, BLOCK_ELEMENTS)).astype(np.float32)
    np.testing.assert_allclose(f(xv), 3.0 * (1 - np.tanh(xv) ** 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reads_old_v", [False, True])
def test_an_update_value_is_computed_into_its_variable_only_where_no_later_step_reads_the_old_value(reads_old_v):
    """SGD's ``v'`` is written straight into ``v``'s buffer (one copy pass fewer);
    where a later step of the same fused op still reads the old ``v`` (here
    ``w' = (v' - v) + w``), ``v'`` waits in scratch and is copied in at the end."""
    shape = (3 * BLOCK_ELEMENTS + 5,)
    rng = np.random.default_rng(5)
    v0, w0, xv = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    x = gd.placeholder(shape, name="x")
    v, w = gd.variable(v0.copy(), name="v"), gd.variable(w0.copy(), name="w")
    new_v = v * 0.9 - (w * 0.5 + x) * 0.1
    new_w = ((new_v - v) + w) if reads_old_v else (w + new_v)
    f = gd.compile([gd.sum(x)], [x], updates=[(v, new_v), (w, new_w)])
    (node,) = [n for n in f.nodes if n.op.name == "fused_elementwise"]
    assert node.op.extra_outputs
    feeds = {id(v): v.value, id(w): w.value, id(x): xv}
    direct = fused_kernel._direct_outputs(node.op.program, node.op.extra_outputs,
                                          [feeds.get(id(t), 0.0) for t in node.inputs], [w.value, v.value])
    assert bool(direct) != reads_old_v
    for step in range(2):
        f(xv)
        want_v = v0 * np.float32(0.9) - (w0 * np.float32(0.5) + xv) * np.float32(0.1)
        want_w = ((want_v - v0) + w0) if reads_old_v else (w0 + want_v)
        np.testing.assert_allclose(v.value, want_v, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(w.value, want_w, rtol=1e-6, atol=1e-6)
        v0, w0 = want_v, want_w


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


def _train_optimized_and_plain(build, batches, rtol, atol, **compile_args):
    """Compile ``build()``'s SGD step with and without the optimizations, run
    both on ``batches`` and assert equal losses (within 1e-5) and parameters
    (``rtol``, ``atol``). Returns the optimized step with its updates and
    parameters, for checks of what it did."""
    results = []
    for optimize in (True, False):
        x, t, loss, updates, params = build()
        step = gd.compile(loss, [x, t], updates=updates, optimize=optimize, **compile_args)
        results.append(([float(step(xb, tb)) for xb, tb in batches], [p.value.copy() for p in params]))
        if optimize:
            fast = step, updates, params
    (losses_a, params_a), (losses_b, params_b) = results
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    for a, b in zip(params_a, params_b):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    return fast


@pytest.mark.parametrize("hidden", [8, (1 << 20) // 5 + 3])  # the large one runs in blocks, over threads
def test_in_place_sgd_steps_equal_the_plain_program(hidden):
    """v and w of each parameter are updated in one pass (a fused op with two
    outputs), each written into its own variable's buffer."""
    from graphdiff.optim import sgd_momentum

    def build():
        rng = np.random.default_rng(0)
        x = gd.placeholder((None, 5), name="x")
        t = gd.placeholder((None,), "int64", name="t")
        w1 = gd.variable(rng.standard_normal((5, hidden)).astype(np.float32) * 0.3, name="w1")
        w2 = gd.variable(rng.standard_normal((hidden, 3)).astype(np.float32) * np.float32(0.3 / np.sqrt(hidden / 8)), name="w2")
        loss = gd.softmax_cross_entropy(gd.relu(x @ w1) @ w2, t)
        updates, _ = sgd_momentum(loss, {"w1": w1, "w2": w2}, lr=0.1)
        return x, t, loss, updates, (w1, w2)

    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((6, 5)).astype(np.float32), rng.integers(0, 3, 6)) for _ in range(5)]
    step, updates, _ = _train_optimized_and_plain(build, batches, rtol=1e-5, atol=1e-7)
    assert step.in_place_updates == [var for var, _ in updates], "the SGD updates should be written in place"
    assert sum(n.op.name == "fused_elementwise" and n.op.num_outputs == 2 for n in step.nodes) == 2


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
    batch = rng.standard_normal((4, 3, 12, 12)).astype(np.float32), rng.integers(0, 4, 4)
    _train_optimized_and_plain(build, [batch] * 3, rtol=1e-4, atol=1e-6, seed=seed)


# --------------------------------------------------------------------------- planned buffers for CNN ops
def _cnn_op_cases():
    """(op, input arrays) for every op with ``supports_out`` among conv, pooling,
    LRN and matmul, covering each kernel path (strides, padding, groups; the
    three input-gradient routes; pooling with and without padding)."""
    import importlib

    from graphdiff.ops.linalg import MatMul

    # (the package re-exports functions named like these modules)
    C, L, P = (importlib.import_module(f"graphdiff.ops.{m}") for m in ("conv", "lrn", "pool"))

    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    cases = []
    for (N, Cin, H, O, k, s, p, g) in [(3, 4, 11, 6, 3, 2, 1, 2), (2, 4, 9, 4, 3, 1, 1, 2), (2, 2, 8, 6, 3, 1, 1, 1),
                                       (2, 3, 15, 4, 5, 4, 0, 1)]:
        x, w, b = r(N, Cin, H, H), r(O, Cin // g, k, k), r(O)
        OH = (H + 2 * p - k) // s + 1
        dy = r(N, O, OH, OH)
        cases += [(C.Conv2d((s, s), (p, p), g), [x, w, b]),
                  (C.Conv2dGradWeight((k, k), (s, s), (p, p), g), [x, dy]),
                  (C.Conv2dGradInput((H, H), (s, s), (p, p), g), [dy, w])]
    for (H, size, s, p) in [(9, 3, 2, 0), (8, 3, 2, 1), (6, 2, 2, 0)]:
        x = r(3, 4, H, H)
        y = P.MaxPool2d((size, size), (s, s), (p, p)).forward(np, x)
        idx = P.MaxPool2dArgmax((size, size), (s, s), (p, p)).forward(np, x, y)
        cases += [(P.MaxPool2d((size, size), (s, s), (p, p)), [x]),
                  (P.MaxPool2dArgmax((size, size), (s, s), (p, p)), [x, y]),
                  (P.MaxPool2dGrad((H, H), (size, size), (s, s), (p, p)), [r(*y.shape), idx]),
                  (P.MaxPool2dGather((size, size), (s, s), (p, p)), [r(*x.shape), idx])]
    x, dy = r(3, 7, 5, 5), r(3, 7, 5, 5)
    for scale_op, norm_op, grad_op in [(L.LRNScale, L.LRNNormalize, L.LRNGrad),
                                       (L.LRNWithinScale, L.LRNWithinNormalize, L.LRNWithinGrad)]:
        scale = scale_op(5, 1e-2, 2.0).forward(np, x)
        y = norm_op(5, 1e-2, 0.75, 2.0).forward(np, x, scale)
        cases += [(scale_op(5, 1e-2, 2.0), [x]), (norm_op(5, 1e-2, 0.75, 2.0), [x, scale]),
                  (grad_op(5, 1e-2, 0.75), [x, y, scale, dy])]
    cases += [(L.WindowSumChannels(3, True), [x]), (L.WindowSumSpatial(3, False), [x])]
    cases += [(MatMul(), [r(5, 7), r(7, 3)]), (MatMul(), [r(8, 4096), r(4096, 600)])]  # plain; transposed GEMM
    return cases


@pytest.mark.parametrize("case", range(len(_cnn_op_cases())))
def test_cnn_ops_write_into_a_planned_buffer_as_into_a_fresh_one(case):
    op, arrays = _cnn_op_cases()[case]
    assert op.supports_out and not getattr(op, "inplace_safe", False)
    fresh = op.forward(np, *arrays)
    out = np.empty_like(fresh)
    for fill in (np.nan, 7.0):  # garbage left by an earlier use of the buffer must not leak in
        out.fill(fill) if out.dtype.kind == "f" else out.fill(255)
        got = op.forward(np, *arrays, out=out)
        assert got is out
        np.testing.assert_allclose(out, fresh, rtol=1e-5, atol=1e-5)


def test_matmul_transposed_path_equals_numpy():
    from graphdiff.kernels.linalg import TRANSPOSE_MIN_WORK, matmul

    rng = np.random.default_rng(3)
    a = rng.standard_normal((16, 2048)).astype(np.float32)
    b = rng.standard_normal((2048, 1024)).astype(np.float32)
    assert 16 * 2048 * 1024 >= TRANSPOSE_MIN_WORK
    np.testing.assert_allclose(matmul(np, a, b), a @ b, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(matmul(np, a, b.T.copy().T), a @ b, rtol=1e-4, atol=1e-3)  # F-ordered operand


def test_cnn_program_plans_buffers_for_conv_pool_lrn_and_reuses_them():
    """The training step of a small CNN: after the first call every conv,
    pooling, LRN and matmul node writes into a planned buffer (the same one
    on every call), results equal the plain program's (no fusion, no plan)
    over several calls and batch sizes, buffers are shared between outputs of
    different shapes, each ReLU is fused into the convolution it follows, and
    the strided convolution builds its columns once for itself and its weight
    gradient."""
    from graphdiff.optim import sgd_momentum

    def build():
        rng = np.random.default_rng(7)
        x = gd.placeholder((None, 3, 13, 13), name="x")
        t = gd.placeholder((None,), "int64", name="t")
        w1 = gd.variable(rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3, name="w1")
        b1 = gd.variable(np.full(6, 0.1, np.float32), name="b1")
        w2 = gd.variable(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, name="w2")
        wf = gd.variable(rng.standard_normal((8 * 2 * 2, 5)).astype(np.float32) * 0.1, name="wf")
        h = gd.max_pool2d(gd.lrn(gd.relu(gd.conv2d(x, w1, b1, stride=2, padding=1)), 3, 1e-2, 0.75, 2.0), 3, 2)
        h = gd.relu(gd.conv2d(h, w2, padding=1, groups=2))
        h = gd.max_pool2d(h, 2, 1)
        loss = gd.softmax_cross_entropy(gd.reshape(h, (-1, 8 * 2 * 2)) @ wf, t)
        updates, _ = sgd_momentum(loss, {"w1": w1, "b1": b1, "w2": w2, "wf": wf}, lr=0.05)
        return x, t, loss, updates, (w1, b1, w2, wf)

    rng = np.random.default_rng(8)
    batches = [(rng.standard_normal((n, 3, 13, 13)).astype(np.float32), rng.integers(0, 5, n)) for n in (4, 4, 3, 4)]
    # NumPy's kernels: the shared columns are their layout (oneDNN's are tested in test_onednn.py)
    step, updates, params = _train_optimized_and_plain(build, batches, rtol=1e-4, atol=1e-6, kernels="numpy")
    plan = step._plans[((4, 3, 13, 13), (4,))]
    planned = {step._instrs[k][4].op.name for k, buf in enumerate(plan) if buf is not None}
    # the strided first convolution shares its columns with its weight gradient (and carries
    # its ReLU); the second (3x3, stride 1) carries its ReLU, and its two gradients are one op
    assert {"im2col", "conv2d_from_cols", "conv2d_grad_weight_from_cols", "conv2d_relu",
            "conv2d_backward", "max_pool2d_with_argmax",
            "max_pool2d_grad", "lrn_scale", "lrn_normalize", "lrn_grad", "matmul"} <= planned
    # pooling and its argmax are one op with two outputs, each in a planned buffer
    pools = [buf for k, buf in enumerate(plan) if step._instrs[k][4].op.name == "max_pool2d_with_argmax"]
    assert len(pools) == 2 and all(len(b) == 2 and all(p is not None for p in b) for b in pools)
    assert [b[1].dtype for b in pools] == [np.uint8, np.uint8]
    (backward,) = [buf for k, buf in enumerate(plan) if step._instrs[k][4].op.name == "conv2d_backward"]
    assert [b.shape for b in backward] == [(4, 6, 3, 3), (8, 3, 3, 3)]  # dx, dw
    bases = {}
    for buf in plan:
        for b in buf if isinstance(buf, tuple) else (buf,):
            if b is not None:
                bases.setdefault(id(b.base), set()).add(b.shape)
    assert any(len(shapes) > 1 for shapes in bases.values()), "no buffer is reused across shapes"
    # every update is written in place, the momentum buffers' too (their new value is read again by w's)
    assert step.in_place_updates == [var for var, _ in updates]
    # and each parameter's v and w are updated by one op with two outputs, in one pass
    sgd = [n for n in step.nodes if n.op.name == "fused_elementwise" and n.op.num_outputs == 2]
    assert len(sgd) == len(params)


@pytest.mark.parametrize("size", [2, 5, 9])
def test_lrn_direct_channel_sums_equal_the_block_scans(size, monkeypatch):
    """Small across-channel windows are summed by shifted adds; the block
    scans (used for bigger windows) give the same scale, output and gradient."""
    import importlib

    from graphdiff.kernels import lrn as K

    L = importlib.import_module("graphdiff.ops.lrn")
    rng = np.random.default_rng(size)
    x = rng.standard_normal((5, 11, 6, 7)).astype(np.float32) * 3
    dy = rng.standard_normal(x.shape).astype(np.float32)

    def run():
        scale = L.LRNScale(size, 1e-2, 2.0).forward(np, x)
        y = L.LRNNormalize(size, 1e-2, 0.75, 2.0).forward(np, x, scale)
        return scale, y, L.LRNGrad(size, 1e-2, 0.75).forward(np, x, y, scale, dy)

    direct = run()
    monkeypatch.setattr(K, "DIRECT_MAX_SIZE", 0)
    for a, b in zip(direct, run()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_relu_fuses_into_its_convolution_only_when_nothing_else_reads_the_convolution():
    rng = np.random.default_rng(4)
    x = gd.placeholder((2, 3, 9, 9), name="x")
    w = gd.variable(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), name="w")
    b = gd.variable(rng.standard_normal(4).astype(np.float32), name="b")
    xv = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    c = gd.conv2d(x, w, b, padding=1)
    alone = gd.compile(gd.relu(c), [x])
    shared = gd.compile([gd.relu(c), c * 2.0], [x])  # the convolution is read twice: no fusion
    assert [n.op.name for n in alone.nodes if "conv" in n.op.name] == ["conv2d_relu"]
    assert [n.op.name for n in shared.nodes if "conv" in n.op.name] == ["conv2d"]
    want = gd.compile(gd.relu(c), [x], optimize=False)(xv)
    for _ in range(2):  # the second call writes into the planned buffer
        np.testing.assert_allclose(alone(xv), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shared(xv)[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(gd.ShapeError, match="compile-time fusion"):
        gd.grad(gd.sum(alone.nodes[-1]), [w])


@pytest.mark.parametrize("stride,kernel,groups,shared", [(4, 5, 1, True), (2, 3, 2, True), (1, 3, 1, False),
                                                          (1, 2, 1, True)])
def test_convolution_and_weight_gradient_share_columns_where_windows_overlap_little(stride, kernel, groups, shared):
    """kh*kw <= 8 * sh*sw: one im2col node feeds the convolution and its weight
    gradient; the gradients and the output equal the plain program's."""
    rng = np.random.default_rng(stride * 10 + kernel)
    x = gd.placeholder((None, 4, 17, 17), name="x")
    w = gd.variable(rng.standard_normal((6, 4 // groups, kernel, kernel)).astype(np.float32), name="w")
    b = gd.variable(rng.standard_normal(6).astype(np.float32), name="b")
    y = gd.relu(gd.conv2d(x, w, b, stride=stride, padding=1, groups=groups))
    loss = gd.sum(y * y)
    outs = [loss] + gd.grad(loss, [w, b])
    fast, plain = gd.compile(outs, [x], kernels="numpy"), gd.compile(outs, [x], optimize=False)
    names = [n.op.name for n in fast.nodes]
    assert ("im2col" in names) == shared
    assert ("conv2d_grad_weight_from_cols" in names) == shared and ("conv2d_grad_weight" in names) != shared
    for n in (3, 3, 2):  # the second call runs on the memory plan; then another batch size
        xv = rng.standard_normal((n, 4, 17, 17)).astype(np.float32)
        for got, want in zip(fast(xv), plain(xv)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("return_pooled", [False, True])
def test_pooling_and_its_argmax_run_as_one_op_with_two_outputs(return_pooled):
    """A pooling whose gradient needs the argmax becomes max_pool2d_with_argmax
    (read through two parts); the results equal the plain program's, also when
    the pooled value is itself an output (its part then gets a fresh array per
    call, not a planned buffer that the next call would overwrite)."""
    rng = np.random.default_rng(5)
    x = gd.placeholder((None, 3, 9, 9), name="x")
    c = gd.variable(rng.standard_normal((3, 5, 5)).astype(np.float32), name="c")
    y = gd.max_pool2d(x * 2.0, 3, 2, padding=1)
    loss = gd.sum(y * c)
    (dx,) = gd.grad(loss, [x])
    outs = [loss, dx] + ([y] if return_pooled else [])
    fast, plain = gd.compile(outs, [x]), gd.compile(outs, [x], optimize=False)
    assert [n.op.name for n in fast.nodes].count("max_pool2d_with_argmax") == 1
    assert not {"max_pool2d", "max_pool2d_argmax"} & {n.op.name for n in fast.nodes}
    batches = [rng.standard_normal((n, 3, 9, 9)).astype(np.float32) for n in (2, 2, 3, 2)]
    kept = []
    for xb in batches:
        got, want = fast(xb), plain(xb)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        kept.append((xb, [np.array(a, copy=True) for a in got], got))
    for xb, copies, arrays in kept:  # earlier results are not overwritten by later calls
        for a, b in zip(arrays, copies):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("channels, filters, kernel, padding, groups, stride, fused", [
    (4, 6, 3, 1, 1, 1, True),     # AlexNet conv3-5's case: O <= 2C
    (6, 8, 3, 1, 2, 1, True),
    (6, 6, 3, 0, 3, 1, True),
    (3, 4, 5, 2, 1, 1, True),
    (2, 8, 3, 1, 1, 1, False),    # O > 2C: the input gradient takes another route (AlexNet conv2)
    (4, 6, 3, 1, 1, 2, False),    # strided
])
def test_stride_one_gradients_share_the_columns_of_dy(channels, filters, kernel, padding, groups, stride, fused):
    """conv2d_grad_input and conv2d_grad_weight of one convolution become
    conv2d_backward (two outputs, one column matrix of dy) where the input
    gradient runs as a convolution of dy; results equal the plain program's."""
    rng = np.random.default_rng(channels * filters + kernel)
    x = gd.placeholder((None, channels, 9, 8), dtype="float64", name="x")
    w = gd.variable(rng.standard_normal((filters, channels // groups, kernel, kernel)), name="w")
    y = gd.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    c = gd.constant(rng.standard_normal(y.shape[1:]))
    loss = gd.sum(gd.tanh(y) * c)
    dx, dw = gd.grad(loss, [x, w])
    fast, plain = gd.compile([dx, dw], [x]), gd.compile([dx, dw], [x], optimize=False)
    assert ("conv2d_backward" in {n.op.name for n in fast.nodes}) == fused
    for n in (2, 3, 2):
        xb = rng.standard_normal((n, channels, 9, 8))
        for a, b in zip(fast(xb), plain(xb)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
