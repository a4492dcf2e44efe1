"""The host side of a CUDA training step, measured without a GPU.

    python dev/cuda/host_overhead.py [--batch 128] [--arch alexnet|alexnet-small]

Runs nbcnn's real CUDA-backend host code (layers, workspaces, the caching allocator, launch
configuration) on numba-cuda's real device-array classes over fake addresses
(tests/fake_device.py), with kernel launches and host copies stubbed out. Prints the Python
time per step, the kernel launches per step by kernel, and the allocator requests.

Each launch itself costs host time on top of this: 30-50 us on the H100 machine, 114 us
with 12 arguments, so at least that for the 14-argument GEMM (docs/performance.md). The
GPU runs launches asynchronously, so host time is hidden while it stays below the GPU time
of a step (the loss read after the forward is the one synchronisation).
"""

import argparse
import collections
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "0":  # numba reads it at import: re-run with the simulator off
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import fake_device  # noqa: E402
import numpy as np  # noqa: E402
from numba.cuda import dispatcher  # noqa: E402
from numba.cuda.cudadrv import devicearray  # noqa: E402

fake_device.install()  # before nbcnn touches numba.cuda
LAUNCHES = collections.Counter()


class _StubLaunch:
    def __init__(self, kernel):
        self.kernel = kernel

    def __call__(self, *args):
        LAUNCHES[self.kernel.py_func.__name__] += 1


dispatcher.CUDADispatcher.__getitem__ = lambda self, config: _StubLaunch(self)
devicearray.DeviceNDArray.copy_to_device = lambda self, ary, stream=0: None
devicearray.DeviceNDArray.copy_to_host = lambda self, ary=None, stream=0: np.zeros(self.shape, self.dtype)

import nbcnn  # noqa: E402
import nbcnn.cuda  # noqa: E402
from nbcnn import models  # noqa: E402
from nbcnn.cuda import array, gemm  # noqa: E402

nbcnn.cuda._gpu_present = lambda: True
gemm._sm_count[:] = [132]  # an H100


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--arch", choices=["alexnet", "alexnet-small"], default="alexnet")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if args.arch == "alexnet":
        net, shape = models.alexnet(num_classes=1000), (3, 224, 224)
    else:
        net, shape = models.alexnet_small(in_channels=1, num_classes=10, input_size=28), (1, 28, 28)
    net = net.to("cuda")
    opt = nbcnn.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = np.zeros((args.batch,) + shape, np.float32)
    y = np.zeros(args.batch, np.int64)

    def step():
        loss, dlogits = nbcnn.softmax_cross_entropy(net(nbcnn.asarray(x, "cuda")), nbcnn.asarray(y, "cuda"))
        net.backward(dlogits, input_grad=False)
        opt.step()
        opt.zero_grad()

    step()
    step()  # the second step still meets the first step's activations alive in the layers
    LAUNCHES.clear()
    requests = array.cache._requests
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    ms = (time.perf_counter() - start) / args.steps * 1e3
    n = args.steps
    print(f"{args.arch}, batch {args.batch}: {ms:.1f} ms of host Python per step (launches stubbed), "
          f"{sum(LAUNCHES.values()) / n:.0f} launches, {(array.cache._requests - requests) / n:.0f} allocator requests")
    for name, count in LAUNCHES.most_common():
        print(f"  {name:32s}{count / n:5.0f}")


if __name__ == "__main__":
    main()
