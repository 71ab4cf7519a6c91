"""Streaming batches with the paper's augmentation, from a pack or a JPEG folder.

:class:`BatchStream` is an iterable of ``(x, labels)`` batches for one epoch:
``x`` float32 ``(B, 3, crop, crop)`` NCHW, ``labels`` int64. Background
worker threads assemble the batches (Pillow's decoder and NumPy's copies and
arithmetic release the GIL) into a bounded queue that runs ``prefetch``
batches ahead of the consumer, so only ``prefetch + workers`` batches exist at
a time whatever the size of the data set.

The augmentation (Krizhevsky et al. 2012, section 4.1), per image and per
use, each part switchable in :class:`Augment`:

* a random ``crop`` x ``crop`` patch (227, or 224) of the ``size`` x ``size``
  stored image and, with probability 1/2, its horizontal reflection;
* the mean subtracted: the per-pixel mean image of the training set (at the
  crop's position, before the reflection, as Caffe does), or its per-channel
  mean, or nothing;
* PCA lighting: to every pixel ``I_xy = [R, G, B]^T`` the same
  ``[p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T`` is added, ``p_i`` and ``l_i`` the
  eigenvectors and eigenvalues of the 3x3 covariance of the training set's
  RGB values and ``a_i ~ N(0, pca_std)`` drawn per image each time it is used.

Values are scaled by ``scale`` (1/255: the network sees pixels in [0, 1]
minus the mean). The eigenvalues ``l_i`` are those of the covariance in the
units the network sees (the pack stores them in 0..255 units; they are
multiplied by ``scale**2``), so the formula is the paper's literally: with
ImageNet's ``l_1`` about 0.2 in these units the shift has a standard
deviation of about 2 % of the range along ``p_1``.

Evaluation (``train=False``): the centre crop, no reflection, no lighting;
:func:`ten_crops` gives the paper's ten-patch test and :func:`top_k_errors`
the top-1 and top-5 error rates.

Determinism: the order of an epoch is a permutation drawn from ``(seed,
epoch)``; every random number of image ``i`` in epoch ``e`` (crop position,
reflection, lighting) is a counter-based hash of ``(seed, e, i)``
(SplitMix64), not a draw from a shared generator, so the batches are the
same whatever the number of workers or the order they finish in, and
``start_batch=k`` gives exactly the batches ``k, k+1, ...`` of an
uninterrupted epoch (mid-epoch resume). Under data parallelism each of the
``world_size`` ranks takes its ``batch_size`` slice of every global batch of
``world_size * batch_size`` images, so the ranks together see the batches of
one process at the global batch size.
"""
from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from models.data import DataError
from models.evaluate import true_class_rank
from models.pack import DEFAULT_SIZE, PackError, _Stats, decode, scan

__all__ = ["Augment", "Source", "FolderSource", "folder_source", "BatchStream", "DeviceUpload",
           "ten_crops",
           "top_k_errors", "image_randoms", "epoch_order"]


@dataclass(frozen=True)
class Augment:
    """What :class:`BatchStream` does to each training image (see the module
    docstring). ``mean``: ``"image"`` (per-pixel mean image), ``"channel"``
    (its per-channel average) or None."""
    crop: int = 227
    flip: bool = True
    pca_lighting: bool = True
    pca_std: float = 0.1
    mean: Optional[str] = "image"
    scale: float = 1.0 / 255.0

    def __post_init__(self):
        if self.mean not in ("image", "channel", None):
            raise ValueError(f"mean must be 'image', 'channel' or None, not {self.mean!r}")
        if int(self.crop) < 1:
            raise ValueError(f"crop must be positive, got {self.crop}")


class Source(Protocol):
    """What a stream reads: a pack split (:class:`models.pack.PackSplit`) or
    a :class:`FolderSource`."""
    class_names: list
    size: int
    labels: np.ndarray
    mean_image: np.ndarray  # float32 (size, size, 3), pixel units 0..255
    eigval: np.ndarray      # (3,), covariance eigenvalues in 0..255 units
    eigvec: np.ndarray      # (3, 3), eigenvectors as columns

    def __len__(self) -> int: ...
    def load(self, i: int) -> np.ndarray: ...  # uint8 (size, size, 3)
    def describe(self, i: int) -> str: ...


class FolderSource:
    """A split of an image tree decoded on the fly (no packing): the layouts
    :func:`models.pack.scan` reads; each ``load`` decodes one file as the
    packer would (shorter side to ``size``, central square).

    ``mean_image``, ``eigval`` and ``eigvec`` are estimated from a sample of
    ``stats_sample`` training images spread evenly over the (sorted) training
    list, computed on first use: an exact mean over 1.2 million JPEGs would
    cost a full decoding pass; with a few hundred images the mean image is
    within a few grey levels of it, which the training does not notice.

    A tree without ``train/`` (class folders at the top) needs
    ``val_fraction``: each class is split, seeded by ``seed``. ``found``: what
    ``scan(root, val_fraction, seed)`` returned, when the caller has it (both
    splits of a tree from one listing of its files)."""

    def __init__(self, root: str, split: str = "train", size: int = DEFAULT_SIZE,
                 stats_sample: int = 500, val_fraction: Optional[float] = None, seed: int = 0,
                 *, found: Optional[dict] = None):
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', not {split!r}")
        if found is None:
            found = scan(root, val_fraction, seed)
        self.root, self.split, self.size = root, split, int(size)
        self.class_names = found["class_names"]
        self._train_paths = [p for p, _ in found["train"]]
        items = found[split]
        self.paths = [p for p, _ in items]
        self.labels = np.array([lab for _, lab in items], np.int64)
        self.stats_sample = int(stats_sample)
        self._stats = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        return decode(self.paths[i], self.size)

    def describe(self, i: int) -> str:
        return self.paths[i]

    def _statistics(self):
        with self._lock:
            if self._stats is None:
                n = len(self._train_paths)
                pick = np.unique(np.linspace(0, n - 1, min(n, self.stats_sample)).round().astype(int))
                stats = _Stats(self.size, 1)
                images = np.stack([decode(self._train_paths[i], self.size) for i in pick])
                stats.add(0, _Stats.of(images, np.ones(len(images), bool)))
                self._stats = stats.finish()
            return self._stats

    @property
    def mean_image(self):
        return self._statistics()[0]

    @property
    def eigval(self):
        return self._statistics()[1]

    @property
    def eigvec(self):
        return self._statistics()[2]


def load_image(source: Source, i: int) -> np.ndarray:
    """``source.load(i)``, any failure other than a :class:`DataError` raised
    as one naming the image (``source.describe(i)``)."""
    try:
        return source.load(i)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - say which image, whatever failed
        raise DataError(f"{source.describe(i)}: cannot read ({type(exc).__name__}: {exc})") from None


def folder_source(root: str, split: str = "train", size: int = DEFAULT_SIZE,
                  stats_sample: int = 500, val_fraction: Optional[float] = None,
                  seed: int = 0, *, found: Optional[dict] = None) -> FolderSource:
    """The ``split`` of the image tree at ``root`` as a stream source (see
    :class:`FolderSource`)."""
    return FolderSource(root, split, size, stats_sample, val_fraction, seed, found=found)


# --------------------------------------------------------------------------
# Randomness: counter-based, keyed on (seed, epoch, image)
# --------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele et al. 2014), elementwise on uint64."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _key(seed: int, epoch: int, indices) -> np.ndarray:
    k = _splitmix(np.array([seed & (2**64 - 1)], np.uint64) + _GOLDEN)
    k = _splitmix(k ^ np.uint64(epoch & (2**64 - 1)))
    return _splitmix(k ^ np.asarray(indices, np.uint64))


def image_randoms(seed: int, epoch: int, indices, positions: int) -> dict:
    """The random choices for images ``indices`` in ``epoch``: ``top``,
    ``left`` (ints in ``[0, positions)``), ``flip`` (bool) and ``normal``
    ``(n, 3)`` standard normals (Box-Muller), each a pure function of
    ``(seed, epoch, index)``."""
    with np.errstate(over="ignore"):
        key = _key(seed, epoch, indices)
        u = [_splitmix(key + np.uint64(j + 1) * _GOLDEN) for j in range(7)]
    unit = [(v >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 for v in u]  # [0, 1)
    normal = np.empty((len(key), 3))
    r1 = np.sqrt(-2.0 * np.log1p(-unit[3]))
    r2 = np.sqrt(-2.0 * np.log1p(-unit[5]))
    normal[:, 0] = r1 * np.cos(2 * np.pi * unit[4])
    normal[:, 1] = r1 * np.sin(2 * np.pi * unit[4])
    normal[:, 2] = r2 * np.cos(2 * np.pi * unit[6])
    return {"top": (unit[0] * positions).astype(np.int64),
            "left": (unit[1] * positions).astype(np.int64),
            "flip": unit[2] < 0.5, "normal": normal}


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` images in ``epoch``: a permutation drawn from ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch, 0x0DE7]).permutation(n)


# --------------------------------------------------------------------------
# Upload to the GPU behind the step
# --------------------------------------------------------------------------


class _Slot:
    __slots__ = ("host", "device", "ready", "released", "busy")

    def __init__(self, host, device):
        self.host, self.device = host, device
        self.ready = self.released = None
        self.busy = False


class _Staged:
    __slots__ = ("slot", "n", "labels")

    def __init__(self, slot, n, labels):
        self.slot, self.n, self.labels = slot, n, labels


class DeviceUpload:
    """Uploads each batch to the GPU (CuPy) from pinned host memory on a
    second CUDA stream while the step runs, as cuda-convnet's loader thread
    did, adding no synchronization to the step.

    A ring of ``slots`` pairs of buffers (page-locked host, device) of one
    batch each is allocated once, here. In a worker thread, :meth:`__call__`
    takes a free slot, waits (in the worker) until the GPU has finished
    reading it the last time, copies the batch into the pinned buffer and
    queues the host-to-device copy on the upload stream, then records an event
    there. In the consuming thread, :meth:`hand_over` makes the consumer's
    current stream wait for that event (a device-side wait: the host does not
    block) and returns the device array; :meth:`release`, called when the
    consumer asks for the next batch, records on the consumer's stream the
    point after which the slot may be overwritten. So a batch's device array
    is valid until the next batch is requested (copy it to keep it). Labels
    stay on the host: the program checks their range there before uploading
    them (reading them back from the GPU would stall the step).

    ``slots`` must exceed the batches that can be staged and not yet released
    at once (``prefetch + 1`` with :class:`BatchStream`, which passes
    ``prefetch + 2``)."""

    def __init__(self, batch_shape, slots: int, xp=None):
        if xp is None:
            import cupy as xp
        import cupyx

        self.xp = xp
        self.stream = xp.cuda.Stream(non_blocking=True)
        self._slots = [_Slot(cupyx.empty_pinned(batch_shape, np.float32),
                             xp.empty(batch_shape, np.float32)) for _ in range(int(slots))]
        self._cond = threading.Condition()
        self._last = -1

    def __call__(self, x, labels):  # in a worker thread
        n = len(x)
        with self._cond:
            while True:
                free = [k for k in range(len(self._slots)) if not self._slots[k].busy]
                if free:
                    k = next((f for f in free if f > self._last), free[0])
                    break
                self._cond.wait()
            self._last = k
            slot = self._slots[k]
            slot.busy = True
            released, slot.released = slot.released, None
        if released is not None:
            released.synchronize()  # waits in this worker thread, never in the step
        full = n == len(slot.host)  # (a short last batch uses the front of the slot)
        host = slot.host if full else slot.host[:n]
        np.copyto(host, x)
        device = slot.device if full else slot.device[:n]
        device.set(host, stream=self.stream)  # asynchronous: the source is pinned
        slot.ready = self.stream.record()
        return _Staged(slot, n, labels)

    def hand_over(self, staged):
        """In the consuming thread: ``(device array, labels)`` of a staged batch."""
        self.xp.cuda.get_current_stream().wait_event(staged.slot.ready)
        device = staged.slot.device
        return (device if staged.n == len(device) else device[:staged.n]), staged.labels

    def release(self, staged) -> None:
        """In the consuming thread, after the work that reads the batch was queued."""
        event = self.xp.cuda.get_current_stream().record()
        with self._cond:
            staged.slot.released = event
            staged.slot.busy = False
            self._cond.notify_all()


# --------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------


class BatchStream:
    """Batches ``(x float32 (B, 3, crop, crop), labels int64 (B,))`` of one
    epoch of ``source`` (see the module docstring for order, augmentation,
    determinism and ranks). ``workers`` threads assemble batches (0: in the
    consuming thread); at most ``prefetch`` are ready or in progress ahead of
    the consumer. An error in a worker (a corrupt file) is raised from the
    iteration, naming the file. ``backend_upload="cupy"`` uploads each batch
    to the GPU in the worker, from pinned memory on a second stream
    (:class:`DeviceUpload`; ``x`` is then a CuPy array, valid until the next
    batch is requested); any other callable ``f(x, labels)`` is applied in the
    worker to each finished batch and its result yielded. Use as a context
    manager, or call :meth:`close`, to stop the workers."""

    def __init__(self, source, batch_size: int, *, seed: int, epoch: int,
                 augment: Augment = Augment(), train: bool = True, workers: int = 2,
                 prefetch: int = 4, start_batch: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, backend_upload: Optional[Callable] = None):
        batch_size, world_size, rank = int(batch_size), int(world_size), int(rank)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if workers < 0 or prefetch < 1:
            raise ValueError(f"need workers >= 0 and prefetch >= 1, got {workers}, {prefetch}")
        crop, size = int(augment.crop), int(source.size)
        if crop > size:
            raise ValueError(f"crop {crop} is larger than the {size}x{size} images")
        self.source, self.batch_size, self.seed, self.epoch = source, batch_size, seed, epoch
        self.augment, self.train, self.workers, self.prefetch = augment, train, workers, prefetch
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        if isinstance(backend_upload, str):
            if backend_upload != "cupy":
                raise ValueError(f"backend_upload must be 'cupy', a callable or None, "
                                 f"not {backend_upload!r}")
            backend_upload = DeviceUpload((batch_size, 3, crop, crop), prefetch + 2)
        self.backend_upload = backend_upload
        self._staged = hasattr(backend_upload, "hand_over")
        n = len(source)
        order = epoch_order(n, seed, epoch) if train else np.arange(n)
        per_step = batch_size * world_size
        full = n // per_step
        batches = [order[s * per_step + rank * batch_size: s * per_step + (rank + 1) * batch_size]
                   for s in range(full)]
        if not drop_last and n % per_step:
            part = np.array_split(order[full * per_step:], world_size)[rank]
            if len(part):
                batches.append(part)
        self._batches = batches
        if not 0 <= start_batch <= len(batches):
            raise ValueError(f"start_batch {start_batch} is not in 0..{len(batches)}")
        self.start_batch = int(start_batch)
        self._labels = np.asarray(source.labels, np.int64)
        # Constants of the augmentation, in the units the network sees.
        s = np.float32(augment.scale)
        if augment.mean == "image":
            self._mean = np.ascontiguousarray(  # CHW, scaled
                (np.asarray(source.mean_image, np.float32) * s).transpose(2, 0, 1))
        elif augment.mean == "channel":
            self._mean = (np.asarray(source.mean_image, np.float64).mean(axis=(0, 1))
                          * s).astype(np.float32)[:, None, None]
        else:
            self._mean = None
        self._pca = train and augment.pca_lighting
        if self._pca:
            self._eigvec = np.asarray(source.eigvec, np.float64)
            self._eigval = np.asarray(source.eigval, np.float64) * float(augment.scale) ** 2
        self._pool = None
        self._closed = False

    def __len__(self) -> int:
        """Batches this stream yields (from ``start_batch`` on)."""
        return len(self._batches) - self.start_batch

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches)

    def indices(self, b: int) -> np.ndarray:
        """The source indices of batch ``b`` of the epoch (this rank's)."""
        return self._batches[b]

    # -- one batch -------------------------------------------------------

    def _make(self, b: int):
        idx = self._batches[b]
        aug, crop, size = self.augment, int(self.augment.crop), int(self.source.size)
        n = len(idx)
        if self.train:
            r = image_randoms(self.seed, self.epoch, idx, size - crop + 1)
            tops, lefts = r["top"], r["left"]
            flips = r["flip"] if aug.flip else np.zeros(n, bool)
        else:
            tops = lefts = np.full(n, (size - crop) // 2)
            flips = np.zeros(n, bool)
        shifts = np.zeros((n, 3), np.float32)
        if self._pca:
            alpha = aug.pca_std * r["normal"]  # (n, 3): a_i ~ N(0, pca_std)
            shifts = ((alpha * self._eigval) @ self._eigvec.T).astype(np.float32)  # [p1 p2 p3][a_i l_i]
        x = np.empty((n, 3, crop, crop), np.float32)
        scale = np.float32(aug.scale)
        mean = self._mean
        for j, i in enumerate(idx):
            img = load_image(self.source, int(i))
            t, l = int(tops[j]), int(lefts[j])
            # Work in the output's CHW layout: the uint8 window is read through
            # a transposed (and, to reflect, reversed) view, and each step is
            # one pass over contiguous float32 rows.
            win = img[t:t + crop, l:l + crop].transpose(2, 0, 1)
            if aug.mean == "image":
                m = mean[:, t:t + crop, l:l + crop]
            else:
                m = mean
            if flips[j]:
                win = win[..., ::-1]
                if aug.mean == "image":
                    m = m[..., ::-1]  # the mean at each pixel's source position
            out = x[j]
            np.multiply(win, scale, out=out)
            if m is not None:
                out -= m
            if self._pca:
                out += shifts[j][:, None, None]
        y = self._labels[idx]
        if self.backend_upload is not None:
            return self.backend_upload(x, y)
        return x, y

    # -- iteration -------------------------------------------------------

    def __iter__(self):
        if self._closed:
            raise RuntimeError("this BatchStream is closed")
        todo = range(self.start_batch, len(self._batches))
        if self.workers == 0:
            for b in todo:
                yield from self._deliver(self._make(b))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="batch-stream")
        pending = collections.deque()
        it = iter(todo)
        try:
            for b in it:
                pending.append(self._pool.submit(self._make, b))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()  # a worker's error is raised here
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(self._pool.submit(self._make, nxt))
                yield from self._deliver(batch)
        finally:
            for f in pending:
                f.cancel()
            if self._staged:  # batches staged but never handed over: free their slots
                for f in pending:
                    f.add_done_callback(self._release_unused)

    def _release_unused(self, future):
        if not future.cancelled() and future.exception() is None:
            self.backend_upload.release(future.result())

    def _deliver(self, batch):
        if not self._staged:
            yield batch
            return
        try:
            yield self.backend_upload.hand_over(batch)
        finally:
            self.backend_upload.release(batch)

    def close(self) -> None:
        """Stop the workers (waits for the batches being assembled, at most
        ``workers`` of them); the stream cannot be iterated again."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------
# Evaluation: ten crops, top-k
# --------------------------------------------------------------------------


def ten_crops(images_uint8_nhwc: np.ndarray, crop: int, mean=None,
              scale: float = 1.0 / 255.0) -> np.ndarray:
    """The paper's test-time patches: float32 ``(10, N, 3, crop, crop)``, the
    four corner and the centre ``crop`` x ``crop`` patches of each ``size`` x
    ``size`` image (in that order: top-left, top-right, bottom-left,
    bottom-right, centre), then the same five reflected horizontally. ``mean``
    (None, a ``(size, size, 3)`` mean image or a ``(3,)`` per-channel mean, in
    pixel units) is subtracted at each patch's position before reflection,
    and values are multiplied by ``scale``, as in training. Average the
    network's softmax over the first axis for the ten-crop prediction."""
    x = np.asarray(images_uint8_nhwc)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got shape {x.shape}")
    n, h, w, _ = x.shape
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} is larger than the {h}x{w} images")
    s = np.float32(scale)
    full = x.astype(np.float32) * s
    if mean is not None:
        full -= np.asarray(mean, np.float32) * s
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop),
               ((h - crop) // 2, (w - crop) // 2)]
    out = np.empty((10, n, 3, crop, crop), np.float32)
    for k, (t, l) in enumerate(corners):
        patch = full[:, t:t + crop, l:l + crop].transpose(0, 3, 1, 2)
        out[k] = patch
        out[k + 5] = patch[..., ::-1]
    return out


def top_k_errors(probabilities, labels, ks: Sequence[int] = (1, 5)) -> dict:
    """``{k: error}``: the fraction of rows whose label is not among the ``k``
    highest-scoring classes (ties broken towards the lower class index, as
    a stable sort does). ``k`` larger than the class count counts every row
    correct."""
    p = np.asarray(probabilities)
    y = np.asarray(labels).astype(np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"expected (N, K) scores and (N,) labels, got {p.shape} and {y.shape}")
    if len(y) == 0:
        raise ValueError("no rows to score")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be in 0..{p.shape[1] - 1}")
    rank = true_class_rank(p, y)
    return {int(k): float(np.mean(rank >= int(k))) for k in ks}
