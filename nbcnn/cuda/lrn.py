"""Local response normalisation across channels on CUDA: one fused kernel each way, one thread per element."""

from numba import cuda

from ..kernel_math import lrn_backward_at, lrn_forward_at
from .array import launch, unravel3


@cuda.jit(cache=True)
def lrn_forward_kernel(x, size, alpha, beta, k, y, scale):
    """scale = k + alpha/size * sum of x^2 over channels [c-size//2, c+(size-1)//2]; y = x * scale^-beta. x (N,C,HW)."""
    _, C, HW = x.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, x.size, step):
        n, c, s = unravel3(e, C, HW)
        lrn_forward_at(x, n, c, s, size, alpha, beta, k, y, scale)


@cuda.jit(cache=True)
def lrn_backward_kernel(x, y, scale, dy, size, alpha, beta, dx):
    """dx = dL/dx of the LRN from dy, the forward's y and scale (nbcnn.kernel_math.lrn_backward_at)."""
    _, C, HW = x.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, x.size, step):
        n, c, s = unravel3(e, C, HW)
        lrn_backward_at(x, y, scale, dy, n, c, s, size, alpha, beta, dx)


def _flat(a):
    return a.reshape((a.shape[0], a.shape[1], a.size // max(1, a.shape[0] * a.shape[1])))


def lrn_forward(x, size, alpha, beta, k, y, scale):
    if x.size:
        lrn_forward_kernel[launch(x.size)](_flat(x), size, alpha, beta, k, _flat(y), _flat(scale))


def lrn_backward(x, y, scale, dy, size, alpha, beta, dx):
    if x.size:
        lrn_backward_kernel[launch(x.size)](_flat(x), _flat(y), _flat(scale), _flat(dy), size, alpha, beta, _flat(dx))
