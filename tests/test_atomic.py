"""graphdiff.atomic.atomic_write: the one way every file of a run is written
(checkpoints, metrics, curves, explorer pages, ONNX models)."""
import os
import subprocess
import sys

import pytest

from graphdiff.atomic import atomic_write, remove_stale_temporaries, temporary_path


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    with atomic_write(path, "w") as f:
        f.write("new\n")
        assert path.read_text() == "old\n"  # nothing is visible before the block ends
        assert f.name == temporary_path(path)
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["metrics.jsonl"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path, failure):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(type(failure)):
        with atomic_write(path) as f:
            f.write(b"half a mod")
            raise failure
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["model.onnx"]


def test_the_temporary_of_a_killed_writer_goes_at_the_next_write(tmp_path):
    path = tmp_path / "explorer.html"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f"explorer.html.tmp-{dead}"
    stale.write_text("a page cut off by a kill")
    live = tmp_path / f"explorer.html.tmp-{os.getppid()}"  # a writer still running: its file stays
    live.write_text("being written")
    other = tmp_path / "explorer.html.tmp-notapid"
    other.write_text("not ours")
    assert remove_stale_temporaries(path) == [str(stale)]
    stale.write_text("again")
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("<html></html>")
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, live.name, other.name])


def test_only_whole_file_modes():
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write("x", "a"):
            pass


def test_a_file_that_cannot_be_opened_is_named_not_its_temporary(tmp_path):
    path = tmp_path / "no" / "folder" / "page.html"
    with pytest.raises(FileNotFoundError) as info:
        with atomic_write(path, "w"):
            pass
    assert info.value.filename == str(path) and ".tmp" not in str(info.value)
