"""Tests for average pooling (graphdiff/ops/avg_pool.py): fixed windows and adaptive bins.

* Naive references with explicit loops (the mean of each window; the gradient
  spread over each window) against the compiled ops and their gradients.
* float64 finite-difference checks of the VJP and double VJP of all four ops.
* PyTorch as an outside oracle (values and gradients); shape errors.
"""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import graphdiff as gd
from test_cnn_ops import assert_vjps, examples, pool_configs, run

# Each test runs on NumPy and on CuPy (the stand-in in CI; see conftest.py).
pytestmark = pytest.mark.each_backend


# =========================================================================== naive references
def ref_avg_pool2d(x, size, stride, padding, count_include_pad):
    """y_ij = sum over window (i, j) of Xpad / (kh*kw, or the unpadded entries in the window)."""
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    N, C, H, W = x.shape
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, C, OH, OW))
    for n, c, i, j in np.ndindex(N, C, OH, OW):
        total, real = 0.0, 0
        for a in range(kh):
            for b in range(kw):
                r, s = i * sh + a - ph, j * sw + b - pw
                if 0 <= r < H and 0 <= s < W:
                    total += x[n, c, r, s]
                    real += 1
        y[n, c, i, j] = total / (kh * kw if count_include_pad else real)
    return y


def ref_avg_pool2d_grad(dy, input_size, size, stride, padding, count_include_pad):
    """dX[i*sh + a, j*sw + b] += dy_ij / divisor_ij; overlapping windows add up; padding dropped."""
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    H, W = input_size
    N, C, OH, OW = dy.shape
    dx = np.zeros((N, C, H, W))
    for n, c, i, j in np.ndindex(N, C, OH, OW):
        cells = [(i * sh + a - ph, j * sw + b - pw) for a in range(kh) for b in range(kw)]
        cells = [(r, s) for r, s in cells if 0 <= r < H and 0 <= s < W]
        divisor = kh * kw if count_include_pad else len(cells)
        for r, s in cells:
            dx[n, c, r, s] += dy[n, c, i, j] / divisor
    return dx


def bins(n, out):
    """PyTorch's adaptive bins: [floor(i*n/out), ceil((i+1)*n/out))."""
    return [(i * n // out, -(-(i + 1) * n // out)) for i in range(out)]


def ref_adaptive_avg_pool2d(x, output_size):
    N, C, H, W = x.shape
    y = np.zeros((N, C) + tuple(output_size))
    for i, (h0, h1) in enumerate(bins(H, output_size[0])):
        for j, (w0, w1) in enumerate(bins(W, output_size[1])):
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def ref_adaptive_avg_pool2d_grad(dy, input_size, output_size):
    N, C = dy.shape[:2]
    dx = np.zeros((N, C) + tuple(input_size))
    for i, (h0, h1) in enumerate(bins(input_size[0], output_size[0])):
        for j, (w0, w1) in enumerate(bins(input_size[1], output_size[1])):
            dx[:, :, h0:h1, w0:w1] += dy[:, :, i, j][:, :, None, None] / ((h1 - h0) * (w1 - w0))
    return dx


# =========================================================================== configurations
def avg_geometry(cfg, count_include_pad):
    return dict(size=cfg["size"], stride=cfg["stride"], padding=cfg["padding"], count_include_pad=count_include_pad)


def ref_geometry(cfg, count_include_pad):
    return dict(size=cfg["size"], stride=cfg["stride"] or cfg["size"], padding=cfg["padding"],
                count_include_pad=count_include_pad)


@st.composite
def adaptive_configs(draw):
    """Input 1-9 x 1-9, output 1-7 x 1-7: bins that divide, overlap, or repeat (output > input)."""
    return dict(shape=(draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 9)),
                       draw(st.integers(1, 9))),
                output_size=(draw(st.integers(1, 7)), draw(st.integers(1, 7))), seed=draw(st.integers(0, 2**16)))


EDGE_POOL = dict(N=2, C=3, H=5, W=7, size=(3, 3), stride=(2, 2), padding=(1, 1), seed=1)  # AlexNet-like, padded


# =========================================================================== avg_pool2d
@examples(20)
@given(pool_configs(), st.booleans())
@example(EDGE_POOL, False).via("edge case")
def test_avg_pool2d_and_its_gradient_match_the_reference(cfg, count_include_pad):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["N"], cfg["C"], cfg["H"], cfg["W"]))
    ref = ref_geometry(cfg, count_include_pad)
    y_ref = ref_avg_pool2d(x, **ref)
    dy = rng.standard_normal(y_ref.shape)
    geo = avg_geometry(cfg, count_include_pad)
    y, gx = run(lambda x, dy: [gd.avg_pool2d(x, **geo), gd.grad(gd.avg_pool2d(x, **geo), [x], grad_output=dy)[0]],
                x, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, ref_avg_pool2d_grad(dy, x.shape[2:], **ref), rtol=1e-12, atol=1e-12)


@examples(20)
@given(pool_configs(), st.booleans())
def test_avg_pool2d_vjp_and_double_vjp(cfg, count_include_pad):
    x = np.random.default_rng(cfg["seed"]).standard_normal((cfg["N"], cfg["C"], cfg["H"], cfg["W"]))
    geo = avg_geometry(cfg, count_include_pad)
    assert_vjps(lambda x: gd.avg_pool2d(x, **geo), [x])


@examples(15)
@given(pool_configs(), st.booleans())
def test_avg_pool2d_grad_vjp_and_double_vjp(cfg, count_include_pad):
    rng = np.random.default_rng(cfg["seed"])
    geo = avg_geometry(cfg, count_include_pad)
    H, W = cfg["H"], cfg["W"]
    y = run(lambda x: gd.avg_pool2d(x, **geo), np.zeros((cfg["N"], cfg["C"], H, W)))
    dy = rng.standard_normal(y.shape)
    assert_vjps(lambda dy: gd.avg_pool2d_grad(dy, (H, W), **geo), [dy])


def test_avg_pool2d_graph_of_its_gradient_and_grad_of_grad():
    x = gd.placeholder((None, 96, 55, 55), name="fmap")
    y = gd.avg_pool2d(x, 3, stride=2)
    assert y.shape == (None, 96, 27, 27) and y.op.name == "avg_pool2d" and y.op.count_include_pad is True
    assert gd.avg_pool2d(x, 5).op.stride == (5, 5)  # stride defaults to size
    (gx,) = gd.grad(gd.sum(y), [x])
    assert gx.op.name == "avg_pool2d_grad" and gx.kind == "gradient" and gx.shape == x.shape
    dy = gd.placeholder((None, 96, 27, 27), name="dy")
    v = gd.placeholder((None, 96, 55, 55), name="v")
    (gdy,) = gd.grad(gd.sum(gd.avg_pool2d_grad(dy, (55, 55), 3, stride=2) * v), [dy])
    assert gdy.op.name == "avg_pool2d" and gdy.shape == dy.shape  # the transpose of the transpose


@pytest.mark.parametrize("shape, kwargs, message", [
    ((1, 1, 8, 8), dict(size=3, padding=3), r"padding \(3, 3\) must be smaller than the pool size"),
    ((1, 1, 2, 8), dict(size=(5, 2), padding=1), r"pool size 5 is larger than the padded input \(H: 2 \+ 2\*1 = 4\)"),
    ((1, 8, 8), dict(size=2), r"expects a 4-D tensor \(NCHW\)"),
    ((1, 1, 8, 8), dict(size=0), r"pool size must be >= 1"),
])
def test_avg_pool2d_shape_errors(shape, kwargs, message):
    x = gd.placeholder(shape, name="fmap")
    with pytest.raises(gd.ShapeError, match=message) as err:
        gd.avg_pool2d(x, **kwargs)
    assert str(err.value).startswith("avg_pool2d: fmap (")


def test_avg_pool2d_rejects_integers_and_mis_shaped_gradients():
    with pytest.raises(gd.ShapeError, match="needs a float input"):
        gd.avg_pool2d(gd.placeholder((1, 1, 4, 4), "int64", name="ints"), 2)
    with pytest.raises(gd.ShapeError, match=r"avg_pool2d_grad: dy \(1, 1, 3, 3\): dy must have shape \(1, 1, 2, 2\)"):
        gd.avg_pool2d_grad(gd.placeholder((1, 1, 3, 3), name="dy"), (4, 4), 2)


# =========================================================================== adaptive_avg_pool2d
@examples(25)
@given(adaptive_configs())
@example(dict(shape=(2, 3, 13, 13), output_size=(6, 6), seed=0)).via("torchvision AlexNet's 13 -> 6")
def test_adaptive_avg_pool2d_and_its_gradient_match_the_reference(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["shape"])
    out = cfg["output_size"]
    dy = rng.standard_normal(cfg["shape"][:2] + out)
    y, gx = run(lambda x, dy: [gd.adaptive_avg_pool2d(x, out),
                               gd.grad(gd.adaptive_avg_pool2d(x, out), [x], grad_output=dy)[0]], x, dy)
    np.testing.assert_allclose(y, ref_adaptive_avg_pool2d(x, out), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, ref_adaptive_avg_pool2d_grad(dy, x.shape[2:], out), rtol=1e-12, atol=1e-12)


@examples(20)
@given(adaptive_configs())
def test_adaptive_avg_pool2d_and_its_gradient_vjp_and_double_vjp(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["shape"])
    out = cfg["output_size"]
    assert_vjps(lambda x: gd.adaptive_avg_pool2d(x, out), [x])
    dy = rng.standard_normal(cfg["shape"][:2] + out)
    assert_vjps(lambda dy: gd.adaptive_avg_pool2d_grad(dy, cfg["shape"][2:], out), [dy])


def test_adaptive_avg_pool2d_shapes_and_errors():
    x = gd.placeholder((None, 256, None, None), name="features")
    y = gd.adaptive_avg_pool2d(x, 6)
    assert y.shape == (None, 256, 6, 6) and y.op.output_size == (6, 6)  # any input size, fixed output
    with pytest.raises(gd.ShapeError, match="the gradient needs static spatial dimensions"):
        gd.grad(gd.sum(y), [x])
    z = gd.placeholder((2, 3, 13, 13), name="z")
    (gz,) = gd.grad(gd.sum(gd.adaptive_avg_pool2d(z, (6, 5))), [z])
    assert gz.op.name == "adaptive_avg_pool2d_grad" and gz.kind == "gradient" and gz.shape == z.shape
    with pytest.raises(gd.ShapeError, match=r"adaptive_avg_pool2d: z \(2, 3, 13, 13\): output size must be >= 1"):
        gd.adaptive_avg_pool2d(z, (0, 3))
    with pytest.raises(gd.ShapeError, match="expects a 4-D tensor"):
        gd.adaptive_avg_pool2d(gd.placeholder((3, 13, 13), name="chw"), 6)
    with pytest.raises(gd.ShapeError, match=r"must have spatial size \(6, 6\)"):
        gd.adaptive_avg_pool2d_grad(gd.placeholder((2, 3, 5, 6), name="dy"), (13, 13), 6)


# =========================================================================== PyTorch as an outside oracle
@pytest.mark.parametrize("shape, size, stride, padding, count_include_pad", [
    ((2, 4, 13, 13), 3, 2, 1, True),
    ((2, 4, 13, 13), 3, 2, 1, False),
    ((1, 3, 9, 7), (2, 3), (3, 1), (1, 0), False),
    ((3, 2, 6, 6), 2, None, 0, True),
])
def test_avg_pool2d_matches_torch(shape, size, stride, padding, count_include_pad):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, size, stride, padding, count_include_pad=count_include_pad)
    dy = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(dy))
    geo = dict(size=size, stride=stride, padding=padding, count_include_pad=count_include_pad)
    y, gx = run(lambda x, dy: [gd.avg_pool2d(x, **geo), gd.grad(gd.avg_pool2d(x, **geo), [x], grad_output=dy)[0]],
                x, dy)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, output_size", [((2, 8, 13, 13), 6), ((2, 3, 5, 7), (3, 4)), ((1, 2, 3, 3), (7, 5)),
                                                ((2, 4, 6, 6), 1)])
def test_adaptive_avg_pool2d_matches_torch(shape, output_size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, output_size)
    dy = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(dy))
    y, gx = run(lambda x, dy: [gd.adaptive_avg_pool2d(x, output_size),
                               gd.grad(gd.adaptive_avg_pool2d(x, output_size), [x], grad_output=dy)[0]], x, dy)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-5, atol=1e-6)


# =========================================================================== CuPy
GPU_CASES = {
    "avg_pool2d": (lambda x: gd.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False), (2, 3, 9, 9)),
    "adaptive_avg_pool2d": (lambda x: gd.adaptive_avg_pool2d(x, (4, 3)), (2, 3, 7, 9)),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_cupy_matches_numpy(name):
    from test_gpu import _run_both  # forward, VJP and double VJP on both backends

    build, shape = GPU_CASES[name]
    results = _run_both(build, [np.random.default_rng(3).standard_normal(shape).astype(np.float32)])
    for cpu, gpu in zip(results["numpy"], results["cupy"]):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6)
