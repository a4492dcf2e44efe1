"""Winograd F(2x2, 3x3) forward on the CPU, measured against nbcnn's im2col convolution before
anything goes into nbcnn (issue 15's lever): correctness against a float64 reference, float32
error of both paths, and time per layer shape.

    python dev/winograd_f23.py [--repeat 5]

y[n, o] = sum_c x[n, c] (*) w[o, c], 3x3, stride 1, padding 1, NCHW float32. Per 2x2 output tile
(Lavin & Gray 2016): U = G w G^T (4x4 per (o, c)), V = B^T d B (4x4 per (c, tile) of the input's
4x4 patch d), M[k] = U[k] @ V[k] for each of the 16 positions k (GEMMs O x C x tiles), y = A^T M A.
16 multiplications per tile and (o, c) instead of 36: 2.25x fewer. This prototype transforms the
whole batch at once (V: 16 x C x N*tiles), runs the 16 GEMMs over numba's threads with
single-threaded BLAS (as nbcnn's ops do: a batched numpy matmul on OpenBLAS's two threads right
after a numba parallel region ran 4-20x slower, the thread fight of nbcnn/cpu/threads.py) and
transforms back in numba-parallel loops.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
from numba import njit, prange

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nbcnn  # noqa: E402
from nbcnn.cpu.threads import single_threaded_blas  # noqa: E402

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def weight_transform(w):
    """U[k, o, c] with k = 4*i + j: (G w[o, c] G^T)[i, j]."""
    u = np.einsum("ip,ocpq,jq->ijoc", G, w.astype(np.float64), G)
    return np.ascontiguousarray(u.reshape(16, *w.shape[:2]).astype(w.dtype))


@njit(parallel=True, cache=True)
def input_transform(x, v, th, tw):
    """v[4*i+j, c, (n*th + a)*tw + b] = (B^T d B)[i, j], d the 4x4 patch of x[n, c] at (2a-1, 2b-1)."""
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        d = np.zeros((4, 4), x.dtype)
        for a in range(th):
            for b in range(tw):
                for p in range(4):
                    for q in range(4):
                        h, ww = 2 * a - 1 + p, 2 * b - 1 + q
                        d[p, q] = x[n, c, h, ww] if 0 <= h < H and 0 <= ww < W else 0
                t = (n * th + a) * tw + b
                for q in range(4):  # B^T d (columns): rows d0-d2, d1+d2, d2-d1, d1-d3
                    r0, r1, r2, r3 = d[0, q] - d[2, q], d[1, q] + d[2, q], d[2, q] - d[1, q], d[1, q] - d[3, q]
                    d[0, q], d[1, q], d[2, q], d[3, q] = r0, r1, r2, r3
                for p in range(4):  # (...) B (rows)
                    v[4 * p + 0, c, t] = d[p, 0] - d[p, 2]
                    v[4 * p + 1, c, t] = d[p, 1] + d[p, 2]
                    v[4 * p + 2, c, t] = d[p, 2] - d[p, 1]
                    v[4 * p + 3, c, t] = d[p, 1] - d[p, 3]


@njit(parallel=True, cache=True)
def output_transform(m, y, th, tw, bias):
    """y[n, o, 2a+i, 2b+j] = (A^T M A)[i, j] + bias[o], M[k] = m[k, o, (n*th + a)*tw + b]."""
    N, O, OH, OW = y.shape
    for no in prange(N * O):
        n, o = no // O, no % O
        for a in range(th):
            for b in range(tw):
                t = (n * th + a) * tw + b
                s = np.empty((2, 4), m.dtype)
                for q in range(4):  # A^T M: rows m0+m1+m2, m1-m2-m3
                    s[0, q] = m[q, o, t] + m[4 + q, o, t] + m[8 + q, o, t]
                    s[1, q] = m[4 + q, o, t] - m[8 + q, o, t] - m[12 + q, o, t]
                for i in range(2):
                    if 2 * a + i < OH:
                        y[n, o, 2 * a + i, 2 * b] = s[i, 0] + s[i, 1] + s[i, 2] + bias[o]
                        if 2 * b + 1 < OW:
                            y[n, o, 2 * a + i, 2 * b + 1] = s[i, 1] - s[i, 2] - s[i, 3] + bias[o]


@njit(parallel=True, cache=True)
def gemm16(u, v, m):
    """m[k] = u[k] @ v[k] for the 16 positions k, split over numba's threads (BLAS single-threaded)."""
    for k in prange(16):
        np.dot(u[k], v[k], m[k])


@single_threaded_blas
def winograd_conv(x, u, bias):
    N, C, H, W = x.shape
    th, tw = (H + 1) // 2, (W + 1) // 2
    v = np.empty((16, C, N * th * tw), x.dtype)
    input_transform(x, v, th, tw)
    m = np.empty((16, u.shape[1], v.shape[2]), x.dtype)
    gemm16(u, v, m)  # 16 GEMMs (O, C) @ (C, N*tiles)
    y = np.empty((N, u.shape[1], H, W), x.dtype)
    output_transform(m, y, th, tw, bias)
    return y


def reference(x, w, bias):
    """float64 direct convolution (independent of both paths): sum over the 9 taps of shifted planes."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((N, w.shape[0], H, W))
    for p in range(3):
        for q in range(3):
            y += np.einsum("nchw,oc->nohw", xp[:, :, p:p + H, q:q + W], w[:, :, p, q])
    return y + bias[None, :, None, None]


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


SHAPES = [  # (name, N, C, O, H): ResNet-20's three stages at batch 128, AlexNet's conv3-5 at batch 16
    ("resnet20 layer1", 128, 16, 16, 32), ("resnet20 layer2", 128, 32, 32, 16), ("resnet20 layer3", 128, 64, 64, 8),
    ("alexnet conv3", 16, 256, 384, 13), ("alexnet conv4", 16, 384, 384, 13), ("alexnet conv5", 16, 384, 256, 13)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'shape':<18}{'N':>5}{'C':>5}{'O':>5}{'HxW':>7}{'im2col ms':>11}{'winograd ms':>13}{'im2col/wino':>12}"
          f"{'err im2col':>12}{'err wino':>10}")
    for name, n, c, o, h in SHAPES:
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        conv = nbcnn.Conv2d(c, o, 3, padding=1)
        w, b = nbcnn.to_numpy(conv.weight.data), nbcnn.to_numpy(conv.bias.data)
        xa = nbcnn.asarray(x)
        u = weight_transform(w)
        want = reference(x, w, b)
        scale = np.abs(want).max()
        err_im2col = np.abs(nbcnn.to_numpy(conv(xa)) - want).max() / scale
        err_wino = np.abs(winograd_conv(x, u, b) - want).max() / scale
        t_im2col = median_ms(lambda: conv(xa), args.repeat)
        t_wino = median_ms(lambda: winograd_conv(x, u, b), args.repeat)
        print(f"{name:<18}{n:>5}{c:>5}{o:>5}{f'{h}x{h}':>7}{t_im2col:>11.1f}{t_wino:>13.1f}{t_im2col / t_wino:>12.2f}"
              f"{err_im2col:>12.1e}{err_wino:>10.1e}")


if __name__ == "__main__":
    main()
