"""scripts/train_alexnet.py in which ONE process receives Ctrl-C (SIGINT), at a point the others
have passed or not reached, for tests/test_distributed.py under mpiexec:

    mpiexec -n 2 python tests/interrupted_trainer.py RANK WHEN [train_alexnet.py arguments]

WHEN is "step:K" (rank RANK signals itself as its K-th training step begins, before the step's
collectives) or "val" (as its first validation batch is scored: the other process may have
finished its shard already).
"""

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import train_alexnet  # noqa: E402

from nbcnn import distributed, train  # noqa: E402


def signal_on_call(owner, name, when):
    """Wrap owner.name so that its when-th call (1-based) first raises SIGINT in this process."""
    original, calls = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == when:
            signal.raise_signal(signal.SIGINT)  # the trainer's handler sets its flag and returns
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def main():
    rank, when, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if int(os.environ.get("PMI_RANK", "0")) == rank:  # MPICH's mpiexec (the mpi extra's) sets it
        if when == "val":
            signal_on_call(train, "eval_log_probs", 1)
        else:
            signal_on_call(distributed.DataParallel, "step", int(when.split(":")[1]))
    distributed.run(lambda: sys.exit(train_alexnet.main(argv)))


if __name__ == "__main__":
    main()
