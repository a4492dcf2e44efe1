"""Dropout on the CPU; the keep bit of element i is nbcnn.random.keep_bit(key, i), the same on every backend."""

from .. import elementwise as ew
from .elementwise import elementwise

dropout_forward = ew.dropout_op(elementwise)
dropout_backward = dropout_forward  # dx = dy * keep / (1 - p): the same mask, recomputed from the key
