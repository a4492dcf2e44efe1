"""ReLU on the CPU, over the flattened array."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def relu_forward_kernel(x, y):
    """y = max(x, 0), flat; NaN stays NaN."""
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v if v > 0 or v != v else 0  # NaN passes through, as in PyTorch


@njit(parallel=True, cache=True)
def relu_backward_kernel(y, dy, dx):
    """dx = dy where y > 0 else 0, flat."""
    for i in prange(y.shape[0]):
        dx[i] = dy[i] if y[i] > 0 else 0


def relu_forward(x, y):
    relu_forward_kernel(x.reshape(-1), y.reshape(-1))


def relu_backward(y, dy, dx):
    relu_backward_kernel(y.reshape(-1), dy.reshape(-1), dx.reshape(-1))
