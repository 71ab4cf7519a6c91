"""Matrix product kernel on plain arrays, for NumPy and CuPy (CuPy GEMMs go
through :func:`graphdiff.kernels.device.gemm`).

``matmul(xp, a, b, out=None)`` is ``xp.matmul`` with one CPU-specific choice:
the orientation of 2-D products with few output rows. OpenBLAS threads an
sgemm over its output rows, and a product like AlexNet's fc6, ``h @ w`` with
``h`` ``(32, 9216)`` and ``w`` ``(9216, 4096)``, runs at ~10 GFLOP/s as is but
~50 GFLOP/s as the transposed product ``(w^T @ h^T)^T`` (4096 output rows):
measured 240 ms vs 48 ms here on two cores. The transposes are free (GEMM
"T" flags); only the small result ``(N, M)`` is copied back to ``(M, N)``.
"""

from .parallel import gemm, workspace

# Transpose only products big enough to matter (multiply-adds), where the
# output has fewer rows than columns.
TRANSPOSE_MIN_WORK = 1 << 24


def matmul(xp, a, b, out=None):
    """``a @ b`` (NumPy semantics), written into ``out`` when given."""
    if (xp.__name__ == "numpy" and a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype
            and a.shape[0] < b.shape[1] and a.shape[0] * a.shape[1] * b.shape[1] >= TRANSPOSE_MIN_WORK):
        M, N = a.shape[0], b.shape[1]
        if out is None:
            out = xp.empty((M, N), dtype=a.dtype)
        yt = workspace(xp, "matmul_t", (N, M), a.dtype)
        gemm(xp, b.T, a.T, out=yt)  # (a @ b)^T = b^T @ a^T, with N output rows
        out[...] = yt.T
        return out
    return gemm(xp, a, b, out=out)
