"""nbcnn: a Numba-accelerated, pure-Python CNN engine with CPU and CUDA backends."""

from . import models
from .array import asarray, device_of, to_numpy
from .backend import get_backend
from .errors import NonFiniteLossError, OutOfMemoryError
from .layers import (AdaptiveAvgPool2d, AvgPool2d, Conv2d, Dropout, Flatten, Identity, Linear, LocalResponseNorm,
                     MaxPool2d, ReLU)
from .loss import softmax_cross_entropy
from .module import Module, Parameter, Residual, Sequential
from .optim import SGD
from .random import manual_seed

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "Identity", "Residual",
    "Conv2d", "Dropout", "Flatten", "Linear", "LocalResponseNorm", "MaxPool2d", "Module",
    "NonFiniteLossError", "OutOfMemoryError", "Parameter", "ReLU", "SGD", "Sequential", "asarray", "device_of", "get_backend",
    "manual_seed", "models", "softmax_cross_entropy", "to_numpy",
]
__version__ = "0.1.0"
