"""Models read from files other frameworks write: an ONNX image classifier
(``torch.onnx.export``'s, graphdiff's own, ...) as a trainable
:class:`models.alexnet.Model`, for ``python -m models.train --model FILE.onnx``
and ``python -m visualize [explore] FILE.onnx``."""
import os

import graphdiff as gd
from models.alexnet import Model


def onnx_classifier(path, image_size=None, num_classes=None, seed=None, channels=None):
    """An ONNX image classifier as a :class:`models.alexnet.Model`: its first
    input the images ``(N, C, H, W)``, its first output the logits ``(N,
    classes)``, plus an int64 ``labels`` placeholder and the mean softmax
    cross-entropy as the loss (so that the backward pass exists); its float
    initializers are the parameters (``seed`` is not used: the file holds
    them). ``image_size``, ``num_classes`` and ``channels``, where given, must
    fit the file. ValueError where they do not or the file is not a classifier
    (a ``gd.ModelFormatError``, also a ValueError, names the file, the node and
    the attribute)."""
    loaded = gd.onnx.load(path)
    images, logits = loaded.inputs[0], loaded.outputs[0]
    if images.ndim != 4 or images.dtype.kind != "f":
        raise ValueError(f"{path}: input {images.name!r} {images.shape} {images.dtype} is not a batch of images "
                         f"(N, C, H, W)")
    if logits.ndim != 2 or logits.shape[1] is None:
        raise ValueError(f"{path}: output {logits.name!r} {logits.shape} is not (batch, classes) logits")
    labels = gd.placeholder((images.shape[0],), "int64", name="labels")
    loss = gd.softmax_cross_entropy(logits, labels)
    model = Model(os.path.basename(path), images, labels, logits, loss, loaded.params, layers={},
                  config=dict(onnx=path))
    check_classifier(model, image_size, num_classes, channels)
    return model


def check_classifier(model, image_size=None, num_classes=None, channels=None):
    """ValueError naming the file unless an :func:`onnx_classifier` takes images
    of ``image_size`` with ``channels`` and has at least ``num_classes`` classes
    (None: not asked), so a model read once can be checked against the data
    that is known only later."""
    path, images, logits = model.config["onnx"], model.images, model.logits
    side = images.shape[2]
    if image_size is not None and side is not None and image_size != side:
        raise ValueError(f"{path}: the network takes {side}x{side} images, not {image_size}x{image_size}")
    if channels is not None and images.shape[1] is not None and channels != images.shape[1]:
        raise ValueError(f"{path}: the network takes {images.shape[1]}-channel images, not {channels}")
    if num_classes is not None and num_classes > logits.shape[1]:
        raise ValueError(f"{path}: the network has {logits.shape[1]} classes, fewer than {num_classes}")

