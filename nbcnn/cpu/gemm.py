"""GEMM on the CPU: numpy's dot inside njit, which calls scipy's BLAS (OpenBLAS).

The CUDA twin (nbcnn/cuda/gemm.py) is our own tiled kernel; here BLAS already is what a
hand-written kernel would try to be. The helpers below are the GEMM epilogues; they are
serial because the conv kernels call them from inside their per-image parallel loop.
"""

import numpy as np
from numba import njit
from scipy.linalg import blas

from .threads import single_threaded_blas

_GEMM = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}


@njit(cache=True)
def gemm(a, b, c):
    """c = a @ b; a (M,K), b (K,N), c (M,N) C-contiguous; a and b may be transposed views."""
    np.dot(a, b, c)


@single_threaded_blas
def matmul(a, b, c):
    gemm(a, b, c)


def gemm_tn_accumulate(a, b, c):
    """c += a^T @ b; a (K,M), b (K,N), c (M,N) C-contiguous: BLAS's beta=1, no temporary for the product."""
    # Fortran BLAS reads a C-contiguous array as its transpose: c^T (N,M) += b^T (N,K) @ a (K,M).
    out = _GEMM[c.dtype](1.0, b.T, a.T, beta=1.0, c=c.T, trans_b=True, overwrite_c=True)
    if not np.shares_memory(out, c):  # f2py copies an argument it cannot use in place
        raise AssertionError("BLAS gemm did not accumulate in place")


@njit(cache=True)
def add_rows(c, v):
    """c[m, n] += v[m] (the conv bias: one value per output-channel row)."""
    for m in range(c.shape[0]):
        vm = v[m]
        for n in range(c.shape[1]):
            c[m, n] += vm


@njit(cache=True)
def add_cols(c, v):
    """c[m, n] += v[n] (the linear bias: one value per output-feature column)."""
    for m in range(c.shape[0]):
        for n in range(c.shape[1]):
            c[m, n] += v[n]


@njit(cache=True)
def sum_rows_into(a, out):
    """out[m] += sum_n a[m, n]."""
    for m in range(a.shape[0]):
        s = 0.0
        for n in range(a.shape[1]):
            s += a[m, n]
        out[m] += s


@njit(cache=True)
def sum_cols_into(a, out):
    """out[n] += sum_m a[m, n]."""
    for n in range(a.shape[1]):
        s = 0.0
        for m in range(a.shape[0]):
            s += a[m, n]
        out[n] += s
