"""Compiling second-order graphs (Hessian-vector products) always terminates and
agrees with the plain program.

A stride-1 convolution's two gradients are merged by a rewrite rule into one
``conv2d_backward`` op; in a second-order graph the weight gradient's input can
depend on the input gradient being merged (through an input read for its shape
only), and merging would make a cycle. The pass refuses such a merge
(the conv2d_backward_pair rule, graphdiff/ops/conv_rewrites.py), and the rebuild after the rewrites
raises a CompilerError on a cycle instead of looping. Every compile here runs
under an alarm, so a regression fails instead of hanging the suite.
"""
import contextlib
import signal

import numpy as np
import pytest

import graphdiff as gd
from graphdiff import rewrite
from graphdiff.errors import CompilerError
from graphdiff.graph import Part, toposort

COMPILE_SECONDS = 60


@contextlib.contextmanager
def deadline(seconds=COMPILE_SECONDS):
    """Fail (TimeoutError) instead of hanging when the block runs past ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _hvp_graph(loss, params, rng):
    """``[grads..., H v]``: the gradients of ``loss`` and the Hessian-vector product
    along random constant directions (one per parameter, of its static shape)."""
    grads = gd.grad(loss, params)
    s = None
    for g in grads:
        term = gd.sum(g * gd.constant(rng.standard_normal(g.shape)))
        s = term if s is None else s + term
    return grads, gd.grad(s, params)


def test_issue_example_padded_stride1_conv_compiles():
    import torch

    rng = np.random.default_rng(0)
    x = gd.variable(rng.standard_normal((1, 1, 4, 4)))
    w = gd.variable(rng.standard_normal((1, 1, 3, 3)))
    y = gd.conv2d(gd.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), w)
    c0 = rng.standard_normal(y.shape)
    loss = gd.sum(y * gd.constant(c0))
    gx, gw = gd.grad(loss, [x, w])
    c1, c2 = rng.standard_normal(gx.shape), rng.standard_normal(gw.shape)
    s = gd.sum(gx * gd.constant(c1)) + gd.sum(gw * gd.constant(c2))
    (hw,) = gd.grad(s, [w])
    with deadline():
        fast = gd.compile(hw)
        plain = gd.compile(hw, optimize=False)
    xt, wt = (torch.tensor(v.value, requires_grad=True) for v in (x, w))
    yt = torch.nn.functional.conv2d(xt, wt, padding=1)
    gxt, gwt = torch.autograd.grad((yt * torch.tensor(c0)).sum(), [xt, wt], create_graph=True)
    (hwt,) = torch.autograd.grad((gxt * torch.tensor(c1)).sum() + (gwt * torch.tensor(c2)).sum(), [wt])
    np.testing.assert_allclose(fast(), hwt.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(plain(), hwt.numpy(), rtol=1e-12, atol=1e-12)
    # the pair the merge would have closed into a cycle stays two ops
    assert {"conv2d_grad_input", "conv2d_grad_weight"} <= {n.op.name for n in fast.nodes}


def _conv_variant(kind, rng):
    """The variants of the issue's smallest form: a (None, 2, 5, 5) placeholder with
    no padding, and concatenate or split before a stride-1 convolution; the loss
    and the HVP's directions are constants broadcast over the batch, so the
    second-order graph reads the first-order input gradient for its shape
    (``broadcast_like``, ``getitem_grad``)."""
    w = gd.variable(rng.standard_normal((3, 2, 3, 3)), name="w")
    if kind == "none_batch":
        x = gd.placeholder((None, 2, 5, 5), "float64", name="x")
        h = x
    elif kind == "concatenate":
        x = gd.placeholder((None, 1, 5, 5), "float64", name="x")
        h = gd.concatenate([x, x * 0.5], axis=1)
    else:  # split, then the halves concatenated in the other order
        x = gd.placeholder((None, 2, 5, 5), "float64", name="x")
        h = gd.concatenate(gd.split(x, 2, axis=1)[::-1], axis=1)
    y = gd.conv2d(h, w)
    loss = gd.sum(y * gd.constant(rng.standard_normal(y.shape[1:])))
    return x, w, loss


@pytest.mark.parametrize("kind", ["none_batch", "concatenate", "split"])
@pytest.mark.parametrize("wrt", ["w", "x_and_w"])
@pytest.mark.parametrize("with_grads", [False, True])
def test_issue_variants_compile_and_agree(kind, wrt, with_grads):
    """(With the first-order gradients among the outputs, the input gradient pairs
    with the first-order weight gradient, the usual merge; without them, only the
    second-order weight gradient is left to pair with it: the cycle.)"""
    rng = np.random.default_rng(1)
    x, w, loss = _conv_variant(kind, rng)
    gx, gw = gd.grad(loss, [x, w])
    s = (gd.sum(gx * gd.constant(rng.standard_normal(gx.shape[1:])))
         + gd.sum(gw * gd.constant(rng.standard_normal(gw.shape))))
    params = [w] if wrt == "w" else [x, w]
    outputs = ([gx, gw] if with_grads else []) + gd.grad(s, params)
    with deadline():
        fast = gd.compile(outputs, [x])
        plain = gd.compile(outputs, [x], optimize=False)
    for batch in (3, 1):
        xv = rng.standard_normal((batch,) + x.shape[1:])
        for a, b in zip(fast(xv), plain(xv)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_first_order_pair_still_merges():
    """The cycle check refuses only what would be a cycle: a training graph's pair
    (the usual case) still becomes one conv2d_backward op."""
    rng = np.random.default_rng(2)
    x = gd.placeholder((None, 2, 6, 6), "float64", name="x")
    w = gd.variable(rng.standard_normal((3, 2, 3, 3)), name="w")
    loss = gd.sum(gd.tanh(gd.conv2d(gd.relu(x), w, padding=1)))
    gx, gw = gd.grad(loss, [x, w])
    program = gd.compile([gx, gw], [x])
    assert "conv2d_backward" in {n.op.name for n in program.nodes}
    plain = gd.compile([gx, gw], [x], optimize=False)
    xv = rng.standard_normal((2, 2, 6, 6))
    for a, b in zip(program(xv), plain(xv)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_rebuild_reports_a_cycle_instead_of_looping():
    """A replacement that reads its own result (what the faulty merge did) is a
    CompilerError naming the nodes, not an endless loop."""
    x = gd.placeholder((3,), "float64", name="x")
    a = gd.exp(x, name="a")
    b = gd.tanh(a, name="b")
    out = gd.neg(b, name="out")
    order = toposort([out])
    looped = gd.graph.Tensor(a.op, (b,), a.shape, a.dtype, name="a")  # a := exp(b), b = tanh(a)
    with deadline(10), pytest.raises(CompilerError, match="cycle"):
        rewrite.rebuild(order, {id(a): looped})


def test_schedule_check_names_a_node_scheduled_before_its_input():
    from graphdiff.compiler import _check_order

    x = gd.placeholder((3,), "float64", name="x")
    y = gd.exp(x, name="y")
    _check_order([x, y], "fusion")
    with pytest.raises(CompilerError, match="after fusion: exp 'y' is scheduled before its input placeholder 'x'"):
        _check_order([y, x], "fusion")


def test_merges_that_close_a_cycle_together_are_undone():
    """Two merges, each acyclic alone, that form a cycle together: the joint check
    (Kahn's algorithm over the merged graph) undoes the merges on it."""
    x = gd.placeholder((2,), "float64", name="x")
    p1 = gd.exp(x, name="p1")
    q2 = gd.tanh(p1, name="q2")    # reads p1
    p2 = gd.exp(x * 2.0, name="p2")
    q1 = gd.tanh(p2, name="q1")    # reads p2
    order = toposort([q1, q2])
    # merging (p1, q1) and (p2, q2): {p1,q1} reads p2 (via q1), {p2,q2} reads p1 (via q2)
    merges = [(p1, q1, None), (p2, q2, None)]
    assert rewrite._drop_cyclic_merges(order, merges) == merges
    assert rewrite._drop_cyclic_merges(order, merges[:1]) == []


def test_reachability_search_is_bounded():
    """The merge check's walk stops when the pass's budget is spent and then
    refuses (answers True): the pass stays linear in the graph."""
    x = gd.placeholder((2,), "float64", name="x")
    chain = x
    for _ in range(50):
        chain = gd.tanh(chain)
    order = toposort([chain])
    position = {id(n): k for k, n in enumerate(order)}
    assert rewrite._reaches(chain, x, position, [1000])
    assert not rewrite._reaches(x, chain, position, [1000])  # x comes first: no walk at all
    budget = [10]
    assert rewrite._reaches(chain, x, position, budget) and budget[0] < 0


# ----------------------------------------------------------------------------- every op, second order
def _conv(stride=1, padding=0, groups=1, bias=False):
    def build(x, w, b):
        return gd.conv2d(x, w, b if bias else None, stride=stride, padding=padding, groups=groups)
    return build


# name: (input shape without batch, weight shape or None, build(x, w, b) -> y)
OPS = {
    "conv_s1": ((2, 6, 6), (3, 2, 3, 3), _conv()),
    "conv_s1_pad": ((2, 6, 6), (3, 2, 3, 3), _conv(padding=1, bias=True)),
    "conv_s2_groups": ((4, 7, 7), (4, 2, 3, 3), _conv(stride=2, padding=1, groups=2)),
    "conv_1x1": ((2, 5, 5), (3, 2, 1, 1), _conv()),
    "max_pool": ((2, 6, 6), None, lambda x, w, b: gd.max_pool2d(x, 3, 2, padding=1)),
    "avg_pool": ((2, 6, 6), None, lambda x, w, b: gd.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)),
    "adaptive_avg_pool": ((2, 7, 7), None, lambda x, w, b: gd.adaptive_avg_pool2d(x, (3, 2))),
    "lrn": ((5, 4, 4), None, lambda x, w, b: gd.lrn(x, size=3, alpha=0.1, beta=0.75, k=2.0)),
    "lrn_within": ((2, 5, 5), None, lambda x, w, b: gd.lrn_within(x, size=3, alpha=0.1, beta=0.75, k=2.0)),
    "normalize_cross_map": ((3, 4, 4), None, lambda x, w, b: gd.normalize_cross_map(gd.exp(x))),
    "relu_tanh_sigmoid": ((2, 4, 4), None, lambda x, w, b: gd.relu(x) * gd.tanh(x) + gd.sigmoid(x)),
    "exp_log_sqrt": ((2, 4, 4), None, lambda x, w, b: gd.log(gd.exp(x) + 1.0) * gd.sqrt(x * x + 1.0)),
    "maximum_minimum": ((2, 4, 4), None, lambda x, w, b: gd.maximum(x, -x * 0.5) - gd.minimum(x, 0.3)),
    "broadcast_bias": ((2, 4, 4), (2, 1, 1), lambda x, w, b: x * w + w / (x * x + 1.0)),
    "matmul": ((6,), (6, 4), lambda x, w, b: gd.matmul(gd.tanh(x), w)),
    "reshape_transpose": ((2, 3, 4), None, lambda x, w, b: gd.transpose(gd.reshape(x, (-1, 12)), (1, 0)) * 2.0),
    "pad_getitem": ((2, 4, 4), None, lambda x, w, b: gd.pad(x, ((0, 0), (0, 0), (1, 2), (0, 1)))[:, 1:, ::2]),
    "concatenate_split": ((4, 3, 3), None,
                          lambda x, w, b: gd.concatenate(gd.split(x, 2, axis=1)[::-1] + [x * x], axis=1)),
    "reductions": ((2, 4, 4), None, lambda x, w, b: gd.sum(x * x, axis=1) + gd.mean(x, axis=(1, 2))[:, None]
                   + gd.max(x, axis=1) * 0.5),
    "softmax": ((5,), None, lambda x, w, b: gd.softmax(x) + gd.log_softmax(x * 0.5)),
    "where": ((2, 4), None, lambda x, w, b: gd.where(x > 0.1, x * x, -x)),
}


def _second_order(case, batch, seed):
    """``loss``, its gradients and the Hessian-vector product along ``(vx, vw)``,
    with the direction for ``x`` a placeholder of ``x``'s (run-time) shape."""
    shape, wshape, build = OPS[case]
    rng = np.random.default_rng(seed)
    x = gd.placeholder((batch,) + shape, "float64", name="x")
    vx = gd.placeholder((batch,) + shape, "float64", name="vx")
    w = gd.variable(rng.standard_normal(wshape) * 0.5, name="w") if wshape else None
    b = gd.variable(rng.standard_normal(wshape[0]), name="b") if wshape and len(wshape) == 4 else None
    y = build(x, w, b)
    loss = gd.sum(gd.tanh(y) * y)  # not linear, even where y is
    params = [x] + [p for p in (w, b) if p is not None]
    used = [p for p in params if p is x or any(n is p for n in toposort([loss]))]
    grads = gd.grad(loss, used)
    vs = [vx] + [gd.constant(rng.standard_normal(p.shape)) for p in used[1:]]
    s = None
    for g, v in zip(grads, vs):
        term = gd.sum(g * v)
        s = term if s is None else s + term
    hvp = gd.grad(s, used)
    return x, vx, used, vs, [loss] + grads + hvp


@pytest.mark.parametrize("batch", [2, None])
@pytest.mark.parametrize("case", sorted(OPS))
def test_second_order_graph_of_every_op_compiles_and_agrees(case, batch):
    """The HVP graph of every op compiles (fused and not) within the alarm, both
    programs agree, and the HVP matches central differences of the gradient
    along the same direction."""
    x, vx, used, vs, outputs = _second_order(case, batch, seed=len(case))
    n = len(used)
    with deadline():
        fast = gd.compile(outputs, [x, vx])
        plain = gd.compile(outputs, [x, vx], optimize=False)
        hvp_only = gd.compile(outputs[1 + n:], [x, vx])  # no first-order gradient to pair with
    rng = np.random.default_rng(3)
    for run_batch in ((2, 3) if batch is None else (2,)):
        xv = rng.standard_normal((run_batch,) + x.shape[1:])
        xv = np.where(np.abs(xv) < 0.05, 0.77, xv)  # away from ReLU's and where's switches
        vxv = rng.standard_normal(xv.shape)
        got, ref = fast(xv, vxv), plain(xv, vxv)
        for a, r in zip(hvp_only(xv, vxv), ref[1 + n:]):
            np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-9 * (1 + np.abs(r).max()))
        for a, r in zip(got, ref):
            assert np.shape(a) == np.shape(r)
            np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-9 * (1 + np.abs(r).max()))
        # H v ~ (g(p + eps v) - g(p - eps v)) / (2 eps), p = (x, w, b)
        eps = 1e-6
        start = [p.value.copy() for p in used[1:]]
        dirs = [vxv] + [v.op.value for v in vs[1:]]
        sides = []
        for sign in (1, -1):
            for p, s0, d in zip(used[1:], start, dirs[1:]):
                p.value = s0 + sign * eps * d
            sides.append(plain(xv + sign * eps * vxv, vxv)[1:1 + n])
        for p, s0 in zip(used[1:], start):
            p.value = s0
        for h, gp, gm in zip(got[1 + n:], *sides):
            numeric = (gp - gm) / (2 * eps)
            np.testing.assert_allclose(h, numeric, rtol=1e-4, atol=1e-5 * (1 + np.abs(numeric).max()))


def test_compiled_nodes_have_no_part_without_its_op():
    """The rebuilt schedule reads every Part's multi-output op before the Part."""
    x, vx, used, vs, outputs = _second_order("conv_s1_pad", None, seed=0)
    program = gd.compile(outputs, [x, vx])
    seen = set()
    for node in program.nodes:
        assert all(id(i) in seen for i in node.inputs)
        if isinstance(node.op, Part):
            assert node.inputs[0].op.num_outputs > 1
        seen.add(id(node))
