"""Pooling on CUDA (floor mode, padding): one thread per output element forward, per input element
for the average-pool backward (a gather, no atomics); max pooling's backward scatters atomically."""

from numba import cuda

from ..kernel_math import avgpool_grad, avgpool_window, maxpool_window
from .array import divmod32, launch, unravel4
from .elementwise import fill


@cuda.jit(cache=True)
def maxpool2d_forward_kernel(x, k, stride, pad, y, argmax):
    """y[n,c,i,j] = max over the k*k window at (i*stride - pad, j*stride - pad); argmax = h*W + w of the first maximum (NaN wins)."""
    _, C, OH, OW = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, y.size, step):
        n, c, i, j = unravel4(e, C, OH, OW)
        maxpool_window(x, n, c, i, j, k, stride, pad, y, argmax)


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


@cuda.jit(cache=True)
def avgpool2d_forward_kernel(x, k, stride, pad, count_include_pad, adaptive, y):
    """y[n,c,i,j] = the mean of window (i, j) (kernel_math.avgpool_window), one thread per output."""
    _, C, OH, OW = y.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, y.size, step):
        n, c, i, j = unravel4(e, C, OH, OW)
        avgpool_window(x, n, c, i, j, k, stride, pad, count_include_pad, adaptive, y)


@cuda.jit(cache=True)
def avgpool2d_backward_kernel(dy, k, stride, pad, count_include_pad, adaptive, dx):
    """dx[n,c,h,w] = the sum of dy / divisor over the windows holding (h, w) (kernel_math.avgpool_grad), one thread per pixel."""
    _, C, H, W = dx.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, dx.size, step):
        n, c, h, w = unravel4(e, C, H, W)
        avgpool_grad(dy, n, c, h, w, k, stride, pad, count_include_pad, adaptive, dx)


def maxpool2d_forward(x, k, stride, pad, y, argmax):
    if y.size:
        maxpool2d_forward_kernel[launch(y.size)](x, k, stride, pad, y, argmax)


def maxpool2d_backward(dy, argmax, dx):
    fill(dx, 0)
    if dy.size:
        maxpool2d_backward_kernel[launch(dy.size)](dy, argmax, dx)


def avgpool2d_forward(x, k, stride, pad, count_include_pad, y):
    if y.size:
        avgpool2d_forward_kernel[launch(y.size)](x, k, stride, pad, bool(count_include_pad), False, y)


def avgpool2d_backward(dy, k, stride, pad, count_include_pad, dx):
    if dx.size:
        avgpool2d_backward_kernel[launch(dx.size)](dy, k, stride, pad, bool(count_include_pad), False, dx)


def adaptive_avgpool2d_forward(x, y):
    if y.size:
        avgpool2d_forward_kernel[launch(y.size)](x, 0, 1, 0, False, True, y)  # the bins come from the shapes


def adaptive_avgpool2d_backward(dy, dx):
    if dx.size:
        avgpool2d_backward_kernel[launch(dx.size)](dy, 0, 1, 0, False, True, dx)
