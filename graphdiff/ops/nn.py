"""Softmax, cross-entropy, dropout and stop_gradient."""
import functools

import numpy as np

from ..errors import ShapeError
from ..graph import Op, apply, as_dtype, as_int, as_tensor, fmt_shape, normalize_axis
from ..kernels import device as _device
from .elementwise import Binary, exp
from .reduce import Count, sum


class _AlongAxis(Op):
    """A float op along one ``axis`` that keeps its input's shape."""

    def __init__(self, axis):
        super().__init__(axis=axis)

    def infer(self, x):
        if x.dtype.kind != "f":
            raise self.error(f"needs a float input, got {x.dtype}", x)
        return x.shape, x.dtype


class LogSoftmax(_AlongAxis):
    """``y = x - log sum_k exp(x_k)`` along ``axis`` (max-shifted, so stable).
    VJP: ``g - exp(y) * sum_k g_k``."""

    name = "log_softmax"

    def forward(self, xp, x):
        shifted = x - xp.max(x, axis=self.axis, keepdims=True)
        return shifted - xp.log(xp.sum(xp.exp(shifted), axis=self.axis, keepdims=True))

    def vjp(self, node, g, wrt):
        return [g - exp(node) * sum(g, self.axis, keepdims=True)]


class Softmax(_AlongAxis):
    """``y_l = exp(x_l) / sum_k exp(x_k)``. VJP: ``y * (g - sum_k g_k y_k)``."""

    name = "softmax"

    def forward(self, xp, x):
        e = xp.exp(x - xp.max(x, axis=self.axis, keepdims=True))
        return e / xp.sum(e, axis=self.axis, keepdims=True)

    def vjp(self, node, g, wrt):
        return [node * (g - sum(g * node, self.axis, keepdims=True))]


def _one_axis(opname, x, axis):
    """The single axis softmax runs along (None or several axes would silently mean the first)."""
    if not isinstance(axis, (int, np.integer)):
        raise ShapeError(f"{opname}: {x.name} {fmt_shape(x.shape)}: axis must be one integer, got {axis!r}")
    return normalize_axis(opname, x, axis)[0]


def log_softmax(x, axis=-1, name=None):
    x = as_tensor(x)
    return apply(LogSoftmax(_one_axis("log_softmax", x, axis)), [x], name=name)


def softmax(x, axis=-1, name=None):
    x = as_tensor(x)
    return apply(Softmax(_one_axis("softmax", x, axis)), [x], name=name)


class OneHot(Op):
    """``one_hot[n, c] = (labels[n] == c)`` in ``dtype``; not differentiable."""

    name = "one_hot"
    differentiable = False

    def __init__(self, depth, dtype):
        super().__init__(depth=depth, dtype=np.dtype(dtype))

    def infer(self, labels):
        return labels.shape + (self.depth,), self.dtype

    def forward(self, xp, labels):
        return (labels[..., None] == xp.arange(self.depth)).astype(self.dtype)


def one_hot(labels, depth, dtype="float32", name=None):
    depth = as_int(depth, "one_hot: depth")
    if depth < 1:
        raise ShapeError(f"one_hot: depth must be >= 1, got {depth}")
    return apply(OneHot(depth, as_dtype(dtype, "one_hot")), [as_tensor(labels)], name=name)


def labels_out_of_range(labels, classes):
    """What is wrong with integer ``labels`` for ``classes`` classes (None if nothing)."""
    if not labels.size:
        return None
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        return f"labels must lie in [0, {classes}), got [{lo}, {hi}]"
    return None


class SoftmaxCrossEntropy(Op):
    """``E = -1/N sum_n log softmax(logits_n)[labels_n]``: the mean loss over the
    batch, from logits ``(N, C)`` and integer labels ``(N,)``.
    VJP: ``dE/dlogits = (softmax(logits) - one_hot(labels)) * g / N``."""

    name = "softmax_cross_entropy"

    def infer(self, logits, labels):
        if logits.ndim != 2 or labels.ndim != 1:
            raise self.error("expects logits (N, C) and labels (N,)", logits, labels)
        if labels.dtype.kind not in "iu":
            raise self.error(f"labels must be integers, got {labels.dtype}", labels)
        if logits.dtype.kind != "f":
            raise self.error(f"logits must be float, got {logits.dtype}", logits)
        n1, n2 = logits.shape[0], labels.shape[0]
        if n1 is not None and n2 is not None and n1 != n2:
            raise self.error(f"batch sizes differ ({n1} vs {n2})", logits, labels)
        return (), logits.dtype

    def forward(self, xp, logits, labels):
        from ..errors import InputError

        n, c = logits.shape
        if labels.shape[0] != n:
            raise InputError(f"softmax_cross_entropy: {n} logits rows but {labels.shape[0]} labels")
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        logz = xp.log(xp.sum(xp.exp(shifted), axis=1))
        if _device.on_device(xp):
            # Reading min/max here would stall the step (the host waits for the device).
            # Labels fed from the host were checked before the upload (input_checks);
            # any others are checked on the device: out of range, the loss is NaN.
            labels, penalty = _device.label_guard(xp, labels, c, logits.dtype)
            picked = shifted[xp.arange(n), labels]
            return xp.asarray(xp.mean(logz - picked + penalty), dtype=logits.dtype)
        problem = labels_out_of_range(labels, c)
        if problem:
            raise InputError(f"softmax_cross_entropy: {problem}")
        picked = shifted[xp.arange(n), labels]
        return xp.asarray(xp.mean(logz - picked), dtype=logits.dtype)

    def input_checks(self, node):
        """``{input index: check(value) -> problem or None}`` for inputs the compiler
        can check where they are fed (a placeholder's host array, before the upload;
        labels fed already on the device are checked by :meth:`forward` there)."""
        classes = node.inputs[0].shape[1]
        return {1: functools.partial(labels_out_of_range, classes=classes)} if classes is not None else {}

    def vjp(self, node, g, wrt):
        logits, labels = node.inputs
        n = apply(Count((0,), logits.dtype), [labels])
        target = one_hot(labels, logits.shape[1], logits.dtype)
        return [(softmax(logits) - target) * (g / n), None]


def softmax_cross_entropy(logits, labels, name=None):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``."""
    return apply(SoftmaxCrossEntropy(), [as_tensor(logits), as_tensor(labels)], name=name)


class DropoutMask(Op):
    """A fresh mask each run: ``1/(1-rate)`` with probability ``1-rate``, else
    0 (inverted dropout, so evaluation needs no rescaling). Drawn from the
    program's seeded generator; all ones when the program runs in evaluation
    mode. The mask is a graph value that the VJP reuses."""

    name = "dropout_mask"
    is_random = True
    differentiable = False

    def __init__(self, rate):
        super().__init__(rate=rate)

    def infer(self, x):
        return x.shape, x.dtype

    def forward(self, xp, x, *, rng, training):
        if not training or self.rate == 0.0:
            return xp.ones((1,) * x.ndim, x.dtype)
        if _device.on_device(xp):
            # On a GPU: two 32-bit keys from the host generator (so a checkpoint's state
            # replays the masks), and the mask a hash of them and each element's index,
            # computed on the device: nothing uploaded (see kernels.device.dropout_mask).
            keys = rng.integers(0, 1 << 32, size=2, dtype=np.uint64)
            return _device.dropout_mask(xp, x.shape, x.dtype, self.rate, keys)
        keep = rng.random(x.shape, dtype=np.float32 if x.dtype == np.float32 else np.float64)
        return (keep >= self.rate).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.rate))


def dropout(x, rate=0.5, name=None):
    """Dropout: ``x * mask`` with a mask drawn at run time (see DropoutMask).
    Compile with ``training=False`` for evaluation (the mask is then 1)."""
    x = as_tensor(x)
    if not 0.0 <= rate < 1.0:
        raise ShapeError(f"dropout: rate must be in [0, 1), got {rate}")
    mask = apply(DropoutMask(float(rate)), [x])
    return apply(Binary("mul"), [x, mask], name=name)


class StopGradient(Op):
    """Identity forward; no gradient flows back."""

    name = "stop_gradient"
    is_view = True
    differentiable = False

    def infer(self, x):
        return x.shape, x.dtype

    def forward(self, xp, x):
        return x


def stop_gradient(x, name=None):
    return apply(StopGradient(), [as_tensor(x)], name=name)


