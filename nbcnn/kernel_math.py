"""Per-row and per-window math that both backends run inside their own loops.

These are plain Python functions marked `register_jitable`: numba.njit (CPU) and
numba.cuda.jit (CUDA) kernels call them as device functions, so each formula exists once.
The backends own only the iteration: prange on the CPU, a thread per item on the GPU.
`float()` keeps float64 arithmetic in numba's CUDA simulator too, where NumPy's rules
would otherwise keep float32 + Python float in float32.
"""

import math

from numba.extending import register_jitable


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
def maxpool_window(x, n, c, i, j, k, stride, y, argmax):
    """y[n,c,i,j] = max of the k*k window at (i*stride, j*stride); argmax = h*W + w of the first maximum (NaN wins, as in PyTorch).

    The CUDA kernel's rule; the CPU computes it in two branch-free passes (cpu/pool.py) and
    calls this for windows holding a NaN."""
    W = x.shape[3]
    h0 = i * stride
    w0 = j * stride
    best = x[n, c, h0, w0]
    idx = h0 * W + w0
    for p in range(k):
        for q in range(k):
            v = x[n, c, h0 + p, w0 + q]
            if v > best or (v != v and best == best):
                best = v
                idx = (h0 + p) * W + w0 + q
    y[n, c, i, j] = best
    argmax[n, c, i, j] = idx


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
