"""A few SGD steps of data-parallel training, run by tests/test_distributed.py under mpiexec -n N or
plain python; every rank saves the parameters it ends with (OUT.rank<r>.npz) and a report
of its place in the world and each step's global loss and accuracy (OUT.rank<r>.txt).

    python tests/distributed_worker.py OUT.npz --net small|tiny|bn --device cpu|cuda --dtype float64
        --batch B --steps K [--no-dropout] [--no-augment] [--fail-rank R] [--sync-bn [--plant BUG]]
        [--save CKPT] (rank 0 writes a checkpoint after the K steps) [--resume CKPT] (all ranks read it)

Each rank seeds its initialisation differently (seed 1 + rank): only rank 0's broadcast state
can make the ranks, and one process (seed 1), start alike.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nbcnn  # noqa: E402
from nbcnn import distributed, models  # noqa: E402
from nbcnn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from nbcnn.data import ArrayDataset, Loader, Transform  # noqa: E402
from nbcnn.backend import get_backend  # noqa: E402
from nbcnn.layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, ReLU, SyncBatchNorm  # noqa: E402
from nbcnn.module import Sequential  # noqa: E402

# Images of 27 samples: with a global batch of 2 * 6 = 12 the third step has 3, split 1 and 2,
# so the weighting of unequal shards is part of every run.
SAMPLES = 27


def tiny_net(dropout):
    """Conv -> ReLU -> Flatten -> Dropout -> Linear on 1x6x6 crops (the CUDA simulator's budget)."""
    return Sequential(Conv2d(1, 2, 3), ReLU(), Flatten(), Dropout(0.5 if dropout else 0.0), Linear(2 * 4 * 4, 3))


def bn_net():
    """Conv -> BatchNorm -> ReLU, twice, -> Linear on 1x6x6 crops: batch norm's statistics over 4x4
    and 2x2 maps (the CUDA simulator's budget)."""
    return Sequential(Conv2d(1, 3, 3), BatchNorm2d(3), ReLU(), Conv2d(3, 4, 3), BatchNorm2d(4), ReLU(), Flatten(),
                      Linear(4 * 2 * 2, 3))


def plant(bug, rank):
    """Break SyncBatchNorm the way a wrong implementation would, by wrapping a backend op (CPU arrays):
    unreduced-sums: the backward uses this shard's gradient sums as if every process had them;
    equal-weights: the backward weighs every process's sums alike (wrong for unequal shards)."""
    be = get_backend("cpu")
    backward = be.batchnorm_backward_gathered
    if bug == "unreduced-sums":
        be.batchnorm_backward_gathered = lambda x, dy, g, m, inv, stats, sums, dx, ws: backward(
            x, dy, g, m, inv, stats, np.ascontiguousarray(np.repeat(sums[rank:rank + 1], len(sums), 0)), dx, ws)
    elif bug == "equal-weights":
        def equal(x, dy, g, m, inv, stats, sums, dx, ws):
            stats = stats.copy()
            stats[:, :, 0] = stats[rank, :, 0]
            return backward(x, dy, g, m, inv, stats, sums, dx, ws)
        be.batchnorm_backward_gathered = equal


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--net", choices=("small", "tiny", "bn"), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-dropout", action="store_true")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--fail-rank", type=int, default=-1, help="this rank raises at step 1")
    ap.add_argument("--exit-rank", type=int, default=-1, help="this rank calls sys.exit(3) at step 1")
    ap.add_argument("--sync-bn", action="store_true", help="the batch norms made SyncBatchNorm")
    ap.add_argument("--plant", choices=("unreduced-sums", "equal-weights"))
    ap.add_argument("--save")
    ap.add_argument("--resume")
    args = ap.parse_args()

    world = distributed.init()
    # written to a file per rank at the end: mpiexec merges the ranks' stdout, lines may interleave
    report = [f"rank {world.rank}/{world.size} local {world.local_rank}/{world.local_size}"]
    if args.device == "cuda":
        world.select_gpu()
    nbcnn.manual_seed(1 + world.rank)
    augment = not args.no_augment
    size, channels, classes = (20, 3, 10) if args.net == "small" else (8, 1, 3)
    crop = size - 2
    if args.net == "small":
        model = models.alexnet_small(classes, channels, input_size=crop)
        for m in model.modules:
            if isinstance(m, Dropout) and args.no_dropout:
                m.p = 0.0
    elif args.net == "tiny":
        model = tiny_net(not args.no_dropout)
    else:
        model = bn_net()
    if args.sync_bn:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    if args.plant:
        plant(args.plant, world.rank)
    model.to(args.device, getattr(np, args.dtype))
    # augmented: random crops (of the image padded by 1) and flips; else the images are already crop-sized
    side = size if augment else crop
    data = np.random.default_rng(0)
    images = data.integers(0, 256, (SAMPLES, side, side, channels), dtype=np.uint8)
    dataset = ArrayDataset(images, data.integers(0, classes, SAMPLES), range(classes), "random")
    transform = Transform(side, crop, pad=1 if augment else 0, flip=augment)

    opt = nbcnn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    start = load_checkpoint(args.resume, model, opt)["step"] if args.resume else 0
    dp = distributed.DataParallel(model, world)
    loader = Loader(dataset, transform, args.batch, shard=world.shard)
    for step, batch in enumerate(loader.train_batches(seed=3, epoch=0, start_step=start), start):
        if step == args.steps:
            break
        if world.rank == args.fail_rank and step == 1:
            raise RuntimeError(f"planted failure on rank {world.rank}")
        if world.rank == args.exit_rank and step == 1:
            print(f"planted exit on rank {world.rank}", file=sys.stderr, flush=True)
            sys.exit(3)
        x = nbcnn.asarray(batch.x.astype(args.dtype), args.device)
        stats = dp.step(x, nbcnn.asarray(batch.y, args.device))
        opt.step()
        report.append(f"rank {world.rank} step {step} loss {stats.loss!r} correct {stats.correct} of {stats.count}")
    if args.save and world.is_root:
        save_checkpoint(args.save, model, opt, step=args.steps)
    np.savez(args.out.replace(".npz", f".rank{world.rank}.npz"), **model.state_dict())
    Path(args.out.replace(".npz", f".rank{world.rank}.txt")).write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    distributed.run(main)
