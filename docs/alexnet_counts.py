"""AlexNet's parameter and operation counts under several counting conventions,
computed from the graphdiff graphs (the numbers quoted in docs/diagrams.md).

    .venv/bin/python docs/alexnet_counts.py

For input sizes 227 and 224 and the two-tower (groups=2) and one-tower
(groups=1) networks it builds ``models.alexnet`` and reads the per-layer
table of ``visualize.summary``; mixed groupings (some layers split, some not)
combine the per-layer rows, which is exact because grouping changes no shape.
"Cheap ops" are counted from the graph's nodes with the costs in CHEAP below.
"""
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import graphdiff as gd  # noqa: E402
import visualize as vz  # noqa: E402
from models.alexnet import alexnet  # noqa: E402


def elems(shape):
    n = 1
    for d in shape[1:]:  # per example
        n *= d
    return n


def cheap_ops(loss):
    """FLOPs of everything but conv/matmul, per example, at inference (dropout off):
    bias add 1 per output, ReLU 1 (a comparison), max pool size^2 - 1
    comparisons per output, LRN size + 4 per element (square, size - 1 adds,
    alpha mul, k add, power, multiply), softmax + cross-entropy 3 per class."""
    total = {}
    for t in gd.toposort([loss]):
        name = t.op.name
        if name == "add" and t.scope.startswith("fc"):  # dense bias
            name, cost = "bias", elems(t.shape)
        elif name == "conv2d" and len(t.inputs) == 3:  # the bias add inside conv2d
            name, cost = "bias", elems(t.shape)
        elif name == "relu":
            cost = elems(t.shape)
        elif name == "max_pool2d":
            kh, kw = t.op.attrs["size"]
            cost = elems(t.shape) * (kh * kw - 1)
        elif name == "lrn_normalize":
            cost = elems(t.shape) * (t.op.attrs["size"] + 4)
        elif name == "softmax_cross_entropy":
            cost = 3 * t.inputs[0].shape[1]
        else:
            continue
        total[name] = total.get(name, 0) + cost
    return total


def main():
    rows = {}
    cheap = {}
    for size in (227, 224):
        for groups in (2, 1):
            m = alexnet(image_size=size, groups=groups)
            s = vz.summary(m.loss, show=False)
            rows[size, groups] = {r.layer: r for r in s.rows}
            if groups == 2:
                cheap[size] = cheap_ops(m.loss)
            del m

    print("Per layer at 227 (two towers):")
    vz.summary(alexnet().loss)
    print()
    print("cheap ops at 227, per example:", {k: f"{v:,}" for k, v in cheap[227].items()},
          f"total {sum(cheap[227].values()):,}")
    print()
    print(f"{'input':>5} {'split layers':<22} {'params':>12} {'MACs':>13} {'2 x MACs':>14} {'MACs+cheap':>13}")
    results = []
    for size in (227, 224):
        for split in itertools.chain.from_iterable(
                itertools.combinations(("conv2", "conv4", "conv5"), k) for k in (3, 2, 1, 0)):
            layers = rows[size, 2]
            params = macs = 0
            for name in layers:
                r = rows[size, 2 if name in split or name not in ("conv2", "conv4", "conv5") else 1][name]
                params += r.params
                macs += r.macs
            extra = sum(cheap[size].values())
            results.append((size, split, params, macs))
            label = ",".join(split) if split else "none (one tower)"
            print(f"{size:>5} {label:<22} {params:>12,} {macs:>13,} {2 * macs:>14,} {macs + extra:>13,}")
    print()
    for target, what in ((837e6, "MACs"), (64e6, "params")):
        best = sorted(results, key=lambda r: abs((r[3] if what == "MACs" else r[2]) - target))[0]
        value = best[3] if what == "MACs" else best[2]
        print(f"closest to {target / 1e6:.0f}M {what}: input {best[0]}, split {best[1] or 'none'}: "
              f"{value:,} ({100 * (value - target) / target:+.1f}%)")


if __name__ == "__main__":
    main()
