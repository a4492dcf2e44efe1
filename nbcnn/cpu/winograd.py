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

from ..kernel_math import (wino_input, wino_input_adjoint, wino_output, wino_output_adjoint, wino_weight,
                           wino_weight_adjoint)
from .array import empty
from .gemm import gemm_rm

# Winograd where the GEMMs are deep enough to pay for the transforms (dev/winograd.py,
# forward, 2-core machine: AlexNet conv3-5, C = 256-384 on 13x13, 1.2-1.6x faster; ResNet-20,
# C = 16-64, 0.5-0.7x; ResNet-18, batch 16: C = 128 on 28x28 and 256 on 14x14 even, 512 on 7x7
# 0.9x, where the 2x2 tiles cover 8x8 for 7x7 outputs).
MIN_WINOGRAD_CHANNELS = 128
MIN_WINOGRAD_SIZE = 8
# The backward's rule (dx and dw together): provisional, to be measured by dev/winograd.py.
MIN_WINOGRAD_BACKWARD_CHANNELS = 128
MIN_WINOGRAD_BACKWARD_SIZE = 8


def winograd_shape(w, stride, pad, groups):
    """True for the convolutions F(2x2, 3x3) computes: 3x3, stride 1, padding 1, one group."""
    return w.shape[2] == 3 and w.shape[3] == 3 and stride == 1 and pad == 1 and groups == 1


def use_winograd(x, w, stride, pad, groups):
    """True when conv2d_forward takes the Winograd path: 3x3, stride 1, padding 1, one group, C >= 128,
    H and W >= 8."""
    return (winograd_shape(w, stride, pad, groups)
            and x.shape[1] >= MIN_WINOGRAD_CHANNELS and min(x.shape[2], x.shape[3]) >= MIN_WINOGRAD_SIZE)


def use_winograd_backward(x, w, stride, pad, groups):
    """True when conv2d_backward takes the Winograd path: 3x3, stride 1, padding 1, one group,
    C >= MIN_WINOGRAD_BACKWARD_CHANNELS, H and W >= MIN_WINOGRAD_BACKWARD_SIZE."""
    return (winograd_shape(w, stride, pad, groups) and x.shape[1] >= MIN_WINOGRAD_BACKWARD_CHANNELS
            and min(x.shape[2], x.shape[3]) >= MIN_WINOGRAD_BACKWARD_SIZE)


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
def gemm16(ta, tb, a, b, c):
    """c[k] = op(a[k]) @ op(b[k]) for the 16 positions k (op transposes where ta / tb), over numba's threads
    (BLAS single-threaded by the caller)."""
    m, n = c.shape[1], c.shape[2]
    depth = a.shape[1] if ta else a.shape[2]
    for k in prange(16):
        gemm_rm(ta, tb, m, n, depth, 1.0, a[k], a.shape[2], b[k], b.shape[2], 0.0, c[k], n)


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
    gemm16(False, False, u, v, m)
    output_transform(m, y, th, tw, b if b is not None else w[0, 0, 0], b is not None)


# -- the backward: the adjoints of the forward's steps, in reverse order --------------------------

@njit(parallel=True, cache=True)
def output_transform_adjoint(dy, dm, th, tw):
    """dm[4*i+j, o, (n*th + a)*tw + b] = (A g A^T)[i, j] (kernel_math.wino_output_adjoint), g the 2x2 patch of
    dy[n, o] at (2a, 2b), zero past an odd height or width: the adjoint of output_transform."""
    N, O, OH, OW = dy.shape
    for no in prange(N * O):
        n, o = no // O, no % O
        s = np.empty((4, 2), dm.dtype)
        for a in range(th):
            for b in range(tw):
                t = (n * th + a) * tw + b
                for j in range(2):  # A g, down each column
                    g0 = dy[n, o, 2 * a, 2 * b + j] if 2 * b + j < OW else 0
                    g1 = dy[n, o, 2 * a + 1, 2 * b + j] if 2 * a + 1 < OH and 2 * b + j < OW else 0
                    s[0, j], s[1, j], s[2, j], s[3, j] = wino_output_adjoint(g0, g1)
                for p in range(4):  # (...) A^T, along each row
                    dm[4 * p, o, t], dm[4 * p + 1, o, t], dm[4 * p + 2, o, t], dm[4 * p + 3, o, t] = \
                        wino_output_adjoint(s[p, 0], s[p, 1])


@njit(parallel=True, cache=True)
def input_transform_adjoint(dv, dx, th, tw):
    """dx[n, c] = sum over tiles (a, b) of B dV B^T (kernel_math.wino_input_adjoint), dV[4*i+j] = dv[4*i+j, c,
    (n*th + a)*tw + b], added at the tile's 4x4 patch (2a-1, 2b-1); what falls outside dx is dropped. The adjoint
    of input_transform; each (n, c) plane by one thread, overlapping patches summed in a zero-padded plane."""
    N, C, H, W = dx.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        d = np.empty((4, 4), dv.dtype)
        acc = np.zeros((2 * th + 2, 2 * tw + 2), dv.dtype)  # dx[n, c] with a border of 1: acc[h + 1, w + 1]
        for a in range(th):
            for b in range(tw):
                t = (n * th + a) * tw + b
                for p in range(4):  # (...) B^T, along each row
                    d[p, 0], d[p, 1], d[p, 2], d[p, 3] = wino_input_adjoint(
                        dv[4 * p, c, t], dv[4 * p + 1, c, t], dv[4 * p + 2, c, t], dv[4 * p + 3, c, t])
                for q in range(4):  # B (...), down each column
                    d[0, q], d[1, q], d[2, q], d[3, q] = wino_input_adjoint(d[0, q], d[1, q], d[2, q], d[3, q])
                for p in range(4):
                    for q in range(4):
                        acc[2 * a + p, 2 * b + q] += d[p, q]
        for h in range(H):
            for ww in range(W):
                dx[n, c, h, ww] = acc[h + 1, ww + 1]


@njit(parallel=True, cache=True)
def weight_transform_adjoint(du, dw):
    """dw[o, c] += G^T dU G (kernel_math.wino_weight_adjoint), dU[i, j] = du[4*i+j, o, c], in float64: the
    adjoint of weight_transform."""
    O, C = dw.shape[0], dw.shape[1]
    for oc in prange(O * C):
        o, c = oc // C, oc % C
        t = np.empty((4, 3))
        for i in range(4):  # (...) G, along each row
            t[i, 0], t[i, 1], t[i, 2] = wino_weight_adjoint(
                np.float64(du[4 * i, o, c]), np.float64(du[4 * i + 1, o, c]),
                np.float64(du[4 * i + 2, o, c]), np.float64(du[4 * i + 3, o, c]))
        for q in range(3):  # G^T (...), down each column
            r0, r1, r2 = wino_weight_adjoint(t[0, q], t[1, q], t[2, q], t[3, q])
            dw[o, c, 0, q] = np.float64(dw[o, c, 0, q]) + r0
            dw[o, c, 1, q] = np.float64(dw[o, c, 1, q]) + r1
            dw[o, c, 2, q] = np.float64(dw[o, c, 2, q]) + r2


@njit(parallel=True, cache=True)
def bias_gradient(dy, db):
    """db[o] += sum_{n,i,j} dy[n, o, i, j], summed in float64, one thread per channel."""
    N, O, OH, OW = dy.shape
    for o in prange(O):
        s = 0.0
        for n in range(N):
            for i in range(OH):
                for j in range(OW):
                    s += dy[n, o, i, j]
        db[o] += s


def winograd_backward(x, w, dy, dx, dw, db, ws):
    """conv2d_backward on use_winograd_backward's shapes: dx overwritten, dw and db accumulated, each skipped
    where None; BLAS must be single-threaded.

    dM = A dy A^T per tile (16 x O x N*tiles); dw: V recomputed from x (the forward's workspace is
    not relied on), dU[k] = dM[k] V[k]^T, dw += G^T dU G; dx: dV[k] = U[k]^T dM[k] (into V's
    buffer, V being done with), dx = the sum of the tiles' B dV B^T."""
    N, C, H, W = x.shape
    O = w.shape[0]
    th, tw = (H + 1) // 2, (W + 1) // 2
    if db is not None:
        bias_gradient(dy, db)
    if dx is None and dw is None:
        return
    dm = ws.get("wino_m", (16, O, N * th * tw), x.dtype, empty)
    v = ws.get("wino_v", (16, C, N * th * tw), x.dtype, empty)
    output_transform_adjoint(dy, dm, th, tw)
    if dw is not None:
        du = ws.get("wino_du", (16, O, C), x.dtype, empty)
        input_transform(x, v, th, tw)
        gemm16(False, True, dm, v, du)
        weight_transform_adjoint(du, dw)
    if dx is not None:
        u = ws.get("wino_u", (16, O, C), x.dtype, empty)
        weight_transform(w, u)
        gemm16(True, False, u, dm, v)
        input_transform_adjoint(v, dx, th, tw)
