"""Seeds and the counter-based hash behind dropout masks.

A dropout mask bit is a pure integer function of (seed, call counter, element index), so
the CPU kernels, the CUDA kernels and a NumPy reference produce the same bits. The hash
functions here are plain Python on int64 values kept below 2**32: the same source is
compiled inside numba.njit and numba.cuda.jit kernels (register_jitable), and runs on NumPy
int64 arrays.
Products are masked to 32 bits right away, so int64 wrap-around never changes the result.

The specification (tests/reference.py implements it on its own, in uint32 arithmetic):
- h is lowbias32 (C. Wellons): x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b;
  x ^= x >> 16, all modulo 2**32; lo and hi are the low and high 32 bits of a 64-bit integer;
- the key of dropout call number `counter` under seed s is h(h(lo(s)) ^ hi(s) ^ h(counter));
- element i (its flat index) is kept when h(h(lo(i) ^ key) ^ hi(i)) >> 8, a uniform 24-bit
  number, is >= p * 2**24 rounded half up; kept elements are scaled by 1 / (1 - p).
"""

import math

import numpy as np
from numba.extending import register_jitable

MASK32 = 0xFFFFFFFF
# A uniform 24-bit draw u is compared with p * 2**24: integer compare, no rounding to argue about.
KEEP_BITS = 24


@register_jitable
def mix32(x):
    """lowbias32 (C. Wellons): a bijective 32-bit integer hash; x in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    x = x ^ (x >> 16)
    return x


@register_jitable
def keep_bit(key, i, threshold):
    """1 when element i is kept by the dropout stream `key`, else 0."""
    h = mix32(mix32((i & MASK32) ^ key) ^ ((i >> 32) & MASK32))
    return 1 if (h >> (32 - KEEP_BITS)) >= threshold else 0


@register_jitable
def keep_threshold(p):
    """The integer threshold for drop probability p: u24 < threshold is dropped (p * 2**24, rounded half up).

    ldexp scales exactly, so only the + 0.5 rounds, on every backend (a * b + c could fuse)."""
    return int(math.floor(math.ldexp(p, KEEP_BITS) + 0.5))


def dropout_key(seed, counter):
    """The 32-bit key of one dropout call: a hash of the global seed and a call counter."""
    seed = int(seed)
    return int(mix32(mix32(seed & MASK32) ^ ((seed >> 32) & MASK32) ^ mix32(int(counter) & MASK32)))


class _Generator:
    """Global seed and the counter of dropout calls drawn from it."""

    def __init__(self, seed=0):
        self.manual_seed(seed)

    def manual_seed(self, seed):
        self.seed = int(seed)
        self.counter = 0
        self.numpy = np.random.default_rng(self.seed)
        # The global position of this process's first sample in the current batch (0 in one
        # process): dropout draws sample j's mask at the global j, so N data-parallel processes
        # draw one process's mask (nbcnn.distributed sets it every step; not part of the state).
        self.sample_offset = 0

    def next_key(self):
        key = dropout_key(self.seed, self.counter)
        self.counter += 1
        return key

    def get_state(self):
        return {"seed": self.seed, "counter": self.counter,
                "numpy": self.numpy.bit_generator.state}

    def set_state(self, state):
        self.seed = int(state["seed"])
        self.counter = int(state["counter"])
        self.numpy = np.random.default_rng()
        self.numpy.bit_generator.state = state["numpy"]


default_generator = _Generator(0)


def manual_seed(seed):
    """Seed parameter initialisation and dropout, like torch.manual_seed."""
    default_generator.manual_seed(seed)
    return default_generator
