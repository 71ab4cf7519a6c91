"""models.stream: the paper's augmentation against a naive reference, order and
determinism (worker counts, ranks, mid-epoch resume), errors from workers, the
bounded queue, ten crops and top-k errors."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from models import pack as mp
from models import stream as ms
from models.data import DataError
from models.imagenet_tree import make_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, CROP = 40, 32


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("tree")), classes=20, train_per_class=3,
                     val_per_class=1, around=(80, 60), seed=11)


@pytest.fixture(scope="module")
def pk(tree, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("packs") / "p")
    mp.pack(tree.root, out, size=SIZE, workers=1, progress=False, chunk=16)
    return mp.open_pack(out)


def collect(stream):
    with stream:
        return [(x.copy(), y.copy()) for x, y in stream]


def naive_batch(source, idx, seed, epoch, aug, train=True):
    """The augmentation written out per pixel from its definition, in float64."""
    size, c = source.size, aug.crop
    r = ms.image_randoms(seed, epoch, idx, size - c + 1)
    mean = np.asarray(source.mean_image, np.float64)
    if aug.mean == "channel":
        mean = np.broadcast_to(mean.mean(axis=(0, 1)), mean.shape)
    elif aug.mean is None:
        mean = np.zeros_like(mean)
    lam = np.asarray(source.eigval, np.float64) * aug.scale ** 2
    P = np.asarray(source.eigvec, np.float64)
    out = np.zeros((len(idx), 3, c, c))
    for j, i in enumerate(idx):
        img = np.asarray(source.load(int(i)), np.float64)
        if train:
            t, l, flip = r["top"][j], r["left"][j], aug.flip and r["flip"][j]
        else:
            t = l = (size - c) // 2
            flip = False
        shift = np.zeros(3)
        if train and aug.pca_lighting:
            a = aug.pca_std * r["normal"][j]
            # [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T
            shift = sum(P[:, k] * (a[k] * lam[k]) for k in range(3))
        for ch in range(3):
            for u in range(c):
                for v in range(c):
                    src_v = l + (c - 1 - v) if flip else l + v
                    out[j, ch, u, v] = ((img[t + u, src_v, ch] - mean[t + u, src_v, ch]) * aug.scale
                                        + shift[ch])
    return out, np.asarray(source.labels)[idx]


@pytest.mark.parametrize("aug", [ms.Augment(crop=CROP),
                                 ms.Augment(crop=CROP, mean="channel", flip=False),
                                 ms.Augment(crop=24, mean=None, pca_lighting=False, pca_std=0.5),
                                 ms.Augment(crop=CROP, pca_std=3.0, scale=1.0)])
def test_training_batches_follow_the_formulas(pk, aug):
    tr = pk.split("train")
    s = ms.BatchStream(tr, 5, seed=4, epoch=2, augment=aug, workers=1)
    batches = collect(s)
    assert len(batches) == 60 // 5
    for b in (0, 7):
        x, y = batches[b]
        assert x.dtype == np.float32 and x.shape == (5, 3, aug.crop, aug.crop) and y.dtype == np.int64
        want, labels = naive_batch(tr, s.indices(b), 4, 2, aug)
        np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5 * max(1, aug.scale * 255))
        assert (y == labels).all()


def test_evaluation_is_the_centre_crop_in_order(pk):
    va = pk.split("val")
    aug = ms.Augment(crop=CROP)
    s = ms.BatchStream(va, 6, seed=0, epoch=0, augment=aug, train=False, drop_last=False)
    batches = collect(s)
    assert [len(y) for _, y in batches] == [6, 6, 6, 2]
    assert (np.concatenate([s.indices(b) for b in range(4)]) == np.arange(20)).all()
    x = np.concatenate([b[0] for b in batches])
    want, labels = naive_batch(va, np.arange(20), 0, 0, aug, train=False)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-6)
    assert (np.concatenate([b[1] for b in batches]) == labels).all()


def test_random_draws_cover_their_ranges():
    r = ms.image_randoms(7, 3, np.arange(20000), 9)
    assert set(np.unique(r["top"])) == set(range(9)) == set(np.unique(r["left"]))
    assert abs(r["flip"].mean() - 0.5) < 0.02
    z = r["normal"]
    assert np.abs(z.mean(axis=0)).max() < 0.03 and np.abs(z.std(axis=0) - 1).max() < 0.03
    assert abs(np.corrcoef(z, rowvar=False)[0, 1]) < 0.03
    assert np.abs(np.mean(z ** 4, axis=0) - 3).max() < 0.2  # normal kurtosis
    other = ms.image_randoms(7, 4, np.arange(20000), 9)  # another epoch: other draws
    assert (other["top"] != r["top"]).mean() > 0.8


def test_same_seed_same_batches_whatever_the_workers(pk):
    tr = pk.split("train")
    runs = [collect(ms.BatchStream(tr, 8, seed=5, epoch=1, augment=ms.Augment(crop=CROP),
                                   workers=w, prefetch=p)) for w, p in ((0, 1), (1, 2), (3, 5))]
    for other in runs[1:]:
        assert len(other) == len(runs[0]) == 7
        for (xa, ya), (xb, yb) in zip(runs[0], other):
            assert (xa == xb).all() and (ya == yb).all()
    epoch2 = collect(ms.BatchStream(tr, 8, seed=5, epoch=2, augment=ms.Augment(crop=CROP)))
    assert not (epoch2[0][1] == runs[0][0][1]).all()
    s = ms.BatchStream(tr, 8, seed=5, epoch=1, augment=ms.Augment(crop=CROP))
    seen = np.concatenate([s.indices(b) for b in range(7)])
    assert len(set(seen)) == 56  # a permutation: no image twice in an epoch


def test_ranks_take_their_share_of_each_global_batch(pk):
    tr = pk.split("train")
    aug = ms.Augment(crop=CROP)
    whole = ms.BatchStream(tr, 12, seed=9, epoch=0, augment=aug, workers=0)
    one = collect(whole)
    shares = [collect(ms.BatchStream(tr, 4, seed=9, epoch=0, augment=aug, rank=r, world_size=3))
              for r in range(3)]
    assert all(len(s) == len(one) == 5 for s in shares)
    for b, (x, y) in enumerate(one):
        assert (np.concatenate([s[b][0] for s in shares]) == x).all()
        assert (np.concatenate([s[b][1] for s in shares]) == y).all()
    with pytest.raises(ValueError, match="rank 3"):
        ms.BatchStream(tr, 4, seed=9, epoch=0, augment=aug, rank=3, world_size=3)


def test_start_batch_resumes_the_same_epoch_exactly(pk):
    tr = pk.split("train")
    full = collect(ms.BatchStream(tr, 7, seed=2, epoch=6, augment=ms.Augment(crop=CROP)))
    tail = collect(ms.BatchStream(tr, 7, seed=2, epoch=6, augment=ms.Augment(crop=CROP),
                                  start_batch=5))
    assert len(tail) == len(full) - 5 == 3
    for (xa, ya), (xb, yb) in zip(full[5:], tail):
        assert (xa == xb).all() and (ya == yb).all()
    with pytest.raises(ValueError, match="start_batch"):
        ms.BatchStream(tr, 7, seed=2, epoch=6, augment=ms.Augment(crop=CROP), start_batch=9)


def test_folder_source_streams_what_the_pack_holds(tree, pk):
    fs = ms.folder_source(tree.root, "train", size=SIZE, stats_sample=1000)
    tr = pk.split("train")
    assert fs.class_names == pk.class_names and (fs.labels == tr.labels).all()
    np.testing.assert_allclose(fs.mean_image, pk.mean_image, rtol=1e-6)
    np.testing.assert_allclose(fs.eigval, pk.eigval, rtol=1e-5)
    aug = ms.Augment(crop=CROP)
    a = collect(ms.BatchStream(fs, 10, seed=1, epoch=0, augment=aug, workers=2))
    b = collect(ms.BatchStream(tr, 10, seed=1, epoch=0, augment=aug))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_allclose(xa, xb, atol=1e-5)
        assert (ya == yb).all()
    small = ms.folder_source(tree.root, "val", size=SIZE, stats_sample=6)
    assert len(small) == 20 and np.abs(small.mean_image - pk.mean_image).mean() < 40


def test_folder_of_class_folders_is_split_when_asked(tmp_path):
    tree = make_tree(str(tmp_path / "t"), classes=3, train_per_class=5, val_per_class=0,
                     around=(48, 36), quirks=False, layout="folders")
    flat = str(tmp_path / "t" / "train")  # class folders at the top, no train/ in it
    with pytest.raises(DataError, match="no train/"):
        ms.folder_source(flat, "train", size=32)
    tr = ms.folder_source(flat, "train", size=32, val_fraction=0.4, seed=1)
    va = ms.folder_source(flat, "val", size=32, val_fraction=0.4, seed=1)
    assert len(tr) == 9 and len(va) == 6 and not set(tr.paths) & set(va.paths)
    assert sorted(tr.paths + va.paths) == sorted(p for p, _ in tree.train)
    assert sorted(np.bincount(va.labels)) == [2, 2, 2]


def test_a_bad_file_in_a_worker_names_it(tmp_path):
    tree = make_tree(str(tmp_path / "t"), classes=3, train_per_class=4, val_per_class=1,
                     around=(64, 48), quirks=False, faults=["truncated"])
    fs = ms.folder_source(tree.root, "train", size=SIZE)
    with pytest.raises(DataError, match=tree.faults["truncated"]):
        fs.mean_image  # the statistics' sample reads it
    fs._stats = (np.zeros((SIZE, SIZE, 3), np.float32), np.ones(3), np.eye(3))
    with ms.BatchStream(fs, 4, seed=0, epoch=0, augment=ms.Augment(crop=CROP),
                        workers=2) as s:
        with pytest.raises(DataError, match=tree.faults["truncated"]):
            for _ in s:
                pass


class CountingSource:
    def __init__(self, inner):
        self.inner, self.loads = inner, 0
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def load(self, i):
        with self.lock:
            self.loads += 1
        return self.inner.load(i)


def test_prefetch_is_bounded_and_close_stops_workers(pk):
    src = CountingSource(pk.split("train"))
    s = ms.BatchStream(src, 4, seed=0, epoch=0, augment=ms.Augment(crop=CROP), workers=2,
                       prefetch=3)
    it = iter(s)
    next(it)
    time.sleep(0.3)  # time for runaway workers to read everything (15 batches)
    assert src.loads <= (1 + 3) * 4
    s.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("batch-stream")]
    with pytest.raises(RuntimeError, match="closed"):
        iter(s).__next__()


def test_an_abandoned_stream_does_not_hang_the_exit(pk):
    code = ("import sys; from models.pack import open_pack; from models.stream import *\n"
            f"s = BatchStream(open_pack({pk.path!r}).split('train'), 4, seed=0, epoch=0, "
            f"augment=Augment(crop={CROP}), workers=2, prefetch=2)\n"
            "x, y = next(iter(s)); print(x.shape)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"(4, 3, {CROP}, {CROP})"


def test_backend_upload_runs_on_each_batch(pk):
    calls = []

    def upload(x, y):
        calls.append(threading.current_thread().name)
        return ("device", x.shape), y

    got = collect_raw(ms.BatchStream(pk.split("val"), 5, seed=0, epoch=0, train=False,
                                     augment=ms.Augment(crop=CROP), backend_upload=upload))
    assert [g[0] for g in got] == [("device", (5, 3, CROP, CROP))] * 4
    assert len(calls) == 4 and all(c.startswith("batch-stream") for c in calls)


def collect_raw(stream):
    with stream:
        return list(stream)


def test_bad_arguments(pk):
    tr = pk.split("train")
    with pytest.raises(ValueError, match="crop 64"):
        ms.BatchStream(tr, 4, seed=0, epoch=0, augment=ms.Augment(crop=64))
    with pytest.raises(ValueError, match="batch_size"):
        ms.BatchStream(tr, 0, seed=0, epoch=0, augment=ms.Augment(crop=CROP))
    with pytest.raises(ValueError, match="mean"):
        ms.Augment(mean="pixel")


# -- evaluation ---------------------------------------------------------------


def test_ten_crops_match_a_naive_reference():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(2, 9, 11, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, size=(9, 11, 3)).astype(np.float32)
    c = 5
    got = ms.ten_crops(imgs, c, mean)
    assert got.shape == (10, 2, 3, c, c) and got.dtype == np.float32
    h, w = 9, 11
    offsets = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2)]
    for k in range(10):
        t, l = offsets[k % 5]
        for n in range(2):
            for ch in range(3):
                for u in range(c):
                    for v in range(c):
                        vv = l + (c - 1 - v if k >= 5 else v)
                        want = (float(imgs[n, t + u, vv, ch]) - float(mean[t + u, vv, ch])) / 255
                        assert abs(got[k, n, ch, u, v] - want) < 1e-6
    # the centre crop is what evaluation batches hold
    np.testing.assert_array_equal(ms.ten_crops(imgs, c, scale=1.0)[4],
                                  imgs[:, 2:7, 3:8].transpose(0, 3, 1, 2).astype(np.float32))
    with pytest.raises(ValueError, match="crop 12"):
        ms.ten_crops(imgs, 12, mean)


def test_top_k_errors_match_a_naive_count():
    rng = np.random.default_rng(1)
    p = rng.random((300, 12))
    p[:20, :] = 0.5  # ties: the lower class index ranks first
    y = rng.integers(0, 12, size=300)
    got = ms.top_k_errors(p, y, ks=(1, 5, 12))
    for k in (1, 5, 12):
        wrong = 0
        for row, label in zip(p, y):
            order = sorted(range(12), key=lambda c: (-row[c], c))
            wrong += label not in order[:k]
        assert got[k] == wrong / 300
    assert got[12] == 0.0
    assert ms.top_k_errors(np.eye(3), [0, 1, 2]) == {1: 0.0, 5: 0.0}
    assert ms.top_k_errors(np.eye(3), [1, 2, 0], ks=(1, 2))[1] == 1.0
    with pytest.raises(ValueError, match="labels"):
        ms.top_k_errors(np.eye(3), [0, 1, 3])


def small_step(classes):
    """A convolution, a dense layer, softmax cross-entropy and an SGD update,
    compiled for the CuPy backend: a training step in miniature."""
    import graphdiff as gd

    rng = np.random.default_rng(0)
    x = gd.placeholder((None, 3, CROP, CROP), name="x")
    t = gd.placeholder((None,), dtype="int64", name="labels")
    w = gd.variable(rng.standard_normal((4, 3, 8, 8)).astype(np.float32) * 0.1, name="w")
    side = (CROP - 8) // 8 + 1
    v = gd.variable(rng.standard_normal((4 * side * side, classes)).astype(np.float32) * 0.1,
                    name="v")
    h = gd.reshape(gd.relu(gd.conv2d(x, w, stride=8)), (-1, 4 * side * side))
    loss = gd.softmax_cross_entropy(gd.matmul(h, v), t)
    gw, gv = gd.grad(loss, [w, v])
    return gd.compile([loss], inputs=[x, t], updates=[(w, w - 0.01 * gw), (v, v - 0.01 * gv)],
                      backend="cupy")


def test_cupy_upload_adds_no_synchronization_to_the_step(pk, cupy_standin_module):
    import cupy_standin

    cupy = cupy_standin_module
    step = small_step(len(pk.class_names))
    tr = pk.split("train")
    aug = ms.Augment(crop=CROP)
    host = collect(ms.BatchStream(tr, 4, seed=3, epoch=0, augment=aug))
    step(*host[0])  # the first step allocates; count the others
    ledger = cupy_standin.ledger()
    ledger.reset()
    for x, y in host:  # the baseline: batches fed from host memory
        step(x, y)
    baseline = ledger.sites_of("sync")
    ledger.reset()
    seen = []
    with ms.BatchStream(tr, 4, seed=3, epoch=0, augment=aug, workers=2, prefetch=2,
                        backend_upload="cupy") as s:
        assert len(s.backend_upload._slots) == 4
        for x, y in s:
            assert isinstance(x, cupy.ndarray) and isinstance(y, np.ndarray)
            step(x, y)
            with ledger.paused():  # the test's own read-back is not the step's (the workers' uploads go on)
                seen.append(x.get())
    assert len(seen) == 15
    for got, (want, _) in zip(seen, host):
        assert (got == want).all()
    syncs = ledger.sites_of("sync")
    # the step waits exactly as before; the only new waits are the workers'
    # (a slot reused once the GPU has read it)
    theirs = {k: c for k, c in syncs.items() if not k.startswith("models/stream.py")}
    assert theirs == dict(baseline)
    assert all(k.endswith("(__call__)") for k in syncs if k not in theirs)  # in the workers
    assert sum(syncs.values()) > sum(baseline.values())
    uploads = [(site, a["bytes"]) for kind, site, a in ledger.events if kind == "h2d"]
    images = [u for u in uploads if u[0].startswith("models/stream.py")]
    assert len(images) == 15 and all(b == host[0][0].nbytes for _, b in images)
    assert [b for site, b in uploads if not site.startswith("models/stream.py")] == \
        [host[0][1].nbytes] * 15  # the labels, uploaded by the step as before


@pytest.mark.gpu
def test_cupy_upload_gives_the_host_batches_short_last_one_included(pk):
    import cupy

    va = pk.split("val")
    aug = ms.Augment(crop=CROP)
    host = collect(ms.BatchStream(va, 6, seed=0, epoch=0, train=False, augment=aug,
                                  drop_last=False))
    with ms.BatchStream(va, 6, seed=0, epoch=0, train=False, augment=aug, drop_last=False,
                        backend_upload="cupy", workers=1, prefetch=1) as s:
        got = []
        for x, y in s:
            assert isinstance(x, cupy.ndarray)
            got.append((x.get(), y))
    assert [len(y) for _, y in got] == [6, 6, 6, 2]
    for (a, ya), (b, yb) in zip(got, host):
        assert (a == b).all() and (ya == yb).all()
    with pytest.raises(ValueError, match="backend_upload"):
        ms.BatchStream(va, 6, seed=0, epoch=0, augment=aug, backend_upload="numpy")
