"""Crash-safe checkpoint files (``.npz``, never pickled).

A checkpoint is a standard NumPy ``.npz`` archive holding one ``.npy`` entry
per named array plus ``__meta__``: the UTF-8 JSON text of a metadata dict
(epoch, learning rate, RNG state, ...) stored as a uint8 array, so loading
never needs ``allow_pickle``.

Writes are atomic (:func:`graphdiff.atomic.atomic_write`): the archive is
written to ``<path>.tmp-<pid>`` in the same directory, flushed and fsynced,
moved over ``path`` with :func:`os.replace`, and the directory is fsynced.  A
crash or kill at any moment therefore leaves either the previous checkpoint
or the new one, never a mix.

This module depends only on NumPy; it knows nothing about the graph engine.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from typing import Any, Mapping, Optional

import numpy as np

from .atomic import atomic_write, remove_stale_temporaries
from .backends import to_host_array

__all__ = [
    "CheckpointError",
    "META_KEY",
    "generator_state",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore_generator",
    "save_checkpoint",
]

#: Name of the archive entry holding the JSON metadata.
META_KEY = "__meta__"

# Bit generators whose state restore_generator may rebuild by name (a fixed
# list, so a checkpoint cannot make us look up arbitrary attributes).
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")

# Tag marking an array inside JSON (bit-generator states contain arrays).
_ARRAY_TAG = "__ndarray__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt."""


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    """Let NumPy scalars through json.dumps as plain Python numbers."""
    if isinstance(obj, np.generic) and not isinstance(obj, np.ndarray):
        return obj.item()
    if isinstance(obj, np.ndarray):
        raise TypeError("numpy arrays do not belong in checkpoint meta; put "
                        "them in `arrays` (or use generator_state() for RNGs)")
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _encode_meta(meta: Mapping[str, Any]) -> np.ndarray:
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    # allow_nan=False: NaN/inf are not JSON; an lr of NaN is a bug to report
    # now rather than a file other tools cannot parse.
    try:
        text = json.dumps(dict(meta), default=_json_default, allow_nan=False,
                          sort_keys=True)
    except ValueError:
        where = _non_finite(dict(meta))
        raise ValueError(f"checkpoint metadata {where} is not a finite number (JSON has no NaN "
                         "or infinity)") from None
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _non_finite(value, path="") -> Optional[str]:
    """Where in ``value`` (dicts and lists) a NaN or an infinity sits: ``'lr'``, ``'history'[3]['val_loss']``."""
    if isinstance(value, float) or (isinstance(value, np.generic) and np.issubdtype(type(value), np.floating)):
        return None if np.isfinite(value) else f"{path or 'value'} = {float(value)}"
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, (list, tuple)) \
        else ()
    for k, v in items:
        found = _non_finite(v, f"{path}[{k!r}]" if path or not isinstance(k, str) else repr(k))
        if found:
            return found
    return None


def _check_arrays(arrays: Mapping[str, Any]) -> dict:
    """Validate names and dtypes before touching the disk."""
    checked = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"array names must be non-empty str, got {name!r}")
        if name == META_KEY:
            raise ValueError(f"{META_KEY!r} is reserved for the metadata")
        arr = np.asarray(to_host_array(value))  # a device (CuPy) array is copied to the host
        if arr.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype {arr.dtype}, which "
                            "would need pickle")
        checked[name] = arr
    return checked


def _write_entry(zf: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    """Write one array as ``name.npy`` into the open archive."""
    with zf.open(name + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)


def save_checkpoint(path: str | os.PathLike, arrays: Mapping[str, Any],
                    meta: Mapping[str, Any], compress: bool = False) -> None:
    """Atomically write ``arrays`` and ``meta`` to the ``.npz`` at ``path``.

    ``arrays`` maps names (``"conv1/w"`` style is fine) to arrays of any
    non-object dtype.  ``meta`` must be JSON serialisable (NumPy scalars are
    converted; use :func:`generator_state` for RNG state).  On any failure
    the temporary file is removed and an existing checkpoint at ``path`` is
    left untouched.
    """
    checked = _check_arrays(arrays)
    meta_bytes = _encode_meta(meta)  # fail on bad meta before writing
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_write(path) as f:
        with zipfile.ZipFile(f, "w", compression=compression, allowZip64=True) as zf:
            for name, arr in checked.items():
                _write_entry(zf, name, arr)
            _write_entry(zf, META_KEY, meta_bytes)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _read_entries(npz, fail) -> dict:
    """Load every entry of an open NpzFile into memory."""
    names = list(npz.files)
    if META_KEY not in names:
        raise fail(f"missing entry {META_KEY}")
    arrays = {}
    for name in names:
        # Reading every entry now checks each one's CRC, so damage is
        # reported here rather than surfacing later as garbage weights.
        try:
            arrays[name] = npz[name]
        except Exception as exc:  # zipfile/zlib/format errors vary
            raise fail(f"entry {name} is corrupt", exc) from exc
    return arrays


def load_checkpoint(path: str | os.PathLike) -> tuple:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns ``(arrays, meta)``: a dict of fully loaded arrays and the
    metadata dict.  Raises :class:`CheckpointError` naming the file and the
    problem if it is missing, truncated or corrupt.
    """
    path = os.fspath(path)

    def fail(what: str, exc: Optional[BaseException] = None):
        detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        return CheckpointError(f"checkpoint {path}: {what}{detail}")

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise fail("file not found") from None
    except OSError as exc:
        raise fail("cannot open file", exc) from exc
    if not stat.S_ISREG(info.st_mode):
        # A FIFO would block open() until a writer appears; a device never ends.
        raise fail("not a regular file")
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise fail("cannot open file", exc) from exc
    # We own the handle (np.load on a path leaks it when the zip is bad).
    with f:
        magic = f.read(4)
        if magic != b"PK\x03\x04":
            raise fail("not a zip/npz file" if magic else "file is empty")
        f.seek(0)
        try:
            npz = np.load(f, allow_pickle=False)
        except Exception as exc:  # zipfile raises several types on damage
            raise fail("not a valid zip/npz file (truncated or damaged)",
                       exc) from exc
        with npz:
            arrays = _read_entries(npz, fail)
    meta_arr = arrays.pop(META_KEY)
    try:
        if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
            raise ValueError(f"expected 1-D uint8, got {meta_arr.dtype} "
                             f"{meta_arr.shape}")
        meta = json.loads(meta_arr.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got "
                             f"{type(meta).__name__}")
    except ValueError as exc:  # includes JSON and Unicode decode errors
        raise fail(f"entry {META_KEY} is corrupt", exc) from exc
    return arrays, meta


# --------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------


def _to_json(obj: Any) -> Any:
    """Bit-generator state -> JSON-able: arrays become tagged lists and
    NumPy ints plain ints (128-bit PCG64 state is fine as a JSON int)."""
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return {_ARRAY_TAG: obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if _ARRAY_TAG in obj:
            return np.array(obj[_ARRAY_TAG], dtype=np.dtype(obj["dtype"]))
        return {k: _from_json(v) for k, v in obj.items()}
    return obj


def generator_state(rng: np.random.Generator) -> dict:
    """The state of ``rng`` as a JSON-serialisable dict for checkpoint meta."""
    return _to_json(rng.bit_generator.state)


def restore_generator(state: Mapping[str, Any],
                      rng: Optional[np.random.Generator] = None
                      ) -> np.random.Generator:
    """Rebuild a Generator from :func:`generator_state` output.

    With ``rng`` given its state is set in place (its bit generator must be
    of the same kind) and it is returned; otherwise a new Generator with the
    recorded bit generator is created.  Either way the next draws equal
    those the saved generator would have produced.
    """
    state = _from_json(dict(state))
    kind = state.get("bit_generator")
    if rng is None:
        if kind not in _BIT_GENERATORS:
            raise ValueError(f"unknown bit generator {kind!r} in RNG state")
        rng = np.random.Generator(getattr(np.random, kind)())
    elif type(rng.bit_generator).__name__ != kind:
        raise ValueError(f"RNG state is for {kind}, but the generator uses "
                         f"{type(rng.bit_generator).__name__}")
    rng.bit_generator.state = state
    return rng
