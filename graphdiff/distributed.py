"""Several processes training one network: communicators and collective ops.

graphdiff does not move bytes between processes itself; it runs on an existing
engine, the way ChainerMN and Horovod do:

* **MPI** through ``mpi4py`` (``pip install -e '.[mpi]'`` brings mpi4py and the
  ``mpich`` wheel, whose ``mpiexec`` starts the processes), arrays on the host;
* **NCCL** through ``cupyx.distributed.NCCLBackend`` for CuPy arrays on GPUs
  (one process per GPU, started by ``mpiexec`` as well; MPI only bootstraps it).

Both sit behind one :class:`Communicator` (``rank``, ``size``, a non-blocking
sum ``allreduce_start``/``wait``, and blocking ``allreduce``, ``broadcast``,
``allgather``, ``reduce_scatter`` and object collectives). :func:`world`
returns the one this process was started with: a :class:`SelfCommunicator`
(``size == 1``, no library needed) unless a launcher announced more processes.

The collectives are graph ops, drawn in diagrams like any other:

``allreduce_start`` / ``allreduce_wait`` (data parallel)
    :class:`GradientReducer` packs the gradients into flat buckets (Horovod's
    tensor fusion; last layers first, the order the backward pass produces
    them), ``allreduce_start`` copies a bucket's gradients into one buffer,
    scaled by this rank's share of the global batch, and starts a
    non-blocking sum over the ranks (``MPI_Iallreduce``; on NCCL an
    ``ncclAllReduce`` queued on a communication stream); ``allreduce_wait``
    waits for it. The reduced gradient of each parameter is a view into the
    bucket. The compiler visits the starts first (their ``schedule_early``
    key), so each runs as soon as its bucket's gradients exist and every
    wait, with the SGD updates reading it, comes after the last start:
    the reduction of the last layers overlaps the backward pass of the first.
``all_gather`` / ``reduce_scatter`` (model parallel)
    ``all_gather(x, axis)`` concatenates every rank's ``x`` along ``axis``;
    its VJP is ``reduce_scatter``: the sum over ranks of the cotangent, of
    which each rank keeps its own slice (and the VJP of that is ``all_gather``
    again). A graph whose ranks each compute ``loss / size`` from gathered
    values therefore gets, on every rank, the gradient of the one loss with
    respect to that rank's parameters (``models.model_parallel``).
"""
import os
import time

import numpy as np

from .errors import BackendError, GraphdiffError
from .graph import Op, apply, as_tensor, fmt_shape, scope, variable
from .ops import reshape

MPI_INSTALL = "pip install -e '.[mpi]'"

#: Environment variables through which MPI launchers announce the number of processes:
#: MPICH's and Intel MPI's Hydra (and srun's PMI), Open MPI, MVAPICH. (Not SLURM_NTASKS:
#: a batch job's own script sees it without being one of several processes.)
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")

#: Default bucket size: PyTorch DDP uses 25 MB and Horovod 64 MB; a smaller one
#: starts the first reduction earlier in the backward pass.
DEFAULT_BUCKET_BYTES = 4 << 20


class DistributedError(GraphdiffError, RuntimeError):
    """Ranks disagree (model, parameters, setup) or a collective failed; the
    message names the rank(s)."""


def launched_size(environ=None):
    """The number of processes a launcher (``mpiexec``, ``srun``) started, 1 if none."""
    environ = os.environ if environ is None else environ
    for key in SIZE_VARIABLES:
        value = environ.get(key, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def launched_rank(environ=None):
    """This process's rank as its launcher set it (0 if none): known before MPI starts."""
    environ = os.environ if environ is None else environ
    for key in RANK_VARIABLES:
        value = environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def world(backend="numpy"):
    """The communicator of this process: :class:`SelfCommunicator` when it runs
    alone, else the MPI world (``backend="cupy"``: NCCL between the GPUs, one
    per rank, bootstrapped over MPI). Raises ``BackendError`` naming
    ``pip install -e '.[mpi]'`` when processes were launched but mpi4py is missing."""
    size = launched_size()
    if size == 1:
        return SelfCommunicator()
    mpi = MPICommunicator.from_world(size)
    if backend == "cupy":
        return NCCLCommunicator(mpi)
    return mpi


def _mpi_module(purpose):
    try:
        from mpi4py import MPI
    except Exception as exc:  # ImportError, or a broken MPI library
        raise BackendError(f"{purpose} needs mpi4py and an MPI library ({type(exc).__name__}: {exc}); "
                           f"install them with: {MPI_INSTALL}") from None
    return MPI


# --------------------------------------------------------------------------- communicators
class Communicator:
    """What the collective ops and the training command ask of a transport.

    Arrays are of the backend in use (NumPy for MPI, CuPy for NCCL); object
    collectives take small picklable Python values (configurations, metrics).
    """

    name = "self"
    rank, size = 0, 1

    @property
    def host(self):
        """The communicator of the same ranks for small host (NumPy) arrays:
        itself, except NCCL's, whose collectives take device arrays."""
        return self

    # non-blocking sum, for the gradient buckets
    def allreduce_start(self, buffer):
        """Start summing ``buffer`` over the ranks, in place; returns a handle for :meth:`wait`."""
        raise NotImplementedError

    def wait(self, handle):
        """Block until the reduction ``handle`` has landed in its buffer."""
        raise NotImplementedError

    # blocking collectives
    def allreduce(self, array):
        """The sum over ranks of ``array`` (a new array)."""
        raise NotImplementedError

    def broadcast(self, array, root=0):
        """Overwrite ``array`` in place with ``root``'s."""
        raise NotImplementedError

    def allgather(self, array):
        """Every rank's ``array`` (same shape everywhere), stacked: ``(size, *shape)``."""
        raise NotImplementedError

    def reduce_scatter(self, stacked):
        """``stacked`` is ``(size, *shape)``; returns ``sum over ranks of stacked[rank]``."""
        raise NotImplementedError

    def allgather_object(self, obj):
        raise NotImplementedError

    def bcast_object(self, obj, root=0):
        raise NotImplementedError

    def abort(self, code=1):
        """End every process of the world at once (a failed rank must not leave the others waiting)."""
        os._exit(code)

    def __repr__(self):
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"


class SelfCommunicator(Communicator):
    """One process: every collective is the identity (copies where the others return new arrays)."""

    def allreduce_start(self, buffer):
        return None

    def wait(self, handle):
        pass

    def allreduce(self, array):
        return array.copy()

    def broadcast(self, array, root=0):
        return array

    def allgather(self, array):
        return array[None].copy()

    def reduce_scatter(self, stacked):
        return stacked[0].copy()

    def allgather_object(self, obj):
        return [obj]

    def bcast_object(self, obj, root=0):
        return obj


class MPICommunicator(Communicator):
    """MPI through mpi4py. Host (NumPy) buffers; other arrays are staged through the host."""

    name = "mpi"

    def __init__(self, comm):
        self.MPI = _mpi_module("distributed training")
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._pending = []  # requests in flight, tested at each start so that MPI progresses them

    @classmethod
    def from_world(cls, launched=None):
        MPI = _mpi_module(f"distributed training ({launched} processes launched)" if launched else
                          "distributed training")
        return cls(MPI.COMM_WORLD)

    @staticmethod
    def _host(array):
        return array if isinstance(array, np.ndarray) else array.get()

    def allreduce_start(self, buffer):
        host = np.ascontiguousarray(self._host(buffer))
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        # MPICH progresses a non-blocking collective only inside MPI calls:
        # testing the earlier buckets here moves them on while the backward runs.
        self._pending = [r for r in self._pending if not r.Test()]
        self._pending.append(request)
        return request, host, buffer

    def wait(self, handle):
        request, host, buffer = handle
        request.Wait()
        if host is not buffer:
            if isinstance(buffer, np.ndarray):
                buffer[...] = host
            else:
                buffer.set(host)

    def allreduce(self, array):
        host = np.ascontiguousarray(self._host(array)).copy()
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        return host

    def broadcast(self, array, root=0):
        host = np.ascontiguousarray(self._host(array))
        self.comm.Bcast(host, root=root)
        if host is not array:
            if isinstance(array, np.ndarray):
                array[...] = host
            else:
                array.set(host)
        return array

    def allgather(self, array):
        host = np.ascontiguousarray(self._host(array))
        out = np.empty((self.size,) + host.shape, host.dtype)
        self.comm.Allgather(host, out)
        return out

    def reduce_scatter(self, stacked):
        host = np.ascontiguousarray(self._host(stacked))
        out = np.empty(host.shape[1:], host.dtype)
        self.comm.Reduce_scatter_block(host, out, op=self.MPI.SUM)
        return out

    def allgather_object(self, obj):
        return self.comm.allgather(obj)

    def bcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def abort(self, code=1):
        self.comm.Abort(code)
        os._exit(code)  # MPICH's MPI_Abort may return once mpiexec has been told


class NCCLCommunicator(Communicator):
    """NCCL between GPUs (``cupyx.distributed.NCCLBackend``), one GPU per rank.

    ``mpi`` (a communicator of the same ranks) bootstraps NCCL and carries the
    object collectives. A reduction is queued on a communication stream after
    an event that marks the gradients ready on the compute stream; its wait
    makes the compute stream wait for the event that marks it done, so the
    host never blocks and the GPU overlaps the two streams.
    """

    name = "nccl"

    def __init__(self, mpi, nccl=None):
        try:
            import cupy
            from cupyx.distributed import NCCLBackend
        except Exception as exc:
            from .backends import GPU_INSTALL
            raise BackendError(f"NCCL training needs CuPy with cupyx.distributed ({type(exc).__name__}: {exc}); "
                               f"install {GPU_INSTALL}") from None
        self.cp, self.mpi = cupy, mpi
        self.rank, self.size = mpi.rank, mpi.size
        if nccl is None:
            cupy.cuda.Device(self.rank % cupy.cuda.runtime.getDeviceCount()).use()
            nccl = NCCLBackend(self.size, self.rank, use_mpi=self.size > 1 and isinstance(mpi, MPICommunicator))
        self.nccl = nccl
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def allreduce_start(self, buffer):
        ready = self.cp.cuda.Event()
        ready.record(self.cp.cuda.get_current_stream())
        self.stream.wait_event(ready)
        self.nccl.all_reduce(buffer, buffer, "sum", stream=self.stream)
        done = self.cp.cuda.Event()
        done.record(self.stream)
        return done

    def wait(self, handle):
        self.cp.cuda.get_current_stream().wait_event(handle)

    def allreduce(self, array):
        out = self.cp.empty_like(array)
        self.nccl.all_reduce(self.cp.ascontiguousarray(array), out, "sum")
        return out

    def broadcast(self, array, root=0):
        self.nccl.broadcast(array, root)
        return array

    def allgather(self, array):
        array = self.cp.ascontiguousarray(array)
        out = self.cp.empty((self.size,) + array.shape, array.dtype)
        self.nccl.all_gather(array, out, array.size)
        return out

    def reduce_scatter(self, stacked):
        stacked = self.cp.ascontiguousarray(stacked)
        out = self.cp.empty(stacked.shape[1:], stacked.dtype)
        self.nccl.reduce_scatter(stacked, out, out.size)
        return out

    def allgather_object(self, obj):
        return self.mpi.allgather_object(obj)

    def bcast_object(self, obj, root=0):
        return self.mpi.bcast_object(obj, root)

    @property
    def host(self):
        return self.mpi

    def abort(self, code=1):
        self.mpi.abort(code)


# --------------------------------------------------------------------------- data parallel: bucketed all-reduce
class Bucket:
    """Gradients reduced together: their names, shapes and spans in one flat
    buffer, and the reduction in flight between its start and its wait."""

    def __init__(self, index, comm, names, shapes, dtype, reducer):
        self.index, self.comm, self.reducer = index, comm, reducer
        self.names, self.shapes, self.dtype = list(names), list(shapes), np.dtype(dtype)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        self.size = self.offsets[-1]
        self.handle = None

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    def __repr__(self):
        return f"<Bucket {self.index}: {len(self.names)} gradients, {self.nbytes / 1e6:.2f} MB>"


class AllreduceStart(Op):
    """``buffer = scale * concat(g_1.ravel(), ..., g_k.ravel())``, then start
    summing ``buffer`` over the ranks (non-blocking). ``scale`` (a scalar
    variable, the last input) is this rank's share of the global batch,
    ``n_rank / n_global``: the sum is then the gradient of the whole batch's
    mean loss, as one process computing it all would get."""

    name = "allreduce_start"
    supports_out = True

    def __init__(self, bucket):
        super().__init__(bucket=bucket)

    @property
    def schedule_early(self):
        return self.bucket.index  # the compiler visits these first, in this order

    def describe(self):
        b = self.bucket
        return f"allreduce_start: bucket {b.index}, {len(b.names)} gradients, {b.nbytes / 1e6:.2f} MB"

    def infer(self, *inputs):
        return (self.bucket.size,), self.bucket.dtype

    def forward(self, xp, *arrays, out=None):
        b, grads, scale = self.bucket, arrays[:-1], arrays[-1]
        flat = xp.empty(b.size, b.dtype) if out is None else out
        for g, lo, hi in zip(grads, b.offsets, b.offsets[1:]):
            xp.multiply(g.reshape(-1), scale, out=flat[lo:hi])
        b.handle = b.comm.allreduce_start(flat)
        return flat

    def vjp(self, node, g, wrt):
        """Rank r's ``g_i`` enters every rank's sum times ``scale_r``: its cotangent
        is ``scale_r * sum over ranks of g`` (the objective being the sum of the
        ranks' losses), sliced back to each gradient's shape; none for ``scale``."""
        b, scale = self.bucket, node.inputs[-1]
        summed = all_reduce(g, b.comm) * scale
        return [reshape(summed[lo:hi], shape) if w else None
                for shape, lo, hi, w in zip(b.shapes, b.offsets, b.offsets[1:], wrt)] + [None]


class AllreduceWait(Op):
    """Wait until the bucket's sum over the ranks has landed; the output is that
    buffer (a view: no copy)."""

    name = "allreduce_wait"
    is_view = True

    def __init__(self, bucket):
        super().__init__(bucket=bucket)

    def describe(self):
        return f"allreduce_wait: bucket {self.bucket.index}"

    def infer(self, flat):
        return flat.shape, flat.dtype

    def forward(self, xp, flat):
        b = self.bucket
        t0 = time.perf_counter()
        b.comm.wait(b.handle)
        b.reducer.wait_seconds += time.perf_counter() - t0
        b.handle = None
        return flat

    def vjp(self, node, g, wrt):
        return [g]  # the value is the start's; its VJP does the reduction


class GradientReducer:
    """Turns ``{name: gradient}`` into ``{name: gradient summed over the ranks}``
    with graph ops: buckets of at most ``bucket_bytes`` (a larger gradient gets
    one of its own), each an ``allreduce_start`` and an ``allreduce_wait``.

    ``scale`` (``1 / size`` by default) weights this rank's gradient; set it to
    ``n_rank / n_global`` before a step whose shards differ in size.
    ``wait_seconds`` adds up the time the waits blocked (for benchmarks)."""

    def __init__(self, comm, bucket_bytes=DEFAULT_BUCKET_BYTES):
        self.comm, self.bucket_bytes = comm, int(bucket_bytes)
        self.buckets = []
        self.wait_seconds = 0.0
        # float64, cast to each bucket's dtype: a share like 1/3 stays exact to float64 models' precision
        self._scale = variable(np.asarray(1.0 / comm.size, np.float64), name="allreduce/scale")
        self._scales = {}  # dtype -> the scale as that dtype (a cast of the variable)

    @property
    def scale(self):
        return float(self._scale.value)

    @scale.setter
    def scale(self, value):
        self._scale.value = np.asarray(value, np.float64)

    def _scale_as(self, dtype):
        from .ops import cast
        if dtype not in self._scales:
            self._scales[dtype] = self._scale if dtype == self._scale.dtype else cast(self._scale, dtype)
        return self._scales[dtype]

    def __call__(self, grads):
        names = list(grads)
        plan, open_ = [], {}  # buckets as name lists, in backward order; the open one per dtype
        for name in reversed(names):  # the backward pass produces the last layers' gradients first
            g = grads[name]
            if None in g.shape:
                raise DistributedError(f"allreduce: gradient {name!r} has unknown dimensions {fmt_shape(g.shape)}")
            nbytes = int(np.prod(g.shape, dtype=np.int64)) * g.dtype.itemsize
            current = open_.get(g.dtype)
            if current is None or (current[1] and current[1] + nbytes > self.bucket_bytes):
                current = open_[g.dtype] = [[], 0]
                plan.append(current)
            current[0].append(name)
            current[1] += nbytes
        reduced = {}
        with scope("allreduce"):
            for members, _ in plan:
                gs = [grads[n] for n in members]
                bucket = Bucket(len(self.buckets), self.comm, members, [g.shape for g in gs], gs[0].dtype, self)
                self.buckets.append(bucket)
                flat = apply(AllreduceStart(bucket), gs + [self._scale_as(gs[0].dtype)],
                             name=f"bucket{bucket.index}")
                summed = apply(AllreduceWait(bucket), [flat], name=f"bucket{bucket.index}_reduced")
                for n, shape, lo, hi in zip(members, bucket.shapes, bucket.offsets, bucket.offsets[1:]):
                    reduced[n] = reshape(summed[lo:hi], shape, name=f"grad_{n.replace('/', '_')}")
        return {n: reduced[n] for n in names}



def broadcast_variables(comm, variables, root=0):
    """Overwrite each variable's value with ``root``'s (before the first step)."""
    for v in variables:
        value = v.value
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            value = v._value = value.copy()
        comm.broadcast(value, root)


# --------------------------------------------------------------------------- blocking collectives as ops
class AllReduce(Op):
    """The sum over ranks of ``x`` (blocking). Its own VJP: with the ranks'
    losses summed, rank r's ``x`` reaches every rank's output, so its
    cotangent is the sum over ranks of theirs."""

    name = "all_reduce"

    def __init__(self, comm):
        super().__init__(comm=comm)

    def describe(self):
        return f"all_reduce(ranks={self.comm.size})"

    def infer(self, x):
        return x.shape, x.dtype

    def forward(self, xp, x):
        return xp.asarray(self.comm.allreduce(x))

    def vjp(self, node, g, wrt):
        return [all_reduce(g, self.comm)]


def all_reduce(x, comm, name=None):
    """The sum over ranks of ``x`` (see :class:`AllReduce`)."""
    return apply(AllReduce(comm), [as_tensor(x)], name=name)


class AllGather(Op):
    """Every rank's ``x`` concatenated along ``axis``, in rank order (the same
    shape on every rank). VJP: :class:`ReduceScatter` along the same axis."""

    name = "all_gather"

    def __init__(self, comm, axis):
        super().__init__(comm=comm, axis=axis)

    def describe(self):
        return f"all_gather(axis={self.axis}, ranks={self.comm.size})"

    def infer(self, x):
        shape = list(x.shape)
        if shape[self.axis] is not None:
            shape[self.axis] *= self.comm.size
        return tuple(shape), x.dtype

    def forward(self, xp, x):
        stacked = xp.asarray(self.comm.allgather(x))  # (ranks, *x.shape)
        return xp.concatenate(list(stacked), axis=self.axis)

    def vjp(self, node, g, wrt):
        return [reduce_scatter(g, self.comm, self.axis)]


class ReduceScatter(Op):
    """The sum over ranks of ``x``, of which rank ``r`` keeps the ``r``-th of
    ``size`` equal slices along ``axis``. VJP: :class:`AllGather`."""

    name = "reduce_scatter"

    def __init__(self, comm, axis):
        super().__init__(comm=comm, axis=axis)

    def describe(self):
        return f"reduce_scatter(axis={self.axis}, ranks={self.comm.size})"

    def infer(self, x):
        shape = list(x.shape)
        d = shape[self.axis]
        if d is not None:
            if d % self.comm.size:
                raise self.error(f"axis {self.axis} of size {d} does not split over {self.comm.size} ranks", x)
            shape[self.axis] = d // self.comm.size
        return tuple(shape), x.dtype

    def forward(self, xp, x):
        stacked = xp.stack(xp.split(x, self.comm.size, axis=self.axis))  # (ranks, *slice shape)
        return xp.asarray(self.comm.reduce_scatter(stacked))

    def vjp(self, node, g, wrt):
        return [all_gather(g, self.comm, self.axis)]


def _axis(x, axis):
    if not -x.ndim <= axis < x.ndim:
        raise DistributedError(f"{x.name} {fmt_shape(x.shape)}: axis {axis} is out of range")
    return axis % x.ndim


def all_gather(x, comm, axis=0, name=None):
    """Concatenate every rank's ``x`` along ``axis`` (see :class:`AllGather`)."""
    x = as_tensor(x)
    return apply(AllGather(comm, _axis(x, axis)), [x], name=name)


def reduce_scatter(x, comm, axis=0, name=None):
    """Sum ``x`` over the ranks and keep this rank's slice along ``axis`` (see :class:`ReduceScatter`)."""
    x = as_tensor(x)
    return apply(ReduceScatter(comm, _axis(x, axis)), [x], name=name)


__all__ = ["AllGather", "AllReduce", "AllreduceStart", "AllreduceWait", "Bucket", "Communicator", "DEFAULT_BUCKET_BYTES",
           "DistributedError", "GradientReducer", "MPICommunicator", "MPI_INSTALL", "NCCLCommunicator", "broadcast_variables",
           "ReduceScatter", "SelfCommunicator", "all_gather", "all_reduce", "launched_size", "reduce_scatter",
           "world"]
