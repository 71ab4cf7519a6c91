"""AlexNet (227x227, two towers) training step on the CPU: graphdiff against
PyTorch, in one process, alternating.

Prints, per batch size: min and median step time per side and their ratio; a
per-layer forward/backward breakdown for both; GFLOP/s of the whole step and
the fraction of the sgemm peak measured here; the peak RSS of each side (each
measured in a fresh process); the BLAS kernel and thread counts.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/alexnet_cpu.py [--batch 8 32] [--reps 5]
"""
import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from torch_alexnet import layer_times  # noqa: E402 - after the path set-up

FORWARD_MACS = 724_406_816  # per 227x227 image (conv + fc), see visualize.summary


def blas_info():
    from threadpoolctl import threadpool_info

    return [f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} threads={i.get('num_threads')}"
            for i in threadpool_info()]


def sgemm_peak(n=2048, reps=5):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    c = np.empty_like(a)
    np.matmul(a, b, out=c)
    best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_batch(batch):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, 3, 227, 227)).astype(np.float32),
            rng.integers(0, 1000, batch).astype(np.int64))


def engine_step():
    from models.alexnet import alexnet, train_step

    t = time.perf_counter()
    model = alexnet(seed=0)
    built = time.perf_counter()
    step = train_step(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
    done = time.perf_counter()
    return step, {"build_ms": (built - t) * 1e3, "grad_compile_ms": (done - built) * 1e3}


def torch_step(threads):
    import torch

    from torch_alexnet import torch_alexnet, torch_train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_alexnet()
    return torch_train_step(net), torch


def engine_breakdown(step, images, labels):
    program = getattr(step, "program", step)
    _, timings = program.profile(images, labels)
    table = collections.defaultdict(float)
    for node, seconds in timings:
        layer = node.scope.split("/")[0] or "(top)"
        table[(layer, "backward" if node.kind == "gradient" else "forward")] += seconds
    return table


def measure_rss(side, batch):
    """Peak RSS (MiB) of a fresh process doing 3 steps on one side."""
    out = subprocess.run([sys.executable, __file__, "--rss-only", side, "--batch", str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_mib"]


def rss_only(side, batch):
    images, labels = make_batch(batch)
    threads = os.cpu_count()
    if side == "engine":
        step, _ = engine_step()
        fn = lambda: step(images, labels)  # noqa: E731
    else:
        tstep, torch = torch_step(threads)
        ti, tl = torch.from_numpy(images), torch.from_numpy(labels)
        fn = lambda: tstep(ti, tl)  # noqa: E731
    for _ in range(3):
        fn()
    print(json.dumps({"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rss-only", choices=["engine", "torch"])
    ap.add_argument("--no-rss", action="store_true")
    args = ap.parse_args()
    if args.rss_only:
        return rss_only(args.rss_only, args.batch[0])

    threads = os.cpu_count()
    print(f"date: {time.strftime('%Y-%m-%d')}  cpus: {threads}  numpy {np.__version__}")
    print("OPENBLAS_CORETYPE =", os.environ.get("OPENBLAS_CORETYPE"), " OPENBLAS_L2_SIZE =",
          os.environ.get("OPENBLAS_L2_SIZE"))
    step, build = engine_step()
    tstep, torch = torch_step(threads)
    print("BLAS:", "; ".join(blas_info()), f"| torch {torch.__version__} threads={torch.get_num_threads()}")
    peak = sgemm_peak()
    print(f"sgemm peak (2048^3, numpy): {peak:.0f} GFLOP/s")
    print(f"graphdiff AlexNet graph: build {build['build_ms']:.0f} ms, grad + compile {build['grad_compile_ms']:.0f} ms")

    for batch in args.batch:
        images, labels = make_batch(batch)
        ti, tl = torch.from_numpy(images), torch.from_numpy(labels)
        sides = {"graphdiff": lambda: step(images, labels), "pytorch": lambda: tstep(ti, tl)}
        for _ in range(args.warmup):
            for fn in sides.values():
                fn()
        times = {name: [] for name in sides}
        for _ in range(args.reps):  # alternating: the machine's drift hits both sides alike
            for name, fn in sides.items():
                times[name].append(_timed(fn))
        flops = 3 * 2 * FORWARD_MACS * batch  # forward + two backward GEMMs per layer
        print(f"\n== batch {batch}: training step (forward, backward, SGD momentum + weight decay), {args.reps} reps")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:10s} min {min(ts) * 1e3:8.1f} ms  median {med * 1e3:8.1f} ms  "
                  f"{flops / med / 1e9:6.0f} GFLOP/s ({flops / med / 1e9 / peak:4.0%} of sgemm peak)")
        print(f"  ratio graphdiff/pytorch: median {statistics.median(times['graphdiff']) / statistics.median(times['pytorch']):.2f}x"
              f"  min {min(times['graphdiff']) / min(times['pytorch']):.2f}x")

        eng = engine_breakdown(step, images, labels)
        tor = layer_times(tstep.model, ti, tl)
        print(f"  per layer (ms), one step  {'graphdiff fwd':>14s} {'bwd':>8s}   {'pytorch fwd':>12s} {'bwd':>8s}")
        for layer in sorted({k[0] for k in eng} | {k[0] for k in tor}, key=_layer_order):
            print(f"  {layer:24s} {_ms(eng, layer, 'forward')} {_ms(eng, layer, 'backward', 8)}"
                  f"   {_ms(tor, layer, 'forward', 12)} {_ms(tor, layer, 'backward', 8)}")
        print("  (graphdiff: time of each op by scope; pytorch: module hooks. Names differ where the two group ops differently.)")

    if not args.no_rss:
        for batch in args.batch:
            print(f"peak RSS, batch {batch}: graphdiff {measure_rss('engine', batch):.0f} MiB, "
                  f"pytorch {measure_rss('torch', batch):.0f} MiB")


def _ms(table, layer, kind, width=14):
    value = table.get((layer, kind))
    return f"{'-':>{width}s}" if value is None else f"{value * 1e3:{width}.1f}"


def _layer_order(name):
    order = ["conv1", "relu1", "lrn1", "pool1", "conv2", "relu2", "lrn2", "pool2", "conv3", "relu3", "conv4", "relu4",
             "conv5", "relu5", "pool5", "flatten", "drop6", "fc6", "relu6", "drop7", "fc7", "relu7", "fc8", "loss"]
    return (order.index(name) if name in order else len(order), name)


if __name__ == "__main__":
    main()
