"""GEMM on the CPU: numpy's dot inside njit, which calls scipy's BLAS (OpenBLAS).

The CUDA twin (nbcnn/cuda/gemm.py) is our own tiled kernel; here BLAS already is what a
hand-written kernel would try to be. The helpers below are the GEMM epilogues.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True)
def gemm(a, b, c):
    """c = a @ b; a (M,K), b (K,N), c (M,N) C-contiguous; a and b may be transposed views."""
    np.dot(a, b, c)


def matmul(a, b, c):
    gemm(a, b, c)


@njit(parallel=True, cache=True)
def add_rows(c, v):
    """c[m, n] += v[m] (the conv bias: one value per output-channel row)."""
    for m in prange(c.shape[0]):
        vm = v[m]
        for n in range(c.shape[1]):
            c[m, n] += vm


@njit(parallel=True, cache=True)
def add_cols(c, v):
    """c[m, n] += v[n] (the linear bias: one value per output-feature column)."""
    for m in prange(c.shape[0]):
        for n in range(c.shape[1]):
            c[m, n] += v[n]


@njit(parallel=True, cache=True)
def add_matrix(src, dst):
    """dst += src for 2-D arrays of one shape (gradient accumulation)."""
    for m in prange(dst.shape[0]):
        for n in range(dst.shape[1]):
            dst[m, n] += src[m, n]


@njit(parallel=True, cache=True)
def sum_rows_into(a, out):
    """out[m] += sum_n a[m, n]."""
    for m in prange(a.shape[0]):
        s = 0.0
        for n in range(a.shape[1]):
            s += a[m, n]
        out[m] += s


@njit(parallel=True, cache=True)
def sum_cols_into(a, out):
    """out[n] += sum_m a[m, n]."""
    for n in prange(a.shape[1]):
        s = 0.0
        for m in range(a.shape[0]):
            s += a[m, n]
        out[n] += s
