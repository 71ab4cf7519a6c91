"""Programs that tests/test_distributed.py runs under ``mpiexec -n 2``.

    mpiexec -n 2 python tests/mpi_worker.py MODE [ARGS...]

Rank 0 prints one JSON line per result (``RESULT {...}``); the test reads them.
"""
import json
import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import graphdiff as gd  # noqa: E402
from graphdiff.distributed import world  # noqa: E402
from models.alexnet import alexnet_small, train_step  # noqa: E402
from models.cnn import cnn4  # noqa: E402
from models.distributed import DataParallel  # noqa: E402


def report(comm, **result):
    if comm.rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def rel(a, b):
    """Largest difference relative to the largest magnitude (of the reference ``b``)."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-300))


def data_parallel_equals_one_process(comm):
    """3 SGD steps on 2 ranks at batch 8 each against 1 process at batch 16 (computed here too)."""
    parallel = DataParallel(comm, bucket_bytes=2048)  # several buckets, even for these small models
    rng = np.random.default_rng(7)
    for name, build in (("cnn4", cnn4), ("alexnet-small", alexnet_small)):
        for dtype in ("float64", "float32"):
            kwargs = dict(num_classes=4, image_size=16, width=4, seed=2, dtype=dtype)
            if name == "alexnet-small":
                kwargs.update(hidden=16, dropout=0.0)
            images = rng.standard_normal((48, 3, 16, 16)).astype(dtype)
            labels = rng.integers(0, 4, 48)
            model = build(**kwargs)
            step = train_step(model, lr=0.05, seed=parallel.dropout_seed(0),
                              reduce_gradients=parallel.gradient_reducer())
            parallel.broadcast_state(step)
            alone = build(**kwargs)
            reference = train_step(alone, lr=0.05)
            losses, expected = [], []
            for k in range(3):
                batch = slice(16 * k, 16 * (k + 1))
                mine = slice(16 * k + 8 * comm.rank, 16 * k + 8 * (comm.rank + 1))
                parallel.reducer.scale = 0.5
                local = step(images[mine], labels[mine])
                losses.append(parallel.sum([local * 8])[0] / 16)
                expected.append(reference(images[batch], labels[batch]))
            parallel.check_in_sync(step)
            weights = max(rel(model.params[k].value, alone.params[k].value) for k in model.params)
            report(comm, model=name, dtype=dtype, loss=rel(losses, np.array(expected)), weights=weights,
                   buckets=len(parallel.reducer.buckets), moved=rel(model.params["conv1/w"].value,
                                                                   build(**kwargs).params["conv1/w"].value))


def towers_equal_groups_2(comm):
    """AlexNet split over 2 ranks (one tower each) against the single-process groups=2 network."""
    from models.alexnet import alexnet
    from models.model_parallel import alexnet_towers

    kwargs = dict(num_classes=10, image_size=67, dropout=0.0, seed=4, dtype="float64")
    tower = alexnet_towers(comm, **kwargs)
    whole = alexnet(groups=2, **kwargs)
    rng = np.random.default_rng(3)
    images, labels = rng.standard_normal((3, 3, 67, 67)), rng.integers(0, 10, 3)
    names = list(tower.params)
    grads = gd.grad(tower.objective, [tower.params[n] for n in names])
    loss, *gs = gd.compile([tower.loss] + grads, inputs=tower.inputs)(images, labels)
    ref_grads = gd.grad(whole.loss, [whole.params[n] for n in names])
    ref_loss, *ref = gd.compile([whole.loss] + ref_grads, inputs=whole.inputs)(images, labels)
    worst, worst_name = 0.0, None
    for n, g, r in zip(names, gs, ref):
        axis, index = tower.full_slices[n]
        e = rel(g, np.split(r, 2, axis=axis)[index])
        if e > worst:
            worst, worst_name = e, n
    # and two SGD steps of train_step (it differentiates tower.objective) land on the same weights
    step, reference = train_step(tower, lr=0.01), train_step(whole, lr=0.01)
    for _ in range(2):
        step(images, labels)
        reference(images, labels)
    moved = max(rel(tower.params[n].value, np.split(whole.params[n].value, 2, axis=tower.full_slices[n][0])
                    [tower.full_slices[n][1]]) for n in names)
    every = comm.allgather_object((worst, worst_name, abs(loss - ref_loss) / abs(ref_loss), moved))
    exchanges = sum(1 for node in gd.toposort([tower.loss]) if node.op.name == "all_gather")
    report(comm, loss=max(e[2] for e in every), grads=max(e[0] for e in every), steps=max(e[3] for e in every),
           worst=max(every)[1], exchanges=exchanges, params=int(sum(p.value.size for p in tower.params.values())),
           whole=int(sum(p.value.size for p in whole.params.values())))


def train_cli(comm, fault, *argv):
    """``python -m models.train ARGV`` on every rank; ``fault`` changes rank 1:
    ``raise`` (an exception in epoch 2), ``die`` (killed in epoch 2), ``width``
    (another --width), ``extra-param`` (one more parameter, same config), ``none``."""
    import models.train as train

    argv = list(argv)
    if comm.rank == 1 and fault == "width":
        argv[argv.index("--width") + 1] = "8"
    if comm.rank == 1 and fault == "extra-param":
        build = train.build_model

        def with_extra(*a, **k):
            model = build(*a, **k)
            model.params["extra/w"] = gd.variable(np.zeros(3, np.float32), name="extra/w")
            return model

        train.build_model = with_extra
    if comm.rank == 1 and fault in ("raise", "die"):
        import models.epochs as epochs  # where the epoch loop looks it up

        real = epochs.train_epoch
        calls = []

        def failing(step, dataset, batch_size, rng, progress=None, **kw):
            calls.append(1)
            if len(calls) == 2:
                images, labels = next(dataset.train_batches(batch_size, rng))
                step(images, labels)
                if fault == "die":  # as the kernel's OOM killer would
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("a fault injected on rank 1")
            return real(step, dataset, batch_size, rng, progress, **kw)

        epochs.train_epoch = failing
    sys.exit(train.cli(argv))


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    comm = world()
    {"equivalence": data_parallel_equals_one_process, "towers": towers_equal_groups_2,
     "train": train_cli}[mode](comm, *args)
