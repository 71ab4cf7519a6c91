"""Diagrams of graphdiff graphs, drawn bottom-up as in the course slides.

    import visualize as vz
    vz.to_dot([loss, *grads], collapse=True)     # graphviz.Digraph, shows inline in Jupyter
    vz.render(loss, "alexnet.svg")               # SVG or PNG (PDF with system Graphviz)
    vz.conv_pseudograph(4, 2, backward=True)     # the slides' element-level pseudo-graph
    vz.relu_switch([0.7, -1.2, 0.0])             # ReLU's gradient as a switch
    vz.maxpool_multiplexer([[1, 3], [2, 0]])     # max pooling's gradient as a multiplexer
    vz.summary(model.loss)                       # per-layer params, MACs, FLOPs
    vz.annotated(model.loss)                     # the AlexNet slide: params red, FLOPs green
    vz.explore([loss, *grads], feed={x: batch}, path="explorer.html")  # interactive, with values

Rendering uses a system ``dot`` if there is one, else the pip-installed
``graphviz-pure`` (SVG/PNG). Command line: ``python -m visualize MODEL --out FILE``.
Uses only graphdiff's public API.
"""
from ._render import Diagram, RenderError, RendererNotFound, find_renderer
from .dot import render, to_dot
from .explore import Explorer, explore
from .pictures import conv_pseudograph, maxpool_multiplexer, relu_switch
from .summary import Summary, annotated, human, node_macs, summary

__all__ = ["Diagram", "Explorer", "explore", "RenderError", "RendererNotFound", "annotated", "conv_pseudograph", "find_renderer",
           "human", "maxpool_multiplexer", "node_macs", "relu_switch", "render", "summary", "Summary", "to_dot"]
