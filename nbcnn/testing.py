"""Helpers to property-test an op on every backend: run it on each, compare the results.

    from nbcnn.testing import assert_backends_agree

    def op(be, x):                        # be: a Backend; x: an array of that backend
        y = be.empty(x.shape, x.dtype)
        be.relu_forward(x, y)
        return y                          # an array, a number, or a tuple/list of them

    assert_backends_agree(op, np.random.rand(2, 3).astype(np.float32))

Inputs are host numpy arrays (copied onto each backend; float and integer arrays keep
their dtype) or anything else (passed as is: ints, floats, None). Outputs are compared
against the first backend's: integer arrays exactly, float arrays within
    |got - ref| <= atol + rtol * max|ref|   (elementwise, scaled by the array's magnitude),
with NaN where the reference has NaN. `exact=True` asks for bitwise equality.

Why magnitude-relative: a backend may sum in another order (a tiled GPU GEMM vs BLAS), and
a sum's rounding error is relative to the size of its terms, not of the result, which can
cancel to near zero. float32 default rtol 1e-5 (~100 ulp: a K <= a few hundred dot product
of O(1) terms rounds to a few ulp of the largest term in practice); float64 1e-12.

Run such tests with NBCNN_POISON_MEMORY=1 in the environment before nbcnn is imported (as
nbcnn's own suite does): every `be.empty` array then starts as NaN, so a kernel that leaves
part of its output unwritten fails instead of passing on zeroed or stale memory.
"""

import numpy as np

from .array import to_numpy
from .backend import get_backend

DEFAULT_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _to_backend(backend, v):
    if isinstance(v, np.ndarray):
        return backend.from_numpy(np.asarray(v, order="C"))
    return v


def _to_host(backend, v):
    if isinstance(v, (tuple, list)):
        return [_to_host(backend, x) for x in v]
    if v is None or isinstance(v, (int, float, np.number, np.ndarray)):
        return v
    return backend.to_numpy(v)


def assert_close(got, ref, rtol=None, atol=0.0, exact=False, what="output"):
    """Assert that `got` agrees with the reference `ref` (the rule: see the module docstring).

    Either may be an nbcnn array of any backend, a host array or a number. A float result may
    be checked against a reference of another float dtype (a float64 reference for a float32
    kernel); rtol then defaults to the result's dtype.
    """
    got, ref = np.asarray(_to_host_any(got)), np.asarray(_to_host_any(ref))
    if got.shape != ref.shape:
        raise AssertionError(f"{what}: shape {got.shape} != reference {ref.shape}")
    floats = np.issubdtype(got.dtype, np.floating) and np.issubdtype(ref.dtype, np.floating)
    if got.dtype != ref.dtype and not floats and not (got.ndim == 0 and ref.ndim == 0):
        raise AssertionError(f"{what}: dtype {got.dtype} != reference {ref.dtype}")
    if exact or not floats:
        same = (got == ref) | (np.isnan(got) & np.isnan(ref)) if floats else got == ref
        if not np.all(same):
            bad = np.argwhere(~np.asarray(same))
            raise AssertionError(f"{what}: {len(bad)} elements differ, first at {tuple(bad[0])}: "
                                 f"{got[tuple(bad[0])]} != {ref[tuple(bad[0])]}")
        return
    if rtol is None:
        rtol = DEFAULT_RTOL.get(got.dtype, 1e-12)
    nan_ref, nan_got = np.isnan(ref), np.isnan(got)
    if np.any(nan_ref != nan_got):
        raise AssertionError(f"{what}: NaN in different places ({nan_got.sum()} vs reference {nan_ref.sum()})")
    finite = np.isfinite(ref)
    if np.any(got[~finite & ~nan_ref] != ref[~finite & ~nan_ref]):
        raise AssertionError(f"{what}: infinities differ")
    if not finite.any():
        return
    scale = float(np.max(np.abs(ref[finite])))
    err = np.abs(got[finite].astype(np.float64) - ref[finite])
    tol = atol + rtol * scale
    if err.size and err.max() > tol:
        raise AssertionError(f"{what}: max error {err.max():.3g} > tolerance {tol:.3g} "
                             f"(rtol {rtol:g} x magnitude {scale:.3g} + atol {atol:g})")


def _to_host_any(v):
    """A host copy of an nbcnn array of any backend; anything else as it is."""
    if isinstance(v, (np.ndarray, np.generic, int, float, list, tuple)):
        return v
    return to_numpy(v)


def run_on(device, op, *inputs):
    """op(backend, *inputs moved to `device`), its outputs as host numpy arrays/numbers."""
    backend = get_backend(device)
    return _to_host(backend, op(backend, *(_to_backend(backend, v) for v in inputs)))


def assert_backends_agree(op, *inputs, rtol=None, atol=0.0, exact=False, devices=("cpu", "cuda")):
    """Run op(backend, *arrays) on each device and assert the outputs agree with the first's.

    Returns the reference (first device's) outputs as host values.
    """
    ref = run_on(devices[0], op, *inputs)
    for device in devices[1:]:
        got = run_on(device, op, *inputs)
        refs, gots = (ref, got) if isinstance(ref, list) else ([ref], [got])
        if len(gots) != len(refs):
            raise AssertionError(f"{device}: {len(gots)} outputs, {devices[0]} gave {len(refs)}")
        for i, (g, r) in enumerate(zip(gots, refs)):
            if r is None and g is None:
                continue
            assert_close(g, r, rtol=rtol, atol=atol, exact=exact,
                         what=f"output {i} on {device} vs {devices[0]}")
    return ref
