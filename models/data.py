"""Data sets for the AlexNet-style models: loading, splitting, batching.

Everything here is plain NumPy (plus scikit-learn for the bundled digits and
Pillow for image folders); nothing depends on the graph engine.

The single entry point is :func:`load_dataset`, which understands these specs:

``"digits"``
    scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no
    download), scaled to [0, 1], bilinearly resized and replicated to the
    requested number of channels, split with a seeded stratified shuffle.
``"synthetic"`` or ``"synthetic:K"``
    a small seeded data set of ``K`` (default 4) learnable classes: one smooth
    random pattern per class plus per-sample noise.  Meant for tests.
``"cifar10:DIR"``
    CIFAR-10 in its *binary* distribution format (``data_batch_1.bin`` ..
    ``data_batch_5.bin`` and ``test_batch.bin``).  Read with NumPy only; the
    pickled "python version" is never touched.
``"folder:DIR"``
    ImageNet-style folders: one sub-folder per class of JPEG/PNG images,
    optionally under ``train/`` and ``val/``.  Training images are stored at
    ``resize_to`` x ``resize_to`` and cropped/flipped per batch by
    :attr:`Dataset.augment`; validation images are centre crops.

All images come back as float32 ``(N, C, H, W)`` arrays with the per-channel
training mean already subtracted from both splits; labels are int64.
Problems with the data on disk raise :class:`DataError`, naming the file.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

__all__ = [
    "DataError",
    "Dataset",
    "RandomCropFlip",
    "center_crop",
    "iterate_minibatches",
    "load_dataset",
    "read_cifar10_batch",
]

#: Default number of samples in the ``"synthetic"`` data set.
DEFAULT_SYNTHETIC_SIZE = 200

CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32  # one label byte + R, G, B planes
CIFAR10_RECORDS_PER_FILE = 10000  # each data_batch_*.bin and test_batch.bin
CIFAR10_MAX_BATCH_BYTES = CIFAR10_RECORDS_PER_FILE * CIFAR10_RECORD_BYTES
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

#: File extensions treated as images in ``folder:`` data sets.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Augmentation hook signature: (batch (B, C, H, W), rng) -> new batch.
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class DataError(ValueError):
    """The data on disk is missing, malformed or unreadable."""


# --------------------------------------------------------------------------
# Dataset container and batching
# --------------------------------------------------------------------------


@dataclass
class Dataset:
    """A train/validation split ready for training.

    ``train_images``/``val_images`` are float32 ``(N, C, H, W)`` with ``mean``
    (per channel, computed on the training split) already subtracted.  For
    ``folder:`` data the training images are stored larger than the network
    input (``resize_to`` square) and ``augment`` must be applied per batch to
    crop them to size; for the other data sets ``augment`` is ``None``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int
    class_names: list
    mean: np.ndarray
    name: str
    augment: Optional[Augment] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.train_images) != len(self.train_labels):
            raise ValueError("train_images and train_labels differ in length")
        if len(self.val_images) != len(self.val_labels):
            raise ValueError("val_images and val_labels differ in length")
        if len(self.class_names) != self.num_classes:
            raise ValueError("class_names must have num_classes entries")

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of the batches the network sees (after augmentation)."""
        return tuple(self.val_images.shape[1:])

    def train_batches(self, batch_size: int, rng: np.random.Generator,
                      drop_last: bool = False) -> Iterator[tuple]:
        """Shuffled training batches with this data set's augmentation."""
        return iterate_minibatches(self.train_images, self.train_labels,
                                   batch_size, rng, shuffle=True,
                                   augment=self.augment, drop_last=drop_last)

    def val_batches(self, batch_size: int) -> Iterator[tuple]:
        """Validation batches in order, without augmentation."""
        return iterate_minibatches(self.val_images, self.val_labels,
                                   batch_size, None, shuffle=False)


def iterate_minibatches(images: np.ndarray, labels: np.ndarray,
                        batch_size: int, rng: Optional[np.random.Generator],
                        shuffle: bool = True, augment: Optional[Augment] = None,
                        drop_last: bool = False) -> Iterator[tuple]:
    """Yield ``(x, y)`` mini-batches.

    The order is a permutation drawn from ``rng`` when ``shuffle`` is true, so
    a seeded generator gives a reproducible epoch.  ``augment(x, rng)`` is
    applied to each batch when given (random crops/flips for folder data) and
    draws from the same generator.  Batches are copies, so callers may modify
    them freely.  The last, smaller batch is dropped when ``drop_last``.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if (shuffle or augment is not None) and rng is None:
        raise ValueError("rng is required for shuffling or augmentation")
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        x = images[idx]  # fancy indexing copies
        if augment is not None:
            x = augment(x, rng)
        yield x, labels[idx]


class RandomCropFlip:
    """Per-batch augmentation: a random ``size`` x ``size`` crop of each image
    and, with probability 1/2, a horizontal flip; all drawn from the rng
    passed in, so a seeded generator reproduces the same crops."""

    def __init__(self, size: int, flip: bool = True) -> None:
        self.size = int(size)
        self.flip = flip

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, c, h, w = x.shape
        s = self.size
        if s > h or s > w:
            raise ValueError(f"crop {s} larger than images {h}x{w}")
        tops = rng.integers(0, h - s + 1, size=n)
        lefts = rng.integers(0, w - s + 1, size=n)
        flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
        out = np.empty((n, c, s, s), dtype=x.dtype)
        for i in range(n):
            crop = x[i, :, tops[i]:tops[i] + s, lefts[i]:lefts[i] + s]
            out[i] = crop[:, :, ::-1] if flips[i] else crop
        return out

    def __repr__(self) -> str:
        return f"RandomCropFlip(size={self.size}, flip={self.flip})"


def center_crop(x: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` crop of a ``(..., H, W)`` array (a view)."""
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop {size} larger than images {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def load_dataset(spec: str, image_size: int, channels: int = 3, seed: int = 0,
                 val_fraction: float = 0.2,
                 synthetic_size: int = DEFAULT_SYNTHETIC_SIZE,
                 resize_to: Optional[int] = None) -> Dataset:
    """Load the data set named by ``spec`` (see the module docstring).

    ``image_size`` is the side of the square network input and ``channels``
    its channel count (1 or 3 for real images; digits/synthetic accept any).
    ``seed`` fixes every random choice (split, synthetic content).
    ``val_fraction`` is used where the data has no split of its own.
    ``synthetic_size`` is the total sample count of ``"synthetic"``.
    ``resize_to`` (folder data only) is the short side training images are
    scaled to before random crops; default ``round(image_size * 256 / 227)``.
    """
    image_size = int(image_size)
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if channels <= 0:
        raise ValueError(f"channels must be positive, got {channels}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")

    kind, arg = parse_spec(spec)
    if kind == "digits":
        return _load_digits(image_size, channels, seed, val_fraction)
    if kind == "synthetic":
        return _load_synthetic(image_size, channels, seed, val_fraction,
                               synthetic_size, arg)
    if kind == "cifar10":
        return _load_cifar10(arg, image_size, channels)
    if kind == "pack":
        raise DataError(f"{spec}: a packed data set is streamed, not loaded into memory "
                        "(python -m models.train --data pack:FILE reads it batch by batch)")
    if resize_to is None:
        resize_to = round(image_size * 256 / 227)
    return _load_folder(arg, image_size, channels, seed, val_fraction,
                        max(int(resize_to), image_size))


#: The forms :func:`load_dataset` understands, for error messages.
SPEC_FORMS = "'digits', 'synthetic', 'synthetic:K', 'cifar10:DIR', 'folder:DIR' or 'pack:FILE'"


def parse_spec(spec: str) -> tuple:
    """``"cifar10:DIR"`` -> ``("cifar10", "DIR")``; ``"synthetic:7"`` ->
    ``("synthetic", 7)`` (default 4 classes); ``"digits"`` -> ``("digits",
    None)``. Checks the form only (nothing is read), so a command can refuse
    a bad spec before any work; raises :class:`DataError` saying what is
    expected."""
    if not isinstance(spec, str):
        raise DataError(f"data set spec must be a string, got {type(spec).__name__}")
    kind, colon, arg = spec.partition(":")
    if kind == "digits" and not colon:
        return kind, None
    if kind == "synthetic":
        if not colon:
            return kind, 4
        try:
            classes = int(arg)
        except ValueError:
            classes = None
        if classes is None or classes < 2:
            raise DataError(f"data set spec {spec!r}: synthetic:K needs a whole number of "
                            f"classes K >= 2, got {arg!r}")
        return kind, classes
    if kind in ("cifar10", "folder"):
        if not arg:
            raise DataError(f"data set spec {spec!r} names no folder: give {kind}:DIR")
        return kind, arg
    if kind == "pack":
        if not arg:
            raise DataError(f"data set spec {spec!r} names no file: give pack:FILE (made by python -m models.pack)")
        return kind, arg
    raise DataError(f"unknown data set spec {spec!r}; expected {SPEC_FORMS}")


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------


def _stratified_split(labels: np.ndarray, val_fraction: float,
                      rng: np.random.Generator) -> tuple:
    """Seeded split keeping class proportions: ``(train_idx, val_idx)``,
    each in shuffled order."""
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(len(idx) * val_fraction))
        if n_val >= len(idx) and len(idx) > 1:
            n_val = len(idx) - 1  # keep every class in the training split
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx = rng.permutation(np.concatenate(train))
    val_idx = rng.permutation(np.concatenate(val))
    return train_idx, val_idx


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` linear-interpolation weights with half-pixel centres
    (the convention of PIL and most image libraries), edges clamped."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m.astype(np.float32)


def _resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resize float ``(N, C, H, W)`` images to ``size`` x ``size``
    as two small matrix products (separable interpolation)."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    rows = _interp_matrix(h, size)  # (size, h)
    cols = _interp_matrix(w, size)  # (size, w)
    return rows @ (x @ cols.T)


def _match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``(N, C, H, W)`` to the requested channel count: RGB to
    luma for 1 channel, replication of a single channel for more."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 3 and channels == 1:
        weights = np.array([0.299, 0.587, 0.114], dtype=x.dtype)
        return np.einsum("nchw,c->nhw", x, weights)[:, None]
    if c == 1:
        return np.repeat(x, channels, axis=1)
    raise ValueError(f"cannot turn {c}-channel images into {channels}")


def _subtract_mean(train: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Subtract the per-channel training mean from both splits in place and
    return it (accumulated in float64 so large sets stay accurate)."""
    mean = train.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    train -= mean[None, :, None, None]
    val -= mean[None, :, None, None]
    return mean


def _make_dataset(train_x, train_y, val_x, val_y, class_names, name,
                  augment=None) -> Dataset:
    train_x = np.ascontiguousarray(train_x, dtype=np.float32)
    val_x = np.ascontiguousarray(val_x, dtype=np.float32)
    mean = _subtract_mean(train_x, val_x)
    return Dataset(
        train_images=train_x,
        train_labels=np.asarray(train_y, dtype=np.int64),
        val_images=val_x,
        val_labels=np.asarray(val_y, dtype=np.int64),
        num_classes=len(class_names),
        class_names=list(class_names),
        mean=mean,
        name=name,
        augment=augment,
    )


# --------------------------------------------------------------------------
# digits and synthetic
# --------------------------------------------------------------------------


def physical_memory() -> int:
    """Bytes of memory this machine has (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(what: str, *groups) -> None:
    """Refuse, before anything is allocated, a data set whose float32 images
    (every one is held in memory), ``groups`` of ``(count, channels, height,
    width)``, need more than the machine's memory: a :class:`DataError` with
    the figures, not NumPy's ``MemoryError`` or hours of swapping halfway
    through loading."""
    need = sum(n * c * h * w * 4 for n, c, h, w in groups)
    have = physical_memory()
    if have and need > have:
        _, c, h, w = groups[0]  # the first group names the image size
        raise DataError(f"{what}: {sum(g[0] for g in groups):,} images of {c}x{h}x{w} float32 need "
                        f"{need / 2**30:,.1f} GiB of memory, and this machine has {have / 2**30:,.1f} GiB: "
                        f"use a smaller image size")


def _load_digits(image_size, channels, seed, val_fraction) -> Dataset:
    try:
        from sklearn.datasets import load_digits  # bundled with scikit-learn
    except ImportError as exc:
        raise DataError("digits: the bundled digits come with scikit-learn, which is not "
                        f"installed ({exc}): pip install '.[data]'") from None

    digits = load_digits()
    check_fits("digits", (len(digits.images), channels, image_size, image_size))
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    x = _resize_bilinear(x, image_size)
    y = digits.target.astype(np.int64)
    train_idx, val_idx = _stratified_split(
        y, val_fraction, np.random.default_rng(seed))
    # Replicate channels after indexing so only the final arrays are large.
    return _make_dataset(
        _match_channels(x[train_idx], channels), y[train_idx],
        _match_channels(x[val_idx], channels), y[val_idx],
        [str(d) for d in range(10)], "digits")


def _load_synthetic(image_size, channels, seed, val_fraction, size,
                    num_classes) -> Dataset:
    if num_classes < 2:
        raise ValueError(f"synthetic data needs >= 2 classes, got {num_classes}")
    if size < 2 * num_classes:
        raise ValueError(f"synthetic_size {size} too small for "
                         f"{num_classes} classes")
    check_fits("synthetic", (size, channels, image_size, image_size))
    rng = np.random.default_rng([seed, 0x5E7])
    # One smooth pattern per class: coarse 4x4 noise upsampled, so classes
    # differ in low-frequency structure a small CNN can pick up quickly.
    coarse = rng.uniform(0.0, 1.0, size=(num_classes, channels, 4, 4))
    patterns = _resize_bilinear(coarse.astype(np.float32), image_size)
    y = np.arange(size) % num_classes
    x = np.empty((size, channels, image_size, image_size), np.float32)
    step = max(1, (1 << 24) // x[0].size)  # float64 noise a few images at a time (the same draws as all at once)
    for lo in range(0, size, step):
        hi = min(size, lo + step)
        x[lo:hi] = patterns[y[lo:hi]] + rng.normal(0.0, 0.25, size=(hi - lo,) + x.shape[1:]).astype(np.float32)
    train_idx, val_idx = _stratified_split(y, val_fraction, rng)
    return _make_dataset(x[train_idx], y[train_idx], x[val_idx], y[val_idx],
                         [f"class{k}" for k in range(num_classes)],
                         "synthetic")


# --------------------------------------------------------------------------
# CIFAR-10 (binary format)
# --------------------------------------------------------------------------


def _cifar_batch_size(path: str) -> int:
    """The size in bytes of a CIFAR-10 batch file, checked before anything is
    read: a wrong file of many gigabytes is a DataError here, not a
    MemoryError (or swapping) inside NumPy."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise DataError(f"cifar10: {path}: cannot read ({exc.strerror or exc})"
                        ) from exc
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"cifar10: {path}: not a regular file")
    size = info.st_size
    if size == 0:
        raise DataError(f"cifar10: {path}: file is empty")
    if size > CIFAR10_MAX_BATCH_BYTES:
        raise DataError(
            f"cifar10: {path}: file is {size:,} bytes; a CIFAR-10 batch holds "
            f"{CIFAR10_RECORDS_PER_FILE:,} records of {CIFAR10_RECORD_BYTES} bytes "
            f"({CIFAR10_MAX_BATCH_BYTES:,} bytes) at most")
    if size % CIFAR10_RECORD_BYTES:
        raise DataError(
            f"cifar10: {path}: truncated record {size // CIFAR10_RECORD_BYTES}"
            f" (file is {size} bytes, not a multiple of "
            f"{CIFAR10_RECORD_BYTES})")
    return size


def read_cifar10_batch(path: str) -> tuple:
    """Read one CIFAR-10 binary batch file.

    Returns ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` in R, G, B plane
    order and int64 ``(N,)``.  Raises :class:`DataError` naming the file and
    the first bad record if the file is truncated or holds a label above 9.
    """
    size = _cifar_batch_size(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cifar10: {path}: cannot read ({exc.strerror or exc})"
                        ) from exc
    if raw.size != size:
        raise DataError(f"cifar10: {path}: read {raw.size} bytes of {size} "
                        "(the file changed while it was read)")
    records = raw.reshape(-1, CIFAR10_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(f"cifar10: {path}: record {bad[0]} has label "
                        f"{labels[bad[0]]} (expected 0..9)")
    # Each record is the 1024-byte red plane, then green, then blue, each
    # stored row-major, which is exactly a (3, 32, 32) C-order array.
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return images, labels


def _cifar_to_float(images: np.ndarray, image_size: int, channels: int,
                    chunk: int = 1024) -> np.ndarray:
    """uint8 CIFAR images to float32 in [0, 1] at the requested size and
    channel count, converted in chunks to keep temporaries small."""
    out = np.empty((len(images), channels, image_size, image_size), np.float32)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].astype(np.float32) / 255.0
        out[start:start + chunk] = _resize_bilinear(
            _match_channels(x, channels), image_size)
    return out


def _cifar_class_names(directory: str) -> list:
    path = os.path.join(directory, "batches.meta.txt")
    if not os.path.exists(path):
        return list(CIFAR10_CLASS_NAMES)
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cifar10: {path}: cannot read class names ({exc})"
                        ) from exc
    if len(names) != 10:
        raise DataError(f"cifar10: {path}: expected 10 class names, "
                        f"found {len(names)}")
    return names


def _load_cifar10(directory: str, image_size, channels) -> Dataset:
    if channels not in (1, 3):
        raise ValueError(f"cifar10 supports 1 or 3 channels, not {channels}")
    # Accept the parent of the extracted archive as well.
    nested = os.path.join(directory, "cifar-10-batches-bin")
    if (not os.path.exists(os.path.join(directory, CIFAR10_TRAIN_FILES[0]))
            and os.path.isdir(nested)):
        directory = nested
    files = [os.path.join(directory, f)
             for f in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DataError("cifar10: missing file(s): " + ", ".join(missing))
    class_names = _cifar_class_names(directory)
    records = sum(_cifar_batch_size(f) // CIFAR10_RECORD_BYTES for f in files)  # a wrong file fails before reading
    check_fits("cifar10", (records, channels, image_size, image_size))
    # Read and validate every file before converting anything, so a bad
    # file fails fast and nothing is ever returned half-loaded.
    train = [read_cifar10_batch(f) for f in files[:-1]]
    val_images, val_labels = read_cifar10_batch(files[-1])
    train_images = np.concatenate([t[0] for t in train])
    train_labels = np.concatenate([t[1] for t in train])
    return _make_dataset(
        _cifar_to_float(train_images, image_size, channels), train_labels,
        _cifar_to_float(val_images, image_size, channels), val_labels,
        class_names, "cifar10")


# --------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------


def _entry_kind(path: str) -> Optional[str]:
    """"file", "dir" or None (anything else) for a folder entry, following
    symbolic links; a link that loops or points nowhere raises
    :class:`DataError` rather than being skipped without a word."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):
            why = ("a loop of symbolic links" if exc.errno == errno.ELOOP
                   else f"a broken symbolic link ({exc.strerror})")
            raise DataError(f"folder: {path}: {why}") from None
        raise DataError(f"folder: {path}: cannot read ({exc.strerror or exc})"
                        ) from None
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else None


def _list_images(class_dir: str) -> list:
    """Image files directly inside ``class_dir``, sorted (hidden files and
    other extensions are ignored)."""
    names = (f for f in os.listdir(class_dir)
             if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(p for p in (os.path.join(class_dir, f) for f in names)
                  if _entry_kind(p) == "file")


def _class_dirs(root: str) -> list:
    return sorted(d for d in os.listdir(root)
                  if not d.startswith(".") and _entry_kind(os.path.join(root, d)) == "dir")


def _scan_folder(root: str, class_names: Optional[Sequence[str]] = None
                 ) -> tuple:
    """``(paths, labels, class_names)`` for a folder of class sub-folders.
    When ``class_names`` is given (the val split) its order defines labels."""
    found = _class_dirs(root)
    if class_names is None:
        class_names = found
        if not class_names:
            raise DataError(f"folder: {root}: no class sub-folders")
    else:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise DataError(f"folder: {root}: classes {unknown} not in the "
                            "training split")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        if not os.path.isdir(class_dir):
            continue
        files = _list_images(class_dir)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"folder: {root}: no {'/'.join(IMAGE_EXTENSIONS)} "
                        "images found")
    return paths, np.array(labels, dtype=np.int64), list(class_names)


#: PIL modes of 16-bit (and 32-bit integer) grey images.
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I")


def _read_image(path: str, short_side: int, crop: int, channels: int
                ) -> np.ndarray:
    """Open an image, scale its shorter side to ``short_side``, take the
    central ``crop`` square; float32 ``(C, crop, crop)`` in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in _WIDE_GREY_MODES:
                # 16-bit grey (PNG "I;16", or "I"): PIL's convert("L") clips
                # at 255 (an all-white image); scale 0..65535 to 0..1 instead.
                grey = np.asarray(im, dtype=np.float32) / 65535.0
                im = Image.fromarray(grey, mode="F")
            else:
                im = im.convert("L" if channels == 1 else "RGB")  # forces decode
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DataError(f"folder: {path}: cannot read image "
                        f"({type(exc).__name__}: {exc})") from exc
    w, h = im.size
    scale = short_side / min(w, h)
    new_w, new_h = max(short_side, round(w * scale)), max(short_side, round(h * scale))
    im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - crop) // 2, (new_h - crop) // 2
    im = im.crop((left, top, left + crop, top + crop))
    arr = np.asarray(im, dtype=np.float32)
    if im.mode == "F":  # already scaled to 0..1; grey, copied to each channel
        return np.repeat(arr[None], channels, axis=0)
    arr = arr / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _read_images(paths, short_side, crop, channels) -> np.ndarray:
    out = np.empty((len(paths), channels, crop, crop), np.float32)
    for i, p in enumerate(paths):
        out[i] = _read_image(p, short_side, crop, channels)
    return out


def _load_folder(root: str, image_size, channels, seed, val_fraction,
                 resize_to) -> Dataset:
    if channels not in (1, 3):
        raise ValueError(f"folder data supports 1 or 3 channels, not {channels}")
    if not os.path.isdir(root):
        raise DataError(f"folder: {root}: not a directory")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    if os.path.isdir(train_dir) and os.path.isdir(val_dir):
        train_paths, train_y, class_names = _scan_folder(train_dir)
        val_paths, val_y, _ = _scan_folder(val_dir, class_names)
    else:
        paths, y, class_names = _scan_folder(root)
        train_idx, val_idx = _stratified_split(
            y, val_fraction, np.random.default_rng(seed))
        train_paths = [paths[i] for i in train_idx]
        val_paths = [paths[i] for i in val_idx]
        train_y, val_y = y[train_idx], y[val_idx]
    # Training images keep the full resize_to square so random crops can be
    # taken per batch (AlexNet style); validation images are centre crops.
    check_fits("folder", (len(train_paths), channels, resize_to, resize_to),
               (len(val_paths), channels, image_size, image_size))
    train_x = _read_images(train_paths, resize_to, resize_to, channels)
    val_x = _read_images(val_paths, resize_to, image_size, channels)
    return _make_dataset(train_x, train_y, val_x, val_y, class_names,
                         "folder", augment=RandomCropFlip(image_size))
