#!/usr/bin/env python3
"""Benchmark nbcnn layer by layer and as a training step: the original AlexNet (224x224) by default.

    python scripts/bench.py --device cuda|cpu [--arch alexnet] [--batch 128] [--json out.json] [--cold]

--arch alexnet-small benches the default training run's network instead (1x28x28 in, 10
classes); resnet18 torchvision's ResNet-18 (3x224x224, 1000 classes); resnet20 He et al.'s
CIFAR ResNet-20 (3x32x32, 10 classes); mobilenet-small the small depthwise-separable net
(3x32x32, 10 classes).

Every row is one layer, in forward order, named by its state_dict prefix: layers nested
in Sequential and Residual blocks get a row each (layer1.0.conv1, ...), and a residual
block's sum its own row (layer1.0.add; its backward is the sum of the branches' input
gradients). Every row is a median over --repeat runs after warm-up (CUDA events on the GPU,
perf_counter on the CPU); the first call of each op (JIT compile) is reported apart.
Where PyTorch is importable, the same shapes run through it in this process (FP32,
TF32 off) and each row shows PyTorch time / nbcnn time (> 1: nbcnn is faster).

Conv and linear rows show their effective GFLOP/s (direct-convolution FLOPs of forward and
backward over their time) and that as a fraction of the SGEMM GFLOP/s (--gemm-size cubed,
through the same backend's matmul) measured in the same run. The header names the BLAS and
OpenMP libraries loaded and their thread counts (threadpoolctl).

--cold (CPU) adds the start-up and memory section: scripts/first_step.py in fresh processes,
timed from their launch to the end of their first training step, first with an empty numba
cache (a new NUMBA_CACHE_DIR), then with the cache that run filled, then PyTorch's twin network;
the seconds each kernel took to compile in the cold run; and each process's peak resident
memory (and what it held before its first step).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# (classes, input channels, input size, default CPU batch): ImageNet's; the default training
# run's (MNIST digits); CIFAR's. On CUDA the default batch is 128.
ARCHS = {"alexnet": (1000, 3, 224, 16), "alexnet-small": (10, 1, 28, 16), "resnet18": (1000, 3, 224, 16),
         "resnet20": (10, 3, 32, 128), "mobilenet-small": (10, 3, 32, 128)}

if __name__ == "__main__" and "--keep-openblas-env" not in sys.argv and any(v in os.environ for v in OPENBLAS_VARS):
    # These force OpenBLAS's slow Haswell kernels on this environment's AVX-512 cores; a
    # user's machine would not set them. They are read at import, hence the re-exec.
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
    env["NBCNN_BENCH_UNSET_OPENBLAS"] = ",".join(f"{v}={os.environ[v]}" for v in OPENBLAS_VARS if v in os.environ)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nbcnn  # noqa: E402
from nbcnn.backend import is_depthwise  # noqa: E402
from nbcnn.checkpoint import atomic_write  # noqa: E402
from nbcnn.models import ZeroPadShortcut, alexnet, alexnet_small, mobilenet_small, resnet18, resnet20  # noqa: E402

try:
    if os.environ.get("NBCNN_BENCH_NO_TORCH"):  # scripts/first_step.py measuring nbcnn's memory alone
        raise ImportError
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


# -- timing -------------------------------------------------------------------------------

class Timer:
    """Times a callable: CUDA events on the GPU, perf_counter on the CPU; milliseconds."""

    def __init__(self, device):
        self.cuda = device == "cuda"
        self.events = self.cuda and not simulated()  # the simulator's events record no time
        if self.cuda:
            from numba import cuda
            self.nb_cuda = cuda

    def __call__(self, fn, repeat):
        first_start = time.perf_counter()
        fn()
        self.sync()
        first = (time.perf_counter() - first_start) * 1e3
        fn()  # warm-up after compile
        times = []
        for _ in range(repeat):
            if self.events:
                start, end = self.nb_cuda.event(), self.nb_cuda.event()
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times), first

    def sync(self):
        if self.cuda:
            self.nb_cuda.synchronize()


class TorchTimer:
    def __init__(self, device):
        self.dev = torch.device("cuda" if device == "cuda" else "cpu")

    def __call__(self, fn, repeat):
        fn()
        fn()
        times = []
        for _ in range(repeat):
            if self.dev.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)


# -- FLOP counts --------------------------------------------------------------------------

def layer_flops(m, x_shape, y_shape):
    """Forward FLOPs of a layer (multiply-adds count 2); backward of conv/linear costs twice that.
    A grouped conv's output sees in_channels / groups input channels (depthwise: one)."""
    if isinstance(m, nbcnn.Conv2d):
        n, o, oh, ow = y_shape
        return 2.0 * n * o * oh * ow * (m.in_channels // m.groups) * m.kernel_size ** 2
    if isinstance(m, nbcnn.Linear):
        return 2.0 * x_shape[0] * m.in_features * m.out_features
    return 0.0


# -- PyTorch twins ------------------------------------------------------------------------

def torch_layer(m, params):
    """A function of the layer's input computing what nbcnn layer `m` computes, with its parameters
    `params` (torch tensors in m.parameters() order)."""
    if isinstance(m, nbcnn.Conv2d):
        bias = params[1] if m.bias is not None else None
        return lambda x: F.conv2d(x, params[0], bias, stride=m.stride, padding=m.padding, groups=m.groups)
    if isinstance(m, nbcnn.BatchNorm2d):
        weight, bias = (params[0], params[1]) if m.affine else (None, None)
        stats = [None if b is None else torch.from_numpy(nbcnn.to_numpy(b)).to(params[0].device if params else "cpu")
                 for b in (m.running_mean, m.running_var)]
        return lambda x: F.batch_norm(x, stats[0], stats[1], weight, bias, training=True,
                                      momentum=m.momentum if m.momentum is not None else 0.1, eps=m.eps)
    if isinstance(m, nbcnn.AvgPool2d):
        return lambda x: F.avg_pool2d(x, m.kernel_size, m.stride, m.padding, count_include_pad=m.count_include_pad)
    if isinstance(m, nbcnn.AdaptiveAvgPool2d):
        return lambda x: F.adaptive_avg_pool2d(x, m.output_size)
    if isinstance(m, nbcnn.Identity):
        return lambda x: x * 1  # a new tensor, so that autograd has an op to time
    if isinstance(m, ZeroPadShortcut):  # option A as PyTorch CIFAR ResNets write it
        return lambda x: F.pad(x[:, :, ::m.stride, ::m.stride], (0, 0, 0, 0, 0, m.out_channels - m.in_channels))
    if isinstance(m, nbcnn.Linear):
        return lambda x: F.linear(x, params[0], params[1])
    if isinstance(m, nbcnn.ReLU):
        return F.relu
    if isinstance(m, nbcnn.LocalResponseNorm):
        return lambda x: F.local_response_norm(x, m.size, m.alpha, m.beta, m.k)
    if isinstance(m, nbcnn.MaxPool2d):
        return lambda x: F.max_pool2d(x, m.kernel_size, m.stride, m.padding)
    if isinstance(m, nbcnn.Dropout):
        return lambda x: F.dropout(x, m.p, training=True)
    if isinstance(m, nbcnn.Flatten):
        return lambda x: x.flatten(1)
    raise TypeError(type(m).__name__)


def torch_rows(net, trace, x_host, classes, device, repeat):
    """Per-layer (forward ms, backward ms) and the training step in PyTorch, same shapes: each
    row's twin runs on the input nbcnn's layer got (`trace`, from `layer_trace`)."""
    timer = TorchTimer(device)
    dev = timer.dev
    rows = []
    for row in trace:
        m = row.module
        params = [] if m is None else [torch.from_numpy(nbcnn.to_numpy(p.data)).to(dev).requires_grad_()
                                       for p in m.parameters()]
        f = (lambda a, b: a + b) if m is None else torch_layer(m, params)
        xin = [torch.from_numpy(nbcnn.to_numpy(x)).to(dev).requires_grad_() for x in row.inputs]
        y = f(*xin)
        dy = torch.randn_like(y)
        fwd = timer(lambda: f(*xin), repeat)
        bwd = timer(lambda: torch.autograd.grad(y, xin + params, dy, retain_graph=True), repeat)
        rows.append((fwd, bwd))
    model = torch_module(net).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    labels = torch.randint(0, classes, (x_host.shape[0],), device=dev)
    xs = torch.from_numpy(x_host).to(dev)

    def step():
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(xs), labels).backward()
        opt.step()

    step_ms = timer(step, repeat)
    peak = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    return rows, step_ms, peak


def torch_module(m):
    """The torch.nn twin of nbcnn module `m` (containers recursively), holding copies of its state.
    ReLUs are in place, as torchvision's AlexNet and ResNet write them."""
    nn = torch.nn
    if isinstance(m, nbcnn.Sequential):
        return nn.Sequential(*[torch_module(c) for c in m.modules])
    if isinstance(m, nbcnn.Residual):
        return TorchResidual(*[None if c is None else torch_module(c) for c in (m.body, m.shortcut, m.after)])
    if isinstance(m, nbcnn.Conv2d):
        t = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, groups=m.groups,
                      bias=m.bias is not None)
    elif isinstance(m, nbcnn.Linear):
        t = nn.Linear(m.in_features, m.out_features)
    elif isinstance(m, nbcnn.BatchNorm2d):
        t = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    else:
        return {nbcnn.ReLU: lambda: nn.ReLU(inplace=True), nbcnn.Flatten: lambda: nn.Flatten(),
                nbcnn.Dropout: lambda: nn.Dropout(m.p),
                nbcnn.MaxPool2d: lambda: nn.MaxPool2d(m.kernel_size, m.stride, m.padding),
                nbcnn.AvgPool2d: lambda: nn.AvgPool2d(m.kernel_size, m.stride, m.padding,
                                                      count_include_pad=m.count_include_pad),
                nbcnn.AdaptiveAvgPool2d: lambda: nn.AdaptiveAvgPool2d(m.output_size),
                nbcnn.Identity: lambda: nn.Identity(),
                ZeroPadShortcut: lambda: TorchFunction(torch_layer(m, [])),
                nbcnn.LocalResponseNorm: lambda: nn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k)}[type(m)]()
    t.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    return t


if torch is not None:
    class TorchResidual(torch.nn.Module):
        """after(body(x) + shortcut(x)), as nbcnn.Residual (and torchvision's BasicBlock)."""

        def __init__(self, body, shortcut, after):
            super().__init__()
            self.body, self.shortcut, self.after = body, shortcut, after

        def forward(self, x):
            y = self.body(x) + (x if self.shortcut is None else self.shortcut(x))
            return y if self.after is None else self.after(y)

    class TorchFunction(torch.nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f(x)


def torch_sgemm_tflops(device, n, repeat):
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    ms = TorchTimer(device)(lambda: a @ b, repeat)
    return 2.0 * n ** 3 / (ms * 1e-3) / 1e12


# -- nbcnn --------------------------------------------------------------------------------

class TraceRow:
    """One computing step of a forward: a layer (`module`) or a residual sum (module None, two
    inputs), its name (the state_dict prefix; `<block>.add` for a sum), inputs and output."""

    def __init__(self, name, module, inputs, output):
        self.name, self.module, self.inputs, self.output = name, module, inputs, output

    @property
    def kind(self):
        return "add" if self.module is None else type(self.module).__name__


def layer_trace(m, x, backend, name=""):
    """Run `m` forward on x one layer at a time: (rows, output). Sequential runs its children in
    order; Residual its body, its shortcut (the identity when None), the sum, then `after`, as
    Residual.forward does. Any other module is a layer: one row."""
    if isinstance(m, nbcnn.Sequential):
        rows = []
        for child_name, child in m.named_children():
            more, x = layer_trace(child, x, backend, f"{name}{child_name}.")
            rows += more
        return rows, x
    if isinstance(m, nbcnn.Residual):
        branches = []
        for part in ("body", "shortcut"):
            module, inline = m.parts[part]
            prefix = name if inline else f"{name}{part}."
            branches.append(([], x) if module is None else layer_trace(module, x, backend, prefix))
        (rows_a, a), (rows_b, b) = branches
        y = backend.empty(a.shape, a.dtype)
        backend.add_out(a, b, y)
        rows = rows_a + rows_b + [TraceRow(f"{name}add", None, [a, b], y)]
        if m.after is not None:
            more, y = layer_trace(m.after, y, backend, f"{name}after.")
            rows += more
        return rows, y
    y = m(x)
    return [TraceRow(name.rstrip("."), m, [x], y)], y


def nbcnn_rows(trace, backend, timer, repeat):
    rows = []
    for row in trace:
        m, y = row.module, row.output
        dy = nbcnn.asarray(np.random.default_rng(0).standard_normal(y.shape).astype(np.float32), backend.name)
        if m is None:  # a residual sum: forward y = a + b, backward dx = da + db, one add_out each
            a, b = row.inputs
            out = backend.empty(y.shape, y.dtype)
            fwd, fwd_first = timer(lambda: backend.add_out(a, b, out), repeat)
            bwd, bwd_first = timer(lambda: backend.add_out(dy, a, out), repeat)
            flops = 0.0
        else:
            x = row.inputs[0]
            fwd, fwd_first = timer(lambda: m(x), repeat)
            bwd, bwd_first = timer(lambda: m.backward(dy), repeat)
            flops = layer_flops(m, x.shape, y.shape)
        rows.append(dict(name=row.name, layer=row.kind, in_shape=list(row.inputs[0].shape), out_shape=list(y.shape),
                         fwd_ms=fwd, bwd_ms=bwd, compile_ms=max(fwd_first - fwd, 0) + max(bwd_first - bwd, 0),
                         flops=flops))
    return rows


def gemm_tflops(backend, timer, m, n, k, repeat):
    rng = np.random.default_rng(0)
    a = nbcnn.asarray(rng.standard_normal((m, k)).astype(np.float32), backend.name)
    b = nbcnn.asarray(rng.standard_normal((k, n)).astype(np.float32), backend.name)
    c = backend.empty((m, n), np.float32)
    ms, _ = timer(lambda: backend.matmul(a, b, c), repeat)
    return 2.0 * m * n * k / (ms * 1e-3) / 1e12


def gemm_shapes(trace):
    """(name, M, N, K) of the distinct forward GEMMs of the traced layers: conv per image and
    group (depthwise convs run direct kernels, no GEMM), linear per batch."""
    shapes = []
    for row in trace:
        m, y = row.module, row.output
        if isinstance(m, nbcnn.Conv2d) and not is_depthwise(m.in_channels, m.groups):
            g = m.groups
            shapes.append((f"conv {m.out_channels}x{m.in_channels}x{m.kernel_size}^2" + (f"/g{g}" if g > 1 else ""),
                           m.out_channels // g, y.shape[2] * y.shape[3], m.in_channels // g * m.kernel_size ** 2))
        elif isinstance(m, nbcnn.Linear):
            shapes.append((f"fc {m.out_features}x{m.in_features}", y.shape[0], m.out_features, m.in_features))
    return list(dict.fromkeys(shapes))  # ResNet repeats its shapes: each once, in order


def build(arch, classes, channels, input_size):
    """The network of --arch (the builders are looked up when called: tests swap them)."""
    if arch in ("alexnet", "alexnet-small"):
        make = alexnet if arch == "alexnet" else alexnet_small
        return make(num_classes=classes, in_channels=channels, input_size=input_size)
    make = {"resnet18": resnet18, "resnet20": resnet20, "mobilenet-small": mobilenet_small}[arch]
    return make(num_classes=classes, in_channels=channels)


def threadpools():
    """The BLAS and OpenMP libraries loaded in this process (threadpoolctl): one line each."""
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba's gemm calls: load it before asking)
    from threadpoolctl import threadpool_info
    return [f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture') or p.get('threading_layer') or '-'}, "
            f"{p.get('num_threads')} threads) {os.sep.join(p.get('filepath', '').split(os.sep)[-2:])}"
            + ("  <- numba's gemm (scipy.linalg.cython_blas)" if "scipy.libs" in p.get("filepath", "") else "")
            for p in threadpool_info()]


def first_step_run(framework, arch, batch, input_size, cache_dir=None):
    """scripts/first_step.py in a new process (its JSON as a dict); cache_dir: its NUMBA_CACHE_DIR
    (None: this process's)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "first_step.py"),
           "--framework", framework, "--arch", arch, "--batch", str(batch), "--input-size", str(input_size),
           "--t0", repr(time.time())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"first_step.py --framework {framework} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_table(compiles):
    """Per kernel (top-level compilations only: nested ones are inside their caller's time): total
    seconds and count, costliest first."""
    by_kernel = {}
    for c in compiles:
        if not c["nested"]:
            s, n = by_kernel.get(c["kernel"], (0.0, 0))
            by_kernel[c["kernel"]] = (s + c["seconds"], n + 1)
    return sorted(((k, s, n) for k, (s, n) in by_kernel.items()), key=lambda r: -r[1])


def startup_section(arch, batch, input_size, use_torch, cache_dir=None):
    """Runs first_step.py cold (an empty numba cache: a new temporary one, or `cache_dir`, which
    must not exist yet), warm (the cache it filled) and PyTorch's twin; prints and returns the
    start-up times, compile costs and peak memory."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="nbcnn-cold-cache-") as tmp:
        cache = cache_dir or os.path.join(tmp, "numba")
        if os.path.exists(cache):
            raise ValueError(f"startup_section: the cold run's cache {cache} must not exist yet")
        runs["cold"] = first_step_run("nbcnn", arch, batch, input_size, cache)
        runs["warm"] = first_step_run("nbcnn", arch, batch, input_size, cache)
    if use_torch:
        runs["torch"] = first_step_run("torch", arch, batch, input_size)
    print("start-up (command to end of the first training step, fresh processes):")
    for name, r in runs.items():
        what = {"cold": "nbcnn, empty numba cache", "warm": "nbcnn, warm numba cache", "torch": "PyTorch"}[name]
        print(f"  {what:<26} {r['first_step_s']:7.2f} s (imports {r['import_s']:.2f} s, model {r['model_s'] - r['import_s']:.2f} s, "
              f"first step {r['first_step_only_s']:.2f} s; later steps {r['step_s'] * 1e3:.0f} ms); "
              f"peak RSS {r['peak_rss']:.0f} MiB ({r['rss_before_step']:.0f} before the first step)")
    table = compile_table(runs["cold"]["compiles"])
    print(f"  compile, cold run: {len(table)} kernels, {sum(s for _, s, _ in table):.1f} s; costliest:")
    for kernel, s, n in table[:12]:
        print(f"    {s:6.2f} s  {kernel}" + (f" ({n} signatures)" if n > 1 else ""))
    if use_torch:
        nb = runs["warm"]
        print(f"  peak RSS nbcnn/PyTorch: {nb['peak_rss'] / runs['torch']['peak_rss']:.2f}; growth from before the first "
              f"step: nbcnn {nb['peak_rss'] - nb['rss_before_step']:.0f} MiB, "
              f"PyTorch {runs['torch']['peak_rss'] - runs['torch']['rss_before_step']:.0f} MiB")
    return runs


def simulated():
    """True when numba.cuda is the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""
    from numba import config
    return bool(config.ENABLE_CUDASIM)


def device_memory_used():
    """MiB in use on the GPU by the driver's count (None under the simulator, which has no count)."""
    from numba import cuda
    if simulated():
        return None
    free, total = cuda.current_context().get_memory_info()
    return (total - free) / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--arch", choices=list(ARCHS), default="alexnet")
    ap.add_argument("--batch", type=int, default=None,
                    help="default: 128 on cuda; on cpu 16 (alexnet, alexnet-small, resnet18) or 128 (resnet20, mobilenet-small)")
    ap.add_argument("--input-size", type=int, default=None,
                    help="default: 224 for alexnet and resnet18, 28 for alexnet-small, 32 for resnet20 and mobilenet-small")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per row (default 20 cuda, 3 cpu)")
    ap.add_argument("--gemm-size", type=int, default=4096)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--cold", action="store_true",
                    help="CPU: also time fresh processes to their first step (empty and warm numba cache) "
                         "and compare their peak memory with PyTorch's")
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE as set (they are unset by default)")
    args = ap.parse_args(argv)
    classes, channels, size, cpu_batch = ARCHS[args.arch]
    batch = args.batch or (128 if args.device == "cuda" else cpu_batch)
    args.input_size = args.input_size or size
    repeat = args.repeat or (20 if args.device == "cuda" else 3)
    use_torch = torch is not None and not args.no_torch and not (args.device == "cuda" and simulated())
    if use_torch:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    try:
        backend = nbcnn.get_backend(args.device)
    except (RuntimeError, ValueError) as e:
        sys.exit(f"bench.py: {e}")
    print(f"nbcnn bench: {args.arch} device={args.device} batch={batch} input={args.input_size} repeat={repeat} "
          f"python={platform.python_version()} machine={platform.machine()} cores={os.cpu_count()}")
    unset = os.environ.get("NBCNN_BENCH_UNSET_OPENBLAS")
    if args.device == "cpu":
        print(f"OpenBLAS env: {'unset for this run (' + unset + ')' if unset else 'not set' if not any(v in os.environ for v in OPENBLAS_VARS) else 'kept as set'}")
        pools = threadpools()
        import numba
        print(f"numba threads: {numba.get_num_threads()}; thread pools (BLAS runs single-threaded inside nbcnn's ops):")
        for line in pools:
            print(f"  {line}")
    else:
        pools = None
    gemm_width = None
    if args.device == "cuda":
        from nbcnn.cuda.gemm import GEMM_WIDTH as gemm_width
        print(f"GEMM pack width: {gemm_width} (NBCNN_GEMM_WIDTH picks 1, 2 or 4)")
    print(f"PyTorch: {torch.__version__ + ' (FP32, TF32 off)' if use_torch else 'not available'}")

    startup = None  # first, while this process is still small and idle
    if args.cold:
        if args.device != "cpu":
            print("--cold: start-up and memory are measured on the CPU only (skipped)")
        else:
            startup = startup_section(args.arch, batch, args.input_size, use_torch)

    nbcnn.manual_seed(0)
    net = build(args.arch, classes, channels, args.input_size).to(args.device)
    timer = Timer(args.device)
    x_host = np.random.default_rng(0).standard_normal((batch, channels, args.input_size, args.input_size)).astype(np.float32)
    x = nbcnn.asarray(x_host, args.device)
    trace, _ = layer_trace(net, x, backend)
    rows = nbcnn_rows(trace, backend, timer, repeat)
    if use_torch:
        trows, torch_step, torch_peak = torch_rows(net, trace, x_host, classes, args.device, repeat)
        for r, (tf, tb) in zip(rows, trows):
            r["torch_fwd_ms"], r["torch_bwd_ms"] = tf, tb

    labels = nbcnn.asarray(np.random.default_rng(1).integers(0, classes, batch), args.device)
    opt = nbcnn.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    net.zero_grad()  # the per-layer rows left random gradients behind
    backend.empty_cache()  # and cached blocks of their own shapes: keep them out of the step's peak

    def step():
        loss, dlogits = nbcnn.softmax_cross_entropy(net(x), labels)
        net.backward(dlogits, input_grad=False)  # as in PyTorch, where the input needs no grad
        opt.step()
        opt.zero_grad()

    mem_before = device_memory_used() if args.device == "cuda" else None
    step_ms, step_first = timer(step, repeat)
    mem_after = device_memory_used() if args.device == "cuda" else None
    blocks_before = backend.memory_stats()["allocations"]
    for _ in range(10):
        step()
    timer.sync()
    mem_after10 = device_memory_used() if args.device == "cuda" else None
    cache = backend.memory_stats()
    new_blocks = cache["allocations"] - blocks_before

    # SGEMM before the table: each conv/linear row shows its GFLOP/s as a fraction of it
    n = args.gemm_size
    sgemm = gemm_tflops(backend, timer, n, n, n, max(3, repeat // 4))
    torch_sgemm = torch_sgemm_tflops(args.device, n, max(3, repeat // 4)) if use_torch else None

    # -- table ---------------------------------------------------------------------------
    width = max(20, max(len(f"{r['name']} {r['layer']}") for r in rows) + 4)
    hdr = f"{'layer':<{width}}{'out shape':<22}{'fwd ms':>9}{'bwd ms':>9}{'GFLOP/s':>9}{'of SGEMM':>9}{'compile ms':>11}"
    if use_torch:
        hdr += f"{'torch f+b':>10}{'torch/nb':>9}"
    print(hdr)
    for i, r in enumerate(rows):
        total = r["fwd_ms"] + r["bwd_ms"]
        gflops = 3 * r["flops"] / (total * 1e-3) / 1e9 if r["flops"] else float("nan")
        label = r["layer"] if r["name"] == str(i) else f"{r['name']} {r['layer']}"  # AlexNet's are numbered
        line = (f"{i:>2} {label:<{width - 3}}{str(tuple(r['out_shape'])):<22}{r['fwd_ms']:>9.2f}{r['bwd_ms']:>9.2f}"
                f"{gflops:>9.1f}{gflops / (sgemm * 1e3):>9.2f}{r['compile_ms']:>11.0f}")
        r["gflops"] = None if not r["flops"] else gflops
        r["sgemm_fraction"] = None if not r["flops"] else gflops / (sgemm * 1e3)
        if use_torch:
            tt = r["torch_fwd_ms"] + r["torch_bwd_ms"]
            r["torch_over_nbcnn"] = tt / total
            line += f"{tt:>10.2f}{tt / total:>9.2f}"
        print(line)
    torch_step_ms = torch_step if use_torch else None
    ratio = torch_step_ms / step_ms if use_torch else None
    print(f"train step: nbcnn {step_ms:.1f} ms ({batch / step_ms * 1e3:.0f} images/s), first step {step_first:.0f} ms"
          + (f"; PyTorch {torch_step_ms:.1f} ms, PyTorch/nbcnn = {ratio:.2f}" if use_torch else ""))
    if mem_before is not None:
        print(f"GPU memory in use: {mem_before:.0f} MiB before the timed steps, {mem_after:.0f} after, "
              f"{mem_after10:.0f} after 10 more (steady state: equal)"
              + (f"; PyTorch peak allocated {torch_peak:.0f} MiB" if use_torch else ""))
    print(f"caching allocator: {cache['reserved_bytes'] / 2**20:.0f} MiB reserved (nbcnn's peak), "
          f"{new_blocks} blocks allocated during 10 steady-state steps (expected: 0)")

    print(f"SGEMM {n}^3: nbcnn {sgemm:.2f} TFLOP/s" + (f", PyTorch {torch_sgemm:.2f} TFLOP/s, "
                                                       f"ratio {sgemm / torch_sgemm:.2f}" if use_torch else ""))
    gemms = []
    for name, m, nn, k in gemm_shapes(trace):
        tf = gemm_tflops(backend, timer, m, nn, k, repeat)
        gemms.append(dict(name=name, m=m, n=nn, k=k, nbcnn_tflops=tf))
        print(f"  GEMM {name:<20} M={m:<6}N={nn:<6}K={k:<6} {tf:.2f} TFLOP/s")

    result = {
        "device": args.device, "arch": args.arch, "batch": batch, "input_size": args.input_size, "gemm_width": gemm_width,
        "machine": platform.node(), "openblas_env_unset": unset, "threadpools": pools,
        "layers": rows,
        "train_step": {"nbcnn_ms": step_ms, "torch_ms": torch_step_ms, "torch_over_nbcnn": ratio,
                       "images_per_s": batch / step_ms * 1e3, "first_step_ms": step_first},
        "sgemm": {"size": n, "nbcnn_tflops": sgemm, "torch_tflops": torch_sgemm},
        "gemm_shapes": gemms,
        "startup": startup,
        "memory_mib": {
            "reserved": cache["reserved_bytes"] / 2**20, "blocks_allocated_in_10_steps": new_blocks,
            "device_before": mem_before, "device_after": mem_after, "device_after_10_more": mem_after10,
            "torch_peak": torch_peak if use_torch and args.device == "cuda" else None},
    }
    if n == 4096:
        result["sgemm_4096"] = result["sgemm"]
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
