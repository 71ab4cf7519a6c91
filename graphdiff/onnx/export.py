"""A forward graph -> an ONNX model file.

Each graphdiff op has one rule here that writes the ONNX nodes computing it.
Placeholders become graph inputs (a ``None`` dimension becomes a symbolic one:
``batch`` for the first axis, ``<input>_dim<k>`` elsewhere), variables and
constants become initializers, outputs the graph outputs. A few rules read
past their node to write the ONNX idiom (each says so):

* ``add(matmul(h, w), b)`` with 2-D ``h``, ``w`` and a 1-D bias -> ``Gemm``;
* ``x * dropout_mask(x)`` (``gd.dropout``) -> ``x``: the identity at inference;
* ``sum(x) / count(x)`` (``gd.mean``) -> ``ReduceMean``;
* ``lrn_normalize(x, lrn_scale(x))`` (``gd.lrn``) -> ``LRN`` with ``alpha *
  size`` (ONNX divides alpha by size; the paper does not); an even size is
  written as its decomposition, since ONNX centres even windows the other way.

An op without a rule raises :class:`~graphdiff.ModelFormatError` naming the op
and the node. The file is written atomically (temporary file, then rename).
"""
import errno
import os

import numpy as np

from ..atomic import atomic_write
from ..backends import to_host_array
from ..errors import InputError, ModelFormatError
from ..graph import ConstantOp, PlaceholderOp, Tensor, VariableOp, fmt_shape, toposort
from ..kernels import avg_pool as _avg
from ._common import DEFAULT_OPSET, MIN_OPSET, onnx_module, registrar, to_onnx_dtype

_RULES = {}  # graphdiff op name -> (write(w, node) -> ONNX output name, reads(node) -> tensors it reads)


def rule(*op_names, reads=None):
    """Register the ONNX writer of the graphdiff ops ``op_names``; ``reads(node)``
    lists the tensors it uses when that is not ``node.inputs``."""
    return registrar(_RULES, op_names, reads)


# --------------------------------------------------------------------------- the writer
class _Writer:
    """Collects nodes and initializers; maps graphdiff tensors to ONNX value names."""

    def __init__(self, onnx, opset):
        self.onnx, self.opset = onnx, opset
        self.nodes, self.initializers = [], []
        self.names, self.taken, self.node_names, self.consts = {}, set(), set(), {}

    def unique(self, base, taken=None):
        taken = self.taken if taken is None else taken
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    def __getitem__(self, t):
        """The ONNX name of tensor ``t`` (already written)."""
        return self.names[id(t)]

    def node(self, op_type, inputs, hint, **attrs):
        """Append one node; returns its output's name (``hint``, made unique)."""
        out = self.unique(hint)
        node_name = self.unique(out, self.node_names)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=node_name, **attrs))
        return out

    def initializer(self, array, name):
        name = self.unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype, hint="const"):
        """``value`` as ``dtype``, equal constants shared: an initializer for
        numbers and integer arrays (shapes, axes), a ``Constant`` node for float
        arrays, so that loading the file makes variables of the initializers only."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.consts:
            if array.dtype.kind == "f" and array.size > 1:
                tensor = self.onnx.numpy_helper.from_array(array, f"{hint}/value")
                self.consts[key] = self.node("Constant", [], hint, value=tensor)
            else:
                self.consts[key] = self.initializer(array, hint)
        return self.consts[key]

    def ints(self, values, hint="axes"):
        return self.const(np.asarray(values, np.int64).reshape(-1), np.int64, hint)

    def cast_to(self, t, dtype, hint):
        """``t``'s name, cast to ``dtype`` first if it differs (ONNX ops take one element type)."""
        if t.dtype == dtype:
            return self[t]
        return self.node("Cast", [self[t]], f"{hint}/cast", to=to_onnx_dtype(dtype))

    def reduce(self, op_type, x, axes, keepdims, hint):
        """``Reduce*`` over ``axes``: an input from opset 18 on (13 for ReduceSum), an attribute before."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.node(op_type, [x, self.ints(axes)], hint, keepdims=int(keepdims))
        return self.node(op_type, [x], hint, axes=list(axes), keepdims=int(keepdims))


def _unsupported(node, why):
    return ModelFormatError(f"onnx export: op {node.op.name} at node {node.name!r} {fmt_shape(node.shape)}: {why}")


# --------------------------------------------------------------------------- convolution, pooling
def _pads(padding):
    """``(ph, pw)`` or ``((top, bottom), (left, right))`` -> ONNX's ``[top, left, bottom, right]``
    (begins then ends)."""
    (top, bottom), (left, right) = ((p, p) if isinstance(p, int) else p for p in padding)
    return [top, left, bottom, right]


@rule("conv2d")
def _conv2d(w, node):
    x, wt = node.inputs[:2]
    return w.node("Conv", [w[t] for t in node.inputs], node.name, kernel_shape=list(wt.shape[2:]),
                  strides=list(node.op.stride), pads=_pads(node.op.padding), group=node.op.groups,
                  dilations=list(node.op.dilation))


@rule("max_pool2d")
def _max_pool2d(w, node):
    """MaxPool (graphdiff pads with -inf: ONNX's MaxPool ignores its padding the same
    way), ``pads`` begins then ends, ``dilations`` where not 1. ``ceil_mode`` where
    plain rounding up gives graphdiff's windows; where PyTorch's rule drops the last
    window (it would start in the end padding) ONNX's shape inference and ONNX Runtime
    disagree, so the windows are written in floor mode with the end padding that
    gives them. ONNX Runtime wants each pad smaller than the (undilated) window:
    larger ones become a -inf ``Pad`` before the pooling."""
    op, x = node.op, node.inputs[0]
    begins, ends, ceil = list(op.padding), list(op.padding_end), 0
    if op.ceil_mode:
        ceil = 1
        for axis, (n, k, s, d) in enumerate(zip(x.shape[2:], op.size, op.stride, op.dilation)):
            if n is None:
                continue
            span = n + begins[axis] + ends[axis] - d * (k - 1) - 1
            if node.shape[2 + axis] != -(-span // s) + 1:  # the last window dropped: floor mode, shorter end
                ceil = 0
        if ceil == 0:
            if None in x.shape[2:]:
                raise _unsupported(node, "ceil_mode needs static spatial dimensions here")
            ends = [max(0, (o - 1) * s + d * (k - 1) + 1 - n - b) for o, s, d, k, n, b in
                    zip(node.shape[2:], op.stride, op.dilation, op.size, x.shape[2:], begins)]
    extra = dict(dilations=list(op.dilation)) if op.dilation != (1, 1) else {}
    if ceil:
        extra["ceil_mode"] = 1
    source = w[x]
    if any(p >= k for p, k in zip(begins + ends, list(op.size) * 2)):
        source = w.node("Pad", [source, w.ints([0, 0] + begins + [0, 0] + ends, "pads"),
                                w.const(-np.inf, x.dtype, "minus_inf")], f"{node.name}/pad", mode="constant")
        begins, ends = [0, 0], [0, 0]
    return w.node("MaxPool", [source], node.name, kernel_shape=list(op.size), strides=list(op.stride),
                  pads=begins + ends, **extra)


@rule("avg_pool2d")
def _avg_pool2d(w, node):
    op = node.op  # ONNX's default count_include_pad is 0, graphdiff's (and PyTorch's) True: always written
    return w.node("AveragePool", [w[node.inputs[0]]], node.name, kernel_shape=list(op.size),
                  strides=list(op.stride), pads=_pads(op.padding), count_include_pad=int(op.count_include_pad))


@rule("adaptive_avg_pool2d")
def _adaptive_avg_pool2d(w, node):
    """GlobalAveragePool for a 1 x 1 output, AveragePool where the bins tile the
    input, else the two averaging matrices as MatMuls (``rows @ x @ cols^T``)."""
    x = node.inputs[0]
    (OH, OW), (H, W) = node.op.output_size, x.shape[2:]
    if (OH, OW) == (1, 1):
        return w.node("GlobalAveragePool", [w[x]], node.name)
    if H is None or W is None:
        raise _unsupported(node, f"needs static spatial dimensions for output size {(OH, OW)}")
    if H % OH == 0 and W % OW == 0:
        k = [H // OH, W // OW]
        return w.node("AveragePool", [w[x]], node.name, kernel_shape=k, strides=k, pads=[0, 0, 0, 0],
                      count_include_pad=0)
    rows = w.const(_avg.adaptive_matrix(H, OH), x.dtype, f"{node.name}/rows")
    narrowed = w.node("MatMul", [rows, w[x]], f"{node.name}/rows_applied")
    cols_t = w.const(_avg.adaptive_matrix(W, OW).T, x.dtype, f"{node.name}/cols_t")
    return w.node("MatMul", [narrowed, cols_t], node.name)


# --------------------------------------------------------------------------- LRN and its decompositions
def _channel_window_sum(w, x, size, transpose, dtype, hint, shape=(None,) * 4):
    """``sum_{j = c - lo}^{c + hi} x[:, j]`` as a 3-D AveragePool over (C, H, W)
    with a ``(size, 1, 1)`` window, times ``size`` (the form PyTorch exports); an
    input of another rank goes through it as ``(N, C, rest, 1)`` (:func:`_as_nchw`)."""
    x, restore = _as_nchw(w, x, shape, hint)
    lo, hi = ((size - 1) // 2, size // 2) if transpose else (size // 2, (size - 1) // 2)
    u = w.node("Unsqueeze", [x, w.ints([1])], f"{hint}/maps")
    pooled = w.node("AveragePool", [u], f"{hint}/window_mean", kernel_shape=[size, 1, 1], strides=[1, 1, 1],
                    pads=[lo, 0, 0, hi, 0, 0], count_include_pad=1)
    squeezed = w.node("Squeeze", [pooled, w.ints([1])], f"{hint}/squeeze")
    return restore(lambda name: w.node("Mul", [squeezed, w.const(size, dtype)], name))


def _as_nchw(w, x, shape, hint):
    """Channel-window ops on ``(N, C, ...)`` of any rank: ONNX Runtime's LRN and pools
    take 4-D (NCHW) only, so another rank is reshaped to ``(N, C, rest, 1)`` and the
    result back to ``x``'s ``shape`` (static shapes where only N is unknown; else
    read at run time with ``Shape``). Returns ``(4-D input, restore)``,
    ``restore(make)`` calling ``make(name)`` for the last node."""
    if len(shape) == 4:
        return x, lambda make: make(hint)
    static = None not in shape[1:]
    to_4d = [-1, shape[1], int(np.prod(shape[2:])), 1] if static else [0, 0, -1, 1]
    flat = w.node("Reshape", [x, w.ints(to_4d, "nchw_shape")], f"{hint}/as_nchw")

    def restore(make):
        back = w.ints([-1] + list(shape[1:]), "shape") if static else w.node("Shape", [x], f"{hint}/shape")
        return w.node("Reshape", [make(f"{hint}/nchw"), back], hint)
    return flat, restore


def _spatial_window_sum(w, x, size, transpose, dtype, hint):
    """The ``size x size`` neighbourhood sum: AveragePool (padding counted) times ``size^2``."""
    lo, hi = ((size - 1) // 2, size // 2) if transpose else (size // 2, (size - 1) // 2)
    pooled = w.node("AveragePool", [x], f"{hint}/window_mean", kernel_shape=[size, size], strides=[1, 1],
                    pads=[lo, lo, hi, hi], count_include_pad=1)
    return w.node("Mul", [pooled, w.const(size * size, dtype)], hint)


@rule("window_sum_channels")
def _window_sum_channels(w, node):
    return _channel_window_sum(w, w[node.inputs[0]], node.op.size, node.op.transpose, node.dtype, node.name,
                               node.shape)


@rule("window_sum_spatial")
def _window_sum_spatial(w, node):
    return _spatial_window_sum(w, w[node.inputs[0]], node.op.size, node.op.transpose, node.dtype, node.name)


@rule("lrn_scale", "lrn_within_scale")
def _lrn_scale(w, node):
    """``k + alpha * S(x^2)`` with the family's window sum ``S``."""
    x, op = node.inputs[0], node.op
    squares = w.node("Mul", [w[x], w[x]], f"{node.name}/squares")
    if node.op.name == "lrn_scale":
        sums = _channel_window_sum(w, squares, op.size, False, node.dtype, f"{node.name}/window_sum", node.shape)
    else:
        sums = _spatial_window_sum(w, squares, op.size, False, node.dtype, f"{node.name}/window_sum")
    scaled = w.node("Mul", [sums, w.const(op.alpha, node.dtype)], f"{node.name}/alpha")
    return w.node("Add", [scaled, w.const(op.k, node.dtype)], node.name)


def _lrn_reads(node):
    return node.inputs[:1] if _as_onnx_lrn(node) else node.inputs


def _as_onnx_lrn(node):
    """ONNX's LRN sums channels ``c - floor((size-1)/2) .. c + ceil((size-1)/2)``:
    graphdiff's (and PyTorch's) window for odd sizes only."""
    return node.op.name == "lrn_normalize" and node.op.size % 2 == 1


@rule("lrn_normalize", "lrn_within_normalize", reads=_lrn_reads)
def _lrn_normalize(w, node):
    x, op = node.inputs[0], node.op
    if _as_onnx_lrn(node):  # ONNX: x / (bias + alpha / size * sum x^2) ** beta
        x4, restore = _as_nchw(w, w[x], node.shape, node.name)
        return restore(lambda name: w.node("LRN", [x4], name, size=op.size, alpha=op.alpha * op.size, beta=op.beta,
                                           bias=op.k))
    power = w.node("Pow", [w[node.inputs[1]], w.const(op.beta, node.dtype)], f"{node.name}/power")
    return w.node("Div", [w[x], power], node.name)


@rule("normalize_cross_map")
def _normalize_cross_map(w, node):
    x = w[node.inputs[0]]
    return w.node("Div", [x, w.reduce("ReduceSum", x, [1], True, f"{node.name}/total")], node.name)


# --------------------------------------------------------------------------- elementwise
_UNARY = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
          "neg": "Neg", "abs": "Abs"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max", "minimum": "Min"}
_COMPARE = {"greater": "Greater", "greater_equal": "GreaterOrEqual", "less": "Less", "less_equal": "LessOrEqual",
            "equal": "Equal", "not_equal": "Equal"}


@rule(*_UNARY)
def _unary(w, node):
    return w.node(_UNARY[node.op.name], [w[node.inputs[0]]], node.name)


def _gemm_parts(node):
    """``(h, weight, bias)`` when ``node`` is ``matmul(h, weight) + bias`` in Gemm's form, else None."""
    if node.op.name != "add":
        return None
    for prod, bias in (node.inputs, node.inputs[::-1]):
        if (prod.op.name == "matmul" and all(t.ndim == 2 for t in prod.inputs) and bias.ndim == 1
                and bias.shape[0] == prod.shape[1] and bias.dtype == prod.dtype == node.dtype):
            return (*prod.inputs, bias)
    return None


def _dropout_input(node):
    """``x`` when ``node`` is ``x * dropout_mask(x)`` (``gd.dropout``), else None."""
    if node.op.name == "mul":
        for x, mask in (node.inputs, node.inputs[::-1]):
            if mask.op.name == "dropout_mask" and x.dtype == node.dtype:
                return x
    return None


def _mean_parts(node):
    """``(x, Sum op)`` when ``node`` is ``sum(x) / count(x)`` over the same axes (``gd.mean``), else None."""
    if node.op.name != "div":
        return None
    total, count = node.inputs
    if total.op.name != "sum" or count.op.name != "count" or total.op.axes != count.op.axes:
        return None
    x = total.inputs[0]
    source = x.inputs[0] if x.op.name == "cast" else x
    return (x, total.op) if source is count.inputs[0] else None


def _binary_reads(node):
    gemm, x, mean = _gemm_parts(node), _dropout_input(node), _mean_parts(node)
    return list(gemm) if gemm else [x] if x is not None else [mean[0]] if mean else node.inputs


@rule(*_BINARY, reads=_binary_reads)
def _binary(w, node):
    gemm = _gemm_parts(node)
    if gemm:
        return w.node("Gemm", [w[t] for t in gemm], node.name)
    x = _dropout_input(node)
    if x is not None:  # dropout at inference: the identity, so no node at all
        return w[x]
    mean = _mean_parts(node)
    if mean:
        x, total = mean
        return w.reduce("ReduceMean", w[x], total.axes, total.keepdims, node.name)
    a, b = (w.cast_to(t, node.dtype, node.name) for t in node.inputs)
    return w.node(_BINARY[node.op.name], [a, b], node.name)


@rule(*_COMPARE)
def _compare(w, node):
    dtype = np.result_type(*[t.dtype for t in node.inputs])
    a, b = (w.cast_to(t, dtype, node.name) for t in node.inputs)
    if node.op.name == "not_equal":
        return w.node("Not", [w.node("Equal", [a, b], f"{node.name}/equal")], node.name)
    return w.node(_COMPARE[node.op.name], [a, b], node.name)


@rule("where")
def _where(w, node):
    cond, a, b = node.inputs
    return w.node("Where", [w[cond], w.cast_to(a, node.dtype, node.name), w.cast_to(b, node.dtype, node.name)],
                  node.name)


@rule("cast")
def _cast(w, node):
    return w.node("Cast", [w[node.inputs[0]]], node.name, to=to_onnx_dtype(node.dtype))


@rule("stop_gradient")
def _identity(w, node):
    return w[node.inputs[0]]  # the identity at inference: no node


# --------------------------------------------------------------------------- linear algebra, shapes, reductions
@rule("matmul")
def _matmul(w, node):
    return w.node("MatMul", [w[t] for t in node.inputs], node.name)


@rule("reshape")
def _reshape(w, node):
    shape = node.op.shape  # graphdiff's -1 is ONNX's; a 0 means "copy" in ONNX unless allowzero=1
    extra = dict(allowzero=1) if 0 in shape else {}
    return w.node("Reshape", [w[node.inputs[0]], w.ints(shape, "shape")], node.name, **extra)


@rule("transpose")
def _transpose(w, node):
    return w.node("Transpose", [w[node.inputs[0]]], node.name, perm=list(node.op.axes))


@rule("expand_dims")
def _expand_dims(w, node):
    return w.node("Unsqueeze", [w[node.inputs[0]], w.ints(node.op.axes)], node.name)


@rule("squeeze")
def _squeeze(w, node):
    return w.node("Squeeze", [w[node.inputs[0]], w.ints(node.op.axes)], node.name)


@rule("getitem")
def _getitem(w, node):
    """Basic slicing as ``Slice`` over the sliced axes, ``Squeeze`` for integer
    indices, ``Unsqueeze`` for ``None`` (new axes, in the output's numbering)."""
    big = np.iinfo(np.int64).max
    starts, ends, axes, steps, squeezed, new_axes = [], [], [], [], [], []
    axis = out_axis = 0
    for k in node.op.index:
        if k is None:
            new_axes.append(out_axis)
            out_axis += 1
            continue
        if isinstance(k, tuple):  # ("s", start, stop, step)
            _, start, stop, step = k
            step = 1 if step is None else step
            if (start, stop, step) != (None, None, 1):
                starts.append(start if start is not None else (0 if step > 0 else -1))
                ends.append(stop if stop is not None else (big if step > 0 else -big - 1))
                axes.append(axis)
                steps.append(step)
            out_axis += 1
        else:  # an integer: the one-wide slice, then squeezed
            starts.append(k)
            ends.append(k + 1 if k != -1 else big)
            axes.append(axis)
            steps.append(1)
            squeezed.append(axis)
        axis += 1
    out = w[node.inputs[0]]
    if axes:
        out = w.node("Slice", [out, w.ints(starts, "starts"), w.ints(ends, "ends"), w.ints(axes, "axes"),
                               w.ints(steps, "steps")], f"{node.name}/slice" if squeezed or new_axes else node.name)
    if squeezed:
        out = w.node("Squeeze", [out, w.ints(squeezed)], f"{node.name}/squeeze" if new_axes else node.name)
    if new_axes:
        out = w.node("Unsqueeze", [out, w.ints(new_axes)], node.name)
    if out == w[node.inputs[0]]:  # x[:]: the same values
        out = w.node("Identity", [out], node.name)
    return out


@rule("broadcast_to")
def _broadcast_to(w, node):
    return w.node("Expand", [w[node.inputs[0]], w.ints(node.op.shape, "shape")], node.name)


@rule("pad")
def _pad(w, node):
    pads = [lo for lo, _ in node.op.pads] + [hi for _, hi in node.op.pads]  # ONNX: begins then ends
    value = w.const(np.asarray(node.op.value, dtype=node.dtype), node.dtype, f"{node.name}/value")
    return w.node("Pad", [w[node.inputs[0]], w.ints(pads, "pads"), value], node.name, mode="constant")


@rule("concatenate")
def _concatenate(w, node):
    return w.node("Concat", [w.cast_to(t, node.dtype, node.name) for t in node.inputs], node.name,
                  axis=node.op.axis)


@rule("softmax", "log_softmax")
def _softmax(w, node):
    op_type = "Softmax" if node.op.name == "softmax" else "LogSoftmax"
    return w.node(op_type, [w[node.inputs[0]]], node.name, axis=node.op.axis)


@rule("sum", "max")
def _reduction(w, node):
    x = node.inputs[0]
    if not node.op.axes:  # a 0-d input
        return w[x]
    op_type = "ReduceSum" if node.op.name == "sum" else "ReduceMax"
    return w.reduce(op_type, w[x], node.op.axes, node.op.keepdims, node.name)


@rule("count")
def _count(w, node):
    dims = [node.inputs[0].shape[a] for a in node.op.axes]
    if None in dims:
        raise _unsupported(node, "counts elements along a dimension known only at run time")
    return w.const(int(np.prod(dims)), node.dtype, node.name)


@rule("softmax_cross_entropy")
def _softmax_cross_entropy(w, node):
    logits, labels = node.inputs
    return w.node("SoftmaxCrossEntropyLoss", [w[logits], w.cast_to(labels, np.dtype(np.int64), node.name)],
                  node.name, reduction="mean")


# --------------------------------------------------------------------------- the graph
def _value_info(onnx, name, dtype, shape, symbols):
    dims = [d if d is not None else symbols[i] if symbols else None for i, d in enumerate(shape)]
    return onnx.helper.make_tensor_value_info(name, to_onnx_dtype(dtype), dims)


def _demand(outputs):
    """Ids of the nodes the rules read, walking back from ``outputs`` (iteratively)."""
    needed, stack = set(), list(outputs)
    while stack:
        t = stack.pop()
        if id(t) in needed:
            continue
        needed.add(id(t))
        if not t.inputs:
            continue
        if t.op.name not in _RULES:
            why = ("gradient ops are not exported (export the forward graph)" if t.kind == "gradient"
                   else "no ONNX form for this op")
            raise _unsupported(t, why)
        reads = _RULES[t.op.name][1]
        stack.extend(reads(t) if reads else t.inputs)
    return needed


def build_model(outputs, inputs, opset=DEFAULT_OPSET, name="graphdiff"):
    """The ``onnx.ModelProto`` of the forward graph ``inputs -> outputs`` (see :func:`export`)."""
    onnx = onnx_module()
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    latest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= latest:
        raise ValueError(f"onnx export: opset must be in [{MIN_OPSET}, {latest}], got {opset}")
    for p in inputs:
        if not isinstance(p, Tensor) or not isinstance(p.op, PlaceholderOp):
            raise InputError(f"onnx export: inputs must be placeholders, got {p!r}")
    w = _Writer(onnx, int(opset))
    needed = _demand(outputs)
    graph_inputs = []
    for p in inputs:
        w.names[id(p)] = w.unique(p.name)
        symbols = ["batch" if i == 0 else f"{w[p]}_dim{i}" for i in range(p.ndim)]
        graph_inputs.append(_value_info(onnx, w[p], p.dtype, p.shape, symbols))
    for t in toposort(outputs):
        if id(t) not in needed or id(t) in w.names:
            continue
        if isinstance(t.op, PlaceholderOp):
            raise InputError(f"onnx export: the outputs need placeholder {t.name!r}, which is not among the inputs")
        if isinstance(t.op, VariableOp):
            w.names[id(t)] = w.initializer(np.asarray(to_host_array(t.value)), t.name)
        elif isinstance(t.op, ConstantOp):
            w.names[id(t)] = w.const(t.op.value, t.dtype, t.name)
        else:
            w.names[id(t)] = _RULES[t.op.name][0](w, t)
    graph_outputs, seen = [], set()
    for o in outputs:
        out = w[o]
        if out in seen or out in {i.name for i in graph_inputs} or out in {i.name for i in w.initializers}:
            out = w.node("Identity", [out], f"{o.name}/output")  # each graph output its own value
        seen.add(out)
        graph_outputs.append(_value_info(onnx, out, o.dtype, o.shape, None))
    graph = onnx.helper.make_graph(w.nodes, name, graph_inputs, graph_outputs, w.initializers)
    from .. import __version__

    model = onnx.helper.make_model(graph, producer_name="graphdiff", producer_version=__version__,
                                   opset_imports=[onnx.helper.make_opsetid("", int(opset))])
    return model


def export(outputs, inputs, path, opset=DEFAULT_OPSET, name="graphdiff"):
    """Write the forward graph ``inputs -> outputs`` to the ONNX file ``path``.

    ``outputs``: a tensor or a list; ``inputs``: the placeholders it reads
    (graph inputs, in order; a ``None`` dimension becomes symbolic: ``batch``
    on the first axis). Variables become initializers named as the variables.
    Dropout is written as the identity (inference). ``opset``: 13 up to the
    ``onnx`` package's newest. Returns the ``onnx.ModelProto``. An op with no
    ONNX form (gradient ops, ``one_hot``, ...) raises
    :class:`~graphdiff.ModelFormatError` naming the op and the node; nothing is
    written then, and an existing file at ``path`` is only ever replaced whole.
    """
    model = build_model(outputs, inputs, opset=opset, name=name)
    try:
        data = model.SerializeToString()
    except ValueError as e:  # protobuf's 2 GiB limit
        raise ModelFormatError(f"onnx export: {path}: the model does not fit one protobuf file ({e})") from None
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"onnx export: no folder {folder!r} to write {path!r} in", path)
    with atomic_write(path) as f:
        f.write(data)
    return model
