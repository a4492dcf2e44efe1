"""ReLU on the CPU: nbcnn.kernel_math's formulas over the flattened arrays."""

from .. import elementwise as ew
from .elementwise import elementwise

relu_forward = elementwise(ew.RELU_FORWARD)
relu_backward = elementwise(ew.RELU_BACKWARD)
