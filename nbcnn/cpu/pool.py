"""Max pooling on the CPU (no padding, floor mode), one (n, c) plane per parallel iteration."""

from numba import njit, prange

from .. import kernel_math

maxpool_window = kernel_math.inlined(kernel_math.maxpool_window)


@njit(parallel=True, cache=True)
def maxpool2d_forward_kernel(x, k, stride, y, argmax):
    """y[n,c,i,j] = max over the k*k window at (i*stride, j*stride); argmax = h*W + w of the first maximum."""
    N, C = x.shape[0], x.shape[1]
    for nc in prange(N * C):
        for i in range(y.shape[2]):
            for j in range(y.shape[3]):
                maxpool_window(x, nc // C, nc % C, i, j, k, stride, y, argmax)


@njit(parallel=True, cache=True)
def maxpool2d_backward_kernel(dy, argmax, dx):
    """dx[n,c].flat[argmax[n,c,i,j]] += dy[n,c,i,j], after zeroing dx."""
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    for nc in prange(N * C):  # a plane per iteration: overlapping windows never race
        n = nc // C
        c = nc % C
        dx[n, c] = 0
        for i in range(OH):
            for j in range(OW):
                a = argmax[n, c, i, j]
                dx[n, c, a // W, a % W] += dy[n, c, i, j]


def maxpool2d_forward(x, k, stride, y, argmax):
    maxpool2d_forward_kernel(x, k, stride, y, argmax)


def maxpool2d_backward(dy, argmax, dx):
    maxpool2d_backward_kernel(dy, argmax, dx)
