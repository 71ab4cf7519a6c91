"""Tests for the CNN ops (graphdiff/ops/conv.py, pool.py, lrn.py).

* A naive reference per op, transcribed from the slide formula with explicit
  loops (tiny sizes), against the compiled graph op.
* float64 finite-difference checks of every op's VJP and double VJP
  (graphdiff.testing), over hypothesis-drawn configurations.
* Shape errors with their messages; the pooling tie rule; optional comparisons
  with torch.nn.functional; a tiny conv-relu-lrn-pool-dense network.
"""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import graphdiff as gd
from graphdiff.testing import check_vjp
from op_checks import TOL, assert_conv_matches, assert_conv_vjps, assert_vjps, conv_arrays, distinct, edge_examples
from op_checks import examples, run
from op_checks import conv_geometry as geometry

# Each test runs on NumPy and on CuPy (the stand-in in CI; see conftest.py).
pytestmark = pytest.mark.each_backend

# =========================================================================== naive references
def pad(x, ph, pw, fill=0.0):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)


def ref_conv2d(x, w, b, stride, padding, groups):
    """Y_ij = sum_ab W_ab X_(i+a)(j+b) per example n and filter o (window sum over c, a, b)."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    X = pad(x, ph, pw)
    Y = np.zeros((N, O, OH, OW))
    for n in range(N):
        for o in range(O):
            g = o // (O // groups)
            for i in range(OH):
                for j in range(OW):
                    window = X[n, g * Cg:(g + 1) * Cg, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    Y[n, o, i, j] = np.sum(w[o] * window) + (0.0 if b is None else b[o])
    return Y


def ref_conv2d_grad_weight(x, dE, kernel_size, stride, padding, groups):
    """Case 1: dE/dW_lk = sum_ij dE_ij X_(i+l)(j+k) (with stride: X_(i*s+l)(j*s+k)), summed over n."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    N, C = x.shape[:2]
    O, OH, OW = dE.shape[1:]
    Cg = C // groups
    X = pad(x, ph, pw)
    dW = np.zeros((O, Cg, kh, kw))
    for o in range(O):
        g = o // (O // groups)
        for c in range(Cg):
            for l in range(kh):
                for k in range(kw):
                    for i in range(OH):
                        for j in range(OW):
                            dW[o, c, l, k] += np.sum(dE[:, o, i, j] * X[:, g * Cg + c, i * sh + l, j * sw + k])
    return dW


def ref_conv2d_grad_input(dE, w, input_size, stride, padding, groups):
    """Case 2: dE/dX_ij = sum_ab W_ab dE_(i-a)(j-b), (i-a), (j-b) >= 0 -- "note the inversion
    of indexes"; with stride only the (i-a) divisible by s exist. Padding cropped at the end."""
    (sh, sw), (ph, pw) = stride, padding
    H, W = input_size
    N, O, OH, OW = dE.shape
    _, Cg, kh, kw = w.shape
    Og = O // groups
    dX = np.zeros((N, Cg * groups, H + 2 * ph, W + 2 * pw))
    for i in range(H + 2 * ph):
        for j in range(W + 2 * pw):
            for a in range(kh):
                for b in range(kw):
                    if i - a < 0 or j - b < 0 or (i - a) % sh or (j - b) % sw:
                        continue
                    ii, jj = (i - a) // sh, (j - b) // sw
                    if ii >= OH or jj >= OW:
                        continue
                    for g in range(groups):
                        # sum over the group's filters o of W[o, c, a, b] dE[n, o, ii, jj]
                        filters = slice(g * Og, (g + 1) * Og)
                        dX[:, g * Cg:(g + 1) * Cg, i, j] += dE[:, filters, ii, jj] @ w[filters, :, a, b]
    return dX[:, :, ph:ph + H, pw:pw + W]


def ref_max_pool2d(x, size, stride, padding):
    """y = max of each window (-inf padding); argmax = first max in row-major window order."""
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    N, C, H, W = x.shape
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    X = pad(x, ph, pw, -np.inf)
    y = np.zeros((N, C, OH, OW))
    idx = np.zeros((N, C, OH, OW), dtype=int)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    window = X[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    idx[n, c, i, j] = np.argmax(window)  # the first maximum, row-major
                    y[n, c, i, j] = window.max()
    return y, idx


def ref_max_pool2d_grad(dy, idx, input_size, size, stride, padding):
    """The multiplexer: each dy goes to its window's argmax; overlapping windows add up."""
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    H, W = input_size
    N, C, OH, OW = dy.shape
    dX = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    a, b = divmod(idx[n, c, i, j], kw)
                    dX[n, c, i * sh + a, j * sw + b] += dy[n, c, i, j]
    return dX[:, :, ph:ph + H, pw:pw + W]


def ref_max_pool2d_gather(v, idx, size, stride, padding):
    """v (input-shaped) read at each window's argmax: the transpose of the multiplexer."""
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    V = pad(v, ph, pw)
    out = np.zeros(idx.shape)
    for n, c, i, j in np.ndindex(*idx.shape):
        a, b = divmod(idx[n, c, i, j], kw)
        out[n, c, i, j] = V[n, c, i * sh + a, j * sw + b]
    return out


def in_window(j, c, size):
    """j is a neighbour of c: |j - c| <= size//2 for odd size; an even window has one
    more neighbour below c than above (c - size//2 .. c + (size-1)//2, as in PyTorch)."""
    return -(size // 2) <= j - c <= (size - 1) // 2


def ref_window_sum_channels(x, size):
    out = np.zeros_like(x)
    for c in range(x.shape[1]):
        for j in range(x.shape[1]):
            if in_window(j, c, size):
                out[:, c] += x[:, j]
    return out


def ref_window_sum_spatial(x, size):
    out = np.zeros_like(x)
    H, W = x.shape[2:]
    for i in range(H):
        for j in range(W):
            for a in range(H):
                for b in range(W):
                    if in_window(a, i, size) and in_window(b, j, size):
                        out[:, :, i, j] += x[:, :, a, b]
    return out


def ref_lrn(x, size, alpha, beta, k):
    """y_c = x_c / (k + alpha sum_{|j-c| <= size//2} x_j^2)^beta (AlexNet paper)."""
    y = np.zeros_like(x)
    C = x.shape[1]
    for c in range(C):
        s = sum(x[:, j] ** 2 for j in range(C) if in_window(j, c, size))
        y[:, c] = x[:, c] / (k + alpha * s) ** beta
    return y


def ref_lrn_within(x, size, alpha, beta, k):
    """y_ij = x_ij / (k + alpha sum over the size x size neighbours of (i, j), same map)^beta."""
    lo, hi = size // 2, (size - 1) // 2  # = |a - i| <= size//2 for odd size
    H, W = x.shape[2:]
    y = np.zeros_like(x)
    for i in range(H):
        for j in range(W):
            s = np.sum(x[:, :, max(0, i - lo):i + hi + 1, max(0, j - lo):j + hi + 1] ** 2, axis=(2, 3))
            y[:, :, i, j] = x[:, :, i, j] / (k + alpha * s) ** beta
    return y


def ref_normalize_cross_map(x):
    """Y_l = X_l / sum_k X_k over the feature maps."""
    c = sum(x[:, k] for k in range(x.shape[1]))
    return np.stack([x[:, l] / c for l in range(x.shape[1])], axis=1)


# =========================================================================== configurations
@st.composite
def conv_configs(draw, max_hw=12):
    """A valid conv2d geometry: batch 1-3, channels <= 8, sizes 1-12, kernel 1-5,
    stride 1-4, padding 0-2, groups 1-4; kernel fits the padded input."""
    groups = draw(st.integers(1, 4))
    cg = draw(st.integers(1, 8 // groups))
    og = draw(st.integers(1, 8 // groups))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * ph), max_hw))
    W = draw(st.integers(max(1, kw - 2 * pw), max_hw))
    return dict(N=draw(st.integers(1, 3)), C=cg * groups, O=og * groups, H=H, W=W, kernel=(kh, kw),
                stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))), padding=(ph, pw), groups=groups,
                seed=draw(st.integers(0, 2**16)))


@st.composite
def pool_configs(draw):
    """Pool size 1-4, stride 1-4 (None: = size), padding < size, batch 1-3, channels 1-8, sizes 1-12."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, min(2, kh - 1))), draw(st.integers(0, min(2, kw - 1)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    H = draw(st.integers(max(1, kh - 2 * ph), 12))
    W = draw(st.integers(max(1, kw - 2 * pw), 12))
    return dict(N=draw(st.integers(1, 3)), C=draw(st.integers(1, 8)), H=H, W=W, size=(kh, kw), stride=stride,
                padding=(ph, pw), seed=draw(st.integers(0, 2**16)))


def pool_geometry(cfg):
    return dict(size=cfg["size"], stride=cfg["stride"], padding=cfg["padding"])


@st.composite
def lrn_configs(draw):
    size = draw(st.sampled_from([1, 2, 3, 4, 5, 6]))  # AlexNet: 5; even windows are asymmetric
    return dict(shape=(draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 6)),
                       draw(st.integers(1, 6))),
                size=size, alpha=draw(st.floats(0.01, 0.5)), beta=draw(st.floats(0.5, 1.0)),
                k=draw(st.floats(1.0, 2.0)), seed=draw(st.integers(0, 2**16)))


def lrn_params(cfg):
    return dict(size=cfg["size"], alpha=cfg["alpha"], beta=cfg["beta"], k=cfg["k"])


def conv_config(N, C, O, H, W, kernel, stride, padding, groups, seed=0):
    return dict(N=N, C=C, O=O, H=H, W=W, kernel=kernel, stride=stride, padding=padding, groups=groups, seed=seed)


EDGE_CONVS = [  # corners the random draw may miss
    conv_config(2, 8, 4, 12, 11, (5, 3), (4, 3), (2, 1), 4),  # 4 groups, strides leave rows uncovered
    conv_config(3, 4, 8, 5, 5, (5, 5), (1, 1), (0, 0), 4),    # kernel = input: one output pixel
    conv_config(1, 6, 6, 1, 7, (3, 2), (2, 4), (1, 0), 3),    # height 1, kernel reaches into padding only
    conv_config(2, 2, 2, 4, 4, (1, 1), (4, 4), (2, 2), 2),    # 1x1 kernel reading padding
]


# =========================================================================== conv2d
@examples(25)
@given(conv_configs(max_hw=9), st.booleans())
@edge_examples(EDGE_CONVS)
def test_conv2d_and_its_gradients_match_the_slide_formulas(cfg, with_bias):
    assert_conv_matches(cfg, with_bias, ref_conv2d, ref_conv2d_grad_weight, ref_conv2d_grad_input)


@examples(30)
@given(conv_configs(), st.booleans())
@edge_examples(EDGE_CONVS)
def test_conv2d_and_its_gradient_ops_vjp_and_double_vjp(cfg, with_bias):
    assert_conv_vjps(cfg, with_bias)


@examples(15)
@given(conv_configs(max_hw=8), st.sampled_from(["relu", "tanh"]))
def test_relu_and_tanh_after_conv(cfg, act):
    x, w, b, _ = conv_arrays(cfg)
    geo = geometry(cfg)
    f = getattr(gd, act)
    assert_vjps(lambda x, w, b: f(gd.conv2d(x, w, b, **geo)), [x, w, b])


def test_conv2d_node_attributes_and_shape_inference():
    x = gd.placeholder((None, 3, 227, 227), name="x")
    w = gd.variable(np.zeros((96, 3, 11, 11), np.float32), name="conv1/w")
    y = gd.conv2d(x, w, stride=4)
    assert y.shape == (None, 96, 55, 55) and y.dtype == np.float32
    assert y.op.name == "conv2d" and y.inputs == (x, w)
    assert (y.op.stride, y.op.padding, y.op.groups) == ((4, 4), (0, 0), 1)
    b = gd.variable(np.zeros(256, np.float32))
    h = gd.placeholder((None, 96, 27, 27))
    y2 = gd.conv2d(h, gd.variable(np.zeros((256, 48, 5, 5), np.float32)), b, stride=(1, 1), padding=2, groups=2)
    assert y2.shape == (None, 256, 27, 27) and len(y2.inputs) == 3
    assert (y2.op.stride, y2.op.padding, y2.op.groups) == ((1, 1), (2, 2), 2)
    # The gradient ops are first-class "gradient" nodes.
    gx, gw = gd.grad(gd.sum(y2), [h, b])[0], gd.grad(gd.sum(y2), [y2.inputs[1]])[0]
    assert gx.op.name == "conv2d_grad_input" and gx.kind == "gradient" and gx.shape == (None, 96, 27, 27)
    assert gw.op.name == "conv2d_grad_weight" and gw.kind == "gradient" and gw.shape == (256, 48, 5, 5)


def test_conv2d_stride_leaves_rows_uncovered():
    # (6 + 0 - 3) // 2 + 1 = 2 windows cover rows 0..4: row 5 gets a zero gradient.
    x = np.random.default_rng(1).standard_normal((1, 1, 6, 6))
    w = np.ones((1, 1, 3, 3))
    gx = run(lambda x, w: gd.grad(gd.sum(gd.conv2d(x, w, stride=2)), [x])[0], x, w)
    assert gx.shape == (1, 1, 6, 6)
    assert np.all(gx[0, 0, 5] == 0) and np.all(gx[0, 0, :, 5] == 0)
    np.testing.assert_array_equal(gx[0, 0, 2, :5], [2, 2, 4, 2, 2])  # overlapping windows add up


def test_conv2d_input_gradient_needs_static_spatial_dims():
    x = gd.placeholder((None, 3, None, None), name="x")
    w = gd.variable(np.zeros((4, 3, 3, 3), np.float32), name="w")
    y = gd.conv2d(x, w)
    assert y.shape == (None, 4, None, None)
    with pytest.raises(gd.ShapeError, match="static spatial dimensions"):
        gd.grad(gd.sum(y), [x])


SHAPE_ERRORS = [
    # (x shape, w shape, b shape or None, kwargs, message pattern)
    ((1, 6, 8, 8), (4, 2, 3, 3), None, dict(groups=4), r"input channels 6 are not divisible by groups=4"),
    ((1, 6, 8, 8), (5, 3, 3, 3), None, dict(groups=2), r"output channels 5 are not divisible by groups=2"),
    ((1, 3, 8, 8), (4, 2, 3, 3), None, {}, r"weight expects 2 \* groups=1 = 2 input channels, input has 3"),
    ((1, 4, 8, 8), (4, 4, 3, 3), None, dict(groups=2), r"weight expects 4 \* groups=2 = 8 input channels"),
    ((1, 3, 4, 8), (4, 3, 7, 3), None, dict(padding=1),
     r"kernel 7 is larger than the padded input \(H: 4 \+ 2\*1 = 6\)"),
    ((1, 3, 8, 8), (4, 3, 3, 3), None, dict(padding=-1), r"padding must be >= 0"),
    ((1, 3, 8, 8), (4, 3, 3, 3), None, dict(stride=0), r"stride must be >= 1"),
    ((1, 3, 8, 8), (4, 3, 3, 3), None, dict(stride=(1, -2)), r"stride must be >= 1"),
    ((1, 3, 8, 8), (4, 3, 3, 3), (3,), {}, r"bias must have shape \(4,\), got \(3,\)"),
    ((1, 3, 8, 8), (4, 3, 3, 3), (4, 1), {}, r"bias must have shape \(4,\), got \(4, 1\)"),
    ((3, 8, 8), (4, 3, 3, 3), None, {}, r"expects 4-D tensors"),
]


@pytest.mark.parametrize("xs, ws, bs, kwargs, message", SHAPE_ERRORS)
def test_conv2d_shape_errors(xs, ws, bs, kwargs, message):
    x = gd.placeholder(xs, name="images")
    w = gd.variable(np.zeros(ws, np.float32), name="filters")
    b = None if bs is None else gd.variable(np.zeros(bs, np.float32), name="bias")
    with pytest.raises(gd.ShapeError, match=message) as err:
        gd.conv2d(x, w, b, **kwargs)
    text = str(err.value)
    assert text.startswith("conv2d:") and "images" in text and "filters" in text  # names op and nodes
    assert "(" + ", ".join(map(str, xs)) + ")" in text  # and the shapes


def test_conv2d_dtype_mismatch_is_a_shape_error():
    x = gd.placeholder((1, 3, 8, 8), dtype="float64")
    w = gd.variable(np.zeros((4, 3, 3, 3), np.float32))
    with pytest.raises(gd.ShapeError, match="one dtype"):
        gd.conv2d(x, w)


def test_conv_gradient_ops_check_their_shapes():
    x = gd.placeholder((2, 4, 8, 8), name="x")
    dy = gd.placeholder((2, 6, 5, 5), name="dy")
    with pytest.raises(gd.ShapeError, match="does not match the convolution's output size 6"):
        gd.conv2d_grad_weight(x, dy, (3, 3))
    w = gd.variable(np.zeros((6, 4, 3, 3), np.float32), name="w")
    with pytest.raises(gd.ShapeError, match="does not match"):
        gd.conv2d_grad_input(dy, w, (8, 8))
    with pytest.raises(gd.ShapeError, match="gradient has 6 channels, weight has 5 filters"):
        gd.conv2d_grad_input(dy, gd.variable(np.zeros((5, 4, 3, 3), np.float32)), (7, 7))


# =========================================================================== max pooling
@examples(20)
@given(pool_configs())
def test_max_pool2d_matches_the_reference(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.integers(-3, 4, (cfg["N"], cfg["C"], cfg["H"], cfg["W"])).astype(np.float64)  # many ties
    geo = pool_geometry(cfg)
    ref = dict(size=cfg["size"], stride=cfg["stride"] or cfg["size"], padding=cfg["padding"])
    y_ref, idx_ref = ref_max_pool2d(x, **ref)
    dy, v = rng.standard_normal(y_ref.shape), rng.standard_normal(x.shape)

    def build(x, dy, v):
        y = gd.max_pool2d(x, **geo)
        idx = gd.max_pool2d_argmax(x, y, **geo)
        return [y, idx, gd.grad(y, [x], grad_output=dy)[0], gd.max_pool2d_gather(v, idx, **geo)]

    y, idx, gx, gathered = run(build, x, dy, v)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_allclose(gx, ref_max_pool2d_grad(dy, idx_ref, x.shape[2:], **ref), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(gathered, ref_max_pool2d_gather(v, idx_ref, **ref))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_max_pool2d_gradient_of_a_non_finite_dy_stays_at_its_argmax(bad):
    """A dy of inf or NaN reaches only its window's argmax (inf * 0 must not spread it over the window)."""
    rng = np.random.default_rng(5)
    x = distinct(rng, (2, 3, 9, 9))
    geo = dict(size=(3, 3), stride=(2, 2), padding=(1, 1))
    y_ref, idx_ref = ref_max_pool2d(x, **geo)
    dy = rng.standard_normal(y_ref.shape)
    dy[1, 2, 3, 1] = bad
    (gx,) = run(lambda x, dy: [gd.grad(gd.max_pool2d(x, **geo), [x], grad_output=dy)[0]], x, dy)
    expected = ref_max_pool2d_grad(dy, idx_ref, x.shape[2:], **geo)
    np.testing.assert_array_equal(np.isfinite(gx), np.isfinite(expected))
    assert np.count_nonzero(~np.isfinite(gx)) == 1
    np.testing.assert_allclose(gx[np.isfinite(gx)], expected[np.isfinite(expected)], rtol=1e-12, atol=1e-12)


@examples(30)
@given(pool_configs())
def test_max_pool2d_vjp_and_double_vjp(cfg):
    x = distinct(np.random.default_rng(cfg["seed"]), (cfg["N"], cfg["C"], cfg["H"], cfg["W"]))
    geo = pool_geometry(cfg)
    assert_vjps(lambda x: gd.max_pool2d(x, **geo), [x])


@examples(20)
@given(pool_configs())
def test_max_pool2d_grad_vjp_and_double_vjp(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = distinct(rng, (cfg["N"], cfg["C"], cfg["H"], cfg["W"]))
    geo = pool_geometry(cfg)
    y = run(lambda x: gd.max_pool2d(x, **geo), x)
    dy = rng.standard_normal(y.shape)

    def grad_of_pool(dy, x):  # dx = max_pool2d_grad(dy, argmax): linear in dy, x only routes
        idx = gd.max_pool2d_argmax(x, gd.max_pool2d(x, **geo), **geo)
        return gd.max_pool2d_grad(dy, idx, x.shape[2:], **geo)

    assert_vjps(grad_of_pool, [dy, x], wrt=[0])


def test_max_pool2d_ties_go_to_the_first_maximum_in_row_major_order():
    x = np.array([[[[1.0, 5.0, 5.0],
                    [5.0, 2.0, 5.0],
                    [0.0, 5.0, 1.0]]]])
    # size 2, stride 1: windows overlap; window (0,0) has maxima at offsets 1, 2 -> 1 (first).
    y, idx, gx = run(lambda x: [gd.max_pool2d(x, 2, stride=1),
                                gd.max_pool2d_argmax(x, gd.max_pool2d(x, 2, stride=1), 2, stride=1),
                                gd.grad(gd.sum(gd.max_pool2d(x, 2, stride=1)), [x])[0]], x)
    np.testing.assert_array_equal(y[0, 0], [[5, 5], [5, 5]])
    # Window (0,1) [5 5; 2 5] -> offset 0; (1,0) [5 2; 0 5] -> 0; (1,1) [2 5; 5 1] -> 1.
    np.testing.assert_array_equal(idx[0, 0], [[1, 0], [0, 1]])
    # So x[0,1] receives two gradients (windows overlap), x[1,0] and x[1,2] one each.
    np.testing.assert_array_equal(gx[0, 0], [[0, 2, 0], [1, 0, 1], [0, 0, 0]])
    # -inf padding never wins, even over negative inputs.
    neg = -np.ones((1, 1, 2, 2))
    assert np.all(run(lambda x: gd.max_pool2d(x, 2, stride=1, padding=1), neg) == -1)


def test_max_pool2d_argmax_uses_every_offset_of_a_16x16_window():
    # 256 offsets: the largest window whose offsets fit the uint8 index dtype.
    x = distinct(np.random.default_rng(5), (2, 3, 16, 16))
    y, idx = run(lambda x: [gd.max_pool2d(x, 16), gd.max_pool2d_argmax(x, gd.max_pool2d(x, 16), 16)], x)
    np.testing.assert_array_equal(idx[:, :, 0, 0], x.reshape(2, 3, 256).argmax(axis=2))
    x[0, 0, 15, 15] = 1e9  # the last offset, 255
    assert run(lambda x: gd.max_pool2d_argmax(x, gd.max_pool2d(x, 16), 16), x)[0, 0, 0, 0] == 255


def test_max_pool2d_node_and_graph_of_its_gradient():
    x = gd.placeholder((None, 96, 55, 55), name="x")
    y = gd.max_pool2d(x, 3, stride=2)
    assert y.shape == (None, 96, 27, 27) and y.op.name == "max_pool2d"
    assert (y.op.size, y.op.stride, y.op.padding) == ((3, 3), (2, 2), (0, 0))
    assert gd.max_pool2d(x, 5).op.stride == (5, 5)  # stride defaults to size
    (gx,) = gd.grad(gd.sum(y), [x])
    assert gx.op.name == "max_pool2d_grad" and gx.kind == "gradient" and gx.shape == x.shape
    idx = gx.inputs[1]
    assert idx.op.name == "max_pool2d_argmax" and idx.inputs == (x, y) and idx.dtype.kind in "iu"
    # Double backward: the VJP of the multiplexer is the gather, and back again.
    dy = gd.placeholder((None, 96, 27, 27), name="dy")
    v = gd.placeholder((None, 96, 55, 55), name="v")
    (gdy,) = gd.grad(gd.sum(gd.max_pool2d_grad(dy, idx, (55, 55), 3, stride=2) * v), [dy])
    assert gdy.op.name == "max_pool2d_gather" and gdy.shape == dy.shape and gdy.inputs[1] is idx
    (gv,) = gd.grad(gd.sum(gdy * dy), [v])
    assert "max_pool2d_grad" in [n.op.name for n in gd.toposort([gv]) if n.backward]


@pytest.mark.parametrize("shape, kwargs, message", [
    ((1, 1, 8, 8), dict(size=3, padding=3), r"padding \(3, 3\) must be smaller than the pool size \(3, 3\)"),
    ((1, 1, 8, 8), dict(size=2, padding=(0, 2)), r"must be smaller than the pool size"),
    ((1, 1, 2, 8), dict(size=(5, 2), padding=1), r"pool size 5 is larger than the padded input \(H: 2 \+ 2\*1 = 4\)"),
    ((1, 1, 8, 8), dict(size=2, stride=0), r"stride must be >= 1"),
    ((1, 1, 8, 8), dict(size=2, padding=-1), r"padding must be >= 0"),
    ((1, 8, 8), dict(size=2), r"expects a 4-D tensor"),
])
def test_max_pool2d_shape_errors(shape, kwargs, message):
    x = gd.placeholder(shape, name="fmap")
    with pytest.raises(gd.ShapeError, match=message) as err:
        gd.max_pool2d(x, **kwargs)
    assert str(err.value).startswith("max_pool2d: fmap (")


# =========================================================================== LRN
@examples(15)
@given(lrn_configs())
def test_window_sum_channels_reference_vjp_and_double_vjp(cfg):
    x = np.random.default_rng(cfg["seed"]).standard_normal(cfg["shape"])
    size = cfg["size"]
    np.testing.assert_allclose(run(lambda x: gd.window_sum_channels(x, size), x), ref_window_sum_channels(x, size),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run(lambda x: gd.window_sum_spatial(x, size), x), ref_window_sum_spatial(x, size),
                               rtol=1e-12, atol=1e-12)
    assert_vjps(lambda x: gd.window_sum_channels(x, size), [x])  # VJP: the transposed (mirrored) window
    assert_vjps(lambda x: gd.window_sum_spatial(x, size), [x])


@examples(20)
@given(lrn_configs())
def test_lrn_reference_vjp_and_double_vjp(cfg):
    x = np.random.default_rng(cfg["seed"]).standard_normal(cfg["shape"])
    p = lrn_params(cfg)
    np.testing.assert_allclose(run(lambda x: gd.lrn(x, **p), x), ref_lrn(x, **p), rtol=1e-12, atol=1e-12)
    assert_vjps(lambda x: gd.lrn(x, **p), [x])


@examples(15)
@given(lrn_configs())
def test_lrn_within_reference_vjp_and_double_vjp(cfg):
    x = np.random.default_rng(cfg["seed"]).standard_normal(cfg["shape"])
    p = lrn_params(cfg)
    np.testing.assert_allclose(run(lambda x: gd.lrn_within(x, **p), x), ref_lrn_within(x, **p),
                               rtol=1e-12, atol=1e-12)
    assert_vjps(lambda x: gd.lrn_within(x, **p), [x])


@examples(15)
@given(lrn_configs())
def test_normalize_cross_map_reference_vjp_and_double_vjp(cfg):
    x = np.random.default_rng(cfg["seed"]).uniform(0.5, 2.0, cfg["shape"])  # positive, away from zero
    np.testing.assert_allclose(run(gd.normalize_cross_map, x), ref_normalize_cross_map(x), rtol=1e-12)
    assert_vjps(gd.normalize_cross_map, [x])


def test_lrn_graph_keeps_scale_for_the_fused_backward():
    x = gd.placeholder((None, 96, 55, 55), name="x")
    y = gd.lrn(x)
    assert y.shape == x.shape and y.op.name == "lrn_normalize"
    scale = y.inputs[1]
    assert scale.op.name == "lrn_scale" and scale.inputs == (x,)
    assert (scale.op.size, scale.op.alpha, scale.op.k, y.op.beta) == (5, 1e-4, 2.0, 0.75)
    (gx,) = gd.grad(gd.sum(y), [x])
    assert gx.op.name == "lrn_grad" and gx.kind == "gradient"
    assert gx.inputs[:3] == (x, y, scale)  # the backward reuses the forward's y and scale
    within = gd.lrn_within(x, size=3)
    assert within.op.name == "lrn_within_normalize" and within.inputs[1].op.name == "lrn_within_scale"
    assert gd.grad(gd.sum(within), [x])[0].op.name == "lrn_within_grad"


def test_lrn_defaults_follow_the_alexnet_paper():
    x = np.random.default_rng(3).standard_normal((2, 7, 3, 3)) * 10
    np.testing.assert_allclose(run(gd.lrn, x), ref_lrn(x, 5, 1e-4, 0.75, 2.0), rtol=1e-12)


def test_lrn_shape_errors():
    with pytest.raises(gd.ShapeError, match=r"lrn_scale: v \(3, 4\): expects a tensor \(N, C, \.\.\.\) of 3 or more"):
        gd.lrn(gd.placeholder((3, 4), name="v"))
    with pytest.raises(gd.ShapeError, match="size must be >= 1"):
        gd.lrn(gd.placeholder((1, 3, 4, 4)), size=0)


# =========================================================================== a tiny network
def test_tiny_network_gradients_pass_the_finite_difference_check():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2, 9, 9))
    labels = np.array([0, 2, 1])
    w = rng.standard_normal((4, 2, 3, 3)) * 0.5
    b = rng.standard_normal(4) * 0.1
    wfc = rng.standard_normal((4 * 3 * 3, 3)) * 0.3
    bfc = rng.standard_normal(3) * 0.1

    def net(x, labels, w, b, wfc, bfc):
        h = gd.relu(gd.conv2d(x, w, b, stride=1, padding=1))           # (3, 4, 9, 9)
        h = gd.lrn(h, size=3, alpha=0.1, beta=0.75, k=2.0)
        h = gd.max_pool2d(h, 3, stride=3)                               # (3, 4, 3, 3)
        h = gd.reshape(h, (-1, 4 * 3 * 3))
        return gd.softmax_cross_entropy(gd.matmul(h, wfc) + bfc, labels)

    errors = check_vjp(net, [x, labels, w, b, wfc, bfc], wrt=[0, 2, 3, 4, 5], directions=4)
    assert max(errors) < TOL


# =========================================================================== against PyTorch (optional)
ALEXNET_LIKE = [  # (x shape, w shape, stride, padding, groups)
    ((2, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
    ((2, 96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    ((2, 256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
]


@pytest.mark.parametrize("xs, ws, stride, padding, groups", ALEXNET_LIKE)
def test_conv2d_matches_torch(xs, ws, stride, padding, groups):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs, np.float32), rng.standard_normal(ws, np.float32) * 0.05
    b = rng.standard_normal(ws[0], np.float32)
    y, gx, gw, gb = run(lambda x, w, b, dy: [gd.conv2d(x, w, b, stride, padding, groups)]
                        + gd.grad(gd.conv2d(x, w, b, stride, padding, groups), [x, w, b], grad_output=dy),
                        x, w, b, _dy_for(F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, stride, padding,
                                                  1, groups)))
    tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride, padding, 1, groups)
    ty.backward(torch.from_numpy(_dy_for(ty)))
    scale = float(np.abs(ty.detach().numpy()).max())
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4 * scale)
    for ours, theirs in ((gx, tx.grad), (gw, tw.grad), (gb, tb.grad)):
        theirs = theirs.numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(np.abs(theirs).max()))


def _dy_for(t):
    return np.random.default_rng(1).standard_normal(tuple(t.shape)).astype(np.float32)


@pytest.mark.parametrize("shape, size, stride, padding", [((2, 96, 55, 55), 3, 2, 0), ((2, 256, 13, 13), 3, 2, 1),
                                                           ((2, 16, 12, 12), 2, None, 0)])
def test_max_pool2d_matches_torch(shape, size, stride, padding):
    torch = pytest.importorskip("torch")
    x = distinct(np.random.default_rng(2), shape, spacing=1e-3).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.max_pool2d(tx, size, stride, padding)
    dy = _dy_for(ty)
    ty.backward(torch.from_numpy(dy))
    y, gx = run(lambda x, dy: [gd.max_pool2d(x, size, stride, padding),
                               gd.grad(gd.max_pool2d(x, size, stride, padding), [x], grad_output=dy)[0]], x, dy)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 96, 55, 55), (2, 256, 27, 27)])
def test_lrn_matches_torch_with_alpha_times_size(shape):
    torch = pytest.importorskip("torch")
    x = (np.random.default_rng(4).standard_normal(shape) * 20).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.local_response_norm(tx, 5, alpha=1e-4 * 5, beta=0.75, k=2.0)
    dy = _dy_for(ty)
    ty.backward(torch.from_numpy(dy))
    y, gx = run(lambda x, dy: [gd.lrn(x), gd.grad(gd.lrn(x), [x], grad_output=dy)[0]], x, dy)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)


def _pool_gradient(xv, size, stride, padding, optimize):
    x = gd.placeholder(xv.shape, "float64", name="x")
    y = gd.max_pool2d(x, size, stride, padding)
    (g,) = gd.grad(gd.sum(y), [x])
    return gd.compile([y, g], [x], optimize=optimize)(xv)


def _first_nan_or_max_reference(xv, size, stride, padding):
    """Explicit loops: each window's gradient goes to its first NaN, else to its
    first maximum among the input's own cells (padding never wins)."""
    N, C, H, W = xv.shape
    OH, OW = (H + 2 * padding - size) // stride + 1, (W + 2 * padding - size) // stride + 1
    g = np.zeros_like(xv)
    for n, c, i, j in np.ndindex(N, C, OH, OW):
        cells = [(r, s) for r in range(i * stride - padding, i * stride - padding + size)
                 for s in range(j * stride - padding, j * stride - padding + size) if 0 <= r < H and 0 <= s < W]
        values = [xv[n, c, r, s] for r, s in cells]
        nans = [k for k, v in enumerate(values) if np.isnan(v)]
        g[(n, c) + cells[nans[0] if nans else int(np.argmax(values))]] += 1.0
    return g


@pytest.mark.parametrize("optimize", [True, False])  # fused pool-with-argmax, and the separate argmax op
def test_max_pool2d_gradient_goes_to_the_nan_of_a_window(optimize):
    xv = np.arange(9.0).reshape(1, 1, 3, 3)
    xv[0, 0, 1, 0] = np.nan  # window offset 3; the largest number, 8, is at offset 8
    y, g = _pool_gradient(xv, 3, 1, 0, optimize)
    assert np.isnan(y).all()  # the NaN propagates
    np.testing.assert_array_equal(g.reshape(-1), np.eye(9)[3])
    r = np.random.default_rng(7)
    xv = r.standard_normal((2, 3, 9, 9))
    xv[r.random(xv.shape) < 0.08] = np.nan
    xv[r.random(xv.shape) < 0.05] = -np.inf
    for size, stride, padding in [(3, 2, 0), (3, 2, 1), (3, 1, 1), (2, 2, 1)]:
        y, g = _pool_gradient(xv, size, stride, padding, optimize)
        np.testing.assert_array_equal(g, _first_nan_or_max_reference(xv, size, stride, padding))


@pytest.mark.parametrize("optimize", [True, False])
def test_max_pool2d_gradient_never_goes_to_padding(optimize):
    xv = np.full((1, 2, 3, 3), -np.inf)  # every window's max is -inf, tied with its -inf padding
    y, g = _pool_gradient(xv, 3, 1, 1, optimize)
    assert g.sum() == y.size  # one unit per window, none lost on a padding cell
    np.testing.assert_array_equal(g, _first_nan_or_max_reference(xv, 3, 1, 1))
    np.testing.assert_array_equal(g[0, 0], [[4, 2, 0], [2, 1, 0], [0, 0, 0]])  # as PyTorch's


def test_max_pool2d_with_nan_and_minus_inf_matches_torch():
    torch = pytest.importorskip("torch")
    xv = np.random.default_rng(8).standard_normal((1, 2, 7, 7))
    xv[0, 0, 2, 3] = xv[0, 1, 5, 5] = np.nan  # at most one NaN per window: PyTorch takes the last
    xv[0, 1, :3, :3] = -np.inf
    for optimize in (True, False):
        tx = torch.tensor(xv, requires_grad=True)
        torch.nn.functional.max_pool2d(tx, 3, 2, 1).sum().backward()
        _, g = _pool_gradient(xv, 3, 2, 1, optimize)
        np.testing.assert_array_equal(g, tx.grad.numpy())
