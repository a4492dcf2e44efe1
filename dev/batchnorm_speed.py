"""Batch norm's forward and backward (training) at ResNet-18's shapes, against PyTorch's in the same process.

    python dev/batchnorm_speed.py [--device cpu|cuda] [--batch 16] [--reps 20]

Prints one row per shape: the best of --reps runs of nbcnn's forward and backward (ms), and
PyTorch's forward+backward of torch.nn.BatchNorm2d on the same data (CPU only; where torch
is importable) with the ratio PyTorch/nbcnn (> 1: nbcnn is faster).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nbcnn  # noqa: E402

SHAPES = [(64, 112), (64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, map size) of ResNet-18's BN layers


def best_ms(fn, reps, sync):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    sync = lambda: None  # noqa: E731
    if args.device == "cuda":
        from numba import cuda
        sync = cuda.synchronize
    for c, hw in SHAPES:
        shape = (args.batch, c, hw, hw)
        rng = np.random.default_rng(0)
        x, g = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
        layer = nbcnn.BatchNorm2d(c).to(args.device)
        xd, gd = nbcnn.asarray(x, args.device), nbcnn.asarray(g, args.device)
        fwd = best_ms(lambda: layer(xd), args.reps, sync)
        layer(xd)
        bwd = best_ms(lambda: layer.backward(gd), args.reps, sync)
        row = f"{str(shape):20s} fwd {fwd:8.2f} ms  bwd {bwd:8.2f} ms"
        if torch is not None and args.device == "cpu":
            ref, xt, gt = torch.nn.BatchNorm2d(c), torch.from_numpy(x).requires_grad_(), torch.from_numpy(g)
            theirs = best_ms(lambda: ref(xt).backward(gt), args.reps, sync)
            row += f"  PyTorch f+b {theirs:8.2f} ms  PyTorch/nbcnn {theirs / (fwd + bwd):5.2f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
