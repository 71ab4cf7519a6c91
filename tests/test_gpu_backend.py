"""The CuPy backend's first-use check, its one visible fallback, and a step that
never waits for the device (all on the CuPy stand-in, which counts transfers)."""
import warnings

import numpy as np
import pytest

import cupy_standin
import graphdiff as gd
from graphdiff import backends
from graphdiff.kernels import device


class DynamicLibNotFoundError(RuntimeError):
    """As cuda.pathfinder's, which CuPy 14 raises where a CUDA library is missing."""


def _fresh_backend():
    backends._CACHE.pop("cupy", None)
    return gd.get_backend("cupy")


def test_the_check_runs_a_fused_kernel_and_a_matmul(cupy_standin_module):
    ledger = cupy_standin.ledger()
    ledger.reset()
    assert _fresh_backend().name == "cupy"
    names = [a["name"] for kind, _, a in ledger.events if kind == "launch"]
    assert any("graphdiff_backend_check" in n for n in names) and ledger.totals()["flops"] > 0, names


def test_missing_nvrtc_names_the_package_to_install(cupy_standin_module, monkeypatch):
    cupy = cupy_standin_module

    def fuse(**kwargs):
        def wrap(f):
            def run(*args):
                raise DynamicLibNotFoundError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12": No such file')
            return run
        return wrap

    monkeypatch.setattr(cupy, "fuse", fuse)
    with pytest.raises(gd.BackendError, match=r"cannot load the CUDA library nvrtc .*libnvrtc\.so.*"
                                              r"pip install nvidia-cuda-nvrtc\b.*'graphdiff\[gpu-cuda13\]'"):
        _fresh_backend()  # the stand-in says CUDA 13: the CUDA 13 wheel and extra


def test_missing_cublas_on_cuda_12_names_the_cu12_wheel(cupy_standin_module, monkeypatch):
    cupy = cupy_standin_module

    def matmul(*args, **kwargs):
        raise ImportError("libcublas.so.12: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(cupy, "matmul", matmul)
    monkeypatch.setattr(cupy.cuda.runtime, "runtimeGetVersion", lambda: 12090)
    with pytest.raises(gd.BackendError, match=r"CUDA library cublas .*pip install nvidia-cublas-cu12\b.*"
                                              r"'graphdiff\[gpu\]'"):
        _fresh_backend()
    assert "cupy" not in gd.available_backends()


def test_another_first_kernel_failure_and_wrong_values_are_backend_errors(cupy_standin_module, monkeypatch):
    cupy = cupy_standin_module

    def matmul(*args, **kwargs):
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime")

    with monkeypatch.context() as m:
        m.setattr(cupy, "matmul", matmul)
        with pytest.raises(gd.BackendError, match=r"failed its first kernel \(RuntimeError: cudaErrorInsufficient"
                                                  r".*driver.*graphdiff\[gpu\]"):
            _fresh_backend()
    real = cupy.matmul
    monkeypatch.setattr(cupy, "matmul", lambda a, b, **kw: real(a, b, **kw) + np.float32(1))
    with pytest.raises(gd.BackendError, match="wrong values"):
        _fresh_backend()


@pytest.mark.parametrize("library, major, package", [("nvrtc", 12, "nvidia-cuda-nvrtc-cu12"),
                                                     ("nvrtc", 13, "nvidia-cuda-nvrtc"),
                                                     ("cublas", 13, "nvidia-cublas"),
                                                     ("nccl", 12, "nvidia-nccl-cu12"),
                                                     ("nccl", 13, "nvidia-nccl-cu13")])
def test_library_packages(library, major, package):
    assert backends.library_package(library, major) == package


def _sgd_program():
    rng = np.random.default_rng(0)
    w = gd.variable(rng.standard_normal((4, 3)).astype(np.float32), name="w")
    v = gd.variable(np.zeros((4, 3), np.float32), name="v")
    x = gd.placeholder((5, 4), name="x")
    (g,) = gd.grad(gd.sum(gd.tanh(x @ w)), [w])
    new_v = v * 0.9 - 0.01 * (g + 5e-4 * w)
    return w, x, [(v, new_v), (w, w + new_v)]


def test_the_in_place_fallback_warns_once_with_its_cause(cupy_standin_module, monkeypatch):
    cupy = cupy_standin_module
    calls = []

    def _program_into(xp, *spec):
        def kernel(*args):
            calls.append(1)
            raise TypeError("this fusion takes no output arguments")
        return kernel

    monkeypatch.setattr(device, "_program_into", _program_into)
    device.clear()
    xs = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    w, x, updates = _sgd_program()
    step = gd.compile(gd.sum(x @ w), [x], updates=updates, backend="cupy")
    with pytest.warns(RuntimeWarning, match=r"in-place fused updates are off for cupy .*graphdiff_program_into "
                                            r"failed with TypeError: this fusion takes no output arguments"):
        step(xs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the next steps copy without a word
        step(xs)
    assert len(calls) == 1
    got = cupy.asnumpy(w.value)
    w2, x2, updates2 = _sgd_program()
    cpu = gd.compile(gd.sum(x2 @ w2), [x2], updates=updates2, backend="numpy")
    cpu(xs)
    cpu(xs)
    np.testing.assert_allclose(got, w2.value, rtol=1e-6, atol=1e-7)


def test_a_step_on_device_inputs_never_waits_for_the_device(cupy_standin_module):
    """Images and labels already on the device: no upload, no read-back until the
    loss comes home at the end (the labels' range is checked on the device)."""
    cupy = cupy_standin_module
    from models.alexnet import alexnet_small, train_step

    step = train_step(alexnet_small(num_classes=10, image_size=32, seed=0), lr=0.01, backend="cupy")
    rng = np.random.default_rng(0)
    images = cupy.asarray(rng.standard_normal((4, 3, 32, 32), dtype=np.float32))
    labels = cupy.asarray(rng.integers(0, 10, 4))
    step(images, labels)
    ledger = cupy_standin.ledger()
    ledger.reset()
    loss = step(images, labels)
    t = ledger.totals()
    assert np.isfinite(loss)
    assert t["h2d"] == 0, ledger.sites_of("h2d")
    assert t["syncs_before_end"] == 0, ledger.sites_of("sync")
    last_launch = max(i for i, (kind, _, _) in enumerate(ledger.events) if kind == "launch")
    early = [site for i, (kind, site, _) in enumerate(ledger.events) if kind == "d2h" and i < last_launch]
    assert not early, early  # no read-back while work is still queued


def test_labels_on_the_device_out_of_range_make_the_loss_nan_from_the_host_raise(cupy_standin_module):
    cupy = cupy_standin_module
    logits = gd.placeholder((None, 3), name="logits")
    labels = gd.placeholder((None,), "int64", name="labels")
    f = gd.compile(gd.softmax_cross_entropy(logits, labels), inputs=[logits, labels], backend="cupy")
    x = np.random.default_rng(2).standard_normal((3, 3)).astype(np.float32)
    good = np.array([0, 2, 1])
    want = gd.compile(gd.softmax_cross_entropy(logits, labels), inputs=[logits, labels], backend="numpy")(x, good)
    np.testing.assert_allclose(f(cupy.asarray(x), cupy.asarray(good)), want, rtol=1e-6)
    for bad in ([0, 3, 1], [-1, 0, 1]):
        ledger = cupy_standin.ledger()
        ledger.reset()
        assert np.isnan(f(cupy.asarray(x), cupy.asarray(np.array(bad))))
        assert ledger.totals()["syncs_before_end"] == 0
        with pytest.raises(gd.InputError, match=r"labels must lie in \[0, 3\)"):
            f(x, np.array(bad))  # host labels: checked before the upload


def test_gpu_tests_run_on_the_standin_wherever_the_gpu_is_not_usable(monkeypatch):
    def decide(env, why):
        monkeypatch.setattr(cupy_standin, "_RUN_ON", [])
        monkeypatch.setattr(cupy_standin, "_gpu_unusable", lambda: why)
        if env is None:
            monkeypatch.delenv("GRAPHDIFF_GPU_TESTS", raising=False)
        else:
            monkeypatch.setenv("GRAPHDIFF_GPU_TESTS", env)
        return cupy_standin.gpu_tests_run_on()

    no_gpu = "backend 'cupy': CuPy is installed but no usable CUDA GPU was found"
    assert decide(None, no_gpu) == "standin"  # CuPy installed (as in CI) or not: the stand-in, no skip
    assert no_gpu in cupy_standin.gpu_tests_reason()
    assert decide(None, None) == "gpu"
    assert cupy_standin.gpu_tests_reason() == "gpu tests: on the GPU (real CuPy)"
    monkeypatch.setattr(cupy_standin, "_RUN_ON", [])  # pytest's header asks before any test: it decides
    monkeypatch.setattr(cupy_standin, "_gpu_unusable", lambda: no_gpu)
    assert cupy_standin.gpu_tests_reason() == f"gpu tests: on the CuPy stand-in ({no_gpu})"
    assert decide("standin", None) == "standin"
    with pytest.raises(RuntimeError, match="GRAPHDIFF_GPU_TESTS=gpu, but the GPU is not usable: backend 'cupy'"):
        decide("gpu", no_gpu)  # a GPU session fails rather than passing on the stand-in
    with pytest.raises(RuntimeError, match="auto, gpu or standin"):
        decide("yes", None)


def test_why_the_gpu_is_not_usable_here_agrees_with_the_backend():
    why = cupy_standin._gpu_unusable()
    assert (why is None) == ("cupy" in gd.available_backends())
    if why is not None and cupy_standin.real_cupy_importable():
        assert why.startswith("backend 'cupy'")  # CuPy installed without a usable GPU, as in CI
