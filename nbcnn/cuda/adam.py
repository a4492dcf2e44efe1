"""The fused Adam/AdamW update on CUDA, over the flattened parameter (nbcnn.kernel_math.adam_update, amsgrad_update)."""

from .. import elementwise as ew
from .elementwise import elementwise

adam_step = ew.adam_op(elementwise)
