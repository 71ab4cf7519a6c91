"""The kernels' threading helpers: GEMMs split over threads while the BLAS runs
on one thread, and the BLAS's own thread count restored afterwards."""
import numpy as np
import pytest

import graphdiff as gd
from graphdiff.kernels import parallel

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


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
