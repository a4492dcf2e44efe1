"""nbcnn.SyncBatchNorm in one process: BatchNorm2d exactly without a world, with a world of one
process and in eval; convert_sync_batchnorm; and the global batch's arithmetic over shards, with
threads standing in for processes (ThreadWorld), so that it is checked where MPI is missing.
The same layer across real processes (mpiexec -n 2) is tests/test_distributed.py's.
"""

import threading

import numpy as np
import pytest

import nbcnn
import reference as ref
from nbcnn import BatchNorm1d, BatchNorm2d, SyncBatchNorm
from nbcnn.distributed import World
from nbcnn.module import iter_modules as walk


def floats(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def pair(momentum=0.1):
    """A BatchNorm2d and a SyncBatchNorm (no world) of 3 channels with the same random weight and bias, float64."""
    layers = BatchNorm2d(3, momentum=momentum).double(), SyncBatchNorm(3, momentum=momentum).double()
    for layer in layers:
        layer.weight.data[:] = 1 + floats(3, 1)
        layer.bias.data[:] = floats(3, 2)
    return layers


def train_step(layer, x, dy):
    """(y, dx, weight grad, bias grad, running mean, running var) of one training forward and backward."""
    layer.zero_grad()
    y = layer(nbcnn.asarray(x))
    dx = layer.backward(nbcnn.asarray(dy))
    return [np.array(a) for a in (y, dx, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var)]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("world", [None, World()], ids=["no world", "one process"])
def test_without_other_processes_it_is_batchnorm2d_bit_for_bit(momentum, world):
    plain, sync = pair(momentum)
    sync.process_group = world
    x, dy = 3 * floats((4, 3, 5, 5), 3) + 1, floats((4, 3, 5, 5), 4)
    for _ in range(2):
        for a, b in zip(train_step(plain, x, dy), train_step(sync, x, dy)):
            assert np.array_equal(a, b)
    plain.eval(), sync.eval()
    assert np.array_equal(np.array(plain(nbcnn.asarray(x))), np.array(sync(nbcnn.asarray(x))))


class NoCollectives:
    """A world of two processes that refuses to communicate."""

    size = 2

    def allgather(self, array):
        raise AssertionError("communicated")


def test_eval_in_a_world_is_batchnorm2d_and_does_not_communicate():
    plain, sync = pair()
    sync.process_group = NoCollectives()
    plain.eval(), sync.eval()
    x = floats((2, 3, 4, 4), 5)
    assert np.array_equal(np.array(plain(nbcnn.asarray(x))), np.array(sync(nbcnn.asarray(x))))


def test_convert_sync_batchnorm_keeps_every_parameter_buffer_and_key():
    model = nbcnn.models.resnet20(10).double()
    before = {k: (v + 7 if v.dtype == np.int64 else floats(v.shape, i)) for i, (k, v) in enumerate(model.state_dict().items())}
    model.load_state_dict(before)  # every value away from its initial one
    params = [id(p) for p in model.parameters()]
    norms = [m for m in walk(model) if isinstance(m, BatchNorm2d)]
    assert SyncBatchNorm.convert_sync_batchnorm(model) is model
    assert all(type(m) is SyncBatchNorm and m.process_group is None for m in norms) and len(norms) == 19
    assert not any(type(m) is BatchNorm2d for m in walk(model))
    after = model.state_dict()
    assert list(after) == list(before) and all(np.array_equal(after[k], before[k]) for k in before)
    assert [id(p) for p in model.parameters()] == params  # an optimiser built before goes on working


def test_convert_sync_batchnorm_takes_batchnorm1d_and_the_module_itself():
    layer = SyncBatchNorm.convert_sync_batchnorm(BatchNorm1d(4, momentum=None), process_group="world")
    assert type(layer) is SyncBatchNorm and layer.process_group == "world" and layer.momentum is None
    assert repr(layer).startswith("SyncBatchNorm(4, eps=1e-05, momentum=None")


class ThreadWorld:
    """Process `rank` of `size` threads: allgather meets the other threads at a barrier."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.shared = rank, size, shared

    def allgather(self, array):
        slots, barrier = self.shared
        slots[self.rank] = nbcnn.to_numpy(array)
        barrier.wait()
        out = np.stack(slots)
        barrier.wait()  # nobody overwrites a slot before every thread has read them all
        return nbcnn.asarray(out, nbcnn.device_of(array))


def test_shards_of_1_and_2_images_compute_the_global_batch():
    """Two 'processes' (threads) hold 1 and 2 of 3 images; each backpropagates the gradient of its
    shard's MEAN loss (DataParallel's convention). Their outputs are the one-layer batch's, their
    running statistics too, and their dx and weight gradients, each weighted by the shard's share
    n/3 (DataParallel's weighting), are the global batch's: to 1e-15, against NumPy."""
    x, g = 3 * floats((3, 3, 3, 3), 6) + 1, floats((3, 3, 3, 3), 7)  # the global loss: mean over n of <g_n, y_n>
    gamma, beta = 1 + floats(3, 1), floats(3, 2)
    shards, shared, results = (slice(0, 1), slice(1, 3)), ([None, None], threading.Barrier(2, timeout=60)), {}

    def process(rank):
        layer = SyncBatchNorm(3, process_group=ThreadWorld(rank, 2, shared)).double()
        layer.weight.data[:], layer.bias.data[:] = gamma, beta
        xs, n = x[shards[rank]], x[shards[rank]].shape[0]
        y, dx, dw, db, rm, rv = train_step(layer, xs, g[shards[rank]] / n)
        results[rank] = y, dx * n / 3, dw * n / 3, db * n / 3, rm, rv

    threads = [threading.Thread(target=process, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # NumPy: y, and the gradient of mean_n <g_n, y_n> through the global statistics
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    y = ref.batchnorm(x, gamma, beta, 1e-5)
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var + 1e-5)[None, :, None, None]
    dy, m = g / 3, 3 * 9
    sum_dy, sum_dy_xhat = (a.sum(axis=(0, 2, 3))[None, :, None, None] for a in (dy, dy * xhat))
    dx = (gamma / np.sqrt(var + 1e-5))[None, :, None, None] * (dy - (sum_dy + xhat * sum_dy_xhat) / m)
    rm, rv = ref.batchnorm_running(np.zeros(3), np.ones(3), x, 0.1)
    for got, want in [(np.concatenate([results[0][0], results[1][0]]), y),
                      (np.concatenate([results[0][1], results[1][1]]), dx),
                      (results[0][2] + results[1][2], (dy * xhat).sum(axis=(0, 2, 3))),
                      (results[0][3] + results[1][3], dy.sum(axis=(0, 2, 3)))] + [
                         (results[r][4], rm) for r in (0, 1)] + [(results[r][5], rv) for r in (0, 1)]:
        assert np.abs(got - want).max() < 1e-14


class HalfEmptyComm:
    """Process 0 of 2 whose partner's shard of the batch is empty."""

    def allgather(self, n):
        return [n, 0]


def test_dataparallel_refuses_a_batch_that_leaves_a_process_without_images():
    """That process would skip forward and leave the others waiting in SyncBatchNorm's allgather:
    every process sees the shard sizes and raises before any collective of the layers."""
    from nbcnn.distributed import DataParallel
    model = nbcnn.Sequential(nbcnn.Conv2d(1, 2, 3), SyncBatchNorm(2), nbcnn.Flatten(), nbcnn.Linear(2, 2))
    dp = DataParallel(model, World())
    dp.world = type("HalfEmptyWorld", (), {"comm": HalfEmptyComm(), "rank": 0, "size": 2})()
    with pytest.raises(ValueError, match="SyncBatchNorm needs at least one image on every process, but this "
                                         "global batch of 1 gives 1 of 2 processes none"):
        dp.step(nbcnn.asarray(floats((1, 1, 3, 3))), nbcnn.asarray(np.array([1])))
