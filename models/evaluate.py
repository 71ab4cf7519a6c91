"""The AlexNet paper's evaluation: top-1 and top-5 error, on the centre crop
and on ten crops.

The top-``k`` error is the fraction of images whose true class is not among
the ``k`` classes the network scores highest (the paper's Table 1 and 2
report ``k = 1`` and ``k = 5``). Ten crops (section 4.1 of the paper): the
four corner patches and the centre patch of each 256x256 validation image and
their horizontal reflections; the prediction is the mean of the ten softmax
outputs, ``p = (1/10) sum_j softmax(f(crop_j))``.
"""
import math

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
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return int(len(labels) - np.count_nonzero(best == labels[:, None]))


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


def finite(value):
    return value is not None and math.isfinite(value)
