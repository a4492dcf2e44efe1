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


def _planes(a):
    """(N, C, H, W) as (N, C, H*W): a plane of pixels per (n, c)."""
    return a.reshape((a.shape[0], a.shape[1], a.shape[2] * a.shape[3]))


def lrn_forward(x, size, alpha, beta, k, y, scale):
    if x.size:
        lrn_forward_kernel[launch(x.size)](_planes(x), size, alpha, beta, k, _planes(y), _planes(scale))


def lrn_backward(x, y, scale, dy, size, alpha, beta, dx):
    if x.size:
        lrn_backward_kernel[launch(x.size)](_planes(x), _planes(y), _planes(scale), _planes(dy), size, alpha, beta, _planes(dx))
