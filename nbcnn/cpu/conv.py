"""Convolution on the CPU: im2col / col2im kernels around a BLAS GEMM, one image at a time.

One column buffer (C*KH*KW, OH*OW) serves every image of the batch, so memory does not
grow with the batch; the GEMMs are large enough per image for BLAS to use both cores.
"""

import numpy as np
from numba import njit, prange

from .gemm import add_matrix, add_rows, gemm, sum_rows_into


@njit(cache=True)
def valid_cols(q, pad, stride, w, ow):
    """The output columns [j0, j1) whose input column j*stride+q-pad lies in [0, w)."""
    j0 = 0
    if pad - q > 0:
        j0 = (pad - q + stride - 1) // stride
    j1 = (w - 1 + pad - q) // stride + 1
    j1 = min(max(j1, j0), ow)
    return min(j0, ow), j1


@njit(parallel=True, cache=True)
def im2col(x, kh, kw, stride, pad, col):
    """col[(c*KH+p)*KW+q, i*OW+j] = xpad[c, i*stride+p, j*stride+q]; x (C,H,W), col (C*KH*KW, OH*OW)."""
    C, H, W = x.shape
    oh = (H + 2 * pad - kh) // stride + 1
    ow = (W + 2 * pad - kw) // stride + 1
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        p = (r // kw) % kh
        q = r % kw
        j0, j1 = valid_cols(q, pad, stride, W, ow)
        for i in range(oh):
            h = i * stride + p - pad
            base = i * ow
            if h < 0 or h >= H:
                for j in range(ow):
                    col[r, base + j] = 0
                continue
            for j in range(j0):
                col[r, base + j] = 0
            for j in range(j0, j1):
                col[r, base + j] = x[c, h, j * stride + q - pad]
            for j in range(j1, ow):
                col[r, base + j] = 0


@njit(parallel=True, cache=True)
def col2im(col, kh, kw, stride, pad, x):
    """x[c, h, w] = sum of the col entries im2col would read from (c, h, w); the adjoint of im2col."""
    C, H, W = x.shape
    oh = (H + 2 * pad - kh) // stride + 1
    ow = (W + 2 * pad - kw) // stride + 1
    for c in prange(C):  # one channel per thread: no two threads add into the same pixel
        x[c] = 0
        for p in range(kh):
            for q in range(kw):
                r = (c * kh + p) * kw + q
                j0, j1 = valid_cols(q, pad, stride, W, ow)
                for i in range(oh):
                    h = i * stride + p - pad
                    if h < 0 or h >= H:
                        continue
                    base = i * ow
                    for j in range(j0, j1):
                        x[c, h, j * stride + q - pad] += col[r, base + j]


@njit(cache=True)
def conv2d_forward_kernel(x, w, b, stride, pad, col, y):
    """y[n] = W(O, C*KH*KW) @ im2col(x[n]) + b, image by image."""
    O, C, kh, kw = w.shape
    wmat = w.reshape(O, C * kh * kw)
    for n in range(x.shape[0]):
        im2col(x[n], kh, kw, stride, pad, col)
        yn = y[n].reshape(O, col.shape[1])
        gemm(wmat, col, yn)
        add_rows(yn, b)


@njit(cache=True)
def conv2d_backward_kernel(x, w, dy, stride, pad, col, dcol, dwtmp, dx, dw, db, want_dx):
    """dw += dy[n] @ im2col(x[n])^T; db += row sums of dy[n]; dx[n] = col2im(W^T @ dy[n])."""
    O, C, kh, kw = w.shape
    wmat = w.reshape(O, C * kh * kw)
    dwmat = dw.reshape(O, C * kh * kw)
    for n in range(x.shape[0]):
        dyn = dy[n].reshape(O, col.shape[1])
        im2col(x[n], kh, kw, stride, pad, col)  # recomputed: storing N columns costs N times the memory
        gemm(dyn, col.T, dwtmp)
        add_matrix(dwtmp, dwmat)
        sum_rows_into(dyn, db)
        if want_dx:
            gemm(wmat.T, dyn, dcol)
            col2im(dcol, kh, kw, stride, pad, dx[n])


def _col_shape(x, w, y):
    return (w.shape[1] * w.shape[2] * w.shape[3], y.shape[2] * y.shape[3])


def conv2d_forward(x, w, b, stride, pad, y, ws):
    col = ws.get("col", _col_shape(x, w, y), x.dtype, np.empty)
    conv2d_forward_kernel(x, w, b, stride, pad, col, y)


def conv2d_backward(x, w, dy, stride, pad, dx, dw, db, ws):
    shape = _col_shape(x, w, dy)
    col = ws.get("col", shape, x.dtype, np.empty)
    dcol = ws.get("dcol", shape, x.dtype, np.empty)
    dwtmp = ws.get("dwtmp", (w.shape[0], shape[0]), x.dtype, np.empty)
    want_dx = dx is not None
    if dx is None:
        dx = ws.get("dx_unused", (1,) + x.shape[1:], x.dtype, np.empty)
    conv2d_backward_kernel(x, w, dy, stride, pad, col, dcol, dwtmp, dx, dw, db, want_dx)
