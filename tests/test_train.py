"""The training command (models/train.py) and the ReLU-vs-tanh experiment,
run in-process on tiny synthetic data."""
import json
import os

import numpy as np
import pytest

import models.train as train
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

    monkeypatch.setattr(train, "train_epoch", interrupted_in_epoch_2)
    result = run(broken, "--epochs", "2")
    assert result["status"] == "interrupted"
    assert "--resume" in capsys.readouterr().out
    _, meta = load_checkpoint(broken / "checkpoint.npz")
    assert meta["epoch"] == 1
    monkeypatch.setattr(train, "train_epoch", real_epoch)
    run(broken, "--epochs", "2", "--resume")
    assert [r["train_loss"] for r in metrics(broken)] == [r["train_loss"] for r in metrics(straight)]


def test_lr_is_divided_by_ten_when_validation_error_stalls(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "evaluate", lambda predict, dataset, batch_size: (1.0, 0.5))
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
