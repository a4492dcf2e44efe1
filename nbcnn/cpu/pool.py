"""Max pooling on the CPU (no padding, floor mode), one (n, c) plane per parallel iteration."""

import functools

from numba import njit, prange

from ..kernel_math import maxpool_window


@functools.cache
def forward_kernel(k):
    """The forward kernel for k x k windows, compiled once per k (and cached on disk).

    With k known to the compiler the window loops unroll and the max becomes branch-free:
    6x faster than a runtime k on AlexNet's pool1. It computes kernel_math.maxpool_window's
    rule (the CUDA kernel's) in another way; tests/test_ops.py holds both to a reference.
    """
    return _make_forward_kernel(k)


def _make_forward_kernel(K):
    @njit(parallel=True, cache=True)
    def maxpool2d_forward_kernel(x, stride, y, argmax):
        """y[n,c,i,j] = max over the KxK window at (i*stride, j*stride); argmax = h*W + w of the first maximum."""
        N, C, H, W = x.shape
        OH, OW = y.shape[2], y.shape[3]
        for nc in prange(N * C):
            n, c = nc // C, nc % C
            plane = x[n, c]
            for i in range(OH):
                h0 = i * stride
                for j in range(OW):
                    w0 = j * stride
                    # kernel_math.maxpool_window's rule in two branch-free passes: the max
                    # (only a strictly greater value replaces it, so it keeps the first
                    # maximum's bits), then, scanning backwards, the first position holding it
                    m = plane[h0, w0]
                    nan = False
                    for p in range(K):
                        for q in range(K):
                            v = plane[h0 + p, w0 + q]
                            m = v if v > m else m
                            nan |= v != v
                    if nan:  # rare: the shared rule itself (the first NaN wins)
                        maxpool_window(x, n, c, i, j, K, stride, y, argmax)
                        continue
                    idx = 0
                    for p in range(K - 1, -1, -1):
                        for q in range(K - 1, -1, -1):
                            idx = (h0 + p) * W + w0 + q if plane[h0 + p, w0 + q] == m else idx
                    y[n, c, i, j] = m
                    argmax[n, c, i, j] = idx
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
