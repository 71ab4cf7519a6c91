"""AlexNet training step on the GPU: graphdiff (backend="cupy") against
PyTorch CUDA + cuDNN, in one process, alternating. Like for like: the same
network with dropout placed as in models.alexnet (after fc6's and fc7's
ReLU), SGD with momentum and weight decay, FP32 on both sides, or with
``--tf32`` TF32 allowed on both (CuPy: CUPY_TF32=1, set before CuPy loads;
PyTorch: torch.backends.cuda.matmul.allow_tf32 and
torch.backends.cudnn.allow_tf32). Prints min/median step time per side, the
ratio and images/s.

    python benchmarks/alexnet_gpu.py [--batch 128] [--reps 10] [--tf32] [--engine-only]

Goal: at most 1.0x PyTorch + cuDNN at batch 128 (1.5x the least acceptable).
``--engine-only`` times graphdiff alone (e.g. under the CuPy stand-in, where
no CUDA PyTorch exists).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=227)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on both sides (default: FP32 both)")
    ap.add_argument("--engine-only", action="store_true", help="time graphdiff alone")
    args = ap.parse_args(argv)
    os.environ["CUPY_TF32"] = "1" if args.tf32 else "0"  # read by CuPy when its GEMMs first run

    import cupy

    import graphdiff as gd
    from models.alexnet import alexnet, train_step

    gd.get_backend("cupy")  # a clear BackendError if there is no GPU
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 3, args.image_size, args.image_size)).astype(np.float32)
    labels = rng.integers(0, args.classes, args.batch).astype(np.int64)

    model = alexnet(num_classes=args.classes, image_size=args.image_size, seed=0)
    t0 = time.perf_counter()
    step = train_step(model, lr=0.01, backend="cupy")
    build_s = time.perf_counter() - t0

    def run_engine():  # host batch in, as a training loop feeds it (one upload of images and labels)
        step(images, labels)
        cupy.cuda.get_current_stream().synchronize()

    sides = {"graphdiff": run_engine}
    if not args.engine_only:
        import torch

        from torch_alexnet import torch_alexnet, torch_train_step

        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True
        net = torch_alexnet(num_classes=args.classes, dropout_after_relu=True).cuda()
        tstep = torch_train_step(net)
        timages, tlabels = torch.from_numpy(images), torch.from_numpy(labels)

        def run_torch():  # the same host batch, copied to the device each step
            tstep(timages.cuda(non_blocking=False), tlabels.cuda())
            torch.cuda.synchronize()

        sides["pytorch"] = run_torch

    for _ in range(args.warmup):
        for fn in sides.values():
            fn()
    times = {name: [] for name in sides}
    for _ in range(args.reps):  # alternate, so drift hits both sides alike
        for name, fn in sides.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)

    props = cupy.cuda.runtime.getDeviceProperties(0)
    torch_version = "" if args.engine_only else f", torch {sys.modules['torch'].__version__}"
    print(f"device: {props['name'].decode()}, cupy {cupy.__version__}{torch_version}, batch {args.batch}, "
          f"{args.image_size}x{args.image_size}, {'TF32 allowed' if args.tf32 else 'FP32'} on both sides")
    print(f"graphdiff build + grad + compile: {build_s * 1e3:.0f} ms")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:10s} min {min(ts) * 1e3:8.1f} ms  median {med * 1e3:8.1f} ms  "
              f"{args.batch / med:8.0f} images/s")
    if "pytorch" in times:
        ratio = statistics.median(times["graphdiff"]) / statistics.median(times["pytorch"])
        print(f"ratio graphdiff / pytorch (median): {ratio:.2f}x  (min: "
              f"{min(times['graphdiff']) / min(times['pytorch']):.2f}x; goal <= 1.0x, at least <= 1.5x)")
    return times


if __name__ == "__main__":
    main()
