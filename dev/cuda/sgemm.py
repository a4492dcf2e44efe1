"""SGEMM kernel versions in llm.c's dev/cuda style: a reference, numbered kernels, a check, a table.

    python dev/cuda/sgemm.py                 # on a GPU: check every version, then time them
    python dev/cuda/sgemm.py --check         # the check alone (add NUMBA_ENABLE_CUDASIM=1 without a GPU)

C = A @ B, float32, row-major: A (M, K), B (K, N), C (M, N). Versions:
  1  one thread per output element, reading A and B from global memory: the floor.
  2  nbcnn's kernel (nbcnn/cuda/gemm.py): 128x128x16 block tiles, 8x8 outputs per thread at
     interleaved rows/columns, double-buffered shared tiles, float32 shared loads
     (measured 14.9 TFLOP/s for this structure on the H100; cuBLAS 51.6).
  3  as 2, but each thread's 8x8 outputs sit in pairs of adjacent rows and columns, so the
     shared tiles hold complex64 pairs and the inner loop reads two floats per load
     (LDS.64: half of version 2's shared-load instructions; TOOLCHAIN.md measured the
     complex64 trick). Prediction: the inner loop stops being bound by load issue.
  4  as 3 with groups of four: complex128 shared tiles, four floats per load (LDS.128), the
     doubles split back into floats by bit reinterpretation. Prediction: a quarter of
     version 2's shared loads; faster than 3 if 3 is still load-bound.
A version that wins here goes into nbcnn/cuda/gemm.py (all transposes, batching, epilogue)
with its measured numbers in docs/performance.md.
"""

import argparse
import os
import sys

import numba
import numpy as np
from numba import config, cuda

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from nbcnn.cuda.gemm import default_tiles, gemm as nbcnn_gemm  # noqa: E402

f32, c64, i32 = numba.float32, numba.complex64, np.int32


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


# -- version 2 ---------------------------------------------------------------------------
def v2(a, b, c, m, n, k):
    nbcnn_gemm(a, b, c, m, n, k)


# -- versions 3 and 4 ----------------------------------------------------------------------
# numba emits 32-bit shared loads for float32 arrays; a shared array of complex64 is read two
# floats per load (LDS.64), one of complex128 four (LDS.128) once its two doubles are split
# back into floats by bit reinterpretation (libdevice; numpy views in the simulator, which
# has no libdevice). The storage dtype and the pack/unpack pair depend on the pack width.
if config.ENABLE_CUDASIM:
    def pack4(xs):
        d = np.array([xs[0], xs[1], xs[2], xs[3]], np.float32).view(np.float64)
        return complex(d[0], d[1])

    def unpack4(v, out, o):
        fs = np.array([v.real, v.imag], np.float64).view(np.float32)
        for s in range(4):
            out[o + s] = fs[s]
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def pack4(xs):
        """Four floats as one complex128: the low and high words of each double are two floats."""
        f2i = libdevice.float_as_int
        return complex(libdevice.hiloint2double(f2i(xs[1]), f2i(xs[0])),
                       libdevice.hiloint2double(f2i(xs[3]), f2i(xs[2])))

    @cuda.jit(device=True)
    def unpack4(v, out, o):
        i2f = libdevice.int_as_float
        out[o] = i2f(libdevice.double2loint(v.real))
        out[o + 1] = i2f(libdevice.double2hiint(v.real))
        out[o + 2] = i2f(libdevice.double2loint(v.imag))
        out[o + 3] = i2f(libdevice.double2hiint(v.imag))


@cuda.jit(device=True)
def pack2(xs):
    return complex(xs[0], xs[1])


@cuda.jit(device=True)
def unpack2(v, out, o):
    out[o] = v.real
    out[o + 1] = v.imag


PACKS = {2: (numba.complex64, pack2, unpack2), 4: (numba.complex128, pack4, unpack4)}
_packed = {}


def make_packed_kernel(tiles, width):
    """Versions 3 (width 2) and 4 (width 4) for (BM, BN, BK, TM, TN) tiles; TM, TN multiples of width."""
    key = (tuple(tiles), width)
    if key in _packed:
        return _packed[key]
    bm, bn, bk, tm, tn = tiles
    store_t, pack, unpack = PACKS[width]
    tx_n, ty_n = bn // tn, bm // tm
    nthreads = tx_n * ty_n
    pm, pn = bm // width, bn // width  # packs along a tile's M and N
    pmp, pnp = pm + 1, pn + 1          # one pack of padding: the k-strided A stores hit distinct banks
    a_buf, b_buf = bk * pmp, bk * pnp
    a_smem, b_smem = 2 * a_buf, 2 * b_buf
    a_packs, b_packs = pm * bk // nthreads, pn * bk // nthreads
    gi, gj, acc_n = tm // width, tn // width, tm * tn

    @cuda.jit
    def packed_kernel(a, b, c, m, n, k):
        """C = A @ B; thread (ty, tx) owns rows W*(g*ty_n + ty) + s and columns W*(g*tx_n + tx) + s, s < W."""
        As = cuda.shared.array(a_smem, store_t)  # As[buf][kk][p]: tile rows W*p .. W*p+W-1 at k = kk
        Bs = cuda.shared.array(b_smem, store_t)  # Bs[buf][kk][q]: tile columns W*q .. W*q+W-1
        ra = cuda.local.array(a_packs, store_t)
        rb = cuda.local.array(b_packs, store_t)
        xs = cuda.local.array(width, f32)
        fa = cuda.local.array(tm, f32)
        fb = cuda.local.array(tn, f32)
        acc = cuda.local.array(acc_n, f32)
        tid = i32(cuda.threadIdx.x)
        tx = i32(tid % tx_n)
        ty = i32(tid // tx_n)
        m0 = i32(cuda.blockIdx.y * bm)
        n0 = i32(cuda.blockIdx.x * bn)
        for i in range(acc_n):
            acc[i] = f32(0)
        ktiles = i32((k + bk - 1) // bk)
        for t in range(ktiles + 1):
            if t < ktiles:  # fetch tile t into registers: consecutive threads walk along stored rows
                k0 = i32(t * bk)
                for l in range(a_packs):
                    e = i32(tid + l * nthreads)
                    p = i32(e // bk)
                    gk = i32(k0 + e - p * bk)
                    for s in range(width):
                        gm = i32(m0 + width * p + s)
                        xs[s] = a[i32(gm * k + gk)] if gm < m and gk < k else f32(0)
                    ra[l] = pack(xs)
                for l in range(b_packs):
                    e = i32(tid + l * nthreads)
                    kk = i32(e // pn)
                    gk = i32(k0 + kk)
                    for s in range(width):
                        gn = i32(n0 + width * (e - kk * pn) + s)
                        xs[s] = b[i32(gk * n + gn)] if gk < k and gn < n else f32(0)
                    rb[l] = pack(xs)
            if t > 0:  # multiply tile t-1 from shared memory, `width` floats per load
                abase = i32(((t - 1) % 2) * a_buf)
                bbase = i32(((t - 1) % 2) * b_buf)
                for kk in range(bk):
                    for g in range(gi):
                        unpack(As[abase + kk * pmp + g * ty_n + ty], fa, width * g)
                    for g in range(gj):
                        unpack(Bs[bbase + kk * pnp + g * tx_n + tx], fb, width * g)
                    for i in range(tm):
                        for j in range(tn):
                            acc[i * tn + j] += fa[i] * fb[j]
            if t < ktiles:  # store tile t into the buffer tile t-1 did not use
                abase = i32((t % 2) * a_buf)
                bbase = i32((t % 2) * b_buf)
                for l in range(a_packs):
                    e = i32(tid + l * nthreads)
                    p = i32(e // bk)
                    As[abase + (e - p * bk) * pmp + p] = ra[l]
                for l in range(b_packs):
                    e = i32(tid + l * nthreads)
                    kk = i32(e // pn)
                    Bs[bbase + kk * pnp + e - kk * pn] = rb[l]
            cuda.syncthreads()
        for i in range(tm):
            gm = i32(m0 + width * ((i // width) * ty_n + ty) + i % width)
            if gm < m:
                for j in range(tn):
                    gn = i32(n0 + width * ((j // width) * tx_n + tx) + j % width)
                    if gn < n:
                        c[i32(gm * n + gn)] = acc[i * tn + j]

    _packed[key] = (packed_kernel, nthreads)
    return _packed[key]


def packed(width):
    def run(a, b, c, m, n, k):
        tiles = default_tiles(np.float32)
        kernel, nthreads = make_packed_kernel(tiles, width)
        grid = ((n + tiles[1] - 1) // tiles[1], (m + tiles[0] - 1) // tiles[0], 1)
        kernel[grid, nthreads](a, b, c, i32(m), i32(n), i32(k))
    return run


VERSIONS = {1: v1, 2: v2, 3: packed(2), 4: packed(4)}

# 4096^3, then AlexNet's GEMMs at batch 128: conv forward per image (O, OH*OW, C*KH*KW), fc6.
GPU_SHAPES = [(4096, 4096, 4096), (96, 3025, 363), (256, 729, 2400), (384, 169, 2304),
              (384, 169, 3456), (128, 4096, 9216)]
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
        times.append(cuda.event_elapsed_time(start, stop))
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
