"""graphdiff.onnx.load: PyTorch AlexNets exported by torch.onnx.export load as
graphs whose logits, gradients and SGD step equal PyTorch's; export -> load
-> export is stable; bad files raise ModelFormatError naming file, node and
attribute, without running anything from the file."""
import copy
import pickle

import numpy as np
import pytest

import graphdiff as gd
import needs
from models.alexnet import Model, alexnet_small, train_step
from test_onnx_export import DENSE, SWEEP, feed_for, x4

onnx = needs.module("onnx", "pip install -e '.[interop]'")
torch = needs.module("torch", "pip install -e '.[bench]'")
needs.module("onnxscript", "pip install -e '.[test]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

nn = torch.nn


# =========================================================================== the PyTorch networks
class AlexNet2012(nn.Module):
    """The paper's network: two towers as groups, LRN after conv1 and conv2 (PyTorch's
    alpha is divided by size, so 5 * 1e-4 here is the paper's 1e-4), 227 x 227 input;
    ``shrink`` divides the channels (and the dense layers by its square)."""

    def __init__(self, classes=1000, shrink=1):
        super().__init__()
        lrn = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)
        c = [96 // shrink, 256 // shrink, 384 // shrink, 384 // shrink, 256 // shrink]
        hidden = 4096 // shrink**2
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 11, stride=4), nn.ReLU(), nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[0], c[1], 5, padding=2, groups=2), nn.ReLU(), nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(),
            nn.Conv2d(c[2], c[3], 3, padding=1, groups=2), nn.ReLU(),
            nn.Conv2d(c[3], c[4], 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(c[4] * 6 * 6, hidden), nn.ReLU(),
            nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class TorchvisionAlexNet(nn.Module):
    """torchvision's single tower (64-192-384-256-256, no LRN, adaptive average
    pooling to 6 x 6), channels divided by ``shrink`` to keep the test small."""

    def __init__(self, classes=10, shrink=4):
        super().__init__()
        c = [64 // shrink, 192 // shrink, 384 // shrink, 256 // shrink, 256 // shrink]
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(),
            nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(),
            nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        hidden = 4096 // shrink**2
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(c[4] * 36, hidden), nn.ReLU(),
            nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def he_init(model, seed):
    """He-scaled weights and small biases, so the logits are O(1) and a 1e-4 tolerance means something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)
    return model.eval()


#: name -> (build, image size, classes). The full-size 2012 network (61M parameters) is
#: checked on its logits; the gradient and SGD checks, in float64, use it at a quarter width.
NETS = {"alexnet2012": (lambda: AlexNet2012(), 227, 1000),
        "alexnet2012-quarter": (lambda: AlexNet2012(classes=100, shrink=4), 227, 100),
        "torchvision": (lambda: TorchvisionAlexNet(shrink=4), 224, 10)}
IN_FLOAT64 = ["alexnet2012-quarter", "torchvision"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (torch model, its torch.onnx.export file in float32, and in float64):
    each exported once. Gradients are compared in float64: in float32 a max
    pooling window whose two largest values differ by less than the rounding
    picks either (PyTorch's float32 and float64 gradients of AlexNet's conv1
    weights differ by ~1% of their largest entry for that reason), so only
    float64 pins the comparison down."""
    folder = tmp_path_factory.mktemp("torch_onnx")
    out = {}
    for name, (build, size, _) in NETS.items():
        model = he_init(build(), seed=len(out))
        paths = []
        for dtype in (torch.float32, torch.float64) if name in IN_FLOAT64 else (torch.float32,):
            path = folder / f"{name}_{str(dtype)[6:]}.onnx"
            torch.onnx.export(copy.deepcopy(model).to(dtype), (torch.zeros(2, 3, size, size, dtype=dtype),),
                              str(path), dynamo=True, verbose=False, input_names=["images"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
            paths.append(path)
        out[name] = (model, paths[0], paths[-1])
    return out


def batch(name, n=2, seed=0):
    size, classes = NETS[name][1:]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, size, size)).astype(np.float32), rng.integers(0, classes, n)


# =========================================================================== PyTorch's exports
@pytest.mark.parametrize("name", sorted(NETS))
def test_logits_equal_pytorch(exported, name):
    torch_model, path, _ = exported[name]
    model = gd.onnx.load(path)
    assert [p.name for p in model.inputs] == ["images"] and model.inputs[0].shape == (None, 3) + (NETS[name][1],) * 2
    assert set(model.params) == {k for k, _ in torch_model.named_parameters()}
    ops = [n.op.name for n in gd.toposort(model.outputs)]
    if name.startswith("alexnet2012"):  # PyTorch's decomposed LRN comes back as one lrn, in the paper's convention
        lrns = [n for n in gd.toposort(model.outputs) if n.op.name == "lrn_normalize"]
        assert len(lrns) == 2 and all(n.op.alpha == pytest.approx(1e-4) and n.op.size == 5 for n in lrns)
        assert "window_sum_channels" not in ops
    else:
        assert "avg_pool2d" in ops  # adaptive 6 x 6 over 6 x 6: PyTorch writes an AveragePool
    assert max(len(n.shape) for n in gd.toposort(model.outputs)) == 4  # no 5-D detour left
    x, _ = batch(name)
    logits = gd.compile(model.outputs, inputs=model.inputs)(x)[0]
    want = torch_model(torch.tensor(x)).detach().numpy()
    assert np.abs(want).max() > 0.5  # logits of a useful size
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, output_size", [((3, 3), (6, 6)), ((7, 9), (3, 4)), ((5, 5), (2, 2))])
def test_adaptive_pooling_that_pytorch_writes_as_a_gather_loads_as_one_op(tmp_path, size, output_size):
    """Bins that do not tile the input: PyTorch writes Transpose, GatherND, Transpose, ReduceMean."""
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(output_size)).eval()
    path = tmp_path / "adaptive.onnx"
    torch.onnx.export(net, (torch.zeros(2, 2, *size),), str(path), dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert "GatherND" in {n.op_type for n in onnx.load(str(path)).graph.node}
    model = gd.onnx.load(path)
    (y,) = model.outputs
    assert y.op.name == "adaptive_avg_pool2d" and y.op.output_size == output_size
    x = np.random.default_rng(0).standard_normal((2, 2, *size)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = net(tx)
    ty.sum().backward()
    values = gd.compile([y, gd.grad(gd.sum(y), [model.inputs[0]])[0]], inputs=model.inputs)(x)
    np.testing.assert_allclose(values[0], ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values[1], tx.grad.numpy(), rtol=1e-5, atol=1e-6)


class PaddedNet(nn.Module):
    """Explicit ``F.pad`` (exported as ONNX ``Pad``): asymmetric, with a fill value, and cropping."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        x = nn.functional.pad(x, (1, 2, 0, 1), value=0.5)  # last axis (1, 2), then rows (0, 1)
        return nn.functional.pad(torch.relu(self.conv(x)), (0, -1, -1, 0))  # a negative amount crops


def loads_like_torch(net, shape, tmp_path, op_types, seed=0, grad_atol=1e-5):
    """Export ``net`` with ``torch.onnx.export`` (a run-time batch), check that the
    file holds ``op_types``, load it: the output and the input gradient of
    ``sum(y^2)`` equal PyTorch's on a batch of 3. Returns the loaded model."""
    path = tmp_path / "net.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(2, *shape),), str(path), dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    types = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert op_types <= types, types
    model = gd.onnx.load(path)
    (y,) = model.outputs
    x = np.random.default_rng(seed).standard_normal((3, *shape)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = net(tx)
    (ty * ty).sum().backward()
    values = gd.compile([y, gd.grad(gd.sum(y * y), [model.inputs[0]])[0]], inputs=model.inputs)(x)
    np.testing.assert_allclose(values[0], ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values[1], tx.grad.numpy(), rtol=1e-5, atol=grad_atol)
    return model


def test_pytorch_pad_loads_with_its_gradient(tmp_path):
    model = loads_like_torch(PaddedNet(), (2, 6, 5), tmp_path, {"Pad"}, seed=1)
    assert "pad" in {t.op.name for t in gd.toposort(model.outputs)}


class SlicedNet(nn.Module):
    """Slicing and splitting as PyTorch writes them (``Slice``, ``Split``): channel
    groups cut by hand, a reversed and strided crop."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        a, b = torch.split(self.conv(x), [2, 4], dim=1)
        h = torch.cat([b[:, 1:3], torch.relu(a)], dim=1)        # (N, 4, 7, 6)
        return h[:, :, 1::2, :].flip(1)[..., 1:-1] * 2.0 + h[:, :, -3:, 1:5]


def test_pytorch_slices_and_splits_load_with_their_gradients(tmp_path):
    loads_like_torch(SlicedNet(), (4, 7, 6), tmp_path, {"Slice", "Split"}, seed=3, grad_atol=1e-4)


def torch_sgd(torch_model, x, labels, lr=0.0):
    """PyTorch's loss, autograd gradients and (``lr`` > 0) parameters after one SGD
    step, in float64, on a copy of ``torch_model``."""
    model = copy.deepcopy(torch_model).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loss = nn.functional.cross_entropy(model(torch.tensor(x, dtype=torch.float64)), torch.tensor(labels))
    loss.backward()
    grads = {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
    if lr:
        opt.step()
    return float(loss.detach()), grads, {k: p.detach().numpy() for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", IN_FLOAT64)
def test_gradients_equal_pytorch_autograd(exported, name):
    torch_model, _, path = exported[name]
    model = gd.onnx.load(path)
    assert model.inputs[0].dtype == np.float64 and all(p.dtype == np.float64 for p in model.params.values())
    labels = gd.placeholder((None,), "int64", name="labels")
    loss = gd.softmax_cross_entropy(model.outputs[0], labels)
    names = list(model.params)
    grads = gd.grad(loss, [model.params[k] for k in names])
    assert [g.op.name for g in grads[:2]] == ["conv2d_grad_weight", "sum"]  # first-class gradient ops
    x, t = batch(name, seed=1)
    values = gd.compile([loss] + grads, inputs=model.inputs + [labels])(x, t)
    want_loss, want, _ = torch_sgd(torch_model, x, t)
    assert values[0] == pytest.approx(want_loss, rel=1e-10)
    for k, g in zip(names, values[1:]):
        np.testing.assert_allclose(g, want[k], rtol=1e-7, atol=1e-9 * np.abs(want[k]).max(), err_msg=k)


@pytest.mark.parametrize("name", IN_FLOAT64)
def test_one_sgd_step_with_train_step_equals_pytorch_sgd(exported, name):
    torch_model, _, path = exported[name]
    loaded = gd.onnx.load(path)  # a fresh copy: the step updates its variables in place
    images, labels = loaded.inputs[0], gd.placeholder((None,), "int64", name="labels")
    logits = loaded.outputs[0]
    model = Model("imported", images, labels, logits, gd.softmax_cross_entropy(logits, labels), loaded.params,
                  layers={}, config={})
    step = train_step(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
    before = {k: np.array(v.value) for k, v in loaded.params.items()}
    x, t = batch(name, seed=2)
    loss = step(x, t)
    want_loss, _, want = torch_sgd(torch_model, x, t, lr=0.01)
    assert loss == pytest.approx(want_loss, rel=1e-10)
    for k in before:
        after = model.params[k].value
        moved = np.abs(want[k] - before[k]).max()
        assert moved > 0 and not np.array_equal(before[k], after), k  # the step moved every parameter
        np.testing.assert_allclose(after, want[k], rtol=0, atol=1e-6 * moved, err_msg=k)


# =========================================================================== round trips
def structure(model):
    """Nodes as (op, inputs, attributes) with value names replaced by their order of
    appearance and initializers by their contents: equal for equal graphs."""
    names, inits = {}, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def canon(n):
        if n in inits:
            a = inits[n]
            return ("initializer", a.dtype.str, a.shape, a.tobytes())
        return names.setdefault(n, f"v{len(names)}") if n else ""

    for i in model.graph.input:
        canon(i.name)
    nodes = []
    for n in model.graph.node:
        attrs = []
        for a in n.attribute:
            value = helper.get_attribute_value(a)
            attrs.append((a.name, numpy_helper.to_array(value).tobytes() if isinstance(value, TensorProto)
                          else repr(value)))
        nodes.append((n.op_type, [canon(i) for i in n.input], [canon(o) for o in n.output], sorted(attrs)))
    return nodes, [canon(o.name) for o in model.graph.output]


def round_trip(outputs, inputs, folder, arrays):
    """export -> load -> export: the two files have one structure, and all three graphs one result."""
    first = gd.onnx.export(outputs, inputs, folder / "first.onnx")
    loaded = gd.onnx.load(folder / "first.onnx")
    second = gd.onnx.export(loaded.outputs, loaded.inputs, folder / "second.onnx")
    assert structure(second) == structure(first)
    want = gd.compile(outputs, inputs=inputs, training=False)(*arrays)
    got = gd.compile(loaded.outputs, inputs=loaded.inputs)(*arrays)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    return loaded


@pytest.mark.parametrize("case", sorted(SWEEP))
def test_round_trip_of_each_op_is_stable(case, tmp_path):
    x = x4()
    round_trip([SWEEP[case][0](x)], [x], tmp_path, feed_for([x]))


@pytest.mark.parametrize("case", sorted(DENSE))
def test_round_trip_of_dense_ops_is_stable(case, tmp_path):
    h = gd.placeholder((None, 5), name="h")
    round_trip([DENSE[case][0](h)], [h], tmp_path, feed_for([h]))


def test_round_trip_of_alexnet_small_keeps_names_and_trains(tmp_path):
    model = alexnet_small()
    x = feed_for([model.images])
    loaded = round_trip([model.logits], [model.images], tmp_path, x)
    assert list(loaded.params) == list(model.params)  # "conv1/w", ...: the variables' names
    assert all(np.array_equal(loaded.params[k].value, model.params[k].value) for k in model.params)
    (g,) = gd.grad(gd.sum(loaded.outputs[0]), [loaded.params["conv1/w"]])
    assert g.shape == model.params["conv1/w"].shape and g.op.name == "conv2d_grad_weight"


def test_layers_come_back_as_scopes(exported, tmp_path):
    """Diagrams and the explorer group a layer into one box: a graphdiff file's
    ``<scope>/`` names and PyTorch's module paths become scopes again."""
    model = alexnet_small()
    gd.onnx.export(model.logits, [model.images], tmp_path / "small.onnx")
    loaded = gd.onnx.load(tmp_path / "small.onnx")
    original = {t.name: t.scope for t in gd.toposort([model.logits]) if t.kind not in ("placeholder", "variable")}
    ops = [t for t in gd.toposort(loaded.outputs) if t.kind not in ("placeholder", "variable", "constant")]
    assert {t.scope for t in ops} >= {"conv1", "norm1", "pool1", "conv5", "fc6", "fc8"}
    assert all(t.scope == original[t.name] for t in ops if t.name in original)
    torch_loaded = gd.onnx.load(exported["alexnet2012"][1])
    convs = [t for t in gd.toposort(torch_loaded.outputs) if t.op.name == "conv2d"]
    assert [t.scope for t in convs] == ["features.0", "features.4", "features.8", "features.10", "features.12"]


def test_round_trip_of_a_pytorch_file_is_stable(exported, tmp_path):
    loaded = gd.onnx.load(exported["torchvision"][1])  # float32
    first = gd.onnx.export(loaded.outputs, loaded.inputs, tmp_path / "a.onnx")
    again = gd.onnx.load(tmp_path / "a.onnx")
    second = gd.onnx.export(again.outputs, again.inputs, tmp_path / "b.onnx")
    assert structure(second) == structure(first)
    assert [n.op_type for n in first.graph.node].count("Gemm") == 3


# =========================================================================== bad files
def tiny_model(node, inputs=None, outputs=None, initializers=(), opset=18, domains=()):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [None] * 4)]
    graph = helper.make_graph([node], "tiny", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def save(model, path):
    path.write_bytes(model.SerializeToString())
    return path


def test_truncated_and_malformed_files_name_the_file(tmp_path):
    x = gd.placeholder((None, 3, 16, 16), name="x")
    w = gd.variable(np.ones((4, 3, 3, 3), np.float32), name="w")
    data = gd.onnx.export(gd.relu(gd.conv2d(x, w)), [x], tmp_path / "good.onnx").SerializeToString()
    for cut in (len(data) // 10, len(data) // 2, len(data) - 7, 1):
        bad = tmp_path / f"cut{cut}.onnx"
        bad.write_bytes(data[:cut])
        with pytest.raises(gd.ModelFormatError, match=rf"^{bad}: ") as err:
            gd.onnx.load(bad)
        assert "truncated" in str(err.value) or "not a valid ONNX model" in str(err.value)
    for name, content in (("empty.onnx", b""), ("text.onnx", b"this is not a model\n" * 10)):
        with pytest.raises(gd.ModelFormatError, match=rf"{tmp_path / name}: not an ONNX model, or truncated"):
            gd.onnx.load(save_bytes(tmp_path / name, content))
    with pytest.raises(gd.ModelFormatError, match=r"missing\.onnx: cannot read the file"):
        gd.onnx.load(tmp_path / "missing.onnx")


def save_bytes(path, content):
    path.write_bytes(content)
    return path


class _Trap:
    """Unpickling this would create a file: loading must never unpickle or run anything."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_loading_runs_nothing_from_the_file(tmp_path):
    marker = tmp_path / "ran.txt"
    bad = save_bytes(tmp_path / "pickle.onnx", pickle.dumps(_Trap(marker)))
    with pytest.raises(gd.ModelFormatError, match="not an ONNX model"):
        gd.onnx.load(bad)
    node = helper.make_node("PythonOp", ["x"], ["y"], name="run_me", domain="com.example")
    path = save(tiny_model(node, domains=["com.example"]), tmp_path / "custom.onnx")
    with pytest.raises(gd.ModelFormatError, match=r"node 'run_me' \(PythonOp\): op PythonOp in domain 'com.example' "
                                                  r"is not supported"):
        gd.onnx.load(path)
    assert not marker.exists()


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    folder = tmp_path / "models"
    folder.mkdir()
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    node = helper.make_node("Add", ["x", "w"], ["y"], name="add")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    path = save(tiny_model(node, inputs=[x], initializers=[w]), folder / "m.onnx")
    with pytest.raises(gd.ModelFormatError, match=r"initializer 'w': external data '\.\./secret\.bin' must be a file "
                                                  r"in the model's folder"):
        gd.onnx.load(path)


@pytest.mark.parametrize("node, message", [
    (helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up"), r"node 'up' \(Resize\): op Resize is not "
                                                                         r"supported"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="pool1", kernel_shape=[3, 3], strides=[2, 2], storage_order=1),
     r"node 'pool1' \(MaxPool\): attribute storage_order=1 is not supported \(row-major only\)"),
    (helper.make_node("AveragePool", ["x"], ["y"], name="pool2", kernel_shape=[2, 2], dilations=[2, 2]),
     r"node 'pool2' \(AveragePool\): attribute dilations=\[2, 2\] is not supported"),
    (helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", kernel_shape=[3, 3], dilations=[0, 1]),
     r"node 'conv1' \(Conv\): attribute dilations=\[0, 1\] is not supported \(2-D, >= 1\)"),
    (helper.make_node("AveragePool", ["x"], ["y"], name="pool3", kernel_shape=[3, 3], pads=[1, 0, 0, 1]),
     r"node 'pool3' \(AveragePool\): attribute pads=\[1, 0, 0, 1\] is not supported \(graphdiff pads both sides "
     r"equally\)"),
    (helper.make_node("AveragePool", ["x"], ["y"], name="pool4", kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
     r"node 'pool4' \(AveragePool\): attribute auto_pad='SAME_UPPER' is not supported"),
    (helper.make_node("Reshape", ["x", "x_shape"], ["y"], name="flat"),
     r"node 'shape' \(Shape\): input 'x' has dimensions known only at run time \(None, 2, 8, 8\): shape arithmetic "
     r"must fold when the file is loaded"),
    (helper.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode="reflect"),
     r"node 'pad' \(Pad\): attribute 'mode' = 'reflect' is not supported \(only 'constant'\)"),
    (helper.make_node("Slice", ["x", "zero", "two", "one", "zero"], ["y"], name="cut"),
     r"node 'cut' \(Slice\): a step of 0"),
], ids=["unknown-op", "pool-storage-order", "pool-dilations", "conv-dilations", "asymmetric-pads", "auto-pad",
        "run-time-shape", "pad-reflect", "slice-step-0"])
def test_unsupported_ops_and_attributes_name_file_node_and_attribute(tmp_path, node, message):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])
    inits = [numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             *(numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("zero", 0), ("one", 1), ("two", 2)))]
    nodes = [node]
    if node.op_type == "Reshape":
        nodes = [helper.make_node("Shape", ["x"], ["x_shape"], name="shape")] + nodes
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), tmp_path / "bad.onnx")
    with pytest.raises(gd.ModelFormatError, match=rf"^{path}: {message}"):
        gd.onnx.load(path)


def test_old_opsets_are_refused_by_name(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"], name="act")
    path = save(tiny_model(node, opset=11), tmp_path / "old.onnx")
    with pytest.raises(gd.ModelFormatError, match=r"old\.onnx: opset 11 of the standard domain is not supported"):
        gd.onnx.load(path)
