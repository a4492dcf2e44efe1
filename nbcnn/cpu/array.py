"""Arrays of the CPU backend (numpy arrays): allocation, host transfer, copies and views."""

import sys

import numpy as np

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


def copy(src, dst):
    dst[...] = src


def contiguous(a):
    if a.flags.c_contiguous:
        return a
    out = empty(a.shape, a.dtype)  # from the cache, unlike np.ascontiguousarray
    out[...] = a
    return out


def reshape(a, shape):
    return a.reshape(shape)
