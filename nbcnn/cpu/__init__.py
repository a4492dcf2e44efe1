"""The CPU backend: every op of nbcnn.backend.Backend as numba.njit(parallel=True) kernels."""

from ..backend import Backend
from . import array, conv, dropout, gemm, linear, loss, lrn, pool, relu, sgd


class CPUBackend(Backend):
    name = "cpu"

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

    matmul = staticmethod(gemm.gemm)
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
