"""Export a graph to NetworkX, for analysis and for other tools (GraphML, JSON).

NetworkX serves analysis and export only, never the execution hot path, so it
is imported when one of these functions is called (``import graphdiff`` works
without it).

    g = gd.to_networkx([loss])            # networkx.DiGraph, inputs -> users
    g.nodes["conv1/w"]                    # {'op': 'variable', 'shape': '(96, 3, 11, 11)', ...}
    gd.graph_stats([loss])["ops"]         # {'conv2d': 5, 'relu': 7, ...}
    nx.write_graphml(g, "alexnet.graphml")  # or graphdiff.nx.write_graphml([loss], path)

Nodes are keyed by the tensor's name (``"conv1/w"``, ``"conv2d_17"``); where two
tensors share a name, by ``"name#id"``. Node attributes (all strings, ints or
bools, so GraphML can store them): ``name``, ``tensor_id`` (the tensor's
``.id``; GraphML reserves ``id``), ``op`` (the op's name), ``label`` (the op
and its attributes), ``shape`` (e.g. ``"(?, 96, 55, 55)"``, ``?`` for a
dimension known only at run time), ``dtype``, ``scope`` (``""`` for none),
``kind`` (placeholder, variable, constant, forward, gradient), ``backward``
(built by ``grad``) and ``size`` (elements, ``-1`` if unknown).
An edge runs from an input to the node that uses it, with ``index`` (the first
input position it fills) and ``count`` (how many positions: ``x * x`` has 2).
"""
from __future__ import annotations

import json
from collections import Counter

from .graph import Tensor, toposort


def _outputs(outputs):
    if isinstance(outputs, Tensor):
        return [outputs]
    outputs = list(outputs)
    for o in outputs:
        if not isinstance(o, Tensor):
            raise TypeError(f"to_networkx: outputs must be Tensors, got {type(o).__name__}")
    return outputs


def shape_str(shape):
    """``(None, 3, 227, 227)`` -> ``"(?, 3, 227, 227)"``."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + (
        "," if len(shape) == 1 else "") + ")"


def node_keys(nodes):
    """Tensor -> key: its name, or ``name#id`` where names repeat."""
    counts = Counter(t.name for t in nodes)
    return {id(t): t.name if counts[t.name] == 1 else f"{t.name}#{t.id}" for t in nodes}


def to_networkx(outputs):
    """The graph that ``outputs`` (a Tensor or a list) depend on, as a
    ``networkx.DiGraph`` with edges from each input to its user (see the
    module docstring for the attributes)."""
    import networkx as nx

    nodes = toposort(_outputs(outputs))
    keys = node_keys(nodes)
    g = nx.DiGraph()
    for t in nodes:
        size = 1
        for d in t.shape:
            size = -1 if d is None or size < 0 else size * d
        g.add_node(keys[id(t)], name=t.name, tensor_id=t.id, op=t.op.name, label=t.op.describe(),
                   shape=shape_str(t.shape), dtype=t.dtype.name, scope=t.scope or "", kind=t.kind,
                   backward=bool(t.backward), size=size)
    for t in nodes:
        for index, i in enumerate(t.inputs):
            u, v = keys[id(i)], keys[id(t)]
            if g.has_edge(u, v):
                g.edges[u, v]["count"] += 1
            else:
                g.add_edge(u, v, index=index, count=1, shape=shape_str(i.shape))
    return g


def write_graphml(outputs, path):
    """Write the graph as GraphML (readable by ``networkx.read_graphml``,
    Gephi, yEd, Cytoscape)."""
    import networkx as nx

    nx.write_graphml(to_networkx(outputs), path)
    return path


def write_json(outputs, path):
    """Write the graph as node-link JSON (``networkx.node_link_data`` with
    ``edges="edges"``); read it back with :func:`read_json`."""
    import networkx as nx

    data = nx.node_link_data(to_networkx(outputs), edges="edges")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    return path


def read_json(path):
    """The ``networkx.DiGraph`` written by :func:`write_json`."""
    import networkx as nx

    with open(path, encoding="utf-8") as f:
        return nx.node_link_graph(json.load(f), edges="edges")


def graph_stats(outputs):
    """Counts and depth of the graph, computed with NetworkX:

    * ``nodes``, ``edges``: sizes of the DiGraph;
    * ``ops``: nodes per op name (leaves as placeholder/variable/constant);
    * ``kinds``: nodes per kind (placeholder, variable, constant, forward, gradient);
    * ``backward``: nodes built by ``grad``;
    * ``longest_path_length``: edges on the longest input-to-output path;
    * ``longest_path``: the node keys along it;
    * ``depth``: ops (non-leaf nodes) on the deepest path, i.e. how many ops
      must run one after another.
    """
    import networkx as nx

    g = to_networkx(outputs)
    longest = nx.dag_longest_path(g)
    depth = {}
    for key in nx.topological_sort(g):
        is_op = g.nodes[key]["kind"] not in ("placeholder", "variable", "constant")
        depth[key] = max((depth[p] for p in g.predecessors(key)), default=0) + is_op
    return {
        "nodes": g.number_of_nodes(),
        "edges": g.number_of_edges(),
        "ops": dict(Counter(d["op"] for _, d in g.nodes(data=True))),
        "kinds": dict(Counter(d["kind"] for _, d in g.nodes(data=True))),
        "backward": sum(1 for _, d in g.nodes(data=True) if d["backward"]),
        "longest_path_length": max(len(longest) - 1, 0),
        "longest_path": longest,
        "depth": max(depth.values(), default=0),
    }
