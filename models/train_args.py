"""The training command's line: its flags (:func:`parse_args`) and the checks
of what they ask for before any work or any write (:func:`validate_args`).

Every mistake is a :class:`UsageError`, which :func:`models.train.cli` prints
as one ``error: ...`` line (exit status 2). The course's models by their
command-line names (:func:`build_model`) live here too: the smallest image a
model takes is read off its graph (:func:`min_image_size`).
"""
import argparse
import importlib.util
import math
import os
import sys

import graphdiff as gd
from models.alexnet import alexnet, alexnet_small
from models.cli import ArgumentParser
from models.cnn import cnn4
from models.data import DataError, parse_spec
from models.imported import onnx_classifier
from models.run_folder import RUN_FILES, TENSORBOARD_DIR

MODELS = ("alexnet", "alexnet-small", "cnn4")
DEFAULT_IMAGE_SIZE = {"alexnet": 227, "alexnet-small": 32, "cnn4": 32}
DEFAULT_LR = 0.01
MEAN_KINDS = ("image", "channel", "none")
DEFAULT_WORKERS = 2
DEFAULT_RESIZE = 256  # folder:DIR streamed: the paper's shorter side
INTEROP_INSTALL = "pip install -e '.[interop]'"


class UsageError(Exception):
    """A mistake in the command line or in what it needs (a missing package,
    an output folder in use): :func:`models.train.cli` prints it as one
    ``error:`` line."""


def is_onnx(model):
    """``--model`` names an ONNX file rather than one of :data:`MODELS`."""
    return model.lower().endswith(".onnx")


def is_streamed(spec):
    """``--data`` is read batch by batch rather than held in memory: ``pack:FILE``
    and ``folder:DIR`` (``train/`` and ``val/``, or class folders alone, split
    per class as :mod:`models.data` splits them)."""
    return spec.partition(":")[0] in ("pack", "folder")


def build_model(name, num_classes, image_size, channels=3, groups=2, activation="relu", dropout=0.5,
                seed=0, width=32, hidden=256):
    """One of :data:`MODELS` by its command-line name."""
    if name == "alexnet":
        if channels != 3:
            raise ValueError("alexnet takes 3-channel images")
        return alexnet(num_classes, image_size, groups=groups, activation=activation, dropout=dropout, seed=seed)
    if name == "alexnet-small":
        return alexnet_small(num_classes, image_size, groups=groups, activation=activation, dropout=dropout,
                             seed=seed, width=width, hidden=hidden, channels=channels)
    if name == "cnn4":
        return cnn4(num_classes, image_size, activation=activation, width=width, seed=seed, channels=channels)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


class _ArgumentParser(ArgumentParser):
    def error(self, message):  # one line through cli(), which knows which rank may say it
        raise UsageError(message)


def parse_args(argv=None):
    """The parsed command line, checked by :func:`validate_args`."""
    p = _ArgumentParser(prog="python -m models.train", description="The training command.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="alexnet-small",
                   help=f"{', '.join(MODELS)}, or an ONNX image classifier FILE.onnx (e.g. from torch.onnx.export) "
                        "to train from its weights")
    p.add_argument("--data", default="digits",
                   help="digits, synthetic[:K], cifar10:DIR, folder:DIR or pack:FILE (a data set packed by "
                        "python -m models.pack); pack:FILE and folder:DIR are streamed")
    p.add_argument("--epochs", type=int, default=10, help="train until this many epochs in total")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help=f"initial learning rate (default {DEFAULT_LR})")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-drop-patience", type=int, default=3,
                   help="divide the lr by 10 after this many epochs without a better validation error (0: never)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--seed", type=int, default=0, help="seeds the init, the split, the shuffling and dropout")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--export-onnx", metavar="FILE", default=None,
                   help="at the end, write the trained network (images -> logits) as ONNX to FILE")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    again.add_argument("--overwrite", action="store_true", help="start again in an OUT that holds a run")
    p.add_argument("--image-size", type=int, default=None, help="input side (default 227 for alexnet, else 32)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu")
    p.add_argument("--groups", type=int, default=2, help="convolution groups (the paper's 2 towers; 1: one)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--width", type=int, default=32, help="alexnet-small/cnn4 base channel count")
    p.add_argument("--hidden", type=int, default=256, help="alexnet-small dense layer size")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (with a checkpoint) before an epoch that would end past this budget")
    board = p.add_mutually_exclusive_group()
    board.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                       help=f"TensorBoard event files into DIR (default OUT/{TENSORBOARD_DIR}; on by default "
                            f"when the tensorboard package is installed: {INTEROP_INSTALL})")
    board.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    p.add_argument("--no-diagrams", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also write checkpoint.npz every N training steps inside an epoch (--resume continues "
                        "from that step)")
    streamed = p.add_argument_group("streamed data (pack:FILE, folder:DIR)")
    streamed.add_argument("--crop", type=int, default=None,
                          help="side of the random training crops and the network input (the paper: 227, or 224; "
                               "default --image-size); at most the stored images' side")
    streamed.add_argument("--no-flip", action="store_true", help="no random horizontal reflections")
    streamed.add_argument("--no-pca-lighting", action="store_true",
                          help="no PCA colour augmentation (the paper's a_i ~ N(0, 0.1) along the RGB eigenvectors)")
    streamed.add_argument("--mean", choices=MEAN_KINDS, default=None,
                          help="subtract the training set's mean image (default, the paper's), its per-channel "
                               "mean, or nothing")
    streamed.add_argument("--workers", type=int, default=None,
                          help=f"background workers assembling batches (default {DEFAULT_WORKERS})")
    streamed.add_argument("--resize", type=int, default=None, metavar="S",
                          help="folder:DIR: images scaled so the shorter side is S, central SxS kept (default 256 "
                               "for crops of 224 or more, else crop x 256/227; a pack keeps its own side)")
    streamed.add_argument("--ten-crop", action="store_true",
                          help="also evaluate on ten crops (corners, centre and their reflections; softmax averaged)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    validate_args(args)
    return args


def validate_args(args):
    """Check the arguments and what they need before any work or any write;
    fills in the defaults that depend on others. Raises :class:`UsageError`."""
    if not (args.model in MODELS or is_onnx(args.model)):
        raise UsageError(f"--model {args.model!r}: choose from {', '.join(MODELS)} or give FILE.onnx")
    if is_onnx(args.model):
        try:  # read once, here; the file decides the image size and channels
            args.onnx_model = onnx_classifier(args.model, args.image_size, channels=args.channels)
        except ValueError as exc:  # gd.ModelFormatError included: names the file
            raise UsageError(f"--model: {exc}") from None
        args.image_size = args.image_size or args.onnx_model.images.shape[2]
        if args.image_size is None:
            raise UsageError(f"--model {args.model}: its image size is known only at run time: give --image-size")
    _validate_streamed(args)
    if args.image_size is None:
        args.image_size = DEFAULT_IMAGE_SIZE[args.model]
    args.lr_given = args.lr is not None
    if args.lr is None:
        args.lr = DEFAULT_LR
    for name in ("epochs", "batch_size", "image_size", "channels", "groups", "width", "hidden"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    if not args.lr > 0 or not math.isfinite(args.lr):
        raise UsageError("--lr must be positive")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UsageError("--max-minutes must be positive")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file, not a folder")
    try:
        kind, _ = parse_spec(args.data)
    except DataError as exc:
        raise UsageError(f"--data: {exc}") from None
    if kind == "digits" and not _installed("sklearn"):
        raise UsageError("--data digits needs scikit-learn (the digits come with it): pip install '.[data]'")
    if kind == "folder" and not _installed("PIL"):
        raise UsageError("--data folder:DIR needs Pillow to read images: pip install '.[data]'")
    if args.backend == "cupy":
        try:
            gd.get_backend("cupy")
        except gd.BackendError as exc:
            raise UsageError(f"--backend cupy: {exc}") from None
    smallest = 1 if is_onnx(args.model) else min_image_size(args)
    if args.image_size < smallest:
        raise UsageError(f"--image-size {args.image_size} is too small for {args.model}: its convolutions and "
                         f"poolings need images of at least {smallest}x{smallest}")
    held = [f for f in RUN_FILES[:2] if os.path.exists(os.path.join(args.out, f))]
    if held and not (args.resume or args.overwrite):
        raise UsageError(f"--out {args.out} already holds a run ({', '.join(held)}): pass --resume to continue it "
                         "or --overwrite to start again")
    args.tensorboard_dir = tensorboard_dir(args)
    if args.export_onnx is not None:
        if not _installed("onnx"):
            raise UsageError(f"--export-onnx needs the onnx package: {INTEROP_INSTALL}")
        folder = os.path.dirname(os.path.abspath(args.export_onnx))
        if not os.path.isdir(folder):
            raise UsageError(f"--export-onnx {args.export_onnx}: no folder {folder} to write it in")


def _validate_streamed(args):
    """The streamed-data flags: refused with data held in memory; ``--crop`` is
    the input side (``--image-size`` may say the same); the defaults filled in."""
    args.streamed = isinstance(args.data, str) and is_streamed(args.data)
    given = [flag for flag, on in (("--crop", args.crop is not None), ("--no-flip", args.no_flip),
                                   ("--no-pca-lighting", args.no_pca_lighting), ("--mean", args.mean is not None),
                                   ("--workers", args.workers is not None), ("--resize", args.resize is not None),
                                   ("--ten-crop", args.ten_crop)) if on]
    if given and not args.streamed:
        raise UsageError(f"{given[0]} is for streamed data (pack:FILE or folder:DIR); "
                         f"--data {args.data} is held in memory at the network's input size")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise UsageError("--checkpoint-every must be a positive number of training steps")
    if not args.streamed:
        return
    if args.crop is not None and args.image_size is not None and args.crop != args.image_size:
        raise UsageError(f"--crop {args.crop} and --image-size {args.image_size} differ: the crop is the network's "
                         "input; give one of them")
    args.image_size = args.crop or args.image_size or DEFAULT_IMAGE_SIZE[args.model]
    args.mean = args.mean or "image"
    args.workers = DEFAULT_WORKERS if args.workers is None else args.workers
    if args.workers < 0:
        raise UsageError("--workers must be 0 (batches assembled in the training process) or more")
    if args.resize is not None and args.data.startswith("pack:"):
        raise UsageError("--resize is for folder:DIR: a pack keeps the image side it was packed with")
    if args.resize is None:  # the paper's 256 for its crops; smaller crops keep its proportion 256/227
        args.resize = DEFAULT_RESIZE if args.image_size >= 224 else round(args.image_size * DEFAULT_RESIZE / 227)
    if args.resize < 1:
        raise UsageError("--resize must be positive")
    if args.channels != 3:
        raise UsageError(f"--data {args.data} is streamed as RGB (grey images are converted): --channels 3")


def _installed(module):
    """Whether ``module`` can be imported (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def tensorboard_dir(args):
    """Where the event files go, or None: ``--tensorboard [DIR]`` asks for
    them (an error without the package), ``--no-tensorboard`` turns them
    off, and by default they go to ``OUT/tensorboard`` if the package is
    installed."""
    installed = _installed("tensorboard")
    if args.no_tensorboard or (args.tensorboard is None and not installed):
        return None
    if not installed:
        raise UsageError(f"--tensorboard needs the tensorboard package: {INTEROP_INSTALL}")
    return args.tensorboard or os.path.join(args.out, TENSORBOARD_DIR)


def min_image_size(args):
    """The smallest image side ``args.model`` accepts, computed from its layer
    geometry: walking its convolutions and poolings from the last one down,
    an output of side ``m`` needs an input of side ``(m - 1) * stride +
    kernel - 2 * padding`` (starting from ``m = 1``). Builds the model at its
    default size (2 classes) to read the geometry off the graph."""
    try:
        probe = build_model(args.model, 2, DEFAULT_IMAGE_SIZE[args.model], args.channels, args.groups,
                            args.activation, args.dropout, args.seed, args.width, args.hidden)
    except ValueError as exc:  # e.g. --width 5 with --groups 2
        raise UsageError(f"--model {args.model}: {exc}") from None
    geometry = []  # (kernel, stride, padding on both sides) along the image path, input first
    for t in gd.toposort([probe.logits]):
        if t.kind in ("placeholder", "variable", "constant"):
            continue
        attrs = t.op.attrs
        if t.op.name in ("conv2d", "conv2d_relu"):  # dilated kernel; padding (ph, pw) or ((top, bottom), ...)
            pad = attrs["padding"][0]
            geometry.append(((t.inputs[1].shape[2] - 1) * attrs["dilation"][0] + 1, attrs["stride"][0],
                             2 * pad if isinstance(pad, int) else sum(pad)))
        elif "size" in attrs and "stride" in attrs and isinstance(attrs["size"], tuple):  # poolings
            geometry.append((attrs["size"][0], attrs["stride"][0], 2 * attrs["padding"][0]))
    side = 1
    for kernel, stride, padding in reversed(geometry):
        side = max(1, (side - 1) * stride + kernel - padding)
    return side

