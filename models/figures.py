"""The AlexNet paper's pictures of a trained network, written by the training
command into its run folder (matplotlib, Agg; each file written atomically):

``conv1_kernels.png`` (the paper's Figure 3)
    the first convolution's kernels as a grid of small colour images. Each
    kernel ``w`` (``C x k x k``) is shown on its own scale,
    ``(w - min w) / (max w - min w)``, so that its pattern (an edge, a
    frequency, a colour blob) shows whatever its norm; 3-channel kernels as
    RGB, others as the mean over their channels in grey.
``predictions.png`` (the left half of the paper's Figure 4)
    validation images, each with its five most probable classes as bars of
    their softmax probability; the bar of the true class is red, the true
    class is written under the image.
"""
import math

import numpy as np

from graphdiff.atomic import atomic_write

#: validation images shown in ``predictions.png`` (the paper shows eight)
PREDICTION_IMAGES = 8


def kernel_tiles(weights):
    """``(n, k, k, 3)`` float in [0, 1]: every kernel of ``weights``
    (``(n, C, k, k)``, a convolution's filters) scaled on its own,
    ``(w - min w) / (max w - min w)`` (a constant kernel is mid-grey), RGB for
    ``C == 3``, else the channel mean repeated in grey."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"convolution kernels are (n, C, k, k), got shape {w.shape}")
    if w.shape[1] != 3:
        w = np.repeat(w.mean(axis=1, keepdims=True), 3, axis=1)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    scaled = np.where(span > 0, (w - lo) / np.where(span > 0, span, 1), 0.5)
    return scaled.transpose(0, 2, 3, 1)


def kernel_grid(weights, columns=None, gap=1):
    """The :func:`kernel_tiles` of ``weights`` laid out in a grid (row after
    row, ``columns`` per row, default ``ceil(sqrt(8 n / 3))``: the paper's 6
    rows of 16 for AlexNet's 96; ``gap`` white pixels between tiles):
    ``(H, W, 3)``."""
    tiles = kernel_tiles(weights)
    n, k = tiles.shape[:2]
    columns = columns or max(1, math.ceil(math.sqrt(8 * n / 3)))
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (k + gap) - gap, columns * (k + gap) - gap, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (k + gap):r * (k + gap) + k, c * (k + gap):c * (k + gap) + k] = tile
    return grid


def _save(fig, path):
    import matplotlib.pyplot as plt

    try:
        with atomic_write(path) as f:  # a full disk must not leave half a picture behind
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_conv1_kernels(weights, path, title="conv1 kernels"):
    """``conv1_kernels.png``: :func:`kernel_grid` of ``weights`` ``(n, C, k, k)``."""
    plt = _pyplot()
    grid = kernel_grid(weights)
    height, width = grid.shape[:2]
    inches = min(12.0, max(3.0, width / 10))  # wide enough for the title, the grid's own aspect below it
    title_inches = 0.6
    fig = plt.figure(figsize=(inches, inches * height / width + title_inches))
    ax = fig.add_axes([0.01, 0.01, 0.98, 1 - title_inches / (inches * height / width + title_inches) - 0.01])
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(f"{title}\n{len(weights)} kernels of {weights.shape[1]}x{weights.shape[2]}x{weights.shape[3]}",
                 fontsize=9)
    _save(fig, path)


def top_k(probabilities, k=5):
    """``(classes, probabilities)``, each ``(N, min(k, K))``: the ``k`` most
    probable classes of each row of ``probabilities`` ``(N, K)``, most
    probable first (ties: the lower class first)."""
    p = np.asarray(probabilities, dtype=np.float64)
    k = min(k, p.shape[1])
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(p, order, axis=1)


def write_predictions(images, probabilities, labels, class_names, path, k=5, title="validation images"):
    """``predictions.png``: ``images`` (``(N, H, W, 3)`` or ``(N, H, W)``,
    values in [0, 1]) over bars of their :func:`top_k` classes; the bar of
    the true class (``labels``) red, the others blue."""
    plt = _pyplot()
    classes, probs = top_k(probabilities, k)
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.1 * n, 4.4), gridspec_kw=dict(height_ratios=[1.1, 1]),
                             squeeze=False)
    for i in range(n):
        ax_img, ax_bar = axes[0, i], axes[1, i]
        image = np.clip(np.asarray(images[i], dtype=np.float64), 0, 1)
        ax_img.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.set_xlabel(_short(class_names[labels[i]]), fontsize=8)
        rows = np.arange(classes.shape[1])
        colours = ["tab:red" if c == labels[i] else "tab:blue" for c in classes[i]]
        ax_bar.barh(rows, probs[i], color=colours)
        ax_bar.set_yticks(rows, [_short(class_names[c]) for c in classes[i]], fontsize=7)
        ax_bar.invert_yaxis()  # the most probable on top
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=6)
    fig.suptitle(f"{title}: top-{classes.shape[1]} predictions (true class in red)")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.06, top=0.9, wspace=0.9, hspace=0.25)
    _save(fig, path)


def _short(name, width=14):
    name = str(name)
    return name if len(name) <= width else name[:width - 1] + "…"


def spread(n, count=PREDICTION_IMAGES):
    """``min(n, count)`` indices spread evenly over ``range(n)`` (the images shown)."""
    return np.unique(np.linspace(0, n - 1, num=min(n, count)).round().astype(int)) if n else np.zeros(0, int)
