"""Softmax cross-entropy, the loss that starts every backward pass."""

import numpy as np

from .backend import Workspace, backend_of
from .errors import NonFiniteLossError


def softmax_cross_entropy(logits, labels):
    """(mean over the batch of -log softmax(logits)[n, labels[n]], dL/dlogits).

    logits (N, K) float on any backend, labels (N,) integers in [0, K) on the same backend.
    Returns the loss as a Python float and the gradient as an array of the logits' backend.
    Raises nbcnn.NonFiniteLossError when a logit is NaN or infinite, ValueError for a label
    outside [0, K).
    """
    backend = backend_of(logits)
    if not backend.is_array(labels):
        raise ValueError(f"labels must be a {backend.name} array like the logits; "
                         f"use nbcnn.asarray(labels, {backend.name!r})")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
    if np.dtype(logits.dtype) not in (np.float32, np.float64):
        raise TypeError(f"logits must be float32 or float64, got {logits.dtype}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits "
                         f"{tuple(logits.shape)}, got {tuple(labels.shape)}")
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"softmax_cross_entropy needs at least one row and one class, got logits {tuple(logits.shape)}")
    logits = backend.contiguous(logits)
    labels = backend.contiguous(labels)
    dlogits = backend.empty(logits.shape, logits.dtype)
    # a workspace per call: its buffers come from the backend's caching allocator, so this allocates nothing
    loss, bad = backend.softmax_cross_entropy(logits, labels, dlogits, Workspace())
    if bad:
        host_labels = backend.to_numpy(labels)
        k = logits.shape[1]
        out = host_labels[(host_labels < 0) | (host_labels >= k)]
        if out.size:
            raise ValueError(f"labels must be in [0, {k}), got {out[:5].tolist()}")
        raise NonFiniteLossError("logits passed to softmax_cross_entropy contain NaN or inf "
                                 f"in {bad} of {logits.shape[0]} rows")
    return loss, dlogits
