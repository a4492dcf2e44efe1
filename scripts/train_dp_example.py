#!/usr/bin/env python3
"""Data-parallel training of alexnet-small on the embedded MNIST digits, with nbcnn.distributed's API
(an example until scripts/train_alexnet.py integrates it: docs/distributed.md).

    NUMBA_NUM_THREADS=1 mpiexec -n 2 python scripts/train_dp_example.py --batch-size 64
    python scripts/train_dp_example.py --batch-size 128          # the same global batch, one process

--batch-size is per process; the log gives the global batch. Only rank 0 prints; the training
loss and error are averaged over all processes, validation (500 digits) runs on rank 0.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nbcnn  # noqa: E402
from nbcnn import distributed  # noqa: E402
from nbcnn.data import Loader, Transform, embedded_mnist  # noqa: E402
from nbcnn.models import alexnet_small  # noqa: E402


def validation_error(model, loader, device):
    model.eval()
    wrong = count = 0
    for batch in loader.eval_batches():
        logits = nbcnn.to_numpy(model(nbcnn.asarray(batch.x, device)))
        wrong += int((logits.argmax(1) != batch.y).sum())
        count += len(batch.y)
    model.train()
    return wrong / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-b", "--batch-size", type=int, default=64, help="images per process and step")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    world = distributed.init()
    if args.device == "cuda":
        world.select_gpu()
    say = print if world.is_root else (lambda *a, **k: None)
    nbcnn.manual_seed(args.seed)
    train, val = embedded_mnist()
    mean = np.array([train.images.mean() / 255], np.float32)
    transform = Transform(28, 28, pad=2, flip=False, mean=mean)
    model = alexnet_small(10, 1, 28).to(args.device)
    opt = nbcnn.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    dp = distributed.DataParallel(model, world, log=say)
    loader = Loader(train, transform, args.batch_size, shard=world.shard)
    say(f"{world.size} process(es) at batch {args.batch_size}: global batch {loader.global_batch}, "
        f"{len(loader)} steps per epoch")
    for epoch in range(args.epochs):
        t = time.perf_counter()
        loss, err, _ = distributed.train_epoch(dp, loader, opt, args.seed, epoch, args.device)
        if world.is_root:
            val_err = validation_error(model, Loader(val, transform, 250), args.device)
            say(f"epoch {epoch + 1}: train loss {loss:.4f}, train top-1 error {err:.2%}, "
                f"validation top-1 error {val_err:.2%}, {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
