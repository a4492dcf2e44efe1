"""Fully connected layers on the CPU: GEMMs split over numba's threads by blocks.

At AlexNet's sizes (batch 16, fc6's weight 151 MB) each product streams the weight once,
so both cores must share it: every GEMM is split into one block of output rows or columns
per thread, each a single-threaded BLAS call on its part of the arrays, in place. The
forward of a small batch (N <= MAX_SMALL_BATCH) is our own kernel instead: BLAS's GEMM runs
x @ w^T at 16 rows far below its speed (fc6's half, one thread: 24-32 ms against 11-12).
"""

import numpy as np
from numba import njit, prange

from .gemm import block, gemm_rm, sum_cols_into
from .threads import num_threads, single_threaded_blas

# The largest batch whose forward takes small_batch_xwt instead of BLAS: one thread, fc6's
# (4096 x 9216) half at N = 8, 16, 32, 64, 128: 6.8 / 27, 11-12 / 24-32, 19 / 27, 34 / 41,
# 65 / 67 ms (ours / OpenBLAS, a loaded 2-core machine).
MAX_SMALL_BATCH = 64


@njit(inline="always")
def _dots4x4(x, w, n, o, zero):
    """The 16 sums x[n+i] . w[o+j] (i, j < 4), each row of w read once for four rows of x.

    Written out: sums in a 4 x 4 array would live on numba's heap instead of in registers."""
    x0, x1, x2, x3 = x[n], x[n + 1], x[n + 2], x[n + 3]
    w0, w1, w2, w3 = w[o], w[o + 1], w[o + 2], w[o + 3]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
    for k in range(x.shape[1]):
        v0, v1, v2, v3 = w0[k], w1[k], w2[k], w3[k]
        u = x0[k]
        a00 += u * v0
        a01 += u * v1
        a02 += u * v2
        a03 += u * v3
        u = x1[k]
        a10 += u * v0
        a11 += u * v1
        a12 += u * v2
        a13 += u * v3
        u = x2[k]
        a20 += u * v0
        a21 += u * v1
        a22 += u * v2
        a23 += u * v3
        u = x3[k]
        a30 += u * v0
        a31 += u * v1
        a32 += u * v2
        a33 += u * v3
    return ((a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23), (a30, a31, a32, a33))


# reassoc: the sums along k may be split into the vector lanes (a fixed order for a machine and shape)
@njit(fastmath={"reassoc", "contract"}, cache=True)
def small_batch_xwt(x, w, b, y, o0, o1):
    """y[n, o] = sum_k x[n, k] * w[o, k] + b[o] for o in [o0, o1) and every n; x (N,I), w (O,I), y (N,O).

    Blocks of 4 rows of x by 4 rows of w (16 sums in registers), the rest one sum at a time."""
    N, I = x.shape
    zero = np.zeros(1, y.dtype)[0]
    for o in range(o0, o1, 4):
        for n in range(0, N, 4):
            if o + 4 <= o1 and n + 4 <= N:
                sums = _dots4x4(x, w, n, o, zero)
                for i in range(4):
                    for j in range(4):
                        y[n + i, o + j] = sums[i][j] + b[o + j]
                continue
            for i in range(n, min(n + 4, N)):
                for j in range(o, min(o + 4, o1)):
                    s = zero
                    for k in range(I):
                        s += x[i, k] * w[j, k]
                    y[i, j] = s + b[j]


@njit(parallel=True, cache=True)
def linear_forward_kernel(x, w, b, y, T):
    """y = x @ w^T + b; x (N,I), w (O,I), y (N,O); thread t computes columns [o0, o1) of y."""
    N, I = x.shape
    O = w.shape[0]
    for t in prange(T):
        o0, o1 = block(t, T, O)
        if o0 < o1 and N <= MAX_SMALL_BATCH:
            small_batch_xwt(x, w, b, y, o0, o1)
        elif o0 < o1:
            for n in range(N):
                y[n, o0:o1] = b[o0:o1]
            gemm_rm(False, True, N, o1 - o0, I, 1.0, x, I, w[o0:], I, 1.0, y.reshape(-1)[o0:], O)


@njit(parallel=True, cache=True)
def linear_dx_kernel(dy, w, dx, T):
    """dx = dy @ w; dy (N,O), w (O,I), dx (N,I); thread t computes columns [i0, i1) of dx."""
    N, O = dy.shape
    I = w.shape[1]
    for t in prange(T):
        i0, i1 = block(t, T, I)
        if i0 < i1:
            gemm_rm(False, False, N, i1 - i0, O, 1.0, dy, O, w.reshape(-1)[i0:], I, 0.0, dx.reshape(-1)[i0:], I)


@njit(parallel=True, cache=True)
def linear_dw_kernel(x, dy, dw, T):
    """dw += dy^T @ x (thread t: rows [o0, o1))."""
    N, I = x.shape
    O = dy.shape[1]
    for t in prange(T):
        o0, o1 = block(t, T, O)
        if o0 < o1:
            gemm_rm(True, False, o1 - o0, I, N, 1.0, dy.reshape(-1)[o0:], O, x, I, 1.0, dw[o0:], I)


@single_threaded_blas
def linear_forward(x, w, b, y):
    linear_forward_kernel(x, w, b, y, num_threads())


@single_threaded_blas
def linear_backward(x, w, dy, dx, dw, db):
    if dx is not None:
        linear_dx_kernel(dy, w, dx, num_threads())
    if dw is not None:  # None: a frozen weight, its GEMM skipped
        linear_dw_kernel(x, dy, dw, num_threads())
    if db is not None:
        sum_cols_into(dy, db)  # db += column sums of dy
