"""conv2d's dilation and asymmetric / "same" / "valid" padding (graphdiff/ops/conv.py,
graphdiff/kernels/conv.py), as the peers' op tests exercise them (PyTorch's and
Chainer's ``dilation``, TensorFlow's ``dilations`` and SAME padding with stride,
PyTorch's ``padding="same"``/``"valid"``, ONNX's asymmetric ``pads`` and ``auto_pad``).

* A naive reference per op from the slides' formula with dilation,
  ``Y_ij = sum_ab W_ab X_(i*s+a*d)(j*s+b*d)`` over the zero-padded input, and its
  two gradients; float64 finite-difference checks of the VJP and double VJP of
  ``conv2d``, ``conv2d_grad_input`` and ``conv2d_grad_weight`` over hypothesis-drawn
  geometries; PyTorch's ``F.conv2d`` on the same numbers.
* The compiler's convolution rewrites (conv + ReLU, shared columns, both
  gradients as one op) with the new attributes; oneDNN's kernels; ONNX
  export and import; shape errors; the diagrams.
"""
import os

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import graphdiff as gd
import needs
from graphdiff.kernels import choice, onednn
from op_checks import assert_conv_matches, assert_conv_vjps, assert_vjps, edge_examples, examples, four, run
from op_checks import conv_arrays as arrays_for, conv_geometry as geometry, conv_out_size as out_size, same_pads

# Each op-level test runs on NumPy and on CuPy (the stand-in in CI; see conftest.py).
pytestmark = pytest.mark.each_backend

TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


# =========================================================================== naive references
def ref_conv2d(x, w, b, stride, padding, groups, dilation):
    """``Y_ij = sum_ab W_ab X_(i*s+a*d)(j*s+b*d)`` per example and filter, summed over
    the filter's input channels, with ``X`` zero-padded by ``((top, bottom), (left, right))``."""
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, four(padding), dilation
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    OH, OW = out_size(H, kh, sh, pt, pb, dh), out_size(W, kw, sw, pl, pr, dw)
    X = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    Y = np.zeros((N, O, OH, OW))
    for n in range(N):
        for o in range(O):
            g = o // (O // groups)
            for i in range(OH):
                for j in range(OW):
                    Y[n, o, i, j] = sum(w[o, c, a, bb] * X[n, g * Cg + c, i * sh + a * dh, j * sw + bb * dw]
                                        for c in range(Cg) for a in range(kh) for bb in range(kw))
            if b is not None:
                Y[n, o] += b[o]
    return Y


def ref_grad_weight(x, dy, kernel, stride, padding, groups, dilation):
    """Slides' case 1 with dilation: ``dE/dW_ab = sum_ij dE_ij X_(i*s+a*d)(j*s+b*d)``, over the batch."""
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = kernel, stride, four(padding), dilation
    N, C = x.shape[:2]
    _, O, OH, OW = dy.shape
    Cg = C // groups
    X = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    dW = np.zeros((O, Cg, kh, kw))
    for o in range(O):
        g = o // (O // groups)
        for c in range(Cg):
            for a in range(kh):
                for bb in range(kw):
                    dW[o, c, a, bb] = sum(dy[n, o, i, j] * X[n, g * Cg + c, i * sh + a * dh, j * sw + bb * dw]
                                          for n in range(N) for i in range(OH) for j in range(OW))
    return dW


def ref_grad_input(dy, w, input_size, stride, padding, groups, dilation):
    """Slides' case 2 with dilation: every ``X_(i*s+a*d)(j*s+b*d)`` of the padded
    input gathers ``W_ab dE_ij``; the padding is cropped off."""
    (H, W), (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = input_size, stride, four(padding), dilation
    N, O, OH, OW = dy.shape
    _, Cg, kh, kw = w.shape
    dX = np.zeros((N, Cg * groups, H + pt + pb, W + pl + pr))
    for n in range(N):
        for o in range(O):
            g = o // (O // groups)
            for i in range(OH):
                for j in range(OW):
                    for c in range(Cg):
                        for a in range(kh):
                            for bb in range(kw):
                                dX[n, g * Cg + c, i * sh + a * dh, j * sw + bb * dw] += w[o, c, a, bb] * dy[n, o, i, j]
    return dX[:, :, pt:pt + H, pl:pl + W]


# =========================================================================== configurations
@st.composite
def configs(draw, max_hw=9):
    """batch 1-2, groups 1-2, channels <= 4, kernel 1-3, dilation 1-3, stride 1-3,
    each of the four paddings 0-3 (as ``(ph, pw)`` where symmetric, else nested)."""
    groups = draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = ((draw(st.integers(0, 3)), draw(st.integers(0, 3))), (draw(st.integers(0, 3)), draw(st.integers(0, 3))))
    sizes = []
    for k, d, (p0, p1) in zip(kernel, dilation, padding):
        sizes.append(draw(st.integers(max(1, (k - 1) * d + 1 - p0 - p1), max_hw)))
    return dict(N=draw(st.integers(1, 2)), C=groups * draw(st.integers(1, 2)), O=groups * draw(st.integers(1, 2)),
                H=sizes[0], W=sizes[1], kernel=kernel, stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                padding=padding, groups=groups, dilation=dilation, seed=draw(st.integers(0, 2**16)))


def config(N, C, O, H, W, kernel, stride, padding, groups, dilation, seed=0):
    return dict(N=N, C=C, O=O, H=H, W=W, kernel=kernel, stride=stride, padding=padding, groups=groups,
                dilation=dilation, seed=seed)


EDGES = [
    config(2, 2, 4, 9, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), 2, (2, 2)),   # stride 1: input grad as a convolution
    config(1, 2, 2, 5, 7, (3, 2), (2, 3), ((0, 3), (2, 0)), 1, (2, 3)),   # strides skip rows; one-sided padding
    config(2, 4, 2, 4, 4, (2, 2), (1, 1), ((3, 0), (0, 3)), 2, (3, 1)),   # padding beyond the dilated kernel
    config(1, 1, 1, 1, 9, (1, 3), (1, 2), ((0, 0), (1, 2)), 1, (1, 4)),   # height 1, kernel spans the padded width
]


# =========================================================================== the formulas
@examples(20)
@given(configs(max_hw=7), st.booleans())
@edge_examples(EDGES)
def test_dilated_asymmetric_conv2d_and_its_gradients_match_the_formulas(cfg, with_bias):
    assert_conv_matches(cfg, with_bias, ref_conv2d, ref_grad_weight, ref_grad_input)


@examples(17)
@given(configs(), st.booleans())
@edge_examples(EDGES)
def test_conv2d_and_its_gradient_ops_vjp_and_double_vjp(cfg, with_bias):
    assert_conv_vjps(cfg, with_bias)


# =========================================================================== "same" and "valid"
@pytest.mark.parametrize("H, W, kernel, stride, dilation", [
    (7, 8, (3, 3), (1, 1), (1, 1)), (7, 8, (4, 2), (1, 1), (2, 3)),   # stride 1: PyTorch's "same", n outputs
    (7, 8, (3, 3), (2, 2), (1, 1)), (9, 6, (2, 5), (3, 2), (2, 1)),   # TensorFlow's SAME with stride: ceil(n / s)
    (5, 5, (1, 1), (4, 4), (1, 1)), (4, 9, (3, 2), (5, 3), (1, 2)),   # total padding max(., 0) = 0; stride > n
])
def test_same_padding_is_tensorflows_with_the_extra_row_at_the_bottom(H, W, kernel, stride, dilation):
    rng = np.random.default_rng(H * W)
    x, w = rng.standard_normal((2, 2, H, W)), rng.standard_normal((3, 2) + kernel)
    xt = gd.placeholder(x.shape, dtype="float64", name="x")
    y = gd.conv2d(xt, w, stride=stride, padding="same", dilation=dilation)
    pads = tuple(same_pads(n, k, s, d) for n, k, s, d in zip((H, W), kernel, stride, dilation))
    assert y.shape[2:] == (-(-H // stride[0]), -(-W // stride[1]))
    assert four(y.op.padding) == pads
    np.testing.assert_allclose(gd.compile(y, [xt])(x), ref_conv2d(x, w, None, stride, pads, 1, dilation),
                               rtol=1e-12, atol=1e-12)
    valid = gd.conv2d(xt, w, stride=stride, padding="valid", dilation=dilation)
    assert valid.op.padding == (0, 0)
    assert_vjps(lambda x, w: gd.conv2d(x, w, stride=stride, padding="same", dilation=dilation), [x, w])


def test_same_with_stride_one_needs_no_static_size():
    x = gd.placeholder((None, 2, None, None), name="x")
    y = gd.conv2d(x, np.ones((3, 2, 3, 4), np.float32), padding="same", dilation=2)
    assert y.shape == (None, 3, None, None) and y.op.padding == (2, 3)  # both sides alike: the old pair form
    out = gd.compile(y, [x])(np.ones((1, 2, 6, 7), np.float32))
    assert out.shape == (1, 3, 6, 7)


# =========================================================================== PyTorch
TORCH_CASES = [  # (x shape, w shape, stride, padding, dilation, groups); padding as PyTorch takes it, or nested
    ((2, 4, 11, 10), (6, 2, 3, 3), 1, 2, 2, 2),
    ((1, 3, 12, 9), (4, 3, 3, 2), (2, 1), (1, 0), (3, 2), 1),
    ((2, 2, 8, 8), (4, 2, 3, 3), 1, "same", (2, 1), 1),
    ((2, 2, 8, 7), (2, 1, 4, 2), 1, "same", 3, 2),   # even kernel: the extra one at the end, as PyTorch
    ((1, 3, 9, 9), (2, 3, 2, 3), 2, "valid", 2, 1),
    ((2, 2, 9, 8), (4, 2, 3, 3), (2, 3), ((0, 2), (3, 1)), (1, 2), 1),  # asymmetric: F.pad, then F.conv2d
]


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")
@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups", TORCH_CASES)
def test_conv2d_matches_torch(xs, ws, stride, padding, dilation, groups):
    torch = needs.module("torch", TORCH)
    F = torch.nn.functional
    rng = np.random.default_rng(sum(xs))
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    if isinstance(padding, tuple) and not isinstance(padding[0], int):
        (pt, pb), (pl, pr) = padding
        ty = F.conv2d(F.pad(tx, (pl, pr, pt, pb)), tw, tb, stride, 0, dilation, groups)
    else:
        ty = F.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.from_numpy(dy))
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y, gx, gw, gb = run(lambda x, w, b, dy: [gd.conv2d(x, w, b, **geo)]
                        + gd.grad(gd.conv2d(x, w, b, **geo), [x, w, b], grad_output=dy), x, w, b, dy)
    for got, want in [(y, ty), (gx, tx.grad), (gw, tw.grad), (gb, tb.grad)]:
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-10)


# =========================================================================== the compiler's rewrites
@pytest.mark.parametrize("stride, padding, dilation, fused", [
    (1, ((1, 2), (2, 1)), (2, 1), "conv2d_backward"),   # stride 1, O <= 2C: both gradients from dy's columns
    (3, ((0, 1), (1, 0)), (1, 2), "im2col"),            # little window overlap: shared columns
    (2, 1, 2, None),
])
def test_compiled_rewrites_keep_dilation_and_padding(stride, padding, dilation, fused):
    """conv + ReLU, shared columns and the fused backward pair run with the new
    attributes; a dilated and an undilated convolution of one input share nothing
    (their columns differ); every result equals the unoptimized program's."""
    rng = np.random.default_rng(3)
    x = gd.placeholder((None, 4, 13, 12), dtype="float64", name="x")
    wv, bv = rng.standard_normal((4, 4, 3, 3)), rng.standard_normal(4)
    w, b = gd.variable(wv, name="w"), gd.variable(bv, name="b")
    v = gd.variable(rng.standard_normal((4, 4, 3, 3)), name="v")
    y = gd.relu(gd.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation))
    z = gd.conv2d(x, v, stride=stride, padding=padding)  # the same geometry without dilation
    loss = gd.sum(y * y) + gd.sum(z * z)
    outs = [loss] + gd.grad(loss, [x, w, v, b])
    fast, plain = gd.compile(outs, [x]), gd.compile(outs, [x], optimize=False)
    names = [n.op.name for n in fast.nodes]
    if fused is not None:  # the dilated layer's own rewrite, besides the undilated one's
        d = (dilation, dilation) if isinstance(dilation, int) else dilation
        assert sorted(n.op.attrs["dilation"] for n in fast.nodes if n.op.name == fused) == sorted([d, (1, 1)]), names
    forward = gd.compile(y, [x])
    assert "conv2d_relu" in [n.op.name for n in forward.nodes]
    for n in (2, 2, 3):  # the second call runs on the memory plan; then another batch size
        xv = rng.standard_normal((n, 4, 13, 12))
        for got, want in zip(fast(xv), plain(xv)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        want = ref_conv2d(xv, wv, bv, (stride, stride), y.inputs[0].op.padding, 1, y.inputs[0].op.dilation)
        np.testing.assert_allclose(forward(xv), np.maximum(want, 0), rtol=1e-12, atol=1e-12)


# =========================================================================== attributes and errors
def test_attributes_are_normalised_and_diagrams_show_dilation_only_where_set():
    x = gd.placeholder((None, 3, 16, 16), name="x")
    w = np.zeros((4, 3, 3, 3), np.float32)
    plain = gd.conv2d(x, w, padding=1)
    assert (plain.op.padding, plain.op.dilation) == ((1, 1), (1, 1))
    assert plain.op.describe() == "conv2d(groups=1, padding=(1, 1), stride=(1, 1))"  # as before
    y = gd.conv2d(x, w, padding=(1, (0, 2)), dilation=(2, 1))
    assert y.op.padding == ((1, 1), (0, 2)) and y.op.dilation == (2, 1) and y.shape == (None, 4, 14, 16)
    assert "dilation=(2, 1)" in y.op.describe() and "padding=((1, 1), (0, 2))" in y.op.describe()
    assert gd.conv2d(x, w, padding=((2, 2), (1, 1))).op.padding == (2, 1)  # symmetric: the old pair
    loss = gd.sum(gd.conv2d(gd.placeholder((2, 3, 16, 16), name="x2"), gd.variable(w), padding=(1, (0, 2)),
                            dilation=(2, 1)))
    for g in gd.grad(loss, [t for t in gd.toposort([loss]) if t.kind in ("placeholder", "variable")]):
        assert g.op.dilation == (2, 1) and g.op.padding == ((1, 1), (0, 2)), g.op.describe()


BAD = [  # (x shape, w shape, kwargs, error type, message pattern)
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(dilation=0), gd.ShapeError,
     r"conv2d: .*x \(1, 3, 8, 8\) .*\(4, 3, 3, 3\).*dilation must be >= 1, got \(0, 0\)"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(dilation=(1, -2)), gd.ShapeError, r"dilation must be >= 1, got \(1, -2\)"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(padding=((1, -1), (0, 0))), gd.ShapeError,
     r"padding must be >= 0, got \(\(1, -1\), \(0, 0\)\)"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(padding="full"), gd.ShapeError,
     r"conv2d: x \(1, 3, 8, 8\) .*padding must be an int, a pair \(ph, pw\), \(\(top, bottom\), \(left, right\)\), "
     r"'valid' or 'same', got 'full'"),
    ((1, 3, None, 8), (4, 3, 3, 3), dict(padding="same", stride=2), gd.ShapeError,
     r"conv2d: x \(1, 3, None, 8\) .*padding='same' with stride 2 needs a static input size \(H\)"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(dilation=4), gd.ShapeError,
     r"dilated kernel 9 = \(3 - 1\) \* 4 \+ 1 is larger than the padded input \(H: 8 \+ 2\*0 = 8\)"),
    ((1, 3, 4, 8), (4, 3, 7, 3), dict(padding=((1, 0), (0, 0))), gd.ShapeError,
     r"kernel 7 is larger than the padded input \(H: 4 \+ 1 \+ 0 = 5\)"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(dilation=1.5), TypeError, r"dilation must be an int or a pair of ints"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(padding=(1, 2, 3)), TypeError, r"padding must be an int, a pair"),
    ((1, 3, 8, 8), (4, 3, 3, 3), dict(padding=((1, 2, 3), 0)), TypeError, r"padding must be an int, a pair"),
]


@pytest.mark.parametrize("xs, ws, kwargs, error, message", BAD)
def test_bad_geometry_names_the_op_and_the_shapes(xs, ws, kwargs, error, message):
    x = gd.placeholder(xs, name="x")
    with pytest.raises(error, match=message):
        gd.conv2d(x, gd.variable(np.zeros(ws, np.float32), name="w"), **kwargs)


def test_gradient_ops_check_their_geometry_too():
    dy = gd.placeholder((1, 4, 6, 6), name="dy")
    w = gd.variable(np.zeros((4, 3, 3, 3), np.float32), name="w")
    with pytest.raises(gd.ShapeError, match=r"conv2d_grad_input: dy \(1, 4, 6, 6\) w \(4, 3, 3, 3\): "
                                            r"dilation must be >= 1"):
        gd.conv2d_grad_input(dy, w, (8, 8), dilation=(0, 1))
    with pytest.raises(gd.ShapeError, match=r"conv2d_grad_weight: .*gradient H size 6 does not match the "
                                            r"convolution's output size 4"):
        gd.conv2d_grad_weight(gd.placeholder((1, 3, 8, 8), name="x"), dy, (3, 3), dilation=2)
    # "same" resolves against the input size the gradient restores
    g = gd.conv2d_grad_input(gd.placeholder((1, 4, 4, 4), name="dy2"), w, (8, 8), stride=2, padding="same")
    assert g.op.padding == ((0, 1), (0, 1)) and g.shape == (1, 3, 8, 8)


# =========================================================================== oneDNN
onednn_here = pytest.mark.skipif(not onednn.available() and not os.environ.get("CI"),
                                 reason=f"needs oneDNN: {onednn.INSTALL} ({onednn.load_error()})")


@onednn_here
@pytest.mark.numpy_only(reason="oneDNN runs on NumPy arrays only")
@pytest.mark.parametrize("cfg", EDGES + [config(2, 4, 4, 10, 9, (3, 3), (2, 1), ((2, 0), (1, 3)), 2, (2, 3))])
def test_onednn_runs_dilation_and_asymmetric_padding(cfg):
    """float32 programs forced onto oneDNN (dilates = d - 1, padding_l / padding_r)
    against float64 on NumPy: the forward pass, both gradients and the double VJP."""
    x, w, b, dy = arrays_for(cfg)
    geo = geometry(cfg)
    values = {}
    for dtype, mode in (("float64", "numpy"), ("float32", "onednn")):
        xs = [gd.placeholder(a.shape, dtype=dtype, name=n) for n, a in zip("xwbd", (x, w, b, dy))]
        y = gd.conv2d(xs[0], xs[1], xs[2], **geo)
        gx, gw = gd.grad(gd.sum(y * xs[3]), xs[:2])
        (hw,) = gd.grad(gd.sum(gx * gx) + gd.sum(gw * gw), [xs[1]])
        f = gd.compile([y, gd.relu(y), gx, gw, hw], xs, kernels=mode)
        values[mode] = [np.asarray(v, np.float64) for v in f(*[a.astype(dtype) for a in (x, w, b, dy)])]
        if mode == "onednn":
            assert set(f.kernels.values()) == {"onednn"}, f.kernels
    for got, want in zip(values["onednn"], values["numpy"]):
        scale = max(1.0, float(np.abs(want).max()))
        assert np.abs(got - want).max() / scale < 2e-4


@onednn_here
@pytest.mark.numpy_only(reason="kernel choices are made for NumPy programs")
def test_kernel_choices_keep_dilation_and_padding():
    records = [dict(direction="forward", x=[1, 3, 8, 8], w=[4, 3, 3, 3], stride=[1, 1], padding=[[0, 2], [1, 1]],
                    groups=1, library="onednn", dilation=[2, 1]),
               dict(direction="forward", x=[1, 3, 8, 8], w=[4, 3, 3, 3], stride=[1, 1], padding=[1, 1], groups=1,
                    library="numpy")]
    try:
        choice.clear_decisions()
        choice.adopt(records)
        assert sorted(choice.decisions(), key=str) == sorted(records, key=str)
        x = gd.placeholder((1, 3, 8, 8), name="x")
        y = gd.conv2d(x, np.ones((4, 3, 3, 3), np.float32), padding=((0, 2), (1, 1)), dilation=(2, 1))
        f = gd.compile(y, [x], kernels="auto")
        f(np.ones((1, 3, 8, 8), np.float32))
        assert list(f.kernels.values()) == ["onednn"]  # the adopted choice, not the other record's
        with pytest.raises(ValueError, match="kernel choice 0 is malformed"):
            choice.adopt([dict(records[0], dilation=[1, "x"])])
    finally:
        choice.clear_decisions()


# =========================================================================== ONNX
@pytest.mark.numpy_only(reason="file export and import")
def test_onnx_export_writes_dilations_and_asymmetric_pads(tmp_path):
    needs.module("onnx", "pip install -e '.[interop]'")
    ort = needs.module("onnxruntime", "pip install -e '.[interop]'")
    rng = np.random.default_rng(0)
    x = gd.placeholder((None, 4, 11, 10), name="x")
    w = gd.variable(rng.standard_normal((6, 2, 3, 2)).astype(np.float32), name="w")
    b = gd.variable(rng.standard_normal(6).astype(np.float32), name="b")
    y = gd.conv2d(x, w, b, stride=(2, 1), padding=((0, 2), (3, 1)), groups=2, dilation=(2, 3))
    z = gd.conv2d(y, gd.variable(rng.standard_normal((3, 6, 3, 3)).astype(np.float32)), padding="same", dilation=2)
    path = tmp_path / "dilated.onnx"
    model = gd.onnx.export([z], [x], path)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    attrs = {a.name: list(a.ints) for a in convs[0].attribute if a.ints}
    assert attrs["dilations"] == [2, 3] and attrs["pads"] == [0, 3, 2, 1]  # [top, left, bottom, right]
    xv = rng.standard_normal((2, 4, 11, 10)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": xv})
    np.testing.assert_allclose(got, gd.compile(z, [x])(xv), rtol=1e-5, atol=1e-5)
    loaded = gd.onnx.load(path)  # and back
    assert loaded.outputs[0].op.dilation == (2, 2)
    np.testing.assert_allclose(gd.compile(loaded.outputs, loaded.inputs)(xv)[0], got, rtol=1e-5, atol=1e-5)


@pytest.mark.numpy_only(reason="file import")
@pytest.mark.parametrize("attrs", [
    dict(dilations=[2, 1], pads=[1, 0, 2, 3]),
    dict(auto_pad="SAME_UPPER", strides=[2, 3]),  # ONNX Runtime takes no dilation with SAME_*
    dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER"),
    dict(auto_pad="VALID", dilations=[2, 2]),
])
def test_onnx_import_reads_dilations_pads_and_auto_pad(tmp_path, attrs):
    onnx = needs.module("onnx", "pip install -e '.[interop]'")
    ort = needs.module("onnxruntime", "pip install -e '.[interop]'")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(1)
    wv = rng.standard_normal((4, 2, 3, 4)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 4], **attrs)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 9, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
                              [numpy_helper.from_array(wv, "w")])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    xv = rng.standard_normal((2, 2, 9, 11)).astype(np.float32)
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": xv})
    loaded = gd.onnx.load(path)
    got = gd.compile(loaded.outputs, loaded.inputs)(xv)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# =========================================================================== diagrams
@pytest.mark.numpy_only(reason="diagrams and tables")
def test_summary_diagram_and_explorer_take_dilated_asymmetric_convolutions():
    import visualize as vz
    rng = np.random.default_rng(2)
    x = gd.placeholder((None, 1, 9, 9), name="x")
    with gd.scope("conv1"):
        w = gd.variable(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), name="w")
        y = gd.relu(gd.conv2d(x, w, padding=((1, 0), (0, 1)), dilation=2))
    loss = gd.sum(y * y)
    table = vz.summary(loss, show=False)
    assert table.total_macs == 2 * 6 * 6 * 9  # output elements x C_in x kh x kw: dilation adds no work
    assert "dilation=(2, 2)" in vz.to_dot([loss] + gd.grad(loss, [w])).source
    page = vz.explore([loss] + gd.grad(loss, [w]), feed={x: rng.standard_normal((1, 1, 9, 9))})
    assert "conv2d" in page._repr_html_()


@pytest.mark.numpy_only(reason="the explorer's data")
def test_explorer_picture_offsets_by_the_top_left_padding_and_skips_dilated_convolutions():
    from visualize.explore import build_data
    rng = np.random.default_rng(4)
    x = gd.placeholder((1, 1, 9, 9), dtype="float64", name="x")
    w = gd.variable(rng.standard_normal((2, 1, 3, 3)), name="w")
    c = gd.conv2d(x, w, padding=((2, 0), (0, 1)))
    d = gd.conv2d(x, w, dilation=2)
    loss = gd.sum(gd.relu(c) ** 2) + gd.sum(d * d)
    xv = rng.standard_normal((1, 1, 9, 9))
    data = build_data([loss] + gd.grad(loss, [w]), feed={x: xv})
    assert str(d.id) not in data["pictures"]  # the picture draws the undilated formula only
    pic = data["pictures"][str(c.id)]
    (gc,) = gd.compile(gd.grad(loss, [c]), [x])(xv)
    k = len(pic["dE"])
    np.testing.assert_allclose(np.array(pic["dE"]), gc[0, 0, 2:2 + k, 0:k], rtol=1e-12)  # top 2, left 0
