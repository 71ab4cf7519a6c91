"""Tests for graphdiff/checkpoint.py: round trips, damage, crash safety."""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import numpy as np
import pytest

import graphdiff.checkpoint as ck
from graphdiff.checkpoint import (
    CheckpointError,
    generator_state,
    load_checkpoint,
    restore_generator,
    save_checkpoint,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example_arrays():
    rng = np.random.default_rng(0)
    return {
        "conv1/w": rng.normal(size=(4, 3, 5, 5)).astype(np.float32),
        "conv1/b": np.zeros(4, np.float32),
        "fc/w": rng.normal(size=(7, 3)),  # float64
        "step": np.array(12, np.int64),  # 0-d
        "mask": np.array([True, False]),
        "file": np.arange(3, dtype=np.uint16),  # np.savez's parameter name
    }


def _assert_same_arrays(got, expected):
    assert set(got) == set(expected)
    for name, arr in expected.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr)


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------


def test_round_trip_exact(tmp_path):
    path = tmp_path / "ckpt.npz"
    arrays = _example_arrays()
    meta = {"epoch": 3, "lr": 0.01, "history": [1.5, 0.75], "note": "ünï",
            "big": 2 ** 100, "np_int": np.int64(5), "np_float": np.float32(0.5)}
    save_checkpoint(path, arrays, meta)
    got, got_meta = load_checkpoint(path)
    _assert_same_arrays(got, arrays)
    assert got_meta == {**meta, "np_int": 5, "np_float": 0.5}
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temp file left
    # It is an ordinary npz that plain NumPy reads without pickle.
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == set(arrays) | {"__meta__"}
        assert npz["__meta__"].dtype == np.uint8
        assert json.loads(npz["__meta__"].tobytes())["epoch"] == 3


def test_compressed_and_overwrite(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, {"a": np.ones(5)}, {"v": 1})
    save_checkpoint(path, {"b": np.zeros((100, 100))}, {"v": 2}, compress=True)
    got, meta = load_checkpoint(path)
    assert meta == {"v": 2} and list(got) == ["b"]
    assert os.path.getsize(path) < 100 * 100 * 8 / 10


def test_generator_state_round_trip(tmp_path):
    rng = np.random.default_rng(1234)
    rng.normal(size=17)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {}, {"rng": generator_state(rng)})
    expected = rng.random(8)
    _, meta = load_checkpoint(path)

    fresh = restore_generator(meta["rng"])
    np.testing.assert_array_equal(fresh.random(8), expected)
    in_place = np.random.default_rng(999)
    assert restore_generator(meta["rng"], in_place) is in_place
    np.testing.assert_array_equal(in_place.random(8), expected)


@pytest.mark.parametrize("kind", ["MT19937", "Philox", "SFC64", "PCG64DXSM"])
def test_generator_state_other_bit_generators(kind):
    # These states hold arrays; they must survive a trip through JSON.
    rng = np.random.Generator(getattr(np.random, kind)(7))
    rng.integers(0, 100, size=5)
    state = json.loads(json.dumps(generator_state(rng)))
    restored = restore_generator(state)
    np.testing.assert_array_equal(restored.random(20), rng.random(20))


def test_restore_generator_kind_mismatch():
    state = generator_state(np.random.Generator(np.random.MT19937(1)))
    with pytest.raises(ValueError, match="MT19937"):
        restore_generator(state, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown bit generator"):
        restore_generator({**state, "bit_generator": "os.system"})


def test_rejects_unsaveable_input_without_touching_disk(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"a": np.ones(3)}, {"v": 1})
    with pytest.raises(TypeError):
        save_checkpoint(path, {"a": np.ones(3)}, {"v": object()})
    with pytest.raises(TypeError, match="arrays"):
        save_checkpoint(path, {"a": np.ones(3)}, {"v": np.ones(2)})
    with pytest.raises(ValueError):
        save_checkpoint(path, {"a": np.ones(3)}, {"lr": float("nan")})
    with pytest.raises(TypeError, match="pickle"):
        save_checkpoint(path, {"a": np.array([{}, None])}, {})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, {"__meta__": np.ones(1)}, {})
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert load_checkpoint(path)[1] == {"v": 1}


def test_failure_mid_write_removes_temp_and_keeps_previous(tmp_path,
                                                           monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.arange(4.0)}, {"epoch": 1})
    real_write = ck._write_entry
    calls = []

    def failing_write(zf, name, arr):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(zf, name, arr)

    monkeypatch.setattr(ck, "_write_entry", failing_write)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"w": np.ones(4), "v": np.ones(2)}, {"epoch": 2})
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    arrays, meta = load_checkpoint(path)
    np.testing.assert_array_equal(arrays["w"], np.arange(4.0))
    assert meta == {"epoch": 1}


# --------------------------------------------------------------------------
# damaged files
# --------------------------------------------------------------------------


def test_missing_and_empty_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(CheckpointError, match=r"nope\.npz: file not found"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="file is empty"):
        load_checkpoint(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "ckpt.npz"
    os.mkfifo(path)
    result = queue.Queue()

    def load():
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            result.put(str(exc))

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader so the test run can end
        with open(path, "wb"):
            pass
        pytest.fail("load_checkpoint blocked on a FIFO")
    assert "ckpt.npz: not a regular file" in result.get_nowait()


def test_not_a_zip(tmp_path):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(b"hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match=r"ckpt\.npz: not a zip/npz file"):
        load_checkpoint(path)
    np.save(tmp_path / "plain.npy", np.ones(3))  # a .npy is not an .npz
    with pytest.raises(CheckpointError, match="not a zip/npz file"):
        load_checkpoint(tmp_path / "plain.npy")


def test_truncated_file_always_detected(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, _example_arrays(), {"epoch": 1})
    data = path.read_bytes()
    for cut in list(range(1, len(data), 97)) + [len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)


def test_corrupt_entry_named(tmp_path):
    path = tmp_path / "ckpt.npz"
    weights = np.arange(1000, 1256, dtype=np.float64)
    save_checkpoint(path, {"conv1/w": weights, "b": np.ones(3)}, {"epoch": 1})
    data = bytearray(path.read_bytes())
    offset = bytes(data).find(weights.tobytes())
    assert offset > 0
    data[offset + 100] ^= 0x40  # flip one bit inside the array's data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="entry conv1/w is corrupt"):
        load_checkpoint(path)


def test_every_single_byte_flip_is_detected_or_harmless(tmp_path):
    path = tmp_path / "ckpt.npz"
    arrays = {"w": np.arange(64.0), "b": np.ones(3, np.float32)}
    save_checkpoint(path, arrays, {"epoch": 1})
    data = path.read_bytes()
    for pos in range(len(data)):
        damaged = bytearray(data)
        damaged[pos] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            got, meta = load_checkpoint(path)
        except CheckpointError:
            continue
        # Flips in unchecked zip fields (timestamps, ...) must not alter data.
        _assert_same_arrays(got, arrays)
        assert meta == {"epoch": 1}


def test_missing_or_bad_meta(tmp_path):
    path = tmp_path / "ckpt.npz"
    with open(path, "wb") as f:
        np.savez(f, w=np.ones(2))
    with pytest.raises(CheckpointError, match="missing entry __meta__"):
        load_checkpoint(path)
    with open(path, "wb") as f:
        np.savez(f, w=np.ones(2), __meta__=np.frombuffer(b"{oops", np.uint8))
    with pytest.raises(CheckpointError, match="entry __meta__ is corrupt"):
        load_checkpoint(path)
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(b"[1, 2]", np.uint8))
    with pytest.raises(CheckpointError, match="entry __meta__ is corrupt"):
        load_checkpoint(path)


def test_pickled_entry_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("evil.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"x": 1}], dtype=object))
        with zf.open("__meta__.npy", "w") as f:
            np.lib.format.write_array(f, np.frombuffer(b"{}", np.uint8))
    with pytest.raises(CheckpointError, match="entry evil"):
        load_checkpoint(path)


# --------------------------------------------------------------------------
# crash safety with a real SIGKILL
# --------------------------------------------------------------------------


def _spawn(script):
    """Start a Python writer process; its stdout lines go to ``proc.lines``."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                            stdout=subprocess.PIPE, text=True, env=env,
                            cwd=REPO_ROOT)
    # A reader thread (rather than select on a buffered pipe) so that lines
    # arriving together are never stuck in a buffer select cannot see.
    proc.lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            proc.lines.put(line.strip())
        proc.lines.put(None)  # EOF

    proc.pump = threading.Thread(target=pump, daemon=True)
    proc.pump.start()
    return proc


def _read_line(proc, timeout=20.0):
    """Next stdout line of proc, failing the test rather than hanging."""
    try:
        line = proc.lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail("writer subprocess did not report in time")
    if line is None:
        pytest.fail(f"writer subprocess exited early (rc={proc.wait()})")
    return line


def _kill(proc, check=True):
    """SIGKILL proc and reap it; with ``check`` assert it died of the kill
    (not some earlier exit)."""
    proc.send_signal(signal.SIGKILL)  # no-op if it already exited
    rc = proc.wait(timeout=10)
    proc.pump.join(timeout=10)
    proc.stdout.close()
    if check:
        assert rc == -signal.SIGKILL, f"writer exited with {rc} before kill"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_save_keeps_previous_checkpoint(tmp_path):
    """Kill the writer while it is provably half way through the archive."""
    path = tmp_path / "ckpt.npz"
    previous = {"w": np.arange(1000.0), "epoch_marker": np.array(1)}
    save_checkpoint(path, previous, {"epoch": 1})

    proc = _spawn(f"""
        import sys, time
        import numpy as np
        import graphdiff.checkpoint as ck

        real_write = ck._write_entry
        def slow_write(zf, name, arr):
            real_write(zf, name, arr)
            print("wrote", name, flush=True)
            time.sleep(60)  # stuck mid-archive until killed
        ck._write_entry = slow_write
        ck.save_checkpoint({str(path)!r},
                           {{"w": np.full(1_000_000, 2.0), "x": np.ones(9)}},
                           {{"epoch": 2}})
    """)
    try:
        assert _read_line(proc) == "wrote w"
        tmp = f"{path}.tmp-{proc.pid}"
        assert os.path.getsize(tmp) > 8_000_000  # really half written
    except BaseException:
        _kill(proc, check=False)
        raise
    _kill(proc)

    arrays, meta = load_checkpoint(path)
    _assert_same_arrays(arrays, previous)
    assert meta == {"epoch": 1}
    # The dead writer's temp file is left behind but is clearly not it ...
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp)
    # ... and the next save removes it (a live writer's temp file stays).
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = f"{path}.tmp-{sleeper.pid}"
        with open(live, "wb") as f:
            f.write(b"being written")
        save_checkpoint(path, previous, {"epoch": 3})
        assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.npz", os.path.basename(live)])
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_save_loop_always_leaves_a_whole_checkpoint(tmp_path):
    """A writer saving as fast as it can, killed at arbitrary moments (most
    land inside a save): the file is always one complete checkpoint, never
    older than the last save the writer reported finished."""
    path = tmp_path / "ckpt.npz"
    for attempt, delay in enumerate([0.0, 0.003, 0.02]):
        proc = _spawn(f"""
            import numpy as np
            from graphdiff.checkpoint import save_checkpoint
            w, b = np.empty(2_000_000), np.empty(10, np.int64)
            for i in range(1_000_000):
                w.fill(i)  # reuse buffers: the loop is almost all writing
                b.fill(i)
                save_checkpoint({str(path)!r}, {{"w": w, "b": b}}, {{"i": i}})
                print(i, flush=True)
        """)
        try:
            done = int(_read_line(proc))
            done = int(_read_line(proc))  # now the next save is under way
            time.sleep(delay)
        except BaseException:
            _kill(proc, check=False)
            raise
        _kill(proc)
        arrays, meta = load_checkpoint(path)
        i = meta["i"]
        assert i >= done, (attempt, done, i)  # never rolled back
        np.testing.assert_array_equal(arrays["w"], np.full(2_000_000, float(i)))
        np.testing.assert_array_equal(arrays["b"], np.full(10, i))


def test_non_finite_metadata_names_where_it_is(tmp_path):
    path = tmp_path / "c.npz"
    for meta, where in [({"lr": float("nan")}, "'lr' = nan"),
                        ({"history": [{"a": 1.0}, {"val_loss": float("inf")}]}, "'history'[1]['val_loss'] = inf")]:
        with pytest.raises(ValueError, match=re.escape(f"checkpoint metadata {where} is not a finite number")):
            save_checkpoint(path, {"a": np.ones(2)}, meta)
    assert not path.exists() and os.listdir(tmp_path) == []
