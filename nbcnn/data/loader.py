"""Batches: the epoch's order, augmentation seeds, and loading in background worker processes.

The order of epoch e is a permutation drawn from (seed, e) and the augmentation of sample j of
batch b from (seed, e, b, j): what a step sees depends on nothing else, so a run resumed
mid-epoch, or one with a different number of workers, sees the same batches. Data-parallel
processes (`shard`) draw the same order and each loads its own contiguous part of every
global batch, augmented at the samples' global positions j: N processes see one process's batches. Workers are `multiprocessing`
processes (spawn: safe beside a CUDA context and numba's thread pool); up to `prefetch`
batches per worker are in flight while the main process trains on the current one.
"""

import multiprocessing
import signal
import time

import numpy as np

from .datasets import DataError, UnreadableImage


def epoch_order(n, seed, epoch):
    """The order of the n training images in `epoch`: a pure function of (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def steps_per_epoch(n, batch_size):
    return -(-n // batch_size)


class Batch:
    """One batch: images float32 (N, C, H, W) (N, 10, C, H, W for ten-crop eval), labels int64 (N,),
    the number of unreadable images skipped, up to three of their messages, and the seconds
    the trainer waited for it."""

    def __init__(self, x, y, bad, errors):
        self.x, self.y, self.bad, self.errors = x, y, bad, errors
        self.wait = 0.0


def load_batch(dataset, transform, indices, mode, rng_key, first=0):
    """Load and transform the images `indices` ("train", "eval" or "ten"); unreadable images skipped.

    Training image k is augmented by a generator of rng_key + [first + k]: its position in the
    global batch, whichever process loads it."""
    xs, ys, errors = [], [], []
    for k, i in enumerate(indices):
        try:
            img = dataset.load(int(i))
        except UnreadableImage as exc:
            errors.append(str(exc))
            continue
        if mode == "train":
            xs.append(transform.train(img, np.random.default_rng(list(rng_key) + [first + k])))
        elif mode == "ten":
            xs.append(transform.eval_ten(img))
        else:
            xs.append(transform.eval(img))
        ys.append(dataset.labels[i])
    x = np.stack(xs) if xs else np.zeros((0,), np.float32)
    return Batch(x, np.asarray(ys, dtype=np.int64), len(errors), errors[:3])


# -- worker processes -------------------------------------------------------------------------
_worker = {}


def _init_worker(dataset, transform):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    _worker["dataset"], _worker["transform"] = dataset, transform


def _work(indices, mode, rng_key, first=0):
    return load_batch(_worker["dataset"], _worker["transform"], indices, mode, rng_key, first)


def shard_bounds(n, rank, size):
    """[start, stop) of process `rank`'s part of a global batch of n samples split among `size`:
    contiguous, in rank order, sizes differing by at most one (n // size each when it divides)."""
    return rank * n // size, (rank + 1) * n // size


class Loader:
    """Batches of a dataset, loaded in `workers` processes (0: in this process).

    shard=(rank, size): this process is `rank` of `size` data-parallel ones; `batch_size` is per
    process, a step's global batch is size * batch_size, and this process loads its shard_bounds.
    timeout: seconds to wait for a batch from the workers before a DataError (None: for ever); a
    data-parallel job needs one, so that a stuck worker ends the job instead of stalling it."""

    def __init__(self, dataset, transform, batch_size, workers=0, prefetch=2, shard=(0, 1), timeout=None):
        self.dataset, self.transform = dataset, transform
        self.timeout = timeout
        self.batch_size, self.workers, self.prefetch = int(batch_size), int(workers), int(prefetch)
        self.rank, self.size = (int(v) for v in shard)
        if not 0 <= self.rank < self.size:
            raise ValueError(f"shard must be (rank, size) with 0 <= rank < size, got {shard}")
        self.global_batch = self.batch_size * self.size
        self.pool = None

    def __len__(self):
        return steps_per_epoch(len(self.dataset), self.global_batch)

    def start(self):
        if self.workers > 0 and self.pool is None:
            ctx = multiprocessing.get_context("spawn")
            self.pool = ctx.Pool(self.workers, initializer=_init_worker,
                                 initargs=(self.dataset, self.transform))
        return self

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def train_batches(self, seed, epoch, start_step=0):
        """Yield the training batches of `epoch` from `start_step` on, shuffled and augmented."""
        order = epoch_order(len(self.dataset), seed, epoch)
        tasks = []
        for b in range(start_step, len(self)):
            step = order[b * self.global_batch:(b + 1) * self.global_batch]
            start, stop = shard_bounds(len(step), self.rank, self.size)
            tasks.append((step[start:stop], "train", [int(seed), int(epoch), b], start))
        return self._run(tasks)

    def eval_batches(self, ten_crop=False):
        """Yield the batches of the whole dataset in order, centre-cropped (or ten-cropped); with a
        shard, this process's batches only (batch_size images each, dealt out in turn)."""
        n = len(self.dataset)
        mode = "ten" if ten_crop else "eval"
        tasks = [(np.arange(b, min(b + self.batch_size, n)), mode, None) for b in range(0, n, self.batch_size)]
        return self._run(tasks[self.rank::self.size])  # sharded: every size-th batch, from the rank's

    def _run(self, tasks):
        if self.pool is None:
            for task in tasks:
                t = time.perf_counter()
                batch = load_batch(self.dataset, self.transform, *task)
                batch.wait = time.perf_counter() - t
                yield batch
            return
        pending, queue = [], list(reversed(tasks))
        depth = max(1, self.workers * self.prefetch)
        while queue or pending:
            while queue and len(pending) < depth:
                pending.append(self.pool.apply_async(_work, queue.pop()))
            t = time.perf_counter()
            try:
                batch = pending.pop(0).get(self.timeout)
            except multiprocessing.TimeoutError:
                raise DataError(f"no batch from the {self.workers} loader worker(s) within {self.timeout} s") from None
            batch.wait = time.perf_counter() - t
            yield batch
