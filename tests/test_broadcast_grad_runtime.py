"""Gradients of broadcasting where a ``None`` dimension may broadcast: the axes
to sum are decided at run time (ops/reduce.py ``sum_to``/``SumToLike``), as NumPy
and PyTorch do, and the gradient's static shape keeps ``None`` there. Compared
with PyTorch in float64, with the program compiled with and without optimization."""
import numpy as np
import pytest
import torch

import graphdiff as gd


def _both(outputs, inputs):
    return [gd.compile(outputs, inputs), gd.compile(outputs, inputs, optimize=False)]


def _torch_grads(fn, arrays):
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*ts)
    return [t.numpy() for t in torch.autograd.grad(out, ts)]


def test_issue_example_none_against_static():
    x = gd.placeholder((None, 3), "float64", "x")
    c = np.random.default_rng(0).standard_normal((2, 3))
    (gx,) = gd.grad(gd.sum(x * gd.constant(c)), [x])
    assert gx.shape == (None, 3)
    for program in _both(gx, [x]):
        np.testing.assert_allclose(program(np.ones((1, 3))), c.sum(axis=0, keepdims=True), rtol=1e-15)
        np.testing.assert_allclose(program(np.ones((2, 3))), c, rtol=1e-15)


@pytest.mark.parametrize("shapes, feeds", [
    (((None, 3), (None, 3)), ((1, 3), (4, 3))),       # None against None, either side may be 1
    (((None, 3), (None, 3)), ((4, 3), (1, 3))),
    (((None, 3), (None, 3)), ((4, 3), (4, 3))),
    (((None, 1, 4), (2, None, 4)), ((1, 1, 4), (2, 3, 4))),
    (((None, 1, 4), (2, None, 4)), ((2, 1, 4), (2, 1, 4))),
    (((None, None), (3,)), ((1, 1), (3,))),
    (((None, 2), ()), ((3, 2), ())),
])
@pytest.mark.parametrize("fn", ["add", "mul", "div", "maximum", "where"])
def test_binary_gradients_sum_over_the_axes_broadcast_in_the_call(shapes, feeds, fn):
    rng = np.random.default_rng(len(fn))
    a, b = (gd.placeholder(s, "float64", n) for s, n in zip(shapes, "ab"))
    build = {"add": lambda p, q: p + q, "mul": lambda p, q: p * q, "div": lambda p, q: p / (q * q + 1.0),
             "maximum": lambda p, q: gd.maximum(p, q), "where": lambda p, q: gd.where(p > q, p * 2.0, q)}[fn]
    torch_build = {"add": lambda p, q: p + q, "mul": lambda p, q: p * q, "div": lambda p, q: p / (q * q + 1.0),
                   "maximum": torch.maximum, "where": lambda p, q: torch.where(p > q, p * 2.0, q)}[fn]
    out = build(a, b)
    weight = gd.placeholder(out.shape, "float64", "weight")
    grads = gd.grad(gd.sum(out * weight), [a, b])
    for g, p in zip(grads, (a, b)):
        assert all(d is None or d == s for d, s in zip(g.shape, p.shape))
    av, bv = (rng.standard_normal(f) for f in feeds)
    wv = rng.standard_normal(np.broadcast_shapes(av.shape, bv.shape))
    want = _torch_grads(lambda p, q: (torch_build(p, q) * torch.tensor(wv)).sum(), [av, bv])
    for program in _both(grads, [a, b, weight]):
        for _ in range(2):  # the second call runs on the memory plan
            for got, ref in zip(program(av, bv, wv), want):
                assert got.shape == ref.shape
                np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_broadcast_to_and_matmul_batch_dims():
    rng = np.random.default_rng(1)
    x = gd.placeholder((None, 3), "float64", "x")
    a = gd.placeholder((None, 2, 3), "float64", "a")
    b = gd.variable(rng.standard_normal((4, 3, 5)), name="b")
    c = gd.constant(rng.standard_normal((4, 3)))
    loss = gd.sum(gd.broadcast_to(x, (4, 3)) * c) + gd.sum(gd.tanh(gd.matmul(a, b)))
    gx, ga, gb = gd.grad(loss, [x, a, b])
    assert gx.shape == (None, 3) and ga.shape == (None, 2, 3)
    for batch in (1, 4):
        xv, av = rng.standard_normal((batch, 3)), rng.standard_normal((1 if batch == 1 else 4, 2, 3))
        want = _torch_grads(lambda p, q, r: (p.broadcast_to(4, 3) * torch.tensor(c.op.value)).sum()
                            + torch.tanh(q @ r).sum(), [xv, av, b.value])
        for program in _both([gx, ga, gb], [x, a]):
            for got, ref in zip(program(xv, av), want):
                assert got.shape == ref.shape
                np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_second_order_through_a_run_time_sum():
    """The run-time sum's own VJP (broadcast back to ``g``) gives the right
    Hessian-vector product, against PyTorch's double backward."""
    rng = np.random.default_rng(2)
    x = gd.placeholder((None, 3), "float64", "x")
    v = gd.placeholder((None, 3), "float64", "v")
    c = rng.standard_normal((4, 3))
    loss = gd.sum(gd.tanh(x * gd.constant(c)) ** 2.0)
    (gx,) = gd.grad(loss, [x])
    (hv,) = gd.grad(gd.sum(gx * v), [x])
    xv, vv = rng.standard_normal((1, 3)), rng.standard_normal((1, 3))
    xt = torch.tensor(xv, requires_grad=True)
    (gt,) = torch.autograd.grad((torch.tanh(xt * torch.tensor(c)) ** 2).sum(), [xt], create_graph=True)
    (ht,) = torch.autograd.grad((gt * torch.tensor(vv)).sum(), [xt])
    for program in _both([gx, hv], [x, v]):
        got_g, got_h = program(xv, vv)
        np.testing.assert_allclose(got_g, gt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_h, ht.numpy(), rtol=1e-12, atol=1e-12)


def test_static_shapes_need_no_run_time_decision():
    """Where every dimension is known (or the other operand cannot broadcast a
    ``None`` one: a bias), the gradient is the plain static sum, no run-time op."""
    x = gd.placeholder((None, 4), "float64", "x")
    bias = gd.variable(np.zeros(4), name="bias")
    gx, gb = gd.grad(gd.sum(gd.tanh(x + bias)), [x, bias])
    ops = {n.op.name for n in gd.toposort([gx, gb])}
    assert "sum_to_like" not in ops and "sum_to" in ops
