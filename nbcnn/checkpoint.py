"""Atomic file writes, and checkpoints of a training run that resume on any backend.

A checkpoint file is a fixed header and a pickle of host data only (numpy arrays, numbers,
strings): the model's state_dict, the optimiser's state_dict (momentum buffers, lr), nbcnn's
RNG state (the dropout counter and the numpy generator) and whatever progress the trainer
records. The header holds a magic string, the format version, the payload's length and its
SHA-256, checked on every load, so a truncated or bit-flipped file is refused instead of
resuming with altered weights. Version-1 checkpoints (a bare pickle, no header) still load,
unchecked.

Every file is written to a temporary file in the destination folder (".<name>.<random>.tmp"),
fsynced and renamed over the destination, so a crash or Ctrl-C never leaves a half-written
file behind; only a SIGKILL mid-write leaves the temporary, which
`remove_stale_temporaries` clears.
"""

import contextlib
import glob
import hashlib
import os
import pickle
import shutil
import struct
import tempfile

import numpy as np

from .random import default_generator

FORMAT = "nbcnn-checkpoint"
MAGIC = b"NBCNNCKP"
VERSION = 2
# magic, format version, payload length in bytes, SHA-256 of the payload
HEADER = struct.Struct("<8sIQ32s")
CHUNK = 1 << 24


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose payload does not match the length or SHA-256 in its header."""


# -- atomic writes ---------------------------------------------------------------------------------
def _temp_prefix(path):
    return "." + os.path.basename(path) + "."


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path` for writing; on success fsync it and rename it to `path`.

    On an exception the temporary file is removed and `path` keeps its old content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path), suffix=".tmp")
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


def remove_stale_temporaries(directory, names):
    """Delete the temporaries atomic_write left in `directory` for the files `names` (a SIGKILL
    mid-write); returns their paths. Other files are left alone."""
    removed = []
    for name in names:
        pattern = os.path.join(glob.escape(directory), glob.escape(_temp_prefix(name)) + "*.tmp")
        for path in glob.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


# -- the file format: header + pickle --------------------------------------------------------------
class _HashingWriter:
    """Passes writes through to `f`, counting and hashing them."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data):
        self.sha.update(data)
        self.size += memoryview(data).nbytes
        return self.f.write(data)


def _reason(exc):
    """An exception as text that is never empty (a bare MemoryError has no message)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _read_header(f, path):
    """(version, payload length, SHA-256) from the header; version 1 for a bare pickle."""
    head = f.read(HEADER.size)
    if head[:len(MAGIC)] != MAGIC:
        if head[:1] == pickle.PROTO:  # version 1: a bare pickle
            return 1, None, None
        raise CheckpointError(f"{path} is not an nbcnn checkpoint")
    if len(head) < HEADER.size:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: its header is cut short")
    _, version, length, digest = HEADER.unpack(head)
    if version > VERSION:
        raise CheckpointError(f"{path} says it is checkpoint version {version}, which this nbcnn (version "
                              f"{VERSION}) cannot read: written by a newer nbcnn, or damaged")
    if version < 2:  # only version 2 and later have a header
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: its header says version {version}")
    return version, length, digest


def _verify_payload(f, path, length, digest):
    """Read the payload after the header and check its length and SHA-256."""
    sha, size = hashlib.sha256(), 0
    while chunk := f.read(CHUNK):
        sha.update(chunk)
        size += len(chunk)
    if size != length:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: it holds {size:,} bytes of data, "
                                     f"its header says {length:,} (cut short or appended to)")
    if sha.digest() != digest:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: its data does not match the SHA-256 "
                                     "in its header (bytes changed on disk or in transfer)")


def checkpoint_digest(path):
    """The SHA-256 (hex) a checkpoint's header records, read without the payload; None for a
    missing file, a version-1 checkpoint or anything else without a header."""
    try:
        with open(path, "rb") as f:
            version, _, digest = _read_header(f, path)
    except (OSError, CheckpointError):
        return None
    return digest.hex() if version >= 2 else None


def copy_checkpoint(src, dst):
    """Atomically copy the checkpoint file `src` to `dst`, byte for byte (the digest carries over)."""
    with open(src, "rb") as f, atomic_write(dst) as out:
        shutil.copyfileobj(f, out, CHUNK)


# -- checkpoints ---------------------------------------------------------------------------------------
def save_checkpoint(path, model, optimizer, **progress):
    """Atomically write model, optimiser, RNG state and `progress` (host data) to `path`;
    returns the payload's SHA-256 (hex)."""
    state = {"format": FORMAT, "model": dict(model.state_dict()),
             "optimizer": optimizer.state_dict(),
             "rng": default_generator.get_state(),
             "progress": progress}
    with atomic_write(path) as f:
        f.write(bytes(HEADER.size))  # filled in once the payload's length and hash are known
        writer = _HashingWriter(f)
        pickle.dump(state, writer, protocol=pickle.HIGHEST_PROTOCOL)
        f.seek(0)
        f.write(HEADER.pack(MAGIC, VERSION, writer.size, writer.sha.digest()))
        f.seek(0, os.SEEK_END)
    return writer.sha.hexdigest()


def read_checkpoint(path):
    """The checkpoint dict stored at `path`, its integrity checked, or a CheckpointError saying
    what is wrong (CorruptCheckpointError when the data does not match its header)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            version, length, digest = _read_header(f, path)
            if version == 1:
                f.seek(0)
            else:
                _verify_payload(f, path, length, digest)
                f.seek(HEADER.size)
            state = pickle.load(f)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nbcnn checkpoint")
    return state


def restore_checkpoint(state, model, optimizer=None, restore_rng=True, path="checkpoint"):
    """Restore model (and optimiser, RNG) from a checkpoint dict read from `path`, onto whatever
    backend they are on now; returns the stored progress dict."""
    try:
        model.load_state_dict({k: np.asarray(v) for k, v in state["model"].items()})
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from None
    if restore_rng:
        default_generator.set_state(state["rng"])
    return state["progress"]


def load_checkpoint(path, model, optimizer=None, restore_rng=True):
    """read_checkpoint, then restore_checkpoint; returns the stored progress dict."""
    return restore_checkpoint(read_checkpoint(path), model, optimizer, restore_rng, path)
