"""TensorBoard event files for the training command, written with the
``tensorboard`` package's own writer (no PyTorch or TensorFlow needed):
``pip install -e '.[interop]'``, then ``tensorboard --logdir DIR``.

Per epoch (the step is the epoch number) the figures of ``metrics.jsonl``:

==========================  ======================================
tag                         metrics.jsonl key
==========================  ======================================
``loss/train``              ``train_loss``
``loss/validation``         ``val_loss`` (absent without validation)
``error/train``             ``train_error``
``error/validation``        ``val_error``
``error_top5/validation``   ``val_top5_error``
``error/validation_10crop`` ``val_error_10crop`` (with ``--ten-crop``)
``error_top5/validation_10crop`` ``val_top5_error_10crop`` (with ``--ten-crop``)
``learning_rate``           ``lr``
``images_per_second``       ``images_per_second``
==========================  ======================================

and, per parameter ``<name>`` (``conv1/w``, ...), what SGD does to it
(TensorBoard's Histograms and Distributions tabs, and the Scalars tab):

==========================  ==================================================
tag                         value
==========================  ==================================================
``weights/<name>``          histogram of the parameter at the end of the epoch
``updates/<name>``          histogram of its last step ``v`` (the paper's
                            momentum buffer: ``w <- w + v``)
``update_ratio/<name>``     ``||v|| / ||w||``: about 1e-3 is a healthy rate;
                            far below, the layer barely learns (a vanishing
                            gradient, dead ReLUs); far above, it is unstable
==========================  ==================================================

and, once, the forward graph as a ``GraphDef`` (TensorBoard's Graphs tab):
one node per graphdiff node, named ``<scope>/<name>`` so that TensorBoard
folds each layer into one box, with the op, the inputs, the output shape
(``_output_shapes``; ``-1`` for a dimension known only at run time), the
dtype and the op's attributes.
"""
import time

import numpy as np
from tensorboard.compat.proto import (attr_value_pb2, event_pb2, graph_pb2, node_def_pb2, summary_pb2,
                                      tensor_shape_pb2, types_pb2)
from tensorboard.summary.writer.event_file_writer import EventFileWriter

import graphdiff as gd
from graphdiff.backends import to_host_array

#: buckets of each histogram (TensorBoard re-bins for display)
HISTOGRAM_BINS = 30

#: TensorBoard tag -> metrics.jsonl key
SCALARS = {
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "error/train": "train_error",
    "error/validation": "val_error",
    "error_top5/validation": "val_top5_error",
    "learning_rate": "lr",
    "images_per_second": "images_per_second",
}
#: the same for the keys only ``--ten-crop`` writes
TEN_CROP_SCALARS = {
    "error/validation_10crop": "val_error_10crop",
    "error_top5/validation_10crop": "val_top5_error_10crop",
}

_DTYPES = {"float16": types_pb2.DT_HALF, "float32": types_pb2.DT_FLOAT, "float64": types_pb2.DT_DOUBLE,
           "int8": types_pb2.DT_INT8, "int32": types_pb2.DT_INT32, "int64": types_pb2.DT_INT64,
           "uint8": types_pb2.DT_UINT8, "bool": types_pb2.DT_BOOL}


class TensorBoardLog:
    """One event file in ``logdir`` (a new one per run; TensorBoard reads them
    all, so a resumed run continues the curves)."""

    def __init__(self, logdir):
        self.logdir = logdir
        self._writer = EventFileWriter(logdir)

    def add_epoch(self, record):
        """The :data:`SCALARS` (and :data:`TEN_CROP_SCALARS`) of one ``metrics.jsonl``
        record that it has, at step ``epoch``."""
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(record[key]))
                  for tag, key in {**SCALARS, **TEN_CROP_SCALARS}.items() if record.get(key) is not None]
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(record["epoch"]),
                                               summary=summary_pb2.Summary(value=values)))
        self._writer.flush()

    def add_parameters(self, epoch, weights, updates):
        """:func:`parameter_summary` of ``weights`` and ``updates`` (name -> array,
        updates possibly fewer) at step ``epoch``."""
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(epoch),
                                               summary=parameter_summary(weights, updates)))
        self._writer.flush()

    def add_graph(self, outputs):
        """The graph ``outputs`` depend on, as a GraphDef event."""
        graph = graph_def(outputs)
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), graph_def=graph.SerializeToString()))
        self._writer.flush()

    def close(self):
        self._writer.close()


def histogram(values, bins=HISTOGRAM_BINS):
    """A TensorBoard ``HistogramProto`` of ``values`` (any shape): ``bins`` equal
    buckets between the minimum and the maximum, each given by its right edge,
    as TensorBoard's own writers do; the sum and the sum of squares in float64,
    a chunk at a time (fc6's 37.7 M weights are not copied whole)."""
    values = np.asarray(values).reshape(-1)
    if values.size == 0:
        return summary_pb2.HistogramProto()
    total = squares = 0.0
    for start in range(0, values.size, 1 << 20):
        chunk = values[start:start + (1 << 20)].astype(np.float64)
        total, squares = total + float(chunk.sum()), squares + float(chunk @ chunk)
    lo, hi = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))  # (NumPy would find them again)
    return summary_pb2.HistogramProto(min=lo, max=hi, num=float(values.size),
                                      sum=total, sum_squares=squares, bucket_limit=edges[1:].tolist(),
                                      bucket=counts.astype(np.float64).tolist())


def parameter_summary(weights, updates):
    """The ``weights/``, ``updates/`` and ``update_ratio/`` values of every
    parameter (see the module docstring), one parameter on the host at a time."""
    values = []
    for name, w in weights.items():
        hw = histogram(to_host_array(w))
        values.append(summary_pb2.Summary.Value(tag=f"weights/{name}", histo=hw))
        if name not in updates:
            continue
        hv = histogram(to_host_array(updates[name]))
        values.append(summary_pb2.Summary.Value(tag=f"updates/{name}", histo=hv))
        if hw.sum_squares > 0:
            ratio = float(np.sqrt(hv.sum_squares / hw.sum_squares))  # ||v|| / ||w||
            values.append(summary_pb2.Summary.Value(tag=f"update_ratio/{name}", simple_value=ratio))
    return summary_pb2.Summary(value=values)


def graph_def(outputs):
    """A ``GraphDef`` of the graph ``outputs`` depend on (see the module docstring)."""
    nodes = gd.toposort(list(outputs))
    names, used = {}, set()
    for t in nodes:
        base = t.name if not t.scope or t.name.startswith(t.scope + "/") else f"{t.scope}/{t.name}"
        name, k = base, 1
        while name in used:  # TensorBoard needs unique names
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        names[id(t)] = name
    graph = graph_pb2.GraphDef()
    for t in nodes:
        node = node_def_pb2.NodeDef(name=names[id(t)], op=t.op.name if t.kind not in ("placeholder", "variable",
                                                                                       "constant") else t.kind,
                                    input=[names[id(i)] for i in t.inputs])
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else int(d)) for d in t.shape]
        node.attr["_output_shapes"].CopyFrom(attr_value_pb2.AttrValue(
            list=attr_value_pb2.AttrValue.ListValue(shape=[tensor_shape_pb2.TensorShapeProto(dim=dims)])))
        node.attr["dtype"].CopyFrom(attr_value_pb2.AttrValue(type=_DTYPES.get(np.dtype(t.dtype).name,
                                                                              types_pb2.DT_INVALID)))
        for key, value in sorted(getattr(t.op, "attrs", {}).items()):
            node.attr[key].CopyFrom(attr_value_pb2.AttrValue(s=str(value).encode()))
        graph.node.append(node)
    return graph
