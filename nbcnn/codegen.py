"""Kernels written as source text: for the few whose shape depends on a count (arrays, axes).

numba types a call with a fixed list of arguments and an index with one integer per axis, so
a kernel over any number of arrays (nbcnn/elementwise.py) or axes (the CUDA strided copy) is
generated per count, as numba's own @vectorize does.
"""

import sys


def define(source, name, namespace, module):
    """The function `name` defined by `source`, as if written in `module` (a module's __name__),
    with `namespace` as its globals.

    Compiled under the file of `module`, the backend file that generates it: numba caches a
    function on disk only when its file exists, keyed by the function's name and bytecode and
    the file's stamp, and reloads it through its module; so generated kernels are cached like
    the hand-written ones.
    """
    namespace = {**namespace, "__name__": module}
    exec(compile(source, sys.modules[module].__file__, "exec"), namespace)
    return namespace[name]
