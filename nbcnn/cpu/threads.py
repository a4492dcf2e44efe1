"""BLAS runs single-threaded inside the CPU backend; numba's threads supply the parallelism.

OpenBLAS's threads spin for a while after each call, and numba's threads spin between
parallel regions: on few cores the two pools starve each other (an AlexNet step went from
2.3 s to 4.1 s on 2 cores, a small-network step from 0.3 s to 20 s when other work ran).
So each op that calls BLAS runs with OpenBLAS limited to one thread (threadpoolctl, about
20 us per call) and numba's threads split the work instead: images in the convolutions,
blocks of rows or columns in the FC layers and matmul. The limit is lifted on
return, so the user's own numpy keeps its threads.
"""

import functools

import numba
from threadpoolctl import ThreadpoolController

_controller = None


def single_threaded_blas(fn):
    """Run `fn` with the BLAS libraries of this process limited to one thread."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _controller
        if _controller is None:
            import scipy.linalg.cython_blas  # noqa: F401  (numba's np.dot calls scipy's BLAS: load it first)
            _controller = ThreadpoolController()
        with _controller.limit(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


def num_threads():
    """How many pieces the CPU kernels split their work into: numba's thread count."""
    return numba.get_num_threads()
