"""Our own GEMM for the CUDA backend: C = alpha * op(A) @ op(B) + beta * C (+ bias), batched.

A `GemmPlan` describes one call: the sizes m, n, k, the operand layouts (trans_a, trans_b),
the batch and its flat strides, alpha, beta, where a bias goes, and optionally the tiles;
it checks itself when built. `gemm(a, b, c, plan, bias)` runs it on flat device arrays,
`gemm_batch_sum` runs a plan that sums many products into one output. What a plan launches
(kernel, grid, scalar arguments) is worked out once per plan and cached: a training step
calls gemm() dozens of times with the same few plans.

Design (the kernel `make_gemm_kernel` builds for a `TileShape`):
- A block computes a BM x BN tile of C with (BM/TM) * (BN/TN) threads; each thread holds a
  TM x TN register sub-tile in groups of W adjacent rows and columns (W, the pack width,
  is 1, 2 or 4), the groups interleaved with the other threads' (rows W*(g*BM/TM + ty) + s),
  so a warp reads consecutive shared words and writes consecutive C columns. Shared tiles
  hold W-float packs (float32, complex64 or complex128 words), read with one load each.
- K advances BK at a time through two shared-memory buffers per operand (double
  buffering): the next tile is fetched into registers while the current one is multiplied,
  then stored into the other buffer; one syncthreads per tile.
- Operands are flat 1-D arrays; transposition is a compile-time constant of the kernel
  (one specialisation per (trans_a, trans_b, dtype, TileShape)), choosing the element order
  of the tile loads so global reads stay coalesced in either layout.
- Index arithmetic is int32 and array indices uint32 (arrays are limited to 2**31 elements):
  int64 arithmetic costs a lot, and numba guards every signed index against wrap-around.
- The k loop over a shared tile is unrolled by four by hand and reads at offsets hoisted out
  of it; interior tiles load without bounds checks (dev/cuda/sass_stats.py counts the SASS).
- Batching: grid z walks independent problems (conv forward: one image each); each
  problem may also sum `terms` consecutive operand slices inside the kernel. The conv weight
  gradient (`gemm_batch_sum`) uses both: the images are split into groups over grid z, so
  even a layer with one or two output tiles keeps the whole GPU busy, and a second kernel
  adds the groups' partial sums into dw in a fixed order (deterministic, no atomics).
- Epilogue: alpha, optional beta * C (accumulation: dw += ...), optional bias per row
  (conv, one per output channel) or per column (linear, one per output feature).
M, N, K need not be multiples of the tile: loads of edge tiles and the epilogue are bounds-checked.
"""

import functools
import os
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import numba
from numba import config, cuda

from ..backend import check_matmul
from .array import INT32_MAX, check_int32, divmod32, flat, launch

MAX_GRID_Z = 65535  # CUDA's limit on grid z (and y): the batch of one launch
MAX_SHARED_BYTES = 48 * 1024  # static shared memory a block may have


@dataclass(frozen=True)
class TileShape:
    """A block computes a bm x bn tile of C, bk of K per step, with threads of tm x tn outputs each.

    width, the pack width (1, 2 or 4): a thread's outputs come in groups of `width`
    adjacent rows and columns, and the shared tiles hold `width`-float words.
    """
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    width: int = 1

    def __post_init__(self):
        if self.width not in (1, 2, 4):
            raise ValueError(f"{self}: the pack width must be 1, 2 or 4")
        if min(self.bm, self.bn, self.bk, self.tm, self.tn) < 1:
            raise ValueError(f"{self}: every size must be positive")
        if self.bm % self.tm or self.bn % self.tn:
            raise ValueError(f"{self}: a thread's tm x tn outputs must divide the block tile bm x bn")
        if self.tm % self.width or self.tn % self.width:
            raise ValueError(f"{self}: tm and tn must be multiples of the pack width")
        if self.bk % 4:
            raise ValueError(f"{self}: bk must be a multiple of 4 (the k loop is unrolled by four)")
        if (self.packs_m * self.bk) % self.threads or (self.packs_n * self.bk) % self.threads:
            raise ValueError(f"{self}: the {self.threads} threads must split the bk x bm/width and "
                             f"bk x bn/width packs of each operand tile evenly")

    @property
    def threads_m(self):
        """Rows of threads: a block's threads form a threads_m x threads_n grid over its tile of C."""
        return self.bm // self.tm

    @property
    def threads_n(self):
        return self.bn // self.tn

    @property
    def threads(self):
        return self.threads_m * self.threads_n

    @property
    def packs_m(self):
        """Packs along the M side of a tile (bm / width); a shared row of the A tile holds them."""
        return self.bm // self.width

    @property
    def packs_n(self):
        return self.bn // self.width

    def with_width(self, width):
        """This tile shape at pack width `width`."""
        return replace(self, width=width)


# Tile shapes per dtype. float32 on a GPU: 256 threads, 8x8 outputs each, BK=16
# (14.9 TFLOP/s measured on an H100 for this tiling before the SASS-level changes of
# 2026-11-24, which are untimed; 33 KB of shared memory).
# float64 (gradient checks) halves the tile: 8x8 doubles would take 256 registers and the
# float32 tile shape 68 KB, over the 48 KB of static shared memory a block may have.
# The simulator costs ~135 us per thread and runs each thread's loops in Python, so it
# gets 16 threads of 4x4: a 64x64x64 product with the GPU tiles takes seconds there.
GPU_TILES = {np.dtype(np.float32): TileShape(128, 128, 16, 8, 8), np.dtype(np.float64): TileShape(64, 64, 8, 4, 4)}
SIM_TILES = TileShape(16, 16, 4, 4, 4)

# Grids the default tile would leave mostly idle can take a quarter-size tile: 64x64, 256
# threads of 4x4. AlexNet's FC layers at batch 128 are the case: fc6 forward (128 x 4096)
# makes 32 blocks of 128x128 for 132 SMs, 128 of 64x64. A 4x4 thread reads twice the shared
# words per FMA of an 8x8 one, so the small tile is only for grids below one block per SM.
# Off until a GPU has timed it (dev/cuda/sgemm.py, version 5 against 2 on the fc6 shapes);
# NBCNN_GEMM_SMALL_TILES=1 turns it on for a run.
SMALL_TILES = {np.dtype(np.float32): TileShape(64, 64, 16, 4, 4)}
USE_SMALL_TILES = os.environ.get("NBCNN_GEMM_SMALL_TILES", "0") == "1"

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


_DEFAULT_TILES = {dt: (SIM_TILES if config.ENABLE_CUDASIM else tiles).with_width(default_width(dt))
                  for dt, tiles in GPU_TILES.items()}
_SMALL_TILES = {dt: tiles.with_width(default_width(dt)) for dt, tiles in SMALL_TILES.items()}


def default_tiles(dtype):
    """The tiles of a `dtype` GEMM at the default pack width: the GPU's (the simulator's when simulated)."""
    return _DEFAULT_TILES[np.dtype(dtype)]


_sm_count = []


def sm_count():
    """Streaming multiprocessors of the current GPU, asked once (nbcnn runs on one GPU)."""
    if not _sm_count:
        _sm_count.append(int(cuda.get_current_device().MULTIPROCESSOR_COUNT))
    return _sm_count[0]


def choose_tiles(m, n, batch, dtype):
    """The tiles of an (m, n) product repeated `batch` times: default_tiles, or the small ones (see pick_tiles)."""
    tiles = default_tiles(dtype)
    small = _SMALL_TILES.get(np.dtype(dtype))
    if config.ENABLE_CUDASIM or not USE_SMALL_TILES or small is None:
        return tiles
    return pick_tiles(m, n, batch, tiles, small, sm_count())


def pick_tiles(m, n, batch, tiles, small, sms):
    """`tiles`, or `small` (where there is one) when `tiles` would make fewer blocks than `sms`."""
    blocks = -(-m // tiles.bm) * -(-n // tiles.bn) * batch
    return small if small is not None and blocks < sms else tiles


@dataclass(frozen=True)
class GemmPlan:
    """C_z = alpha * sum_{r<terms} op(A_{z*terms+r}) @ op(B_{z*terms+r}) + beta * C_z (+ bias), for z < batch.

    op(A) is (m, k): A stored row-major (m, k), or (k, m) when trans_a; op(B) is (k, n): B
    stored (k, n), or (n, k) when trans_b; C_z is (m, n). A_j starts at flat offset
    j * stride_a of its array, B_j at j * stride_b, C_z at z * stride_c (a stride 0 shares
    one operand across the batch). bias_per "row" adds bias[i] to row i (conv: one per
    output channel), "col" adds bias[j] to column j (linear: one per output feature).
    tiles: the kernel's TileShape; None takes choose_tiles(m, n, batch, dtype).
    """
    m: int
    n: int
    k: int
    trans_a: bool = False
    trans_b: bool = False
    batch: int = 1
    terms: int = 1
    stride_a: int = 0
    stride_b: int = 0
    stride_c: int = 0
    alpha: float = 1.0
    beta: float = 0.0
    bias_per: str | None = None
    tiles: TileShape | None = None

    def __post_init__(self):
        extents = (self.m, self.n, self.k, self.stride_a, self.stride_b, self.stride_c)
        if min(extents) < 0 or max(extents) > INT32_MAX:
            name, value = next((name, v) for name, v in zip(("m", "n", "k", "stride_a", "stride_b", "stride_c"), extents)
                               if not 0 <= v <= INT32_MAX)
            raise ValueError(f"GemmPlan: {name} = {value} is outside [0, 2**31): the kernel indexes in int32")
        if not 1 <= self.batch <= MAX_GRID_Z:
            raise ValueError(f"GemmPlan: batch {self.batch} is not between 1 and CUDA's grid limit of {MAX_GRID_Z} "
                             "blocks in z")
        if self.terms < 1:
            raise ValueError(f"GemmPlan: terms must be at least 1, got {self.terms}")
        if self.batch > 1 and self.stride_c < self.m * self.n:
            raise ValueError(f"GemmPlan: stride_c {self.stride_c} is below m * n = {self.m * self.n}: "
                             f"the outputs of the batch would overlap")
        if self.bias_per not in (None, "row", "col"):
            raise ValueError(f"GemmPlan: bias_per must be 'row', 'col' or None, got {self.bias_per!r}")
        if self.tiles is not None and not isinstance(self.tiles, TileShape):
            raise ValueError(f"GemmPlan: tiles must be a TileShape or None, got {self.tiles!r}")


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


# The kernel's bias_mode argument, for bias_per None, "row", "col".
BIAS_NONE, BIAS_ROW, BIAS_COL = 0, 1, 2
BIAS_MODES = {None: BIAS_NONE, "row": BIAS_ROW, "col": BIAS_COL}

_kernels = {}


def make_gemm_kernel(trans_a, trans_b, dtype, tiles):
    """The GEMM kernel for one operand layout (trans_a, trans_b), dtype and TileShape (cached)."""
    key = (bool(trans_a), bool(trans_b), np.dtype(dtype), tiles)
    if key in _kernels:
        return _kernels[key]
    pack_t, pack, unpack = _packing(dtype, tiles.width)
    float_t = numba.from_dtype(np.dtype(dtype))
    trans_a, trans_b = key[0], key[1]
    # Plain ints from here on: numba compiles a closure's ints into the kernel as constants.
    bm, bn, bk, tm, tn, width = tiles.bm, tiles.bn, tiles.bk, tiles.tm, tiles.tn, tiles.width
    threads_m, threads_n, threads = tiles.threads_m, tiles.threads_n, tiles.threads
    packs_m, packs_n = tiles.packs_m, tiles.packs_n
    groups_m, groups_n = tm // width, tn // width  # a thread's packs of rows and of columns of C
    # A shared tile is BK rows (one per k) of packs along M (A) or N (B); a row's length in
    # packs is its pitch, padded so that the k-strided stores spread over the banks.
    a_pitch, b_pitch = packs_m + PAD_PACKS[width], packs_n + PAD_PACKS[width]
    a_buffer, b_buffer = bk * a_pitch, bk * b_pitch  # packs in one of an operand's two buffers
    a_shared, b_shared = 2 * a_buffer, 2 * b_buffer
    a_loads, b_loads = packs_m * bk // threads, packs_n * bk // threads  # packs a thread fetches per tile
    outputs = tm * tn  # a thread's accumulators
    shared_bytes = (a_shared + b_shared) * np.dtype(dtype).itemsize * width
    if shared_bytes > MAX_SHARED_BYTES:
        raise ValueError(f"GEMM tiles {tiles} need {shared_bytes} bytes of shared memory for {np.dtype(dtype)}, "
                         f"over the {MAX_SHARED_BYTES} a block may have")
    i32 = np.int32
    # Array indices as uint32: numba adds a negative-index wrap-around (and 64-bit address
    # arithmetic) to every signed index, about 7 instructions per shared load in the SASS
    # (a review measured the W=1 inner loop at 192 instructions with int32 indices, 123 with
    # uint32, for the same 64 FMAs). Every index here is non-negative and below 2**31.
    u32 = np.uint32

    a_kmajor, b_kmajor = trans_a, not trans_b  # is the operand stored with K as its row index?

    @cuda.jit(device=True)
    def tile_coords(e, kmajor, packs):
        """(kk, p) of the e-th pack of a (BK, packs) operand tile: e runs along the stored rows, so loads coalesce."""
        if kmajor:  # stored (K, X): a pack is `width` neighbours along a row
            kk = i32(e // packs)
            return kk, i32(e - kk * packs)
        p = i32(e // bk)  # stored (X, K): consecutive e walk along k
        return i32(e - p * bk), p

    @cuda.jit(device=True)
    def fetch(src, offset, x0, k0, x_end, k, ld, kmajor, packs, loads, regs, xs, tid, checked):
        """regs[l] = this thread's l-th pack of the (BK, packs) operand tile at (x0, k0), stored at src[offset:]
        with leading dimension ld; `checked`: zeros outside (x_end, k). Interior tiles skip the checks."""
        for l in range(loads):
            kk, p = tile_coords(i32(tid + l * threads), kmajor, packs)
            kq = i32(k0 + kk)
            for s in range(width):
                x = i32(x0 + p * width + s)
                if not checked or (x < x_end and kq < k):
                    xs[s] = src[u32(offset + kq * ld + x)] if kmajor else src[u32(offset + x * ld + kq)]
                else:
                    xs[s] = float_t(0)
            regs[l] = pack(xs)

    @cuda.jit(device=True)
    def outer_product(As, Bs, a_row, b_row, kk, a_frag, b_frag, acc):
        """acc += (column kk of the A tile) x (row kk of the B tile), this thread's TM x TN part.

        a_row, b_row: this thread's first pack of row 0 of the current A and B buffers.
        """
        for g in range(groups_m):
            unpack(As[a_row + u32(kk * a_pitch + g * threads_m)], a_frag, g * width)
        for g in range(groups_n):
            unpack(Bs[b_row + u32(kk * b_pitch + g * threads_n)], b_frag, g * width)
        for i in range(tm):
            for j in range(tn):
                acc[i * tn + j] += a_frag[i] * b_frag[j]

    @cuda.jit
    def gemm_kernel(a, b, c, bias, m, n, k, stride_a, stride_b, stride_c, terms, alpha, beta, bias_mode):
        """c[z*stride_c + i*n + j] = alpha * sum_{r<terms} op(A_{z*terms+r}) @ op(B_{z*terms+r}) + beta*c + bias,
        A_j at a[j*stride_a:], row-major: see GemmPlan.

        Thread (ty, tx) owns rows W*(g*threads_m + ty) + s and columns W*(g*threads_n + tx) + s, s < W.
        """
        As = cuda.shared.array(a_shared, pack_t, alignment=SMEM_ALIGN)  # As[buffer][kk][p]: rows W*p.. at k0+kk
        Bs = cuda.shared.array(b_shared, pack_t, alignment=SMEM_ALIGN)  # Bs[buffer][kk][q]: columns W*q..
        a_next = cuda.local.array(a_loads, pack_t)  # the next tile's packs, fetched while this one is multiplied
        b_next = cuda.local.array(b_loads, pack_t)
        xs = cuda.local.array(width, float_t)  # the elements of one pack
        a_frag = cuda.local.array(tm, float_t)  # this thread's TM values of column kk of the A tile
        b_frag = cuda.local.array(tn, float_t)  # ... and its TN values of row kk of the B tile
        acc = cuda.local.array(outputs, float_t)
        zero = float_t(0)
        tid = i32(cuda.threadIdx.x)
        tx = i32(tid % threads_n)
        ty = i32(tid // threads_n)
        m0 = i32(cuda.blockIdx.y * bm)  # the block's first row and column of C
        n0 = i32(cuda.blockIdx.x * bn)
        z = i32(cuda.blockIdx.z)
        lda = m if trans_a else k  # leading dimensions of the stored (untransposed) operands
        ldb = k if trans_b else n
        for i in range(outputs):
            acc[i] = zero
        k_tiles = i32((k + bk - 1) // bk)
        steps = i32(terms * k_tiles)  # tiles to multiply: every K tile of every term
        r = i32(0)   # the term and first k of tile t, advanced without a division
        k0 = i32(0)
        for t in range(steps + 1):
            # t < steps: fetch tile t into registers; t > 0: multiply tile t-1 from shared;
            # then store tile t into the buffer tile t-1 did not use.
            if t < steps:
                a_offset = i32((z * terms + r) * stride_a)
                b_offset = i32((z * terms + r) * stride_b)
                inside_k = k0 + bk <= k
                if inside_k and m0 + bm <= m:
                    fetch(a, a_offset, m0, k0, m, k, lda, a_kmajor, packs_m, a_loads, a_next, xs, tid, False)
                else:
                    fetch(a, a_offset, m0, k0, m, k, lda, a_kmajor, packs_m, a_loads, a_next, xs, tid, True)
                if inside_k and n0 + bn <= n:
                    fetch(b, b_offset, n0, k0, n, k, ldb, b_kmajor, packs_n, b_loads, b_next, xs, tid, False)
                else:
                    fetch(b, b_offset, n0, k0, n, k, ldb, b_kmajor, packs_n, b_loads, b_next, xs, tid, True)
                k0 = i32(k0 + bk)
                if k0 >= k:
                    k0 = i32(0)
                    r = i32(r + 1)
            if t > 0:
                a_row = u32(((t - 1) % 2) * a_buffer + ty)  # this thread's first pack of row kk = 0
                b_row = u32(((t - 1) % 2) * b_buffer + tx)
                for kq in range(bk // 4):  # four k per iteration, written out: NVVM does not unroll this loop
                    k4 = u32(4 * kq)
                    outer_product(As, Bs, a_row, b_row, k4, a_frag, b_frag, acc)
                    outer_product(As, Bs, a_row, b_row, k4 + u32(1), a_frag, b_frag, acc)
                    outer_product(As, Bs, a_row, b_row, k4 + u32(2), a_frag, b_frag, acc)
                    outer_product(As, Bs, a_row, b_row, k4 + u32(3), a_frag, b_frag, acc)
            if t < steps:
                a_base = i32((t % 2) * a_buffer)
                b_base = i32((t % 2) * b_buffer)
                for l in range(a_loads):
                    kk, p = tile_coords(i32(tid + l * threads), a_kmajor, packs_m)
                    As[u32(a_base + kk * a_pitch + p)] = a_next[l]
                for l in range(b_loads):
                    kk, q = tile_coords(i32(tid + l * threads), b_kmajor, packs_n)
                    Bs[u32(b_base + kk * b_pitch + q)] = b_next[l]
            cuda.syncthreads()
        c_offset = i32(z * stride_c)
        for i in range(tm):
            row = i32(m0 + ((i // width) * threads_m + ty) * width + i % width)
            if row < m:
                for j in range(tn):
                    col = i32(n0 + ((j // width) * threads_n + tx) * width + j % width)
                    if col < n:
                        idx = u32(c_offset + row * n + col)
                        v = alpha * acc[i * tn + j]
                        if beta != 0:  # beta == 0 must not read c: it may hold NaN garbage
                            v += beta * c[idx]
                        if bias_mode == BIAS_ROW:
                            v += bias[row]
                        elif bias_mode == BIAS_COL:
                            v += bias[col]
                        c[idx] = v

    _kernels[key] = gemm_kernel
    return gemm_kernel


class _Launch(NamedTuple):
    """What gemm() launches for one plan and dtype, and how far into each array the launch reaches."""
    kernel: object
    grid: tuple
    threads: int
    scalars: tuple  # the kernel's arguments after the four arrays
    sizes: tuple    # elements of a, b, c and bias the kernel may read or write, from their start


@functools.lru_cache(maxsize=1024)
def _launch(plan, dtype):
    """The _Launch of `plan` on arrays of `dtype`, worked out once: gemm() runs the same few plans every step."""
    if dtype not in GPU_TILES:
        raise ValueError(f"gemm: arrays must be float32 or float64, got {dtype}")
    m, n, k = plan.m, plan.n, plan.k
    tiles = plan.tiles or choose_tiles(m, n, plan.batch, dtype)
    grid = ((n + tiles.bn - 1) // tiles.bn, (m + tiles.bm - 1) // tiles.bm, plan.batch)
    if grid[1] > MAX_GRID_Z:
        raise ValueError(f"GEMM of {m} rows exceeds CUDA's grid limit of {MAX_GRID_Z} blocks in y")
    slices = plan.batch * plan.terms  # A and B slices the batch reads
    sizes = ((slices - 1) * plan.stride_a + m * k if k else 0,
             (slices - 1) * plan.stride_b + k * n if k else 0,
             (plan.batch - 1) * plan.stride_c + m * n,
             {None: 0, "row": m, "col": n}[plan.bias_per])
    i32, real = np.int32, dtype.type
    scalars = (i32(m), i32(n), i32(k), i32(plan.stride_a), i32(plan.stride_b), i32(plan.stride_c),
               i32(plan.terms), real(plan.alpha), real(plan.beta), i32(BIAS_MODES[plan.bias_per]))
    return _Launch(make_gemm_kernel(plan.trans_a, plan.trans_b, dtype, tiles), grid, tiles.threads, scalars, sizes)


def gemm(a, b, c, plan, bias=None):
    """Run `plan` (a GemmPlan) on device arrays of one dtype, read flat: C = alpha * op(A) @ op(B) + beta*C (+ bias).

    `bias` is given exactly when plan.bias_per is: m values for "row", n for "col".
    """
    if (bias is None) != (plan.bias_per is None):
        raise ValueError(f"gemm: plan.bias_per is {plan.bias_per!r} but bias is {'None' if bias is None else 'given'}")
    if plan.m == 0 or plan.n == 0:
        return
    dtype = c.dtype
    if a.dtype != dtype or b.dtype != dtype or (bias is not None and bias.dtype != dtype):
        raise ValueError(f"gemm: a, b, c (and bias) must share one dtype, got {a.dtype}, {b.dtype}, {c.dtype}"
                         + ("" if bias is None else f", {bias.dtype}"))
    run = _launch(plan, dtype)
    check_int32(a, b, c)
    if a.size < run.sizes[0] or b.size < run.sizes[1] or c.size < run.sizes[2] or (
            bias is not None and bias.size < run.sizes[3]):
        name, have, need = next((name, x.size, need) for name, x, need in zip(("a", "b", "c", "bias"), (a, b, c, bias),
                                                                             run.sizes) if x is not None and x.size < need)
        raise ValueError(f"gemm: {name} has {have} elements, the plan reaches {need}: {plan}")
    run.kernel[run.grid, run.threads](flat(a), flat(b), flat(c), flat(c if bias is None else bias), *run.scalars)


# Blocks the batch-sum GEMM aims for: two waves of 132 SMs on an H100. The simulator gets 2
# so that the tests exercise the split into groups.
TARGET_BLOCKS = 2 if config.ENABLE_CUDASIM else 264


def batch_sum_groups(m, n, batch, dtype):
    """How many groups gemm_batch_sum splits `batch` terms of an (m, n) output into."""
    tiles = default_tiles(dtype)
    blocks = ((m + tiles.bm - 1) // tiles.bm) * ((n + tiles.bn - 1) // tiles.bn)
    return max(1, min(batch, -(-TARGET_BLOCKS // max(1, blocks))))


class _BatchSumSplit(NamedTuple):
    """gemm_batch_sum's two GEMMs: `groups` (batch G) into partial[:G], `rest` (or None) into partial[G]."""
    groups: GemmPlan
    rest: GemmPlan | None
    done: int  # the terms the groups sum: the rest starts at operand slice `done`
    used: int  # slices of partial written


@functools.lru_cache(maxsize=256)
def _batch_sum_split(plan, dtype):
    if plan.batch != 1 or plan.beta != 1 or plan.bias_per is not None:
        raise ValueError(f"gemm_batch_sum: the plan must have batch 1, beta 1 (c += the sum) and no bias, got {plan}")
    groups = batch_sum_groups(plan.m, plan.n, plan.terms, dtype)
    per = plan.terms // groups
    done = groups * per
    grouped = replace(plan, batch=groups, terms=per, stride_c=plan.m * plan.n, beta=0.0)
    rest = replace(plan, terms=plan.terms - done, beta=0.0) if done < plan.terms else None
    return _BatchSumSplit(grouped, rest, done, groups + (rest is not None))


def gemm_batch_sum(a, b, c, partial, plan):
    """gemm(a, b, c, plan) for a plan that sums many terms into c, spread over the whole GPU.

    The conv weight gradient: dw += sum over images (plan: batch 1, beta 1, no bias, `terms`
    images). The terms are split into G = batch_sum_groups(m, n, terms, dtype) groups over
    grid z, each summing its terms into partial[g] (partial: at least G + 1 slices of (m, n);
    the last takes the remainder when G does not divide the terms), then partial[:used] is
    added into c in a fixed order.
    """
    if plan.m == 0 or plan.n == 0:
        return
    split = _batch_sum_split(plan, c.dtype)
    gemm(a, b, partial, split.groups)
    if split.rest is not None:
        gemm(flat(a)[split.done * plan.stride_a:], flat(b)[split.done * plan.stride_b:],
             partial[split.groups.batch], split.rest)
    sum_slices_into(partial, split.used, c)


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


@cuda.jit(device=True)
def block_sum(s):
    """The sum of s over the REDUCE_THREADS threads of a block, in float64 and a fixed order (a
    shared-memory tree: deterministic, no atomics), returned to every thread. Every thread of the
    block must call it."""
    part = cuda.shared.array(REDUCE_THREADS, numba.float64)
    tid = cuda.threadIdx.x
    part[tid] = s
    cuda.syncthreads()
    width = REDUCE_THREADS // 2
    while width > 0:
        if tid < width:
            part[tid] += part[tid + width]
        cuda.syncthreads()
        width //= 2
    total = part[0]
    cuda.syncthreads()  # every thread has read part[0] before a next call overwrites it
    return total


@cuda.jit(cache=True)
def sum_batched_rows_kernel(a, out):
    """out[r] += sum_{b,s} a[b, r, s]; one block per r, a (B, R, S); float64 partial sums."""
    B, R, S = a.shape
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    s = 0.0
    for i in range(tid, B * S, REDUCE_THREADS):
        bi, si = divmod32(i, S)
        s += a[bi, r, si]
    total = block_sum(s)
    if tid == 0:
        out[r] += total


def sum_batched_rows_into(a, out):
    """out[r] += sum over b, s of a[b, r, s] (bias gradients), a 3-D (B, R, S) device array."""
    if out.size:
        sum_batched_rows_kernel[out.size, REDUCE_THREADS](a, out)


def matmul(a, b, c):
    """c = a @ b for C-contiguous 2-D device arrays."""
    check_matmul(a, b, c)
    gemm(a, b, c, GemmPlan(a.shape[0], b.shape[1], a.shape[1]))
