"""scripts/bench.py runs and writes the JSON its readers rely on (no timing is asserted)."""

import json
import os
import subprocess
import sys

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
