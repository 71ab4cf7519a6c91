"""Tests for the core ops (graphdiff/ops/elementwise.py, reduce.py, shape.py,
linalg.py, nn.py): forward against NumPy, VJP and double-VJP against float64
finite differences, static shape inference against NumPy's result shapes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import graphdiff as gd
from graphdiff.testing import check_double_vjp, check_vjp

# Each test runs on NumPy and on CuPy (the stand-in in CI; see conftest.py).
pytestmark = pytest.mark.each_backend

TOL = 1e-6


def rng(seed=0):
    return np.random.default_rng(seed)


def run(build, *arrays):
    """Build ``build`` on float64 (or integer) placeholders of the arrays'
    shapes, compile and run it: the engine's forward result."""
    xs = [gd.placeholder(np.shape(a), dtype=np.asarray(a).dtype, name=f"in{i}") for i, a in enumerate(arrays)]
    out = build(*xs)
    return gd.compile(out, inputs=xs)(*arrays)


def assert_gradients(build, arrays, wrt=None):
    """First and second order VJPs agree with finite differences in float64."""
    first = check_vjp(build, arrays, wrt=wrt)
    assert max(first) < TOL, first
    second = check_double_vjp(build, arrays, wrt=wrt)
    assert max(second) < TOL, second


def away_from_zero(shape, seed=0, low=0.2):
    """Random values with |x| >= low: no kinks of relu/abs within reach of the finite differences."""
    r = rng(seed)
    return r.uniform(low, 2.0, shape) * r.choice([-1.0, 1.0], shape)


def positive(shape, seed=0):
    return rng(seed).uniform(0.5, 2.0, shape)


# --------------------------------------------------------------------------- unary elementwise
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY = {
    # name: (graph op, NumPy reference, input maker)
    "neg": (gd.neg, np.negative, lambda s: rng(1).standard_normal(s)),
    "exp": (gd.exp, np.exp, lambda s: rng(2).standard_normal(s)),
    "log": (gd.log, np.log, lambda s: positive(s, 3)),
    "sqrt": (gd.sqrt, np.sqrt, lambda s: positive(s, 4)),
    "tanh": (gd.tanh, np.tanh, lambda s: rng(5).standard_normal(s)),
    "sigmoid": (gd.sigmoid, _sigmoid, lambda s: rng(6).standard_normal(s) * 3),
    "relu": (gd.relu, lambda x: np.maximum(x, 0), lambda s: away_from_zero(s, 7)),
    "abs": (gd.abs, np.abs, lambda s: away_from_zero(s, 8)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_forward_matches_numpy(name):
    op, ref, make = UNARY[name]
    x = make((3, 4))
    np.testing.assert_allclose(run(op, x), ref(x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_gradients(name):
    op, _, make = UNARY[name]
    assert_gradients(op, [make((3, 4))])


def test_unary_operator_neg_and_sigmoid_extremes():
    x = np.array([-800.0, -30.0, 0.0, 30.0, 800.0])
    np.testing.assert_allclose(run(lambda t: -t, x), -x)
    y = run(gd.sigmoid, x)  # tanh form: no overflow warnings, exact limits
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [0.0, _sigmoid(-30.0), 0.5, _sigmoid(30.0), 1.0], rtol=1e-12, atol=1e-300)


def test_relu_gradient_is_a_switch():
    x = np.array([-2.0, -0.5, 0.5, 3.0])
    xs = gd.placeholder((4,), "float64")
    (g,) = gd.grad(gd.sum(gd.relu(xs) * 3.0), [xs])
    np.testing.assert_array_equal(gd.compile(g, [xs])(x), [0.0, 0.0, 3.0, 3.0])


# --------------------------------------------------------------------------- binary elementwise with broadcasting
BINARY = {
    "add": (gd.add, np.add, "any"),
    "sub": (gd.sub, np.subtract, "any"),
    "mul": (gd.mul, np.multiply, "any"),
    "div": (gd.div, np.divide, "b_positive"),
    "pow": (gd.pow, np.power, "a_positive"),
    "maximum": (gd.maximum, np.maximum, "any"),
    "minimum": (gd.minimum, np.minimum, "any"),
}

# shape pairs: equal, leading axes + size-1 axes, size-1 on both sides, scalar, vector against matrix
SHAPE_PAIRS = [((3, 4), (3, 4)), ((3, 1, 4), (2, 4)), ((2, 1), (1, 3)), ((), (2, 3)), ((4,), (3, 4)),
               ((2, 3, 4), (1,))]


def _binary_inputs(kind, sa, sb, seed=0):
    r = rng(seed)
    a, b = r.standard_normal(sa), r.standard_normal(sb)
    if kind == "a_positive":
        a = np.abs(a) + 0.5
    if kind == "b_positive":
        b = np.abs(b) + 0.5
    return a, b


@pytest.mark.parametrize("sa,sb", SHAPE_PAIRS)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_forward_matches_numpy(name, sa, sb):
    op, ref, kind = BINARY[name]
    a, b = _binary_inputs(kind, sa, sb)
    out = run(op, a, b)
    assert out.shape == np.broadcast_shapes(sa, sb)
    np.testing.assert_allclose(out, ref(a, b), rtol=1e-12)


@pytest.mark.parametrize("sa,sb", SHAPE_PAIRS)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_gradients_sum_back_over_broadcast_axes(name, sa, sb):
    op, _, kind = BINARY[name]
    a, b = _binary_inputs(kind, sa, sb)
    if name in ("maximum", "minimum"):  # keep the finite differences away from ties
        assert np.min(np.abs(a - b)) > 1e-3
    assert_gradients(op, [a, b])


def test_broadcast_gradient_shapes_and_values():
    a = gd.placeholder((3, 1, 4), "float64")
    b = gd.placeholder((2, 4), "float64")
    ga, gb = gd.grad(gd.sum(a * b), [a, b])
    assert ga.shape == (3, 1, 4) and gb.shape == (2, 4)
    av, bv = rng(0).standard_normal((3, 1, 4)), rng(1).standard_normal((2, 4))
    gav, gbv = gd.compile([ga, gb], [a, b])(av, bv)
    np.testing.assert_allclose(gav, np.broadcast_to(bv.sum(0), (3, 1, 4)))  # summed over the size-1 axis
    np.testing.assert_allclose(gbv, np.broadcast_to(av.sum((0, 1)), (2, 4)))  # summed over the leading axis


def test_python_operators_and_scalars():
    a, b = rng(0).standard_normal((2, 3)), positive((2, 3), 1)
    out = run(lambda x, y: [x + 1, 1 - x, 2 * y, y / 2, 3 / y, y ** 2, 2 ** x, -x, x @ y.T], a, b)
    expected = [a + 1, 1 - a, 2 * b, b / 2, 3 / b, b ** 2, 2 ** a, -a, a @ b.T]
    for o, e in zip(out, expected):
        np.testing.assert_allclose(o, e, rtol=1e-12)


def test_maximum_tie_gives_gradient_to_first_argument():
    a = gd.placeholder((3,), "float64")
    b = gd.placeholder((3,), "float64")
    ga, gb = gd.grad(gd.sum(gd.maximum(a, b)), [a, b])
    gav, gbv = gd.compile([ga, gb], [a, b])(np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0, 0.0]))
    np.testing.assert_array_equal(gav, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(gbv, [0.0, 1.0, 0.0])


# --------------------------------------------------------------------------- comparisons and where
COMPARISONS = {"greater": np.greater, "greater_equal": np.greater_equal, "less": np.less,
               "less_equal": np.less_equal, "equal": np.equal, "not_equal": np.not_equal}


@pytest.mark.parametrize("name", sorted(COMPARISONS))
def test_comparison_masks_match_numpy(name):
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    b = np.array([2.0, 2.0, 2.0])
    out = run(getattr(gd, name), a, b)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, COMPARISONS[name](a, b))


def test_comparison_operators():
    a = np.array([1.0, 2.0, 3.0])
    out = run(lambda x: [x > 2, x >= 2, x < 2, x <= 2], a)
    for o, e in zip(out, [a > 2, a >= 2, a < 2, a <= 2]):
        np.testing.assert_array_equal(o, e)


def test_gradient_through_a_mask_is_zero():
    x = gd.placeholder((4,), "float64")
    mask = gd.cast(x > 0, "float64")
    y = gd.sum(mask * 5.0 + gd.cast(gd.equal(x, 1.0), "float64"))
    (g,) = gd.grad(y, [x])
    np.testing.assert_array_equal(gd.compile(g, [x])(np.array([-1.0, 1.0, 2.0, 0.5])), np.zeros(4))


def test_where_forward_and_gradient_ignore_the_condition():
    x = gd.placeholder((2, 3), "float64")
    y = gd.placeholder((3,), "float64")
    out = gd.where(x > 0, x * 2.0, y)
    gx, gy = gd.grad(gd.sum(out), [x, y])
    xv = np.array([[1.0, -1.0, 2.0], [-3.0, -4.0, 5.0]])
    yv = np.array([7.0, 8.0, 9.0])
    ov, gxv, gyv = gd.compile([out, gx, gy], [x, y])(xv, yv)
    np.testing.assert_array_equal(ov, np.where(xv > 0, xv * 2, yv))
    np.testing.assert_array_equal(gxv, np.where(xv > 0, 2.0, 0.0))  # no term from the condition x > 0
    np.testing.assert_array_equal(gyv, [1.0, 2.0, 0.0])  # summed over the broadcast axis


@pytest.mark.parametrize("sa,sb", [((2, 3), (2, 3)), ((2, 1), (3,))])
def test_where_gradients(sa, sb):
    cond = rng(9).standard_normal(np.broadcast_shapes(sa, sb)) > 0
    assert_gradients(lambda a, b: gd.where(gd.constant(cond), a * a, b), list(_binary_inputs("any", sa, sb)))


def test_where_needs_a_boolean_condition():
    x = gd.placeholder((3,), "float64", name="x")
    with pytest.raises(gd.ShapeError, match="where: x .*condition must be bool"):
        gd.where(x, x, x)


# --------------------------------------------------------------------------- reductions
AXES = [None, 0, 1, -1, (0, 2), (2, 0, 1)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reduction_forward_and_shape(name, axis, keepdims):
    x = rng(0).standard_normal((2, 3, 4))
    op = getattr(gd, name)
    t = gd.placeholder(x.shape, "float64")
    y = op(t, axis=axis, keepdims=keepdims)
    expected = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    assert y.shape == expected.shape
    np.testing.assert_allclose(gd.compile(y, [t])(x), expected, rtol=1e-12)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reduction_gradients(name, axis, keepdims):
    x = rng(1).permutation(24).reshape(2, 3, 4) * 0.1 + rng(2).uniform(0, 0.01, (2, 3, 4))  # no ties for max
    op = getattr(gd, name)
    assert_gradients(lambda t: op(t, axis=axis, keepdims=keepdims), [x])


def test_mean_over_unknown_batch_counts_at_run_time():
    x = gd.placeholder((None, 3), "float64")
    f = gd.compile([gd.mean(x), gd.mean(x, axis=0)], [x])
    for n in (1, 4):
        v = rng(n).standard_normal((n, 3))
        m, m0 = f(v)
        np.testing.assert_allclose(m, v.mean())
        np.testing.assert_allclose(m0, v.mean(0))


def test_max_gradient_is_shared_between_ties():
    x = gd.placeholder((2, 3), "float64")
    (g,) = gd.grad(gd.sum(gd.max(x, axis=1)), [x])
    out = gd.compile(g, [x])(np.array([[1.0, 3.0, 3.0], [5.0, 0.0, 1.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


def test_sum_of_integers_and_mean_of_integers():
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    s, m = run(lambda t: [gd.sum(t, axis=0), gd.mean(t)], x)
    np.testing.assert_array_equal(s, x.sum(0))
    assert s.dtype == np.sum(x, axis=0).dtype
    assert m.dtype == np.float64 and m == 2.5


# --------------------------------------------------------------------------- matmul
MATMUL_SHAPES = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
                 ((1, 3, 4), (2, 4, 5))]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_forward_and_shape(sa, sb):
    a, b = rng(0).standard_normal(sa), rng(1).standard_normal(sb)
    ta, tb = gd.placeholder(sa, "float64"), gd.placeholder(sb, "float64")
    y = gd.matmul(ta, tb)
    expected = np.matmul(a, b)
    assert y.shape == expected.shape
    np.testing.assert_allclose(gd.compile(y, [ta, tb])(a, b), expected, rtol=1e-12)


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_gradients(sa, sb):
    assert_gradients(gd.matmul, [rng(0).standard_normal(sa), rng(1).standard_normal(sb)])


# --------------------------------------------------------------------------- shape ops
def test_reshape_with_minus_one():
    x = rng(0).standard_normal((2, 3, 4))
    for shape in [(6, -1), (-1,), (4, -1, 3), (24,), (2, 12)]:
        t = gd.placeholder(x.shape, "float64")
        y = gd.reshape(t, shape)
        assert y.shape == x.reshape(shape).shape
        np.testing.assert_array_equal(gd.compile(y, [t])(x), x.reshape(shape))
    assert_gradients(lambda t: gd.reshape(t, (4, -1)) * gd.reshape(t, (4, 6)), [x])


def test_reshape_with_unknown_batch():
    x = gd.placeholder((None, 3, 4), "float64")
    y = gd.reshape(x, (-1, 12))
    assert y.shape == (None, 12)
    (g,) = gd.grad(gd.sum(y * y), [x])
    v = rng(0).standard_normal((5, 3, 4))
    yv, gv = gd.compile([y, g], [x])(v)
    np.testing.assert_array_equal(yv, v.reshape(-1, 12))
    np.testing.assert_allclose(gv, 2 * v)


@pytest.mark.parametrize("axes", [None, (1, 0, 2), (2, 0, 1), (-1, 0, 1)])
def test_transpose(axes):
    x = rng(0).standard_normal((2, 3, 4))
    out = run(lambda t: gd.transpose(t, axes), x)
    np.testing.assert_array_equal(out, np.transpose(x, axes))
    assert_gradients(lambda t: gd.transpose(t, axes) * 2.0, [x])


def test_dot_t_property():
    x = rng(0).standard_normal((2, 3))
    np.testing.assert_array_equal(run(lambda t: t.T, x), x.T)


@pytest.mark.parametrize("src,dst", [((3,), (2, 3)), ((2, 1), (2, 4)), ((1, 3), (4, 2, 3)), ((), (2, 2))])
def test_broadcast_to(src, dst):
    x = rng(0).standard_normal(src)
    out = run(lambda t: gd.broadcast_to(t, dst), x)
    np.testing.assert_array_equal(out, np.broadcast_to(x, dst))
    assert_gradients(lambda t: gd.broadcast_to(t, dst) * gd.constant(rng(1).standard_normal(dst)), [x])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate(axis):
    shapes = {0: [(1, 3), (2, 3), (3, 3)], 1: [(2, 1), (2, 2), (2, 3)], -1: [(2, 1), (2, 2), (2, 3)]}[axis]
    xs = [rng(i).standard_normal(s) for i, s in enumerate(shapes)]
    out = run(lambda *ts: gd.concatenate(ts, axis=axis), *xs)
    np.testing.assert_array_equal(out, np.concatenate(xs, axis=axis))
    assert_gradients(lambda *ts: gd.concatenate(ts, axis=axis) ** 2, xs)


def _naive_pad(x, pads, value):
    """The formula itself: y[i + before] = x[i], value elsewhere (one element at a time)."""
    y = np.full([d + lo + hi for d, (lo, hi) in zip(x.shape, pads)], value, dtype=x.dtype)
    for i in np.ndindex(*x.shape):
        y[tuple(k + lo for k, (lo, _) in zip(i, pads))] = x[i]
    return y


@pytest.mark.parametrize("pads,value", [([(0, 0), (1, 2), (3, 0)], 0.0), ([(2, 1), (0, 0), (1, 1)], -1.5),
                                        ((1, 1), 2.0)])
def test_pad(pads, value):
    x = rng(3).standard_normal((2, 3, 4))
    pairs = pads if isinstance(pads, list) else [pads] * 3
    out = run(lambda t: gd.pad(t, pads, value=value), x)
    np.testing.assert_array_equal(out, _naive_pad(x, pairs, value))
    np.testing.assert_array_equal(out, np.pad(x, pairs, constant_values=value))
    assert_gradients(lambda t: gd.pad(t, pads, value=value) ** 2, [x])
    t = gd.placeholder((None, 3, 4), name="t")  # a run-time batch: padded or not, it stays run-time
    assert gd.pad(t, pads).shape == (None,) + tuple(d + lo + hi for d, (lo, hi) in zip((3, 4), pairs[1:]))
    assert gd.grad(gd.sum(gd.pad(t, pads)), [t])[0].shape == t.shape


def test_pad_refuses_what_it_cannot_do():
    x = gd.placeholder((2, 3), name="x")
    with pytest.raises(TypeError, match=r"pads must be \(before, after\) pairs of non-negative ints"):
        gd.pad(x, [(1, -1), (0, 0)])
    with pytest.raises(gd.ShapeError, match=r"pad: x \(2, 3\): 3 \(before, after\) pairs for 2 dimensions"):
        gd.pad(x, [(1, 1)] * 3)


@pytest.mark.parametrize("sections,axis", [(3, 0), ([1, 3], 1), (2, -1), ([2], 0)])
def test_split(sections, axis):
    x = rng(0).standard_normal((6, 4))
    parts = run(lambda t: gd.split(t, sections, axis=axis), x)
    expected = np.split(x, sections, axis=axis)
    assert len(parts) == len(expected)
    for p, e in zip(parts, expected):
        np.testing.assert_array_equal(p, e)
    assert_gradients(lambda t: [p * p for p in gd.split(t, sections, axis=axis)], [x])


SLICES = [
    (1,), (-1,), (slice(1, 3),), (slice(None, None, 2),), (slice(None, None, -1),), (slice(-3, None),),
    (Ellipsis, 1), (None, 0), (1, None, slice(None, None, -2)), (Ellipsis, None),
    (slice(1, None), Ellipsis, slice(None, 2)), (0, -1, 2), (slice(5, 10),),
]


@pytest.mark.parametrize("key", SLICES, ids=[repr(k) for k in SLICES])
def test_slicing(key):
    x = rng(0).standard_normal((3, 4, 5))
    t = gd.placeholder(x.shape, "float64")
    y = t[key]
    assert y.shape == x[key].shape
    np.testing.assert_array_equal(gd.compile(y, [t])(x), x[key])
    assert_gradients(lambda s: s[key] * s[key], [x])


def test_slicing_with_unknown_batch():
    x = gd.placeholder((None, 4), "float64")
    y = x[1:, ::2]
    assert y.shape == (None, 2)
    (g,) = gd.grad(gd.sum(y), [x])
    v = np.ones((3, 4))
    yv, gv = gd.compile([y, g], [x])(v)
    assert yv.shape == (2, 2)
    np.testing.assert_array_equal(gv, [[0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0]])


def test_expand_dims_and_squeeze():
    x = rng(0).standard_normal((2, 3))
    out = run(lambda t: [gd.expand_dims(t, 0), gd.expand_dims(t, -1), gd.squeeze(gd.expand_dims(t, 1), 1)], x)
    np.testing.assert_array_equal(out[0], x[None])
    np.testing.assert_array_equal(out[1], x[..., None])
    np.testing.assert_array_equal(out[2], x)
    assert_gradients(lambda t: gd.expand_dims(t, (0, 2)) * 2.0, [x])


# --------------------------------------------------------------------------- softmax family
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_and_log_softmax(axis):
    x = rng(0).standard_normal((3, 5)) * 3
    sm, lsm = run(lambda t: [gd.softmax(t, axis=axis), gd.log_softmax(t, axis=axis)], x)
    e = np.exp(x - x.max(axis, keepdims=True))
    ref = e / e.sum(axis, keepdims=True)
    np.testing.assert_allclose(sm, ref, rtol=1e-12)
    np.testing.assert_allclose(lsm, np.log(ref), rtol=1e-12)
    assert_gradients(lambda t: gd.softmax(t, axis=axis), [x])
    assert_gradients(lambda t: gd.log_softmax(t, axis=axis), [x])


def test_softmax_is_stable_for_huge_logits():
    x = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4]], np.float32)
    t = gd.placeholder((2, 3), "float32")
    sm, lsm = gd.compile([gd.softmax(t), gd.log_softmax(t)], [t])(x)
    assert np.all(np.isfinite(sm)) and sm.dtype == np.float32
    np.testing.assert_allclose(sm, [[1, 0, 0], [1 / 3] * 3], atol=1e-6)
    np.testing.assert_allclose(lsm, [[0, -1e4, -2e4], [-np.log(3)] * 3], rtol=1e-6)


def _cross_entropy_reference(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def test_softmax_cross_entropy_forward():
    logits = rng(0).standard_normal((6, 4)) * 2
    labels = np.array([0, 3, 1, 1, 2, 3])
    out = run(gd.softmax_cross_entropy, logits, labels)
    assert out.shape == ()
    np.testing.assert_allclose(out, _cross_entropy_reference(logits, labels), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy_is_stable_for_logits_of_1e4(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0], [5e3, 5e3, -1e4]], dtype)
    labels = np.array([0, 0, 1], np.int64)
    x = gd.placeholder((None, 3), dtype)
    t = gd.placeholder((None,), "int64")
    loss = gd.softmax_cross_entropy(x, t)
    (g,) = gd.grad(loss, [x])
    lv, gv = gd.compile([loss, g], [x, t])(logits, labels)
    assert lv.dtype == np.dtype(dtype) and gv.dtype == np.dtype(dtype)
    # row 0: log-prob 0; row 1: -2e4; row 2: -log 2
    np.testing.assert_allclose(lv, (0.0 + 2e4 + np.log(2)) / 3, rtol=1e-6)
    assert np.all(np.isfinite(gv))
    np.testing.assert_allclose(gv, np.array([[0, 0, 0], [-1, 1, 0], [0.5, -0.5, 0]]) / 3, atol=1e-6)


def test_softmax_cross_entropy_gradients_and_integer_labels():
    logits = rng(0).standard_normal((5, 4))
    labels = np.array([3, 0, 2, 2, 1], np.int32)
    assert_gradients(gd.softmax_cross_entropy, [logits, labels])
    x = gd.placeholder((5, 4), "float64")
    t = gd.placeholder((5,), "int32")
    (g,) = gd.grad(gd.softmax_cross_entropy(x, t), [x])
    e = np.exp(logits)
    expected = (e / e.sum(1, keepdims=True) - np.eye(4)[labels]) / 5  # mean over the batch
    np.testing.assert_allclose(gd.compile(g, [x, t])(logits, labels), expected, rtol=1e-12)


def test_softmax_cross_entropy_is_a_mean_over_a_variable_batch():
    x = gd.placeholder((None, 3), "float64")
    t = gd.placeholder((None,), "int64")
    f = gd.compile(gd.softmax_cross_entropy(x, t), [x, t])
    logits = rng(0).standard_normal((8, 3))
    labels = rng(1).integers(0, 3, 8)
    np.testing.assert_allclose(f(logits, labels), _cross_entropy_reference(logits, labels))
    np.testing.assert_allclose(f(logits[:2], labels[:2]), _cross_entropy_reference(logits[:2], labels[:2]))


# --------------------------------------------------------------------------- dropout
def _dropout_program(rate=0.5, seed=0, training=True, shape=(200, 50)):
    x = gd.placeholder(shape, "float64", name="x")
    y = gd.dropout(x, rate)
    (g,) = gd.grad(gd.sum(y * 3.0), [x])
    return gd.compile([y, g], [x], seed=seed, training=training)


def test_dropout_scale_and_rate():
    x = np.ones((200, 50))
    y, _ = _dropout_program(rate=0.3)(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.7)  # inverted dropout: kept values scaled by 1/(1-rate)
    assert abs(kept.mean() - 0.7) < 0.03  # 10,000 draws: 5 standard deviations
    assert abs(y.mean() - 1.0) < 0.05  # the expectation is unchanged


def test_dropout_same_seed_same_masks_and_fresh_mask_per_call():
    x = np.ones((200, 50))
    f1, f2, f3 = _dropout_program(seed=7), _dropout_program(seed=7), _dropout_program(seed=8)
    a1, a2 = f1(x)[0], f1(x)[0]
    b1, b2 = f2(x)[0], f2(x)[0]
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)  # a new mask on every call
    assert not np.array_equal(a1, f3(x)[0])  # another seed, another mask


def test_dropout_gradient_reuses_the_forward_mask():
    x = rng(0).uniform(1, 2, (200, 50))
    y, g = _dropout_program(rate=0.5)(x)
    np.testing.assert_allclose(g, 3.0 * y / x)  # dy/dx = mask, the same draw as the forward value


def test_dropout_off_in_evaluation():
    x = rng(0).standard_normal((200, 50))
    y, g = _dropout_program(training=False)(x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(g, np.full_like(x, 3.0))


def test_dropout_keeps_float32_and_rejects_bad_rate():
    x = gd.placeholder((10, 10), "float32")
    y = gd.dropout(x, 0.5)
    out = gd.compile(y, [x])(np.ones((10, 10), np.float32))
    assert y.dtype == np.float32 and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 2.0}
    with pytest.raises(gd.ShapeError, match="rate"):
        gd.dropout(x, 1.0)


# --------------------------------------------------------------------------- stop_gradient and cast
def test_stop_gradient():
    x = gd.placeholder((3,), "float64")
    y = gd.sum(x * gd.stop_gradient(x))
    (g,) = gd.grad(y, [x])
    v = np.array([1.0, -2.0, 3.0])
    yv, gv = gd.compile([y, g], [x])(v)
    assert yv == np.sum(v * v)
    np.testing.assert_array_equal(gv, v)  # d/dx (x * const) where const = x: not 2x
    (g2,) = gd.grad(gd.sum(gd.stop_gradient(x)), [x])
    np.testing.assert_array_equal(gd.compile(g2, [x])(v), np.zeros(3))


def test_cast_forward_and_gradient_cast_back():
    x = gd.placeholder((3,), "float64")
    y = gd.cast(x, "float32")
    assert y.dtype == np.float32
    w = gd.placeholder((3,), "float32")
    (g,) = gd.grad(gd.sum(y * w), [x])
    assert g.dtype == np.float64
    v, wv = np.array([1.5, -2.25, 3.0]), np.array([1.0, 2.0, 4.0], np.float32)
    yv, gv = gd.compile([y, g], [x, w])(v, wv)
    assert yv.dtype == np.float32 and gv.dtype == np.float64
    np.testing.assert_array_equal(yv, v.astype(np.float32))
    np.testing.assert_array_equal(gv, wv.astype(np.float64))
    assert gd.cast(x, "float64") is x  # no-op cast adds no node
    assert_gradients(lambda t: gd.cast(gd.cast(t, "float32"), "float64") * 0 + gd.cast(t * t, "float64"), [v])


def test_cast_from_integers_has_no_gradient_path():
    x = gd.placeholder((3,), "float64")
    n = gd.placeholder((3,), "int64")
    (g,) = gd.grad(gd.sum(x * gd.cast(n, "float64")), [x])
    np.testing.assert_array_equal(gd.compile(g, [x, n])(np.ones(3), np.array([1, 2, 3])), [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------- static shapes (Hypothesis)
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4))
def test_broadcast_static_shape_equals_numpy(shapes):
    sa, sb = shapes.input_shapes
    a, b = gd.placeholder(sa), gd.placeholder(sb)
    expected = np.broadcast_shapes(sa, sb)
    for op in (gd.add, gd.mul, gd.maximum, gd.greater):
        assert op(a, b).shape == expected
    grads = gd.grad(gd.sum(a * b), [a, b])
    assert [g.shape for g in grads] == [sa, sb]


@FAST
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), st.data())
def test_reduction_static_shape_equals_numpy(shape, data):
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1)
                     | st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True)
                     .map(tuple))
    keepdims = data.draw(st.booleans())
    x = gd.placeholder(shape)
    expected = np.sum(np.empty(shape), axis=axis, keepdims=keepdims).shape
    assert gd.sum(x, axis=axis, keepdims=keepdims).shape == expected
    assert gd.mean(x, axis=axis, keepdims=keepdims).shape == expected
    assert gd.max(x, axis=axis, keepdims=keepdims).shape == expected


@FAST
@given(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4), st.data())
def test_reshape_static_shape_equals_numpy(shape, data):
    size = int(np.prod(shape))
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    first = data.draw(st.sampled_from(divisors))
    target = data.draw(st.sampled_from([(first, -1), (-1, first), (-1,), (first, size // first)]))
    assert gd.reshape(gd.placeholder(shape), target).shape == np.empty(shape).reshape(target).shape


@FAST
@given(hnp.array_shapes(min_dims=0, max_dims=5, max_side=4), st.data())
def test_transpose_static_shape_equals_numpy(shape, data):
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    x = gd.placeholder(shape)
    assert gd.transpose(x, perm).shape == np.transpose(np.empty(shape), perm).shape
    assert gd.transpose(x).shape == np.transpose(np.empty(shape)).shape


@FAST
@given(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5).flatmap(
    lambda s: st.tuples(st.just(s), hnp.basic_indices(s, allow_newaxis=True, allow_ellipsis=True))))
def test_slicing_static_shape_equals_numpy(shape_and_key):
    shape, key = shape_and_key
    x = gd.placeholder(shape)
    assert x[key].shape == np.empty(shape)[key].shape


@FAST
@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4).flatmap(
    lambda s: st.tuples(st.just(s), hnp.basic_indices(s, allow_newaxis=True, allow_ellipsis=True))))
def test_slicing_runs_with_the_static_shape(shape_and_key):
    shape, key = shape_and_key
    x = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    t = gd.placeholder(shape, "float64")
    y = t[key]
    (g,) = gd.grad(gd.sum(y), [t])
    yv, gv = gd.compile([y, g], [t])(x)
    assert y.shape == yv.shape
    np.testing.assert_array_equal(yv, x[key])
    expected = np.zeros(shape)
    expected[key] += 1.0  # basic indexing never repeats an element
    np.testing.assert_array_equal(gv, expected)


def test_relu_and_maximum_gradients_select_instead_of_multiplying():
    """An infinite incoming gradient at a closed switch gives 0, not inf * 0 = NaN
    (PyTorch: d/dx sum(log(relu(x))) at [0, 1, -1, 2] is [0, 1, 0, 0.5])."""
    x = gd.placeholder((4,), "float64", name="x")
    xv = np.array([0.0, 1.0, -1.0, 2.0])
    (g,) = gd.grad(gd.sum(gd.log(gd.relu(x))), [x])
    with np.errstate(divide="ignore"):
        for optimize in (True, False):
            np.testing.assert_array_equal(gd.compile(g, [x], optimize=optimize)(xv), [0.0, 1.0, 0.0, 0.5])
        # maximum(x, 0) is the same function; minimum's closed side too
        (gm,) = gd.grad(gd.sum(gd.log(gd.maximum(x, 0.0))), [x])
        np.testing.assert_array_equal(gd.compile(gm, [x])(np.array([-1.0, 1.0, -3.0, 2.0])), [0.0, 1.0, 0.0, 0.5])
        (gn,) = gd.grad(gd.sum(gd.log(-gd.minimum(x, 0.0))), [x])
        np.testing.assert_array_equal(gd.compile(gn, [x])(np.array([1.0, -1.0, 3.0, -2.0])), [0.0, -1.0, 0.0, -0.5])


def test_relu_gradient_fuses_with_the_chain_that_feeds_it():
    """The switch stays one elementwise step: fused with the ops around it, and
    its double VJP (the same switch) still checks against finite differences."""
    x = gd.placeholder((64, 64), "float64", name="x")
    w = gd.placeholder((64, 64), "float64", name="w")
    (g,) = gd.grad(gd.sum(gd.relu(x) * w), [x])
    program = gd.compile(g * 2.0 + 1.0, [x, w])
    ops = [n.op.name for n in program.nodes if not n.op.name in ("placeholder", "constant")]
    assert ops == ["fused_elementwise"], ops
    assert "relu_grad" in program.nodes[-1].op.describe()
    xv, wv = away_from_zero((64, 64), 3), rng(4).standard_normal((64, 64))
    np.testing.assert_array_equal(program(xv, wv), np.where(xv > 0, wv, 0.0) * 2 + 1)
    assert_gradients(lambda a: gd.relu(a) * a, [away_from_zero((3, 4), 5)])
