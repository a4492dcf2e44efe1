"""Fully connected layers on CUDA: three GEMMs of nbcnn/cuda/gemm.py, the bias in the epilogue."""

from .gemm import GemmPlan, gemm, sum_batched_rows_into


def linear_forward(x, w, b, y):
    """y (N,O) = x (N,I) @ w^T + b."""
    n, i = x.shape
    gemm(x, w, y, GemmPlan(n, w.shape[0], i, trans_b=True, bias_per="col"), b)


def linear_backward(x, w, dy, dx, dw, db):
    """dx = dy @ w; dw += dy^T @ x (accumulated in the epilogue, no temporary); db += column sums of dy.
    Each of dx, dw, db may be None: not computed."""
    n, i = x.shape
    o = w.shape[0]
    if dx is not None:
        gemm(dy, w, dx, GemmPlan(n, i, o))
    if dw is not None:  # None: a frozen weight, its GEMM skipped
        gemm(dy, x, dw, GemmPlan(o, i, n, trans_a=True, beta=1.0))
    if db is not None:
        sum_batched_rows_into(dy.reshape((n, o, 1)), db)
