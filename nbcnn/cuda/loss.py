"""Softmax cross-entropy on CUDA, one row per thread, in float64 internally; the mean on the device."""

import numpy as np
from numba import cuda

from ..kernel_math import softmax_cross_entropy_row
from .array import empty, launch


@cuda.jit(cache=True)
def softmax_cross_entropy_kernel(logits, labels, dlogits, row_loss, row_bad):
    """row_loss[n] = logsumexp(z[n]) - z[n, label]; dlogits = (softmax - onehot) / N; row_bad flags bad rows."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for n in range(start, logits.shape[0], step):
        row_loss[n], row_bad[n] = softmax_cross_entropy_row(logits, labels, dlogits, n)


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


def softmax_cross_entropy(logits, labels, dlogits, ws):
    n = logits.shape[0]
    row_loss = ws.get("row_loss", (n,), np.float64, empty)
    row_bad = ws.get("row_bad", (n,), np.int64, empty)
    sums = ws.get("sums", (2,), np.float64, empty)
    softmax_cross_entropy_kernel[launch(n)](logits, labels, dlogits, row_loss, row_bad)
    sum_rows_kernel[1, 1](row_loss, row_bad, sums)
    loss, bad = sums.copy_to_host()  # the one device-to-host copy of a step: two numbers
    return float(loss / n), int(bad)
