"""Winograd F(2x2, 3x3) convolution, forward and backward, on the CPU (Lavin & Gray 2016): 3x3,
stride 1, padding 1, one group, chosen by `use_winograd` / `use_winograd_backward` over the
im2col path of nbcnn/cpu/conv.py. The 1-D transforms are kernel_math's wino_* (shared with CUDA).

Per 2x2 output tile: U = G w G^T (4x4 per (o, c)), V = B^T d B (4x4 per (c, tile), d the
tile's 4x4 input patch), M[k] = U[k] @ V[k] for the 16 positions k (GEMMs O x C x N*tiles),
y = A^T M A + bias: 16 multiplications per tile and (o, c) instead of im2col's 36. The whole
batch is transformed at once (V: 16 x C x N*tiles in the layer's workspace); the 16 GEMMs are
split over numba's threads with single-threaded BLAS, as in conv.py. The transforms work a row
of tiles at a time, so their inner loops run along contiguous pixels and tiles.

The backward runs the adjoints of those steps in reverse: dM = A dy A^T per tile; dx: dV[k] =
U[k]^T dM[k], then B dV B^T per tile added into dx's overlapping 4x4 patches; dw: V recomputed
from x, dU[k] = dM[k] V[k]^T, dw += G^T dU G (float64, as U).
"""

import numpy as np
from numba import njit, prange

from ..backend import is_winograd5_shape, is_winograd_shape
from ..kernel_math import (wino5_merge_taps, wino5_tap, wino_input, wino_input_adjoint, wino_output, wino_output_adjoint,
                           wino_weight, wino_weight_adjoint)
from .array import empty
from .gemm import gemm_rm, sum_batched_rows_into

# Winograd wherever dev/winograd.py measured it doing less work than im2col: one numba thread,
# process CPU time, 2-core machine at load 5-6 (docs/performance.md, "Winograd backward"), rows
# of tiles transforms. Forward 1.33-2.41x, dx+dw 1.35-1.88x on ResNet-20 (C = 16 on 32x32, 64 on
# 8x8), ResNet-18 (64-256 on 56x56-14x14) and AlexNet conv3-5 (256-384 on 13x13); on 7x7 maps
# (ResNet-18 layer4) forward 0.86x, dx+dw 0.94x: 2x2 tiles cover 8x8 there, 31% wasted, hence the
# size floor. C below 16 (a 3-channel stem) is not measured and stays on im2col. Wall clock with
# two threads at load 1.4-5.6 agreed for the backward (dx+dw 1.06-1.91x, 7x7 0.92-0.97x) but not
# for the forward of ResNet's smaller maps (0.66-1.04x): each of Winograd's 4 (forward) to 8
# (backward) parallel regions costs a scheduler slice when other processes hold the cores.
# Maps with even sides from 4 up are whole tiles, nothing wasted: one numba thread, process CPU time
# (dev/winograd.py --serial, load 5.3): 6x6 (alexnet-small's conv3, 64 channels, b128; 128 channels,
# b32) forward 1.58-1.71x, dx+dw 1.46-1.59x; 4x4 (64 channels b128, 256 b32) 1.15-1.24x and 1.16-1.37x.
MIN_WINOGRAD_CHANNELS = 16
MIN_WINOGRAD_SIZE = 8
MIN_WINOGRAD_BACKWARD_CHANNELS = 16  # the backward's rule, for dx and dw together
MIN_WINOGRAD_BACKWARD_SIZE = 8
MIN_WINOGRAD_EVEN_SIZE = 4  # both rules, for maps whose sides are even
# 5x5, stride 1, padding 2 (the four-sub-kernel path below), by dev/winograd.py --shapes alexnet5 (docs/performance.md,
# "Winograd 5x5"; idle machine, after COLUMN_BLOCK): forward 1.20-1.61x (one thread, work) and 1.38-1.98x (two
# threads) on C = 16-96 at 13x13 and 27x27; dx+dw 1.09-1.24x and 1.16-1.26x; 7x7 maps lose everything
# (0.58-0.85x). C = 16 (not in any of nbcnn's models) was mixed on the loaded machine, hence C >= 32; map
# sides 8-12 and 14-26 are not measured.
MIN_WINOGRAD5_CHANNELS = 32
MIN_WINOGRAD5_SIZE = 13
MIN_WINOGRAD5_BACKWARD_CHANNELS = 32
MIN_WINOGRAD5_BACKWARD_SIZE = 13


def _fits(x, channels, size):
    return x.shape[1] >= channels and min(x.shape[2], x.shape[3]) >= size


def _fits3(x, channels, size):
    """The 3x3 rules' test: C >= channels on maps of sides >= size, or of even sides >= MIN_WINOGRAD_EVEN_SIZE."""
    even = x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
    return _fits(x, channels, size) or (even and _fits(x, channels, MIN_WINOGRAD_EVEN_SIZE))


def use_winograd(x, w, stride, pad, groups):
    """True when conv2d_forward takes the Winograd path: 3x3, stride 1, padding 1, one group,
    C >= MIN_WINOGRAD_CHANNELS, H and W >= MIN_WINOGRAD_SIZE (or even and >= MIN_WINOGRAD_EVEN_SIZE); or 5x5, stride 1, padding 2, one group,
    C >= MIN_WINOGRAD5_CHANNELS, H and W >= MIN_WINOGRAD5_SIZE."""
    return ((is_winograd_shape(w, stride, pad, groups) and _fits3(x, MIN_WINOGRAD_CHANNELS, MIN_WINOGRAD_SIZE))
            or (is_winograd5_shape(w, stride, pad, groups) and _fits(x, MIN_WINOGRAD5_CHANNELS, MIN_WINOGRAD5_SIZE)))


def use_winograd_backward(x, w, stride, pad, groups):
    """True when conv2d_backward takes the Winograd path: 3x3, stride 1, padding 1, one group,
    C >= MIN_WINOGRAD_BACKWARD_CHANNELS, H and W >= MIN_WINOGRAD_BACKWARD_SIZE (or even and >=
    MIN_WINOGRAD_EVEN_SIZE); or the 5x5 shape
    with C >= MIN_WINOGRAD5_BACKWARD_CHANNELS, H and W >= MIN_WINOGRAD5_BACKWARD_SIZE."""
    return ((is_winograd_shape(w, stride, pad, groups)
             and _fits3(x, MIN_WINOGRAD_BACKWARD_CHANNELS, MIN_WINOGRAD_BACKWARD_SIZE))
            or (is_winograd5_shape(w, stride, pad, groups)
                and _fits(x, MIN_WINOGRAD5_BACKWARD_CHANNELS, MIN_WINOGRAD5_BACKWARD_SIZE)))


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
def input_transform(x, v, th, tw, pad):
    """v[4*i+j, c, (n*th + a)*tw + b] = (B^T d B)[i, j] (kernel_math.wino_input), d the 4x4 patch of x[n, c] at
    (2a-pad, 2b-pad), zero outside (pad 1: F(2x2, 3x3); pad 2: the 5x5 path's extended grid). A row of tiles at
    a time: the column transform along the padded rows, then the row transform of every tile in the row, so the
    loops run over contiguous pixels and tiles."""
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        xp = np.zeros((2 * th + 2, 2 * tw + 2), x.dtype)  # x[n, c] with a zero border: xp[h + pad, w + pad]
        xp[pad:H + pad, pad:W + pad] = x[n, c]
        r = np.empty((4, 2 * tw + 2), x.dtype)
        for a in range(th):
            t0 = (n * th + a) * tw
            for q in range(2 * tw + 2):  # B^T d, down each column
                r[0, q], r[1, q], r[2, q], r[3, q] = wino_input(xp[2 * a, q], xp[2 * a + 1, q], xp[2 * a + 2, q],
                                                                xp[2 * a + 3, q])
            for i in range(4):  # (...) B, along each tile's row
                v0, v1, v2, v3 = v[4 * i, c, t0:t0 + tw], v[4 * i + 1, c, t0:t0 + tw], \
                    v[4 * i + 2, c, t0:t0 + tw], v[4 * i + 3, c, t0:t0 + tw]
                ri = r[i]
                for b in range(tw):
                    v0[b], v1[b], v2[b], v3[b] = wino_input(ri[2 * b], ri[2 * b + 1], ri[2 * b + 2], ri[2 * b + 3])


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
    """y[n, o, 2a+i, 2b+j] = (A^T M A)[i, j] (+ bias[o]) (kernel_math.wino_output), M[k] = m[k, o, (n*th + a)*tw + b].
    A row of tiles at a time, as input_transform."""
    N, O, OH, OW = y.shape
    for no in prange(N * O):
        n, o = no // O, no % O
        bo = bias[o] if has_bias else 0
        s = np.empty((2, 4, tw), m.dtype)
        row = np.empty(2 * tw, y.dtype)
        for a in range(th):
            t0 = (n * th + a) * tw
            for q in range(4):  # A^T M, down each column
                m0, m1, m2, m3 = m[q, o, t0:t0 + tw], m[4 + q, o, t0:t0 + tw], m[8 + q, o, t0:t0 + tw], \
                    m[12 + q, o, t0:t0 + tw]
                s0, s1 = s[0, q], s[1, q]
                for b in range(tw):
                    s0[b], s1[b] = wino_output(m0[b], m1[b], m2[b], m3[b])
            for i in range(min(2, OH - 2 * a)):  # (...) A, along each row; an odd height drops the last row
                si = s[i]
                for b in range(tw):
                    y0, y1 = wino_output(si[0, b], si[1, b], si[2, b], si[3, b])
                    row[2 * b], row[2 * b + 1] = y0 + bo, y1 + bo
                y[n, o, 2 * a + i] = row[:OW]  # an odd width drops the last column


def _buffers(x, w, ws):
    """(th, tw, u, v, m): the tiles down and across an image, and U (16, O, C), V (16, C, N*tiles) and
    M (16, O, N*tiles) in the layer's workspace (the backward's dM in M's buffer, dV in V's)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    th, tw = (H + 1) // 2, (W + 1) // 2
    u = ws.get("wino_u", (16, O, C), x.dtype, empty)
    v = ws.get("wino_v", (16, C, N * th * tw), x.dtype, empty)
    m = ws.get("wino_m", (16, O, N * th * tw), x.dtype, empty)
    return th, tw, u, v, m


def winograd_forward(x, w, b, y, ws):
    """y = conv2d(x, w, b) on use_winograd's shapes (3x3 here, 5x5 by winograd5_forward); BLAS must be
    single-threaded."""
    if w.shape[2] == 5:
        return winograd5_forward(x, w, b, y, ws)
    th, tw, u, v, m = _buffers(x, w, ws)
    weight_transform(w, u)
    input_transform(x, v, th, tw, 1)
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
        g = np.zeros((2 * th, 2 * tw), dm.dtype)  # dy[n, o] zero-padded to whole tiles
        g[:OH, :OW] = dy[n, o]
        s = np.empty((4, 2, tw), dm.dtype)
        for a in range(th):
            t0 = (n * th + a) * tw
            g0, g1 = g[2 * a], g[2 * a + 1]
            for j in range(2):  # A g, down each column
                for b in range(tw):
                    s[0, j, b], s[1, j, b], s[2, j, b], s[3, j, b] = wino_output_adjoint(g0[2 * b + j],
                                                                                         g1[2 * b + j])
            for p in range(4):  # (...) A^T, along each row
                d0, d1, d2, d3 = dm[4 * p, o, t0:t0 + tw], dm[4 * p + 1, o, t0:t0 + tw], \
                    dm[4 * p + 2, o, t0:t0 + tw], dm[4 * p + 3, o, t0:t0 + tw]
                sp0, sp1 = s[p, 0], s[p, 1]
                for b in range(tw):
                    d0[b], d1[b], d2[b], d3[b] = wino_output_adjoint(sp0[b], sp1[b])


@njit(parallel=True, cache=True)
def input_transform_adjoint(dv, dx, th, tw, pad):
    """dx[n, c] = sum over tiles (a, b) of B dV B^T (kernel_math.wino_input_adjoint), dV[4*i+j] = dv[4*i+j, c,
    (n*th + a)*tw + b], added at the tile's 4x4 patch (2a-pad, 2b-pad); what falls outside dx is dropped. The
    adjoint of input_transform; each (n, c) plane by one thread, overlapping patches summed in a zero-padded plane."""
    N, C, H, W = dx.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        acc = np.zeros((2 * th + 2, 2 * tw + 2), dv.dtype)  # dx[n, c] with a border of pad: acc[h + pad, w + pad]
        e = np.empty((4, tw), dv.dtype)
        r = np.empty((4, 2 * tw + 2), dv.dtype)
        for a in range(th):
            t0 = (n * th + a) * tw
            for i in range(4):  # (...) B^T, along each tile's row
                v0, v1, v2, v3 = dv[4 * i, c, t0:t0 + tw], dv[4 * i + 1, c, t0:t0 + tw], \
                    dv[4 * i + 2, c, t0:t0 + tw], dv[4 * i + 3, c, t0:t0 + tw]
                for b in range(tw):
                    e[0, b], e[1, b], e[2, b], e[3, b] = wino_input_adjoint(v0[b], v1[b], v2[b], v3[b])
                ri = r[i]
                ri[:] = 0
                for b in range(tw):  # neighbouring tiles overlap by two columns: a pass per half
                    ri[2 * b] += e[0, b]
                    ri[2 * b + 1] += e[1, b]
                for b in range(tw):
                    ri[2 * b + 2] += e[2, b]
                    ri[2 * b + 3] += e[3, b]
            a0, a1, a2, a3 = acc[2 * a], acc[2 * a + 1], acc[2 * a + 2], acc[2 * a + 3]
            for q in range(2 * tw + 2):  # B (...), down each column
                d0, d1, d2, d3 = wino_input_adjoint(r[0, q], r[1, q], r[2, q], r[3, q])
                a0[q] += d0
                a1[q] += d1
                a2[q] += d2
                a3[q] += d3
        dx[n, c] = acc[pad:H + pad, pad:W + pad]


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


def winograd_backward(x, w, dy, dx, dw, db, ws):
    """conv2d_backward on use_winograd_backward's shapes: dx overwritten, dw and db accumulated, each skipped
    where None (5x5 by winograd5_backward); BLAS must be single-threaded.

    dM = A dy A^T per tile (into M's buffer); dx: dV[k] = U[k]^T dM[k] (into V's buffer), dx = the sum of
    the tiles' B dV B^T; dw: V recomputed from x (the buffer holds dV, or another call's V),
    dU[k] = dM[k] V[k]^T (into U's buffer, U being used up), dw += G^T dU G. CUDA's order."""
    if w.shape[2] == 5:
        return winograd5_backward(x, w, dy, dx, dw, db, ws)
    N, O = dy.shape[0], dy.shape[1]
    if db is not None:
        sum_batched_rows_into(dy.reshape(N, O, dy.shape[2] * dy.shape[3]), db)
    if dx is None and dw is None:
        return
    th, tw, u, v, m = _buffers(x, w, ws)
    output_transform_adjoint(dy, m, th, tw)  # dM
    if dx is not None:
        weight_transform(w, u)
        gemm16(True, False, u, m, v)
        input_transform_adjoint(v, dx, th, tw, 1)
    if dw is not None:  # None: a frozen weight; V's transform and the GEMMs are skipped
        input_transform(x, v, th, tw, 1)
        gemm16(False, True, m, v, u)
        weight_transform_adjoint(u, dw)


# -- 5x5, stride 1, padding 2: four F(2x2, 3x3) convolutions on one extended input transform --------
#
# w (5x5) is split into four 3x3 sub-kernels w_st (s, t in {0, 1}) at row and column offsets 2s, 2t:
# w_st[p, q] = w[2s+p, 2t+q], the overlapping row / column 2 counted once (in s = 0 / t = 0: w_1t's row 0
# and w_s1's column 0 are structural zeros). y = sum_st conv3x3(w_st, x shifted by (2s, 2t)); the shifts
# are whole tiles, so sub-kernel (s, t)'s F(2x2, 3x3) input tile for output tile (a, b) is tile (a+s, b+t)
# of ONE input transform over an extended grid: (th+1) x (tw+1) tiles per image with patches at
# (2a-2, 2b-2) (input_transform with pad 2). M, dM and V all use that grid's tile numbering, so the
# tile (a+s, b+t) sits a constant s*(tw+1) + t columns after (a, b): each sub-kernel's GEMM reads V at
# that offset, with no gather and no 4x larger V (the grid's extra row and column of tiles are computed
# and dropped: 15% more GEMM on 27x27 maps, 31% on 13x13). 64 multiplications per 2x2 tile and (o, c)
# against im2col's 100, at F(2x2, 3x3)'s float32 accuracy (F(2x2, 5x5) and F(4x4, 3x3) were rejected
# on theirs: docs/performance.md).

def _offsets(gw):
    """The column offset of tile (a+s, b+t) from (a, b) on the extended grid (gw tiles across), for st = 2s+t."""
    return np.array([0, 1, gw, gw + 1], np.int64)


@njit(parallel=True, cache=True)
def split_weight(w, w4):
    """w4[o, st*C + c, p, q] = w[o, c, kernel_math.wino5_tap(st, p, q)], 0 for its structural zeros: the four 3x3
    sub-kernels of the 5x5 w."""
    O, C = w.shape[0], w.shape[1]
    for oc in prange(O * C):
        o, c = oc // C, oc % C
        for st in range(4):
            for p in range(3):
                for q in range(3):
                    r, s = wino5_tap(st, p, q)
                    w4[o, st * C + c, p, q] = w[o, c, r, s] if r >= 0 else 0


@njit(parallel=True, cache=True)
def merge_weight_gradient(dw4, dw):
    """dw[o, c, kernel_math.wino5_tap(st, p, q)] += dw4[o, st*C + c, p, q], the structural zeros' gradients
    dropped: the adjoint of split_weight, accumulated."""
    O, C = dw.shape[0], dw.shape[1]
    for oc in prange(O * C):
        wino5_merge_taps(dw4, dw, oc // C, oc % C)


# The forward's and dx's four shifted GEMMs per position k run a block of COLUMN_BLOCK tiles at a time, all four
# sub-kernels on one block before the next, so the block of V (forward) or dM (dx) the four read stays in cache:
# measured (the GEMM kernels alone, blocks of 256 / 512 / 1024 against none, idle machine, 2026-12-03): on
# alexnet-small's conv2 (13x13, C = 32, b128) 256 made them 1.2-1.5x faster, on AlexNet's conv2 all were within
# noise; blocking the dw GEMMs gained nothing, so they run whole.
COLUMN_BLOCK = 256


@njit(parallel=True, cache=True)
def gemm16_shifted(u, v, m, offs, L):
    """m[k][:, :L] = sum over st of u[k][:, st*C:(st+1)*C] @ v[k][:, offs[st]:offs[st]+L]: each sub-kernel's U
    against V's tiles (a+s, b+t); u (16, O, 4C), v (16, C, tiles), m (16, O, tiles). COLUMN_BLOCK columns at a time."""
    O, C = m.shape[1], v.shape[1]
    for k in prange(16):
        for j0 in range(0, L, COLUMN_BLOCK):
            n = min(COLUMN_BLOCK, L - j0)
            for st in range(4):
                gemm_rm(False, False, O, n, C, 1.0, u[k, :, st * C:], 4 * C, v[k, :, offs[st] + j0:], v.shape[2],
                        1.0 if st > 0 else 0.0, m[k, :, j0:], m.shape[2])


@njit(parallel=True, cache=True)
def gemm16_shifted_adjoint_v(u, dm, dv, offs, L):
    """dv[k][:, offs[st]:offs[st]+L] += u[k][:, st*C:(st+1)*C]^T @ dm[k][:, :L] over st, dv zeroed first: the
    adjoint of gemm16_shifted in v. COLUMN_BLOCK columns of dm at a time (the blocks' outputs overlap: all add)."""
    O, C = dm.shape[1], dv.shape[1]
    for k in prange(16):
        dv[k] = 0
        for j0 in range(0, L, COLUMN_BLOCK):
            n = min(COLUMN_BLOCK, L - j0)
            for st in range(4):
                gemm_rm(True, False, C, n, O, 1.0, u[k, :, st * C:], 4 * C, dm[k, :, j0:], dm.shape[2],
                        1.0, dv[k, :, offs[st] + j0:], dv.shape[2])


@njit(parallel=True, cache=True)
def gemm16_shifted_adjoint_u(dm, v, du, offs, L):
    """du[k][:, st*C:(st+1)*C] = dm[k][:, :L] @ v[k][:, offs[st]:offs[st]+L]^T: the adjoint of gemm16_shifted
    in u (dm zero on the extended grid's extra tiles)."""
    O, C = dm.shape[1], v.shape[1]
    for k in prange(16):
        for st in range(4):
            gemm_rm(False, True, O, C, L, 1.0, dm[k], dm.shape[2], v[k, :, offs[st]:], v.shape[2],
                    0.0, du[k, :, st * C:], 4 * C)


def _buffers5(x, w, ws):
    """(gh, gw, L, u, v, m, w4): the extended grid's tiles down and across an image, the GEMMs' column count L
    (through the last real tile), U (16, O, 4C), V (16, C, N*gh*gw), M (16, O, N*gh*gw) and the sub-kernels
    w4 (O, 4C, 3, 3) in the layer's workspace (the backward's dM in M's buffer, dV in V's, dU in U's)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    gh, gw = (H + 1) // 2 + 1, (W + 1) // 2 + 1
    tiles = N * gh * gw
    u = ws.get("wino5_u", (16, O, 4 * C), x.dtype, empty)
    v = ws.get("wino5_v", (16, C, tiles), x.dtype, empty)
    m = ws.get("wino5_m", (16, O, tiles), x.dtype, empty)
    w4 = ws.get("wino5_w4", (O, 4 * C, 3, 3), x.dtype, empty)
    return gh, gw, tiles - gw - 1, u, v, m, w4


def winograd5_forward(x, w, b, y, ws):
    """y = conv2d(x, w, b), 5x5, stride 1, padding 2 (use_winograd's shapes); BLAS must be single-threaded."""
    gh, gw, L, u, v, m, w4 = _buffers5(x, w, ws)
    split_weight(w, w4)
    weight_transform(w4, u)
    input_transform(x, v, gh, gw, 2)
    gemm16_shifted(u, v, m, _offsets(gw), L)
    output_transform(m, y, gh, gw, b if b is not None else w[0, 0, 0], b is not None)


def winograd5_backward(x, w, dy, dx, dw, db, ws):
    """conv2d_backward on the 5x5 shapes of use_winograd_backward, as winograd_backward: the adjoints of
    winograd5_forward's steps in reverse; dW of the sub-kernels merged into dw (float64, as U)."""
    N, O = dy.shape[0], dy.shape[1]
    if db is not None:
        sum_batched_rows_into(dy.reshape(N, O, dy.shape[2] * dy.shape[3]), db)
    if dx is None and dw is None:
        return
    gh, gw, L, u, v, m, w4 = _buffers5(x, w, ws)
    offs = _offsets(gw)
    output_transform_adjoint(dy, m, gh, gw)  # dM, zero on the extended grid's extra tiles
    if dx is not None:
        split_weight(w, w4)
        weight_transform(w4, u)
        gemm16_shifted_adjoint_v(u, m, v, offs, L)
        input_transform_adjoint(v, dx, gh, gw, 2)
    if dw is not None:
        input_transform(x, v, gh, gw, 2)
        gemm16_shifted_adjoint_u(m, v, u, offs, L)
        dw4 = ws.get("wino5_dw4", w4.shape, np.float64, empty)
        dw4[:] = 0
        weight_transform_adjoint(u, dw4)
        merge_weight_gradient(dw4, dw)
