"""The convolution family's compile-time rewrites (see :mod:`graphdiff.rewrite`).

In the order they apply:

* ``conv2d_shared_columns``: a convolution whose weight gradient (same input and
  geometry) is in the program, with little window overlap, reads an ``im2col``
  node that the weight gradient reads too (``conv2d_from_cols``,
  ``conv2d_grad_weight_from_cols``): one column matrix instead of two. A layout
  of the NumPy kernels only: it applies where every kernel library in play
  offers ``"im2col_columns"``.
* ``conv2d_relu``: a ReLU that is a convolution's only reader rides along with
  the convolution's last copy (``conv2d_relu``, or ``conv2d_from_cols`` with
  ``relu=True``).
* ``conv2d_backward_pair``: a stride-1 convolution's input and weight gradients
  (same ``dy``) become one ``conv2d_backward`` op with two outputs, built from
  one column matrix of ``dy`` instead of one of ``dy`` and one of ``x``
  (AlexNet conv3-5: 7-17 ms each at batch 32). One op, so the columns live in
  scratch memory between the two products, not in a buffer kept across the
  backward pass.
"""
from ..graph import Tensor
from ..kernels.conv import grad_input_as_convolution
from ..rewrite import like, parts, rule
from .conv import (Conv2d, Conv2dBackward, Conv2dFromCols, Conv2dGradInput, Conv2dGradWeight,
                   Conv2dGradWeightFromCols, Conv2dReLU, Im2col)
from .elementwise import Unary

# A convolution and its weight gradient share one column matrix (one im2col
# instead of two) when its windows overlap little: kh*kw <= this * sh*sw. The
# columns then stay alive from the forward to the backward pass, so only where
# they are small next to the work they save: AlexNet's conv1 (11x11 / 4x4 = 7.6;
# 140 MB at batch 32, whose strided gather is the dearest copy per byte), not
# the stride-1 layers (9 and 25 times their input).
SHARE_COLUMNS_MAX_EXPANSION = 8


def _key(op, x, kernel_size):
    return id(x), tuple(kernel_size), op.stride, op.padding, op.groups, op.dilation


@rule("conv2d_shared_columns", Conv2d)
def shared_columns(node, ctx):
    if not ctx.offers("im2col_columns"):
        return None
    if "conv.grads" not in ctx.memo:  # (input, kernel size, stride, padding, groups, dilation) -> weight gradients
        grads = ctx.memo["conv.grads"] = {}
        for gw in ctx.nodes(Conv2dGradWeight):
            grads.setdefault(_key(gw.op, gw.inputs[0], gw.op.kernel_size), []).append(gw)
    op, (x, w) = node.op, node.inputs[:2]
    (kh, kw), (sh, sw) = w.shape[2:], op.stride
    key = _key(op, x, (kh, kw))
    weight_grads = ctx.memo["conv.grads"].get(key)
    if (not weight_grads or None in node.shape[2:] or None in (kh, kw)
            or kh * kw > SHARE_COLUMNS_MAX_EXPANSION * sh * sw):
        return None
    columns = ctx.memo.setdefault("conv.columns", {})
    out = {}
    if key not in columns:
        im2col = Im2col((kh, kw), op.stride, op.padding, op.groups, op.dilation)
        shape, dtype = im2col.infer(x)
        columns[key] = cols = Tensor(im2col, (x,), shape, dtype, name=f"im2col_{node.name}", scope=node.scope,
                                     backward=node.backward)
        for gw in weight_grads:
            out[gw] = like(gw, Conv2dGradWeightFromCols((kh, kw), op.groups), (cols, gw.inputs[1]))
    out[node] = like(node, Conv2dFromCols(tuple(node.shape[2:]), op.groups, False),
                     (columns[key],) + tuple(node.inputs[1:]))
    return out


@rule("conv2d_relu", Unary)
def conv_relu(node, ctx):
    conv = node.inputs[0] if node.inputs else None
    if (node.op.fn != "relu" or type(conv.op) is not Conv2d or ctx.uses(conv) != 1 or ctx.is_root(conv)
            or conv.dtype != node.dtype):
        return None
    made = ctx.current(conv)
    if type(made.op) is Conv2dFromCols:  # shared columns: the ReLU joins the product's last copy
        new = like(node, Conv2dFromCols(made.op.out_size, made.op.groups, True), made.inputs)
    else:
        new = like(node, Conv2dReLU(**conv.op.attrs), conv.inputs)
    ctx.absorb(conv)
    return {node: new}


@rule("conv2d_backward_pair", Conv2dGradInput, merges=True)
def backward_pair(gi, ctx):
    """The merged op reads ``(dy, w, x)``: it must not be merged where ``x`` depends
    on the input gradient or ``w`` on the weight gradient (a second-order graph:
    the weight gradient's ``x`` may be read, for its shape, through the input
    gradient being replaced), which would be a cycle. Each merge is checked
    (``ctx.reaches``, under a work budget linear in the graph), and the driver
    checks the merges together once more."""
    if "conv.dy_grads" not in ctx.memo:  # (dy, kernel size, stride, padding, groups, dilation) -> weight gradients
        index = ctx.memo["conv.dy_grads"] = {}
        for gw in ctx.nodes(Conv2dGradWeight):
            index.setdefault(_key(gw.op, gw.inputs[1], gw.op.kernel_size), []).append(gw)
    (dy, w), op = gi.inputs, gi.op
    O, Cg, kh, kw = w.shape
    if None in (O, Cg, kh, kw) or not grad_input_as_convolution(O, Cg * op.groups, op.stride, op.padding,
                                                                (kh, kw), op.dilation):
        return None
    for gw in ctx.memo["conv.dy_grads"].get(_key(op, dy, (kh, kw)), []):
        x = gw.inputs[0]
        if (not ctx.replaced(gw) and not ctx.replaced(gi) and x.shape[2:] == op.input_size
                and gw.dtype == gi.dtype and not ctx.reaches(x, gi) and not ctx.reaches(w, gw)):
            both = like(gi, Conv2dBackward(op.padding, op.groups, op.dilation), (dy, w, x))
            return parts(both, [gi, gw])
    return None
