#!/usr/bin/env bash
# On a machine with a CUDA GPU: the real-GPU test run (the simulator-tested CUDA backend on
# hardware, larger shapes, full-size AlexNet), then the CUDA benchmark if it exists.
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# numba-cuda 0.30.4 needs numpy < 2.5; a GPU image may carry the right wheel in .whl/
# (see DEVELOPERS.md) for machines that cannot reach a package index.
if compgen -G ".whl/numpy-*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
NBCNN_TEST_GPU=1 python3 -m pytest tests -q
if [ -f scripts/bench.py ]; then
    python3 scripts/bench.py --device cuda
fi
