"""The fused SGD update on CUDA, over the flattened parameter."""

from numba import config, cuda

from .array import flat, launch

if config.ENABLE_CUDASIM:
    def mul(a, b):
        return a * b

    def add(a, b):
        return a + b
else:  # products and sums rounded one by one, as on the CPU: NVVM fuses a * b + c into an FMA otherwise
    from numba.cuda.libdevice import dadd_rn as add, dmul_rn as mul


@cuda.jit(cache=True)
def sgd_kernel(w, g, v, lr, momentum, weight_decay):
    """g' = g + wd*w; v = momentum*v + g'; w -= lr*v (torch.optim.SGD, no dampening), flat."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, w.shape[0], step):
        # float(): float64 arithmetic as in the njit kernel, also in the simulator, where
        # numpy would keep float32 * python float in float32; mul/add: the CPU's bits exactly
        vi = add(mul(momentum, float(v[i])), add(float(g[i]), mul(weight_decay, float(w[i]))))
        v[i] = vi
        w[i] = add(float(w[i]), -mul(lr, vi))


def sgd_step(w, g, v, lr, momentum, weight_decay):
    if w.size:
        sgd_kernel[launch(w.size)](flat(w), flat(g), flat(v), float(lr), float(momentum), float(weight_decay))
