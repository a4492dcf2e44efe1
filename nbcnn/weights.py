"""Weights in the formats people exchange: `.safetensors` and `.npz`, PyTorch's keys and layouts.

    net.save("alexnet.safetensors")            # or "alexnet.npz"
    state = nbcnn.load("alexnet.safetensors")  # an OrderedDict of numpy arrays, like torch.load
    net.load_state_dict("alexnet.safetensors") # a path works too

A state_dict's keys and array layouts are PyTorch's (conv weights (out, in/groups, kH, kW),
linear weights (out, in)), so `safetensors.torch.save_file(model.state_dict(), f)` on a machine
with PyTorch writes a file nbcnn loads, and nbcnn's files load in PyTorch.

Files are written through checkpoint.atomic_write (a crash never leaves half a file) and checked
on load: a safetensors file nbcnn wrote carries the SHA-256 of its tensors in its metadata
(`nbcnn.sha256`), an npz file the CRC-32 of every member (zip's own), so a damaged file is
refused instead of loaded with altered weights. safetensors files from elsewhere have no digest;
their header and sizes are still checked by the safetensors package.
"""

import hashlib
import os
import zipfile
from collections import OrderedDict

import numpy as np

from .checkpoint import atomic_write
from .errors import WeightsFileError

FORMATS = (".safetensors", ".npz")
DIGEST_KEY = "nbcnn.sha256"


def _format(path):
    """The file's format from its extension, or a WeightsFileError naming the ones we know."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        raise WeightsFileError(f"{path}: unknown weights format {ext or '(no extension)'!r}; "
                               f"use {' or '.join(FORMATS)}")
    return ext


def _host_state(state):
    """A state_dict (or a module's) as contiguous numpy arrays, in order."""
    if hasattr(state, "state_dict"):
        state = state.state_dict()
    return OrderedDict((str(k), np.asarray(v, order="C")) for k, v in state.items())  # 0-d stays 0-d


def tensors_digest(tensors):
    """SHA-256 (hex) of every tensor's key, dtype, shape and bytes, keys in sorted order."""
    sha = hashlib.sha256()
    for key in sorted(tensors):
        a = np.asarray(tensors[key], order="C")
        sha.update(f"{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        sha.update(a.tobytes())
    return sha.hexdigest()


def save(state, path):
    """Atomically write a state_dict (or a module's) to `path`, .safetensors or .npz by its extension."""
    ext = _format(path)
    tensors = _host_state(state)
    if ext == ".safetensors":
        from safetensors.numpy import save as to_bytes
        data = to_bytes(dict(tensors), metadata={DIGEST_KEY: tensors_digest(tensors), "format": "pt"})
        with atomic_write(path) as f:
            f.write(data)
    else:
        with atomic_write(path) as f:
            np.savez(f, **tensors)


def load(path):
    """The state_dict stored at `path` (.safetensors or .npz) as an OrderedDict of numpy arrays,
    its integrity checked; a WeightsFileError saying what is wrong otherwise."""
    ext = _format(path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"weights file {path} does not exist")
    try:
        tensors, digest = _read_safetensors(path) if ext == ".safetensors" else (_read_npz(path), None)
    except WeightsFileError:
        raise
    except Exception as exc:  # the readers raise many types for a damaged file
        raise WeightsFileError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    if digest is not None and tensors_digest(tensors) != digest:
        raise WeightsFileError(f"weights file {path} is corrupt: its tensors do not match the SHA-256 "
                               "in its metadata (bytes changed on disk or in transfer)")
    return tensors


def _read_safetensors(path):
    from safetensors import safe_open
    with safe_open(os.fspath(path), framework="np") as f:
        metadata = f.metadata() or {}
        tensors = OrderedDict((key, np.array(f.get_tensor(key))) for key in f.keys())
    return tensors, metadata.get(DIGEST_KEY)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            return OrderedDict((key, f[key]) for key in f.files)  # reading a member checks its CRC-32
    except zipfile.BadZipFile as exc:
        raise WeightsFileError(f"weights file {path} is corrupt: {exc}") from None
