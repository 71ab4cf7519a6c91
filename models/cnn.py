"""The four-layer CNN of the ReLU-vs-tanh experiment (AlexNet paper, Figure 1).

The paper says only "a four-layer convolutional neural network" on CIFAR-10.
This follows cuda-convnet's CIFAR-10 example by the same author (layers-18pct:
32-32-64 filters of 5x5, each followed by 3/2 pooling, then one dense layer),
with max pooling throughout and without its response normalization::

    conv1 32 @ 5x5 pad 2 -> act -> max pool 3/2     32 -> 15
    conv2 32 @ 5x5 pad 2 -> act -> max pool 3/2     15 -> 7
    conv3 64 @ 5x5 pad 2 -> act -> max pool 3/2      7 -> 3
    fc4   classes                                   (logits)

Four layers with weights; no dropout, no LRN, no weight decay ("no
regularization of any kind"). ``width`` scales the channel counts
``width * (1, 1, 2)``.

Init: the *same* weights for both activations (same seed, same scale), so the
only difference between the two runs is the nonlinearity: LeCun's
``N(0, 1/fan_in)``, zero biases. That is the scale that keeps tanh units out
of saturation and within a factor sqrt(2) of He's scale for ReLU.
``init_std=0.01`` gives the paper-style fixed scale instead; on digits
neither network then learns within 8 epochs at lr 0.01 or 0.03 (the four
layers shrink the signal too much).
"""
from .alexnet import _Builder, _inputs, lecun_std


def cnn4(num_classes=10, image_size=32, activation="relu", width=32, seed=0, channels=3, init_std=None,
         dtype="float32"):
    """The 4-layer CNN (see the module docstring); ``activation`` "relu" or "tanh";
    ``init_std`` a fixed weight std for every layer (e.g. 0.01, paper style)
    instead of LeCun's ``sqrt(1 / fan_in)``; ``dtype`` of the parameters and images."""
    config = dict(num_classes=num_classes, image_size=image_size, activation=activation,
                  width=width, seed=seed, channels=channels, init_std=init_std)
    if image_size < 15:  # three 3/2 poolings: 15 -> 7 -> 3 -> 1
        raise ValueError(f"cnn4 needs images of at least 15x15, got {image_size}")
    w = int(width)
    std = lecun_std if init_std is None else float(init_std)
    L = _Builder(seed, activation, dtype)
    images, labels = _inputs(channels, image_size, dtype)
    h = L.pool("pool1", L.conv("conv1", images, w, 5, padding=2, std=std))
    h = L.pool("pool2", L.conv("conv2", h, w, 5, padding=2, std=std))
    h = L.pool("pool3", L.conv("conv3", h, 2 * w, 5, padding=2, std=std))
    logits = L.dense("fc4", h, num_classes, std=std, activate=False)
    return L.finish("cnn4", images, labels, logits, config)
