"""The CuPy backend agrees with NumPy: forward, VJP and double VJP of every op,
and a training step. Every test here is marked ``gpu``: it runs on the GPU with
``pytest -m gpu`` on a machine with one, and on the CuPy stand-in everywhere
else (CI: CuPy installed, no GPU); it never skips. Values stay out of float32's
subnormal range, which the GPU flushes to zero (CuPy compiles with
``-ftz=true``)."""
import importlib.util
import os

import numpy as np
import pytest

import graphdiff as gd

pytestmark = pytest.mark.gpu

RNG = np.random.default_rng(0)
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _benchmark(name):
    """A script of benchmarks/ as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _distinct(*shape):
    """Tie-free values (pooling routes to a unique maximum)."""
    return (RNG.permutation(int(np.prod(shape))).reshape(shape) * 0.01).astype(np.float32)


# name: (build(*tensors) -> tensor, input arrays)
CASES = {
    "add_broadcast": (lambda a, b: a + b, [_x(3, 4), _x(4)]),
    "mul_div": (lambda a, b: a * b / (b * b + 1.0), [_x(3, 4), _x(3, 1)]),
    "unary": (lambda a: gd.tanh(a) + gd.sigmoid(a) + gd.exp(a * 0.1) + gd.relu(a), [_x(5, 6)]),
    "log_sqrt": (lambda a: gd.log(a * a + 1.0) + gd.sqrt(a * a + 1.0), [_x(5, 6)]),
    "reductions": (lambda a: gd.sum(a, 1) + gd.mean(a, 1) + gd.max(a, 1), [_x(4, 7)]),
    "matmul": (lambda a, b: gd.matmul(a, b), [_x(2, 3, 4), _x(4, 5)]),
    "shape_ops": (lambda a: gd.transpose(gd.reshape(a, (4, -1)))[1:, ::2], [_x(2, 2, 6)]),
    "concat": (lambda a, b: gd.concatenate([a, b], axis=1), [_x(2, 3), _x(2, 2)]),
    "softmax": (lambda a: gd.softmax(a) + gd.log_softmax(a), [_x(4, 10)]),
    "conv2d": (lambda x, w, b: gd.conv2d(x, w, b, stride=2, padding=1, groups=2), [_x(2, 4, 9, 9), _x(6, 2, 3, 3), _x(6)]),
    "conv2d_alexnet1": (lambda x, w: gd.conv2d(x, w, stride=4), [_x(2, 3, 35, 35), _x(8, 3, 11, 11)]),
    # stride 1, O <= 2C: compiled as conv2d_relu and conv2d_backward (AlexNet conv3-5)
    "conv2d_stride1": (lambda x, w, b: gd.relu(gd.conv2d(x, w, b, padding=1, groups=2)),
                       [_x(2, 4, 7, 7), _x(6, 2, 3, 3), _x(6)]),
    "max_pool2d": (lambda x: gd.max_pool2d(x, 3, 2, padding=1), [_distinct(2, 3, 9, 9)]),
    "lrn": (lambda x: gd.lrn(x, 5, 1e-2, 0.75, 2.0), [_x(2, 8, 5, 5)]),
    "lrn_within": (lambda x: gd.lrn_within(x, 3, 1e-2, 0.75, 2.0), [_x(2, 3, 6, 6)]),
    "normalize_cross_map": (lambda x: gd.normalize_cross_map(x), [np.abs(_x(2, 5, 3, 3)) + 1.0]),
}


def _run_both(build, arrays):
    """Forward, VJP and double VJP on both backends, as host arrays."""
    results = {}
    for backend in ("numpy", "cupy"):
        xs = [gd.placeholder(a.shape, a.dtype, name=f"in{i}") for i, a in enumerate(arrays)]
        y = build(*xs)
        w = gd.placeholder(y.shape, y.dtype, name="w")
        objective = gd.sum(y * w)
        grads = gd.grad(objective, xs)
        second = gd.grad(gd.sum(grads[0] * grads[0]), xs)
        f = gd.compile([y] + grads + second, inputs=xs + [w], backend=backend)
        w_value = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        results[backend] = [np.asarray(v) for v in f(*arrays, w_value)]
    return results


def _subnormals(a):
    """How many float32 values of ``a`` are subnormal (0 < |v| < 2^-126). CuPy compiles
    its kernels with ``-ftz=true``: on the GPU such values (inputs and results) flush
    to zero, on NumPy they do not, so the backends are compared away from that range."""
    a = np.asarray(a)
    if a.dtype != np.float32:
        return 0
    tiny = np.finfo(np.float32).tiny
    return int(np.count_nonzero((a != 0) & (np.abs(a) < tiny)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_cupy_matches_numpy(name):
    build, arrays = CASES[name]
    assert not any(_subnormals(a) for a in arrays)
    results = _run_both(build, arrays)
    assert not any(_subnormals(r) for r in results["numpy"])  # away from -ftz=true's range (see _subnormals)
    for cpu, gpu in zip(results["numpy"], results["cupy"]):
        assert isinstance(gpu, np.ndarray)  # fetched outputs come back to the host
        np.testing.assert_allclose(gpu, cpu, rtol=2e-3, atol=2e-4)


def test_values_stay_on_device_and_variables_live_there():
    import cupy

    w = gd.variable(_x(4, 3), name="w")
    x = gd.placeholder((None, 4), name="x")
    loss = gd.sum(gd.tanh(x @ w))
    (g,) = gd.grad(loss, [w])
    step = gd.compile(loss, inputs=[x], updates=[(w, w - 0.1 * g)], backend="cupy")
    before = np.array(w.value)
    step(_x(5, 4))
    assert isinstance(w.value, cupy.ndarray)
    assert not np.allclose(cupy.asnumpy(w.value), before)


def test_alexnet_small_trains_on_gpu():
    from models.alexnet import alexnet_small, train_step
    from models.data import load_dataset

    data = load_dataset("synthetic", image_size=32, seed=0)
    model = alexnet_small(num_classes=data.num_classes, image_size=32, seed=0)
    step = train_step(model, lr=0.01, backend="cupy")
    x, y = data.train_images[:32], data.train_labels[:32]
    losses = [float(step(x, y)) for _ in range(8)]
    assert losses[-1] < losses[0]


def test_nan_and_minus_inf_pooling_and_the_relu_switch_agree_with_numpy():
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 9)).astype(np.float32)
    x[0, 0, 2, 3] = x[1, 2, 5, 5] = np.nan
    x[0, 1, :4, :4] = -np.inf
    results = {}
    for backend in ("numpy", "cupy"):
        xs = gd.placeholder(x.shape, "float32", name="x")
        pooled = gd.max_pool2d(xs, 3, 2, padding=1)
        (g,) = gd.grad(gd.sum(pooled), [xs])
        (gr,) = gd.grad(gd.sum(gd.log(gd.relu(xs))), [xs])  # inf at the closed switches: 0, not NaN
        with np.errstate(divide="ignore", invalid="ignore"):
            results[backend] = gd.compile([g, gr], [xs], backend=backend)(x)
    for a, b in zip(results["numpy"], results["cupy"]):
        np.testing.assert_array_equal(a, b)
    assert results["cupy"][0].sum() == 2 * 3 * 5 * 5  # one unit per window, none lost


def test_a_cuda_dlpack_array_is_fed_to_a_gpu_program_without_a_copy(dlpack_only):
    import cupy

    a = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    shared = gd.from_dlpack(dlpack_only(a))
    assert isinstance(shared, cupy.ndarray) and shared.data.ptr == a.data.ptr
    x = gd.placeholder((None, 4), "float32", name="x")
    f = gd.compile(x * 2.0, [x], backend="cupy")
    assert f._check_input(x, dlpack_only(a)).data.ptr == a.data.ptr  # the program reads a's memory
    np.testing.assert_array_equal(f(dlpack_only(a)), 2 * np.arange(12, dtype=np.float32).reshape(3, 4))


# --------------------------------------------------------------------------- the review's fixes
def test_numpy_program_takes_device_arrays_and_variables_last_trained_on_the_gpu():
    import cupy

    w = gd.variable(_x(4, 3), name="w")
    x = gd.placeholder((None, 4), name="x")
    loss = gd.sum(gd.tanh(x @ w))
    (g,) = gd.grad(loss, [w])
    gd.compile(loss, inputs=[x], updates=[(w, w - 0.1 * g)], backend="cupy")(_x(5, 4))
    assert isinstance(w.value, cupy.ndarray)
    trained = cupy.asnumpy(w.value)
    xs = _x(5, 4)
    on_cpu = gd.compile(gd.tanh(x @ w), inputs=[x], backend="numpy")
    got = on_cpu(cupy.asarray(xs))  # a device input, and a variable whose value is on the device
    assert isinstance(got, np.ndarray) and isinstance(w.value, np.ndarray)
    np.testing.assert_allclose(got, np.tanh(xs @ trained), rtol=1e-5, atol=1e-6)


def test_save_checkpoint_takes_device_arrays(tmp_path):
    import cupy

    from graphdiff.checkpoint import load_checkpoint, save_checkpoint

    value = _x(3, 2)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": cupy.asarray(value)}, {"epoch": 1})
    arrays = load_checkpoint(path)[0]
    np.testing.assert_array_equal(arrays["w"], value)


def test_labels_out_of_range_raise_before_the_step_runs():
    logits = gd.placeholder((None, 3), name="logits")
    labels = gd.placeholder((None,), "int64", name="labels")
    f = gd.compile(gd.softmax_cross_entropy(logits, labels), inputs=[logits, labels], backend="cupy")
    with pytest.raises(gd.InputError, match=r"input 'labels': softmax_cross_entropy: labels must lie in \[0, 3\), "
                                            r"got \[0, 3\]"):
        f(_x(2, 3), np.array([0, 3]))
    assert np.isfinite(f(_x(2, 3), np.array([0, 2])))


def test_dropout_masks_are_drawn_on_the_device_and_replay_from_the_generator_state():
    import cupy

    from graphdiff.kernels import device

    x = gd.placeholder((64, 100), name="x")
    f = gd.compile(gd.dropout(x, 0.25), [x], backend="cupy", seed=3)
    value = np.ones((64, 100), np.float32)
    state = f.get_rng_state()
    first, second = f(value), f(value)
    assert set(np.unique(first)) == {0.0, np.float32(1 / 0.75)}
    assert 0.22 < (first == 0).mean() < 0.28 and 0.22 < (second == 0).mean() < 0.28
    assert (first != second).any()  # a fresh mask each run
    f.set_rng_state(state)
    np.testing.assert_array_equal(f(value), first)  # the generator's state replays the masks
    # The hash is the same function on NumPy: the kernel gives the same bits on both modules.
    keys = np.array([12345, 678], np.uint64)
    np.testing.assert_array_equal(cupy.asnumpy(device.dropout_mask(cupy, (7, 9), np.float32, 0.5, keys)),
                                  device.dropout_mask(np, (7, 9), np.float32, 0.5, keys))


@pytest.mark.parametrize("geometry", [((3, 3), (2, 2), (0, 0), (11, 11)), ((3, 3), (2, 2), (1, 1), (9, 8)),
                                      ((2, 2), (3, 3), (0, 0), (8, 8)), ((3, 2), (1, 2), (1, 0), (6, 7))])
def test_max_pool_gradient_gather_equals_the_scatter_and_repeats_exactly(geometry):
    import cupy

    from graphdiff.kernels import pool

    size, stride, padding, (H, W) = geometry
    x = _distinct(2, 3, H, W)
    y, am = pool.max_pool2d_forward(np, x, size, stride, padding)
    dy = _x(*y.shape)
    want = pool.max_pool2d_grad(np, dy, am, (H, W), size, stride, padding)
    runs = [cupy.asnumpy(pool.gpu.max_pool2d_grad(cupy, cupy.asarray(dy), cupy.asarray(am), (H, W), size, stride,
                                                padding)) for _ in range(2)]
    np.testing.assert_allclose(runs[0], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(runs[0], runs[1])
    y_dev, am_dev = pool.gpu.max_pool2d_forward(cupy, cupy.asarray(x), size, stride, padding, y.shape[2:], am.dtype)
    np.testing.assert_array_equal(cupy.asnumpy(y_dev), y)
    np.testing.assert_array_equal(cupy.asnumpy(am_dev), am)


def test_batched_matmul_with_transposed_operands():
    import cupy

    from graphdiff.kernels.parallel import gemm

    a, b = _x(2, 5, 4), _x(2, 6, 4)
    got = gemm(cupy, cupy.asarray(a), cupy.asarray(b).transpose(0, 2, 1))
    np.testing.assert_allclose(cupy.asnumpy(got), a @ b.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    out = cupy.empty((2, 5, 6), np.float32).transpose(0, 2, 1)  # a strided output
    gemm(cupy, cupy.asarray(b), cupy.asarray(a).transpose(0, 2, 1), out=out)
    np.testing.assert_allclose(cupy.asnumpy(out), b @ a.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)


def test_alexnet_step_matches_numpy():
    """Two SGD steps of a small AlexNet 2012 (the real layer geometry at 67x67) on both
    backends: losses, conv2's input gradient and the updated weights agree."""
    compare = _benchmark("gpu_check").compare
    report = compare(image_size=67, batch=2, num_classes=10, steps=2)
    assert report["ok"], report


def test_gpu_benchmark_runs_its_engine_side():
    """What benchmarks/alexnet_gpu.py runs of graphdiff (on a GPU it also times PyTorch)."""
    times = _benchmark("alexnet_gpu").main(["--batch", "2", "--image-size", "67", "--classes", "10", "--reps", "1",
                                            "--warmup", "1", "--engine-only"])
    assert len(times["graphdiff"]) == 1


def test_gpu_first_step_benchmark_runs():
    """benchmarks/gpu_first_step.py, which the GPU session runs for the first step's compile time."""
    report = _benchmark("gpu_first_step").main(["--batch", "2", "--image-size", "67", "--classes", "10"])
    assert report["versions"]["cupy"] and report["fused_functions"] >= 10, report
    assert report["first_step_s"] > 0 and report["second_step_s"] > 0


def test_resumed_training_equals_an_uninterrupted_run_on_the_gpu():
    """Dropout keys come from the program's generator and the pooling gradient is a
    gather, so three steps equal one step, a checkpoint's state, and two more."""
    from models.alexnet import alexnet_small, train_step

    rng = np.random.default_rng(5)
    images = rng.standard_normal((4, 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, 4)

    def fresh():
        return train_step(alexnet_small(num_classes=10, image_size=32, seed=0), lr=0.01, backend="cupy", seed=1)

    straight = fresh()
    want = [straight(images, labels) for _ in range(3)]
    first = fresh()
    got = [first(images, labels)]
    state, rng_state = first.state_arrays(), first.get_rng_state()
    resumed = fresh()
    resumed.load_state_arrays(state)
    resumed.set_rng_state(rng_state)
    got += [resumed(images, labels) for _ in range(2)]
    assert got == want


@pytest.mark.parametrize("name", ["max_pool2d", "lrn", "conv2d_stride1", "mul_div"])
def test_cupy_matches_numpy_unfused(name):
    """The ops as written (no fusion: the argmax op, ReLU and each elementwise op alone)."""
    build, arrays = CASES[name]
    results = {}
    for backend in ("numpy", "cupy"):
        xs = [gd.placeholder(a.shape, a.dtype, name=f"in{i}") for i, a in enumerate(arrays)]
        y = build(*xs)
        grads = gd.grad(gd.sum(y * y), xs)
        second = gd.grad(gd.sum(grads[0] * grads[0]), xs)
        f = gd.compile([y] + grads + second, inputs=xs, backend=backend, fuse=False)
        results[backend] = f(*arrays)
    for cpu, gpu in zip(results["numpy"], results["cupy"]):
        np.testing.assert_allclose(gpu, cpu, rtol=2e-3, atol=2e-4)
