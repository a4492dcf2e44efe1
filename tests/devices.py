"""Which backends the op suite runs under, and how large its shapes may be on each."""

import os

import pytest

import nbcnn

ON_GPU = os.environ.get("NBCNN_TEST_GPU", "0") == "1"


def _cuda_reason():
    try:
        nbcnn.get_backend("cuda")
    except ImportError:
        return "the CUDA backend is not implemented"
    except (RuntimeError, ValueError) as e:
        return str(e)
    return None


_CUDA_SKIP = _cuda_reason()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(_CUDA_SKIP is not None,
                                                                reason=_CUDA_SKIP or ""))]


def simulated(device):
    """True when `device` runs under numba's CUDA simulator (about 135 us per thread)."""
    return device == "cuda" and not ON_GPU


def scale(device, cpu, sim):
    """The size bound to draw from: small under the simulator, larger elsewhere."""
    return sim if simulated(device) else cpu
