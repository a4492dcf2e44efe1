"""Data for training: datasets, transforms and the batch loader."""

from .datasets import (ArrayDataset, DataError, ImageFolder, UnreadableImage, cifar10_dataset, class_subset,
                       dataset_summary, embedded_mnist, idx_dataset, open_dataset, read_idx,
                       stratified_split, stratified_subset, summary_difference)
from .loader import Batch, Loader, epoch_order, load_batch, steps_per_epoch
from .stats import cached_channel_stats, channel_stats
from .transforms import Transform, ten_crops

__all__ = ["ArrayDataset", "Batch", "DataError", "ImageFolder", "Loader", "Transform",
           "UnreadableImage", "cached_channel_stats", "channel_stats", "cifar10_dataset", "class_subset", "dataset_summary",
           "embedded_mnist", "epoch_order",
           "idx_dataset", "load_batch", "open_dataset", "read_idx", "stratified_split",
           "stratified_subset", "steps_per_epoch", "summary_difference", "ten_crops"]
