"""Convolution on the CPU: im2col / col2im around a BLAS GEMM, images in parallel.

Grouped convolution runs one GEMM per group on the group's rows of the same column
buffer; depthwise convolution (groups == in_channels > 1) goes to the direct kernels of
nbcnn/cpu/depthwise.py instead, as its GEMMs would be one input channel deep.
The forward and the backward of a 3x3, stride 1, padding 1 convolution with >= 16 input channels
on maps >= 8x8 (or of even sides >= 4) go to Winograd F(2x2, 3x3) instead (nbcnn/cpu/winograd.py: 2.25x fewer
multiplications; its rules use_winograd and use_winograd_backward), and so do 5x5, stride 1,
padding 2 convolutions by those rules' 5x5 thresholds (as four 3x3 sub-kernels).

Each of numba's T threads takes G images at a time with its own column buffer
(C*KH*KW, G*OH*OW), their columns side by side, and single-threaded BLAS
(nbcnn/cpu/threads.py), so memory grows with the thread count, not the batch. G is 1
where one image's OH*OW output pixels make a wide enough product; small maps (ResNet's
14x14 and 7x7, AlexNet's 13x13) take several images per GEMM (`images_per_gemm`): at
7x7 one image's GEMMs are 49 columns wide, too narrow for BLAS's kernels, and its
weight-gradient product only 49 deep, a pass over the whole dw buffer per image. Weight
and bias gradients are summed per thread and reduced once at the end: no two threads
write the same gradient. Each kernel is one parallel region in which every thread works
through its own rounds of images: a region per round cost a barrier each, and on a machine
whose cores other processes share, a scheduler slice each (ResNet-20's 128 images at 32x32
were 64 rounds).
"""

from numba import njit, prange

from ..backend import is_depthwise
from .array import empty
from .depthwise import depthwise_backward, depthwise_forward
from .gemm import gemm_rm, sum_rows_into
from .threads import num_threads, single_threaded_blas
from .winograd import use_winograd, use_winograd_backward, winograd_backward, winograd_forward

# A thread's GEMMs take images side by side until they are at least this many output pixels
# wide (measured on 2 cores: 7x7 maps at 1 image per GEMM 73-156 GFLOP/s, at 8 images 180-190)
MIN_GEMM_COLUMNS = 384


@njit(cache=True)
def im2col(x, kh, kw, stride, pad, col, xp, off):
    """col[(c*KH+p)*KW+q, off + i*OW+j] = xpad[c, i*stride+p, j*stride+q]; x (C,H,W), col (C*KH*KW, >= off + OH*OW).

    xp (C, H+2*pad, W+2*pad) is scratch for the zero-padded image: copying from it needs no
    bounds tests, so the row copies vectorise (1.4-1.8x over testing each row's edges).
    """
    C, H, W = x.shape
    oh = (H + 2 * pad - kh) // stride + 1
    ow = (W + 2 * pad - kw) // stride + 1
    xp[:] = 0
    for c in range(C):
        for h in range(H):
            for w in range(W):
                xp[c, h + pad, w + pad] = x[c, h, w]
    for r in range(C * kh * kw):
        c = r // (kh * kw)
        p = (r // kw) % kh
        q = r % kw
        dst = col[r]
        for i in range(oh):
            src = xp[c, i * stride + p]
            base = off + i * ow
            if stride == 1:  # unit stride: contiguous rows the compiler vectorises
                for j in range(ow):
                    dst[base + j] = src[j + q]
            else:
                for j in range(ow):
                    dst[base + j] = src[j * stride + q]


@njit(cache=True)
def col2im(col, kh, kw, stride, pad, x, xp, off):
    """x[c, h, w] = sum of the col entries im2col would read from (c, h, w), from column off on; the adjoint of im2col.

    Sums into the zero-padded scratch xp (C, H+2*pad, W+2*pad), then copies its interior to x.
    """
    C, H, W = x.shape
    oh = (H + 2 * pad - kh) // stride + 1
    ow = (W + 2 * pad - kw) // stride + 1
    xp[:] = 0
    for r in range(C * kh * kw):
        c = r // (kh * kw)
        p = (r // kw) % kh
        q = r % kw
        src = col[r]
        for i in range(oh):
            dst = xp[c, i * stride + p]
            base = off + i * ow
            if stride == 1:
                for j in range(ow):
                    dst[j + q] += src[base + j]
            else:
                for j in range(ow):
                    dst[j * stride + q] += src[base + j]
    for c in range(C):
        for h in range(H):
            for w in range(W):
                x[c, h, w] = xp[c, h + pad, w + pad]


@njit(cache=True)
def thread_images(n0, t, G, N):
    """[lo, hi): the images thread t takes in the round starting at image n0, G at a time."""
    lo = min(N, n0 + t * G)
    return lo, min(N, lo + G)


@njit(cache=True)
def either(first, a, b):
    """a if first else b. A call: numba's parfor array analysis takes a variable assigned from two
    arrays of different shapes as having the first one's shape and fails its slices at run time."""
    return a if first else b


@njit(parallel=True, cache=True)
def conv2d_forward_kernel(x, w, b, stride, pad, groups, G, cols, xps, ys, y, has_bias):
    """y[n] rows of group g = W_g (O/G, R) @ im2col(x[n]) rows [g*R, (g+1)*R) (+ b), R = C/G*KH*KW.

    Thread t takes G images at a time: their columns side by side in cols[t] (row stride G*P),
    one GEMM per group into ys[t] (O, G*P), copied out to y; with G == 1 the GEMM writes y[n]."""
    N = x.shape[0]
    O, Cg, kh, kw = w.shape
    T = cols.shape[0]
    R = Cg * kh * kw
    Og = O // groups
    P = y.shape[2] * y.shape[3]
    GP = G * P
    wmat = w.reshape(O, R)
    beta = 1.0 if has_bias else 0.0  # beta 0: BLAS overwrites the output without reading it
    for t in prange(T):  # one parallel region, each thread through its rounds: no barrier per round
        for n0 in range(0, N, T * G):
            lo, hi = thread_images(n0, t, G, N)
            if lo == hi:
                continue
            col = cols[t]
            for n in range(lo, hi):
                im2col(x[n], kh, kw, stride, pad, col, xps[t], (n - lo) * P)
            out = either(G == 1, y[lo].reshape(O, P), ys[t])
            width = (hi - lo) * P
            if has_bias:
                for o in range(O):
                    out[o, :width] = b[o]
            for g in range(groups):  # a group's input channels are consecutive rows of col, its outputs rows of out
                gemm_rm(False, False, Og, width, R, 1.0, wmat[g * Og:], R, col[g * R:], GP, beta, out[g * Og:], GP)
            if G > 1:
                for n in range(lo, hi):
                    yn = y[n].reshape(O, P)
                    for o in range(O):
                        yn[o] = out[o, (n - lo) * P:(n - lo + 1) * P]


@njit(parallel=True, cache=True)
def conv2d_backward_kernel(x, w, dy, stride, pad, groups, G, cols, dcols, xps, dys, dws, dbs, dx, dw, db,
                           want_dx, want_dw, want_db):
    """Per group g: dw_g += sum_n dy_g[n] @ im2col(x[n])_g^T; db += sum of dy; dx[n] = col2im(W_g^T @ dy_g[n]).

    Thread t takes G images at a time as the forward does, their dy side by side in dys[t]
    (O, G*P) when G > 1, and uses buffers [t]. Unwanted gradients are not computed (their
    arguments are placeholders)."""
    N = x.shape[0]
    O, Cg, kh, kw = w.shape
    T = xps.shape[0]
    R = Cg * kh * kw
    Og = O // groups
    P = dy.shape[2] * dy.shape[3]
    GP = G * P
    wmat = w.reshape(O, R)
    if want_dw:
        dws[:] = 0
    if want_db:
        dbs[:] = 0
    for t in prange(T):  # one parallel region, each thread through its rounds: no barrier per round
        for n0 in range(0, N, T * G):
            lo, hi = thread_images(n0, t, G, N)
            if lo == hi:
                continue
            width = (hi - lo) * P
            # dys is a placeholder unless G > 1 and a GEMM reads dy (t % : never a view past its end)
            dyg = either(G == 1 or not (want_dw or want_dx), dy[lo].reshape(O, P), dys[t % dys.shape[0]])
            if G > 1 and (want_dw or want_dx):
                for n in range(lo, hi):
                    dyn = dy[n].reshape(O, P)
                    for o in range(O):
                        dyg[o, (n - lo) * P:(n - lo + 1) * P] = dyn[o]
            if want_dw:
                col = cols[t]
                for n in range(lo, hi):  # recomputed: keeping N column buffers costs N times the memory
                    im2col(x[n], kh, kw, stride, pad, col, xps[t], (n - lo) * P)
                for g in range(groups):
                    gemm_rm(False, True, Og, R, width, 1.0, dyg[g * Og:], GP, col[g * R:], GP, 1.0, dws[t][g * Og:], R)
            if want_db:
                for n in range(lo, hi):
                    sum_rows_into(dy[n].reshape(O, P), dbs[t])
            if want_dx:
                dcol = dcols[t]
                for g in range(groups):
                    gemm_rm(True, False, R, width, Og, 1.0, wmat[g * Og:], R, dyg[g * Og:], GP, 0.0, dcol[g * R:], GP)
                for n in range(lo, hi):
                    col2im(dcol, kh, kw, stride, pad, dx[n], xps[t], (n - lo) * P)
    if want_dw:
        dwmat = dw.reshape(O, R)
        for t in range(T):
            dwmat += dws[t]
    if want_db:
        for t in range(T):
            db += dbs[t]


def images_per_gemm(n, threads, pixels):
    """G, the images a thread's GEMMs take side by side: the fewest with G * pixels >= MIN_GEMM_COLUMNS,
    at most each thread's share of the batch (so all threads work). Buffers stay under
    MIN_GEMM_COLUMNS + pixels columns whatever the batch."""
    share = -(-n // threads)
    return max(1, min(share, -(-MIN_GEMM_COLUMNS // pixels)))


def _col_shape(x, w, y, G):
    """(C*KH*KW, G*OH*OW): the im2col matrix of G whole images side by side, every group's rows."""
    return (x.shape[1] * w.shape[2] * w.shape[3], G * y.shape[2] * y.shape[3])


def _threads(x):
    return max(1, min(num_threads(), x.shape[0]))


def _padded(x, pad, T, ws):
    """Per-thread scratch for one zero-padded image."""
    return ws.get("xps", (T, x.shape[1], x.shape[2] + 2 * pad, x.shape[3] + 2 * pad), x.dtype, empty)


def _or_placeholder(a, w, ndim):
    """`a`, or where it is None a view of w with `ndim` axes: numba then compiles one kernel
    for wanted and unwanted arrays alike, and a flag keeps the kernel off the placeholder."""
    return a if a is not None else w[(0,) * (4 - ndim)]


@single_threaded_blas
def conv2d_forward(x, w, b, stride, pad, y, ws, groups=1):
    if is_depthwise(x.shape[1], groups):
        return depthwise_forward(x, w, b, stride, pad, y, ws)
    if use_winograd(x, w, stride, pad, groups):
        return winograd_forward(x, w, b, y, ws)
    T = _threads(x)
    G = images_per_gemm(x.shape[0], T, y.shape[2] * y.shape[3])
    cols = ws.get("cols", (T,) + _col_shape(x, w, y, G), x.dtype, empty)
    ys = ws.get("ys", (T, w.shape[0], cols.shape[2]), x.dtype, empty) if G > 1 else cols  # cols: a placeholder
    conv2d_forward_kernel(x, w, _or_placeholder(b, w, 1), stride, pad, groups, G, cols, _padded(x, pad, T, ws), ys,
                          y, b is not None)


@single_threaded_blas
def conv2d_backward(x, w, dy, stride, pad, dx, dw, db, ws, groups=1):
    if is_depthwise(x.shape[1], groups):
        return depthwise_backward(x, w, dy, stride, pad, dx, dw, db, ws)
    if dx is None and dw is None and db is None:
        return
    if use_winograd_backward(x, w, stride, pad, groups):
        return winograd_backward(x, w, dy, dx, dw, db, ws)
    T = _threads(x)
    G = images_per_gemm(x.shape[0], T, dy.shape[2] * dy.shape[3])
    shape = (T,) + _col_shape(x, w, dy, G)
    O, R = w.shape[0], w.shape[1] * w.shape[2] * w.shape[3]
    cols = ws.get("cols", shape, x.dtype, empty) if dw is not None else None
    dcols = ws.get("dcols", shape, x.dtype, empty) if dx is not None else None
    dys = ws.get("dys", (T, O, shape[2]), x.dtype, empty) if G > 1 and (dw is not None or dx is not None) else None
    dws = ws.get("dws", (T, O, R), x.dtype, empty) if dw is not None else None
    dbs = ws.get("dbs", (T, O), x.dtype, empty) if db is not None else None
    conv2d_backward_kernel(x, w, dy, stride, pad, groups, G, _or_placeholder(cols, w, 3), _or_placeholder(dcols, w, 3),
                           _padded(x, pad, T, ws), _or_placeholder(dys, w, 3), _or_placeholder(dws, w, 3),
                           _or_placeholder(dbs, w, 2),
                           _or_placeholder(dx, w, 4), _or_placeholder(dw, w, 4), _or_placeholder(db, w, 1),
                           dx is not None, dw is not None, db is not None)
