"""ReLU on CUDA, over the flattened array."""

from numba import cuda

from .array import flat, launch


@cuda.jit(cache=True)
def relu_forward_kernel(x, y):
    """y = max(x, 0), flat; NaN stays NaN."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        v = x[i]
        y[i] = v if v > 0 or v != v else 0  # NaN passes through, as in PyTorch


@cuda.jit(cache=True)
def relu_backward_kernel(y, dy, dx):
    """dx = dy where y > 0 else 0, flat."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, y.shape[0], step):
        dx[i] = dy[i] if y[i] > 0 else 0


def relu_forward(x, y):
    if x.size:
        relu_forward_kernel[launch(x.size)](flat(x), flat(y))


def relu_backward(y, dy, dx):
    if y.size:
        relu_backward_kernel[launch(y.size)](flat(y), flat(dy), flat(dx))
