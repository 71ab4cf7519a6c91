"""AlexNet (227x227, two towers) training step on the CPU: graphdiff against
PyTorch, in one process, alternating.

Prints, per batch size: min and median step time per side and their ratio; a
per-layer forward/backward breakdown for both; GFLOP/s of the whole step and
the fraction of the sgemm peak measured here; the peak RSS of each side (each
measured in a fresh process); the BLAS kernel and thread counts.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/alexnet_cpu.py [--batch 8 32] [--reps 5]
        [--kernels auto|numpy|onednn]

Also prints the CPU model, the convolution kernel libraries available (oneDNN,
where the ``onednn`` extra is installed, with the ISA it uses) and which one
each convolution of the step runs after the first step's measurement.
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

from machine import PAUSE_S, blas_info  # noqa: E402

FORWARD_MACS = 724_406_816  # per 227x227 image (conv + fc), see visualize.summary
CONV1_MACS = 55 * 55 * 96 * 3 * 11 * 11  # conv1's input gradient: neither side computes it (images need none)
# forward + the two backward products (input and weight gradients) of every layer, less conv1's input gradient
STEP_FLOPS_PER_IMAGE = 2 * (3 * FORWARD_MACS - CONV1_MACS)


def kernel_report(program):
    """``conv1 fwd onednn, ...``: the library of each convolution instruction, by scope."""
    kernels = program.kernels
    return "; ".join(f"{n.scope or n.name} {n.op.name} {kernels[n.name]}" for n in program.nodes
                     if n.name in kernels and n.op.name != "part")




def sgemm_peak(n=2048, reps=8):
    time.sleep(PAUSE_S)
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


class _TimedGenerator:
    """Wraps a NumPy Generator and adds up the seconds spent drawing, so the
    graph build can be timed apart from the variable init's random draws."""

    def __init__(self, rng):
        self._rng, self.seconds = rng, 0.0

    def __getattr__(self, name):
        fn = getattr(self._rng, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
        return timed


def engine_step():
    from models import alexnet as A

    draws = []
    real = A.np.random.default_rng

    def default_rng(*args, **kwargs):
        draws.append(_TimedGenerator(real(*args, **kwargs)))
        return draws[-1]

    A.np.random.default_rng = default_rng  # the builder draws its weights from it
    try:
        t = time.perf_counter()
        model = A.alexnet(seed=0)
        built = time.perf_counter()
    finally:
        A.np.random.default_rng = real
    step = A.train_step(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
    done = time.perf_counter()
    draw_s = sum(d.seconds for d in draws)
    return step, {"init_draws_ms": draw_s * 1e3, "build_ms": (built - t - draw_s) * 1e3,
                  "grad_compile_ms": (done - built) * 1e3}


def torch_step(threads):
    import torch

    from torch_alexnet import torch_alexnet, torch_train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_alexnet()
    return torch_train_step(net), torch


ENGINE_LAYER_NAMES = {"norm1": "lrn1", "norm2": "lrn2"}  # graphdiff's scopes as the PyTorch modules are named


def breakdowns(step, model, images, labels, timages, tlabels, runs=3):
    """Per-layer tables ``(layer, "forward"/"backward") -> seconds`` of both sides,
    profiled alternately, ``runs`` steps each (the machine's drift hits both alike):
    graphdiff's op times by scope and PyTorch's module hooks, each entry the
    fastest of its ``runs`` (one step's op times are noisy)."""
    from torch_alexnet import layer_times  # torch is imported only where needed (RSS)

    program = getattr(step, "program", step)
    best, tor = {}, {}
    for _ in range(runs):
        time.sleep(PAUSE_S)
        _, timings = program.profile(images, labels)
        for k, (node, seconds) in enumerate(timings):
            best[k] = (node, min(seconds, best.get(k, (None, seconds))[1]))
        time.sleep(PAUSE_S)
        for key, seconds in layer_times(model, timages, tlabels).items():
            tor[key] = min(seconds, tor.get(key, seconds))
    eng = collections.defaultdict(float)
    for node, seconds in best.values():
        layer = node.scope.split("/")[0] or "(top)"
        eng[(ENGINE_LAYER_NAMES.get(layer, layer), "backward" if node.kind == "gradient" else "forward")] += seconds
    return eng, tor


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
    print(json.dumps({"rss_mib": peak_rss_mib()}))


def peak_rss_mib():
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries
    that across fork + exec, so a child started by a big parent reports at least
    the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rss-only", choices=["engine", "torch"])
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--kernels", choices=["auto", "numpy", "onednn"],
                    help="graphdiff's convolution kernels (GRAPHDIFF_KERNELS; default auto: measured per layer)")
    args = ap.parse_args()
    if args.kernels:
        os.environ["GRAPHDIFF_KERNELS"] = args.kernels  # also for the RSS subprocesses
    if args.rss_only:
        return rss_only(args.rss_only, args.batch[0])

    threads = os.cpu_count()
    from graphdiff.kernels import choice

    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}  cpu: {choice.cpu_model()}  cpus: {threads}  "
          f"numpy {np.__version__}  load average {os.getloadavg()[0]:.2f}")
    print(choice.status_line(), f"| mode {choice.resolve_mode()}")
    print("OPENBLAS_CORETYPE =", os.environ.get("OPENBLAS_CORETYPE"), " OPENBLAS_L2_SIZE =",
          os.environ.get("OPENBLAS_L2_SIZE"))
    step, build = engine_step()
    tstep, torch = torch_step(threads)
    print("BLAS:", "; ".join(blas_info()), f"| torch {torch.__version__} threads={torch.get_num_threads()}")
    peak = sgemm_peak()
    print(f"sgemm peak (2048^3, numpy): {peak:.0f} GFLOP/s (measured again before each batch; the best is kept)")
    total_ms = build["build_ms"] + build["grad_compile_ms"]
    print(f"graphdiff AlexNet graph: build {build['build_ms']:.0f} ms + grad + compile "
          f"{build['grad_compile_ms']:.0f} ms = {total_ms:.0f} ms (weight init's random draws apart: "
          f"{build['init_draws_ms']:.0f} ms)")

    summary = []
    for batch in args.batch:
        peak = max(peak, sgemm_peak())  # a busy machine under-measures it: keep the best seen
        images, labels = make_batch(batch)
        ti, tl = torch.from_numpy(images), torch.from_numpy(labels)
        sides = {"graphdiff": lambda: step(images, labels), "pytorch": lambda: tstep(ti, tl)}
        for _ in range(args.warmup):
            for fn in sides.values():
                fn()
        print(f"  batch {batch} kernels: {kernel_report(getattr(step, 'program', step))}")
        times = {name: [] for name in sides}
        for _ in range(args.reps):  # alternating: the machine's drift hits both sides alike
            for name, fn in sides.items():
                time.sleep(PAUSE_S)
                times[name].append(_timed(fn))
        flops = STEP_FLOPS_PER_IMAGE * batch
        print(f"\n== batch {batch}: training step (forward, backward, SGD momentum + weight decay), "
              f"{args.reps} reps alternating; {flops / 1e9:.1f} GFLOP per step; sgemm peak {peak:.0f} GFLOP/s; "
              f"load average {os.getloadavg()[0]:.2f}")
        for name, ts in times.items():
            med, low = statistics.median(ts), min(ts)
            print(f"  {name:10s} min {low * 1e3:8.1f} ms  median {med * 1e3:8.1f} ms   GFLOP/s: "
                  f"{flops / med / 1e9:4.0f} at the median ({flops / med / 1e9 / peak:4.0%} of the sgemm peak), "
                  f"{flops / low / 1e9:4.0f} at the min ({flops / low / 1e9 / peak:4.0%})")
        ratio_med = statistics.median(times["graphdiff"]) / statistics.median(times["pytorch"])
        ratio_min = min(times["graphdiff"]) / min(times["pytorch"])
        print(f"  ratio graphdiff/pytorch: median {ratio_med:.2f}x  min {ratio_min:.2f}x")
        summary.append((batch, flops, times))

        eng, tor = breakdowns(step, tstep.model, images, labels, ti, tl)
        print(f"  {'per layer (ms, fastest of 3)':29s} {'graphdiff fwd':>13s} {'bwd':>7s}   {'pytorch fwd':>11s} "
              f"{'bwd':>7s}   fwd+bwd ratio")
        for layer in sorted({k[0] for k in eng} | {k[0] for k in tor}, key=_layer_order):
            ours, theirs = (sum(t.get((layer, k), 0.0) for k in ("forward", "backward")) for t in (eng, tor))
            ratio = f"{ours / theirs:13.2f}" if ours and theirs else ""
            print(f"  {layer:29s} {_ms(eng, layer, 'forward', 13)} {_ms(eng, layer, 'backward', 7)}"
                  f"   {_ms(tor, layer, 'forward', 11)} {_ms(tor, layer, 'backward', 7)}   {ratio}")
        totals = [sum(v for (_, kind), v in table.items() if kind == want) * 1e3
                  for table in (eng, tor) for want in ("forward", "backward")]
        print(f"  {'total':29s} {totals[0]:13.1f} {totals[1]:7.1f}   {totals[2]:11.1f} {totals[3]:7.1f}")
        print("  (graphdiff: op times by scope, ReLUs inside their conv/fc layer, sgd = the updates;"
              " pytorch: module hooks, with conv1's input gradient, which its training step skips,"
              " and without the optimizer step; the two sides profiled alternately.)")

    peak = max(peak, sgemm_peak())
    print(f"\nsummary (sgemm peak: the best of all its measurements in this run, {peak:.0f} GFLOP/s)")
    for batch, flops, times in summary:
        eng, tor = times["graphdiff"], times["pytorch"]
        print(f"  batch {batch:3d}: graphdiff median {statistics.median(eng) * 1e3:7.1f} ms "
              f"({flops / statistics.median(eng) / 1e9 / peak:4.0%} of peak; min {min(eng) * 1e3:7.1f} ms, "
              f"{flops / min(eng) / 1e9 / peak:4.0%}), pytorch median {statistics.median(tor) * 1e3:7.1f} ms "
              f"({flops / statistics.median(tor) / 1e9 / peak:4.0%}), ratio median "
              f"{statistics.median(eng) / statistics.median(tor):.2f}x min {min(eng) / min(tor):.2f}x")
    if not args.no_rss:
        for batch in args.batch:
            print(f"peak RSS, batch {batch}: graphdiff {measure_rss('engine', batch):.0f} MiB, "
                  f"pytorch {measure_rss('torch', batch):.0f} MiB")


def _ms(table, layer, kind, width=14):
    value = table.get((layer, kind))
    return f"{'-':>{width}s}" if value is None else f"{value * 1e3:{width}.1f}"


def _layer_order(name):
    order = ["conv1", "relu1", "lrn1", "pool1", "conv2", "relu2", "lrn2", "pool2", "conv3", "relu3", "conv4", "relu4",
             "conv5", "relu5", "pool5", "flatten", "drop6", "fc6", "relu6", "drop7", "fc7", "relu7", "fc8", "loss",
             "sgd"]
    return (order.index(name) if name in order else len(order), name)


if __name__ == "__main__":
    main()
