"""The kernels' threading helpers: GEMMs split over threads while the BLAS runs
on one thread, and the BLAS's own thread count restored afterwards."""
import numpy as np
import pytest

import graphdiff as gd
from graphdiff.kernels import parallel

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads():
    """Thread counts of the BLAS libraries the kernels drive (NumPy's among them)."""
    controller = parallel._blas_controller()
    return [] if controller is None else [lib["num_threads"] for lib in controller.info()]


@pytest.fixture
def split_everything(monkeypatch):
    """Two kernel threads and no minimum size, so that every product is split."""
    monkeypatch.setattr(parallel, "NUM_THREADS", 2)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(parallel, "GEMM_SPLIT_MIN_WORK", 0)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((37, 5), (5, 3)),             # more rows than columns: split by rows
    ((3, 5), (5, 41)),             # split by columns
    ((2, 9, 4), (2, 4, 7)),        # batched (conv groups)
    ((2, 9, 4), (4, 7)),           # broadcast batch
    ((1, 1), (1, 1)),
])
def test_split_gemm_equals_matmul(split_everything, a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    want = a @ b
    with parallel.blas_on_one_thread():
        assert parallel._gemm_split
        got = parallel.gemm(np, a, b)
        out = np.full_like(want, np.nan)
        same = parallel.gemm(np, a, b, out=out)
        # transposed operands (views with a leading stride), as the conv kernels pass them
        at = parallel.gemm(np, b.swapaxes(-1, -2), a.swapaxes(-1, -2))
    assert same is out
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(out, want, rtol=1e-12)
    np.testing.assert_allclose(at, want.swapaxes(-1, -2), rtol=1e-12)
    assert not parallel._gemm_split


def test_blas_threads_restored_and_reentrant(split_everything):
    before = blas_threads()
    with parallel.blas_on_one_thread():
        if before:
            assert blas_threads() == [1] * len(before)
        with parallel.blas_on_one_thread():  # nested: no change, and leaving it keeps the outer state
            pass
        assert parallel._gemm_split
    assert blas_threads() == before
    with pytest.raises(RuntimeError):
        with parallel.blas_on_one_thread():
            raise RuntimeError("a failing kernel")
    assert blas_threads() == before and not parallel._gemm_split


def test_compiled_program_splits_gemms_and_restores_blas(split_everything, monkeypatch):
    seen = []
    real = parallel.gemm

    def spy(xp, a, b, out=None):
        seen.append(parallel._gemm_split)
        return real(xp, a, b, out=out)

    monkeypatch.setattr(parallel, "gemm", spy)
    from graphdiff.kernels import linalg
    monkeypatch.setattr(linalg, "gemm", spy)
    before = blas_threads()
    x = gd.placeholder((None, 6), dtype="float64", name="x")
    w = gd.variable(np.random.default_rng(1).standard_normal((6, 4)), name="w")
    loss = gd.sum(gd.relu(gd.matmul(x, w)))
    (gw,) = gd.grad(loss, [w])
    xv = np.random.default_rng(2).standard_normal((9, 6))
    got = gd.compile([loss, gw], [x])(xv)
    assert seen and all(seen)
    assert blas_threads() == before
    h = xv @ w.value
    np.testing.assert_allclose(got[0], np.maximum(h, 0).sum(), rtol=1e-12)
    np.testing.assert_allclose(got[1], xv.T @ (h > 0), rtol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_long_reduction_convolution_is_the_same_in_both_gemm_layouts(split_everything, groups):
    """A reduction of >= PIXEL_MAJOR_MIN_K (here 256 * 3 * 3 / groups) runs as
    cols^T @ W^T when the BLAS threads itself and as W @ cols when gemm() splits."""
    from graphdiff.kernels import conv

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 256 * groups, 5, 4))
    w = rng.standard_normal((6, 256, 3, 3))
    b = rng.standard_normal(6)
    assert 256 * 9 >= conv.PIXEL_MAJOR_MIN_K
    xg = x.reshape(2, groups, 256, 5, 4)
    xpad = np.pad(xg, ((0, 0), (0, 0), (0, 0), (1, 1), (1, 1)))
    wg = w.reshape(groups, 6 // groups, 256, 3, 3)
    want = np.zeros((2, groups, 6 // groups, 5, 4))
    for a in range(3):
        for c in range(3):
            want += np.einsum("ngchw,goc->ngohw",
                              xpad[:, :, :, a:a + 5, c:c + 4], wg[:, :, :, a, c])
    want = want.reshape(2, 6, 5, 4) + b[:, None, None]
    threaded = conv.conv2d_forward(np, x, w, b, (1, 1), (1, 1), groups)
    with parallel.blas_on_one_thread():
        split = conv.conv2d_forward(np, x, w, b, (1, 1), (1, 1), groups)
    np.testing.assert_allclose(threaded, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(split, want, rtol=1e-10, atol=1e-10)


def test_a_blas_with_more_threads_than_the_kernels_keeps_its_own_threading(split_everything, monkeypatch):
    class ManyThreadBlas:  # e.g. OpenBLAS on 16 cores, where the kernel threads stop at 8
        num_threads = 16

        def set_num_threads(self, n):
            raise AssertionError("the BLAS should keep its threads")

    class Controller:
        lib_controllers = [ManyThreadBlas()]

    monkeypatch.setattr(parallel, "_blas_controller", lambda: Controller())
    with parallel.blas_on_one_thread():
        assert not parallel.gemms_split()
