"""Data-parallel training: what one rank of ``mpiexec -n N python -m models.train`` does.

Every rank holds the whole model; rank 0's initial parameters are broadcast
to the others before the first step. Each epoch's permutation is drawn from
the same seeded generator on every rank and cut into global batches of
``N x batch_size`` images, exactly as one process with that batch would cut
it; rank ``r`` trains on the ``r``-th of ``N`` slices of each global batch (a
disjoint shard). The gradients are summed over the ranks inside the compiled
step (:class:`graphdiff.distributed.GradientReducer`), each rank's weighted
by its share of the global batch, so every rank applies the update that one
process training on the global batch would apply, and the parameters stay
equal on all ranks. Dropout masks come from a generator seeded with
``(seed, rank)``: different on each rank, the same on every run.

Only rank 0 writes (checkpoints, metrics, pictures, log lines); metrics are
sums over the ranks. A checkpoint stores every rank's dropout generator, so a
resumed run with the same number of ranks continues exactly; with another
number, each rank's dropout generator starts afresh from ``(seed, rank,
epoch)`` (the parameters, momentum, learning rate and batch order continue).
"""
import hashlib
import os
import signal
import socket
import sys
import threading
import time

import numpy as np

from graphdiff.distributed import DEFAULT_BUCKET_BYTES, DistributedError, GradientReducer, broadcast_variables, world


class DataParallel:
    """This process's place in data-parallel training over ``comm`` (a
    :class:`graphdiff.distributed.Communicator`; :func:`detect` gives the
    one ``mpiexec`` started). With one rank every method is the identity."""

    def __init__(self, comm, bucket_bytes=DEFAULT_BUCKET_BYTES):
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.bucket_bytes = bucket_bytes
        self.reducer = None
        self.ranks = [(socket.gethostname(), os.getpid())]  # (host, pid) per rank, from check_same_setup

    @property
    def is_root(self):
        """Rank 0: the one that writes files and log lines."""
        return self.rank == 0

    def __repr__(self):
        return f"<DataParallel rank {self.rank} of {self.size} over {self.comm.name}>"

    # ------------------------------------------------------------------ the step
    def gradient_reducer(self):
        """The ``reduce_gradients`` argument of ``train_step`` (None alone)."""
        if self.size == 1:
            return None
        self.reducer = GradientReducer(self.comm, self.bucket_bytes)
        return self.reducer

    def dropout_seed(self, seed, epoch=None):
        """The seed of this rank's dropout generator: ``seed`` alone (as a
        single process), ``(seed, rank)`` among several, ``(seed, rank, epoch)``
        after a resume with another number of ranks."""
        if self.size == 1:
            return seed
        return [seed, self.rank] if epoch is None else [seed, self.rank, epoch]

    # ------------------------------------------------------------------ start-up checks
    def check_same_setup(self, model, config):
        """Every rank must build the same model: compares the configuration and
        every parameter's name, shape and dtype with rank 0's, and raises the
        same ``DistributedError`` on every rank, naming the ranks that differ."""
        if self.size == 1:
            return
        signature = dict(config=config, params=[(k, list(p.shape), p.dtype.name) for k, p in model.params.items()],
                         count=model.parameter_count(), host=socket.gethostname(), pid=os.getpid())
        every = self.comm.allgather_object(signature)
        ref, problems = every[0], []
        for r, sig in enumerate(every[1:], start=1):
            diff = [f"{k}: {ref['config'].get(k)!r} on rank 0, {v!r} on rank {r}"
                    for k, v in sig["config"].items() if ref["config"].get(k) != v]
            if sig["count"] != ref["count"] or sig["params"] != ref["params"]:
                names0 = {p[0]: p for p in ref["params"]}
                first = next((p for p in sig["params"] if names0.get(p[0]) != p),
                             next((p for p in ref["params"] if p not in sig["params"]), None))
                diff.append(f"{len(sig['params'])} parameters ({sig['count']:,} values) on rank {r}, "
                            f"{len(ref['params'])} ({ref['count']:,}) on rank 0"
                            + (f"; first difference: {first[0]} {tuple(first[1])} {first[2]}" if first else ""))
            if diff:
                problems.append(f"rank {r} differs from rank 0: " + "; ".join(diff))
        if problems:
            raise DistributedError("the ranks do not train the same model: " + " | ".join(problems))
        self.ranks = [(sig["host"], sig["pid"]) for sig in every]

    def broadcast_state(self, step):
        """Rank 0's parameters and momentum buffers to every rank (before the first step)."""
        if self.size == 1:
            return
        variables = list(step.model.params.values()) + list(step.velocities.values())
        broadcast_variables(self.comm, variables)

    def check_in_sync(self, step):
        """Raise if any rank's parameters differ from rank 0's (a digest of every byte)."""
        if self.size == 1:
            return
        digest = hashlib.sha256()
        for k, array in step.model.state_arrays().items():
            digest.update(k.encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        every = self.comm.allgather_object(digest.hexdigest())
        off = [r for r, d in enumerate(every) if d != every[0]]
        if off:
            raise DistributedError(f"the parameters of rank(s) {', '.join(map(str, off))} differ from rank 0's")

    # ------------------------------------------------------------------ data
    def shard(self, dataset):
        """``dataset`` as this rank sees it (itself when alone)."""
        return dataset if self.size == 1 else ShardedDataset(dataset, self)

    def bounds(self, n):
        """Where ``n`` consecutive items split over the ranks: rank ``r`` takes
        ``[bounds[r], bounds[r + 1])`` (sizes differ by at most one)."""
        return [n * r // self.size for r in range(self.size + 1)]

    # ------------------------------------------------------------------ collectives for the command
    def sum(self, values):
        """Element-wise sums over the ranks of a list of numbers (float64)."""
        values = np.asarray(values, np.float64)
        return values.tolist() if self.size == 1 else self.comm.allreduce(values).tolist()

    def share(self, obj):
        """Rank 0's ``obj`` on every rank (so that every rank takes the same decisions)."""
        return obj if self.size == 1 else self.comm.bcast_object(obj, 0)

    def gather(self, obj):
        """Every rank's ``obj``, in rank order, on every rank."""
        return [obj] if self.size == 1 else self.comm.allgather_object(obj)

    def abort(self, code):
        self.comm.abort(code)

    def stop_on_ctrl_c(self, grace_seconds=None):
        """An installed :class:`AgreedStop` among several ranks; None alone
        (one process keeps Python's own KeyboardInterrupt)."""
        if self.size == 1:
            return None
        kwargs = {} if grace_seconds is None else dict(grace_seconds=grace_seconds)
        return AgreedStop(self.comm, **kwargs).install()


class AgreedInterrupt(KeyboardInterrupt):
    """Every rank stops here, after the same training step (see :class:`AgreedStop`)."""


class AgreedStop:
    """Ctrl-C among several ranks: every rank stops after the same step.

    ``mpiexec`` passes Ctrl-C (SIGINT) on to every rank, and each receives it
    at a different point of its step: a ``KeyboardInterrupt`` raised wherever
    it lands leaves the ranks that are inside a collective waiting for one
    that has left it, and a rank blocked in MPI does not even see it until the
    collective returns. So the signal only records the request. After every
    training step each rank puts its flag into a non-blocking sum over the
    ranks (``MPI_Iallreduce`` of one integer) and reads the sum started after
    the previous step: nobody waits for it (it has had a whole step to land),
    and all ranks read the same sum after the same step, so they stop
    together; a request made during step ``k`` stops the run after step
    ``k + 1``. At the end of an epoch :meth:`check_now` asks once more,
    blocking, so a Ctrl-C during validation stops the run there.

    If the ranks have not stopped together ``grace_seconds`` after the
    signal (a rank hung or far behind), a watchdog thread ends every rank
    with ``MPI_Abort``; the checkpoint holds the last completed epoch either
    way. A second SIGINT to the same rank raises ``KeyboardInterrupt`` at
    once (``mpiexec`` itself kills every rank on a second Ctrl-C).
    """

    def __init__(self, comm, grace_seconds=20.0):
        self.comm = comm.host  # host integers, also when gradients go over NCCL
        self.rank, self.size = comm.rank, comm.size
        self.grace_seconds = grace_seconds
        self.requested = False
        self._sum = np.zeros(1, np.int64)  # the buffer of the reduction in flight
        self._in_flight = None
        self._watchdog = None
        self._previous_handler = None

    def install(self):
        self._previous_handler = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def uninstall(self, finish=True):
        """Back to the handler before :meth:`install`, the watchdog stopped. ``finish``:
        every rank is here, so wait for the sum in flight (an MPI program must not end
        with a collective started); not after a rank was stopped on its own."""
        if finish:
            self._landed()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _on_signal(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt  # asked twice: stop here, whatever the others do
        self.requested = True
        self._watchdog = threading.Timer(self.grace_seconds, self._give_up)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _give_up(self):
        print(f"error: rank {self.rank} of {self.size}: the ranks did not stop together within "
              f"{self.grace_seconds:g} s of Ctrl-C; ending every rank", file=sys.stderr, flush=True)
        time.sleep(0.5)  # let mpiexec forward the line before MPI_Abort ends the job
        self.comm.abort(130)

    def after_step(self):
        """Call after every training step on every rank: raises :class:`AgreedInterrupt`
        once the sum started after the previous step says that a rank was interrupted."""
        if self._landed():
            self._stopped()
        self._sum[0] = self.requested
        self._in_flight = self.comm.allreduce_start(self._sum)

    def check_now(self):
        """Blocking: raises :class:`AgreedInterrupt` on every rank if any rank has been interrupted by now."""
        if self._landed() or self.comm.allreduce(np.array([self.requested], np.int64))[0] > 0:
            self._stopped()

    def _landed(self):
        """Wait for the sum in flight, if any: True where it counts an interrupted rank."""
        if self._in_flight is None:
            return False
        self.comm.wait(self._in_flight)
        self._in_flight = None
        return self._sum[0] > 0

    def _stopped(self):
        if self._watchdog is not None:
            self._watchdog.cancel()  # stopping together: no need to end anybody
        raise AgreedInterrupt


class ShardedDataset:
    """One rank's view of a :class:`models.data.Dataset`: its slice of every
    global batch of the shuffled training set, and a contiguous slice of the
    validation set. Other attributes are the data set's."""

    def __init__(self, dataset, parallel):
        if len(dataset.train_labels) < parallel.size:
            from models.data import DataError

            raise DataError(f"{dataset.name}: {len(dataset.train_labels)} training images cannot be shared "
                            f"among {parallel.size} ranks")
        self._dataset, self._parallel = dataset, parallel
        lo, hi = parallel.bounds(len(dataset.val_labels))[parallel.rank:parallel.rank + 2]
        self.val_images, self.val_labels = dataset.val_images[lo:hi], dataset.val_labels[lo:hi]
        first, end = parallel.bounds(len(dataset.train_labels))[parallel.rank:parallel.rank + 2]
        self.train_labels = range(end - first)  # this rank's share of an epoch, for progress bars

    def __getattr__(self, item):
        return getattr(self._dataset, item)

    def train_batches(self, batch_size, rng, drop_last=False):
        """This rank's part of each global batch of ``size x batch_size``, drawn
        as one process drawing batches of that size would (the same generator
        calls). Sets the gradient reducer's scale to the part's share. A last
        global batch with fewer images than ranks is skipped (no rank may be empty)."""
        d, p = self._dataset, self._parallel
        n, step = len(d.train_labels), batch_size * p.size
        order = rng.permutation(n)
        stop = n - n % step if drop_last else n
        for start in range(0, stop, step):
            idx = order[start:start + step]
            if len(idx) < p.size:
                break
            lo, hi = p.bounds(len(idx))[p.rank:p.rank + 2]
            if d.augment is not None:  # the whole global batch's draws, so that the generator moves as alone
                x = d.augment(d.train_images[idx], rng)[lo:hi]
            else:
                x = d.train_images[idx[lo:hi]]
            if p.reducer is not None:
                p.reducer.scale = (hi - lo) / len(idx)
            yield x, d.train_labels[idx[lo:hi]]

    def val_batches(self, batch_size):
        from models.data import iterate_minibatches

        return iterate_minibatches(self.val_images, self.val_labels, batch_size, None, shuffle=False)


def detect(backend="numpy", bucket_bytes=DEFAULT_BUCKET_BYTES):
    """The :class:`DataParallel` of this process: one rank unless started by
    ``mpiexec -n N`` (then the MPI world; NCCL between GPUs on ``"cupy"``)."""
    return DataParallel(world(backend), bucket_bytes)
