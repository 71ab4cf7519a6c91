"""The run folder of the training command (``--out``): ``checkpoint.npz`` and
``metrics.jsonl``, written by rank 0 after every epoch (and before the first;
with ``--checkpoint-every N`` also inside an epoch), and ``--resume``, which
checks a checkpoint whole before taking any of it and continues exactly where
it stands (:class:`RunFolder`).

The training state a checkpoint holds (:class:`TrainingState`): the
parameters and momentum buffers (the training step's), the epochs' metrics,
the learning-rate schedule's state, the shuffling and dropout generators,
where an epoch in progress stands and which library each convolution was
measured to run on (:mod:`models.kernel_choices`).
"""
import dataclasses
import json
import math
import numbers
import os

import numpy as np

from graphdiff.atomic import atomic_write
from graphdiff.checkpoint import CheckpointError, generator_state, load_checkpoint, restore_generator, save_checkpoint
from models import kernel_choices
from models.distributed import DistributedError
from models.epochs import EpochPosition

#: the keys of a metrics.jsonl line, in the order they are written
METRIC_KEYS = ("epoch", "train_loss", "train_error", "val_loss", "val_error", "val_accuracy", "val_top5_error", "lr",
               "seconds", "images_per_second")
#: the keys every epoch of a checkpoint's history has (older runs lack ``val_top5_error``)
HISTORY_KEYS = tuple(k for k in METRIC_KEYS if k != "val_top5_error")
#: files of a run in ``--out``; one of the first two there means the folder holds a run
RUN_FILES = ("checkpoint.npz", "metrics.jsonl", "curves.png", "forward.svg", "backward.svg", "explorer.html",
             "conv1_kernels.png", "predictions.png")
TENSORBOARD_DIR = "tensorboard"  # inside --out, where the event files go by default
#: configuration keys a checkpoint must agree on to be resumed
STRUCTURE_KEYS = ("model", "data", "image_size", "channels", "groups", "activation", "width", "hidden",
                  "dropout", "num_classes")


class OutputError(Exception):
    """Writing into the output folder failed (disk full, permissions); what
    was saved before is intact."""


@dataclasses.dataclass
class TrainingState:
    """What the epochs carry from one to the next beside the training step
    (its parameters, momentum buffers, learning rate and dropout generator)."""

    shuffle_rng: np.random.Generator  #: draws each epoch's order (and in-memory augmentation)
    history: list = dataclasses.field(default_factory=list)  #: the epochs' metrics.jsonl records
    best_val: float = None  #: the schedule's best validation error at the current learning rate
    stale: int = 0  #: epochs since it improved
    position: EpochPosition = None  #: where a resumed epoch stands (None: at an epoch's end)
    steps: int = 0  #: training steps before the epoch in progress
    epoch_start_rng: dict = None  #: the shuffling generator's state when the epoch in progress began


class RunFolder:
    """``--out`` of one run on one rank (only rank 0 writes): prepare it,
    start or resume the :class:`TrainingState`, save checkpoints and metrics."""

    def __init__(self, args, parallel, step, config, log=print):
        self.args, self.parallel, self.step, self.config, self.log = args, parallel, step, config, log
        self.checkpoint_path = os.path.join(args.out, "checkpoint.npz")
        self.metrics_path = os.path.join(args.out, "metrics.jsonl")
        self.state = TrainingState(np.random.default_rng([args.seed, 1]))
        self.resumed = False
        self.held = [0, 0]  # what checkpoint.npz holds: epochs, steps of the next

    def start(self):
        """Create the folder (``--overwrite``: clear the previous run's files),
        then with ``--resume`` take its checkpoint on every rank."""
        args, parallel, state = self.args, self.parallel, self.state
        if parallel.is_root:
            _prepare_out(args)
        self.resumed = args.resume and parallel.share(os.path.exists(self.checkpoint_path))
        if self.resumed:
            state.history, state.best_val, state.stale, state.position, state.steps = _resume_ranks(
                parallel, args, self.step, state.shuffle_rng, self.config, self.checkpoint_path, self.metrics_path,
                self.log)
        elif args.resume:
            self.log(f"no checkpoint at {self.checkpoint_path}: starting from scratch")
        self.held = [len(state.history), state.position.batches if state.position else 0]

    def save_start(self):
        """A new run's empty metrics and its checkpoint before the first epoch
        (so that Ctrl-C in the first epoch still leaves a resumable one)."""
        if not self.resumed:
            self.write_metrics()
            self.save(0)

    def held_text(self):
        epoch, steps = self.held
        return f"epoch {epoch}" + (f" and {steps} steps of epoch {epoch + 1}" if steps else "")

    def save(self, epoch, every_rank=True, inside=None):
        """Rank 0 writes; ``every_rank`` gathers each rank's dropout generator first (a collective).
        ``inside`` (an :class:`EpochPosition`): a mid-epoch checkpoint, ``epoch`` epochs and this
        much of the next trained; it gathers every rank's sums (a collective)."""
        step, parallel, state = self.step, self.parallel, self.state
        rngs = parallel.gather(step.get_rng_state()) if every_rank else [step.get_rng_state()]
        meta = dict(epoch=epoch, lr=step.lr, dropout_rng=rngs[0], kernel_choices=kernel_choices.measured(),
                    shuffle_rng=generator_state(state.shuffle_rng), best_val_error=state.best_val,
                    stale_epochs=state.stale, history=state.history, config=self.config,
                    steps=state.steps + (inside.batches if inside else 0))
        if inside is not None:  # the shuffling generator as the epoch began: its order is drawn again
            meta.update(shuffle_rng=state.epoch_start_rng,
                        position=dict(batches=inside.batches, sums=parallel.gather(list(inside[1])),
                                      seconds=inside[2]))
        if parallel.size > 1:
            meta.update(dropout_rngs=rngs, ranks=parallel.size)
        if not parallel.is_root:
            return
        try:
            save_checkpoint(self.checkpoint_path, step.state_arrays(), meta)
            self.held[:] = [epoch, inside.batches if inside else 0]
        except OSError as exc:
            kept = f"it still holds {self.held_text()}" if os.path.exists(self.checkpoint_path) else \
                "nothing was saved"
            raise OutputError(f"cannot write {self.checkpoint_path}: {exc.strerror or exc}; {kept}") from exc

    def write_metrics(self):
        """Rank 0 rewrites ``metrics.jsonl`` with the epochs so far."""
        if not self.parallel.is_root:
            return
        try:
            write_metrics(self.metrics_path, self.state.history)
        except OSError as exc:
            raise OutputError(f"cannot write {self.metrics_path}: {exc.strerror or exc}; {self.checkpoint_path} "
                              f"holds epoch {len(self.state.history)} (--resume rewrites the metrics from it)") from exc


def run_config(args, num_classes):
    """The run's settings as its checkpoint keeps them (:data:`STRUCTURE_KEYS`
    must agree for ``--resume``)."""
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


def write_metrics(path, history):
    """Rewrite ``metrics.jsonl`` atomically (strict JSON: no NaN)."""
    with atomic_write(path, "w") as f:
        for h in history:
            f.write(json.dumps(_ordered(h), allow_nan=False) + "\n")


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


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
        kernel_choices.adopt(meta.get("kernel_choices", []))
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
    write_metrics(metrics_path, history)  # drop lines of epochs after the checkpoint
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
                         kernel_choices=kernel_choices.measured(), position=meta["position"],
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
        kernel_choices.adopt(state["kernel_choices"])  # rank 0's: every rank runs the same libraries
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
