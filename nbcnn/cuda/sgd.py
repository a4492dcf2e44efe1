"""The fused SGD update on CUDA, over the flattened parameter (nbcnn.kernel_math.sgd_update)."""

from .. import elementwise as ew
from .elementwise import elementwise

sgd_step = elementwise(ew.SGD_STEP)
