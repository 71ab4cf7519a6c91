"""Files written all or nothing: checkpoints, metrics, pictures, pages, ONNX models.

:func:`atomic_write` writes into ``<path>.tmp-<pid>`` in the same directory,
flushes and fsyncs it, moves it over ``path`` with :func:`os.replace` (atomic
on POSIX and Windows within one file system) and fsyncs the directory. A
failure at any point (a full disk, an exception in the caller's block, Ctrl-C)
removes the temporary file and leaves the previous ``path`` untouched; a
crash or a kill leaves the previous file or the new one, never a mix, and at
most a temporary that the next write to ``path`` removes
(:func:`remove_stale_temporaries`: the pid in its name is no longer alive).

This module depends on the standard library only.
"""
from __future__ import annotations

import contextlib
import os

__all__ = ["atomic_write", "fsync_dir", "remove_stale_temporaries", "temporary_path"]


def temporary_path(path: str | os.PathLike) -> str:
    """Where this process writes ``path`` before moving it into place."""
    return f"{os.fspath(path)}.tmp-{os.getpid()}"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
    """``with atomic_write(path, "w") as f: ...`` writes ``path`` all or nothing
    (see the module's docstring). ``mode`` is ``"wb"`` or ``"w"``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', not {mode!r}")
    path = os.fspath(path)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        f = open(tmp, mode, encoding=encoding)
    except OSError as exc:  # no folder, no permission, ...: name the file asked for, not the temporary
        raise type(exc)(exc.errno, exc.strerror, path) from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave a half-written temporary
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable; skipped where directories cannot
    be opened (e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's live process (or cannot tell): keep its file
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list:
    """Delete ``<path>.tmp-<pid>`` files left by writers that were killed
    mid-write (a checkpoint's may be as large as the checkpoint), keeping
    those of live processes and this one. Returns the paths removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + ".tmp-"
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix):]
        if not name.startswith(prefix) or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
    return removed
