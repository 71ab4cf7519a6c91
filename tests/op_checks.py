"""Helpers the op tests share (tests/test_cnn_ops.py, test_conv_configs.py,
test_pool_lrn_matmul_configs.py, test_avg_pool.py, test_second_order_compile.py,
the random-graph test): running a graph on arrays, the float64 finite-difference
checks of a VJP and its double VJP, tie-free data, a time limit on a block, and
the output size and window rules of convolution and pooling written out from
their definitions (for references and generators, not read from the engine)."""
import contextlib
import signal

import numpy as np
from hypothesis import example, settings

import graphdiff as gd
from graphdiff.testing import check_double_vjp, check_vjp

TOL = 1e-6  # finite-difference relative error in float64 (typically ~1e-9)


def examples(n):
    """``n`` hypothesis examples, the same ones every run, no per-example deadline."""
    return settings(max_examples=n, deadline=None, derandomize=True)


def edge_examples(configs):
    """A decorator adding each of ``configs`` as an explicit example ``(cfg,
    with_bias)`` of a hypothesis test (corners the random draw may miss), with the
    bias on every other one."""
    def add(test):
        for k, cfg in enumerate(configs):
            test = example(cfg, k % 2 == 0).via("edge case")(test)
        return test

    return add


def run(build, *arrays, **options):
    """Compile ``build`` over placeholders shaped like ``arrays`` (``options`` go to
    :func:`graphdiff.compile`) and run it."""
    xs = [gd.placeholder(a.shape, dtype=a.dtype, name=f"in{i}") for i, a in enumerate(arrays)]
    return gd.compile(build(*xs), inputs=xs, **options)(*arrays)


def assert_vjps(build, arrays, wrt=None):
    """The VJP and the double VJP of ``build`` agree with float64 finite differences."""
    assert max(check_vjp(build, arrays, wrt=wrt)) < TOL
    assert max(check_double_vjp(build, arrays, wrt=wrt)) < TOL


def distinct(rng, shape, spacing=0.01):
    """Values with no ties (spaced far beyond the finite-difference step)."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * spacing


@contextlib.contextmanager
def deadline(seconds):
    """Fail (TimeoutError) instead of hanging when the block runs past ``seconds``
    (a compile that would not return)."""
    def expired(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# =========================================================================== convolution
def four(padding):
    """``(ph, pw)`` (either may be a ``(begin, end)`` pair) -> ``((top, bottom), (left, right))``."""
    return tuple((p, p) if isinstance(p, (int, np.integer)) else tuple(p) for p in padding)


def conv_out_size(n, k, s, p0, p1, d=1):
    """``floor((n + p0 + p1 - (k-1)*d - 1) / s) + 1``: the windows of a kernel ``k``
    dilated by ``d`` that fit the padded input, ``s`` apart."""
    return (n + p0 + p1 - (k - 1) * d - 1) // s + 1


def same_pads(n, k, s, d):
    """TensorFlow's SAME along one axis (tf.nn.conv2d docs), written from its
    definition: ``ceil(n/s)`` outputs from a total padding ``max((ceil(n/s) - 1)*s
    + (k-1)*d + 1 - n, 0)``, the odd one at the end; ``(begin, end)``."""
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return (total // 2, total - total // 2)


def conv_arrays(cfg):
    """``x, w, b, dy`` for a conv configuration (``N, C, O, H, W, kernel, stride,
    padding, groups``, optionally ``dilation``; ``seed``)."""
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["N"], cfg["C"], cfg["H"], cfg["W"]))
    w = rng.standard_normal((cfg["O"], cfg["C"] // cfg["groups"]) + tuple(cfg["kernel"]))
    b = rng.standard_normal(cfg["O"])
    OH, OW = (conv_out_size(n, k, s, p0, p1, d) for n, k, s, (p0, p1), d in
              zip((cfg["H"], cfg["W"]), cfg["kernel"], cfg["stride"], four(cfg["padding"]),
                  cfg.get("dilation", (1, 1))))
    dy = rng.standard_normal((cfg["N"], cfg["O"], OH, OW))
    return x, w, b, dy


def conv_geometry(cfg):
    """The configuration's keyword arguments of conv2d and its gradient ops
    (``dilation`` only where the configuration has one)."""
    geo = dict(stride=cfg["stride"], padding=cfg["padding"], groups=cfg["groups"])
    if "dilation" in cfg:
        geo["dilation"] = cfg["dilation"]
    return geo


def assert_conv_vjps(cfg, with_bias):
    """VJP and double VJP of ``conv2d`` (with or without its bias), of
    ``conv2d_grad_input`` (in ``dy`` and ``w``) and of ``conv2d_grad_weight`` (in
    ``x`` and ``dy``) for one configuration."""
    x, w, b, dy = conv_arrays(cfg)
    geo = conv_geometry(cfg)
    if with_bias:
        assert_vjps(lambda x, w, b: gd.conv2d(x, w, b, **geo), [x, w, b])
    else:
        assert_vjps(lambda x, w: gd.conv2d(x, w, **geo), [x, w])
    assert_vjps(lambda dy, w: gd.conv2d_grad_input(dy, w, x.shape[2:], **geo), [dy, w])
    assert_vjps(lambda x, dy: gd.conv2d_grad_weight(x, dy, cfg["kernel"], **geo), [x, dy])


def assert_conv_matches(cfg, with_bias, ref_conv2d, ref_grad_weight, ref_grad_input):
    """conv2d (with or without its bias) and its VJP (via ``gd.grad``) equal the
    naive references ``ref_conv2d(x, w, b, **geometry)``, ``ref_grad_weight(x, dy,
    kernel, **geometry)``, ``ref_grad_input(dy, w, input_size, **geometry)`` and
    the bias sum; the gradient ops called directly equal the VJP's."""
    x, w, b, dy = conv_arrays(cfg)
    geo = conv_geometry(cfg)
    bias = b if with_bias else None
    y = run(lambda x, w, b: gd.conv2d(x, w, b if with_bias else None, **geo), x, w, b)
    np.testing.assert_allclose(y, ref_conv2d(x, w, bias, **geo), rtol=1e-10, atol=1e-10)
    gx, gw, gb = run(lambda x, w, b, dy: gd.grad(gd.conv2d(x, w, b, **geo), [x, w, b], grad_output=dy), x, w, b, dy)
    np.testing.assert_allclose(gw, ref_grad_weight(x, dy, cfg["kernel"], **geo), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gx, ref_grad_input(dy, w, x.shape[2:], **geo), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gb, dy.sum(axis=(0, 2, 3)), rtol=1e-10, atol=1e-10)
    gx2 = run(lambda dy, w: gd.conv2d_grad_input(dy, w, x.shape[2:], **geo), dy, w)
    gw2 = run(lambda x, dy: gd.conv2d_grad_weight(x, dy, cfg["kernel"], **geo), x, dy)
    np.testing.assert_allclose(gx2, gx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw2, gw, rtol=1e-12, atol=1e-12)


# =========================================================================== pooling windows
def pool_out_size(n, k, s, begin, end, d=1, ceil_mode=False):
    """PyTorch's output size of a pooling window along one axis, written out: the
    windows starting at ``i*s - begin`` while the window (extent ``d*(k-1) + 1``)
    fits the padded input (floor) or, with ``ceil_mode``, while it starts inside
    the input or the leading padding and the previous one did not reach the end."""
    extent = d * (k - 1) + 1
    if not ceil_mode:
        return (n + begin + end - extent) // s + 1
    out = -(-(n + begin + end - extent) // s) + 1
    return out - 1 if (out - 1) * s >= n + begin else out


def has_empty_window(n, k, s, begin, end, d=1, ceil_mode=False):
    """Whether some window along one axis reads padding only, or none fits (max
    pooling refuses such a configuration: its max would be -inf)."""
    out = pool_out_size(n, k, s, begin, end, d, ceil_mode)
    return out < 1 or any(not any(0 <= i * s - begin + a * d < n for a in range(k)) for i in range(out))
