"""Local response normalisation across channels on CUDA: one fused kernel each way, one thread per element."""

import math

from numba import cuda

from .array import launch, unravel3


@cuda.jit(cache=True)
def lrn_forward_kernel(x, size, alpha, beta, k, y, scale):
    """scale = k + alpha/size * sum of x^2 over channels [c-size//2, c+(size-1)//2]; y = x * scale^-beta. x (N,C,HW)."""
    N, C, HW = x.shape
    a = alpha / size
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, N * C * HW, step):
        n, c, s = unravel3(e, C, HW)
        acc = 0.0
        for cc in range(max(c - size // 2, 0), min(c + (size - 1) // 2, C - 1) + 1):
            v = x[n, cc, s]
            acc += v * v
        sc = k + a * acc
        scale[n, c, s] = sc
        y[n, c, s] = x[n, c, s] * math.pow(sc, -beta)


@cuda.jit(cache=True)
def lrn_backward_kernel(x, y, scale, dy, size, alpha, beta, k, dx):
    """dx[c] = dy[c]*scale[c]^-beta - 2*alpha*beta/size * x[c] * sum over c' whose window holds c of dy[c']*y[c']/scale[c']."""
    N, C, HW = x.shape
    f = 2.0 * alpha * beta / size
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, N * C * HW, step):
        n, c, s = unravel3(e, C, HW)
        acc = 0.0
        # c lies in the window of c' exactly when c' is in [c-(size-1)//2, c+size//2]
        for cc in range(max(c - (size - 1) // 2, 0), min(c + size // 2, C - 1) + 1):
            acc += dy[n, cc, s] * y[n, cc, s] / scale[n, cc, s]
        dx[n, c, s] = dy[n, c, s] * math.pow(scale[n, c, s], -beta) - f * x[n, c, s] * acc


def _flat(a):
    return a.reshape((a.shape[0], a.shape[1], a.size // max(1, a.shape[0] * a.shape[1])))


def lrn_forward(x, size, alpha, beta, k, y, scale):
    if x.size:
        lrn_forward_kernel[launch(x.size)](_flat(x), size, alpha, beta, k, _flat(y), _flat(scale))


def lrn_backward(x, y, scale, dy, size, alpha, beta, k, dx):
    if x.size:
        lrn_backward_kernel[launch(x.size)](_flat(x), _flat(y), _flat(scale), _flat(dy), size, alpha, beta, k, _flat(dx))
