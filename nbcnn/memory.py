"""A caching allocator: memory is allocated once per size and reused once nothing refers to it.

Training asks for the same shapes every step. After the first steps every `empty` is
served from the cache, so the steady state allocates nothing: no cudaMalloc/cudaFree on
the GPU, no fresh pages to fault in on the CPU. This is PyTorch's caching allocator in
its simplest form: sizes rounded up to 512 bytes, one free list per size, no splitting.

A block is a 1-D uint8 array of the backend, and every array handed out is a view of
one. A block is busy exactly while a view of it is alive; `users(block)` counts the views
the backend's way (Python references to a numpy buffer; numba's reference count of a
device allocation, which slices also increment). Handing a block out again as soon as
its last view dies is safe on the GPU because nbcnn runs every kernel and copy on the
default stream, in order: later work cannot overtake the kernels still reading the old
views. (Code that launches nbcnn's arrays on other streams must synchronise first.)

Blocks of sizes no longer asked for (another batch size, an evaluation pass) would stay
forever; a block not handed out during the last STALE_REQUESTS requests is freed at the
next allocation, and every idle block is freed, and the allocation retried, when memory
runs out.

With NBCNN_POISON_MEMORY=1 every array handed out is first filled with 0xFF bytes: NaN
in a float, -1 in a signed integer. A kernel that reads memory it did not write (a
missing zero fill, an output element left unwritten) then shows NaN instead of the stale
or zero bytes that hid it; the test suite runs this way (tests/conftest.py).
"""

import math
import operator
import os
import threading

import numpy as np

from .errors import OutOfMemoryError

GRANULE = 512           # bytes: request sizes are rounded up to a multiple of this
STALE_REQUESTS = 4096   # a training step makes about 60 requests
POISON_BYTE = 0xFF      # NaN in every float dtype, -1 in signed integers


class _Entry:
    __slots__ = ("block", "idle_users", "last_request")

    def __init__(self, block):
        self.block = block
        self.idle_users = None
        self.last_request = 0


def slice_view(block, nbytes, shape, dtype):
    """The array (shape, dtype) over the first nbytes of block: a slice, a dtype view, a reshape."""
    return block[:nbytes].view(dtype).reshape(shape)


class CachingAllocator:
    """`empty(shape, dtype)` served from cached blocks; `stats()` and `release()` to inspect and trim."""

    def __init__(self, allocate, users, empty_uncached, view=slice_view, fill_bytes=None,
                 is_out_of_memory=lambda exc: isinstance(exc, MemoryError)):
        self._allocate = allocate              # nbytes -> a new 1-D uint8 block
        self._is_out_of_memory = is_out_of_memory  # exc -> whether `allocate` failed for want of memory
        self._users = users                    # block -> a count that rises with each live view
        self._empty_uncached = empty_uncached  # (shape, dtype) -> array, for empty arrays
        self._view = view                      # (block, nbytes, shape, dtype) -> array over the block
        self._fill_bytes = fill_bytes          # (block, byte) -> None: sets every byte of the block
        self.poison = fill_bytes is not None and os.environ.get("NBCNN_POISON_MEMORY") == "1"
        self._blocks = {}                      # rounded size -> [_Entry]
        self._lock = threading.RLock()         # two threads must never get the same idle block
        self._requests = 0
        self.allocations = 0                   # blocks ever allocated: flat in the steady state

    def empty(self, shape, dtype):
        shape = (operator.index(shape),) if np.ndim(shape) == 0 else tuple(operator.index(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"negative dimensions are not allowed: shape {shape}")
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no int64 wrap-around
        if nbytes == 0:
            return self._empty_uncached(shape, dtype)
        size = -(-nbytes // GRANULE) * GRANULE
        with self._lock:
            self._requests += 1
            entry = self._idle(size)
            if entry is None:
                self._release(lambda e: self._requests - e.last_request > STALE_REQUESTS)
                entry = self._new(size)
            entry.last_request = self._requests
            if self.poison:
                self._fill_bytes(entry.block, POISON_BYTE)
            return self._view(entry.block, nbytes, shape, dtype)

    def _state(self, entry):
        """'idle', 'busy' or 'dead' (its memory went with its context: a CUDA reset)."""
        try:
            users = self._users(entry.block)
        except ReferenceError:
            return "dead"
        return "idle" if users == entry.idle_users else "busy"

    def _idle(self, size):
        entries = self._blocks.get(size, [])
        for entry in entries:
            state = self._state(entry)
            if state == "idle":
                return entry
        entries[:] = [e for e in entries if self._state(e) != "dead"]
        return None

    def _new(self, size):
        try:
            block = self._allocate(size)
        except Exception as exc:
            if not self._is_out_of_memory(exc):
                raise
            block = None
            if self._release(lambda e: True):  # free every idle block, then try once more
                try:
                    block = self._allocate(size)
                except Exception as again:
                    if not self._is_out_of_memory(again):
                        raise
            if block is None:
                raise OutOfMemoryError(f"out of memory allocating {size:,} bytes; arrays in use hold "
                                       f"{self.stats()['in_use_bytes']:,} bytes") from exc
        entry = _Entry(block)
        del block  # a reference of our own would count as a view of the block (users() below)
        # Counted through entry.block as in _state, so both read the same references.
        entry.idle_users = self._users(entry.block)
        self._blocks.setdefault(size, []).append(entry)
        self.allocations += 1
        return entry

    def _release(self, should_free):
        """Drop the idle (and dead) blocks for which should_free(entry) holds; returns how many."""
        released = 0
        for entries in self._blocks.values():
            keep = []
            for e in entries:
                state = self._state(e)
                if state == "busy" or (state == "idle" and not should_free(e)):
                    keep.append(e)
            released += len(entries) - len(keep)
            entries[:] = keep
        return released

    def release(self):
        """Free every cached block that no array uses (PyTorch's empty_cache); returns how many."""
        with self._lock:
            return self._release(lambda e: True)

    def stats(self):
        """{"allocations": blocks ever allocated, "reserved_bytes": held now, "in_use_bytes": of those, busy}."""
        with self._lock:
            reserved = in_use = 0
            for size, entries in self._blocks.items():
                for e in entries:
                    state = self._state(e)
                    reserved += size if state != "dead" else 0
                    in_use += size if state == "busy" else 0
            return {"allocations": self.allocations, "reserved_bytes": reserved, "in_use_bytes": in_use}
