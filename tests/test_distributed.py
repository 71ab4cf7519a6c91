"""Distributed training: the collective ops at one rank (in-process) and under
``mpiexec -n 2`` (subprocesses running tests/mpi_worker.py and the training
command). Where ``mpiexec`` or mpi4py is missing the MPI tests skip, except
under CI (``CI`` set), where they fail."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import graphdiff as gd
import needs
from graphdiff import distributed as dist
from graphdiff.checkpoint import load_checkpoint
from graphdiff.testing import check_double_vjp, check_vjp
from models.alexnet import train_step
from models.cnn import cnn4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "mpi_worker.py")
INSTALL = "pip install -e '.[mpi]'"
TINY = ["--model", "alexnet-small", "--data", "synthetic", "--image-size", "16", "--width", "4", "--hidden", "16",
        "--lr", "0.02", "--seed", "3", "--quiet", "--no-diagrams"]


def find_mpiexec():
    sibling = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = sibling if os.access(sibling, os.X_OK) else shutil.which("mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        needs.missing("mpiexec and mpi4py", INSTALL)
    return found


def mpirun(*args, n=2, timeout=120):
    """Run ``mpiexec -n N python ARGS`` from the repository root; returns (returncode, output, seconds)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run([find_mpiexec(), "-n", str(n), sys.executable, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def results(output):
    return [json.loads(line[len("RESULT "):]) for line in output.splitlines() if line.startswith("RESULT ")]


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- one process
class FlagComm:
    """Two ranks seen from rank 0: the other rank's Ctrl-C flag is ``other``; sums land at ``wait``."""

    name, rank, size = "fake", 0, 2

    def __init__(self):
        self.other, self.started, self.aborted = 0, 0, None

    host = property(lambda self: self)

    def allreduce_start(self, buffer):
        self.started += 1
        return buffer, buffer[0] + self.other  # the sum as it stands when every rank has started it

    def wait(self, handle):
        buffer, total = handle
        buffer[0] = total

    def allreduce(self, array):
        return array + self.other

    def abort(self, code):
        self.aborted = code


def test_agreed_stop_stops_after_the_step_following_any_ranks_ctrl_c():
    from models.distributed import AgreedInterrupt, AgreedStop

    comm = FlagComm()
    stop = AgreedStop(comm)
    stop.after_step()
    stop.after_step()  # nobody interrupted: each step starts the next sum and goes on
    comm.other = 1  # the other rank's Ctrl-C, carried by the sum started after this step
    stop.after_step()
    with pytest.raises(AgreedInterrupt):
        stop.after_step()
    assert comm.started == 3 and stop._in_flight is None  # nothing left in flight
    comm.other = 0
    stop.after_step()
    stop.requested = True  # this rank's own Ctrl-C during validation: the epoch's end stops it
    with pytest.raises(AgreedInterrupt):
        stop.check_now()
    assert comm.aborted is None


def test_agreed_stop_signal_handler_watchdog_and_second_ctrl_c():
    import signal

    from models.distributed import AgreedStop

    before = signal.getsignal(signal.SIGINT)
    comm = FlagComm()
    stop = AgreedStop(comm, grace_seconds=0.2).install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first one is only recorded
        time.sleep(0.01)
        assert stop.requested and comm.aborted is None
        with pytest.raises(KeyboardInterrupt):  # the second one stops this rank at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        deadline = time.perf_counter() + 5
        while comm.aborted is None and time.perf_counter() < deadline:
            time.sleep(0.05)
        assert comm.aborted == 130  # the ranks never agreed: the watchdog ended them all
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is before


def test_distributed_training_without_mpi4py_names_the_install_command(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(gd.BackendError, match=re.escape(INSTALL)):
        dist.world()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert isinstance(dist.world(), dist.SelfCommunicator)


def test_launched_size_reads_the_launchers_variables():
    assert dist.launched_size({}) == 1
    assert dist.launched_size({"PMI_SIZE": "4"}) == 4
    assert dist.launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert dist.launched_size({"PMI_SIZE": "1", "SLURM_NTASKS": "2"}) == 1  # a batch script is one process


def test_reduced_step_at_one_rank_equals_the_plain_step_and_schedules_starts_before_waits():
    model, plain = cnn4(4, 16, width=4, dtype="float64"), cnn4(4, 16, width=4, dtype="float64")
    reducer = dist.GradientReducer(dist.SelfCommunicator(), bucket_bytes=2000)
    step, reference = train_step(model, reduce_gradients=reducer), train_step(plain)
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((8, 3, 16, 16)), rng.integers(0, 4, 8)
    for _ in range(3):
        assert step(images, labels) == reference(images, labels)
    for k in model.params:
        np.testing.assert_array_equal(model.params[k].value, plain.params[k].value)
    # buckets hold whole gradients, last layers first, at most 2000 bytes unless one gradient is larger
    names = [n for b in reducer.buckets for n in b.names]
    assert sorted(names) == sorted(model.params) and names[0].startswith("fc4")
    assert all(b.nbytes <= 2000 or len(b.names) == 1 for b in reducer.buckets)
    # every start runs before every wait; the first bucket (fc4) starts before conv1's weight gradient exists
    ops = [n.op.name for n in step.program.nodes]
    starts = [i for i, o in enumerate(ops) if o == "allreduce_start"]
    waits = [i for i, o in enumerate(ops) if o == "allreduce_wait"]
    assert len(starts) == len(waits) == len(reducer.buckets) and max(starts) < min(waits)
    conv1_grad = max(i for i, n in enumerate(step.program.nodes) if n.scope.startswith("conv1") and n.backward)
    assert starts[0] < conv1_grad
    # the updates read the reduced gradients: every SGD update sits after a wait
    assert all(i > min(waits) for i, n in enumerate(step.program.nodes) if "_next" in (n.name or ""))


def test_the_reduction_is_drawn_in_diagrams():
    import visualize as vz

    model = cnn4(4, 16, width=4)
    reducer = dist.GradientReducer(dist.SelfCommunicator())
    step = train_step(model, reduce_gradients=reducer)
    source = vz.to_dot(step.program).source
    assert "allreduce_start" in source and "allreduce_wait" in source
    assert "allreduce" in vz.to_dot(list(step.grads.values())).source


def test_scale_weights_this_ranks_share():
    model, plain = cnn4(4, 16, width=4, dtype="float64"), cnn4(4, 16, width=4, dtype="float64")
    reducer = dist.GradientReducer(dist.SelfCommunicator())
    reducer.scale = 0.25
    step = train_step(model, lr=0.1, momentum=0.0, weight_decay=0.0, reduce_gradients=reducer)
    reference = train_step(plain, lr=0.025, momentum=0.0, weight_decay=0.0)
    rng = np.random.default_rng(1)
    images, labels = rng.standard_normal((4, 3, 16, 16)), rng.integers(0, 4, 4)
    step(images, labels)
    reference(images, labels)
    for k in model.params:
        np.testing.assert_allclose(model.params[k].value, plain.params[k].value, rtol=1e-12, atol=1e-15)


class Rank(dist.SelfCommunicator):
    """A communicator that only says which rank of how many it is (for the shard arithmetic)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.parametrize("augment", [False, True])
def test_shards_of_every_global_batch_are_disjoint_and_in_one_processs_order(augment):
    from models.data import Dataset, RandomCropFlip
    from models.distributed import DataParallel

    n, size, batch = 23, 3, 2  # global batches of 6: 6, 6, 6, then 5 (uneven shards)
    side = 6 if augment else 4
    images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, side, side), np.float32)
    data = Dataset(images, np.arange(n), images[:4, :, :4, :4], np.arange(4), 23, [str(i) for i in range(23)],
                   np.zeros(1, np.float32), "ids", augment=RandomCropFlip(4) if augment else None)
    rng_alone = np.random.default_rng(5)
    alone = list(data.train_batches(size * batch, rng_alone))
    shards, scales = [], []
    for r in range(size):
        rng, parallel = np.random.default_rng(5), DataParallel(Rank(r, size))
        parallel.reducer = dist.GradientReducer(Rank(r, size))
        shards.append([])
        scales.append([])
        for x, y in parallel.shard(data).train_batches(batch, rng):
            shards[-1].append((x, y))
            scales[-1].append(parallel.reducer.scale)
        assert rng.bit_generator.state == rng_alone.bit_generator.state  # the generator moved as alone
    assert len(alone) == 4 and all(len(s) == 4 for s in shards)
    # each rank's gradient weighs its share of the global batch (the last one: 1, 2 and 2 of 5 images)
    np.testing.assert_allclose([sc[-1] for sc in scales], [1 / 5, 2 / 5, 2 / 5], rtol=1e-7)
    assert all(sc[0] == pytest.approx(1 / 3) for sc in scales)
    for k, (x, y) in enumerate(alone):
        parts = [s[k] for s in shards]
        assert sum(len(p[1]) for p in parts) == len(y) and min(len(p[1]) for p in parts) >= 1
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)  # disjoint, in order
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)  # the same crops and flips
    # each rank's validation slice: contiguous, together the whole split
    views = [DataParallel(Rank(r, size)).shard(data) for r in range(size)]
    np.testing.assert_array_equal(np.concatenate([v.val_labels for v in views]), data.val_labels)


def test_a_last_global_batch_smaller_than_the_ranks_is_skipped():
    from models.data import DataError, Dataset
    from models.distributed import DataParallel

    images = np.zeros((9, 1, 2, 2), np.float32)
    data = Dataset(images, np.arange(9), images[:2], np.arange(2), 9, list("abcdefghi"), np.zeros(1), "ids")
    batches = list(DataParallel(Rank(1, 4)).shard(data).train_batches(2, np.random.default_rng(0)))
    assert [len(y) for _, y in batches] == [2]  # 8 images in one global batch; the 9th alone would leave ranks empty
    with pytest.raises(DataError, match="3 training images cannot be shared among 4 ranks"):
        DataParallel(Rank(0, 4)).shard(Dataset(images[:3], np.arange(3), images[:2], np.arange(2), 3, list("abc"),
                                                np.zeros(1), "ids"))


@pytest.mark.parametrize("op", [dist.all_gather, dist.reduce_scatter])
def test_exchange_ops_vjp_and_double_vjp_at_one_rank(op):
    comm = dist.SelfCommunicator()
    x = np.random.default_rng(2).standard_normal((2, 4, 3))
    assert max(check_vjp(lambda t: op(t, comm, axis=1) * t, [x])) < 1e-7
    assert max(check_double_vjp(lambda t: op(t, comm, axis=1) * t, [x])) < 1e-7
    # the formula at one rank: the identity
    p = gd.placeholder(x.shape, "float64")
    np.testing.assert_array_equal(gd.compile(op(p, comm, axis=1), inputs=[p])(x), x)


def test_reduction_ops_vjp_double_vjp_and_formula_at_one_rank():
    comm = dist.SelfCommunicator()
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal(4)

    def build(x, y):
        reducer = dist.GradientReducer(comm, bucket_bytes=40)  # two buckets: y's 32 bytes, then x's 48
        reducer.scale = 0.5
        out = reducer({"x": gd.tanh(x) * y[:3], "y": y * y})
        assert len(reducer.buckets) == 2
        return [out["x"] * x, out["y"] + dist.all_reduce(y, comm)]

    assert max(check_vjp(build, [a, b])) < 1e-7
    assert max(check_double_vjp(build, [a, b])) < 1e-7
    x, y = gd.placeholder(a.shape, "float64"), gd.placeholder(b.shape, "float64")
    got = gd.compile(build(x, y), inputs=[x, y])(a, b)
    np.testing.assert_allclose(got[0], 0.5 * np.tanh(a) * b[:3] * a, rtol=1e-15)
    np.testing.assert_allclose(got[1], 0.5 * b * b + b, rtol=1e-15)


def test_exchange_shapes_and_errors():
    class Two(dist.SelfCommunicator):
        size = 2

    x = gd.placeholder((None, 6, 5), "float32")
    assert dist.all_gather(x, Two(), axis=1).shape == (None, 12, 5)
    assert dist.reduce_scatter(x, Two(), axis=-2).shape == (None, 3, 5)
    with pytest.raises(gd.ShapeError, match="does not split over 2 ranks"):
        dist.reduce_scatter(gd.placeholder((4, 5)), Two(), axis=1)
    with pytest.raises(dist.DistributedError, match="axis 3 is out of range"):
        dist.all_gather(x, Two(), axis=3)


class FakeNCCL:
    """cupyx.distributed.NCCLBackend at one rank, recording the calls (arrays are NumPy)."""

    def __init__(self):
        self.calls = []

    def all_reduce(self, src, dst, op="sum", stream=None):
        self.calls.append(("all_reduce", op, stream))
        dst[...] = src

    def broadcast(self, array, root=0, stream=None):
        self.calls.append(("broadcast", root, stream))

    def all_gather(self, src, dst, count, stream=None):
        self.calls.append(("all_gather", count, stream))
        dst[...] = src.reshape(dst.shape)

    def reduce_scatter(self, src, dst, count, op="sum", stream=None):
        self.calls.append(("reduce_scatter", count, stream))
        dst[...] = src.reshape(dst.shape)


def fake_cupy(monkeypatch):
    """A minimal CuPy for the NCCL communicator's stream and event calls (NumPy arrays)."""
    import types

    log = []

    class Event:
        def record(self, stream=None):
            log.append(("record", stream))

    class Stream:
        def __init__(self, non_blocking=False):
            self.name = "comm"

        def wait_event(self, event):
            log.append(("wait_event", self.name, event))

    compute = Stream()
    compute.name = "compute"
    cuda = types.SimpleNamespace(Event=Event, Stream=Stream, get_current_stream=lambda: compute)
    cupy = types.SimpleNamespace(cuda=cuda, empty=np.empty, empty_like=np.empty_like,
                                 ascontiguousarray=np.ascontiguousarray)
    distributed = types.SimpleNamespace(NCCLBackend=None)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(distributed=distributed))
    monkeypatch.setitem(sys.modules, "cupyx.distributed", distributed)
    return log


def test_nccl_communicator_queues_the_reduction_on_its_stream(monkeypatch):
    """The NCCL path at one rank with a fake CuPy (no GPU here): a start records
    "gradients ready" on the compute stream, makes the communication stream wait
    for it and queues ncclAllReduce there; the wait makes the compute stream
    wait for the reduction's event. A training step through it equals the plain one."""
    log = fake_cupy(monkeypatch)
    nccl = FakeNCCL()
    comm = dist.NCCLCommunicator(dist.SelfCommunicator(), nccl=nccl)
    buffer = np.arange(4.0)
    done = comm.allreduce_start(buffer)
    assert nccl.calls == [("all_reduce", "sum", comm.stream)]
    assert [e[0] for e in log] == ["record", "wait_event", "record"] and log[1][1] == "comm"
    comm.wait(done)
    assert log[-1] == ("wait_event", "compute", done)
    assert comm.allgather(buffer).shape == (1, 4) and comm.reduce_scatter(buffer[None]).shape == (4,)
    model, plain = cnn4(4, 16, width=4, dtype="float64"), cnn4(4, 16, width=4, dtype="float64")
    reducer = dist.GradientReducer(comm, bucket_bytes=4000)
    step = train_step(model, reduce_gradients=reducer)
    reference = train_step(plain)
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((4, 3, 16, 16)), rng.integers(0, 4, 4)
    assert step(images, labels) == reference(images, labels)
    for k in model.params:
        np.testing.assert_array_equal(model.params[k].value, plain.params[k].value)
    assert sum(c[0] == "all_reduce" for c in nccl.calls) == 1 + len(reducer.buckets) > 2


# --------------------------------------------------------------------------- two ranks
def test_two_ranks_at_batch_8_equal_one_process_at_batch_16():
    code, output, _ = mpirun(WORKER, "equivalence")
    assert code == 0, output
    found = {(r["model"], r["dtype"]): r for r in results(output)}
    assert set(found) == {(m, d) for m in ("cnn4", "alexnet-small") for d in ("float64", "float32")}, output
    for (model, dtype), r in found.items():
        tol = 1e-10 if dtype == "float64" else 1e-5
        assert r["loss"] < tol and r["weights"] < tol, r
        assert r["moved"] > 1e-3 and r["buckets"] > 1, r  # the steps did move the weights, over several buckets


def test_alexnet_towers_on_two_ranks_equal_the_groups_2_network():
    code, output, _ = mpirun(WORKER, "towers", timeout=240)
    assert code == 0, output
    (r,) = results(output)
    assert r["loss"] < 1e-12 and r["grads"] < 1e-10 and r["steps"] < 1e-10, r
    assert r["exchanges"] == 7  # norm1 and norm2 edges, conv3, fc6, fc7, fc8, the logits
    assert 2 * r["params"] == r["whole"]  # each rank holds half of every layer


def test_training_command_on_two_ranks_equals_one_process_and_resumes(tmp_path):
    one, two, split = tmp_path / "one", tmp_path / "two", tmp_path / "split"
    code, output, _ = mpirun("-m", "models.train", *TINY, "--dropout", "0", "--batch-size", "8", "--epochs", "2",
                             "--out", str(two))
    assert code == 0, output
    assert "data parallel over 2 ranks" in output and output.count("epoch   1") == 1  # rank 0 alone logs
    import models.train as train

    train.main(TINY + ["--dropout", "0", "--batch-size", "16", "--epochs", "2", "--out", str(one)])
    for a, b in zip(metrics(one), metrics(two)):
        for key in ("train_loss", "train_error", "val_loss", "val_error"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    w1, _ = load_checkpoint(one / "checkpoint.npz")
    w2, meta = load_checkpoint(two / "checkpoint.npz")
    assert meta["ranks"] == 2 and len(meta["dropout_rngs"]) == 2
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-5, atol=1e-6 * np.abs(w1[k]).max())
    assert not [f for f in os.listdir(two) if ".tmp" in f]

    # with dropout (a generator per rank): 1 epoch, then --resume to 3, equals 3 straight
    straight = tmp_path / "straight"
    for out, epochs, extra in ((straight, "3", []), (split, "1", []), (split, "3", ["--resume"])):
        code, output, _ = mpirun("-m", "models.train", *TINY, "--batch-size", "8", "--epochs", epochs,
                                 "--out", str(out), *extra)
        assert code == 0, output
    assert [r["train_loss"] for r in metrics(split)] == [r["train_loss"] for r in metrics(straight)]
    a, _ = load_checkpoint(straight / "checkpoint.npz")
    b, _ = load_checkpoint(split / "checkpoint.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # and another number of ranks picks the run up too
    result = train.main(TINY + ["--batch-size", "8", "--epochs", "4", "--out", str(split), "--resume"])
    assert result["status"] == "done" and len(metrics(split)) == 4


def test_a_mistake_in_the_arguments_is_one_error_line_under_mpiexec(tmp_path):
    code, output, _ = mpirun("-m", "models.train", *TINY, "--data", "bogus", "--out", str(tmp_path / "a"))
    assert code == 2 and output.count("error:") == 1 and "unknown data set spec 'bogus'" in output, output
    code, output, _ = mpirun("-m", "models.train", *TINY, "--epochs", "1", "--out", str(tmp_path / "b"))
    assert code == 0, output
    code, output, _ = mpirun("-m", "models.train", *TINY, "--epochs", "1", "--out", str(tmp_path / "b"))
    assert code == 2 and output.count("error:") == 1 and "already holds a run" in output, output


@pytest.mark.parametrize("fault", ["raise", "die"])
def test_a_failed_rank_stops_every_rank_and_keeps_the_checkpoint(tmp_path, fault):
    code, output, seconds = mpirun(WORKER, "train", fault, *TINY, "--batch-size", "8", "--epochs", "3",
                                   "--out", str(tmp_path), timeout=60)
    assert code != 0 and seconds < 30, output
    if fault == "raise":
        assert code == 2 and "UnboundLocalError" not in output, output
        assert "error: rank 1 of 2 failed: RuntimeError: a fault injected on rank 1" in output
    else:  # killed (SIGKILL): mpiexec names the process, which the start-up line maps to rank 1
        pid = re.search(r"1: pid (\d+) on", output).group(1)
        assert re.search(rf"PID {pid} RUNNING", output), output
    # rank 1 fails early in epoch 2; rank 0 may then still be writing epoch 1's
    # checkpoint when it is stopped, which leaves epoch 0's: either is whole
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["epoch"] in (0, 1) and arrays["conv1/w"].shape == (4, 3, 5, 5)
    assert len(metrics(tmp_path)) <= 1


@pytest.mark.parametrize("fault, message", [("width", "rank 1 differs from rank 0: width: 4 on rank 0, 8 on rank 1"),
                                            ("extra-param", "first difference: extra/w")])
def test_ranks_that_build_different_models_fail_at_start_up(tmp_path, fault, message):
    code, output, seconds = mpirun(WORKER, "train", fault, *TINY, "--batch-size", "8", "--epochs", "1",
                                   "--out", str(tmp_path), timeout=60)
    assert code != 0 and seconds < 30, output
    assert code == 2 and "the ranks do not train the same model" in output and message in output, output
    assert not os.path.exists(tmp_path / "metrics.jsonl")


def start_training(tmp_path, *extra):
    """``mpiexec -n 2 python -m models.train`` on the tiny model for 500 epochs, its output piped."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONUNBUFFERED", None)  # the command must flush its own lines (CI may not set it)
    return subprocess.Popen([find_mpiexec(), "-n", "2", sys.executable, "-m", "models.train", *TINY, "--batch-size",
                             "8", "--epochs", "500", "--out", str(tmp_path), *extra], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def interrupt_after_epoch_2(proc, send):
    """Wait for the line of epoch 2, call ``send(lines so far)``, and return (seconds to the end, output)."""
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("epoch   2"):
                break
        send(lines)
        start = time.perf_counter()
        lines.append(proc.stdout.read())
        proc.wait(timeout=30)
        return time.perf_counter() - start, "".join(lines)
    finally:
        proc.kill()
        proc.stdout.close()


def check_resumes(tmp_path):
    _, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    assert 2 <= meta["epoch"] < 500
    code, output, _ = mpirun("-m", "models.train", *TINY, "--batch-size", "8", "--epochs", str(meta["epoch"] + 1),
                             "--out", str(tmp_path), "--resume")
    assert code == 0 and f"after epoch {meta['epoch']}" in output, output
    assert len(metrics(tmp_path)) == meta["epoch"] + 1


def test_ctrl_c_under_mpiexec_stops_every_rank_together_and_the_run_resumes(tmp_path):
    import signal

    proc = start_training(tmp_path)
    # what Ctrl-C sends; mpiexec passes it on to every rank, each somewhere else in its step
    seconds, output = interrupt_after_epoch_2(proc, lambda lines: proc.send_signal(signal.SIGINT))
    assert seconds < 30 and proc.returncode == 130, output
    assert "continue with the same command plus --resume" in output
    assert "MPI_Abort" not in output and "did not stop together" not in output, output  # stopped after one step
    check_resumes(tmp_path)


def test_a_sigint_to_one_rank_alone_stops_every_rank(tmp_path):
    import signal

    proc = start_training(tmp_path)

    def interrupt_rank_1(lines):
        pids = re.search(r"ranks 0: pid (\d+) on \S+, 1: pid (\d+)", "".join(lines))
        assert pids, "".join(lines)
        os.kill(int(pids.group(2)), signal.SIGINT)

    seconds, output = interrupt_after_epoch_2(proc, interrupt_rank_1)
    assert seconds < 30 and proc.returncode == 130, output
    assert "interrupted:" in output and "MPI_Abort" not in output, output  # rank 0 heard of it and said it
    check_resumes(tmp_path)
