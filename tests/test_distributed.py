"""Data-parallel training (nbcnn.distributed): N processes at batch B compute one process's batch N*B.

The equivalence tests run tests/distributed_worker.py under `mpiexec -n 2` and as one plain
process at twice the batch, with dropout and augmentation on, and compare the parameters after
a few SGD steps (the last step's global batch is split 1 and 2, so unequal shards are weighted).
They skip where mpi4py or mpiexec is missing (pip install -e '.[mpi]').
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nbcnn.allreduce import GradientAverager, make_buckets
from nbcnn.module import Parameter
from nbcnn.backend import get_backend

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"


def find_mpiexec():
    """The mpiexec beside this Python (the mpich wheel's, matching mpi4py), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="mpi4py or mpiexec is not installed (pip install -e '.[mpi]')")


def run_worker(tmp_path, name, processes, *args, timeout=120, env=None):
    """Run the worker (under mpiexec when processes > 1), `env` added to the environment: ({rank:
    state}, {rank: report}, the process)."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1", **(env or {}))  # two ranks on two cores: no oversubscription
    for v in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        env.pop(v, None)
    cmd = [sys.executable, str(WORKER), str(tmp_path / f"{name}.npz"), *args]
    if processes > 1:
        cmd = [MPIEXEC, "-n", str(processes)] + cmd
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    out = {r: tmp_path / f"{name}.rank{r}" for r in range(processes)}
    states = {r: dict(np.load(f"{p}.npz")) for r, p in out.items() if Path(f"{p}.npz").exists()}
    reports = {r: Path(f"{p}.txt").read_text() for r, p in out.items() if Path(f"{p}.txt").exists()}
    return states, reports, proc


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def step_stats(report):
    """[(loss, correct, count)] of each step in a worker's report."""
    lines = [line.split() for line in report.splitlines() if " step " in line]
    return [(float(w[5]), int(w[7]), int(w[9])) for w in lines]


def two_against_one(tmp_path, *args, batch=6, loss_tolerance=1e-12, env=None, log=""):
    """(the parameters of 1 process at batch 2*batch, those of rank 0 of 2 processes at batch);
    the global batches' losses, correct counts and sizes that each rank reports match one process's.
    The 2 processes run with `env` added to their environment and print `log`."""
    one, report, proc = run_worker(tmp_path, "one", 1, "--batch", str(2 * batch), *args)
    assert proc.returncode == 0, proc.stderr
    assert report[0].startswith("rank 0/1 local 0/1")
    one_stats = step_stats(report[0])
    two, reports, proc = run_worker(tmp_path, "two", 2, "--batch", str(batch), *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert log in proc.stdout
    # one machine: the node's ranks (split by shared memory) are the world's
    assert reports[0].startswith("rank 0/2 local 0/2") and reports[1].startswith("rank 1/2 local 1/2")
    assert max_difference(two[0], two[1]) == 0  # the ranks hold the same parameters, bit for bit
    for rank in (0, 1):
        stats = step_stats(reports[rank])
        assert [s[1:] for s in stats] == [s[1:] for s in one_stats] and len(stats) >= 2
        assert np.allclose([s[0] for s in stats], [s[0] for s in one_stats], rtol=loss_tolerance, atol=0)
    return one[0], two[0]


@needs_mpi
def test_two_processes_train_as_one_at_twice_the_batch_in_float64(tmp_path):
    one, two = two_against_one(tmp_path, "--dtype", "float64")
    assert max_difference(one, two) < 1e-12  # measured: 5.6e-17


@needs_mpi
def test_two_processes_train_as_one_at_twice_the_batch_in_float32(tmp_path):
    """Only the order of the batch sums differs (each process sums its half first): measured 6.0e-8
    (half an ulp at the largest weights, about 0.6), allowed 1e-6."""
    one, two = two_against_one(tmp_path, "--dtype", "float32", loss_tolerance=1e-6)
    assert max_difference(one, two) < 1e-6


@needs_mpi
def test_a_run_of_two_processes_resumes_in_one_at_the_same_global_batch(tmp_path):
    """2 processes at batch 6 save after one step; 1 process at batch 12 resumes for two more:
    the parameters of 1 process at 12 for three steps. (The checkpoint is rank 0's full state.)"""
    ckpt = str(tmp_path / "step1.ckpt")
    _, _, proc = run_worker(tmp_path, "first", 2, "--batch", "6", "--steps", "1", "--save", ckpt)
    assert proc.returncode == 0, proc.stderr
    resumed, _, proc = run_worker(tmp_path, "resumed", 1, "--batch", "12", "--steps", "3", "--resume", ckpt)
    assert proc.returncode == 0, proc.stderr
    straight, _, proc = run_worker(tmp_path, "straight", 1, "--batch", "12", "--steps", "3")
    assert proc.returncode == 0, proc.stderr
    assert max_difference(resumed[0], straight[0]) < 1e-12


@needs_mpi
def test_two_simulated_gpus_train_as_one_through_host_memory(tmp_path):
    """The CUDA backend under the simulator, gradients staged through the host (no nccl4py there)."""
    one, two = two_against_one(tmp_path, "--device", "cuda", "--net", "tiny", "--steps", "2", batch=2,
                               log="averaged by MPI through host memory")
    assert max_difference(one, two) < 1e-12


@needs_mpi
def test_two_simulated_gpus_train_as_one_through_the_nccl_transport(tmp_path):
    """nbcnn.allreduce.NCCL (its unique-id bootstrap, device fusion buffers, in-place allreduce on
    the default stream) under the simulator, against tests/fake_nccl: a stand-in for nccl4py 0.6.0's
    calls, checked as strictly as the library checks them, that sums through MPI. What the real
    library does on a GPU, scripts/gpu_check.sh dist checks."""
    fake = dict(PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "fake_nccl"), os.environ.get("PYTHONPATH", "")]),
                NBCNN_ALLREDUCE="nccl")
    one, two = two_against_one(tmp_path, "--device", "cuda", "--net", "tiny", "--steps", "2", batch=2, env=fake,
                               log="averaged by NCCL (nccl4py) across 2 GPU(s)")
    assert max_difference(one, two) < 1e-12


# -- SyncBatchNorm: conv-BN-ReLU twice, float64, 3 steps of 27 images at 2 x 6 (the last one split 1 and 2) --
BN_NET = ("--net", "bn", "--dtype", "float64")


@pytest.fixture(scope="module")
def one_process_with_batch_norm(tmp_path_factory):
    """1 process at batch 12 (its SyncBatchNorm has no other process: BatchNorm2d): its parameters and buffers."""
    one, _, proc = run_worker(tmp_path_factory.mktemp("bn"), "one", 1, "--batch", "12", "--sync-bn", *BN_NET)
    assert proc.returncode == 0, proc.stderr
    return one[0]


def two_processes_with_batch_norm(tmp_path, *args):
    """Rank 0's parameters and buffers after 2 processes at batch 6 (the ranks' parameters must be
    the same bits; their running statistics too with SyncBatchNorm)."""
    two, _, proc = run_worker(tmp_path, "two", 2, "--batch", "6", *BN_NET, *args)
    assert proc.returncode == 0, proc.stderr
    shared = two[0].keys() if "--sync-bn" in args else [k for k in two[0] if "running" not in k]
    assert max_difference(*({k: state[k] for k in shared} for state in two.values())) == 0
    return two[0]


@needs_mpi
def test_sync_batchnorm_in_two_processes_trains_as_one_at_twice_the_batch(one_process_with_batch_norm, tmp_path):
    """Every weight, bias, running mean and variance and counter of 2 processes at batch 6 with
    SyncBatchNorm equals 1 process's at 12 (measured 5.6e-17), the unequal last step included."""
    two = two_processes_with_batch_norm(tmp_path, "--sync-bn")
    assert any(k.endswith("running_var") for k in two)
    assert max_difference(one_process_with_batch_norm, two) < 1e-12


@needs_mpi
def test_plain_batchnorm_in_two_processes_does_not_train_as_one(one_process_with_batch_norm, tmp_path):
    """Why SyncBatchNorm exists: BatchNorm2d normalises each process's shard with its own statistics
    (measured: running means 3e-2 and weights 3e-2 away)."""
    two = two_processes_with_batch_norm(tmp_path)
    assert max_difference(one_process_with_batch_norm, two) > 1e-3


@needs_mpi
@pytest.mark.parametrize("bug", ["unreduced-sums", "equal-weights"])
def test_a_planted_sync_batchnorm_bug_breaks_the_agreement(bug, one_process_with_batch_norm, tmp_path):
    """The worker wraps the gathered backward (tests/distributed_worker.py's plant): each process's own
    gradient sums taken for the global ones (measured 1.4e-2 away), or the processes' sums weighed alike,
    which only the unequal last step can tell (PyTorch's rule; measured 1.2e-2 away)."""
    two = two_processes_with_batch_norm(tmp_path, "--sync-bn", "--plant", bug)
    assert max_difference(one_process_with_batch_norm, two) > 1e-4


@needs_mpi
def test_two_simulated_gpus_with_sync_batchnorm_train_as_one_through_host_memory(tmp_path):
    """SyncBatchNorm's CUDA kernels under the simulator, its statistics staged through the host: 2
    simulated GPUs at batch 1 end 2 steps with the parameters and buffers of one CPU process at
    batch 2 (measured 5.6e-17; the simulator's own one-process run, 10 s more, is skipped)."""
    args = ("--sync-bn", "--steps", "2", *BN_NET)
    one, _, proc = run_worker(tmp_path, "one", 1, "--batch", "2", "--device", "cpu", *args)
    assert proc.returncode == 0, proc.stderr
    two, _, proc = run_worker(tmp_path, "two", 2, "--batch", "1", "--device", "cuda", *args)
    assert proc.returncode == 0, proc.stderr
    assert "averaged by MPI through host memory" in proc.stdout
    assert max_difference(two[0], two[1]) == 0 and max_difference(one[0], two[0]) < 1e-12


def stderr_of_a_job_that_ends_quickly(tmp_path, *args):
    """The stderr of 2 worker processes that must end, non-zero, within 30 s."""
    t = time.perf_counter()
    _, _, proc = run_worker(tmp_path, "ends", 2, "--batch", "6", *args, timeout=60)
    assert proc.returncode != 0
    assert time.perf_counter() - t < 30
    return proc.stderr


@needs_mpi
def test_a_failing_process_ends_the_job_quickly(tmp_path):
    assert "planted failure on rank 1" in stderr_of_a_job_that_ends_quickly(tmp_path, "--fail-rank", "1")


@needs_mpi
def test_a_process_that_exits_non_zero_ends_the_job_quickly(tmp_path):
    """sys.exit(3) in one rank under distributed.run: without the abort, MPICH hangs in MPI_Finalize."""
    stderr = stderr_of_a_job_that_ends_quickly(tmp_path, "--exit-rank", "1")
    assert "planted exit on rank 1" in stderr and "rank 1 exited with 3" in stderr


def test_plain_python_is_one_process_without_mpi():
    code = ("import sys; from nbcnn import distributed; w = distributed.init(); "
            "print(w.rank, w.size, w.local_rank, 'mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.split() == ["0", "1", "0", "False"], out.stderr


def params(*shapes, dtype=np.float32):
    be = get_backend("cpu")
    return [Parameter(np.zeros(s, dtype), be) for s in shapes]


def test_buckets_follow_the_given_order_up_to_their_size_and_dtype():
    ps = params((100,), (50, 2), (10,), (300,)) + params((5,), dtype=np.float64)
    buckets = make_buckets(ps, bucket_bytes=800)  # 200 float32
    assert [[ps.index(p) for p in b.params] for b in buckets] == [[0, 1], [2], [3], [4]]
    assert [b.size for b in buckets] == [200, 10, 300, 5]
    assert buckets[0].slices == [slice(0, 100), slice(100, 200)]


class Recorder:
    """A transport that records which bucket starts when."""

    def __init__(self):
        self.log = []

    def start(self, bucket, weight):
        self.log.append(("start", [p.shape for p in bucket.params], weight))

    def progress(self, handles):
        pass

    def wait(self, handles):
        self.log.append(("wait",))

    def unpack(self, bucket):
        pass


def test_a_bucket_starts_once_all_its_gradients_are_ready_and_in_order():
    ps = params((100,), (100,), (100,), (100,))
    recorder = Recorder()
    avg = GradientAverager(ps, recorder, bucket_bytes=800)  # buckets [0, 1] and [2, 3]
    avg.begin(0.25)
    avg.ready(ps[0])
    assert recorder.log == []
    avg.ready(ps[2])
    avg.ready(ps[3])
    assert recorder.log == []  # bucket 1 is complete but bucket 0 must start first
    avg.ready(ps[1])
    assert recorder.log == [("start", [(100,), (100,)], 0.25), ("start", [(100,), (100,)], 0.25)]
    avg.finish()
    assert recorder.log[-1] == ("wait",)


# -- the trainer: scripts/train_alexnet.py under mpiexec ----------------------------------------------
TRAINER = ROOT / "scripts" / "train_alexnet.py"
# 29 digits at a global batch of 12: steps of 12, 12 and 5 (shards 3 and 2), two epochs, 50 to validate
RECIPE = ["--device", "cpu", "--subset", "29", "--val-subset", "50", "--epochs", "2", "--workers", "0"]


def train(out, processes, *args, cache=None):
    """scripts/train_alexnet.py (under mpiexec when processes > 1) writing to `out`; the process."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1", NBCNN_CACHE=str(cache or out.parent / "cache"))
    for v in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        env.pop(v, None)
    cmd = [sys.executable, str(TRAINER), *RECIPE, "--out", str(out), *args]
    if processes > 1:
        cmd = [MPIEXEC, "-n", str(processes)] + cmd
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=out.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def model_state(out):
    from nbcnn.checkpoint import read_checkpoint
    return read_checkpoint(str(out / "last.ckpt"))["model"]


def metrics(out):
    import csv
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The straight run: 1 process at batch 12 for two epochs."""
    out = tmp_path_factory.mktemp("trainer") / "one"
    return out, train(out, 1, "--batch-size", "12")


@needs_mpi
def test_the_trainer_in_two_processes_trains_as_one_at_twice_the_batch(one_process, tmp_path):
    """2 processes at --batch-size 6 end two epochs (6 steps, validation sharded) with one process's
    parameters at 12 to float32 summation order (measured 3.0e-8 after 3 steps; allowed 1e-6),
    the same metrics, the same files written once, and one process's log lines."""
    one, one_proc = one_process
    two = tmp_path / "two"
    proc = train(two, 2, "--batch-size", "6")
    assert max_difference(model_state(one), model_state(two)) < 1e-6
    rows_one, rows_two = metrics(one), metrics(two)
    assert len(rows_two) == 2
    for a, b in zip(rows_one, rows_two):  # training and validation figures of the global batches
        for key in ("train_loss", "train_top1_err", "val_loss", "val_top1_err"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), key
    assert sorted(os.listdir(two)) == sorted(os.listdir(one)) == sorted(
        ["last.ckpt", "best.ckpt", "metrics.csv", "curves.png", "filters.png"])
    assert "batch 12 (2 processes of 6)" in proc.stdout
    assert proc.stdout.count("epoch 2/2  train loss") == 1  # rank 1 printed nothing
    assert proc.stdout.count("data: ") == one_proc.stdout.count("data: ") == 1


@needs_mpi
def test_the_trainer_resumes_a_two_process_run_in_one(one_process, tmp_path):
    """2 processes at 6 stop mid-epoch (step 2 of epoch 1); 1 process resumes at the global batch
    12 and ends with the straight run's parameters."""
    one, _ = one_process
    run_dir = tmp_path / "run"
    train(run_dir, 2, "--batch-size", "6", "--max-steps", "2")
    proc = train(run_dir, 1, "--resume", str(run_dir / "last.ckpt"))
    assert "resuming a run of 2 processes on 1: global batch 12, 12 per process" in proc.stdout
    assert max_difference(model_state(one), model_state(run_dir)) < 1e-6
    assert [r["epoch"] for r in metrics(run_dir)] == ["1", "2"]


@needs_mpi
def test_the_trainer_ends_the_job_when_rank_0_alone_fails(tmp_path):
    """Rank 0 cannot create the output folder (only it touches it) while rank 1 goes on to the next
    broadcast: the job ends, non-zero, within 30 s, with rank 0's message."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", NBCNN_CACHE=str(tmp_path / "cache"))
    t = time.perf_counter()
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(TRAINER), *RECIPE, "--out", str(blocker / "out")],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode != 0 and time.perf_counter() - t < 30
    assert "cannot write to the output folder" in proc.stderr and "rank 0 exited with 1" in proc.stderr


@needs_mpi
@pytest.mark.parametrize("split", ["train", "val"])
def test_the_unreadable_limit_holds_for_the_whole_split_across_processes(split, tmp_path):
    """2 unreadable images of a split of 8, one on each process (found by running the job before
    the count was global: it passed, 1 image per process), against --max-unreadable 0.2 (1.6
    images): the job stops, with the split's count."""
    from test_data import make_image_folder
    data = make_image_folder(tmp_path / "data", sizes=((32, 32),), per_class=3)
    for i in range(2):
        (data / split / "dog" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", NBCNN_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(TRAINER), "--device", "cpu", "--data", str(data),
                           "--epochs", "1", "--batch-size", "4", "--val-batch-size", "1", "--workers", "0",
                           "--max-unreadable", "0.2", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    name = {"train": "training", "val": "validation"}[split]
    assert proc.returncode != 0 and f"2 of 8 {name} images could not be read" in proc.stderr, proc.stderr


INTERRUPTED_TRAINER = ROOT / "tests" / "interrupted_trainer.py"


def interrupt_one_process(tmp_path, rank, when):
    """2 processes at --batch-size 6 (steps of 12, 12 and 5 per epoch) with Ctrl-C reaching only
    process `rank` at `when` (tests/interrupted_trainer.py); the process, and the checkpoint's progress."""
    from nbcnn.checkpoint import read_checkpoint
    out = tmp_path / "run"
    env = dict(os.environ, NUMBA_NUM_THREADS="1", NBCNN_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(INTERRUPTED_TRAINER), str(rank), when, *RECIPE,
                           "--batch-size", "6", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return proc, read_checkpoint(str(out / "last.ckpt"))["progress"]


@needs_mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_ctrl_c_in_one_process_stops_every_process_after_the_same_step(rank, tmp_path):
    """Every process stops after step 2, rank 0 saves there, and the job exits 130 without an abort.
    Before the stop was agreed (I ran it), the signalled process stopped alone and its exit aborted
    the job (exit 1); signalled alone, rank 1 ended the job before rank 0 wrote any checkpoint."""
    proc, progress = interrupt_one_process(tmp_path, rank, "step:2")
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert (progress["epoch"], progress["step"], progress["global_step"]) == (0, 2, 2)
    assert proc.stderr.count("interrupted: checkpoint saved") == 1 and "aborting" not in proc.stderr


@needs_mpi
def test_ctrl_c_during_validation_in_one_process_stops_every_process_at_the_epoch_end(tmp_path):
    """Ctrl-C reaching process 1 alone in its validation shard: both finish validating (the figures are
    sums over both shards), end the epoch, save it and exit 130 together."""
    proc, progress = interrupt_one_process(tmp_path, 1, "val")
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert (progress["epoch"], progress["step"], len(progress["history"])) == (1, 0, 1)
    assert proc.stderr.count("interrupted: checkpoint saved") == 1 and "aborting" not in proc.stderr
