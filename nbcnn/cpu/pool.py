"""Max pooling on the CPU (no padding, floor mode), one (n, c) plane per parallel iteration."""

import functools

from numba import njit, prange

from ..kernel_math import maxpool_window


@functools.cache
def forward_kernel(k):
    """The forward kernel for k x k windows, compiled once per k (and cached on disk): with k a
    constant, kernel_math.maxpool_window's loops unroll and its max is branch-free (6x on pool1)."""
    return _make_forward_kernel(k)


def _make_forward_kernel(K):
    @njit(parallel=True, cache=True)
    def maxpool2d_forward_kernel(x, stride, y, argmax):
        """y[n,c,i,j] = max over the KxK window at (i*stride, j*stride); argmax = h*W + w of the first maximum."""
        N, C, OH, OW = y.shape
        for nc in prange(N * C):
            n, c = nc // C, nc % C
            for i in range(OH):
                for j in range(OW):
                    maxpool_window(x, n, c, i, j, K, stride, y, argmax)
    return maxpool2d_forward_kernel


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
    forward_kernel(int(k))(x, stride, y, argmax)


def maxpool2d_backward(dy, argmax, dx):
    maxpool2d_backward_kernel(dy, argmax, dx)
