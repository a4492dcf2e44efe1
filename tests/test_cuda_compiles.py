"""Every CUDA kernel compiles for a real GPU (sm_90), checked without one.

The simulator runs kernels as Python, so it accepts code a GPU compiler rejects (shared
array shapes that are not constants, np.empty in a kernel, typing that only Python allows).
This test runs numba-cuda's real compiler in a subprocess (NUMBA_ENABLE_CUDASIM=0) on each
kernel with the argument types the backend launches it with, to PTX and through ptxas
where a CUDA toolkit is installed. Without NVIDIA's compiler libraries (NVVM, NVRTC) no
PTX can be made: the kernels are still typed and lowered to LLVM IR, and the test is
reported as skipped, with the reason. Another test checks that the list covers every
kernel in nbcnn/cuda/.
"""

import ast
import glob
import importlib
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest


# Kernels whose results the tests require to equal the CPU backend's bit for bit. NVVM
# contracts a * b + c into one FMA (one rounding instead of two) unless told otherwise, so
# their PTX must hold no fma. (Checked where PTX is made: with NVVM, i.e. a CUDA toolkit.)
BIT_EXACT = {"sgd", "dropout", "relu_fwd", "relu_bwd", "fill", "add", "scale", "add_out", "maxpool_fwd", "avgpool_fwd",
             "avgpool_bwd"} | {f"strided_copy_{n}d" for n in range(1, 6)} | {"adam", "amsgrad"} | {
    f"rmsprop{variant}" for variant in ("", "_centered", "_momentum", "_centered_momentum")}
NO_COMPILER = 3  # the exit status of main() when NVVM/NVRTC are missing: a skip, not a pass
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kernels():
    """(name, python function, signature) for every kernel of nbcnn/cuda, float32 and float64."""
    from nbcnn.cuda import adam, array, batchnorm, conv, depthwise, dropout, elementwise, gemm, loss, lrn, pool, relu, rmsprop, sgd
    from nbcnn.cuda import winograd
    out = []
    for dt in ("float32", "float64"):
        v, a3, a4 = f"{dt}[::1]", f"{dt}[:, :, ::1]", f"{dt}[:, :, :, ::1]"
        i4 = "int32[:, :, :, ::1]"
        count = "Array(int64, 0, 'C')"  # batch norm's num_batches_tracked: a 0-d array
        out += [
            ("fill", elementwise.fill.kernel, f"void({v}, float64)"),
            ("add", elementwise.add.kernel, f"void({v}, {v})"),
            ("scale", elementwise.scale.kernel, f"void({v}, float64)"),
            ("sum_batched_rows", gemm.sum_batched_rows_kernel, f"void({a3}, {v})"),
            ("sum_slices", gemm.sum_slices_kernel, f"void({dt}[:, ::1], int64, {v})"),
            ("im2col", conv.im2col_kernel, f"void({a4}, int64, int64, int64, int64, int64, {a3})"),
            ("col2im", conv.col2im_kernel, f"void({a3}, int64, int64, int64, int64, int64, {a4})"),
            ("depthwise_fwd", depthwise.depthwise_forward_kernel,
             f"void({a4}, {a4}, {v}, int64, int64, {a4}, boolean)"),
            ("depthwise_dx", depthwise.depthwise_dx_kernel, f"void({a4}, {a4}, int64, int64, {a4})"),
            ("depthwise_dw", depthwise.depthwise_dw_kernel, f"void({a4}, {a4}, int64, int64, {a4})"),
            ("wino_weight", winograd.weight_transform, f"void({a4}, {a4})"),
            ("wino_input", winograd.input_transform, f"void({a4}, int64, int64, int64, {a4})"),
            ("wino_output", winograd.output_transform, f"void({a4}, int64, int64, {v}, boolean, {a4})"),
            ("wino_output_adjoint", winograd.output_transform_adjoint, f"void({a4}, int64, int64, {a4})"),
            ("wino_input_adjoint", winograd.input_transform_adjoint, f"void({a4}, int64, int64, int64, {a4})"),
            ("wino_weight_adjoint", winograd.weight_transform_adjoint, f"void({a4}, {a4})"),
            ("wino5_split", winograd.split_weight, f"void({a4}, {a4})"),
            ("wino5_merge", winograd.merge_weight_gradient, f"void({a4}, {a4})"),
            ("add_out", elementwise.add_out.kernel, f"void({v}, {v}, {v})"),
            ("maxpool_fwd", pool.maxpool2d_forward_kernel, f"void({a4}, int64, int64, int64, {a4}, {i4})"),
            ("maxpool_bwd", pool.maxpool2d_backward_kernel, f"void({a4}, {i4}, {a4})"),
            ("avgpool_fwd", pool.avgpool2d_forward_kernel, f"void({a4}, int64, int64, int64, boolean, boolean, {a4})"),
            ("avgpool_bwd", pool.avgpool2d_backward_kernel, f"void({a4}, int64, int64, int64, boolean, boolean, {a4})"),
            ("relu_fwd", relu.relu_forward.kernel, f"void({v}, {v})"),
            ("relu_bwd", relu.relu_backward.kernel, f"void({v}, {v}, {v})"),
            ("dropout", dropout.dropout_forward.kernel, f"void({v}, float64, int64, int64, {v})"),
            ("lrn_fwd", lrn.lrn_forward_kernel, f"void({a3}, int64, float64, float64, float64, {a3}, {a3})"),
            ("lrn_bwd", lrn.lrn_backward_kernel,
             f"void({a3}, {a3}, {a3}, {a3}, int64, float64, float64, {a3})"),
            ("bn_stats", batchnorm.batchnorm_stats_kernel,
             f"void({a3}, float64, float64, {v}, {v}, {count}, boolean, {v}, {v})"),
            ("bn_normalise", batchnorm.batchnorm_normalise_kernel, f"void({a3}, {v}, {v}, {v}, {v}, {count}, boolean, {a3})"),
            ("bn_eval", batchnorm.batchnorm_forward_eval_kernel,
             f"void({a3}, {v}, {v}, {v}, {v}, float64, {a3}, {v}, {v})"),
            ("bn_grad_sums", batchnorm.batchnorm_grad_sums_kernel, f"void({a3}, {a3}, {v}, {v}, float64[:, ::1], {v}, {v})"),
            ("bn_dx", batchnorm.batchnorm_dx_kernel, f"void({a3}, {a3}, {v}, {v}, {v}, float64[:, ::1], boolean, {a3})"),
            ("bn_local_stats", batchnorm.batchnorm_local_stats_kernel, f"void({a3}, float64[:, ::1])"),
            ("bn_combine_stats", batchnorm.batchnorm_combine_stats_kernel,
             f"void(float64[:, :, ::1], float64, float64, {v}, {v}, {count}, boolean, {v}, {v})"),
            ("bn_combine_grad_sums", batchnorm.batchnorm_combine_grad_sums_kernel,
             "void(float64[:, :, ::1], float64[:, :, ::1], float64[:, ::1])"),
            ("softmax_ce", loss.softmax_cross_entropy_kernel,
             f"void({dt}[:, ::1], int64[::1], {dt}[:, ::1], float64[::1], int64[::1])"),
            ("sgd", sgd.sgd_step.kernel, f"void({v}, {v}, {v}, float64, float64, float64)"),
            ("adam", adam.adam_step.kernels["adam"], f"void({v}, {v}, {v}, {v}, " + ", ".join(["float64"] * 7) + ")"),
            ("amsgrad", adam.adam_step.kernels["amsgrad"],
             f"void({v}, {v}, {v}, {v}, {v}, " + ", ".join(["float64"] * 7) + ")"),
        ]
        for centered in (False, True):  # RMSprop's kernels: arrays w, g, square_avg (, grad_avg) (, momentum_buffer)
            for momentum in (False, True):
                name = "rmsprop" + "_centered" * centered + "_momentum" * momentum
                arrays, scalars = [v] * (3 + centered + momentum), ["float64"] * (4 + momentum)
                out.append((name, rmsprop.rmsprop_step.kernels[name + "_step"], f"void({', '.join(arrays + scalars)})"))
        for ndim in range(1, 6):  # a strided source of every rank up to 5
            out.append((f"strided_copy_{ndim}d", array.strided_copy_kernel(ndim),
                        f"void({dt}[{', '.join([':'] * ndim)}], {v})"))
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
    sys.path.insert(0, os.path.join(ROOT, "dev", "cuda"))
    import sgemm
    out.append(("dev_sgemm_naive", sgemm.naive_kernel,
                "void(float32[::1], float32[::1], float32[::1], int32, int32, int32)"))
    return out


def python_function(kernel):
    """The Python function behind a CUDA kernel: numba's dispatcher, or the simulator's FakeCUDAKernel."""
    return getattr(kernel, "py_func", None) or kernel.fn


def cuda_modules():
    """(module name, source tree) of every file of nbcnn/cuda."""
    for path in sorted(glob.glob(os.path.join(ROOT, "nbcnn", "cuda", "*.py"))):
        name = os.path.basename(path)[:-3]
        yield ("nbcnn.cuda" if name == "__init__" else f"nbcnn.cuda.{name}"), ast.parse(open(path).read())


def is_kernel_jit(node):
    """Whether an expression is `cuda.jit` or `cuda.jit(...)` without device=True."""
    call = node if isinstance(node, ast.Call) else None
    target = call.func if call else node
    device = call is not None and any(kw.arg == "device" and getattr(kw.value, "value", False) for kw in call.keywords)
    return ast.unparse(target) == "cuda.jit" and not device


def kernels_in_source():
    """(module, name) of every function decorated as a kernel in nbcnn/cuda (@cuda.jit, not device=True)."""
    found = set()
    for module, tree in cuda_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(is_kernel_jit(d) for d in node.decorator_list):
                found.add((module, node.name))
    return found


def kernel_factories():
    """(module, name) of every function of nbcnn/cuda that makes kernels of generated code by calling cuda.jit."""
    found = set()
    for module, tree in cuda_modules():
        decorators = {id(d) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) for d in n.decorator_list}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                if any(isinstance(n, ast.Call) and id(n) not in decorators and is_kernel_jit(n)
                       for n in ast.walk(node)):
                    found.add((module, node.name))
    return found


def listed():
    """(module, name) of every kernel in kernels()."""
    return [(python_function(k).__module__, python_function(k).__name__) for _, k, _ in kernels()]


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
    failed, no_compiler = 0, None
    with tempfile.TemporaryDirectory() as tmp:
        for name, kernel, sig in kernels():
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            except Exception as e:  # noqa: BLE001 - sorted into "no compiler library" and real errors
                text = f"{type(e).__name__}: {e}"
                if any(s in text for s in ("libnvrtc", "libnvvm", "NVVM", "NVRTC", "DynamicLibNotFound")):
                    no_compiler = text.splitlines()[0][:300]  # typed and lowered; no PTX without NVVM
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
    if failed:
        sys.exit(1)
    if no_compiler:
        print("NO COMPILER:", no_compiler)
        sys.exit(NO_COMPILER)


def test_every_kernel_compiles_for_sm90():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == NO_COMPILER:
        pytest.skip("every kernel was typed and lowered, but no PTX was made: NVIDIA's compiler libraries "
                    "are missing (" + proc.stdout.split("NO COMPILER:")[-1].strip() + "); install a CUDA "
                    "toolkit (CUDA_HOME) or numba-cuda[cu13]")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    assert proc.stdout.count("\n") == len(kernels())


def test_the_compile_list_covers_every_cuda_kernel():
    missing = kernels_in_source() - set(listed())
    assert not missing, f"kernels of nbcnn/cuda missing from kernels() here: {sorted(missing)}"


def test_the_compile_list_covers_every_kernel_factory():
    """A factory's kernels are generated (nbcnn/codegen.py): listed ones carry its module and a name no source defines."""
    generated_modules = {module for module, name in set(listed()) - kernels_in_source() if module.startswith("nbcnn.")}
    missing = {f for f in kernel_factories() if f[0] not in generated_modules}
    assert not missing, f"kernel factories of nbcnn/cuda none of whose kernels kernels() lists: {sorted(missing)}"


def test_dev_sgemm_versions_agree_with_numpy():
    """dev/cuda/sgemm.py --check: every candidate GEMM against a float64 product (simulator or GPU)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "dev", "cuda", "sgemm.py"), "--check"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "check passed" in proc.stdout


def test_dev_host_overhead_counts_the_launches_of_a_step():
    """dev/cuda/host_overhead.py: nbcnn's host code on numba-cuda's real arrays, launches stubbed."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "dev", "cuda", "host_overhead.py"),
                           "--arch", "alexnet-small", "--batch", "4", "--steps", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the step's launch budget, pinned: a change that adds launches should say so here
    assert "74 launches, 39 allocator requests" in proc.stdout, proc.stdout


if __name__ == "__main__":
    main()
