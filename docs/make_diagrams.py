"""Render the diagrams shown in docs/diagrams.md into docs/.

    .venv/bin/python docs/make_diagrams.py
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

import graphdiff as gd  # noqa: E402
import visualize as vz  # noqa: E402


#: the window of docs/maxpool_multiplexer.svg: one maximum (3 at x01), no tie
MULTIPLEXER_WINDOW = [[1.0, 3.0, 0.0], [2.5, 2.0, -1.0], [0.5, 1.0, 2.0]]


def small_cnn():
    """conv -> ReLU -> LRN -> max pool -> dense -> softmax cross-entropy."""
    rng = np.random.default_rng(0)
    x = gd.placeholder((None, 3, 8, 8), name="images")
    t = gd.placeholder((None,), dtype="int64", name="labels")
    with gd.scope("conv1"):
        w = gd.variable(rng.standard_normal((4, 3, 3, 3)).astype("float32") * 0.1, name="w")
        b = gd.variable(np.zeros(4, "float32"), name="b")
        h = gd.relu(gd.conv2d(x, w, b))
    with gd.scope("norm1"):
        h = gd.lrn(h, size=3)
    with gd.scope("pool1"):
        h = gd.max_pool2d(h, 3, 2)
    with gd.scope("fc2"):
        h = gd.reshape(h, (-1, 4 * 2 * 2))
        w2 = gd.variable(rng.standard_normal((16, 10)).astype("float32") * 0.1, name="w")
        logits = gd.matmul(h, w2)
    with gd.scope("loss"):
        loss = gd.softmax_cross_entropy(logits, t)
    return loss, [w, b, w2]


def main():
    from models.alexnet import alexnet

    out = {}

    def save(name, diagram):
        path = os.path.join(HERE, name)
        vz.render(diagram, path)
        out[name] = os.path.getsize(path)

    save("conv_pseudograph.svg", vz.conv_pseudograph(4, 2))
    save("conv_pseudograph_backward.svg", vz.conv_pseudograph(4, 2, backward=True))
    save("relu_switch.svg", vz.relu_switch([0.7, -1.2, 0.0, 2.5]))
    save("maxpool_multiplexer.svg", vz.maxpool_multiplexer(MULTIPLEXER_WINDOW))
    loss, params = small_cnn()
    save("small_cnn_forward.svg", vz.to_dot(loss, title="small CNN, forward", legend=True))
    grads = gd.grad(loss, params)
    save("small_cnn_backward.svg", vz.to_dot([loss, *grads], title="small CNN, forward + backward", legend=True))
    from graphdiff.optim import sgd_momentum

    updates, _ = sgd_momentum(loss, params)
    inputs = [n for n in gd.toposort([loss]) if n.kind == "placeholder"]
    step = gd.compile(loss, inputs, updates=updates)
    save("small_cnn_compiled.svg", vz.to_dot(step, collapse=False, title="small CNN, one compiled SGD step",
                                             legend=True))
    from models.alexnet import alexnet_small, train_step

    small_step = train_step(alexnet_small(10, 24)).program
    save("alexnet_small_compiled.svg", vz.to_dot(small_step, title="alexnet-small, one compiled SGD step", legend=True))
    model = alexnet()
    grads = gd.grad(model.loss, list(model.params.values()))
    save("alexnet_annotated.svg", vz.annotated(model.loss))
    save("alexnet_backward_collapsed.svg",
         vz.to_dot([model.loss, *grads], collapse=True, title="AlexNet, forward + backward, one box per layer",
                   legend=True))
    for name, size in out.items():
        print(f"docs/{name}  {size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
