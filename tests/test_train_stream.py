"""The training command on streamed data (``--data pack:FILE``, ``--data
folder:DIR``): the paper's evaluation (top-5, ten crops) checked against a
direct computation, mid-epoch checkpoints resumed bitwise after ``kill -9``,
a bad file in a worker, the figures, and the flags' mistakes. The data are
real packs and JPEG trees written by :mod:`models.imagenet_tree` (small
images, 32x32 packs, 27x27 crops, a tiny alexnet-small)."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import models.train as train
from graphdiff.checkpoint import load_checkpoint
from models.evaluate import cli as evaluate_cli
from models.evaluate import log_softmax, top_k_wrong
from models.evaluate import main as evaluate_main
from models.imagenet_tree import make_tree
from models.pack import open_pack, pack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--model", "alexnet-small", "--width", "4", "--hidden", "16", "--lr", "0.05", "--seed", "2", "--quiet",
         "--no-diagrams", "--no-tensorboard"]
STREAM = SMALL + ["--crop", "27", "--batch-size", "8", "--workers", "2"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """6 classes, 8 training and 3 validation JPEGs each (ImageNet's quirks included), 64x48 on average."""
    root = tmp_path_factory.mktemp("tree")
    make_tree(str(root), classes=6, train_per_class=8, val_per_class=3, layout="folders", around=(64, 48), seed=1)
    return root


@pytest.fixture(scope="module")
def packed(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("pack") / "p32"
    pack(str(tree), str(out), size=32, workers=1, progress=False)
    return out


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def one_error_line(capsys, argv):
    code = train.cli(argv)
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err, out + err
    (line,) = err.strip().splitlines()
    return line


# --------------------------------------------------------------------------- evaluation
def test_top_k_wrong_against_the_definition():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((50, 12))
    scores[3, 7] = scores[3, 2]  # a tie: the lower class ranks first
    labels = rng.integers(0, 12, 50)
    for k in (1, 2, 5, 12, 20):
        naive = sum(labels[i] not in sorted(range(12), key=lambda c: (-scores[i, c], c))[:k] for i in range(50))
        assert top_k_wrong(scores, labels, k) == naive, k
    assert top_k_wrong(scores, labels, 1) == np.count_nonzero(scores.argmax(1) != labels)


def test_pack_training_reports_the_papers_errors_as_computed_directly(packed, tmp_path):
    """val_error, val_top5_error (centre crop) and the ten-crop errors of the last epoch
    equal a direct computation from the pack's bytes, the mean image and the checkpoint's
    weights: crops cut here by slicing, the softmax averaged over the ten."""
    out = tmp_path / "run"
    argv = [a for a in STREAM if a != "--no-tensorboard"]
    result = train.main(argv + ["--data", f"pack:{packed}", "--epochs", "2", "--ten-crop", "--out", str(out),
                                  "--tensorboard", str(tmp_path / "board")])
    assert result["status"] == "done"
    rows = metrics(out)
    assert list(rows[0])[:len(train.METRIC_KEYS)] == list(train.METRIC_KEYS)
    assert set(train.TEN_CROP_KEYS) <= set(rows[-1])
    weights, _ = load_checkpoint(out / "checkpoint.npz")
    model = train.build_model("alexnet-small", 6, 27, width=4, hidden=16)
    model.load_state_arrays({k: v for k, v in weights.items() if not k.startswith("momentum/")})
    predict = model.compile_eval("numpy")
    p = open_pack(str(packed))
    images, labels = np.asarray(p.split("val").images), p.split("val").labels
    x = (images.astype(np.float32) - p.mean_image.astype(np.float32)) / 255  # pixel - mean, in [0, 1] units
    views = []
    for top, left in ((0, 0), (0, 5), (5, 0), (5, 5), (2, 2)):  # corners and centre of 32 for 27
        patch = x[:, top:top + 27, left:left + 27].transpose(0, 3, 1, 2)
        views += [patch, patch[..., ::-1]]
    centre = np.asarray(predict(np.ascontiguousarray(views[8])), np.float64)
    probs = np.mean([np.exp(log_softmax(predict(np.ascontiguousarray(v)))) for v in views], axis=0)
    last = rows[-1]
    n = len(labels)
    assert last["val_error"] == pytest.approx(np.mean(centre.argmax(1) != labels), abs=1.5 / n)
    assert last["val_loss"] == pytest.approx(-log_softmax(centre)[np.arange(n), labels].mean(), rel=1e-4)
    assert last["val_top5_error"] == pytest.approx(top_k_wrong(centre, labels, 5) / n, abs=1.5 / n)
    assert last["val_error_10crop"] == pytest.approx(top_k_wrong(probs, labels, 1) / n, abs=1.5 / n)
    assert last["val_top5_error_10crop"] == pytest.approx(top_k_wrong(probs, labels, 5) / n, abs=1.5 / n)
    for name in ("conv1_kernels.png", "predictions.png", "curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    # the evaluation command reads the run back and finds the same figures
    (out / "predictions.png").unlink()
    again = evaluate_main([str(out), "--ten-crop", "--figures", "--workers", "0", "--batch-size", "8"])
    assert again["epoch"] == 2 and again["images"] == n
    for key in ("val_loss", "val_error", "val_top5_error", *train.TEN_CROP_KEYS):
        assert again[key] == last[key], key
    assert (out / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "board"))
    events.Reload()
    for tag, key in (("error_top5/validation", "val_top5_error"), ("error/validation_10crop", "val_error_10crop"),
                     ("error_top5/validation_10crop", "val_top5_error_10crop")):
        np.testing.assert_allclose([e.value for e in events.Scalars(tag)], [r[key] for r in rows], rtol=1e-6)


def test_figures_show_the_centre_crops_the_network_is_evaluated_on(packed, tmp_path):
    from models.streamed import open_streamed

    args = train.parse_args(STREAM + ["--data", f"pack:{packed}", "--out", str(tmp_path)])
    data = open_streamed(args)
    shown, inputs, labels = data.figure_batch([0, 4, 17])
    (first, first_labels), *_ = list(data.val_batches(18))
    np.testing.assert_array_equal(inputs, first[[0, 4, 17]])
    np.testing.assert_array_equal(labels, first_labels[[0, 4, 17]])
    stored = np.asarray(open_pack(str(packed)).split("val").images[[0, 4, 17]])
    np.testing.assert_allclose(shown, stored[:, 2:29, 2:29] / 255, rtol=1e-6)


def test_kernel_tiles_scale_each_kernel_to_the_unit_range():
    from models.figures import kernel_grid, kernel_tiles, top_k

    w = np.random.default_rng(1).standard_normal((5, 3, 4, 4))
    w[2] = 0.25  # a constant kernel: mid-grey
    tiles = kernel_tiles(w)
    assert tiles.shape == (5, 4, 4, 3)
    k = w[0].transpose(1, 2, 0)
    np.testing.assert_allclose(tiles[0], (k - k.min()) / (k.max() - k.min()))
    assert np.all(tiles[2] == 0.5)
    grid = kernel_grid(w, columns=3)
    assert grid.shape == (2 * 4 + 1, 3 * 4 + 2, 3)
    np.testing.assert_array_equal(grid[5:9, 5:9], tiles[4])
    classes, probs = top_k(np.array([[0.1, 0.5, 0.1, 0.3]]), k=3)
    assert classes.tolist() == [[1, 3, 0]] and probs.tolist() == [[0.5, 0.3, 0.1]]


# --------------------------------------------------------------------------- mid-epoch checkpoints
KILLED = """
import os, signal, sys
import models.train as train
real = train.train_step
kill_at = int(os.environ["KILL_AT_STEP"])
calls = []

def train_step(*args, **kwargs):
    step = real(*args, **kwargs)
    base = type(step)

    class Killed(base):
        def __call__(self, images, labels):
            calls.append(1)
            if len(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup: as a crash
            return base.__call__(self, images, labels)

    step.__class__ = Killed
    return step

train.train_step = train_step
sys.exit(train.cli(sys.argv[1:]))
"""


@pytest.mark.parametrize("data", ["pack", "synthetic"])
def test_a_run_killed_inside_an_epoch_resumes_bitwise(data, packed, tmp_path):
    """kill -9 at step 11 (epoch 2, 5th step of 6) with --checkpoint-every 3: the checkpoint
    holds epoch 1 and 3 steps of epoch 2; --resume ends with the weights, momentum and
    losses of an uninterrupted run, bit for bit (dropout, the batch order and the
    augmentation included)."""
    argv = (STREAM + ["--data", f"pack:{packed}"] if data == "pack" else
            SMALL + ["--data", "synthetic", "--image-size", "16", "--batch-size", "27"])  # 160 images: 6 steps
    argv += ["--epochs", "3", "--checkpoint-every", "3"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train.main(argv + ["--out", str(straight)])
    env = dict(os.environ, PYTHONPATH=ROOT, KILL_AT_STEP="11")
    proc = subprocess.run([sys.executable, "-c", KILLED, *argv, "--out", str(killed)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    _, meta = load_checkpoint(killed / "checkpoint.npz")
    assert meta["epoch"] == 1 and meta["position"]["batches"] == 3 and meta["steps"] == 9
    result = train.main(argv + ["--out", str(killed), "--resume"])
    assert result["status"] == "done"
    a, meta_a = load_checkpoint(straight / "checkpoint.npz")
    b, meta_b = load_checkpoint(killed / "checkpoint.npz")
    assert meta_b["epoch"] == 3 and "position" not in meta_b and meta_b["steps"] == meta_a["steps"] == 18
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for key in ("train_loss", "train_error", "val_loss", "val_error", "val_top5_error", "lr"):
        assert [r[key] for r in metrics(straight)] == [r[key] for r in metrics(killed)], key


def test_a_checkpoint_written_inside_an_epoch_by_other_ranks_is_refused(tmp_path, capsys):
    argv = SMALL + ["--data", "synthetic", "--image-size", "16", "--batch-size", "32", "--out", str(tmp_path)]
    train.main(argv + ["--epochs", "1", "--checkpoint-every", "2"])
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    assert "position" not in meta  # the epoch's end came after its last mid-epoch save
    from graphdiff.checkpoint import save_checkpoint

    meta.update(epoch=0, history=[], ranks=2, dropout_rngs=[meta["dropout_rng"]] * 2,
                position=dict(batches=2, sums=[[1.0, 2, 64], [1.0, 2, 64]], seconds=0.5))
    save_checkpoint(tmp_path / "checkpoint.npz", arrays, meta)
    line = one_error_line(capsys, argv + ["--epochs", "2", "--resume"])
    assert line == "error: the checkpoint was written inside an epoch by 2 rank(s): resume it with as many " \
                   "(this run has 1)"
    meta.update(ranks=1, dropout_rngs=[meta["dropout_rng"]], position=dict(batches=2, sums=[[1.0, 2, 64]],
                                                                         seconds=0.5))
    save_checkpoint(tmp_path / "checkpoint.npz", arrays, meta)
    line = one_error_line(capsys, argv + ["--epochs", "2", "--resume", "--batch-size", "16"])
    assert line.endswith("was written inside an epoch with --batch-size 32 (now 16): resume it with the same")
    meta["position"] = dict(batches="two", sums=[], seconds=0)
    save_checkpoint(tmp_path / "checkpoint.npz", arrays, meta)
    line = one_error_line(capsys, argv + ["--epochs", "2", "--resume"])
    assert line.startswith("error: checkpoint ") and "metadata 'position'" in line


# --------------------------------------------------------------------------- folders, bad data, mistakes
def test_a_jpeg_folder_streams_and_a_bad_file_in_a_worker_is_one_line(tmp_path, capsys, monkeypatch):
    """folder:DIR decodes on the fly; a JPEG damaged after start-up (once the mean image
    was estimated), met by a worker in the second epoch, ends the run with one line naming
    it (exit 2), the first epoch's checkpoint and metrics kept."""
    import models.streamed as streamed

    root = tmp_path / "tree"
    make_tree(str(root), classes=4, train_per_class=4, val_per_class=2, layout="folders", around=(64, 48),
              quirks=False, seed=3)
    argv = STREAM + ["--data", f"folder:{root}", "--resize", "32", "--out", str(tmp_path / "run")]
    assert train.cli(argv + ["--epochs", "1"]) == 0
    assert metrics(tmp_path / "run")[0]["val_top5_error"] == 0.0  # 4 classes: the top 5 hold every one
    bad = root / "train" / "class_002" / "class_002_1.jpg"
    real_open = streamed.open_streamed

    def open_then_damage(*args, **kwargs):
        data = real_open(*args, **kwargs)
        assert data.train.mean_image.shape == (32, 32, 3)  # estimated now, from the intact files
        data_bytes = bad.read_bytes()
        bad.write_bytes(data_bytes[:len(data_bytes) // 3])
        return data

    monkeypatch.setattr(streamed, "open_streamed", open_then_damage)
    line = one_error_line(capsys, argv + ["--epochs", "2", "--resume"])
    assert line.startswith("error: ") and str(bad) in line
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert meta["epoch"] == 1 and len(metrics(tmp_path / "run")) == 1


def test_a_damaged_pack_is_refused_with_one_line(packed, tmp_path, capsys):
    import shutil

    copy = tmp_path / "p"
    shutil.copytree(packed, copy)
    with open(copy / "train.u8", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    line = one_error_line(capsys, STREAM + ["--data", f"pack:{copy}", "--out", str(tmp_path / "run")])
    assert line.startswith("error: ") and "train" in line
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


@pytest.mark.parametrize("extra, message", [
    (["--data", "digits", "--crop", "24"], "error: --crop is for streamed data"),
    (["--data", "synthetic", "--ten-crop"], "error: --ten-crop is for streamed data"),
    (["--data", "PACK", "--crop", "40"], "does not fit its 32x32 images: --crop 32 or less"),
    (["--data", "PACK", "--crop", "27", "--image-size", "24"], "error: --crop 27 and --image-size 24 differ"),
    (["--data", "PACK", "--resize", "64"], "error: --resize is for folder:DIR"),
    (["--data", "PACK", "--batch-size", "64"], "48 training images do not fill one batch of 64"),
    (["--data", "PACK", "--checkpoint-every", "0"], "error: --checkpoint-every must be a positive"),
    (["--data", "pack:"], "error: --data: data set spec 'pack:' names no file"),
])
def test_streamed_data_mistakes_are_one_line(extra, message, packed, tmp_path, capsys):
    extra = [f"pack:{packed}" if e == "PACK" else e for e in extra]
    line = one_error_line(capsys, SMALL + ["--out", str(tmp_path / "run"), *extra])
    assert message in line


def test_the_evaluation_command_on_in_memory_data_and_its_mistakes(tmp_path, capsys):
    out = tmp_path / "run"
    result = train.main(SMALL + ["--data", "synthetic", "--image-size", "16", "--batch-size", "32", "--epochs", "1",
                                 "--out", str(out)])
    got = evaluate_main([str(out)])
    assert {k: got[k] for k in ("val_loss", "val_error", "val_top5_error")} == \
        {k: result["history"][-1][k] for k in ("val_loss", "val_error", "val_top5_error")}
    assert "top-5" in capsys.readouterr().out
    for argv, message in (([str(tmp_path)], "no checkpoint.npz"),
                          ([str(out), "--ten-crop"], "--ten-crop is for streamed data")):
        assert evaluate_cli(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and message in line, line


def test_two_ranks_read_their_share_and_train_as_one_process(packed, tmp_path):
    """mpiexec -n 2 at --batch-size 4 trains as one process at 8 (dropout off): each rank's
    stream yields its half of every global batch, augmentation included."""
    from test_distributed import mpirun

    argv = STREAM + ["--data", f"pack:{packed}", "--dropout", "0", "--epochs", "2", "--checkpoint-every", "4"]
    code, output, _ = mpirun("-m", "models.train", *argv, "--batch-size", "4", "--out", str(tmp_path / "two"))
    assert code == 0, output
    train.main(argv + ["--out", str(tmp_path / "one")])
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        for key in ("train_loss", "val_loss", "val_error", "val_top5_error"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    w1, _ = load_checkpoint(tmp_path / "one" / "checkpoint.npz")
    w2, _ = load_checkpoint(tmp_path / "two" / "checkpoint.npz")
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-5, atol=1e-6 * np.abs(w1[k]).max(), err_msg=k)


@pytest.mark.gpu
def test_on_cupy_the_stream_uploads_the_batches_and_training_matches_numpy(packed, tmp_path):
    """--backend cupy: each training batch reaches the device from the stream's pinned
    buffers on its second stream (one upload per step, from models/stream.py), and the
    run's figures are NumPy's."""
    import cupy_standin

    argv = STREAM + ["--data", f"pack:{packed}", "--epochs", "2", "--dropout", "0"]
    on_numpy = train.main(argv + ["--out", str(tmp_path / "numpy")])["history"]
    standin = not cupy_standin.real_cupy_importable()
    if standin:
        ledger = cupy_standin.ledger()
        ledger.reset()
    on_cupy = train.main(argv + ["--backend", "cupy", "--out", str(tmp_path / "cupy")])["history"]
    for a, b in zip(on_numpy, on_cupy):
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    if standin:
        uploads = [a["bytes"] for kind, site, a in ledger.events if kind == "h2d"
                   and site.startswith("models/stream.py")]
        assert uploads == [8 * 3 * 27 * 27 * 4] * 12  # 6 steps an epoch, 2 epochs


def test_a_folder_of_class_folders_alone_is_streamed_and_split_per_class(tmp_path):
    """No train/: each class gives 20% of its images to validation (as models.data splits
    them), the crops come from images scaled to crop x 256/227 by default."""
    root = tmp_path / "tree"
    make_tree(str(root), classes=3, train_per_class=5, val_per_class=0, layout="folders", around=(48, 40),
              quirks=False, seed=4)
    flat = tmp_path / "flat"
    (root / "train").rename(flat)
    args = train.parse_args(SMALL + ["--data", f"folder:{flat}", "--crop", "27", "--batch-size", "4",
                                     "--out", str(tmp_path / "r")])
    assert args.streamed and args.resize == 30
    from models.streamed import open_streamed

    data = open_streamed(args)
    assert (len(data.train_labels), len(data.val_labels)) == (12, 3)
    assert sorted(data.val_labels) == [0, 1, 2] and data.train.size == 30
    result = train.main(SMALL + ["--data", f"folder:{flat}", "--crop", "27", "--batch-size", "4", "--epochs", "1",
                                 "--out", str(tmp_path / "run")])
    assert result["status"] == "done" and result["history"][0]["val_error"] is not None
