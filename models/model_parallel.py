"""AlexNet's two towers on two ranks, as the paper trained it on two GPUs.

    tower = alexnet_towers(graphdiff.distributed.world(), num_classes=10, image_size=67)
    step = models.alexnet.train_step(tower)      # under mpiexec -n 2; see docs/distributed.md

Krizhevsky et al. (2012, section 3.2) put half of the kernels of every layer
on each GPU; the GPUs communicate only in certain layers: "the kernels of
layer 3 take input from all kernel maps in layer 2", and the fully connected
layers see every neuron of the layer below. Here rank ``r`` holds tower ``r``
(the ``r``-th half of every layer's kernels, biases and dense units) and the
exchanges are graph ops (:func:`graphdiff.distributed.all_gather`, whose VJP
is a ``reduce_scatter``)::

    conv1  48 of 96          own image batch (every rank sees the same images)
    norm1                    + 2 boundary maps from the neighbour tower (*)
    conv2 128 of 256         own 48 maps (a group of the groups=2 layer)
    norm2                    + 2 boundary maps (*)
    conv3 192 of 384         all_gather: both towers' 256 maps
    conv4 192, conv5 128     own maps (groups)
    fc6 2048 of 4096         all_gather: both towers' pool5 (9216 inputs)
    fc7 2048 of 4096         all_gather: both halves of fc6
    fc8 classes / 2          all_gather: both halves of fc7
    logits                   all_gather: both halves of fc8; the loss on every rank

(*) The paper's towers normalized within their own maps; graphdiff's
``alexnet(groups=2)`` normalizes across all of a layer's maps, so to equal it
each tower borrows the ``size // 2`` maps next to its edge from the other
(2 of 48 maps after conv1, 2 of 128 after conv2).

Every rank computes the same loss from the gathered logits and differentiates
``loss / 2``; through the ``reduce_scatter`` VJPs each rank then gets the
gradient of the one loss with respect to its own half of the parameters,
equal to the matching half of the single-process ``groups=2`` network's.
The initial weights are that network's (same seed), split.
"""
import numpy as np

import graphdiff as gd
from graphdiff.distributed import DistributedError, all_gather
from models.alexnet import ACTIVATIONS, LRN, Model, _inputs, alexnet

TOWERS = 2


def alexnet_towers(comm, num_classes=1000, image_size=227, activation="relu", dropout=0.5, seed=0, dtype="float32"):
    """This rank's tower of :func:`models.alexnet.alexnet` ``(groups=2)``.

    ``comm`` is a 2-rank :class:`graphdiff.distributed.Communicator`. Returns
    a :class:`models.alexnet.Model` whose ``params`` are this rank's halves
    (named as in the whole network), whose ``loss`` is the whole batch's (the
    same on both ranks) and whose ``objective`` (``loss / 2``) is what
    :func:`models.alexnet.train_step` differentiates; ``full_slices`` maps each
    parameter name to ``(axis, index)``, where its half sits in the whole one."""
    if comm.size != TOWERS:
        raise DistributedError(f"alexnet_towers: the two towers need 2 ranks (mpiexec -n 2), got {comm.size}")
    if num_classes % TOWERS:
        raise DistributedError(f"alexnet_towers: fc8 splits its {num_classes} classes over 2 towers: use an even number")
    whole = alexnet(num_classes, image_size, groups=TOWERS, activation=activation, dropout=dropout, seed=seed,
                    dtype=dtype)
    rank, act = comm.rank, ACTIVATIONS[activation]
    params, layers, slices = {}, {}, {}

    def half(name, axis):
        """This rank's half of the whole network's parameter ``name`` along ``axis``."""
        value = np.split(whole.params[name].value, TOWERS, axis=axis)[rank]
        v = gd.variable(np.ascontiguousarray(value), name=name)
        params[name], slices[name] = v, (axis, rank)
        return v

    def conv(name, x, stride=1, padding=0):
        with gd.scope(name):
            y = act(gd.conv2d(x, half(f"{name}/w", 0), half(f"{name}/b", 0), stride=stride, padding=padding))
        layers[name] = y
        return y

    def dense(name, x, activate=True):
        with gd.scope(name):
            y = gd.matmul(x, half(f"{name}/w", 1)) + half(f"{name}/b", 0)
            if activate:
                y = act(y)
                if dropout:
                    y = gd.dropout(y, dropout)
        layers[name] = y
        return y

    def exchange(name, x):
        """Both towers' ``x``, concatenated along the channels/units (tower 0 first)."""
        with gd.scope(name):
            return all_gather(x, comm, axis=1, name="exchange")

    def norm(name, x):
        with gd.scope(name):
            y = tower_lrn(x, comm)
        layers[name] = y
        return y

    def pool(name, x):
        with gd.scope(name):
            y = gd.max_pool2d(x, 3, 2)
        layers[name] = y
        return y

    images, labels = _inputs(3, image_size, dtype)
    h = pool("pool1", norm("norm1", conv("conv1", images, stride=4)))
    h = pool("pool2", norm("norm2", conv("conv2", h, padding=2)))
    h = conv("conv3", exchange("conv3", h), padding=1)
    h = conv("conv5", conv("conv4", h, padding=1), padding=1)
    h = pool("pool5", h)
    h = exchange("fc6", h)
    h = dense("fc6", gd.reshape(h, (-1, int(np.prod(h.shape[1:])))))
    h = dense("fc7", exchange("fc7", h))
    h = dense("fc8", exchange("fc8", h), activate=False)
    with gd.scope("loss"):
        logits = all_gather(h, comm, axis=1, name="logits")
        loss = gd.softmax_cross_entropy(logits, labels)
        objective = loss * (1.0 / TOWERS)
    params = {k: params[k] for k in whole.params}  # the whole network's order
    model = Model("alexnet-towers", images, labels, logits, loss, params, layers,
                  dict(whole.config, towers=TOWERS, rank=rank))
    model.objective, model.full_slices = objective, slices
    return model


def tower_lrn(x, comm):
    """AlexNet's LRN across the maps of both towers: this tower's maps plus the
    ``size // 2`` maps beyond each edge from the neighbour tower, normalized,
    then this tower's maps kept. One ``all_gather`` of every tower's edge maps."""
    low, up = LRN["size"] // 2, (LRN["size"] - 1) // 2  # maps below / above a map that its sum reads
    edges = all_gather(gd.concatenate([x[:, :up], x[:, x.shape[1] - low:]], axis=1), comm, axis=1, name="edges")
    width, rank, parts = up + low, comm.rank, []
    if rank > 0:  # the previous tower's last `low` maps
        parts.append(edges[:, (rank - 1) * width + up:rank * width])
    parts.append(x)
    if rank < comm.size - 1:  # the next tower's first `up` maps
        parts.append(edges[:, (rank + 1) * width:(rank + 1) * width + up])
    y = gd.lrn(gd.concatenate(parts, axis=1), **LRN)
    start = low if rank > 0 else 0
    return y[:, start:start + x.shape[1]]
