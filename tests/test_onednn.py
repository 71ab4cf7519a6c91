"""The oneDNN convolution kernels (graphdiff/kernels/onednn.py) and the choice
between them and NumPy's (graphdiff/kernels/choice.py).

oneDNN runs float32 only, so its checks compare float32 programs forced onto
oneDNN (``kernels="onednn"``) with float64 programs on NumPy's kernels (which
tests/test_cnn_ops.py checks by finite differences and naive loops): the
forward pass, the VJP and the double VJP (grad of grad: the gradient ops stay
graph ops, only their kernels change), over hypothesis-drawn geometries.
Needs the ``onednn`` extra; skipped without it, except under ``CI``.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import graphdiff as gd
from graphdiff.kernels import choice, onednn
from test_cnn_ops import ref_conv2d

pytestmark = pytest.mark.skipif(not onednn.available() and not os.environ.get("CI"),
                                reason=f"needs oneDNN: {onednn.INSTALL} ({onednn.load_error()})")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def examples(n):
    return settings(max_examples=n, deadline=None, derandomize=True)


def close(got, want, what, rtol=2e-4):
    """float32 against float64: errors relative to the array's scale."""
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(np.asarray(got, np.float64) - want).max()) / scale
    assert err < rtol, f"{what}: max error {err:.2e} of scale {scale:.3g}"


def conv_gradients(dtype, x_shape, w_shape, stride, padding, groups, bias, relu):
    """The forward output, its VJP (x, w, b) and the double VJP (x, w, dy) of a
    convolution, as one program's outputs; placeholders ``x, w, b, dy, vx, vw``."""
    O = w_shape[0]
    ph = [gd.placeholder(s, dtype=dtype, name=n) for n, s in
          [("x", x_shape), ("w", w_shape), ("b", (O,))]]
    x, w, b = ph
    y = gd.conv2d(x, w, b if bias else None, stride=stride, padding=padding, groups=groups)
    if relu:
        y = gd.relu(y)
    dy = gd.placeholder(y.shape, dtype=dtype, name="dy")
    gx, gw, gb = gd.grad(gd.sum(y * dy), [x, w, b])
    vx, vw = gd.placeholder(x_shape, dtype=dtype, name="vx"), gd.placeholder(w_shape, dtype=dtype, name="vw")
    hx, hw, hdy = gd.grad(gd.sum(gx * vx) + gd.sum(gw * vw), [x, w, dy])
    return [y, gx, gw, gb, hx, hw, hdy], [x, w, b, dy, vx, vw]


def run_both(x_shape, w_shape, stride, padding, groups, bias, relu, seed=0):
    """Values of :func:`conv_gradients` in float32 on oneDNN and in float64 on NumPy,
    and the oneDNN program."""
    rng = np.random.default_rng(seed)
    results, program = {}, None
    arrays = None
    for dtype, mode in (("float64", "numpy"), ("float32", "onednn")):
        outs, ins = conv_gradients(dtype, x_shape, w_shape, stride, padding, groups, bias, relu)
        if arrays is None:
            arrays = [rng.standard_normal(p.shape) for p in ins]
        f = gd.compile(outs, inputs=ins, kernels=mode)
        results[mode] = [np.asarray(v, np.float64) for v in f(*[a.astype(dtype) for a in arrays])]
        program = f
    return results["onednn"], results["numpy"], program, arrays


geometry = st.tuples(
    st.integers(1, 3),                 # batch
    st.integers(1, 3),                 # channels per group
    st.integers(1, 3),                 # filters per group
    st.integers(1, 2),                 # groups
    st.integers(1, 5), st.integers(1, 4),   # kernel height, width
    st.integers(1, 3), st.integers(1, 2),   # stride h, w
    st.integers(0, 2), st.integers(0, 1),   # padding h, w
    st.integers(0, 6), st.integers(0, 5),   # input size beyond the smallest that fits
    st.booleans(), st.booleans())      # bias, relu


@examples(60)
@given(geometry)
@example((2, 3, 4, 2, 3, 3, 1, 1, 1, 1, 3, 3, True, True))   # AlexNet conv4-like: 3x3, pad 1, two groups
@example((2, 3, 2, 1, 5, 5, 1, 1, 2, 2, 4, 4, False, True))  # conv2-like: 5x5, pad 2
@example((1, 2, 3, 1, 4, 4, 3, 3, 0, 0, 2, 1, True, False))  # strides that skip the last rows and columns
@example((3, 1, 2, 1, 1, 1, 2, 1, 0, 0, 3, 2, True, True))   # 1x1 kernel, strided
def test_forward_vjp_and_double_vjp_match_numpy(params):
    N, Cg, Og, g, kh, kw, sh, sw, ph, pw, eh, ew, bias, relu = params
    x_shape = (N, Cg * g, max(1, kh - 2 * ph) + eh, max(1, kw - 2 * pw) + ew)
    w_shape = (Og * g, Cg, kh, kw)
    got, want, program, arrays = run_both(x_shape, w_shape, (sh, sw), (ph, pw), g, bias, relu)
    names = ["y", "dE/dx", "dE/dw", "dE/db", "d2/dx", "d2/dw", "d2/ddy"]
    for name, a, b in zip(names, got, want):
        close(a, b, name)
    assert set(program.kernels.values()) == {"onednn"}, program.kernels
    # the forward pass against the slides' formula, by loops
    x, w, b = arrays[:3]
    ref = ref_conv2d(x, w, b if bias else None, (sh, sw), (ph, pw), g)
    close(got[0], np.maximum(ref, 0) if relu else ref, "y vs loops")


def test_the_compiled_ops_all_run_on_onednn():
    """conv2d_relu, conv2d_backward (a stride-1 layer's two gradients) and the separate
    gradients of a strided layer: each names oneDNN in ``Program.kernels`` and in the diagram,
    and the NumPy-only shared columns are not built."""
    import visualize as vz

    rng = np.random.default_rng(3)
    x = gd.placeholder((None, 3, 15, 15), name="x")
    w1 = gd.variable(rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * 0.2, name="w1")
    w2 = gd.variable(rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.2, name="w2")
    h = gd.relu(gd.conv2d(x, w1, stride=2, padding=1))
    loss = gd.sum(gd.relu(gd.conv2d(h, w2, padding=1)) ** 2)
    grads = gd.grad(loss, [w1, w2])
    f = gd.compile([loss, *grads], [x], kernels="onednn")
    names = {n.op.name for n in f.nodes}
    assert {"conv2d_relu", "conv2d_backward", "conv2d_grad_weight"} <= names and "im2col" not in names
    assert set(f.kernels.values()) == {None}  # not run yet
    xv = rng.standard_normal((2, 3, 15, 15)).astype(np.float32)
    got = f(xv)
    assert set(f.kernels.values()) == {"onednn"} and len(f.kernels) == 4
    want = gd.compile([loss, *grads], [x], kernels="numpy")(xv)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    assert vz.to_dot(f).source.count("kernel: onednn") == 4


def test_float64_stays_on_numpy_in_onednn_mode():
    x = gd.placeholder((2, 2, 6, 6), dtype="float64", name="x")
    w = gd.placeholder((3, 2, 3, 3), dtype="float64", name="w")
    f = gd.compile(gd.conv2d(x, w), [x, w], kernels="onednn")
    xv, wv = np.random.default_rng(0).standard_normal((2, 2, 6, 6)), np.ones((3, 2, 3, 3))
    np.testing.assert_allclose(f(xv, wv), ref_conv2d(xv, wv, None, (1, 1), (0, 0), 1), rtol=1e-12)
    assert list(f.kernels.values()) == ["numpy"]


def test_auto_mode_keeps_the_faster_library_and_remembers_it(monkeypatch):
    """At the first run each convolution is timed with both libraries; the faster is kept
    for those shapes, for the whole process (a second program does not measure again)."""
    calls = []
    fake = {"numpy": 1.0, "onednn": 2.0}

    def seconds(library, run):
        calls.append(library)
        run()
        return fake[library]

    monkeypatch.setattr(choice, "_seconds", seconds)
    choice.clear_decisions()
    rng = np.random.default_rng(5)
    xv = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    wv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)

    def program(mode="auto"):
        x, w = gd.placeholder(xv.shape, name="x"), gd.placeholder(wv.shape, name="w")
        return gd.compile(gd.conv2d(x, w, padding=1), [x, w], kernels=mode)

    f = program()
    y = f(xv, wv)
    assert calls == ["numpy", "onednn"] * choice.TIMED_RUNS and list(f.kernels.values()) == ["numpy"]
    np.testing.assert_array_equal(y, program("numpy")(xv, wv))  # the kept library's result
    calls.clear()
    fake.update(numpy=3.0)  # a second program with the same convolution: no new measurement
    g = program()
    g(xv, wv)
    assert calls == [] and list(g.kernels.values()) == ["numpy"]
    choice.clear_decisions()
    h = program()
    np.testing.assert_array_equal(h(xv, wv), program("onednn")(xv, wv))
    assert list(h.kernels.values()) == ["onednn"]
    choice.clear_decisions()


def test_bad_mode_is_a_clear_error(monkeypatch):
    x = gd.placeholder((1, 1, 3, 3), name="x")
    with pytest.raises(gd.BackendError, match="kernels='cudnn'.*auto, numpy, onednn"):
        gd.compile(x * 2, [x], kernels="cudnn")
    monkeypatch.setenv("GRAPHDIFF_KERNELS", "fast")
    with pytest.raises(gd.BackendError, match="from GRAPHDIFF_KERNELS"):
        gd.compile(x * 2, [x])


def test_reports_version_and_isa():
    assert onednn.info().startswith("oneDNN 3.")
    assert onednn.info() in choice.status_line()


def test_without_the_library_everything_runs_on_numpy():
    """GRAPHDIFF_ONEDNN=0 (as where the extra is missing): auto mode runs NumPy's kernels,
    the status line says why, and forcing oneDNN is a BackendError naming the install."""
    code = """
import numpy as np, graphdiff as gd
from graphdiff.kernels import choice
x, w = gd.placeholder((2, 3, 8, 8), name="x"), gd.placeholder((4, 3, 3, 3), name="w")
f = gd.compile(gd.conv2d(x, w), [x, w])
f(np.ones((2, 3, 8, 8), np.float32), np.ones((4, 3, 3, 3), np.float32))
print(f.kernels, choice.status_line())
try:
    gd.compile(gd.conv2d(x, w), [x, w], kernels="onednn")
except gd.BackendError as e:
    print("error:", e)
"""
    env = dict(os.environ, GRAPHDIFF_ONEDNN="0", GRAPHDIFF_KERNELS="auto", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert "'numpy'}" in out and "oneDNN not loaded" in out
    assert "error: kernels='onednn': oneDNN is not available (disabled by GRAPHDIFF_ONEDNN=0)" in out


def test_openmp_settings_are_left_to_the_user():
    """OMP_NUM_THREADS / OMP_WAIT_POLICY are set only for loading the library, and
    only where the user has not set them; the environment is restored. GNU
    OpenMP then runs graphdiff's kernel thread count, or the user's."""
    code = """
import ctypes, os
from graphdiff.kernels import onednn, parallel
assert onednn.available(), onednn.load_error()
gomp = ctypes.CDLL("libgomp.so.1")
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("OMP_NUM_THREADS"), gomp.omp_get_max_threads(),
      parallel.NUM_THREADS)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = ROOT
    for user, want in ((None, None), ("1", 1)):
        if user:
            env["OMP_NUM_THREADS"] = user
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        policy, threads, omp_threads, kernel_threads = run.stdout.split()
        assert policy == "None" and threads == str(user)
        assert int(omp_threads) == (int(kernel_threads) if want is None else want)


def test_alexnet_small_trains_alike_on_both_libraries(monkeypatch):
    """Three SGD steps of the small AlexNet (convolutions with groups, strides, ReLU
    fusion, both gradients) with every convolution on oneDNN and on NumPy."""
    from models.alexnet import alexnet_small, train_step

    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((4, 3, 24, 24)).astype(np.float32), rng.integers(0, 10, 4)) for _ in range(3)]
    runs = {}
    for mode in ("numpy", "onednn"):
        monkeypatch.setenv("GRAPHDIFF_KERNELS", mode)
        model = alexnet_small(image_size=24, seed=0)
        step = train_step(model, lr=0.01)
        runs[mode] = ([step(x, t) for x, t in batches], {k: p.value.copy() for k, p in model.params.items()})
        assert set(step.program.kernels.values()) == {mode}
    (loss_a, params_a), (loss_b, params_b) = runs["numpy"], runs["onednn"]
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for k in params_a:
        np.testing.assert_allclose(params_a[k], params_b[k], rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_nan_or_inf_goes_through_conv_relu_as_on_numpy(bad):
    """oneDNN's ReLU post-op maps NaN to 0; the compiled conv + ReLU must keep
    it (max(NaN, 0) is NaN on NumPy), so that a diverged run shows as one."""
    x = gd.placeholder((2, 3, 9, 9), "float32", name="x")
    w = gd.variable(np.ones((4, 3, 3, 3), "float32"), name="w")
    b = gd.variable(np.zeros(4, "float32"), name="b")
    y = gd.relu(gd.conv2d(x, w, b))
    xv = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype("float32")
    xv[0, 0, 4, 4] = bad
    want = gd.compile(y, [x], kernels="numpy")(xv)
    f = gd.compile(y, [x], kernels="onednn")
    got = f(xv)
    assert set(f.kernels.values()) == {"onednn"}
    assert np.isnan(want).sum() == (36 if np.isnan(bad) else 0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    xv[0, 0, 4, 4] = 0.0  # and finite inputs again take the fused post-op
    np.testing.assert_allclose(f(xv), gd.compile(y, [x], kernels="numpy")(xv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_both_gradients_reorder_dy_once_and_equal_the_separate_calls(groups):
    """``Convolution.backward`` (a stride-1 layer's ``conv2d_backward``) hands the
    ``dy`` that backward-data reordered to backward-weights: the two gradients
    equal :meth:`backward_data` and :meth:`backward_weights` called one by one,
    also after another convolution has used the scratch buffers in between."""
    rng = np.random.default_rng(9)
    x_shape, w_shape = (3, 32, 9, 9), (32, 32 // groups, 3, 3)
    conv = onednn.Convolution(x_shape, w_shape, (1, 1), (1, 1), groups)
    x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
    dy = rng.standard_normal(conv.y_shape).astype(np.float32)
    want = conv.backward_data(dy, w), conv.backward_weights(x, dy)
    other = onednn.Convolution((2, 16, 11, 11), (16, 16, 3, 3), (1, 1), (1, 1), 1)
    other.backward_weights(np.ones((2, 16, 11, 11), np.float32), np.ones(other.y_shape, np.float32))
    got = conv.backward(dy, w, x)
    assert conv._share_dy  # both primitives take dy blocked, in one layout
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    close(got[1], ref_grad_weight(x, dy, w_shape, groups), "dE/dw vs loops")


def ref_grad_weight(x, dy, w_shape, groups):
    """dE/dW[o, c, a, b] = sum_{n, i, j} dy[n, o, i, j] * Xpad[n, g(o) C/g + c, i + a, j + b] (stride 1, pad 1)."""
    O, Cg, kh, kw = w_shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    OH, OW = dy.shape[2:]
    dw = np.zeros(w_shape)
    for o in range(O):
        c0 = (o // (O // groups)) * Cg
        for a in range(kh):
            for b in range(kw):
                window = xp[:, c0:c0 + Cg, a:a + OH, b:b + OW]
                dw[o, :, a, b] = np.einsum("nchw,nhw->c", window, dy[:, o].astype(np.float64))
    return dw


def test_a_resumed_run_keeps_the_measured_libraries_and_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """In ``auto`` mode a checkpoint keeps each convolution's measured library; a run
    resumed in another process (here: choices forgotten, and a clock that would now
    choose the other library everywhere) runs the same libraries, so its losses equal
    an uninterrupted run's to the bit (the libraries round differently)."""
    from models import train
    from test_train import TINY, metrics

    monkeypatch.setenv("GRAPHDIFF_KERNELS", "auto")
    favour = {"onednn"}

    def seconds(library, run):  # a clock on which the favoured library always wins
        run()
        return 1.0 if library in favour else 2.0

    monkeypatch.setattr(choice, "_seconds", seconds)
    args = TINY + ["--no-diagrams", "--no-tensorboard"]
    try:
        choice.clear_decisions()
        train.main(args + ["--out", str(tmp_path / "straight"), "--epochs", "3"])
        choice.clear_decisions()
        train.main(args + ["--out", str(tmp_path / "broken"), "--epochs", "1"])
        measured = choice.decisions()
        assert measured and {r["library"] for r in measured} == {"onednn"}
        choice.clear_decisions()
        favour = {"numpy"}  # the resuming process would measure the opposite
        train.main(args + ["--out", str(tmp_path / "broken"), "--epochs", "3", "--resume"])
        assert choice.decisions() == measured  # nothing measured again, nothing changed
        losses = [r["train_loss"] for r in metrics(tmp_path / "broken")]
        assert losses == [r["train_loss"] for r in metrics(tmp_path / "straight")]
        # the same resume, measuring again instead of taking the checkpoint's choices: other numbers
        choice.clear_decisions()
        favour = {"onednn"}
        train.main(args + ["--out", str(tmp_path / "again"), "--epochs", "1"])
        choice.clear_decisions()
        favour = {"numpy"}
        monkeypatch.setattr(choice, "adopt", lambda records: None)
        train.main(args + ["--out", str(tmp_path / "again"), "--epochs", "3", "--resume"])
        again = [r["train_loss"] for r in metrics(tmp_path / "again")]
        assert again[0] == losses[0] and again[1:] != losses[1:]
    finally:
        choice.clear_decisions()


def test_kernel_choices_from_a_file_are_checked_whole():
    good = dict(direction="forward", x=[1, 3, 8, 8], w=[4, 3, 3, 3], stride=[1, 1], padding=[0, 0], groups=1,
                library="onednn")
    for bad, message in [("x", "must be a list"), ([dict(good, library="cuda")], "unknown direction"),
                         ([good, dict(good, w=None)], "kernel choice 1 is malformed")]:
        choice.clear_decisions()
        with pytest.raises(ValueError, match=message):
            choice.adopt(bad)
        assert choice.decisions() == []  # nothing taken from a list with a bad record
    choice.adopt([good])
    assert choice.decisions() == [good]
    choice.clear_decisions()
