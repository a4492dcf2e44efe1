"""scripts/bench.py runs and writes the JSON its readers rely on (no timing is asserted)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import nbcnn
from devices import _CUDA_SKIP, simulated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--device", "cpu", "--batch", "1",
         "--input-size", "63", "--repeat", "1", "--gemm-size", "64", "--no-torch", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train step: nbcnn" in proc.stdout
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["batch"] == 1
    assert len(result["layers"]) == 23 and all(r["fwd_ms"] > 0 for r in result["layers"])
    assert result["train_step"]["nbcnn_ms"] > 0 and result["train_step"]["torch_ms"] is None
    assert result["sgemm"]["size"] == 64 and result["sgemm"]["nbcnn_tflops"] > 0
    assert result["sgemm"]["torch_tflops"] is None and "sgemm_4096" not in result  # only a 4096^3 run claims that key
    assert result["memory_mib"]["blocks_allocated_in_10_steps"] == 0  # the steady state allocates nothing
    assert result["memory_mib"]["reserved"] > 0


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "scripts", "bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.skipif(_CUDA_SKIP is not None, reason=_CUDA_SKIP or "")
def test_bench_runs_its_cuda_path_end_to_end(tmp_path, monkeypatch):
    """bench.py's CUDA path: rows, the training step, the allocator check, the table and the JSON.

    On a GPU it also times with CUDA events and reads the driver's memory count (the
    simulator has neither: it times with perf_counter and reports no device memory).
    AlexNet-sized layers take minutes per step under the simulator, so there `--arch
    alexnet-small` is swapped for a net of the same layer types with 2 channels.
    """
    bench = load_bench()
    if simulated("cuda"):
        monkeypatch.setattr(bench, "alexnet_small", lambda num_classes, in_channels, input_size: nbcnn.Sequential(
            nbcnn.Conv2d(in_channels, 2, 3, padding=1), nbcnn.ReLU(), nbcnn.LocalResponseNorm(3), nbcnn.MaxPool2d(3, 2),
            nbcnn.Flatten(), nbcnn.Dropout(0.5), nbcnn.Linear(2 * 1 * 1, num_classes)))
    size = "4" if simulated("cuda") else "28"
    out = tmp_path / "bench.json"
    result = bench.main(["--device", "cuda", "--arch", "alexnet-small", "--batch", "2", "--input-size", size,
                         "--repeat", "1", "--gemm-size", "16", "--no-torch", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["device"] == "cuda" and result["arch"] == "alexnet-small" and result["batch"] == 2
    assert all(r["fwd_ms"] >= 0 and r["bwd_ms"] >= 0 for r in result["layers"])  # Flatten launches nothing
    assert all(r["fwd_ms"] > 0 and r["bwd_ms"] > 0 for r in result["layers"] if r["layer"] == "Conv2d")
    assert result["train_step"]["nbcnn_ms"] > 0 and result["sgemm"]["nbcnn_tflops"] > 0
    assert result["memory_mib"]["blocks_allocated_in_10_steps"] == 0
    assert (result["memory_mib"]["device_after_10_more"] is None) == simulated("cuda")
