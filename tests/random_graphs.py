"""Random valid graphs over every op the engine has, built twice: in graphdiff and
as a PyTorch function (float64), for the differential test of the compiler
(tests/test_random_graphs.py).

A graph is a plain-data *spec* (so hypothesis can shrink it and a failing one can
be pasted into an ``@example``)::

    {"input": (2, 5, 5),                      # x is (None,) + input: a None batch
     "steps": [("conv2d", (0,), {...}),        # op name, argument value indices, attributes
               ("relu", (1,), {}), ...],
     "outputs": (2, 1),                        # value indices the loss reads (fan-out)
     "seed": 3}                                # the data: inputs, weights, directions

Value 0 is the input ``x``; step ``k`` makes value ``k + 1`` (``split`` makes two,
both in the pool). Every value keeps the batch as axis 0; a spec's shapes
(without the batch) are tracked while it is drawn, so every step is valid.

**Adding an op or an attribute**: one :class:`OpGen` entry in :data:`GENERATORS`
(where it applies, how its attributes are drawn, its output shape, and its
graphdiff and PyTorch forms); attributes are drawn in ``draw`` so that an old
spec (without a new attribute) keeps its meaning through ``params.get``.
Tie-sensitive ops report their decision margins (:meth:`Build.margin`) so that
data near a tie is redrawn instead of loosening tolerances.
"""
import dataclasses
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

import graphdiff as gd
from op_checks import conv_out_size, four, has_empty_window, pool_out_size, same_pads

# Decision margins below this, relative to the deciding tensor's scale, count as a
# near-tie (the frameworks' rounding, ~1e-16, could flip the decision); exact
# ties (0: ReLU's zeros pooled, padding) follow the same documented rule in both.
NEAR_TIE = 1e-6


@dataclasses.dataclass(frozen=True)
class OpGen:
    """One op of the generator: ``applies(shape)`` for a value's shape (without
    the batch); ``draw(draw, shapes, pool)`` returns ``(extra argument indices,
    params)`` or None (no valid attributes here); ``shape(shapes, params)`` the
    output shape(s) (a list for several outputs); ``gd`` and ``torch`` build the
    op from the argument values, ``params`` and a :class:`Build`."""

    applies: object
    draw: object
    shape: object
    gd: object
    torch: object
    outputs: int = 1


class Build:
    """What an op's builder may ask for: weights (variables in graphdiff, the
    same values as leaf tensors in PyTorch) and, in PyTorch, the report of a
    decision margin."""

    def __init__(self, framework, rng, weights, dtype="float64"):
        self.framework, self.rng, self.weights, self.dtype = framework, rng, weights, dtype
        self.count = 0
        self.margins = []  # (smallest margin, scale) per tie-sensitive decision

    def weight(self, shape, scale=0.5):
        """The next weight: an array drawn once per spec and shared by both builds."""
        k = self.count
        self.count += 1
        if k == len(self.weights):
            self.weights.append(self.rng.standard_normal(shape) * scale)
        return self.weights[k]

    def margin(self, gaps, scale_of):
        """Record the decision margins ``gaps`` of a tie-sensitive op (PyTorch only)."""
        gaps = gaps.detach().abs().reshape(-1)
        scale = float(scale_of.detach().abs().max()) if scale_of.numel() else 0.0
        nonzero = gaps[gaps > 0]
        if nonzero.numel():
            self.margins.append((float(nonzero.min()), scale))

    def near_tie(self, near=NEAR_TIE):
        return any(m < near * max(s, 1e-300) for m, s in self.margins)


def _variable(b, shape, scale=0.5):
    """A weight: in float32 graphs its float32 value, which PyTorch reads in float64."""
    value = b.weight(shape, scale)
    if b.dtype == "float32":
        value = value.astype(np.float32)
    if b.framework == "gd":
        v = gd.variable(value, name=f"w{b.count - 1}")
        b.params.append(v)
        return v
    t = torch.tensor(value.astype(np.float64), requires_grad=True)
    b.params.append(t)
    return t


# ----------------------------------------------------------------------------- drawing helpers
def _is4(s):
    return len(s) == 3 and all(d >= 1 for d in s)


def _window_attrs(draw, s, max_size=3, max_stride=3, pad_limit=lambda k: k // 2):
    """Size, stride, padding pairs for a window over (H, W) = s[1:] that fits."""
    size, stride, pad = [], [], []
    for n in s[1:]:
        k = draw(st.integers(1, max_size))
        p = draw(st.integers(0, pad_limit(k)))
        if k > n + 2 * p:
            k = n + 2 * p
            if k < 1:
                return None
            p = min(p, pad_limit(k))
        size.append(k)
        stride.append(draw(st.integers(1, max_stride)))
        pad.append(p)
    return tuple(size), tuple(stride), tuple(pad)


def _no_extra(draw, shapes, pool):
    return (), {}


# ----------------------------------------------------------------------------- convolution, pooling, LRN
def conv_pads(p, in_size):
    """A conv2d spec's ``padding`` (an int, ``(ph, pw)``, ``((top, bottom), (left,
    right))``, ``"valid"`` or ``"same"``) as ``((top, bottom), (left, right))``."""
    padding, dilation = p["padding"], p.get("dilation", (1, 1))
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        return tuple(same_pads(n, k, s, d) for n, k, s, d in zip(in_size, p["size"], p["stride"], dilation))
    if isinstance(padding, int):
        padding = (padding, padding)
    return four(padding)


def _conv_draw(draw, shapes, pool):
    """Groups 1-3, kernel 1-3, stride 1-2, dilation 1-2 (a third of the time);
    padding an int, a pair, ``((top, bottom), (left, right))``, "valid" or "same"."""
    C, H, W = shapes[0]
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if C % g == 0]))
    out_channels = groups * draw(st.integers(1, 3 if groups == 1 else 2))
    size = [draw(st.integers(1, 3)) for _ in range(2)]
    stride = tuple(draw(st.integers(1, 2)) for _ in range(2))
    dilation = [draw(st.sampled_from([1, 1, 2])) for _ in range(2)]
    form = draw(st.sampled_from(["pair", "pair", "int", "nested", "valid", "same"]))
    if form == "int":
        padding = draw(st.integers(0, 1))
    elif form == "pair":
        padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    elif form == "nested":
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    else:
        padding = form
    params = {"out": out_channels, "size": tuple(size), "stride": stride, "padding": padding, "groups": groups,
              "bias": draw(st.booleans())}
    for i, n in enumerate((H, W)):  # a (dilated) kernel larger than the padded input: shrink it
        begin, end = conv_pads(dict(params, dilation=(1, 1)), (H, W))[i]
        if (size[i] - 1) * dilation[i] + 1 > n + begin + end:
            dilation[i], size[i] = 1, min(size[i], n + begin + end)
    params["size"] = tuple(size)
    if dilation != [1, 1]:
        params["dilation"] = tuple(dilation)
    return (), params


def _conv_shape(shapes, p):
    C, H, W = shapes[0]
    return (p["out"],) + tuple(conv_out_size(n, k, s, b, e, d) for n, k, s, (b, e), d in zip(
        (H, W), p["size"], p["stride"], conv_pads(p, (H, W)), p.get("dilation", (1, 1))))


def _conv_weights(b, args, p):
    C = args[0].shape[1]
    w = _variable(b, (p["out"], C // p["groups"]) + tuple(p["size"]), scale=1.0 / math.sqrt(C * 3))
    return w, (_variable(b, (p["out"],)) if p["bias"] else None)


def _conv_gd(b, args, p):
    w, bias = _conv_weights(b, args, p)
    return gd.conv2d(args[0], w, bias, stride=p["stride"], padding=p["padding"], groups=p["groups"],
                     dilation=p.get("dilation", 1))


def _conv_torch(b, args, p):
    """PyTorch's own ``padding="same"`` with stride 1, else the input padded
    explicitly: ``F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride, 0, dilation, groups)``."""
    x = args[0]
    w, bias = _conv_weights(b, args, p)
    dilation = p.get("dilation", (1, 1))
    if p["padding"] == "same" and tuple(p["stride"]) == (1, 1):
        with warnings.catch_warnings():  # an even dilated kernel: PyTorch notes that it pads a copy
            warnings.simplefilter("ignore", UserWarning)
            return F.conv2d(x, w, bias, 1, "same", dilation, p["groups"])
    (t, bt), (left, r) = conv_pads(p, tuple(x.shape[2:]))
    return F.conv2d(F.pad(x, (left, r, t, bt)), w, bias, p["stride"], 0, dilation, p["groups"])


def _pool_draw(draw, shapes, pool):
    attrs = _window_attrs(draw, shapes[0])
    if attrs is None:
        return None
    size, stride, pad = attrs
    return (), {"size": size, "stride": stride, "padding": pad, "count_include_pad": draw(st.booleans())}


def _pool_shape(shapes, p):
    C, H, W = shapes[0]
    return (C,) + tuple(conv_out_size(n, k, s, q, q) for n, k, s, q in zip((H, W), p["size"], p["stride"], p["padding"]))


def _max_pool_draw(draw, shapes, pool):
    """Size 1-3, stride 1-3, dilation 1-2, ceil_mode; padding symmetric (up to
    k//2, PyTorch's limit) or, a third of the time, each side anything below the
    dilated window (at most 2)."""
    size, stride, dilation, pads = [], [], [], []
    asymmetric = not draw(st.integers(0, 2))
    for n in shapes[0][1:]:
        k, s, d = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.sampled_from([1, 1, 2]))
        if d * (k - 1) + 1 > n:
            k, d = min(k, n), 1
        extent = d * (k - 1) + 1
        if asymmetric:
            pads.append((draw(st.integers(0, min(2, extent - 1))), draw(st.integers(0, min(2, extent - 1)))))
        else:
            q = draw(st.integers(0, k // 2))
            pads.append((q, q))
        size.append(k)
        stride.append(s)
        dilation.append(d)
    params = {"size": tuple(size), "stride": tuple(stride), "ceil_mode": draw(st.booleans())}
    params["padding"] = tuple(pads) if asymmetric else tuple(q for q, _ in pads)
    if dilation != [1, 1]:
        params["dilation"] = tuple(dilation)
    if any(has_empty_window(n, *a, ceil_mode=params["ceil_mode"])
           for n, a in zip(shapes[0][1:], _pool_axes(params))):
        return None
    return (), params


def _pool_axes(p):
    """Per axis ``(k, s, begin, end, d)`` of a max_pool2d spec (old specs: symmetric, no dilation)."""
    pads = [(q, q) if isinstance(q, int) else tuple(q) for q in p["padding"]]
    return [(k, s, b, e, d) for k, s, (b, e), d in zip(p["size"], p["stride"], pads, p.get("dilation", (1, 1)))]


def _max_pool_shape(shapes, p):
    return (shapes[0][0],) + tuple(pool_out_size(n, *a, ceil_mode=p.get("ceil_mode", False))
                                   for n, a in zip(shapes[0][1:], _pool_axes(p)))


def _max_pool_gd(b, args, p):
    return gd.max_pool2d(args[0], p["size"], p["stride"], p["padding"], p.get("dilation", 1),
                         p.get("ceil_mode", False))


def _max_pool_torch(b, args, p):
    """PyTorch's own pooling where it takes the configuration (symmetric padding up
    to k//2), else the input padded with -inf to exactly the windows' reach and
    pooled without padding; the windows' margins from the padded input."""
    x = args[0]
    axes = _pool_axes(p)
    ceil_mode = p.get("ceil_mode", False)
    (kh, sh, pt, _, dh), (kw, sw, pl, _, dw) = axes
    out = [pool_out_size(n, *a, ceil_mode=ceil_mode) for n, a in zip(x.shape[2:], axes)]
    # the padded input the windows read: (out - 1)*s + extent rows (a negative pad crops)
    ends = [(o - 1) * s + d * (k - 1) + 1 - n - begin for o, n, (k, s, begin, _, d) in zip(out, x.shape[2:], axes)]
    xp = F.pad(x, (pl, ends[1], pt, ends[0]), value=-math.inf)
    if all(b_ == e and b_ <= k // 2 for k, _, b_, e, _ in axes):
        y = F.max_pool2d(x, (kh, kw), (sh, sw), (pt, pl), (dh, dw), ceil_mode)
    else:
        y = F.max_pool2d(xp, (kh, kw), (sh, sw), 0, (dh, dw))
    # margins: the best minus the second best of each window (padding is -inf)
    windows = xp.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    windows = windows.reshape(*y.shape, kh * kw)
    if kh * kw > 1:
        top = windows.topk(2, dim=-1).values
        gap = top[..., 0] - top[..., 1]
        b.margin(gap[torch.isfinite(gap)], x)
    return y


def _lrn_draw(draw, shapes, pool):
    return (), {"size": draw(st.integers(1, 5)), "alpha": draw(st.sampled_from([0.05, 0.3, 1.0])),
                "beta": draw(st.sampled_from([0.5, 0.75, 1.0])), "k": draw(st.sampled_from([1.0, 2.0]))}


def _lrn_torch(b, args, p):
    # graphdiff's alpha is the paper's (not divided by size); PyTorch divides by size
    return F.local_response_norm(args[0], p["size"], alpha=p["alpha"] * p["size"], beta=p["beta"], k=p["k"])


def _lrn_within_torch(b, args, p):
    """``x / (k + alpha * sum_{size x size neighbourhood} x^2) ** beta``, zeros outside;
    an even window reaches one further up/left."""
    x, n = args[0], p["size"]
    lo, hi = n // 2, (n - 1) // 2
    sq = F.pad(x * x, (lo, hi, lo, hi))
    s = F.avg_pool2d(sq, n, stride=1) * (n * n)
    return x / (p["k"] + p["alpha"] * s) ** p["beta"]


# ----------------------------------------------------------------------------- elementwise
UNARY = {
    "relu": (gd.relu, torch.relu),
    "tanh": (gd.tanh, torch.tanh),
    "sigmoid": (gd.sigmoid, torch.sigmoid),
    "neg": (gd.neg, torch.neg),
    "abs": (gd.abs_, torch.abs),
    "exp": (lambda x: gd.exp(gd.tanh(x) * 2.0), lambda x: torch.exp(torch.tanh(x) * 2.0)),
    "sqrt": (lambda x: gd.sqrt(x * x + 1.0), lambda x: torch.sqrt(x * x + 1.0)),
    "log": (lambda x: gd.log(x * x + 0.5), lambda x: torch.log(x * x + 0.5)),
}


def _unary(name):
    fg, ft = UNARY[name]

    def torch_form(b, args, p):
        if name in ("relu", "abs"):
            b.margin(args[0], args[0])  # the switch at 0
        return ft(args[0])

    return OpGen(lambda s: True, _no_extra, lambda shapes, p: shapes[0], lambda b, args, p: fg(args[0]), torch_form)


BINARY = {
    "add": (lambda a, c: a + c, lambda a, c: a + c),
    "sub": (lambda a, c: a - c, lambda a, c: a - c),
    "mul": (lambda a, c: a * c, lambda a, c: a * c),
    "div": (lambda a, c: a / (c * c + 0.5), lambda a, c: a / (c * c + 0.5)),
    # graphdiff's tie rule (the gradient goes to a): PyTorch's maximum would split it
    "maximum": (gd.maximum, lambda a, c: torch.where(a >= c, a, c)),
    "minimum": (gd.minimum, lambda a, c: torch.where(a <= c, a, c)),
    "where": (lambda a, c: gd.where(a > c, a * 2.0, c), lambda a, c: torch.where(a > c, a * 2.0, c)),
    "pow": (lambda a, c: (a * a + 0.5) ** gd.tanh(c), lambda a, c: (a * a + 0.5) ** torch.tanh(c)),
}


def _broadcast_partner(draw, s, pool):
    """The second operand: another value of the same shape (a diamond, or the same
    value: fan-out), or a weight that broadcasts (some dims 1, fewer leading dims)."""
    same = [k for k, t in enumerate(pool) if t == s]
    if same and draw(st.booleans()):
        return (draw(st.sampled_from(same)),), {}
    dims = [d if draw(st.booleans()) else 1 for d in s]
    lead = draw(st.integers(0, len(dims)))
    return (), {"weight": tuple(dims[lead:])}


def _binary(name):
    fg, ft = BINARY[name]

    def draw_(draw, shapes, pool):
        return _broadcast_partner(draw, shapes[0], pool)

    def other(b, args, p):
        return args[1] if len(args) > 1 else _variable(b, p["weight"])

    def torch_form(b, args, p):
        a, c = args[0], other(b, args, p)
        if name in ("maximum", "minimum", "where"):
            b.margin(a - c, torch.cat([a.reshape(-1), c.reshape(-1)]))
        return ft(a, c)

    return OpGen(lambda s: True, draw_, lambda shapes, p: shapes[0], lambda b, args, p: fg(args[0], other(b, args, p)),
                 torch_form)


# ----------------------------------------------------------------------------- linear algebra, shapes
def _matmul_draw(draw, shapes, pool):
    """A weight matrix ``(K, out)`` on the right, or a vector: ``x @ v`` (``(K,)``,
    the last axis contracted away) or ``v @ x`` (the second-to-last axis)."""
    forms = ["matrix", "matrix", "vector"] + (["left"] if len(shapes[0]) >= 2 else [])
    form = draw(st.sampled_from(forms))
    return (), ({"out": draw(st.integers(1, 5))} if form == "matrix" else {"vector": form})


def _matmul_shape(shapes, p):
    s = shapes[0]
    form = p.get("vector")
    return s[:-1] + (p["out"],) if form is None else s[:-1] if form == "vector" else s[:-2] + s[-1:]


def _matmul_weight(b, x, p):
    form = p.get("vector")
    if form is None:
        return _variable(b, (x.shape[-1], p["out"]), scale=0.7)
    return _variable(b, (x.shape[-1] if form == "vector" else x.shape[-2],), scale=0.7)


def _matmul_gd(b, args, p):
    w = _matmul_weight(b, args[0], p)
    return gd.matmul(w, args[0]) if p.get("vector") == "left" else gd.matmul(args[0], w)


def _matmul_torch(b, args, p):
    w = _matmul_weight(b, args[0], p)
    return torch.matmul(w, args[0]) if p.get("vector") == "left" else torch.matmul(args[0], w)


def _factorizations(n):
    out = [(n,), (n, 1, 1), (1, 1, n)]
    for c in range(1, n + 1):
        if n % c == 0:
            out.append((c, n // c))
            for h in range(1, n // c + 1):
                if (n // c) % h == 0:
                    out.append((c, h, n // c // h))
    return sorted(set(out))


def _reshape_draw(draw, shapes, pool):
    n = math.prod(shapes[0])
    if n == 0 or n > 400:
        return None
    return (), {"to": draw(st.sampled_from(_factorizations(n)))}


def _transpose_draw(draw, shapes, pool):
    perm = draw(st.permutations(range(1, len(shapes[0]) + 1)))
    return (), {"axes": (0,) + tuple(perm)}


def _pad_draw(draw, shapes, pool):
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in shapes[0])
    return (), {"pads": pads, "value": draw(st.sampled_from([0.0, 0.5, -1.0]))}


def _pad_torch(b, args, p):
    flat = [q for lo_hi in reversed(p["pads"]) for q in lo_hi]
    return F.pad(args[0], flat, value=p["value"])


def _concat_draw(draw, shapes, pool):
    s = shapes[0]
    axis = draw(st.integers(1, len(s)))
    fits = [k for k, t in enumerate(pool) if len(t) == len(s)
            and all(a == c for i, (a, c) in enumerate(zip(t, s)) if i != axis - 1)]
    return (draw(st.sampled_from(fits)),), {"axis": axis}


def _concat_shape(shapes, p):
    a, c = shapes
    i = p["axis"] - 1
    return a[:i] + (a[i] + c[i],) + a[i + 1:]


def _slice_draw(draw, shapes, pool):
    key = []
    for n in shapes[0]:
        start = draw(st.integers(0, n - 1))
        stop = draw(st.integers(start + 1, n))
        key.append((start, stop, draw(st.integers(1, 2))))
    return (), {"key": tuple(key)}


def _slice_key(p):
    return (slice(None),) + tuple(slice(*k) for k in p["key"])


def _slice_shape(shapes, p):
    return tuple(len(range(*k)) for k in p["key"])


def _split_draw(draw, shapes, pool):
    s = shapes[0]
    axes = [i for i, n in enumerate(s) if n >= 2]
    if not axes:
        return None
    i = draw(st.sampled_from(axes))
    return (), {"axis": i + 1, "at": draw(st.integers(1, s[i] - 1))}


def _split_shape(shapes, p):
    s, i = shapes[0], p["axis"] - 1
    return [s[:i] + (p["at"],) + s[i + 1:], s[:i] + (s[i] - p["at"],) + s[i + 1:]]


def _split_gd(b, args, p):
    return gd.split(args[0], [p["at"]], axis=p["axis"])


def _split_torch(b, args, p):
    x = args[0]
    return list(torch.split(x, [p["at"], x.shape[p["axis"]] - p["at"]], dim=p["axis"]))


def _index_draw(draw, shapes, pool):
    s = shapes[0]
    axis = draw(st.integers(1, len(s)))
    return (), {"axis": axis, "index": draw(st.integers(-s[axis - 1], s[axis - 1] - 1))}


def _index_key(p):
    return (slice(None),) * p["axis"] + (p["index"],)


def _squeeze_draw(draw, shapes, pool):
    ones = [i + 1 for i, d in enumerate(shapes[0]) if d == 1]
    if not ones:
        return None
    return (), {"axes": tuple(sorted(draw(st.lists(st.sampled_from(ones), min_size=1, unique=True))))}


def _reduce_draw(draw, shapes, pool):
    n = len(shapes[0])
    axes = draw(st.lists(st.integers(1, n), min_size=1, max_size=n, unique=True))
    return (), {"axes": tuple(sorted(axes)), "keepdims": draw(st.booleans())}


def _reduce_shape(shapes, p):
    s = shapes[0]
    if p["keepdims"]:
        return tuple(1 if i + 1 in p["axes"] else d for i, d in enumerate(s))
    return tuple(d for i, d in enumerate(s) if i + 1 not in p["axes"])


def _max_torch(b, args, p):
    x, axes = args[0], p["axes"]
    y = torch.amax(x, dim=axes, keepdim=True)  # splits the gradient between ties, as graphdiff's max
    rest = [d for d in range(x.ndim) if d not in axes]
    moved = x.permute(*rest, *axes).reshape(*[x.shape[d] for d in rest], -1)
    if moved.shape[-1] > 1:
        top = moved.topk(2, dim=-1).values
        b.margin(top[..., 0] - top[..., 1], x)
    return y if p["keepdims"] else y.squeeze(axes)


def _softmax_draw(draw, shapes, pool):
    return (), {"axis": draw(st.integers(1, len(shapes[0]))), "log": draw(st.booleans())}


GENERATORS = {
    "conv2d": OpGen(_is4, _conv_draw, lambda shapes, p: _conv_shape(shapes, p), _conv_gd, _conv_torch),
    "max_pool2d": OpGen(_is4, _max_pool_draw, _max_pool_shape, _max_pool_gd, _max_pool_torch),
    "avg_pool2d": OpGen(_is4, _pool_draw, lambda shapes, p: _pool_shape(shapes, p),
                        lambda b, args, p: gd.avg_pool2d(args[0], p["size"], p["stride"], p["padding"],
                                                         p["count_include_pad"]),
                        lambda b, args, p: F.avg_pool2d(args[0], p["size"], p["stride"], p["padding"],
                                                        count_include_pad=p["count_include_pad"])),
    "adaptive_avg_pool2d": OpGen(
        _is4, lambda draw, shapes, pool: ((), {"out": (draw(st.integers(1, shapes[0][1])),
                                                       draw(st.integers(1, shapes[0][2])))}),
        lambda shapes, p: (shapes[0][0],) + tuple(p["out"]),
        lambda b, args, p: gd.adaptive_avg_pool2d(args[0], p["out"]),
        lambda b, args, p: F.adaptive_avg_pool2d(args[0], p["out"])),
    "lrn": OpGen(lambda s: len(s) >= 2 and min(s) >= 1, _lrn_draw, lambda shapes, p: shapes[0],
                 lambda b, args, p: gd.lrn(args[0], p["size"], p["alpha"], p["beta"], p["k"]), _lrn_torch),
    "lrn_within": OpGen(_is4, _lrn_draw, lambda shapes, p: shapes[0],
                        lambda b, args, p: gd.lrn_within(args[0], p["size"], p["alpha"], p["beta"], p["k"]),
                        _lrn_within_torch),
    "normalize_cross_map": OpGen(  # on a positive input, its domain
        lambda s: len(s) >= 1, _no_extra, lambda shapes, p: shapes[0],
        lambda b, args, p: gd.normalize_cross_map(args[0] * args[0] + 0.5),
        lambda b, args, p: (lambda q: q / q.sum(dim=1, keepdim=True))(args[0] * args[0] + 0.5)),
    **{f"unary_{n}": _unary(n) for n in UNARY},
    **{f"binary_{n}": _binary(n) for n in BINARY},
    "matmul": OpGen(lambda s: len(s) >= 1 and min(s) >= 1, _matmul_draw, _matmul_shape, _matmul_gd,
                    _matmul_torch),
    "reshape": OpGen(lambda s: True, _reshape_draw, lambda shapes, p: p["to"],
                     lambda b, args, p: gd.reshape(args[0], (-1,) + p["to"]),
                     lambda b, args, p: args[0].reshape((-1,) + p["to"])),
    "transpose": OpGen(lambda s: len(s) >= 2, _transpose_draw,
                       lambda shapes, p: tuple(shapes[0][a - 1] for a in p["axes"][1:]),
                       lambda b, args, p: gd.transpose(args[0], p["axes"]),
                       lambda b, args, p: args[0].permute(*p["axes"])),
    "pad": OpGen(lambda s: len(s) >= 1, _pad_draw,
                 lambda shapes, p: tuple(d + lo + hi for d, (lo, hi) in zip(shapes[0], p["pads"])),
                 lambda b, args, p: gd.pad(args[0], ((0, 0),) + p["pads"], p["value"]), _pad_torch),
    "concatenate": OpGen(lambda s: len(s) >= 1, _concat_draw, _concat_shape,
                         lambda b, args, p: gd.concatenate(list(args), axis=p["axis"]),
                         lambda b, args, p: torch.cat(list(args), dim=p["axis"])),
    "getitem": OpGen(lambda s: len(s) >= 1 and min(s) >= 1, _slice_draw, _slice_shape,
                     lambda b, args, p: args[0][_slice_key(p)], lambda b, args, p: args[0][_slice_key(p)]),
    "getitem_index": OpGen(lambda s: len(s) >= 2, _index_draw,
                           lambda shapes, p: tuple(d for i, d in enumerate(shapes[0]) if i != p["axis"] - 1),
                           lambda b, args, p: args[0][_index_key(p)], lambda b, args, p: args[0][_index_key(p)]),
    "expand_dims": OpGen(lambda s: len(s) <= 3, lambda draw, shapes, pool: ((), {"axis": draw(st.integers(
                             1, len(shapes[0]) + 1))}),
                         lambda shapes, p: shapes[0][:p["axis"] - 1] + (1,) + shapes[0][p["axis"] - 1:],
                         lambda b, args, p: gd.expand_dims(args[0], p["axis"]),
                         lambda b, args, p: args[0].unsqueeze(p["axis"])),
    "squeeze": OpGen(lambda s: 1 in s, _squeeze_draw,
                     lambda shapes, p: tuple(d for i, d in enumerate(shapes[0]) if i + 1 not in p["axes"]),
                     lambda b, args, p: gd.squeeze(args[0], p["axes"]),
                     lambda b, args, p: args[0].squeeze(p["axes"])),
    "split": OpGen(lambda s: len(s) >= 1, _split_draw, _split_shape, _split_gd, _split_torch, outputs=2),
    "sum": OpGen(lambda s: len(s) >= 1, _reduce_draw, _reduce_shape,
                 lambda b, args, p: gd.sum(args[0], p["axes"], p["keepdims"]),
                 lambda b, args, p: args[0].sum(dim=p["axes"], keepdim=p["keepdims"])),
    "mean": OpGen(lambda s: len(s) >= 1, _reduce_draw, _reduce_shape,
                  lambda b, args, p: gd.mean(args[0], p["axes"], p["keepdims"]),
                  lambda b, args, p: args[0].mean(dim=p["axes"], keepdim=p["keepdims"])),
    "max": OpGen(lambda s: len(s) >= 1 and min(s) >= 1, _reduce_draw, _reduce_shape,
                 lambda b, args, p: gd.max(args[0], p["axes"], p["keepdims"]), _max_torch),
    "softmax": OpGen(lambda s: len(s) >= 1, _softmax_draw, lambda shapes, p: shapes[0],
                     lambda b, args, p: (gd.log_softmax if p["log"] else gd.softmax)(args[0], axis=p["axis"]),
                     lambda b, args, p: (F.log_softmax if p["log"] else F.softmax)(args[0], dim=p["axis"])),
}

# drawn first a third of the time where they apply (else the many elementwise ops
# would crowd them out)
CNN_OPS = {"conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "lrn", "lrn_within"}

MAX_ELEMENTS = 600  # per example, without the batch: keeps an example to milliseconds


@st.composite
def specs(draw, min_steps=1, max_steps=12, ops=None):
    """A random valid graph spec (see the module's docstring)."""
    names = sorted(GENERATORS) if ops is None else list(ops)
    if draw(st.integers(0, 3)):  # mostly images: the convolution, pooling and LRN ops apply
        shape = (draw(st.integers(1, 4)), draw(st.integers(3, 7)), draw(st.integers(3, 7)))
    else:
        shape = (draw(st.integers(1, 8)),)
    pool, steps = [shape], []
    for _ in range(draw(st.integers(min_steps, max_steps))):
        # mostly the newest values (deep chains), sometimes older ones (fan-out, diamonds)
        k = len(pool) - 1 - draw(st.integers(0, len(pool) - 1)) if draw(st.booleans()) else len(pool) - 1
        fits = [n for n in names if GENERATORS[n].applies(pool[k])] or ["expand_dims" if len(pool[k]) <= 3
                                                                         else "unary_tanh"]
        cnn = [n for n in fits if n in CNN_OPS] if _is4(pool[k]) else []  # LRN also applies to (C, L) etc.
        name = draw(st.sampled_from(cnn if cnn and not draw(st.integers(0, 2)) else fits))
        gen = GENERATORS[name]
        drawn = gen.draw(draw, [pool[k]], pool)
        if drawn is None:
            continue
        extra, params = drawn
        args = (k,) + tuple(extra)
        out = gen.shape([pool[i] for i in args], params)
        outs = out if gen.outputs > 1 else [out]
        if any(math.prod(o) > MAX_ELEMENTS or min(o, default=1) < 1 for o in outs):
            continue
        steps.append((name, args, params))
        pool.extend(outs)
    last = len(pool) - 1
    others = draw(st.lists(st.integers(0, last), max_size=2, unique=True))
    return {"input": shape, "steps": steps, "outputs": tuple(dict.fromkeys([last] + others)),
            "seed": draw(st.integers(0, 2 ** 16))}


def build(spec, framework, x, rng, weights, dtype="float64"):
    """The spec's values built from ``x`` (a graphdiff placeholder or a PyTorch
    tensor); returns ``(outputs, Build)`` (the Build lists the weights as
    ``params`` and, in PyTorch, the decision margins). ``dtype`` is the graphdiff
    graph's: with ``"float32"`` the weights are rounded to float32 in both builds."""
    b = Build(framework, rng, weights, dtype)
    b.params = []
    values = [x]
    for name, args, params in spec["steps"]:
        gen = GENERATORS[name]
        made = getattr(gen, framework)(b, [values[i] for i in args], params)
        values.extend(made if gen.outputs > 1 else [made])
    return [values[i] for i in spec["outputs"]], b


def shapes_of(spec):
    """Every value's shape (without the batch), in the order of the values."""
    pool = [tuple(spec["input"])]
    for name, args, params in spec["steps"]:
        gen = GENERATORS[name]
        out = gen.shape([pool[i] for i in args], params)
        pool.extend(out if gen.outputs > 1 else [out])
    return pool


def configurations(spec):
    """The configurations of the peers' op tests that the spec's steps use (names
    such as ``"conv2d padding same"``, ``"lrn 5-D"``): for the test that the
    generator draws each of them."""
    pool, found = shapes_of(spec), set()
    for name, args, p in spec["steps"]:
        if name == "conv2d":
            form = p["padding"]
            form = form if isinstance(form, str) else "int" if isinstance(form, int) else \
                "pair" if all(isinstance(q, int) for q in form) else "nested"
            found.add(f"conv2d padding {form}")
            if p.get("dilation", (1, 1)) != (1, 1):
                found.add("conv2d dilation")
        elif name == "max_pool2d":
            axes = _pool_axes(p)
            found.update(what for what, yes in [
                ("max_pool2d dilation", any(d > 1 for *_, d in axes)),
                ("max_pool2d ceil_mode", p.get("ceil_mode", False)),
                ("max_pool2d asymmetric padding", any(b != e for _, _, b, e, _ in axes)),
                ("max_pool2d padding beyond k//2", any(max(b, e) > k // 2 for k, _, b, e, _ in axes))] if yes)
        elif name == "lrn":
            found.add(f"lrn {len(pool[args[0]]) + 1}-D")
        elif name == "matmul" and p.get("vector"):
            found.add(f"matmul {p['vector']}")
    return found
