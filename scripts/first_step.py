#!/usr/bin/env python3
"""One process from its start to its first finished training step: the child that
`scripts/bench.py --cold` runs (with an empty numba cache, then with the cache it filled, then
PyTorch's twin), so that imports, compiles and memory are those of a fresh command.

    python scripts/first_step.py --framework nbcnn|torch [--arch alexnet] [--batch 16] [--t0 TIME]

Prints one JSON line: seconds from --t0 (the parent's time.time() when it started this
process, so the interpreter's own start counts; default: this script's first line) to the end
of the imports, of the model's construction and of the first training step, then the median of
--steps more steps; resident memory in MiB before the first step (`rss_before_step`) and the
process's peak after all steps (`peak_rss`, /proc's VmHWM); for nbcnn, every numba
compilation of the run (`compiles`: the kernel's module.qualname, its seconds, and whether it
ran inside another kernel's compile, whose time then includes it). Kernels loaded from the disk
cache are no compilations and are not listed.
"""

import time

T_SCRIPT = time.time()

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_mib():
    """This process's resident memory now, MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib():
    """This process's peak resident memory, MiB: /proc's VmHWM. Not getrusage's ru_maxrss, which
    on Linux carries the parent's peak over fork and exec (a child of a 700 MiB bench reads 700)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB


class CompileTimes:
    """Records numba's "numba:compile" events: (kernel, seconds, nested) per compilation."""

    def __init__(self):
        from numba.core import event
        self.rows, self._starts = [], []

        class Listener(event.Listener):
            def on_start(_, ev):
                self._starts.append(time.perf_counter())

            def on_end(_, ev):
                seconds = time.perf_counter() - self._starts.pop()
                f = ev.data["dispatcher"].py_func
                self.rows.append(dict(kernel=f"{f.__module__}.{f.__qualname__}", seconds=seconds,
                                      nested=bool(self._starts)))

        event.register("numba:compile", Listener())


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", os.path.join(HERE, "bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--framework", choices=["nbcnn", "torch"], required=True)
    ap.add_argument("--arch", default="alexnet")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3, help="steps after the first (their median is reported)")
    ap.add_argument("--t0", type=float, default=T_SCRIPT)
    args = ap.parse_args(argv)

    if args.framework == "nbcnn":
        os.environ["NBCNN_BENCH_NO_TORCH"] = "1"  # keep torch's libraries out of nbcnn's memory
    compiles = CompileTimes() if args.framework == "nbcnn" else None
    bench = load_bench()  # imports numpy, nbcnn (and torch for --framework torch)
    import numpy as np
    import nbcnn
    t_import = time.time()

    classes, channels, size, _ = bench.ARCHS[args.arch]
    size = args.input_size or size
    nbcnn.manual_seed(0)
    net = bench.build(args.arch, classes, channels, size)
    x_host = np.random.default_rng(0).standard_normal((args.batch, channels, size, size)).astype(np.float32)
    labels_host = np.random.default_rng(1).integers(0, classes, args.batch)
    if args.framework == "nbcnn":
        x, labels = nbcnn.asarray(x_host), nbcnn.asarray(labels_host)
        opt = nbcnn.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            loss, dlogits = nbcnn.softmax_cross_entropy(net(x), labels)
            net.backward(dlogits, input_grad=False)
            opt.step()
            opt.zero_grad()
    else:
        torch, F = bench.torch, bench.F
        model = bench.torch_module(net)
        del net  # nbcnn's copy of the weights leaves before the baseline below
        x, labels = torch.from_numpy(x_host), torch.from_numpy(labels_host)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), labels).backward()
            opt.step()
    import gc
    gc.collect()
    rss_before = rss_mib()
    t_model = time.time()
    step()
    t_first = time.time()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps(dict(
        framework=args.framework, arch=args.arch, batch=args.batch,
        import_s=t_import - args.t0, model_s=t_model - args.t0, first_step_s=t_first - args.t0,
        first_step_only_s=t_first - t_model, step_s=statistics.median(times) if times else None,
        rss_before_step=rss_before, peak_rss=peak_rss_mib(),
        compiles=None if compiles is None else compiles.rows)))


if __name__ == "__main__":
    sys.exit(main())
