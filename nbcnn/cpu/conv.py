"""Convolution on the CPU: im2col / col2im around a BLAS GEMM, images in parallel.

Each of numba's T threads takes one image at a time with its own column buffer
(C*KH*KW, OH*OW) and single-threaded BLAS (nbcnn/cpu/threads.py), so memory grows with
the thread count, not the batch. Weight and bias gradients are summed per thread and
reduced once at the end: no two threads write the same gradient.
"""

import numpy as np
from numba import njit, prange

from .array import empty
from .gemm import gemm_rm, sum_rows_into
from .threads import num_threads, single_threaded_blas


@njit(cache=True)
def im2col(x, kh, kw, stride, pad, col, xp):
    """col[(c*KH+p)*KW+q, i*OW+j] = xpad[c, i*stride+p, j*stride+q]; x (C,H,W), col (C*KH*KW, OH*OW).

    xp (C, H+2*pad, W+2*pad) is scratch for the zero-padded image: copying from it needs no
    bounds tests, so the row copies vectorise (1.4-1.8x over testing each row's edges).
    """
    C, H, W = x.shape
    oh = (H + 2 * pad - kh) // stride + 1
    ow = (W + 2 * pad - kw) // stride + 1
    xp[:] = 0
    for c in range(C):
        for h in range(H):
            for w in range(W):
                xp[c, h + pad, w + pad] = x[c, h, w]
    for r in range(C * kh * kw):
        c = r // (kh * kw)
        p = (r // kw) % kh
        q = r % kw
        dst = col[r]
        for i in range(oh):
            src = xp[c, i * stride + p]
            base = i * ow
            if stride == 1:  # unit stride: contiguous rows the compiler vectorises
                for j in range(ow):
                    dst[base + j] = src[j + q]
            else:
                for j in range(ow):
                    dst[base + j] = src[j * stride + q]


@njit(cache=True)
def col2im(col, kh, kw, stride, pad, x, xp):
    """x[c, h, w] = sum of the col entries im2col would read from (c, h, w); the adjoint of im2col.

    Sums into the zero-padded scratch xp (C, H+2*pad, W+2*pad), then copies its interior to x.
    """
    C, H, W = x.shape
    oh = (H + 2 * pad - kh) // stride + 1
    ow = (W + 2 * pad - kw) // stride + 1
    xp[:] = 0
    for r in range(C * kh * kw):
        c = r // (kh * kw)
        p = (r // kw) % kh
        q = r % kw
        src = col[r]
        for i in range(oh):
            dst = xp[c, i * stride + p]
            base = i * ow
            if stride == 1:
                for j in range(ow):
                    dst[j + q] += src[base + j]
            else:
                for j in range(ow):
                    dst[j * stride + q] += src[base + j]
    for c in range(C):
        for h in range(H):
            for w in range(W):
                x[c, h, w] = xp[c, h + pad, w + pad]


@njit(parallel=True, cache=True)
def conv2d_forward_kernel(x, w, b, stride, pad, cols, xps, y):
    """y[n] = W(O, C*KH*KW) @ im2col(x[n]) + b; thread t uses cols[t] and xps[t]."""
    N = x.shape[0]
    O, C, kh, kw = w.shape
    T = cols.shape[0]
    R = C * kh * kw
    wmat = w.reshape(O, R)
    for n0 in range(0, N, T):
        for t in prange(min(T, N - n0)):
            n = n0 + t
            col = cols[t]
            im2col(x[n], kh, kw, stride, pad, col, xps[t])
            P = col.shape[1]
            yn = y[n].reshape(O, P)
            for o in range(O):
                yn[o] = b[o]
            gemm_rm(False, False, O, P, R, 1.0, wmat, R, col, P, 1.0, yn, P)  # yn = b + W @ col


@njit(parallel=True, cache=True)
def conv2d_backward_kernel(x, w, dy, stride, pad, cols, dcols, xps, dws, dbs, dx, dw, db, want_dx):
    """dw += sum_n dy[n] @ im2col(x[n])^T; db += sum of dy; dx[n] = col2im(W^T @ dy[n]); thread t uses buffers [t]."""
    N = x.shape[0]
    O, C, kh, kw = w.shape
    T = cols.shape[0]
    R = C * kh * kw
    wmat = w.reshape(O, R)
    dws[:] = 0
    dbs[:] = 0
    for n0 in range(0, N, T):
        for t in prange(min(T, N - n0)):
            n = n0 + t
            col = cols[t]
            dyn = dy[n].reshape(O, col.shape[1])
            im2col(x[n], kh, kw, stride, pad, col, xps[t])  # recomputed: keeping N column buffers costs N times the memory
            gemm_rm(False, True, O, R, col.shape[1], 1.0, dyn, col.shape[1], col, col.shape[1], 1.0, dws[t], R)
            sum_rows_into(dyn, dbs[t])
            if want_dx:
                np.dot(wmat.T, dyn, dcols[t])
                col2im(dcols[t], kh, kw, stride, pad, dx[n], xps[t])
    dwmat = dw.reshape(O, R)
    for t in range(T):
        dwmat += dws[t]
        db += dbs[t]


def _col_shape(w, y):
    return (w.shape[1] * w.shape[2] * w.shape[3], y.shape[2] * y.shape[3])


def _threads(x):
    return max(1, min(num_threads(), x.shape[0]))


def _padded(x, pad, T, ws):
    """Per-thread scratch for one zero-padded image."""
    return ws.get("xps", (T, x.shape[1], x.shape[2] + 2 * pad, x.shape[3] + 2 * pad), x.dtype, empty)


@single_threaded_blas
def conv2d_forward(x, w, b, stride, pad, y, ws):
    T = _threads(x)
    cols = ws.get("cols", (T,) + _col_shape(w, y), x.dtype, empty)
    conv2d_forward_kernel(x, w, b, stride, pad, cols, _padded(x, pad, T, ws), y)


@single_threaded_blas
def conv2d_backward(x, w, dy, stride, pad, dx, dw, db, ws):
    T = _threads(x)
    R, P = _col_shape(w, dy)
    O = w.shape[0]
    cols = ws.get("cols", (T, R, P), x.dtype, empty)
    dcols = ws.get("dcols", (T, R, P), x.dtype, empty)
    dws = ws.get("dws", (T, O, R), x.dtype, empty)
    dbs = ws.get("dbs", (T, O), x.dtype, empty)
    want_dx = dx is not None
    # numba compiles for an array in dx's place either way; x is one, and unwritten without want_dx
    conv2d_backward_kernel(x, w, dy, stride, pad, cols, dcols, _padded(x, pad, T, ws), dws, dbs,
                           dx if want_dx else x, dw, db, want_dx)
