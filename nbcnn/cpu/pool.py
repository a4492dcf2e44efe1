"""Max pooling on the CPU (no padding, floor mode), one (n, c) plane per parallel iteration."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def maxpool2d_forward_kernel(x, k, stride, y, argmax):
    """y[n,c,i,j] = max over the k*k window at (i*stride, j*stride); argmax = h*W + w of the first maximum."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for i in range(OH):
            for j in range(OW):
                h0 = i * stride
                w0 = j * stride
                best = x[n, c, h0, w0]
                idx = h0 * W + w0
                for p in range(k):
                    for q in range(k):
                        v = x[n, c, h0 + p, w0 + q]
                        if v > best or (v != v and best == best):  # NaN wins, as in PyTorch
                            best = v
                            idx = (h0 + p) * W + w0 + q
                y[n, c, i, j] = best
                argmax[n, c, i, j] = idx


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
