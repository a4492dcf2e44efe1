"""Winograd F(2x2, 3x3) convolution forward on the CPU (Lavin & Gray 2016): 3x3, stride 1,
padding 1, one group, chosen by `use_winograd` over the im2col path of nbcnn/cpu/conv.py.

Per 2x2 output tile: U = G w G^T (4x4 per (o, c)), V = B^T d B (4x4 per (c, tile), d the
tile's 4x4 input patch), M[k] = U[k] @ V[k] for the 16 positions k (GEMMs O x C x N*tiles),
y = A^T M A + bias: 16 multiplications per tile and (o, c) instead of im2col's 36. The whole
batch is transformed at once (V: 16 x C x N*tiles in the layer's workspace); the 16 GEMMs are
split over numba's threads with single-threaded BLAS, as in conv.py. The CUDA backend has no
twin yet and keeps im2col for every shape; the backward stays on im2col on both backends.
"""

import numpy as np
from numba import njit, prange

from ..kernel_math import wino_input, wino_output, wino_weight
from .array import empty

# Winograd where the GEMMs are deep enough to pay for the transforms (dev/winograd_f23.py,
# forward, 2-core machine: AlexNet conv3-5, C = 256-384 on 13x13, 1.2-1.6x faster; ResNet-20,
# C = 16-64, 0.5-0.7x; ResNet-18, batch 16: C = 128 on 28x28 and 256 on 14x14 even, 512 on 7x7
# 0.9x, where the 2x2 tiles cover 8x8 for 7x7 outputs).
MIN_WINOGRAD_CHANNELS = 128
MIN_WINOGRAD_SIZE = 8


def use_winograd(x, w, stride, pad, groups):
    """True when conv2d_forward takes the Winograd path: 3x3, stride 1, padding 1, one group, C >= 128,
    H and W >= 8."""
    return (w.shape[2] == 3 and w.shape[3] == 3 and stride == 1 and pad == 1 and groups == 1
            and x.shape[1] >= MIN_WINOGRAD_CHANNELS and min(x.shape[2], x.shape[3]) >= MIN_WINOGRAD_SIZE)


@njit(parallel=True, cache=True)
def weight_transform(w, u):
    """u[4*i+j, o, c] = (G w[o, c] G^T)[i, j] (kernel_math.wino_weight), in float64."""
    O, C = w.shape[0], w.shape[1]
    for oc in prange(O * C):
        o, c = oc // C, oc % C
        t = np.empty((4, 3))
        for q in range(3):  # G w, down each column
            t[0, q], t[1, q], t[2, q], t[3, q] = wino_weight(
                np.float64(w[o, c, 0, q]), np.float64(w[o, c, 1, q]), np.float64(w[o, c, 2, q]))
        for i in range(4):  # (...) G^T, along each row
            u[4 * i, o, c], u[4 * i + 1, o, c], u[4 * i + 2, o, c], u[4 * i + 3, o, c] = wino_weight(
                t[i, 0], t[i, 1], t[i, 2])


@njit(parallel=True, cache=True)
def input_transform(x, v, th, tw):
    """v[4*i+j, c, (n*th + a)*tw + b] = (B^T d B)[i, j] (kernel_math.wino_input), d the 4x4 patch of x[n, c] at
    (2a-1, 2b-1), zero outside."""
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        d = np.empty((4, 4), x.dtype)
        for a in range(th):
            for b in range(tw):
                for p in range(4):
                    for q in range(4):
                        h, ww = 2 * a - 1 + p, 2 * b - 1 + q
                        d[p, q] = x[n, c, h, ww] if 0 <= h < H and 0 <= ww < W else 0
                t = (n * th + a) * tw + b
                for q in range(4):  # B^T d, down each column
                    d[0, q], d[1, q], d[2, q], d[3, q] = wino_input(d[0, q], d[1, q], d[2, q], d[3, q])
                for p in range(4):  # (...) B, along each row
                    v[4 * p, c, t], v[4 * p + 1, c, t], v[4 * p + 2, c, t], v[4 * p + 3, c, t] = wino_input(
                        d[p, 0], d[p, 1], d[p, 2], d[p, 3])


@njit(parallel=True, cache=True)
def gemm16(u, v, m):
    """m[k] = u[k] @ v[k] for the 16 positions k, over numba's threads (BLAS single-threaded by the caller)."""
    for k in prange(16):
        np.dot(u[k], v[k], m[k])


@njit(parallel=True, cache=True)
def output_transform(m, y, th, tw, bias, has_bias):
    """y[n, o, 2a+i, 2b+j] = (A^T M A)[i, j] (+ bias[o]) (kernel_math.wino_output), M[k] = m[k, o, (n*th + a)*tw + b]."""
    N, O, OH, OW = y.shape
    for no in prange(N * O):
        n, o = no // O, no % O
        bo = bias[o] if has_bias else 0
        s = np.empty((2, 4), m.dtype)
        for a in range(th):
            for b in range(tw):
                t = (n * th + a) * tw + b
                for q in range(4):  # A^T M, down each column
                    s[0, q], s[1, q] = wino_output(m[q, o, t], m[4 + q, o, t], m[8 + q, o, t], m[12 + q, o, t])
                for i in range(2):  # (...) A, along each row; an odd height or width drops the tile's last row or column
                    if 2 * a + i < OH:
                        y0, y1 = wino_output(s[i, 0], s[i, 1], s[i, 2], s[i, 3])
                        y[n, o, 2 * a + i, 2 * b] = y0 + bo
                        if 2 * b + 1 < OW:
                            y[n, o, 2 * a + i, 2 * b + 1] = y1 + bo


def winograd_forward(x, w, b, y, ws):
    """y = conv2d(x, w, b), 3x3, stride 1, padding 1 (use_winograd's shapes); BLAS must be single-threaded."""
    N, C, H, W = x.shape
    O = w.shape[0]
    th, tw = (H + 1) // 2, (W + 1) // 2
    u = ws.get("wino_u", (16, O, C), x.dtype, empty)
    v = ws.get("wino_v", (16, C, N * th * tw), x.dtype, empty)
    m = ws.get("wino_m", (16, O, N * th * tw), x.dtype, empty)
    weight_transform(w, u)
    input_transform(x, v, th, tw)
    gemm16(u, v, m)
    output_transform(m, y, th, tw, b if b is not None else w[0, 0, 0], b is not None)
