"""Atomic file writes, and checkpoints of a training run that resume on any backend.

A checkpoint is a pickle of host data only (numpy arrays, numbers, strings): the model's
state_dict, the optimiser's state_dict (momentum buffers, lr), nbcnn's RNG state (the
dropout counter and the numpy generator) and whatever progress the trainer records. Every
file is written to a temporary file in the destination folder, fsynced and renamed over the
destination, so a crash or Ctrl-C never leaves a half-written file behind.
"""

import contextlib
import os
import pickle
import tempfile

import numpy as np

from .random import default_generator

FORMAT = "nbcnn-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit the model."""


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path` for writing; on success fsync it and rename it to `path`.

    On an exception the temporary file is removed and `path` keeps its old content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        f = os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        os.remove(tmp)
        raise
    try:
        with f:
            os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600 files; give the usual permissions
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _file_mode(path):
    """The mode of the file being replaced, else 0666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def save_checkpoint(path, model, optimizer, **progress):
    """Atomically write model, optimiser, RNG state and `progress` (host data) to `path`."""
    state = {"format": FORMAT, "version": VERSION,
             "model": dict(model.state_dict()),
             "optimizer": optimizer.state_dict(),
             "rng": default_generator.get_state(),
             "progress": progress}
    with atomic_write(path) as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)


def read_checkpoint(path):
    """The checkpoint dict stored at `path`, or a CheckpointError saying what is wrong."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nbcnn checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} is checkpoint version {state.get('version')}; "
                              f"this nbcnn reads version {VERSION}")
    return state


def load_checkpoint(path, model, optimizer=None, restore_rng=True):
    """Restore model (and optimiser, RNG) from `path`, onto whatever backend they are on now;
    returns the stored progress dict."""
    state = read_checkpoint(path)
    try:
        model.load_state_dict({k: np.asarray(v) for k, v in state["model"].items()})
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from None
    if restore_rng:
        default_generator.set_state(state["rng"])
    return state["progress"]
