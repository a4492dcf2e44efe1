"""The errors nbcnn raises for conditions a caller handles: catch them by class, never by message text."""


class OutOfMemoryError(MemoryError):
    """A backend could not allocate an array, even after freeing every cached block.

    Raised by the caching allocator (nbcnn.memory) on every backend; `Backend.is_out_of_memory`
    also recognises the backend's own out-of-memory errors raised elsewhere (numba's, the driver's).
    """


class NonFiniteLossError(ValueError):
    """The loss is NaN or infinite (the logits were, or the loss overflowed); `loss` is its value."""

    def __init__(self, message, loss=float("nan")):
        super().__init__(message)
        self.loss = loss


class WeightsFileError(ValueError):
    """A weights file (.safetensors, .npz, .onnx) that is missing, unreadable, damaged or of an unknown format."""


class OnnxError(ValueError):
    """A network nbcnn cannot write as ONNX, or an ONNX file it cannot build a network from (nbcnn.onnx)."""
