"""Data-parallel training across processes (mpiexec, srun): the world, rank 0's state, the step.

    world = distributed.init()                    # size 1 under plain python: no MPI needed
    world.select_gpu()                            # --device cuda: GPU local_rank of this node
    loader = Loader(train, transform, batch_size, shard=world.shard)   # batch_size per process
    dp = distributed.DataParallel(model, world)   # rank 0's parameters and buffers everywhere
    for batch in loader.train_batches(seed, epoch):
        stats = dp.step(x, labels)                # forward, backward, gradients averaged
        optimizer.step()

N processes at per-process batch B then compute what one process computes at batch N*B: the
loader gives each its contiguous part of the same global batch, augmented at the samples'
global positions, dropout draws its mask at those positions (random.default_generator.sample_offset),
and the gradients are averaged weighted by each shard's size (nbcnn.allreduce). Batch
normalisation is the exception: BatchNorm2d's statistics are each process's own batch's, as in
PyTorch DDP; nbcnn.SyncBatchNorm's are the global batch's (SyncBatchNorm.convert_sync_batchnorm
makes a model's batch norms such; DataParallel hands them its World on a communicator of their own).

A process whose exception reaches the top ends the whole job (MPI_Abort) right after printing
its traceback, instead of leaving the others waiting in a collective; under run(main), so does a
process that calls sys.exit with a non-zero code, unless every process exits with that code at
the same point (an AgreedExit: the trainer's stop on Ctrl-C).
"""

import os
import sys
import time
from typing import NamedTuple

import numpy as np

from . import allreduce
from .array import asarray, device_of, to_numpy
from .loss import softmax_cross_entropy
from .layers import SyncBatchNorm
from .module import Sequential, iter_modules
from .random import default_generator

# Set by the launchers: mpiexec (MPICH/Hydra: PMI_RANK, Open MPI: OMPI_COMM_WORLD_RANK), srun with
# PMI-2 or PMIx (PMI_RANK, PMIX_RANK). None set: plain `python`, one process, mpi4py never imported.
LAUNCH_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")

# seconds a failing process waits between writing its message and aborting the job (abort_job)
ABORT_PAUSE_S = 0.5


def launched():
    """True when an MPI launcher started this process."""
    return any(v in os.environ for v in LAUNCH_VARIABLES)


class World:
    """This process's place among the data-parallel ones: rank, size, and its rank on its node.

    comm is the mpi4py communicator of them all (None for one process without MPI)."""

    def __init__(self, comm=None):
        self.comm = comm
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
            return
        from mpi4py import MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # the processes sharing this machine's memory
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    @property
    def shard(self):
        """(rank, size): nbcnn.data.Loader's shard argument."""
        return self.rank, self.size

    @property
    def is_root(self):
        """Rank 0: the process that prints, writes metrics and checkpoints."""
        return self.rank == 0

    def select_gpu(self):
        """Make GPU number local_rank (modulo the GPUs this machine has) this process's device:
        call it before anything touches CUDA. Returns the device's index."""
        from numba import cuda
        index = self.local_rank % len(cuda.gpus)
        cuda.select_device(index)
        return index

    def sum(self, values):
        """The element-wise sum over all processes of a list of numbers (float64), on every process."""
        return self._allreduce(values, "SUM")

    def max(self, values):
        """The element-wise maximum over all processes of a list of numbers (float64), on every process."""
        return self._allreduce(values, "MAX")

    def _allreduce(self, values, op):
        """`values` as float64, reduced over all processes with MPI's operation named `op`."""
        values = np.asarray(values, dtype=np.float64)
        if self.comm is None:
            return values
        from mpi4py import MPI
        out = np.empty_like(values)
        self.comm.Allreduce(values, out, op=getattr(MPI, op))
        return out

    def allgather(self, array):
        """Every process's `array` (float64, of any backend) stacked in rank order, (P, *shape), on
        array's backend: staged through host memory (SyncBatchNorm's statistics, a few kB)."""
        host = np.ascontiguousarray(to_numpy(array), dtype=np.float64)
        if self.comm is None:
            return asarray(host[None], device_of(array))
        out = np.empty((self.size,) + host.shape)
        self.comm.Allgather(host, out)
        return asarray(out, device_of(array))

    def duplicate(self):
        """A World of the same processes on a communicator of its own (MPI_Comm_dup): its
        collectives never have to be ordered against the gradient buckets' (collective: every
        process calls it)."""
        return self if self.comm is None else World(self.comm.Dup())

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object), on every process."""
        return value if self.comm is None else self.comm.bcast(value, root=0)

    def barrier(self):
        if self.comm is not None:
            self.comm.Barrier()

    def abort(self, code=1):
        """End every process of the job now (MPI_Abort); the caller's process included."""
        if self.comm is not None:
            self.comm.Abort(code)
        raise SystemExit(code)


def init(abort_on_error=True):
    """The World of this process: MPI's COMM_WORLD when launched by mpiexec/srun (mpi4py needed),
    else one process. abort_on_error: an uncaught exception ends the whole job (see install_abort_hook)."""
    if not launched():
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("this process was started by an MPI launcher but mpi4py is not installed: "
                          "pip install -e '.[mpi]'") from None
    world = World(MPI.COMM_WORLD)
    if abort_on_error and world.size > 1:
        install_abort_hook(world.comm)
    return world


def install_abort_hook(comm):
    """On an uncaught exception: print it as Python does, then MPI_Abort the job, so the other
    processes end within seconds instead of waiting forever in their next collective."""
    previous = sys.excepthook

    def abort(kind, value, traceback):
        previous(kind, value, traceback)
        abort_job(comm, "failed")

    sys.excepthook = abort


class AgreedExit(int):
    """An exit code that every process of the job exits with at the same point, after a collective
    (the trainer's stop on Ctrl-C, which all processes agree on): run() lets the processes end
    with it instead of aborting the job. Compares equal to the plain code."""


def run(main):
    """main(), in a job of several processes ended as a whole (MPI_Abort) when main raises or calls
    sys.exit with a non-zero code that is not an AgreedExit: a process that just exits leaves the
    others waiting for it forever (MPICH's MPI_Finalize waits for them, they wait for it). A
    trainer's entry point."""
    try:
        return main()
    except SystemExit as exc:
        if exc.code in (None, 0) or isinstance(exc.code, AgreedExit) or not launched():
            raise
        reason = f"exited with {exc.code!r}"
    except BaseException:  # noqa: BLE001 - every way out of main must end the job
        if not launched():
            raise
        sys.excepthook(*sys.exc_info())  # prints; init()'s hook also aborts
        reason = "failed"
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        raise SystemExit(1)
    abort_job(comm, reason)


def abort_job(comm, reason):
    """Say why on stderr, then MPI_Abort every process of `comm`.

    The pause lets the launcher forward what this process wrote (its traceback) before the abort
    kills the processes: once in a loaded suite run, MPICH's mpiexec dropped a failing rank's
    message (tests/test_distributed.py's quick-failure test)."""
    sys.stderr.write(f"nbcnn.distributed: rank {comm.Get_rank()} {reason}; aborting all {comm.Get_size()} processes\n")
    sys.stderr.flush()
    time.sleep(ABORT_PAUSE_S)
    comm.Abort(1)


def broadcast_state(module, world):
    """Every process takes rank 0's parameters and buffers (state_dict), so none depends on
    seeding its initialisation the same, and rank 0's random generator (its seed and dropout
    counter: every process must draw the same dropout masks); staged through host memory, once."""
    if world.comm is None:
        return
    # np.array, not np.ascontiguousarray: that makes a 0-d buffer (num_batches_tracked) 1-d
    state = {k: np.array(v, order="C") for k, v in module.state_dict().items()}
    for key in sorted(state):
        world.comm.Bcast(state[key], root=0)
    module.load_state_dict(state)
    default_generator.set_state(world.comm.bcast(default_generator.get_state(), root=0))


def backward_order(module):
    """The modules whose backward DataParallel calls, in the order it calls them: a Sequential's
    children last first (recursively), any other module (a leaf, a Residual) as one."""
    if isinstance(module, Sequential):
        for child in reversed(module.modules):
            yield from backward_order(child)
    else:
        yield module


def make_transport(world, backend, log=print):
    """NCCL for CUDA arrays where nccl4py imports, else MPI on host buffers (said once in the log)."""
    if backend.name == "cuda":
        if allreduce.nccl_available():
            if world.is_root:
                log(f"nbcnn.distributed: gradients are averaged by NCCL (nccl4py) across {world.size} GPU(s)")
            return allreduce.NCCL(world.comm, backend)
        if world.is_root:
            log("nbcnn.distributed: gradients are averaged by MPI through host memory: nccl4py is not "
                "installed (pip install -e '.[cuda]'), or NBCNN_ALLREDUCE=mpi, or CUDA is simulated")
    return allreduce.HostMPI(world.comm)


class StepStats(NamedTuple):
    """A global batch's mean loss, its number of correct top-1 predictions, its images, and the
    images its loaders skipped as unreadable."""

    loss: float
    correct: int
    count: int
    unreadable: int = 0


class DataParallel:
    """One training step of `model` in `world`, its gradients averaged over the processes.

    Rank 0's parameters, buffers and random generator are broadcast at construction. step() leaves in every
    parameter's .grad the gradient of the GLOBAL batch's mean loss; the caller's optimiser step
    then changes every process's copy the same way."""

    def __init__(self, model, world, bucket_bytes=allreduce.BUCKET_BYTES, log=print):
        self.model, self.world = model, world
        broadcast_state(model, world)
        # the model's SyncBatchNorm layers without a world of their own gather over this one, on
        # a duplicate communicator, so their blocking allgathers need no order against the buckets'
        self.sync_bn = [m for m in iter_modules(model) if isinstance(m, SyncBatchNorm)]
        if world.comm is not None and any(m.process_group is None for m in self.sync_bn):
            bn_world = world.duplicate()
            for m in self.sync_bn:
                if m.process_group is None:
                    m.process_group = bn_world
        self.averager = None
        if world.comm is not None:
            params = [p for m in backward_order(model) for p in m.parameters() if p.requires_grad]
            transport = make_transport(world, params[0].backend, log)
            self.averager = allreduce.GradientAverager(params, transport, bucket_bytes)

    def step(self, x, labels, unreadable=0):
        """Forward and backward of this process's shard (x, labels on the model's backend; `unreadable`
        images of it were skipped). Returns the GLOBAL batch's StepStats (the same on every process)."""
        n = int(x.shape[0])
        counts = [n] if self.world.comm is None else self.world.comm.allgather(n)
        total, first = sum(counts), sum(counts[:self.world.rank])
        if 0 in counts and self.sync_bn and self.model.training:  # every process raises, none waits
            raise ValueError(f"SyncBatchNorm needs at least one image on every process, but this global batch of "
                             f"{total} gives {counts.count(0)} of {len(counts)} processes none: choose a batch "
                             "size and process count that leave every process a share of the last batch")
        self.model.zero_grad()
        loss, correct = 0.0, 0
        if self.averager is not None:
            self.averager.begin(n / total)
        if n:
            default_generator.sample_offset = first
            try:
                logits = self.model(x)
                loss, dlogits = softmax_cross_entropy(logits, labels)
                self._backward(dlogits)
            finally:
                default_generator.sample_offset = 0
            correct = int((to_numpy(logits).argmax(1) == to_numpy(labels)).sum())
        if self.averager is not None:
            self.averager.finish()  # an empty shard contributes its zero gradients
        loss_sum, correct, unreadable = self.world.sum([loss * n, correct, unreadable])
        return StepStats(float(loss_sum / total), int(correct), total, int(unreadable))

    def _backward(self, dy):
        """Sequential.backward, module by module, marking each module's parameters ready."""
        modules = list(backward_order(self.model))
        for i, m in enumerate(modules):
            dy = m.backward(dy, input_grad=i < len(modules) - 1)
            if self.averager is not None:
                for p in m.parameters():
                    self.averager.ready(p)
                self.averager.progress()


def train_epoch(dp, loader, optimizer, seed, epoch, device, start_step=0, after_step=None):
    """One epoch of data-parallel SGD from `start_step` on: dp.step and optimizer.step for each of
    the loader's (sharded) batches; after_step(step, stats) after each, where a scheduler steps.
    Returns (mean loss, top-1 error, images) of the epoch's global batches, the same on every process."""
    loss_sum, correct, count = 0.0, 0, 0
    for step, batch in enumerate(loader.train_batches(seed, epoch, start_step), start_step):
        stats = dp.step(asarray(batch.x, device), asarray(batch.y, device))
        optimizer.step()
        loss_sum, correct, count = loss_sum + stats.loss * stats.count, correct + stats.correct, count + stats.count
        if after_step is not None:
            after_step(step, stats)
    return loss_sum / max(count, 1), 1 - correct / max(count, 1), count
