"""Tests for visualize/ (diagrams, pictures, summary, CLI) and graphdiff/nx.py.

Rendered diagrams are checked by parsing the SVG: Graphviz writes each node
as ``<g class="node"><title>ID</title>...`` and each edge as
``<g class="edge"><title>A->B</title>...``, with the labels as ``<text>``.
"""
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET

import networkx as nx
import numpy as np
import pytest

import graphdiff as gd
import visualize as vz
from visualize import __main__ as cli
from visualize import _render

SVG = "{http://www.w3.org/2000/svg}"


def renderer_available():
    try:
        vz.find_renderer("svg")
        return True
    except vz.RendererNotFound:
        return False


needs_renderer = pytest.mark.skipif(not renderer_available(),
                                    reason="no Graphviz renderer (pip install graphviz-pure)")


def parse_svg(diagram):
    """{'nodes': {title: text}, 'edges': [(title, text, attrs of the path)]}."""
    root = ET.fromstring(diagram.pipe("svg"))
    nodes, edges = {}, []
    for g in root.iter(SVG + "g"):
        cls = g.get("class")
        if cls not in ("node", "edge"):
            continue
        title = g.find(SVG + "title").text
        text = " ".join("".join(t.itertext()) for t in g.iter(SVG + "text"))
        if cls == "node":
            shapes = [e for e in g.iter() if e.tag in (SVG + "ellipse", SVG + "polygon", SVG + "path")]
            first_text = next(g.iter(SVG + "text"), None)  # a legend's edge ends are points, without text
            nodes[title] = {"text": text, "fill": shapes[0].get("fill") if shapes else None,
                            "y": float(first_text.get("y")) if first_text is not None else None}
        else:
            path = next(g.iter(SVG + "path"), None)
            edges.append((title, text, dict(path.attrib) if path is not None else {}))
    return {"nodes": nodes, "edges": edges}


def small_cnn():
    """conv -> relu -> lrn -> max pool -> dense -> loss, each in a scope."""
    x = gd.placeholder((None, 2, 8, 8), name="x")
    t = gd.placeholder((None,), dtype="int64", name="labels")
    rng = np.random.default_rng(0)
    with gd.scope("conv1"):
        w = gd.variable(rng.standard_normal((4, 2, 3, 3)).astype("float32"), name="w")
        b = gd.variable(np.zeros(4, "float32"), name="b")
        h = gd.relu(gd.conv2d(x, w, b, stride=1, padding=0))
    with gd.scope("norm1"):
        h = gd.lrn(h, size=3)
    with gd.scope("pool1"):
        h = gd.max_pool2d(h, 3, 2)
    with gd.scope("fc2"):
        h = gd.reshape(h, (-1, 4 * 2 * 2))
        w2 = gd.variable(rng.standard_normal((16, 5)).astype("float32"), name="w")
        logits = gd.matmul(h, w2)
    with gd.scope("loss"):
        loss = gd.softmax_cross_entropy(logits, t)
    return loss, [w, b, w2]


def graph_edges(nodes):
    return sum(len(t.inputs) for t in nodes)


# --------------------------------------------------------------------------- to_dot
@needs_renderer
def test_forward_diagram_has_every_node_and_edge_with_shapes():
    loss, params = small_cnn()
    nodes = gd.toposort([loss])
    d = vz.to_dot(loss, title="small cnn")
    assert isinstance(d, vz.Diagram) and "rankdir=BT" in d.source
    svg = parse_svg(d)
    assert set(svg["nodes"]) == {f"n{t.id}" for t in nodes}
    assert len(svg["edges"]) == graph_edges(nodes) == d.meta["edges"]
    conv = next(t for t in nodes if t.op.name == "conv2d")
    labels = [text for title, text, _ in svg["edges"] if title.startswith(f"n{conv.id}->")]
    assert labels == ["(?, 4, 6, 6)"]  # the shape it carries, None as "?"
    # bottom-up: the input is drawn below the loss (SVG y grows downwards)
    x = next(t for t in nodes if t.name == "x")
    assert svg["nodes"][f"n{x.id}"]["y"] > svg["nodes"][f"n{loss.id}"]["y"]
    # scopes are clusters
    for scope in ("conv1", "norm1", "pool1", "fc2", "loss"):
        assert f"subgraph cluster_{scope} {{" in d.source


def test_compiled_program_diagram_shows_what_the_compiler_built():
    """to_dot(program) draws the schedule the program runs: conv + ReLU in one
    op, pooling with its argmax (two outputs read through parts), the fused
    SGD chains."""
    from graphdiff.optim import sgd_momentum

    loss, params = small_cnn()
    updates, _ = sgd_momentum(loss, params)
    program = gd.compile(loss, [n for n in gd.toposort([loss]) if n.kind == "placeholder"], updates=updates)
    d = vz.to_dot(program, collapse=False)
    assert d.meta["nodes"] == len(program.nodes)
    for label in ("conv2d_relu", "max_pool2d_with_argmax", "part", "fused: "):
        assert label in d.source, label
    assert 'label="max_pool2d_argmax' not in d.source  # computed by the pooling op itself (a part keeps its name)


@needs_renderer
def test_backward_diagram_marks_backward_nodes_and_reused_values():
    loss, params = small_cnn()
    grads = gd.grad(loss, params)
    nodes = gd.toposort([loss, *grads])
    d = vz.to_dot([loss, *grads])
    svg = parse_svg(d)
    assert set(svg["nodes"]) == {f"n{t.id}" for t in nodes}
    assert len(svg["edges"]) == graph_edges(nodes)
    by_id = {f"n{t.id}": t for t in nodes}
    backward_fill = vz.dot.STYLE["gradient"]["fillcolor"]
    for key, node in svg["nodes"].items():
        assert (node["fill"] == backward_fill) == (by_id[key].kind == "gradient"), by_id[key]
    # crossing edges: forward op -> backward node, dashed and labelled "reused"
    expected = {(f"n{i.id}", f"n{t.id}") for t in nodes for i in t.inputs
                if not i.backward and i.kind in ("forward", "placeholder") and t.backward}
    reused = set()
    for title, text, path in svg["edges"]:
        if "reused" in text:
            assert path.get("stroke-dasharray")
            reused.add(tuple(title.split("->")))
    assert reused == expected and len(reused) == d.meta["reused"]
    ops_reading = {(by_id[a].op.name, by_id[b].op.name) for a, b in reused}
    assert ("relu", "relu_grad") in ops_reading  # ReLU's switch reads the forward output
    assert any(b == "max_pool2d_argmax" for _, b in ops_reading)  # the pooling argmax
    assert any(a.startswith("lrn") and b.startswith("lrn") for a, b in ops_reading)  # LRN's scale
    images = next(t for t in nodes if t.name == "x")  # the first layer's input, read by its weight gradient
    assert ("placeholder", "conv2d_grad_weight") in ops_reading and any(a == f"n{images.id}" for a, _ in reused)
    # backward edges are drawn reversed (the backward descends), arrowheads kept on the user
    assert "dir=back" in d.source


@needs_renderer
def test_collapsed_diagram_has_one_box_per_scope_and_pass():
    loss, params = small_cnn()
    grads = gd.grad(loss, params)
    d = vz.to_dot([loss, *grads], collapse=True)
    svg = parse_svg(d)
    texts = [n["text"] for n in svg["nodes"].values()]
    scopes = ["conv1", "norm1", "pool1", "fc2", "loss"]
    for s in scopes:
        assert sum(t.startswith(s + " ") and "backward" not in t for t in texts) == 1, s
        assert sum(t.startswith(s + " (backward)") for t in texts) == 1, s
    # 5 forward boxes, 5 backward boxes, the two inputs
    assert len(svg["nodes"]) == d.meta["nodes"] == 12
    assert len(svg["edges"]) == d.meta["edges"]
    assert any(t.startswith("conv1 ") and "76 params" in t for t in texts)  # 4*2*3*3 + 4
    assert any(t.startswith("fc2 ") and "80 params" in t for t in texts)  # 16*5
    assert d.meta["reused"] >= 4 and sum("reused" in text for _, text, _ in svg["edges"]) == d.meta["reused"]
    assert any(re.search(r"x\d+", text) for _, text, _ in svg["edges"])  # summed edges


@needs_renderer
def test_legend_shows_only_the_styles_drawn_with_their_shapes():
    loss, params = small_cnn()
    forward = vz.to_dot(loss, legend=True)
    kinds = {t.kind for t in gd.toposort([loss])}
    texts = {"placeholder": "placeholder", "variable": "variable", "constant": "constant", "forward": "forward op"}
    assert set(forward.meta["legend"]["nodes"]) == {texts[k] for k in kinds}
    assert forward.meta["legend"]["edges"] == []  # no backward, nothing reused
    assert "backward op" not in forward.source and "reused" not in forward.source

    grads = gd.grad(loss, params)
    collapsed = vz.to_dot([loss, *grads], collapse=True, legend=True)
    root = ET.fromstring(collapsed.pipe("svg"))
    shapes = {}  # node title -> the SVG element kinds that draw it
    for g in root.iter(SVG + "g"):
        if g.get("class") == "node":
            shapes[g.find(SVG + "title").text] = {e.tag[len(SVG):] for e in g if e.tag != SVG + "text"} - {"title"}
    drawn = {k: v for k, v in shapes.items() if not k.startswith("legend_")}
    legend = {k: v for k, v in shapes.items() if k.startswith("legend_n")}
    assert not any("ellipse" in v for v in drawn.values())  # layers are boxes, the inputs too ...
    assert legend and not any("ellipse" in v for v in legend.values())  # ... and so is every legend entry
    assert set(collapsed.meta["legend"]["nodes"]) == {"placeholder", "layer (forward pass)", "layer, backward pass",
                                                      "layer holding gradient outputs \u2202E/\u2202W"}
    assert set(collapsed.meta["legend"]["edges"]) == {"reused forward value", "backward"}


@needs_renderer
def test_gradient_outputs_are_marked_with_the_variable_they_belong_to():
    loss, params = small_cnn()
    grads = gd.grad(loss, params)
    svg = parse_svg(vz.to_dot([loss, *grads]))
    for g, p in zip(grads, params):
        assert svg["nodes"][f"n{g.id}"]["text"].startswith(f"\u2202E/\u2202{p.name}"), p.name
    marked = [k for k, n in svg["nodes"].items() if "\u2202E/\u2202" in n["text"]]
    assert len(marked) == 3
    d = vz.to_dot([loss, *grads], collapse=True)
    boxes = parse_svg(d)["nodes"].values()
    assert any(n["text"].startswith("conv1 (backward)") and "\u2202E/\u2202conv1/w" in n["text"]
               and "\u2202E/\u2202conv1/b" in n["text"] for n in boxes)
    assert 'penwidth=3' in d.source
    assert "\u2202E" not in vz.to_dot(loss).source  # a forward graph has none


def _compiled_alexnet_small_step():
    from models.alexnet import alexnet_small, train_step

    return train_step(alexnet_small(10, 24)).program


@needs_renderer
def test_a_compiled_training_step_draws_collapsed_by_layer_and_legible_at_1920_px():
    program = _compiled_alexnet_small_step()
    d = vz.to_dot(program, legend=True)  # collapsed by default
    svg = parse_svg(d)
    texts = [n["text"] for n in svg["nodes"].values()]
    scopes = {t.scope for t in program.nodes if t.scope}
    # every fused op sits in the box of the layer it came from: one box per layer and pass, no loose op
    assert len(svg["nodes"]) - sum(k.startswith("legend_") for k in svg["nodes"]) == d.meta["nodes"] <= 2 * len(scopes) + 2
    assert any(t.startswith("conv3 ") and "conv2d_relu" in t for t in texts)
    assert any(t.startswith("conv3 (backward)") and "conv2d_backward" in t for t in texts)
    assert any(t.startswith("pool1 ") and "max_pool2d_with_argmax" in t for t in texts)
    (sgd,) = [t for t in texts if t.startswith("sgd ")]  # the SGD updates in one box
    assert f"updates {len(program.updates)} variables" in sgd
    into_updates = [e for e in svg["edges"] if e[2].get("stroke") == vz.dot.UPDATE_EDGE["color"]]
    assert len(into_updates) >= 16 and not any("(" in text for _, text, _ in into_updates)  # thin, no shapes
    # legible: the smallest text, 9 pt, still at least 9 pixels tall with the picture scaled to 1,920 px wide
    root = ET.fromstring(d.pipe("svg"))
    width_pt = float(root.get("width").rstrip("pt"))
    smallest_pt = min(float(t.get("font-size")) for t in root.iter(SVG + "text"))
    assert smallest_pt * 96 / 72 * min(1.0, 1920 / (width_pt * 96 / 72)) >= 9


def test_legend_and_jupyter_display():
    loss, _ = small_cnn()
    d = vz.to_dot(loss, legend=True)
    assert "cluster_legend" in d.source
    if renderer_available():
        bundle = d._repr_mimebundle_()
        assert bundle["image/svg+xml"].lstrip().startswith("<?xml")
        assert "<svg" in d._repr_svg_()


# --------------------------------------------------------------------------- render
@needs_renderer
def test_render_writes_svg_png_and_dot(tmp_path):
    loss, _ = small_cnn()
    svg = vz.render(loss, tmp_path / "g.svg")
    png = vz.render(vz.to_dot(loss), tmp_path / "g.png")
    dot = vz.render(loss, tmp_path / "g.dot", collapse=True)
    assert ET.parse(svg).getroot().tag == SVG + "svg"
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(dot) as f:
        assert f.read().startswith("digraph")
    assert vz.render(loss, tmp_path / "h", format="svg") == str(tmp_path / "h")


def test_missing_renderer_names_both_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot`, no graphviz-pure on PATH
    monkeypatch.setattr(_render, "_graphviz_pure_candidates", lambda: [])
    loss, _ = small_cnn()
    with pytest.raises(vz.RendererNotFound) as err:
        vz.render(loss, tmp_path / "g.svg")
    assert isinstance(err.value, RuntimeError)
    assert "apt-get install graphviz" in str(err.value) and "pip install graphviz-pure" in str(err.value)
    with pytest.raises(vz.RendererNotFound):
        vz.to_dot(loss).pipe("svg")
    assert not (tmp_path / "g.svg").exists()


def test_pdf_needs_system_graphviz(tmp_path, monkeypatch, capsys):
    if shutil.which("dot"):
        pytest.skip("system Graphviz is installed: PDF works here")
    monkeypatch.setenv("PATH", str(tmp_path))
    loss, _ = small_cnn()
    with pytest.raises(vz.RendererNotFound, match="needs system Graphviz"):
        vz.render(loss, tmp_path / "g.pdf")
    assert cli.main(["cnn4", "--out", str(tmp_path / "c.pdf")]) == 2  # the CLI says so before building
    assert "apt-get install graphviz" in capsys.readouterr().err


# --------------------------------------------------------------------------- pictures
PSEUDO = [(3, 1), (3, 2), (4, 2), (4, 3), (5, 3), (6, 2)]


@needs_renderer
@pytest.mark.parametrize("n,m", PSEUDO)
def test_conv_pseudograph_forward_counts(n, m):
    k = n - m + 1
    d = vz.conv_pseudograph(n, m)
    svg = parse_svg(d)
    names = list(svg["nodes"])
    assert sum(x.startswith("X_") for x in names) == n * n
    assert sum(x.startswith("W_") for x in names) == m * m
    assert sum(x.startswith("Y_") for x in names) == k * k
    from_x = [t for t, _, _ in svg["edges"] if t.startswith("X_")]
    from_w = [t for t, _, _ in svg["edges"] if t.startswith("W_")]
    assert len(from_x) == len(from_w) == k * k * m * m
    assert len(svg["edges"]) == d.meta["edges"] == 2 * k * k * m * m
    # each edge is one term of Y_ij = sum_ab W_ab X_(i+a)(j+b)
    for title in from_x:
        xi, xj, yi, yj = map(int, re.findall(r"\d+", title))
        assert 0 <= xi - yi < m and 0 <= xj - yj < m
    assert "rankdir=BT" in d.source


@needs_renderer
@pytest.mark.parametrize("n,m", PSEUDO)
def test_conv_pseudograph_backward_counts_and_index_inversion(n, m):
    k = n - m + 1
    d = vz.conv_pseudograph(n, m, backward=True)
    svg = parse_svg(d)
    assert sum(x.startswith("dX_") for x in svg["nodes"]) == n * n
    assert sum(x.startswith("dE_") for x in svg["nodes"]) == k * k
    assert len(svg["edges"]) == d.meta["edges"] == k * k * m * m
    indegree = {}
    for title, text, _ in svg["edges"]:
        i, j, p, q = map(int, re.findall(r"\d+", title))  # dX_i_j <- dE_p_q, weight W_ab
        a, b = i - p, j - q  # the inversion of indexes: dE_(i-a)(j-b)
        assert 0 <= a < m and 0 <= b < m
        assert text.replace(" ", "") == f"W{a}{b}"
        indegree[i, j] = indegree.get((i, j), 0) + 1
    assert indegree[0, 0] == 1 and indegree[n - 1, n - 1] == 1
    if n >= 2 * m - 1:
        assert indegree[m - 1, m - 1] == m * m
    assert "inversion of indexes" in d.source


def test_conv_pseudograph_weight_labels_and_bad_sizes():
    d = vz.conv_pseudograph(4, 2, weights="labels")
    assert d.meta["edges"] == 9 * 4 and d.meta["w_nodes"] == 0 and "W_0_0 [" not in d.source
    with pytest.raises(ValueError):
        vz.conv_pseudograph(2, 3)


@needs_renderer
def test_relu_switch_opens_where_input_is_positive():
    values = [0.7, -1.2, 0.0, 2.5, -0.1]
    d = vz.relu_switch(values)
    svg = parse_svg(d)
    states = [svg["nodes"][f"switch_{k}"]["text"] for k in range(len(values))]
    assert ["open" in s for s in states] == [True, False, False, True, False]
    assert ["shut" in s for s in states] == [False, True, True, False, True]
    assert d.meta["open"] == [True, False, False, True, False]
    passed = {title: text for title, text, _ in svg["edges"] if title.startswith("dx_")}
    assert passed["dx_0->switch_0"] == "\u00d71" and passed["dx_1->switch_1"] == "\u00d70"


@needs_renderer
def test_maxpool_multiplexer_routes_the_first_maximum():
    d = vz.maxpool_multiplexer([[1.0, 3.0], [3.0, 2.0]])  # tie: the first in row-major order wins
    svg = parse_svg(d)
    selected = [title for title, text, _ in svg["edges"] if "selected" in text]
    assert selected == ["x_1->mux"]
    assert d.meta["selected"] == 1 and d.meta["selected_index"] == (0, 1) and d.meta["tied"] == [2]
    assert len(svg["edges"]) == 5 and set(svg["nodes"]) == {"x_0", "x_1", "x_2", "x_3", "mux", "y"}
    assert "tie with x10" in svg["nodes"]["mux"]["text"] and "first in row-major order wins" in svg["nodes"]["mux"]["text"]
    d = vz.maxpool_multiplexer([-5, -1, -3])
    assert d.meta["selected"] == 1 and "select x01" in d.source and d.meta["tied"] == [] and "tie" not in d.source


def test_the_documented_multiplexer_has_no_tie_and_the_docs_say_what_it_selects():
    import importlib.util

    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
    spec = importlib.util.spec_from_file_location("make_diagrams", os.path.join(here, "make_diagrams.py"))
    make_diagrams = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_diagrams)
    window = np.asarray(make_diagrams.MULTIPLEXER_WINDOW)
    assert np.count_nonzero(window == window.max()) == 1
    d = vz.maxpool_multiplexer(window)
    r, c = d.meta["selected_index"]
    assert d.meta["tied"] == [] and window[r, c] == window.max()
    with open(os.path.join(here, "diagrams.md")) as f:
        text = f.read()
    assert f"`x{r}{c} = {window.max():g}`" in text and "appears twice" not in text
    with open(os.path.join(here, "maxpool_multiplexer.svg")) as f:
        svg = f.read()
    assert f"select x{r}{c}" in svg and "tie" not in svg  # the committed picture is this window's


# --------------------------------------------------------------------------- summary
def _alexnet_macs(groups, size=227):
    """Independent count: (out channels, out size, in channels per group, kernel) per conv, then the FCs."""
    c1 = (size - 11) // 4 + 1
    p1 = (c1 - 3) // 2 + 1
    p2 = (p1 - 3) // 2 + 1
    p5 = (p2 - 3) // 2 + 1
    convs = [(96, c1, 3, 11), (256, p1, 96 // groups, 5), (384, p2, 256, 3), (384, p2, 384 // groups, 3),
             (256, p2, 384 // groups, 3)]
    macs = sum(o * s * s * c * k * k for o, s, c, k in convs)
    params = sum(o * c * k * k + o for o, s, c, k in convs)
    for fan_in, fan_out in [(256 * p5 * p5, 4096), (4096, 4096), (4096, 1000)]:
        macs += fan_in * fan_out
        params += fan_in * fan_out + fan_out
    return params, macs


@pytest.fixture(scope="module")
def alexnet():
    from models.alexnet import alexnet as build

    return build()


def test_summary_alexnet_totals(alexnet, capsys):
    s = vz.summary(alexnet.loss)
    out = capsys.readouterr().out
    assert s.total_params == 60_965_224 == _alexnet_macs(2)[0]
    assert s.total_macs == 724_406_816 == _alexnet_macs(2)[1]
    assert s.total_flops == 2 * 724_406_816
    assert "60,965,224" in out and "724,406,816" in out and "(61.0M)" in out and "(724.4M)" in out
    assert s["conv1"].params == 34_944 and s["conv1"].macs == 105_415_200
    assert s["conv1"].output_shape == (None, 96, 55, 55)
    assert s["conv2"].macs == 223_948_800  # grouped: 27*27*256 * 48*5*5
    assert s["fc6"].params == 9216 * 4096 + 4096 and s["fc6"].macs == 9216 * 4096
    assert s["pool5"].output_shape == (None, 256, 6, 6) and s["pool5"].params == 0
    assert str(s) == out.rstrip("\n")


def test_summary_counts_groups_and_matches_graph():
    from models.alexnet import alexnet as build

    one_tower = vz.summary(build(groups=1, image_size=227), show=False)
    assert (one_tower.total_params, one_tower.total_macs) == _alexnet_macs(1)
    assert one_tower.total_params == 62_378_344


@needs_renderer
def test_annotated_alexnet_puts_params_red_left_and_flops_green_right(alexnet):
    d = vz.annotated(alexnet.loss)
    root = ET.fromstring(d.pipe("svg"))
    layer = next(g for g in root.iter(SVG + "g") if g.get("class") == "node"
                 and g.find(SVG + "title").text == "layer_conv1")
    texts = [(t.get("fill"), "".join(t.itertext()), float(t.get("x"))) for t in layer.iter(SVG + "text")]
    red = [x for x in texts if x[0] == "#d7191c"]
    green = [x for x in texts if x[0] == "#1a9641"]
    assert red[0][1] == "34.9K" and green[0][1] == "210.8M"  # 2 x 105,415,200 FLOPs
    assert red[0][2] < green[0][2]
    assert set(d.meta["layers"]) >= {"conv1", "conv5", "fc6", "fc8"}
    assert "60,965,224" in d.source and "1,448,813,632" in d.source


# --------------------------------------------------------------------------- networkx
def test_to_networkx_attributes_and_stats():
    x = gd.placeholder((None, 3), name="nx_x")
    with gd.scope("layer"):
        w = gd.variable(np.ones((3, 2), "float32"), name="w")
        h = gd.relu(gd.matmul(x, w))
    y = gd.sum(h * h)
    (gw,) = gd.grad(y, [w])
    g = gd.to_networkx([y, gw])
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g)
    assert g.nodes["nx_x"] == {**g.nodes["nx_x"], "op": "placeholder", "shape": "(?, 3)", "dtype": "float32",
                               "scope": "", "kind": "placeholder", "backward": False}
    assert g.nodes["layer/w"]["kind"] == "variable" and g.nodes["layer/w"]["scope"] == "layer"
    assert g.nodes[h.name]["op"] == "relu" and g.nodes[h.name]["shape"] == "(?, 2)"
    assert g.nodes[gw.name]["backward"] is True and g.nodes[gw.name]["kind"] == "gradient"
    sq = next(v for v in g.successors(h.name) if g.nodes[v]["op"] == "mul" and not g.nodes[v]["backward"])
    assert g.edges[h.name, sq]["count"] == 2  # h * h: one edge, used twice
    stats = gd.graph_stats([y])
    assert stats["ops"] == {"placeholder": 1, "variable": 1, "matmul": 1, "relu": 1, "mul": 1, "sum": 1}
    assert stats["nodes"] == 6 and stats["edges"] == 5
    assert stats["longest_path_length"] == 4 and stats["depth"] == 4  # x -> matmul -> relu -> mul -> sum
    full = gd.graph_stats([y, gw])
    assert full["backward"] == sum(1 for _, d in g.nodes(data=True) if d["backward"]) > 0
    assert full["depth"] > stats["depth"]


def test_networkx_graphml_and_json_round_trip(tmp_path):
    from graphdiff import nx as gnx

    loss, params = small_cnn()
    outputs = [loss, *gd.grad(loss, params)]
    g = gd.to_networkx(outputs)
    gnx.write_graphml(outputs, tmp_path / "g.graphml")
    gnx.write_json(outputs, tmp_path / "g.json")
    for back in (nx.read_graphml(tmp_path / "g.graphml"), gnx.read_json(tmp_path / "g.json")):
        assert set(back.nodes) == set(g.nodes) and set(back.edges) == set(g.edges)
        for key, attrs in g.nodes(data=True):
            assert back.nodes[key] == attrs
    with open(tmp_path / "g.json") as f:
        assert len(json.load(f)["edges"]) == g.number_of_edges()


def test_duplicate_names_get_distinct_keys():
    a = gd.placeholder((2,), name="same")
    b = gd.placeholder((2,), name="same")
    g = gd.to_networkx([a + b])
    assert {f"same#{a.id}", f"same#{b.id}"} <= set(g.nodes)


# --------------------------------------------------------------------------- command line
@needs_renderer
def test_cli_draws_a_model(tmp_path, capsys):
    out = tmp_path / "cnn4.svg"
    assert cli.main(["cnn4", "--out", str(out), "--backward", "--collapse", "--summary"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "total" in printed
    root = ET.parse(out).getroot()
    titles = [g.find(SVG + "title").text for g in root.iter(SVG + "g") if g.get("class") == "node"]
    assert len(titles) >= 10 and any("backward" in "".join(g.itertext()) for g in root.iter(SVG + "g"))


def test_cli_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    before = tmp_path / "kept.svg"
    before.write_text("<svg/>")
    assert cli.main(["cnn4", "--out", str(tmp_path / "no" / "such" / "folder.svg")]) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"error: cannot write {tmp_path}/no/such/folder.svg: No such file or directory"]
    assert "Traceback" not in out + err and os.listdir(tmp_path) == ["kept.svg"]


def test_cli_rejects_unknown_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["resnet", "--out", str(tmp_path / "x.svg")])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "unknown model 'resnet'" in message and "alexnet-small" in message
    assert len(message.strip().splitlines()) == 1 and message.startswith("error: ")  # no usage block
    assert not os.path.exists(tmp_path / "x.svg")


def test_what_is_not_a_graph_is_a_clear_error():
    with pytest.raises(TypeError, match="expected a Tensor, a list of Tensors, a compiled Program or a model with "
                                        r"\.loss, got int 3"):
        vz.to_dot(3)
    with pytest.raises(ValueError, match="explore: no outputs to show"):
        vz.explore([])


def test_a_parameter_built_outside_scopes_is_drawn_in_the_layer_that_reads_it():
    x = gd.placeholder((2, 3), name="x")
    w = gd.variable(np.ones((3, 4), np.float32), name="fc.weight")  # an imported PyTorch model's name
    with gd.scope("fc"):
        h = gd.matmul(x, w)
    with gd.scope("out"):
        y = gd.sum(h)
    collapsed = vz.to_dot([y], collapse=True).source
    assert "12 params" in collapsed and "fc.weight" not in collapsed  # inside fc's box
    clustered = vz.to_dot([y]).source
    fc_cluster = clustered[clustered.index("subgraph cluster_fc {"):]
    assert "fc.weight" in fc_cluster[:fc_cluster.index("}")]  # drawn inside the fc cluster
