"""What the training command reports beside its checkpoint: the start-up
lines, ``curves.png`` and the TensorBoard event files after every epoch,
``forward.svg``/``backward.svg`` at the start, and at the end
``explorer.html`` (with the run's own SGD settings in its update view), the
paper's Figures 3 and 4 (left), the ONNX export and the closing line
(:class:`Reports`). Rank 0 alone writes; a picture that fails only warns:
training matters more.
"""
import os
import time
import warnings

import numpy as np

import graphdiff as gd
from graphdiff.atomic import atomic_write
from graphdiff.backends import to_host_array
from models.evaluate import log_softmax
from models.run_folder import OutputError


class Reports:
    """The reports of one run on one rank (only rank 0's write)."""

    def __init__(self, args, model, step, dataset, predict, parallel, log=print):
        self.args, self.model, self.step, self.dataset, self.predict = args, model, step, dataset, predict
        self.parallel, self.log = parallel, log
        self.root = parallel.is_root
        self.curves_path = os.path.join(args.out, "curves.png")
        self.board = None

    def announce(self):
        """The model, the data and the ranks, in the log."""
        model, dataset, parallel, args = self.model, self.dataset, self.parallel, self.args
        self.log(f"{model!r}; data {dataset.name}: {len(dataset.train_labels)} train / {len(dataset.val_labels)} val "
                 f"images {dataset.input_shape}; backend {args.backend}")
        if not len(dataset.val_labels):
            self.log("no validation images: the validation figures are null and the learning rate is not dropped")
        if parallel.size > 1:
            self.log(f"data parallel over {parallel.size} ranks ({parallel.comm.name}): batch {args.batch_size} per "
                     f"rank, {args.batch_size * parallel.size} per step; ranks "
                     + ", ".join(f"{r}: pid {pid} on {host}" for r, (host, pid) in enumerate(parallel.ranks)))

    def open(self, resumed):
        """The graph diagrams (not again on resume where they are) and the
        TensorBoard log (its graph written once, not again on resume)."""
        args = self.args
        if self.root and not args.no_diagrams and not (resumed and os.path.exists(os.path.join(args.out,
                                                                                               "backward.svg"))):
            render_diagrams(self.model, self.step, args.out, self.log)
        self.board = open_tensorboard(args.tensorboard_dir, self.model, resumed, self.log) if self.root else None

    def after_epoch(self, epoch, history):
        """The epoch's figures and parameters to TensorBoard; ``curves.png`` redrawn."""
        if self.board is not None:
            self.board.add_epoch(history[-1])
            self.board.add_parameters(epoch, {k: p.value for k, p in self.model.params.items()},
                                      {k: v.value for k, v in self.step.velocities.items()})
        try:
            if self.root:
                plot_curves(history, self.curves_path, f"{self.model.name} on {self.dataset.name}")
        except Exception as exc:  # noqa: BLE001 - a plotting problem must not stop training
            warnings.warn(f"curves.png not written: {type(exc).__name__}: {exc}")

    def close(self):
        if self.board is not None:
            self.board.close()

    def finish(self, outcome, history):
        """After the epochs (unless interrupted): the explorer, the figures and
        the ONNX export; then the closing line."""
        args, status = self.args, outcome["status"]
        if self.root and not args.no_diagrams and status != "interrupted":
            write_explorer(self.model, self.dataset, args.out, args.batch_size, self.log, sgd=self.step)
        if self.root and status != "interrupted" and history:
            write_figures(self.model, self.predict, self.dataset, args.out, self.log)
        if self.root and args.export_onnx is not None and status != "interrupted":
            export_onnx(self.model, args.export_onnx, self.log)
        if history:
            last = history[-1]
            accuracy = "no validation" if last["val_accuracy"] is None else \
                f"val accuracy {100 * last['val_accuracy']:.2f}%"
            self.log(f"{status}: {len(history)} epochs, {accuracy}, "
                     f"{time.perf_counter() - outcome['started']:.0f}s this run; outputs in {args.out}")


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


def write_explorer(model, dataset, out_dir, batch_size, log=print, sgd=None):
    """``explorer.html``: both passes with the values of the first validation
    batch (dropout off; the first training images where there is no
    validation split). ``sgd``: the run's training step, so that the page's
    "take one step" view uses its learning rate (as the schedule left it),
    momentum, weight decay and momentum buffers (None: ``sgd_momentum``'s
    defaults, see :func:`visualize.explore`). Failure warns: training matters
    more."""
    path = os.path.join(out_dir, "explorer.html")
    try:
        import visualize

        if len(dataset.val_labels):
            (images, labels), which = next(iter(dataset.val_batches(batch_size))), "one validation batch"
        else:
            images, labels = dataset.train_images[:batch_size], dataset.train_labels[:batch_size]
            which = "the first training images (no validation split)"
        visualize.explore(model, feed={model.images: images, model.labels: labels}, path=path,
                          title=f"{model.name} on {dataset.name}, {which}", sgd=sgd)
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
