"""benchmarks/streaming_step.py at a toy size: the three ways of feeding the
AlexNet step (batches in memory, streamed from a pack, decoded from JPEGs)
train on the same batches and give the same losses. Its timings are not
looked at (they go in BENCHMARKS.md)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_three_feeds_give_the_same_finite_losses(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "streaming_step.py"),
                          "--image-size", "67", "--batch", "4", "--steps", "2", "--repeats", "3",
                          "--classes", "5", "--keep", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "every loss finite: True; in memory and packed bitwise equal in every repeat: True" in text
    # the folder's statistics come from every training image here: the same batches as the pack's
    assert re.search(r"JPEG folder against in memory: largest difference 0\.00e\+00", text), text
    assert len(re.findall(r"^  repeat \d: ", text, re.M)) == 3
    for mode in ("in memory", "packed", "JPEG folder"):
        assert re.search(rf"^  {mode} +\d", text, re.M), mode
    # --keep: the tree and its pack stay for the next run
    assert any(n.startswith("pack-") for n in os.listdir(tmp_path))
