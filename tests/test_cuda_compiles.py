"""Every CUDA kernel compiles for a real GPU (sm_90), checked without one.

The simulator runs kernels as Python, so it accepts code a GPU compiler rejects (shared
array shapes that are not constants, np.empty in a kernel, typing that only Python allows).
This test runs numba-cuda's real compiler in a subprocess (NUMBA_ENABLE_CUDASIM=0) on each
kernel with the argument types the backend launches it with, through typing and lowering
to LLVM IR. Without the NVIDIA compiler libraries (a plain `numba-cuda` install) PTX
generation then stops for want of NVRTC/NVVM, which counts as a pass; with them (a GPU
machine, `numba-cuda[cu13]`) the kernels go all the way to PTX.
"""

import os
import subprocess
import sys

import numpy as np
import pytest


# Kernels whose results the tests require to equal the CPU backend's bit for bit. NVVM
# contracts a * b + c into one FMA (one rounding instead of two) unless told otherwise, so
# their PTX must hold no fma. (Checked where PTX is made: with NVVM, i.e. a CUDA toolkit.)
BIT_EXACT = {"sgd", "dropout", "relu_fwd", "relu_bwd", "fill", "add", "strided_copy", "maxpool_fwd"}


def kernels():
    """(name, python function, signature) for every kernel of nbcnn/cuda, float32 and float64."""
    from nbcnn.cuda import array, conv, dropout, gemm, loss, lrn, pool, relu, sgd
    out = []
    for dt in ("float32", "float64"):
        v, a3, a4 = f"{dt}[::1]", f"{dt}[:, :, ::1]", f"{dt}[:, :, :, ::1]"
        i4 = "int32[:, :, :, ::1]"
        out += [
            ("fill", array.fill_kernel, f"void({v}, {dt})"),
            ("add", array.add_kernel, f"void({v}, {v})"),
            ("strided_copy", array.strided_copy_kernel, f"void({dt}[:, :, :, :], {a4})"),
            ("sum_batched_rows", gemm.sum_batched_rows_kernel, f"void({a3}, {v})"),
            ("sum_slices", gemm.sum_slices_kernel, f"void({dt}[:, ::1], int64, {v})"),
            ("im2col", conv.im2col_kernel, f"void({a4}, int64, int64, int64, int64, int64, {a3})"),
            ("col2im", conv.col2im_kernel, f"void({a3}, int64, int64, int64, int64, int64, {a4})"),
            ("maxpool_fwd", pool.maxpool2d_forward_kernel, f"void({a4}, int64, int64, {a4}, {i4})"),
            ("maxpool_bwd", pool.maxpool2d_backward_kernel, f"void({a4}, {i4}, {a4})"),
            ("relu_fwd", relu.relu_forward_kernel, f"void({v}, {v})"),
            ("relu_bwd", relu.relu_backward_kernel, f"void({v}, {v}, {v})"),
            ("dropout", dropout.dropout_kernel, f"void({v}, int64, int64, float64, {v})"),
            ("lrn_fwd", lrn.lrn_forward_kernel, f"void({a3}, int64, float64, float64, float64, {a3}, {a3})"),
            ("lrn_bwd", lrn.lrn_backward_kernel,
             f"void({a3}, {a3}, {a3}, {a3}, int64, float64, float64, {a3})"),
            ("softmax_ce", loss.softmax_cross_entropy_kernel,
             f"void({dt}[:, ::1], int64[::1], {dt}[:, ::1], float64[::1], int64[::1])"),
            ("sgd", sgd.sgd_kernel, f"void({v}, {v}, {v}, float64, float64, float64)"),
        ]
        tile_sets = [("", gemm.GPU_TILES[np.dtype(dt)])]
        if np.dtype(dt) in gemm.SMALL_TILES:
            tile_sets.append(("_small", gemm.SMALL_TILES[np.dtype(dt)]))
        for suffix, tiles in tile_sets:
            for width in ((1, 2, 4) if dt == "float32" else (1,)):
                for ta in (False, True):
                    for tb in (False, True):
                        k = gemm.make_gemm_kernel(ta, tb, dt, tiles.with_width(width))
                        out.append((f"gemm_{'T' if ta else 'N'}{'T' if tb else 'N'}_w{width}{suffix}", k,
                                    f"void({v}, {v}, {v}, {v}, " + "int32, " * 7 + f"{dt}, {dt}, int32)"))
    out.append(("loss_sum", loss.sum_rows_kernel, "void(float64[::1], int64[::1], float64[::1])"))
    # the naive baseline of dev/cuda/sgemm.py (its other versions are the kernels above)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev", "cuda"))
    import sgemm
    out.append(("dev_sgemm_naive", sgemm.naive_kernel,
                "void(float32[::1], float32[::1], float32[::1], int32, int32, int32)"))
    return out


def main():
    """Compile every kernel for sm_90; print one line per kernel; exit 1 on a compile error.

    With a CUDA toolkit on the machine (libdevice under $CUDA_HOME, default
    /usr/local/cuda-13.0) the kernels go to PTX, and through ptxas where it is found: that
    also checks what only the assembler sees (shared memory and register limits).
    """
    import subprocess
    import tempfile

    from numba import config, cuda
    assert not config.ENABLE_CUDASIM
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev", "cuda"))
    import sass_stats
    sass_stats.use_toolkit_libdevice()
    ptxas = sass_stats.find_tool("ptxas")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, kernel, sig in kernels():
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            except Exception as e:  # noqa: BLE001 - sorted into "no compiler library" and real errors
                text = f"{type(e).__name__}: {e}"
                if any(s in text for s in ("libnvrtc", "libnvvm", "NVVM", "NVRTC", "DynamicLibNotFound")):
                    print("lowered", name)
                else:
                    failed += 1
                    print("FAILED", name, sig, text[:2000])
                continue
            if name in BIT_EXACT and "fma." in ptx:
                failed += 1
                print("FAILED", name, "fuses multiply-adds (fma in its PTX): its results would differ from the CPU's")
                continue
            if ptxas is None:
                print("ptx", name)
                continue
            src = os.path.join(tmp, "k.ptx")
            with open(src, "w") as f:
                f.write(ptx)
            proc = subprocess.run([ptxas, "-arch=sm_90", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                                  capture_output=True, text=True)
            if proc.returncode:
                failed += 1
                print("FAILED", name, sig, "ptxas:", proc.stderr[-2000:])
            else:
                used = [line.split(":", 1)[1].strip() for line in proc.stderr.splitlines() if "Used" in line]
                print("sass", name, used[-1] if used else "")
    sys.exit(1 if failed else 0)


def test_every_kernel_compiles_for_sm90():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    if "No module named" in proc.stderr and "numba" in proc.stderr:
        pytest.skip(proc.stderr[-300:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    assert proc.stdout.count("\n") >= 30


def test_dev_sgemm_versions_agree_with_numpy():
    """dev/cuda/sgemm.py --check: every candidate GEMM against a float64 product (simulator or GPU)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, os.path.join(root, "dev", "cuda", "sgemm.py"), "--check"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "check passed" in proc.stdout


def test_dev_host_overhead_counts_the_launches_of_a_step():
    """dev/cuda/host_overhead.py: nbcnn's host code on numba-cuda's real arrays, launches stubbed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "dev", "cuda", "host_overhead.py"),
                           "--arch", "alexnet-small", "--batch", "4", "--steps", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the step's launch budget, pinned: a change that adds launches should say so here
    assert "74 launches, 32 allocator requests" in proc.stdout, proc.stdout


if __name__ == "__main__":
    main()
