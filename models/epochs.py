"""The epochs of the training command: one pass over the training set
(:func:`train_epoch`), the validation figures (:func:`evaluate`), the paper's
learning-rate schedule (:func:`drop_on_plateau`) and the loop over the epochs
(:func:`run_epochs`), which saves a checkpoint and the metrics after each one
(:class:`models.run_folder.RunFolder`) and reports it (:class:`models.report.Reports`).
"""
import contextlib
import itertools
import math
import time

import numpy as np

from graphdiff.checkpoint import generator_state
from models.distributed import AgreedInterrupt
from models.evaluate import describe, log_softmax, ten_crop_errors, top_k_wrong

#: the keys ``--ten-crop`` adds to a metrics.jsonl line
TEN_CROP_KEYS = ("val_error_10crop", "val_top5_error_10crop")


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



def _across(parallel, **more):
    """Keyword arguments that make train_epoch/evaluate sum over the ranks, with ``more``
    (none alone)."""
    return dict(parallel=parallel, **more) if parallel.size > 1 else {}


def drop_on_plateau(state, step, val_error, patience):
    """The paper's schedule: the learning rate divided by 10 when the
    validation error has not improved for ``patience`` epochs (0: never)
    with the current rate (so the best resets after each drop). Updates
    ``state.best_val`` and ``state.stale``; returns whether it dropped."""
    if val_error is None:
        return False
    if state.best_val is None or val_error < state.best_val:
        state.best_val, state.stale = val_error, 0
        return False
    state.stale += 1
    if patience and state.stale >= patience:
        step.lr, state.best_val, state.stale = step.lr / 10, None, 0
        return True
    return False


def run_epochs(args, step, data, predict, run, reports, parallel, log):
    """Train from the run's next epoch through ``--epochs``: each epoch
    trained, validated, scheduled, saved (``run``) and reported (``reports``).
    Returns ``dict(status, stopped_together, started)``: "done", "stopped"
    (``--max-minutes``) or "interrupted" (Ctrl-C: the checkpoint holds the
    last completed epoch or step saved); whether the ranks stopped together
    (no rank left inside a collective); the loop's start (``perf_counter``)."""
    state = run.state
    start_epoch = len(state.history) + 1
    status, pending_save, started = "done", False, time.perf_counter()
    stop = parallel.stop_on_ctrl_c()  # several ranks: Ctrl-C stops them all after the same step
    agreed = True
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            if _past_budget(args, state, epoch, start_epoch, started, parallel):
                log(f"stopping before epoch {epoch}: it would end past --max-minutes {args.max_minutes:g}")
                status = "stopped"
                break
            lr = step.lr
            record = _train_and_validate(args, epoch, step, data, predict, run, parallel, stop)
            state.history.append(record)
            dropped = drop_on_plateau(state, step, record["val_error"], args.lr_drop_patience)
            pending_save = True  # from here until saved, the state is exactly the end of `epoch`
            run.save(epoch)
            pending_save = False
            run.write_metrics()
            log(f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  train error {100 * record['train_error']:5.2f}%  "
                f"{describe(record)}  lr {lr:g}  {record['seconds']:.1f}s  {record['images_per_second']:.0f} img/s")
            if dropped and epoch < args.epochs:  # after the last epoch there is no next one to use it
                log(f"validation error has not improved for {args.lr_drop_patience} epochs: lr -> {step.lr:g}")
            reports.after_epoch(epoch, state.history)
            if stop is not None:
                stop.check_now()  # a Ctrl-C during validation or saving stops every rank here
    except KeyboardInterrupt as exc:
        agreed = stop is None or isinstance(exc, AgreedInterrupt)
        if pending_save:
            run.save(len(state.history), every_rank=False)  # the other ranks may be stopped anywhere
            run.write_metrics()
        status = "interrupted"
        log(f"\ninterrupted: {run.checkpoint_path} holds {run.held_text()}; continue with the "
            "same command plus --resume")
    finally:
        if stop is not None:
            stop.uninstall(finish=agreed)
        reports.close()
    return dict(status=status, stopped_together=agreed, started=started)


def _past_budget(args, state, epoch, start_epoch, started, parallel):
    """``--max-minutes``: whether the next epoch, as long as this run's epochs
    so far on average, would end past the budget (rank 0's clock decides)."""
    if args.max_minutes is None or not state.history[start_epoch - 1:]:
        return False
    spent = time.perf_counter() - started
    per_epoch = spent / (epoch - start_epoch)
    return parallel.share(spent + per_epoch > 60 * args.max_minutes)


def _train_and_validate(args, epoch, step, data, predict, run, parallel, stop):
    """One epoch trained (from where a resumed one stands) and validated: its
    metrics.jsonl record, the same on every rank (rank 0's figures)."""
    from tqdm.auto import tqdm

    state = run.state
    position = state.position
    t0 = time.perf_counter() - (position[2] if position else 0.0)
    lr = step.lr
    state.epoch_start_rng = generator_state(state.shuffle_rng)
    more = {}  # only what is in use (tests stand in for train_epoch with the basic arguments)
    if args.streamed:
        more["epoch"] = epoch
    if position is not None:
        more["position"] = position
    if args.checkpoint_every:
        def every_n_steps(where, before=state.steps):
            if (before + where.batches) % args.checkpoint_every == 0:
                run.save(len(state.history), inside=where)

        more["on_step"] = every_n_steps
    total = data.epoch_images(args.batch_size) if args.streamed else len(data.train_labels)
    with tqdm(total=total, initial=min(total, position[1][2]) if position else 0, unit="img",
              desc=f"epoch {epoch}/{args.epochs}", disable=args.quiet or not parallel.is_root, leave=False,
              dynamic_ncols=True) as bar:
        train_loss, train_error, speed = train_epoch(step, data, args.batch_size, state.shuffle_rng, bar,
                                                     **_across(parallel, stop=stop), **more)
    state.steps += data.epoch_batches(args.batch_size) if args.streamed else _batch_count(data, args.batch_size)
    state.position = None
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
    return parallel.share(record)  # every rank takes rank 0's figures (the same up to timings)
