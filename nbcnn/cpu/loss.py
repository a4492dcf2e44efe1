"""Softmax cross-entropy on the CPU, one row per parallel iteration, in float64 internally."""

import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def softmax_cross_entropy_kernel(logits, labels, dlogits, row_loss, row_bad):
    """row_loss[n] = logsumexp(z[n]) - z[n, label]; dlogits = (softmax - onehot) / N; row_bad flags bad rows."""
    N, K = logits.shape
    for n in prange(N):
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
        row_loss[n] = math.log(s) + m - logits[n, label]
        for j in range(K):
            dlogits[n, j] = (math.exp(logits[n, j] - m) / s - (1.0 if j == label else 0.0)) / N


def softmax_cross_entropy(logits, labels, dlogits):
    n = logits.shape[0]
    row_loss = np.empty(n, np.float64)
    row_bad = np.empty(n, np.int64)
    softmax_cross_entropy_kernel(logits, labels, dlogits, row_loss, row_bad)
    return float(row_loss.sum() / n), int(row_bad.sum())
