"""Dropout on the CPU; the keep bit of element i comes from nbcnn.random.keep_bit(key, i)."""

from numba import njit, prange

from ..random import keep_bit, keep_threshold


@njit(parallel=True, cache=True)
def dropout_kernel(x, key, threshold, scale, y):
    """y[i] = x[i] * scale if keep_bit(key, i) else 0, flat; scale = 1/(1-p). Forward and backward alike."""
    for i in prange(x.shape[0]):
        y[i] = x[i] * scale if keep_bit(key, i, threshold) else 0


def dropout_forward(x, p, key, y):
    dropout_kernel(x.reshape(-1), key, keep_threshold(p), 1.0 / (1.0 - p), y.reshape(-1))


def dropout_backward(dy, p, key, dx):
    dropout_kernel(dy.reshape(-1), key, keep_threshold(p), 1.0 / (1.0 - p), dx.reshape(-1))
