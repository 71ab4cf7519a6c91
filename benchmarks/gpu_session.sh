#!/usr/bin/env bash
# One GPU session, one command (under 9 minutes on an H100/H200, offline): versions
# (CuPy, CUDA runtime, driver, NVRTC, cuBLAS), the first training step's cost (NVRTC
# compiling every fused kernel into an empty kernel cache) against the second's,
# the GPU tests (pytest -m gpu, on the GPU or failing), AlexNet 2012 NumPy against CuPy for two SGD steps
# (conv2's input gradient included), the training-step benchmark against PyTorch in
# FP32 and with TF32 allowed on both sides. Everything goes to one log.
#
#   bash benchmarks/gpu_session.sh [LOG]       (default gpu_session_<date>.log)
#
# Needs CuPy with its CUDA libraries (pip install -e '.[gpu]' or '.[gpu-cuda13]', see
# the README's GPU section) and PyTorch CUDA installed; uses this
# checkout through PYTHONPATH (no pip install). Each stage has a time limit, and a
# failing stage does not stop the later ones; the exit status is the number of failures.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
LOG="${1:-gpu_session_$(date +%Y%m%d_%H%M%S).log}"
exec > >(tee "$LOG") 2>&1
failures=0

stage() {  # stage NAME SECONDS COMMAND...
    local name="$1" limit="$2"
    shift 2
    echo
    echo "=== $name (limit ${limit}s) $(date +%H:%M:%S)"
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" -eq 0 ] || failures=$((failures + 1))
}

stage "versions, first step" 60 "$PY" - <<'PYEOF'
import platform, subprocess, sys
import numpy, cupy
print("python", platform.python_version(), "numpy", numpy.__version__, "cupy", cupy.__version__)
assert not getattr(cupy, "STANDIN", False), "the CuPy stand-in is on the path; this run needs real CuPy"
rt = cupy.cuda.runtime
print("CUDA runtime", rt.runtimeGetVersion(), "driver", rt.driverGetVersion(),
      "device", rt.getDeviceProperties(0)["name"].decode())
try:
    import torch
    print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
except ImportError as exc:
    print("no torch:", exc)
print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                     capture_output=True, text=True).stdout, flush=True)
# NVRTC and cuBLAS versions, backend check, first and second step. In its own process:
# CuPy fixes its kernel cache directory when it is imported (as above), so only a fresh
# process sees the empty cache gpu_first_step.py sets up, and the first step really compiles.
sys.exit(subprocess.run([sys.executable, "benchmarks/gpu_first_step.py", "--batch", "16"]).returncode)
PYEOF
stage "pytest -m gpu" 210 env GRAPHDIFF_GPU_TESTS=gpu "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
stage "NumPy vs CuPy, AlexNet 2012, two SGD steps" 90 env CUPY_TF32=0 "$PY" benchmarks/gpu_check.py --batch 16
stage "benchmark FP32" 75 env CUPY_TF32=0 "$PY" benchmarks/alexnet_gpu.py --batch 128 --reps 10
stage "benchmark TF32" 70 env CUPY_TF32=1 "$PY" benchmarks/alexnet_gpu.py --batch 128 --reps 10 --tf32
echo
echo "=== done: $failures failing stage(s); log in $LOG"
exit "$failures"
