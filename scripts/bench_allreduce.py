#!/usr/bin/env python3
"""Benchmark data-parallel training: the gradient allreduce of AlexNet and a training step.

    mpiexec -n N python scripts/bench_allreduce.py [--device cpu] [--batch 32] [--steps 5] [--repeat 5]

1. The allreduce of AlexNet's 61.1M float32 gradients (244 MB) as nbcnn.allreduce does it in a
   step (25 MB fusion buffers, weighted, packed, reduced, unpacked): the median time, the
   algorithm bandwidth (bytes / time) and the bus bandwidth (2 (N - 1) / N * bytes / time,
   nccl-tests' figure: what each link carried), on N processes; skipped on one.
2. A training step of alexnet-small (1x28x28, 10 classes) at --batch per process (DataParallel.step
   and SGD): the median step time and the global samples per second. Run it once on one process and
   once on N to get the scaling efficiency (throughput on N / throughput on 1, on the same cores).
   --net resnet20 (3x32x32, 19 batch norms) instead, --sync-bn with its batch norms SyncBatchNorm:
   the step against plain batch norm gives SyncBatchNorm's cost (two small allgathers a layer),
   and the time spent in those allgathers is printed. --no-allreduce skips part 1.
Only rank 0 prints.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nbcnn  # noqa: E402
from nbcnn import allreduce, distributed  # noqa: E402
from nbcnn.models import alexnet, alexnet_small, resnet20  # noqa: E402


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_allreduce(world, device, repeat, say):
    model = alexnet().to(device)
    dp = distributed.DataParallel(model, world, log=say)
    params = [p for m in distributed.backward_order(model) for p in m.parameters()]
    nbytes = sum(p.grad.size * p.grad.dtype.itemsize for p in params)

    def reduce():
        dp.averager.begin(1 / world.size)
        for p in params:
            dp.averager.ready(p)
        dp.averager.finish()

    reduce()  # first use allocates the buffers
    world.barrier()
    t = median_time(reduce, repeat)
    n = world.size
    say(f"allreduce of AlexNet's {sum(p.grad.size for p in params) / 1e6:.1f}M gradients "
        f"({nbytes / 1e6:.0f} MB, {len(dp.averager.buckets)} buffers of <= {allreduce.BUCKET_BYTES >> 20} MiB) "
        f"on {n} processes: {t * 1e3:.1f} ms, algorithm bandwidth {nbytes / t / 1e9:.2f} GB/s, "
        f"bus bandwidth {2 * (n - 1) / n * nbytes / t / 1e9:.2f} GB/s")


class TimedWorld:
    """A World whose allgathers (SyncBatchNorm's) add up their seconds and count."""

    def __init__(self, world):
        self.world, self.seconds, self.calls = world, 0.0, 0

    def __getattr__(self, name):
        return getattr(self.world, name)

    def allgather(self, array):
        t = time.perf_counter()
        out = self.world.allgather(array)
        self.seconds, self.calls = self.seconds + time.perf_counter() - t, self.calls + 1
        return out


def bench_step(world, device, batch, steps, say, net="alexnet-small", sync_bn=False):
    nbcnn.manual_seed(0)
    model, shape = (alexnet_small(10, 1, 28), (1, 28, 28)) if net == "alexnet-small" else (resnet20(10), (3, 32, 32))
    model.to(device)
    bn_world = None
    if sync_bn and world.size > 1:
        bn_world = TimedWorld(world.duplicate())
        nbcnn.SyncBatchNorm.convert_sync_batchnorm(model, bn_world)
    dp = distributed.DataParallel(model, world, log=say)
    opt = nbcnn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(world.rank)
    x = nbcnn.asarray(rng.standard_normal((batch, *shape)).astype(np.float32), device)
    y = nbcnn.asarray(rng.integers(0, 10, batch), device)

    def step():
        dp.step(x, y)
        opt.step()

    step()  # compile
    world.barrier()
    if bn_world is not None:
        bn_world.seconds, bn_world.calls = 0.0, 0
    t = median_time(step, steps)
    threads = os.environ.get("NUMBA_NUM_THREADS", "all")
    norm = "" if net == "alexnet-small" else " with SyncBatchNorm" if bn_world is not None else " with BatchNorm2d"
    say(f"{net}{norm} step at batch {batch} per process, global {batch * world.size}, "
        f"{world.size} process(es) x {threads} thread(s): {t * 1e3:.1f} ms, "
        f"{batch * world.size / t:.0f} samples/s")
    if bn_world is not None:
        calls = bn_world.calls / steps
        say(f"  SyncBatchNorm's allgathers (rank 0): {calls:.0f} a step, "
            f"{bn_world.seconds / steps * 1e3:.2f} ms a step (mean over {steps} steps; waiting for the other "
            "process included)")
        world.barrier()
        stats = nbcnn.asarray(np.zeros((64, 3)), device)  # the widest layer's triples
        t = median_time(lambda: [bn_world.world.allgather(stats) for _ in range(100)], 5) / 100
        say(f"  one allgather of 64 x 3 float64 back to back: {t * 1e6:.0f} us; x {calls:.0f} = "
            f"{t * calls * 1e3:.2f} ms a step")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--net", choices=("alexnet-small", "resnet20"), default="alexnet-small")
    ap.add_argument("--sync-bn", action="store_true", help="the step's batch norms SyncBatchNorm (resnet20)")
    ap.add_argument("--no-allreduce", action="store_true", help="skip the AlexNet allreduce")
    args = ap.parse_args()
    world = distributed.init()

    def say(msg):
        if world.is_root:
            print(msg, flush=True)

    if args.device == "cuda":
        world.select_gpu()
    if world.size > 1 and not args.no_allreduce:
        bench_allreduce(world, args.device, args.repeat, say)
    bench_step(world, args.device, args.batch, args.steps, say, args.net, args.sync_bn)


if __name__ == "__main__":
    main()
