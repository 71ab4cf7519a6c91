"""CPU timings of the graphdiff array kernels against PyTorch at AlexNet layer shapes.

Run (the two OpenBLAS variables, if set, halve GEMM speed)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/ops_cpu.py [--kernels numpy onednn]

For every op and shape both sides run in this process, alternating, after a
warm-up; we print min and median milliseconds per side for the forward pass and
for forward + backward (conv: grad input + grad weight, as the one
``conv2d_backward`` op where a compiled step uses it; pooling: the forward
with its argmax, one op in a compiled training step, then the gradient;
torch's input requires grad, so its forward keeps the indices), and ratios
ours/torch (below 1: we are faster). Our side runs as in a compiled program:
into preallocated outputs (the memory plan after the first call), with the
BLAS on one thread and the big GEMMs split over the kernel threads
(``kernels.parallel.blas_on_one_thread``). Torch gets as many threads as
NumPy's BLAS. The machine may be shared: the min is the least noisy figure, and
the load average is printed so a noisy run can be recognised.

Convolutions run with each kernel library asked for (``--kernels``, default
both where the ``onednn`` extra loaded): NumPy's im2col + BLAS kernels
(``conv1``) and oneDNN's primitives (``conv1-onednn``: forward with bias, then
backward-data and backward-weights, primitives built during the warm-up).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from graphdiff.kernels import choice, conv, lrn, onednn, parallel, pool  # noqa: E402
from graphdiff.ops.lrn import LRNNormalize, LRNScale  # noqa: E402
from machine import PAUSE_S, blas_info  # noqa: E402 - the benchmarks' folder is on sys.path when run

# name, C_in, C_out, H (=W), kernel, stride, padding, groups
CONVS = [
    ("conv1", 3, 96, 227, 11, 4, 0, 1),
    ("conv2", 96, 256, 27, 5, 1, 2, 2),
    ("conv3", 256, 384, 13, 3, 1, 1, 1),
    ("conv4", 384, 384, 13, 3, 1, 1, 2),
    ("conv5", 384, 256, 13, 3, 1, 1, 2),
]
# name, C, H (=W); max pooling 3x3 stride 2
POOLS = [("pool1", 96, 55), ("pool2", 256, 27), ("pool5", 256, 13)]
# name, C, H (=W); LRN(size 5, alpha 1e-4, beta 0.75, k 2) in AlexNet's convention
LRNS = [("lrn1", 96, 55), ("lrn2", 256, 27)]




def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(name, ours, theirs, reps, warmup):
    """Alternate the two callables; return per-side lists of seconds."""
    def run_ours():
        with parallel.blas_on_one_thread():  # as a compiled program runs its kernels
            ours()

    def pause():  # let the other side's idle threads stop spinning (OpenMP, OpenBLAS) before timing
        time.sleep(PAUSE_S)

    for _ in range(warmup):
        run_ours()
        theirs()
    a, b = [], []
    for _ in range(reps):
        pause()
        a.append(timed(run_ours))
        pause()
        b.append(timed(theirs))
    return np.array(a), np.array(b)


def report(name, what, a, b):
    print(f"{name:6s} {what:9s} ours min {a.min()*1e3:8.1f} med {np.median(a)*1e3:8.1f} | "
          f"torch min {b.min()*1e3:8.1f} med {np.median(b)*1e3:8.1f} | "
          f"ratio min {a.min()/b.min():5.2f} med {np.median(a)/np.median(b):5.2f}", flush=True)
    return a.min() / b.min()


def conv_cases(torch, F, N, dtype, rng, kernels=("numpy",)):
    for name, C, O, H, k, s, p, g in CONVS:
        x = rng.standard_normal((N, C, H, H)).astype(dtype)
        w = (rng.standard_normal((O, C // g, k, k)) * 0.01).astype(dtype)
        b = rng.standard_normal(O).astype(dtype)
        OH = (H + 2 * p - k) // s + 1
        dy = rng.standard_normal((N, O, OH, OH)).astype(dtype)
        st, pd = (s, s), (p, p)
        xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
        bt, dyt = torch.from_numpy(b), torch.from_numpy(dy)
        y, dx, dw = np.empty_like(dy), np.empty_like(x), np.empty_like(w)

        def f_ours(y=y, x=x, w=w, b=b, st=st, pd=pd, g=g):
            return conv.conv2d_forward(np, x, w, b, st, pd, g, out=y)

        def fb_ours(f=f_ours, x=x, w=w, dy=dy, dx=dx, dw=dw, H=H, k=k, st=st, pd=pd, g=g, C=C, O=O):
            f()
            if conv.grad_input_as_convolution(O, C, st, pd, (k, k)):  # one op in a compiled step (conv3-5)
                conv.conv2d_backward(np, x, dy, w, pd, g, out=(dx, dw))
            else:
                conv.conv2d_grad_input(np, dy, w, (H, H), st, pd, g, out=dx)
                conv.conv2d_grad_weight(np, x, dy, (k, k), st, pd, g, out=dw)

        def f_torch():
            return F.conv2d(xt, wt, bt, s, p, 1, g)

        def fb_torch():
            torch.autograd.grad(f_torch(), [xt, wt], dyt)

        if "numpy" in kernels:
            yield name, f_ours, fb_ours, f_torch, fb_torch
        if "onednn" in kernels:
            prims = onednn.Convolution(x.shape, w.shape, st, pd, g, bias=True)

            def f_dnnl(c=prims, x=x, w=w, b=b, y=y):
                return c.forward(x, w, b, out=y)

            def fb_dnnl(c=prims, f=f_dnnl, x=x, w=w, dy=dy, dx=dx, dw=dw):
                f()
                c.backward_data(dy, w, out=dx)
                c.backward_weights(x, dy, out=dw)

            yield name + "-onednn", f_dnnl, fb_dnnl, f_torch, fb_torch


def pool_cases(torch, F, N, dtype, rng):
    for name, C, H in POOLS:
        # a permutation: no ties, so both sides route the gradient identically
        x = rng.permutation(N * C * H * H).reshape(N, C, H, H).astype(dtype)
        OH = (H - 3) // 2 + 1
        dy = rng.standard_normal((N, C, OH, OH)).astype(dtype)
        xt, dyt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)
        sz, st, pd = (3, 3), (2, 2), (0, 0)
        y, am, dx = np.empty_like(dy), np.empty(dy.shape, pool.argmax_dtype(sz)), np.empty_like(x)

        def f_ours(x=x, y=y):  # inference: no argmax
            return pool.max_pool2d_forward(np, x, sz, st, pd, out=y, argmax=False)

        def fb_ours(x=x, y=y, am=am, dx=dx, dy=dy, H=H):  # training: max_pool2d_with_argmax, then the gradient
            pool.max_pool2d_forward(np, x, sz, st, pd, out=y, argmax_out=am)
            pool.max_pool2d_grad(np, dy, am, (H, H), sz, st, pd, out=dx)

        def f_torch():
            return F.max_pool2d(xt, 3, 2)

        def fb_torch():
            torch.autograd.grad(f_torch(), [xt], dyt)

        yield name, f_ours, fb_ours, f_torch, fb_torch


def lrn_cases(torch, F, N, dtype, rng):
    size, alpha, beta, k = 5, 1e-4, 0.75, 2.0
    for name, C, H in LRNS:
        x = np.maximum(rng.standard_normal((N, C, H, H)), 0).astype(dtype) * 10
        dy = rng.standard_normal((N, C, H, H)).astype(dtype)
        xt, dyt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)
        scale_op, norm_op = LRNScale(size, alpha, k), LRNNormalize(size, alpha, beta, k)
        scale, y, dx = np.empty_like(x), np.empty_like(x), np.empty_like(x)

        def f_ours(x=x, scale=scale, y=y):
            scale_op.forward(np, x, out=scale)  # the two forward nodes of gd.lrn
            return norm_op.forward(np, x, scale, out=y)

        def fb_ours(f=f_ours, x=x, y=y, scale=scale, dy=dy, dx=dx):
            f()
            lrn.lrn_backward(np, x, y, scale, dy, size, alpha, beta, out=dx)

        def f_torch():
            # PyTorch divides alpha by size; AlexNet does not.
            return F.local_response_norm(xt, size, alpha * size, beta, k)

        def fb_torch():
            torch.autograd.grad(f_torch(), [xt], dyt)

        yield name, f_ours, fb_ours, f_torch, fb_torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", nargs="*", help="case names (conv1 pool1 lrn1 ...) or families (conv pool lrn)")
    ap.add_argument("--kernels", nargs="+", choices=["numpy", "onednn"], default=["numpy", "onednn"],
                    help="convolution kernel libraries to time (oneDNN where it loaded)")
    args = ap.parse_args()
    if not onednn.available():
        args.kernels = [k for k in args.kernels if k != "onednn"]

    import threadpoolctl
    import torch
    import torch.nn.functional as F

    blas_threads = max((i["num_threads"] for i in threadpoolctl.threadpool_info()
                        if i["user_api"] == "blas"), default=1)
    torch.set_num_threads(blas_threads)
    print("numpy", np.__version__, "| torch", torch.__version__, "threads", torch.get_num_threads(),
          "| kernel threads", parallel.NUM_THREADS)
    for line in blas_info():
        print("  ", line)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"  warning: {var}={os.environ[var]} is set (slows OpenBLAS GEMMs)")
    print("load average", os.getloadavg(), "| batch", args.batch, args.dtype, "| reps", args.reps)
    print("cpu:", choice.cpu_model(), "|", choice.status_line())

    rng = np.random.default_rng(0)
    ratios = {}
    for family in (conv_cases, pool_cases, lrn_cases):
        extra = {"kernels": args.kernels} if family is conv_cases else {}
        for name, f_ours, fb_ours, f_torch, fb_torch in family(torch, F, args.batch, args.dtype, rng, **extra):
            base = name.split("-")[0]
            if args.only and base not in args.only and base.rstrip("0123456789") not in args.only:
                continue
            a, b = compare(name, f_ours, f_torch, args.reps, args.warmup)
            report(name, "forward", a, b)
            a, b = compare(name, fb_ours, fb_torch, args.reps, args.warmup)
            ratios[name] = report(name, "fwd+bwd", a, b)
    print("\nfwd+bwd ratio (min/min):", "  ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
