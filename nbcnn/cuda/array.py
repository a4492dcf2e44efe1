"""Device arrays for the CUDA backend (numba DeviceNDArray, or FakeCUDAArray under the simulator):
allocation, host transfer, copies and views, and the launch helpers every CUDA kernel uses.

Kernels over many elements use grid-stride loops with a capped grid, so one launch
configuration serves every size (and the simulator, where each thread costs about 135 us,
runs few threads that each do many elements).
"""

import functools
import sys

import numpy as np
from cuda.bindings.driver import CUresult
from numba import config, cuda
from numba.cuda.cudadrv.driver import CudaAPIError  # the simulator's module has the class too

from ..codegen import define
from ..memory import CachingAllocator, slice_view

if config.ENABLE_CUDASIM:
    THREADS = 32       # simulated threads are the cost; a grid-stride loop does the rest
    MAX_BLOCKS = 2
else:
    THREADS = 256
    MAX_BLOCKS = 4096  # 132 SMs x ~30 resident blocks; beyond that a grid-stride loop is as fast

INT32_MAX = 2**31 - 1


def launch(n):
    """(blocks, threads) for a grid-stride kernel over n items."""
    return max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS)), THREADS


def check_int32(*arrays):
    """Kernels index with int32 arithmetic (it is much faster); refuse arrays too large for it."""
    for a in arrays:
        if a is not None and a.size > INT32_MAX:
            raise ValueError(f"CUDA array of {a.size} elements exceeds the int32 indexing limit of {INT32_MAX}")


@cuda.jit(device=True, cache=True)
def divmod32(a, b):
    """(a // b, a % b) as int32, for 0 <= a < 2**31 and 0 < b, divided in unsigned 32 bits:
    numba's default int64 division is a ~70-instruction subroutine call on the GPU."""
    q = np.uint32(np.uint32(a) // np.uint32(b))
    return np.int32(q), np.int32(np.uint32(a) - q * np.uint32(b))


@cuda.jit(device=True, cache=True)
def unravel3(e, B, C):
    """(b, c, s) of flat index e in a C-contiguous (A, B, C) array."""
    a, rest = divmod32(e, B * C)
    b, c = divmod32(rest, C)
    return a, b, c


@cuda.jit(device=True, cache=True)
def unravel4(e, C, H, W):
    """(n, c, h, w) of flat index e in a C-contiguous (N, C, H, W) array."""
    n, rest = divmod32(e, C * H * W)
    c, rest = divmod32(rest, H * W)
    h, w = divmod32(rest, W)
    return n, c, h, w


def is_array(a):
    return bool(cuda.devicearray.is_cuda_ndarray(a))


# Host time matters here: a step flattens ~350 arrays and allocates ~46 (dev/cuda/host_overhead.py).
# On a GPU both build numba's DeviceNDArray directly, as its reshape and slicing do after
# their checks: a reshape costs ~12 us of host time, a slice + view + reshape ~40 us, one
# constructor ~8 us.
if config.ENABLE_CUDASIM:
    def flat(a):
        """A 1-D view of a C-contiguous device array."""
        return a.reshape(a.size)

    def _users(block):
        """A simulated device array wraps a numpy buffer that each of its views references."""
        return sys.getrefcount(block._ary)

    _view = slice_view

    def _fill_bytes(block, byte):
        block._ary.fill(byte)  # the wrapped numpy buffer: a simulated fill kernel would cost ~135 us per thread
else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import device_memset

    def flat(a):
        """A 1-D view of a C-contiguous device array (sharing its allocation, as reshape does)."""
        if not a.is_c_contiguous():
            raise ValueError(f"flat() needs a C-contiguous array, got strides {a.strides} for shape {a.shape}")
        return DeviceNDArray((a.size,), (a.dtype.itemsize,), a.dtype, gpu_data=a.gpu_data)

    def _users(block):
        """numba counts the owners of a device allocation; every slice of it takes one.

        Raises ReferenceError once a context reset (cuda.close()) has freed the allocation.
        """
        return block.gpu_data.refct

    def _view(block, nbytes, shape, dtype):
        """slice_view in one constructor: gpu_data.view() is what slicing takes (an owner of the block)."""
        strides, step = [], dtype.itemsize
        for s in reversed(shape):
            strides.append(step)
            step *= s
        return DeviceNDArray(shape, tuple(reversed(strides)), dtype, gpu_data=block.gpu_data.view(0, nbytes))

    def _fill_bytes(block, byte):
        device_memset(block, byte, block.nbytes)  # cuMemsetD8 on the default stream, ordered with the kernels



def is_out_of_memory(exc):
    """nbcnn.OutOfMemoryError (any MemoryError), or the driver's CUDA_ERROR_OUT_OF_MEMORY as numba raises it."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, CudaAPIError) and exc.code == CUresult.CUDA_ERROR_OUT_OF_MEMORY)


cache = CachingAllocator(allocate=lambda nbytes: cuda.device_array(nbytes, np.uint8),
                         users=_users, empty_uncached=cuda.device_array, view=_view, fill_bytes=_fill_bytes,
                         is_out_of_memory=is_out_of_memory)


def empty(shape, dtype):
    return cache.empty(shape, dtype)


def from_numpy(a):
    a = np.asarray(a, order="C")  # np.ascontiguousarray would make a 0-d array (a buffer's counter) 1-d
    out = empty(a.shape, a.dtype)
    if a.size:
        out.copy_to_device(a)  # pageable host memory: synchronous, and ordered after queued kernels
    return out


def to_numpy(a):
    return a.copy_to_host()


def memory_stats():
    return cache.stats()


def empty_cache():
    freed = cache.release()
    if not config.ENABLE_CUDASIM:
        # numba batches cuMemFree calls; flush them so the memory really returns to the driver
        cuda.current_context().deallocations.clear()
    return freed


def copy(src, dst):
    if not dst.size:
        return
    if src.is_c_contiguous():
        dst.copy_to_device(src)  # a device-to-device memcpy: nothing for a kernel to add
    else:
        strided_copy_kernel(src.ndim)[launch(dst.size)](src, flat(dst))


def _strided_copy_source(ndim):
    """The copy kernel for `ndim`-D arrays: dst (flat) [e] = src[the index of e in src's shape]."""
    unravel = "".join(f"        rest, i{d} = divmod32(rest, src.shape[{d}])\n" for d in range(ndim - 1, 0, -1))
    index = ", ".join(["rest"] + [f"i{d}" for d in range(1, ndim)])
    return (f"def strided_copy_{ndim}d(src, dst):\n"
            f"    for e in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):\n"
            f"        rest = e\n{unravel}"
            f"        dst[e] = src[{index}]\n")


@functools.cache
def strided_copy_kernel(ndim):
    """src (any strides, `ndim` axes) copied into flat dst, a thread per element: one kernel per rank (nbcnn.codegen)."""
    source = _strided_copy_source(ndim)
    return cuda.jit(cache=True)(define(source, f"strided_copy_{ndim}d", {"cuda": cuda, "divmod32": divmod32}, __name__))


def contiguous(a):
    if a.is_c_contiguous():
        return a
    check_int32(a)
    out = empty(a.shape, a.dtype)
    if out.size:
        strided_copy_kernel(a.ndim)[launch(out.size)](a, flat(out))
    return out


def reshape(a, shape):
    return a.reshape(tuple(int(s) for s in shape))
