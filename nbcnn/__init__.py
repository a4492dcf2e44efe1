"""nbcnn: a Numba-accelerated, pure-Python CNN engine with CPU and CUDA backends."""

from . import lr_scheduler, models
from .array import asarray, device_of, to_numpy
from .backend import get_backend
from .errors import NonFiniteLossError, OutOfMemoryError
from .layers import Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU
from .layers import BatchNorm1d, BatchNorm2d
from .loss import softmax_cross_entropy
from .module import Module, Parameter, Sequential
from .optim import SGD, Adam, AdamW, Optimizer, RMSprop
from .random import manual_seed

__all__ = [
    "Conv2d", "Dropout", "Flatten", "Linear", "LocalResponseNorm", "MaxPool2d", "Module",
    "NonFiniteLossError", "OutOfMemoryError", "Parameter", "ReLU", "SGD", "Sequential", "asarray", "device_of", "get_backend",
    "manual_seed", "models", "softmax_cross_entropy", "to_numpy",
    "Adam", "AdamW", "Optimizer", "RMSprop", "lr_scheduler",
]
__all__ += ["BatchNorm1d", "BatchNorm2d"]
__version__ = "0.1.0"
