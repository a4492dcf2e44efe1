"""The fused RMSprop update on CUDA, over the flattened parameter (nbcnn.kernel_math.rmsprop_core)."""

from .. import elementwise as ew
from .elementwise import elementwise

rmsprop_step = ew.rmsprop_op(elementwise)
