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
DROPOUT = Elementwise("dropout", kernel_math.dropout, arrays=("x", "y"), writes=("y",))
SGD_STEP = Elementwise("sgd_step", kernel_math.sgd_update, arrays=("w", "g", "v"), writes=("w", "v"))
