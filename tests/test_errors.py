"""Bad inputs raise typed errors whose messages name the op, the nodes and the
shapes (build time: gd.ShapeError; calling a program: gd.InputError), never a
raw NumPy traceback."""
import re

import numpy as np
import pytest

import graphdiff as gd


def ph(shape, dtype="float32", name=None):
    return gd.placeholder(shape, dtype, name=name)


def _classifier():
    x = ph((None, 4), name="x")
    labels = ph((None,), "int64", name="labels")
    loss = gd.softmax_cross_entropy(x, labels)
    return x, labels, gd.compile(loss, [x, labels])


# --------------------------------------------------------------------------- build time
def test_matmul_inner_dimension_mismatch():
    fc7 = ph((None, 9216), name="fc7")
    w = ph((4096, 4096), name="w")  # a placeholder: no 64 MB variable needed to check the rule
    with pytest.raises(gd.ShapeError) as info:
        gd.matmul(fc7, w)
    assert str(info.value) == "matmul: fc7 (None, 9216) @ w (4096, 4096): inner dimensions 9216 != 4096"
    with pytest.raises(gd.ShapeError, match=re.escape("inner dimensions 9216 != 4096")):
        fc7 @ w


def test_matmul_batch_dims_and_dtypes():
    with pytest.raises(gd.ShapeError, match=r"matmul: a \(2, 3, 4\) b \(5, 4, 6\): .*broadcast"):
        gd.matmul(ph((2, 3, 4), name="a"), ph((5, 4, 6), name="b"))
    with pytest.raises(gd.ShapeError, match=r"matmul: a \(2, 3\) b \(3, 4\): dtypes differ \(float32 vs float64\)"):
        gd.matmul(ph((2, 3), name="a"), ph((3, 4), "float64", name="b"))
    with pytest.raises(gd.ShapeError, match="at least 1 dimension"):  # vectors are NumPy's rows and columns
        gd.matmul(ph((), name="v"), ph((3, 4), name="m"))


def test_broadcasting_mismatch_names_both_nodes_and_shapes():
    a, b = ph((None, 3), name="activations"), ph((4,), name="bias")
    with pytest.raises(gd.ShapeError) as info:
        a + b
    msg = str(info.value)
    assert msg.startswith("add: ")
    for part in ("activations (None, 3)", "bias (4,)", "3 vs 4", "broadcast"):
        assert part in msg, msg
    with pytest.raises(gd.ShapeError, match=r"maximum: p \(2, 3\) q \(3, 2\)"):
        gd.maximum(ph((2, 3), name="p"), ph((3, 2), name="q"))


def test_reshape_of_the_wrong_size():
    x = ph((5, 3), name="pool5")
    with pytest.raises(gd.ShapeError, match=re.escape("reshape: pool5 (5, 3): cannot reshape 15 elements into (4, 4)")):
        gd.reshape(x, (4, 4))
    with pytest.raises(gd.ShapeError, match=re.escape("cannot reshape 15 elements into (4, -1)")):
        gd.reshape(x, (4, -1))
    with pytest.raises(gd.ShapeError, match="at most one -1"):
        gd.reshape(x, (-1, -1))


@pytest.mark.parametrize("build,message", [
    (lambda x: gd.sum(x, axis=2), r"sum: h \(None, 3\): axis 2 is out of range for 2 dimensions"),
    (lambda x: gd.mean(x, axis=-3), r"axis -3 is out of range for 2 dimensions"),
    (lambda x: gd.max(x, axis=(0, 0)), r"max: h \(None, 3\): repeated axis"),
    (lambda x: gd.softmax(x, axis=5), r"softmax: h \(None, 3\): axis 5 is out of range"),
    (lambda x: gd.log_softmax(x, axis=None), r"log_softmax: h \(None, 3\): axis must be one integer, got None"),
    (lambda x: gd.transpose(x, (0, 5)), r"transpose: h \(None, 3\): axes \(0, 5\) are not a permutation"),
    (lambda x: gd.transpose(x, (0,)), r"transpose: h \(None, 3\): axes \(0,\) are not a permutation"),
    (lambda x: gd.concatenate([x, x], axis=2), r"concatenate: h \(None, 3\) h \(None, 3\): axis 2 out of range"),
    (lambda x: gd.concatenate([x, x], axis=-3), r"concatenate: .*axis -1 out of range"),
    (lambda x: gd.expand_dims(x, 5), r"expand_dims: h \(None, 3\): axes \(5,\) out of range"),
    (lambda x: gd.squeeze(x, 1), r"squeeze: h \(None, 3\): cannot squeeze axis 1 of size 3"),
    (lambda x: gd.split(x, 2, axis=1), r"split: h \(None, 3\): axis 1 of size 3 does not split into 2"),
])
def test_bad_axis(build, message):
    with pytest.raises(gd.ShapeError, match=message):
        build(ph((None, 3), name="h"))


def test_concatenate_mismatch():
    a, b = ph((2, 3), name="left"), ph((2, 4), name="right")
    message = "concatenate: left (2, 3) right (2, 4): sizes differ along axis 1"
    with pytest.raises(gd.ShapeError, match=re.escape(message)):
        gd.concatenate([a, b], axis=0)
    with pytest.raises(gd.ShapeError, match="differ in number of dimensions"):
        gd.concatenate([a, ph((2, 3, 1), name="c")], axis=0)


def test_slicing_out_of_bounds():
    x = ph((5, 3), name="s")
    message = "getitem: s (5, 3): index 7 is out of bounds for axis 0 of size 5"
    with pytest.raises(gd.ShapeError, match=re.escape(message)):
        x[7]
    with pytest.raises(gd.ShapeError, match="too many indices for 2 dimensions"):
        x[0, 0, 0]
    with pytest.raises(TypeError, match="only ints, slices, None and ..."):
        x[1.5]
    with pytest.raises(gd.ShapeError, match=re.escape("getitem: s (5, 3): slice step cannot be zero (axis 1)")):
        x[:, ::0]


def test_broadcast_to_an_incompatible_shape():
    with pytest.raises(gd.ShapeError, match=re.escape("broadcast_to: s (5, 3): cannot broadcast to (3, 5)")):
        gd.broadcast_to(ph((5, 3), name="s"), (3, 5))


def test_cross_entropy_shape_and_dtype_rules():
    logits = ph((5, 3), name="logits")
    with pytest.raises(gd.ShapeError, match=r"softmax_cross_entropy: fl \(5,\): labels must be integers, got float32"):
        gd.softmax_cross_entropy(logits, ph((5,), name="fl"))
    with pytest.raises(gd.ShapeError, match=r"logits \(5, 3\) lb \(4,\): batch sizes differ \(5 vs 4\)"):
        gd.softmax_cross_entropy(logits, ph((4,), "int64", name="lb"))


def test_grad_of_a_non_scalar():
    h = ph((None, 3), name="h")
    with pytest.raises(gd.ShapeError, match=re.escape("grad: act has shape (None, 3); the gradient of a non-scalar "
                                                      "needs grad_output")):
        gd.grad(gd.tanh(h, name="act"), [h])


def test_grad_of_an_integer_output_or_input():
    n = ph((3,), "int64", name="counts")
    x = ph((3,), name="x")
    with pytest.raises(gd.ShapeError, match="grad: .* has dtype int64; only float outputs"):
        gd.grad(gd.sum(n), [x])
    with pytest.raises(gd.ShapeError, match="cannot differentiate with respect to counts: dtype int64"):
        gd.grad(gd.sum(x), [n])


def test_non_numeric_constant():
    with pytest.raises(TypeError, match="unsupported dtype"):
        ph((2,)) + "a"
    with pytest.raises(gd.InputError, match="variable 'names': unsupported dtype"):
        gd.variable(np.array(["a", "b"]), name="names")


def test_negative_placeholder_dimension_and_dropout_rate():
    with pytest.raises(gd.ShapeError, match=r"placeholder 'p': negative dimension in \(5, -3\)"):
        ph((5, -3), name="p")
    with pytest.raises(gd.ShapeError, match=r"dropout: rate must be in \[0, 1\), got 1.5"):
        gd.dropout(ph((2,)), 1.5)


# --------------------------------------------------------------------------- compile time
def test_compile_with_a_placeholder_not_among_the_inputs():
    x, labels, _ = _classifier()
    loss = gd.softmax_cross_entropy(x, labels)
    with pytest.raises(gd.InputError, match="compile: the outputs need placeholder.*'labels'.*not among the inputs"):
        gd.compile(loss, [x])


def test_non_placeholder_in_inputs():
    x = ph((2,), name="x")
    v = gd.variable(np.zeros(2, np.float32), name="v")
    with pytest.raises(gd.InputError, match="compile: inputs must be placeholders, got <Tensor 'v' variable"):
        gd.compile(x + v, [x, v])
    with pytest.raises(gd.InputError, match="inputs must be placeholders"):
        gd.compile(x * 2.0, [x * 2.0])
    with pytest.raises(gd.InputError, match="listed twice"):
        gd.compile(x * 2.0, [x, x])


def test_update_with_mismatched_shape():
    v = gd.variable(np.zeros(3, np.float32), name="v")
    p = ph((4,), name="p")
    with pytest.raises(gd.ShapeError, match=re.escape("compile: update of v (3,) with p (4,): shapes differ")):
        gd.compile([], [p], updates=[(v, p)])
    with pytest.raises(gd.InputError, match="update targets must be variables") as info:
        gd.compile([], [p], updates=[(p, p)])
    assert isinstance(info.value, TypeError)  # the wrong kind of argument, as a malformed output is
    with pytest.raises(TypeError, match=re.escape("compile: updates[0] is a 3-tuple")):
        gd.compile([], updates=[(v, v * 2.0, v)])
    with pytest.raises(gd.InputError, match="'v' is updated twice"):
        gd.compile([], updates=[(v, v * 2.0), (v, v + 1.0)])


def test_unknown_backend():
    with pytest.raises(gd.BackendError, match="unknown backend 'opencl'; available: "):
        gd.get_backend("opencl")
    x = ph((2,), name="x")
    with pytest.raises(gd.BackendError, match="unknown backend 'opencl'"):
        gd.compile(x * 2.0, [x], backend="opencl")


# --------------------------------------------------------------------------- run time
def test_missing_input():
    x, labels, f = _classifier()
    with pytest.raises(gd.InputError, match=re.escape("expected 2 input(s) ('x', 'labels'), got 1")):
        f(x=np.zeros((2, 4)))


def test_extra_input():
    x, labels, f = _classifier()
    with pytest.raises(gd.InputError, match="unexpected input 'dropout_rate'; the inputs are x, labels"):
        f(np.zeros((2, 4)), np.zeros(2, np.int64), dropout_rate=0.5)
    with pytest.raises(gd.InputError, match="input 'x' given twice"):
        f(np.zeros((2, 4)), np.zeros(2, np.int64), x=np.zeros((2, 4)))


def test_wrong_number_of_positional_inputs():
    x, labels, f = _classifier()
    with pytest.raises(gd.InputError, match=re.escape("expected 2 input(s) ('x', 'labels'), got 1")):
        f(np.zeros((2, 4)))
    with pytest.raises(gd.InputError, match=re.escape("expected 2 input(s) ('x', 'labels'), got 3")):
        f(np.zeros((2, 4)), np.zeros(2, np.int64), np.zeros(2))
    with pytest.raises(gd.InputError, match="expected 0 input"):
        gd.compile(gd.variable(np.ones(2), name="v") * 2.0)(np.ones(2))


def test_wrong_input_shape_names_the_input_and_both_shapes():
    x, labels, f = _classifier()
    with pytest.raises(gd.InputError, match=re.escape("input 'x': expected shape (None, 4), got (2, 5)")):
        f(np.zeros((2, 5)), np.zeros(2, np.int64))
    with pytest.raises(gd.InputError, match=re.escape("input 'x': expected shape (None, 4), got (2, 4, 1)")):
        f(np.zeros((2, 4, 1)), np.zeros(2, np.int64))


def test_float_fed_to_integer_labels():
    x, labels, f = _classifier()
    with pytest.raises(gd.InputError, match=re.escape("input 'labels': expected int64 (integers), got float64")):
        f(np.zeros((2, 4)), np.array([0.0, 1.0]))
    with pytest.raises(gd.InputError, match="input 'labels': expected int64, got <U1"):
        f(np.zeros((2, 4)), np.array(["a", "b"]))


@pytest.mark.parametrize("labels,shown", [([0, 4], "[0, 4]"), ([-1, 0], "[-1, 0]")])
def test_integer_labels_out_of_range_at_run_time(labels, shown):
    x, _, f = _classifier()
    message = f"softmax_cross_entropy: labels must lie in [0, 4), got {shown}"
    with pytest.raises(gd.InputError, match=re.escape(message)):
        f(np.zeros((2, 4)), np.array(labels))


def test_label_count_differs_from_logit_rows_at_run_time():
    x, _, f = _classifier()
    with pytest.raises(gd.InputError, match="softmax_cross_entropy: 2 logits rows but 3 labels"):
        f(np.zeros((2, 4)), np.array([0, 1, 2]))


def test_variable_assignment_with_the_wrong_shape():
    w = gd.variable(np.zeros((3, 2), np.float32), name="fc/w")
    with pytest.raises(gd.InputError, match=re.escape("variable 'fc/w': cannot assign a value of shape (2, 3); "
                                                      "expected (3, 2)")):
        w.value = np.zeros((2, 3))


def test_kernel_failure_at_run_time_names_the_op_and_node():
    a, b = ph((None,), "float64", name="a"), ph((None,), "float64", name="b")
    total = gd.add(a, b, name="total")
    f = gd.compile(total, [a, b])
    np.testing.assert_array_equal(f(np.ones(3), np.ones(3)), np.full(3, 2.0))
    with pytest.raises(gd.ShapeError) as info:  # both batch dims unknown at build time, 3 != 5 at run time
        f(np.ones(3), np.ones(5))
    msg = str(info.value)
    assert msg.startswith("add 'total' failed at run time on inputs a (3,), b (5,)"), msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no NumPy traceback chained


def test_matmul_and_reshape_failures_at_run_time():
    h = ph((None, None), "float64", name="h")
    w = ph((None, 2), "float64", name="w")
    f = gd.compile(gd.matmul(h, w, name="fc"), [h, w])
    with pytest.raises(gd.ShapeError, match=re.escape("matmul 'fc' failed at run time on inputs h (4, 3), w (5, 2)")):
        f(np.ones((4, 3)), np.ones((5, 2)))
    m = ph((None, 3), "float64", name="m")
    g = gd.compile(gd.reshape(m, (-1, 2), name="flat"), [m])
    with pytest.raises(gd.ShapeError, match=re.escape("reshape 'flat' failed at run time on inputs m (3, 3)")):
        g(np.ones((3, 3)))
    np.testing.assert_array_equal(g(np.ones((2, 3))), np.ones((3, 2)))  # the program still works afterwards


def test_errors_are_value_errors_and_runtime_errors():
    assert issubclass(gd.ShapeError, ValueError) and issubclass(gd.InputError, ValueError)
    assert issubclass(gd.BackendError, RuntimeError)
    assert all(issubclass(e, gd.GraphdiffError) for e in (gd.ShapeError, gd.InputError, gd.BackendError))


def test_one_hot_needs_at_least_one_class():
    with pytest.raises(gd.ShapeError, match="one_hot: depth must be >= 1, got 0"):
        gd.one_hot(ph((3,), dtype="int64"), 0)
