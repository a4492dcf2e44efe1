"""The CUDA backend: every op of nbcnn.backend.Backend as numba.cuda kernels.

Arrays are numba device arrays and stay on the GPU; only from_numpy/to_numpy and the
loss value cross to the host. Runs under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)
without a GPU; see docs/cuda.md.
"""

from numba import config, cuda

from ..backend import Backend
from . import array, conv, dropout, linear, loss, lrn, pool, relu, sgd


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

    is_array = staticmethod(array.is_array)
    empty = staticmethod(array.empty)
    zeros = staticmethod(array.zeros)
    from_numpy = staticmethod(array.from_numpy)
    to_numpy = staticmethod(array.to_numpy)
    fill = staticmethod(array.fill)
    copy = staticmethod(array.copy)
    contiguous = staticmethod(array.contiguous)
    reshape = staticmethod(array.reshape)
    add = staticmethod(array.add)

    conv2d_forward = staticmethod(conv.conv2d_forward)
    conv2d_backward = staticmethod(conv.conv2d_backward)
    maxpool2d_forward = staticmethod(pool.maxpool2d_forward)
    maxpool2d_backward = staticmethod(pool.maxpool2d_backward)
    relu_forward = staticmethod(relu.relu_forward)
    relu_backward = staticmethod(relu.relu_backward)
    dropout_forward = staticmethod(dropout.dropout_forward)
    dropout_backward = staticmethod(dropout.dropout_backward)
    lrn_forward = staticmethod(lrn.lrn_forward)
    lrn_backward = staticmethod(lrn.lrn_backward)
    linear_forward = staticmethod(linear.linear_forward)
    linear_backward = staticmethod(linear.linear_backward)
    softmax_cross_entropy = staticmethod(loss.softmax_cross_entropy)
    sgd_step = staticmethod(sgd.sgd_step)
