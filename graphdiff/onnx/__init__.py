"""ONNX interchange: write a forward graph to a ``.onnx`` file, read one back as
a graph you can differentiate and train.

    import graphdiff as gd
    gd.onnx.export(logits, [images], "alexnet.onnx")        # variables become initializers
    model = gd.onnx.load("alexnet.onnx")                    # .inputs, .outputs, .params
    (logits,) = model.outputs

The ``onnx`` package is imported only here, when used (``pip install -e
'.[interop]'``). Conventions that differ between ONNX and graphdiff (LRN's
alpha, even LRN windows, padding, floor mode) are in ``docs/interop.md``.
Export: :mod:`graphdiff.onnx.export`; import: :mod:`graphdiff.onnx.load`.
"""
from .export import export
from .load import OnnxModel, load

__all__ = ["export", "load", "OnnxModel"]
