"""Depthwise convolution on CUDA: direct kernels, no im2col (the CPU twin: nbcnn/cpu/depthwise.py).

Depthwise: groups == in_channels C, so output channel o = c*M + m (M = O/C, the channel
multiplier) sees only input channel c = o // M through its own KH x KW filter w[o, 0].
As im2col + GEMM it would copy every input pixel KH*KW times for GEMMs one input channel
deep. Here:
- forward: a thread per output, its KH*KW taps (p, q) ascending;
- dx: a thread per input pixel gathering the outputs whose windows hold it, taps (m, p, q)
  ascending (no atomics);
- dw: a block per (o, p, q) whose threads stride over the N*OH*OW products, then a
  shared-memory tree: two levels, a fixed order, deterministic (no atomics).
All sums in float64, in the CPU's order for forward and dx. Terms are converted with
np.float64(): numba types float() of a float32 as float32, so float(a) * float(b) would
multiply in float32. A product of two float32 is exact in float64, so forward and dx give
the CPU's float32 results bit for bit (fused or not, a multiply-add of an exact product
rounds once).
"""

import numpy as np
from numba import cuda

from .array import check_int32, divmod32, flat, launch, unravel3, unravel4
from .gemm import REDUCE_THREADS, block_sum, sum_batched_rows_into


@cuda.jit(cache=True)
def depthwise_forward_kernel(x, w, b, stride, pad, y, has_bias):
    """y[n,o,i,j] = b[o] + sum_{p,q} w[o,0,p,q] * xpad[n, o//M, i*stride+p, j*stride+q], M = O/C; a thread per output."""
    _, C, H, W = x.shape
    _, O, OH, OW = y.shape
    kh, kw = w.shape[2], w.shape[3]
    M = divmod32(O, C)[0]
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, o, i, j = unravel4(e, O, OH, OW)
        c = divmod32(o, M)[0]
        acc = np.float64(b[o]) if has_bias else 0.0
        for p in range(kh):
            h = i * stride + p - pad
            if 0 <= h < H:
                for q in range(kw):
                    ww = j * stride + q - pad
                    if 0 <= ww < W:
                        acc += np.float64(w[o, 0, p, q]) * np.float64(x[n, c, h, ww])
        y[n, o, i, j] = acc


@cuda.jit(cache=True)
def depthwise_dx_kernel(w, dy, stride, pad, dx):
    """dx[n,c,h,w] = sum_{m,p,q} w[c*M+m,0,p,q] * dy[n,c*M+m,i,j] over i*stride+p = h+pad, j*stride+q = w+pad; a thread per pixel."""
    _, C, H, W = dx.shape
    _, O, OH, OW = dy.shape
    kh, kw = w.shape[2], w.shape[3]
    M = divmod32(O, C)[0]
    for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, h, ww = unravel4(e, C, H, W)
        hp, wp = h + pad, ww + pad  # the pixel in the padded image; output (i, j) holds it at tap (hp - i*stride, ...)
        acc = 0.0
        for m in range(M):
            o = c * M + m
            # while loops, not range(start, stop, stride): numba's strided range divides in int64
            p = divmod32(hp, stride)[1]
            while p < kh and p <= hp:
                i = divmod32(hp - p, stride)[0]
                if i < OH:
                    q = divmod32(wp, stride)[1]
                    while q < kw and q <= wp:
                        j = divmod32(wp - q, stride)[0]
                        if j < OW:
                            acc += np.float64(w[o, 0, p, q]) * np.float64(dy[n, o, i, j])
                        q += stride
                p += stride
        dx[n, c, h, ww] = acc


@cuda.jit(cache=True)
def depthwise_dw_kernel(x, dy, stride, pad, dw):
    """dw[o,0,p,q] += sum_{n,i,j} dy[n,o,i,j] * xpad[n,o//M,i*stride+p,j*stride+q]; block o*KH*KW + p*KW + q.

    Each thread sums a strided share of the N*OH*OW products, then a shared-memory tree adds the
    threads' sums: float64, a fixed order.
    """
    N, C, H, W = x.shape
    _, O, OH, OW = dy.shape
    kh, kw = dw.shape[2], dw.shape[3]
    o, tap = divmod32(cuda.blockIdx.x, kh * kw)
    p, q = divmod32(tap, kw)
    c = divmod32(o, divmod32(O, C)[0])[0]
    tid = cuda.threadIdx.x
    s = 0.0
    for e in range(tid, N * OH * OW, REDUCE_THREADS):
        n, i, j = unravel3(e, OH, OW)
        h = i * stride + p - pad
        ww = j * stride + q - pad
        if 0 <= h < H and 0 <= ww < W:
            s += np.float64(dy[n, o, i, j]) * np.float64(x[n, c, h, ww])
    total = block_sum(s)
    if tid == 0:
        dw[o, 0, p, q] += total


def depthwise_forward(x, w, b, stride, pad, y, ws):
    """conv2d_forward for groups == C (nbcnn.backend): y = b + each output channel's filter over its input channel."""
    check_int32(x, y)
    if y.size:
        # a placeholder where there is no bias: numba compiles one kernel for both, has_bias keeps it unread
        depthwise_forward_kernel[launch(y.size)](x, w, flat(w) if b is None else b, stride, pad, y, b is not None)


def depthwise_backward(x, w, dy, stride, pad, dx, dw, db, ws):
    """conv2d_backward for groups == C: dx overwritten, dw and db accumulated; each may be None (not computed)."""
    check_int32(x, dy)
    if dx is not None and dx.size:
        depthwise_dx_kernel[launch(dx.size)](w, dy, stride, pad, dx)
    if dw is not None and dw.size:
        depthwise_dw_kernel[dw.size, REDUCE_THREADS](x, dy, stride, pad, dw)
    if db is not None:
        n, o = dy.shape[0], dy.shape[1]
        sum_batched_rows_into(dy.reshape((n, o, dy.shape[2] * dy.shape[3])), db)
