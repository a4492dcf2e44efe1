"""Local response normalisation across channels on the CPU, one (n, c) plane per parallel iteration."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def lrn_forward_kernel(x, size, alpha, beta, k, y, scale):
    """scale = k + alpha/size * sum of x^2 over channels [c-size//2, c+(size-1)//2]; y = x * scale^-beta. x (N,C,HW)."""
    N, C, HW = x.shape
    lo = size // 2
    hi = (size - 1) // 2
    a = alpha / size
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        c0 = max(c - lo, 0)
        c1 = min(c + hi, C - 1)
        for s in range(HW):
            acc = 0.0
            for cc in range(c0, c1 + 1):
                v = x[n, cc, s]
                acc += v * v
            sc = k + a * acc
            scale[n, c, s] = sc
            y[n, c, s] = x[n, c, s] * sc ** -beta


@njit(parallel=True, cache=True)
def lrn_backward_kernel(x, y, scale, dy, size, alpha, beta, k, dx):
    """dx[c] = dy[c]*scale[c]^-beta - 2*alpha*beta/size * x[c] * sum over c' whose window holds c of dy[c']*y[c']/scale[c']."""
    N, C, HW = x.shape
    # channel c lies in the window of c' exactly when c' is in [c-(size-1)//2, c+size//2]
    lo = (size - 1) // 2
    hi = size // 2
    f = 2.0 * alpha * beta / size
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        c0 = max(c - lo, 0)
        c1 = min(c + hi, C - 1)
        for s in range(HW):
            acc = 0.0
            for cc in range(c0, c1 + 1):
                acc += dy[n, cc, s] * y[n, cc, s] / scale[n, cc, s]
            dx[n, c, s] = dy[n, c, s] * scale[n, c, s] ** -beta - f * x[n, c, s] * acc


def _flat(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def lrn_forward(x, size, alpha, beta, k, y, scale):
    lrn_forward_kernel(_flat(x), size, alpha, beta, k, _flat(y), _flat(scale))


def lrn_backward(x, y, scale, dy, size, alpha, beta, k, dx):
    lrn_backward_kernel(_flat(x), _flat(y), _flat(scale), _flat(dy), size, alpha, beta, k, _flat(dx))
