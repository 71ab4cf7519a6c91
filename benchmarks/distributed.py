"""Data-parallel training on this machine: 2 ranks x 1 thread (mpiexec) against
1 process x 2 threads, at the same global batch (2 x the per-rank batch).

Per model and side: median step time, images/s; for the 2 ranks also the
share of the step spent blocked in ``allreduce_wait``, the time the same
reductions take alone (blocking, one after the other, nothing to overlap)
and how much of that the overlap with the backward pass hides. The sides
alternate (``--rounds``), each in a fresh process. Then the on-paper scaling
of the same design to 8 and 64 GPUs (ring all-reduce at NCCL bandwidths).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/distributed.py [--models alexnet-small alexnet]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from machine import blas_info, cpu_model  # noqa: E402 - this folder is on sys.path when run

SETUPS = {  # buckets: alexnet-small's 1.5 MB of gradients in several, so that some can overlap
    "alexnet-small": dict(image_size=32, num_classes=10, steps=12, bucket_bytes=256 << 10),
    "alexnet": dict(image_size=227, num_classes=1000, steps=3, bucket_bytes=4 << 20),
}
BATCH = 32


def build(name):
    from models.train import build_model

    s = SETUPS[name]
    return build_model(name, s["num_classes"], s["image_size"])


def batch(name, n, seed):
    s = SETUPS[name]
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, s["image_size"], s["image_size"]), dtype=np.float32),
            rng.integers(0, s["num_classes"], n))


def worker_single(name):
    """1 process, graphdiff's default threads (2 here), the global batch."""
    from models.alexnet import train_step

    step = train_step(build(name), lr=1e-4)
    images, labels = batch(name, 2 * BATCH, 0)
    step(images, labels)  # warm-up: memory plan, page faults
    times = []
    for _ in range(SETUPS[name]["steps"]):
        time.sleep(0.15)  # idle BLAS threads stop spinning
        t = time.perf_counter()
        step(images, labels)
        times.append(time.perf_counter() - t)
    return dict(side="1 process x 2 threads", step=statistics.median(times), images=2 * BATCH)


def worker_ranks(name):
    """One of 2 ranks: 1 thread (graphdiff's kernels and the BLAS), batch 32."""
    from threadpoolctl import threadpool_limits

    from graphdiff.kernels import parallel

    parallel.NUM_THREADS = 1
    threadpool_limits(1)
    from models.alexnet import train_step
    from models.distributed import detect

    dp = detect(bucket_bytes=SETUPS[name]["bucket_bytes"])
    model = build(name)
    step = train_step(model, lr=1e-4, seed=dp.dropout_seed(0), reduce_gradients=dp.gradient_reducer())
    dp.broadcast_state(step)
    reducer = dp.reducer
    images, labels = batch(name, BATCH, 1 + dp.rank)
    reducer.scale = 0.5
    step(images, labels)
    times, waits = [], []
    for _ in range(SETUPS[name]["steps"]):
        time.sleep(0.15)
        dp.sum([0])  # start together
        reducer.wait_seconds = 0.0
        t = time.perf_counter()
        step(images, labels)
        times.append(time.perf_counter() - t)
        waits.append(dp.gather(reducer.wait_seconds))  # per rank
    # the same reductions alone: what the step would wait without any overlap
    buffers = [np.ones(b.size, b.dtype) for b in reducer.buckets]
    alone = []
    for _ in range(3):
        dp.sum([0])
        t = time.perf_counter()
        for buf in buffers:
            dp.comm.wait(dp.comm.allreduce_start(buf))
        alone.append(time.perf_counter() - t)
    every = dp.gather(dict(step=statistics.median(times), alone=min(alone)))
    if dp.rank:
        return None
    # The rank that finishes its backward pass last waits only for the communication
    # left after it (what the overlap did not hide); the other also waits for it.
    return dict(side="2 ranks x 1 thread", step=max(e["step"] for e in every), images=2 * BATCH,
                wait=statistics.median(min(w) for w in waits), skew=statistics.median(max(w) - min(w) for w in waits),
                alone=statistics.mean(e["alone"] for e in every),
                buckets=len(reducer.buckets), bytes=sum(b.nbytes for b in reducer.buckets))


def run(cmd, timeout=900):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[0][7:])


def ring_allreduce_seconds(nbytes, gpus, bus_gbs, latency_us):
    """Ring all-reduce: each GPU sends and receives 2 (n-1)/n of the bytes, in 2 (n-1) latency-bound steps."""
    return 2 * (gpus - 1) / gpus * nbytes / (bus_gbs * 1e9) + 2 * (gpus - 1) * latency_us * 1e-6


def machine():
    return cpu_model(), blas_info()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two sides")
    p.add_argument("--worker", choices=("single", "ranks"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = (worker_single if args.worker == "single" else worker_ranks)(args.model)
        if result is not None:
            print("RESULT " + json.dumps(result), flush=True)
        return
    cpu, blas = machine()
    print(f"CPU: {cpu}, {os.cpu_count()} cores; BLAS: {'; '.join(blas)}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    me = os.path.abspath(__file__)
    for name in args.models:
        single, ranks = [], []
        for _ in range(args.rounds):
            single.append(run([sys.executable, me, "--worker", "single", "--model", name]))
            ranks.append(run([mpiexec, "-n", "2", sys.executable, me, "--worker", "ranks", "--model", name]))
        s = min(r["step"] for r in single)
        best = min(ranks, key=lambda r: r["step"])
        hidden = max(0.0, 1 - best["wait"] / best["alone"]) if best["alone"] else float("nan")
        print(f"\n{name}, global batch {2 * BATCH} ({BATCH} per rank), best of {args.rounds} rounds:")
        print(f"  1 process x 2 threads: step {1e3 * s:8.1f} ms  {2 * BATCH / s:7.1f} img/s")
        print(f"  2 ranks x 1 thread:    step {1e3 * best['step']:8.1f} ms  {2 * BATCH / best['step']:7.1f} img/s"
              f"  ({s / best['step']:.2f}x the single process)")
        print(f"  reduced per step: {best['bytes'] / 1e6:.1f} MB in {best['buckets']} buckets; the later rank waits "
              f"{1e3 * best['wait']:.2f} ms = {100 * best['wait'] / best['step']:.2f}% of the step on communication, "
              f"the earlier one {1e3 * best['skew']:.1f} ms more for the later one; the same reductions alone take "
              f"{1e3 * best['alone']:.2f} ms: the overlap hides {100 * hidden:.0f}% of them")
        print("  all rounds (ms): single " + " ".join(f"{1e3 * r['step']:.1f}" for r in single)
              + "; ranks " + " ".join(f"{1e3 * r['step']:.1f} (wait {1e3 * r['wait']:.2f})" for r in ranks))
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    print("\nOn paper: ring all-reduce of AlexNet's gradients (60,965,224 float32 = 243.9 MB per step)")
    nbytes = 60_965_224 * 4
    for gpus, link, bw, lat in ((2, "PCIe 2.0 x16 (the paper's GTX 580s)", 6, 10), (8, "NVLink, one node", 350, 5),
                                (64, "8 nodes, 400 Gb/s InfiniBand per GPU", 45, 10)):
        t = ring_allreduce_seconds(nbytes, gpus, bw, lat)
        print(f"  {gpus:3d} GPUs, {link} (~{bw} GB/s bus bandwidth): {1e3 * t:6.1f} ms per step, "
              f"each GPU sends {2 * (gpus - 1) / gpus * nbytes / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
