"""The same AlexNet (2012, two towers as grouped convolutions) in PyTorch, as
the benchmarks' rival. Modules are named like graphdiff's scopes (conv1,
lrn1, pool1, ..., fc8) for per-layer comparisons. LRN: PyTorch divides alpha
by size, so alpha = 1e-4 * 5 here equals the paper's (graphdiff's) 1e-4."""
from collections import OrderedDict

import torch
from torch import nn


def torch_alexnet(num_classes=1000, groups=2, dropout=0.5, dropout_after_relu=False):
    """``dropout_after_relu=True`` places dropout as models.alexnet does (fc6 -> ReLU ->
    dropout, fc7 -> ReLU -> dropout) instead of before fc6 and fc7 (torchvision's order)."""
    lrn = dict(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)
    if dropout_after_relu:
        head = [("flatten", nn.Flatten()),
                ("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU()), ("drop6", nn.Dropout(dropout)),
                ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU()), ("drop7", nn.Dropout(dropout))]
    else:
        head = [("flatten", nn.Flatten()),
                ("drop6", nn.Dropout(dropout)), ("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU()),
                ("drop7", nn.Dropout(dropout)), ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU())]
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 96, 11, stride=4)), ("relu1", nn.ReLU()),
        ("lrn1", nn.LocalResponseNorm(**lrn)), ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=groups)), ("relu2", nn.ReLU()),
        ("lrn2", nn.LocalResponseNorm(**lrn)), ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=groups)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=groups)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(3, 2)), *head,
        ("fc8", nn.Linear(4096, num_classes)),
    ]))


def torch_train_step(model, lr=0.01, momentum=0.9, weight_decay=5e-4):
    """One SGD step (forward, backward, update) as a callable (images, labels) -> loss;
    ``step.model`` is the network."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()

    def step(images, labels):
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(images), labels)
        loss.backward()
        opt.step()
        return loss

    step.model = model
    return step


def layer_times(net, images, labels):
    """Forward and backward seconds per named module for one step, via hooks."""
    times, stamps, hooks = {}, {}, []

    def add(key, seconds):
        times[key] = times.get(key, 0.0) + seconds

    for name, m in net.named_children():
        hooks += [
            m.register_forward_pre_hook(lambda mod, inp, n=name: stamps.__setitem__(("f", n), _now())),
            m.register_forward_hook(lambda mod, inp, out, n=name: add((n, "forward"), _now() - stamps[("f", n)])),
            m.register_full_backward_pre_hook(lambda mod, g, n=name: stamps.__setitem__(("b", n), _now())),
            m.register_full_backward_hook(lambda mod, gi, go, n=name: add((n, "backward"), _now() - stamps[("b", n)])),
        ]
    x = images.clone().requires_grad_(True)  # so conv1's backward hook fires
    nn.functional.cross_entropy(net(x), labels).backward()
    for h in hooks:
        h.remove()
    return times


def _now():
    import time

    return time.perf_counter()
