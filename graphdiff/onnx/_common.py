"""What export and load share: the lazy import of ``onnx``, the dtype table."""
import numpy as np

from ..errors import BackendError

#: opsets graphdiff writes and reads: 13 made Softmax single-axis and Squeeze's axes an input
MIN_OPSET = 13
DEFAULT_OPSET = 18


def onnx_module():
    """The ``onnx`` package, or a BackendError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise BackendError("graphdiff.onnx needs the onnx package: pip install -e '.[interop]' "
                           "(or pip install onnx)") from None
    return onnx


def to_onnx_dtype(dtype):
    """NumPy dtype -> ONNX TensorProto element type."""
    onnx = onnx_module()
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def from_onnx_dtype(elem_type):
    """ONNX TensorProto element type -> NumPy dtype (None if it has none)."""
    onnx = onnx_module()
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def registrar(table, names, extra):
    """A decorator that files the function it decorates in ``table`` under each
    of ``names`` as ``(function, extra)``: the export and import rule tables."""
    def register(fn):
        for name in names:
            table[name] = (fn, extra)
        return fn
    return register
