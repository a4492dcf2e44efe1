"""Local response normalisation across channels on the CPU, one (n, c) plane per parallel iteration."""

from numba import njit, prange

from .. import kernel_math

lrn_forward_at = kernel_math.inlined(kernel_math.lrn_forward_at)
lrn_backward_at = kernel_math.inlined(kernel_math.lrn_backward_at)


@njit(parallel=True, cache=True)
def lrn_forward_kernel(x, size, alpha, beta, k, y, scale):
    """scale = k + alpha/size * sum of x^2 over channels [c-size//2, c+(size-1)//2]; y = x * scale^-beta. x (N,C,HW)."""
    N, C, HW = x.shape
    for nc in prange(N * C):
        for s in range(HW):
            lrn_forward_at(x, nc // C, nc % C, s, size, alpha, beta, k, y, scale)


@njit(parallel=True, cache=True)
def lrn_backward_kernel(x, y, scale, dy, size, alpha, beta, dx):
    """dx = dL/dx of the LRN from dy, the forward's y and scale (nbcnn.kernel_math.lrn_backward_at)."""
    N, C, HW = x.shape
    for nc in prange(N * C):
        for s in range(HW):
            lrn_backward_at(x, y, scale, dy, nc // C, nc % C, s, size, alpha, beta, dx)


def _flat(a):
    return a.reshape(a.shape[0], a.shape[1], a.shape[2] * a.shape[3])


def lrn_forward(x, size, alpha, beta, k, y, scale):
    lrn_forward_kernel(_flat(x), size, alpha, beta, k, _flat(y), _flat(scale))


def lrn_backward(x, y, scale, dy, size, alpha, beta, dx):
    lrn_backward_kernel(_flat(x), _flat(y), _flat(scale), _flat(dy), size, alpha, beta, _flat(dx))
