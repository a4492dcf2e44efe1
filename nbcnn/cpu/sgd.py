"""The fused SGD update on the CPU, over the flattened parameter."""

from numba import njit, prange


@njit(parallel=True, cache=True)
def sgd_kernel(w, g, v, lr, momentum, weight_decay):
    """g' = g + wd*w; v = momentum*v + g'; w -= lr*v (torch.optim.SGD, no dampening), flat."""
    for i in prange(w.shape[0]):
        vi = momentum * v[i] + (g[i] + weight_decay * w[i])
        v[i] = vi
        w[i] -= lr * vi


def sgd_step(w, g, v, lr, momentum, weight_decay):
    sgd_kernel(w.reshape(-1), g.reshape(-1), v.reshape(-1), lr, momentum, weight_decay)
