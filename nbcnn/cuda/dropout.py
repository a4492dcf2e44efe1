"""Dropout on CUDA; the keep bit of element i is nbcnn.random.keep_bit(key, i), the CPU's own hash.

keep_bit and mix32 are numba register_jitable functions: numba-cuda's typing context
loads such third-party overloads from numba's registry and compiles them as CUDA device
functions, so one source serves njit, cuda.jit, the simulator and NumPy.
"""

from numba import cuda

from ..random import keep_bit, keep_threshold
from .array import flat, launch


@cuda.jit(cache=True)
def dropout_kernel(x, key, threshold, scale, y):
    """y[i] = float(x[i]) * scale if keep_bit(key, i) else 0, flat; scale = 1/(1-p). Forward and backward alike."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        y[i] = float(x[i]) * scale if keep_bit(key, i, threshold) else 0


def _run(x, p, key, y):
    if x.size:
        # float64 product, then rounded, as in the njit kernel (float(): also in the simulator).
        # key, threshold and i are int64 in the kernel, as in the njit kernel: the hash
        # masks products to 32 bits, so the bits are the same
        dropout_kernel[launch(x.size)](flat(x), int(key), keep_threshold(p), 1.0 / (1.0 - p), flat(y))


def dropout_forward(x, p, key, y):
    _run(x, p, key, y)


def dropout_backward(dy, p, key, dx):
    _run(dy, p, key, dx)
