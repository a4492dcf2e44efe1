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
from nbcnn.models import alexnet, alexnet_small  # noqa: E402


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


def bench_step(world, device, batch, steps, say):
    nbcnn.manual_seed(0)
    model = alexnet_small(10, 1, 28).to(device)
    dp = distributed.DataParallel(model, world, log=say)
    opt = nbcnn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(world.rank)
    x = nbcnn.asarray(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), device)
    y = nbcnn.asarray(rng.integers(0, 10, batch), device)

    def step():
        dp.step(x, y)
        opt.step()

    step()  # compile
    world.barrier()
    t = median_time(step, steps)
    threads = os.environ.get("NUMBA_NUM_THREADS", "all")
    say(f"alexnet-small step at batch {batch} per process, global {batch * world.size}, "
        f"{world.size} process(es) x {threads} thread(s): {t * 1e3:.1f} ms, "
        f"{batch * world.size / t:.0f} samples/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    world = distributed.init()

    def say(msg):
        if world.is_root:
            print(msg, flush=True)

    if args.device == "cuda":
        world.select_gpu()
    if world.size > 1:
        bench_allreduce(world, args.device, args.repeat, say)
    bench_step(world, args.device, args.batch, args.steps, say)


if __name__ == "__main__":
    main()
