"""Does the streaming pipeline hide behind the AlexNet step? The same training
steps timed three ways, alternating, in one process.

(a) in memory: the batches, assembled beforehand by the same
    ``models.stream.BatchStream`` over the pack, held in a list;
(b) packed: a ``BatchStream`` over the pack (a memory map), ``--workers``
    threads assembling batches while the step runs;
(c) JPEG folder: a ``BatchStream`` decoding the generated tree's JPEGs
    (around ImageNet's 500x375) on the fly.

Each run starts from the same weights, momentum buffers and dropout state and
takes the same ``--steps`` batches (seed 0, epoch 0) of AlexNet 2012 (two
towers, SGD momentum 0.9, weight decay 5e-4) at ``--batch`` and
``--image-size`` (227: the paper's crops of 256x256 images; a smaller size
packs the images at ``size x 256/227`` for a quick check). A run is timed
as an epoch is in ``models.train``: from creating the stream (its workers
start, the first batch is assembled while nothing else runs) to the end of
the last step. The goal (ImageNet epochs of 40,000 steps, where the first
batch's wait does not count) compares the steady state: the run less that
first wait is also given. The order of the three rotates each repeat, so
none always follows the same one. Checks: every loss finite; (a) and (b)
bitwise equal (the same batches); (c) is reported against (a) (the folder's
mean image and colour statistics are estimated from its images, exactly
here as every training image is sampled).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/streaming_step.py
        [--steps 3] [--repeats 6] [--batch 32] [--image-size 227] [--workers 2] [--keep DIR]

Prints the CPU, the BLAS kernel and threads, and the load average before and
after (other people's jobs share this machine's cores).
"""
import argparse
import itertools
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import PAUSE_S, blas_info, cpu_model, pinned_openblas  # noqa: E402 - this folder is on sys.path

from models import alexnet as A  # noqa: E402
from models import pack as mp  # noqa: E402
from models import stream as ms  # noqa: E402
from models.imagenet_tree import make_tree  # noqa: E402

MODES = ("in memory", "packed", "JPEG folder")


def load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare(work, classes, per_class, size):
    """The generated tree (``classes x per_class`` training JPEGs around
    500x375) and its pack at ``size``, reused when ``work`` already has them."""
    root = os.path.join(work, f"tree-{classes}x{per_class}")
    if not os.path.isdir(os.path.join(root, "train")):
        t = time.perf_counter()
        make_tree(root + ".part", classes=classes, train_per_class=per_class, val_per_class=1,
                  around=(500, 375), seed=1)
        os.replace(root + ".part", root)
        print(f"wrote the tree in {time.perf_counter() - t:.1f} s")
    out = os.path.join(work, f"pack-{classes}x{per_class}-{size}")
    t = time.perf_counter()
    mp.pack(root, out, size=size, progress=False)  # continues or finds it done
    print(f"pack ready in {time.perf_counter() - t:.1f} s")
    return root, out


def run(mode, step, state, rng_state, steps, make_stream, batches):
    """One epoch-like run of ``steps`` steps from ``state``: ``(wall s, waits,
    step times, losses, CPU s of this process, its threads included)``; a wait is the time ``next`` took to hand over a
    batch (the first includes starting the stream's workers)."""
    step.load_state_arrays({k: v.copy() for k, v in state.items()})
    step.set_rng_state(rng_state)
    time.sleep(PAUSE_S)
    waits, times, losses = [], [], []
    stream = None
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if mode == "in memory":
            it = iter(batches)
        else:
            stream = make_stream(mode)
            it = iter(stream)
        w = t0  # the first wait: from creating the stream to its first batch
        for _ in range(steps):
            x, y = next(it)
            s = time.perf_counter()
            losses.append(step(x, y))
            times.append(time.perf_counter() - s)
            waits.append(s - w)
            w = time.perf_counter()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        if stream is not None:
            stream.close()
    return wall, waits, times, losses, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=227, help="the crop (227: the paper's)")
    ap.add_argument("--workers", type=int, default=2, help="BatchStream worker threads (the training default: 2)")
    ap.add_argument("--prefetch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--keep", help="generate the tree and pack here and keep them (default: a temporary folder)")
    a = ap.parse_args()
    crop = a.image_size
    size = 256 if crop == 227 else max(crop, round(crop * 256 / 227))
    images = a.steps * a.batch
    per_class = math.ceil(images / a.classes)

    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}  cpu: {cpu_model()}  cpus: {os.cpu_count()}  "
          f"numpy {np.__version__}  load average {load()}")
    print("pinned OpenBLAS variables:", " ".join(pinned_openblas()) or "none")
    work = a.keep or tempfile.mkdtemp(prefix="streaming_step_")
    os.makedirs(work, exist_ok=True)
    try:
        root, packed = prepare(work, a.classes, per_class, size)
        train = mp.open_pack(packed).split("train")
        folder = ms.folder_source(root, "train", size, stats_sample=len(train))
        folder.mean_image  # the statistics (every training image), before any timing
        augment = ms.Augment(crop=crop)
        sources = {"packed": train, "JPEG folder": folder}

        def make_stream(mode):
            return ms.BatchStream(sources[mode], a.batch, seed=0, epoch=0, augment=augment,
                                  workers=a.workers, prefetch=a.prefetch)

        with ms.BatchStream(train, a.batch, seed=0, epoch=0, augment=augment, workers=0) as s:
            if len(s) < a.steps:
                raise SystemExit(f"error: the pack has {len(s)} batches of {a.batch}, not {a.steps}")
            batches = [(x.copy(), y.copy()) for x, y in itertools.islice(s, a.steps)]

        t = time.perf_counter()
        model = A.alexnet(num_classes=len(train.class_names), image_size=crop, seed=0)
        step = A.train_step(model, lr=1e-4, momentum=0.9, weight_decay=5e-4)
        print(f"AlexNet 2012 at {crop}x{crop}, {len(train.class_names)} classes: built and compiled in "
              f"{time.perf_counter() - t:.1f} s; {images} images ({a.steps} steps of {a.batch}) from "
              f"{size}x{size} images; {a.workers} worker threads, prefetch {a.prefetch}")
        state = step.state_arrays()
        rng_state = step.get_rng_state()
        step(*batches[0])  # warm-up: first-call allocations, kernel choices
        print("BLAS:", "; ".join(blas_info()))

        results = {m: [] for m in MODES}
        for r in range(a.repeats):
            order = MODES[r % 3:] + MODES[:r % 3]
            for mode in order:
                results[mode].append(run(mode, step, state, rng_state, a.steps, make_stream, batches))
            print(f"  repeat {r + 1}: " + ", ".join(
                f"{m} {results[m][-1][0]:.1f} s" for m in order) + f"  (load average {load()})")

        print(f"\n== {a.steps} steps of AlexNet at batch {a.batch} ({crop}x{crop}), {a.repeats} repeats "
              f"alternating; load average now {load()}")
        print(f"  {'':12s} {'epoch s (median)':>16s} {'per step':>10s} {'step alone':>11s} "
              f"{'first wait':>11s} {'later waits':>12s} {'less 1st wait':>14s} {'CPU s':>7s}")
        summary = {}
        for m in MODES:
            walls = [x[0] for x in results[m]]
            firsts = [x[1][0] for x in results[m]]
            steady = [x[0] - x[1][0] for x in results[m]]
            later = [w for x in results[m] for w in x[1][1:]]
            alone = [t for x in results[m] for t in x[2]]
            cpus = [x[4] for x in results[m]]
            summary[m] = (walls, steady, cpus)
            print(f"  {m:12s} {statistics.median(walls):16.2f} {statistics.median(walls) / a.steps:10.3f} "
                  f"{statistics.median(alone):11.3f} {statistics.median(firsts):11.3f} "
                  f"{max(later) if later else 0:12.4f} {statistics.median(steady):14.2f} "
                  f"{statistics.median(cpus):7.2f}")
        print("  (seconds; 'later waits': the longest wait for any batch after the first; 'less 1st wait': "
              "the epoch less the wait for its first batch, which a long epoch amortizes; CPU s: the process's "
              "CPU time, worker threads included, which the other jobs' load changes less than the wall time)")
        base_w, base_s, base_c = summary["in memory"]
        for m, goal in (("packed", 1.05), ("JPEG folder", 1.15)):
            w, s, c = summary[m]
            per_rep = [x / y for x, y in zip(w, base_w)]
            per_rep_s = [x / y for x, y in zip(s, base_s)]
            print(f"  {m}/in memory: epoch {statistics.median(w) / statistics.median(base_w):.3f}x "
                  f"(per repeat {', '.join(f'{x:.3f}' for x in per_rep)}); less the first wait "
                  f"{statistics.median(s) / statistics.median(base_s):.3f}x "
                  f"(per repeat {', '.join(f'{x:.3f}' for x in per_rep_s)}); CPU time "
                  f"{statistics.median(c) / statistics.median(base_c):.3f}x; goal <= {goal}x")

        losses = {m: [x[3] for x in results[m]] for m in MODES}
        finite = all(math.isfinite(v) for m in MODES for rep in losses[m] for v in rep)
        same = all(rep == losses["in memory"][0] for m in ("in memory", "packed") for rep in losses[m])
        diff = max(abs(u - v) for rep in losses["JPEG folder"] for u, v in zip(rep, losses["in memory"][0]))
        print(f"\nlosses (in memory, first repeat): {', '.join(f'{v:.4f}' for v in losses['in memory'][0])}")
        print(f"every loss finite: {finite}; in memory and packed bitwise equal in every repeat: {same}; "
              f"JPEG folder against in memory: largest difference {diff:.2e}")
        if not (finite and same):
            raise SystemExit("error: the check failed (see above)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
