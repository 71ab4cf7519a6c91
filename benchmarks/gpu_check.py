"""AlexNet 2012 on NumPy against CuPy: two SGD steps from the same weights and
batch (dropout off: the backends draw their masks differently), comparing the losses,
conv2's input gradient (the gradient reaching pool1's output) at each step and
every updated parameter and momentum buffer. Exits 1 on a mismatch.

    python benchmarks/gpu_check.py [--image-size 227] [--batch 16] [--steps 2]

Each figure is ``max |cupy - numpy| / max |numpy|`` (float32 on both; the GPU
adds in other orders, and TF32 would round its GEMM inputs: run it without
CUPY_TF32). CuPy compiles its kernels with ``-ftz=true``: float32 subnormals
(below 2^-126 ~ 1.2e-38) are zero on the GPU, not on NumPy; relative to the
largest value, as here, that difference does not show.
"""
import argparse
import sys

import numpy as np


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _run(backend, image_size, batch, num_classes, steps, lr):
    import graphdiff as gd
    from graphdiff.optim import sgd_momentum
    from models.alexnet import alexnet, to_numpy

    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)
    labels = rng.integers(0, num_classes, batch).astype(np.int64)
    model = alexnet(num_classes=num_classes, image_size=image_size, seed=0)
    updates, state = sgd_momentum(model.loss, model.params, lr=lr)
    (conv2_input_grad,) = gd.grad(model.loss, [model.layers["pool1"]])
    # Dropout off (training=False): NumPy draws its masks with the generator, CuPy hashes
    # them on the device, so the two would train on different masks.
    step = gd.compile([model.loss, conv2_input_grad], inputs=model.inputs, updates=updates, backend=backend,
                      training=False)
    record = {"loss": [], "conv2_input_grad": []}
    for _ in range(steps):
        loss, g = step(images, labels)
        record["loss"].append(float(loss))
        record["conv2_input_grad"].append(np.asarray(g))
    record["params"] = {k: to_numpy(p.value) for k, p in model.params.items()}
    record["params"].update({"momentum/" + k: to_numpy(v.value) for k, v in state.velocities.items()})
    return record


def compare(image_size=227, batch=16, num_classes=1000, steps=2, lr=1e-3, tol=2e-3):
    """Run both backends; returns ``{"ok", "loss", "conv2_input_grad", "params", "worst"}``."""
    cpu = _run("numpy", image_size, batch, num_classes, steps, lr)
    gpu = _run("cupy", image_size, batch, num_classes, steps, lr)
    report = {
        "loss": [(_relative(g, c), c, g) for c, g in zip(cpu["loss"], gpu["loss"])],
        "conv2_input_grad": [_relative(g, c) for c, g in zip(cpu["conv2_input_grad"], gpu["conv2_input_grad"])],
        "params": {k: _relative(gpu["params"][k], v) for k, v in cpu["params"].items()},
    }
    worst_param = max(report["params"].items(), key=lambda kv: kv[1])
    report["worst"] = worst_param
    report["ok"] = (all(r <= tol for r, _, _ in report["loss"]) and all(r <= tol for r in report["conv2_input_grad"])
                    and worst_param[1] <= tol)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=227)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tol", type=float, default=2e-3)
    args = ap.parse_args()
    report = compare(args.image_size, args.batch, args.classes, args.steps, tol=args.tol)
    for i, (r, c, g) in enumerate(report["loss"]):
        print(f"step {i + 1}: loss numpy {c:.6f}  cupy {g:.6f}  relative difference {r:.2e}")
    for i, r in enumerate(report["conv2_input_grad"]):
        print(f"step {i + 1}: conv2 input gradient, relative difference {r:.2e}")
    print(f"parameters and momentum after {args.steps} steps: worst {report['worst'][0]} {report['worst'][1]:.2e}")
    print("NumPy and CuPy agree" if report["ok"] else f"MISMATCH (tolerance {args.tol})")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
