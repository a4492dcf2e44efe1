"""A caching allocator: memory is allocated once per size and reused once nothing refers to it.

Training asks for the same shapes every step. After the first steps every `empty` is
served from the cache, so the steady state allocates nothing: no cudaMalloc/cudaFree on
the GPU, no fresh pages to fault in on the CPU. This is PyTorch's caching allocator in
its simplest form: sizes rounded up to 512 bytes, one free list per size, no splitting.

A block is a 1-D uint8 array of the backend, and every array handed out is a view of
one. A block is busy exactly while a view of it is alive; `users(block)` counts the views
the backend's way (Python references to a numpy buffer; numba's reference count of a
device allocation, which slices also increment). Handing a block out again as soon as
its last view dies is safe on the GPU because nbcnn runs every kernel and copy on one
stream, in order: later work cannot overtake the kernels still reading the old views.
"""

import threading

import numpy as np

GRANULE = 512  # bytes: request sizes are rounded up to a multiple of this


class CachingAllocator:
    """`empty(shape, dtype)` served from cached blocks; `stats()` and `release()` to inspect and trim."""

    def __init__(self, allocate, users, empty_uncached):
        self._allocate = allocate              # nbytes -> a new 1-D uint8 block
        self._users = users                    # block -> a count that rises with each live view
        self._empty_uncached = empty_uncached  # (shape, dtype) -> array, for empty arrays
        self._blocks = {}                      # rounded size -> list of [block, users when idle]
        self._lock = threading.Lock()          # two threads must never get the same idle block
        self.allocations = 0                   # blocks ever allocated: flat in the steady state

    def empty(self, shape, dtype):
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes == 0:
            return self._empty_uncached(shape, dtype)
        size = -(-nbytes // GRANULE) * GRANULE
        with self._lock:
            block = self._idle(size)
            if block is None:
                block = self._new(size)
            return block[:nbytes].view(dtype).reshape(shape)

    def _idle(self, size):
        for entry in self._blocks.get(size, ()):
            if self._users(entry[0]) == entry[1]:
                return entry[0]
        return None

    def _new(self, size):
        try:
            entry = [self._allocate(size), 0]
        except Exception:
            # Out of memory, most likely: give back the idle blocks of other sizes and retry once.
            if not self._release_idle():
                raise
            entry = [self._allocate(size), 0]
        # Counted with the same expression as in _idle, so the two agree on what "idle" reads.
        entry[1] = self._users(entry[0])
        self._blocks.setdefault(size, []).append(entry)
        self.allocations += 1
        return entry[0]

    def _release_idle(self):
        released = 0
        for size, entries in self._blocks.items():
            busy = [e for e in entries if self._users(e[0]) != e[1]]
            released += len(entries) - len(busy)
            entries[:] = busy
        return released

    def release(self):
        """Free every cached block that no array uses (PyTorch's empty_cache); returns how many."""
        with self._lock:
            return self._release_idle()

    def stats(self):
        """{"allocations": blocks ever allocated, "reserved_bytes": held now, "in_use_bytes": of those, busy}."""
        with self._lock:
            reserved = in_use = 0
            for size, entries in self._blocks.items():
                for e in entries:
                    reserved += size
                    if self._users(e[0]) != e[1]:
                        in_use += size
            return {"allocations": self.allocations, "reserved_bytes": reserved, "in_use_bytes": in_use}
