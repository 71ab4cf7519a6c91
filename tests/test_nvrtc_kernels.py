"""Every fused kernel of the CuPy backend compiles with NVRTC, without a GPU.

The kernels an AlexNet 2012 training step and the per-op GPU tests
(tests/test_gpu.py's cases, forward, VJP and double VJP, fused and not) hand
out are recorded under the CuPy stand-in, then traced by the real ``cupy.fuse``
(CuPy's own code generation) and compiled by NVRTC for ``sm_80`` (A100) and
``sm_90`` (H100) in a separate process (see tests/nvrtc_compile.py). A kernel
that does not compile fails the test with the compiler's message. Needs the
``test`` extra's CuPy and NVRTC wheels (no GPU, no driver); fails under CI
where they are missing.
"""
import numpy as np
import pytest

import cupy_standin
import graphdiff as gd
import needs
import nvrtc_compile

ARCHS = ("80", "90")
INSTALL = "pip install -e '.[test]' (cupy-cuda12x and nvidia-cuda-nvrtc-cu12)"


def _compile(records, tmp_path):
    rc, info, stderr = nvrtc_compile.compile_in_subprocess(records, ARCHS, str(tmp_path))
    if rc == 3:
        needs.missing("CuPy with NVRTC", INSTALL)
    assert rc == 0, stderr[-4000:]
    return info


def _alexnet_step():
    from models.alexnet import alexnet, train_step

    rng = np.random.default_rng(0)
    model = alexnet(num_classes=10, image_size=67, seed=0)  # the 2012 layer geometry, small images
    step = train_step(model, lr=0.01, backend="cupy", seed=0)
    step(rng.standard_normal((2, 3, 67, 67), dtype=np.float32), rng.integers(0, 10, 2))


def _per_op_cases():
    import test_gpu

    for name, (build, arrays) in sorted(test_gpu.CASES.items()):
        test_gpu._run_both(build, arrays)
    for fuse in (True, False):  # the ops alone, and elementwise chains fused
        x = gd.placeholder((64, 100), name="x")
        labels = gd.placeholder((64,), "int64", name="labels")
        loss = gd.softmax_cross_entropy(gd.dropout(x, 0.25) * 2.0, labels)
        (g,) = gd.grad(loss, [x])
        gd.compile([loss, g], [x, labels], backend="cupy", fuse=fuse, seed=1)(
            np.ones((64, 100), np.float32), np.arange(64) % 100)


def test_every_fused_kernel_compiles_with_nvrtc_for_sm80_and_sm90(tmp_path):
    with cupy_standin.active(), nvrtc_compile.recording() as records:
        _alexnet_step()
        _per_op_cases()
    names = {r[0].__name__ for r in records}
    # what the step needs on a GPU: fused chains and in-place SGD updates, pooling with
    # its argmax and gather gradient, LRN, ReLU's switch, dropout's mask, the labels' guard
    assert {"_program", "_program_into", "_pool_with_argmax", "_pool_gather", "_lrn_scale", "_lrn_normalize",
            "_lrn_backward", "_relu_grad", "_bias_relu", "_dropout_mask", "_label_guard"} <= names, names
    info = _compile(records, tmp_path)
    results = info["results"]
    failed = [r for r in results if not r["ok"]]
    assert not failed, "\n\n".join(f"{r['kernel']} for sm_{r['arch']}:\n{r['error']}" for r in failed[:5])
    assert {r["arch"] for r in results} == set(ARCHS)
    assert len(results) == len(ARCHS) * len(records)  # none left out (no empty launch here)
    assert all(r["bytes"] > 0 for r in results)


def test_a_kernel_that_cannot_compile_fails_with_the_compilers_message(tmp_path):
    from graphdiff.kernels import device

    records = [(nvrtc_compile._broken, (np.float32,), (("array", (4, 5), (20, 4), "<f4"),)),
               (device._relu_grad, (np.float32,),
                (("array", (4, 5), (20, 4), "<f4"), ("array", (4, 5), (20, 4), "<f4")))]
    info = _compile(records, tmp_path)
    by_kernel = {}
    for r in info["results"]:
        by_kernel.setdefault(r["kernel"].split("(")[0], []).append(r)
    assert all(r["ok"] for r in by_kernel["graphdiff_relu_grad"])  # the rest still compiles
    broken = by_kernel["graphdiff_broken"]
    assert [r["arch"] for r in broken] == list(ARCHS)
    for r in broken:
        assert not r["ok"]
        assert "no_such_device_function" in r["error"] and "is undefined" in r["error"], r["error"]
