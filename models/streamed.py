"""Streamed data for the training command: ``--data pack:FILE`` (a data set
packed by ``python -m models.pack``) and ``--data folder:DIR`` (``train/`` and
``val/``, or class folders alone split per class; decoded on the fly), read batch by batch by
:class:`models.stream.BatchStream` workers, never held in memory.

Training batches: the paper's augmentation (random ``crop`` patches, their
reflections, the mean image subtracted, PCA lighting; each switchable), the
epoch's order and every random choice a function of ``(seed, epoch, image)``,
so that a run resumed at step ``k`` of an epoch gets the batches ``k, k+1,
...`` an uninterrupted run gets. Under ``mpiexec -n N`` each rank reads only
its ``batch_size`` slice of every global batch of ``N x batch_size`` images
(the last incomplete global batch is left out, as the paper's fixed-size
batches are). Validation: the centre ``crop`` of each image, the same mean
subtracted; each rank evaluates its part and the figures are summed.
"""
import os

import numpy as np

from models.data import DataError

#: the validation share of a folder of class folders without train/ (models.data's default)
VAL_FRACTION = 0.2


class StreamedData:
    """What the training command reads of a pack or an image tree (see the
    module docstring); the attributes the command shares with
    :class:`models.data.Dataset` (``name``, ``num_classes``,
    ``class_names``, ``train_labels``, ``val_labels``, ``input_shape``,
    ``val_batches``) mean the same."""

    def __init__(self, name, train, val, augment, seed, workers, rank=0, world_size=1, upload=None):
        from models.stream import Augment

        if not isinstance(augment, Augment):
            raise TypeError("augment must be a models.stream.Augment")
        if augment.crop > train.size:
            raise DataError(f"{name}: a crop of {augment.crop} does not fit its {train.size}x{train.size} images: "
                            f"--crop {train.size} or less")
        if len(train) == 0:
            raise DataError(f"{name}: no training images")
        self.name, self.train, self.val = name, train, val
        self.augment, self.seed, self.workers = augment, seed, workers
        self.rank, self.world_size = rank, world_size
        self.upload = upload  # "cupy": training batches reach the GPU from pinned memory on a second stream
        self.class_names = list(train.class_names)
        self.num_classes = len(self.class_names)
        self.train_labels, self.val_labels = train.labels, val.labels
        self.input_shape = (3, augment.crop, augment.crop)

    def __repr__(self):
        return (f"<StreamedData {self.name}: {len(self.train)} train / {len(self.val)} val, {self.augment}, "
                f"{self.workers} workers, rank {self.rank} of {self.world_size}>")

    # ------------------------------------------------------------------ training
    def train_batches(self, batch_size, rng=None, *, epoch, start_batch=0):
        """The :class:`models.stream.BatchStream` of ``epoch`` (from batch
        ``start_batch`` on), this rank's part; ``rng`` is not used (the
        order and the augmentation follow from the seed and the epoch). With
        ``upload="cupy"`` the images come as device arrays, uploaded while the
        previous step runs (:class:`models.stream.DeviceUpload`)."""
        from models.stream import BatchStream

        return BatchStream(self.train, batch_size, seed=self.seed, epoch=epoch, augment=self.augment, train=True,
                           workers=self.workers, start_batch=start_batch, rank=self.rank,
                           world_size=self.world_size, drop_last=True, backend_upload=self.upload)

    def epoch_batches(self, batch_size):
        """Training steps per epoch (full global batches of ``world_size x batch_size``)."""
        return len(self.train) // (batch_size * self.world_size)

    def epoch_images(self, batch_size):
        """Images this rank trains on per epoch."""
        return self.epoch_batches(batch_size) * batch_size

    def check_batch_size(self, batch_size):
        """A batch the training set cannot fill even once is refused (an epoch of no steps)."""
        if self.epoch_batches(batch_size) == 0:
            raise DataError(f"{self.name}: {len(self.train)} training images do not fill one batch of "
                            f"{batch_size * self.world_size}" + (f" ({self.world_size} ranks x {batch_size})"
                                                                 if self.world_size > 1 else "")
                            + ": a smaller --batch-size")

    # ------------------------------------------------------------------ evaluation
    def _val_stream(self, batch_size):
        from models.stream import BatchStream

        return BatchStream(self.val, batch_size, seed=self.seed, epoch=0, augment=self.augment, train=False,
                           workers=self.workers, rank=self.rank, world_size=self.world_size, drop_last=False)

    def val_batches(self, batch_size):
        """This rank's part of the validation set: centre crops, the mean subtracted, in order."""
        with self._val_stream(batch_size) as stream:
            yield from stream

    def val_images_uint8(self, batch_size):
        """This rank's part of the validation set as stored: ``(uint8 (B, S, S, 3), labels)``
        batches (the same images as :meth:`val_batches`), for the ten-crop test."""
        from models.stream import load_image

        stream = self._val_stream(batch_size)
        for b in range(stream.batches_per_epoch):
            idx = stream.indices(b)
            yield np.stack([load_image(self.val, int(i)) for i in idx]), self.val_labels[idx]

    @property
    def crop_mean(self):
        """What the batches have subtracted, in pixel units, for :func:`models.stream.ten_crops`."""
        if self.augment.mean == "image":
            return np.asarray(self.train.mean_image, np.float32)
        if self.augment.mean == "channel":
            return np.asarray(self.train.mean_image, np.float64).mean(axis=(0, 1)).astype(np.float32)
        return None

    def figure_batch(self, indices):
        """``(centre crops in [0, 1] (N, c, c, 3), network inputs, labels)`` of
        the validation images ``indices`` (for ``predictions.png``)."""
        from models.stream import load_image, ten_crops

        images = np.stack([load_image(self.val, int(i)) for i in indices])
        crop = self.augment.crop
        top = (images.shape[1] - crop) // 2
        shown = images[:, top:top + crop, top:top + crop].astype(np.float32) / 255
        inputs = np.ascontiguousarray(ten_crops(images, crop, self.crop_mean)[4])  # the centre patch
        return shown, inputs, self.val_labels[np.asarray(indices)]


class _TrainStatistics:
    """A validation source that subtracts the training split's mean (a folder
    source estimates its statistics from its own tree's training images: this
    takes the ones the training split already has)."""

    def __init__(self, source, train):
        self._source, self._train = source, train

    def __len__(self):
        return len(self._source)

    def __getattr__(self, name):
        if name in ("mean_image", "eigval", "eigvec"):
            return getattr(self._train, name)
        return getattr(self._source, name)


def open_streamed(args, rank=0, world_size=1):
    """The :class:`StreamedData` of the training command's ``--data`` (``pack:FILE``
    or ``folder:DIR``) with its augmentation flags; a pack that is unfinished
    or fails its checksums is refused (:class:`models.pack.PackError`)."""
    from models.pack import scan
    from models.stream import Augment, folder_source

    kind, _, where = args.data.partition(":")
    if kind == "pack":
        from models.pack import open_pack

        pack = open_pack(where)
        train, val = pack.split("train"), pack.split("val")
    else:  # class folders without train/ are split per class, as models.data splits them
        split = dict(val_fraction=VAL_FRACTION, seed=args.seed)
        found = scan(where, **split)  # one listing of the tree serves both splits
        train = folder_source(where, "train", args.resize, **split, found=found)
        val = _TrainStatistics(folder_source(where, "val", args.resize, **split, found=found), train)
    augment = Augment(crop=args.image_size, flip=not args.no_flip, pca_lighting=not args.no_pca_lighting,
                      mean=None if args.mean == "none" else args.mean)
    name = f"{kind}:{os.path.basename(os.path.normpath(where))}"
    upload = "cupy" if getattr(args, "backend", "numpy") == "cupy" else None
    data = StreamedData(name, train, val, augment, args.seed, args.workers, rank, world_size, upload)
    data.check_batch_size(args.batch_size)
    return data
