"""Depthwise convolution on the CPU: direct kernels, no im2col.

Depthwise: groups == in_channels C, so output channel o = c*M + m (M = O/C, the channel
multiplier) sees only input channel c = o // M through its own KH x KW filter w[o, 0].
As im2col + GEMM that is a GEMM one input channel deep per group, which BLAS runs no
faster than the direct loops here, after copying every input pixel KH*KW times.

Each of numba's T threads takes a contiguous block of planes (block(): one parallel
region per call) with its own scratch from the layer's workspace: a zero-padded input
plane (so the inner loops need no bounds tests and vectorise along a row) and a float64
accumulator row or plane. Sums run in float64 and in a fixed order, the order of the CUDA
twin (nbcnn/cuda/depthwise.py): per output the KH*KW taps (p, q) ascending; per input
pixel of dx the taps (m, p, q) ascending; dw[o, 0, p, q] over the images, rows and
columns in order, each thread owning whole output channels (deterministic, no two
threads write one gradient).
Terms are converted with np.float64(): numba types float() of a float32 as float32.
"""

import numpy as np
from numba import njit, prange

from .array import empty
from .gemm import block
from .threads import num_threads


@njit(cache=True)
def pad_plane(x, pad, xp):
    """xp = x (H, W) with a zero border `pad` wide: xp (H+2*pad, W+2*pad)."""
    H, W = x.shape
    xp[:] = 0
    for h in range(H):
        for w in range(W):
            xp[h + pad, w + pad] = x[h, w]


@njit(parallel=True, cache=True)
def depthwise_forward_kernel(x, w, b, stride, pad, xps, accs, y, has_bias):
    """y[n,o,i,j] = b[o] + sum_{p,q} w[o,0,p,q] * xpad[n, o//M, i*stride+p, j*stride+q]; thread t: a block of (n, o) planes."""
    N, C, _, _ = x.shape
    O, _, kh, kw = w.shape
    M = O // C
    OH, OW = y.shape[2], y.shape[3]
    T = xps.shape[0]
    for t in prange(T):
        lo, hi = block(t, T, N * O)
        xp = xps[t]
        acc = accs[t]
        padded = -1  # the (n, c) plane xp holds: the M planes of one input channel pad it once
        for e in range(lo, hi):
            n, o = e // O, e % O
            if n * C + o // M != padded:
                padded = n * C + o // M
                pad_plane(x[n, o // M], pad, xp)
            for i in range(OH):
                acc[:] = b[o] if has_bias else 0.0
                for p in range(kh):
                    src = xp[i * stride + p]
                    for q in range(kw):
                        wv = np.float64(w[o, 0, p, q])
                        if stride == 1:  # unit stride: contiguous rows the compiler vectorises
                            for j in range(OW):
                                acc[j] += wv * src[j + q]
                        else:
                            for j in range(OW):
                                acc[j] += wv * src[j * stride + q]
                for j in range(OW):
                    y[n, o, i, j] = acc[j]


@njit(parallel=True, cache=True)
def depthwise_dx_kernel(w, dy, stride, pad, accs, dx):
    """dx[n,c,h,w] = sum_{m,p,q} w[c*M+m,0,p,q] * dy[n,c*M+m,i,j] where i*stride+p = h+pad, j*stride+q = w+pad.

    Scattered into a float64 padded plane per (n, c) (thread t: a block of planes), then its interior copied out.
    """
    N, C, H, W = dx.shape
    O, _, kh, kw = w.shape
    M = O // C
    OH, OW = dy.shape[2], dy.shape[3]
    T = accs.shape[0]
    for t in prange(T):
        lo, hi = block(t, T, N * C)
        acc = accs[t]
        for e in range(lo, hi):
            n, c = e // C, e % C
            acc[:] = 0
            for m in range(M):
                o = c * M + m
                for p in range(kh):
                    for q in range(kw):
                        wv = np.float64(w[o, 0, p, q])
                        for i in range(OH):
                            dst = acc[i * stride + p]
                            src = dy[n, o, i]
                            if stride == 1:
                                for j in range(OW):
                                    dst[j + q] += wv * src[j]
                            else:
                                for j in range(OW):
                                    dst[j * stride + q] += wv * src[j]
            for h in range(H):
                for ww in range(W):
                    dx[n, c, h, ww] = acc[h + pad, ww + pad]


@njit(parallel=True, cache=True)
def depthwise_params_kernel(x, dy, stride, pad, xps, accs, dw, db, want_dw, want_db):
    """dw[o,0,p,q] += sum_{n,i,j} dy[n,o,i,j] * xpad[n,o//M,i*stride+p,j*stride+q]; db[o] += sum_{n,i,j} dy[n,o,i,j].

    Thread t owns a block of output channels; per tap a float64 row of partial sums over
    (n, i) (accs[t] (KH*KW, OW)), summed along the row at the end.
    """
    N, C, _, _ = x.shape
    O, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    kh, kw = dw.shape[2], dw.shape[3]
    M = O // C
    T = xps.shape[0]
    for t in prange(T):
        lo, hi = block(t, T, O)
        xp = xps[t]
        acc = accs[t]
        for o in range(lo, hi):
            acc[:] = 0
            bias_sum = 0.0
            for n in range(N):
                if want_dw:
                    pad_plane(x[n, o // M], pad, xp)
                    for p in range(kh):
                        for q in range(kw):
                            row = acc[p * kw + q]
                            for i in range(OH):
                                src = xp[i * stride + p]
                                d = dy[n, o, i]
                                if stride == 1:
                                    for j in range(OW):
                                        row[j] += np.float64(d[j]) * src[j + q]
                                else:
                                    for j in range(OW):
                                        row[j] += np.float64(d[j]) * src[j * stride + q]
                if want_db:
                    for i in range(OH):
                        for j in range(OW):
                            bias_sum += dy[n, o, i, j]
            if want_dw:
                for p in range(kh):
                    for q in range(kw):
                        s = 0.0
                        for j in range(OW):
                            s += acc[p * kw + q, j]
                        dw[o, 0, p, q] += s
            if want_db:
                db[o] += bias_sum


def _threads(work):
    return max(1, min(num_threads(), work))


def _padded_planes(x, pad, T, ws):
    """Per-thread scratch for one zero-padded input plane."""
    return ws.get("depthwise_xps", (T, x.shape[2] + 2 * pad, x.shape[3] + 2 * pad), x.dtype, empty)


def _or_placeholder(a, like):
    """`a`, or where it is None `like` (an array of its rank): numba compiles one kernel for both, a flag keeps it unread."""
    return like if a is None else a


def depthwise_forward(x, w, b, stride, pad, y, ws):
    """conv2d_forward for groups == C (nbcnn.backend): y = b + each output channel's filter over its input channel."""
    T = _threads(y.shape[0] * y.shape[1])
    accs = ws.get("depthwise_accs", (T, y.shape[3]), np.float64, empty)
    depthwise_forward_kernel(x, w, _or_placeholder(b, w.reshape(-1)), stride, pad, _padded_planes(x, pad, T, ws),
                             accs, y, b is not None)


def depthwise_backward(x, w, dy, stride, pad, dx, dw, db, ws):
    """conv2d_backward for groups == C: dx overwritten, dw and db accumulated; each may be None (not computed)."""
    if dx is not None:
        T = _threads(dx.shape[0] * dx.shape[1])
        # the rows and columns the scatter reaches: up to (OH-1)*stride + KH, within the padded plane
        accs = ws.get("depthwise_dx_accs", (T, x.shape[2] + 2 * pad, x.shape[3] + 2 * pad), np.float64, empty)
        depthwise_dx_kernel(w, dy, stride, pad, accs, dx)
    if dw is not None or db is not None:
        T = _threads(dy.shape[1])
        accs = ws.get("depthwise_param_accs", (T, w.shape[2] * w.shape[3], dy.shape[3]), np.float64, empty)
        depthwise_params_kernel(x, dy, stride, pad, _padded_planes(x, pad, T, ws), accs,
                                _or_placeholder(dw, w), _or_placeholder(db, w.reshape(-1)),
                                dw is not None, db is not None)
