"""Convolution on CUDA: im2col / col2im kernels around our GEMM (nbcnn/cuda/gemm.py).

Batching: im2col runs over a chunk of images in one launch into a (chunk, C*KH*KW, OH*OW)
workspace buffer, and one batched GEMM (grid z = image) multiplies it. Per-image launches
would cost 2 launches per image (~30-100 us of host time each); a whole-batch buffer costs
memory (AlexNet conv2 at batch 128: 224M floats). The chunk is the largest number of images
whose columns fit in COL_BUDGET elements, so both stay bounded: conv1/conv2 of AlexNet at
batch 128 take 2-3 chunks, the later layers one.
"""

from numba import config, cuda

from .array import check_int32, divmod32, empty, flat, launch, unravel3, unravel4
from .gemm import MAX_GRID_Z, GemmPlan, batch_sum_groups, gemm, gemm_batch_sum, sum_batched_rows_into

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
    O, C, kh, kw = w.shape
    R, P = C * kh * kw, y.shape[2] * y.shape[3]
    chunk = max(1, min(N, MAX_GRID_Z, COL_BUDGET // max(1, R * P)))  # a chunk is grid z of its GEMM
    return N, O, kh, kw, R, P, chunk


def conv2d_forward(x, w, b, stride, pad, y, ws):
    N, O, kh, kw, R, P, chunk = _geometry(x, w, y)
    check_int32(x, y)
    col = ws.get("col", (chunk, R, P), x.dtype, empty)
    yf = flat(y)
    for n0 in range(0, N, chunk):
        nb = min(chunk, N - n0)
        cb = col[:nb]
        im2col_kernel[launch(cb.size)](x, n0, kh, kw, stride, pad, cb)
        # y[n] (O, P) = W (O, R) @ col[n] (R, P) + b, one grid-z slice per image
        gemm(w, cb, yf[n0 * O * P:], GemmPlan(O, P, R, batch=nb, stride_b=R * P, stride_c=O * P, bias_per="row"), b)


def conv2d_backward(x, w, dy, stride, pad, dx, dw, db, ws):
    N, O, kh, kw, R, P, chunk = _geometry(x, w, dy)
    check_int32(x, dy)
    col = ws.get("col", (chunk, R, P), x.dtype, empty)
    dcol = ws.get("dcol", (chunk, R, P), x.dtype, empty) if dx is not None else None
    partial = ws.get("dw_partial", (batch_sum_groups(O, R, chunk, x.dtype) + 1, O, R), x.dtype, empty)
    dyf = flat(dy)
    for n0 in range(0, N, chunk):
        nb = min(chunk, N - n0)
        cb = col[:nb]
        dyb = dyf[n0 * O * P:]
        # recomputed, not kept from forward: a buffer per layer for the whole batch costs more
        im2col_kernel[launch(cb.size)](x, n0, kh, kw, stride, pad, cb)
        # dw (O, R) += sum_n dy[n] (O, P) @ col[n]^T (P, R), the images split over the GPU
        gemm_batch_sum(dyb, cb, dw, partial,
                       GemmPlan(O, R, P, trans_b=True, terms=nb, stride_a=O * P, stride_b=R * P, beta=1.0))
        if dx is not None:
            dcol_b = dcol[:nb]
            # dcol[n] (R, P) = W^T (R, O) @ dy[n] (O, P)
            gemm(w, dyb, dcol_b, GemmPlan(R, P, O, trans_a=True, batch=nb, stride_b=O * P, stride_c=R * P))
            col2im_kernel[launch(nb * x.shape[1] * x.shape[2] * x.shape[3])](dcol_b, n0, kh, kw, stride, pad, dx)
    sum_batched_rows_into(dy.reshape(N, O, P), db)
