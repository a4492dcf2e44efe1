"""Moving user data into and out of a backend: nbcnn.asarray and nbcnn.to_numpy."""

import numpy as np

from .backend import backend_of, get_backend


def asarray(x, device="cpu", dtype=None):
    """`x` (array-like) as a C-contiguous array of `device`.

    Float data keeps float32/float64 (other float types become float32); integer data
    (labels) becomes int64. `dtype` forces one of those three.
    """
    backend = get_backend(device)
    if backend.is_array(x) and dtype is None and x.dtype in (np.float32, np.float64, np.int64):
        return backend.contiguous(x)
    if not isinstance(x, np.ndarray):
        try:
            x = backend_of(x).to_numpy(x)
        except TypeError:
            x = np.asarray(x)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64, np.int64):
            raise TypeError(f"nbcnn arrays are float32, float64 or int64 (labels), not {dtype}")
    elif x.dtype in (np.float32, np.float64):
        dtype = x.dtype
    elif np.issubdtype(x.dtype, np.floating):
        dtype = np.dtype(np.float32)
    elif np.issubdtype(x.dtype, np.integer):
        dtype = np.dtype(np.int64)
    else:
        raise TypeError(f"nbcnn.asarray takes float or integer data, got dtype {x.dtype}")
    return backend.from_numpy(np.ascontiguousarray(x, dtype=dtype))


def to_numpy(a):
    """A host numpy copy of an nbcnn array of any backend."""
    if isinstance(a, np.ndarray):
        return np.array(a, copy=True)
    return backend_of(a).to_numpy(a)


def device_of(a):
    """The device name ("cpu", "cuda") of an nbcnn array."""
    return backend_of(a).name
