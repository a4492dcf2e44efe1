"""Per-row and per-window math that both backends run inside their own loops.

These are plain Python functions marked `register_jitable`: numba.njit (CPU) and
numba.cuda.jit (CUDA) kernels call them as device functions, so each formula exists once.
The backends own only the iteration: prange on the CPU, a thread per item on the GPU.
`float()` keeps float64 arithmetic in numba's CUDA simulator too, where NumPy's rules
would otherwise keep float32 + Python float in float32.
"""

import math
import types

from numba.extending import register_jitable


def inlined(f):
    """A twin of register_jitable `f` that numba.njit inlines into the calling kernel.

    For CPU kernels only: inlining drops a per-element call that passes whole arrays (the
    CPU LRN runs about 1.4x faster), but numba-cuda cannot type inline="always" functions.
    """
    twin = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    return register_jitable(inline="always")(twin)


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
    """y[n,c,i,j] = max of the k*k window at (i*stride, j*stride); argmax = h*W + w of the first maximum (NaN wins, as in PyTorch)."""
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


@register_jitable
def pow_neg(v, beta):
    """v^-beta; AlexNet's beta = 0.75 as 1/sqrt(v*sqrt(v)), since two square roots cost far less than pow."""
    if beta == 0.75:
        return 1.0 / math.sqrt(v * math.sqrt(v))
    return math.pow(v, -beta)


@register_jitable
def lrn_forward_at(x, n, c, s, size, alpha, beta, k, y, scale):
    """scale = k + alpha/size * sum of x^2 over channels [c-size//2, c+(size-1)//2]; y = x * scale^-beta. x (N,C,HW)."""
    C = x.shape[1]
    acc = 0.0
    for cc in range(max(c - size // 2, 0), min(c + (size - 1) // 2, C - 1) + 1):
        v = float(x[n, cc, s])
        acc += v * v
    sc = k + alpha / size * acc
    scale[n, c, s] = sc
    y[n, c, s] = x[n, c, s] * pow_neg(sc, beta)


@register_jitable
def lrn_backward_at(x, y, scale, dy, n, c, s, size, alpha, beta, dx):
    """dx[c] = dy[c]*scale[c]^-beta - 2*alpha*beta/size * x[c] * sum over c' whose window holds c of dy[c']*y[c']/scale[c']."""
    C = x.shape[1]
    acc = 0.0
    # c lies in the window of c' exactly when c' is in [c-(size-1)//2, c+size//2]
    for cc in range(max(c - (size - 1) // 2, 0), min(c + size // 2, C - 1) + 1):
        acc += float(dy[n, cc, s]) * float(y[n, cc, s]) / float(scale[n, cc, s])
    dx[n, c, s] = (float(dy[n, c, s]) * pow_neg(float(scale[n, c, s]), beta)
                   - 2.0 * alpha * beta / size * float(x[n, c, s]) * acc)
