"""The training command.

    python -m models.train --model alexnet-small --data digits --image-size 24 \\
        --batch-size 16 --lr 0.01 --lr-drop-patience 2 --epochs 15 --seed 0 \\
        --out runs/alexnet-small-digits

trains one of the models with SGD (momentum, weight decay: the AlexNet paper's
rule, :mod:`graphdiff.optim`) and writes into ``--out``:

``metrics.jsonl``
    one JSON object per epoch: ``epoch``, ``train_loss``, ``train_error``,
    ``val_loss``, ``val_error``, ``val_accuracy``, ``lr``, ``seconds``,
    ``images_per_second``. ``train_loss``/``train_error`` are averaged over
    the epoch's mini-batches as they are trained (dropout on, as
    cuda-convnet reported them); the validation figures use the weights at
    the end of the epoch with dropout off.
``curves.png``
    loss and error per epoch.
``forward.svg``, ``backward.svg``
    the model's forward graph and its backward (gradient) graph, collapsed
    by layer scope (skipped with a warning if rendering is unavailable).
``checkpoint.npz``
    written after every epoch (and before the first): parameters, momentum
    buffers, epoch, learning rate, the dropout and shuffle generators' states
    and the learning-rate schedule's state. ``--resume`` continues from it
    exactly: the per-epoch losses of an interrupted and resumed run equal
    those of an uninterrupted one. Ctrl-C leaves the checkpoint of the last
    completed epoch and exits with a message (status 130).

The learning rate is divided by 10 when the validation error has not improved
for ``--lr-drop-patience`` epochs, as in the paper (0 turns this off).
"""
import argparse
import json
import math
import os
import sys
import time
import warnings

import numpy as np

from graphdiff.checkpoint import CheckpointError, generator_state, load_checkpoint, restore_generator, save_checkpoint
from models.alexnet import alexnet, alexnet_small, train_step
from models.cnn import cnn4
from models.data import DataError, load_dataset

MODELS = ("alexnet", "alexnet-small", "cnn4")
DEFAULT_IMAGE_SIZE = {"alexnet": 227, "alexnet-small": 32, "cnn4": 32}

#: configuration keys a checkpoint must agree on to be resumed
STRUCTURE_KEYS = ("model", "data", "image_size", "channels", "groups", "activation", "width", "hidden",
                  "dropout", "num_classes")


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


def train_epoch(step, dataset, batch_size, rng, progress=None):
    """One pass over the shuffled training set. Returns ``(mean loss, error
    rate, images per second)``, averaged over the mini-batches as trained.
    ``progress`` is a tqdm bar (or None)."""
    total_loss, wrong, seen = 0.0, 0, 0
    start = time.perf_counter()
    for images, labels in dataset.train_batches(batch_size, rng):
        loss = step(images, labels)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} after {seen} images: lower the learning rate")
        n = len(labels)
        total_loss += loss * n
        wrong += int(np.count_nonzero(np.argmax(step.last_logits, axis=1) != labels))
        seen += n
        if progress is not None:
            progress.update(n)
            progress.set_postfix(loss=f"{loss:.4f}", refresh=False)  # the bar itself shows img/s
    seconds = time.perf_counter() - start
    return total_loss / seen, wrong / seen, seen / seconds


def evaluate(predict, dataset, batch_size):
    """``(mean loss, error rate)`` of the evaluation program ``predict``
    (images -> logits, dropout off) on the validation split."""
    total_loss, wrong, seen = 0.0, 0, 0
    for images, labels in dataset.val_batches(batch_size):
        logits = np.asarray(predict(images), dtype=np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        total_loss += -logp[np.arange(len(labels)), labels].sum()
        wrong += int(np.count_nonzero(np.argmax(logits, axis=1) != labels))
        seen += len(labels)
    if seen == 0:
        return float("nan"), float("nan")
    return total_loss / seen, wrong / seen


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


def plot_curves(history, path, title=""):
    """Loss and error curves per epoch, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s--", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_err.plot(epochs, [100 * h["train_error"] for h in history], "o-", label="train")
    ax_err.plot(epochs, [100 * h["val_error"] for h in history], "s--", label="validation")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error rate (%)")
    ax_err.legend()
    for h0, h1 in zip(history, history[1:]):
        if h1["lr"] < h0["lr"]:  # mark learning-rate drops
            for ax in (ax_loss, ax_err):
                ax.axvline(h1["epoch"] - 0.5, color="grey", lw=0.8, ls=":")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.9, wspace=0.25)  # tight_layout costs ~1 s
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the command
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="alexnet-small")
    p.add_argument("--data", default="digits", help="digits, synthetic[:K], cifar10:DIR or folder:DIR")
    p.add_argument("--epochs", type=int, default=10, help="train until this many epochs in total")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-drop-patience", type=int, default=3,
                   help="divide the lr by 10 after this many epochs without a better validation error (0: never)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--seed", type=int, default=0, help="seeds the init, the split, the shuffling and dropout")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--image-size", type=int, default=None, help="input side (default 227 for alexnet, else 32)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu")
    p.add_argument("--groups", type=int, default=2, help="convolution groups (the paper's 2 towers; 1: one)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--width", type=int, default=32, help="alexnet-small/cnn4 base channel count")
    p.add_argument("--hidden", type=int, default=256, help="alexnet-small dense layer size")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (with a checkpoint) before an epoch that would end past this budget")
    p.add_argument("--no-diagrams", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.image_size is None:
        args.image_size = DEFAULT_IMAGE_SIZE[args.model]
    for name in ("epochs", "batch_size", "image_size", "channels", "groups", "width", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not args.lr > 0:
        p.error("--lr must be positive")
    return args


def _config(args, num_classes):
    keys = ("model", "data", "image_size", "channels", "groups", "activation", "width", "hidden", "dropout",
            "batch_size", "momentum", "weight_decay", "seed", "lr_drop_patience", "backend")
    config = {k: getattr(args, k) for k in keys}
    config["num_classes"] = num_classes
    return config


def _write_metrics(path, history):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    os.replace(tmp, path)


def main(argv=None):
    """Run the command; returns a dict with ``status`` ("done", "stopped" or
    "interrupted"), ``history`` (the per-epoch metrics) and ``out``."""
    args = parse_args(argv)
    log = print
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.npz")
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    curves_path = os.path.join(args.out, "curves.png")

    dataset = load_dataset(args.data, args.image_size, channels=args.channels, seed=args.seed)
    config = _config(args, dataset.num_classes)
    model = build_model(args.model, dataset.num_classes, args.image_size, args.channels, args.groups,
                        args.activation, args.dropout, args.seed, args.width, args.hidden)
    step = train_step(model, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      backend=args.backend, seed=args.seed)
    predict = model.compile_eval(args.backend)
    shuffle_rng = np.random.default_rng([args.seed, 1])
    history, best_val, stale = [], None, 0

    resumed = False
    if args.resume and os.path.exists(ckpt_path):
        arrays, meta = load_checkpoint(ckpt_path)
        saved = meta.get("config", {})
        clash = [f"{k}: {saved.get(k)!r} in the checkpoint, {config[k]!r} now"
                 for k in STRUCTURE_KEYS if saved.get(k) != config[k]]
        if clash:
            raise CheckpointError(f"checkpoint {ckpt_path} was written for another setup; " + "; ".join(clash))
        try:
            step.load_state_arrays(arrays)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {ckpt_path}: {exc}") from exc
        step.lr = meta["lr"]
        step.set_rng_state(meta["dropout_rng"])
        restore_generator(meta["shuffle_rng"], shuffle_rng)
        history, best_val, stale = meta["history"], meta["best_val_error"], meta["stale_epochs"]
        _write_metrics(metrics_path, history)  # drop lines of epochs after the checkpoint
        resumed = True
        log(f"resumed from {ckpt_path} after epoch {meta['epoch']} (lr {step.lr:g})")
    elif args.resume:
        log(f"no checkpoint at {ckpt_path}: starting from scratch")

    def save(epoch):
        meta = dict(epoch=epoch, lr=step.lr, dropout_rng=step.get_rng_state(),
                    shuffle_rng=generator_state(shuffle_rng), best_val_error=best_val, stale_epochs=stale,
                    history=history, config=config)
        save_checkpoint(ckpt_path, step.state_arrays(), meta)

    log(f"{model!r}; data {dataset.name}: {len(dataset.train_labels)} train / {len(dataset.val_labels)} val "
        f"images {dataset.input_shape}; backend {args.backend}")
    if not resumed:
        _write_metrics(metrics_path, [])
        save(0)  # so that Ctrl-C in the first epoch still leaves a resumable checkpoint
    if not args.no_diagrams and not (resumed and os.path.exists(os.path.join(args.out, "backward.svg"))):
        render_diagrams(model, step, args.out, log)

    from tqdm.auto import tqdm

    start_epoch = len(history) + 1
    status, pending_save, started = "done", False, time.perf_counter()
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            if args.max_minutes is not None and history[start_epoch - 1:]:
                spent = time.perf_counter() - started
                per_epoch = spent / (epoch - start_epoch)
                if spent + per_epoch > 60 * args.max_minutes:
                    log(f"stopping before epoch {epoch}: it would end past --max-minutes {args.max_minutes:g}")
                    status = "stopped"
                    break
            t0 = time.perf_counter()
            lr = step.lr
            with tqdm(total=len(dataset.train_labels), unit="img", desc=f"epoch {epoch}/{args.epochs}",
                      disable=args.quiet, leave=False, dynamic_ncols=True) as bar:
                train_loss, train_error, speed = train_epoch(step, dataset, args.batch_size, shuffle_rng, bar)
            val_loss, val_error = evaluate(predict, dataset, args.batch_size)
            record = dict(epoch=epoch, train_loss=train_loss, train_error=train_error, val_loss=val_loss,
                          val_error=val_error, val_accuracy=1.0 - val_error, lr=lr,
                          seconds=time.perf_counter() - t0, images_per_second=speed)
            history.append(record)
            # The paper's schedule: lr / 10 when the validation error stops improving
            # with the current learning rate (so the best resets after each drop).
            dropped = False
            if best_val is None or val_error < best_val:
                best_val, stale = val_error, 0
            else:
                stale += 1
                if args.lr_drop_patience and stale >= args.lr_drop_patience:
                    step.lr, best_val, stale, dropped = lr / 10, None, 0, True
            pending_save = True  # from here until saved, the state is exactly the end of `epoch`
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            save(epoch)
            pending_save = False
            log(f"epoch {epoch:3d}  loss {train_loss:.4f}  train error {100 * train_error:5.2f}%  "
                f"val error {100 * val_error:5.2f}%  val acc {100 * (1 - val_error):5.2f}%  lr {lr:g}  "
                f"{record['seconds']:.1f}s  {speed:.0f} img/s")
            if dropped:
                log(f"validation error has not improved for {args.lr_drop_patience} epochs: lr -> {step.lr:g}")
            try:
                plot_curves(history, curves_path, f"{model.name} on {dataset.name}")
            except Exception as exc:  # noqa: BLE001 - a plotting problem must not stop training
                warnings.warn(f"curves.png not written: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        if pending_save:
            save(len(history))
        status = "interrupted"
        log(f"\ninterrupted: {ckpt_path} holds epoch {len(history)}; continue with the same command plus --resume")
    if history:
        last = history[-1]
        log(f"{status}: {len(history)} epochs, val accuracy {100 * last['val_accuracy']:.2f}%, "
            f"{time.perf_counter() - started:.0f}s this run; outputs in {args.out}")
    return dict(status=status, history=history, out=args.out)


def cli(argv=None):
    try:
        result = main(argv)
    except (DataError, CheckpointError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 130 if result["status"] == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(cli())
