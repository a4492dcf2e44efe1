"""Softmax cross-entropy on the CPU, one row per parallel iteration, in float64 internally."""

import numpy as np
from numba import njit, prange

from ..kernel_math import softmax_cross_entropy_row
from .array import empty


@njit(parallel=True, cache=True)
def softmax_cross_entropy_kernel(logits, labels, dlogits, row_loss, row_bad):
    """row_loss[n] = logsumexp(z[n]) - z[n, label]; dlogits = (softmax - onehot) / N; row_bad flags bad rows."""
    for n in prange(logits.shape[0]):
        row_loss[n], row_bad[n] = softmax_cross_entropy_row(logits, labels, dlogits, n)


def softmax_cross_entropy(logits, labels, dlogits, ws):
    n = logits.shape[0]
    row_loss = ws.get("row_loss", (n,), np.float64, empty)
    row_bad = ws.get("row_bad", (n,), np.int64, empty)
    softmax_cross_entropy_kernel(logits, labels, dlogits, row_loss, row_bad)
    return float(row_loss.sum() / n), int(row_bad.sum())
