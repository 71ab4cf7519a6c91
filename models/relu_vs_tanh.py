"""ReLU vs tanh: the AlexNet paper's Figure 1.

    python -m models.relu_vs_tanh --data digits --out runs/relu_vs_tanh
    python -m models.relu_vs_tanh --data cifar10:DIR --out runs/fig1 --epochs 35

"A four-layer convolutional neural network with ReLUs (solid line) reaches a
25% training error rate on CIFAR-10 six times faster than an equivalent
network with tanh neurons (dashed line)." This trains :func:`models.cnn.cnn4`
twice, with ReLU and with tanh, and nothing else different: the same initial
weights (same seed and scale), the same mini-batch order, the same SGD
settings (momentum, no weight decay, no dropout: "no regularization of any
kind"). As in the paper, "the learning rates for each network were chosen
independently to make training as fast as possible": ``--lr`` takes a list of
rates, each network is trained with each, and each is scored with its fastest
one (every run is kept in the JSON, so equal-rate comparisons can be read off
too). A single ``--lr`` value gives both networks the same rate.

The training error is measured with the weights as they are at
``--points-per-epoch`` points of each epoch (and before the first step), over
the whole training set or, where it is larger, a fixed sample of
``--error-sample`` training images drawn once (the same for both networks),
with evaluation-mode forward passes. So a point is the network's error on the
training data at that moment, not an average over batches trained with
changing weights, and never a small last batch's. The result is the fraction
of an epoch at which each network's training error first falls to
``--threshold`` (25% on CIFAR-10 as in the paper; 5% by default on digits,
which is much easier), and their ratio tanh / ReLU.

Writes ``OUT/relu_vs_tanh.json`` and ``OUT/relu_vs_tanh.png``.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import graphdiff as gd
from graphdiff.atomic import atomic_write
from models.alexnet import train_step
from models.cli import ArgumentParser
from models.cnn import cnn4
from models.data import DataError, center_crop, load_dataset

DEFAULTS = {  # data kind -> (threshold, epochs, image size, channels)
    "digits": (0.05, 6, 16, 1),
    "cifar10": (0.25, 35, 32, 3),
}


def train_curve(activation, dataset, epochs, batch_size, lr, momentum, seed, width, backend="numpy",
                points_per_epoch=4, init_std=None, log=print, error_sample=10_000):
    """Train cnn4 with ``activation``; returns a dict with ``curve`` (a list of
    ``[epoch position, training error there]``, from position 0), ``train_error``
    (per epoch, measured after it), ``train_loss`` (per epoch, the mean over its
    batches) and ``seconds`` (training only, not the measurements)."""
    c, h, _ = dataset.input_shape
    model = cnn4(dataset.num_classes, h, activation=activation, width=width, seed=seed, channels=c,
                 init_std=init_std)
    step = train_step(model, lr=lr, momentum=momentum, weight_decay=0.0, backend=backend, seed=seed)
    images, labels = error_sample_of(dataset, error_sample, seed)
    error = _training_error(model.compile_eval(backend), images, labels)
    rng = np.random.default_rng([seed, 1])  # the same batch order for both activations
    n = len(dataset.train_labels)
    batches_per_epoch = -(-n // batch_size)
    every = max(1, batches_per_epoch // points_per_epoch)  # measure after this many batches, and at the epoch's end
    curve, errors, losses = [[0.0, error()]], [], []
    seconds = 0.0
    for epoch in range(epochs):
        seen, total_loss = 0, 0.0
        start = time.perf_counter()
        for b, (x, y) in enumerate(dataset.train_batches(batch_size, rng)):
            loss = step(x, y)
            if not np.isfinite(loss):
                raise FloatingPointError(f"{activation}: the loss became {loss}; lower the learning rate")
            seen, total_loss = seen + len(y), total_loss + loss * len(y)
            if (b + 1) % every == 0 or b + 1 == batches_per_epoch:
                seconds += time.perf_counter() - start
                curve.append([epoch + seen / n, error()])
                start = time.perf_counter()
        seconds += time.perf_counter() - start
        errors.append(curve[-1][1])
        losses.append(total_loss / seen)
        log(f"{activation:4s} epoch {epoch + 1:3d}  loss {losses[-1]:.4f}  training error {100 * errors[-1]:6.2f}%")
    return dict(curve=curve, train_error=errors, train_loss=losses, seconds=seconds)


def error_sample_of(dataset, size, seed):
    """The training images the error is measured on: all of them, or a fixed
    sample of ``size`` (drawn once from ``seed``); centre crops where the data
    set crops at random for training (folder data)."""
    n = len(dataset.train_labels)
    pick = np.sort(np.random.default_rng([seed, 2]).choice(n, size, replace=False)) if n > size else slice(None)
    images = dataset.train_images[pick]
    if dataset.augment is not None:
        images = center_crop(images, dataset.input_shape[-1])
    return images, dataset.train_labels[pick]


def _training_error(evaluate, images, labels, batch_size=500):
    """A function measuring the fraction of ``images`` that ``evaluate``
    (an images -> logits program) gets wrong, with the current weights."""
    def error():
        wrong = 0
        for lo in range(0, len(labels), batch_size):
            logits = evaluate(np.ascontiguousarray(images[lo:lo + batch_size]))
            wrong += int(np.count_nonzero(np.argmax(logits, axis=1) != labels[lo:lo + batch_size]))
        return wrong / len(labels)
    return error


def epochs_to_reach(curve, threshold):
    """The epoch position of the first point at or below ``threshold`` (None if never)."""
    for position, error in curve:
        if error <= threshold:
            return position
    return None


def plot(runs, threshold, path, title, sweep=None):
    """Training error per epoch, ReLU solid and tanh dashed as in the paper's
    Figure 1; with a sweep, the other learning rates' runs in light grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    styles = {"relu": "-", "tanh": "--"}
    for activation, others in (sweep or {}).items():
        for run in others:
            if run is not runs[activation]:
                xs, ys = zip(*run["curve"])
                ax.plot(xs, ys, styles[activation], color="0.75", lw=0.8)
    for activation, style in styles.items():
        run = runs[activation]
        xs, ys = zip(*run["curve"])
        label = f"{'ReLU' if activation == 'relu' else 'tanh'} (lr {run['lr']:g})"
        ax.plot(xs, ys, style, color="black", label=label)
        if run["epochs_to_threshold"] is not None:
            ax.plot([run["epochs_to_threshold"]], [threshold], "o", color="black",
                    mfc="black" if activation == "relu" else "white")
    ax.axhline(threshold, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Training error rate")
    ax.set_ylim(0, min(1.0, max(max(e for _, e in r["curve"]) for r in runs.values()) * 1.05))
    ax.set_xlim(left=0)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.11, top=0.86)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _rates(text):
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not rates or any(not r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"learning rates must be positive, got {text!r}")
    return rates


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m models.relu_vs_tanh", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits", help="digits, cifar10:DIR (or synthetic, folder:DIR)")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=None, help="target training error (25%% on CIFAR-10)")
    p.add_argument("--epochs", type=_positive, default=None)
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--lr", type=_rates, default=None,
                   help="learning rate(s), comma-separated: each network uses its fastest (default 0.01,0.03,0.1)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--width", type=_positive, default=32)
    p.add_argument("--image-size", type=_positive, default=None)
    p.add_argument("--channels", type=_positive, default=None)
    p.add_argument("--points-per-epoch", type=_positive, default=4,
                   help="training error measurements per epoch (over the training set or --error-sample)")
    p.add_argument("--error-sample", type=_positive, default=10_000,
                   help="measure the training error on a fixed sample of this many training images "
                        "(all of them when there are fewer)")
    p.add_argument("--init-std", type=float, default=None,
                   help="one weight std for every layer (e.g. 0.01) instead of LeCun's sqrt(1/fan_in)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    args = p.parse_args(argv)
    threshold, epochs, size, channels = DEFAULTS.get(args.data.partition(":")[0], (0.25, 10, 32, 3))
    for name, default in (("threshold", threshold), ("epochs", epochs), ("image_size", size),
                          ("channels", channels)):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.lr is None:
        args.lr = [0.01, 0.03, 0.1]
    if not 0 < args.threshold < 1:
        p.error("--threshold must be between 0 and 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    dataset = load_dataset(args.data, args.image_size, channels=args.channels, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)  # after the data: a wrong spec leaves nothing behind
    print(f"cnn4 on {dataset.name}: {len(dataset.train_labels)} training images {dataset.input_shape}, "
          f"threshold {100 * args.threshold:g}% training error, {args.epochs} epochs, lr {args.lr}")
    sweep = {"relu": [], "tanh": []}
    for lr in args.lr:
        for activation in ("relu", "tanh"):
            run = train_curve(activation, dataset, args.epochs, args.batch_size, lr, args.momentum, args.seed,
                              args.width, args.backend, args.points_per_epoch, args.init_std,
                              error_sample=args.error_sample)
            run["lr"] = lr
            run["epochs_to_threshold"] = epochs_to_reach(run["curve"], args.threshold)
            sweep[activation].append(run)
    # each network with its fastest learning rate (then the lowest final training error)
    runs = {a: min(rs, key=_speed) for a, rs in sweep.items()}
    relu, tanh = runs["relu"]["epochs_to_threshold"], runs["tanh"]["epochs_to_threshold"]
    ratio = tanh / relu if relu and tanh else None
    result = dict(data=args.data, threshold=args.threshold, epochs=args.epochs, batch_size=args.batch_size,
                  momentum=args.momentum, width=args.width, image_size=args.image_size, channels=args.channels,
                  seed=args.seed, init_std=args.init_std,
                  error_sample=min(args.error_sample, len(dataset.train_labels)),
                  learning_rates=args.lr, runs=runs, ratio_tanh_over_relu=ratio,
                  sweep=sweep if len(args.lr) > 1 else None)
    with atomic_write(os.path.join(args.out, "relu_vs_tanh.json"), "w") as f:
        json.dump(result, f, indent=1)

    def said(run):
        x = run["epochs_to_threshold"]
        when = f"{x:.2f} epochs" if x is not None else f"not within {args.epochs} epochs"
        return f"{when} (lr {run['lr']:g})"

    summary = (f"{100 * args.threshold:g}% training error: ReLU after {said(runs['relu'])}, "
               f"tanh after {said(runs['tanh'])}" + (f": ratio tanh/ReLU {ratio:.2f}" if ratio else ""))
    print(summary)
    for lr, r, t in zip(args.lr, sweep["relu"], sweep["tanh"]):
        print(f"  lr {lr:g}: ReLU {_fmt(r['epochs_to_threshold'])}, tanh {_fmt(t['epochs_to_threshold'])} epochs")
    title = (f"cnn4 on {dataset.name}, {100 * args.threshold:g}% training error reached after\n"
             f"ReLU {said(runs['relu'])}, tanh {said(runs['tanh'])}" + (f": tanh/ReLU {ratio:.2f}" if ratio else ""))
    plot(runs, args.threshold, os.path.join(args.out, "relu_vs_tanh.png"), title,
         sweep if len(args.lr) > 1 else None)
    print(f"wrote {args.out}/relu_vs_tanh.json and relu_vs_tanh.png")
    return result


def _speed(run):
    reached = run["epochs_to_threshold"]
    return (reached is None, reached or 0.0, run["train_error"][-1])


def _fmt(x):
    return "-" if x is None else f"{x:.2f}"


def cli(argv=None):
    """``python -m models.relu_vs_tanh``: a mistake (data, an output folder that
    cannot be made, a diverging rate) is one ``error:`` line and status 2."""
    try:
        main(argv)
    except (DataError, FloatingPointError, gd.BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
