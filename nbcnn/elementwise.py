"""Element-wise ops, each defined once: a formula of kernel_math and the arrays it reads and writes.

An op applies its formula at every flat index i of its arrays (all of one size, any shape):

    writes[i] = formula(arguments)   each argument an array read at i, a scalar as given, or i itself

Both backends compile every spec into a kernel with their own loop over i (a prange on the
CPU, a grid-stride loop on CUDA: nbcnn/cpu/elementwise.py, nbcnn/cuda/elementwise.py). So
adding an element-wise op is a formula in kernel_math, a spec here and one line per backend.

A kernel is generated from its spec as source text, as numba's own @vectorize does: numba
cannot build a call with one argument per element of a tuple of arrays. For SGD it reads

    def sgd_step(w, g, v, lr, momentum, weight_decay):
        for i in <the backend's loop over w>:
            w[i], v[i] = formula(w[i], g[i], v[i], lr, momentum, weight_decay)
"""

import inspect
from typing import NamedTuple

import numpy as np

from . import kernel_math

INDEX = "i"  # a formula parameter of this name receives the flat index (dropout's hash needs it)


class Elementwise(NamedTuple):
    """An element-wise op: `name`, its `formula`, which of the formula's names are `arrays`, and
    which arrays it `writes` (the formula returns their new values, in this order).

    The op's parameters are the formula's (without i), then the written arrays it does not read.
    """

    name: str
    formula: object
    arrays: tuple
    writes: tuple

    @property
    def reads(self):
        """The formula's parameter names."""
        return tuple(inspect.signature(self.formula).parameters)

    @property
    def array_params(self):
        """(position, name) of the op's array parameters."""
        return tuple((i, name) for i, name in enumerate(self.params) if name in self.arrays)

    @property
    def params(self):
        """The op's parameters, in order."""
        return tuple(r for r in self.reads if r != INDEX) + tuple(w for w in self.writes if w not in self.reads)

    def source(self, loop):
        """The kernel's Python source; `loop` is the backend's loop header over {first}.shape[0]."""
        args = ", ".join(f"{r}[i]" if r in self.arrays else r for r in self.reads)
        targets = ", ".join(f"{w}[i]" for w in self.writes)
        return (f"def {self.name}({', '.join(self.params)}):\n"
                f"    {loop.format(first=self.arrays[0])}\n"
                f"        {targets} = formula({args})\n")


def named(op, spec, kernel):
    """`op` (a backend's launcher of `kernel`) named and documented as the spec's op; the kernel at op.kernel."""
    op.__name__ = op.__qualname__ = spec.name
    op.__doc__ = spec.formula.__doc__
    op.kernel = kernel  # tests/test_cuda_compiles.py compiles it for a real GPU
    return op


def check_contiguous(op, arrays, args, contiguous):
    """A ValueError naming the first array argument that is not C-contiguous (the kernels index flat
    memory); `arrays` holds (position, name) of the op's array parameters."""
    for i, name in arrays:
        if not contiguous(args[i]):
            raise ValueError(f"{op}: {name} must be C-contiguous, got a strided array of shape {tuple(args[i].shape)}")


def python_number(v):
    """A scalar argument as a Python int or float: one compiled kernel whatever scalar type a caller had."""
    return v.item() if isinstance(v, np.generic) else v


RELU_FORWARD = Elementwise("relu_forward", kernel_math.relu, arrays=("x", "y"), writes=("y",))
RELU_BACKWARD = Elementwise("relu_backward", kernel_math.relu_grad, arrays=("y", "dy", "dx"), writes=("dx",))
ADD = Elementwise("add", kernel_math.accumulate, arrays=("src", "dst"), writes=("dst",))
ADD_OUT = Elementwise("add_out", kernel_math.plus, arrays=("a", "b", "y"), writes=("y",))
FILL = Elementwise("fill", kernel_math.constant, arrays=("a",), writes=("a",))
SCALE = Elementwise("scale", kernel_math.scaled, arrays=("a",), writes=("a",))
DROPOUT = Elementwise("dropout", kernel_math.dropout, arrays=("x", "y"), writes=("y",))
SGD_STEP = Elementwise("sgd_step", kernel_math.sgd_update, arrays=("w", "g", "v"), writes=("w", "v"))

# -- optimisers: one kernel per parameter and step, its scalars computed on the host as torch.optim does ----------
ADAM_STEP = Elementwise("adam_step", kernel_math.adam_update, arrays=("w", "g", "m", "v"), writes=("w", "m", "v"))
AMSGRAD_STEP = Elementwise("amsgrad_step", kernel_math.amsgrad_update, arrays=("w", "g", "m", "v", "v_max"),
                           writes=("w", "m", "v", "v_max"))
# RMSprop keeps a grad_avg only when centered and a momentum_buffer only with momentum, as torch does: one kernel
# for each (centered, momentum) so that no state array is allocated or read that the rule does not use
RMSPROP_STEPS = {
    (False, False): Elementwise("rmsprop_step", kernel_math.rmsprop_update, arrays=("w", "g", "square_avg"),
                                writes=("w", "square_avg")),
    (True, False): Elementwise("rmsprop_centered_step", kernel_math.rmsprop_centered_update,
                               arrays=("w", "g", "square_avg", "grad_avg"), writes=("w", "square_avg", "grad_avg")),
    (False, True): Elementwise("rmsprop_momentum_step", kernel_math.rmsprop_momentum_update,
                               arrays=("w", "g", "square_avg", "momentum_buffer"),
                               writes=("w", "square_avg", "momentum_buffer")),
    (True, True): Elementwise("rmsprop_centered_momentum_step", kernel_math.rmsprop_centered_momentum_update,
                              arrays=("w", "g", "square_avg", "grad_avg", "momentum_buffer"),
                              writes=("w", "square_avg", "grad_avg", "momentum_buffer")),
}


def adam_scalars(step, lr, beta1, beta2, weight_decay, decoupled):
    """(step_size, bias_correction2_sqrt, l2, decay) of adam_update for update number `step` (1 first), in
    torch.optim.Adam's host arithmetic (_single_tensor_adam): its bias corrections, and its weight decay either
    added to the gradient (Adam: l2) or multiplying the weight (AdamW: decay = 1 - lr*wd)."""
    lr, beta1, beta2, weight_decay = float(lr), float(beta1), float(beta2), float(weight_decay)
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2 = 1 - beta2 ** float(step)
    l2, decay = (0.0, 1 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    return lr / bias_correction1, bias_correction2 ** 0.5, l2, decay


def adam_op(elementwise):
    """The contract's adam_step made with a backend's element-wise factory (one line per backend)."""
    adam, amsgrad = elementwise(ADAM_STEP), elementwise(AMSGRAD_STEP)

    def adam_step(w, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled):
        scalars = (float(beta1), float(beta2), float(eps)) + adam_scalars(step, lr, beta1, beta2, weight_decay, decoupled)
        if max_exp_avg_sq is None:
            adam(w, g, exp_avg, exp_avg_sq, *scalars)
        else:
            amsgrad(w, g, exp_avg, exp_avg_sq, max_exp_avg_sq, *scalars)

    adam_step.kernels = {"adam": adam.kernel, "amsgrad": amsgrad.kernel}  # for tests/test_cuda_compiles.py
    return adam_step


def dropout_op(elementwise):
    """The contract's dropout_forward(x, p, key, y, offset=0) made with a backend's element-wise factory.

    `offset` shifts the flat index the mask is drawn at: a process holding samples [s, s + n) of a
    global batch passes s * (elements per sample), so its mask is the global batch's (nbcnn.distributed)."""
    dropout = elementwise(DROPOUT)

    def dropout_forward(x, p, key, y, offset=0):
        dropout(x, p, key, int(offset), y)

    dropout_forward.kernel = dropout.kernel  # for tests/test_cuda_compiles.py
    return dropout_forward


def rmsprop_op(elementwise):
    """The contract's rmsprop_step made with a backend's element-wise factory: the kernel of its (centered, momentum)."""
    ops = {key: elementwise(spec) for key, spec in RMSPROP_STEPS.items()}

    def rmsprop_step(w, g, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum):
        state = [a for a in (grad_avg, momentum_buffer) if a is not None]
        scalars = (lr, alpha, eps, weight_decay) + ((momentum,) if momentum_buffer is not None else ())
        ops[grad_avg is not None, momentum_buffer is not None](w, g, square_avg, *state, *map(float, scalars))

    rmsprop_step.kernels = {spec.name: op.kernel for spec, op in zip(RMSPROP_STEPS.values(), ops.values())}
    return rmsprop_step
