"""Array creation, host transfer and element-wise copies for the CPU backend (numpy arrays)."""

import numpy as np
from numba import njit, prange


def is_array(a):
    return isinstance(a, np.ndarray)


def empty(shape, dtype):
    return np.empty(shape, dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype)


def from_numpy(a):
    return np.array(a, order="C", copy=True)


def to_numpy(a):
    return np.array(a, copy=True)


def fill(a, value):
    a[...] = value


def copy(src, dst):
    dst[...] = src


def contiguous(a):
    return np.ascontiguousarray(a)


def reshape(a, shape):
    return a.reshape(shape)


@njit(parallel=True, cache=True)
def add_kernel(src, dst):
    """dst[i] += src[i] over flat arrays."""
    for i in prange(dst.shape[0]):
        dst[i] += src[i]


def add(src, dst):
    add_kernel(src.reshape(-1), dst.reshape(-1))
