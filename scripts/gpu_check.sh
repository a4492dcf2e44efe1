#!/usr/bin/env bash
# On a machine with a CUDA GPU: the real-GPU test run (the simulator-tested CUDA backend on
# hardware, larger shapes, full-size AlexNet), then the CUDA benchmark.
#   bash scripts/gpu_check.sh [tests|bench|gemm|winograd|dist|all]     (default: all)
# gemm: the candidate SGEMM versions of dev/cuda/sgemm.py, checked and timed side by side.
# winograd: dev/cuda/winograd.py, Winograd F(2x2,3x3) against im2col on AlexNet conv3-5 and
# ResNet-18's 3x3 layers at batch 128, forward and backward (the CUDA rule is owed to it).
# dist: nbcnn.distributed's NCCL path with one process on one GPU (NCCL runs with one rank);
# needs mpi4py, mpich and nccl4py (in the download below; the GPU image has NCCL's library,
# nvidia-nccl-cu13, and cuda-core/cuda-pathfinder/cuda-bindings, which nccl4py needs), skipped
# with a message without them.
# Logs and bench_cuda.json go to $OUT when it is set (the device tool's folder), else to the
# current directory. The device tool runs one command for at most 10 minutes: where both
# halves do not fit, run `tests` and `bench` as two calls.
#
# The device machine has no package index. numba-cuda 0.30.4 needs numpy < 2.5, and the tests
# need a few pure-Python packages; fetch their wheels into .whl/ once, on a machine with an index:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 -d .whl numpy==2.4.4 threadpoolctl \
#       pytest pluggy iniconfig packaging hypothesis sortedcontainers attrs mpi4py mpich nccl4py
# (35 MB in all, measured: the device tool carries at most 64 MiB.)
# (`echo /.whl/ >> .git/info/exclude` keeps them out of git) and pass carry: [".whl"] to the
# device tool. The GPU machine needs numba-cuda's CUDA 13 compiler libraries (the [cu13]
# extra, `pip install -e ".[cuda]"`); the script checks for them first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH" PATH="/tmp/site/bin:$PATH"  # bin: the mpich wheel's mpiexec
fi
what="${1:-all}"
out="${OUT:-.}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if ! python3 - <<'PY'
from numba import cuda

def probe(a):
    a[0] = 1.0

try:
    cuda.compile_ptx(probe, "void(float32[::1])")
except Exception as e:  # noqa: BLE001
    raise SystemExit(f"numba-cuda cannot compile for the GPU ({type(e).__name__}: {str(e)[:300]}); "
                     "install the CUDA 13 compiler libraries: pip install -e '.[cuda]'")
PY
then
    exit 1
fi
rc=0
if [[ "$what" == all || "$what" == tests ]]; then
    # the files that use the CUDA backend (the others are CPU-only and run in CI); no -x:
    # a GPU session is rare, one run should report every failure
    NBCNN_TEST_GPU=1 python3 -m pytest -q -rs tests/test_cuda_compiles.py tests/test_backends_agree.py \
        tests/test_ops.py tests/test_memory.py tests/test_train_alexnet.py tests/test_bench.py \
        tests/test_conv_winograd_cuda.py 2>&1 | tee "$out/gpu_tests.txt" || rc=1
fi
if [[ "$what" == all || "$what" == bench ]]; then  # benchmarked even after a test failure
    python3 scripts/bench.py --device cuda --json "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.txt" || rc=1
fi
if [[ "$what" == all || "$what" == gemm ]]; then
    python3 dev/cuda/sgemm.py 2>&1 | tee "$out/sgemm_versions.txt" || rc=1
fi
if [[ "$what" == all || "$what" == winograd ]]; then
    python3 dev/cuda/winograd.py 2>&1 | tee "$out/winograd_versions.txt" || rc=1
fi
if [[ "$what" == all || "$what" == dist ]]; then
    if python3 -c "import mpi4py, nccl.core" 2>/dev/null; then
        mpiexec -n 1 python3 scripts/bench_allreduce.py --device cuda --steps 3 2>&1 | tee "$out/dist_nccl.txt" || rc=1
    else
        echo "dist: skipped, mpi4py or nccl4py is not installed" | tee "$out/dist_nccl.txt"
    fi
fi
exit $rc
