"""Time one optimiser step over AlexNet's parameters (61M) for every nbcnn optimiser, and the
torch.optim step on the same shapes where torch is importable (its default implementation).

    python dev/optim_bench.py [--device cpu|cuda] [--repeat 5]

Prints the median ms per step and PyTorch/nbcnn (> 1: nbcnn is faster). The first step of each
optimiser (JIT compile, state allocation) is not timed.
"""

import argparse
import statistics
import time

import numpy as np

import nbcnn

CONFIGS = [("SGD", dict(lr=0.01, momentum=0.9, weight_decay=5e-4)), ("Adam", dict(lr=1e-3)),
           ("Adam", dict(lr=1e-3, amsgrad=True)), ("AdamW", dict(lr=1e-3)), ("RMSprop", dict(lr=1e-2)),
           ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True))]


def median_ms(step, repeat, sync=lambda: None):
    step()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    net = nbcnn.models.alexnet(num_classes=1000).to(args.device)
    shapes = [p.shape for p in net.parameters()]
    print(f"{sum(int(np.prod(s)) for s in shapes) / 1e6:.1f}M float32 parameters in {len(shapes)} arrays, "
          f"device {args.device}")
    try:
        import torch
        dev = "cuda" if args.device == "cuda" else "cpu"
        tparams = [torch.zeros(s, device=dev, requires_grad=True) for s in shapes]
        for t in tparams:
            t.grad = torch.randn(t.shape, device=dev)
        tsync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    except ImportError:
        torch = None
    first = net.parameters()[0]

    def sync():  # a copy back waits for the device's queued kernels
        nbcnn.to_numpy(first.data)
    for p in net.parameters():
        p.grad = nbcnn.asarray(np.random.default_rng(0).standard_normal(p.shape).astype(np.float32), args.device)
    ours = {}
    for name, kw in CONFIGS:  # all of nbcnn's first: torch's idle OpenMP threads spin on the same cores a while
        ours[name, str(kw)] = median_ms(getattr(nbcnn, name)(net.parameters(), **kw).step, args.repeat, sync)
    for name, kw in CONFIGS:
        ms = ours[name, str(kw)]
        line = f"{name:8s} {str(kw):50s} nbcnn {ms:8.1f} ms"
        if torch is not None:
            topt = getattr(torch.optim, name)(tparams, **kw)
            with torch.no_grad():
                theirs = median_ms(topt.step, args.repeat, tsync)
            line += f"   PyTorch {theirs:8.1f} ms   PyTorch/nbcnn {theirs / ms:5.2f}"
        print(line, flush=True)

if __name__ == "__main__":
    main()
