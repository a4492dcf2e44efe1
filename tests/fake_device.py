"""numba-cuda's real device arrays on fake device addresses: host-side GPU code without a GPU.

The simulator replaces numba-cuda's device arrays with numpy wrappers, so code that handles
device arrays on the host (flags, views, reference counts, the allocator) behaves
differently there than on a GPU. `install()`, in a process with NUMBA_ENABLE_CUDASIM=0,
makes `cuda.device_array` hand out numba's own DeviceNDArray over made-up addresses: slicing, views, reshapes and the counting of owners of an allocation are
numba-cuda's real code. Kernels and copies cannot run. Importing the module patches nothing
(a real-GPU test run imports it too); `run(code)` runs code after `install()` in a fresh
process with the simulator off.
"""

import contextlib
import math
import os
import subprocess
import sys

import numpy as np


def install():
    """Patch numba-cuda (simulator off) so `cuda.device_array` hands out real arrays on fake addresses."""
    from numba import config, cuda
    from numba.cuda.cudadrv import devicearray, devices, driver

    if config.ENABLE_CUDASIM:
        raise RuntimeError("fake_device needs NUMBA_ENABLE_CUDASIM=0 before numba is imported")
    devices._runtime.ensure_context = contextlib.nullcontext  # slicing asks for a context; there is no GPU
    os.environ.pop("NBCNN_POISON_MEMORY", None)  # poisoning is a memset, and nothing can run on fake addresses

    def device_array(shape, dtype=np.float64):
        """numba's memalloc: the context keeps the allocation, the array gets an owned reference to it."""
        shape = (shape,) if np.ndim(shape) == 0 else tuple(shape)
        dtype = np.dtype(dtype)
        nbytes = max(1, math.prod(shape) * dtype.itemsize)
        pointer = driver.binding.CUdeviceptr(_next_address[0])
        _next_address[0] += -(-nbytes // (1 << 20)) * (1 << 20)
        mem = driver.AutoFreePointer(None, pointer, nbytes, finalizer=None)
        allocations[int(pointer)] = mem
        strides = tuple(int(np.prod(shape[i + 1:])) * dtype.itemsize for i in range(len(shape)))
        return devicearray.DeviceNDArray(shape, strides, dtype, gpu_data=mem.own())

    cuda.device_array = device_array
    cuda.current_context = lambda: context


allocations = {}  # what a context holds; allocations.clear() is a context reset
_next_address = [1 << 40]


class _Deallocations:
    flushes = 0

    def clear(self):
        self.flushes += 1


class _Context:
    deallocations = _Deallocations()


context = _Context()


def address(a):
    return a.device_ctypes_pointer.value


def run(code):
    """Run `fake_device.install()` + code in a fresh process with the simulator off; returns its stdout."""
    tests = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0",
           "PYTHONPATH": os.pathsep.join([tests, root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", "import fake_device\nfake_device.install()\n" + code], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout
