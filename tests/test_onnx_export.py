"""graphdiff.onnx.export: every exported graph passes onnx.checker's full check,
ONNX's shape inference agrees with graphdiff's shapes, and ONNX Runtime's
outputs equal graphdiff's within 1e-5 (float32): a sweep over the ops, and
AlexNet 2012, alexnet-small and cnn4. Then the errors."""
import sys

import numpy as np
import pytest

import graphdiff as gd
import needs
from models.alexnet import alexnet, alexnet_small
from models.cnn import cnn4

onnx = needs.module("onnx", "pip install -e '.[interop]'")
ort = needs.module("onnxruntime", "pip install -e '.[interop]'")

RNG = np.random.default_rng(0)


def feed_for(inputs, batch=2, rng=RNG):
    """Random arrays for placeholders: ``None`` dims become ``batch``; int64 inputs are labels in [0, 3)."""
    arrays = []
    for p in inputs:
        shape = tuple(batch if d is None else d for d in p.shape)
        if p.dtype.kind == "i":
            arrays.append(rng.integers(0, 3, shape).astype(p.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(p.dtype))
    return arrays


def without_weights(model):
    """A copy whose large initializers point at absent external data: shape inference
    needs their shapes only, and copying AlexNet's 244 MB through it takes seconds."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for t in light.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 4096:
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            t.external_data.add(key="location", value="absent.bin")
    return light


def onnx_shapes(model):
    """Value name -> dims (int, or None for symbolic or unknown) after ONNX's strict shape inference."""
    inferred = onnx.shape_inference.infer_shapes(without_weights(model), check_type=True, strict_mode=True,
                                                 data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return shapes


def assert_shapes_agree(model, outputs):
    """Each graphdiff node written under its own name has ONNX's inferred shape (None where ONNX is symbolic)."""
    shapes = onnx_shapes(model)
    compared = 0
    for t in gd.toposort(outputs):
        if t.name in shapes:
            assert shapes[t.name] == list(t.shape), (t.name, shapes[t.name], t.shape)
            compared += 1
    for o, vi in zip(outputs, model.graph.output):
        assert shapes[vi.name] == list(o.shape)
    assert compared >= 1


def run_ort(path, arrays):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), arrays)})


def check_export(outputs, inputs, path, arrays=None, opset=None, tol=1e-5):
    """Export, then the three checks; returns the model."""
    outputs = outputs if isinstance(outputs, list) else [outputs]
    model = gd.onnx.export(outputs, inputs, path, **({} if opset is None else dict(opset=opset)))
    onnx.checker.check_model(str(path), full_check=True)
    assert_shapes_agree(model, outputs)
    arrays = feed_for(inputs) if arrays is None else arrays
    want = gd.compile(outputs, inputs=inputs, training=False)(*arrays)
    for got, ref in zip(run_ort(path, arrays), want):
        assert got.shape == np.shape(ref) and got.dtype == np.asarray(ref).dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    return model


def var(*shape, scale=0.3):
    return gd.variable((RNG.standard_normal(shape) * scale).astype(np.float32), name="w")


def x4(c=4, h=7, w=6):
    return gd.placeholder((None, c, h, w), name="x")


def positive(t):
    return gd.exp(t * 0.5)  # positive inputs for log, sqrt, pow and the cross-map normalization


# name -> (build() -> (outputs, inputs), ONNX op types that must appear)
SWEEP = {
    "conv2d": (lambda x: gd.conv2d(x, var(6, 2, 3, 3), var(6), stride=2, padding=1, groups=2), {"Conv"}),
    "conv2d_no_bias": (lambda x: gd.conv2d(x, var(3, 4, 2, 3), stride=(1, 2), padding=(0, 1)), {"Conv"}),
    "relu": (gd.relu, {"Relu"}), "tanh": (gd.tanh, {"Tanh"}), "sigmoid": (gd.sigmoid, {"Sigmoid"}),
    "exp": (gd.exp, {"Exp"}), "neg": (gd.neg, {"Neg"}), "abs": (gd.abs, {"Abs"}),
    "log": (lambda x: gd.log(positive(x)), {"Log"}), "sqrt": (lambda x: gd.sqrt(positive(x)), {"Sqrt"}),
    "max_pool2d": (lambda x: gd.max_pool2d(x, 3, stride=2, padding=1), {"MaxPool"}),
    "avg_pool2d": (lambda x: gd.avg_pool2d(x, 3, stride=2, padding=1), {"AveragePool"}),
    "avg_pool2d_no_pad_count": (lambda x: gd.avg_pool2d(x, (2, 3), stride=1, padding=1, count_include_pad=False),
                                {"AveragePool"}),
    "adaptive_global": (lambda x: gd.adaptive_avg_pool2d(x, 1), {"GlobalAveragePool"}),
    "adaptive_tiles": (lambda x: gd.adaptive_avg_pool2d(gd.max_pool2d(x, 1), (7, 3)), {"AveragePool"}),
    "adaptive_bins": (lambda x: gd.adaptive_avg_pool2d(x, (4, 4)), {"MatMul"}),
    "lrn": (lambda x: gd.lrn(x, size=3, alpha=0.1, beta=0.75, k=2.0), {"LRN"}),
    "lrn_even": (lambda x: gd.lrn(x, size=4, alpha=0.1, beta=0.6, k=1.5), {"AveragePool", "Pow"}),
    "lrn_within": (lambda x: gd.lrn_within(x, size=3, alpha=0.05, beta=0.75, k=2.0), {"AveragePool"}),
    "lrn_within_even": (lambda x: gd.lrn_within(x, size=2, alpha=0.05, beta=0.75, k=2.0), {"AveragePool"}),
    "window_sums": (lambda x: gd.window_sum_channels(x, 2, transpose=True) + gd.window_sum_spatial(x, 4), set()),
    "normalize_cross_map": (lambda x: gd.normalize_cross_map(positive(x)), {"ReduceSum", "Div"}),
    "arithmetic": (lambda x: (x + 1.5) * x - x / (x * x + 1.0) - 2.0, {"Add", "Mul", "Sub", "Div"}),
    "pow_broadcast": (lambda x: positive(x) ** var(1, 4, 1, 1), {"Pow"}),
    "maximum_minimum": (lambda x: gd.maximum(x, 0.2) + gd.minimum(x, var(6)), {"Max", "Min"}),
    "where": (lambda x: gd.where(x > 0.1, x, x * 0.01) + gd.cast(gd.less_equal(x, 0.0), "float32"),
              {"Where", "Greater", "LessOrEqual", "Cast"}),
    "reshape_transpose": (lambda x: gd.transpose(gd.reshape(x, (-1, 4 * 7 * 6)), (1, 0)), {"Reshape", "Transpose"}),
    "expand_squeeze_concat": (lambda x: gd.concatenate([gd.squeeze(gd.expand_dims(x, 1), 1), x * 2.0], axis=1),
                              {"Unsqueeze", "Squeeze", "Concat"}),
    "broadcast_to": (lambda x: gd.broadcast_to(var(1, 6), (7, 6)) + x, {"Expand"}),
    "reductions": (lambda x: gd.sum(x, axis=(2, 3)) + gd.mean(x, axis=(2, 3)) - gd.max(x, axis=(2, 3)),
                   {"ReduceSum", "ReduceMean", "ReduceMax"}),
    "reductions_keepdims": (lambda x: x - gd.mean(x, axis=1, keepdims=True) + gd.max(x, axis=-1, keepdims=True),
                            {"ReduceMean", "ReduceMax"}),
    "stop_gradient": (lambda x: gd.stop_gradient(x) * 2.0, {"Mul"}),
    "pad": (lambda x: gd.pad(x, [(0, 0), (1, 0), (2, 1), (0, 3)], value=-0.5), {"Pad"}),
    "slices": (lambda x: x[:, 1:3, ::2, -2:] * 2.0 + x[:, :2, -7:100:2, 2:4], {"Slice"}),
    "reversed": (lambda x: x[:, ::-1, 5:1:-2, :] + 1.0, {"Slice"}),
    "index_and_new_axis": (lambda x: gd.expand_dims(x[:, 2, None, -1, 1:5], 3) + x[:, -1:, :1, 1:5, None][..., 0],
                           {"Slice", "Squeeze", "Unsqueeze"}),
    "split": (lambda x: gd.concatenate(gd.split(x, [1, 3], axis=1)[::-1], axis=1), {"Slice", "Concat"}),
}

DENSE = {
    "linear_gemm": (lambda h: gd.matmul(h, var(5, 3)) + var(3), {"Gemm"}),
    "matmul_batched": (lambda h: gd.matmul(gd.reshape(h, (-1, 1, 5)), var(5, 2)), {"MatMul"}),
    "softmax": (lambda h: gd.softmax(h) + gd.log_softmax(h, axis=0), {"Softmax", "LogSoftmax"}),
    "dropout": (lambda h: gd.dropout(gd.relu(h), 0.5), {"Relu"}),
}


@pytest.mark.parametrize("case", sorted(SWEEP))
def test_op_sweep_matches_onnx_runtime(case, tmp_path):
    build, op_types = SWEEP[case]
    x = x4()
    model = check_export(build(x), [x], tmp_path / f"{case}.onnx")
    assert op_types <= {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("case", sorted(DENSE))
def test_dense_sweep_matches_onnx_runtime(case, tmp_path):
    build, op_types = DENSE[case]
    h = gd.placeholder((None, 5), name="h")
    model = check_export(build(h), [h], tmp_path / f"{case}.onnx")
    assert op_types <= {n.op_type for n in model.graph.node}


def test_loss_with_integer_labels_and_two_outputs(tmp_path):
    h = gd.placeholder((None, 5), name="h")
    labels = gd.placeholder((None,), "int64", name="labels")
    logits = gd.matmul(h, var(5, 3)) + var(3)
    loss = gd.softmax_cross_entropy(logits, labels)
    model = check_export([loss, logits], [h, labels], tmp_path / "loss.onnx")
    assert "SoftmaxCrossEntropyLoss" in {n.op_type for n in model.graph.node}


def test_opset_13_writes_reduction_axes_as_attributes(tmp_path):
    x = x4()
    model = check_export(gd.mean(x, axis=(2, 3)) + gd.max(x, axis=(2, 3)), [x], tmp_path / "o13.onnx", opset=13)
    assert model.opset_import[0].version == 13
    reduce_mean = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    assert [a.name for a in reduce_mean.attribute] == ["axes", "keepdims"] and len(reduce_mean.input) == 1


@pytest.mark.parametrize("make, batch", [(lambda: alexnet(), 1), (lambda: alexnet_small(), 2),
                                         (lambda: cnn4(), 2)], ids=["alexnet", "alexnet-small", "cnn4"])
def test_models_match_onnx_runtime(make, batch, tmp_path):
    model = make()
    images = feed_for([model.images], batch=batch)
    onnx_model = check_export(model.logits, [model.images], tmp_path / "model.onnx", arrays=images)
    ops = [n.op_type for n in onnx_model.graph.node]
    assert "Gemm" in ops and "Dropout" not in ops and "MaxPool" in ops
    assert {i.name for i in onnx_model.graph.initializer} >= set(model.params)  # variables as initializers
    if model.name != "cnn4":
        assert ops.count("LRN") == 2
        lrn = next(n for n in onnx_model.graph.node if n.op_type == "LRN")
        alpha = next(a.f for a in lrn.attribute if a.name == "alpha")
        assert alpha == pytest.approx(1e-4 * 5)  # ONNX divides alpha by size; the paper does not


def test_symbolic_dims_and_names(tmp_path):
    x = gd.placeholder((None, 3, None, None), name="images")
    y = gd.adaptive_avg_pool2d(gd.relu(x), 1)
    model = check_export(y, [x], tmp_path / "sym.onnx", arrays=[RNG.standard_normal((2, 3, 5, 4)).astype("float32")])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "images_dim2", "images_dim3"]
    assert model.producer_name == "graphdiff"


# =========================================================================== errors
def test_unsupported_ops_name_the_op_and_the_node(tmp_path):
    x = gd.placeholder((None, 4), name="x")
    picked = gd.one_hot(gd.cast(gd.sum(x, axis=1), "int64"), 3, name="picked")
    with pytest.raises(gd.ModelFormatError, match=r"op one_hot at node 'picked' \(None, 3\): no ONNX form"):
        gd.onnx.export(picked, [x], tmp_path / "a.onnx")
    xx = x4()
    (gx,) = gd.grad(gd.sum(gd.max_pool2d(xx, 2)), [xx])
    with pytest.raises(gd.ModelFormatError, match="gradient ops are not exported"):
        gd.onnx.export(gx, [xx], tmp_path / "b.onnx")
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_failed_export_leaves_an_existing_file_whole(tmp_path):
    x = gd.placeholder((None, 4), name="x")
    path = tmp_path / "model.onnx"
    gd.onnx.export(gd.relu(x), [x], path)
    before = path.read_bytes()
    with pytest.raises(gd.ModelFormatError):
        gd.onnx.export(gd.one_hot(gd.cast(x[:, 0], "int64"), 3), [x], path)  # one_hot has no ONNX form here
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_bad_arguments(tmp_path):
    x = gd.placeholder((None, 4), name="x")
    other = gd.placeholder((None, 4), name="other")
    with pytest.raises(gd.InputError, match="the outputs need placeholder 'other', which is not among the inputs"):
        gd.onnx.export(x + other, [x], tmp_path / "m.onnx")
    with pytest.raises(gd.InputError, match="inputs must be placeholders"):
        gd.onnx.export(gd.relu(x), [gd.relu(x)], tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"opset must be in \[13, "):
        gd.onnx.export(gd.relu(x), [x], tmp_path / "m.onnx", opset=11)
    h = gd.placeholder((None, 4, None, None), name="h")
    with pytest.raises(gd.ModelFormatError, match="needs static spatial dimensions"):
        gd.onnx.export(gd.adaptive_avg_pool2d(h, 3), [h], tmp_path / "m.onnx")


def test_missing_onnx_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    x = gd.placeholder((None, 4), name="x")
    with pytest.raises(gd.BackendError, match=r"pip install -e '\.\[interop\]'"):
        gd.onnx.export(gd.relu(x), [x], tmp_path / "m.onnx")
    with pytest.raises(gd.BackendError, match="needs the onnx package"):
        gd.onnx.load(tmp_path / "m.onnx")
