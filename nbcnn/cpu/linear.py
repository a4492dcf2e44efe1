"""Fully connected layers on the CPU: BLAS GEMMs plus the bias epilogue."""

import numpy as np
from numba import njit

from .gemm import add_cols, add_matrix, gemm, sum_cols_into


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
    add_matrix(dwtmp, dw)
    sum_cols_into(dy, db)


def linear_forward(x, w, b, y):
    linear_forward_kernel(x, w, b, y)


def linear_backward(x, w, dy, dx, dw, db, ws):
    dwtmp = ws.get("dwtmp", w.shape, w.dtype, np.empty)
    want_dx = dx is not None
    if dx is None:
        dx = ws.get("dx_unused", (1, 1), x.dtype, np.empty)
    linear_backward_kernel(x, w, dy, dx, dwtmp, dw, db, want_dx)
