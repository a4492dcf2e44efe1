"""Fully connected layers on the CPU: BLAS GEMMs plus the bias epilogue."""

from numba import njit

from .array import empty
from .gemm import add_cols, gemm, gemm_tn_accumulate, sum_cols_into
from .threads import single_threaded_blas


@njit(cache=True)
def linear_forward_kernel(x, w, b, y):
    """y = x @ w^T + b; x (N,I), w (O,I), y (N,O)."""
    gemm(x, w.T, y)
    add_cols(y, b)


@njit(cache=True)
def linear_backward_kernel(w, dy, dx, db, want_dx):
    """dx = dy @ w; db += column sums of dy (dw is linear_backward's BLAS call)."""
    if want_dx:
        gemm(dy, w, dx)
    sum_cols_into(dy, db)


@single_threaded_blas
def linear_forward(x, w, b, y):
    linear_forward_kernel(x, w, b, y)


@single_threaded_blas
def linear_backward(x, w, dy, dx, dw, db, ws):
    want_dx = dx is not None
    if dx is None:
        dx = ws.get("dx_unused", (1, 1), x.dtype, empty)
    linear_backward_kernel(w, dy, dx, db, want_dx)
    gemm_tn_accumulate(dy, x, dw)  # dw += dy^T @ x
