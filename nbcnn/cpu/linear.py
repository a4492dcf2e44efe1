"""Fully connected layers on the CPU: BLAS GEMMs plus the bias epilogue."""

from numba import njit

from .array import add_kernel, empty
from .gemm import add_cols, gemm, sum_cols_into
from .threads import single_threaded_blas


@njit(cache=True)
def linear_forward_kernel(x, w, b, y):
    """y = x @ w^T + b; x (N,I), w (O,I), y (N,O)."""
    gemm(x, w.T, y)
    add_cols(y, b)


@njit(cache=True)
def linear_backward_kernel(x, w, dy, dx, dwtmp, dw, db, want_dx):
    """dx = dy @ w; dw += dy^T @ x; db += column sums of dy."""
    if want_dx:
        gemm(dy, w, dx)
    gemm(dy.T, x, dwtmp)
    add_kernel(dwtmp.reshape(-1), dw.reshape(-1))
    sum_cols_into(dy, db)


@single_threaded_blas
def linear_forward(x, w, b, y):
    linear_forward_kernel(x, w, b, y)


@single_threaded_blas
def linear_backward(x, w, dy, dx, dw, db, ws):
    dwtmp = ws.get("dwtmp", w.shape, w.dtype, empty)
    want_dx = dx is not None
    if dx is None:
        dx = ws.get("dx_unused", (1, 1), x.dtype, empty)
    linear_backward_kernel(x, w, dy, dx, dwtmp, dw, db, want_dx)
