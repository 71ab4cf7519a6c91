"""Every gradient op's shape rule accepts a ``None`` dimension (a batch known at
run time) that meets a static one: the graph of a ``(None, ...)`` input with a
gradient seeded with a static batch (and the gradient of that gradient, where
the second-order ops meet static directions) builds, compiles and gives what the
same graph built with a static batch gives."""
import importlib

import numpy as np
import pytest

import graphdiff as gd

LRNGrad = importlib.import_module("graphdiff.ops.lrn").LRNGrad  # (gd.ops.lrn is the function)

BATCH = 2

# name: (input shape without batch, build(x) -> y); every op with a gradient op of its own
OPS = {
    "lrn": ((4, 4, 4), lambda x: gd.lrn(x, size=3, alpha=0.1)),
    "lrn_within": ((2, 5, 5), lambda x: gd.lrn_within(x, size=3, alpha=0.1)),
    "normalize_cross_map": ((3, 4, 4), lambda x: gd.normalize_cross_map(gd.exp(x))),
    "relu": ((3, 4), gd.relu),
    "conv2d": ((2, 6, 6), lambda x: gd.conv2d(x, gd.constant(np.linspace(-1, 1, 54).reshape(3, 2, 3, 3)),
                                             padding=1)),
    "conv2d_stride2_groups": ((4, 7, 7), lambda x: gd.conv2d(
        x, gd.constant(np.linspace(-1, 1, 72).reshape(4, 2, 3, 3)), stride=2, groups=2)),
    "max_pool2d": ((2, 6, 6), lambda x: gd.max_pool2d(x, 3, 2, padding=1)),
    "avg_pool2d": ((2, 6, 6), lambda x: gd.avg_pool2d(x, 3, 2, padding=1)),
    "adaptive_avg_pool2d": ((2, 7, 7), lambda x: gd.adaptive_avg_pool2d(x, 3)),
    "getitem": ((4, 5), lambda x: x[:, 1:4:2]),
    "pad": ((2, 3), lambda x: gd.pad(x, ((0, 0), (1, 2), (0, 1)))),
    "concatenate": ((2, 3), lambda x: gd.concatenate([x, gd.tanh(x)], axis=1)),
    "reshape_transpose": ((2, 3), lambda x: gd.transpose(gd.reshape(x, (-1, 3, 2)), (0, 2, 1))),
    "softmax": ((5,), lambda x: gd.log_softmax(x) + gd.softmax(x)),
    "max": ((3, 4), lambda x: gd.max(x, axis=1)),
    "mean": ((3, 4), lambda x: gd.mean(x, axis=(1, 2))),
    "matmul": ((3,), lambda x: gd.matmul(x, gd.constant(np.linspace(-1, 1, 12).reshape(3, 4)))),
}


def _graph(case, batch, rng):
    """``[y, dx, H v]`` with static seeds: the gradient's seed and the HVP's
    direction are constants of the static batch ``BATCH``."""
    shape, build = OPS[case]
    x = gd.placeholder((batch,) + shape, "float64", name="x")
    y = build(x)
    seed = gd.constant(rng.standard_normal((BATCH,) + y.shape[1:]))
    (dx,) = gd.grad(y, [x], grad_output=seed * gd.tanh(y))  # depends on x: a second order exists
    (hv,) = gd.grad(gd.sum(dx * gd.constant(rng.standard_normal((BATCH,) + shape))), [x])
    return x, [y, dx, hv]


@pytest.mark.parametrize("case", sorted(OPS))
def test_gradient_ops_accept_a_none_batch_against_a_static_one(case):
    x, outputs = _graph(case, None, np.random.default_rng(0))
    xs, static = _graph(case, BATCH, np.random.default_rng(0))
    for node in outputs:
        assert node.shape[0] in (None, BATCH)
    xv = np.random.default_rng(1).standard_normal((BATCH,) + x.shape[1:])
    xv = np.where(np.abs(xv) < 0.05, 0.5, xv)  # away from ReLU's switch
    want = gd.compile(static, [xs], optimize=False)(xv)
    for optimize in (True, False):
        got = gd.compile(outputs, [x], optimize=optimize)(xv)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_issue_example_lrn_with_a_none_batch():
    x = gd.placeholder((None, 4, 4, 4), "float64", name="x")
    (gx,) = gd.grad(gd.sum(gd.lrn(x, size=3) * gd.constant(np.ones((2, 4, 4, 4)))), [x])
    xv = np.random.default_rng(2).standard_normal((2, 4, 4, 4))
    xs = gd.placeholder((2, 4, 4, 4), "float64", name="xs")
    (gs,) = gd.grad(gd.sum(gd.lrn(xs, size=3)), [xs])
    np.testing.assert_allclose(gd.compile(gx, [x])(xv), gd.compile(gs, [xs])(xv), rtol=1e-13)


def test_lrn_grad_still_refuses_shapes_that_differ():
    x = gd.placeholder((None, 4, 4, 4), "float64", name="x")
    y = gd.lrn(x, size=3)
    scale = y.inputs[1]
    with pytest.raises(gd.ShapeError, match=r"lrn_grad.*axis 1: 4 vs 4 vs 4 vs 5"):
        LRNGrad(3, 1e-4, 0.75)(x, y, scale, gd.constant(np.ones((2, 5, 4, 4))))
    with pytest.raises(gd.ShapeError, match="lrn_grad.*dtype"):
        LRNGrad(3, 1e-4, 0.75)(x, y, scale, gd.constant(np.ones((2, 4, 4, 4), "float32")))


def test_unify_shapes():
    from graphdiff.graph import unify_shapes

    op = LRNGrad(3, 1e-4, 0.75)
    a = gd.placeholder((None, 3, None), name="a")
    b = gd.placeholder((2, None, None), name="b")
    assert unify_shapes(op, a, b) == (2, 3, None)
    with pytest.raises(gd.ShapeError, match="same number of dimensions"):
        unify_shapes(op, a, gd.placeholder((2, 3), name="c"))
