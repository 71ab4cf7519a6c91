"""The AlexNet paper's evaluation: top-1 and top-5 error, on the centre crop
and on ten crops.

The top-``k`` error is the fraction of images whose true class is not among
the ``k`` classes the network scores highest (the paper's Table 1 and 2
report ``k = 1`` and ``k = 5``). Ten crops (section 4.1 of the paper): the
four corner patches and the centre patch of each 256x256 validation image and
their horizontal reflections; the prediction is the mean of the ten softmax
outputs, ``p = (1/10) sum_j softmax(f(crop_j))``.

``python -m models.evaluate RUN [--ten-crop] [--figures]`` evaluates a
training run's checkpoint on its validation images (:func:`main`).
"""

import numpy as np

#: the ``k`` of the top-k errors reported
TOP_K = (1, 5)


def log_softmax(logits):
    """``log softmax`` of each row, ``z - max z - log sum exp(z - max z)``, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def top_k_wrong(scores, labels, k):
    """How many rows of ``scores`` ``(N, K)`` do not have their ``labels``
    among their ``k`` highest scores (ties: the lower class ranks first, so
    ``k = 1`` counts exactly the rows whose ``argmax`` is not the label);
    ``k >= K`` counts none."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if k >= scores.shape[1]:
        return 0
    return int(np.count_nonzero(true_class_rank(scores, labels) >= k))


def true_class_rank(scores, labels):
    """``(N,)`` int: how many classes rank above each row's label in
    ``scores`` ``(N, K)``, a class with a higher score or an equal score and
    a lower index (0: the label is the row's top class)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(np.int64)
    true = scores[np.arange(len(labels)), labels][:, None]
    cls = np.arange(scores.shape[1])[None, :]
    return ((scores > true) | ((scores == true) & (cls < labels[:, None]))).sum(axis=1)


def ten_crop_errors(predict, batches, crop, mean, parallel=None):
    """``(top-1 error, top-5 error)`` of ``predict`` (images -> logits) on ten
    crops of every image of ``batches`` (``(uint8 (N, S, S, 3), labels)``
    pairs, this rank's part of the validation set; summed over the ranks by
    ``parallel``), the softmax averaged over the crops; ``(None, None)``
    without images. ``mean`` is what the training batches had subtracted
    (see :func:`models.stream.ten_crops`)."""
    from models.stream import ten_crops

    wrong, seen = np.zeros(len(TOP_K)), 0
    for images, labels in batches:
        crops = ten_crops(images, crop, mean)  # (10, N, 3, crop, crop)
        probs = 0.0
        for view in crops:
            probs = probs + np.exp(log_softmax(predict(np.ascontiguousarray(view))))
        probs = probs / len(crops)
        if not np.all(np.isfinite(probs)):
            raise FloatingPointError("the ten-crop validation outputs became NaN: lower the learning rate")
        wrong += [top_k_wrong(probs, labels, k) for k in TOP_K]
        seen += len(labels)
    if parallel is not None:
        *wrong, seen = parallel.sum([*wrong, seen])
    if seen == 0:
        return None, None
    return tuple(float(w) / seen for w in wrong)


def describe(record):
    """The validation part of the progress line of one metrics record."""
    if record.get("val_error") is None:
        return "val -"
    text = f"val error {100 * record['val_error']:5.2f}%"
    if record.get("val_top5_error") is not None:
        text += f"  top-5 {100 * record['val_top5_error']:5.2f}%"
    text += f"  val acc {100 * (1 - record['val_error']):5.2f}%"
    if record.get("val_error_10crop") is not None:
        text += (f"  10-crop error {100 * record['val_error_10crop']:5.2f}%"
                 f"  top-5 {100 * record['val_top5_error_10crop']:5.2f}%")
    return text




# --------------------------------------------------------------------------- the command
def main(argv=None):
    """``python -m models.evaluate RUN``: the top-1 and top-5 errors of the
    model in ``RUN/checkpoint.npz`` on its validation images (centre crops;
    ``--ten-crop`` also ten crops), printed and, with ``--figures``, the
    paper's Figures 3 and 4 (left) written into RUN. Returns the figures as
    a dict."""
    import argparse
    import os

    from graphdiff.checkpoint import load_checkpoint
    from models import train
    from models.cli import ArgumentParser

    class Parser(ArgumentParser):
        def error(self, message):
            raise train.UsageError(message)

    p = Parser(prog="python -m models.evaluate", description=main.__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a training run's folder (--out), holding checkpoint.npz")
    p.add_argument("--data", default=None, help="the data set (default: the one the run trained on), e.g. "
                                                "pack:FILE where the pack has moved")
    p.add_argument("--ten-crop", action="store_true", help="also the ten-crop errors (streamed data)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=train.DEFAULT_WORKERS)
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--figures", action="store_true",
                   help="write conv1_kernels.png and predictions.png into RUN")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.workers < 0:
        raise train.UsageError("--batch-size must be positive and --workers 0 or more")
    path = os.path.join(args.run, "checkpoint.npz")
    if not os.path.isfile(path):
        raise train.UsageError(f"{args.run}: no checkpoint.npz (give the --out folder of a training run)")
    arrays, meta = load_checkpoint(path)
    config = meta.get("config")
    if not isinstance(config, dict) or not set(train.STRUCTURE_KEYS) <= set(config):
        raise train.UsageError(f"{path}: its metadata does not say which model it holds")
    if train.is_onnx(config["model"]):
        raise train.UsageError(f"{path}: a model trained from an ONNX file: evaluate its export instead")
    spec = args.data or config["data"]
    streamed = train.is_streamed(spec)
    if args.ten_crop and not streamed:
        raise train.UsageError(f"--ten-crop is for streamed data (pack:FILE, folder:DIR), "
                               f"not {spec}")
    if streamed:
        from models.streamed import open_streamed

        data = open_streamed(argparse.Namespace(
            data=spec, image_size=config["image_size"], mean=config.get("mean", "image"),
            resize=config.get("resize", train.DEFAULT_RESIZE), no_flip=False, no_pca_lighting=False,
            seed=config.get("seed", 0), workers=args.workers, batch_size=1))
    else:
        from models.data import load_dataset

        data = load_dataset(spec, config["image_size"], channels=config["channels"], seed=config.get("seed", 0))
    if data.num_classes != config["num_classes"]:
        raise train.UsageError(f"{spec} has {data.num_classes} classes, the model {config['num_classes']}")
    model = train.build_model(config["model"], config["num_classes"], config["image_size"], config["channels"],
                              config["groups"], config["activation"], config["dropout"], 0, config["width"],
                              config["hidden"])
    model.load_state_arrays({k: v for k, v in arrays.items() if not k.startswith("momentum/")})
    predict = model.compile_eval(args.backend)
    loss, error, top5 = train.evaluate(predict, data, args.batch_size)
    if error is None:
        raise train.UsageError(f"{spec} has no validation images")
    result = dict(epoch=meta.get("epoch"), images=len(data.val_labels), val_loss=loss, val_error=error,
                  val_top5_error=top5)
    if args.ten_crop:
        result.update(zip(("val_error_10crop", "val_top5_error_10crop"),
                          ten_crop_errors(predict, data.val_images_uint8(args.batch_size), config["image_size"],
                                          data.crop_mean)))
    print(f"{args.run} after epoch {result['epoch']}, {result['images']:,} validation images of {spec}: "
          + describe(result).replace("val ", "", 1))
    if args.figures:
        train.write_figures(model, predict, data, args.run)
    return result


def cli(argv=None):
    """A mistake (no run, a damaged checkpoint, a pack that fails its checksums) is one ``error:`` line, exit 2."""
    import sys

    from graphdiff.checkpoint import CheckpointError
    from models import train
    from models.data import DataError

    try:
        main(argv)
    except (train.UsageError, DataError, CheckpointError, OSError) as exc:
        text = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename else str(exc)
        print(f"error: {text}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
