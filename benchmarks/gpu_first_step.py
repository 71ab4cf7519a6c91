"""What the first AlexNet 2012 training step costs on the GPU before the steps
after it: the backend check (one fused kernel, one matmul), then the first step,
in which CuPy traces every fused kernel (about 40) and NVRTC compiles each, and
cuBLAS starts; the second step reuses them. Also the versions that decide it:
CuPy, the CUDA runtime it was built for, the driver, NVRTC, cuBLAS.

    python benchmarks/gpu_first_step.py [--batch 16] [--image-size 227] [--keep-cache]

CuPy keeps compiled kernels on disk (CUPY_CACHE_DIR, default ~/.cupy/kernel_cache),
so a later process skips the compiling: without ``--keep-cache`` the cache is a
fresh temporary directory (set before CuPy loads), so the kernels really compile.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np


def versions(cupy):
    """``{name: version}`` of CuPy and the CUDA parts it uses ("n/a" where one does not answer)."""
    out = {"cupy": cupy.__version__}
    rt = cupy.cuda.runtime
    for name, query in (("cuda_runtime", rt.runtimeGetVersion), ("driver", rt.driverGetVersion)):
        try:
            out[name] = query()
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            out[name] = f"n/a ({type(exc).__name__})"
    try:
        from cupy.cuda import nvrtc

        out["nvrtc"] = ".".join(map(str, nvrtc.getVersion()))
    except Exception as exc:  # noqa: BLE001
        out["nvrtc"] = f"n/a ({type(exc).__name__})"
    try:
        from cupy.cuda import cublas, device

        out["cublas"] = cublas.getVersion(device.get_cublas_handle())
    except Exception as exc:  # noqa: BLE001
        out["cublas"] = f"n/a ({type(exc).__name__})"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=227)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--keep-cache", action="store_true", help="use CuPy's kernel cache as it is")
    args = ap.parse_args(argv)
    saved = os.environ.get("CUPY_CACHE_DIR")
    cache = None
    if not args.keep_cache:
        cache = os.environ["CUPY_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphdiff_cupy_cache_")
    try:
        return _run(args)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
            if saved is None:
                os.environ.pop("CUPY_CACHE_DIR", None)
            else:
                os.environ["CUPY_CACHE_DIR"] = saved


def _run(args):
    import cupy

    import graphdiff as gd
    from graphdiff.kernels import device
    from models.alexnet import alexnet, train_step

    report = {"versions": versions(cupy)}
    print(" ".join(f"{k} {v}" for k, v in report["versions"].items()))
    t0 = time.perf_counter()
    gd.get_backend("cupy")  # the backend check: NVRTC's first kernel, cuBLAS's first GEMM
    report["backend_check_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 3, args.image_size, args.image_size), dtype=np.float32)
    labels = rng.integers(0, args.classes, args.batch)
    step = train_step(alexnet(num_classes=args.classes, image_size=args.image_size, seed=0), lr=0.01,
                      backend="cupy")
    kernels_before = len(device._fused)
    for key in ("first_step_s", "second_step_s"):
        t0 = time.perf_counter()
        float(step(images, labels))  # the loss comes to the host: the step has finished
        report[key] = time.perf_counter() - t0
    report["fused_functions"] = len(device._fused) - kernels_before
    print(f"backend check {report['backend_check_s']:.2f} s; AlexNet batch {args.batch} at {args.image_size}: "
          f"first step {report['first_step_s']:.2f} s ({report['fused_functions']} cupy.fuse functions traced, "
          f"their kernels compiled), second step {report['second_step_s']:.3f} s")
    return report


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
