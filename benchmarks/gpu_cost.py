"""What one AlexNet (2012) training step costs on a GPU, counted on the CPU by
the strict CuPy stand-in (tests/cupy_standin): kernel launches, memory
traffic, GEMM FLOPs, operand copies inside matmul, host<->device copies,
synchronizations before the step's end, and new device allocations after the
first step. Prints the figures against the targets and the call sites that
cost most.

    python benchmarks/gpu_cost.py [--batch 128] [--image-size 227] [--top 15]

Runs the step twice (the first builds the memory plan; the second is the one
counted) with NumPy doing the arithmetic: at batch 128 that takes a minute or
two and a few GB of memory.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# Targets for one step at 227x227, batch 128.
TARGETS = {"launches": 200, "traffic_gb": 25.0, "matmul_copies": 0, "syncs_before_end": 0}


def count_step(batch, image_size, steps=2, num_classes=1000):
    """Run ``steps`` SGD steps of AlexNet under the stand-in; returns
    ``(totals of the last step, its ledger, host-to-device bytes of the inputs)``."""
    import cupy_standin

    cupy = cupy_standin.activate()
    try:
        from models.alexnet import alexnet, train_step

        rng = np.random.default_rng(0)
        images = rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)
        labels = rng.integers(0, num_classes, batch).astype(np.int64)
        model = alexnet(num_classes=num_classes, image_size=image_size, seed=0)
        step = train_step(model, lr=0.01, backend="cupy")
        ledger = cupy_standin.ledger()
        allocs = []
        for _ in range(steps):
            ledger.reset()
            step(images, labels)
            allocs.append((ledger.totals()["allocs"], ledger.totals()["alloc_bytes"]))
        totals = ledger.totals()
        totals["allocs_per_step"] = allocs
        from graphdiff.kernels import device

        totals["pool_total_bytes"] = cupy.get_default_memory_pool().total_bytes()
        totals["long_lived_bytes"] = sum(p.total_bytes() for p in device._pools.values())
        return totals, ledger, images.nbytes + labels.nbytes
    finally:
        cupy_standin.deactivate()


def report(totals, ledger, input_bytes, top):
    gb = 1e9
    h2d_ok = totals.get("h2d_bytes", 0) == input_bytes and totals.get("h2d", 0) == 2
    rows = [
        ("kernel launches", totals.get("launches", 0), f"<= {TARGETS['launches']}",
         totals.get("launches", 0) <= TARGETS["launches"]),
        ("memory traffic (GB read + written)", f"{totals.get('traffic', 0) / gb:.2f}",
         f"<= {TARGETS['traffic_gb']}", totals.get("traffic", 0) / gb <= TARGETS["traffic_gb"]),
        ("  of which read / written (GB)", f"{totals.get('read', 0) / gb:.2f} / {totals.get('written', 0) / gb:.2f}",
         "", None),
        ("GEMM TFLOP", f"{totals.get('flops', 0) / 1e12:.3f}", "", None),
        ("operand copies in matmul", f"{totals.get('matmul_copies', 0)} "
         f"({totals.get('matmul_copy_bytes', 0) / gb:.2f} GB)", "0", totals.get("matmul_copies", 0) == 0),
        ("synchronizations before the step's end", totals.get("syncs_before_end", 0), "0",
         totals.get("syncs_before_end", 0) == 0),
        ("host-to-device copies", f"{totals.get('h2d', 0)} ({totals.get('h2d_bytes', 0) / 1e6:.1f} MB)",
         f"inputs + labels ({input_bytes / 1e6:.1f} MB)", h2d_ok),
        ("device-to-host copies", f"{totals.get('d2h', 0)} ({totals.get('d2h_bytes', 0) / 1e3:.1f} kB)", "", None),
        ("new device allocations in this step", f"{totals.get('allocs', 0)} "
         f"({totals.get('alloc_bytes', 0) / 1e6:.1f} MB)", "0", totals.get("allocs", 0) == 0),
        ("  new allocations per step (count, MB)", " ".join(f"{n}/{b / 1e6:.0f}" for n, b in
                                                           totals["allocs_per_step"]), "", None),
        ("device memory: step / long-lived pools (GB)",
         f"{totals['pool_total_bytes'] / gb:.2f} / {totals['long_lived_bytes'] / gb:.2f}", "", None),
    ]
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"  {name:42s} {str(value):>22s}  {target:>28s}  {mark}")
    sites = ledger.by_site()
    print(f"\n  top {top} call sites by traffic (launches, GB):")
    for site, c in sorted(sites.items(), key=lambda kv: -kv[1]["traffic"])[:top]:
        print(f"    {c['launches']:4d} {c['traffic'] / gb:7.3f}  {site}")
    print(f"\n  top {top} call sites by launches:")
    for site, c in sorted(sites.items(), key=lambda kv: -kv[1]["launches"])[:top]:
        print(f"    {c['launches']:4d} {c['traffic'] / gb:7.3f}  {site}")
    for kind in ("sync", "h2d", "matmul_copy", "alloc"):
        where = ledger.sites_of(kind)
        if where:
            print(f"\n  {kind} events: " + "; ".join(f"{n}x {s}" for s, n in where.most_common(8)))
    return all(ok for _, _, _, ok in rows if ok is not None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=227)
    ap.add_argument("--steps", type=int, default=3, help="steps run; the last is counted (>= 2)")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    print(f"AlexNet 2012 step, {args.image_size}x{args.image_size}, batch {args.batch}, counted by the CuPy "
          f"stand-in on {platform.processor() or platform.machine()} (load {os.getloadavg()[0]:.1f})")
    t = time.perf_counter()
    totals, ledger, input_bytes = count_step(args.batch, args.image_size, max(2, args.steps))
    print(f"  ({time.perf_counter() - t:.0f} s for {max(2, args.steps)} steps under the stand-in)")
    ok = report(totals, ledger, input_bytes, args.top)
    print("\nall targets met" if ok else "\nsome targets missed")


if __name__ == "__main__":
    main()
