"""Array creation, host transfer and element-wise copies for the CPU backend (numpy arrays)."""

import sys

import numpy as np
from numba import njit, prange

from ..memory import CachingAllocator

# A numpy view holds a reference to the buffer it views, so the buffer's reference count
# counts its live views.


def is_out_of_memory(exc):
    return isinstance(exc, MemoryError)  # nbcnn.OutOfMemoryError is one


cache = CachingAllocator(allocate=lambda nbytes: np.empty(nbytes, np.uint8),
                         users=sys.getrefcount, empty_uncached=np.empty, fill_bytes=np.ndarray.fill,
                         is_out_of_memory=is_out_of_memory)


def is_array(a):
    return isinstance(a, np.ndarray)


def empty(shape, dtype):
    return cache.empty(shape, dtype)


def zeros(shape, dtype):
    a = empty(shape, dtype)
    a[...] = 0
    return a


def from_numpy(a):
    out = empty(np.shape(a), np.asarray(a).dtype)
    out[...] = a
    return out


def memory_stats():
    return cache.stats()


def empty_cache():
    return cache.release()


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
