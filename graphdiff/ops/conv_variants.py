"""The convolution family's kernel variants: oneDNN's primitives for each direction
(:class:`graphdiff.kernels.onednn.Convolution`), beside graphdiff's own im2col +
BLAS kernels. Which one runs each layer is measured at the first run
(:mod:`graphdiff.kernels.choice`); the op classes of :mod:`graphdiff.ops.conv`
declare these as their ``variants``.

A decision is keyed by the direction (``forward``, ``backward_data``,
``backward_weights``, ``backward_data_and_weights``) and the geometry: ``x`` and
``w`` shapes, stride, padding ``((top, bottom), (left, right))``, groups,
dilation; a checkpoint keeps it as a record (see :data:`CODEC`).
"""
import numpy

from ..kernels import onednn
from ..kernels.choice import Codec, Variant
from ..kernels.conv import pads


def _forward(op, arrays):
    x, w = arrays[:2]
    return (x.shape, w.shape, op.stride, pads(op.padding), op.groups, len(arrays) > 2 and arrays[2] is not None,
            op.name == "conv2d_relu", op.dilation)


def _backward_data(op, arrays):
    dy, w = arrays
    g = op.groups
    return ((dy.shape[0], w.shape[1] * g) + tuple(op.input_size), w.shape, op.stride, pads(op.padding), g, False,
            False, op.dilation)


def _backward_weights(op, arrays):
    x, dy = arrays
    g = op.groups
    return (x.shape, (dy.shape[1], x.shape[1] // g) + tuple(op.kernel_size), op.stride, pads(op.padding), g, False,
            False, op.dilation)


def _backward_both(op, arrays):  # conv2d_backward: stride 1
    dy, w, x = arrays
    return x.shape, w.shape, (1, 1), pads(op.padding), op.groups, False, False, op.dilation


def _key(geometry):
    """(x, w, stride, padding, groups, dilation) of an ``onednn.Convolution``'s arguments."""
    x, w, stride, padding, groups, _, _, dilation = geometry
    return tuple(x), tuple(w), tuple(stride), padding, groups, tuple(dilation)


def _to_record(direction, key, library):
    x, w, stride, padding, groups, dilation = key
    symmetric = all(a == b for a, b in padding)
    record = dict(direction=direction, x=list(x), w=list(w), stride=list(stride),
                  padding=[a for a, _ in padding] if symmetric else [list(p) for p in padding],
                  groups=groups, library=library)
    if dilation != (1, 1):
        record["dilation"] = list(dilation)
    return record


def _from_record(r):
    x, w, stride = (tuple(int(d) for d in r[f]) for f in ("x", "w", "stride"))
    return x, w, stride, pads(r["padding"]), int(r["groups"]), tuple(int(d) for d in r.get("dilation", (1, 1)))


#: checkpoint records of the convolutions' decisions
CODEC = Codec(_to_record, _from_record)


def _float32(arrays):  # oneDNN: float32 only (every other dtype stays on NumPy)
    return all(a.dtype == numpy.float32 for a in arrays if a is not None)


def _variant(direction, geometry, run):
    return {"onednn": Variant("onednn", direction, geometry, _key, onednn.Convolution, run, CODEC, _float32)}


FORWARD = _variant("forward", _forward, lambda c, a, out: c.forward(*a, out=out))
BACKWARD_DATA = _variant("backward_data", _backward_data, lambda c, a, out: c.backward_data(a[0], a[1], out=out))
BACKWARD_WEIGHTS = _variant("backward_weights", _backward_weights,
                            lambda c, a, out: c.backward_weights(a[0], a[1], out=out))
BACKWARD_BOTH = _variant("backward_data_and_weights", _backward_both,
                         lambda c, a, out: c.backward(a[0], a[1], a[2], out=out))
