"""Fully connected layers on the CPU: BLAS GEMMs split over numba's threads by blocks.

At AlexNet's sizes (batch 16, fc6's weight 151 MB) each product streams the weight once,
so both cores must share it: every GEMM is split into one block of output rows or columns
per thread, each a single-threaded BLAS call on its part of the arrays, in place.
"""

from numba import njit, prange

from .gemm import block, gemm_rm, sum_cols_into
from .threads import num_threads, single_threaded_blas


@njit(parallel=True, cache=True)
def linear_forward_kernel(x, w, b, y, T):
    """y = x @ w^T + b; x (N,I), w (O,I), y (N,O); thread t computes columns [o0, o1) of y."""
    N, I = x.shape
    O = w.shape[0]
    for t in prange(T):
        o0, o1 = block(t, T, O)
        if o0 < o1:
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
