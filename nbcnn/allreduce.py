"""Gradient averaging across data-parallel processes: flat fusion buffers, allreduced while backward runs.

Horovod's and PyTorch DDP's design. The parameters are cut, in the order backward produces
their gradients (the last layer's first), into buckets of about `bucket_bytes` (25 MB, DDP's
default). When every gradient of a bucket is ready, each is weighted by this process's share of
the global batch (n_local / n_global: the average over processes of per-process mean-loss
gradients is then the global batch's mean-loss gradient, also when the shards differ in size),
packed into the bucket's flat buffer, and the buffer's sum over all processes is started without
blocking; `finish` waits for them all and unpacks the sums into the gradients before the
optimiser step. Every process cuts the same buckets and starts them in the same order, as
MPI's (and NCCL's) collectives require.

Two transports move the buffers:
- HostMPI: MPI Iallreduce on numpy buffers in host memory: the CPU backend's own arrays, and
  CUDA arrays staged through the host (copy to host, reduce, copy back) where NCCL is missing.
- NCCL (nccl4py): allreduce of device buffers on the default stream, the one nbcnn's kernels
  run on. No GPU is at hand where nbcnn's tests run: there it runs under the CUDA simulator
  against a stand-in for nccl4py's calls (tests/fake_nccl); a GPU run with one process
  exercises the real library (docs/distributed.md).
"""

import os

import numpy as np

# PyTorch DDP's default bucket: large enough that per-message latency is amortised, small enough
# that the first bucket (AlexNet's fc8 and fc7 weights) is on the wire while backward goes on.
BUCKET_BYTES = 25 * 2**20


class Bucket:
    """Consecutive parameters (in backward order, one dtype) that share one flat buffer."""

    def __init__(self, params):
        self.params = params
        self.dtype = np.dtype(params[0].dtype)
        bounds = np.cumsum([0] + [int(np.prod(p.shape)) for p in params])
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.size = int(bounds[-1])
        self.buffer = None  # the transport's, made on first use
        self.ready = 0


def make_buckets(params, bucket_bytes=BUCKET_BYTES):
    """`params` (in the order their gradients become ready) cut into Buckets of about bucket_bytes,
    a new bucket where the dtype changes. A parameter larger than bucket_bytes has a bucket of its own."""
    buckets, current, nbytes = [], [], 0
    for p in params:
        size = int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize
        if current and (nbytes + size > bucket_bytes or np.dtype(p.dtype) != np.dtype(current[0].dtype)):
            buckets.append(Bucket(current))
            current, nbytes = [], 0
        current.append(p)
        nbytes += size
    if current:
        buckets.append(Bucket(current))
    return buckets


class GradientAverager:
    """Sums the weighted gradients of `params` over all processes, bucket by bucket, as backward makes them.

    Per step: begin(weight), ready(p) for each parameter as its gradient is complete (in the
    order of `params`), then finish(). `params` must be in the order backward completes them."""

    def __init__(self, params, transport, bucket_bytes=BUCKET_BYTES):
        self.buckets = make_buckets(list(params), bucket_bytes)
        self.bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self.transport = transport
        self.weight, self.next, self.handles = 1.0, 0, []

    def begin(self, weight):
        self.weight, self.next, self.handles = float(weight), 0, []
        for b in self.buckets:
            b.ready = 0

    def ready(self, p):
        """p's gradient is final for this step: start every complete bucket, in order."""
        bucket = self.bucket_of.get(id(p))
        if bucket is None:
            return
        bucket.ready += 1
        while self.next < len(self.buckets) and self.buckets[self.next].ready == len(self.buckets[self.next].params):
            self._start(self.buckets[self.next])

    def progress(self):
        """Let the started reductions advance (MPI progresses non-blocking collectives inside MPI calls)."""
        self.transport.progress(self.handles)

    def finish(self):
        """Start the buckets not yet started, wait for all, and write the sums into the gradients."""
        while self.next < len(self.buckets):
            self._start(self.buckets[self.next])
        self.transport.wait(self.handles)
        for b in self.buckets:
            self.transport.unpack(b)

    def _start(self, bucket):
        self.handles.append(self.transport.start(bucket, self.weight))
        self.next += 1


def _weight(p, weight):
    if weight != 1.0:
        p.backend.scale(p.grad, weight)


class HostMPI:
    """MPI Iallreduce of numpy buffers; CUDA gradients are staged through host memory."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.comm, self.MPI = comm, MPI

    def start(self, bucket, weight):
        if bucket.buffer is None:
            bucket.buffer = np.empty(bucket.size, bucket.dtype)
        for p, s in zip(bucket.params, bucket.slices):
            _weight(p, weight)
            g = p.grad.reshape(p.grad.size)
            if isinstance(g, np.ndarray):
                bucket.buffer[s] = g
            else:
                g.copy_to_host(bucket.buffer[s])
        return self.comm.Iallreduce(self.MPI.IN_PLACE, bucket.buffer, op=self.MPI.SUM)

    def progress(self, handles):
        if handles:
            self.MPI.Request.Testall(handles)

    def wait(self, handles):
        self.MPI.Request.Waitall(handles)

    def unpack(self, bucket):
        for p, s in zip(bucket.params, bucket.slices):
            g = p.grad.reshape(p.grad.size)
            if isinstance(g, np.ndarray):
                g[...] = bucket.buffer[s]
            else:
                g.copy_to_device(bucket.buffer[s])


class NCCL:
    """nccl4py allreduce of device buffers on the default stream; the communicator's unique id is
    broadcast from rank 0 over MPI. Where nbcnn's CI runs (no GPU), tests run it under the CUDA
    simulator against a stand-in for nccl4py (tests/fake_nccl); see the module docstring."""

    def __init__(self, comm, backend):
        try:
            from nccl.core import SUM, Communicator, get_unique_id
        except ImportError as exc:
            raise ImportError(f"NCCL was asked for (NBCNN_ALLREDUCE=nccl) but nccl4py does not import ({exc}): "
                              "pip install -e '.[cuda]'") from None
        uid = comm.bcast(get_unique_id() if comm.Get_rank() == 0 else None, root=0)
        self.nccl = Communicator.init(nranks=comm.Get_size(), rank=comm.Get_rank(), unique_id=uid)
        self.sum, self.backend = SUM, backend

    def start(self, bucket, weight):
        be = self.backend
        if bucket.buffer is None:
            bucket.buffer = be.empty((bucket.size,), bucket.dtype)
        for p, s in zip(bucket.params, bucket.slices):
            _weight(p, weight)
            be.copy(p.grad.reshape(p.grad.size), bucket.buffer[s])
        self.nccl.allreduce(bucket.buffer, bucket.buffer, self.sum, stream=0)

    def progress(self, handles):
        pass  # NCCL runs on the GPU stream by itself

    def wait(self, handles):
        pass  # unpack's copies run on the same stream, after the allreduce

    def unpack(self, bucket):
        for p, s in zip(bucket.params, bucket.slices):
            self.backend.copy(bucket.buffer[s], p.grad.reshape(p.grad.size))


def nccl_available():
    """True where nccl4py imports (with its CUDA 13 NCCL library) and CUDA is a real GPU, not
    numba's simulator. NBCNN_ALLREDUCE=mpi asks for the host-staged MPI path all the same,
    NBCNN_ALLREDUCE=nccl for NCCL (an error where nccl4py does not import)."""
    from numba import config
    choice = os.environ.get("NBCNN_ALLREDUCE", "").lower()
    if choice not in ("", "mpi", "nccl"):
        raise ValueError(f"NBCNN_ALLREDUCE must be 'nccl' or 'mpi', got {choice!r}")
    if choice:
        return choice == "nccl"
    if config.ENABLE_CUDASIM:
        return False
    try:
        import nccl.core  # noqa: F401
    except ImportError:
        return False
    return True
