"""Array kernels (graphdiff.kernels) against naive loops that transcribe the slides.

References are written with explicit Python loops over the formula's indices,
in float64 at tiny sizes; the fast kernels must match them, be adjoint where
they are transposes of each other, keep float32, and (if torch is importable)
agree with torch.nn.functional.
"""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from graphdiff.kernels import conv, lrn, parallel, pool

import graphdiff as gd

# Each test runs on NumPy and on CuPy (the stand-in in CI; see conftest.py), but
# for those about NumPy's own machinery (numpy_only).
pytestmark = pytest.mark.each_backend

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def call(kernel, *args, **kwargs):
    """``kernel(xp, *args)`` with the test's array module (``gd.get_backend()``: NumPy,
    or CuPy in the cupy run): array arguments go to the device, array results come
    back to the host (a tuple stays a tuple)."""
    backend = gd.get_backend()
    up = [backend.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    result = kernel(backend.xp, *up, **kwargs)
    if isinstance(result, tuple):
        return tuple(backend.to_host(r) for r in result)
    return backend.to_host(result)


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def zero_pad(x, ph, pw, value=0.0):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def inner(a, b):
    return float(np.sum(a.astype(np.float64) * b.astype(np.float64)))


# ---------------------------------------------------------------- naive references

def ref_conv2d(x, w, b, stride, padding, groups):
    """Y_ij = sum_ab W_ab X_(i+a)(j+b), per example, filter (over its group's channels)."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    X = zero_pad(x, ph, pw)
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    y = np.zeros((N, O, OH, OW))
    for n, o, i, j in itertools.product(range(N), range(O), range(OH), range(OW)):
        g = o // (O // groups)
        total = 0.0 if b is None else b[o]
        for c, a, bb in itertools.product(range(Cg), range(kh), range(kw)):
            total += w[o, c, a, bb] * X[n, g * Cg + c, i * sh + a, j * sw + bb]
        y[n, o, i, j] = total
    return y


def ref_conv2d_grad_weight(x, dy, kernel_size, stride, padding, groups):
    """Case 1: dE/dW_lk = sum_ij dE_ij X_(i+l)(j+k) (and over the batch)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    N, C = x.shape[:2]
    _, O, OH, OW = dy.shape
    Cg = C // groups
    X = zero_pad(x, ph, pw)
    dw = np.zeros((O, Cg, kh, kw))
    for o, c, l, k in itertools.product(range(O), range(Cg), range(kh), range(kw)):
        g = o // (O // groups)
        for n, i, j in itertools.product(range(N), range(OH), range(OW)):
            dw[o, c, l, k] += dy[n, o, i, j] * X[n, g * Cg + c, i * sh + l, j * sw + k]
    return dw


def ref_conv2d_grad_input(dy, w, input_size, stride, padding, groups):
    """Case 2: each X gathers from every Y it fed, dX_ij = sum_ab W_ab dE_(i-a)(j-b)
    (only where (i-a), (j-b) are valid output positions, on the stride grid)."""
    (H, W), (sh, sw), (ph, pw) = input_size, stride, padding
    N, O, OH, OW = dy.shape
    _, Cg, kh, kw = w.shape
    Og = O // groups
    dX = np.zeros((N, Cg * groups, H + 2 * ph, W + 2 * pw))
    for n, c, i, j in itertools.product(range(N), range(Cg * groups), range(H + 2 * ph), range(W + 2 * pw)):
        g = c // Cg
        for o, a, b in itertools.product(range(g * Og, (g + 1) * Og), range(kh), range(kw)):
            if (i - a) % sh or (j - b) % sw:
                continue
            yi, yj = (i - a) // sh, (j - b) // sw
            if 0 <= yi < OH and 0 <= yj < OW:
                dX[n, c, i, j] += w[o, c - g * Cg, a, b] * dy[n, o, yi, yj]
    return dX[:, :, ph:ph + H, pw:pw + W]


def ref_max_pool(x, size, stride, padding):
    """max over each window of the -inf padded input; argmax = first max, row-major."""
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    N, C, H, W = x.shape
    X = zero_pad(x, ph, pw, -np.inf)
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    y, am = np.zeros((N, C, OH, OW)), np.zeros((N, C, OH, OW), dtype=np.int64)
    for n, c, i, j in itertools.product(range(N), range(C), range(OH), range(OW)):
        window = X[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw]
        am[n, c, i, j] = np.argmax(window)  # first occurrence in row-major order
        y[n, c, i, j] = window.flat[am[n, c, i, j]]
    return y, am


def ref_max_pool_grad(dy, argmax, input_size, size, stride, padding):
    """Multiplexer: each dy goes to its window's argmax; overlapping windows add."""
    (H, W), (kh, kw), (sh, sw), (ph, pw) = input_size, size, stride, padding
    N, C, OH, OW = dy.shape
    dX = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for n, c, i, j in itertools.product(range(N), range(C), range(OH), range(OW)):
        a, b = divmod(int(argmax[n, c, i, j]), kw)
        dX[n, c, i * sh + a, j * sw + b] += dy[n, c, i, j]
    return dX[:, :, ph:ph + H, pw:pw + W]


def ref_window_sum_channels(x, size):
    lo, hi = size // 2, (size - 1) // 2
    C = x.shape[1]
    s = np.zeros_like(x)
    for c in range(C):
        for j in range(c - lo, c + hi + 1):
            if 0 <= j < C:
                s[:, c] += x[:, j]
    return s


def ref_lrn(x, size, alpha, beta, k):
    """Y_ijl = X_ijl / (k + alpha * sum_{j in Nbr(l)} X_ijj^2)^beta, alpha not divided by size."""
    return x / (k + alpha * ref_window_sum_channels(x * x, size)) ** beta


def ref_lrn_within(x, size, alpha, beta, k):
    """Same, neighbours the size x size pixels around (i, j) in the same map."""
    lo, hi = size // 2, (size - 1) // 2
    N, C, H, W = x.shape
    s = np.zeros_like(x)
    for i, j in itertools.product(range(H), range(W)):
        for a, b in itertools.product(range(i - lo, i + hi + 1), range(j - lo, j + hi + 1)):
            if 0 <= a < H and 0 <= b < W:
                s[:, :, i, j] += x[:, :, a, b] ** 2
    return x / (k + alpha * s) ** beta


# ---------------------------------------------------------------- strategies

@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 4))
    C = groups * draw(st.integers(1, max(1, 8 // groups)))
    O = groups * draw(st.integers(1, max(1, 8 // groups)))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    N = draw(st.integers(1, 3))
    assume(H + 2 * ph >= kh and W + 2 * pw >= kw)
    seed = draw(st.integers(0, 2**31))
    return N, C, O, H, W, (kh, kw), (sh, sw), (ph, pw), groups, np.random.default_rng(seed)


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, (kh - 1) // 2 + 1)), draw(st.integers(0, (kw - 1) // 2 + 1))
    assume(ph < kh and pw < kw)  # a window of padding only would be invalid
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    assume(H + 2 * ph >= kh and W + 2 * pw >= kw)
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31))
    return N, C, H, W, (kh, kw), (sh, sw), (ph, pw), np.random.default_rng(seed)


def tie_free(rng, shape):
    """Distinct values: a shuffled arange, scaled (no ties anywhere)."""
    return rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64) / 7.0 - 3.0


# ---------------------------------------------------------------- convolution

@SETTINGS
@given(conv_cases(), st.booleans())
def test_conv2d_forward_matches_slide_formula(case, with_bias):
    N, C, O, H, W, ks, stride, padding, groups, rng = case
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C // groups) + ks)
    b = rng.standard_normal(O) if with_bias else None
    y = call(conv.conv2d_forward, x, w, b, stride, padding, groups)
    np.testing.assert_allclose(y, ref_conv2d(x, w, b, stride, padding, groups), rtol=1e-10, atol=1e-10)


@SETTINGS
@given(conv_cases())
def test_conv2d_gradients_match_case1_and_case2(case):
    N, C, O, H, W, ks, stride, padding, groups, rng = case
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C // groups) + ks)
    OH, OW = out_size(H, ks[0], stride[0], padding[0]), out_size(W, ks[1], stride[1], padding[1])
    dy = rng.standard_normal((N, O, OH, OW))
    dw = call(conv.conv2d_grad_weight, x, dy, ks, stride, padding, groups)
    dx = call(conv.conv2d_grad_input, dy, w, (H, W), stride, padding, groups)
    assert dw.shape == w.shape and dx.shape == x.shape
    np.testing.assert_allclose(dw, ref_conv2d_grad_weight(x, dy, ks, stride, padding, groups),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, ref_conv2d_grad_input(dy, w, (H, W), stride, padding, groups),
                               rtol=1e-10, atol=1e-10)


@SETTINGS
@given(conv_cases())
def test_conv2d_adjointness(case):
    """<conv(x, w), dy> == <x, grad_input(dy, w)> == <w, grad_weight(x, dy)>."""
    N, C, O, H, W, ks, stride, padding, groups, rng = case
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C // groups) + ks)
    y = call(conv.conv2d_forward, x, w, None, stride, padding, groups)
    dy = rng.standard_normal(y.shape)
    lhs = inner(y, dy)
    assert lhs == pytest.approx(inner(x, call(conv.conv2d_grad_input, dy, w, (H, W), stride, padding, groups)),
                                rel=1e-10, abs=1e-9)
    assert lhs == pytest.approx(inner(w, call(conv.conv2d_grad_weight, x, dy, ks, stride, padding, groups)),
                                rel=1e-10, abs=1e-9)


@pytest.mark.parametrize("C,O,stride,padding,groups", [(96, 4, (1, 1), (1, 2), 2), (48, 6, (2, 1), (0, 1), 1),
                                                       (4, 96, (1, 1), (2, 2), 2)])
def test_conv2d_long_reduction_paths(C, O, stride, padding, groups):
    """Shapes that take the pixel-major GEMM (C/g*kh*kw >= 1024) and, for the input
    gradient, both the correlation and the col2im paths."""
    rng = np.random.default_rng(C + O)
    x = rng.standard_normal((2, C, 6, 7))
    w = rng.standard_normal((O, C // groups, 5, 5))
    b = rng.standard_normal(O)
    y = call(conv.conv2d_forward, x, w, b, stride, padding, groups)
    np.testing.assert_allclose(y, ref_conv2d(x, w, b, stride, padding, groups), rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(call(conv.conv2d_grad_weight, x, dy, (5, 5), stride, padding, groups),
                               ref_conv2d_grad_weight(x, dy, (5, 5), stride, padding, groups), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(call(conv.conv2d_grad_input, dy, w, (6, 7), stride, padding, groups),
                               ref_conv2d_grad_input(dy, w, (6, 7), stride, padding, groups), rtol=1e-10, atol=1e-10)


def test_conv2d_grad_input_correlation_path_with_long_reduction():
    """Stride 1, O*kh*kw/groups >= 1024: the input gradient runs as a pixel-major
    forward correlation; checked by adjointness against the (verified) forward."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 48, 6, 7))
    w = rng.standard_normal((96, 48, 5, 5))
    y = call(conv.conv2d_forward, x, w, None, (1, 1), (2, 1), 1)
    dy = rng.standard_normal(y.shape)
    dx = call(conv.conv2d_grad_input, dy, w, (6, 7), (1, 1), (2, 1), 1)
    assert inner(y, dy) == pytest.approx(inner(x, dx), rel=1e-10)
    v = rng.standard_normal(x.shape)  # dx is linear in dy: check a second, independent pairing
    assert inner(call(conv.conv2d_forward, v, w, None, (1, 1), (2, 1), 1), dy) == pytest.approx(inner(v, dx), rel=1e-10)


def test_padding_inputs_of_two_sizes_to_one_padded_shape_keeps_each_border():
    """A 5x5 input padded by 1 and a 3x3 one padded by 2 are both 7x7: each gets a
    border of fill values, not what the other left there."""
    a, b = np.ones((1, 2, 5, 5)), np.full((1, 2, 3, 3), 2.0)
    for _ in range(2):
        for x, p in ((a, 1), (b, 2), (a, 1)):
            expected = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-1.0)
            np.testing.assert_array_equal(call(conv.pad2d, x, (p, p), "test_pad", -1.0), expected)


def test_conv2d_uncovered_input_gets_zero_gradient():
    # H=8, k=3, s=3: rows 6 and 7 are in no window
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 1, 3, 3))
    dy = rng.standard_normal((1, 2, 2, 2))
    dx = call(conv.conv2d_grad_input, dy, w, (8, 8), (3, 3), (0, 0), 1)
    assert np.all(dx[:, :, 6:, :] == 0) and np.all(dx[:, :, :, 6:] == 0)


# ---------------------------------------------------------------- max pooling

@SETTINGS
@given(pool_cases())
def test_max_pool_forward_and_grad_match_loops(case):
    N, C, H, W, size, stride, padding, rng = case
    x = tie_free(rng, (N, C, H, W))
    y, am = call(pool.max_pool2d_forward, x, size, stride, padding)
    y_ref, am_ref = ref_max_pool(x, size, stride, padding)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(am, am_ref)
    assert am.dtype == pool.argmax_dtype(size)
    dy = rng.standard_normal(y.shape)
    dx = call(pool.max_pool2d_grad, dy, am, (H, W), size, stride, padding)
    np.testing.assert_allclose(dx, ref_max_pool_grad(dy, am_ref, (H, W), size, stride, padding),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(call(pool.max_pool2d_gather, x, am, size, stride, padding), y)


@SETTINGS
@given(pool_cases())
def test_max_pool_grad_and_gather_are_adjoint(case):
    """<max_pool2d_grad(dy), v> == <dy, max_pool2d_gather(v)>."""
    N, C, H, W, size, stride, padding, rng = case
    _, am = call(pool.max_pool2d_forward, tie_free(rng, (N, C, H, W)), size, stride, padding)
    dy = rng.standard_normal(am.shape)
    v = rng.standard_normal((N, C, H, W))
    lhs = inner(call(pool.max_pool2d_grad, dy, am, (H, W), size, stride, padding), v)
    rhs = inner(dy, call(pool.max_pool2d_gather, v, am, size, stride, padding))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_max_pool_tie_goes_to_first_max_in_row_major_order():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 0, 2] = x[0, 0, 1, 0] = x[0, 0, 2, 2] = 5.0  # three equal maxima
    y, am = call(pool.max_pool2d_forward, x, (3, 3), (1, 1), (0, 0))
    assert y[0, 0, 0, 0] == 5.0 and am[0, 0, 0, 0] == 2  # (a, b) = (0, 2) comes first
    dx = call(pool.max_pool2d_grad, np.ones((1, 1, 1, 1)), am, (3, 3), (3, 3), (1, 1), (0, 0))
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 0, 2] = 1.0
    np.testing.assert_array_equal(dx, expected)
    # all-equal input: every window picks its offset 0, overlapping windows add up
    y, am = call(pool.max_pool2d_forward, np.ones((1, 1, 5, 5)), (3, 3), (2, 2), (0, 0))
    assert np.all(am == 0)


def test_max_pool_padding_never_wins():
    x = -np.ones((1, 1, 4, 4)) * 1e30  # very negative values still beat -inf padding
    y, am = call(pool.max_pool2d_forward, x, (3, 3), (2, 2), (1, 1))
    assert np.all(y == -1e30)
    dx = call(pool.max_pool2d_grad, np.ones(y.shape), am, (4, 4), (3, 3), (2, 2), (1, 1))
    assert dx.sum() == y.size


@pytest.mark.numpy_only(reason="a dtype rule: no arrays, nothing to run on a device")
def test_argmax_dtype_is_smallest_unsigned():
    assert pool.argmax_dtype((3, 3)) == np.uint8
    assert pool.argmax_dtype((16, 16)) == np.uint8
    assert pool.argmax_dtype((17, 16)) == np.uint16


# ---------------------------------------------------------------- LRN

@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 12])
@pytest.mark.parametrize("C", [1, 3, 8])
def test_window_sum_channels_and_its_transpose(size, C):
    rng = np.random.default_rng(size * 10 + C)
    x = rng.standard_normal((2, C, 3, 4))
    v = rng.standard_normal(x.shape)
    s = call(lrn.window_sum_channels, x, size)
    np.testing.assert_allclose(s, ref_window_sum_channels(x, size), rtol=1e-12, atol=1e-12)
    st_v = call(lrn.window_sum_channels, v, size, transpose=True)
    assert inner(s, v) == pytest.approx(inner(x, st_v), rel=1e-12, abs=1e-12)
    if size % 2:
        np.testing.assert_allclose(st_v, call(lrn.window_sum_channels, v, size), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_window_sum_spatial_and_its_transpose(size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 3, 5, 7))
    v = rng.standard_normal(x.shape)
    lo, hi = size // 2, (size - 1) // 2
    ref = np.zeros_like(x)
    for i, j in itertools.product(range(5), range(7)):
        for a, b in itertools.product(range(i - lo, i + hi + 1), range(j - lo, j + hi + 1)):
            if 0 <= a < 5 and 0 <= b < 7:
                ref[:, :, i, j] += x[:, :, a, b]
    s = call(lrn.window_sum_spatial, x, size)
    np.testing.assert_allclose(s, ref, rtol=1e-12, atol=1e-12)
    assert inner(s, v) == pytest.approx(inner(x, call(lrn.window_sum_spatial, v, size, transpose=True)),
                                        rel=1e-12, abs=1e-12)


LRN_PARAMS = [(5, 1e-4, 0.75, 2.0), (3, 0.5, 0.75, 1.0), (4, 0.3, 0.5, 1.5), (2, 0.2, 1.0, 1.0),
              (5, 0.1, 0.6, 2.0), (1, 1.0, 0.75, 0.5)]


@pytest.mark.parametrize("within", [False, True])
@pytest.mark.parametrize("size,alpha,beta,k", LRN_PARAMS)
def test_lrn_forward_matches_formula_and_backward_matches_finite_differences(within, size, alpha, beta, k):
    fwd = lrn.lrn_within_forward if within else lrn.lrn_forward
    bwd = lrn.lrn_within_backward if within else lrn.lrn_backward
    ref = ref_lrn_within if within else ref_lrn
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 6, 4, 5)) * 2
    y, scale = call(fwd, x, size, alpha, beta, k)
    np.testing.assert_allclose(y, ref(x, size, alpha, beta, k), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    dx = call(bwd, x, y, scale, dy, size, alpha, beta)
    for _ in range(3):  # central differences along random directions
        v = rng.standard_normal(x.shape)
        eps = 1e-6
        fd = (inner(ref(x + eps * v, size, alpha, beta, k), dy)
              - inner(ref(x - eps * v, size, alpha, beta, k), dy)) / (2 * eps)
        assert inner(dx, v) == pytest.approx(fd, rel=1e-6, abs=1e-7)


@pytest.mark.numpy_only(reason="NumPy's cache blocks and threads (kernels.parallel)")
def test_lrn_large_batch_uses_blocks_and_threads(monkeypatch):
    """Cache blocks and threads must not change the result."""
    monkeypatch.setattr(parallel, "BLOCK_ELEMENTS", 100)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(parallel, "NUM_THREADS", 2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 7, 6, 6))
    y, scale = lrn.lrn_forward(np, x, 5, 0.1, 0.75, 2.0)
    np.testing.assert_allclose(y, ref_lrn(x, 5, 0.1, 0.75, 2.0), rtol=1e-12)
    dy = rng.standard_normal(x.shape)
    dx = lrn.lrn_backward(np, x, y, scale, dy, 5, 0.1, 0.75)
    monkeypatch.setattr(parallel, "NUM_THREADS", 1)
    np.testing.assert_allclose(dx, lrn.lrn_backward(np, x, y, scale, dy, 5, 0.1, 0.75), rtol=1e-12)


# ---------------------------------------------------------------- dtypes, threads, scratch

def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    f = np.float32
    x = rng.standard_normal((2, 4, 9, 9)).astype(f)
    w = rng.standard_normal((6, 2, 3, 3)).astype(f)
    b = rng.standard_normal(6).astype(f)
    y = call(conv.conv2d_forward, x, w, b, (2, 2), (1, 1), 2)
    dy = np.ones_like(y)
    assert y.dtype == f
    assert call(conv.conv2d_grad_input, dy, w, (9, 9), (2, 2), (1, 1), 2).dtype == f
    assert call(conv.conv2d_grad_weight, x, dy, (3, 3), (2, 2), (1, 1), 2).dtype == f
    np.testing.assert_allclose(y, ref_conv2d(x.astype(float), w.astype(float), b.astype(float),
                                             (2, 2), (1, 1), 2), rtol=1e-4, atol=1e-4)
    py, am = call(pool.max_pool2d_forward, x, (3, 3), (2, 2), (1, 1))
    assert py.dtype == f
    assert call(pool.max_pool2d_grad, py, am, (9, 9), (3, 3), (2, 2), (1, 1)).dtype == f
    assert call(pool.max_pool2d_gather, x, am, (3, 3), (2, 2), (1, 1)).dtype == f
    for fwd, bwd in [(lrn.lrn_forward, lrn.lrn_backward), (lrn.lrn_within_forward, lrn.lrn_within_backward)]:
        ly, scale = call(fwd, x, 5, 1e-4, 0.75, 2.0)
        assert ly.dtype == f and scale.dtype == f
        assert call(bwd, x, ly, scale, x, 5, 1e-4, 0.75).dtype == f
    assert call(lrn.window_sum_channels, x, 5).dtype == f
    assert call(lrn.window_sum_spatial, x, 3).dtype == f


@pytest.mark.numpy_only(reason="NumPy's scratch buffers (kernels.parallel.workspace)")
def test_results_are_fresh_arrays_not_scratch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    y1 = conv.conv2d_forward(np, x, w, None, (1, 1), (1, 1), 1)
    keep = y1.copy()
    conv.conv2d_forward(np, 2 * x, w, None, (1, 1), (1, 1), 1)
    conv.conv2d_grad_input(np, y1, w, (8, 8), (1, 1), (1, 1), 1)
    np.testing.assert_array_equal(y1, keep)
    parallel.clear_workspace()  # scratch is re-created on demand
    np.testing.assert_array_equal(conv.conv2d_forward(np, x, w, None, (1, 1), (1, 1), 1), keep)
    p1, am1 = pool.max_pool2d_forward(np, x, (2, 2), (2, 2), (0, 0))
    keep = p1.copy(), am1.copy()
    pool.max_pool2d_forward(np, -x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(p1, keep[0])
    np.testing.assert_array_equal(am1, keep[1])


@pytest.mark.numpy_only(reason="NumPy's threads (kernels.parallel)")
def test_threaded_paths_match_single_thread(monkeypatch):
    monkeypatch.setattr(parallel, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(parallel, "BLOCK_ELEMENTS", 50)
    rng = np.random.default_rng(2)
    x = tie_free(rng, (5, 3, 11, 10))
    w = rng.standard_normal((6, 3, 3, 3))
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(parallel, "NUM_THREADS", threads)
        y = conv.conv2d_forward(np, x, w, None, (2, 1), (1, 2), 1)
        py, am = pool.max_pool2d_forward(np, x, (3, 3), (2, 2), (1, 1))
        results.append([y, conv.conv2d_grad_input(np, y, w, (11, 10), (2, 1), (1, 2), 1),
                        conv.conv2d_grad_weight(np, x, y, (3, 3), (2, 1), (1, 2), 1),
                        py, am, pool.max_pool2d_grad(np, py, am, (11, 10), (3, 3), (2, 2), (1, 1)),
                        pool.max_pool2d_gather(np, x, am, (3, 3), (2, 2), (1, 1))])
    np.testing.assert_allclose(results[0][0], ref_conv2d(x, w, None, (2, 1), (1, 2), 1), rtol=1e-10)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_lrn_float32_keeps_precision_next_to_large_activations():
    """The window sums never subtract prefix sums, so float32 stays at ~1e-7."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((2, 96, 5, 5)), 0) * rng.lognormal(0, 2, (1, 96, 1, 1))
    x32 = x.astype(np.float32)
    y32, s32 = call(lrn.lrn_forward, x32, 5, 1e-4, 0.75, 2.0)
    y64, s64 = call(lrn.lrn_forward, x32.astype(np.float64), 5, 1e-4, 0.75, 2.0)
    np.testing.assert_allclose(s32, s64, rtol=2e-6)
    np.testing.assert_allclose(y32, y64, rtol=2e-6, atol=1e-30)


class _NotNumpy:
    """NumPy under another name: drives the code paths meant for CuPy (no threads,
    cumsum-based scans) on the CPU."""
    __name__ = "not_numpy"

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.numpy_only(reason="runs the device code paths with NumPy under another name, against NumPy's")
def test_non_numpy_code_paths_agree():
    xq = _NotNumpy()
    rng = np.random.default_rng(4)
    x = tie_free(rng, (2, 6, 9, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    y = conv.conv2d_forward(xq, x, w, None, (2, 1), (1, 1), 2)
    np.testing.assert_allclose(y, conv.conv2d_forward(np, x, w, None, (2, 1), (1, 1), 2), rtol=1e-12)
    py, am = pool.max_pool2d_forward(xq, x, (3, 3), (2, 2), (1, 1))
    py_ref, am_ref = ref_max_pool(x, (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(py, py_ref)
    np.testing.assert_array_equal(am, am_ref)
    for size in (2, 5):
        for transpose in (False, True):
            np.testing.assert_allclose(lrn.window_sum_channels(xq, x, size, transpose),
                                       lrn.window_sum_channels(np, x, size, transpose), rtol=1e-12)
            np.testing.assert_allclose(lrn.window_sum_spatial(xq, x, size, transpose),
                                       lrn.window_sum_spatial(np, x, size, transpose), rtol=1e-12)


# ---------------------------------------------------------------- PyTorch, when installed

TORCH_CONV = [((2, 3, 17, 15), 6, (5, 3), (4, 2), (0, 1), 1), ((3, 8, 9, 9), 12, (3, 3), (1, 1), (1, 1), 4),
              ((1, 6, 13, 13), 4, (5, 5), (1, 1), (2, 2), 2), ((2, 3, 23, 23), 8, (11, 11), (4, 4), (0, 0), 1)]


@pytest.mark.parametrize("xshape,O,ks,stride,padding,groups", TORCH_CONV)
def test_conv2d_matches_torch(xshape, O, ks, stride, padding, groups):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape)
    w = rng.standard_normal((O, xshape[1] // groups) + ks)
    b = rng.standard_normal(O)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    yt = F.conv2d(xt, wt, torch.tensor(b), stride, padding, 1, groups)
    dy = rng.standard_normal(yt.shape)
    gx, gw = torch.autograd.grad(yt, [xt, wt], torch.tensor(dy))
    np.testing.assert_allclose(call(conv.conv2d_forward, x, w, b, stride, padding, groups),
                               yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(call(conv.conv2d_grad_input, dy, w, xshape[2:], stride, padding, groups),
                               gx.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(call(conv.conv2d_grad_weight, x, dy, ks, stride, padding, groups),
                               gw.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("xshape,size,stride,padding", [((2, 3, 13, 13), (3, 3), (2, 2), (0, 0)),
                                                        ((2, 2, 11, 10), (3, 2), (2, 1), (1, 1)),
                                                        ((1, 4, 8, 8), (2, 2), (2, 2), (0, 0))])
def test_max_pool_matches_torch(xshape, size, stride, padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = tie_free(rng, xshape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, size, stride, padding)
    dy = rng.standard_normal(yt.shape)
    (gx,) = torch.autograd.grad(yt, [xt], torch.tensor(dy))
    y, am = call(pool.max_pool2d_forward, x, size, stride, padding)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_allclose(call(pool.max_pool2d_grad, dy, am, xshape[2:], size, stride, padding),
                               gx.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (3, 0.3, 0.6, 1.0), (4, 0.2, 0.75, 1.0)])
def test_lrn_matches_torch_with_alpha_times_size(size, alpha, beta, k):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 5, 5)) * 3
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha * size, beta, k)  # torch divides by size
    dy = rng.standard_normal(x.shape)
    (gx,) = torch.autograd.grad(yt, [xt], torch.tensor(dy))
    y, scale = call(lrn.lrn_forward, x, size, alpha, beta, k)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(call(lrn.lrn_backward, x, y, scale, dy, size, alpha, beta), gx.numpy(),
                               rtol=1e-9, atol=1e-12)
