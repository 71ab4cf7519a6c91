"""What every benchmark prints about the machine it ran on, and the pause
between timed runs. Imported by the scripts of this folder (it is on
``sys.path`` when one of them runs)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graphdiff.kernels.choice import cpu_model  # noqa: E402,F401 - re-exported: /proc/cpuinfo's model name

# Idle BLAS and OpenMP worker threads spin for a while after a call (OpenBLAS:
# 2^28 cycles, ~0.1 s) and would slow whatever runs next on the other side
# (and a peak's measurement): a pause before each timed run.
PAUSE_S = 0.15


def blas_info():
    """One line per BLAS/OpenMP library loaded: its API, version, kernel in use
    (threadpoolctl's ``architecture``: e.g. OpenBLAS's Haswell or SkylakeX) and threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl not installed"]
    return [f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
            f"threads={i.get('num_threads')} ({os.path.basename(i.get('filepath', ''))})"
            for i in threadpool_info()] or ["none loaded"]


def pinned_openblas():
    """The variables that pin OpenBLAS's kernel (they halve GEMM speed here), as set."""
    return [f"{v}={os.environ[v]}" for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                             "OPENBLAS_NUM_THREADS") if v in os.environ]
