"""Convolution on CUDA: im2col / col2im kernels around our GEMM (nbcnn/cuda/gemm.py).

Batching: im2col runs over a chunk of images in one launch into a (chunk, C*KH*KW, OH*OW)
workspace buffer, and one batched GEMM (grid z = image) multiplies it. Per-image launches
would cost 2 launches per image (~30-100 us of host time each); a whole-batch buffer costs
memory (AlexNet conv2 at batch 128: 224M floats). The chunk is the largest number of images
whose columns fit in COL_BUDGET elements, so both stay bounded: conv1/conv2 of AlexNet at
batch 128 take 2-3 chunks, the later layers one.

3x3, stride 1, padding 1 (and 5x5, stride 1, padding 2) convolutions of one group take Winograd F(2x2, 3x3) instead
(nbcnn/cuda/winograd.py) when asked: nbcnn.cuda.winograd.MODE, "off" by default until a GPU
has timed the two paths.
"""

from numba import config, cuda

from ..backend import is_depthwise
from .array import check_int32, divmod32, empty, flat, launch, unravel3, unravel4
from .depthwise import depthwise_backward, depthwise_forward
from .gemm import MAX_GRID_Z, GemmPlan, batch_sum_groups, gemm, gemm_batch_sum, sum_batched_rows_into
from .winograd import use_winograd, use_winograd_backward, winograd_backward, winograd_forward

COL_BUDGET = 2**16 if config.ENABLE_CUDASIM else 2**27  # elements (512 MB of float32) per column buffer


@cuda.jit(cache=True)
def im2col_kernel(x, n0, kh, kw, stride, pad, col):
    """col[b, (c*KH+p)*KW+q, i*OW+j] = xpad[n0+b, c, i*stride+p, j*stride+q]; x (N,C,H,W), col (B, C*KH*KW, OH*OW)."""
    _, C, H, W = x.shape
    B, R, P = col.shape
    ow = (W + 2 * pad - kw) // stride + 1
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, B * R * P, step):
        b, r, s = unravel3(e, R, P)
        cp, q = divmod32(r, kw)
        c, p = divmod32(cp, kh)
        i, j = divmod32(s, ow)
        h = i * stride + p - pad
        w = j * stride + q - pad
        if 0 <= h < H and 0 <= w < W:
            col[b, r, s] = x[n0 + b, c, h, w]
        else:
            col[b, r, s] = 0


@cuda.jit(cache=True)
def col2im_kernel(col, n0, kh, kw, stride, pad, x):
    """x[n0+b, c, h, w] = sum of the col entries im2col read from (c, h, w); the adjoint, one thread per pixel (no atomics)."""
    _, C, H, W = x.shape
    B, R, P = col.shape
    oh = (H + 2 * pad - kh) // stride + 1
    ow = (W + 2 * pad - kw) // stride + 1
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, B * C * H * W, step):
        b, c, h, w = unravel4(e, C, H, W)
        acc = 0.0  # float64: at most KH*KW terms, cheap, and no worse than the CPU's float32 sum
        hp, wp = h + pad, w + pad  # this pixel in the padded image; window (i, p) holds it when i*stride + p == hp
        # p, q ascending as in the CPU's col2im, so the sums add in the same order
        # while loops, not range(start, stop, stride): numba's strided range divides in int64
        p = divmod32(hp, stride)[1]
        while p < kh and p <= hp:
            i = divmod32(hp - p, stride)[0]
            if i < oh:
                q = divmod32(wp, stride)[1]
                while q < kw and q <= wp:
                    j = divmod32(wp - q, stride)[0]
                    if j < ow:
                        acc += col[b, (c * kh + p) * kw + q, i * ow + j]
                    q += stride
            p += stride
        x[n0 + b, c, h, w] = acc


def _geometry(x, w, y):
    N = x.shape[0]
    O, _, kh, kw = w.shape
    R, P = x.shape[1] * kh * kw, y.shape[2] * y.shape[3]  # a whole image's columns, every group's rows
    chunk = max(1, min(N, MAX_GRID_Z, COL_BUDGET // max(1, R * P)))  # a chunk is grid z of its GEMM
    return N, O, kh, kw, R, P, chunk


def _at(a, offset):
    """`a` read flat from element `offset` on (group g's block of an operand); `a` itself at 0."""
    return a if offset == 0 else flat(a)[offset:]


def conv2d_forward(x, w, b, stride, pad, y, ws, groups=1):
    if is_depthwise(x.shape[1], groups):
        return depthwise_forward(x, w, b, stride, pad, y, ws)
    if use_winograd(x, w, stride, pad, groups):
        return winograd_forward(x, w, b, y, ws)
    N, O, kh, kw, R, P, chunk = _geometry(x, w, y)
    Og, Rg = O // groups, R // groups
    check_int32(x, y)
    col = ws.get("col", (chunk, R, P), x.dtype, empty)
    yf = flat(y)
    for n0 in range(0, N, chunk):
        nb = min(chunk, N - n0)
        cb = col[:nb]
        im2col_kernel[launch(cb.size)](x, n0, kh, kw, stride, pad, cb)
        # y[n] rows of group g (Og, P) = W_g (Og, Rg) @ col[n] rows of group g (Rg, P) + b_g, one grid-z slice per image
        plan = GemmPlan(Og, P, Rg, batch=nb, stride_b=R * P, stride_c=O * P, bias_per=None if b is None else "row")
        for g in range(groups):
            gemm(_at(w, g * Og * Rg), _at(cb, g * Rg * P), yf[(n0 * O + g * Og) * P:], plan,
                 None if b is None else _at(b, g * Og))


def conv2d_backward(x, w, dy, stride, pad, dx, dw, db, ws, groups=1):
    if is_depthwise(x.shape[1], groups):
        return depthwise_backward(x, w, dy, stride, pad, dx, dw, db, ws)
    if use_winograd_backward(x, w, stride, pad, groups):
        return winograd_backward(x, w, dy, dx, dw, db, ws)
    N, O, kh, kw, R, P, chunk = _geometry(x, w, dy)
    Og, Rg = O // groups, R // groups
    check_int32(x, dy)
    col = ws.get("col", (chunk, R, P), x.dtype, empty) if dw is not None else None
    dcol = ws.get("dcol", (chunk, R, P), x.dtype, empty) if dx is not None else None
    partial = ws.get("dw_partial", (batch_sum_groups(Og, Rg, chunk, x.dtype) + 1, Og, Rg), x.dtype, empty) \
        if dw is not None else None
    dyf = flat(dy)
    for n0 in range(0, N if dw is not None or dx is not None else 0, chunk):
        nb = min(chunk, N - n0)
        dyb = dyf[n0 * O * P:]
        if dw is not None:  # None: a frozen weight; its GEMM and the im2col feeding it are skipped
            cb = col[:nb]
            # recomputed, not kept from forward: a buffer per layer for the whole batch costs more
            im2col_kernel[launch(cb.size)](x, n0, kh, kw, stride, pad, cb)
            # dw_g (Og, Rg) += sum_n dy[n]_g (Og, P) @ col[n]_g^T (P, Rg), the images split over the GPU
            plan = GemmPlan(Og, Rg, P, trans_b=True, terms=nb, stride_a=O * P, stride_b=R * P, beta=1.0)
            for g in range(groups):
                gemm_batch_sum(_at(dyb, g * Og * P), _at(cb, g * Rg * P),
                               dw if groups == 1 else flat(dw)[g * Og * Rg:(g + 1) * Og * Rg], partial, plan)
        if dx is not None:
            dcol_b = dcol[:nb]
            # dcol[n]_g (Rg, P) = W_g^T (Rg, Og) @ dy[n]_g (Og, P)
            plan = GemmPlan(Rg, P, Og, trans_a=True, batch=nb, stride_b=O * P, stride_c=R * P)
            for g in range(groups):
                gemm(_at(w, g * Og * Rg), _at(dyb, g * Og * P), _at(dcol_b, g * Rg * P), plan)
            col2im_kernel[launch(nb * x.shape[1] * x.shape[2] * x.shape[3])](dcol_b, n0, kh, kw, stride, pad, dx)
    if db is not None:
        sum_batched_rows_into(dy.reshape(N, O, P), db)
