"""The compiled programs' listings stay what they were: instructions, buffers and
kernel choices of the AlexNet 2012 training step, a second-order graph and a
small CNN with pooling and LRN, against golden files in ``tests/data/listings``.

A listing names, per instruction: the op and its attributes, the node (its
automatic number replaced by its order of appearance, so the listing does not
depend on what was built before), shape, dtype, input and freed slots, and
which kernel runs it (the op's own, or one chosen by measurement: ``measured``);
then the memory plan of one run (planned buffer of each output, buffer sizes)
and the variables updated in place. A refactoring of the compiler must leave
them unchanged. After an intended change, regenerate with
``GRAPHDIFF_WRITE_LISTINGS=1 pytest tests/test_program_listing.py`` and review
the diff.
"""
import os
import re

import numpy as np
import pytest

import graphdiff as gd
from graphdiff.kernels import choice, onednn
from graphdiff.optim import sgd_momentum
from models.alexnet import alexnet

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "listings")
WRITE = os.environ.get("GRAPHDIFF_WRITE_LISTINGS") == "1"


class _Names:
    """Node names with their automatic ``_<id>`` numbers renumbered by first appearance."""

    def __init__(self):
        self.numbers = {}

    def __call__(self, text):
        def renumber(m):
            return "#" + str(self.numbers.setdefault(m.group(1), len(self.numbers)))
        return re.sub(r"_(\d+)\b", lambda m: "_" + renumber(m), text)


def listing(program, run_args=None):
    """The program's listing (see the module docstring); runs it once on ``run_args``
    for the memory plan (updates included)."""
    names = _Names()
    slot = {id(n): k for k, n in enumerate(program.nodes)}
    lines = [f"nodes: {len(program.nodes)}"]
    for k, node in enumerate(program.nodes):
        if node.op.name in ("placeholder", "variable", "constant"):
            lines.append(f"{k:4d} {node.op.name} {names(node.name)} {node.shape} {node.dtype}")
    for kernel, ins, out, frees, node in program._instrs:
        library = "measured" if isinstance(kernel, choice.MeasuredKernel) else "own"
        lines.append(f"{out:4d} {names(node.op.describe())} {names(node.name)} {node.shape} {node.dtype} "
                     f"in={list(ins)} free={sorted(frees)} kernel={library}")
    if run_args is not None:
        program(*run_args)
        rows, sizes = program.buffer_plan()
        lines.append(f"buffers: {sizes}")
        for node, buffers in rows:
            lines.append(f"{slot[id(node)]:4d} buffers={buffers}")
    lines.append("in place: " + ", ".join(v.name for v in program.in_place_updates))
    return "\n".join(lines) + "\n"


def check(name, text):
    path = os.path.join(HERE, name + ".txt")
    if WRITE:
        os.makedirs(HERE, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        expected = f.read()
    assert text.splitlines() == expected.splitlines()


def _alexnet_batch(net, batch=2):
    rng = np.random.default_rng(0)
    size = net.images.shape[2]
    return (rng.standard_normal((batch, 3, size, size)).astype(np.float32),
            rng.integers(0, net.num_classes, batch))


def test_alexnet_2012_training_step_listing_numpy_kernels():
    # The paper's network (two towers, LRN, overlapping pooling, dropout) at 67x67:
    # every layer as at 227 (conv1 11x11/4 shares its columns), smaller maps.
    net = alexnet(num_classes=10, image_size=67)
    program = gd.compile([net.loss, net.logits], inputs=net.inputs,
                         updates=sgd_momentum(net.objective, net.params, lr=1e-4), kernels="numpy")
    check("alexnet_step_numpy", listing(program, _alexnet_batch(net)))


def test_alexnet_2012_training_step_listing_auto_kernels():
    """With oneDNN in play each convolution gets a measured kernel and keeps its own
    input (no shared columns); without it, "auto" is NumPy's listing."""
    net = alexnet(num_classes=10, image_size=67)
    program = gd.compile([net.loss, net.logits], inputs=net.inputs,
                         updates=sgd_momentum(net.objective, net.params, lr=1e-4), kernels="auto")
    text = listing(program)
    check("alexnet_step_auto" if onednn.available() else "alexnet_step_numpy_compiled", text)


def test_alexnet_2012_compiled_numpy_listing_without_run():
    net = alexnet(num_classes=10, image_size=67)
    program = gd.compile([net.loss, net.logits], inputs=net.inputs,
                         updates=sgd_momentum(net.objective, net.params, lr=1e-4), kernels="numpy")
    check("alexnet_step_numpy_compiled", listing(program))


def test_second_order_listing():
    rng = np.random.default_rng(0)
    x = gd.placeholder((None, 2, 6, 6), dtype="float64", name="x")
    w1 = gd.variable(rng.standard_normal((3, 2, 3, 3)), name="w1")
    w2 = gd.variable(rng.standard_normal((4, 3, 3, 3)), name="w2")
    h = gd.relu(gd.conv2d(x, w1, padding=1))
    h = gd.max_pool2d(h, 2, 2)
    y = gd.conv2d(gd.tanh(h), w2, stride=1)
    loss = gd.sum(y * y)
    grads = gd.grad(loss, [w1, w2])
    s = gd.sum(grads[0] * gd.constant(rng.standard_normal(w1.shape))) \
        + gd.sum(grads[1] * gd.constant(rng.standard_normal(w2.shape)))
    hvp = gd.grad(s, [w1, w2])
    program = gd.compile([loss, *grads, *hvp], inputs=[x], kernels="numpy")
    check("second_order", listing(program, (rng.standard_normal((2, 2, 6, 6)),)))


def test_small_cnn_with_pooling_and_lrn_listing():
    rng = np.random.default_rng(1)
    x = gd.placeholder((None, 3, 12, 12), name="x")
    t = gd.placeholder((None,), dtype="int64", name="t")
    w1 = gd.variable(rng.standard_normal((8, 3, 5, 5)).astype(np.float32) * 0.1, name="conv1/w")
    b1 = gd.variable(np.zeros(8, np.float32), name="conv1/b")
    w2 = gd.variable(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.1, name="conv2/w")
    wd = gd.variable(rng.standard_normal((8, 5)).astype(np.float32) * 0.1, name="fc/w")
    h = gd.relu(gd.conv2d(x, w1, b1, stride=2, padding=2))
    h = gd.max_pool2d(gd.lrn(h, size=5, alpha=1e-4, beta=0.75, k=2.0), 3, 2)
    h = gd.relu(gd.conv2d(h, w2, padding=1))
    h = gd.avg_pool2d(h, 2, 1)  # (N, 8, 1, 1)
    logits = gd.reshape(h, (-1, 8)) @ wd
    loss = gd.softmax_cross_entropy(logits, t)
    updates, _ = sgd_momentum(loss, [w1, b1, w2, wd], lr=0.01)
    program = gd.compile(loss, inputs=[x, t], updates=updates, kernels="numpy")
    feed = (rng.standard_normal((4, 3, 12, 12)).astype(np.float32), rng.integers(0, 5, 4))
    check("small_cnn", listing(program, feed))


@pytest.mark.parametrize("optimize", [True, False])
def test_listing_names_do_not_depend_on_earlier_graphs(optimize):
    def build():
        x = gd.placeholder((None, 4), name="x")
        return gd.compile(gd.sum(gd.relu(x * 2.0) + 1.0), inputs=[x], optimize=optimize)
    first = listing(build())
    gd.tanh(gd.placeholder((3,)))  # more automatic names in between
    assert listing(build()) == first


def test_kernel_choices_are_a_public_engine_call():
    """Checkpoints save ``gd.kernel_choices()`` and resume with ``gd.adopt_kernel_choices``
    (the same records as the internal ``kernels.choice`` calls, which keep working)."""
    saved = gd.kernel_choices()
    try:
        gd.clear_kernel_choices()
        record = dict(direction="forward", x=[2, 3, 8, 8], w=[4, 3, 3, 3], stride=[1, 1], padding=[1, 1],
                      groups=1, library="numpy")
        gd.adopt_kernel_choices([record])
        assert gd.kernel_choices() == choice.decisions() == [record]
        with pytest.raises(ValueError, match="kernel choice 0 is malformed"):
            gd.adopt_kernel_choices([{"direction": "forward"}])
    finally:
        gd.clear_kernel_choices()
        gd.adopt_kernel_choices(saved)
