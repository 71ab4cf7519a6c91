"""AlexNet training step on the GPU: graphdiff (backend="cupy") against
PyTorch CUDA, in one process, alternating. Prints min/median step time per
side, the ratio and images/s.

    python benchmarks/alexnet_gpu.py [--batch 128] [--reps 10]
"""
import argparse
import statistics
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    import cupy
    import torch

    import graphdiff as gd
    from models.alexnet import alexnet, train_step

    from torch_alexnet import torch_alexnet, torch_train_step

    gd.get_backend("cupy")  # a clear BackendError if there is no GPU
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 3, 227, 227)).astype(np.float32)
    labels = rng.integers(0, 1000, args.batch).astype(np.int64)

    model = alexnet(seed=0)
    t0 = time.perf_counter()
    step = train_step(model, lr=0.01, backend="cupy")
    build_s = time.perf_counter() - t0
    images_dev, labels_dev = cupy.asarray(images), cupy.asarray(labels)

    net = torch_alexnet().cuda()
    tstep = torch_train_step(net)
    timages, tlabels = torch.from_numpy(images).cuda(), torch.from_numpy(labels).cuda()

    def run_engine():
        step(images_dev, labels_dev)
        cupy.cuda.get_current_stream().synchronize()

    def run_torch():
        tstep(timages, tlabels)
        torch.cuda.synchronize()

    for _ in range(args.warmup):
        run_engine()
        run_torch()
    times = {"graphdiff": [], "pytorch": []}
    for _ in range(args.reps):  # alternate, so drift hits both sides alike
        for name, fn in (("graphdiff", run_engine), ("pytorch", run_torch)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)

    print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, "
          f"cupy {cupy.__version__}, torch {torch.__version__}, batch {args.batch}")
    print(f"graphdiff build + grad + compile: {build_s * 1e3:.0f} ms")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:10s} min {min(ts) * 1e3:8.1f} ms  median {med * 1e3:8.1f} ms  "
              f"{args.batch / med:8.0f} images/s")
    ratio = statistics.median(times["graphdiff"]) / statistics.median(times["pytorch"])
    print(f"ratio graphdiff / pytorch (median): {ratio:.2f}x  (min: "
          f"{min(times['graphdiff']) / min(times['pytorch']):.2f}x)")


if __name__ == "__main__":
    main()
