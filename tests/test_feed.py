"""Feeding a compiled program (graphdiff/feed.py): casts that would change a
value are refused, malformed values and arguments are typed errors naming
what was wrong, and DLPack arrays (PyTorch tensors) go in and come out
without a copy."""
import re

import numpy as np
import pytest

import graphdiff as gd
import needs


def torch_module():
    """PyTorch (the ``bench`` extra, installed by the README's test command):
    required under CI, skipped only where CI is unset."""
    return needs.module("torch", "pip install -e '.[bench]'")


def program(dtype, shape=(None,)):
    x = gd.placeholder(shape, dtype, name="x")
    return gd.compile(x + gd.constant(0, dtype=dtype), [x])


# --------------------------------------------------------------------------- casts that change values
@pytest.mark.parametrize("dtype,value,message", [
    ("int32", np.array([5, 2**40 + 3]), "int64 value 1099511627779 does not fit in int32"),
    ("uint8", np.array([-1, 3]), "int64 value -1 does not fit in uint8 (0..255)"),
    ("int8", np.array([127, 128], np.int16), "int16 value 128 does not fit in int8 (-128..127)"),
    ("bool", np.array([0, 1, 2]), "int64 value 2 does not fit in bool (0..1)"),
    ("float32", np.array([1.0, 1e300]), "float64 value 1e+300 overflows float32 (largest 3.4028235e+38)"),
    ("float16", np.array([1, 70000]), "int64 value 70000 overflows float16 (largest 65504)"),
])
def test_a_cast_that_changes_a_value_raises(dtype, value, message):
    with pytest.raises(gd.InputError, match=re.escape(f"input 'x': the {message}")):
        program(dtype)(value)


def test_casts_that_keep_values_or_round_are_allowed():
    np.testing.assert_array_equal(program("int32")(np.array([-2**31, 2**31 - 1])), [-2**31, 2**31 - 1])
    np.testing.assert_array_equal(program("uint8")(np.array([0, 255])), [0, 255])
    out = program("float32")(np.array([0.1, -np.inf, np.nan, 3e38]))  # rounding, and non-finite stays so
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([0.1, -np.inf, np.nan, 3e38], np.float32))
    assert program("int64")(np.array([], np.uint64)).shape == (0,)


def test_float_into_an_integer_input_and_non_numbers_raise():
    with pytest.raises(gd.InputError, match=r"input 'x': expected int64 \(integers\), got float64"):
        program("int64")(np.array([1.0]))
    with pytest.raises(gd.InputError, match="input 'x': expected float32, got object"):
        program("float32")(np.array([1.0, None], dtype=object))
    with pytest.raises(gd.InputError, match="input 'x': expected float32, got complex128"):
        program("float32")(np.array([1j]))


def test_lists_scalars_ragged_lists_and_symbolic_tensors():
    np.testing.assert_array_equal(program("float32")([1, 2.5]), [1.0, 2.5])
    assert program("float64", ())(3.0) == 3.0
    with pytest.raises(gd.InputError, match=r"input 'x': got a list: a ragged nested sequence"):
        program("float32", (None, None))([[1.0, 2.0], [3.0]])
    x = gd.placeholder((2,), name="x")
    with pytest.raises(gd.InputError, match="input 'x': got the symbolic tensor 'x'; feed an array"):
        gd.compile(x * 2.0, [x])(x)


# --------------------------------------------------------------------------- bad arguments while building
@pytest.mark.parametrize("build,message", [
    (lambda: gd.placeholder((None, "a"), name="x"), "placeholder 'x': dimension 1 must be an int or None, got str 'a'"),
    (lambda: gd.placeholder((3.7,), name="x"), "placeholder 'x': dimension 0 must be an int or None, got float 3.7"),
    (lambda: gd.placeholder(5, name="x"), "placeholder 'x': shape must be a tuple of ints and None, got 5"),
    (lambda: gd.placeholder((2,), dtype=object, name="x"), "placeholder 'x': unsupported dtype object"),
    (lambda: gd.placeholder((2,), dtype="float33", name="x"), "placeholder 'x': unknown dtype 'float33'"),
    (lambda: gd.lrn(gd.placeholder((1, 8, 3, 3)), size=2.7), "lrn: size must be an int, got float 2.7"),
    (lambda: gd.lrn_within(gd.placeholder((1, 8, 3, 3)), size="3"), "lrn_within: size must be an int, got str '3'"),
    (lambda: gd.lrn(gd.placeholder((1, 8, 3, 3)), beta="a"), "lrn: beta must be a number, got str 'a'"),
    (lambda: gd.lrn_within(gd.placeholder((1, 8, 3, 3)), k=None), "lrn_within: k must be a number, got NoneType None"),
    (lambda: gd.cast(gd.placeholder((2,)), "float33"), "cast: unknown dtype 'float33'"),
    (lambda: gd.one_hot(gd.placeholder((2,), "int64"), 2.5), "one_hot: depth must be an int, got float 2.5"),
    (lambda: gd.pad(gd.placeholder((2,)), (1, 1), value="0"), "pad: value must be a number, got str '0'"),
    (lambda: gd.conv2d(gd.placeholder((1, 4, 5, 5)), gd.placeholder((4, 4, 3, 3)), stride=1.5),
     "stride must be an int or a pair of ints, got 1.5"),
    (lambda: gd.conv2d(gd.placeholder((1, 4, 5, 5)), gd.placeholder((4, 2, 3, 3)), groups=2.0),
     "conv2d: groups must be an int, got float 2.0"),
    (lambda: gd.compile([gd.placeholder((2,)), None]), "compile: output 1 is None, not a Tensor"),
    (lambda: gd.compile([np.ones(2)]), "compile: output 0 is a ndarray array([1., 1.]), not a Tensor; make an "
                                       "array a graph value with gd.constant"),
    (lambda: gd.compile(np.ones(2)), "compile: outputs must be a Tensor or a list of Tensors, got a ndarray"),
])
def test_bad_arguments_are_typed_errors_naming_them(build, message):
    with pytest.raises(TypeError, match=re.escape(message)) as info:
        build()
    if message.startswith("compile:"):  # what compile is given, like what a program is given, is an InputError
        assert isinstance(info.value, gd.InputError)


def test_integral_values_of_numpy_integer_types_are_fine():
    x = gd.placeholder((np.int64(2), None), name="x")
    assert x.shape == (2, None)
    assert gd.lrn(gd.placeholder((1, 8, 3, 3)), size=np.int32(3)).op.size == 3


# --------------------------------------------------------------------------- DLPack
def test_a_torch_tensor_is_fed_without_a_copy():
    torch = torch_module()
    x = gd.placeholder((None, 6), "float32", name="x")
    f = gd.compile([gd.reshape(x, (-1, 2, 3)), x * 2.0], [x])
    t = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    view, doubled = f(t)
    assert np.shares_memory(view, t.numpy())  # the program read the tensor's own memory
    np.testing.assert_array_equal(doubled, 2 * t.numpy())
    t[0, 0] = 100.0  # and a later call sees what the tensor holds then
    assert f(t)[1][0, 0] == 200.0


def test_torch_tensors_of_other_layouts_dtypes_and_with_grad():
    torch = torch_module()
    x = gd.placeholder((3, 2), "float32", name="x")
    f = gd.compile(x * 1.0, [x])
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # transposed: strided, still no copy
    np.testing.assert_array_equal(f(t), t.numpy())
    view = gd.compile(x, [x])(t)  # the input itself as an output: the tensor's own memory
    assert np.shares_memory(view, t.numpy())
    np.testing.assert_array_equal(f(torch.ones(3, 2, dtype=torch.float64)), np.ones((3, 2)))  # cast as NumPy's
    w = torch.ones(3, 2, requires_grad=True)  # read through detach(): the same memory
    np.testing.assert_array_equal(f(w), np.ones((3, 2)))
    labels = gd.placeholder((None,), "int64", name="labels")
    np.testing.assert_array_equal(gd.compile(labels * 1, [labels])(torch.tensor([3, 1])), [3, 1])
    with pytest.raises(gd.InputError, match=r"input 'labels': expected int64 \(integers\), got float32"):
        gd.compile(labels * 1, [labels])(torch.ones(2))
    with pytest.raises(gd.InputError, match=r"input 'x': cannot take a torch.Tensor of dtype torch.bfloat16"):
        f(torch.ones(3, 2, dtype=torch.bfloat16))
    with pytest.raises(gd.InputError, match=r"input 'x': the int64 value 3000000000 does not fit in int32"):
        program("int32")(torch.tensor([3_000_000_000]))


def test_from_dlpack_shares_memory_and_outputs_go_to_torch_without_a_copy():
    torch = torch_module()
    t = torch.arange(6, dtype=torch.float32)
    a = gd.from_dlpack(t)
    assert isinstance(a, np.ndarray) and np.shares_memory(a, t.numpy())
    with pytest.raises(TypeError, match="from_dlpack: list has no __dlpack__"):
        gd.from_dlpack([1, 2])
    x = gd.placeholder((None, 4), "float32", name="x")
    out, flipped = gd.compile([gd.tanh(x), x[:, ::-1]], [x])(np.ones((2, 4), np.float32))
    back = torch.from_dlpack(out)
    assert np.shares_memory(back.numpy(), out)
    back[0, 0] = 5.0
    assert out[0, 0] == 5.0
    # a reversed view has negative strides, which DLPack consumers refuse (PyTorch
    # aborts the process on one): such an output is made contiguous first
    assert all(s > 0 for s in flipped.strides)
    np.testing.assert_array_equal(torch.from_dlpack(flipped).numpy(), np.ones((2, 4)))


def test_any_dlpack_object_is_taken_without_a_copy(dlpack_only):
    base = np.arange(6.0).reshape(2, 3)
    x = gd.placeholder((2, 3), "float64", name="x")
    view = gd.compile(gd.reshape(x, (6,)), [x])(dlpack_only(base))
    assert np.shares_memory(view, base)
    assert np.shares_memory(gd.from_dlpack(dlpack_only(base)), base)
