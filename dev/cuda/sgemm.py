"""SGEMM kernel versions in llm.c's dev/cuda style: a reference, numbered kernels, a check, a table.

    python dev/cuda/sgemm.py                 # on a GPU: check every version, then time them
    python dev/cuda/sgemm.py --check         # the check alone (add NUMBA_ENABLE_CUDASIM=1 without a GPU)

C = A @ B, float32, row-major: A (M, K), B (K, N), C (M, N). Versions:
  1  one thread per output element, reading A and B from global memory: the floor.
  2  nbcnn's kernel (nbcnn/cuda/gemm.py) at pack width 1: 128x128x16 block tiles, 8x8
     outputs per thread at interleaved rows/columns, double-buffered shared tiles, float32
     shared loads (measured 14.9 TFLOP/s for this structure on the H100; cuBLAS 51.6).
  3  the same kernel at pack width 2: each thread's outputs in pairs of adjacent rows and
     columns, shared tiles of complex64 read two floats per load (LDS.64: half of version
     2's shared-load instructions; the complex64 trick was measured on the H100 earlier).
     Prediction: the inner loop stops being bound by load issue.
  4  pack width 4: complex128 shared words split back into four floats by bit casts
     (LDS.128). Prediction: a quarter of version 2's shared loads; faster than 3 if 3 is
     still load-bound.
  5  version 2 on the quarter tile nbcnn can pick for grids of fewer blocks than SMs
     (SMALL_TILES: 64x64x16, 256 threads of 4x4; off until this is timed:
     NBCNN_GEMM_SMALL_TILES=1). Prediction: slower than 2 at 4096^3, 2-3x faster on fc6's
     (128, 4096) and (128, 9216) outputs, where 2 runs 32 and 72 blocks.
The winner becomes the default (GEMM_WIDTH in nbcnn/cuda/gemm.py; NBCNN_GEMM_WIDTH=w runs
the whole benchmark at width w first), with its numbers in docs/performance.md.
"""

import argparse
import os
import sys

import numba
import numpy as np
from numba import config, cuda

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from nbcnn.cuda.gemm import SIM_TILES, SMALL_TILES, GemmPlan, default_tiles  # noqa: E402
from nbcnn.cuda.gemm import gemm as nbcnn_gemm  # noqa: E402

f32, i32 = numba.float32, np.int32


# -- version 1 ---------------------------------------------------------------------------
@cuda.jit
def naive_kernel(a, b, c, m, n, k):
    """c[i, j] = sum_p a[i, p] * b[p, j], one thread per (i, j); flat row-major arrays."""
    j, i = cuda.grid(2)
    if i < m and j < n:
        s = f32(0)
        for p in range(k):
            s += a[i * k + p] * b[p * n + j]
        c[i * n + j] = s


def v1(a, b, c, m, n, k):
    naive_kernel[((n + 15) // 16, (m + 15) // 16), (16, 16)](a, b, c, i32(m), i32(n), i32(k))


# -- versions 2-5: nbcnn's kernel at pack widths 1, 2, 4, and on the small-grid tile ----------
def production(width, tiles=None):
    tiles = (tiles or default_tiles(np.float32)).with_width(width)

    def run(a, b, c, m, n, k):
        nbcnn_gemm(a, b, c, GemmPlan(m, n, k, tiles=tiles))
    return run


VERSIONS = {1: v1, 2: production(1), 3: production(2), 4: production(4),
            5: production(1, SIM_TILES if config.ENABLE_CUDASIM else SMALL_TILES[np.dtype(np.float32)])}

# 4096^3, then AlexNet's GEMMs at batch 128: conv forward per image (O, OH*OW, C*KH*KW),
# fc6 forward and dx (as NN products of the same sizes).
GPU_SHAPES = [(4096, 4096, 4096), (96, 3025, 363), (256, 729, 2400), (384, 169, 2304),
              (384, 169, 3456), (128, 4096, 9216), (128, 9216, 4096)]
SIM_SHAPES = [(16, 16, 4), (17, 33, 9), (5, 3, 20)]  # exact tiles, ragged edges, K > N


def check(versions, shapes, rng):
    """Each version against a float64 NumPy product; returns the worst relative error per version."""
    worst = {}
    for v in versions:
        for m, n, k in shapes:
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            ref = a.astype(np.float64) @ b.astype(np.float64)
            c = cuda.device_array(m * n, np.float32)
            VERSIONS[v](cuda.to_device(a.ravel()), cuda.to_device(b.ravel()), c, m, n, k)
            err = float(np.abs(c.copy_to_host().reshape(m, n) - ref).max() / np.sqrt(k))
            worst[v] = max(worst.get(v, 0.0), err)
            if err > 1e-4:  # float32 accumulation over k terms of size ~1: error ~ 1e-7 * sqrt(k)
                raise AssertionError(f"version {v} wrong at (M, N, K) = {(m, n, k)}: error {err:.2e} * sqrt(K)")
    return worst


def time_ms(fn, repeat):
    start, stop = cuda.event(), cuda.event()
    fn()  # compile and warm up
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))  # the same as cuda.event_elapsed_time; the simulator has only this (-1)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="check the versions, time nothing")
    parser.add_argument("--versions", type=int, nargs="*", default=sorted(VERSIONS))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shapes = SIM_SHAPES if config.ENABLE_CUDASIM else GPU_SHAPES[1:3] + SIM_SHAPES
    worst = check(args.versions, shapes, rng)
    print("check passed:", ", ".join(f"v{v} max error {e:.1e} * sqrt(K)" for v, e in worst.items()))
    if args.check or config.ENABLE_CUDASIM:
        return
    print(f"{'version':>8}{'M':>7}{'N':>7}{'K':>7}{'ms':>10}{'TFLOP/s':>10}")
    for m, n, k in GPU_SHAPES:
        a = cuda.to_device(rng.standard_normal(m * k).astype(np.float32))
        b = cuda.to_device(rng.standard_normal(k * n).astype(np.float32))
        c = cuda.device_array(m * n, np.float32)
        for v in args.versions:
            if v == 1 and m * n * k > 2**33:
                continue  # the naive kernel takes seconds at 4096^3
            ms = time_ms(lambda: VERSIONS[v](a, b, c, m, n, k), args.repeat)
            print(f"{v:>8}{m:>7}{n:>7}{k:>7}{ms:>10.3f}{2 * m * n * k / ms / 1e9:>10.2f}")


if __name__ == "__main__":
    main()
