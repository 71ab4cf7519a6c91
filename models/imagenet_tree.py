"""ImageNet-like test trees: folders of JPEGs laid out as the ILSVRC-2012
archives are (or as any ``train/`` + ``val/`` class-folder tree), with the
quirks real ImageNet files have, for the tests and benchmarks of
:mod:`models.pack` and :mod:`models.stream`.

Images are ``around`` ImageNet's average 500x375 with varied sizes and aspect
ratios (landscape, portrait, square, wide), each a smooth colour pattern of
its class (a coarse random grid upsampled bicubically) shifted and tinted per
image plus a little noise, so a small network can tell classes apart.

Layouts (``layout=``):

``"ilsvrc-flat"``
    ``train/<wnid>/<wnid>_<k>.JPEG``; ``val/ILSVRC2012_val_<8 digits>.JPEG``
    flat, with the devkit's ``LOC_val_solution.csv`` (``ImageId,PredictionString``
    rows whose first word is the wnid) beside ``train/`` and ``val/``.
``"ilsvrc-folders"``
    the same, with ``val/<wnid>/`` folders (as after the usual "valprep" script).
``"folders"``
    any class-folder tree: ``train/<name>/*.jpg`` and ``val/<name>/*.jpg``.

Quirks (``quirks=True``), one file each in the training split, at fixed
positions listed in :attr:`Tree.quirks`: a greyscale JPEG, a CMYK JPEG, a PNG
named ``.JPEG``, a JPEG whose EXIF orientation says "rotate 90 degrees", and a
16-bit greyscale PNG. Faults (``faults=``, refused by ``models.pack`` unless
``--skip-bad``): ``"zero"`` (a zero-byte file), ``"truncated"`` (a JPEG cut
in half), ``"garbage"`` (random bytes named ``.JPEG``).

Command line (for the benchmarks): ``python -m models.imagenet_tree OUT
[--classes K] [--train N] [--val N] [--layout L] [--seed S]``.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Tree", "make_tree", "synthetic_image", "write_image", "QUIRKS", "FAULTS"]

QUIRKS = ("grey", "cmyk", "png_as_jpeg", "exif_rotated", "png16")
FAULTS = ("zero", "truncated", "garbage")
LAYOUTS = ("ilsvrc-flat", "ilsvrc-folders", "folders")

# Aspect ratios (width / height) seen often in ImageNet: 4:3 dominates.
_ASPECTS = (4 / 3, 4 / 3, 4 / 3, 3 / 4, 1.0, 3 / 2, 16 / 9, 2 / 3)


@dataclass
class Tree:
    """What :func:`make_tree` wrote: the root, class names (sorted, = label
    order), ``train``/``val`` lists of ``(path, label)``, and the paths of
    the quirky and the faulty files, by kind."""
    root: str
    class_names: list
    train: list
    val: list
    quirks: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)


def synthetic_image(label: int, index: int, width: int, height: int,
                    seed: int = 0) -> np.ndarray:
    """uint8 ``(height, width, 3)``: class ``label``'s smooth pattern (a 4x3
    random RGB grid, upsampled bicubically), shifted, tinted and noised by
    image ``index``; deterministic in ``(label, index, seed)``."""
    from PIL import Image

    cls = np.random.default_rng([seed, 7919, label])
    grid = cls.integers(20, 236, size=(3, 4, 3), dtype=np.uint8)
    rng = np.random.default_rng([seed, 104729, label, index])
    big = Image.fromarray(grid).resize((width + width // 4, height + height // 4),
                                       Image.Resampling.BICUBIC)
    dx, dy = rng.integers(0, width // 4 + 1), rng.integers(0, height // 4 + 1)
    arr = np.asarray(big.crop((dx, dy, dx + width, dy + height)), dtype=np.int16)
    arr = arr + rng.integers(-20, 21, size=3) + rng.integers(-6, 7, size=arr.shape, dtype=np.int16)
    return np.clip(arr, 0, 255).astype(np.uint8)


def write_image(path: str, rgb: np.ndarray, kind: str = "jpeg") -> None:
    """Write uint8 HWC ``rgb`` to ``path`` as ``kind``: ``"jpeg"`` (quality 90),
    or one of :data:`QUIRKS`. ``"exif_rotated"`` stores the pixels turned so
    that EXIF orientation 6 (rotate 90 degrees clockwise to display) gives
    ``rgb`` back; ``"png16"`` stores 16-bit grey (the luma of ``rgb`` x 257)."""
    from PIL import Image

    im = Image.fromarray(rgb)
    if kind == "jpeg":
        im.save(path, "JPEG", quality=90)
    elif kind == "grey":
        im.convert("L").save(path, "JPEG", quality=90)
    elif kind == "cmyk":
        im.convert("CMYK").save(path, "JPEG", quality=90)
    elif kind == "png_as_jpeg":
        im.save(path, "PNG")  # the name says .JPEG; the bytes are a PNG
    elif kind == "exif_rotated":
        stored = im.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: the viewer rotates 90 degrees clockwise
        stored.save(path, "JPEG", quality=90, exif=exif.tobytes())
    elif kind == "png16":
        grey = np.asarray(im.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path, "PNG")  # mode I;16
    else:
        raise ValueError(f"unknown image kind {kind!r}; expected 'jpeg' or one of {QUIRKS}")


def _write_fault(path: str, kind: str, rgb: np.ndarray) -> None:
    if kind == "zero":
        open(path, "wb").close()
    elif kind == "truncated":
        write_image(path, rgb)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif kind == "garbage":
        with open(path, "wb") as f:
            f.write(np.random.default_rng(len(path)).bytes(3000))
    else:
        raise ValueError(f"unknown fault {kind!r}; expected one of {FAULTS}")


def _size(rng, around) -> tuple:
    w0, h0 = around
    aspect = _ASPECTS[rng.integers(len(_ASPECTS))]
    area = w0 * h0 * rng.uniform(0.6, 1.4)
    w = int(round(np.sqrt(area * aspect)))
    h = int(round(np.sqrt(area / aspect)))
    return max(w, 8), max(h, 8)


def make_tree(root: str, classes: int = 20, train_per_class: int = 4,
              val_per_class: int = 2, *, layout: str = "ilsvrc-flat",
              around=(500, 375), quirks: bool = True, faults=(),
              seed: int = 0) -> Tree:
    """Write an ImageNet-like tree under ``root`` (see the module docstring)
    and return its :class:`Tree`. ``around`` is the mean image size (width,
    height); sizes vary +-40 % in area over the aspect ratios above. Quirks
    replace the first training images of classes 0..4 (one each); faults
    replace the second training image of the first classes, in order."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if classes < 1 or train_per_class < 1 or val_per_class < 0:
        raise ValueError("need classes >= 1, train_per_class >= 1, val_per_class >= 0")
    faults = tuple(faults)
    if quirks and classes < len(QUIRKS):
        raise ValueError(f"quirks need at least {len(QUIRKS)} classes")
    if faults and (train_per_class < 2 or classes < len(faults)):
        raise ValueError("faults need train_per_class >= 2 and a class per fault")
    ilsvrc = layout.startswith("ilsvrc")
    names = ([f"n{1440764 + 1000 * k:08d}" for k in range(classes)] if ilsvrc
             else [f"class_{k:03d}" for k in range(classes)])
    ext = ".JPEG" if ilsvrc else ".jpg"
    rng = np.random.default_rng([seed, 31337])
    tree = Tree(root=root, class_names=names, train=[], val=[])
    for label, name in enumerate(names):
        d = os.path.join(root, "train", name)
        os.makedirs(d, exist_ok=True)
        for k in range(train_per_class):
            w, h = _size(rng, around)
            rgb = synthetic_image(label, k, w, h, seed)
            kind = "jpeg"
            if quirks and k == 0 and label < len(QUIRKS):
                kind = QUIRKS[label]
            path = os.path.join(d, f"{name}_{k}{'.png' if kind == 'png16' else ext}")
            if faults and k == 1 and label < len(faults):
                _write_fault(path, faults[label], rgb)
                tree.faults[faults[label]] = path
            else:
                write_image(path, rgb, kind)
                if kind != "jpeg":
                    tree.quirks[kind] = path
            tree.train.append((path, label))
    val_dir = os.path.join(root, "val")
    os.makedirs(val_dir, exist_ok=True)
    solution = []
    serial = 0
    for label, name in enumerate(names):
        for k in range(val_per_class):
            serial += 1
            w, h = _size(rng, around)
            rgb = synthetic_image(label, 10_000 + k, w, h, seed)
            if layout == "ilsvrc-flat":
                image_id = f"ILSVRC2012_val_{serial:08d}"
                path = os.path.join(val_dir, image_id + ext)
                solution.append((image_id, f"{name} 10 20 {w - 10} {h - 20} "))
            else:
                os.makedirs(os.path.join(val_dir, name), exist_ok=True)
                stem = f"ILSVRC2012_val_{serial:08d}" if ilsvrc else f"{name}_val{k}"
                path = os.path.join(val_dir, name, stem + ext)
            write_image(path, rgb)
            tree.val.append((path, label))
    if layout == "ilsvrc-flat":
        # The devkit lists images in no particular order.
        order = np.random.default_rng([seed, 17]).permutation(len(solution))
        with open(os.path.join(root, "LOC_val_solution.csv"), "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["ImageId", "PredictionString"])
            out.writerows(solution[i] for i in order)
    return tree


def main(argv=None) -> int:
    from models.cli import ArgumentParser

    p = ArgumentParser(prog="python -m models.imagenet_tree",
                       description="Write an ImageNet-like tree of JPEGs (for tests and benchmarks).")
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--train", type=int, default=4, help="training images per class")
    p.add_argument("--val", type=int, default=2, help="validation images per class")
    p.add_argument("--layout", choices=LAYOUTS, default="ilsvrc-flat")
    p.add_argument("--no-quirks", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        t = make_tree(a.out, a.classes, a.train, a.val, layout=a.layout,
                      quirks=not a.no_quirks, seed=a.seed)
    except (ValueError, OSError) as exc:
        p.error(str(exc))
    print(f"{a.out}: {len(t.train)} training and {len(t.val)} validation images, "
          f"{len(t.class_names)} classes ({a.layout})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
