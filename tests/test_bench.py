"""scripts/bench.py runs and writes the JSON its readers rely on (no timing is asserted)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import nbcnn
from devices import _CUDA_SKIP, simulated
from nbcnn.testing import assert_close

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
    sgemm_gflops = result["sgemm"]["nbcnn_tflops"] * 1e3
    for r in result["layers"]:  # effective GFLOP/s beside each conv/linear row, as a fraction of SGEMM's
        if r["layer"] in ("Conv2d", "Linear"):
            assert r["gflops"] == pytest.approx(3 * r["flops"] / ((r["fwd_ms"] + r["bwd_ms"]) * 1e-3) / 1e9)
            assert r["sgemm_fraction"] == pytest.approx(r["gflops"] / sgemm_gflops)
        else:
            assert r["gflops"] is None and r["sgemm_fraction"] is None
    assert "of SGEMM" in proc.stdout
    assert any("blas" in line for line in result["threadpools"])  # threadpoolctl found the BLAS numba calls
    assert result["startup"] is None  # no --cold


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


def test_bench_names_nested_layers_and_counts_grouped_flops(tmp_path):
    """--arch resnet20 on the CPU, PyTorch compared: one row per layer named by
    its state_dict prefix, a row for each residual sum, a depthwise conv's FLOPs per its one input
    channel, and every row with its PyTorch twin's time."""
    bench = load_bench()
    out = tmp_path / "bench.json"
    torch_args = [] if bench.torch is not None else ["--no-torch"]
    result = bench.main(["--device", "cpu", "--arch", "resnet20", "--batch", "2", "--input-size", "8",
                         "--repeat", "1", "--gemm-size", "16", "--json", str(out)] + torch_args)
    names = [(r["name"], r["layer"]) for r in result["layers"]]
    assert names[:4] == [("conv1", "Conv2d"), ("bn1", "BatchNorm2d"), ("relu", "ReLU"), ("layer1.0.conv1", "Conv2d")]
    assert ("layer1.0.add", "add") in names and ("layer2.0.shortcut", "ZeroPadShortcut") in names
    assert names[-3:] == [("avgpool", "AdaptiveAvgPool2d"), ("flatten", "Flatten"), ("fc", "Linear")]
    assert len(names) == 19 + 19 + 19 + 9 + 2 + 3  # convs, BNs, ReLUs (stem + 2 per block), sums, shortcuts, head
    conv1 = result["layers"][0]
    assert conv1["flops"] == 2.0 * 2 * 16 * 8 * 8 * 3 * 9
    if bench.torch is not None:
        assert all(r["torch_fwd_ms"] > 0 for r in result["layers"]) and result["train_step"]["torch_ms"] > 0
    dw = nbcnn.Conv2d(32, 32, 3, padding=1, groups=32)
    assert bench.layer_flops(dw, (2, 32, 8, 8), (2, 32, 8, 8)) == 2.0 * 2 * 32 * 8 * 8 * 1 * 9  # one input channel each


def test_benchs_torch_twins_compute_what_nbcnn_computes():
    """The PyTorch networks the bench times are nbcnn's networks: same logits in training mode."""
    bench = load_bench()
    if bench.torch is None:
        pytest.skip("PyTorch is not importable")
    for make in (lambda: nbcnn.models.cifar_resnet(8, num_classes=3, width=2),
                 lambda: nbcnn.models.mobilenet_small(num_classes=3, width=2)):
        nbcnn.manual_seed(0)
        net = make().to("cpu", np.float64)
        x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
        twin = bench.torch_module(net).double().train()
        want = twin(bench.torch.from_numpy(x)).detach().numpy()
        assert_close(net(nbcnn.asarray(x)), want, rtol=1e-10)


def test_bench_cold_reports_start_up_compiles_and_memory(tmp_path, capsys):
    """bench.py --cold's section (PyTorch's run left out): fresh processes report their times to the
    first step, their peak memory, and the numba compilations they ran; the run with an empty
    cache compiles the conv kernels, the run after it loads them from that cache. alexnet-small at
    batch 2: its cold compile (~30 s) is most of this test."""
    bench = load_bench()
    runs = bench.startup_section("alexnet-small", 2, 28, use_torch=False, cache_dir=str(tmp_path / "numba-cache"))
    assert set(runs) == {"cold", "warm"}
    for r in runs.values():
        assert 0 < r["import_s"] < r["model_s"] < r["first_step_s"]
        assert r["first_step_only_s"] > 0 and r["step_s"] > 0
        assert 0 < r["rss_before_step"] <= r["peak_rss"]
    table = bench.compile_table(runs["cold"]["compiles"])
    names = [k for k, _, _ in table]
    assert "nbcnn.cpu.conv.conv2d_forward_kernel" in names and "nbcnn.cpu.conv.conv2d_backward_kernel" in names
    assert all(s > 0 and n >= 1 for _, s, n in table)
    assert not [c for c in runs["warm"]["compiles"] if c["kernel"].startswith("nbcnn.cpu.conv.")]
    out = capsys.readouterr().out
    assert "empty numba cache" in out and "warm numba cache" in out and "conv2d_forward_kernel" in out
    with pytest.raises(ValueError, match="must not exist yet"):  # a filled cache would time no cold start
        bench.startup_section("alexnet-small", 2, 28, use_torch=False, cache_dir=str(tmp_path))
