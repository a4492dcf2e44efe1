"""Static statistics of the GEMM kernels, without a GPU: registers, spills, and the mix of
instructions in the inner loop (how many of them are FFMA), per pack width and transposition.

    python dev/cuda/sass_stats.py [--dtype float32] [--widths 1 2 4]
    python dev/cuda/sass_stats.py --all      # every kernel of nbcnn/cuda: registers, size, calls

Needs the CUDA toolkit's NVVM, libdevice and ptxas (found under $CUDA_HOME, default
/usr/local/cuda-13.0) and nvdisasm (the toolkit's, or `pip install nvidia-cuda-nvdisasm`).
numba-cuda compiles the kernels to PTX for sm_90, ptxas assembles them, nvdisasm lists
the SASS, and the innermost loop that holds FFMAs is counted. With --all, every kernel's
registers, SASS size and CALLs (subroutine calls: numba's int64 division is one, ~70
instructions each) are listed. Timings still need a GPU (dev/cuda/sgemm.py); this shows
where a kernel's issue slots go before one is available.
"""

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda-13.0")


def find_tool(name):
    """The path of a CUDA tool (ptxas, nvdisasm): PATH, $CUDA_HOME/bin, or an nvidia-* wheel; else None."""
    found = shutil.which(name) or shutil.which(os.path.join(CUDA_HOME, "bin", name))
    if not found:
        found = next(iter(glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", "nvidia",
                                                 "*", "bin", name))), None)
    return found


def tool(name):
    found = find_tool(name)
    if not found:
        sys.exit(f"sass_stats.py: {name} not found (CUDA_HOME={CUDA_HOME})")
    return found


def use_toolkit_libdevice():
    """Compile for an sm_90 device without one: numba-cuda asks the current device for its
    compute capability, and NVRTC for the targets it supports. Where the CUDA toolkit's
    libdevice exists, point numba-cuda at it too; returns whether it does."""
    import numba.cuda.api as api
    import numba.cuda.cudadrv.libs as libs
    import numba.cuda.cudadrv.nvrtc as nvrtc
    import numba.cuda.cudadrv.nvvm as nvvm
    import numba.cuda.dispatcher as dispatcher

    class H100:
        compute_capability = (9, 0)
    api.get_current_device = dispatcher.get_current_device = lambda: H100()
    path = os.path.join(CUDA_HOME, "nvvm", "libdevice", "libdevice.10.bc")
    if not os.path.exists(path):
        return False
    libs.get_libdevice = nvvm.get_libdevice = lambda: path
    libs.open_libdevice = nvvm.open_libdevice = lambda: open(path, "rb").read()
    nvrtc.get_supported_ccs = lambda: [(9, 0)]
    return True


def inner_loop_mix(sass):
    """Opcode counts of the innermost backward-branch loop that contains FFMA instructions."""
    lines = sass.splitlines()
    ins = [(int(m.group(1), 16), m.group(2)) for line in lines
           for m in [re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*)", line)] if m]
    labels = {}
    for i, line in enumerate(lines):
        m = re.match(r"\.L_x_(\d+):", line.strip())
        if m:
            for nxt in lines[i + 1:]:
                a = re.match(r"\s+/\*([0-9a-f]{4,})\*/", nxt)
                if a:
                    labels[m.group(1)] = int(a.group(1), 16)
                    break
    best = None
    for addr, text in ins:
        m = re.search(r"BRA\s+`\(\.L_x_(\d+)\)", text)
        if m and labels.get(m.group(1), addr + 1) < addr:
            ops = collections.Counter(
                re.sub(r"^@!?U?P\w+\s+", "", t.split(";")[0].strip()).split()[0].split(".")[0]
                for a, t in ins if labels[m.group(1)] <= a <= addr)
            if ops["FFMA"] and (best is None or sum(ops.values()) < sum(best.values())):
                best = ops
    return best or collections.Counter()


def assemble(ptx, tmp):
    """(ptxas -v log, SASS listing) of a PTX module for sm_90."""
    src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
    with open(src, "w") as f:
        f.write(ptx)
    log = subprocess.run([tool("ptxas"), "-arch=sm_90", "-v", src, "-o", cubin],
                         capture_output=True, text=True, check=True).stderr
    return log, subprocess.run([tool("nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True).stdout


def all_kernels():
    """Registers, spills, SASS size and CALLs of every kernel tests/test_cuda_compiles.py compiles."""
    from numba import cuda
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
    from test_cuda_compiles import kernels
    print(f"{'kernel':<22}{'signature':<60}{'regs':>5}{'spill B':>8}{'SASS':>6}{'CALLs':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kernel, sig in kernels():
            log, sass = assemble(cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))[0], tmp)
            regs = re.search(r"Used (\d+) registers", log).group(1)
            spill = re.search(r"(\d+) bytes spill stores", log).group(1)
            size = len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass, re.M))
            print(f"{name:<22}{sig[:58]:<60}{regs:>5}{spill:>8}{size:>6}{sass.count('CALL'):>6}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--widths", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--all", action="store_true", help="every kernel, not the GEMM's inner loop")
    args = parser.parse_args()
    if not use_toolkit_libdevice():
        sys.exit(f"sass_stats.py: no CUDA toolkit libdevice under CUDA_HOME={CUDA_HOME}")
    if args.all:
        return all_kernels()
    import numpy as np
    from numba import cuda

    from nbcnn.cuda import gemm
    dt = args.dtype
    v = f"{dt}[::1]"
    sig = f"void({v}, {v}, {v}, {v}, " + "int32, " * 7 + f"{dt}, {dt}, int32)"
    print(f"{'W':>2} {'op':>3} {'regs':>5} {'spill B':>8} {'loop':>5} {'FFMA':>5} {'LDS':>4} {'other':>6} {'FFMA %':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            for ta in (False, True):
                for tb in (False, True):
                    kernel = gemm.make_gemm_kernel(ta, tb, dt, gemm.GPU_TILES[np.dtype(dt)].with_width(width))
                    log, sass = assemble(cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))[0], tmp)
                    regs = re.search(r"Used (\d+) registers", log).group(1)
                    spill = re.search(r"(\d+) bytes spill stores", log).group(1)
                    mix = inner_loop_mix(sass)
                    n, ffma, lds = sum(mix.values()), mix["FFMA"], mix["LDS"]
                    op = ("T" if ta else "N") + ("T" if tb else "N")
                    print(f"{width:>2} {op:>3} {regs:>5} {spill:>8} {n:>5} {ffma:>5} {lds:>4} "
                          f"{n - ffma - lds:>6} {100 * ffma / max(n, 1):>6.0f}%")


if __name__ == "__main__":
    main()
