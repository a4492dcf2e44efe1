"""Max pooling on CUDA (no padding, floor mode): one thread per output element, forward and backward."""

from numba import cuda

from ..kernel_math import maxpool_window
from .array import divmod32, launch, unravel4
from .elementwise import fill


@cuda.jit(cache=True)
def maxpool2d_forward_kernel(x, k, stride, y, argmax):
    """y[n,c,i,j] = max over the k*k window at (i*stride, j*stride); argmax = h*W + w of the first maximum (NaN wins)."""
    _, C, OH, OW = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, y.size, step):
        n, c, i, j = unravel4(e, C, OH, OW)
        maxpool_window(x, n, c, i, j, k, stride, y, argmax)


@cuda.jit(cache=True)
def maxpool2d_backward_kernel(dy, argmax, dx):
    """dx[n,c].flat[argmax[n,c,i,j]] += dy[n,c,i,j], one thread per dy element, dx zeroed before.

    An atomic scatter: the contract does not pass k and stride, so a pixel cannot find the
    windows that hold it. Only overlapping windows (stride < k) that pick the same pixel
    add into one place, at most ceil(k/stride)^2 terms, so the order changes a sum by an ulp.
    """
    N, C, H, W = dx.shape
    _, _, OH, OW = dy.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, N * C * OH * OW, step):
        n, c, i, j = unravel4(e, C, OH, OW)
        a = argmax[n, c, i, j]
        h, w = divmod32(a, W)
        cuda.atomic.add(dx, (n, c, h, w), dy[n, c, i, j])


def maxpool2d_forward(x, k, stride, y, argmax):
    if y.size:
        maxpool2d_forward_kernel[launch(y.size)](x, k, stride, y, argmax)


def maxpool2d_backward(dy, argmax, dx):
    fill(dx, 0)
    if dy.size:
        maxpool2d_backward_kernel[launch(dy.size)](dy, argmax, dx)
