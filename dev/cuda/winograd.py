"""Winograd F(2x2, 3x3) against im2col on CUDA, in dev/cuda's style: a reference, versions, a check, a table.

    python dev/cuda/winograd.py                 # on a GPU: check both versions, then time them per layer
    python dev/cuda/winograd.py --check         # the check alone
    NUMBA_ENABLE_CUDASIM=1 python dev/cuda/winograd.py --tiny   # no GPU: the check, and the table on a tiny shape

A 3x3, stride 1, padding 1 (or 5x5, stride 1, padding 2: AlexNet's conv2) convolution, float32, NCHW, through nbcnn's CUDA conv2d_forward and
conv2d_backward (dx, dw, db), each version with its own workspace kept across calls as a layer's is.
Versions:
  1  im2col + our GEMM (nbcnn/cuda/conv.py): the default path, and the reference the other is tested against.
  2  Winograd F(2x2, 3x3) (nbcnn/cuda/winograd.py, taken with nbcnn.cuda.winograd.flags("always")): 2.25x
     fewer multiplications in its GEMMs (16 batched products per layer, one launch each), plus four
     memory-bound transform kernels; the weight gradient's tiles split into segments for occupancy.
Prediction: version 2 ahead where the GEMMs are deep (AlexNet conv3-5, C = 256-384; ResNet-18's
256 and 512 channels), behind or even on ResNet-18's 64-channel 56x56 layer, where the transforms'
memory traffic (about 4 values per pixel in and out, per channel) weighs against a 576-deep GEMM.
The table gives forward and backward (dx + dw + db) milliseconds per version, im2col/winograd, and each
version's effective TFLOP/s (direct-convolution FLOPs: 2*N*O*C*H*W*k*k forward, twice that backward).
5x5 layers run Winograd as four 3x3 sub-kernels stacked along the GEMMs' depth (docs/cuda.md).
The result decides nbcnn.cuda.winograd's rule (MODE "off" until then) and goes into docs/performance.md.
"""

import argparse
import os
import sys

import numpy as np
from numba import config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import nbcnn  # noqa: E402
from nbcnn.backend import Workspace  # noqa: E402
from nbcnn.cuda import winograd  # noqa: E402
from sgemm import time_ms  # noqa: E402

VERSIONS = {1: "off", 2: "always"}  # nbcnn.cuda.winograd's mode for each version
NAMES = {1: "im2col", 2: "winograd"}

# (layer, N, C, O, H = W[, k]): AlexNet's conv2-5 and ResNet-18's stride-1 3x3 convolutions, batch 128;
# k the kernel size (3 where absent; 5 with padding 2)
GPU_SHAPES = [("alexnet conv2", 128, 96, 256, 27, 5), ("alexnet conv3", 128, 256, 384, 13), ("alexnet conv4", 128, 384, 384, 13),
              ("alexnet conv5", 128, 384, 256, 13), ("resnet18 layer1", 128, 64, 64, 56),
              ("resnet18 layer2", 128, 128, 128, 28), ("resnet18 layer3", 128, 256, 256, 14),
              ("resnet18 layer4", 128, 512, 512, 7)]
GPU_CHECK_SHAPES = [("check 13x13", 2, 64, 48, 13), ("check 7x8", 3, 33, 17, 7), ("check 5x5 kernel", 2, 40, 24, 9, 5)]
TINY_SHAPES = [("tiny 5x5", 2, 3, 2, 5), ("tiny 5x5 kernel", 1, 2, 2, 3, 5)]  # the simulator: ~1.4 s per Winograd GEMM launch


def reference(x, w, b, dy):
    """float64 (y, dx, dw, db) of the convolution, by sliding windows (independent of both versions)."""
    k, r = w.shape[2], w.shape[2] // 2

    def windows(a):
        ap = np.pad(a.astype(np.float64), ((0, 0), (0, 0), (r, r), (r, r)))
        return np.lib.stride_tricks.sliding_window_view(ap, (k, k), axis=(2, 3))
    w64 = w.astype(np.float64)
    y = np.einsum("nchwpq,ocpq->nohw", windows(x), w64, optimize=True) + b[None, :, None, None]
    dx = np.einsum("nohwpq,ocpq->nchw", windows(dy), w64[:, :, ::-1, ::-1], optimize=True)
    dw = np.einsum("nchwpq,nohw->ocpq", windows(x), dy.astype(np.float64), optimize=True)
    return y, dx, dw, dy.astype(np.float64).sum(axis=(0, 2, 3))


class Layer:
    """One convolution's device arrays and its forward and backward under one version."""

    def __init__(self, v, x, w, b, dy):
        self.be = be = nbcnn.get_backend("cuda")
        self.mode, self.ws, self.pad = VERSIONS[v], Workspace(), w.shape[2] // 2
        self.x, self.w, self.b, self.dy = (be.from_numpy(a) for a in (x, w, b, dy))
        self.y, self.dx = be.empty(dy.shape, dy.dtype), be.empty(x.shape, x.dtype)
        self.dw, self.db = be.from_numpy(np.zeros_like(w)), be.from_numpy(np.zeros_like(b))

    def forward(self):
        with winograd.flags(self.mode):
            self.be.conv2d_forward(self.x, self.w, self.b, 1, self.pad, self.y, self.ws)

    def backward(self):
        with winograd.flags(self.mode):
            self.be.conv2d_backward(self.x, self.w, self.dy, 1, self.pad, self.dx, self.dw, self.db, self.ws)


def data(n, c, o, h, rng, k=3):
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((o, c, k, k)) / np.sqrt(k * k * c)).astype(np.float32)
    return x, w, rng.standard_normal(o).astype(np.float32), rng.standard_normal((n, o, h, h)).astype(np.float32)


def check(versions, shapes, rng):
    """Each version's y, dx, dw, db against the float64 reference; returns the worst error per version,
    relative to each output's largest reference value."""
    worst = {}
    for name, n, c, o, h, *k in shapes:
        x, w, b, dy = data(n, c, o, h, rng, *k)
        want = reference(x, w, b, dy)
        for v in versions:
            layer = Layer(v, x, w, b, dy)
            layer.forward()
            layer.backward()
            for what, got, ref in zip(("y", "dx", "dw", "db"), (layer.y, layer.dx, layer.dw, layer.db), want):
                err = float(np.abs(layer.be.to_numpy(got) - ref).max() / np.abs(ref).max())
                worst[v] = max(worst.get(v, 0.0), err)
                if not err < 1e-5:  # float32 sums of a few thousand O(1) terms: a few ulp of the largest
                    raise AssertionError(f"version {v} ({NAMES[v]}) wrong on {name}: {what} error {err:.2e}")
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="check the versions, time nothing")
    parser.add_argument("--tiny", action="store_true", help="check and time a tiny shape (the simulator)")
    parser.add_argument("--versions", type=int, nargs="*", default=sorted(VERSIONS))
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shapes = TINY_SHAPES if args.tiny or config.ENABLE_CUDASIM else GPU_CHECK_SHAPES
    worst = check(args.versions, shapes, rng)
    print("check passed:", ", ".join(f"v{v} ({NAMES[v]}) max error {e:.1e}" for v, e in worst.items()))
    if args.check or (config.ENABLE_CUDASIM and not args.tiny):
        return
    repeat = 1 if config.ENABLE_CUDASIM else args.repeat
    if config.ENABLE_CUDASIM:
        print("(the simulator records no times: its events give -1 ms; this run only exercises the table)")
    print(f"{'layer':<17}{'N':>5}{'C':>5}{'O':>5}{'HxW':>7}{'version':>10}{'fwd ms':>9}{'bwd ms':>9}"
          f"{'fwd TF/s':>10}{'bwd TF/s':>10}")
    for name, n, c, o, h, *k in TINY_SHAPES if args.tiny else GPU_SHAPES:
        flops = 2 * n * o * c * h * h * (k[0] if k else 3) ** 2
        arrays = data(n, c, o, h, rng, *k)
        times = {}
        for v in args.versions:
            layer = Layer(v, *arrays)
            times[v] = time_ms(layer.forward, repeat), time_ms(layer.backward, repeat)
            print(f"{name:<17}{n:>5}{c:>5}{o:>5}{f'{h}x{h}':>7}{NAMES[v]:>10}{times[v][0]:>9.3f}{times[v][1]:>9.3f}"
                  f"{flops / times[v][0] / 1e9:>10.2f}{2 * flops / times[v][1] / 1e9:>10.2f}")
        if set(times) >= {1, 2}:
            print(f"{'':<17}{'im2col / winograd':>39}{times[1][0] / times[2][0]:>9.2f}{times[1][1] / times[2][1]:>9.2f}")


if __name__ == "__main__":
    main()
