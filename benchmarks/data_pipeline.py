"""The ImageNet data pipeline: packing, the packed loader, the JPEG-folder
loader, and whether memory grows with the data set.

(a) Packing (``models.pack.pack``) of an ImageNet-like tree of JPEGs around
    500x375 (``models.imagenet_tree``) to 256x256, with 1 and 2 worker
    processes: images/s, and per core.
(b) The packed loader (``models.stream.BatchStream`` over a memory map in the
    page cache): 227 crops, reflections, PCA lighting and the mean image
    subtracted into float32 NCHW, batch 128, 1 and 2 worker threads (the
    consumer does nothing): images/s, and per worker.
(c) The JPEG-folder loader (decoding on the fly, ``folder_source``), batch 32,
    1 and 2 workers.
(d) Peak RssAnon (anonymous memory: what the process itself holds; the map's
    pages are the kernel's page cache) of a fresh process streaming the same
    number of batches from a 2,000-image and a 50,000-image set, packed and
    as a JPEG folder, with a consumer slow enough (a stand-in for the step)
    that the prefetch queue fills to its bound. Generating 50,000 JPEGs would take too long here, so:
    the 50,000-image pack holds the 2,000-image pack's images followed by a
    sparse hole of 48,000 images (zero pixels: the loader does the same work
    per image and the file takes no disk; opened with ``verify="quick"``), and
    the 50,000-file folder is made of hard links to the tree's JPEGs. The
    batches are drawn from the whole set (a permutation of all its images).

Run (prints figures; not a test; about a minute):

    .venv/bin/python benchmarks/data_pipeline.py [--keep DIR]
"""
import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import PAUSE_S, cpu_model  # noqa: E402 - this folder is on sys.path when run

from models import pack as mp  # noqa: E402
from models import stream as ms  # noqa: E402
from models.imagenet_tree import make_tree  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
#: Seconds the memory runs' consumer spends on each batch (a training step).
STEP_S = 0.25


def cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_info():
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs "
          f"(usable: {cores()}); numpy {np.__version__}")
    print(f"cpu: {cpu_model()}")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def tile_pack(src: str, out: str, n_train: int, sparse: bool = False) -> str:
    """A pack whose training split is ``src``'s training images repeated to
    ``n_train`` (``sparse``: the first 2,000 tiled, then a hole of zero
    images), with the same validation split, labels tiled, checksums
    recomputed."""
    p = mp.open_pack(src, verify="quick")
    tr = p.split("train")
    size, chunk = p.size, p.manifest["chunk"]
    img = size * size * 3
    os.makedirs(out)
    real = min(n_train, 2000) if sparse else n_train
    with open(os.path.join(out, "train.u8"), "wb") as f:
        block = np.asarray(tr.images).tobytes()
        left = real
        while left:
            k = min(left, len(tr))
            f.write(block[:k * img])
            left -= k
        f.truncate(n_train * img)
    shutil.copyfile(os.path.join(src, "val.u8"), os.path.join(out, "val.u8"))
    labels = np.resize(tr.labels, n_train)
    meta = mp._npz_bytes(train_labels=labels, val_labels=p.split("val").labels,
                         mean_image=p.mean_image, eigval=p.eigval, eigvec=p.eigvec)
    with open(os.path.join(out, "meta.npz"), "wb") as f:
        f.write(meta)
    zero = hashlib.sha256(bytes(chunk * img)).hexdigest()
    digests = []
    with open(os.path.join(out, "train.u8"), "rb") as f:
        for lo in range(0, n_train, chunk):
            hi = min(n_train, lo + chunk)
            if lo >= real and hi - lo == chunk:
                digests.append(zero)
                continue
            f.seek(lo * img)
            digests.append(hashlib.sha256(f.read((hi - lo) * img)).hexdigest())
    manifest = dict(p.manifest)
    manifest["splits"] = dict(manifest["splits"])
    manifest["splits"]["train"] = {"file": "train.u8", "count": n_train, "chunk_sha256": digests}
    manifest["parts"] = {"meta.npz": hashlib.sha256(meta).hexdigest()}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return out


def link_tree(tree, out: str, n_train: int) -> str:
    """A ``train/`` + ``val/`` folder of ``n_train`` hard links to the tree's
    training JPEGs (class by class, round robin)."""
    classes = tree.class_names
    by_class = {c: [p for p, lab in tree.train if lab == k] for k, c in enumerate(classes)}
    for c in classes:
        os.makedirs(os.path.join(out, "train", c))
        os.makedirs(os.path.join(out, "val", c))
    for i in range(n_train):
        c = classes[i % len(classes)]
        files = by_class[c]
        src = files[(i // len(classes)) % len(files)]
        os.link(src, os.path.join(out, "train", c, f"{i}.JPEG"))
    for path, lab in tree.val:
        os.link(path, os.path.join(out, "val", classes[lab], os.path.basename(path)))
    return out


def time_stream(source, batch, workers, batches, augment):
    """``(images/s, images per CPU-second)`` of ``batches`` batches after one
    warm-up batch (fresh stream; the consumer does nothing). The CPU time is
    this process's (its worker threads included): what the work costs
    whatever else the machine runs."""
    with ms.BatchStream(source, batch, seed=0, epoch=0, augment=augment, workers=workers,
                        prefetch=4) as s:
        it = iter(s)
        next(it)
        time.sleep(PAUSE_S)
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for _ in range(batches):
            x, y = next(it)
            n += len(y)
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def report(label, results):
    wall = [r[0] for r in results]
    cpu = [r[1] for r in results]
    print(f"  {label}: best {max(wall):.0f} images/s (runs: {', '.join(f'{r:.0f}' for r in wall)}); "
          f"{max(cpu):.0f} images per CPU-second")


def rss_child(spec: str, batches: int, batch: int) -> None:
    """In a fresh process: stream ``batches`` batches of ``spec`` (pack:PATH
    or folder:DIR) with 2 workers and print the peak RssAnon (sampled every
    2 ms) and the RssAnon before the stream, in kB."""
    def rss_anon():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    kind, _, path = spec.partition(":")
    if kind == "pack":
        source = mp.open_pack(path, verify="quick").split("train")
    else:
        source = ms.folder_source(path, "train", stats_sample=50)
        source.mean_image  # the statistics' sample, before the measurement
    before = rss_anon()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    with ms.BatchStream(source, batch, seed=0, epoch=0, workers=2, prefetch=4) as s:
        for k, _ in enumerate(s):
            time.sleep(STEP_S)  # a training step: the queue fills up to its bound
            if k + 1 == batches:
                break
    done.set()
    t.join()
    print(json.dumps({"n": len(source), "before_kB": before, "peak_kB": peak[0]}))


def rss(spec, batches, batch):
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", spec,
                        "--batches", str(batches), "--batch", str(batch)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--batches", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        rss_child(a.rss_child, a.batches, a.batch)
        return
    machine_info()
    work = a.keep or tempfile.mkdtemp(prefix="data_pipeline_")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        tree = make_tree(os.path.join(work, "tree"), classes=24, train_per_class=10,
                         val_per_class=2, around=(500, 375), seed=1)
        print(f"\ntree: {len(tree.train)} + {len(tree.val)} JPEGs around 500x375, "
              f"{len(tree.class_names)} classes, with the quirks "
              f"({time.perf_counter() - t0:.1f} s to write)")

        print("\n(a) packing to 256x256 (1,000 + 48 images: hard links to the tree's JPEGs; "
              "the time includes starting the worker processes)")
        linked = link_tree(tree, os.path.join(work, "f1000"), 1000)
        for w in (1, 2):
            out = os.path.join(work, f"pack{w}")
            c0 = time.process_time()
            s = mp.pack(linked, out, workers=w, progress=False)
            cpu = time.process_time() - c0
            extra = (f"; {s['packed'] / cpu:.0f} images per CPU-second" if w == 1 else
                     " (the workers' CPU time is not this process's)")
            print(f"  {w} worker(s): {s['images_per_s']:.0f} images/s, "
                  f"{s['images_per_s'] / w:.0f} per core ({s['packed']} images in "
                  f"{s['seconds']:.2f} s){extra}")
        base = os.path.join(work, "pack1")

        print("\n(b) packed loader: 227 crops + flips + PCA lighting + mean image, float32 NCHW, batch 128")
        p2k = tile_pack(base, os.path.join(work, "p2000"), 2000)
        tr = mp.open_pack(p2k).split("train")
        for w in (1, 2):
            report(f"{w} worker(s)", [time_stream(tr, 128, w, 8, ms.Augment()) for _ in range(3)])

        print("\n(c) JPEG folder loader (decoding 500x375 JPEGs on the fly), batch 32")
        fs = ms.folder_source(tree.root, "train", stats_sample=50)
        fs.mean_image
        for w in (1, 2):
            report(f"{w} worker(s)", [time_stream(fs, 32, w, 5, ms.Augment()) for _ in range(2)])

        print(f"\n(d) peak RssAnon of a fresh process streaming 16 batches of 32 (227 crops; 2 "
              f"workers, prefetch 4; the consumer takes {STEP_S} s per batch, so the queue fills)")
        p50k = tile_pack(p2k, os.path.join(work, "p50000"), 50000, sparse=True)
        f2k = link_tree(tree, os.path.join(work, "f2000"), 2000)
        f50k = link_tree(tree, os.path.join(work, "f50000"), 50000)
        for label, small, big in (("packed", f"pack:{p2k}", f"pack:{p50k}"),
                                  ("JPEG folder", f"folder:{f2k}", f"folder:{f50k}")):
            runs = {small: [], big: []}
            for _ in range(2):  # alternating, twice: the peak varies with the timing
                for spec in (small, big):
                    runs[spec].append(rss(spec, 16, 32))
            peaks = {k: [r["peak_kB"] / 1024 for r in v] for k, v in runs.items()}
            for spec in (small, big):
                r = runs[spec][0]
                print(f"  {label}, {r['n']:,} images: peak {min(peaks[spec]):.1f} / "
                      f"{max(peaks[spec]):.1f} MiB (min / max of 2 runs; before streaming "
                      f"{r['before_kB'] / 1024:.1f})")
            print(f"  {label}: 50,000 - 2,000 images: {min(peaks[big]) - min(peaks[small]):+.1f} "
                  f"MiB (minima), {max(peaks[big]) - max(peaks[small]):+.1f} MiB (maxima)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
