"""Draw a model's graph from the command line.

    python -m visualize alexnet --out alexnet.svg
    python -m visualize alexnet --out alexnet_grad.svg --backward --collapse
    python -m visualize cnn4 --out cnn4.png --backward
    python -m visualize alexnet --out alexnet_layers.svg --annotated --summary

Models (imported only when named): alexnet, alexnet-small, cnn4.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

#: command-line name -> (module, builder function)
MODELS = {
    "alexnet": ("models.alexnet", "alexnet"),
    "alexnet-small": ("models.alexnet", "alexnet_small"),
    "cnn4": ("models.cnn", "cnn4"),
}


def build_model(name, **kwargs):
    """Import and build a model by its command-line name (ValueError if unknown)."""
    key = name.lower().replace("_", "-")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    module, func = MODELS[key]
    return getattr(importlib.import_module(module), func)(**kwargs)


def parser():
    p = argparse.ArgumentParser(prog="python -m visualize", description="Draw a model's computation graph "
                                "bottom-up (inputs at the bottom, the loss at the top).")
    p.add_argument("model", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--out", required=True, help="output file (.svg, .png; .pdf needs system Graphviz; .dot)")
    p.add_argument("--format", choices=["svg", "png", "pdf", "dot"], help="default: from --out's suffix")
    p.add_argument("--backward", action="store_true", help="add the gradients of the loss w.r.t. every parameter")
    p.add_argument("--collapse", action="store_true", help="one box per layer (scope)")
    p.add_argument("--annotated", action="store_true",
                   help="the AlexNet slide's picture: one box per layer, params red, FLOPs green")
    p.add_argument("--summary", action="store_true", help="also print the per-layer table")
    p.add_argument("--no-legend", action="store_true", help="leave out the key of node styles")
    p.add_argument("--classes", type=int, help="number of classes (default: the model's)")
    p.add_argument("--image-size", type=int, help="input height and width (default: the model's)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    import visualize as vz

    fmt = (args.format or os.path.splitext(args.out)[1].lstrip(".") or "svg").lower()
    if fmt not in ("dot", "gv"):
        try:
            vz.find_renderer(fmt)  # fail before building a big model
        except vz.RendererNotFound as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    kwargs = {}
    if args.classes is not None:
        kwargs["num_classes"] = args.classes
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    try:
        model = build_model(args.model, **kwargs)
    except ValueError as e:
        parser().error(str(e))

    import graphdiff as gd

    outputs = [model.loss]
    if args.backward:
        outputs += gd.grad(model.loss, list(model.params.values()))
    if args.summary:
        vz.summary(outputs)
    title = f"{args.model}" + (" forward + backward" if args.backward else "")
    if args.annotated:
        diagram = vz.annotated(outputs)
    else:
        diagram = vz.to_dot(outputs, collapse=args.collapse, title=title, legend=not args.no_legend)
    try:
        vz.render(diagram, args.out, format=args.format)
    except vz.RendererNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes, {diagram.meta.get('nodes', '?')} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
