"""The CPU's element-wise kernels: each nbcnn.elementwise spec as a numba.njit(parallel=True) loop."""

from numba import njit, prange

from .. import elementwise as ew
from ..codegen import define

LOOP = "for i in prange({first}.shape[0]):"


def compile_kernel(spec):
    """The spec's kernel over flat arrays (nbcnn.codegen: cached on disk like the hand-written kernels)."""
    source = spec.source(LOOP)
    return njit(parallel=True, cache=True)(define(source, spec.name, {"formula": spec.formula, "prange": prange}, __name__))


def elementwise(spec):
    """The op of `spec`: arrays of any shape (C-contiguous, one size) flattened, scalars as Python numbers."""
    kernel = compile_kernel(spec)
    is_array = [name in spec.arrays for name in spec.params]
    arrays = spec.array_params

    def op(*args):
        ew.check_contiguous(spec.name, arrays, args, lambda a: a.flags.c_contiguous)  # else reshape would copy
        kernel(*(a.reshape(-1) if array else ew.python_number(a) for a, array in zip(args, is_array)))

    return ew.named(op, spec, kernel)


# The contract's element-wise array ops (the others have files of their own: relu.py, dropout.py, sgd.py).
fill = elementwise(ew.FILL)
add = elementwise(ew.ADD)
add_out = elementwise(ew.ADD_OUT)
scale = elementwise(ew.SCALE)
