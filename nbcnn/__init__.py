"""nbcnn: a Numba-accelerated, pure-Python CNN engine with CPU and CUDA backends."""

from . import lr_scheduler, models
from .array import asarray, device_of, to_numpy
from .backend import get_backend
from .errors import NonFiniteLossError, OutOfMemoryError
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Identity, Linear,
                     LocalResponseNorm, MaxPool2d, ReLU)
from .layers import SyncBatchNorm
from .loss import softmax_cross_entropy
from .module import Module, Parameter, Residual, Sequential
from .optim import SGD, Adam, AdamW, Optimizer, RMSprop
from .random import manual_seed
from .errors import WeightsFileError
from .weights import load

__all__ = [
    "Adam", "AdamW", "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d",
    "Dropout", "Flatten", "Identity", "Linear", "LocalResponseNorm", "MaxPool2d", "Module",
    "NonFiniteLossError", "Optimizer", "OutOfMemoryError", "Parameter", "RMSprop", "ReLU",
    "Residual", "SGD", "Sequential", "asarray", "device_of", "get_backend", "lr_scheduler",
    "manual_seed", "models", "softmax_cross_entropy", "to_numpy",
    "WeightsFileError", "load",
    "SyncBatchNorm",
]
__version__ = "0.1.0"
