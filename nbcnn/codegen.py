"""Kernels written as source text: for the few whose shape depends on a count (arrays, axes).

numba types a call with a fixed list of arguments and an index with one integer per axis, so
a kernel over any number of arrays (nbcnn/elementwise.py) or axes (the CUDA strided copy) is
generated per count, as numba's own @vectorize does.
"""

import hashlib
import inspect
import sys
import types


def define(source, name, namespace, module):
    """The function `name` defined by `source`, as if written in `module` (a module's __name__),
    with `namespace` as its globals.

    Compiled under the file of `module`, the backend file that generates it: numba caches a
    function on disk only when its file exists, and reloads it through its module. numba keys
    that cache by the function's qualified name, its bytecode and the stamp of that file, none
    of which changes when a function in `namespace` (an element-wise formula) does; so the
    qualified name carries a digest of the source and of every file the namespace's functions
    come from. Two specs of one name, or an edited formula, never share a cached kernel.
    """
    namespace = {**namespace, "__name__": module}
    exec(compile(source, sys.modules[module].__file__, "exec"), namespace)
    fn = namespace[name]
    fn.__qualname__ = f"{name}_{digest(source, namespace)}"
    return fn


def digest(source, namespace):
    """A short hash of `source` and of the source files of the functions it may call."""
    h = hashlib.sha256(source.encode())
    for path in sorted(source_files(namespace.values())):
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def source_files(values, depth=3):
    """The files that define the Python functions among `values` and, `depth` calls deep, the
    functions those name (a formula's helpers: nbcnn.random.keep_bit, kernel_math's rounding)."""
    files = set()
    for fn in values:
        if not isinstance(fn, types.FunctionType):
            continue
        path = inspect.getsourcefile(fn)
        if path is None:
            continue
        files.add(path)
        if depth:
            called = [fn.__globals__.get(name) for name in fn.__code__.co_names]
            files |= source_files(called, depth - 1)
    return files
