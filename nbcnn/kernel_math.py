"""Per-element, per-row and per-window math that both backends run inside their own loops.

These are plain Python functions marked `register_jitable`: numba.njit (CPU) and
numba.cuda.jit (CUDA) kernels call them as device functions, so each formula exists once.
The backends own only the iteration: prange on the CPU, a thread per item on the GPU.
`float()` keeps float64 arithmetic in numba's CUDA simulator too, where NumPy's rules
would otherwise keep float32 + Python float in float32.
"""

import math

import numpy as np
from numba.core.extending import overload
from numba.cuda.extending import overload as cuda_overload
from numba.extending import register_jitable

from .random import keep_bit, keep_threshold


# -- rounding: products and sums that must equal the CPU's bit for bit -----------------------
# NVVM contracts a * b + c into one fused multiply-add (one rounding instead of two) unless
# told otherwise, and numba-cuda has no switch for it. Formulas whose results must match the
# CPU exactly (the optimiser updates) multiply and add through these: a plain `*` and `+` on
# the CPU and in the simulator, libdevice's round-to-nearest intrinsics, never fused, in CUDA.

def mul_rn(a, b):
    """a * b, rounded once."""
    return a * b


def add_rn(a, b):
    """a + b, rounded once."""
    return a + b


@overload(mul_rn)
def _mul_rn_cpu(a, b):
    return lambda a, b: a * b


@overload(add_rn)
def _add_rn_cpu(a, b):
    return lambda a, b: a + b


@cuda_overload(mul_rn, target="cuda")
def _mul_rn_cuda(a, b):
    from numba.cuda.libdevice import dmul_rn
    return lambda a, b: dmul_rn(a, b)


@cuda_overload(add_rn, target="cuda")
def _add_rn_cuda(a, b):
    from numba.cuda.libdevice import dadd_rn
    return lambda a, b: dadd_rn(a, b)


# -- integer division of indices -----------------------------------------------------------------
# numba divides integers in 64 bits, which on a GPU is a ~70-instruction subroutine call; index
# arithmetic is non-negative and below 2**31, so CUDA divides in unsigned 32 bits instead (as
# nbcnn.cuda.array.divmod32 does for the kernels' own unravelling).

def idiv(a, b):
    """a // b for 0 <= a < 2**31 and 0 < b."""
    return a // b


@overload(idiv)
def _idiv_cpu(a, b):
    return lambda a, b: a // b


@cuda_overload(idiv, target="cuda")
def _idiv_cuda(a, b):
    return lambda a, b: np.int32(np.uint32(a) // np.uint32(b))


# -- element-wise formulas (nbcnn/elementwise.py makes ops of them) ------------------------------

@register_jitable
def relu(x):
    """max(x, 0); NaN stays NaN (PyTorch's rule: a divergence stays visible)."""
    return x if x > 0 or x != x else 0


@register_jitable
def relu_grad(y, dy):
    """dy where the forward output y > 0, else 0."""
    return dy if y > 0 else 0


@register_jitable
def accumulate(src, dst):
    """dst + src: gradient accumulation."""
    return dst + src


@register_jitable
def plus(a, b):
    """a + b: a residual connection's sum of its two branches (and of their gradients)."""
    return a + b


@register_jitable
def constant(a, value):
    """value, whatever a held."""
    return value


@register_jitable
def dropout(x, p, key, i):
    """x / (1 - p) where element i is kept by the stream `key` (nbcnn.random.keep_bit), else 0; in float64."""
    return float(x) * (1.0 / (1.0 - p)) if keep_bit(key, i, keep_threshold(p)) else 0.0


@register_jitable
def sgd_update(w, g, v, lr, momentum, weight_decay):
    """torch.optim.SGD without dampening, in float64: v' = momentum*v + (g + wd*w); w' = w - lr*v'. Returns (w', v')."""
    v_new = add_rn(mul_rn(momentum, float(v)), add_rn(float(g), mul_rn(weight_decay, float(w))))
    return add_rn(float(w), -mul_rn(lr, v_new)), v_new


@register_jitable
def softmax_cross_entropy_row(logits, labels, dlogits, n):
    """dlogits[n] = (softmax(z[n]) - onehot(label)) / N; returns (logsumexp(z[n]) - z[n, label], bad).

    bad = 1 (and a zero row) when the label is outside [0, K) or a logit is not finite.
    """
    N, K = logits.shape
    label = labels[n]
    m = logits[n, 0]
    finite = True
    for j in range(K):
        v = logits[n, j]
        if not math.isfinite(v):
            finite = False
        if v > m:
            m = v
    if not finite or label < 0 or label >= K:
        for j in range(K):
            dlogits[n, j] = 0
        return 0.0, 1
    s = 0.0
    for j in range(K):
        s += math.exp(float(logits[n, j]) - float(m))  # shifted by the max: exp never overflows
    for j in range(K):
        dlogits[n, j] = (math.exp(float(logits[n, j]) - float(m)) / s - (1.0 if j == label else 0.0)) / N
    return math.log(s) + float(m) - float(logits[n, label]), 0


@register_jitable
def window_max(x, n, c, h0, w0, kh, kw):
    """(max, h*W + w of its first position in row-major order) over rows h0..h0+kh-1 and columns
    w0..w0+kw-1 of plane (n, c). A NaN wins (the first NaN, bit for bit), as in PyTorch.

    Two branch-free passes: the max (only a strictly greater value replaces it, so it keeps
    the first maximum's bits), then a backward scan for the first position holding it. Where
    kh and kw are compile-time constants (the CPU compiles a kernel per window size) LLVM
    unrolls the loops: 6x faster than one pass with a branch on AlexNet's pool1.
    """
    W = x.shape[3]
    m = x[n, c, h0, w0]
    nan = False
    for p in range(kh):
        for q in range(kw):
            v = x[n, c, h0 + p, w0 + q]
            m = v if v > m else m
            nan |= v != v
    idx = 0
    if nan:  # rare: the first NaN wins, and y takes its bits
        for p in range(kh - 1, -1, -1):
            for q in range(kw - 1, -1, -1):
                idx = (h0 + p) * W + w0 + q if x[n, c, h0 + p, w0 + q] != x[n, c, h0 + p, w0 + q] else idx
        m = x[n, c, idx // W, idx % W]
    else:
        for p in range(kh - 1, -1, -1):
            for q in range(kw - 1, -1, -1):
                idx = (h0 + p) * W + w0 + q if x[n, c, h0 + p, w0 + q] == m else idx
    return m, idx


@register_jitable
def pool_span(i, k, stride, pad, size):
    """The rows [lo, hi) of window i (rows i*stride - pad .. + k - 1) that lie inside the plane [0, size)."""
    start = i * stride - pad
    return max(start, 0), min(start + k, size)


@register_jitable
def maxpool_window(x, n, c, i, j, k, stride, pad, y, argmax):
    """y[n,c,i,j] = max of the k*k window at (i*stride - pad, j*stride - pad); argmax = h*W + w of its
    first maximum (window_max's rule) in the unpadded plane.

    The padding is -inf, as in PyTorch: it never beats a pixel, so a window takes the max of its
    part inside the plane (never empty: padding <= k // 2). The CPU kernel passes the windows
    wholly inside straight to window_max with a constant k instead.
    """
    h0, h1 = pool_span(i, k, stride, pad, x.shape[2])
    w0, w1 = pool_span(j, k, stride, pad, x.shape[3])
    y[n, c, i, j], argmax[n, c, i, j] = window_max(x, n, c, h0, w0, h1 - h0, w1 - w0)


@register_jitable
def avgpool_rows(i, size, out, k, stride, pad, adaptive):
    """The rows [lo, hi) of average-pooling window i inside the plane [0, size): with `adaptive`,
    PyTorch's bin i of `out`, [floor(i*size/out), ceil((i+1)*size/out)); else pool_span."""
    if adaptive:
        return idiv(i * size, out), idiv((i + 1) * size + out - 1, out)
    return pool_span(i, k, stride, pad, size)


@register_jitable
def avgpool_windows_holding(h, size, out, k, stride, pad, adaptive):
    """The windows [lo, hi) whose avgpool_rows hold row h (empty where strides skip it)."""
    if adaptive:
        return idiv(h * out, size), idiv((h + 1) * out + size - 1, size)
    t = h + pad - k + 1  # window i holds h when t <= i*stride <= h + pad
    return (0 if t <= 0 else idiv(t + stride - 1, stride)), min(idiv(h + pad, stride) + 1, out)


@register_jitable
def avgpool_divisor(h0, h1, w0, w1, k, count_include_pad):
    """k*k with count_include_pad (floor mode keeps every window within the padding), else the
    number of pixels of the window inside the plane, as in PyTorch."""
    return k * k if count_include_pad else (h1 - h0) * (w1 - w0)


@register_jitable
def avgpool_term(dy, h0, h1, w0, w1, k, count_include_pad):
    """dy / avgpool_divisor in float64: window [h0, h1) x [w0, w1)'s share of the gradient of each of its pixels."""
    return float(dy) / avgpool_divisor(h0, h1, w0, w1, k, count_include_pad)


@register_jitable
def avgpool_window(x, n, c, i, j, k, stride, pad, count_include_pad, adaptive, y):
    """y[n,c,i,j] = the float64 sum of x over window (i, j) inside the plane, row by row, / avgpool_divisor.

    Windows from avgpool_rows (adaptive: PyTorch's bins of the output's size, count_include_pad False).
    """
    h0, h1 = avgpool_rows(i, x.shape[2], y.shape[2], k, stride, pad, adaptive)
    w0, w1 = avgpool_rows(j, x.shape[3], y.shape[3], k, stride, pad, adaptive)
    acc = 0.0
    for h in range(h0, h1):
        for w in range(w0, w1):
            acc += float(x[n, c, h, w])
    y[n, c, i, j] = acc / avgpool_divisor(h0, h1, w0, w1, k, count_include_pad)


@register_jitable
def avgpool_grad(dy, n, c, h, w, k, stride, pad, count_include_pad, adaptive, dx):
    """dx[n,c,h,w] = the float64 sum, over the windows (i, j) holding (h, w) in row-major order, of
    avgpool_term: a gather (CUDA). The CPU scatters the same terms in the same order instead."""
    H, W, OH, OW = dx.shape[2], dx.shape[3], dy.shape[2], dy.shape[3]
    i0, i1 = avgpool_windows_holding(h, H, OH, k, stride, pad, adaptive)
    j0, j1 = avgpool_windows_holding(w, W, OW, k, stride, pad, adaptive)
    acc = 0.0
    for i in range(i0, i1):
        h0, h1 = avgpool_rows(i, H, OH, k, stride, pad, adaptive)
        for j in range(j0, j1):
            w0, w1 = avgpool_rows(j, W, OW, k, stride, pad, adaptive)
            acc += avgpool_term(dy[n, c, i, j], h0, h1, w0, w1, k, count_include_pad)
    dx[n, c, h, w] = acc


FAST_BETA = 0.75  # AlexNet's LRN exponent, which pow_neg computes without pow


@register_jitable
def pow_neg(v, beta):
    """v^-beta; AlexNet's beta = 0.75 as 1/sqrt(v*sqrt(v)), since two square roots cost far less than pow."""
    if beta == FAST_BETA:
        return 1.0 / math.sqrt(v * math.sqrt(v))
    return math.pow(v, -beta)


@register_jitable
def lrn_window(c, size, C):
    """The channels [lo, hi) whose squares scale channel c: c - size//2 .. c + (size-1)//2, within [0, C)."""
    return max(c - size // 2, 0), min(c + (size - 1) // 2, C - 1) + 1


@register_jitable
def lrn_adjoint_window(c, size, C):
    """The channels [lo, hi) whose windows hold channel c: c - (size-1)//2 .. c + size//2, within [0, C)."""
    return max(c - (size - 1) // 2, 0), min(c + size // 2, C - 1) + 1


@register_jitable
def lrn_scale(sumsq, size, alpha, k):
    """k + alpha/size * (the sum of squares over the window)."""
    return k + alpha / size * sumsq


@register_jitable
def lrn_output(x, scale, beta):
    """y = x * scale^-beta."""
    return x * pow_neg(scale, beta)


@register_jitable
def lrn_backward_term(dy, y, scale):
    """dy*y/scale of one channel: its share of the gradient of each channel in its window."""
    return float(dy) * float(y) / float(scale)


@register_jitable
def lrn_dx(x, dy, scale, terms, size, alpha, beta):
    """dL/dx = dy*scale^-beta - 2*alpha*beta/size * x * (the sum of lrn_backward_term over lrn_adjoint_window)."""
    return float(dy) * pow_neg(float(scale), beta) - 2.0 * alpha * beta / size * float(x) * terms


@register_jitable
def lrn_forward_at(x, n, c, s, size, alpha, beta, k, y, scale):
    """scale = k + alpha/size * sum of x^2 over lrn_window(c); y = x * scale^-beta. x (N,C,HW)."""
    lo, hi = lrn_window(c, size, x.shape[1])
    acc = 0.0
    for cc in range(lo, hi):
        v = float(x[n, cc, s])
        acc += v * v
    sc = lrn_scale(acc, size, alpha, k)
    scale[n, c, s] = sc
    y[n, c, s] = lrn_output(x[n, c, s], sc, beta)


@register_jitable
def lrn_backward_at(x, y, scale, dy, n, c, s, size, alpha, beta, dx):
    """dx[n, c, s] = lrn_dx(...), the terms summed over lrn_adjoint_window(c) in channel order."""
    lo, hi = lrn_adjoint_window(c, size, x.shape[1])
    acc = 0.0
    for cc in range(lo, hi):
        acc += lrn_backward_term(dy[n, cc, s], y[n, cc, s], scale[n, cc, s])
    dx[n, c, s] = lrn_dx(x[n, c, s], dy[n, c, s], scale[n, c, s], acc, size, alpha, beta)
