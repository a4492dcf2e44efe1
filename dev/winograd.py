"""Winograd F(2x2, 3x3) against im2col on the CPU, in llm.c's dev/cuda style: a float64 reference, the
two versions, a check, a table. It sets the rules of nbcnn/cpu/winograd.py (use_winograd for the
forward, use_winograd_backward for the backward); docs/performance.md has its figures.

    python dev/winograd.py [--repeat 5] [--shapes alexnet,resnet18,resnet20,alexnet5] [--serial] [--f43]

3x3 convolution, stride 1, padding 1 (alexnet5: 5x5, stride 1, padding 2), NCHW float32, per layer shape
and per product:
  forward  y = conv(x, w) + b
  dx       the input gradient (conv2d_backward with dw = db = None)
  dw       the weight gradient (conv2d_backward with dx = db = None), accumulated into zeros
  dx+dw    both and db in one call (a training step's backward: what use_winograd_backward decides)
Versions:
  1  im2col: nbcnn's conv2d_forward / conv2d_backward with the Winograd rules switched off.
  2  Winograd F(2x2, 3x3): the same calls with the rules' thresholds at 1 (nbcnn/cpu/winograd.py):
     forward U = G w G^T, V = B^T d B, M[k] = U[k] V[k], y = A^T M A; backward the adjoints in
     reverse, dM = A dy A^T, dV[k] = U[k]^T dM[k] -> dx, dU[k] = dM[k] V[k]^T -> dw. 5x5: four 3x3
     sub-kernels on one input transform of an extended tile grid (winograd5_forward / _backward).
Each product of both versions is checked against a float64 reference computed here (sums of the
k*k shifted planes, independent of both), as max |err| / max |ref|; times are medians of --repeat
calls, the two versions alternating (a shared machine's load drifts). Speedup = im2col / Winograd.
--serial times one numba thread by process CPU time (minimum of --repeat): the work each path does,
without the scheduler slices a loaded machine charges every parallel region (Winograd's backward
runs 8 regions where im2col runs one).

--f43 adds a NumPy-only experiment: F(4x4, 3x3)'s float32 forward error against float64 (4x
fewer multiplications than direct, 1.78x fewer than F(2x2, 3x3); its interpolation points 0, +-1,
+-2 put constants up to 5 in B^T, 8 in A^T and 1/24 in G: more rounding), beside F(2x2, 3x3)
computed the same way, and F(4x4, 3x3) in float64 (checks the NumPy code); not in the engine.
"""

import argparse
import os
import statistics
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nbcnn  # noqa: E402
from nbcnn.backend import Workspace  # noqa: E402
from nbcnn.cpu import winograd  # noqa: E402
from nbcnn.cpu.threads import num_threads, single_threaded_blas  # noqa: E402

SHAPES = {  # (name, N, C, O, H = W)
    "alexnet": [("alexnet conv3", 16, 256, 384, 13), ("alexnet conv4", 16, 384, 384, 13),
                ("alexnet conv5", 16, 384, 256, 13), ("alexnet conv3", 32, 256, 384, 13),
                ("alexnet conv4", 32, 384, 384, 13), ("alexnet conv5", 32, 384, 256, 13)],
    "resnet18": [("resnet18 layer1", 8, 64, 64, 56), ("resnet18 layer2", 8, 128, 128, 28),
                 ("resnet18 layer3", 8, 256, 256, 14), ("resnet18 layer4", 8, 512, 512, 7)],
    "resnet20": [("resnet20 layer1", 128, 16, 16, 32), ("resnet20 layer3", 128, 64, 64, 8)],
    "alexnet5": [("alexnet conv2", 16, 96, 256, 27, 5), ("alexnet conv2", 32, 96, 256, 27, 5),
                 ("a-small conv2", 128, 32, 64, 13, 5), ("a-small conv2", 32, 32, 64, 13, 5),
                 ("tv-alexnet conv2", 16, 64, 192, 27, 5), ("5x5 C16", 128, 16, 32, 13, 5),
                 ("5x5 7x7", 32, 96, 256, 7, 5)],
}  # a sixth entry is the kernel size (3 where absent)


# -- the float64 reference -------------------------------------------------------------------
def shifted(a, p, q, h, w):
    """The (h, w) window of the padded a at offset (p, q)."""
    return a[:, :, p:p + h, q:q + w]


@single_threaded_blas  # numpy's BLAS on one thread: its spinning threads would slow the timed kernels after it
def reference(x, w, b, dy):
    """float64 (y, dx, dw) of the kxk, stride 1, padding k // 2 convolution, as sums over the k*k taps."""
    x, w, dy = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    N, C, H, W = x.shape
    k, r = w.shape[2], w.shape[2] // 2
    xp = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)))
    y = np.zeros((N, w.shape[0], H, W)) + b.astype(np.float64)[None, :, None, None]
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for p in range(k):
        for q in range(k):
            y += np.einsum("nchw,oc->nohw", shifted(xp, p, q, H, W), w[:, :, p, q], optimize=True)
            shifted(dxp, p, q, H, W)[:] += np.einsum("nohw,oc->nchw", dy, w[:, :, p, q], optimize=True)
            dw[:, :, p, q] = np.einsum("nohw,nchw->oc", dy, shifted(xp, p, q, H, W), optimize=True)
    return y, dxp[:, :, r:-r, r:-r], dw


# -- the two versions, through the backend's own entry points --------------------------------
def choose(wino):
    """Every 3x3/1 pad 1 and 5x5/1 pad 2 convolution on Winograd (the rules' thresholds 1) or on im2col
    (thresholds out of reach)."""
    t = 1 if wino else 10**9
    winograd.MIN_WINOGRAD_CHANNELS = winograd.MIN_WINOGRAD_SIZE = t
    winograd.MIN_WINOGRAD_BACKWARD_CHANNELS = winograd.MIN_WINOGRAD_BACKWARD_SIZE = t
    winograd.MIN_WINOGRAD5_CHANNELS = winograd.MIN_WINOGRAD5_SIZE = t
    winograd.MIN_WINOGRAD5_BACKWARD_CHANNELS = winograd.MIN_WINOGRAD5_BACKWARD_SIZE = t


def products(be, x, w, b, dy, ws):
    """name -> (call, its output): the forward, dx alone and dw alone."""
    y, dx, dw = be.empty(dy.shape, x.dtype), be.empty(x.shape, x.dtype), be.empty(w.shape, x.dtype)

    db = be.empty(b.shape, x.dtype)
    pad = w.shape[2] // 2

    def dw_call(want_dx):
        dw[:] = 0
        db[:] = 0
        be.conv2d_backward(x, w, dy, 1, pad, dx if want_dx else None, dw, db if want_dx else None, ws)
    return {"forward": (lambda: be.conv2d_forward(x, w, b, 1, pad, y, ws), y),
            "dx": (lambda: be.conv2d_backward(x, w, dy, 1, pad, dx, None, None, ws), dx),
            "dw": (lambda: dw_call(False), dw),
            "dx+dw": (lambda: dw_call(True), dw)}


def time_ms(fns, repeat, serial):
    """Medians of `repeat` timed calls of each fn (serial: minima of process CPU time), the fns alternating
    (after one untimed call each)."""
    clock = time.process_time if serial else time.perf_counter
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = clock()
            fn()
            ts.append((clock() - t) * 1e3)
    return [min(ts) if serial else statistics.median(ts) for ts in times]


def rel_err(got, want):
    return np.abs(nbcnn.to_numpy(got).astype(np.float64) - want).max() / np.abs(want).max()


def bench(shapes, repeat, serial):
    be = nbcnn.get_backend("cpu")
    rng = np.random.default_rng(0)
    print(f"{'shape':<17}{'N':>4}{'C':>5}{'O':>5}{'HxW':>7} | {'product':<8}{'im2col ms':>10}{'wino ms':>9}"
          f"{'speedup':>8}{'err im2col':>11}{'err wino':>10}")
    for name, n, c, o, h, *k in shapes:
        k = k[0] if k else 3
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        w = (rng.standard_normal((o, c, k, k)) / np.sqrt(k * k * c)).astype(np.float32)
        b = rng.standard_normal(o).astype(np.float32)
        dy = rng.standard_normal((n, o, h, h)).astype(np.float32)
        want = dict(zip(["forward", "dx", "dw"], reference(x, w, b, dy)))
        ws = {True: Workspace(), False: Workspace()}
        calls = {path: products(be, x, w, b, dy, ws[path]) for path in (False, True)}
        want["dx+dw"] = want["dw"]
        for product in ["forward", "dx", "dw", "dx+dw"]:
            errs = []
            for path in (False, True):
                choose(path)
                fn, out = calls[path][product]
                fn()
                errs.append(rel_err(out, want[product]))

            def timed(path, fn):
                return lambda: (choose(path), fn())
            t_im2col, t_wino = time_ms([timed(False, calls[False][product][0]),
                                        timed(True, calls[True][product][0])], repeat, serial)
            head = f"{name:<17}{n:>4}{c:>5}{o:>5}{f'{h}x{h}':>7}" if product == "forward" else " " * 38
            print(f"{head} | {product:<8}{t_im2col:>10.1f}{t_wino:>9.1f}{t_im2col / t_wino:>8.2f}"
                  f"{errs[0]:>11.1e}{errs[1]:>10.1e}", flush=True)


# -- F(4x4, 3x3) in NumPy: its float32 error --------------------------------------------------
def transforms(m):
    """(A^T, G, B^T) of F(m x m, 3x3) (Lavin & Gray 2016): points 0, -1, 1 for m = 2; 0, 1, -1, 2, -2 for m = 4."""
    if m == 2:
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
        g = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    else:
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    return np.array(at), np.array(g), np.array(bt)


def winograd_numpy(x, w, m, dtype):
    """y of F(m x m, 3x3), every step in `dtype` except U (float64, as nbcnn), 3x3/1 pad 1."""
    at, g, bt = transforms(m)
    a = m + 2
    N, C, H, W = x.shape
    th, tw = -(-H // m), -(-W // m)
    xp = np.zeros((N, C, th * m + 2, tw * m + 2), dtype)
    xp[:, :, 1:H + 1, 1:W + 1] = x
    u = np.einsum("ip,ocpq,jq->ijoc", g, w.astype(np.float64), g).astype(dtype)
    d = np.lib.stride_tricks.sliding_window_view(xp, (a, a), axis=(2, 3))[:, :, ::m, ::m]  # N C th tw a a
    at, bt = at.astype(dtype), bt.astype(dtype)
    v = np.einsum("ip,nctspq,jq->ijcnts", bt, d, bt, optimize=True)             # a a C N th tw
    mm = np.matmul(u, v.reshape(a, a, C, -1)).reshape(a, a, -1, N, th, tw)      # the a*a GEMMs: a a O N th tw
    y = np.einsum("ip,pqonts,jq->notisj", at, mm, at, optimize=True)            # N O th m tw m
    return y.reshape(N, w.shape[0], th * m, tw * m)[:, :, :H, :W]


def f43_error(shapes):
    rng = np.random.default_rng(1)
    print(f"\nfloat32 forward error, max |y - y64| / max |y64| (NumPy):\n{'shape':<17}{'C':>5}{'HxW':>7}"
          f"{'F(2,3)':>10}{'F(4,3)':>10}{'F(4,3) f64':>12}")
    for name, n, c, o, h, *k in shapes:
        if k and k[0] != 3:
            continue
        n = min(n, 4)
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        w = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        want = reference(x, w, np.zeros(o), np.zeros((n, o, h, h)))[0]
        errs = [rel_err(winograd_numpy(x, w, m, dt), want) for m, dt in [(2, np.float32), (4, np.float32),
                                                                          (4, np.float64)]]
        print(f"{name:<17}{c:>5}{f'{h}x{h}':>7}{errs[0]:>10.1e}{errs[1]:>10.1e}{errs[2]:>12.1e}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shapes", default="alexnet,resnet18,resnet20")
    ap.add_argument("--serial", action="store_true", help="one numba thread, process CPU time")
    ap.add_argument("--f43", action="store_true", help="also F(4x4, 3x3)'s float32 error (NumPy)")
    args = ap.parse_args()
    shapes = [s for key in args.shapes.split(",") for s in SHAPES[key]]
    if args.serial:
        numba.set_num_threads(1)
    print(f"numba threads: {num_threads()}; load: {os.getloadavg()}")
    bench(shapes, args.repeat, args.serial)
    if args.f43:
        f43_error(shapes)


if __name__ == "__main__":
    main()
