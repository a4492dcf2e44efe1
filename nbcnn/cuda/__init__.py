"""The CUDA backend: every op of nbcnn.backend.Backend as numba.cuda kernels.

Arrays are numba device arrays and stay on the GPU; only from_numpy/to_numpy and the
loss value cross to the host. Runs under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)
without a GPU; see docs/cuda.md.
"""

import os

import numpy as np
from numba import config, cuda
from numba.cuda.extending import overload as cuda_overload

from ..backend import Backend, implement
from ..kernel_math import add_rn, idiv, mul_rn

# numba warns at every launch of fewer than 128 blocks; nbcnn makes such launches on purpose
# (bias sums, the loss, small layers), every step. Set in the environment as well as in
# numba's config, which numba re-reads from the environment now and then. A user's own
# setting wins.
if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" not in os.environ:
    os.environ["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"] = "0"
    config.CUDA_LOW_OCCUPANCY_WARNINGS = 0


# -- kernel_math's rounding and index division in CUDA (registered here, not in kernel_math: the
# CPU backend does not import numba.cuda) ----------------------------------------------------------
@cuda_overload(mul_rn, target="cuda")
def _mul_rn_cuda(a, b):
    from numba.cuda.libdevice import dmul_rn
    return lambda a, b: dmul_rn(a, b)


@cuda_overload(add_rn, target="cuda")
def _add_rn_cuda(a, b):
    from numba.cuda.libdevice import dadd_rn
    return lambda a, b: dadd_rn(a, b)


@cuda_overload(idiv, target="cuda")
def _idiv_cuda(a, b):
    return lambda a, b: np.int32(np.uint32(a) // np.uint32(b))


def _gpu_present():
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver install raises instead of answering False
        return False


class CUDABackend(Backend):
    name = "cuda"

    def __init__(self):
        if not config.ENABLE_CUDASIM and not _gpu_present():
            raise RuntimeError("no CUDA GPU found; use --device cpu (or set NUMBA_ENABLE_CUDASIM=1 "
                               "before importing numba to run the CUDA backend in numba's simulator)")


implement(CUDABackend, __name__)
