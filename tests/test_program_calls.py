"""Tests for how a compiled program is built and called (graphdiff/compiler.py):
the forms ``compile`` accepts for inputs and updates, concurrent calls from
several threads, and running out of memory."""
import sys
import threading
from contextlib import contextmanager

import numpy as np
import pytest

import graphdiff as gd
from graphdiff.optim import sgd_momentum


@contextmanager
def frequent_thread_switches():
    """Switch threads every microsecond (Python's default: 5 ms), so that concurrent
    calls interleave inside each other instead of running one after the other."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


def run_threads(target, count):
    errors = []

    def guarded(k):
        try:
            target(k)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def small_cnn():
    """Loss and gradients of a small CNN in float64 (conv, ReLU, LRN, pooling, dense):
    planned buffers, fused ops with two outputs, fused elementwise chains."""
    rs = np.random.default_rng(0)
    x = gd.placeholder((None, 2, 9, 9), "float64", name="x")
    t = gd.placeholder((None,), "int64", name="t")
    w1 = gd.variable(rs.standard_normal((4, 2, 3, 3)) * 0.4, name="w1")
    b1 = gd.variable(np.full(4, 0.1), name="b1")
    wf = gd.variable(rs.standard_normal((4 * 3 * 3, 3)) * 0.3, name="wf")
    h = gd.relu(gd.conv2d(x, w1, b1, padding=1))
    h = gd.max_pool2d(gd.lrn(h, 3, 1e-2, 0.75, 2.0), 3, 3)
    logits = gd.tanh(gd.reshape(h, (-1, 4 * 3 * 3)) @ wf) * 2.0 + 0.5
    loss = gd.softmax_cross_entropy(logits, t)
    return [loss] + gd.grad(loss, [w1, b1, wf]), [x, t]


# --------------------------------------------------------------------------- threads
def test_concurrent_calls_of_one_program_equal_single_threaded_results():
    """Four threads x 1,000 calls of one program (two batch sizes, so each thread
    also switches between memory plans) give exactly the single-threaded results."""
    outputs, inputs = small_cnn()
    step = gd.compile(outputs, inputs)
    rs = np.random.default_rng(1)
    batches = [(rs.standard_normal((n, 2, 9, 9)), rs.integers(0, 3, n)) for n in (2, 3, 2, 3, 2, 3, 2, 3)]
    expected = [step(x, t) for x, t in batches]
    step(*batches[0])  # the main thread's plan is recorded: its buffers are the ones others could clobber
    wrong = []

    def calls(k):
        for i in range(1000):
            j = (i + k) % len(batches)
            got = step(*batches[j])
            if not all(np.array_equal(g, e) for g, e in zip(got, expected[j])):
                wrong.append((k, i))

    with frequent_thread_switches():
        run_threads(calls, 4)
    assert not wrong, f"{len(wrong)} of 4,000 concurrent calls returned wrong results"


def test_concurrent_training_steps_take_turns():
    """Calls of a program with updates run one at a time: four threads x 250 steps
    of ``c <- c + 1`` lose no step, and every call sees a different count."""
    c = gd.variable(np.zeros(3), name="c")
    h = c
    for _ in range(20):  # a longer step (20 ops between reading c and writing it)
        h = gd.reshape(gd.tanh(h), (3,))
    step = gd.compile(c * 1.0, updates=[(c, c + 1.0 + h * 0.0)])
    seen = []

    def steps(k):
        for _ in range(250):
            seen.append(step()[0])

    with frequent_thread_switches():
        run_threads(steps, 4)
    np.testing.assert_array_equal(c.value, np.full(3, 1000.0))
    assert sorted(seen) == list(range(1000))


# --------------------------------------------------------------------------- out of memory
def test_running_out_of_memory_is_a_memory_error_naming_the_node_and_bytes():
    a = gd.placeholder((None, 1), "float64", name="a")
    b = gd.placeholder((1, None), "float64", name="b")
    outer = gd.add(a, b, name="outer")
    f = gd.compile(outer, [a, b])
    n = 3 * 10 ** 8  # an n x n float64 result: 7.2e17 bytes, more than any address space
    column = np.broadcast_to(np.ones((1, 1)), (n, 1))  # views: the inputs take no memory
    row = np.broadcast_to(np.ones((1, 1)), (1, n))
    with pytest.raises(MemoryError) as info:
        f(column, row)
    assert isinstance(info.value, gd.OutOfMemoryError) and isinstance(info.value, gd.GraphdiffError)
    assert not isinstance(info.value, gd.ShapeError)
    message = str(info.value)
    assert "'outer'" in message and f"{n * n * 8:,} bytes" in message, message
    assert f"a ({n}, 1), b (1, {n})" in message, message
    np.testing.assert_array_equal(f(np.ones((2, 1)), np.ones((1, 3))), np.full((2, 3), 2.0))  # still works


# --------------------------------------------------------------------------- compile's arguments
def test_compile_takes_a_single_placeholder_as_inputs():
    x = gd.placeholder((None, 3), "float64", name="x")  # a None dim: iterating it never ended
    f = gd.compile(gd.sum(x * 2.0), x)
    assert f(np.ones((4, 3))) == 24.0
    s = gd.placeholder((2, 3), "float64", name="s")  # static dims: "getitem: index 2 is out of bounds"
    assert gd.compile(gd.sum(s), s)(np.ones((2, 3))) == 6.0


def test_iterating_a_tensor_is_a_type_error_that_says_why():
    x = gd.placeholder((None, 3), name="x")
    for attempt in (list, tuple, lambda t: [a for a in t], lambda t: dict(zip(t, t))):
        with pytest.raises(TypeError, match="'x' is not iterable.*only when a compiled program runs"):
            attempt(x)
    with pytest.raises(TypeError, match="not iterable"):
        first, second = gd.placeholder((2,), name="pair")
    assert gd.toposort(x) == [x]  # a single tensor where a list is expected


def test_compile_takes_updates_as_a_dict_a_single_pair_a_zip_or_an_optimizers_result():
    def build():
        x = gd.placeholder((None, 2), "float64", name="x")
        w = gd.variable(np.array([1.0, -2.0]), name="w")
        return x, w, gd.sum((x * w) ** 2)

    xv = np.array([[1.0, 2.0], [0.5, -1.0]])
    x, w, loss = build()
    as_dict = gd.compile(loss, x, updates={w: w * 0.5})
    as_pair = gd.compile(loss, x, updates=(w, w * 0.5))
    as_zip = gd.compile(loss, x, updates=zip([w], [w * 0.5]))
    for f in (as_dict, as_pair, as_zip):
        before = w.value.copy()
        f(xv)
        np.testing.assert_array_equal(w.value, before * 0.5)

    # sgd_momentum returns (updates, state): passed whole, it trains as the unpacked call does
    x1, w1, loss1 = build()
    x2, w2, loss2 = build()
    whole = gd.compile(loss1, [x1], updates=sgd_momentum(loss1, [w1], lr=0.1))
    updates, state = sgd_momentum(loss2, [w2], lr=0.1)
    unpacked = gd.compile(loss2, [x2], updates=updates)
    for _ in range(3):
        assert whole(xv) == unpacked(xv)
    np.testing.assert_array_equal(w1.value, w2.value)
    assert not np.array_equal(w1.value, [1.0, -2.0])


@pytest.mark.parametrize("updates, got", [
    ("w", "got Variable"),
    (3, "got int"),
    ({"w"}, "got set"),
    ("3-tuple", r"updates\[0\] is a 3-tuple"),
    ("bare tensor in a list", r"updates\[0\] is Variable"),
    ("float value", r"updates\[1\] is a pair of \(Variable, float\), not of Tensors"),
])
def test_compile_rejects_malformed_updates_saying_what_it_expects(updates, got):
    w = gd.variable(np.ones(2), name="w")
    v = gd.variable(np.zeros(2), name="v")
    updates = {"w": w, "3-tuple": [(w, w + 1.0, v)], "bare tensor in a list": [w, w + 1.0],
               "float value": [(v, v + 1.0), (w, 3.0)]}.get(updates, updates) if isinstance(updates, str) else updates
    with pytest.raises(gd.InputError, match=got) as info:
        gd.compile(gd.sum(w), updates=updates)
    assert "a list of (variable, new_value) pairs or a dict {variable: new_value}" in str(info.value)
