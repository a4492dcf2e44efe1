"""Winograd F(2x2, 3x3) convolution on CUDA, forward and backward: the twin of nbcnn/cpu/winograd.py
(same function names) for 3x3, stride 1, padding 1, one group.

Per 2x2 output tile (Lavin & Gray 2016), with the 1-D transforms of nbcnn.kernel_math:
- forward: U = G w G^T per (o, c), V = B^T d B per (c, tile) (d the tile's 4x4 input patch),
  M[k] = U[k] @ V[k] for the 16 positions k, y = A^T M A + bias: 16 multiplications per tile
  and (o, c) instead of im2col's 36;
- backward, the adjoints in reverse: dM = A dy A^T; dx: dV[k] = U[k]^T @ dM[k], then each input
  pixel gathers (B dV B^T)[p, q] from the <= 4 tiles whose patches hold it (no atomics);
  dw: V recomputed from x, dU[k] = dM[k] @ V[k]^T, dw += G^T dU G; db += the sum of dy.

Layout: the batch's T = N*ceil(H/2)*ceil(W/2) tiles are cut into S segments of Ts tiles (the
last padded with zero tiles): V and dV (16, S, C, Ts), M and dM (16, S, O, Ts), U (16, S, O, C),
U[k] copied into every segment. Every product is then ONE batched GEMM launch over the 16*S
pairs (k, s) with plain strides. The segments are for the weight gradient: its 16 products
are O x C outputs each summing over all T tiles, so at S = 1 ResNet's 64-channel layers would
run 16 blocks of 128x128 on 132 SMs; with S segments each (k, s) writes a partial sum (into
U's buffer, free by then) and weight_transform_adjoint adds them s ascending (deterministic).
S is the fewest segments giving that GEMM gemm.TARGET_BLOCKS blocks, as gemm_batch_sum
splits the im2col path's dw. Forward and backward share the layer's three buffers; the whole
batch is transformed at once (each buffer holds about 4 values per input or output pixel).

5x5, stride 1, padding 2: four 3x3 sub-kernels w_st (s, t in {0, 1}) at offsets (2s, 2t) (the overlapping
row and column 2 held once: kernel_math.wino5_tap), y = sum_st conv3x3(w_st, x shifted by (2s, 2t)), the
four stacked along the GEMMs' depth: U (16, S, O, 4C) from the split kernel, V (16, S, 4C, Ts) with
V[k, (st, c), tile (a, b)] = the F(2x2, 3x3) transform of the patch at (2(a+s)-2, 2(b+t)-2), written by
input_transform directly (the CPU instead transforms an extended tile grid once and shifts its GEMMs'
windows: here the segments' plain batch strides would not hold such shifts); then the same GEMMs, output
transform and adjoints with depth 4C. 64 multiplications per tile and (o, c) against im2col's 100.

Selection. No GPU has timed this path yet, so the CUDA convolution keeps im2col unless asked
(MODE, below); the rule for when Winograd pays on a GPU is owed until dev/cuda/winograd.py
has run there (`bash scripts/gpu_check.sh winograd`).
"""

import contextlib
import os

import numba
import numpy as np
from numba import cuda

from ..backend import is_winograd5_shape, is_winograd_shape
from ..kernel_math import (wino5_merge_taps, wino5_tap, wino_input, wino_input_adjoint, wino_output, wino_output_adjoint,
                           wino_weight, wino_weight_adjoint)
from .elementwise import fill
from .array import check_int32, divmod32, empty, flat, launch, unravel3, unravel4
from .gemm import TARGET_BLOCKS, GemmPlan, default_tiles, gemm, sum_batched_rows_into

# When conv2d_forward/backward take Winograd on CUDA, like torch.backends.cudnn's flags: "off"
# (the default: im2col for every shape), "rule" (the shapes nbcnn/cpu/winograd.py's measured
# CPU rule takes), "always" (every 3x3, stride 1, padding 1, and 5x5, stride 1, padding 2, one-group convolution). Set it
# for a run with NBCNN_CUDA_WINOGRAD=always, in code with set_mode("always") or, for a block,
# `with nbcnn.cuda.winograd.flags("always"):`.
MODES = ("off", "rule", "always")


def _checked(mode, what):
    if mode not in MODES:
        raise ValueError(f"{what} must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    return mode


MODE = _checked(os.environ.get("NBCNN_CUDA_WINOGRAD", "off"), "NBCNN_CUDA_WINOGRAD")


def set_mode(mode):
    """Set MODE ("off", "rule" or "always"; ValueError otherwise) and return the previous one."""
    global MODE
    previous, MODE = MODE, _checked(mode, "the CUDA Winograd mode")
    return previous


@contextlib.contextmanager
def flags(mode):
    """MODE = `mode` inside the with block, the previous mode after it (torch.backends.cudnn.flags' counterpart)."""
    previous = set_mode(mode)
    try:
        yield
    finally:
        set_mode(previous)


def use_winograd(x, w, stride, pad, groups):
    """True when the CUDA conv2d_forward takes the Winograd path, by MODE: "always" for every
    3x3, stride 1, padding 1 and 5x5, stride 1, padding 2, one-group convolution, "rule" where the CPU's
    use_winograd says so."""
    return _chosen("use_winograd", x, w, stride, pad, groups)


def use_winograd_backward(x, w, stride, pad, groups):
    """True when the CUDA conv2d_backward takes the Winograd path: use_winograd with the CPU's
    use_winograd_backward as the "rule"."""
    return _chosen("use_winograd_backward", x, w, stride, pad, groups)


def _chosen(cpu_rule, x, w, stride, pad, groups):
    if MODE == "always":
        return is_winograd_shape(w, stride, pad, groups) or is_winograd5_shape(w, stride, pad, groups)
    if MODE == "rule":
        from ..cpu import winograd as cpu  # here: the CUDA backend needs no CPU code otherwise
        return getattr(cpu, cpu_rule)(x, w, stride, pad, groups)
    return False


@cuda.jit(cache=True)
def weight_transform(w, u):
    """u[4i+j, s, o, c] = (G w[o, c] G^T)[i, j] for every segment s; w (O, C, 3, 3), u (16, S, O, C); float64, a thread per (o, c)."""
    _, S, O, C = u.shape
    g = cuda.local.array(12, numba.float64)  # G w[o, c], 4 x 3
    for e in range(cuda.grid(1), O * C, cuda.gridsize(1)):
        o, c = divmod32(e, C)
        for q in range(3):  # G down each column
            g[q], g[3 + q], g[6 + q], g[9 + q] = wino_weight(
                np.float64(w[o, c, 0, q]), np.float64(w[o, c, 1, q]), np.float64(w[o, c, 2, q]))
        for i in range(4):  # (G w) G^T along each row
            r = wino_weight(g[3 * i], g[3 * i + 1], g[3 * i + 2])
            for j in range(4):
                for s in range(S):
                    u[4 * i + j, s, o, c] = r[j]


@cuda.jit(cache=True)
def input_transform(x, th, tw, pad, v):
    """v[4i+j, s, st*C + c, l] = (B^T d B)[i, j], d the 4x4 patch of x[n, c] at (2(a+i0)-pad, 2(b+j0)-pad) (zero
    outside), (i0, j0) = divmod(st, 2) the sub-kernel's shift (st = 0 only, pad 1, for 3x3; st < 4, pad 2 for
    5x5), tile s*Ts + l = (n*th + a)*tw + b; the padding tiles past N*th*tw are zero. x (N, C, H, W),
    v (16, S, K*C, Ts) (K = 1 or 4); a thread per (s, st*C + c, l), in x's dtype."""
    N, C, H, W = x.shape
    _, S, KC, Ts = v.shape
    d = cuda.local.array(16, x.dtype)
    for e in range(cuda.grid(1), S * KC * Ts, cuda.gridsize(1)):
        s, kc, l = unravel3(e, KC, Ts)
        st, c = divmod32(kc, C)
        i0, j0 = divmod32(st, 2)
        n, ab = divmod32(s * Ts + l, th * tw)
        a, b = divmod32(ab, tw)
        for p in range(4):
            h = 2 * (a + i0) - pad + p
            for q in range(4):
                ww = 2 * (b + j0) - pad + q
                if n < N and 0 <= h < H and 0 <= ww < W:
                    d[4 * p + q] = x[n, c, h, ww]
                else:
                    d[4 * p + q] = 0
        for q in range(4):  # B^T down each column
            d[q], d[4 + q], d[8 + q], d[12 + q] = wino_input(d[q], d[4 + q], d[8 + q], d[12 + q])
        for p in range(4):  # (B^T d) B along each row
            r = wino_input(d[4 * p], d[4 * p + 1], d[4 * p + 2], d[4 * p + 3])
            for q in range(4):
                v[4 * p + q, s, kc, l] = r[q]


@cuda.jit(cache=True)
def output_transform(m, th, tw, bias, has_bias, y):
    """y[n, o, 2a+i, 2b+j] = (A^T M A)[i, j] (+ bias[o]), M[k] = m[k, s, o, l] for tile s*Ts + l = (n*th + a)*tw + b;
    an odd height or width drops the tile's last row or column. m (16, S, O, Ts), y (N, O, OH, OW); a thread per (o, tile)."""
    N, O, OH, OW = y.shape
    Ts = m.shape[3]
    tiles = N * th * tw
    r = cuda.local.array(8, m.dtype)  # A^T M, 2 x 4
    for e in range(cuda.grid(1), O * tiles, cuda.gridsize(1)):
        o, t = divmod32(e, tiles)  # consecutive threads: consecutive tiles, coalesced reads of m
        s, l = divmod32(t, Ts)
        n, ab = divmod32(t, th * tw)
        a, b = divmod32(ab, tw)
        for q in range(4):  # A^T down each column
            r[q], r[4 + q] = wino_output(m[q, s, o, l], m[4 + q, s, o, l], m[8 + q, s, o, l], m[12 + q, s, o, l])
        for i in range(2):  # (A^T M) A along each row
            y0, y1 = wino_output(r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3])
            if has_bias:
                y0 += bias[o]
                y1 += bias[o]
            h = 2 * a + i
            if h < OH:
                y[n, o, h, 2 * b] = y0
                if 2 * b + 1 < OW:
                    y[n, o, h, 2 * b + 1] = y1


@cuda.jit(cache=True)
def output_transform_adjoint(dy, th, tw, dm):
    """dm[4p+q, s, o, l] = (A g A^T)[p, q], g the 2x2 block of dy[n, o] at (2a, 2b) (zero outside), tile
    s*Ts + l = (n*th + a)*tw + b; the padding tiles are zero. dy (N, O, OH, OW), dm (16, S, O, Ts); a thread per (s, o, l)."""
    N, O, OH, OW = dy.shape
    _, S, _, Ts = dm.shape
    g = cuda.local.array(4, dy.dtype)
    r = cuda.local.array(8, dy.dtype)  # A g, 4 x 2
    for e in range(cuda.grid(1), S * O * Ts, cuda.gridsize(1)):
        s, o, l = unravel3(e, O, Ts)
        n, ab = divmod32(s * Ts + l, th * tw)
        a, b = divmod32(ab, tw)
        for i in range(2):
            for j in range(2):
                h, ww = 2 * a + i, 2 * b + j
                if n < N and h < OH and ww < OW:
                    g[2 * i + j] = dy[n, o, h, ww]
                else:
                    g[2 * i + j] = 0
        for j in range(2):  # A down each column
            r[j], r[2 + j], r[4 + j], r[6 + j] = wino_output_adjoint(g[j], g[2 + j])
        for p in range(4):  # (A g) A^T along each row
            row = wino_output_adjoint(r[2 * p], r[2 * p + 1])
            for q in range(4):
                dm[4 * p + q, s, o, l] = row[q]


@cuda.jit(cache=True)
def input_transform_adjoint(dv, th, tw, pad, dx):
    """dx[n, c, h, w] = sum over the sub-kernels st (shift (i0, j0) = divmod(st, 2)) and tiles (a, b) whose patch at
    (2(a+i0)-pad, 2(b+j0)-pad) holds (h, w) of (B dV B^T)[h - that row, w - that column], dV[k] = dv[k, s, st*C + c, l]
    for tile s*Ts + l = (n*th + a)*tw + b: the adjoint of input_transform. dv (16, S, K*C, Ts), dx (N, C, H, W)
    overwritten; a thread per pixel, its <= 4 tiles per sub-kernel in a fixed order (no atomics), summed in float64."""
    N, C, H, W = dx.shape
    KC, Ts = dv.shape[2], dv.shape[3]
    col = cuda.local.array(4, numba.float64)  # column q of dV B^T
    for e in range(cuda.grid(1), N * C * H * W, cuda.gridsize(1)):
        n, c, h, ww = unravel4(e, C, H, W)
        a1 = divmod32(h + pad, 2)[0]  # the pixel is row h+pad-2a' of patch a' = a+i0: rows 2, 3 of a1-1, 0, 1 of a1
        b1 = divmod32(ww + pad, 2)[0]
        acc = 0.0
        for kc in range(c, KC, C):
            i0, j0 = divmod32(divmod32(kc, C)[0], 2)
            for ap in range(a1 - 1, a1 + 1):
                a = ap - i0
                if 0 <= a < th:
                    p = h + pad - 2 * ap
                    for bp in range(b1 - 1, b1 + 1):
                        b = bp - j0
                        if 0 <= b < tw:
                            q = ww + pad - 2 * bp
                            s, l = divmod32((n * th + a) * tw + b, Ts)
                            for i in range(4):  # (dV B^T)[i, q] = (B dV[i, :])[q]
                                col[i] = np.float64(wino_input_adjoint(dv[4 * i, s, kc, l], dv[4 * i + 1, s, kc, l],
                                                                       dv[4 * i + 2, s, kc, l],
                                                                       dv[4 * i + 3, s, kc, l])[q])
                            acc += wino_input_adjoint(col[0], col[1], col[2], col[3])[p]
        dx[n, c, h, ww] = acc


@cuda.jit(cache=True)
def weight_transform_adjoint(du, dw):
    """dw[o, c] += G^T dU G, dU[k] = sum_s du[k, s, o, c] (the segments' partial sums, s ascending);
    du (16, S, O, C), dw (O, C, 3, 3); float64, a thread per (o, c)."""
    _, S, O, C = du.shape
    g = cuda.local.array(16, numba.float64)
    r = cuda.local.array(12, numba.float64)  # G^T dU, 3 x 4
    for e in range(cuda.grid(1), O * C, cuda.gridsize(1)):
        o, c = divmod32(e, C)
        for k in range(16):
            acc = 0.0
            for s in range(S):
                acc += np.float64(du[k, s, o, c])
            g[k] = acc
        for j in range(4):  # G^T down each column
            r[j], r[4 + j], r[8 + j] = wino_weight_adjoint(g[j], g[4 + j], g[8 + j], g[12 + j])
        for p in range(3):  # (G^T dU) G along each row
            row = wino_weight_adjoint(r[4 * p], r[4 * p + 1], r[4 * p + 2], r[4 * p + 3])
            for q in range(3):
                dw[o, c, p, q] += row[q]


@cuda.jit(cache=True)
def split_weight(w, w4):
    """w4[o, st*C + c, p, q] = w[o, c, kernel_math.wino5_tap(st, p, q)], 0 for its structural zeros: the four 3x3
    sub-kernels of the 5x5 w (O, C, 5, 5); w4 (O, 4C, 3, 3); a thread per element of w4."""
    O, KC = w4.shape[0], w4.shape[1]
    C = w.shape[1]
    for e in range(cuda.grid(1), O * KC * 9, cuda.gridsize(1)):
        o, kc, pq = unravel3(e, KC, 9)
        st, c = divmod32(kc, C)
        p, q = divmod32(pq, 3)
        r, t = wino5_tap(st, p, q)
        w4[o, kc, p, q] = w[o, c, r, t] if r >= 0 else 0


@cuda.jit(cache=True)
def merge_weight_gradient(dw4, dw):
    """dw[o, c, kernel_math.wino5_tap(st, p, q)] += dw4[o, st*C + c, p, q], the structural zeros' gradients dropped:
    the adjoint of split_weight, accumulated. dw4 (O, 4C, 3, 3), dw (O, C, 5, 5); a thread per (o, c)."""
    O, C = dw.shape[0], dw.shape[1]
    for e in range(cuda.grid(1), O * C, cuda.gridsize(1)):
        o, c = divmod32(e, C)
        wino5_merge_taps(dw4, dw, o, c)


def segments(O, C, T, dtype):
    """S: the fewest segments of the T tiles for which the weight gradient's 16*S products of O x C make
    TARGET_BLOCKS GEMM blocks, at most one per tile."""
    tiles = default_tiles(dtype)
    blocks = 16 * -(-O // tiles.bm) * -(-C // tiles.bn)
    return max(1, min(T, -(-TARGET_BLOCKS // blocks)))


def _buffers(x, w, ws):
    """(th, tw, pad, w3, u, v, m): the tiles down and across an image, the input's padding, the 3x3 kernel(s)
    (w itself, or for a 5x5 w its four sub-kernels (O, 4C, 3, 3), split here into the workspace), and U, V, M
    in the layer's workspace with the GEMMs' depth K*C (K = 1 for 3x3, 4 for 5x5)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    th, tw = (H + 1) // 2, (W + 1) // 2
    pad, w3 = 1, w
    if w.shape[2] == 5:
        pad, w3 = 2, ws.get("wino5_w4", (O, 4 * C, 3, 3), x.dtype, empty)
        split_weight[launch(w3.size)](w, w3)
    KC = w3.shape[1]
    S = segments(O, KC, N * th * tw, x.dtype)
    Ts = -(-N * th * tw // S)
    u = ws.get("wino_u", (16, S, O, KC), x.dtype, empty)
    v = ws.get("wino_v", (16, S, KC, Ts), x.dtype, empty)
    m = ws.get("wino_m", (16, S, O, Ts), x.dtype, empty)
    check_int32(x, u, v, m)
    return th, tw, pad, w3, u, v, m


def gemm16(u, v, m):
    """m[k, s] = u[k, s] @ v[k, s] for the 16 positions k and S segments s: one batched GEMM launch."""
    _, S, O, C = u.shape
    Ts = v.shape[3]
    gemm(u, v, m, GemmPlan(O, Ts, C, batch=16 * S, stride_a=O * C, stride_b=C * Ts, stride_c=O * Ts))


def winograd_forward(x, w, b, y, ws):
    """y = conv2d(x, w, b), 3x3, stride 1, padding 1 or 5x5, stride 1, padding 2, one group (use_winograd's shapes)."""
    th, tw, pad, w3, u, v, m = _buffers(x, w, ws)
    check_int32(y)
    weight_transform[launch(w3.shape[0] * w3.shape[1])](w3, u)
    input_transform[launch(v.size // 16)](x, th, tw, pad, v)
    gemm16(u, v, m)
    # a placeholder where there is no bias: one kernel for both, has_bias keeps it unread
    output_transform[launch(y.shape[0] * y.shape[1] * th * tw)](m, th, tw, flat(w) if b is None else b,
                                                                 b is not None, y)


def winograd_backward(x, w, dy, dx, dw, db, ws):
    """conv2d_backward on the Winograd path: dx overwritten, dw and db accumulated; each may be None (not computed)."""
    N, O = dy.shape[0], dy.shape[1]
    check_int32(dy)
    if dx is not None or dw is not None:
        th, tw, pad, w3, u, v, m = _buffers(x, w, ws)
        _, S, _, C = u.shape  # C: the GEMMs' depth, K*C
        Ts = v.shape[3]
        output_transform_adjoint[launch(m.size // 16)](dy, th, tw, m)  # dM
        if dx is not None:
            weight_transform[launch(O * C)](w3, u)
            # dV[k, s] (C, Ts) = U[k, s]^T @ dM[k, s], into V's buffer
            gemm(u, m, v, GemmPlan(C, Ts, O, trans_a=True, batch=16 * S, stride_a=O * C, stride_b=O * Ts,
                                   stride_c=C * Ts))
            input_transform_adjoint[launch(dx.size)](v, th, tw, pad, dx)
        if dw is not None:  # None: a frozen weight; V's transform and the GEMM are skipped
            input_transform[launch(v.size // 16)](x, th, tw, pad, v)  # recomputed: the buffer may hold dV or another call's V
            # dU[k, s] (O, C) = dM[k, s] @ V[k, s]^T, segment s's partial sum, into U's buffer (U is used up)
            gemm(m, v, u, GemmPlan(O, C, Ts, trans_b=True, batch=16 * S, stride_a=O * Ts, stride_b=C * Ts,
                                   stride_c=O * C))
            if w3 is w:
                weight_transform_adjoint[launch(O * C)](u, dw)
            else:  # 5x5: the sub-kernels' gradient into w3's buffer (w4 is used up), merged into dw
                fill(w3, 0)
                weight_transform_adjoint[launch(O * C)](u, w3)
                merge_weight_gradient[launch(dw.shape[0] * dw.shape[1])](w3, dw)
    if db is not None:
        sum_batched_rows_into(dy.reshape((N, O, dy.shape[2] * dy.shape[3])), db)
