"""``cupyx.distributed`` for one process: ``NCCLBackend`` with a world of size 1.

Real signatures (CuPy 13/14): ``NCCLBackend(n_devices, rank, host='127.0.0.1',
port=13333, use_mpi=False)``; ``all_reduce(in_array, out_array, op='sum',
stream=None)``, ``reduce(in_array, out_array, root=0, op='sum', stream=None)``,
``broadcast(in_out_array, root=0, stream=None)``, ``all_gather(in_array,
out_array, count, stream=None)``, ``reduce_scatter(in_array, out_array, count,
op='sum', stream=None)``, ``barrier()``;
``init_process_group(n_devices, rank, *, backend='nccl', host=None, port=None,
use_mpi=False)``. With one device each collective is a copy (counted as a launch)
or nothing.
"""
import cupy as _cupy
from cupy import _core


class NCCLBackend:
    def __init__(self, n_devices, rank, host="127.0.0.1", port=13333, use_mpi=False):
        if n_devices != 1 or rank != 0:
            raise RuntimeError(f"the CuPy stand-in has one device: NCCLBackend({n_devices}, {rank}) needs "
                               f"n_devices=1, rank=0")
        self._n_devices, self.rank, self.host, self.port = n_devices, rank, host, port

    def _check(self, *arrays):
        for a in arrays:
            if not isinstance(a, _cupy.ndarray):
                raise TypeError(f"Unsupported type {type(a)}")

    def all_reduce(self, in_array, out_array, op="sum", stream=None):
        if op not in ("sum", "prod", "max", "min", "avg"):
            raise ValueError(f"Unknown op {op}")
        self._check(in_array, out_array)
        if out_array is not in_array:
            _cupy.copyto(out_array, in_array)

    def reduce(self, in_array, out_array, root=0, op="sum", stream=None):
        self.all_reduce(in_array, out_array, op, stream)

    def broadcast(self, in_out_array, root=0, stream=None):
        if root != 0:
            raise ValueError(f"root {root} out of range for 1 device")
        self._check(in_out_array)

    def all_gather(self, in_array, out_array, count, stream=None):
        self._check(in_array, out_array)
        if out_array.size != count or in_array.size != count:
            raise ValueError(f"all_gather: count {count} does not match the arrays at 1 device")
        _cupy.copyto(out_array.reshape(in_array.shape), in_array)

    def reduce_scatter(self, in_array, out_array, count, op="sum", stream=None):
        self._check(in_array, out_array)
        if out_array.size != count or in_array.size != count:
            raise ValueError(f"reduce_scatter: count {count} does not match the arrays at 1 device")
        _cupy.copyto(out_array, in_array.reshape(out_array.shape))

    def barrier(self):
        pass


def init_process_group(n_devices, rank, *, backend="nccl", host=None, port=None, use_mpi=False):
    if backend != "nccl":
        raise ValueError(f"{backend} is not supported")
    return NCCLBackend(n_devices, rank, host or "127.0.0.1", port or 13333, use_mpi)


__all__ = ["NCCLBackend", "init_process_group"]
_ = _core
