"""The training command.

    python -m models.train --model alexnet-small --data digits --image-size 24 \\
        --batch-size 16 --lr 0.01 --lr-drop-patience 2 --epochs 15 --seed 0 \\
        --out runs/alexnet-small-digits

trains one of the models (or, ``--model FILE.onnx``, an ONNX image classifier
from its weights: :mod:`models.imported`) with SGD (momentum, weight decay:
the AlexNet paper's rule, :mod:`graphdiff.optim`) and writes into ``--out``
(and, with ``--export-onnx FILE``, the trained network as ONNX at the end):

``metrics.jsonl``
    one JSON object per epoch: ``epoch``, ``train_loss``, ``train_error``,
    ``val_loss``, ``val_error``, ``val_accuracy``, ``val_top5_error``, ``lr``,
    ``seconds``, ``images_per_second`` (and, with ``--ten-crop``,
    ``val_error_10crop``, ``val_top5_error_10crop``). ``train_loss``/``train_error``
    are averaged over the epoch's mini-batches as they are trained (dropout
    on, as cuda-convnet reported them); the validation figures use the
    weights at the end of the epoch with dropout off: the top-1 and top-5
    errors of the centre crop (:mod:`models.evaluate`) and, with
    ``--ten-crop``, of ten crops, the softmax averaged.
``curves.png``
    loss and error per epoch.
``forward.svg``, ``backward.svg``
    the model's forward graph and its backward (gradient) graph, collapsed
    by layer scope (skipped with a warning if rendering is unavailable).
``tensorboard/``
    TensorBoard event files (``--tensorboard DIR`` elsewhere; on by default
    when the ``tensorboard`` package is installed): the same figures per
    epoch and the forward graph (:mod:`models.tensorboard_log`).
``explorer.html``
    the interactive explorer of the forward and backward graphs with the
    values of one validation batch from the trained model (written at the
    end; skipped with ``--no-diagrams``, and with a warning if it fails).
``conv1_kernels.png``, ``predictions.png``
    at the end, the paper's Figure 3 (the first convolution's kernels) and
    Figure 4, left (validation images and their top-5 predictions):
    :mod:`models.figures`.
``checkpoint.npz``
    written after every epoch (and before the first; with
    ``--checkpoint-every N`` also every N training steps, with where the
    epoch stands: ``--resume`` then continues at that step, bit for bit as
    an uninterrupted run): parameters, momentum
    buffers, epoch, learning rate, the dropout and shuffle generators' states,
    the learning-rate schedule's state and which library (NumPy or oneDNN)
    each convolution was measured to run on. ``--resume`` continues from it
    exactly: the per-epoch losses of an interrupted and resumed run equal
    those of an uninterrupted one. Ctrl-C leaves the checkpoint of the last
    completed epoch and exits with a message (status 130).

Data: the small sets of :mod:`models.data` are held in memory; ``--data
pack:FILE`` (``python -m models.pack``) and ``--data folder:DIR`` (JPEGs
decoded on the fly) are streamed batch by batch with the paper's
augmentation (:mod:`models.streamed`, :mod:`models.stream`).

The learning rate is divided by 10 when the validation error has not improved
for ``--lr-drop-patience`` epochs, as in the paper (0 turns this off). A data
set without validation images trains with the validation figures ``null``
and no drops.

An output folder that already holds a run is refused unless ``--resume``
(continue it) or ``--overwrite`` (start again) is given. Every mistake in the
command line or its environment is one ``error: ...`` line and exit status 2.

Under ``mpiexec -n N`` the command trains data-parallel (:mod:`models.distributed`):
``--batch-size`` per rank, the batch order of one process at ``N`` times the
batch, only rank 0 writing; a rank that fails ends every rank.
"""
import argparse
import contextlib
import functools
import importlib.util
import itertools
import json
import math
import numbers
import os
import sys
import time
import traceback
import warnings

import numpy as np

import graphdiff as gd
from graphdiff.atomic import atomic_write
from graphdiff.backends import to_host_array
from graphdiff.checkpoint import CheckpointError, generator_state, load_checkpoint, restore_generator, save_checkpoint
from graphdiff.distributed import launched_rank
from graphdiff.kernels import choice as kernel_choice
from models.alexnet import alexnet, alexnet_small, train_step
from models.cli import ArgumentParser
from models.cnn import cnn4
from models.data import DataError, load_dataset, parse_spec
from models.distributed import AgreedInterrupt, DistributedError, detect
from models.evaluate import describe, log_softmax, ten_crop_errors, top_k_wrong
from models.imported import check_classifier, onnx_classifier

MODELS = ("alexnet", "alexnet-small", "cnn4")
DEFAULT_IMAGE_SIZE = {"alexnet": 227, "alexnet-small": 32, "cnn4": 32}
DEFAULT_LR = 0.01
MEAN_KINDS = ("image", "channel", "none")
DEFAULT_WORKERS = 2
DEFAULT_RESIZE = 256  # folder:DIR streamed: the paper's shorter side

#: the keys of a metrics.jsonl line, in the order they are written
METRIC_KEYS = ("epoch", "train_loss", "train_error", "val_loss", "val_error", "val_accuracy", "val_top5_error", "lr",
               "seconds", "images_per_second")
#: the keys every epoch of a checkpoint's history has (older runs lack ``val_top5_error``)
HISTORY_KEYS = tuple(k for k in METRIC_KEYS if k != "val_top5_error")
#: the keys ``--ten-crop`` adds to a metrics.jsonl line
TEN_CROP_KEYS = ("val_error_10crop", "val_top5_error_10crop")
#: files of a run in ``--out``; one of the first two there means the folder holds a run
RUN_FILES = ("checkpoint.npz", "metrics.jsonl", "curves.png", "forward.svg", "backward.svg", "explorer.html",
             "conv1_kernels.png", "predictions.png")
TENSORBOARD_DIR = "tensorboard"  # inside --out, where the event files go by default
INTEROP_INSTALL = "pip install -e '.[interop]'"


class UsageError(Exception):
    """A mistake in the command line or in what it needs (a missing package,
    an output folder in use): :func:`cli` prints it as one ``error:`` line."""


class OutputError(Exception):
    """Writing into the output folder failed (disk full, permissions); what
    was saved before is intact."""

#: configuration keys a checkpoint must agree on to be resumed
STRUCTURE_KEYS = ("model", "data", "image_size", "channels", "groups", "activation", "width", "hidden",
                  "dropout", "num_classes")


def is_onnx(model):
    """``--model`` names an ONNX file rather than one of :data:`MODELS`."""
    return model.lower().endswith(".onnx")


# --------------------------------------------------------------------------- pieces reused elsewhere
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


def train_epoch(step, dataset, batch_size, rng, progress=None, parallel=None, stop=None, epoch=None, position=None,
                on_step=None):
    """One pass over the shuffled training set. Returns ``(mean loss, error
    rate, images per second)``, averaged over the mini-batches as trained.
    ``progress`` is a tqdm bar (or None); ``parallel`` (data-parallel
    training, :mod:`models.distributed`) sums the figures over the ranks;
    ``stop`` (an :class:`models.distributed.AgreedStop`) is asked after every
    step whether the ranks stop there. ``epoch`` (streamed data: the epoch's
    order and augmentation follow from the seed and the epoch) is passed on to
    ``dataset.train_batches``. ``position``, an :class:`EpochPosition`, is the
    part of the epoch already trained (a mid-epoch checkpoint): its batches
    are skipped and its sums carried on. ``on_step(position)`` is called
    after every step with where the epoch stands (mid-epoch checkpoints)."""
    done, (total_loss, wrong, seen), spent = position or EpochPosition()
    start = time.perf_counter() - spent
    with _epoch_batches(dataset, batch_size, rng, epoch, done) as batches:
        for images, labels in batches:
            loss = step(images, labels)
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss} after {seen} images: lower the learning rate")
            n = len(labels)
            total_loss += loss * n
            wrong += int(np.count_nonzero(np.argmax(step.last_logits, axis=1) != labels))
            seen += n
            done += 1
            if progress is not None:
                progress.update(n)
                progress.set_postfix(loss=f"{loss:.4f}", refresh=False)  # the bar itself shows img/s
            if on_step is not None:
                on_step(EpochPosition(done, (total_loss, wrong, seen), time.perf_counter() - start))
            if stop is not None:
                stop.after_step()
    seconds = time.perf_counter() - start
    if parallel is not None:
        total_loss, wrong, seen = parallel.sum([total_loss, wrong, seen])
    return total_loss / seen, wrong / seen, seen / seconds


class EpochPosition(tuple):
    """Where a rank stands in an epoch: ``(batches trained, (loss sum, wrong,
    images), seconds)``; the sums are this rank's."""

    def __new__(cls, batches=0, sums=(0.0, 0, 0), seconds=0.0):
        return super().__new__(cls, (int(batches), tuple(sums), float(seconds)))

    @property
    def batches(self):
        return self[0]


def _batch_count(dataset, batch_size):
    """The training steps of one epoch of in-memory data (the batches
    :meth:`models.data.Dataset.train_batches` or a rank's
    :meth:`models.distributed.ShardedDataset.train_batches` yields)."""
    parallel = getattr(dataset, "_parallel", None)
    if parallel is None:
        return -(-len(dataset.train_labels) // batch_size)
    n, step = len(dataset._dataset.train_labels), batch_size * parallel.size
    return n // step + (0 < n % step and n % step >= parallel.size)


def _epoch_batches(dataset, batch_size, rng, epoch, skip):
    """The epoch's training batches from the ``skip``-th on, as a context
    manager (a streamed data set's workers stop when it closes). In-memory
    data draws its order (and augmentation) from ``rng``, which must be in its
    state at the start of the epoch: the skipped batches are drawn and
    dropped, so ``rng`` ends where an uninterrupted epoch leaves it."""
    if epoch is not None:
        return dataset.train_batches(batch_size, rng, epoch=epoch, start_batch=skip)
    return contextlib.nullcontext(itertools.islice(dataset.train_batches(batch_size, rng), skip, None))


def evaluate(predict, dataset, batch_size, parallel=None):
    """``(mean loss, top-1 error, top-5 error)`` of the evaluation program
    ``predict`` (images -> logits, dropout off) on the validation split's
    centre crops (this rank's part of it, summed over the ranks by
    ``parallel``); ``(None, None, None)`` when the split is empty. The top-k
    error: the fraction of images whose class is not among the ``k`` highest
    logits (:func:`models.evaluate.top_k_wrong`)."""
    total_loss, wrong, wrong5, seen = 0.0, 0, 0, 0
    for images, labels in dataset.val_batches(batch_size):
        logits = np.asarray(predict(images), dtype=np.float64)
        logp = log_softmax(logits)
        total_loss += -logp[np.arange(len(labels)), labels].sum()
        wrong += int(np.count_nonzero(np.argmax(logits, axis=1) != labels))
        wrong5 += top_k_wrong(logits, labels, 5)
        seen += len(labels)
    if parallel is not None:
        total_loss, wrong, wrong5, seen = parallel.sum([total_loss, wrong, wrong5, seen])
    if seen == 0:
        return None, None, None
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"the validation loss became {total_loss / seen}: lower the learning rate")
    return total_loss / seen, wrong / seen, wrong5 / seen


def render_diagrams(model, step, out_dir, log=print):
    """``forward.svg`` (the model's graph to the loss) and ``backward.svg``
    (the gradients of the loss), collapsed by layer scope. Failure warns."""
    written = []
    try:
        import visualize
    except Exception as exc:  # not installed, or broken: training matters more
        warnings.warn(f"diagrams skipped: cannot import visualize ({type(exc).__name__}: {exc})")
        return written
    for name, outputs in (("forward", [model.loss]), ("backward", list(step.grads.values()))):
        path = os.path.join(out_dir, f"{name}.svg")
        try:
            visualize.render(outputs, path, collapse=True)
            written.append(path)
        except Exception as exc:  # noqa: BLE001 - any rendering problem only costs the diagram
            warnings.warn(f"{name} diagram skipped: {type(exc).__name__}: {exc}")
    if written:
        log(f"diagrams: {', '.join(written)}")
    return written


def write_explorer(model, dataset, out_dir, batch_size, log=print):
    """``explorer.html``: both passes with the values of the first validation
    batch (dropout off; the first training images where there is no
    validation split). Failure warns: training matters more."""
    path = os.path.join(out_dir, "explorer.html")
    try:
        import visualize

        if len(dataset.val_labels):
            (images, labels), which = next(iter(dataset.val_batches(batch_size))), "one validation batch"
        else:
            images, labels = dataset.train_images[:batch_size], dataset.train_labels[:batch_size]
            which = "the first training images (no validation split)"
        visualize.explore(model, feed={model.images: images, model.labels: labels}, path=path,
                          title=f"{model.name} on {dataset.name}, {which}")
    except Exception as exc:  # noqa: BLE001 - any problem only costs the page
        warnings.warn(f"explorer.html not written: {type(exc).__name__}: {exc}")
        return None
    log(f"explorer: {path}")
    return path


def write_figures(model, predict, dataset, out_dir, log=print):
    """The paper's Figure 3 (``conv1_kernels.png``: the first convolution's
    learned kernels) and Figure 4 left (``predictions.png``: validation
    images with their top-5 predictions), :mod:`models.figures`. Failure
    warns: training matters more."""
    from models import figures

    written = []
    kernels = next((p for k, p in model.params.items() if len(p.shape) == 4), None)  # conv1 comes first
    if kernels is not None:
        path = os.path.join(out_dir, "conv1_kernels.png")
        try:
            figures.write_conv1_kernels(to_host_array(kernels.value), path, f"{model.name}: conv1")
            written.append(path)
        except Exception as exc:  # noqa: BLE001 - any problem only costs the picture
            warnings.warn(f"conv1_kernels.png not written: {type(exc).__name__}: {exc}")
    if len(dataset.val_labels):
        path = os.path.join(out_dir, "predictions.png")
        try:
            shown, inputs, labels = _figure_batch(dataset, figures.spread(len(dataset.val_labels)))
            probabilities = np.exp(log_softmax(predict(inputs)))
            figures.write_predictions(shown, probabilities, labels, dataset.class_names, path,
                                      title=f"{model.name} on {dataset.name}")
            written.append(path)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"predictions.png not written: {type(exc).__name__}: {exc}")
    if written:
        log(f"figures: {', '.join(written)}")
    return written


def _figure_batch(dataset, indices):
    """``(images to show in [0, 1] (N, H, W[, 3]), network inputs, labels)`` of
    the validation images ``indices``. In-memory images get their mean back
    and are stretched to [0, 1] each (they were scaled per data set)."""
    if hasattr(dataset, "figure_batch"):  # streamed: the centre crops as stored
        return dataset.figure_batch(indices)
    inputs = np.ascontiguousarray(dataset.val_images[indices])
    shown = inputs + np.asarray(dataset.mean, np.float32).reshape(1, -1, 1, 1)
    lo = shown.min(axis=(1, 2, 3), keepdims=True)
    shown = (shown - lo) / np.maximum(shown.max(axis=(1, 2, 3), keepdims=True) - lo, 1e-12)
    shown = shown.transpose(0, 2, 3, 1)
    shown = shown[..., 0] if shown.shape[-1] != 3 else shown
    return shown, inputs, dataset.val_labels[indices]


def export_onnx(model, path, log=print):
    """The trained network, images -> logits (dropout as the identity), as an
    ONNX file that ONNX Runtime, PyTorch or ``gd.onnx.load`` read back."""
    try:
        gd.onnx.export(model.logits, [model.images], path)
    except (gd.ModelFormatError, OSError) as exc:
        raise OutputError(f"--export-onnx {path}: {exc}") from None
    log(f"ONNX: {path}")


def plot_curves(history, path, title=""):
    """Loss and error curves per epoch, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    validated = [h for h in history if h["val_error"] is not None]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    if validated:
        ax_loss.plot([h["epoch"] for h in validated], [h["val_loss"] for h in validated], "s--", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_err.plot(epochs, [100 * h["train_error"] for h in history], "o-", label="train")
    if validated:
        ax_err.plot([h["epoch"] for h in validated], [100 * h["val_error"] for h in validated], "s--",
                    label="validation")
    for key, style, label in (("val_top5_error", "v:", "validation top-5"),
                              ("val_error_10crop", "D--", "validation, 10 crops"),
                              ("val_top5_error_10crop", "^:", "validation top-5, 10 crops")):
        shown = [h for h in history if h.get(key) is not None]
        if shown:
            ax_err.plot([h["epoch"] for h in shown], [100 * h[key] for h in shown], style, label=label)
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error rate (%)")
    ax_err.legend()
    for h0, h1 in zip(history, history[1:]):
        if h1["lr"] < h0["lr"]:  # mark learning-rate drops
            for ax in (ax_loss, ax_err):
                ax.axvline(h1["epoch"] - 0.5, color="grey", lw=0.8, ls=":")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.9, wspace=0.25)  # tight_layout costs ~1 s
    try:
        with atomic_write(path) as f:  # a full disk must not leave a half-written picture behind
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- the command
class _ArgumentParser(ArgumentParser):
    def error(self, message):  # one line through cli(), which knows which rank may say it
        raise UsageError(message)


def parse_args(argv=None):
    """The parsed command line, checked by :func:`validate_args`."""
    p = _ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0],
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


def is_streamed(spec):
    """``--data`` is read batch by batch rather than held in memory: ``pack:FILE``
    and ``folder:DIR`` (``train/`` and ``val/``, or class folders alone, split
    per class as :mod:`models.data` splits them)."""
    return spec.partition(":")[0] in ("pack", "folder")


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


def _config(args, num_classes):
    keys = ("model", "data", "image_size", "channels", "groups", "activation", "width", "hidden", "dropout",
            "batch_size", "lr", "momentum", "weight_decay", "seed", "lr_drop_patience", "backend")
    config = {k: getattr(args, k) for k in keys}
    config["num_classes"] = num_classes
    if getattr(args, "streamed", False):  # what the evaluation of the trained model must subtract and scale alike
        config.update(mean=args.mean, resize=args.resize)
    return config


def _ordered(record):
    """A metrics record with :data:`METRIC_KEYS` first, in that order (a
    checkpoint's JSON comes back with its keys sorted)."""
    return {**{k: record[k] for k in METRIC_KEYS if k in record}, **record}


def _write_metrics(path, history):
    """Rewrite ``metrics.jsonl`` atomically (strict JSON: no NaN)."""
    with atomic_write(path, "w") as f:
        for h in history:
            f.write(json.dumps(_ordered(h), allow_nan=False) + "\n")


def _restore(step, shuffle_rng, arrays, meta, config, path):
    """Check a checkpoint read for ``--resume`` whole before using any of it,
    then load it into ``step`` and ``shuffle_rng``. Returns ``(history,
    best_val_error, stale_epochs)``. Raises :class:`CheckpointError` naming
    the file and what is wrong."""
    def fail(what):
        return CheckpointError(f"checkpoint {path}: {what}")

    saved = meta.get("config", {})
    if not isinstance(saved, dict):
        raise fail(f"config must be an object, got {type(saved).__name__}")
    clash = [f"{k}: {saved.get(k)!r} in the checkpoint, {config[k]!r} now"
             for k in STRUCTURE_KEYS if saved.get(k) != config[k]]
    if clash:
        raise CheckpointError(f"checkpoint {path} was written for another setup; " + "; ".join(clash))

    def number(key, ok):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value):
            raise fail(f"metadata {key!r} is {value!r}")
        return value

    epoch = number("epoch", lambda v: isinstance(v, numbers.Integral) and v >= 0)
    lr = number("lr", lambda v: math.isfinite(v) and v > 0)
    stale = number("stale_epochs", lambda v: isinstance(v, numbers.Integral) and v >= 0)
    best_val = meta.get("best_val_error")
    if best_val is not None:
        best_val = number("best_val_error", lambda v: 0 <= v <= 1)
    history = meta.get("history")
    if not isinstance(history, list) or len(history) != epoch:
        raise fail(f"metadata 'history' must be a list of {epoch} epochs, got {type(history).__name__}"
                   + (f" of {len(history)}" if isinstance(history, list) else ""))
    for i, h in enumerate(history, 1):
        if not isinstance(h, dict) or h.get("epoch") != i or not set(HISTORY_KEYS) <= set(h):
            raise fail(f"metadata 'history' entry {i} is not the record of epoch {i}")

    expected = step.state_arrays()
    unknown = sorted(set(arrays) - set(expected))
    missing = sorted(set(expected) - set(arrays))
    if unknown or missing:
        raise fail("holds arrays the model does not have: " * bool(unknown) + ", ".join(unknown)
                   + ("; " if unknown and missing else "") + "lacks " * bool(missing) + ", ".join(missing))
    for name, want in expected.items():
        got = arrays[name]
        if got.shape != want.shape or got.dtype.kind != want.dtype.kind:
            raise fail(f"array {name!r} is {got.dtype} {got.shape}; the model has {want.dtype} {want.shape}")
    try:
        state = restore_generator(meta.get("shuffle_rng"), np.random.default_rng(0))
        dropout_state = restore_generator(meta.get("dropout_rng")).bit_generator.state
    except Exception as exc:  # noqa: BLE001 - any malformed state: KeyError, TypeError, ValueError
        raise fail(f"bad random generator state ({type(exc).__name__}: {exc})") from None
    steps = meta.get("steps", 0)  # older checkpoints: none counted
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise fail(f"metadata 'steps' is {steps!r}")
    meta["position"] = _checked_position(meta.get("position"), meta.get("ranks", 1), steps, fail)
    moved = [f"--{k.replace('_', '-')} {saved.get(k)} (now {config[k]})" for k in ("batch_size", "seed")
             if meta["position"] is not None and saved.get(k) != config[k]]
    if moved:  # the epoch's remaining batches would be others
        raise CheckpointError(f"checkpoint {path} was written inside an epoch with " + " and ".join(moved)
                              + ": resume it with the same")
    try:  # the convolution libraries the run measured (older checkpoints: none, measure again)
        kernel_choice.adopt(meta.get("kernel_choices", []))
    except ValueError as exc:
        raise fail(str(exc)) from None

    step.load_state_arrays(arrays)
    step.lr = lr
    step.set_rng_state(dropout_state)
    shuffle_rng.bit_generator.state = state.bit_generator.state
    return history, best_val, stale


def _checked_position(position, ranks, steps, fail):
    """A mid-epoch checkpoint's ``position`` metadata (None at an epoch's end),
    checked: ``batches`` (at most ``steps``), ``sums`` (per rank: loss sum,
    wrong, images) and ``seconds``."""
    if position is None:
        return None
    ok = (isinstance(position, dict) and isinstance(position.get("batches"), int)
          and 0 < position["batches"] <= steps and isinstance(position.get("sums"), list)
          and len(position["sums"]) == ranks
          and all(isinstance(s, list) and len(s) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                             for v in s) for s in position["sums"])
          and isinstance(position.get("seconds"), (int, float)) and position["seconds"] >= 0)
    if not ok:
        raise fail(f"metadata 'position' (where the epoch in progress stands) is malformed: {position!r}"[:300])
    return position


def _rank_position(position, parallel):
    """This rank's :class:`EpochPosition` from a checkpoint's ``position``
    (None: none); refused when another number of ranks wrote it (the batches
    would be others)."""
    if position is None:
        return None
    if len(position["sums"]) != parallel.size:
        raise CheckpointError(f"the checkpoint was written inside an epoch by {len(position['sums'])} rank(s): "
                              f"resume it with as many (this run has {parallel.size})")
    return EpochPosition(position["batches"], position["sums"][parallel.rank], position["seconds"])


def _resume(args, step, shuffle_rng, config, ckpt_path, metrics_path, log):
    """``--resume``: load the checkpoint into ``step`` and ``shuffle_rng``
    (see :func:`_restore`), rewrite ``metrics.jsonl`` to its epochs and keep
    the run's initial learning rate in ``config``. Returns ``(history,
    best_val_error, stale_epochs, metadata)``."""
    arrays, meta = load_checkpoint(ckpt_path)
    history, best_val, stale = _restore(step, shuffle_rng, arrays, meta, config, ckpt_path)
    _write_metrics(metrics_path, history)  # drop lines of epochs after the checkpoint
    inside = meta["position"]
    log(f"resumed from {ckpt_path} after epoch {len(history)}"
        + (f" and {inside['batches']} steps of epoch {len(history) + 1}" if inside else "") + f" (lr {step.lr:g})")
    initial = meta["config"].get("lr", step.lr)  # the run's --lr (older checkpoints: the current rate)
    config["lr"] = initial  # what the run started with, whatever this resume says
    if args.lr_given and args.lr != initial:
        log(f"--lr {args.lr:g} is not used: training continues with the checkpoint's learning rate "
            f"{step.lr:g} (the run's schedule); --overwrite starts again at {args.lr:g}")
    return history, best_val, stale, meta


def _resume_ranks(parallel, args, step, shuffle_rng, config, ckpt_path, metrics_path, log):
    """``--resume`` on every rank: rank 0 reads the checkpoint (:func:`_resume`),
    the others receive its state (the parameters and momentum buffers follow
    in the start-up broadcast), and each rank takes its own dropout generator:
    the checkpoint's if it was written by as many ranks, else a fresh one
    (see :mod:`models.distributed`). Returns ``(history, best_val_error, stale_epochs,
    position, steps)``: where the epoch in progress stands (an :class:`EpochPosition`, None
    at an epoch's end) and the training steps before that epoch."""
    state, failure = None, None
    if parallel.is_root:
        try:
            history, best_val, stale, meta = _resume(args, step, shuffle_rng, config, ckpt_path, metrics_path, log)
            state = dict(history=history, best_val=best_val, stale=stale, lr=step.lr, run_lr=config["lr"],
                         shuffle=shuffle_rng.bit_generator.state, epoch=len(history),
                         rngs=meta.get("dropout_rngs", [meta["dropout_rng"]]),
                         kernel_choices=kernel_choice.decisions(), position=meta["position"],
                         steps=meta.get("steps", 0))
        except (CheckpointError, OSError) as exc:
            if parallel.size == 1:
                raise
            failure = str(exc)
    failure, state = parallel.share((failure, state))
    if failure:
        raise CheckpointError(failure) if parallel.is_root else DistributedError(f"rank 0 cannot resume: {failure}")
    if not parallel.is_root:
        step.lr, config["lr"] = state["lr"], state["run_lr"]
        shuffle_rng.bit_generator.state = state["shuffle"]
        kernel_choice.adopt(state["kernel_choices"])  # rank 0's: every rank runs the same libraries
    position = _rank_position(state["position"], parallel)
    steps = state["steps"] - (position.batches if position else 0)
    if len(state["rngs"]) == parallel.size:
        if not parallel.is_root:  # rank 0's was restored with the rest
            step.set_rng_state(restore_generator(state["rngs"][parallel.rank]).bit_generator.state)
    else:
        fresh = np.random.default_rng(parallel.dropout_seed(args.seed, state["epoch"]))
        step.set_rng_state(fresh.bit_generator.state)
        log(f"the checkpoint was written by {len(state['rngs'])} rank(s), this run has {parallel.size}: "
            "dropout continues with fresh generators")
    return state["history"], state["best_val"], state["stale"], position, steps


def _prepare_out(args):
    """Create ``--out``; with ``--overwrite`` remove the previous run's files
    (only those a run writes, and its TensorBoard event files)."""
    os.makedirs(args.out, exist_ok=True)
    if not args.overwrite:
        return
    for name in RUN_FILES:
        _remove(os.path.join(args.out, name))
    board = os.path.join(args.out, TENSORBOARD_DIR)
    if os.path.isdir(board):
        for name in os.listdir(board):
            if name.startswith("events.out.tfevents."):
                _remove(os.path.join(board, name))


def main(argv=None, parallel=None):
    """Run the command; returns a dict with ``status`` ("done", "stopped" or
    "interrupted"), ``history`` (the per-epoch metrics) and ``out``.
    ``parallel``: this process's rank among those ``mpiexec`` started
    (:func:`models.distributed.detect` by default); only rank 0 writes."""
    args = parse_args(argv)
    parallel = parallel or detect(args.backend)
    root = parallel.is_root
    # flushed: under mpiexec (and any pipe) a line would otherwise wait for 8 KiB of others
    log = functools.partial(print, flush=True) if root else (lambda *a, **k: None)
    ckpt_path = os.path.join(args.out, "checkpoint.npz")
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    curves_path = os.path.join(args.out, "curves.png")

    if args.streamed:  # read batch by batch by background workers, this rank's share only
        from models.streamed import open_streamed

        dataset = open_streamed(args, rank=parallel.rank, world_size=parallel.size)
    else:
        dataset = load_dataset(args.data, args.image_size, channels=args.channels, seed=args.seed)
    validated = len(dataset.val_labels) > 0
    config = _config(args, dataset.num_classes)
    if is_onnx(args.model):  # from its weights, read by validate_args
        model = args.onnx_model
        try:
            check_classifier(model, num_classes=dataset.num_classes)
        except ValueError as exc:  # the file has fewer classes than the data
            raise UsageError(f"--model: {exc}") from None
    else:
        model = build_model(args.model, dataset.num_classes, args.image_size, args.channels, args.groups,
                            args.activation, args.dropout, args.seed, args.width, args.hidden)
    step = train_step(model, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      backend=args.backend, seed=parallel.dropout_seed(args.seed),
                      reduce_gradients=parallel.gradient_reducer())
    parallel.check_same_setup(model, config)  # before rank 0 writes anything
    data = dataset if args.streamed else parallel.shard(dataset)  # this rank's part of every batch
    if args.streamed and parallel.reducer is not None:
        parallel.reducer.scale = 1 / parallel.size  # every rank trains on batch-size images of each step
    predict = model.compile_eval(args.backend)
    shuffle_rng = np.random.default_rng([args.seed, 1])
    history, best_val, stale = [], None, 0
    position, steps = None, 0  # where a resumed epoch stands; training steps before it
    if root:
        _prepare_out(args)

    resumed = args.resume and parallel.share(os.path.exists(ckpt_path))
    if resumed:
        history, best_val, stale, position, steps = _resume_ranks(parallel, args, step, shuffle_rng, config,
                                                                  ckpt_path, metrics_path, log)
    elif args.resume:
        log(f"no checkpoint at {ckpt_path}: starting from scratch")
    parallel.broadcast_state(step)  # every rank starts from rank 0's parameters

    epoch_start_rng = None  # the shuffling generator's state when the epoch in progress began
    held = [len(history), position.batches if position else 0]  # what checkpoint.npz holds: epochs, steps

    def held_text():
        return f"epoch {held[0]}" + (f" and {held[1]} steps of epoch {held[0] + 1}" if held[1] else "")

    def save(epoch, every_rank=True, inside=None):
        """Rank 0 writes; ``every_rank`` gathers each rank's dropout generator first (a collective).
        ``inside`` (an :class:`EpochPosition`): a mid-epoch checkpoint, ``epoch`` epochs and this
        much of the next trained; it gathers every rank's sums (a collective)."""
        rngs = parallel.gather(step.get_rng_state()) if every_rank else [step.get_rng_state()]
        meta = dict(epoch=epoch, lr=step.lr, dropout_rng=rngs[0], kernel_choices=kernel_choice.decisions(),
                    shuffle_rng=generator_state(shuffle_rng), best_val_error=best_val, stale_epochs=stale,
                    history=history, config=config, steps=steps + (inside.batches if inside else 0))
        if inside is not None:  # the shuffling generator as the epoch began: its order is drawn again
            meta.update(shuffle_rng=epoch_start_rng,
                        position=dict(batches=inside.batches, sums=parallel.gather(list(inside[1])),
                                      seconds=inside[2]))
        if parallel.size > 1:
            meta.update(dropout_rngs=rngs, ranks=parallel.size)
        if not root:
            return
        try:
            save_checkpoint(ckpt_path, step.state_arrays(), meta)
            held[:] = [epoch, inside.batches if inside else 0]
        except OSError as exc:
            kept = f"it still holds {held_text()}" if os.path.exists(ckpt_path) else "nothing was saved"
            raise OutputError(f"cannot write {ckpt_path}: {exc.strerror or exc}; {kept}") from exc

    def write_metrics():
        if not root:
            return
        try:
            _write_metrics(metrics_path, history)
        except OSError as exc:
            raise OutputError(f"cannot write {metrics_path}: {exc.strerror or exc}; {ckpt_path} holds epoch "
                              f"{len(history)} (--resume rewrites the metrics from it)") from exc

    log(f"{model!r}; data {dataset.name}: {len(dataset.train_labels)} train / {len(dataset.val_labels)} val "
        f"images {dataset.input_shape}; backend {args.backend}")
    if not validated:
        log("no validation images: the validation figures are null and the learning rate is not dropped")
    if parallel.size > 1:
        log(f"data parallel over {parallel.size} ranks ({parallel.comm.name}): batch {args.batch_size} per rank, "
            f"{args.batch_size * parallel.size} per step; ranks "
            + ", ".join(f"{r}: pid {pid} on {host}" for r, (host, pid) in enumerate(parallel.ranks)))
    if not resumed:
        write_metrics()
        save(0)  # so that Ctrl-C in the first epoch still leaves a resumable checkpoint
    if root and not args.no_diagrams and not (resumed and os.path.exists(os.path.join(args.out, "backward.svg"))):
        render_diagrams(model, step, args.out, log)
    board = open_tensorboard(args.tensorboard_dir, model, resumed, log) if root else None

    from tqdm.auto import tqdm

    start_epoch = len(history) + 1
    status, pending_save, started = "done", False, time.perf_counter()
    stop = parallel.stop_on_ctrl_c()  # several ranks: Ctrl-C stops them all after the same step
    agreed = True  # the ranks stopped together (no rank left inside a collective)
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            if args.max_minutes is not None and history[start_epoch - 1:]:
                spent = time.perf_counter() - started
                per_epoch = spent / (epoch - start_epoch)
                if parallel.share(spent + per_epoch > 60 * args.max_minutes):  # rank 0's clock decides
                    log(f"stopping before epoch {epoch}: it would end past --max-minutes {args.max_minutes:g}")
                    status = "stopped"
                    break
            t0 = time.perf_counter() - (position[2] if position else 0.0)
            lr = step.lr
            epoch_start_rng = generator_state(shuffle_rng)
            more = {}  # only what is in use (tests stand in for train_epoch with the basic arguments)
            if args.streamed:
                more["epoch"] = epoch
            if position is not None:
                more["position"] = position
            if args.checkpoint_every:
                def every_n_steps(where, before=steps):
                    if (before + where.batches) % args.checkpoint_every == 0:
                        save(len(history), inside=where)

                more["on_step"] = every_n_steps
            total = data.epoch_images(args.batch_size) if args.streamed else len(data.train_labels)
            with tqdm(total=total, initial=min(total, position[1][2]) if position else 0, unit="img",
                      desc=f"epoch {epoch}/{args.epochs}", disable=args.quiet or not root, leave=False,
                      dynamic_ncols=True) as bar:
                train_loss, train_error, speed = train_epoch(step, data, args.batch_size, shuffle_rng, bar,
                                                             **_across(parallel, stop=stop), **more)
            steps += data.epoch_batches(args.batch_size) if args.streamed else _batch_count(data, args.batch_size)
            position = None
            val_loss, val_error, *top5 = evaluate(predict, data, args.batch_size, **_across(parallel))
            record = dict(epoch=epoch, train_loss=train_loss, train_error=train_error, val_loss=val_loss,
                          val_error=val_error, val_accuracy=None if val_error is None else 1.0 - val_error,
                          val_top5_error=top5[0] if top5 else None, lr=lr)
            if args.ten_crop:
                record.update(zip(TEN_CROP_KEYS, ten_crop_errors(
                    predict, data.val_images_uint8(args.batch_size), args.image_size, data.crop_mean,
                    **_across(parallel))))
            record.update(seconds=time.perf_counter() - t0, images_per_second=speed)
            parallel.check_in_sync(step)
            record = parallel.share(record)  # every rank takes rank 0's figures (the same up to timings)
            history.append(record)
            # The paper's schedule: lr / 10 when the validation error stops improving
            # with the current learning rate (so the best resets after each drop).
            dropped = False
            if val_error is None:
                pass
            elif best_val is None or val_error < best_val:
                best_val, stale = val_error, 0
            else:
                stale += 1
                if args.lr_drop_patience and stale >= args.lr_drop_patience:
                    step.lr, best_val, stale, dropped = lr / 10, None, 0, True
            pending_save = True  # from here until saved, the state is exactly the end of `epoch`
            save(epoch)
            pending_save = False
            write_metrics()
            log(f"epoch {epoch:3d}  loss {train_loss:.4f}  train error {100 * train_error:5.2f}%  "
                f"{describe(record)}  lr {lr:g}  {record['seconds']:.1f}s  {speed:.0f} img/s")
            if dropped and epoch < args.epochs:  # after the last epoch there is no next one to use it
                log(f"validation error has not improved for {args.lr_drop_patience} epochs: lr -> {step.lr:g}")
            if board is not None:
                board.add_epoch(record)
                board.add_parameters(epoch, {k: p.value for k, p in model.params.items()},
                                     {k: v.value for k, v in step.velocities.items()})
            try:
                if root:
                    plot_curves(history, curves_path, f"{model.name} on {dataset.name}")
            except Exception as exc:  # noqa: BLE001 - a plotting problem must not stop training
                warnings.warn(f"curves.png not written: {type(exc).__name__}: {exc}")
            if stop is not None:
                stop.check_now()  # a Ctrl-C during validation or saving stops every rank here
    except KeyboardInterrupt as exc:
        agreed = stop is None or isinstance(exc, AgreedInterrupt)
        if pending_save:
            save(len(history), every_rank=False)  # the other ranks may be stopped anywhere
            write_metrics()
        status = "interrupted"
        log(f"\ninterrupted: {ckpt_path} holds {held_text()}; continue with the "
            "same command plus --resume")
    finally:
        if stop is not None:
            stop.uninstall(finish=agreed)
        if board is not None:
            board.close()
    if root and not args.no_diagrams and status != "interrupted":
        write_explorer(model, dataset, args.out, args.batch_size, log)
    if root and status != "interrupted" and history:
        write_figures(model, predict, dataset, args.out, log)
    if root and args.export_onnx is not None and status != "interrupted":
        export_onnx(model, args.export_onnx, log)
    if history:
        last = history[-1]
        accuracy = "no validation" if last["val_accuracy"] is None else \
            f"val accuracy {100 * last['val_accuracy']:.2f}%"
        log(f"{status}: {len(history)} epochs, {accuracy}, "
            f"{time.perf_counter() - started:.0f}s this run; outputs in {args.out}")
    return dict(status=status, history=history, out=args.out, stopped_together=agreed)


def open_tensorboard(directory, model, resumed, log=print):
    """A :class:`models.tensorboard_log.TensorBoardLog` in ``directory`` (None:
    off) holding the forward graph (written once, not again on resume)."""
    if directory is None:
        return None
    from models.tensorboard_log import TensorBoardLog

    board = TensorBoardLog(directory)
    if not resumed:
        board.add_graph([model.loss])
    log(f"TensorBoard: tensorboard --logdir {directory}")
    return board


def _across(parallel, **more):
    """Keyword arguments that make train_epoch/evaluate sum over the ranks, with ``more``
    (none alone)."""
    return dict(parallel=parallel, **more) if parallel.size > 1 else {}


def cli(argv=None):
    """``python -m models.train``: a user's mistake is one ``error:`` line
    on stderr and exit status 2; Ctrl-C is 130. Under ``mpiexec`` the line
    names the rank, and a failing rank ends every rank (``MPI_Abort``)."""
    parallel = None
    try:
        parallel = detect(parse_args(argv).backend)
        result = main(argv, parallel)
    except (UsageError, DataError, CheckpointError, OutputError, FloatingPointError, gd.BackendError,
            DistributedError, OSError, MemoryError) as exc:
        if isinstance(exc, OSError):  # e.g. --out where it cannot be created
            text = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        elif isinstance(exc, MemoryError):  # gd.OutOfMemoryError names the node and the bytes
            text = f"out of memory: {exc}; a smaller --batch-size or --image-size needs less"
        else:
            text = str(exc)
        if parallel is None or parallel.size == 1:
            # arguments are checked before MPI starts, alike on every rank: rank 0 says it
            if parallel is not None or launched_rank() == 0:
                print(f"error: {text}", file=sys.stderr)
            return 2
        if parallel.rank:
            # a mistake in the arguments is found by every rank: rank 0 says it and
            # ends the job; the others speak only if it does not (an error of their own)
            time.sleep(2.0)
        _abort_world(parallel, f"error: rank {parallel.rank} of {parallel.size}: {text}")
    except KeyboardInterrupt:  # outside the epochs (loading data, compiling, the explorer page)
        text = "interrupted outside an epoch; the files already written stay as they were"
        if parallel is None or parallel.size == 1:
            if parallel is not None or launched_rank() == 0:
                print(text, file=sys.stderr)
            return 130
        _abort_world(parallel, f"{text} (rank {parallel.rank} of {parallel.size})", code=130)
    except Exception as exc:
        if parallel is None or parallel.size == 1:
            raise
        message = f"error: rank {parallel.rank} of {parallel.size} failed: {type(exc).__name__}: {exc}"
        print(message, file=sys.stderr, flush=True)  # first: the line that names the rank must get out
        traceback.print_exc()
        _abort_world(parallel, message)
    if result["status"] == "interrupted" and parallel.size > 1 and not result["stopped_together"]:
        # a second Ctrl-C stopped this rank wherever it was: another one blocked in a
        # collective would wait forever for it. Rank 0 has saved what it could.
        sys.stdout.flush()
        parallel.abort(130)
    return 130 if result["status"] == "interrupted" else 0


def _abort_world(parallel, message, code=2):
    """A rank failed: say which, then end every rank now (the others would wait for it forever)."""
    print(message, file=sys.stderr, flush=True)
    # mpiexec forwards a rank's output asynchronously and drops what it has not
    # forwarded when MPI_Abort kills the job: give it a moment to pass the line on
    time.sleep(0.5)
    parallel.abort(code)


if __name__ == "__main__":
    sys.exit(cli())
