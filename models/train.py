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
    end; skipped with ``--no-diagrams``, and with a warning if it fails);
    its "take one step" view takes the run's own SGD step (learning rate as
    the schedule left it, momentum, weight decay, momentum buffers).
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

The command's parts: its line (:mod:`models.train_args`), the run folder,
checkpoints and ``--resume`` (:mod:`models.run_folder`), the epochs
(:mod:`models.epochs`) and what it reports (:mod:`models.report`).
"""
import functools
import sys
import time
import traceback

import graphdiff as gd
from graphdiff.checkpoint import CheckpointError
from graphdiff.distributed import launched_rank
from models.alexnet import train_step
from models.data import DataError, load_dataset
from models.distributed import DistributedError, detect
from models.epochs import run_epochs
from models.imported import check_classifier
from models.report import Reports
from models.run_folder import OutputError, RunFolder, run_config
from models.train_args import UsageError, build_model, is_onnx, parse_args

# The names other modules, tests and the notebooks import from here (re-exported):
from models.epochs import TEN_CROP_KEYS, EpochPosition, evaluate, train_epoch  # noqa: F401
from models.report import (export_onnx, open_tensorboard, plot_curves, render_diagrams,  # noqa: F401
                           write_explorer, write_figures)
from models.run_folder import HISTORY_KEYS, METRIC_KEYS, RUN_FILES, STRUCTURE_KEYS, TENSORBOARD_DIR  # noqa: F401
from models.train_args import (DEFAULT_IMAGE_SIZE, DEFAULT_LR, DEFAULT_RESIZE, DEFAULT_WORKERS,  # noqa: F401
                               INTEROP_INSTALL, MEAN_KINDS, MODELS, _installed, is_streamed, min_image_size,
                               tensorboard_dir, validate_args)


def main(argv=None, parallel=None):
    """Run the command; returns a dict with ``status`` ("done", "stopped" or
    "interrupted"), ``history`` (the per-epoch metrics) and ``out``.
    ``parallel``: this process's rank among those ``mpiexec`` started
    (:func:`models.distributed.detect` by default); only rank 0 writes."""
    args = parse_args(argv)
    parallel = parallel or detect(args.backend)
    log = rank_log(parallel)
    dataset = open_dataset(args, parallel)
    model = make_model(args, dataset.num_classes)
    step = train_step(model, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      backend=args.backend, seed=parallel.dropout_seed(args.seed),
                      reduce_gradients=parallel.gradient_reducer())
    config = run_config(args, dataset.num_classes)
    parallel.check_same_setup(model, config)  # before rank 0 writes anything
    data = rank_data(args, dataset, parallel)
    predict = model.compile_eval(args.backend)  # images -> logits, dropout off

    run = RunFolder(args, parallel, step, config, log)
    run.start()  # the folder prepared; --resume: the checkpoint taken on every rank
    parallel.broadcast_state(step)  # every rank starts from rank 0's parameters
    reports = Reports(args, model, step, dataset, predict, parallel, log)
    reports.announce()
    run.save_start()
    reports.open(run.resumed)  # the graph diagrams, TensorBoard

    outcome = run_epochs(args, step, data, predict, run, reports, parallel, log)
    reports.finish(outcome, run.state.history)  # the explorer, the figures, the ONNX export
    return dict(status=outcome["status"], history=run.state.history, out=args.out,
                stopped_together=outcome["stopped_together"])


def rank_log(parallel):
    """``print`` on rank 0 (flushed: under mpiexec, and any pipe, a line would
    otherwise wait for 8 KiB of others); nothing on the other ranks."""
    return functools.partial(print, flush=True) if parallel.is_root else (lambda *a, **k: None)


def open_dataset(args, parallel):
    """``--data``: held in memory, or streamed batch by batch by background
    workers (this rank's share only)."""
    if args.streamed:
        from models.streamed import open_streamed

        return open_streamed(args, rank=parallel.rank, world_size=parallel.size)
    return load_dataset(args.data, args.image_size, channels=args.channels, seed=args.seed)


def make_model(args, num_classes):
    """``--model``: one of :data:`MODELS` built, or the ONNX classifier
    :func:`validate_args` read, checked against the data's classes."""
    if not is_onnx(args.model):
        return build_model(args.model, num_classes, args.image_size, args.channels, args.groups,
                           args.activation, args.dropout, args.seed, args.width, args.hidden)
    try:
        check_classifier(args.onnx_model, num_classes=num_classes)
    except ValueError as exc:  # the file has fewer classes than the data
        raise UsageError(f"--model: {exc}") from None
    return args.onnx_model


def rank_data(args, dataset, parallel):
    """This rank's part of every batch: in-memory data sharded; streamed data
    is this rank's already, every rank training on --batch-size images of each
    step (the summed gradients scaled by 1 / ranks)."""
    if args.streamed and parallel.reducer is not None:
        parallel.reducer.scale = 1 / parallel.size
    return dataset if args.streamed else parallel.shard(dataset)


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
