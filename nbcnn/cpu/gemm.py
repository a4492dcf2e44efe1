"""GEMM on the CPU: scipy's BLAS (OpenBLAS), called from inside njit kernels.

The CUDA twin (nbcnn/cuda/gemm.py) is our own tiled kernel; here BLAS already is what a
hand-written kernel would try to be. `gemm_rm` is BLAS's full gemm on row-major blocks
(leading dimensions, alpha, beta) through numba's own BLAS entry point, `numba_xxgemm`, so
kernels accumulate in place (dw += ..., beta = 1) and split one product over threads by
blocks of rows or columns without copies. The helpers below it are serial epilogues.
"""

import numba.np.linalg
import numpy as np
from numba import njit, prange, types

from ..backend import check_matmul
from .threads import num_threads, single_threaded_blas

numba.np.linalg._BLAS()  # loads scipy's BLAS for numba_xxgemm (numba's np.dot does the same)
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char,              # kind ('s'/'d'), transa, transb
    types.intp, types.intp, types.intp,              # m, n, k
    types.voidptr, types.voidptr, types.intp,        # alpha, a, lda
    types.voidptr, types.intp, types.voidptr,        # b, ldb, beta
    types.voidptr, types.intp))                      # c, ldc


@njit(cache=True)
def gemm_rm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """c = alpha * op(a) @ op(b) + beta * c on row-major blocks: c (m, n) with row stride ldc.

    op(a) is (m, k): a stored (m, k) with row stride lda, or (k, m) when ta; op(b) is (k, n)
    likewise. a, b, c are contiguous arrays whose first element is the block's first.
    """
    if m == 0 or n == 0:
        return
    scal = np.empty(2, c.dtype)
    scal[0] = alpha
    scal[1] = beta
    # Fortran BLAS reads a row-major block as its transpose: c^T = op(b)^T @ op(a)^T.
    status = _xxgemm(ord("s") if c.itemsize == 4 else ord("d"), ord("t") if tb else ord("n"),
                     ord("t") if ta else ord("n"), n, m, k, scal[0:].ctypes, b.ctypes, max(ldb, 1),
                     a.ctypes, max(lda, 1), scal[1:].ctypes, c.ctypes, max(ldc, 1))
    if status != 0:
        raise RuntimeError("BLAS gemm failed")


@njit(cache=True)
def block(t, T, size):
    """[lo, hi) of block t when `size` is cut into T near-equal blocks (one per thread)."""
    step = (size + T - 1) // T
    return min(size, t * step), min(size, (t + 1) * step)


@njit(parallel=True, cache=True)
def matmul_kernel(a, b, c, T):
    """c = a @ b, thread t computing rows [m0, m1) of c with a single-threaded BLAS call."""
    m, k = a.shape
    n = b.shape[1]
    for t in prange(T):
        m0, m1 = block(t, T, m)
        if m0 < m1:
            gemm_rm(False, False, m1 - m0, n, k, 1.0, a[m0:], k, b, n, 0.0, c[m0:], n)


@single_threaded_blas
def matmul(a, b, c):
    check_matmul(a, b, c)
    matmul_kernel(a, b, c, num_threads())


@njit(cache=True)
def sum_rows_into(a, out):
    """out[m] += sum_n a[m, n]."""
    for m in range(a.shape[0]):
        s = 0.0
        for n in range(a.shape[1]):
            s += a[m, n]
        out[m] += s


@njit(parallel=True, cache=True)
def sum_batched_rows_into(a, out):
    """out[r] += sum over b, s of a[b, r, s] (bias gradients), summed in float64; a (B, R, S), a thread per r."""
    B, R, S = a.shape
    for r in prange(R):
        s = 0.0
        for b in range(B):
            for i in range(S):
                s += a[b, r, i]
        out[r] += s


@njit(cache=True)
def sum_cols_into(a, out):
    """out[n] += sum_m a[m, n]."""
    for n in range(a.shape[1]):
        s = 0.0
        for m in range(a.shape[0]):
            s += a[m, n]
        out[n] += s
