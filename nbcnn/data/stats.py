"""Per-channel pixel statistics of a training set: the mean subtracted from every input and the
eigen-decomposition of the RGB covariance behind AlexNet's lighting noise, computed once
from a fixed sample and cached on disk."""

import hashlib
import os
import pickle

import numpy as np

from .datasets import DataError, UnreadableImage
from .transforms import Transform, center_crop, resize_short


def channel_stats(dataset, resize, crop, sample=1000, seed=0):
    """{"mean": (C,), "eigval": (C,), "eigvec": (C, C)} of the [0, 1] pixels of centre crops of
    up to `sample` training images drawn with a fixed seed; unreadable images are passed over.

    The sums are accumulated image by image (float64), so memory stays at one crop whatever
    the crop size and the sample.
    """
    indices = np.random.default_rng(seed).permutation(len(dataset))[:sample]
    plain = Transform(resize, crop)
    count, total, outer, unreadable = 0, 0.0, 0.0, []
    for i in indices:
        try:
            img = dataset.load(int(i))
        except UnreadableImage as exc:
            unreadable.append((int(i), str(exc)))
            continue
        x = plain.to_float(center_crop(resize_short(img, resize), crop))
        p = x.reshape(x.shape[0], -1).astype(np.float64)
        count, total, outer = count + p.shape[1], total + p.sum(axis=1), outer + p @ p.T
    if not count:
        # the sample's order is random: name the first bad file in the dataset's own order
        first = f"; the first in folder order: {min(unreadable)[1]}" if unreadable else ""
        raise DataError(f"none of the {len(indices):,} training images sampled from {dataset.name} could be "
                        f"read, so there are no channel statistics{first}")
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / max(count - 1, 1)
    eigval, eigvec = np.linalg.eigh(np.atleast_2d(cov))
    return {"mean": mean.astype(np.float32),
            "eigval": np.clip(eigval, 0, None).astype(np.float32),
            "eigvec": eigvec.astype(np.float32)}


def cache_dir():
    """$NBCNN_CACHE, else $XDG_CACHE_HOME/nbcnn, else ~/.cache/nbcnn."""
    if os.environ.get("NBCNN_CACHE"):
        return os.environ["NBCNN_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nbcnn")


def fingerprint(dataset, resize, crop, sample):
    """A short hash naming the dataset's identity and the crop settings."""
    h = hashlib.sha1(repr((type(dataset).__name__, dataset.name, len(dataset), resize, crop, sample)).encode())
    if hasattr(dataset, "paths"):
        h.update(repr((dataset.paths[:20], dataset.paths[-20:])).encode())
    else:
        h.update(dataset.images[:100].tobytes())
    h.update(dataset.labels.tobytes())
    return h.hexdigest()[:16]


def cached_channel_stats(dataset, resize, crop, sample=1000):
    """channel_stats, read from the cache when it was computed before; written atomically."""
    from ..checkpoint import atomic_write
    path = os.path.join(cache_dir(), f"stats-{fingerprint(dataset, resize, crop, sample)}.pkl")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError):
        pass
    stats = channel_stats(dataset, resize, crop, sample)
    try:
        with atomic_write(path) as f:
            pickle.dump(stats, f)
    except OSError:
        pass  # a read-only cache only costs the recomputation
    return stats
