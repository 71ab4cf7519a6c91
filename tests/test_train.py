"""The training command (models/train.py) and the ReLU-vs-tanh experiment,
run in-process on tiny synthetic data."""
import json
import os

import numpy as np
import pytest

import graphdiff as gd
import models.epochs as epochs  # the epoch loop looks up train_epoch and evaluate here
import models.report as report  # and plot_curves here
import models.train as train
import needs
from graphdiff.checkpoint import CheckpointError, load_checkpoint
from models import relu_vs_tanh

TINY = ["--model", "alexnet-small", "--data", "synthetic", "--image-size", "16", "--width", "4", "--hidden", "16",
        "--batch-size", "16", "--lr", "0.02", "--seed", "3", "--quiet"]


def run(out, *extra):
    return train.main(TINY + ["--out", str(out), *extra])


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_end_to_end_writes_metrics_curves_checkpoint_and_diagrams(tmp_path):
    result = run(tmp_path, "--epochs", "2")
    assert result["status"] == "done"
    rows = metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "train_loss", "train_error", "val_error", "val_accuracy", "seconds", "lr"} <= set(r)
        assert r["val_accuracy"] == pytest.approx(1 - r["val_error"])
        assert 0 <= r["train_error"] <= 1 and r["seconds"] > 0 and r["lr"] == 0.02
    assert rows == result["history"]
    with open(tmp_path / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for name in ("forward.svg", "backward.svg"):
        text = (tmp_path / name).read_text()
        assert "<svg" in text and "conv1" in text, name
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["epoch"] == 2 and meta["lr"] == 0.02
    assert arrays["conv1/w"].shape == (4, 3, 5, 5) and "momentum/conv1/w" in arrays
    assert np.any(arrays["momentum/fc8/w"] != 0)


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(straight, "--epochs", "3", "--lr-drop-patience", "1")
    run(split, "--epochs", "1", "--lr-drop-patience", "1")
    assert len(metrics(split)) == 1
    result = run(split, "--epochs", "3", "--lr-drop-patience", "1", "--resume")
    a, b = metrics(straight), metrics(split)
    assert len(b) == 3 and result["history"] == b
    for key in ("train_loss", "train_error", "val_loss", "val_error", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key  # exactly, dropout included
    final_a, _ = load_checkpoint(straight / "checkpoint.npz")
    final_b, _ = load_checkpoint(split / "checkpoint.npz")
    for k in final_a:
        np.testing.assert_array_equal(final_a[k], final_b[k])


def test_ctrl_c_keeps_last_completed_epoch_and_resume_matches(tmp_path, monkeypatch, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run(straight, "--epochs", "2")
    real_epoch = train.train_epoch
    calls = []

    def interrupted_in_epoch_2(step, dataset, batch_size, rng, progress=None):
        calls.append(1)
        if len(calls) == 2:
            images, labels = next(dataset.train_batches(batch_size, rng))
            step(images, labels)  # the weights move, then Ctrl-C
            raise KeyboardInterrupt
        return real_epoch(step, dataset, batch_size, rng, progress)

    monkeypatch.setattr(epochs, "train_epoch", interrupted_in_epoch_2)
    result = run(broken, "--epochs", "2")
    assert result["status"] == "interrupted"
    assert "--resume" in capsys.readouterr().out
    _, meta = load_checkpoint(broken / "checkpoint.npz")
    assert meta["epoch"] == 1
    monkeypatch.setattr(epochs, "train_epoch", real_epoch)
    run(broken, "--epochs", "2", "--resume")
    assert [r["train_loss"] for r in metrics(broken)] == [r["train_loss"] for r in metrics(straight)]


def test_ctrl_c_before_the_first_epoch_is_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the data loads

    monkeypatch.setattr(train, "load_dataset", interrupted)
    code = train.cli(TINY + ["--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 130 and "Traceback" not in out + err
    assert err.strip().splitlines() == ["interrupted outside an epoch; the files already written stay as they were"]


def test_a_negative_seed_and_running_out_of_memory_are_one_line(tmp_path, monkeypatch, capsys):
    line = one_error_line(capsys, TINY + ["--out", str(tmp_path / "a"), "--seed", "-5"])
    assert line == "error: --seed must be a non-negative integer, got -5"

    def too_big(*args, **kwargs):
        raise gd.OutOfMemoryError("conv2d at node 'conv1/conv' needs 447 GiB")

    monkeypatch.setattr(train, "load_dataset", too_big)
    line = one_error_line(capsys, TINY + ["--out", str(tmp_path / "b")])
    assert line == ("error: out of memory: conv2d at node 'conv1/conv' needs 447 GiB; a smaller --batch-size or "
                    "--image-size needs less")


def test_an_onnx_classifier_trains_resumes_and_exports(tmp_path, capsys):
    """``--model FILE.onnx`` trains the file's network from its weights (its image
    size and channels are the file's); ``--export-onnx`` writes the trained one."""
    needs.module("onnx", "pip install -e '.[interop]'")
    from models.alexnet import alexnet_small

    source = alexnet_small(num_classes=4, image_size=16, width=4, hidden=16, seed=5)
    gd.onnx.export(source.logits, [source.images], tmp_path / "net.onnx")
    onnx_args = ["--model", str(tmp_path / "net.onnx"), "--data", "synthetic", "--batch-size", "16", "--lr", "0.02",
                 "--quiet", "--no-diagrams", "--no-tensorboard", "--out", str(tmp_path / "run")]
    result = train.main(onnx_args + ["--epochs", "1"])
    assert result["status"] == "done"
    result = train.main(onnx_args + ["--epochs", "2", "--resume", "--export-onnx", str(tmp_path / "trained.onnx")])
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2]
    arrays, meta = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    trained = gd.onnx.load(tmp_path / "trained.onnx")
    assert list(trained.params) == list(source.params)  # "conv1/w", ...: the file's names throughout
    for k, p in trained.params.items():
        np.testing.assert_array_equal(p.value, arrays[k])  # the weights after epoch 2
        assert not np.array_equal(p.value, source.params[k].value) or k.endswith("/b")
    assert meta["config"]["model"] == str(tmp_path / "net.onnx")
    for extra, message in [(["--data", "synthetic:6"], "the network has 4 classes, fewer than 6"),
                           (["--image-size", "24"], "the network takes 16x16 images, not 24x24"),
                           (["--channels", "1"], "the network takes 3-channel images, not 1")]:
        line = one_error_line(capsys, onnx_args[:-1] + [str(tmp_path / "bad")] + extra)
        assert line.startswith("error: --model: ") and message in line, line


def test_lr_is_divided_by_ten_when_validation_error_stalls(tmp_path, monkeypatch):
    monkeypatch.setattr(epochs, "evaluate", lambda predict, dataset, batch_size: (1.0, 0.5))
    run(tmp_path, "--epochs", "5", "--lr-drop-patience", "2")
    lrs = [r["lr"] for r in metrics(tmp_path)]
    # epoch 1 sets the best; epochs 2 and 3 do not improve on it -> epoch 4 uses lr / 10
    assert lrs == pytest.approx([0.02, 0.02, 0.02, 0.002, 0.002])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    run(tmp_path, "--epochs", "1")
    path = tmp_path / "checkpoint.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="checkpoint.npz"):
        run(tmp_path, "--epochs", "2", "--resume")
    assert train.cli(TINY + ["--out", str(tmp_path), "--epochs", "2", "--resume"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_resume_with_another_architecture_is_refused(tmp_path):
    run(tmp_path, "--epochs", "1")
    with pytest.raises(CheckpointError, match="width"):
        train.main(TINY[:-1] + ["--width", "8", "--out", str(tmp_path), "--epochs", "2", "--resume"])


def test_relu_vs_tanh_writes_figure_and_json(tmp_path):
    result = relu_vs_tanh.main(["--data", "synthetic", "--out", str(tmp_path), "--epochs", "2", "--image-size",
                                "16", "--width", "4", "--batch-size", "16", "--threshold", "0.5", "--lr", "0.02,0.05"])
    with open(tmp_path / "relu_vs_tanh.json") as f:
        saved = json.load(f)
    assert saved["threshold"] == 0.5 and set(saved["runs"]) == {"relu", "tanh"}
    for activation, chosen in saved["runs"].items():  # each network with its fastest rate
        assert chosen in saved["sweep"][activation] and len(saved["sweep"][activation]) == 2
        assert chosen["epochs_to_threshold"] == min(
            (r["epochs_to_threshold"] for r in saved["sweep"][activation]), key=lambda x: (x is None, x or 0))
    for run_ in saved["runs"].values():
        assert len(run_["train_error"]) == 2 and run_["curve"][-1][0] == pytest.approx(2.0)
        reached = run_["epochs_to_threshold"]
        assert reached is None or any(x == reached and e <= 0.5 for x, e in run_["curve"])
    relu, tanh = (saved["runs"][a]["epochs_to_threshold"] for a in ("relu", "tanh"))
    assert saved["ratio_tanh_over_relu"] == (pytest.approx(tanh / relu) if relu and tanh else None)
    assert result["runs"]["relu"]["train_error"] != result["runs"]["tanh"]["train_error"]
    with open(tmp_path / "relu_vs_tanh.png", "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_epochs_to_reach():
    curve = [[0.5, 0.9], [1.0, 0.4], [1.5, 0.2], [2.0, 0.1]]
    assert relu_vs_tanh.epochs_to_reach(curve, 0.25) == 1.5
    assert relu_vs_tanh.epochs_to_reach(curve, 0.05) is None


def test_max_minutes_stops_after_an_epoch_with_a_checkpoint(tmp_path):
    result = run(tmp_path, "--epochs", "3", "--max-minutes", "0.0001", "--no-diagrams")
    assert result["status"] == "stopped" and len(metrics(tmp_path)) == 1
    _, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["epoch"] == 1


# --------------------------------------------------------------------------- user mistakes: one line, exit 2
def one_error_line(capsys, argv):
    """Run the command as a user would; returns its one stderr line."""
    code = train.cli(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--data", "mnist"], r"--data: unknown data set spec 'mnist'; expected 'digits', 'synthetic'"),
    (["--data", "cifar10"], r"'cifar10' names no folder: give cifar10:DIR"),
    (["--data", "synthetic:abc"], r"synthetic:K needs a whole number of classes K >= 2, got 'abc'"),
    (["--image-size", "14"], r"--image-size 14 is too small for alexnet-small: .* at least 15x15"),
    (["--model", "cnn4", "--image-size", "9"], r"too small for cnn4: .* at least 15x15"),
    (["--width", "5"], r"--model alexnet-small: conv2: 5 -> 10 channels do not split into 2 groups"),
    (["--epochs", "0"], r"--epochs must be positive"),
    (["--model", "resnet"], r"--model 'resnet': choose from alexnet, alexnet-small, cnn4 or give FILE\.onnx"),
    (["--resume", "--overwrite"], r"argument --overwrite: not allowed with argument --resume"),
    (["--max-minutes", "-1"], r"--max-minutes must be positive"),
    (["--model", "cnn4", "--dropout", "1.5"], r"--dropout must be in \[0, 1\), got 1.5"),
])
def test_user_mistakes_are_one_error_line(tmp_path, capsys, extra, message):
    import re

    line = one_error_line(capsys, TINY + ["--out", str(tmp_path / "run"), "--epochs", "1", *extra])
    assert re.search(message, line), line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_out_that_is_a_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    line = one_error_line(capsys, TINY + ["--out", str(tmp_path / "file"), "--epochs", "1"])
    assert line == f"error: --out {tmp_path / 'file'} is a file, not a folder"
    assert (tmp_path / "file").read_text() == "not a folder"


def test_smallest_image_size_is_computed_from_the_layer_geometry(capsys):
    import graphdiff as gd

    cases = {"alexnet-small": ["--width", "4", "--hidden", "8"], "cnn4": ["--width", "4"], "alexnet": []}
    for model, extra in cases.items():
        argv = ["--model", model, "--out", "unused", *extra]
        smallest = train.min_image_size(train.parse_args(argv))
        args = train.parse_args(argv + ["--image-size", str(smallest)])
        train.build_model(model, 3, smallest, groups=args.groups, width=args.width, hidden=args.hidden)  # builds
        with pytest.raises((ValueError, gd.ShapeError)):
            train.build_model(model, 3, smallest - 1, groups=args.groups, width=args.width, hidden=args.hidden)
        line = one_error_line(capsys, argv + ["--image-size", str(smallest - 1)])
        assert f"at least {smallest}x{smallest}" in line
    assert train.min_image_size(train.parse_args(["--model", "alexnet", "--out", "unused"])) == 67


def test_cupy_backend_without_cupy_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    import graphdiff.backends as backends

    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy fails, as where it is not installed
    monkeypatch.setattr(backends, "_CACHE", {k: v for k, v in backends._CACHE.items() if k != "cupy"})
    line = one_error_line(capsys, TINY + ["--out", str(tmp_path), "--backend", "cupy"])
    assert line.startswith("error: --backend cupy: backend 'cupy' needs CuPy") and "pip install" in line


def test_digits_without_scikit_learn_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    line = one_error_line(capsys, ["--data", "digits", "--out", str(tmp_path)])
    assert "scikit-learn" in line and "pip install '.[data]'" in line


def test_the_module_itself_prints_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "models.train", "--data", "imagenet", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --data: unknown data set spec 'imagenet'") and proc.stderr.count("\n") == 1


# --------------------------------------------------------------------------- an output folder in use
def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path, capsys):
    run(tmp_path, "--epochs", "1")
    first = metrics(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    line = one_error_line(capsys, TINY + ["--out", str(tmp_path), "--epochs", "2"])
    assert "already holds a run (checkpoint.npz, metrics.jsonl): pass --resume to continue it or --overwrite" in line
    assert metrics(tmp_path) == first  # untouched
    result = run(tmp_path, "--epochs", "1", "--overwrite", "--lr", "0.05")
    assert [r["lr"] for r in metrics(tmp_path)] == [0.05] and result["status"] == "done"
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's own files go
    if train._installed("tensorboard"):
        events = os.listdir(tmp_path / "tensorboard")
        assert len([e for e in events if e.startswith("events.out.tfevents.")]) == 1  # the old run's were removed


# --------------------------------------------------------------------------- metrics and messages
def test_metrics_keep_their_key_order_across_resume(tmp_path):
    run(tmp_path, "--epochs", "1")
    run(tmp_path, "--epochs", "2", "--resume")
    with open(tmp_path / "metrics.jsonl") as f:
        orders = [list(json.loads(line)) for line in f]
    assert orders == [list(train.METRIC_KEYS)] * 2


def test_no_lr_drop_is_announced_after_the_last_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(epochs, "evaluate", lambda predict, dataset, batch_size: (1.0, 0.5))
    run(tmp_path, "--epochs", "2", "--lr-drop-patience", "1")
    out = capsys.readouterr().out
    assert "lr ->" not in out  # the drop after epoch 2 has no epoch to act on
    run(tmp_path, "--epochs", "3", "--lr-drop-patience", "1", "--resume")
    assert [r["lr"] for r in metrics(tmp_path)] == pytest.approx([0.02, 0.02, 0.002])  # kept for a longer run
    run(tmp_path, "--epochs", "5", "--lr-drop-patience", "1", "--resume")
    assert "lr -> 0.0002" in capsys.readouterr().out  # after epoch 4, used by epoch 5


def test_resume_with_another_lr_says_which_it_uses(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(epochs, "evaluate", lambda predict, dataset, batch_size: (1.0, 0.5))
    run(tmp_path, "--epochs", "3", "--lr-drop-patience", "1")  # drops to 0.002 after epoch 2, for epoch 3
    capsys.readouterr()
    run(tmp_path, "--epochs", "4", "--lr-drop-patience", "1", "--resume", "--lr", "0.5")
    out = capsys.readouterr().out
    assert "--lr 0.5 is not used: training continues with the checkpoint's learning rate 0.002 (the run" in out
    assert metrics(tmp_path)[-1]["lr"] == pytest.approx(0.002)
    run(tmp_path, "--epochs", "5", "--lr-drop-patience", "1", "--resume")  # the run's own --lr: nothing to say
    assert "is not used" not in capsys.readouterr().out
    train.main(TINY[:TINY.index("--lr")] + TINY[TINY.index("--lr") + 2:] + ["--out", str(tmp_path), "--epochs", "6",
                                                                           "--lr-drop-patience", "1", "--resume"])
    assert "is not used" not in capsys.readouterr().out  # no --lr at all


# --------------------------------------------------------------------------- damaged checkpoints
def _rewrite_checkpoint(path, change_meta=None, change_arrays=None):
    from graphdiff.checkpoint import save_checkpoint

    arrays, meta = load_checkpoint(path)
    if change_meta:
        change_meta(meta)
    if change_arrays:
        change_arrays(arrays)
    save_checkpoint(path, arrays, meta)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("lr"), r"metadata 'lr' is None"),
    (lambda m: m.update(lr="abc"), r"metadata 'lr' is 'abc'"),
    (lambda m: m.update(lr=-1), r"metadata 'lr' is -1"),
    (lambda m: m.update(epoch="1"), r"metadata 'epoch' is '1'"),
    (lambda m: m.update(dropout_rng={"bit_generator": "PCG64", "state": "x"}), r"bad random generator state"),
    (lambda m: m.update(shuffle_rng=None), r"bad random generator state"),
    (lambda m: m.update(kernel_choices=[{"direction": "forward"}]), r"kernel choice 0 is malformed \(KeyError"),
    (lambda m: m.update(history={"a": 1}), r"metadata 'history' must be a list of 1 epochs, got dict"),
    (lambda m: m.update(history=[[1, 2]]), r"'history' entry 1 is not the record of epoch 1"),
    (lambda m: m.update(config=[]), r"config must be an object"),
])
def test_bad_checkpoint_metadata_is_a_checkpoint_error(tmp_path, capsys, change, message):
    import re

    run(tmp_path, "--epochs", "1", "--no-tensorboard")
    _rewrite_checkpoint(tmp_path / "checkpoint.npz", change_meta=change)
    line = one_error_line(capsys, TINY + ["--out", str(tmp_path), "--epochs", "2", "--resume"])
    assert "checkpoint.npz" in line and re.search(message, line), line


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update({"conv9/w": np.ones(3, np.float32)}), r"holds arrays the model does not have: conv9/w"),
    (lambda a: a.pop("momentum/fc8/b"), r"lacks momentum/fc8/b"),
    (lambda a: a.update({"conv1/w": a["conv1/w"].astype(np.int8)}), r"'conv1/w' is int8 \(4, 3, 5, 5\); the model has float32"),
    (lambda a: a.update({"fc8/w": a["fc8/w"].astype(np.complex64)}), r"'fc8/w' is complex64"),
    (lambda a: a.update({"fc8/b": a["fc8/b"][:2]}), r"'fc8/b' is float32 \(2,\); the model has float32 \(4,\)"),
])
def test_checkpoint_arrays_the_model_lacks_or_of_another_kind_are_refused(tmp_path, capsys, change, message):
    import re

    run(tmp_path, "--epochs", "1", "--no-tensorboard")
    _rewrite_checkpoint(tmp_path / "checkpoint.npz", change_arrays=change)
    line = one_error_line(capsys, TINY + ["--out", str(tmp_path), "--epochs", "2", "--resume"])
    assert re.search(message, line), line


def test_resume_from_a_fifo_is_refused_without_hanging(tmp_path):
    import subprocess
    import sys

    run(tmp_path, "--epochs", "1", "--no-tensorboard")
    os.unlink(tmp_path / "checkpoint.npz")
    os.mkfifo(tmp_path / "checkpoint.npz")
    proc = subprocess.run([sys.executable, "-m", "models.train", *TINY, "--out", str(tmp_path), "--epochs", "2",
                           "--resume"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("checkpoint.npz: not a regular file")


# --------------------------------------------------------------------------- a full disk
class _FullDisk:
    """``open`` as on a disk that fills up once ``full`` is set: writes to
    files whose name starts with ``victim`` fail with ENOSPC."""

    def __init__(self, victim):
        import builtins

        self.victim, self.full, self.real_open = victim, False, builtins.open

    def __call__(self, file, mode="r", *args, **kwargs):
        f = self.real_open(file, mode, *args, **kwargs)
        name = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        if self.full and name.startswith(self.victim) and any(c in mode for c in "wa+"):
            return _FailingFile(f)
        return f


class _FailingFile:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("victim", ["checkpoint.npz.tmp", "metrics.jsonl.tmp", "curves.png.tmp"])
def test_a_full_disk_is_one_line_and_leaves_no_temporary_files(tmp_path, capsys, monkeypatch, victim):
    import builtins

    disk = _FullDisk(victim)
    monkeypatch.setattr(builtins, "open", disk)
    real_plot = train.plot_curves

    def plot_then_fill_the_disk(*args, **kwargs):
        real_plot(*args, **kwargs)
        disk.full = True  # after epoch 1 is completely written

    monkeypatch.setattr(report, "plot_curves", plot_then_fill_the_disk)
    code = train.cli(TINY + ["--out", str(tmp_path), "--epochs", "2", "--no-tensorboard", "--no-diagrams"])
    out, err = capsys.readouterr()
    monkeypatch.setattr(builtins, "open", disk.real_open)
    leftovers = [f for f in os.listdir(tmp_path) if ".tmp" in f]
    assert leftovers == []
    _, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    if victim == "curves.png.tmp":  # a picture is not worth stopping for: a warning, training goes on
        assert code == 0 and meta["epoch"] == 2 and len(metrics(tmp_path)) == 2
        return
    assert code == 2 and "Traceback" not in out + err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: cannot write") and "No space left on device" in line
    if victim == "checkpoint.npz.tmp":
        assert meta["epoch"] == 1 and "it still holds epoch 1" in line
    assert [r["epoch"] for r in metrics(tmp_path)] == [1]
    run(tmp_path, "--epochs", "2", "--resume", "--no-tensorboard", "--no-diagrams")  # the run goes on
    assert [r["epoch"] for r in metrics(tmp_path)] == [1, 2]


# --------------------------------------------------------------------------- no validation images
def test_an_empty_validation_split_trains_without_validation_and_resumes(tmp_path, monkeypatch, capsys):
    real_load = train.load_dataset

    def no_validation(*args, **kwargs):
        d = real_load(*args, **kwargs)
        d.val_images, d.val_labels = d.val_images[:0], d.val_labels[:0]
        return d

    monkeypatch.setattr(train, "load_dataset", no_validation)
    run(tmp_path, "--epochs", "2", "--lr-drop-patience", "1")
    assert "no validation images" in capsys.readouterr().out
    run(tmp_path, "--epochs", "3", "--lr-drop-patience", "1", "--resume")
    with open(tmp_path / "metrics.jsonl") as f:
        text = f.read()
    assert "NaN" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["lr"] for r in rows] == [0.02] * 3  # no drops
    assert all(r["val_loss"] is None and r["val_error"] is None and r["val_accuracy"] is None for r in rows)
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    with open(tmp_path / "curves.png", "rb") as f:
        assert f.read(4) == b"\x89PNG"


# --------------------------------------------------------------------------- TensorBoard
def needs_tensorboard():
    """Skip without the tensorboard package, except in CI (which installs it)."""
    needs.module("tensorboard", "pip install -e '.[interop]'")


def test_tensorboard_events_match_the_metrics_and_hold_the_graph(tmp_path):
    needs_tensorboard()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "board"
    run(tmp_path / "run", "--epochs", "2", "--tensorboard", str(board))
    run(tmp_path / "run", "--epochs", "3", "--tensorboard", str(board), "--resume")
    events = EventAccumulator(str(board), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    rows = metrics(tmp_path / "run")
    params, _ = load_checkpoint(tmp_path / "run" / "checkpoint.npz")  # the state after epoch 3
    names = [k for k in params if not k.startswith("momentum/")]
    per_parameter = {f"update_ratio/{k}" for k in names}
    assert set(events.Tags()["scalars"]) == set(train_tb_tags()) | per_parameter
    assert set(events.Tags()["histograms"]) == {f"{kind}/{k}" for kind in ("weights", "updates") for k in names}
    for k in names:
        w, v = params[k].astype(np.float64), params[f"momentum/{k}"].astype(np.float64)
        for tag, values in ((f"weights/{k}", w), (f"updates/{k}", v)):
            got = events.Histograms(tag)
            assert [e.step for e in got] == [1, 2, 3], tag
            h = got[-1].histogram_value
            assert (h.min, h.max, h.num) == (values.min(), values.max(), values.size), tag
            np.testing.assert_allclose([h.sum, h.sum_squares], [values.sum(), (values ** 2).sum()], rtol=1e-9)
            assert sum(h.bucket) == values.size and len(h.bucket) == len(h.bucket_limit), tag
        ratio = events.Scalars(f"update_ratio/{k}")[-1].value
        np.testing.assert_allclose(ratio, np.linalg.norm(v) / np.linalg.norm(w), rtol=1e-6, err_msg=k)
    for tag, key in train_tb_tags().items():
        got = events.Scalars(tag)
        assert [e.step for e in got] == [1, 2, 3], tag
        np.testing.assert_allclose([e.value for e in got], [r[key] for r in rows], rtol=1e-6, err_msg=tag)
    graph = events.Graph()
    ops = {n.op for n in graph.node}
    assert {"placeholder", "variable", "conv2d", "relu", "max_pool2d", "matmul"} <= ops
    names = {n.name: n for n in graph.node}
    conv = next(n for n in graph.node if n.op == "conv2d" and n.name.startswith("conv1/"))
    assert set(conv.input) == {"images", "conv1/w", "conv1/b"} and set(conv.input) <= set(names)
    dims = [d.size for d in conv.attr["_output_shapes"].list.shape[0].dim]
    assert dims == [-1, 4, 16, 16]


def train_tb_tags():
    from models.tensorboard_log import SCALARS

    return SCALARS


def test_tensorboard_default_is_on_when_installed_and_an_error_when_asked_for_without_it(tmp_path, capsys,
                                                                                        monkeypatch):
    import sys

    needs_tensorboard()
    run(tmp_path / "on", "--epochs", "1")
    assert any(f.startswith("events.out.tfevents.") for f in os.listdir(tmp_path / "on" / "tensorboard"))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    run(tmp_path / "off", "--epochs", "1")
    assert not (tmp_path / "off" / "tensorboard").exists()
    line = one_error_line(capsys, TINY + ["--out", str(tmp_path / "asked"), "--tensorboard"])
    assert line == "error: --tensorboard needs the tensorboard package: pip install -e '.[interop]'"


def test_relu_vs_tanh_mistakes_are_one_line(tmp_path, capsys):
    assert relu_vs_tanh.cli(["--data", "synthetic", "--out", "/proc/no-such-folder", "--epochs", "1"]) == 2
    _, err = capsys.readouterr()
    assert err.strip().splitlines() == ["error: No such file or directory: /proc/no-such-folder"]
    with pytest.raises(SystemExit) as info:  # argparse's own checks: one line too
        relu_vs_tanh.cli(["--data", "synthetic", "--out", str(tmp_path), "--epochs", "0"])
    assert info.value.code == 2 and capsys.readouterr().err == (
        "error: argument --epochs: must be at least 1, got 0 (see python -m models.relu_vs_tanh --help)\n")
    assert relu_vs_tanh.cli(["--data", "nonsense", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: unknown data set spec 'nonsense'")
    assert os.listdir(tmp_path) == []  # not even the output folder


def test_relu_vs_tanh_measures_the_training_error_over_the_training_set():
    """Each point of the curve is the error of the weights at that moment over
    the whole training set (not the running error of the batches trained, nor
    a small last batch's): recomputed here independently, the same numbers."""
    from models.alexnet import train_step
    from models.cnn import cnn4
    from models.data import load_dataset

    data = load_dataset("synthetic", 16, channels=3, seed=0)
    n = len(data.train_labels)
    batch = 48 if n % 48 else 40  # a last batch smaller than the others
    run_ = relu_vs_tanh.train_curve("relu", data, 1, batch, 0.05, 0.9, 0, 4, log=lambda *_: None)

    model = cnn4(data.num_classes, 16, activation="relu", width=4, seed=0, channels=3)
    step = train_step(model, lr=0.05, momentum=0.9, weight_decay=0.0, seed=0)
    evaluate = model.compile_eval()

    def error():
        return float(np.mean(np.argmax(evaluate(data.train_images), 1) != data.train_labels))

    expected = [error()]
    batches = list(data.train_batches(batch, np.random.default_rng([0, 1])))
    assert len(batches[-1][1]) < batch
    every = max(1, len(batches) // 4)
    for b, (x, y) in enumerate(batches):
        step(x, y)
        if (b + 1) % every == 0 or b + 1 == len(batches):
            expected.append(error())
    assert [e for _, e in run_["curve"]] == pytest.approx(expected, abs=1e-12)
    assert run_["curve"][0][0] == 0.0 and run_["curve"][-1][0] == pytest.approx(1.0)
    assert run_["train_error"] == [pytest.approx(expected[-1])]


def test_relu_vs_tanh_error_sample_is_fixed_and_bounded():
    from models.data import load_dataset

    data = load_dataset("synthetic", 16, channels=3, seed=0)
    a, la = relu_vs_tanh.error_sample_of(data, 50, seed=3)
    b, lb = relu_vs_tanh.error_sample_of(data, 50, seed=3)
    assert len(la) == 50 and np.array_equal(a, b) and np.array_equal(la, lb)
    every, labels = relu_vs_tanh.error_sample_of(data, 10 ** 9, seed=3)
    assert np.array_equal(labels, data.train_labels)
