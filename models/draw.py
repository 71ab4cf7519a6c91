"""Draw a model's graph from the command line.

    python -m visualize alexnet --out alexnet.svg
    python -m visualize alexnet --out alexnet_grad.svg --backward --collapse
    python -m visualize cnn4 --out cnn4.png --backward
    python -m visualize alexnet --out alexnet_layers.svg --annotated --summary

    python -m visualize explore alexnet-small --data digits --out explorer.html
    python -m visualize explore net.onnx --data synthetic:10 --out net.html

This is the code of ``python -m visualize``: it builds the course's models by
name and reads ONNX classifiers, which is the models package's business, so it
lives here and ``visualize/__main__.py`` hands over to it (the visualize
library itself imports nothing of models; models imports visualize, as
training writes diagrams and the explorer).

Models (imported only when named): alexnet, alexnet-small, cnn4, or an ONNX
file (``*.onnx``: an image classifier, read by ``graphdiff.onnx.load``; its
logits get a cross-entropy loss, so both passes show). ``explore``
writes the interactive explorer (both passes; with ``--data``, the values of
one validation batch; the compiled training step's passes and memory plan).
"""
from __future__ import annotations

import importlib
import os
import sys

from models.cli import ArgumentParser
from models.imported import check_classifier, onnx_classifier

#: command-line name -> (module, builder function)
MODELS = {
    "alexnet": ("models.alexnet", "alexnet"),
    "alexnet-small": ("models.alexnet", "alexnet_small"),
    "cnn4": ("models.cnn", "cnn4"),
}


def _error(message):
    """A mistake: one ``error:`` line on stderr; returns the exit status, 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def build_model(name, **kwargs):
    """Import and build a model by its command-line name, or read an ONNX file
    (:func:`onnx_classifier`; ``kwargs`` must then agree with it). ValueError
    if unknown."""
    if name.lower().endswith(".onnx"):
        return onnx_classifier(name, **kwargs)
    return _builder(name)(**kwargs)


def _builder(name):
    """The builder function of a model's command-line name (imported now);
    ValueError if unknown."""
    key = name.lower().replace("_", "-")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    module, func = MODELS[key]
    return getattr(importlib.import_module(module), func)


def default_image_size(name):
    """The ``image_size`` a model's builder defaults to."""
    import inspect

    return inspect.signature(_builder(name)).parameters["image_size"].default


def parser():
    p = ArgumentParser(prog="python -m visualize", description="Draw a model's computation graph "
                                "bottom-up (inputs at the bottom, the loss at the top).")
    p.add_argument("model", help=f"one of: {', '.join(MODELS)}, or an ONNX image classifier (FILE.onnx)")
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


def explore_parser():
    p = ArgumentParser(prog="python -m visualize explore", description="Write the interactive "
                                "explorer of a model's forward and backward graphs (one HTML file).")
    p.add_argument("model", help=f"one of: {', '.join(MODELS)}, or an ONNX image classifier (FILE.onnx)")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--data", help="show the values of one validation batch of this data set "
                   "(digits, synthetic[:K], cifar10:DIR, folder:DIR)")
    p.add_argument("--batch-size", type=int, default=4, help="images in the batch (default 4)")
    p.add_argument("--image-size", type=int, help="input height and width (default: the model's)")
    p.add_argument("--classes", type=int, help="number of classes (default: the data's, else the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-program", action="store_true", help="leave out the compiled training step's passes")
    return p


def explore_main(argv):
    args = explore_parser().parse_args(argv)
    if args.batch_size < 1:
        explore_parser().error("--batch-size must be positive")
    import graphdiff as gd
    import visualize as vz

    kwargs = {"seed": args.seed}
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    feed_batch, channels = None, 3
    try:
        onnx_model = onnx_classifier(args.model, **kwargs) if args.model.lower().endswith(".onnx") else None
        if onnx_model is not None:  # the file fixes the image size and channels
            channels, side = onnx_model.images.shape[1:3]
            kwargs["image_size"] = side or args.image_size
            if args.data and kwargs["image_size"] is None:
                raise ValueError(f"{args.model}: its image size is known only at run time: give --image-size")
        if args.data:
            from models.data import DataError, load_dataset

            size = kwargs.get("image_size") or default_image_size(args.model)
            try:
                dataset = load_dataset(args.data, size, channels=channels, seed=args.seed)
            except DataError as e:
                return _error(e)
            kwargs["image_size"] = size
            kwargs["num_classes"] = args.classes or dataset.num_classes
            feed_batch = next(iter(dataset.val_batches(args.batch_size)))
        elif args.classes is not None:
            kwargs["num_classes"] = args.classes
        if onnx_model is None:
            model = build_model(args.model, **kwargs)
        else:  # read once, above; now only the data's classes are left to check
            model = onnx_model
            check_classifier(model, num_classes=kwargs.get("num_classes"))
    except gd.ModelFormatError as e:
        return _error(e)
    except ValueError as e:
        explore_parser().error(str(e))
    program = None
    if not args.no_program:
        from models.alexnet import train_step

        program = train_step(model).program
    feed = None
    if feed_batch is not None:
        feed = {model.images: feed_batch[0], model.labels: feed_batch[1]}
    try:
        page = vz.explore(model, feed=feed, program=program, path=args.out,
                          title=f"{args.model}" + (f" on {args.data}" if args.data else ""))
    except gd.InputError as e:
        return _error(e)
    except OSError as e:  # e.g. --out in a folder that does not exist
        return _error(f"cannot write {args.out}: {e.strerror or e}")
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes, {len(page.data['graph'])} nodes"
          f"{', values of ' + str(len(feed_batch[1])) + ' validation images' if feed else ''})")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "explore":
        return explore_main(argv[1:])
    args = parser().parse_args(argv)
    import visualize as vz

    fmt = (args.format or os.path.splitext(args.out)[1].lstrip(".") or "svg").lower()
    if fmt not in ("dot", "gv"):
        try:
            vz.find_renderer(fmt)  # fail before building a big model
        except vz.RendererNotFound as e:
            return _error(e)
    kwargs = {}
    if args.classes is not None:
        kwargs["num_classes"] = args.classes
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    import graphdiff as gd

    try:
        model = build_model(args.model, **kwargs)
    except gd.ModelFormatError as e:  # a ValueError too: said as it is, not as a usage mistake
        return _error(e)
    except ValueError as e:
        parser().error(str(e))

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
        return _error(e)
    except OSError as e:  # e.g. --out in a folder that does not exist
        return _error(f"cannot write {args.out}: {e.strerror or e}")
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes, {diagram.meta.get('nodes', '?')} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
