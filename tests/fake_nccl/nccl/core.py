"""A stand-in for nccl4py 0.6.0's `nccl.core`: the calls nbcnn/allreduce.py's NCCL transport makes,
with their signatures, checked as strictly as the real library checks them, and the sums done by MPI
through host memory. It lets tests/test_distributed.py run that transport under numba's CUDA
simulator, where no GPU (and so no NCCL) exists; a real GPU runs the real library
(scripts/gpu_check.sh dist).

Checked against the installed nccl4py 0.6.0: Communicator.init(nranks, rank, unique_id, config=None),
Communicator.allreduce(sendbuf, recvbuf, op, *, stream=None, config=None) with buffers exposing
__cuda_array_interface__ (or DLPack), op an NcclRedOp (SUM == 0), stream an int handle (0: the
default stream) or None; get_unique_id() -> UniqueId.
"""

import enum
import os

from mpi4py import MPI


class NcclRedOp(enum.IntEnum):
    SUM = 0


SUM = NcclRedOp.SUM
CALLS = {"allreduce": 0}


class NcclInvalid(Exception):
    pass


def is_device_array(buf):
    """What NCCL can read: an object with __cuda_array_interface__ (numba's device arrays), or under
    numba's simulator, which gives its arrays none, one of those."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    return hasattr(buf, "__cuda_array_interface__") or isinstance(buf, FakeCUDAArray)


class UniqueId:
    """NCCL's 128-byte bootstrap id: made by one rank, sent to the others (nbcnn: by MPI bcast)."""

    def __init__(self):
        self.bytes = os.urandom(128)


def get_unique_id(empty=False):
    return UniqueId()


class Communicator:
    def __init__(self, nranks, rank):
        self.nranks, self.rank = nranks, rank

    @classmethod
    def init(cls, nranks, rank, unique_id, config=None):
        world = MPI.COMM_WORLD
        if not isinstance(unique_id, UniqueId):
            raise NcclInvalid(f"unique_id must be a UniqueId, got {type(unique_id).__name__}")
        if len(set(world.allgather(unique_id.bytes))) != 1:
            raise NcclInvalid("the ranks were given different unique ids")
        if (nranks, rank) != (world.Get_size(), world.Get_rank()):
            raise NcclInvalid(f"nranks {nranks}, rank {rank}: not this job's {world.Get_size()}, {world.Get_rank()}")
        return cls(nranks, rank)

    def allreduce(self, sendbuf, recvbuf, op, *, stream=None, config=None):
        """recvbuf = the sum over ranks of sendbuf (in place when they are the same buffer)."""
        if not isinstance(op, NcclRedOp):
            raise NcclInvalid(f"op must be an NcclRedOp, got {op!r}")
        if not (stream is None or isinstance(stream, int)):
            raise NcclInvalid(f"stream must be a stream handle, got {stream!r}")
        for buf in (sendbuf, recvbuf):
            if not (is_device_array(buf) and buf.is_c_contiguous()):
                raise NcclInvalid(f"buffers must be contiguous device arrays, got {type(buf).__name__}")
        if sendbuf.shape != recvbuf.shape or sendbuf.dtype != recvbuf.dtype:
            raise NcclInvalid("sendbuf and recvbuf differ in count or dtype")
        host = sendbuf.copy_to_host()
        MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        recvbuf.copy_to_device(host)
        CALLS["allreduce"] += 1
