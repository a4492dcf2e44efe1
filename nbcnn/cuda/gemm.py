"""Our own GEMM for the CUDA backend: C = alpha * op(A) @ op(B) + beta * C (+ bias), batched.

Design (the kernel `make_gemm_kernel` builds):
- A block computes a BM x BN tile of C with (BM/TM) * (BN/TN) threads; each thread holds a
  TM x TN register sub-tile in groups of W adjacent rows and columns (W, the pack width,
  is 1, 2 or 4), the groups interleaved with the other threads' (rows W*(g*BM/TM + ty) + s),
  so a warp reads consecutive shared words and writes consecutive C columns. Shared tiles
  hold W-float packs (float32, complex64 or complex128 words), read with one load each.
- K advances BK at a time through two shared-memory buffers per operand (double
  buffering): the next tile is fetched into registers while the current one is multiplied,
  then stored into the other buffer; one syncthreads per tile.
- Operands are flat 1-D arrays; transposition is a compile-time constant of the kernel
  (one specialisation per (trans_a, trans_b, dtype, tiles, W)), choosing the element order of the
  tile loads so global reads stay coalesced in either layout.
- Index arithmetic is int32 and array indices uint32 (arrays are limited to 2**31 elements):
  int64 arithmetic costs a lot, and numba guards every signed index against wrap-around.
- The k loop over a shared tile is unrolled by four by hand and reads at offsets hoisted out
  of it; interior tiles load without bounds checks (dev/cuda/sass_stats.py counts the SASS).
- Batching: grid z walks independent problems (conv forward: one image each); each
  problem may also sum `nred` consecutive operand slices inside the kernel. The conv weight
  gradient (`gemm_batch_sum`) uses both: the images are split into groups over grid z, so
  even a layer with one or two output tiles keeps the whole GPU busy, and a second kernel
  adds the groups' partial sums into dw in a fixed order (deterministic, no atomics).
- Epilogue: alpha, optional beta * C (accumulation: dw += ...), optional bias per row
  (conv, one per output channel) or per column (linear, one per output feature).
M, N, K need not be multiples of the tile: loads of edge tiles and the epilogue are bounds-checked.
"""

import os

import numpy as np
import numba
from numba import config, cuda

from ..backend import check_matmul
from .array import check_int32, divmod32, flat, launch

# (BM, BN, BK, TM, TN) per dtype. float32 on a GPU: 256 threads, 8x8 outputs each, BK=16
# (14.9 TFLOP/s measured on an H100 for this tiling before the SASS-level changes of
# 2026-11-24, which are untimed; 33 KB of shared memory).
# float64 (gradient checks) halves the tile: 8x8 doubles would take 256 registers and the
# float32 tile shape 68 KB, over the 48 KB of static shared memory a block may have.
# The simulator costs ~135 us per thread and runs each thread's loops in Python, so it
# gets 16 threads of 4x4: a 64x64x64 product with the GPU tiles takes seconds there.
GPU_TILES = {np.dtype(np.float32): (128, 128, 16, 8, 8), np.dtype(np.float64): (64, 64, 8, 4, 4)}
SIM_TILES = (16, 16, 4, 4, 4)


def default_tiles(dtype):
    return SIM_TILES if config.ENABLE_CUDASIM else GPU_TILES[np.dtype(dtype)]


# Grids the default tile would leave mostly idle can take a quarter-size tile: 64x64, 256
# threads of 4x4. AlexNet's FC layers at batch 128 are the case: fc6 forward (128 x 4096)
# makes 32 blocks of 128x128 for 132 SMs, 128 of 64x64. A 4x4 thread reads twice the shared
# words per FMA of an 8x8 one, so the small tile is only for grids below one block per SM.
# Off until a GPU has timed it (dev/cuda/sgemm.py, version 5 against 2 on the fc6 shapes);
# NBCNN_GEMM_SMALL_TILES=1 turns it on for a run.
SMALL_TILES = {np.dtype(np.float32): (64, 64, 16, 4, 4)}
USE_SMALL_TILES = os.environ.get("NBCNN_GEMM_SMALL_TILES", "0") == "1"

_sm_count = []


def sm_count():
    """Streaming multiprocessors of the current GPU, asked once (nbcnn runs on one GPU)."""
    if not _sm_count:
        _sm_count.append(int(cuda.get_current_device().MULTIPROCESSOR_COUNT))
    return _sm_count[0]


def choose_tiles(m, n, batch, dtype):
    """The tiles of an (m, n) product repeated `batch` times: see pick_tiles."""
    if config.ENABLE_CUDASIM:
        return SIM_TILES
    dtype = np.dtype(dtype)
    if not USE_SMALL_TILES or dtype not in SMALL_TILES:
        return GPU_TILES[dtype]
    return pick_tiles(m, n, batch, GPU_TILES[dtype], SMALL_TILES[dtype], sm_count())


def pick_tiles(m, n, batch, tiles, small, sms):
    """`tiles`, or `small` (where there is one) when `tiles` would make fewer blocks than `sms`."""
    blocks = -(-m // tiles[0]) * -(-n // tiles[1]) * batch
    return small if small is not None and blocks < sms else tiles


# The pack width: a thread's outputs come in groups of WIDTH adjacent rows and columns, and
# the shared tiles hold WIDTH-float packs, read with one load each. numba emits 32-bit
# shared loads for float32 arrays; complex64 storage gives LDS.64 and complex128 LDS.128
# (measured on the H100 by an earlier session). Width 1 is the measured kernel; 2 and 4 are candidates awaiting a GPU
# (dev/cuda/sgemm.py times them; NBCNN_GEMM_WIDTH picks one for a whole benchmark run).
# float64 always uses width 1.
GEMM_WIDTH = int(os.environ.get("NBCNN_GEMM_WIDTH", "1"))
if GEMM_WIDTH not in (1, 2, 4):
    raise ValueError(f"NBCNN_GEMM_WIDTH must be 1, 2 or 4, got {GEMM_WIDTH}")


def default_width(dtype):
    return GEMM_WIDTH if np.dtype(dtype) == np.float32 else 1


@cuda.jit(device=True)
def pack1(xs):
    return xs[0]


@cuda.jit(device=True)
def unpack1(v, out, o):
    out[o] = v


@cuda.jit(device=True)
def pack2(xs):
    return complex(xs[0], xs[1])


@cuda.jit(device=True)
def unpack2(v, out, o):
    out[o] = v.real
    out[o + 1] = v.imag


if config.ENABLE_CUDASIM:  # no libdevice in the simulator: the same bit casts through numpy views
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
        """Four floats as one complex128: each double's low and high words are two of them."""
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


def _packing(dtype, width):
    """(shared storage type, pack, unpack) for `width` elements of `dtype` per shared word."""
    if width == 1:
        return numba.from_dtype(np.dtype(dtype)), pack1, unpack1
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"GEMM pack width {width} is for float32, got {np.dtype(dtype)}")
    return {2: (numba.complex64, pack2, unpack2), 4: (numba.complex128, pack4, unpack4)}[width]


# Shared rows are padded so that the k-strided tile stores spread over the banks: by 4
# floats at width 1 (the measured kernel), by one 8- or 16-byte word at widths 2 and 4
# (stride 65 or 33 words: consecutive k land in distinct banks within a store phase).
PAD_PACKS = {1: 4, 2: 1, 4: 1}

# 16-byte aligned shared tiles let NVVM emit vector shared loads for the packs itself
# (ld.shared.v2) instead of relying on ptxas to merge scalar ones; the simulator refuses
# the argument.
SMEM_ALIGN = None if config.ENABLE_CUDASIM else 16

BIAS_NONE, BIAS_ROW, BIAS_COL = 0, 1, 2
MAX_GRID_Z = 65535  # CUDA's limit on grid z (and y): the batch of one launch

_kernels = {}


def make_gemm_kernel(trans_a, trans_b, dtype, tiles, width=1):
    """The GEMM kernel specialised for transposition, dtype, tile sizes and pack width (cached)."""
    key = (bool(trans_a), bool(trans_b), np.dtype(dtype), tuple(tiles), int(width))
    if key in _kernels:
        return _kernels[key]
    bm, bn, bk, tm, tn = tiles
    tx_n, ty_n = bn // tn, bm // tm
    nthreads = tx_n * ty_n
    pm, pn = bm // width, bn // width  # packs along a tile's M and N
    if (bm % tm or bn % tn or tm % width or tn % width or bk % 4
            or (pm * bk) % nthreads or (pn * bk) % nthreads):
        raise ValueError(f"GEMM tiles {tiles}, width {width}: outputs must group by the width, BK be a "
                         f"multiple of 4 and each tile load split evenly over the {nthreads} threads")
    store_t, pack, unpack = _packing(dtype, width)
    pmp, pnp = pm + PAD_PACKS[width], pn + PAD_PACKS[width]
    a_loads, b_loads = pm * bk // nthreads, pn * bk // nthreads
    a_buf, b_buf = bk * pmp, bk * pnp
    a_smem, b_smem, acc_n = 2 * a_buf, 2 * b_buf, tm * tn
    gi, gj = tm // width, tn // width
    dt = numba.from_dtype(np.dtype(dtype))
    ta, tb = key[0], key[1]
    i32 = np.int32
    # Array indices as uint32: numba adds a negative-index wrap-around (and 64-bit address
    # arithmetic) to every signed index, about 7 instructions per shared load in the SASS
    # (a review measured the W=1 inner loop at 192 instructions with int32 indices, 123 with
    # uint32, for the same 64 FMAs). Every index here is non-negative and below 2**31.
    u32 = np.uint32

    a_kmajor, b_kmajor = ta, not tb  # is the operand stored with K as its row index?

    @cuda.jit(device=True)
    def tile_coords(e, kmajor, packs):
        """(kk, p) of the e-th pack of a (BK, packs) operand tile: e runs along the stored rows, so loads coalesce."""
        if kmajor:  # stored (K, X): a pack is `width` neighbours along a row
            kk = i32(e // packs)
            return kk, i32(e - kk * packs)
        p = i32(e // bk)  # stored (X, K): consecutive e walk along k
        return i32(e - p * bk), p

    @cuda.jit(device=True)
    def fetch(src, off, x0, k0, xlim, k, ld, kmajor, packs, loads, regs, xs, tid, checked):
        """regs[l] = this thread's l-th pack of the (BK, packs) operand tile at (x0, k0), stored at src[off:]
        with leading dimension ld; `checked`: zeros outside (xlim, k). Interior tiles skip the checks."""
        for l in range(loads):
            kk, p = tile_coords(i32(tid + l * nthreads), kmajor, packs)
            kq = i32(k0 + kk)
            for s in range(width):
                x = i32(x0 + p * width + s)
                if not checked or (x < xlim and kq < k):
                    xs[s] = src[u32(off + kq * ld + x)] if kmajor else src[u32(off + x * ld + kq)]
                else:
                    xs[s] = dt(0)
            regs[l] = pack(xs)

    @cuda.jit(device=True)
    def outer_product(As, Bs, arow, brow, kk, fa, fb, acc):
        """acc += (column kk of the A tile) x (row kk of the B tile), this thread's TM x TN part."""
        for g in range(gi):
            unpack(As[arow + u32(kk * pmp + g * ty_n)], fa, g * width)
        for g in range(gj):
            unpack(Bs[brow + u32(kk * pnp + g * tx_n)], fb, g * width)
        for i in range(tm):
            for j in range(tn):
                acc[i * tn + j] += fa[i] * fb[j]

    @cuda.jit
    def gemm_kernel(a, b, c, bias, m, n, k, sa, sb, sc, nred, alpha, beta, bias_mode):
        """c[z*sc + i*n + j] = alpha * sum_{r<nred} op(A_{z*nred+r}) @ op(B_{z*nred+r}) + beta*c + bias; A_z at a[z*sa:], row-major.

        Thread (ty, tx) owns rows W*(g*ty_n + ty) + s and columns W*(g*tx_n + tx) + s, s < W.
        """
        As = cuda.shared.array(a_smem, store_t, alignment=SMEM_ALIGN)  # As[buf][kk][p]: rows W*p.. at k0+kk
        Bs = cuda.shared.array(b_smem, store_t, alignment=SMEM_ALIGN)  # Bs[buf][kk][q]: columns W*q..
        ra = cuda.local.array(a_loads, store_t)
        rb = cuda.local.array(b_loads, store_t)
        xs = cuda.local.array(width, dt)
        fa = cuda.local.array(tm, dt)
        fb = cuda.local.array(tn, dt)
        acc = cuda.local.array(acc_n, dt)
        zero = dt(0)
        tid = i32(cuda.threadIdx.x)
        tx = i32(tid % tx_n)
        ty = i32(tid // tx_n)
        m0 = i32(cuda.blockIdx.y * bm)
        n0 = i32(cuda.blockIdx.x * bn)
        z = i32(cuda.blockIdx.z)
        lda = m if ta else k  # leading dimensions of the stored (untransposed) operands
        ldb = k if tb else n
        for i in range(acc_n):
            acc[i] = zero
        ktiles = i32((k + bk - 1) // bk)
        total = i32(nred * ktiles)
        r = i32(0)   # the operand slice (of nred) and first k of tile t, advanced without a division
        k0 = i32(0)
        for t in range(total + 1):
            # t < total: fetch tile t into registers; t > 0: multiply tile t-1 from shared;
            # then store tile t into the buffer tile t-1 did not use.
            if t < total:
                aoff = i32((z * nred + r) * sa)
                boff = i32((z * nred + r) * sb)
                inside_k = k0 + bk <= k
                if inside_k and m0 + bm <= m:
                    fetch(a, aoff, m0, k0, m, k, lda, a_kmajor, pm, a_loads, ra, xs, tid, False)
                else:
                    fetch(a, aoff, m0, k0, m, k, lda, a_kmajor, pm, a_loads, ra, xs, tid, True)
                if inside_k and n0 + bn <= n:
                    fetch(b, boff, n0, k0, n, k, ldb, b_kmajor, pn, b_loads, rb, xs, tid, False)
                else:
                    fetch(b, boff, n0, k0, n, k, ldb, b_kmajor, pn, b_loads, rb, xs, tid, True)
                k0 = i32(k0 + bk)
                if k0 >= k:
                    k0 = i32(0)
                    r = i32(r + 1)
            if t > 0:
                arow = u32(((t - 1) % 2) * a_buf + ty)  # this thread's first pack of row kk = 0
                brow = u32(((t - 1) % 2) * b_buf + tx)
                for kq in range(bk // 4):  # four k per iteration, written out: NVVM does not unroll this loop
                    k4 = u32(4 * kq)
                    outer_product(As, Bs, arow, brow, k4, fa, fb, acc)
                    outer_product(As, Bs, arow, brow, k4 + u32(1), fa, fb, acc)
                    outer_product(As, Bs, arow, brow, k4 + u32(2), fa, fb, acc)
                    outer_product(As, Bs, arow, brow, k4 + u32(3), fa, fb, acc)
            if t < total:
                abase = i32((t % 2) * a_buf)
                bbase = i32((t % 2) * b_buf)
                for l in range(a_loads):
                    kk, p = tile_coords(i32(tid + l * nthreads), a_kmajor, pm)
                    As[u32(abase + kk * pmp + p)] = ra[l]
                for l in range(b_loads):
                    kk, q = tile_coords(i32(tid + l * nthreads), b_kmajor, pn)
                    Bs[u32(bbase + kk * pnp + q)] = rb[l]
            cuda.syncthreads()
        coff = i32(z * sc)
        for i in range(tm):
            gm = i32(m0 + ((i // width) * ty_n + ty) * width + i % width)
            if gm < m:
                for j in range(tn):
                    gn = i32(n0 + ((j // width) * tx_n + tx) * width + j % width)
                    if gn < n:
                        idx = u32(coff + gm * n + gn)
                        v = alpha * acc[i * tn + j]
                        if beta != 0:  # beta == 0 must not read c: it may hold NaN garbage
                            v += beta * c[idx]
                        if bias_mode == 1:
                            v += bias[gm]
                        elif bias_mode == 2:
                            v += bias[gn]
                        c[idx] = v

    _kernels[key] = (gemm_kernel, nthreads)
    return _kernels[key]


def gemm(a, b, c, m, n, k, trans_a=False, trans_b=False, beta=0.0, alpha=1.0, bias=None,
         bias_mode=BIAS_NONE, batch=1, strides=(0, 0, 0), nred=1, tiles=None, width=None):
    """C = alpha * op(A) @ op(B) + beta*C (+ bias) on row-major device arrays of one dtype.

    op(A) is (m, k): A stored (m, k), or (k, m) when trans_a; op(B) is (k, n): B stored
    (k, n), or (n, k) when trans_b; C is (m, n). With batch > 1, problem z writes C at flat
    offset z*strides[2] and sums, over r < nred, the products of the A and B slices at
    offsets (z*nred + r)*strides[0] and (z*nred + r)*strides[1]. bias_mode BIAS_ROW adds
    bias[i] to row i, BIAS_COL adds bias[j] to column j. `tiles` and `width` override
    choose_tiles(m, n, batch, dtype) and default_width(dtype).
    """
    if m == 0 or n == 0:
        return
    tiles = choose_tiles(m, n, batch, c.dtype) if tiles is None else tiles
    width = default_width(c.dtype) if width is None else width
    kernel, nthreads = make_gemm_kernel(trans_a, trans_b, c.dtype, tiles, width)
    check_int32(a, b, c)
    bm, bn = tiles[0], tiles[1]
    grid = ((n + bn - 1) // bn, (m + bm - 1) // bm, batch)
    if grid[1] > MAX_GRID_Z or grid[2] > MAX_GRID_Z:
        raise ValueError(f"GEMM of {m} rows x batch {batch} exceeds CUDA's grid limit of {MAX_GRID_Z} blocks in y and z")
    if bias is None:
        bias = c  # never read with BIAS_NONE; the kernel needs an array of the right type
        bias_mode = BIAS_NONE
    one = c.dtype.type
    i32 = np.int32
    kernel[grid, nthreads](flat(a), flat(b), flat(c), flat(bias), i32(m), i32(n), i32(k),
                           i32(strides[0]), i32(strides[1]), i32(strides[2]),
                           i32(nred), one(alpha), one(beta), i32(bias_mode))


# Blocks the batch-sum GEMM aims for: two waves of 132 SMs on an H100. The simulator gets 2
# so that the tests exercise the split into groups.
TARGET_BLOCKS = 2 if config.ENABLE_CUDASIM else 264


def batch_sum_groups(m, n, batch, dtype):
    """How many groups gemm_batch_sum splits `batch` problems of an (m, n) output into."""
    bm, bn = default_tiles(dtype)[:2]
    tiles = ((m + bm - 1) // bm) * ((n + bn - 1) // bn)
    return max(1, min(batch, -(-TARGET_BLOCKS // tiles)))


def gemm_batch_sum(a, b, c, partial, m, n, k, trans_a=False, trans_b=False, batch=1, strides=(0, 0), width=None):
    """c += sum_{z<batch} op(A_z) @ op(B_z) (the conv weight gradient, summed over images).

    The batch is split into G = batch_sum_groups(...) groups over grid z, each summing its
    images into partial[g] (partial: at least G + 1 slices of (m, n); the last takes the
    remainder when G does not divide the batch), then partial[:used] is added into c.
    """
    groups = batch_sum_groups(m, n, batch, c.dtype)
    per = batch // groups
    gemm(a, b, partial, m, n, k, trans_a, trans_b, batch=groups, strides=(strides[0], strides[1], m * n), nred=per,
         width=width)
    used = groups
    rest = batch - groups * per
    if rest:
        done = groups * per
        gemm(flat(a)[done * strides[0]:], flat(b)[done * strides[1]:], partial[groups], m, n, k,
             trans_a, trans_b, strides=(strides[0], strides[1], 0), nred=rest, width=width)
        used += 1
    sum_slices_into(partial, used, c)


@cuda.jit(cache=True)
def sum_slices_kernel(partial, used, c):
    """c[i] += sum_{g<used} partial[g, i], flat i, g ascending (a fixed order: deterministic)."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, c.shape[0], step):
        s = c[i]
        for g in range(used):
            s += partial[g, i]
        c[i] = s


def sum_slices_into(partial, used, c):
    if c.size:
        sum_slices_kernel[launch(c.size)](partial.reshape((partial.shape[0], c.size)), used, flat(c))


if config.ENABLE_CUDASIM:
    REDUCE_THREADS = 8
else:
    REDUCE_THREADS = 256


@cuda.jit(cache=True)
def sum_batched_rows_kernel(a, out):
    """out[r] += sum_{b,s} a[b, r, s]; one block per r, a (B, R, S); float64 partial sums."""
    part = cuda.shared.array(REDUCE_THREADS, numba.float64)
    B, R, S = a.shape
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    s = 0.0
    for i in range(tid, B * S, REDUCE_THREADS):
        bi, si = divmod32(i, S)
        s += a[bi, r, si]
    part[tid] = s
    cuda.syncthreads()
    width = REDUCE_THREADS // 2
    while width > 0:
        if tid < width:
            part[tid] += part[tid + width]
        cuda.syncthreads()
        width //= 2
    if tid == 0:
        out[r] += part[0]


def sum_batched_rows_into(a, out):
    """out[r] += sum over b, s of a[b, r, s] (bias gradients), a 3-D (B, R, S) device array."""
    if out.size:
        sum_batched_rows_kernel[out.size, REDUCE_THREADS](a, out)


def matmul(a, b, c):
    """c = a @ b for C-contiguous 2-D device arrays."""
    check_matmul(a, b, c)
    gemm(a, b, c, a.shape[0], b.shape[1], a.shape[1])
