"""The CPU backend: every op of nbcnn.backend.Backend as numba.njit(parallel=True) kernels."""

from ..backend import Backend, implement


class CPUBackend(Backend):
    name = "cpu"


implement(CPUBackend, __name__)
