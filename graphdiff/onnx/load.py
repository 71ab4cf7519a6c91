"""An ONNX model file -> a graphdiff graph (placeholders, variables, outputs).

``load(path)`` reads the file as data only: the protobuf is parsed, checked
by ``onnx.checker``, and each node is mapped by a rule of its own to
graphdiff ops (nothing from the file is ever executed or imported; files
with external weight data, subgraphs or ops outside the standard domain are
refused). Initializers holding float arrays become variables (trainable,
named as in the file); scalars, integer arrays and ``Constant`` nodes are
static values, and a node whose inputs are all static is evaluated at load
(shape arithmetic, constant subgraphs). A graph input becomes a placeholder,
a symbolic or missing dimension ``None``.

Besides the ops graphdiff's exporter writes, this reads what PyTorch's
exporter (``torch.onnx.export``) writes for AlexNet-like networks, where LRN
arrives decomposed into ``Mul(x, x)``, a 5-D ``Reshape``, ``Pad``, a
``(size, 1, 1)`` ``AveragePool``, ``Squeeze``, ``Mul(alpha)``, ``Add(k)``,
``Pow(beta)`` and ``Div``: that chain is recognised whole and becomes one
``gd.lrn`` (its fused gradient included). An op, an attribute or an attribute
value graphdiff does not support (AveragePool's ``ceil_mode=1``, dilations and
asymmetric pads, ...) raises :class:`~graphdiff.ModelFormatError` naming the file, the
node and the attribute.
"""
import contextlib
import os
import re
from collections import OrderedDict

import numpy as np

from .. import ops as _ops
from ..compiler import compile as _compile
from ..errors import GraphdiffError, ModelFormatError
from ..graph import Tensor, constant, placeholder, scope, variable
from ..ops.conv import same_padding as _same_padding
from ._common import MIN_OPSET, from_onnx_dtype, onnx_module, registrar


class OnnxModel:
    """A loaded model: ``inputs`` (placeholders, in the file's order), ``outputs``
    (tensors), ``params`` (variable name -> Variable, from the initializers),
    ``path``, ``opset`` and ``producer`` (who wrote the file)."""

    def __init__(self, path, inputs, outputs, params, opset, producer):
        self.path, self.inputs, self.outputs, self.params = path, inputs, outputs, params
        self.opset, self.producer = opset, producer

    def __repr__(self):
        count = sum(int(np.prod(p.shape)) for p in self.params.values())
        return (f"<OnnxModel {os.path.basename(self.path)!r} from {self.producer or 'unknown'}: "
                f"{len(self.inputs)} input(s), {len(self.outputs)} output(s), {count:,} parameters>")


_RULES = {}  # ONNX op type -> (convert(r, node, attrs) -> list of values, {attribute: default})


def rule(*op_types, **attributes):
    """Register the converter of ``op_types``; ``attributes`` are the ones it
    understands, with their defaults (any other attribute is an error)."""
    return registrar(_RULES, op_types, attributes)


# --------------------------------------------------------------------------- the reader
class _Reader:
    """Values by ONNX name: a graphdiff Tensor, or a NumPy array for static ones."""

    def __init__(self, onnx, path, opset):
        self.onnx, self.path, self.opset = onnx, path, opset
        self.values = {}

    def error(self, node, message):
        return ModelFormatError(f"{self.path}: node {node.name or node.output[0]!r} ({node.op_type}): {message}")

    def input(self, node, i):
        """Input ``i`` of ``node``: a Tensor, a NumPy array, or None where absent."""
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if name not in self.values:
            raise self.error(node, f"input {name!r} is not produced by any earlier node, input or initializer")
        return self.values[name]

    def static(self, node, i, what):
        """Input ``i`` as a NumPy array; it must be known when the file is loaded."""
        v = self.input(node, i)
        if isinstance(v, Tensor):
            raise self.error(node, f"{what} (input {i}, {node.input[i]!r}) must be a constant, not computed at run "
                                   f"time")
        return v

    def tensor(self, node, i):
        """Input ``i`` as a Tensor (a static value becomes a constant)."""
        v = self.input(node, i)
        if v is None:
            raise self.error(node, f"input {i} is missing")
        return v if isinstance(v, Tensor) else constant(v, name=node.input[i])

    def attributes(self, node, allowed):
        """``node``'s attributes with the rule's defaults; an unknown one is an error."""
        found = dict(allowed)
        for a in node.attribute:
            if a.name not in allowed:
                raise self.error(node, f"attribute {a.name!r} is not supported")
            if a.type in (self.onnx.AttributeProto.GRAPH, self.onnx.AttributeProto.GRAPHS):
                raise self.error(node, f"attribute {a.name!r} holds a subgraph, which is not supported")
            value = self.onnx.helper.get_attribute_value(a)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif isinstance(value, self.onnx.TensorProto):
                value = self.array(value, node)
            found[a.name] = value
        return found

    def array(self, proto, node=None):
        if proto.data_location == self.onnx.TensorProto.EXTERNAL:
            where = f"node {node.name!r}" if node is not None else f"initializer {proto.name!r}"
            raise ModelFormatError(f"{self.path}: {where}: weights stored in external data files are not read")
        try:
            return self.onnx.numpy_helper.to_array(proto)
        except Exception as e:  # a malformed tensor: wrong byte count, unknown type
            raise ModelFormatError(f"{self.path}: tensor {proto.name!r}: cannot be read ({e})") from None


def _check_attr(r, node, name, ok, value, why):
    if not ok:
        raise r.error(node, f"attribute {name}={value!r} is not supported ({why})")


# --------------------------------------------------------------------------- convolution and pooling
def _geometry(r, node, a, rank=2):
    """``(kernel, stride, padding)`` pairs from ONNX's attributes, checking what graphdiff supports."""
    kernel = a.get("kernel_shape")
    if kernel is not None and len(kernel) != rank:
        raise r.error(node, f"attribute kernel_shape={list(kernel)} is not supported (2-D {node.op_type} only)")
    strides = list(a.get("strides") or [1] * rank)
    pads = list(a.get("pads") or [0] * (2 * rank))
    _check_attr(r, node, "auto_pad", a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"), a.get("auto_pad"),
                "explicit pads only")
    dilations = list(a.get("dilations") or [1] * rank)
    _check_attr(r, node, "dilations", all(d == 1 for d in dilations), dilations, "graphdiff has no dilation")
    _check_attr(r, node, "ceil_mode", not a.get("ceil_mode"), a.get("ceil_mode"),
                "graphdiff pools in floor mode: floor((n + 2p - k) / s) + 1")
    _check_attr(r, node, "pads", pads[:rank] == pads[rank:], pads, "graphdiff pads both sides equally")
    return kernel, tuple(strides), tuple(pads[:rank])


def _spatial(r, node, x):
    if not isinstance(x, Tensor) or x.ndim != 4:
        rank = x.ndim if isinstance(x, Tensor) else np.ndim(x)
        raise r.error(node, f"input {node.input[0]!r} has rank {rank}; graphdiff's {node.op_type} is 2-D (NCHW)")
    return x


def _conv_geometry(r, node, a, x, w):
    """``(stride, padding, dilation)`` of an ONNX ``Conv``: ``pads`` ``[top, left, bottom,
    right]`` (asymmetric allowed), ``dilations``, and ``auto_pad``: ``VALID``,
    ``SAME_UPPER`` (TensorFlow's SAME, the odd padding at the end) or ``SAME_LOWER``
    (at the beginning), resolved with the input's static size."""
    kernel = a.get("kernel_shape")
    if kernel is not None and len(kernel) != 2:
        raise r.error(node, f"attribute kernel_shape={list(kernel)} is not supported (2-D {node.op_type} only)")
    stride = tuple(int(s) for s in (a.get("strides") or [1, 1]))
    dilation = tuple(int(d) for d in (a.get("dilations") or [1, 1]))
    _check_attr(r, node, "dilations", len(dilation) == 2 and min(dilation) >= 1, list(dilation), "2-D, >= 1")
    auto_pad = a.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    _check_attr(r, node, "auto_pad", auto_pad in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"), auto_pad,
                "one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    if auto_pad == "VALID":
        return stride, (0, 0), dilation
    if auto_pad.startswith("SAME"):
        padding = []
        for axis, n, k, s, d in zip("HW", x.shape[2:], w.shape[2:], stride, dilation):
            if k is None or (n is None and s != 1):
                raise r.error(node, f"auto_pad={auto_pad} with stride {s} needs a static input size ({axis})")
            begin, end = _same_padding(n, k, s, d)
            padding.append((begin, end) if auto_pad == "SAME_UPPER" else (end, begin))
        return stride, tuple(padding), dilation
    pads = [int(p) for p in (a.get("pads") or [0, 0, 0, 0])]
    _check_attr(r, node, "pads", len(pads) == 4, pads, "2-D: [top, left, bottom, right]")
    return stride, ((pads[0], pads[2]), (pads[1], pads[3])), dilation


@rule("Conv", kernel_shape=None, strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET")
def _conv(r, node, a):
    x, w = _spatial(r, node, r.tensor(node, 0)), r.tensor(node, 1)
    b = r.input(node, 2)
    stride, padding, dilation = _conv_geometry(r, node, a, x, w)
    return [_ops.conv2d(x, w, None if b is None else r.tensor(node, 2), stride=stride, padding=padding,
                        groups=int(a["group"]), name=node.output[0], dilation=dilation)]


@rule("MaxPool", kernel_shape=None, strides=None, pads=None, dilations=None, ceil_mode=0, storage_order=0,
      auto_pad="NOTSET")
def _max_pool(r, node, a):
    """MaxPool: ``pads`` (begins then ends) may differ per side, ``dilations`` and
    ``ceil_mode`` as graphdiff's (ONNX Runtime's ceil_mode drops a last window that
    would start in the end padding, as PyTorch and graphdiff do)."""
    if len(node.output) > 1 and node.output[1]:
        raise r.error(node, "the Indices output is not supported")
    kernel = a.get("kernel_shape")
    if kernel is None or len(kernel) != 2:
        raise r.error(node, f"attribute kernel_shape={kernel if kernel is None else list(kernel)} is not supported "
                            "(2-D MaxPool only)")
    _check_attr(r, node, "auto_pad", a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"), a.get("auto_pad"),
                "explicit pads only")
    _check_attr(r, node, "storage_order", not a.get("storage_order"), a.get("storage_order"), "row-major only")
    pads = list(a.get("pads") or [0] * 4)
    _check_attr(r, node, "pads", len(pads) == 4, pads, "2-D MaxPool: four pads")
    return [_ops.max_pool2d(_spatial(r, node, r.tensor(node, 0)), tuple(kernel), tuple(a.get("strides") or (1, 1)),
                            ((pads[0], pads[2]), (pads[1], pads[3])), dilation=tuple(a.get("dilations") or (1, 1)),
                            ceil_mode=bool(a.get("ceil_mode")), name=node.output[0])]


@rule("AveragePool", kernel_shape=None, strides=None, pads=None, dilations=None, ceil_mode=0, count_include_pad=0,
      auto_pad="NOTSET")
def _average_pool(r, node, a):
    size, stride, padding = _geometry(r, node, a)
    return [_ops.avg_pool2d(_spatial(r, node, r.tensor(node, 0)), size, stride, padding,
                            count_include_pad=bool(a["count_include_pad"]), name=node.output[0])]


@rule("GlobalAveragePool")
def _global_average_pool(r, node, a):
    return [_ops.adaptive_avg_pool2d(_spatial(r, node, r.tensor(node, 0)), 1, name=node.output[0])]


@rule("LRN", size=None, alpha=1e-4, beta=0.75, bias=1.0)
def _lrn(r, node, a):
    """ONNX: ``x / (bias + alpha / size * sum x^2) ** beta`` over channels ``c -
    floor((size-1)/2) .. c + ceil((size-1)/2)``: graphdiff's lrn with ``alpha / size``
    (the same window for odd sizes; the mirrored one for even sizes)."""
    x, size = r.tensor(node, 0), int(a["size"])
    if not isinstance(x, Tensor) or x.ndim < 3:  # (N, C, ...) of any rank, as ONNX's LRN
        raise r.error(node, f"input {node.input[0]!r} has rank {x.ndim if isinstance(x, Tensor) else np.ndim(x)}; "
                            "LRN needs (N, C, ...) of 3 or more dimensions")
    window = _Window("channels", None, size, (size - 1) // 2, size // 2, [])
    return [_lrn_graph(x, window, a["alpha"] / size, a["beta"], a["bias"], name=node.output[0])]


def _lrn_graph(x, window, alpha, beta, k, name):
    """``gd.lrn`` / ``gd.lrn_within`` over ``window``, or, for a mirrored (even)
    window, its decomposition with the transposed window sum."""
    if not window.transpose:
        op = _ops.lrn if window.kind == "channels" else _ops.lrn_within
        return op(x, size=window.size, alpha=alpha, beta=beta, k=k, name=name)
    scale = k + alpha * window.sum(x * x)
    return _ops.div(x, scale ** beta, name=name)


# --------------------------------------------------------------------------- elementwise
_UNARY = {"Relu": _ops.relu, "Tanh": _ops.tanh, "Sigmoid": _ops.sigmoid, "Exp": _ops.exp, "Log": _ops.log,
          "Sqrt": _ops.sqrt, "Neg": _ops.neg, "Abs": _ops.abs_}
_BINARY = {"Add": _ops.add, "Sub": _ops.sub, "Mul": _ops.mul, "Div": _ops.div, "Pow": _ops.pow,
           "Max": _ops.maximum, "Min": _ops.minimum, "Greater": _ops.greater, "GreaterOrEqual": _ops.greater_equal,
           "Less": _ops.less, "LessOrEqual": _ops.less_equal, "Equal": _ops.equal}


@rule(*_UNARY)
def _unary(r, node, a):
    return [_UNARY[node.op_type](r.tensor(node, 0), name=node.output[0])]


@rule("Not")
def _not(r, node, a):
    x = r.tensor(node, 0)
    return [_ops.equal(x, constant(False), name=node.output[0])]


@rule(*_BINARY)
def _binary(r, node, a):
    if node.op_type in ("Max", "Min") and len(node.input) != 2:
        raise r.error(node, f"{len(node.input)} inputs; graphdiff's maximum/minimum take 2")
    x, y = r.tensor(node, 0), r.tensor(node, 1)
    if node.op_type == "Pow" and y.dtype != x.dtype:
        y = _ops.cast(y, x.dtype)
    return [_BINARY[node.op_type](x, y, name=node.output[0])]


@rule("Where")
def _where(r, node, a):
    return [_ops.where(r.tensor(node, 0), r.tensor(node, 1), r.tensor(node, 2), name=node.output[0])]


@rule("Cast", to=None, saturate=1)
def _cast(r, node, a):
    dtype = from_onnx_dtype(a["to"])
    if dtype is None or dtype.kind not in "fiub":
        raise r.error(node, f"attribute to={a['to']} is not supported (a NumPy number type)")
    return [_ops.cast(r.tensor(node, 0), dtype, name=node.output[0])]


@rule("Identity")
def _identity(r, node, a):
    return [r.input(node, 0)]


@rule("Dropout", seed=None)
def _dropout(r, node, a):
    if len(node.output) > 1 and node.output[1]:
        raise r.error(node, "the mask output is not supported")
    training = r.input(node, 2)
    if training is not None and (isinstance(training, Tensor) or bool(training)):
        raise r.error(node, "training_mode must be false (a file holds an inference graph)")
    return [r.input(node, 0)]  # inference: the identity


# --------------------------------------------------------------------------- linear algebra
@rule("MatMul")
def _matmul(r, node, a):
    return [_ops.matmul(r.tensor(node, 0), r.tensor(node, 1), name=node.output[0])]


@rule("Gemm", alpha=1.0, beta=1.0, transA=0, transB=0)
def _gemm(r, node, a):
    """``alpha * A' @ B' + beta * C`` (``'``: transposed where ``transA``/``transB``)."""
    A, B = r.tensor(node, 0), r.tensor(node, 1)
    A = _ops.transpose(A) if a["transA"] else A
    B = _ops.transpose(B) if a["transB"] else B
    has_c, name = r.input(node, 2) is not None, node.output[0]
    y = _ops.matmul(A, B, name=None if has_c or a["alpha"] != 1.0 else name)
    if a["alpha"] != 1.0:
        y = _ops.mul(y, float(a["alpha"]), name=None if has_c else name)
    if has_c:
        c = r.tensor(node, 2)
        y = _ops.add(y, c if a["beta"] == 1.0 else c * float(a["beta"]), name=name)
    return [y]


# --------------------------------------------------------------------------- shapes
def _axes(r, node, a, index):
    """Axes from input ``index`` (opset 13+) or the ``axes`` attribute (older files)."""
    if a.get("axes") is not None:
        return [int(v) for v in a["axes"]]
    v = r.static(node, index, "axes")
    return None if v is None else [int(d) for d in np.asarray(v).reshape(-1)]


@rule("Reshape", allowzero=0)
def _reshape(r, node, a):
    x, shape = r.tensor(node, 0), [int(d) for d in r.static(node, 1, "the target shape")]
    if not a["allowzero"]:  # a 0 copies the input's dimension
        for i, d in enumerate(shape):
            if d == 0:
                known = x.shape[i] if i < x.ndim else None
                if known is None and -1 in shape:
                    raise r.error(node, f"shape {shape}: dimension {i} copies an input dimension known only at run "
                                        f"time, beside a -1")
                shape[i] = -1 if known is None else known
    return [_ops.reshape(x, shape, name=node.output[0])]


@rule("Flatten", axis=1)
def _flatten(r, node, a):
    x = r.tensor(node, 0)
    axis = a["axis"] % max(x.ndim, 1) if a["axis"] < 0 else a["axis"]
    lead, rest = x.shape[:axis], x.shape[axis:]
    if None in rest and None in lead:
        raise r.error(node, f"input {node.input[0]!r}: both sides of axis {axis} have run-time dimensions")
    shape = (-1, int(np.prod(rest))) if None not in rest else (int(np.prod(lead)), -1)
    return [_ops.reshape(x, shape, name=node.output[0])]


@rule("Transpose", perm=None)
def _transpose(r, node, a):
    perm = None if a["perm"] is None else [int(p) for p in a["perm"]]
    return [_ops.transpose(r.tensor(node, 0), perm, name=node.output[0])]


@rule("Squeeze", axes=None)
def _squeeze(r, node, a):
    x, axes = r.tensor(node, 0), _axes(r, node, a, 1)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return [_ops.squeeze(x, axes, name=node.output[0])]


@rule("Unsqueeze", axes=None)
def _unsqueeze(r, node, a):
    return [_ops.expand_dims(r.tensor(node, 0), _axes(r, node, a, 1), name=node.output[0])]


@rule("Pad", mode="constant")
def _pad(r, node, a):
    """Constant padding: ``pads`` (static) lists the begins of the axes (all, or
    ``axes``, opset 18), then their ends; a negative amount crops."""
    x = r.tensor(node, 0)
    if a["mode"] != "constant":
        raise r.error(node, f"attribute 'mode' = {a['mode']!r} is not supported (only 'constant')")
    amounts = [int(v) for v in np.asarray(r.static(node, 1, "pads")).reshape(-1)]
    value = r.input(node, 2) if len(node.input) > 2 and node.input[2] else None
    if value is not None and _scalar(r.static(node, 2, "constant_value")) is None:
        raise r.error(node, "constant_value must be one number")
    axes = list(range(x.ndim))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(v) % x.ndim for v in np.asarray(r.static(node, 3, "axes")).reshape(-1)]
    if len(amounts) != 2 * len(axes):
        raise r.error(node, f"pads has {len(amounts)} values for {len(axes)} axes (a begin and an end each)")
    pairs = [(0, 0)] * x.ndim
    for k, axis in enumerate(axes):
        pairs[axis] = (amounts[k], amounts[k + len(axes)])
    if any(lo < 0 or hi < 0 for lo, hi in pairs):  # crop first: a slice
        x = x[tuple(slice(-min(lo, 0), min(hi, 0) or None) for lo, hi in pairs)]
        pairs = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
    fill = 0.0 if value is None else _scalar(value)
    return [_ops.pad(x, pairs, value=fill, name=node.output[0])]


@rule("Slice")
def _slice(r, node, a):
    """``Slice(data, starts, ends, axes, steps)`` with static bounds: Python's
    slicing (both add a dimension to a negative bound, then clamp)."""
    x = r.tensor(node, 0)
    bounds = [None if len(node.input) <= i or not node.input[i] else
              [int(v) for v in np.asarray(r.static(node, i, what)).reshape(-1)]
              for i, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]
    starts, ends, axes, steps = bounds
    axes = list(range(len(starts))) if axes is None else [k % x.ndim for k in axes]
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes):
        raise r.error(node, f"starts {starts}, ends {ends}, axes {axes}, steps {steps} do not match")
    if 0 in steps:
        raise r.error(node, "a step of 0")
    key = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        key[axis] = slice(start, end, step)
    return [_ops.getitem(x, tuple(key))]


@rule("Split", axis=0, num_outputs=None)
def _split(r, node, a):
    """``Split`` along ``axis`` into the static sizes of input ``split``, else into
    as many equal parts as the node has outputs (``num_outputs``, opset 18)."""
    x = r.tensor(node, 0)
    axis = int(a["axis"]) % x.ndim
    n = x.shape[axis]
    if len(node.input) > 1 and node.input[1]:
        sizes = [int(v) for v in np.asarray(r.static(node, 1, "split")).reshape(-1)]
    else:
        parts = int(a["num_outputs"] or len(node.output))
        if n is None:
            raise r.error(node, f"axis {axis} is known only at run time: equal parts need its size")
        step = -(-n // parts)  # ONNX: the last part may be smaller
        sizes = [min(step, n - k * step) for k in range(parts)]
    if n is not None and sum(sizes) != n:
        raise r.error(node, f"parts {sizes} do not add up to axis {axis}'s {n}")
    edges = np.cumsum([0] + sizes).tolist()
    lead = (slice(None),) * axis
    return [_ops.getitem(x, lead + (slice(lo, hi),)) for lo, hi in zip(edges[:-1], edges[1:])]


@rule("Concat", axis=None)
def _concat(r, node, a):
    xs = [r.tensor(node, i) for i in range(len(node.input))]
    return [_ops.concatenate(xs, axis=int(a["axis"]), name=node.output[0])]


@rule("Expand")
def _expand(r, node, a):
    x, shape = r.tensor(node, 0), [int(d) for d in r.static(node, 1, "the target shape")]
    target = np.broadcast_shapes(tuple(1 if d is None else d for d in x.shape), tuple(shape))
    return [_ops.broadcast_to(x, target, name=node.output[0])]


@rule("Shape", start=0, end=None)
def _shape(r, node, a):
    v = r.input(node, 0)
    shape = v.shape if isinstance(v, Tensor) else np.shape(v)
    shape = shape[a["start"]:a["end"]]
    if None in shape:
        raise r.error(node, f"input {node.input[0]!r} has dimensions known only at run time {shape}: "
                            f"shape arithmetic must fold when the file is loaded")
    return [np.asarray(shape, dtype=np.int64)]


@rule("Constant", value=None, value_float=None, value_floats=None, value_int=None, value_ints=None)
def _constant(r, node, a):
    for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if a[key] is not None:
            return [np.asarray(a[key], dtype=dtype)]
    raise r.error(node, "no value (sparse and string constants are not supported)")


@rule("Gather", axis=0)
def _gather(r, node, a):
    data, index = r.static(node, 0, "the data"), r.static(node, 1, "the indices")
    return [np.take(data, index, axis=a["axis"])]


# --------------------------------------------------------------------------- softmax, reductions, loss
@rule("Softmax", "LogSoftmax", axis=-1)
def _softmax(r, node, a):
    fn = _ops.softmax if node.op_type == "Softmax" else _ops.log_softmax
    return [fn(r.tensor(node, 0), axis=int(a["axis"]), name=node.output[0])]


@rule("ReduceSum", "ReduceMean", "ReduceMax", axes=None, keepdims=1, noop_with_empty_axes=0)
def _reduce(r, node, a):
    x, axes = r.tensor(node, 0), _axes(r, node, a, 1)
    if not axes:
        if a["noop_with_empty_axes"]:
            return [x]
        axes = None
    fn = {"ReduceSum": _ops.sum, "ReduceMean": _ops.mean, "ReduceMax": _ops.max}[node.op_type]
    return [fn(x, axis=axes, keepdims=bool(a["keepdims"]), name=node.output[0])]


@rule("SoftmaxCrossEntropyLoss", reduction="mean", ignore_index=None)
def _softmax_cross_entropy(r, node, a):
    _check_attr(r, node, "reduction", a["reduction"] == "mean", a["reduction"], "the mean over the batch only")
    _check_attr(r, node, "ignore_index", a["ignore_index"] is None, a["ignore_index"], "every label counts")
    if r.input(node, 2) is not None or (len(node.output) > 1 and node.output[1]):
        raise r.error(node, "class weights and the log-probability output are not supported")
    logits, labels = r.tensor(node, 0), r.tensor(node, 1)
    if logits.ndim != 2:
        raise r.error(node, f"scores {node.input[0]!r} have rank {logits.ndim}; graphdiff's loss takes (N, C)")
    return [_ops.softmax_cross_entropy(logits, labels, name=node.output[0])]


# --------------------------------------------------------------------------- window sums and LRN, decomposed
def _scalar(value):
    """A static value as a Python float, if it is a single number."""
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "fiu":
        return float(value.reshape(()))
    return None


class _Window:
    """A recognised window mean: ``kind`` "channels" or "spatial", over ``source``,
    ``size`` wide, reaching ``lo`` before and ``hi`` after each element."""

    def __init__(self, kind, source, size, lo, hi, nodes):
        self.kind, self.source, self.size, self.lo, self.hi, self.nodes = kind, source, size, lo, hi, nodes

    @property
    def count(self):
        """Elements per window: the mean times this is the window sum."""
        return self.size if self.kind == "channels" else self.size * self.size

    @property
    def transpose(self):
        """graphdiff's window reaches ``size//2`` before; its transpose (an even size only) ``size//2`` after."""
        if (self.lo, self.hi) == (self.size // 2, (self.size - 1) // 2):
            return False
        return True if (self.lo, self.hi) == ((self.size - 1) // 2, self.size // 2) else None

    def sum(self, x):
        op = _ops.window_sum_channels if self.kind == "channels" else _ops.window_sum_spatial
        return op(x, self.size, transpose=self.transpose)


class _Patterns:
    """Decompositions that load as one graphdiff op. LRN, as PyTorch's exporter
    writes ``local_response_norm`` (and graphdiff's exporter an even size)::

        Div(x, Pow(Add(Mul(window_mean(Mul(x, x)), alpha...), k), beta))

    where ``window_mean`` over channels is ``Squeeze(AveragePool_(size,1,1)(Pad(
    Reshape_5d(.))))`` (PyTorch) or ``Squeeze(AveragePool_(size,1,1)(Unsqueeze(.)))``
    with the pool's own pads (graphdiff), and within a map a stride-1
    ``size x size`` AveragePool counting padding (``lrn_within``). Besides,
    ``Mul(window_mean(x), count)`` is a window sum. Every inner node must feed only
    the next one. :meth:`find` returns ``{id(node): build(reader) -> values}`` and
    the ids of the nodes absorbed."""

    def __init__(self, nodes, outputs, static):
        # nodes: one list of the graph's node objects, so that their ids stay valid (protobuf
        # may hand out a new wrapper object at each access); static: name -> NumPy array
        self.nodes, self.static = nodes, static
        self.producer = {o: n for n in nodes for o in n.output}
        self.uses = {}
        for n in nodes:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in outputs:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1

    def find(self):
        replaced, absorbed = {}, set()
        for finder in (self._lrn, self._window_sum, self._adaptive_pool):
            for n in self.nodes:
                if id(n) in absorbed:
                    continue
                found = finder(n)
                if found is not None and not any(id(m) in absorbed or id(m) in replaced for m in found[1]):
                    replaced[id(n)] = found[0]
                    absorbed.update(id(m) for m in found[1])
        return replaced, absorbed

    # ---- helpers
    def _inner(self, name, *op_types):
        n = self.producer.get(name)
        return n if n is not None and n.op_type in op_types and self.uses.get(name) == 1 else None

    def _attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                value = onnx_module().helper.get_attribute_value(a)
                return list(value) if isinstance(value, (list, tuple)) else value
        return default

    def _scalar_operand(self, node):
        """``(other input, scalar)`` of a binary node with one static scalar operand."""
        if len(node.input) == 2:
            for i, j in ((0, 1), (1, 0)):
                s = _scalar(self.static.get(node.input[j]))
                if s is not None:
                    return node.input[i], s
        return None, None

    def _axes(self, node):
        if len(node.input) > 1:
            v = self.static.get(node.input[1])
            return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
        return self._attr(node, "axes")

    def _summing_pool(self, pool, rank):
        """A stride-1 AveragePool counting its padding: the window mean of ``rank`` dims."""
        kernel = self._attr(pool, "kernel_shape")
        return (kernel is not None and len(kernel) == rank and self._attr(pool, "strides", [1] * rank) == [1] * rank
                and self._attr(pool, "count_include_pad", 0) == 1 and not self._attr(pool, "ceil_mode", 0)
                and self._attr(pool, "dilations", [1] * rank) == [1] * rank
                and self._attr(pool, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))

    # ---- window means
    def _window_mean(self, name):
        """The :class:`_Window` whose mean ``name`` is, or None."""
        squeeze = self._inner(name, "Squeeze")
        if squeeze is not None:
            return self._channel_mean(squeeze) if self._axes(squeeze) == [1] else None
        pool = self._inner(name, "AveragePool")
        if pool is None or not self._summing_pool(pool, 2):
            return None
        (kh, kw), pads = self._attr(pool, "kernel_shape"), self._attr(pool, "pads", [0] * 4)
        if kh != kw or pads[0] != pads[1] or pads[2] != pads[3] or pads[0] + pads[2] + 1 != kh:
            return None
        return _Window("spatial", pool.input[0], kh, pads[0], pads[2], [pool])

    def _channel_mean(self, squeeze):
        pool = self._inner(squeeze.input[0], "AveragePool")
        if pool is None or not self._summing_pool(pool, 3) or self._attr(pool, "kernel_shape")[1:] != [1, 1]:
            return None
        size, pads = self._attr(pool, "kernel_shape")[0], self._attr(pool, "pads", [0] * 6)
        if pads[1:3] + pads[4:] != [0, 0, 0, 0]:
            return None
        lo, hi, source, nodes = pads[0], pads[3], pool.input[0], [squeeze, pool]
        pad = self._inner(source, "Pad")
        if pad is not None:  # PyTorch pads the channel axis of the 5-D view by itself
            amounts = self.static.get(pad.input[1]) if len(pad.input) > 1 else None
            fill = _scalar(self.static.get(pad.input[2])) if len(pad.input) > 2 and pad.input[2] else 0.0
            if (amounts is None or amounts.size != 10 or self._attr(pad, "mode", b"constant") not in (b"constant",
                                                                                                        "constant")
                    or fill != 0.0 or len(pad.input) > 3):
                return None
            p = [int(v) for v in amounts]
            if p[:2] + p[3:7] + p[8:] != [0] * 8:
                return None
            lo, hi, source = lo + p[2], hi + p[7], pad.input[0]
            nodes.append(pad)
        lift = self._inner(source, "Reshape", "Unsqueeze")  # (N, C, H, W) -> (N, 1, C, H, W)
        if lift is None:
            return None
        if lift.op_type == "Reshape":
            shape = self.static.get(lift.input[1])
            if shape is None or shape.size != 5 or int(shape[1]) != 1:
                return None
        elif self._axes(lift) != [1]:
            return None
        if lo + hi + 1 != size:
            return None
        return _Window("channels", lift.input[0], size, lo, hi, nodes + [lift])

    # ---- the patterns
    def _window_sum(self, mul):
        """``Mul(window_mean(x), count)`` -> window_sum_channels / window_sum_spatial."""
        if mul.op_type != "Mul":
            return None
        inner, factor = self._scalar_operand(mul)
        window = self._window_mean(inner) if inner else None
        if window is None or window.transpose is None or factor != window.count:
            return None
        return (lambda r: [_named(window.sum(r.values[window.source]), mul)]), window.nodes

    def _lrn(self, div):
        if div.op_type != "Div" or len(div.input) != 2:
            return None
        x = div.input[0]
        power = self._inner(div.input[1], "Pow")
        beta = None if power is None else _scalar(self.static.get(power.input[1]))
        add = None if beta is None else self._inner(power.input[0], "Add")
        inner, k = self._scalar_operand(add) if add is not None else (None, None)
        if k is None:
            return None
        chain, alpha = [power, add], 1.0
        node = self._inner(inner, "Mul")
        while node is not None:  # scalar multipliers: alpha (and, as graphdiff writes an even size, the count)
            rest, factor = self._scalar_operand(node)
            if factor is None:
                break
            chain.append(node)
            alpha, inner = alpha * factor, rest
            node = self._inner(inner, "Mul")
        window = self._window_mean(inner)
        if window is None or window.transpose is None:
            return None
        squares = self._inner(window.source, "Mul")
        if squares is None or list(squares.input) != [x, x]:
            return None
        # k + alpha * mean = k + (alpha / count) * sum: graphdiff's alpha is on the sum, as in the paper.
        alpha /= window.count

        def build(r):
            return [_lrn_graph(_spatial(r, div, r.values[x]), window, alpha, beta, k, name=div.output[0])]

        return build, chain + window.nodes + [squares]


    def _adaptive_pool(self, mean):
        """PyTorch's adaptive average pooling where the bins do not tile the input
        (but share one size): ``ReduceMean_{-3,-1}(Transpose_{4,5,0,1,2,3}(GatherND(
        Transpose_{2,3,0,1}(x), indices)))`` with ``indices[i, a, j, b] = (row of bin i
        + a, column of bin j + b)`` -> ``adaptive_avg_pool2d``."""
        if mean.op_type != "ReduceMean" or self._attr(mean, "keepdims", 1) != 0:
            return None
        axes = self._axes(mean)
        back = self._inner(mean.input[0], "Transpose")
        gather = back and self._inner(back.input[0], "GatherND")
        front = gather and self._inner(gather.input[0], "Transpose")
        index = gather and self.static.get(gather.input[1])
        if (front is None or sorted(a % 6 for a in axes or []) != [3, 5] or self._attr(gather, "batch_dims", 0)
                or self._attr(back, "perm") != [4, 5, 0, 1, 2, 3] or self._attr(front, "perm") != [2, 3, 0, 1]
                or index is None or index.ndim != 5 or index.shape[-1] != 2):
            return None
        OH, OW = index.shape[0], index.shape[2]

        def build(r):
            x = _spatial(r, mean, r.values[front.input[0]])
            if None in x.shape[2:] or not _adaptive_indices(index, x.shape[2:]):
                raise r.error(gather, f"indices {index.shape} are not adaptive average pooling bins of the input "
                                      f"{x.shape}")
            return [_ops.adaptive_avg_pool2d(x, (OH, OW), name=mean.output[0])]

        return build, [back, gather, front]


def _adaptive_indices(index, input_size):
    """Whether ``index[i, a, j, b] == (floor(i*H/OH) + a, floor(j*W/OW) + b)`` with every
    bin ``a``/``b`` entries wide (PyTorch's bins when they all have one size)."""
    (H, W), (OH, kh, OW, kw) = input_size, index.shape[:4]
    starts_h, starts_w = (np.arange(OH) * H) // OH, (np.arange(OW) * W) // OW
    ends_h, ends_w = -((-(np.arange(1, OH + 1)) * H) // OH), -((-(np.arange(1, OW + 1)) * W) // OW)
    if np.any(ends_h - starts_h != kh) or np.any(ends_w - starts_w != kw):
        return False
    rows = starts_h[:, None, None, None] + np.arange(kh)[None, :, None, None]
    cols = starts_w[None, None, :, None] + np.arange(kw)[None, None, None, :]
    want = np.stack(np.broadcast_arrays(rows, cols), axis=-1)
    return bool(np.array_equal(index, want))


def _named(t, node):
    t.name = node.output[0]
    return t


# --------------------------------------------------------------------------- the graph
def _read_model(onnx, path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read the file ({e.strerror or e})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # google.protobuf's DecodeError: truncated or not protobuf at all
        raise ModelFormatError(f"{path}: not an ONNX model, or truncated ({type(e).__name__}: {e})") from None
    if not model.HasField("graph") or not model.graph.output:
        raise ModelFormatError(f"{path}: not an ONNX model, or truncated (no graph outputs)")
    _load_external_data(onnx, model, path)
    return model


def _check_model(onnx, path):
    try:
        onnx.checker.check_model(path)  # from the file: external weights are checked in place, not copied
    except Exception as e:  # onnx.checker.ValidationError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFormatError(f"{path}: not a valid ONNX model: {first}") from None


def _check_ops(r, nodes, absorbed):
    """Every node (outside a recognised decomposition) has a rule: an unknown op
    is reported by name before anything is built."""
    for n in nodes:
        if id(n) in absorbed:
            continue
        if n.domain not in ("", "ai.onnx"):
            raise r.error(n, f"op {n.op_type} in domain {n.domain!r} is not supported (standard ONNX ops only)")
        if n.op_type not in _RULES:
            raise r.error(n, f"op {n.op_type} is not supported")


def _load_external_data(onnx, model, path):
    """Read weights kept beside the model (``torch.onnx.export`` writes
    ``model.onnx.data`` for large models): only files inside the model's folder."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for t in external:
        location = {e.key: e.value for e in t.external_data}.get("location", "")
        target = os.path.realpath(os.path.join(folder, location))
        if not location or os.path.isabs(location) or os.path.dirname(target) != folder:
            raise ModelFormatError(f"{path}: initializer {t.name!r}: external data {location!r} must be a file in "
                                   f"the model's folder")
        if not os.path.isfile(target):
            raise ModelFormatError(f"{path}: initializer {t.name!r}: external data file {location!r} is missing")
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, folder)
        except Exception as e:  # a short file, a bad offset
            raise ModelFormatError(f"{path}: cannot read the external weight data ({e})") from None


def _opset(model, path):
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = versions.get("ai.onnx")
    if opset is None or opset < MIN_OPSET:
        raise ModelFormatError(f"{path}: opset {opset} of the standard domain is not supported (needs >= {MIN_OPSET})")
    return opset


def _fold(r, node, convert, attrs):
    """Evaluate a node whose inputs are all static, now: its values stay static."""
    values = convert(r, node, attrs)
    folded = []
    for v in values:
        if isinstance(v, Tensor) and v.op.name != "constant":
            v = np.asarray(_compile([v], inputs=[])()[0])
        elif isinstance(v, Tensor):
            v = v.op.value
        folded.append(v)
    return folded


def load(path):
    """Read the ONNX file ``path`` into a graph (see :class:`OnnxModel`).

    Returns an :class:`OnnxModel` with ``inputs`` (placeholders), ``outputs``
    (tensors) and ``params`` (variables, from the float initializers, which
    ``gd.grad`` and ``graphdiff.optim`` can train). A file that cannot be read,
    is not ONNX, is truncated, or uses an op or attribute graphdiff does not
    support raises :class:`~graphdiff.ModelFormatError` naming the file, the node
    and the attribute.
    """
    onnx = onnx_module()
    path = os.fspath(path)
    model = _read_model(onnx, path)
    opset = _opset(model, path)
    g = model.graph
    r = _Reader(onnx, path, opset)
    params = OrderedDict()
    for init in g.initializer:
        a = r.array(init)
        if a.dtype.kind == "f" and a.ndim >= 1 and a.size > 1:
            params[init.name] = r.values[init.name] = variable(a, name=init.name, copy=not a.flags.writeable)
        else:
            r.values[init.name] = a
    inputs = []
    for vi in g.input:
        if vi.name in r.values:  # an initializer also listed as an input (older files)
            continue
        inputs.append(_placeholder(r, vi))
        r.values[vi.name] = inputs[-1]

    static = {k: v for k, v in r.values.items() if isinstance(v, np.ndarray)}
    for n in g.node:  # Constant values, for the patterns (each node is read again below)
        if n.op_type == "Constant" and n.output:
            try:
                static[n.output[0]] = _constant(r, n, r.attributes(n, _RULES["Constant"][1]))[0]
            except ModelFormatError:
                pass  # reported when the node itself is read
    nodes = list(g.node)  # these objects throughout: ids of nodes key the patterns found
    replaced, absorbed = _Patterns(nodes, g.output, static).find()
    _check_ops(r, nodes, absorbed)
    _check_model(onnx, path)
    for n in nodes:
        if id(n) in absorbed:
            continue
        try:
            with _layer_of(n):  # diagrams and the explorer group a layer's nodes into one box
                values = _convert(r, n, replaced.get(id(n)))
        except ModelFormatError:
            raise
        except GraphdiffError as e:  # a shape rule of a graphdiff op: name the node as well
            raise r.error(n, str(e)) from None
        for name, v in zip(n.output, values):
            if name:
                r.values[name] = v
    outputs = []
    for vi in g.output:
        if vi.name not in r.values:
            raise ModelFormatError(f"{path}: graph output {vi.name!r} is not produced by any node")
        v = r.values[vi.name]
        outputs.append(v if isinstance(v, Tensor) else constant(v, name=vi.name))
    return OnnxModel(path, inputs, outputs, params, opset, f"{model.producer_name} {model.producer_version}".strip())


def _layer_of(n):
    """A ``graphdiff.scope`` for ONNX node ``n``: the innermost module PyTorch's
    exporter records (metadata ``pkg.torch.onnx.name_scopes``, e.g. ``['',
    'features', 'features.0', 'conv2d']``: ``features.0``), or the ``<scope>/``
    that graphdiff's export writes before a node's name; else none. Read as
    text (a list of quoted names), nothing in it is evaluated."""
    for p in n.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes" and len(p.value) < 4096:
            names = re.findall(r"'([^'\\]*)'", p.value)
            modules = [m for m in names[1:-1] if m]
            return scope(modules[-1]) if modules else contextlib.nullcontext()
    name = (n.name or (n.output[0] if n.output else "")).strip("/")  # older exporters: /features/features.0/Conv
    return scope(name.rsplit("/", 1)[0]) if "/" in name else contextlib.nullcontext()


def _convert(r, n, build):
    if build is not None:  # a recognised decomposition (see _Patterns)
        return build(r)
    convert, allowed = _RULES[n.op_type]
    attrs = r.attributes(n, allowed)
    present = [r.input(n, i) for i in range(len(n.input)) if n.input[i]]
    if n.op_type != "Constant" and present and all(isinstance(v, np.ndarray) for v in present):
        return _fold(r, n, convert, attrs)
    return convert(r, n, attrs)


def _placeholder(r, vi):
    t = vi.type.tensor_type
    dtype = from_onnx_dtype(t.elem_type) if vi.type.HasField("tensor_type") else None
    if dtype is None or dtype.kind not in "fiub":
        raise ModelFormatError(f"{r.path}: graph input {vi.name!r}: only numeric tensors are supported")
    if not t.HasField("shape"):
        raise ModelFormatError(f"{r.path}: graph input {vi.name!r} has no shape (its rank is needed)")
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
    return placeholder(shape, dtype=dtype, name=vi.name)
