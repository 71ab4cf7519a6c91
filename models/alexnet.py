"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) built on graphdiff, a small
variant for 32x32 images, and the SGD training step.

The original network (paper section 3.5, Figure 2), for 227x227 RGB input::

    conv1  96 @ 11x11 / 4          -> ReLU -> LRN -> max pool 3/2    55 -> 27
    conv2 256 @ 5x5 pad 2, 2 groups -> ReLU -> LRN -> max pool 3/2   27 -> 13
    conv3 384 @ 3x3 pad 1 (sees both towers) -> ReLU                 13
    conv4 384 @ 3x3 pad 1, 2 groups -> ReLU                          13
    conv5 256 @ 3x3 pad 1, 2 groups -> ReLU -> max pool 3/2          13 -> 6
    fc6 4096 -> ReLU -> dropout;  fc7 4096 -> ReLU -> dropout;  fc8 classes

The paper's two GPU "towers" are convolution groups: a grouped layer connects
each half of its outputs to one half of its inputs only. ``groups=1`` gives
the single-tower network. At 1000 classes there are 60,965,224 parameters
(62,378,344 with one tower).

LRN is ``y = x / (k + alpha * sum_{|j-c|<=2} x_j^2) ** beta`` with the
paper's k=2, n=5, alpha=1e-4, beta=0.75. Init (section 5): weights
N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6 and fc7 (to give the ReLUs
positive inputs early on), 0 elsewhere. Dense weights are stored
``(in, out)``.

Every layer is built inside ``gd.scope(name)`` (conv1, norm1, pool1, ...,
fc8, loss), and its variables are named ``"<layer>/w"``, ``"<layer>/b"``, so
diagrams and summaries group nodes by layer.
"""
from collections import OrderedDict

import numpy as np

import graphdiff as gd
from graphdiff.optim import sgd_momentum

ACTIVATIONS = {"relu": gd.relu, "tanh": gd.tanh}

#: AlexNet's local response normalization constants (paper section 3.3).
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)


class Model:
    """A built network: symbolic inputs, outputs and parameters.

    ``inputs``: ``[images, labels]`` placeholders (images ``(None, C, H, W)``
    float32, labels ``(None,)`` int64); ``logits`` ``(None, classes)``;
    ``loss`` the mean softmax cross-entropy; ``params`` an ordered dict
    ``"conv1/w" -> Variable``; ``layers`` an ordered dict layer name -> that
    layer's output tensor; ``objective`` what training differentiates (the
    loss; a model-parallel tower's ``loss / 2``, see ``models.model_parallel``).
    Dropout is active in programs compiled with
    ``training=True`` (the default); :meth:`compile_eval` compiles the logits
    with it off.
    """

    def __init__(self, name, images, labels, logits, loss, params, layers, config):
        self.name = name
        self.images = images
        self.labels = labels
        self.inputs = [images, labels]
        self.logits = logits
        self.loss = loss
        self.objective = loss
        self.params = params
        self.layers = layers
        self.config = config  # the arguments it was built with

    @property
    def num_classes(self):
        return self.logits.shape[1]

    @property
    def input_shape(self):
        """(C, H, W) of the images it takes."""
        return self.images.shape[1:]

    def parameter_count(self):
        """Total number of trainable scalars (an exact int)."""
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    def layer_shapes(self, batch=None):
        """Layer name -> output shape (with ``batch`` in place of None)."""
        return OrderedDict((k, tuple(batch if d is None else d for d in t.shape))
                           for k, t in self.layers.items())

    def compile_eval(self, backend="numpy"):
        """A program ``images -> logits`` in evaluation mode (dropout off)."""
        return gd.compile(self.logits, inputs=[self.images], backend=backend, training=False)

    def state_arrays(self):
        """Parameter values as host NumPy arrays (copies), by name."""
        return OrderedDict((k, to_numpy(p.value).copy()) for k, p in self.params.items())

    def load_state_arrays(self, arrays):
        """Assign parameter values from ``name -> array`` (checks every name and shape)."""
        missing = [k for k in self.params if k not in arrays]
        if missing:
            raise KeyError(f"no values for parameters {missing}")
        for k, p in self.params.items():
            p.value = arrays[k]

    def __repr__(self):
        return (f"<Model {self.name}: input {self.input_shape}, {self.num_classes} classes, "
                f"{self.parameter_count():,} parameters>")


def to_numpy(a):
    """A backend array (NumPy or CuPy) as a NumPy array."""
    return a.get() if not isinstance(a, np.ndarray) and hasattr(a, "get") else np.asarray(a)


# --------------------------------------------------------------------------- layer helpers
class _Builder:
    """Creates layers' variables with one seeded generator and records each
    layer's output, so a network body reads as a list of layers."""

    def __init__(self, seed, activation, dtype="float32"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.act = ACTIVATIONS[activation]
        self.params = OrderedDict()
        self.layers = OrderedDict()

    def _param(self, name, shape, std, bias=None):
        """A weight ``N(0, std^2)`` (or a bias filled with ``bias``) named ``<scope>/name``."""
        if bias is None:
            value = self.rng.standard_normal(shape, dtype=np.float32)
            value *= np.float32(std)  # in place: no second full-size array
            value = value.astype(self.dtype, copy=False)  # float64 models: the same draws, widened
        else:
            value = np.full(shape, bias, self.dtype)
        v = gd.variable(value, name=name, copy=False)  # a fresh array: adopted, not copied
        self.params[v.name] = v
        return v

    def conv(self, name, x, out_channels, size, stride=1, padding=0, groups=1, std=0.01, bias=0.0,
             activate=True):
        """conv2d (+ bias) followed by the activation, in scope ``name``."""
        in_channels = x.shape[1]
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: {in_channels} -> {out_channels} channels do not split into {groups} groups")
        with gd.scope(name):
            if callable(std):
                std = std(in_channels // groups * size * size)
            w = self._param("w", (out_channels, in_channels // groups, size, size), std)
            b = self._param("b", (out_channels,), None, bias=bias)
            y = gd.conv2d(x, w, b, stride=stride, padding=padding, groups=groups)
            if activate:
                y = self.act(y)
        self.layers[name] = y
        return y

    def dense(self, name, x, out_features, std=0.01, bias=0.0, activate=True, dropout=0.0):
        """Flatten if needed, ``x @ w + b``, activation, dropout, in scope ``name``."""
        with gd.scope(name):
            if x.ndim != 2:
                x = gd.reshape(x, (-1, int(np.prod(x.shape[1:]))))
            in_features = x.shape[1]
            if callable(std):
                std = std(in_features)
            w = self._param("w", (in_features, out_features), std)
            b = self._param("b", (out_features,), None, bias=bias)
            y = gd.matmul(x, w) + b
            if activate:
                y = self.act(y)
            if dropout:
                y = gd.dropout(y, dropout)
        self.layers[name] = y
        return y

    def lrn(self, name, x):
        with gd.scope(name):
            y = gd.lrn(x, **LRN)
        self.layers[name] = y
        return y

    def pool(self, name, x, size=3, stride=2):
        with gd.scope(name):
            y = gd.max_pool2d(x, size, stride)
        self.layers[name] = y
        return y

    def finish(self, name, images, labels, logits, config):
        with gd.scope("loss"):
            loss = gd.softmax_cross_entropy(logits, labels)
        return Model(name, images, labels, logits, loss, self.params, self.layers, config)


def _inputs(channels, image_size, dtype="float32"):
    images = gd.placeholder((None, channels, image_size, image_size), dtype, name="images")
    labels = gd.placeholder((None,), "int64", name="labels")
    return images, labels


def he_std(fan_in):
    """He et al. (2015): std sqrt(2 / fan_in) keeps ReLU activations' scale per layer."""
    return float(np.sqrt(2.0 / fan_in))


def lecun_std(fan_in):
    """LeCun (1998): std sqrt(1 / fan_in) keeps tanh units out of saturation."""
    return float(np.sqrt(1.0 / fan_in))


# --------------------------------------------------------------------------- networks
def alexnet(num_classes=1000, image_size=227, groups=2, activation="relu", dropout=0.5, seed=0, dtype="float32"):
    """The original 2012 AlexNet (see the module docstring), paper init.

    ``groups=2`` is the paper's two-tower layout, ``groups=1`` one tower;
    ``activation`` "relu" or "tanh" (for every hidden layer). ``image_size``
    other than 227 works as long as the feature maps stay non-empty.
    ``dtype="float64"`` builds it in double precision (the same initial draws).

    A caution on the paper's init and learning rate: fc7's biases of 1 make
    its 4096 outputs ~1 each (~2 with dropout's scaling), so fc8 sees inputs
    of squared norm ~4,000-8,000 and one SGD step at lr 0.01 moves the logits
    by tens: on a fixed batch of 2 the loss diverges (9 -> 156 in 4 steps).
    At 1e-3 it oscillates; 1e-4 brings it down steadily (9.3 -> 4.3).
    """
    config = dict(num_classes=num_classes, image_size=image_size, groups=groups,
                  activation=activation, dropout=dropout, seed=seed)
    L = _Builder(seed, activation, dtype)
    images, labels = _inputs(3, image_size, dtype)
    h = L.conv("conv1", images, 96, 11, stride=4)
    h = L.pool("pool1", L.lrn("norm1", h))
    h = L.conv("conv2", h, 256, 5, padding=2, groups=groups, bias=1.0)
    h = L.pool("pool2", L.lrn("norm2", h))
    h = L.conv("conv3", h, 384, 3, padding=1)
    h = L.conv("conv4", h, 384, 3, padding=1, groups=groups, bias=1.0)
    h = L.conv("conv5", h, 256, 3, padding=1, groups=groups, bias=1.0)
    h = L.pool("pool5", h)
    h = L.dense("fc6", h, 4096, bias=1.0, dropout=dropout)
    h = L.dense("fc7", h, 4096, bias=1.0, dropout=dropout)
    logits = L.dense("fc8", h, num_classes, activate=False)
    return L.finish("alexnet", images, labels, logits, config)


def alexnet_small(num_classes=10, image_size=32, groups=2, activation="relu", dropout=0.5, seed=0,
                  width=32, hidden=256, channels=3, dtype="float32"):
    """AlexNet's layer types scaled down for images of 32x32 or smaller (15x15 at least).

    The same sequence as :func:`alexnet` (five convolutions with the same
    grouping, LRN after conv1 and conv2, overlapping 3/2 max pooling after
    conv1, conv2 and conv5, two dropout dense layers), with 5x5 stride-1
    conv1 instead of 11x11/4 and channel widths ``width * (1, 2, 3, 3, 2)``
    (the paper's 96-256-384-384-256 is about ``96 * (1, 2.7, 4, 4, 2.7)``),
    dense layers of ``hidden`` units. Sizes at 32: 32 -> pool 15 -> pool 7
    -> pool 3; at 24: 24 -> 11 -> 5 -> 2.

    Init: He (``N(0, 2/fan_in)``) weights and zero biases for ReLU, LeCun
    (``N(0, 1/fan_in)``) for tanh, not the paper's N(0, 0.01) and biases of
    1. With fan-ins of 75..900 a std of 0.01 scales each layer's signal by
    ``0.01 * sqrt(fan_in / 2)`` ~ 0.06..0.2, so the logits and the gradients
    reaching the lower layers are tiny; the paper's much wider net needed ~90
    epochs anyway. Measured on digits at 24x24 (width 32, lr 0.01, batch 16):
    with the paper's init the loss stays at log(10) and validation accuracy
    at chance (10%) for 3 epochs; with He init it is 66% after the first.
    """
    config = dict(num_classes=num_classes, image_size=image_size, groups=groups, activation=activation,
                  dropout=dropout, seed=seed, width=width, hidden=hidden, channels=channels)
    if image_size < 15:  # three 3/2 poolings: 15 -> 7 -> 3 -> 1
        raise ValueError(f"alexnet_small needs images of at least 15x15, got {image_size}")
    std = he_std if activation == "relu" else lecun_std
    w = int(width)
    L = _Builder(seed, activation, dtype)
    images, labels = _inputs(channels, image_size, dtype)
    h = L.conv("conv1", images, w, 5, padding=2, std=std)
    h = L.pool("pool1", L.lrn("norm1", h))
    h = L.conv("conv2", h, 2 * w, 5, padding=2, groups=groups, std=std)
    h = L.pool("pool2", L.lrn("norm2", h))
    h = L.conv("conv3", h, 3 * w, 3, padding=1, std=std)
    h = L.conv("conv4", h, 3 * w, 3, padding=1, groups=groups, std=std)
    h = L.conv("conv5", h, 2 * w, 3, padding=1, groups=groups, std=std)
    h = L.pool("pool5", h)
    h = L.dense("fc6", h, hidden, std=std, dropout=dropout)
    h = L.dense("fc7", h, hidden, std=std, dropout=dropout)
    logits = L.dense("fc8", h, num_classes, std=lecun_std, activate=False)
    return L.finish("alexnet-small", images, labels, logits, config)


# --------------------------------------------------------------------------- training step
class TrainStep:
    """One compiled SGD step: ``step(images, labels) -> loss`` (a float).

    The program computes the loss and the logits (kept as ``last_logits``,
    so the training error costs nothing extra), then applies the
    :func:`graphdiff.optim.sgd_momentum` updates to the parameters and their
    momentum buffers. ``step.lr`` reads and sets the learning rate, a
    variable, so a new rate takes effect at the next call with no recompile.
    """

    def __init__(self, model, lr=0.01, momentum=0.9, weight_decay=5e-4, backend="numpy", seed=0,
                 reduce_gradients=None):
        self.model = model
        updates, self.optimizer = sgd_momentum(model.objective, model.params, lr=lr, momentum=momentum,
                                               weight_decay=weight_decay, reduce_gradients=reduce_gradients)
        self.program = gd.compile([model.loss, model.logits], inputs=model.inputs, updates=updates,
                                  backend=backend, training=True, seed=seed)
        self.last_logits = None

    def __call__(self, images, labels):
        loss, self.last_logits = self.program(images, labels)
        return float(loss)

    @property
    def lr(self):
        return self.optimizer.lr

    @lr.setter
    def lr(self, value):
        self.optimizer.lr = value

    def set_lr(self, value):
        self.lr = value

    @property
    def velocities(self):
        return self.optimizer.velocities

    @property
    def grads(self):
        """Parameter name -> gradient node (the backward graph, for diagrams)."""
        return self.optimizer.grads

    def get_rng_state(self):
        """The dropout generator's state (for checkpoints)."""
        return self.program.get_rng_state()

    def set_rng_state(self, state):
        self.program.set_rng_state(state)

    def state_arrays(self):
        """Parameters and momentum buffers (``"momentum/<name>"``) as NumPy copies."""
        arrays = self.model.state_arrays()
        for k, v in self.velocities.items():
            arrays["momentum/" + k] = to_numpy(v.value).copy()
        return arrays

    def load_state_arrays(self, arrays):
        """Inverse of :meth:`state_arrays`."""
        self.model.load_state_arrays(arrays)
        for k, v in self.velocities.items():
            key = "momentum/" + k
            if key not in arrays:
                raise KeyError(f"no momentum buffer for {k!r}")
            v.value = arrays[key]


def train_step(model, lr=0.01, momentum=0.9, weight_decay=5e-4, backend="numpy", seed=0, reduce_gradients=None):
    """Compile one SGD step for ``model`` (see :class:`TrainStep`); ``seed``
    seeds the dropout masks; ``reduce_gradients`` (see
    :func:`graphdiff.optim.sgd_momentum`) sums the gradients over ranks."""
    return TrainStep(model, lr=lr, momentum=momentum, weight_decay=weight_decay, backend=backend, seed=seed,
                     reduce_gradients=reduce_gradients)
