"""Softmax cross-entropy on CUDA, one row per thread, in float64 internally; the mean on the device."""

import math

import numpy as np
from numba import cuda

from .array import launch


@cuda.jit(cache=True)
def softmax_cross_entropy_kernel(logits, labels, dlogits, row_loss, row_bad):
    """row_loss[n] = logsumexp(z[n]) - z[n, label]; dlogits = (softmax - onehot) / N; row_bad flags bad rows."""
    N, K = logits.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for n in range(start, N, step):
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
            row_bad[n] = 1
            row_loss[n] = 0.0
            for j in range(K):
                dlogits[n, j] = 0
            continue
        row_bad[n] = 0
        s = 0.0
        for j in range(K):
            s += math.exp(logits[n, j] - m)  # shifted by the max: exp never overflows
        # float(): float64 as in the njit kernel (and in the simulator, where numpy would
        # keep float32 + python float in float32 and overflow at m - z ~ 6e38)
        row_loss[n] = math.log(s) + float(m) - float(logits[n, label])
        for j in range(K):
            dlogits[n, j] = (math.exp(logits[n, j] - m) / s - (1.0 if j == label else 0.0)) / N


@cuda.jit(cache=True)
def sum_rows_kernel(row_loss, row_bad, out):
    """out = (sum row_loss, sum row_bad): one thread, in order (N is a batch size, not a tensor)."""
    if cuda.grid(1) == 0:
        s = 0.0
        b = 0.0
        for n in range(row_loss.shape[0]):
            s += row_loss[n]
            b += row_bad[n]
        out[0] = s
        out[1] = b


_scratch = {}


def _buffers(n):
    """Per-batch-size device scratch, allocated once: (row_loss, row_bad, out)."""
    if n not in _scratch:
        _scratch[n] = (cuda.device_array(n, np.float64), cuda.device_array(n, np.int64),
                       cuda.device_array(2, np.float64))
    return _scratch[n]


def softmax_cross_entropy(logits, labels, dlogits):
    n = logits.shape[0]
    if n == 0:
        return float("nan"), 0
    row_loss, row_bad, out = _buffers(n)
    softmax_cross_entropy_kernel[launch(n)](logits, labels, dlogits, row_loss, row_bad)
    sum_rows_kernel[1, 1](row_loss, row_bad, out)
    loss, bad = out.copy_to_host()  # the one device-to-host copy of a step: two numbers
    return float(loss / n), int(bad)
