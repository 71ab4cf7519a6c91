"""A packed image data set: ImageNet (or any ``train/`` + ``val/`` class-folder
tree) decoded once into a memory-mappable file of uint8 images, the way the
paper prepared it (Krizhevsky et al. 2012, section 2): each image rescaled so
its *shorter* side is ``size`` (256) and the central ``size`` x ``size`` patch
kept. Training then streams random crops from the map (:mod:`models.stream`)
and never holds the data set in memory; the kernel's page cache does.

Command line::

    python -m models.pack DIR --out FILE [--size 256] [--workers N] [--skip-bad]
    python -m models.pack --verify FILE   # re-hash every chunk of a finished pack

``FILE`` is a folder holding:

``train.u8``, ``val.u8``
    the images, raw uint8, shape ``(N, size, size, 3)`` (RGB, row-major HWC),
    read as ``np.memmap``;
``meta.npz``
    ``train_labels``, ``val_labels`` (int64), ``mean_image`` (float32
    ``(size, size, 3)``, the per-pixel mean of the training split, in pixel
    units 0..255) and ``eigval`` (3,), ``eigvec`` (3, 3): the eigen-
    decomposition of the 3x3 covariance of the training split's RGB pixel
    values (units 0..255, eigenvalues descending, eigenvector ``i`` is column
    ``eigvec[:, i]``), which PCA lighting uses;
``manifest.json``
    written last and atomically: class names, counts, the SHA-256 of
    ``meta.npz`` and of every chunk of images (``chunk`` images each), the
    files skipped under ``--skip-bad``. A pack without it is unfinished and
    :func:`open_pack` refuses it;
``verified.json``
    the stamp of the last full verification (:func:`open_pack`): the
    manifest's SHA-256 and each image file's size, ``st_mtime_ns`` and
    ``st_ctime_ns`` when every chunk matched its checksum. Packing writes it
    (its checksums are of the very bytes it wrote), as does the first full
    verification of a pack without one; while the files still have that size
    and those dates, ``verify="auto"`` does not read them again.

Packing survives ``kill -9``: ``plan.json`` (the file list) is written first;
the images are written in chunks, each chunk's bytes made durable
(``fdatasync``) before a line naming it is appended (and ``fsync``-ed) to
``journal.log``; running the command again redoes only the chunks the journal
does not name, so a half-written chunk is never taken for data. The running
sums behind the mean image and the colour covariance are saved to
``stats.npz`` now and then; chunks finished after the last save are summed
again from the file on resume.

Image quirks handled (:func:`decode`): greyscale and CMYK JPEGs, a PNG (or any
format Pillow reads) named ``.JPEG``, EXIF orientation
(``ImageOps.exif_transpose``), 16-bit PNGs (scaled, not clipped). A corrupt or
zero-byte file raises :class:`PackError` naming it; under ``skip_bad`` it is
left out and counted, its slot filled by the split's last image (the order of
a data set does not matter; this keeps the file one contiguous array without
rewriting it).

Decoding uses Pillow: ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8
scale when an image is at least twice the target size (large photos decode
several times faster), and ``resize(box=...)`` resamples only the central
square (antialiased bilinear).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from graphdiff.atomic import atomic_write
from models.data import DataError, IMAGE_EXTENSIONS, _class_dirs, _list_images

__all__ = ["PackError", "Pack", "PackSplit", "open_pack", "pack", "scan", "decode", "decode_array",
           "DEFAULT_SIZE", "DEFAULT_CHUNK"]

DEFAULT_SIZE = 256
#: Images per chunk: the unit of writing, journaling and checksumming.
DEFAULT_CHUNK = 256
FORMAT = "graphdiff-pack"
VERSION = 1
SPLITS = ("train", "val")
#: The stamp of a passed full verification (see :func:`open_pack`).
STAMP = "verified.json"
STAMP_FORMAT = "graphdiff-pack-verified"
VERIFY_MODES = (True, False, "full", "auto", "quick")
#: Seconds between saves of the running statistics while packing.
STATS_EVERY_S = 30.0


class PackError(DataError):
    """A pack that cannot be made or used: a bad source image (named), an
    unfinished pack, a checksum mismatch, a different pack in the way."""


# --------------------------------------------------------------------------
# Decoding one image
# --------------------------------------------------------------------------


def decode(path: str, size: int = DEFAULT_SIZE) -> np.ndarray:
    """uint8 ``(size, size, 3)``: the image at ``path``, turned upright by its
    EXIF orientation, with its shorter side scaled to ``size`` and the central
    square kept (RGB; grey images replicated; CMYK converted; 16-bit values
    divided by 257). Raises :class:`PackError` naming ``path`` for an empty,
    truncated or unreadable file."""
    from PIL import Image, ImageOps

    try:
        if os.path.getsize(path) == 0:
            raise PackError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as im:
            # Let libjpeg decode at a reduced scale whose shorter side is
            # still >= size (a no-op for other formats).
            im.draft("RGB", (size, size))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # (not in place: a copy, even when upright)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                # 16-bit grey: convert("L") would clip at 255 (all white).
                wide = np.asarray(im).astype(np.int64)
                im = Image.fromarray(((wide + 128) // 257).clip(0, 255).astype(np.uint8))
            if im.mode != "RGB":
                im = im.convert("RGB")
            arr = _central_square(im, size)
    except PackError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise PackError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if arr.shape != (size, size, 3):
        raise PackError(f"{path}: decoded to shape {arr.shape}, not ({size}, {size}, 3)")
    return arr


def _central_square(im, size: int) -> np.ndarray:
    """Rescale the shorter side of the RGB PIL image ``im`` to ``size`` and
    keep the central square: one (antialiased bilinear) resample of just
    that square of the source."""
    from PIL import Image

    w, h = im.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    out = im.resize((size, size), Image.Resampling.BILINEAR,
                    box=(left, top, left + side, top + side))
    return np.asarray(out, dtype=np.uint8)


def decode_array(rgb: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """What :func:`decode` makes of an image already in memory (uint8 HWC RGB)."""
    from PIL import Image

    return _central_square(Image.fromarray(np.asarray(rgb, np.uint8)), size)


# --------------------------------------------------------------------------
# Finding the images
# --------------------------------------------------------------------------


def _read_val_solution(csv_path: str, class_names) -> dict:
    """``{image id: label}`` from the devkit's ``LOC_val_solution.csv``
    (``ImageId,PredictionString``; the first word of the prediction string
    is the image's wnid)."""
    index = {n: k for k, n in enumerate(class_names)}
    out = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise PackError(f"{csv_path}: expected the header ImageId,PredictionString")
            for line, row in enumerate(rows, start=2):
                if not row:
                    continue
                words = row[1].split() if len(row) > 1 else []
                if not words:
                    raise PackError(f"{csv_path}: line {line}: no class for {row[0]!r}")
                if words[0] not in index:
                    raise PackError(f"{csv_path}: line {line}: class {words[0]!r} is not "
                                    "a folder of train/")
                out[row[0].strip()] = index[words[0]]
    except OSError as exc:
        raise PackError(f"{csv_path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise PackError(f"{csv_path}: not a text file ({exc})") from None
    return out


def _scan_classes(root: str, class_names) -> list:
    index = {n: k for k, n in enumerate(class_names)}
    found = _class_dirs(root)
    unknown = sorted(set(found) - set(index))
    if unknown:
        raise PackError(f"{root}: class folders {unknown[:5]} are not folders of train/")
    items = []
    for name in found:
        items += [(p, index[name]) for p in _list_images(os.path.join(root, name))]
    return items


def scan(src_dir: str, val_fraction: Optional[float] = None, seed: int = 0) -> dict:
    """The images of a source tree: ``{"class_names": [...], "train": [(path,
    label), ...], "val": [...]}``, labels in the order of the sorted class
    folder names of ``train/`` (ILSVRC's wnids sorted: the usual class
    indices). ``val/`` is class folders, or flat with ``LOC_val_solution.csv``
    beside ``train/`` and ``val/`` (or inside ``val/``, or up to three folders
    above them, as in Kaggle's ``ILSVRC/Data/CLS-LOC/``), or absent (an empty
    validation split). With ``val_fraction``, a folder of class folders
    without ``train/`` is accepted too and split per class (seeded by
    ``seed``, as ``models.data``'s ``folder:`` loader splits it)."""
    try:
        if not os.path.isdir(src_dir):
            raise PackError(f"{src_dir}: not a directory")
        train_dir, val_dir = os.path.join(src_dir, "train"), os.path.join(src_dir, "val")
        if not os.path.isdir(train_dir) and val_fraction is not None and _class_dirs(src_dir):
            return _split_flat(src_dir, val_fraction, seed)
        if not os.path.isdir(train_dir):
            raise PackError(f"{src_dir}: no train/ folder (expected train/<class>/ images, "
                            "and val/)")
        class_names = _class_dirs(train_dir)
        if not class_names:
            raise PackError(f"{train_dir}: no class folders")
        train = _scan_classes(train_dir, class_names)
        if not train:
            raise PackError(f"{train_dir}: no {'/'.join(IMAGE_EXTENSIONS)} images")
        val = []
        if os.path.isdir(val_dir):
            if _class_dirs(val_dir):
                val = _scan_classes(val_dir, class_names)
            else:
                flat = _list_images(val_dir)
                if flat:
                    # beside train/ and val/, inside val/, or (Kaggle's download:
                    # ILSVRC/Data/CLS-LOC/{train,val} under the csv) up to three levels up
                    up = [os.path.join(os.path.abspath(src_dir), *[".."] * k) for k in (1, 2, 3)]
                    candidates = [os.path.normpath(os.path.join(d, "LOC_val_solution.csv"))
                                  for d in [src_dir, val_dir] + up]
                    csv_path = next((c for c in candidates if os.path.isfile(c)), None)
                    if csv_path is None:
                        raise PackError(f"{val_dir}: images without class folders, and no "
                                        f"LOC_val_solution.csv beside train/ and val/ gives "
                                        "their classes")
                    labels = _read_val_solution(csv_path, class_names)
                    for p in flat:
                        stem = os.path.splitext(os.path.basename(p))[0]
                        if stem not in labels:
                            raise PackError(f"{p}: not listed in {csv_path}")
                        val.append((p, labels[stem]))
    except DataError as exc:
        raise PackError(str(exc)) from None
    except OSError as exc:
        raise PackError(f"{src_dir}: cannot read ({exc.strerror or exc})") from None
    return {"class_names": class_names, "train": train, "val": val}


def _split_flat(root: str, val_fraction: float, seed: int) -> dict:
    from models.data import _stratified_split

    class_names = _class_dirs(root)
    items = _scan_classes(root, class_names)
    if not items:
        raise PackError(f"{root}: no {'/'.join(IMAGE_EXTENSIONS)} images")
    labels = np.array([lab for _, lab in items])
    train_idx, val_idx = _stratified_split(labels, val_fraction, np.random.default_rng(seed))
    return {"class_names": class_names, "train": [items[i] for i in sorted(train_idx)],
            "val": [items[i] for i in sorted(val_idx)]}


# --------------------------------------------------------------------------
# Small durable-file helpers
# --------------------------------------------------------------------------


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the
    new one, never a mix (:func:`graphdiff.atomic.atomic_write`: a temporary
    file, fsync, rename, fsync the folder)."""
    with atomic_write(path) as f:
        f.write(data)


def _npz_bytes(**arrays) -> bytes:
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Statistics (mean image, RGB covariance)
# --------------------------------------------------------------------------


class _Stats:
    """Running sums over training images: per-pixel sum (for the mean image)
    and the RGB first and second moments (for the colour covariance), in
    float64, plus which chunks they include."""

    def __init__(self, size: int, chunks: int):
        self.pixel_sum = np.zeros((size, size, 3), np.float64)
        self.rgb_sum = np.zeros(3, np.float64)
        self.rgb_outer = np.zeros((3, 3), np.float64)
        self.images = 0
        self.done = np.zeros(chunks, bool)

    @staticmethod
    def of(images: np.ndarray, good) -> tuple:
        """Sums over ``images[good]`` (uint8 NHWC): (pixel_sum, rgb_sum, rgb_outer, count).
        The per-pixel sum is exact (uint32: up to 16 million images per call);
        the 3x3 ``sum x x^T`` is one float64 ``X X^T`` per image, X the three
        colour planes as rows."""
        size = images.shape[1]
        acc = np.zeros((size, size, 3), np.uint32)
        rgb_outer = np.zeros((3, 3), np.float64)
        planes = np.empty((3, size * size), np.float64)
        count = 0
        for j in np.flatnonzero(good):
            acc += images[j]
            planes[...] = images[j].reshape(-1, 3).T
            rgb_outer += planes @ planes.T
            count += 1
        pixel_sum = acc.astype(np.float64)
        return pixel_sum, pixel_sum.sum(axis=(0, 1)), rgb_outer, count

    def add(self, chunk: int, sums) -> None:
        if self.done[chunk]:
            return
        self.pixel_sum += sums[0]
        self.rgb_sum += sums[1]
        self.rgb_outer += sums[2]
        self.images += sums[3]
        self.done[chunk] = True

    def save(self, path: str) -> None:
        _write_atomic(path, _npz_bytes(pixel_sum=self.pixel_sum, rgb_sum=self.rgb_sum,
                                       rgb_outer=self.rgb_outer, images=self.images,
                                       done=self.done))

    def load(self, path: str) -> bool:
        try:
            with np.load(path) as z:
                parts = (z["pixel_sum"], z["rgb_sum"], z["rgb_outer"], int(z["images"]), z["done"])
        except Exception:  # noqa: BLE001 - missing or torn: the sums are redone from the data
            return False
        if parts[0].shape != self.pixel_sum.shape or parts[4].shape != self.done.shape:
            return False
        self.pixel_sum, self.rgb_sum, self.rgb_outer, self.images, self.done = parts
        return True

    def finish(self) -> tuple:
        """``(mean_image float32, eigval (3,), eigvec (3, 3))``: eigenvalues
        of the pixel covariance ``E[x x^T] - E[x] E[x]^T``, descending,
        eigenvectors as columns, each signed so its largest entry is positive."""
        if self.images == 0:
            raise PackError("no training image could be read")
        n_pix = self.images * self.pixel_sum.shape[0] * self.pixel_sum.shape[1]
        mu = self.rgb_sum / n_pix
        cov = self.rgb_outer / n_pix - np.outer(mu, mu)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = eigval[order], eigvec[:, order]
        signs = np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), np.arange(3)])
        eigvec = eigvec * np.where(signs == 0, 1, signs)
        mean = (self.pixel_sum / self.images).astype(np.float32)
        return mean, np.maximum(eigval, 0).astype(np.float32), eigvec.astype(np.float32)


# --------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------


def _chunk_task(task) -> dict:
    """Decode, write (durably) and checksum one chunk; runs in a worker."""
    out_dir, split, chunk, start, paths, size, skip_bad, want_stats = task
    images = np.zeros((len(paths), size, size, 3), np.uint8)
    bad = []
    for j, path in enumerate(paths):
        try:
            images[j] = decode(path, size)
        except PackError as exc:
            if not skip_bad:
                raise
            bad.append([start + j, str(exc)])
    fd = os.open(os.path.join(out_dir, f"{split}.u8"), os.O_WRONLY)
    try:
        view = memoryview(images).cast("B")
        offset = start * size * size * 3
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        os.fdatasync(fd)  # the data is durable before the journal names it
    finally:
        os.close(fd)
    result = {"split": split, "chunk": chunk, "digest": hashlib.sha256(images).hexdigest(),
              "bad": bad}
    if want_stats:
        good = np.ones(len(paths), bool)
        good[[b[0] - start for b in bad]] = False
        result["sums"] = _Stats.of(images, good)
    return result


def _plan(src_dir: str, size: int, chunk: int) -> dict:
    found = scan(src_dir)
    root = os.path.abspath(src_dir)
    return {
        "format": FORMAT, "version": VERSION, "source": root, "size": size, "chunk": chunk,
        "class_names": found["class_names"],
        "splits": {s: {"paths": [os.path.relpath(p, root) for p, _ in found[s]],
                       "labels": [int(lab) for _, lab in found[s]]} for s in SPLITS},
    }


def _read_journal(path: str) -> dict:
    """``{(split, chunk): record}`` of the complete lines of the journal (a
    line torn by a crash is ignored: its chunk is redone)."""
    done = {}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return done
    for line in data.split(b"\n"):
        try:
            rec = json.loads(line)
            done[(rec["split"], int(rec["chunk"]))] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return done


def _pool(workers: int):
    import multiprocessing as mp
    # forkserver: safe where the caller has threads running (fork is not);
    # the server imports this module once and each worker starts as its fork.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["models.pack"])
    else:
        ctx = mp.get_context("spawn")
    return ctx.Pool(workers)


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pack(src_dir, out_path, size: int = DEFAULT_SIZE, workers: Optional[int] = None,
         skip_bad: bool = False, progress: bool = True, chunk: int = DEFAULT_CHUNK) -> dict:
    """Pack the images under ``src_dir`` into the folder ``out_path`` (see the
    module docstring); resumes an unfinished pack of the same source and size.
    ``workers`` processes decode in parallel (default: every core; 1 decodes
    in this process). Returns a summary: ``{"path", "train", "val",
    "classes", "skipped", "skipped_files", "chunks_done_before", "seconds",
    "images_per_s"}``."""
    size, chunk = int(size), int(chunk)
    if size < 8:
        raise PackError(f"size must be at least 8 pixels, got {size}")
    if chunk < 1:
        raise PackError(f"chunk must be positive, got {chunk}")
    workers = _default_workers() if workers is None else int(workers)
    if workers < 1:
        raise PackError(f"workers must be positive, got {workers}")
    out_path = os.fspath(out_path)
    t0 = time.perf_counter()
    manifest_path = os.path.join(out_path, "manifest.json")
    plan_path = os.path.join(out_path, "plan.json")
    root = os.path.abspath(src_dir)
    if os.path.exists(out_path) and not os.path.isdir(out_path):
        raise PackError(f"{out_path}: exists and is not a pack folder")
    if os.path.isfile(manifest_path):
        manifest = _read_manifest(out_path)
        if manifest.get("source") != root or manifest.get("size") != size:
            raise PackError(f"{out_path}: holds a finished pack of {manifest.get('source')} at "
                            f"size {manifest.get('size')}; choose another --out or remove it")
        _cleanup(out_path, manifest)
        return _summary(out_path, manifest, 0, time.perf_counter() - t0, done_before=None)
    if os.path.isfile(plan_path):
        try:
            with open(plan_path, encoding="utf-8") as f:
                plan = json.load(f)
        except (OSError, ValueError) as exc:
            raise PackError(f"{plan_path}: unreadable ({exc}); remove {out_path} and pack again"
                            ) from None
        if plan.get("source") != root or plan.get("size") != size:
            raise PackError(f"{out_path}: holds an unfinished pack of {plan.get('source')} at "
                            f"size {plan.get('size')}; choose another --out or remove it")
        chunk = int(plan["chunk"])
        for s in SPLITS:
            file = os.path.join(out_path, f"{s}.u8")
            need = len(plan["splits"][s]["paths"]) * size * size * 3
            if not os.path.isfile(file) or os.path.getsize(file) != need:
                raise PackError(f"{out_path}: unfinished pack whose {s}.u8 is missing or of the "
                                "wrong size; remove the folder and pack again")
    else:
        if os.path.isdir(out_path) and os.listdir(out_path):
            raise PackError(f"{out_path}: a folder that is not a pack is in the way")
        plan = _plan(src_dir, size, chunk)
        os.makedirs(out_path, exist_ok=True)
        for s in SPLITS:  # sparse files of the final size; chunks fill them
            with open(os.path.join(out_path, f"{s}.u8"), "wb") as f:
                f.truncate(len(plan["splits"][s]["paths"]) * size * size * 3)
        _write_atomic(plan_path, json.dumps(plan).encode())

    journal_path = os.path.join(out_path, "journal.log")
    stats_path = os.path.join(out_path, "stats.npz")
    done = _read_journal(journal_path)
    n = {s: len(plan["splits"][s]["paths"]) for s in SPLITS}
    n_chunks = {s: -(-n[s] // chunk) for s in SPLITS}
    stats = _Stats(size, n_chunks["train"])
    stats.load(stats_path)
    # Sums of chunks journaled after the last save of the statistics.
    for (s, k), rec in sorted(done.items()):
        if s == "train" and not stats.done[k]:
            stats.add(k, _sums_from_file(out_path, plan, k, rec))
    tasks = []
    for s in SPLITS:
        paths = [os.path.join(root, p) for p in plan["splits"][s]["paths"]]
        for k in range(n_chunks[s]):
            if (s, k) not in done:
                lo = k * chunk
                tasks.append((out_path, s, k, lo, paths[lo:lo + chunk], size, skip_bad,
                              s == "train"))
    done_before = len(done)
    total = sum(n.values())
    remaining = sum(len(t[4]) for t in tasks)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=total - remaining, unit="img", desc="packing",
                   file=sys.stderr, dynamic_ncols=True)
    pool = _pool(min(workers, len(tasks))) if workers > 1 and len(tasks) > 1 else None
    try:
        results = pool.imap_unordered(_chunk_task, tasks) if pool else map(_chunk_task, tasks)
        last_save = time.monotonic()
        with open(journal_path, "ab") as journal:
            for res in results:
                sums = res.pop("sums", None)
                journal.write(json.dumps(res).encode() + b"\n")
                journal.flush()
                os.fsync(journal.fileno())
                done[(res["split"], res["chunk"])] = res
                if sums is not None:
                    stats.add(res["chunk"], sums)
                if time.monotonic() - last_save > STATS_EVERY_S:
                    stats.save(stats_path)
                    last_save = time.monotonic()
                if bar is not None:
                    bar.update(min(chunk, n[res["split"]] - res["chunk"] * chunk))
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    stats.save(stats_path)
    manifest = _finish(out_path, plan, done, stats)
    _cleanup(out_path, manifest)
    # The manifest's checksums are of the bytes written (and made durable)
    # here: the pack counts as verified until its files change.
    _write_stamp(out_path, _manifest_sha256(out_path), _file_stats(out_path, manifest))
    return _summary(out_path, manifest, remaining, time.perf_counter() - t0, done_before)


def _sums_from_file(out_path, plan, k, rec) -> tuple:
    size, chunk = plan["size"], plan["chunk"]
    n = len(plan["splits"]["train"]["paths"])
    lo, hi = k * chunk, min(n, (k + 1) * chunk)
    images = np.memmap(os.path.join(out_path, "train.u8"), np.uint8, "r",
                       shape=(n, size, size, 3))[lo:hi]
    good = np.ones(hi - lo, bool)
    good[[b[0] - lo for b in rec["bad"]]] = False
    return _Stats.of(images, good)


def _finish(out_path: str, plan: dict, done: dict, stats: _Stats) -> dict:
    """Fill the slots of skipped files, write ``meta.npz`` and then the
    manifest. Safe to repeat after a crash: slots are filled from images
    beyond the split's final count, which nothing overwrites."""
    size, chunk = plan["size"], plan["chunk"]
    img_bytes = size * size * 3
    labels, digests, skipped = {}, {}, []
    for s in SPLITS:
        n = len(plan["splits"][s]["paths"])
        lab = np.array(plan["splits"][s]["labels"], np.int64)
        recs = [done[(s, k)] for k in range(-(-n // chunk))]
        bad = sorted(b[0] for r in recs for b in r["bad"])
        skipped += [b[1] for r in recs for b in r["bad"]]
        count = n - len(bad)
        digests[s] = [r["digest"] for r in recs]
        if bad:
            holes = [b for b in bad if b < count]
            bad_set = set(bad)
            sources = [i for i in range(n - 1, count - 1, -1) if i not in bad_set]
            path = os.path.join(out_path, f"{s}.u8")
            fd = os.open(path, os.O_RDWR)
            try:
                for hole, src in zip(holes, sources):
                    os.pwrite(fd, os.pread(fd, img_bytes, src * img_bytes), hole * img_bytes)
                    lab[hole] = lab[src]
                os.fdatasync(fd)
            finally:
                os.close(fd)
            lab = lab[:count]
            # New checksums for the chunks that changed: those with a filled
            # slot, and the last one (now shorter); the split may also have
            # lost whole chunks at its end.
            n_chunks = -(-count // chunk)
            changed = {h // chunk for h in holes} | ({n_chunks - 1} if count else set())
            digests[s] = digests[s][:n_chunks]
            if count:
                images = np.memmap(path, np.uint8, "r", shape=(n, size, size, 3))
                for k in sorted(changed):
                    digests[s][k] = hashlib.sha256(
                        images[k * chunk:min(count, (k + 1) * chunk)]).hexdigest()
                del images
        labels[s] = lab
    mean, eigval, eigvec = stats.finish()
    meta = _npz_bytes(train_labels=labels["train"], val_labels=labels["val"],
                      mean_image=mean, eigval=eigval, eigvec=eigvec)
    _write_atomic(os.path.join(out_path, "meta.npz"), meta)
    manifest = {
        "format": FORMAT, "version": VERSION, "source": plan["source"], "size": size,
        "chunk": chunk, "class_names": plan["class_names"],
        "splits": {s: {"file": f"{s}.u8", "count": int(len(labels[s])),
                       "chunk_sha256": digests[s]} for s in SPLITS},
        "parts": {"meta.npz": hashlib.sha256(meta).hexdigest()},
        "skipped": skipped,
    }
    _write_atomic(os.path.join(out_path, "manifest.json"),
                  json.dumps(manifest, indent=1).encode())
    return manifest


def _cleanup(out_path: str, manifest: dict) -> None:
    """After the manifest: trim the image files to their final counts and
    remove the packing journal (idempotent)."""
    img_bytes = manifest["size"] ** 2 * 3
    for s, info in manifest["splits"].items():
        path = os.path.join(out_path, info["file"])
        if os.path.getsize(path) > info["count"] * img_bytes:
            os.truncate(path, info["count"] * img_bytes)
    for name in ("journal.log", "stats.npz", "plan.json"):
        try:
            os.remove(os.path.join(out_path, name))
        except FileNotFoundError:
            pass


def _summary(out_path, manifest, packed, seconds, done_before) -> dict:
    return {
        "path": out_path,
        "train": manifest["splits"]["train"]["count"],
        "val": manifest["splits"]["val"]["count"],
        "classes": len(manifest["class_names"]),
        "skipped": len(manifest["skipped"]),
        "skipped_files": list(manifest["skipped"]),
        "chunks_done_before": done_before,
        "packed": packed,
        "seconds": seconds,
        "images_per_s": packed / seconds if seconds > 0 else 0.0,
    }


# --------------------------------------------------------------------------
# Reading a pack
# --------------------------------------------------------------------------


def _read_manifest(path: str) -> dict:
    mpath = os.path.join(path, "manifest.json")
    if not os.path.isdir(path):
        raise PackError(f"{path}: no such pack (make one with: python -m models.pack DIR --out {path})")
    if not os.path.isfile(mpath):
        if os.path.isfile(os.path.join(path, "plan.json")):
            raise PackError(f"{path}: unfinished pack (packing stopped before the end; run "
                            "python -m models.pack again with the same DIR and --out to finish it)")
        raise PackError(f"{path}: not a pack (no manifest.json)")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise PackError(f"{path}: not a version-{VERSION} {FORMAT} manifest")
        for s in SPLITS:
            manifest["splits"][s]["count"], manifest["splits"][s]["chunk_sha256"]
        manifest["size"], manifest["chunk"], manifest["class_names"], manifest["parts"]
    except PackError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PackError(f"{mpath}: unreadable or damaged manifest ({type(exc).__name__}: {exc})"
                        ) from None
    return manifest


@dataclass
class PackSplit:
    """One split of a pack, usable as a :mod:`models.stream` source:
    ``images`` (uint8 memmap ``(N, size, size, 3)``), ``labels`` (int64),
    ``load(i)`` (image ``i``, a view into the map), and the pack's class names,
    size and training statistics."""
    pack: "Pack"
    name: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> np.ndarray:
        return self.images[i]

    def describe(self, i: int) -> str:
        return f"{self.pack.path}: {self.name} image {i}"

    @property
    def class_names(self):
        return self.pack.class_names

    @property
    def size(self) -> int:
        return self.pack.size

    @property
    def mean_image(self):
        return self.pack.mean_image

    @property
    def eigval(self):
        return self.pack.eigval

    @property
    def eigvec(self):
        return self.pack.eigvec


class Pack:
    """A finished, verified pack (see :func:`open_pack`)."""

    def __init__(self, path: str, manifest: dict, meta: dict):
        self.path = path
        self.manifest = manifest
        self.size = int(manifest["size"])
        self.class_names = list(manifest["class_names"])
        self.skipped = list(manifest["skipped"])
        self.mean_image = meta["mean_image"]
        self.eigval = meta["eigval"]
        self.eigvec = meta["eigvec"]
        self._splits = {}
        for s in SPLITS:
            n = int(manifest["splits"][s]["count"])
            file = os.path.join(path, manifest["splits"][s]["file"])
            images = (np.memmap(file, np.uint8, "r", shape=(n, self.size, self.size, 3))
                      if n else np.zeros((0, self.size, self.size, 3), np.uint8))
            self._splits[s] = PackSplit(self, s, images, meta[f"{s}_labels"])

    def split(self, name: str) -> PackSplit:
        if name not in self._splits:
            raise PackError(f"{self.path}: no split {name!r}; splits: {', '.join(SPLITS)}")
        return self._splits[name]

    def __repr__(self) -> str:
        return (f"Pack({self.path!r}, size={self.size}, classes={len(self.class_names)}, "
                f"train={len(self.split('train'))}, val={len(self.split('val'))})")


def _verify_split(path: str, name: str, info: dict, size: int, chunk: int, workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    file = os.path.join(path, info["file"])
    img_bytes = size * size * 3
    n = int(info["count"])
    chunks = -(-n // chunk)
    if len(info["chunk_sha256"]) != chunks:
        raise PackError(f"{path}: manifest lists {len(info['chunk_sha256'])} checksums for "
                        f"{chunks} chunks of {name}")

    def check(k):
        lo, hi = k * chunk, min(n, (k + 1) * chunk)
        h = hashlib.sha256()  # releases the GIL on large buffers: threads verify in parallel
        with open(file, "rb") as f:
            f.seek(lo * img_bytes)
            left = (hi - lo) * img_bytes
            while left:
                block = f.read(min(left, 1 << 24))
                if not block:
                    break
                h.update(block)
                left -= len(block)
        return k, h.hexdigest() == info["chunk_sha256"][k]

    with ThreadPoolExecutor(max(1, workers)) as ex:
        for k, ok in ex.map(check, range(chunks)):
            if not ok:
                lo = k * chunk
                raise PackError(f"{path}: {info['file']} images {lo}..{min(n, lo + chunk) - 1} "
                                "fail their checksum (the pack is corrupted; pack it again)")


def _manifest_sha256(path: str) -> str:
    return _sha256_file(os.path.join(path, "manifest.json"))


def _file_stats(path: str, manifest: dict) -> dict:
    """``{file: {"size", "mtime_ns", "ctime_ns"}}`` of the pack's image files
    now. ``ctime`` cannot be set back by ``os.utime`` and changes on a copy
    (which is then verified again, once)."""
    out = {}
    for s in SPLITS:
        name = manifest["splits"][s]["file"]
        st = os.stat(os.path.join(path, name))
        out[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}
    return out


def _write_stamp(path: str, manifest_sha256: str, stats: dict) -> bool:
    """Record a passed full verification in ``verified.json`` (atomically);
    the manifest's hash and the files' :func:`_file_stats` are taken *before*
    the files were hashed, so a change during the hashing leaves a stamp that
    does not match.
    A folder that cannot be written (read-only) is no error: the
    verification is then just not remembered. True if written."""
    stamp = {"format": STAMP_FORMAT, "version": VERSION,
             "manifest_sha256": manifest_sha256, "files": stats}
    try:
        with atomic_write(os.path.join(path, STAMP), "w", encoding="utf-8") as f:
            json.dump(stamp, f, indent=1)
    except OSError:
        return False
    return True


def _remove_stamp(path: str) -> None:
    try:
        os.remove(os.path.join(path, STAMP))
    except OSError:  # absent, or a read-only folder
        pass


def _stamp_matches(path: str, manifest_sha256: str, stats: dict) -> bool:
    """Whether ``verified.json`` records this manifest and exactly these
    file sizes and dates (any doubt, an unreadable stamp included: no)."""
    try:
        with open(os.path.join(path, STAMP), encoding="utf-8") as f:
            stamp = json.load(f)
        return (stamp.get("format") == STAMP_FORMAT and stamp.get("version") == VERSION
                and stamp.get("files") == stats
                and stamp.get("manifest_sha256") == manifest_sha256)
    except (OSError, ValueError, AttributeError):
        return False


def open_pack(path, verify="auto") -> Pack:
    """Open a finished pack. Every mode checks the manifest, the labels and
    the files' sizes; then

    * ``"auto"`` (the default; training and ``models.evaluate`` use it): the
      SHA-256 of ``meta.npz``, and the SHA-256 of every chunk of images only
      if the pack has no ``verified.json`` stamp matching its manifest and
      its image files' current sizes and dates (``st_mtime_ns``,
      ``st_ctime_ns``). So a pack is read through once, on its first opening
      (or not at all after packing, which stamps it), and later openings take
      a moment. Auto *trusts the stamp*: damage that leaves a file's size and
      dates unchanged (a failing disk's bit flips) is found only by ``"full"``
      (``python -m models.pack --verify FILE``);
    * ``True`` or ``"full"``: every checksum, always (reads the whole pack:
      about a minute per 100 GB on a fast disk, in parallel threads), and
      the stamp refreshed, or removed if a chunk fails;
    * ``"quick"``: the checksum of ``meta.npz`` only; ``False``: sizes only.

    A pack packed before stamps existed is verified fully by its first
    ``"auto"`` opening and stamped then. Where the stamp cannot be written
    (a read-only folder) the pack still opens, verified, each time in full.
    Raises :class:`PackError` (one line) for a missing, unfinished or
    corrupted pack."""
    path = os.fspath(path)
    if not any(verify is m or (isinstance(verify, str) and verify == m) for m in VERIFY_MODES):
        raise ValueError(f"verify must be 'auto', 'full' (or True), 'quick' or False, not {verify!r}")
    manifest = _read_manifest(path)
    size, chunk = int(manifest["size"]), int(manifest["chunk"])
    meta_path = os.path.join(path, "meta.npz")
    if not os.path.isfile(meta_path):
        raise PackError(f"{path}: meta.npz is missing (the pack is damaged; pack it again)")
    if verify and _sha256_file(meta_path) != manifest["parts"]["meta.npz"]:
        raise PackError(f"{path}: meta.npz fails its checksum (the pack is corrupted; pack it again)")
    try:
        with np.load(meta_path) as z:
            meta = {k: z[k] for k in ("train_labels", "val_labels", "mean_image", "eigval", "eigvec")}
    except Exception as exc:  # noqa: BLE001 - a damaged zip/npy raises many types
        raise PackError(f"{meta_path}: unreadable ({type(exc).__name__}: {exc})") from None
    for s in SPLITS:
        info = manifest["splits"][s]
        file = os.path.join(path, info["file"])
        need = int(info["count"]) * size * size * 3
        have = os.path.getsize(file) if os.path.isfile(file) else -1
        if have < need:
            raise PackError(f"{path}: {info['file']} holds {max(have, 0):,} bytes, "
                            f"{need:,} expected (the pack is damaged; pack it again)")
        if len(meta[f"{s}_labels"]) != int(info["count"]):
            raise PackError(f"{path}: meta.npz has {len(meta[f'{s}_labels'])} {s} labels for "
                            f"{info['count']} images")
    full = verify is True or verify == "full"
    if verify == "auto" or full:
        # taken before hashing: a change meanwhile leaves a stamp that does not match
        digest, stats = _manifest_sha256(path), _file_stats(path, manifest)
        if full or not _stamp_matches(path, digest, stats):
            try:
                for s in SPLITS:
                    _verify_split(path, s, manifest["splits"][s], size, chunk,
                                  min(4, _default_workers()))
            except PackError:
                _remove_stamp(path)  # so that "auto" does not trust it either
                raise
            _write_stamp(path, digest, stats)
    return Pack(path, manifest, meta)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    from models.cli import ArgumentParser

    p = ArgumentParser(
        prog="python -m models.pack",
        description="Pack an image tree (ILSVRC-2012 layout or train/ + val/ class folders) "
                    "into a memory-mappable file of size x size uint8 images (shorter side "
                    "scaled to size, central square kept), with labels, the mean image and "
                    "the RGB covariance's eigenvectors. Running it again after an "
                    "interruption continues where it stopped. With --verify FILE: re-hash "
                    "every chunk of a finished pack, print OK or the one error line.")
    p.add_argument("dir", nargs="?",
                   help="source folder: train/<class>/*.JPEG and val/ (class folders, "
                        "or flat with LOC_val_solution.csv beside train/ and val/)")
    p.add_argument("--out", help="the pack to write (a folder); required with DIR")
    p.add_argument("--verify", metavar="FILE",
                   help="instead of packing: check every checksum of the pack FILE (what "
                        "training does on a pack's first start only) and stamp it verified")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help="side of the stored squares (default 256, the paper's)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes (default: one per core)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out (and count) corrupt or empty files instead of stopping")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help=argparse_suppress())
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.verify is not None:
        if a.dir is not None or a.out is not None:
            p.error("--verify FILE takes no DIR or --out")
        return _verify_command(a.verify)
    if a.dir is None or a.out is None:
        p.error("DIR and --out FILE are required (or --verify FILE)")
    try:
        s = pack(a.dir, a.out, size=a.size, workers=a.workers, skip_bad=a.skip_bad,
                 progress=not a.quiet, chunk=a.chunk)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the pack's folder: no space left, no permission, ...
        print(f"error: {a.out}: {exc.strerror or exc}"
              f"{f' ({exc.filename})' if exc.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to continue", file=sys.stderr)
        return 2
    line = (f"{s['path']}: {s['train']:,} training and {s['val']:,} validation images, "
            f"{s['classes']} classes")
    if s["skipped"]:
        line += f"; {s['skipped']} unreadable file(s) skipped"
    if s["chunks_done_before"]:
        line += f"; continued an unfinished pack ({s['chunks_done_before']} chunks were done)"
    if s["packed"]:
        line += f"; {s['packed']:,} images packed in {s['seconds']:.1f} s ({s['images_per_s']:.0f}/s)"
    print(line)
    return 0


def _verify_command(path: str) -> int:
    """``--verify FILE``: :func:`open_pack` with ``verify="full"``; one line, exit 0 or 2."""
    t0 = time.perf_counter()
    try:
        p = open_pack(path, verify="full")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read
        print(f"error: {path}: {exc.strerror or exc}"
              f"{f' ({exc.filename})' if exc.filename else ''}", file=sys.stderr)
        return 2
    n_bytes = sum(os.path.getsize(os.path.join(path, p.manifest["splits"][s]["file"]))
                  for s in SPLITS)
    print(f"{path}: OK ({len(p.split('train')):,} training and {len(p.split('val')):,} "
          f"validation images, {n_bytes / 1e9:.2f} GB checked in {time.perf_counter() - t0:.1f} s)")
    return 0


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS

