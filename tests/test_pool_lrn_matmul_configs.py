"""Configurations the peers' op tests use: max pooling with dilation, ceil_mode and
asymmetric padding; LRN across channels on 3-D and 5-D inputs; matmul with 1-D
operands. Each against a naive reference written from the formula, PyTorch, and
float64 finite differences of the VJP and the double VJP; on NumPy and on the
CuPy stand-in (``each_backend``)."""
import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import graphdiff as gd
import needs
from op_checks import assert_vjps, distinct, examples, has_empty_window, run
from op_checks import pool_out_size as ref_out_size  # PyTorch's rule, written out

pytestmark = pytest.mark.each_backend
F = torch.nn.functional


# =========================================================================== max pooling: naive reference
def ref_max_pool2d(x, size, stride, pads, dilation, ceil_mode):
    """y = max over the window's cells x[i*s - begin + a*d] that lie in the input (the rest is
    -inf padding); argmax = the offset a*kw + b of the first maximum in row-major order."""
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = size, stride, pads, dilation
    N, C, H, W = x.shape
    OH = ref_out_size(H, kh, sh, pt, pb, dh, ceil_mode)
    OW = ref_out_size(W, kw, sw, pl, pr, dw, ceil_mode)
    y = np.full((N, C, OH, OW), -np.inf)
    idx = np.zeros((N, C, OH, OW), dtype=int)
    for n, c, i, j in np.ndindex(N, C, OH, OW):
        found = False
        for a in range(kh):
            for b in range(kw):
                r, q = i * sh - pt + a * dh, j * sw - pl + b * dw
                if 0 <= r < H and 0 <= q < W and (not found or x[n, c, r, q] > y[n, c, i, j]):
                    y[n, c, i, j], idx[n, c, i, j], found = x[n, c, r, q], a * kw + b, True
        assert found, "a window of padding only"
    return y, idx


def ref_max_pool2d_grad(dy, idx, input_size, size, stride, pads, dilation):
    """dX[i*s - begin + a*d] += dY[i] at each window's argmax (a, b)."""
    (kh, kw), (sh, sw), ((pt, _), (pl, _)), (dh, dw) = size, stride, pads, dilation
    dx = np.zeros(dy.shape[:2] + tuple(input_size))
    for n, c, i, j in np.ndindex(*dy.shape):
        a, b = divmod(idx[n, c, i, j], kw)
        dx[n, c, i * sh - pt + a * dh, j * sw - pl + b * dw] += dy[n, c, i, j]
    return dx


def ref_max_pool2d_gather(v, idx, size, stride, pads, dilation):
    (kh, kw), (sh, sw), ((pt, _), (pl, _)), (dh, dw) = size, stride, pads, dilation
    out = np.zeros(idx.shape)
    for n, c, i, j in np.ndindex(*idx.shape):
        a, b = divmod(idx[n, c, i, j], kw)
        out[n, c, i, j] = v[n, c, i * sh - pt + a * dh, j * sw - pl + b * dw]
    return out


@st.composite
def pool_configs(draw):
    """Window 1-3, dilation 1-3, stride 1-3, each side's padding below the dilated
    window (at most 2), ceil_mode; sizes that give every window an input cell."""
    size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    extent = [d * (k - 1) + 1 for k, d in zip(size, dilation)]
    pads = tuple((draw(st.integers(0, min(2, e - 1))), draw(st.integers(0, min(2, e - 1)))) for e in extent)
    ceil_mode = draw(st.booleans())
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    for n, k, s, (b, e), d in zip((H, W), size, stride, pads, dilation):
        assume(d * (k - 1) + 1 <= n + b + e and not has_empty_window(n, k, s, b, e, d, ceil_mode))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W), size=size, stride=stride,
                padding=pads, dilation=dilation, ceil_mode=ceil_mode, seed=draw(st.integers(0, 2**16)))


def geo(cfg):
    return dict(size=cfg["size"], stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
                ceil_mode=cfg["ceil_mode"])


def ref_geo(cfg):
    return dict(size=cfg["size"], stride=cfg["stride"], pads=cfg["padding"], dilation=cfg["dilation"])


# =========================================================================== max pooling: tests
@examples(25)
@given(pool_configs())
def test_max_pool2d_configs_match_the_reference(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.integers(-3, 4, cfg["shape"]).astype(np.float64)  # many ties: the first maximum wins
    y_ref, idx_ref = ref_max_pool2d(x, **ref_geo(cfg), ceil_mode=cfg["ceil_mode"])
    dy, v = rng.standard_normal(y_ref.shape), rng.standard_normal(x.shape)
    g = geo(cfg)

    def build(x, dy, v):
        y = gd.max_pool2d(x, **g)
        idx = gd.max_pool2d_argmax(x, y, **g)
        return [y, idx, gd.grad(y, [x], grad_output=dy)[0], gd.max_pool2d_gather(v, idx, **g)]

    for optimize in (False, True):  # True: the pooling and its argmax fused into one op
        y, idx, gx, gathered = run(build, x, dy, v, optimize=optimize)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(idx, idx_ref)
        np.testing.assert_allclose(gx, ref_max_pool2d_grad(dy, idx_ref, x.shape[2:], **ref_geo(cfg)),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(gathered, ref_max_pool2d_gather(v, idx_ref, **ref_geo(cfg)))


@examples(15)
@given(pool_configs())
def test_max_pool2d_configs_vjp_and_double_vjp(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = distinct(rng, cfg["shape"])
    g = geo(cfg)
    assert_vjps(lambda x: gd.max_pool2d(x, **g), [x])
    dy = rng.standard_normal(run(lambda x: gd.max_pool2d(x, **g), x).shape)

    def grad_of_pool(dy, x):  # linear in dy; x only routes
        idx = gd.max_pool2d_argmax(x, gd.max_pool2d(x, **g), **g)
        return gd.max_pool2d_grad(dy, idx, x.shape[2:], **g)

    assert_vjps(grad_of_pool, [dy, x], wrt=[0])


@pytest.mark.parametrize("H, W, size, stride, padding, dilation, ceil_mode", [
    (9, 8, 3, 2, 1, 2, False),
    (9, 8, 3, 2, 1, 2, True),
    (5, 5, 2, 2, 1, 1, True),    # the last window would start in the right padding: dropped
    (7, 6, 3, 2, 0, 1, True),    # Caffe's rounding up (no padding: PyTorch's rule agrees)
    (8, 11, (2, 3), (3, 2), (1, 1), (3, 2), True),
    (10, 10, 2, 3, 0, 4, False),
    (6, 7, 3, 1, 1, (1, 3), True),
])
def test_max_pool2d_dilation_and_ceil_mode_match_torch(H, W, size, stride, padding, dilation, ceil_mode):
    rng = np.random.default_rng(3)
    x = distinct(rng, (2, 3, H, W))
    tx = torch.tensor(x, requires_grad=True)
    ty = F.max_pool2d(tx, size, stride, padding, dilation=dilation, ceil_mode=ceil_mode)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    for optimize in (False, True):
        y, gx = run(lambda x, dy: [gd.max_pool2d(x, size, stride, padding, dilation, ceil_mode),
                                   gd.grad(gd.max_pool2d(x, size, stride, padding, dilation, ceil_mode), [x],
                                           grad_output=dy)[0]], x, dy, optimize=optimize)
        np.testing.assert_array_equal(y, ty.detach().numpy())
        np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pads, stride", [(((0, 1), (1, 0)), 2), (((2, 0), (0, 2)), 1), (((1, 2), (2, 1)), 3)])
def test_asymmetric_padding_matches_torch_on_an_explicitly_padded_input(pads, stride):
    """((top, bottom), (left, right)) -inf padding = F.pad(x, (left, right, top, bottom), -inf), then pooling."""
    rng = np.random.default_rng(4)
    x = distinct(rng, (2, 2, 7, 8))
    ((t, b), (l, r)) = pads
    tx = torch.tensor(x, requires_grad=True)
    ty = F.max_pool2d(F.pad(tx, (l, r, t, b), value=-np.inf), 3, stride)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    y, gx = run(lambda x, dy: [gd.max_pool2d(x, 3, stride, pads),
                               gd.grad(gd.max_pool2d(x, 3, stride, pads), [x], grad_output=dy)[0]], x, dy)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_max_pool2d_node_attributes():
    x = gd.placeholder((None, 4, 9, 9), "float64", "x")
    y = gd.max_pool2d(x, 3, 2, padding=((0, 1), (1, 2)), dilation=(2, 1), ceil_mode=True)
    op = y.op
    assert (op.size, op.stride, op.padding, op.padding_end, op.dilation, op.ceil_mode) == \
        ((3, 3), (2, 2), (0, 1), (1, 2), (2, 1), True)
    # H: ceil((9 + 1 - 5) / 2) + 1 = 4; W: ceil((9 + 3 - 3) / 2) + 1 = 6, but the 6th window would
    # start at 5 * 2 = 10, past the input and its leading padding (9 + 1): 5
    assert y.shape == (None, 4, 4, 5)
    sym = gd.max_pool2d(x, 3, 2, 1)
    assert (sym.op.padding, sym.op.padding_end, sym.op.dilation, sym.op.ceil_mode) == ((1, 1), (1, 1), (1, 1), False)
    (gx,) = gd.grad(gd.sum(y), [x])
    assert gx.op.name == "max_pool2d_grad" and gx.shape == x.shape
    assert {k: gx.op.attrs[k] for k in ("padding", "padding_end", "dilation", "ceil_mode")} == \
        {"padding": (0, 1), "padding_end": (1, 2), "dilation": (2, 1), "ceil_mode": True}


@pytest.mark.parametrize("shape, kwargs, error, message", [
    ((1, 1, 8, 8), dict(size=2, dilation=0), gd.ShapeError, r"dilation must be >= 1, got \(0, 0\)"),
    ((1, 1, 8, 8), dict(size=2, dilation=2, padding=3),
     gd.ShapeError, r"padding \(3, 3\) must be smaller than the dilated window \(3, 3\)"),
    ((1, 1, 8, 8), dict(size=3, padding=((0, 3), (0, 0))),
     gd.ShapeError, r"padding \(\(0, 3\), \(0, 0\)\) must be smaller than the pool size"),
    ((1, 1, 8, 8), dict(size=2, padding=((0, -1), (0, 0))), gd.ShapeError, r"padding must be >= 0"),
    ((1, 1, 1, 8), dict(size=(2, 1), stride=1, dilation=(3, 1), padding=((2, 2), (0, 0))),
     gd.ShapeError, r"window 0 along H reads only padding"),
    ((1, 1, 3, 8), dict(size=(3, 2), dilation=(2, 1)),
     gd.ShapeError, r"pool size 3 dilated by 2 \(5\) is larger than the padded input \(H: 3 \+ 2\*0 = 3\)"),
    ((1, 1, 8, 8), dict(size=2, padding=((1, 2, 3), (0, 0))), TypeError, r"padding must be an int, a pair"),
    ((1, 1, 8, 8), dict(size=2, ceil_mode="yes"), TypeError, r"ceil_mode must be a bool"),
])
def test_max_pool2d_config_errors(shape, kwargs, error, message):
    x = gd.placeholder(shape, "float64", name="fmap")
    with pytest.raises(error, match=message):
        gd.max_pool2d(x, **kwargs)


def test_a_window_of_padding_only_is_refused_at_run_time_where_the_size_was_unknown():
    x = gd.placeholder((1, 1, None, 8), "float64", "x")
    y = gd.max_pool2d(x, (2, 1), 1, padding=((2, 2), (0, 0)), dilation=(3, 1))
    f = gd.compile(y, inputs=[x])
    assert f(np.ones((1, 1, 4, 8))).shape == (1, 1, 5, 8)
    with pytest.raises(gd.ShapeError, match="window 0 along H reads only padding"):
        f(np.ones((1, 1, 1, 8)))


def test_ceil_mode_gradient_of_a_window_past_the_input_goes_to_its_input_cells():
    """The last ceil_mode window hangs over the input's end: its gradient still goes to
    its own (real) maximum, also where every real cell is -inf."""
    x = np.array([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]]).repeat(2, axis=2)
    x[0, 0, :, 4] = -np.inf
    y, gx = run(lambda x: [gd.max_pool2d(x, 2, 2, ceil_mode=True),
                           gd.grad(gd.sum(gd.max_pool2d(x, 2, 2, ceil_mode=True)), [x])[0]], x)
    assert y.shape == (1, 1, 1, 3) and y[0, 0, 0, 2] == -np.inf
    np.testing.assert_array_equal(gx[0, 0], [[0, 1, 0, 1, 1], [0, 0, 0, 0, 0]])


# =========================================================================== LRN on 3-D and 5-D inputs
def ref_lrn_nd(x, size, alpha, beta, k):
    """y_c = x_c / (k + alpha sum_{c - size//2 <= j <= c + (size-1)//2} x_j^2)^beta, axis 1, any ndim."""
    y = np.zeros_like(x)
    C = x.shape[1]
    for c in range(C):
        s = sum(x[:, j] ** 2 for j in range(C) if -(size // 2) <= j - c <= (size - 1) // 2)
        y[:, c] = x[:, c] / (k + alpha * s) ** beta
    return y


LRN_SHAPES = [(2, 6, 7), (1, 3, 1), (2, 5, 2, 3, 4), (1, 7, 3, 1, 2), (1, 4, 2, 2, 2, 2)]


@pytest.mark.parametrize("shape", LRN_SHAPES)
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_lrn_on_nd_inputs_matches_the_reference_and_torch(shape, size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal(shape) * 2
    alpha, beta, k = 0.05, 0.75, 2.0
    dy = rng.standard_normal(shape)
    y, gx = run(lambda x, dy: [gd.lrn(x, size, alpha, beta, k),
                               gd.grad(gd.lrn(x, size, alpha, beta, k), [x], grad_output=dy)[0]], x, dy)
    np.testing.assert_allclose(y, ref_lrn_nd(x, size, alpha, beta, k), rtol=1e-12, atol=1e-14)
    tx = torch.tensor(x, requires_grad=True)
    ty = F.local_response_norm(tx, size, alpha=alpha * size, beta=beta, k=k)  # torch divides alpha by size
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 5, 4), (1, 4, 2, 3, 2)])
@pytest.mark.parametrize("size", [2, 3, 11])  # 11: the block-scan window sums
def test_lrn_on_nd_inputs_vjp_and_double_vjp(shape, size):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    assert_vjps(lambda x: gd.lrn(x, size, 0.1, 0.75, 1.5), [x])
    assert_vjps(lambda x: gd.window_sum_channels(x, size), [x])
    dy = rng.standard_normal(shape)

    def lrn_grad(x, dy):  # the fused backward op, differentiated in both inputs
        return gd.grad(gd.lrn(x, size, 0.1, 0.75, 1.5), [x], grad_output=dy)[0]

    assert_vjps(lrn_grad, [x, dy])


def test_lrn_within_stays_2d_and_lrn_needs_a_channel_axis():
    with pytest.raises(gd.ShapeError, match=r"expects a tensor \(N, C, \.\.\.\) of 3 or more dimensions"):
        gd.lrn(gd.placeholder((4, 5), "float64", "h"), 3)
    with pytest.raises(gd.ShapeError, match=r"lrn_within_scale: v .*expects a 4-D tensor \(NCHW\)"):
        gd.lrn_within(gd.placeholder((1, 2, 3, 4, 5), "float64", "v"), 3)
    y = gd.lrn(gd.placeholder((None, 8, 5), "float64", "seq"), 5)
    assert y.shape == (None, 8, 5) and y.op.name == "lrn_normalize"


# =========================================================================== matmul with 1-D operands
MATMUL_SHAPES = [((4,), (4, 3)), ((5, 4), (4,)), ((4,), (4,)), ((2, 5, 4), (4,)), ((4,), (3, 4, 2)),
                 ((1,), (1, 1))]


@pytest.mark.parametrize("a_shape, b_shape", MATMUL_SHAPES)
def test_matmul_with_vectors_matches_numpy_and_torch(a_shape, b_shape):
    rng = np.random.default_rng(len(a_shape) * 10 + len(b_shape))
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    want = a @ b
    dy = rng.standard_normal(np.shape(want))
    y, ga, gb, y_op = run(lambda a, b, dy: [gd.matmul(a, b), *gd.grad(gd.matmul(a, b), [a, b], grad_output=dy),
                                           a @ b], a, b, dy)
    assert y.shape == np.shape(want)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y_op, want, rtol=1e-12, atol=1e-12)
    # The VJP from its formula: dA = dY B^T, dB = A^T dY on the promoted operands.
    a2, b2 = (a[None] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
    dy2 = np.reshape(dy, np.shape(a2 @ b2))
    ga_ref = np.sum(dy2 @ np.swapaxes(b2, -1, -2), axis=tuple(range(dy2.ndim - a2.ndim))).reshape(a.shape)
    gb_ref = np.sum(np.swapaxes(a2, -1, -2) @ dy2, axis=tuple(range(dy2.ndim - b2.ndim))).reshape(b.shape)
    np.testing.assert_allclose(ga, ga_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, gb_ref, rtol=1e-12, atol=1e-12)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    torch.matmul(ta, tb).backward(torch.tensor(dy))
    np.testing.assert_allclose(ga, ta.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("a_shape, b_shape", MATMUL_SHAPES)
def test_matmul_with_vectors_vjp_and_double_vjp(a_shape, b_shape):
    rng = np.random.default_rng(11)
    assert_vjps(gd.matmul, [rng.standard_normal(a_shape), rng.standard_normal(b_shape)])


def test_matmul_vector_shapes_and_errors():
    v = gd.placeholder((None,), "float64", "v")
    assert gd.matmul(v, gd.placeholder((5, 3), "float64")).shape == (3,)
    assert gd.matmul(gd.placeholder((None, 5), "float64"), gd.placeholder((5,), "float64")).shape == (None,)
    assert gd.matmul(gd.placeholder((5,), "float64"), gd.placeholder((5,), "float64")).shape == ()
    with pytest.raises(gd.ShapeError, match=r"matmul: a \(4,\) @ b \(5, 3\): inner dimensions 4 != 5"):
        gd.matmul(gd.placeholder((4,), "float64", "a"), gd.placeholder((5, 3), "float64", "b"))
    with pytest.raises(gd.ShapeError, match=r"matmul: .*operands need at least 1 dimension"):
        gd.matmul(gd.constant(2.0), gd.placeholder((5,), "float64"))


def test_summary_counts_the_multiply_adds_of_vector_products():
    from visualize.summary import node_macs
    assert node_macs(gd.matmul(gd.placeholder((4,)), gd.placeholder((4, 3)))) == 12  # no example axis: all of it
    assert node_macs(gd.matmul(gd.placeholder((None, 4)), gd.placeholder((4,)))) == 4  # per example
    assert node_macs(gd.matmul(gd.placeholder((4,)), gd.placeholder((4,)))) == 4


# =========================================================================== ONNX export and import
def onnx_round_trip(build, shapes, path, expect_ops):
    """Export ``build(*placeholders)`` (float32), check the file (onnx.checker, ONNX's strict
    shape inference on the outputs), run it in ONNX Runtime, load it back: all three agree."""
    onnx = needs.module("onnx", "pip install -e '.[interop]'")
    ort = needs.module("onnxruntime", "pip install -e '.[interop]'")
    rng = np.random.default_rng(0)
    xs = [gd.placeholder(s, "float32", f"x{i}") for i, s in enumerate(shapes)]
    outputs = [build(*xs)]
    model = gd.onnx.export(outputs, xs, path)
    onnx.checker.check_model(str(path), full_check=True)
    assert expect_ops <= {n.op_type for n in model.graph.node}
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    out_type = inferred.graph.output[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in out_type.shape.dim]
    assert dims == list(outputs[0].shape)
    arrays = [distinct(rng, tuple(2 if d is None else d for d in s)).astype(np.float32) for s in shapes]
    want = gd.compile(outputs, inputs=xs)(*arrays)[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: a for i, a in zip(session.get_inputs(), arrays)})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    loaded = gd.onnx.load(path)
    back = gd.compile(loaded.outputs, inputs=loaded.inputs)(*arrays)[0]
    np.testing.assert_allclose(back, want, rtol=1e-5, atol=1e-6)
    return model, loaded



def onnx_attr(a):
    return list(a.ints) if a.ints else a.i


ONNX_CASES = {
    "pool_dilation": (lambda x: gd.max_pool2d(x, 3, 2, 1, dilation=2), [(None, 3, 9, 8)], {"MaxPool"}),
    "pool_ceil": (lambda x: gd.max_pool2d(x, 3, 2, 0, ceil_mode=True), [(None, 3, 8, 8)], {"MaxPool"}),
    "pool_ceil_drops_last": (lambda x: gd.max_pool2d(x, 2, 2, 1, ceil_mode=True), [(None, 2, 5, 5)], {"MaxPool"}),
    "pool_asymmetric": (lambda x: gd.max_pool2d(x, 3, 2, ((0, 1), (2, 1))), [(None, 2, 7, 8)], {"MaxPool"}),
    "pool_pad_beyond_window": (lambda x: gd.max_pool2d(x, 2, 1, ((3, 0), (0, 2)), dilation=(4, 3), ceil_mode=True),
                               [(None, 2, 7, 6)], {"Pad", "MaxPool"}),
    "lrn_3d": (lambda x: gd.lrn(x, 3, 0.1, 0.75, 2.0), [(None, 6, 5)], {"LRN"}),
    "lrn_5d": (lambda x: gd.lrn(x, 5, 0.1, 0.75, 2.0), [(None, 7, 2, 3, 2)], {"LRN"}),
    "lrn_5d_even": (lambda x: gd.lrn(x, 4, 0.1, 0.6, 1.5), [(None, 5, 2, 2, 3)], {"AveragePool", "Pow"}),
    "matmul_vector_matrix": (gd.matmul, [(4,), (4, 3)], {"MatMul"}),
    "matmul_matrix_vector": (gd.matmul, [(None, 4), (4,)], {"MatMul"}),
    "matmul_dot": (gd.matmul, [(4,), (4,)], {"MatMul"}),
}


@pytest.mark.numpy_only(reason="ONNX files are run by ONNX Runtime; the graph's own run is checked on both above")
@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_onnx_export_and_import(case, tmp_path):
    build, shapes, ops = ONNX_CASES[case]
    model, loaded = onnx_round_trip(build, shapes, tmp_path / f"{case}.onnx", ops)
    names = {n.op.name for n in gd.toposort(loaded.outputs)}
    if case.startswith("pool"):
        pool = next(n for n in gd.toposort(loaded.outputs) if n.op.name == "max_pool2d")
        ours = build(gd.placeholder(shapes[0], "float32"))
        assert pool.shape == ours.shape
        written = {a.name: onnx_attr(a) for a in next(n for n in model.graph.node if n.op_type == "MaxPool").attribute}
        if case == "pool_ceil_drops_last":
            # ONNX's shape inference keeps a last window that starts in the end padding (ONNX Runtime,
            # PyTorch and graphdiff drop it): written in floor mode with the end padding that gives
            # graphdiff's windows
            assert "ceil_mode" not in written and written["pads"] == [1, 1, 0, 0]
        elif case == "pool_pad_beyond_window":  # pads ONNX Runtime refuses (>= the window): a -inf Pad first
            assert written["pads"] == [0, 0, 0, 0]
        else:  # written as the same attributes, read back as them
            assert pool.op.attrs == ours.op.attrs
            assert written.get("ceil_mode", 0) == int(ours.op.ceil_mode)
            assert written.get("dilations", [1, 1]) == list(ours.op.dilation)
    if case.startswith("lrn") and not case.endswith("even"):
        assert "lrn_normalize" in names and len(next(iter(loaded.outputs)).shape) == len(shapes[0])


@pytest.mark.numpy_only(reason="an ONNX file's import")
def test_onnx_maxpool_with_ceil_mode_and_dilations_loads_as_onnx_runtime_runs_it(tmp_path):
    """A file written elsewhere: ceil_mode=1, dilations, asymmetric pads."""
    onnx = needs.module("onnx", "pip install -e '.[interop]'")
    ort = needs.module("onnxruntime", "pip install -e '.[interop]'")
    from onnx import TensorProto, helper
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 2], pads=[1, 0, 0, 1],
                            dilations=[2, 1], ceil_mode=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 5])])
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = distinct(np.random.default_rng(1), (1, 2, 8, 9)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    loaded = gd.onnx.load(path)
    (y,) = loaded.outputs
    assert (y.op.padding, y.op.padding_end, y.op.dilation, y.op.ceil_mode) == ((1, 0), (0, 1), (2, 1), True)
    np.testing.assert_array_equal(gd.compile(loaded.outputs, inputs=loaded.inputs)(x)[0], want)


@pytest.mark.numpy_only(reason="an ONNX file's import")
@pytest.mark.parametrize("shape", [(2, 6, 5), (1, 5, 2, 3, 2)])
def test_onnx_lrn_node_on_3d_and_5d_inputs_loads_as_lrn(shape, tmp_path):
    """ONNX's LRN takes (N, C, D1, ..., Dk); ONNX divides alpha by size, graphdiff does not."""
    onnx = needs.module("onnx", "pip install -e '.[interop]'")
    from onnx import TensorProto, helper
    node = helper.make_node("LRN", ["x"], ["y"], size=3, alpha=0.3, beta=0.75, bias=2.0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    path = tmp_path / "lrn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    loaded = gd.onnx.load(path)
    (y,) = loaded.outputs
    assert y.op.name == "lrn_normalize" and y.op.alpha == pytest.approx(0.1) and y.shape == shape
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    got = gd.compile(loaded.outputs, inputs=loaded.inputs)(x)[0]
    np.testing.assert_allclose(got, ref_lrn_nd(x.astype(np.float64), 3, 0.1, 0.75, 2.0), rtol=1e-5)
