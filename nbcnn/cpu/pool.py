"""Pooling on the CPU (floor mode, padding), one (n, c) plane per parallel iteration: max pooling
forward and backward, average pooling (fixed windows or PyTorch's adaptive bins) forward and backward."""

import functools

import numpy as np
from numba import njit, prange

from ..kernel_math import avgpool_rows, avgpool_term, avgpool_window, maxpool_window, window_max


@functools.cache
def forward_kernel(k):
    """The forward kernel for k x k windows, compiled once per k (and cached on disk): with k a
    constant, kernel_math.window_max's loops unroll and its max is branch-free (6x on pool1)."""
    return _make_forward_kernel(k)


def _make_forward_kernel(K):
    @njit(parallel=True, cache=True)
    def maxpool2d_forward_kernel(x, stride, pad, y, argmax):
        """y[n,c,i,j] = max over the KxK window at (i*stride - pad, j*stride - pad); argmax = h*W + w of the first maximum."""
        N, C, OH, OW = y.shape
        H, W = x.shape[2], x.shape[3]
        for nc in prange(N * C):
            n, c = nc // C, nc % C
            for i in range(OH):
                h0 = i * stride - pad
                for j in range(OW):
                    w0 = j * stride - pad
                    # a window wholly inside the plane goes to window_max itself with K constant: one call
                    # of maxpool_window for every window would clip its loops to runtime bounds (3x on pool1)
                    if h0 >= 0 and w0 >= 0 and h0 + K <= H and w0 + K <= W:
                        y[n, c, i, j], argmax[n, c, i, j] = window_max(x, n, c, h0, w0, K, K)
                    else:
                        maxpool_window(x, n, c, i, j, K, stride, pad, y, argmax)
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


@njit(parallel=True, cache=True)
def avgpool2d_forward_kernel(x, k, stride, pad, count_include_pad, adaptive, y):
    """y[n,c,i,j] = the mean of window (i, j) (kernel_math.avgpool_window)."""
    N, C, OH, OW = y.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(OH):
            for j in range(OW):
                avgpool_window(x, n, c, i, j, k, stride, pad, count_include_pad, adaptive, y)


@njit(parallel=True, cache=True)
def avgpool2d_backward_kernel(dy, k, stride, pad, count_include_pad, adaptive, dx):
    """dx[n,c,h,w] = the float64 sum of avgpool_term over the windows holding (h, w).

    CUDA gathers per pixel (kernel_math.avgpool_grad); here each plane's windows scatter their
    terms into a float64 plane instead, in row-major window order: every pixel receives the same
    terms in the same order, so the sums are the same bit for bit, without the gather's integer
    divisions per pixel (8x faster on a 3/2 pool).
    """
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        acc = np.zeros((H, W))
        for i in range(OH):
            h0, h1 = avgpool_rows(i, H, OH, k, stride, pad, adaptive)
            for j in range(OW):
                w0, w1 = avgpool_rows(j, W, OW, k, stride, pad, adaptive)
                term = avgpool_term(dy[n, c, i, j], h0, h1, w0, w1, k, count_include_pad)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        acc[h, w] += term
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = acc[h, w]


def maxpool2d_forward(x, k, stride, pad, y, argmax):
    forward_kernel(int(k))(x, stride, pad, y, argmax)


def maxpool2d_backward(dy, argmax, dx):
    maxpool2d_backward_kernel(dy, argmax, dx)


def avgpool2d_forward(x, k, stride, pad, count_include_pad, y):
    avgpool2d_forward_kernel(x, k, stride, pad, bool(count_include_pad), False, y)


def avgpool2d_backward(dy, k, stride, pad, count_include_pad, dx):
    avgpool2d_backward_kernel(dy, k, stride, pad, bool(count_include_pad), False, dx)


def adaptive_avgpool2d_forward(x, y):
    avgpool2d_forward_kernel(x, 0, 1, 0, False, True, y)  # the bins come from the shapes of x and y


def adaptive_avgpool2d_backward(dy, dx):
    avgpool2d_backward_kernel(dy, 0, 1, 0, False, True, dx)
