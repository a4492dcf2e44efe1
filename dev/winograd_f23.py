"""Winograd F(2x2, 3x3) forward on the CPU (nbcnn/cpu/winograd.py, called directly whatever its
rule says) against nbcnn's Conv2d forward on its im2col path (the rule switched off) per layer
shape: float32 error of both against a float64 reference, and time. The prototype this started as
(commit 2da7174) gave docs/performance.md's first Winograd table, with the weight transform outside
the timing; here it is inside.

    python dev/winograd_f23.py [--repeat 5]

y[n, o] = sum_c x[n, c] (*) w[o, c], 3x3, stride 1, padding 1, NCHW float32. Per 2x2 output tile
(Lavin & Gray 2016): U = G w G^T (4x4 per (o, c)), V = B^T d B (4x4 per (c, tile) of the input's
4x4 patch d), M[k] = U[k] @ V[k] for each of the 16 positions k (GEMMs O x C x tiles), y = A^T M A.
16 multiplications per tile and (o, c) instead of 36: 2.25x fewer. It transforms the
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nbcnn  # noqa: E402
from nbcnn.backend import Workspace  # noqa: E402
from nbcnn.cpu.threads import single_threaded_blas  # noqa: E402
from nbcnn.cpu import winograd  # noqa: E402
from nbcnn.cpu.winograd import winograd_forward  # noqa: E402


def winograd_conv(x, w, bias):
    """nbcnn's Winograd path (nbcnn/cpu/winograd.py) called directly, whatever the rule says."""
    y = np.empty((x.shape[0], w.shape[0], x.shape[2], x.shape[3]), x.dtype)
    single_threaded_blas(winograd_forward)(x, w, bias, y, Workspace())
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
    winograd.MIN_WINOGRAD_CHANNELS = 10**9  # Conv2d on im2col for every shape
    print(f"{'shape':<18}{'N':>5}{'C':>5}{'O':>5}{'HxW':>7}{'im2col ms':>11}{'winograd ms':>13}{'im2col/wino':>12}"
          f"{'err im2col':>12}{'err wino':>10}")
    for name, n, c, o, h in SHAPES:
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        conv = nbcnn.Conv2d(c, o, 3, padding=1)
        w, b = nbcnn.to_numpy(conv.weight.data), nbcnn.to_numpy(conv.bias.data)
        xa = nbcnn.asarray(x)
        want = reference(x, w, b)
        scale = np.abs(want).max()
        err_im2col = np.abs(nbcnn.to_numpy(conv(xa)) - want).max() / scale
        err_wino = np.abs(winograd_conv(x, w, b) - want).max() / scale
        t_im2col = median_ms(lambda: conv(xa), args.repeat)
        t_wino = median_ms(lambda: winograd_conv(x, w, b), args.repeat)
        print(f"{name:<18}{n:>5}{c:>5}{o:>5}{f'{h}x{h}':>7}{t_im2col:>11.1f}{t_wino:>13.1f}{t_im2col / t_wino:>12.2f}"
              f"{err_im2col:>12.1e}{err_wino:>10.1e}")


if __name__ == "__main__":
    main()
