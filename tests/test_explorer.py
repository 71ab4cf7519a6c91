"""The explorer's data (visualize.explore): values equal the compiled program's,
the VJP provenance, rules from the docstrings, the element-level pictures
against naive loops, the compiler passes and memory plan, to_dot(feed=...),
the command line and the training command's explorer.html. The page itself is
driven in a browser in test_explorer_browser.py."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import graphdiff as gd
import needs
import visualize as vz
from graphdiff.autodiff import provenance
from visualize.explore import build_data, memory_plan, rule_text, value_stats


def small_cnn(seed=0, batch=3):
    """conv (3x3, pad 1) -> relu -> max pool 2 -> conv (2x2) -> relu -> dense -> loss, both passes."""
    rng = np.random.default_rng(seed)
    x = gd.placeholder((None, 2, 8, 8), name="x")
    t = gd.placeholder((None,), dtype="int64", name="labels")
    with gd.scope("conv1"):
        w1 = gd.variable(rng.standard_normal((4, 2, 3, 3)).astype("float32") * 0.4, name="w")
        b1 = gd.variable(rng.standard_normal(4).astype("float32") * 0.1, name="b")
        h = gd.relu(gd.conv2d(x, w1, b1, padding=1))
    with gd.scope("pool1"):
        h = gd.max_pool2d(h, 2)
    with gd.scope("conv2"):
        w2 = gd.variable(rng.standard_normal((3, 4, 2, 2)).astype("float32") * 0.4, name="w")
        h = gd.relu(gd.conv2d(h, w2))
    with gd.scope("fc"):
        w3 = gd.variable(rng.standard_normal((27, 5)).astype("float32") * 0.3, name="w")
        logits = gd.matmul(gd.reshape(h, (-1, 27)), w3)
    with gd.scope("loss"):
        loss = gd.softmax_cross_entropy(logits, t)
    params = {"conv1/w": w1, "conv1/b": b1, "conv2/w": w2, "fc/w": w3}
    grads = gd.grad(loss, list(params.values()))
    feed = {x: rng.standard_normal((batch, 2, 8, 8)).astype("float32"), t: rng.integers(0, 5, batch)}
    return dict(x=x, t=t, loss=loss, params=params, grads=grads, feed=feed, outputs=[loss, *grads])


@pytest.fixture(scope="module")
def cnn():
    return small_cnn()


def by_name(data):
    return {n["name"]: n for n in data["nodes"]}


def test_values_equal_a_direct_compiled_program(cnn):
    data = build_data(cnn["outputs"], feed=cnn["feed"])
    records = {n["id"]: n for n in data["nodes"]}
    nodes = [n for n in gd.toposort(cnn["outputs"]) if n.kind in ("forward", "gradient") and n.kind != "constant"]
    assert len(nodes) > 25
    checked = 0
    for node in nodes:
        st = records[node.id]["stats"]
        direct = np.asarray(gd.compile(node, inputs=[cnn["x"], cnn["t"]])(*cnn["feed"].values()), dtype=np.float64)
        assert st["shape"] == list(direct.shape), node.name
        if direct.size:
            assert st["mean"] == pytest.approx(direct.mean(), rel=1e-6, abs=1e-9), node.name
            assert st["std"] == pytest.approx(direct.std(), rel=1e-6, abs=1e-9), node.name
            assert st["min"] == pytest.approx(direct.min(), rel=1e-6, abs=1e-12), node.name
            assert st["max"] == pytest.approx(direct.max(), rel=1e-6, abs=1e-12), node.name
            assert st["zero"] == pytest.approx(np.mean(direct == 0)), node.name
            assert st["norm"] == pytest.approx(np.linalg.norm(direct.ravel()), rel=1e-6, abs=1e-12), node.name
            assert sum(st["hist"]) == direct.size
            checked += 1
    assert checked == len(nodes)
    # dead ReLUs show as zeros: the relu outputs have a positive fraction of them
    relus = [records[n.id]["stats"]["zero"] for n in nodes if n.op.name == "relu"]
    assert relus and all(0 < z < 1 for z in relus)
    # and the gradient of conv1/w: a gradient node, the loss's slope
    (gw,) = [records[g.id] for g in cnn["grads"][:1]]
    assert gw["stats"]["gradient"] and gw["backward"] and gw["gradient_of"] == cnn["params"]["conv1/w"].id


def test_value_stats_formula():
    a = np.array([[0.0, 1.0], [-2.0, np.inf]], np.float32)
    st = value_stats(a)
    assert st["shape"] == [2, 2] and st["dtype"] == "float32" and st["nonfinite"] == 1
    assert st["mean"] == pytest.approx(-1 / 3) and st["min"] == -2 and st["max"] == 1
    assert st["zero"] == pytest.approx(1 / 3) and st["norm"] == pytest.approx(np.sqrt(5))
    assert st["std"] == pytest.approx(np.std([0, 1, -2]))


def test_thumbnails_of_feature_maps_and_filters(cnn):
    data = build_data(cnn["outputs"], feed=cnn["feed"])
    names = by_name(data)
    w = names["conv1/w"]["thumbs"]
    assert w["what"] == "filters" and len(w["maps"]) == 4 and (w["h"], w["w"]) == (3, 3)
    relu = next(n for n in data["nodes"] if n["op"] == "relu" and n["scope"] == "conv1")
    th = relu["thumbs"]
    assert len(th["maps"]) == 4 and (th["h"], th["w"]) == (8, 8)
    import base64

    pixels = np.frombuffer(base64.b64decode(th["maps"][0]), np.uint8).reshape(8, 8)
    relu_node = next(n for n in gd.toposort(cnn["outputs"]) if n.id == relu["id"])
    value = gd.compile(relu_node, inputs=[cnn["x"]])(cnn["feed"][cnn["x"]])[0, 0].astype(np.float64)
    expect = np.round((value - value.min()) / (value.max() - value.min()) * 255)
    np.testing.assert_array_equal(pixels, expect.astype(np.uint8))


def test_a_feed_that_does_not_fit_gets_the_programs_input_error(cnn):
    x, t = cnn["x"], cnn["t"]
    bad = {x: np.zeros((3, 2, 7, 8), np.float32), t: np.zeros(3, np.int64)}
    with pytest.raises(gd.InputError) as direct:
        gd.compile(cnn["loss"], inputs=[x, t])(*bad.values())
    with pytest.raises(gd.InputError) as explored:
        vz.explore(cnn["outputs"], feed=bad)
    assert str(explored.value) == str(direct.value)
    assert "'x'" in str(explored.value) and "(None, 2, 8, 8)" in str(explored.value)
    images = cnn["feed"][x]
    with pytest.raises(gd.InputError) as direct:
        gd.compile(cnn["loss"], inputs=[x, t])(images, None)
    with pytest.raises(gd.InputError, match="missing 'labels'") as explored:
        vz.explore(cnn["outputs"], feed={x: images})  # labels missing
    assert str(explored.value) == str(direct.value)
    with pytest.raises(gd.InputError, match="floats"):
        vz.explore(cnn["outputs"], feed={"x": cnn["feed"][x], "floats": np.zeros(3)})
    with pytest.raises(gd.InputError, match="integers"):
        vz.explore(cnn["outputs"], feed={x: cnn["feed"][x], t: np.zeros(3)})  # float labels


def test_provenance_names_the_vjp_rule_behind_each_backward_node(cnn):
    nodes = gd.toposort(cnn["outputs"])
    conv1 = next(n for n in nodes if n.op.name == "conv2d" and n.scope == "conv1")
    conv2 = next(n for n in nodes if n.op.name == "conv2d" and n.scope == "conv2")
    gi = [n for n in nodes if n.op.name == "conv2d_grad_input"]
    assert len(gi) == 1 and provenance(gi[0])[0] is conv2  # conv1's input is a placeholder
    gws = [n for n in nodes if n.op.name == "conv2d_grad_weight"]
    assert {provenance(n)[0].id for n in gws} == {conv1.id, conv2.id}
    for n in nodes:
        if n.backward and n.kind != "constant":
            src = provenance(n)[0]
            assert src is not None or provenance(n)[1] is not None, n.name
            if src is not None:
                assert not src.backward and n.scope == src.scope
        if not n.backward:
            assert provenance(n) == (None, None)
    w = cnn["params"]["conv2/w"]
    assert provenance(cnn["grads"][2])[1] is w


def test_rules_come_from_the_ops_docstrings(cnn):
    nodes = {n.op.name: n for n in gd.toposort(cnn["outputs"])}
    relu = rule_text(nodes["relu"].op)
    assert "switch" in relu and "vjp(x, y, g) = relu_grad(y, g)" in relu
    assert "switch" in rule_text(next(n for n in gd.toposort(cnn["outputs"]) if n.op.name == "relu_grad").op)
    assert "inversion of indexes" in rule_text(nodes["conv2d_grad_input"].op)
    assert "case 1" in rule_text(nodes["conv2d_grad_weight"].op)
    assert "multiplexer" in rule_text(nodes["max_pool2d_grad"].op)
    assert "vjp(a, b, y, g) = (g * b, g * a)" in rule_text(nodes["mul"].op)
    x = gd.placeholder((1, 6, 3, 3))
    y = gd.lrn(x)
    (g,) = gd.grad(gd.sum(y), [x])
    grad_op = next(n for n in gd.toposort([g]) if n.op.name == "lrn_grad").op
    assert "fused backward" in rule_text(grad_op) and "S^T" in rule_text(grad_op)


def _conv_valid(X, W):
    n, m = X.shape[0], W.shape[0]
    k = n - m + 1
    Y = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            for a in range(m):
                for b in range(m):
                    Y[i, j] += W[a, b] * X[i + a, j + b]
    return Y


def test_element_level_pictures_hold_the_real_numbers(cnn):
    data = build_data(cnn["outputs"], feed=cnn["feed"])
    nodes = {n.id: n for n in gd.toposort(cnn["outputs"])}
    pics = {nodes[int(k)].op.name + ":" + nodes[int(k)].scope: v for k, v in data["pictures"].items()}
    assert {"conv2d:conv1", "relu:conv1", "max_pool2d:pool1", "conv2d:conv2", "relu:conv2"} <= set(pics)
    feed_x = cnn["feed"][cnn["x"]].astype(np.float64)
    conv = pics["conv2d:conv1"]
    w1 = cnn["params"]["conv1/w"].value.astype(np.float64)
    X, W = np.array(conv["X"]), np.array(conv["W"])
    np.testing.assert_array_equal(X, feed_x[0, 0, :conv["n"], :conv["n"]])
    np.testing.assert_array_equal(W, w1[0, 0])
    np.testing.assert_allclose(conv["Y"], _conv_valid(X, W), rtol=1e-12)
    # backward: dX_ij = sum_ab W_ab dE_(i-a)(j-b) over the crop (naive, the other way round:
    # scatter each dE_ij to the inputs its window read)
    dE = np.array(conv["dE"])
    scatter = np.zeros_like(X)
    m = W.shape[0]
    for i in range(dE.shape[0]):
        for j in range(dE.shape[1]):
            scatter[i:i + m, j:j + m] += dE[i, j] * W
    np.testing.assert_allclose(conv["dX"], scatter, rtol=1e-12, atol=1e-15)
    # dE is the real gradient reaching the convolution (its padding of 1 offsets the crop)
    conv_node = next(n for n in nodes.values() if n.op.name == "conv2d" and n.scope == "conv1")
    g = next(n for n in nodes.values() if provenance(n)[1] is conv_node)
    gv = gd.compile(g, inputs=[cnn["x"], cnn["t"]])(*cnn["feed"].values())
    np.testing.assert_allclose(dE, gv[0, 0, 1:1 + dE.shape[0], 1:1 + dE.shape[1]], rtol=1e-6)

    relu = pics["relu:conv1"]
    assert relu["switch"] == [y > 0 for y in relu["y"]]
    np.testing.assert_allclose(relu["g_out"], np.where(relu["switch"], relu["g_in"], 0.0), rtol=1e-6)
    assert relu["y"] == [max(0.0, v) for v in relu["x"]]

    pool = pics["max_pool2d:pool1"]
    Xp = np.array(pool["X"])
    routed = np.zeros_like(Xp)
    for win in pool["windows"]:
        r, c = win["r0"], win["c0"]
        window = Xp[r:r + 2, c:c + 2]
        assert win["max"] == window.max() and Xp[tuple(win["argmax"])] == window.max()
        routed[tuple(win["argmax"])] += win["dE"]
    np.testing.assert_array_equal(pool["dX"], routed)


def test_compiler_passes_memory_plan_and_profile(cnn):
    from graphdiff.optim import sgd_momentum

    updates, _ = sgd_momentum(cnn["loss"], cnn["params"], lr=0.01)
    program = gd.compile(cnn["loss"], inputs=[cnn["x"], cnn["t"]], updates=updates)
    assert [name for name, _ in program.passes] == ["prune", "simplify", "rewrite", "fusion"]
    assert program.passes[-1][1] == program.nodes
    assert len(program.passes[0][1]) > len(program.passes[1][1]) > len(program.passes[3][1])
    assert program.passes[2].rules == {"conv2d_relu": 2, "conv2d_shared_columns": 1, "max_pool2d_with_argmax": 1}
    before = {k: v.value.copy() for k, v in cnn["params"].items()}
    program.profile(*cnn["feed"].values())
    for k, v in cnn["params"].items():  # the profile ran a step: put the weights back for the other tests
        v.value = before[k]
    data = build_data(cnn["outputs"], feed=cnn["feed"], program=program)
    prog = data["program"]
    assert [p["name"] for p in prog["passes"]] == ["prune", "simplify", "rewrite", "fusion"]
    assert prog["passes"][2]["rules"] == program.passes[2].rules
    records = {n["id"]: n for n in data["nodes"]}
    assert all(i in records for p in prog["passes"] for i in p["nodes"])
    fused = [records[i] for i in prog["passes"][3]["nodes"] if records[i]["op"] == "fused_elementwise"]
    assert fused and all("steps" in f["fused"] for f in fused)
    members = prog["passes"][3]["members"]
    assert any(str(f["id"]) in members for f in fused)
    # conv + ReLU (made by the rewrite pass) still opens into its members in the final graph
    assert any(records[int(k)]["op"] == "conv2d_relu" for k in members)
    assert prog["passes"][2]["members"].keys() <= {str(i) for i in prog["passes"][2]["nodes"]}
    for fid, ms in members.items():
        assert len(ms) >= 2 and all(m in records for m in ms)
    assert set(prog["profile"]) == {str(n.id) for n, _ in program.last_profile}
    mem = prog["memory"]
    assert mem["peak_bytes"] == max(mem["live"]) and mem["steps"] == len(program.nodes)
    # live bytes at each step = the buffers alive then (independent sum)
    for step in (0, mem["peak_step"], mem["steps"] - 1):
        assert mem["live"][step] == sum(b["bytes"] for b in mem["buffers"] if b["start"] <= step <= b["end"])
    # the batch of the feed sizes the None dimension: 3 images of the first convolution's output
    conv = next(b for b in mem["buffers"] if records[b["id"]]["op"] in ("conv2d_relu", "conv2d"))
    assert conv["bytes"] == 3 * 4 * 8 * 8 * 4


def test_memory_plan_of_a_chain_frees_after_the_last_reader():
    x = gd.placeholder((10,), name="x")
    a = gd.exp(x)          # 40 bytes, read by b and c
    b = gd.tanh(a)
    c = a * b
    program = gd.compile(gd.sum(c), inputs=[x], optimize=False)
    plan = memory_plan(program)
    spans = {b_["name"].split("_")[0]: (b_["start"], b_["end"], b_["bytes"]) for b_ in plan["buffers"]}
    order = [n.name.split("_")[0] for n in program.nodes]
    assert spans["exp"] == (order.index("exp"), order.index("mul"), 40)
    assert spans["tanh"] == (order.index("tanh"), order.index("mul"), 40)
    assert plan["peak_bytes"] == 120  # exp, tanh and mul alive at the multiply


def test_to_dot_with_a_feed_prints_mean_std_and_zeros(cnn):
    d = vz.to_dot(cnn["loss"], feed=cnn["feed"])
    relu = next(n for n in gd.toposort([cnn["loss"]]) if n.op.name == "relu")
    value = gd.compile(relu, inputs=[cnn["x"]])(cnn["feed"][cnn["x"]]).astype(np.float64)
    line = f"mean {value.mean():.3g} std {value.std():.3g} zero {100 * np.mean(value == 0):.0f}%"
    assert line in d.source
    assert d.source.count("mean ") >= len([n for n in gd.toposort([cnn["loss"]])])
    assert "mean " not in vz.to_dot(cnn["loss"]).source
    with pytest.raises(gd.InputError):
        vz.to_dot(cnn["loss"], feed={cnn["x"]: np.zeros((1, 2, 8, 8), np.float32)})


def test_the_page_is_self_contained_and_parameters_default_to_gradients(cnn, tmp_path):
    path = tmp_path / "page.html"
    page = vz.explore(cnn["loss"], feed=cnn["feed"], params=cnn["params"], path=path)
    text = path.read_text()
    assert text == page.html and "<script>" in text and "gd-data" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "nothing may be fetched"
    assert "<iframe" in page._repr_html_() and "srcdoc=" in page._repr_html_()
    payload = re.search(r'<script id="gd-data" type="application/json">(.*?)</script>', text, re.S).group(1)
    data = json.loads(payload.replace("<\\/", "</"))
    params = {p["name"]: p for p in data["params"]}
    assert set(params) == set(cnn["params"]) and all(p["grad"] is not None for p in params.values())
    records = {n["id"]: n for n in data["nodes"]}
    assert all(records[p["grad"]]["gradient_of"] == p["id"] for p in params.values())
    assert data["backward_schedule"] and all(records[i]["backward"] for i in data["backward_schedule"])


def test_assets_are_package_data():
    import tomllib

    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)
    patterns = config["tool"]["setuptools"]["package-data"]["visualize"]
    import fnmatch

    root = os.path.dirname(vz.__file__)
    assets = [os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
              for d, _, files in os.walk(os.path.join(root, "explorer_assets")) for f in files]
    assert "explorer_assets/katex/katex.min.js" in assets and "explorer_assets/katex/LICENSE" in assets
    assert all(any(fnmatch.fnmatch(a, p) for p in patterns) for a in assets)


def test_command_line_explore(tmp_path):
    out = tmp_path / "e.html"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "visualize", "explore", "cnn4", "--data", "synthetic",
                        "--image-size", "16", "--batch-size", "2", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "values of 2 validation images" in r.stdout and out.exists()
    text = out.read_text()
    assert '"has_values":true' in text and '"program"' in text
    bad = subprocess.run([sys.executable, "-m", "visualize", "explore", "cnn4", "--data", "cifar10:/nonexistent",
                          "--out", str(tmp_path / "x.html")], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


def test_an_onnx_classifier_is_explored_and_drawn_like_a_built_in_model(tmp_path, capsys):
    """``python -m visualize explore net.onnx``: the file's logits get a cross-entropy
    loss, so both passes show; its image size and channels decide the data's."""
    needs.module("onnx", "pip install -e '.[interop]'")
    from models.alexnet import alexnet_small
    from visualize.__main__ import main

    model = alexnet_small(num_classes=10, image_size=32, width=8, hidden=32)
    path = tmp_path / "small.onnx"
    gd.onnx.export(model.logits, [model.images], path)
    out = tmp_path / "small.html"
    assert main(["explore", str(path), "--data", "synthetic:10", "--batch-size", "2", "--out", str(out)]) == 0
    assert "values of 2 validation images" in capsys.readouterr().out
    data = json.loads(re.search(r'<script id="gd-data" type="application/json">(.*?)</script>', out.read_text(),
                                re.S).group(1).replace("<\\/", "</"))
    nodes = data["nodes"]
    assert {"conv2d_grad_weight", "max_pool2d_grad", "lrn_grad"} <= {n["op"] for n in nodes}  # both passes
    assert {"conv1", "norm1", "pool1", "fc8"} <= {n["scope"] for n in nodes}  # one box per layer
    assert data["has_values"] and "conv1/w" in {p["name"] for p in data["params"]}  # its gradient path
    assert main([str(path), "--out", str(tmp_path / "small.svg"), "--backward", "--collapse"]) == 0
    assert (tmp_path / "small.svg").exists()
    loaded = gd.onnx.load(path)  # in Python, the loaded model itself: its forward graph
    assert len(vz.explore(loaded).data["nodes"]) == len(gd.toposort(loaded.outputs))
    assert vz.to_dot(loaded, collapse=True).meta["nodes"] > 0
    with pytest.raises(SystemExit):  # the file has 10 classes
        main(["explore", str(path), "--data", "synthetic:12", "--out", str(tmp_path / "x.html")])
    assert "the network has 10 classes, fewer than 12" in capsys.readouterr().err
    x = gd.placeholder((None, 3, 8, 8), name="x")
    gd.onnx.export(gd.relu(x), [x], tmp_path / "maps.onnx")  # no logits: not a classifier
    with pytest.raises(SystemExit):
        main(["explore", str(tmp_path / "maps.onnx"), "--out", str(tmp_path / "x.html")])
    assert "is not (batch, classes) logits" in capsys.readouterr().err
    assert main(["explore", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "x.html")]) == 2
    assert "cannot read the file" in capsys.readouterr().err and not (tmp_path / "x.html").exists()


def test_training_writes_the_explorer_of_a_validation_batch(tmp_path):
    import models.train as train
    from models.data import load_dataset

    argv = ["--model", "cnn4", "--data", "synthetic", "--image-size", "16", "--width", "4", "--batch-size", "8",
            "--epochs", "1", "--seed", "1", "--quiet", "--out", str(tmp_path)]
    train.main(argv)
    text = (tmp_path / "explorer.html").read_text()
    data = json.loads(re.search(r'<script id="gd-data" type="application/json">(.*?)</script>', text,
                                re.S).group(1).replace("<\\/", "</"))
    loss = next(n for n in data["nodes"] if n["op"] == "softmax_cross_entropy")
    # the trained model's loss on the first validation batch, computed here from the checkpoint
    from graphdiff.checkpoint import load_checkpoint
    from models.cnn import cnn4

    arrays, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    dataset = load_dataset("synthetic", 16, channels=3, seed=1)
    model = cnn4(dataset.num_classes, 16, width=4, seed=1)
    model.load_state_arrays(arrays)
    images, labels = next(iter(dataset.val_batches(8)))
    expect = gd.compile(model.loss, inputs=model.inputs, training=False)(images, labels)
    assert loss["stats"]["mean"] == pytest.approx(float(expect), rel=1e-6)
    assert any(n["backward"] for n in data["nodes"])


def test_the_explorer_of_a_training_run_takes_the_runs_own_sgd_step(tmp_path):
    """The page's "take one step" view uses the run's learning rate, momentum,
    weight decay and momentum buffers: v = momentum * v_prev - lr * (decay * w
    + dE/dw), checked here from the checkpoint and the batch shown."""
    import models.train as train
    from graphdiff.checkpoint import load_checkpoint
    from models.cnn import cnn4
    from models.data import load_dataset

    lr, momentum, decay = 0.05, 0.5, 0.002  # none of them sgd_momentum's defaults
    train.main(["--model", "cnn4", "--data", "synthetic", "--image-size", "16", "--width", "4", "--batch-size", "8",
                "--epochs", "1", "--seed", "1", "--quiet", "--no-tensorboard", "--lr", str(lr), "--momentum",
                str(momentum), "--weight-decay", str(decay), "--out", str(tmp_path)])
    text = (tmp_path / "explorer.html").read_text()
    update = json.loads(re.search(r'<script id="gd-data" type="application/json">(.*?)</script>', text,
                                  re.S).group(1).replace("<\\/", "</"))["update"]
    assert (update["lr"], update["momentum"], update["weight_decay"]) == (lr, momentum, decay)
    assert update["source"] == "the training step's optimizer"
    assert update["params"] and all(row["momentum_buffer"] for row in update["params"])

    arrays, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    model = cnn4(load_dataset("synthetic", 16, channels=3, seed=1).num_classes, 16, width=4, seed=1)
    model.load_state_arrays(arrays)
    images, labels = next(iter(load_dataset("synthetic", 16, channels=3, seed=1).val_batches(8)))
    names = list(model.params)
    grads = gd.compile(gd.grad(model.loss, [model.params[k] for k in names]), inputs=model.inputs,
                       training=False)(images, labels)
    for row in update["params"]:
        k = row["name"]
        w, v_prev = arrays[k].astype(np.float64), arrays["momentum/" + k].astype(np.float64)
        v = momentum * v_prev - lr * (decay * w + np.asarray(grads[names.index(k)], np.float64))
        assert row["v"]["norm"] == pytest.approx(float(np.linalg.norm(v)), rel=1e-4), k


def test_buffer_plan_shows_the_reuse_of_buffers_along_the_schedule():
    x = gd.placeholder((None, 1000), name="x")
    y = gd.log(gd.tanh(gd.exp(x)) * gd.tanh(gd.exp(x)) + 1.0)
    program = gd.compile(gd.sum(y), inputs=[x], optimize=False)
    assert program.buffer_plan() is None  # planned on the first call
    program(np.ones((3, 1000)))
    rows, sizes = program.buffer_plan()
    assert [n.op.name for n, _ in rows] == [n.op.name for n in program.nodes if n.kind not in ("placeholder",
                                                                                                "constant")]
    used = [b for _, row in rows for b in row if b is not None]
    assert len(used) > len(sizes) >= 2  # outputs share buffers
    assert all(s >= 3 * 1000 * 4 for s in sizes)
    plan = memory_plan(program, batch=3)
    assert plan["planned"]["sizes"] == sizes and plan["planned"]["outputs"] == len(used)
    by_buffer = {}
    for b in plan["buffers"]:
        if b.get("buffer") is not None:
            by_buffer.setdefault(b["buffer"], []).append((b["start"], b["end"]))
    for spans in by_buffer.values():  # one buffer never holds two live values
        spans.sort()
        assert all(a_end < b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans


def test_memory_plan_of_a_training_step_after_it_ran(cnn):
    from graphdiff.optim import sgd_momentum

    updates, _ = sgd_momentum(cnn["loss"], cnn["params"], lr=0.0)  # lr 0: the weights stay
    # NumPy's kernels: conv2's columns, shared with its weight gradient, give this small
    # plan a buffer to reuse (where oneDNN may run, each convolution reads its input)
    program = gd.compile(cnn["loss"], inputs=[cnn["x"], cnn["t"]], updates=updates, kernels="numpy")
    program(*cnn["feed"].values())
    plan = memory_plan(program, batch=3)
    assert plan["planned"] and plan["planned"]["outputs"] > len(plan["planned"]["sizes"])
    by_buffer = {}
    for b in plan["buffers"]:
        if b.get("buffer") is not None:
            by_buffer.setdefault(b["buffer"], []).append((b["start"], b["end"]))
    for spans in by_buffer.values():
        spans.sort()
        assert all(a_end < b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans


def test_each_pass_lists_the_nodes_it_made():
    x = gd.placeholder((None, 8), name="x")
    c = gd.constant(np.full(8, 2.0, np.float32)) * 3.0           # folded
    y = gd.tanh(x * c) + gd.tanh(x * c)                          # one tanh merged
    z = gd.sum(gd.exp(y) * 0.5 + 1.0)                            # fused chain
    program = gd.compile(z, inputs=[x])
    data = build_data(z, program=program)
    records = {n["id"]: n for n in data["nodes"]}
    prune, simplify, rewrite, fusion = data["program"]["passes"]
    assert rewrite["rules"] == {} and rewrite["new"] == [] and rewrite["removed"] == 0  # no rule applies
    assert "new" not in prune
    made = [records[i] for i in simplify["new"]]
    assert [m["kind"] for m in made] == ["constant"] and simplify["removed"] >= 4  # mul folded, tanh twins
    assert {records[i]["op"] for i in fusion["new"]} == {"fused_elementwise"}
    assert fusion["removed"] >= 3


def test_a_failed_write_leaves_neither_a_half_page_nor_a_temporary_file(cnn, tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def write(self, text):
            self.f.write(text[:100])
            raise OSError(28, "No space left on device")

        def __exit__(self, *exc):
            self.f.close()

    path = tmp_path / "page.html"
    path.write_text("the previous page")
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: Full(real_open(p, *a, **k))
                        if ".tmp" in str(p) else real_open(p, *a, **k))
    with pytest.raises(OSError, match="No space"):
        vz.explore(cnn["loss"], path=path)
    monkeypatch.setattr(builtins, "open", real_open)
    assert os.listdir(tmp_path) == ["page.html"] and path.read_text() == "the previous page"


def test_a_parameter_built_outside_scopes_is_shown_in_the_layer_that_reads_it():
    x = gd.placeholder((2, 3), name="x")
    w = gd.variable(np.ones((3, 4), np.float32), name="fc.weight")  # as an imported PyTorch model names it
    shared = gd.variable(np.ones((4,), np.float32), name="shared")
    with gd.scope("fc"):
        h = gd.matmul(x, w) + shared
    with gd.scope("out"):
        y = gd.sum(h * shared)
    nodes = {n["name"]: n for n in build_data([y])["nodes"]}
    assert nodes["fc.weight"]["scope"] == "fc" and w.scope == ""  # shown in its layer, the tensor unchanged
    assert nodes["shared"]["scope"] == ""  # read by two layers: stays outside both


# --------------------------------------------------------------------------- formulas, gradient checks, the SGD step
def test_every_vjp_rule_of_alexnet_has_a_tex_formula_and_katex_is_inlined(cnn, tmp_path):
    from models.alexnet import alexnet_small
    from visualize.formulas import FORMULAS

    model = alexnet_small(10, 24, width=8, hidden=32)
    nodes = gd.toposort([model.loss, *gd.grad(model.loss, list(model.params.values()))])
    used = {provenance(n)[0].op.name for n in nodes if provenance(n)[0] is not None}
    used |= {n.op.name for n in nodes if n.op.kind == "gradient"}
    assert {"conv2d", "relu", "max_pool2d", "lrn_normalize", "matmul", "softmax_cross_entropy"} <= used
    missing = used - set(FORMULAS) - {"dropout_mask"}
    assert not missing, missing
    for name, f in FORMULAS.items():  # balanced braces: a typo would show as a KaTeX error box
        for tex in f.values():
            depth = 0
            for ch in tex.replace(r"\{", "").replace(r"\}", ""):
                depth += {"{": 1, "}": -1}.get(ch, 0)
                assert depth >= 0, (name, tex)
            assert depth == 0, (name, tex)
    assert "inversion of indexes" in FORMULAS["conv2d_grad_input"]["forward"]
    assert "X_{(i+l)(j+k)}" in FORMULAS["conv2d_grad_weight"]["forward"]
    data = build_data(cnn["outputs"], feed=cnn["feed"])
    assert set(data["formulas"]) == {n.op.name for n in gd.toposort(cnn["outputs"])} & set(FORMULAS)
    page = vz.explore(cnn["outputs"], feed=cnn["feed"], path=tmp_path / "p.html")
    assets = os.path.join(os.path.dirname(vz.__file__), "explorer_assets", "katex")
    with open(os.path.join(assets, "katex.min.js"), encoding="utf-8") as f:
        assert f.read() in page.html  # inlined, nothing fetched
    fonts = re.findall(r"src:url\(data:font/woff2;base64,", page.html)
    assert len(fonts) >= 8 and "url(fonts/" not in page.html


def _broken_conv_vjp(monkeypatch):
    """conv2d's VJP with the input gradient doubled: a wrong rule."""
    from graphdiff.ops.conv import Conv2d

    right = Conv2d.vjp

    def wrong(self, node, g, wrt):
        out = right(self, node, g, wrt)
        return [out[0] * 2.0 if out[0] is not None else None, *out[1:]]

    monkeypatch.setattr(Conv2d, "vjp", wrong)


def test_a_gradient_check_on_every_vjp_rule_and_a_wrong_rule_fails(cnn, monkeypatch):
    data = build_data(cnn["outputs"], feed=cnn["feed"])
    nodes = gd.toposort(cnn["outputs"])
    rules = {provenance(n)[0].id: provenance(n)[0] for n in nodes if provenance(n)[0] is not None}
    assert set(data["checks"]) == {str(i) for i in rules}
    for i, r in data["checks"].items():
        assert r["ok"] and r["error"] < 1e-4, (rules[int(i)].name, r)
        assert r["analytic"] == pytest.approx(r["numeric"], rel=1e-4)
    assert {rules[int(i)].op.name for i in data["checks"]} >= {"conv2d", "relu", "max_pool2d", "matmul",
                                                                "softmax_cross_entropy", "reshape"}
    # the time budget: past it, nodes are marked as not computed
    late = build_data(cnn["outputs"], feed=cnn["feed"], check_seconds=1e-9)["checks"]
    assert any("time budget" in r.get("skipped", "") for r in late.values())
    assert build_data(cnn["outputs"], feed=cnn["feed"], check_seconds=0)["checks"] == {}
    # a wrong rule: conv2d's input gradient doubled (in the graph and in the check alike) fails, only there
    _broken_conv_vjp(monkeypatch)
    broken = small_cnn()
    checks = build_data(broken["outputs"], feed=broken["feed"])["checks"]
    ops = {n.id: n.op.name for n in gd.toposort(broken["outputs"])}
    failed = {ops[int(i)] for i, r in checks.items() if not r.get("ok")}
    assert failed == {"conv2d"}
    # both convolutions: the rule is checked with respect to every float input (conv1's images too)
    # (each input on its own: the doubled input gradient is off by exactly a half, the weights' rule passes)
    convs = [n for n in gd.toposort(broken["outputs"]) if n.op.name == "conv2d"]
    assert len(convs) == 2
    for n in convs:
        errors = {i["input"]: i["error"] for i in checks[str(n.id)]["inputs"]}
        assert errors[n.inputs[0].name] == pytest.approx(0.5, rel=1e-5)
        assert errors[n.inputs[1].name] < 1e-4
        assert checks[str(n.id)]["error"] == errors[n.inputs[0].name]


def test_a_check_rebuilds_lrn_scale_inside_the_checked_function():
    from visualize.gradcheck import check_node

    rng = np.random.default_rng(1)
    x = gd.placeholder((2, 6, 4, 4), name="x")
    y = gd.lrn(x, size=3, alpha=0.1, beta=0.75, k=1.0)
    values = {id(x): rng.standard_normal((2, 6, 4, 4)).astype(np.float32)}
    values[id(y.inputs[1])] = gd.compile(y.inputs[1], inputs=[x])(values[id(x)])
    r = check_node(y, values)
    assert r["ok"] and r["error"] < 1e-4 and r["wrt"] == ["x"]


def test_the_update_step_equals_one_compiled_sgd_step():
    from graphdiff.optim import sgd_momentum

    cnn = small_cnn(seed=3)
    params = cnn["params"]
    settings = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
    updates, state = sgd_momentum(cnn["loss"], params, **settings)
    step = gd.compile(cnn["loss"], inputs=[cnn["x"], cnn["t"]], updates=updates)
    feed = cnn["feed"]

    def check(data, before):
        rows = {r["name"]: r for r in data["update"]["params"]}
        assert set(rows) == set(params)
        loss = step(*feed.values())  # the real step, on the same batch
        assert float(loss) == pytest.approx(data["update"]["loss_before"], rel=1e-5)
        for name, p in params.items():
            r, w, v = rows[name], p.value.astype(np.float64), state.velocities[name].value.astype(np.float64)
            for key, a in (("before", before[name]), ("after", w), ("v", v)):
                assert r[key]["mean"] == pytest.approx(a.mean(), rel=1e-4, abs=1e-9), (name, key)
                assert r[key]["norm"] == pytest.approx(np.linalg.norm(a), rel=1e-4), (name, key)
                assert r[key]["max"] == pytest.approx(a.max(), rel=1e-4, abs=1e-9), (name, key)
            assert r["ratio"] == pytest.approx(np.linalg.norm(v) / np.linalg.norm(before[name]), rel=1e-4)
            nonzero = (before[name] != 0) & (v != 0)
            if nonzero.any():
                logs = np.log10(np.abs(v[nonzero]) / np.abs(before[name][nonzero]))
                assert r["log_ratio"]["mean"] == pytest.approx(logs.mean(), rel=1e-4, abs=1e-5), name
                assert sum(r["log_ratio"]["hist"]) == logs.size
        after = gd.compile(cnn["loss"], inputs=[cnn["x"], cnn["t"]])(*feed.values())
        assert data["update"]["loss_after"] == pytest.approx(float(after), rel=1e-5)

    # a first step: zero momentum buffers
    before = {n: p.value.astype(np.float64) for n, p in params.items()}
    data = build_data(cnn["outputs"], feed=feed, params=params, sgd=settings)
    assert (data["update"]["lr"], data["update"]["momentum"], data["update"]["weight_decay"]) == (0.05, 0.9, 1e-3)
    assert all(p.value is not None for p in params.values())
    np.testing.assert_array_equal(params["conv1/w"].value, before["conv1/w"])  # the explorer restored them
    check(data, before)
    # a second step from the optimizer's state: its momentum buffers carry the first step
    before = {n: p.value.astype(np.float64) for n, p in params.items()}
    data = build_data(cnn["outputs"], feed=feed, params=params, sgd=state)
    assert data["update"]["source"] == "the training step's optimizer"
    assert all(r["momentum_buffer"] for r in data["update"]["params"])
    check(data, before)
    conv = next(r for r in data["update"]["params"] if r["name"] == "conv1/w")
    assert {"thumbs_before", "thumbs_after", "thumbs_v"} <= set(conv)
    with pytest.raises(ValueError, match="lr, momentum and weight_decay"):
        build_data(cnn["outputs"], feed=feed, sgd={"rate": 0.1})


def test_the_update_step_defaults_to_the_training_commands_settings(cnn):
    from models.train import parse_args

    data = build_data(cnn["outputs"], feed=cnn["feed"], params=cnn["params"])
    defaults = parse_args(["--out", "x"])
    assert data["update"]["lr"] == defaults.lr
    assert (data["update"]["momentum"], data["update"]["weight_decay"]) == (defaults.momentum, defaults.weight_decay)


def test_the_lrn_picture_holds_the_refactored_gradient_with_real_numbers():
    rng = np.random.default_rng(2)
    x = gd.placeholder((None, 7, 3, 3), name="x")
    w = gd.variable(np.float32(1.5), name="w")
    with gd.scope("norm"):
        y = gd.lrn(x * w, size=3, alpha=0.5, beta=0.75, k=1.0)
    loss = gd.sum(y * y)
    (gw,) = gd.grad(loss, [w])
    feed = {x: rng.standard_normal((2, 7, 3, 3)).astype(np.float32)}
    data = build_data([loss, gw], feed=feed)
    node = next(n for n in gd.toposort([loss, gw]) if n.op.name == "lrn_normalize")
    pic = data["pictures"][str(node.id)]
    assert pic["kind"] == "lrn" and len(pic["x"]) == 7 and (pic["size"], pic["alpha"], pic["beta"], pic["k"]) == (3, 0.5, 0.75, 1.0)
    xv = np.asarray(pic["x"])
    np.testing.assert_allclose(xv, 1.5 * feed[x][0, :, 0, 0], rtol=1e-6)
    # scale and y from the formula; dx from the refactored gradient, against the lrn_grad node's value
    sq = np.pad(xv ** 2, 1)
    np.testing.assert_allclose(pic["scale"], 1.0 + 0.5 * (sq[:-2] + sq[1:-1] + sq[2:]), rtol=1e-5)
    np.testing.assert_allclose(pic["y"], xv * np.asarray(pic["scale"]) ** -0.75, rtol=1e-5)
    dy = 2 * np.asarray(pic["y"])  # d(sum y^2)/dy
    np.testing.assert_allclose(pic["dy"], dy, rtol=1e-5)
    t = np.pad(dy * np.asarray(pic["y"]) / np.asarray(pic["scale"]), 1)
    st = t[:-2] + t[1:-1] + t[2:]
    np.testing.assert_allclose(pic["st"], st, rtol=1e-5)
    expect = dy * np.asarray(pic["scale"]) ** -0.75 - 2 * 0.5 * 0.75 * xv * st
    np.testing.assert_allclose(pic["dx"], expect, rtol=1e-4, atol=1e-6)


def test_vendoring_katex_inlines_the_kept_fonts(tmp_path):
    import base64

    from visualize.vendor_katex import vendor

    pkg = tmp_path / "package"
    (pkg / "dist" / "fonts").mkdir(parents=True)
    (pkg / "package.json").write_text('{"version": "9.9.9"}')
    (pkg / "LICENSE").write_text("MIT")
    (pkg / "dist" / "katex.min.js").write_text("var katex={};")
    for name in ("KaTeX_Main-Regular", "KaTeX_Script-Regular"):
        (pkg / "dist" / "fonts" / f"{name}.woff2").write_bytes(name.encode())
    face = ('@font-face{{font-family:{f};src:url(fonts/{n}.woff2) format("woff2"),url(fonts/{n}.woff) format("woff")}}')
    (pkg / "dist" / "katex.min.css").write_text(face.format(f="KaTeX_Main", n="KaTeX_Main-Regular")
                                                + face.format(f="KaTeX_Script", n="KaTeX_Script-Regular") + ".katex{x:1}")
    out = tmp_path / "out"
    assert vendor(str(pkg), str(out)) == "9.9.9"
    css = (out / "katex.css").read_text()
    data = base64.b64encode(b"KaTeX_Main-Regular").decode()
    assert f'src:url(data:font/woff2;base64,{data}) format("woff2")' in css
    assert "KaTeX_Script" not in css and "url(fonts/" not in css and ".katex{x:1}" in css
    assert (out / "katex.min.js").read_text() == "var katex={};" and (out / "LICENSE").read_text() == "MIT"
