"""Time building and rendering AlexNet's diagrams (goal: each under 30 s).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/render_alexnet.py [--out DIR] [--png]

For the forward graph and the forward+backward graph, full and collapsed,
prints the nodes and edges drawn, the seconds to build the DOT text
(``visualize.to_dot``) and to render it (system ``dot`` or graphviz-pure),
and the file size. Then, to see how the renderer scales, the same for deep
scoped MLPs (``--stress 100 400``: layers), forward+backward, full and collapsed.
"""
import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import graphdiff as gd  # noqa: E402
import visualize as vz  # noqa: E402
from machine import blas_info  # noqa: E402 - the benchmarks' folder is on sys.path when run




def deep_mlp(layers, width=8):
    """loss and grads of a ``layers``-deep ReLU MLP, one scope per layer."""
    x = gd.placeholder((None, width), name="x")
    t = gd.placeholder((None,), "int64", name="labels")
    h, params = x, []
    for k in range(layers):
        with gd.scope(f"layer{k}"):
            w = gd.variable(np.ones((width, width), "float32"), name="w")
            b = gd.variable(np.zeros(width, "float32"), name="b")
            h = gd.relu(gd.matmul(h, w) + b)
            params += [w, b]
    loss = gd.softmax_cross_entropy(h, t)
    return [loss, *gd.grad(loss, params)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for the rendered files (default: a temporary one)")
    p.add_argument("--png", action="store_true", help="also render PNG")
    p.add_argument("--stress", type=int, nargs="*", default=[100, 400],
                   help="depths of the scaling test (deep MLPs, forward+backward)")
    args = p.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="render_alexnet_")
    os.makedirs(out, exist_ok=True)

    from models.alexnet import alexnet

    print(f"python {platform.python_version()}, {platform.machine()}, BLAS: {'; '.join(blas_info())}")
    print(f"renderer: {vz.find_renderer('svg')}")
    t = time.perf_counter()
    model = alexnet()
    t_model = time.perf_counter() - t
    t = time.perf_counter()
    grads = gd.grad(model.loss, list(model.params.values()))
    t_grad = time.perf_counter() - t
    print(f"build AlexNet {t_model:.2f} s (random init of 61M parameters), grad {t_grad:.3f} s")

    cases = [("forward", [model.loss], False), ("forward_collapsed", [model.loss], True),
             ("backward", [model.loss, *grads], False), ("backward_collapsed", [model.loss, *grads], True)]
    formats = ["svg", "png"] if args.png else ["svg"]
    print(f"{'diagram':<20} {'nodes':>6} {'edges':>6} {'to_dot s':>9} " +
          " ".join(f"{f + ' s':>8} {f + ' KB':>8}" for f in formats))
    worst = 0.0
    for name, outputs, collapse in cases:
        t = time.perf_counter()
        d = vz.to_dot(outputs, collapse=collapse, title=f"AlexNet {name}", legend=True)
        t_dot = time.perf_counter() - t
        cells = []
        for fmt in formats:
            path = os.path.join(out, f"alexnet_{name}.{fmt}")
            t = time.perf_counter()
            vz.render(d, path)
            t_render = time.perf_counter() - t
            worst = max(worst, t_dot + t_render)
            cells.append(f"{t_render:8.2f} {os.path.getsize(path) / 1024:8.0f}")
        print(f"{name:<20} {d.meta['nodes']:>6} {d.meta['edges']:>6} {t_dot:9.3f} " + " ".join(cells))
    print(f"AlexNet slowest build+render: {worst:.2f} s (goal < 30 s); files in {out}")

    for layers in args.stress:
        outputs = deep_mlp(layers)
        for collapse in (False, True):
            t = time.perf_counter()
            d = vz.to_dot(outputs, collapse=collapse)
            t_dot = time.perf_counter() - t
            path = os.path.join(out, f"mlp{layers}{'_collapsed' if collapse else ''}.svg")
            t = time.perf_counter()
            vz.render(d, path)
            t_render = time.perf_counter() - t
            print(f"{f'mlp{layers} ' + ('collapsed' if collapse else 'full'):<20} {d.meta['nodes']:>6} "
                  f"{d.meta['edges']:>6} {t_dot:9.3f} {t_render:8.2f} {os.path.getsize(path) / 1024:8.0f}")


if __name__ == "__main__":
    main()
