"""Per-element, per-row and per-window math that both backends run inside their own loops.

These are plain Python functions marked `register_jitable`: numba.njit (CPU) and
numba.cuda.jit (CUDA) kernels call them as device functions, so each formula exists once.
The backends own only the iteration: prange on the CPU, a thread per item on the GPU.
Where a formula computes in float64 it widens its float32 inputs with `np.float64()`, not
`float()`: numba types `float(x)` of a float32 as float32, so `float(x) * float(y)` was a
float32 product on the CPU and the GPU but a float64 one in the simulator.
"""

import math

import numpy as np

from numba.core.extending import overload
from numba.extending import register_jitable

from .random import keep_bit, keep_threshold


# -- rounding: products and sums that must equal the CPU's bit for bit -----------------------
# NVVM contracts a * b + c into one fused multiply-add (one rounding instead of two) unless
# told otherwise, and numba-cuda has no switch for it. Formulas whose results must match the
# CPU exactly (the optimiser updates) multiply and add through these: a plain `*` and `+` on
# the CPU and in the simulator, libdevice's round-to-nearest intrinsics, never fused, in CUDA.
# Their CUDA versions (and idiv's) are registered by nbcnn/cuda/__init__.py, before any CUDA
# kernel compiles: importing numba.cuda takes about a second, which a CPU run does not pay.

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
def scaled(a, factor):
    """a * factor, in float64: a data-parallel process's gradient weighted by its share of the batch."""
    return np.float64(a) * factor


@register_jitable
def constant(a, value):
    """value, whatever a held."""
    return value


@register_jitable
def dropout(x, p, key, offset, i):
    """x / (1 - p) where element offset + i is kept by the stream `key` (nbcnn.random.keep_bit), else 0; in float64."""
    return np.float64(x) * (1.0 / (1.0 - p)) if keep_bit(key, offset + i, keep_threshold(p)) else 0.0


@register_jitable
def sgd_update(w, g, v, lr, momentum, weight_decay):
    """torch.optim.SGD without dampening, in float64: v' = momentum*v + (g + wd*w); w' = w - lr*v'. Returns (w', v')."""
    v_new = add_rn(mul_rn(momentum, np.float64(v)), add_rn(np.float64(g), mul_rn(weight_decay, np.float64(w))))
    return add_rn(np.float64(w), -mul_rn(lr, v_new)), v_new


@register_jitable
def adam_update(w, g, m, v, beta1, beta2, eps, step_size, bias_correction2_sqrt, l2, decay):
    """torch.optim.Adam/AdamW in float64; the host gives step_size = lr / (1 - beta1^t),
    bias_correction2_sqrt = sqrt(1 - beta2^t), l2 (Adam's weight decay, added to g) and decay
    (AdamW's 1 - lr*wd, multiplying w). Returns (w', m', v'):
    m' = beta1*m + (1-beta1)*g; v' = beta2*v + (1-beta2)*g*g; w' = w - step_size*m' / (sqrt(v')/bias_correction2_sqrt + eps).
    """
    w0, g0 = adam_decay(w, g, l2, decay)
    m_new, v_new = adam_moments(g0, m, v, beta1, beta2)
    return adam_apply(w0, m_new, v_new, eps, step_size, bias_correction2_sqrt), m_new, v_new


@register_jitable
def amsgrad_update(w, g, m, v, v_max, beta1, beta2, eps, step_size, bias_correction2_sqrt, l2, decay):
    """adam_update with amsgrad: v_max' = max(v_max, v') replaces v' in the denominator. Returns (w', m', v', v_max')."""
    w0, g0 = adam_decay(w, g, l2, decay)
    m_new, v_new = adam_moments(g0, m, v, beta1, beta2)
    v_max_new = nan_max(v_new, np.float64(v_max))
    return adam_apply(w0, m_new, v_max_new, eps, step_size, bias_correction2_sqrt), m_new, v_new, v_max_new


@register_jitable
def adam_decay(w, g, l2, decay):
    """(w * decay, g + l2*w) in float64, each skipped when it would change nothing (torch's `if weight_decay != 0`)."""
    w0, g0 = np.float64(w), np.float64(g)
    if l2 != 0.0:
        g0 = add_rn(g0, mul_rn(l2, w0))
    if decay != 1.0:
        w0 = mul_rn(w0, decay)
    return w0, g0


@register_jitable
def adam_moments(g, m, v, beta1, beta2):
    """(beta1*m + (1-beta1)*g, beta2*v + ((1-beta2)*g)*g): torch's moment updates (its addcmul's order)."""
    m_new = add_rn(mul_rn(beta1, np.float64(m)), mul_rn(1.0 - beta1, g))
    v_new = add_rn(mul_rn(beta2, np.float64(v)), mul_rn(mul_rn(1.0 - beta2, g), g))
    return m_new, v_new


@register_jitable
def adam_apply(w, m, v, eps, step_size, bias_correction2_sqrt):
    """w + (-step_size*m) / (sqrt(v)/bias_correction2_sqrt + eps): torch's addcdiv."""
    denom = add_rn(math.sqrt(v) / bias_correction2_sqrt, eps)
    return add_rn(w, mul_rn(-step_size, m) / denom)


@register_jitable
def nan_max(a, b):
    """max(a, b), NaN when either is (torch.maximum)."""
    return a if a > b or a != a else b


@register_jitable
def rmsprop_update(w, g, square_avg, lr, alpha, eps, weight_decay):
    """torch.optim.RMSprop, plain (rmsprop_core). Returns (w', square_avg')."""
    w_new, sq, _, _ = rmsprop_core(w, g, square_avg, 0.0, 0.0, lr, alpha, eps, weight_decay, 0.0, False, False)
    return w_new, sq


@register_jitable
def rmsprop_centered_update(w, g, square_avg, grad_avg, lr, alpha, eps, weight_decay):
    """torch.optim.RMSprop, centered (rmsprop_core). Returns (w', square_avg', grad_avg')."""
    w_new, sq, ga, _ = rmsprop_core(w, g, square_avg, grad_avg, 0.0, lr, alpha, eps, weight_decay, 0.0, True, False)
    return w_new, sq, ga


@register_jitable
def rmsprop_momentum_update(w, g, square_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum):
    """torch.optim.RMSprop with momentum (rmsprop_core). Returns (w', square_avg', momentum_buffer')."""
    w_new, sq, _, buf = rmsprop_core(w, g, square_avg, 0.0, momentum_buffer, lr, alpha, eps, weight_decay,
                                     momentum, False, True)
    return w_new, sq, buf


@register_jitable
def rmsprop_centered_momentum_update(w, g, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay,
                                     momentum):
    """torch.optim.RMSprop, centered and with momentum (rmsprop_core). Returns (w', square_avg', grad_avg', momentum_buffer')."""
    return rmsprop_core(w, g, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum, True, True)


@register_jitable
def rmsprop_core(w, g, sq, ga, buf, lr, alpha, eps, weight_decay, momentum, centered, use_momentum):
    """torch.optim.RMSprop's rule in float64, torch's order of operations; returns (w', sq', ga', buf'):
    g' = g + wd*w; sq' = alpha*sq + ((1-alpha)*g')*g'; centered: ga' = alpha*ga + (1-alpha)*g',
    avg = sqrt(sq' - ga'*ga') + eps, else avg = sqrt(sq') + eps;
    momentum: buf' = momentum*buf + g'/avg, w' = w - lr*buf'; else w' = w + (-lr*g')/avg.
    `centered` and `use_momentum` are constants of each caller, so the unused branches compile away.
    """
    w0, g0 = np.float64(w), np.float64(g)
    if weight_decay != 0.0:
        g0 = add_rn(g0, mul_rn(weight_decay, w0))
    sq_new = add_rn(mul_rn(alpha, np.float64(sq)), mul_rn(mul_rn(1.0 - alpha, g0), g0))
    ga_new = np.float64(ga)
    if centered:
        ga_new = add_rn(mul_rn(alpha, ga_new), mul_rn(1.0 - alpha, g0))
        avg = add_rn(sqrt_or_nan(add_rn(sq_new, -mul_rn(ga_new, ga_new))), eps)
    else:
        avg = add_rn(math.sqrt(sq_new), eps)
    buf_new = np.float64(buf)
    if use_momentum:
        buf_new = add_rn(mul_rn(momentum, buf_new), g0 / avg)
        w_new = add_rn(w0, mul_rn(-lr, buf_new))
    else:
        w_new = add_rn(w0, mul_rn(-lr, g0) / avg)
    return w_new, sq_new, ga_new, buf_new


@register_jitable
def sqrt_or_nan(x):
    """sqrt(x), NaN for x < 0 on every backend (the CUDA simulator's math.sqrt would raise)."""
    return math.sqrt(x) if x >= 0.0 else math.nan


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
        s += math.exp(np.float64(logits[n, j]) - np.float64(m))  # shifted by the max: exp never overflows
    for j in range(K):
        dlogits[n, j] = (math.exp(np.float64(logits[n, j]) - np.float64(m)) / s - (1.0 if j == label else 0.0)) / N
    return math.log(s) + np.float64(m) - np.float64(logits[n, label]), 0


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
    return np.float64(dy) / avgpool_divisor(h0, h1, w0, w1, k, count_include_pad)


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
            acc += np.float64(x[n, c, h, w])
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
    return np.float64(dy) * np.float64(y) / np.float64(scale)


@register_jitable
def lrn_dx(x, dy, scale, terms, size, alpha, beta):
    """dL/dx = dy*scale^-beta - 2*alpha*beta/size * x * (the sum of lrn_backward_term over lrn_adjoint_window)."""
    return np.float64(dy) * pow_neg(np.float64(scale), beta) - 2.0 * alpha * beta / size * np.float64(x) * terms


@register_jitable
def lrn_forward_at(x, n, c, s, size, alpha, beta, k, y, scale):
    """scale = k + alpha/size * sum of x^2 over lrn_window(c); y = x * scale^-beta. x (N,C,HW)."""
    lo, hi = lrn_window(c, size, x.shape[1])
    acc = 0.0
    for cc in range(lo, hi):
        v = np.float64(x[n, cc, s])
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


# -- batch normalisation: the per-channel and per-element rules ---------------------------------
# Both backends reduce each channel's N*S values in float64 (the CPU in order, CUDA in a tree over a
# block's threads) and apply these rules to the sums.

CUMULATIVE = -1.0  # the momentum that asks for a cumulative average of the batch statistics (torch's None)


@register_jitable
def bn_invstd(var, eps):
    """1 / sqrt(var + eps), in float64."""
    return 1.0 / math.sqrt(np.float64(var) + eps)


@register_jitable
def bn_xhat(x, mean, invstd):
    """The normalised value (x - mean) * invstd, in float64."""
    return (np.float64(x) - np.float64(mean)) * np.float64(invstd)


@register_jitable
def bn_normalise(x, mean, invstd, gamma, beta):
    """y = gamma * (x - mean) * invstd + beta, in float64."""
    return np.float64(gamma) * bn_xhat(x, mean, invstd) + np.float64(beta)


@register_jitable
def bn_update_running(running_mean, running_var, c, mean, var, count, momentum, batches):
    """PyTorch's running statistics of channel c: r = (1 - f) * r + f * (the batch's statistic), the
    variance unbiased (var * count / (count - 1)); f = momentum, or 1/batches (this batch counted)
    for a cumulative average (momentum < 0)."""
    f = momentum if momentum >= 0 else 1.0 / batches
    running_mean[c] = (1.0 - f) * np.float64(running_mean[c]) + f * mean
    running_var[c] = (1.0 - f) * np.float64(running_var[c]) + f * (var * count / (count - 1))


@register_jitable
def bn_dx(x, dy, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, batch_stats):
    """dL/dx = gamma * invstd * (dy - (sum_dy + xhat * sum_dy_xhat) / count) when the statistics
    were the batch's (they depend on x), gamma * invstd * dy when they were the running ones."""
    g = np.float64(gamma) * np.float64(invstd)
    if not batch_stats:
        return g * np.float64(dy)
    return g * (np.float64(dy) - (sum_dy + bn_xhat(x, mean, invstd) * sum_dy_xhat) / count)


@register_jitable
def bn_combine_stats(stats, c):
    """(count, mean, sum of squared deviations) of channel c over the processes' (P,C,3) float64
    triples stats[q, c] = (count, mean, sum of squared deviations), combined in rank order by Chan,
    Golub and LeVeque's pairwise rule: every process gets the same bits from the same triples."""
    n, m, m2 = 0.0, 0.0, 0.0
    for q in range(stats.shape[0]):
        nb = stats[q, c, 0]
        if nb > 0:
            total = n + nb
            delta = stats[q, c, 1] - m
            m = m + delta * (nb / total)
            m2 = m2 + stats[q, c, 2] + delta * delta * (n * nb / total)
            n = total
    return n, m, m2


@register_jitable
def bn_combine_grad_sums(stats, sums, c):
    """(sum dy, sum dy*xhat) of channel c as the GLOBAL batch's loss sees them: sum over q of
    (count_q / count) * sums[q, c], in rank order; counts from stats (P,C,3), sums (P,C,2) float64.
    Each process's dy is the gradient of its own shard's mean loss, and the global loss is the
    shards' weighted by count_q / count (DataParallel's weighting)."""
    total = 0.0
    for q in range(stats.shape[0]):
        total += stats[q, c, 0]
    a, b = 0.0, 0.0
    for q in range(stats.shape[0]):
        w = stats[q, c, 0] / total
        a += w * sums[q, c, 0]
        b += w * sums[q, c, 1]
    return a, b


# -- Winograd F(2x2, 3x3) (Lavin & Gray 2016): the 1-D transforms and their adjoints ------------
# A 2-D transform is the 1-D one down every column, then along every row: U = G w G^T,
# V = B^T d B, y = A^T M A. The backward runs the adjoints (transposes) of the same steps in
# reverse order: dM = A dy A^T, then dV = U^T dM -> dd = B dV B^T (scattered into dx) and
# dU = dM V^T -> dw = G^T dU G. The backends own the loops, the layouts and the GEMMs.

@register_jitable
def wino_weight(w0, w1, w2):
    """G (w0, w1, w2), G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    return w0, 0.5 * (w0 + w1 + w2), 0.5 * (w0 - w1 + w2), w2


@register_jitable
def wino_weight_adjoint(u0, u1, u2, u3):
    """G^T (u0, u1, u2, u3)."""
    return u0 + 0.5 * (u1 + u2), 0.5 * (u1 - u2), 0.5 * (u1 + u2) + u3


@register_jitable
def wino_input(d0, d1, d2, d3):
    """B^T (d0, d1, d2, d3), B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@register_jitable
def wino_input_adjoint(v0, v1, v2, v3):
    """B (v0, v1, v2, v3)."""
    return v0, v1 - v2 + v3, v1 + v2 - v0, -v3


@register_jitable
def wino_output(m0, m1, m2, m3):
    """A^T (m0, m1, m2, m3), A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    return m0 + m1 + m2, m1 - m2 - m3


@register_jitable
def wino_output_adjoint(s0, s1):
    """A (s0, s1)."""
    return s0, s0 + s1, s0 - s1, -s1


@register_jitable
def wino5_tap(st, p, q):
    """The 5x5 kernel's (row, column) that tap (p, q) of 3x3 sub-kernel st = 2s+t holds when a 5x5 stride-1
    convolution runs as four F(2x2, 3x3) ones: (2s+p, 2t+q), or (-1, -1) for a structural zero (row 0 of
    s = 1 and column 0 of t = 1: row / column 2 belongs to s = 0 / t = 0, so each 5x5 tap is held once)."""
    s, t = st // 2, st % 2
    if (s == 1 and p == 0) or (t == 1 and q == 0):
        return -1, -1
    return 2 * s + p, 2 * t + q


@register_jitable
def wino5_merge_taps(dw4, dw, o, c):
    """dw[o, c, wino5_tap(st, p, q)] += dw4[o, st*C + c, p, q] for the four sub-kernels' taps, the structural
    zeros' gradients dropped: one (o, c) of the adjoint of splitting a 5x5 kernel. dw4 (O, 4C, 3, 3), dw (O, C, 5, 5)."""
    C = dw.shape[1]
    for st in range(4):
        for p in range(3):
            for q in range(3):
                r, t = wino5_tap(st, p, q)
                if r >= 0:
                    dw[o, c, r, t] += dw4[o, st * C + c, p, q]
