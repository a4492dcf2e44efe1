"""The layers: parameters, forward, backward. All arithmetic is in the backend kernels.

Each forward keeps what its backward needs (the input, the output, an argmax, a scale);
backward takes dL/dy and returns dL/dx, accumulating parameter gradients into `.grad`;
with input_grad=False it skips dL/dx and returns None (a network's first layer: AlexNet's
conv1 then saves a GEMM and a col2im per step).
A layer remembers only its last forward: run backward before the next forward of the same
layer (a validation pass between a training forward and its backward would replace it),
and use a separate instance for each place in a network.
"""

import math

import numpy as np

from .kernel_math import CUMULATIVE
from .module import Module, iter_modules
from .random import default_generator


def _pair(v, name):
    """An int or a pair of equal ints (square kernels and strides only)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"{name} must be an int or a pair of equal ints, got {v!r}")
        v = v[0]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        raise TypeError(f"{name} must be an int, got {v!r}")
    return int(v)


def _count(v, name):
    """A positive int, refusing floats that int() would silently truncate."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _uniform(shape, bound):
    return default_generator.numpy.uniform(-bound, bound, size=shape)


def _groups(groups, in_channels, out_channels):
    """A convolution's group count: a positive int dividing both channel counts."""
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"Conv2d groups must be a positive int, got {groups!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"Conv2d groups={groups} must divide both in_channels={in_channels} "
                         f"and out_channels={out_channels}")
    return int(groups)


def _data(p):
    """A parameter's array, or None for an absent one (a convolution without bias)."""
    return None if p is None else p.data


def _grad(p):
    """Where backward accumulates p's gradient, or None for an absent or frozen parameter
    (requires_grad False): the backend then skips computing it, the weight-gradient GEMM included."""
    return p.grad if p is not None and p.requires_grad else None


class Conv2d(Module):
    """2-D cross-correlation, weight (out, in/groups, k, k), zero padding; PyTorch's Kaiming-uniform init.

    groups G splits the channels into G groups, output group g seeing only input group g
    (G = in_channels: depthwise, out_channels a multiple of it); bias=False: no bias
    parameter (and no state_dict key), as in PyTorch.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = _count(in_channels, "in_channels"), _count(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.groups = _groups(groups, self.in_channels, self.out_channels)
        if min(self.in_channels, self.out_channels, self.kernel_size, self.stride) < 1 or self.padding < 0:
            raise ValueError(f"Conv2d needs positive channels, kernel and stride and padding >= 0: {self.extra_repr()}")
        k = self.kernel_size
        bound = 1.0 / math.sqrt(self.in_channels // self.groups * k * k)  # 1/sqrt(fan_in), as PyTorch
        self.weight = self.add_parameter(
            "weight", _uniform((self.out_channels, self.in_channels // self.groups, k, k), bound))
        self.bias = self.add_parameter("bias", _uniform((self.out_channels,), bound)) if bias else None

    def output_size(self, h):
        return (h + 2 * self.padding - self.kernel_size) // self.stride + 1

    def forward(self, x):
        x = self.check_input(x, 4)
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"Conv2d expects {self.in_channels} input channels, got shape {tuple(x.shape)}")
        if min(h, w) + 2 * self.padding < self.kernel_size:
            raise ValueError(f"Conv2d input {h}x{w} with padding {self.padding} is smaller than the "
                             f"{self.kernel_size}x{self.kernel_size} kernel")
        y = self.backend.empty((n, self.out_channels, self.output_size(h), self.output_size(w)), x.dtype)
        self.backend.conv2d_forward(x, self.weight.data, _data(self.bias), self.stride, self.padding, y, self.ws,
                                    groups=self.groups)
        self.x = x
        return self.expect_grad_like(y)

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        dx = self.backend.empty(self.x.shape, self.x.dtype) if input_grad else None
        self.backend.conv2d_backward(self.x, self.weight.data, dy, self.stride, self.padding,
                                     dx, _grad(self.weight), _grad(self.bias), self.ws, groups=self.groups)
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}"
                + (f", groups={self.groups}" if self.groups != 1 else "")
                + (", bias=False" if self.bias is None else ""))


class Linear(Module):
    """y = x @ weight^T + bias, weight (out, in); PyTorch's Kaiming-uniform init."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = _count(in_features, "in_features"), _count(out_features, "out_features")
        if min(self.in_features, self.out_features) < 1:
            raise ValueError(f"Linear needs positive sizes: {self.extra_repr()}")
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = self.add_parameter("weight", _uniform((self.out_features, self.in_features), bound))
        self.bias = self.add_parameter("bias", _uniform((self.out_features,), bound))

    def forward(self, x):
        x = self.check_input(x, 2)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects {self.in_features} input features, got shape {tuple(x.shape)}")
        y = self.backend.empty((x.shape[0], self.out_features), x.dtype)
        self.backend.linear_forward(x, self.weight.data, self.bias.data, y)
        self.x = x
        return self.expect_grad_like(y)

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        dx = self.backend.empty(self.x.shape, self.x.dtype) if input_grad else None
        self.backend.linear_backward(self.x, self.weight.data, dy, dx, _grad(self.weight), _grad(self.bias))
        return dx

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ReLU(Module):
    """y = max(x, 0)."""

    def forward(self, x):
        x = self.check_input(x)
        self.y = self.backend.empty(x.shape, x.dtype)
        self.backend.relu_forward(x, self.y)
        return self.expect_grad_like(self.y)

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        if not input_grad:
            return None
        dx = self.backend.empty(dy.shape, dy.dtype)
        self.backend.relu_backward(self.y, dy, dx)
        return dx


class _Pooling(Module):
    """The pooling layers' forward and backward around their ops, `pool(x, y)` and `unpool(dy, dx)`:
    forward keeps the input's shape for backward (and whatever `pool` stores)."""

    def forward(self, x):
        x = self.check_input(x, 4)
        if min(x.shape[2:]) < 1:
            raise ValueError(f"{type(self).__name__} input must have pixels, got shape {tuple(x.shape)}")
        y = self.backend.empty(self.output_shape(x), x.dtype)
        self.pool(x, y)
        self.x_shape, self.x_dtype = x.shape, x.dtype
        return self.expect_grad_like(y)

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        if not input_grad:
            return None
        dx = self.backend.empty(self.x_shape, self.x_dtype)
        self.unpool(dy, dx)
        return dx


class _Pool2d(_Pooling):
    """Square windows of kernel_size, stride (default: the kernel size) and padding, floor mode."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        name = type(self).__name__
        if self.kernel_size < 1 or self.stride < 1 or self.padding < 0:
            raise ValueError(f"{name} needs a positive kernel and stride and padding >= 0: "
                             f"{_Pool2d.extra_repr(self)}")
        if self.padding > self.kernel_size // 2:  # else a window could lie wholly in the padding
            raise ValueError(f"{name} padding must be at most half the kernel size, as in PyTorch: "
                             f"got padding={self.padding} for kernel_size={self.kernel_size}")

    def output_shape(self, x):
        """(N, C, OH, OW) for input x, or a ValueError when the padded input is smaller than a window."""
        n, c, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        if min(h, w) + 2 * p < k:
            padded = f" with padding {p}" if p else ""
            raise ValueError(f"{type(self).__name__} input {h}x{w}{padded} is smaller than the {k}x{k} window")
        return n, c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max pooling, padding -inf (PyTorch's), floor mode; stride defaults to the kernel size.
    Overlapping when stride < kernel (AlexNet's 3/2); ResNet's stem is MaxPool2d(3, 2, 1)."""

    def pool(self, x, y):
        self.argmax = self.backend.empty(y.shape, np.int32)  # forward's output for backward
        self.backend.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding, y, self.argmax)

    def unpool(self, dy, dx):
        self.backend.maxpool2d_backward(dy, self.argmax, dx)


class AvgPool2d(_Pool2d):
    """Average pooling, zero padding, floor mode; stride defaults to the kernel size. The divisor is
    k*k with count_include_pad (PyTorch's default), else the window's pixels inside the input.
    ceil_mode stands where PyTorch has it and must be False."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        if ceil_mode:
            raise ValueError("AvgPool2d supports floor mode only: ceil_mode must be False")
        self.count_include_pad = bool(count_include_pad)

    def pool(self, x, y):
        self.backend.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding, self.count_include_pad, y)

    def unpool(self, dy, dx):
        self.backend.avgpool2d_backward(dy, self.kernel_size, self.stride, self.padding, self.count_include_pad, dx)

    def extra_repr(self):
        return f"{super().extra_repr()}, count_include_pad={self.count_include_pad}"


class AdaptiveAvgPool2d(_Pooling):
    """Average pooling to a fixed output size, PyTorch's bins: row i covers [floor(i*H/OH), ceil((i+1)*H/OH)).

    output_size: an int (square) or a pair (OH, OW), None in a pair keeping that input size. 1 is
    global average pooling (ResNet); larger than the input, bins repeat pixels, as in PyTorch.
    """

    def __init__(self, output_size):
        super().__init__()
        sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if len(sizes) != 2:
            raise ValueError(f"AdaptiveAvgPool2d output_size must be an int or a pair, got {output_size!r}")
        self.output_size = tuple(None if v is None else _count(v, "AdaptiveAvgPool2d output_size") for v in sizes)

    def output_shape(self, x):
        n, c, h, w = x.shape
        oh, ow = self.output_size
        return n, c, h if oh is None else oh, w if ow is None else ow

    def pool(self, x, y):
        self.backend.adaptive_avgpool2d_forward(x, y)

    def unpool(self, dy, dx):
        self.backend.adaptive_avgpool2d_backward(dy, dx)

    def extra_repr(self):
        oh, ow = self.output_size
        return f"output_size={oh if oh == ow else self.output_size}"


class Identity(Module):
    """y = x: a placeholder (PyTorch's; arguments are accepted and ignored)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return self.expect_grad_like(self.check_input(x))

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        return dy if input_grad else None


class LocalResponseNorm(Module):
    """b_c = a_c / (k + alpha/size * sum_{c'} a_{c'}^2)^beta over the `size` channels centred on c
    (PyTorch's convention: alpha is divided by size)."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size = _count(size, "size")
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)
        if not (self.k > 0 and math.isfinite(self.k) and math.isfinite(self.alpha) and math.isfinite(self.beta)):
            raise ValueError(f"LocalResponseNorm needs finite alpha and beta and k > 0: {self.extra_repr()}")

    def forward(self, x):
        x = self.check_input(x, 4)
        y = self.backend.empty(x.shape, x.dtype)
        self.scale = self.backend.empty(x.shape, x.dtype)  # forward's output for backward
        self.backend.lrn_forward(x, self.size, self.alpha, self.beta, self.k, y, self.scale)
        self.x, self.y = x, y
        return self.expect_grad_like(y)

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        if not input_grad:
            return None
        dx = self.backend.empty(dy.shape, dy.dtype)
        self.backend.lrn_backward(self.x, self.y, self.scale, dy, self.size, self.alpha, self.beta, dx)
        return dx

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class Dropout(Module):
    """Zero each element with probability p in training, scaling the rest by 1/(1-p); identity in eval.

    The mask is a hash of (seed, call counter, element index) (nbcnn.random): the same bits
    on every backend. backward recomputes it from the stored key instead of storing it.
    """

    def __init__(self, p=0.5):
        super().__init__()
        self.p = float(p)
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1), got {p}")

    def forward(self, x):
        x = self.check_input(x)
        self.active = self.training and self.p > 0
        if not self.active:
            return self.expect_grad_like(x)
        self.key = default_generator.next_key()
        # dim 0 is the batch: sample j's mask is drawn at its global position (nbcnn.distributed)
        start = default_generator.sample_offset
        self.offset = start * (x.size // x.shape[0]) if start else 0
        y = self.backend.empty(x.shape, x.dtype)
        self.backend.dropout_forward(x, self.p, self.key, y, self.offset)
        return self.expect_grad_like(y)

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        if not input_grad:
            return None
        if not self.active:
            return dy
        dx = self.backend.empty(dy.shape, dy.dtype)
        self.backend.dropout_backward(dy, self.p, self.key, dx, self.offset)
        return dx

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), a view."""

    def forward(self, x):
        x = self.check_input(x)
        self.x_shape = x.shape
        return self.expect_grad_like(self.backend.reshape(x, (x.shape[0], int(np.prod(x.shape[1:])))))

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        return self.backend.reshape(dy, self.x_shape) if input_grad else None


class _BatchNorm(Module):
    """Batch normalisation over every dimension but the channels (Ioffe and Szegedy, 2015), PyTorch's semantics.

    Training: y = weight * (x - mean) / sqrt(var + eps) + bias with the batch's per-channel mean
    and biased variance, and the running statistics updated as PyTorch does (the variance
    unbiased): running = (1 - momentum) * running + momentum * batch statistic, or a cumulative
    average when momentum is None. Eval: the running statistics instead. The running
    statistics and num_batches_tracked are buffers (state_dict, `to`), not parameters.
    affine=False: no weight and bias (1 and 0). track_running_stats=False: no buffers, and
    the batch's statistics in eval too.
    """

    rank = None  # the input ranks a subclass accepts

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.num_features = _count(num_features, "num_features")
        self.eps = float(eps)
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"{type(self).__name__} eps must be a finite number >= 0, got {eps!r}")
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.number))
                                     or not 0 <= momentum <= 1):
            raise ValueError(f"{type(self).__name__} momentum must be a number in [0, 1] or None "
                             f"(a cumulative average), got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        c = self.num_features
        self.weight = self.bias = None  # as PyTorch's without affine
        if self.affine:
            self.weight = self.add_parameter("weight", np.ones(c))
            self.bias = self.add_parameter("bias", np.zeros(c))
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(c))
            self.register_buffer("running_var", np.ones(c))
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))

    @property
    def running_mean(self):
        return self._buffers.get("running_mean")

    @property
    def running_var(self):
        return self._buffers.get("running_var")

    @property
    def num_batches_tracked(self):
        return self._buffers.get("num_batches_tracked")

    def _scale_and_shift(self, dtype):
        """(weight, bias) arrays: the parameters, or 1 and 0 without affine."""
        if self.affine:
            return self.weight.data, self.bias.data
        c = self.num_features
        ones, zeros = self.ws.get("ones", (c,), dtype, self.backend.empty), self.ws.get("zeros", (c,), dtype, self.backend.empty)
        self.backend.fill(ones, 1)
        self.backend.fill(zeros, 0)
        return ones, zeros

    def forward(self, x):
        name = type(self).__name__
        x = self.check_input(x)
        if x.ndim not in self.rank:
            raise ValueError(f"{name} expects a {' or '.join(f'{r}-D' for r in self.rank)} input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name} expects {self.num_features} channels, got shape {tuple(x.shape)}")
        n, c = x.shape[0], x.shape[1]
        x3 = self.backend.reshape(x, (n, c, int(np.prod(x.shape[2:], dtype=np.int64))))
        self.batch_stats = self.training or not self.track_running_stats
        if self.batch_stats and n * x3.shape[2] < 2:
            raise ValueError(f"{name} expected more than 1 value per channel when training, got input shape "
                             f"{tuple(x.shape)} (PyTorch refuses it too: a variance of one value)")
        be = self.backend
        self.gamma, beta = self._scale_and_shift(x.dtype)
        y = be.empty(x3.shape, x.dtype)
        self.mean, self.invstd = be.empty((c,), x.dtype), be.empty((c,), x.dtype)  # for backward
        if self.batch_stats:
            self._forward_batch_stats(x3, beta, y)
        else:
            be.batchnorm_forward_eval(x3, self.gamma, beta, self.running_mean, self.running_var, self.eps,
                                      y, self.mean, self.invstd)
        self.x = x3
        return self.expect_grad_like(be.reshape(y, x.shape))

    def _forward_batch_stats(self, x3, beta, y):
        """y, mean, invstd (and the running statistics) from the batch's statistics."""
        self.backend.batchnorm_forward_train(x3, self.gamma, beta, self.eps, self._momentum(), self.running_mean,
                                             self.running_var, self.num_batches_tracked, y, self.mean, self.invstd,
                                             self.ws)

    def _momentum(self):
        return CUMULATIVE if self.momentum is None else self.momentum

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        be = self.backend
        if self.affine:
            dgamma, dbeta = self.weight.grad, self.bias.grad
        else:  # nothing to learn: the kernel's sums go to scratch
            dgamma = self.ws.get("dgamma", (self.num_features,), dy.dtype, be.empty)
            dbeta = self.ws.get("dbeta", (self.num_features,), dy.dtype, be.empty)
        dx = be.empty(self.x.shape, self.x.dtype) if input_grad else None
        self._backward_kernels(be.reshape(dy, self.x.shape), dx, dgamma, dbeta)
        return be.reshape(dx, dy.shape) if input_grad else None

    def _backward_kernels(self, dy3, dx, dgamma, dbeta):
        """dgamma, dbeta += this batch's sums; dx (None: not wanted)."""
        self.backend.batchnorm_backward(self.x, self.gamma, self.mean, self.invstd, dy3, self.batch_stats, dx, dgamma,
                                        dbeta, self.ws)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) features or (N, C, L) sequences, per channel C."""

    rank = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) maps, per channel C."""

    rank = (4,)


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation with the statistics of the GLOBAL batch of data-parallel processes
    (PyTorch's nn.SyncBatchNorm: its constructor, semantics and state_dict keys, so checkpoints
    interchange with BatchNorm2d's). N processes at batch B then normalise as one process at N*B.

    Training, in a World of several processes (process_group): each process computes its shard's
    per-channel (count, mean, sum of squared deviations) in float64, the processes' triples are
    gathered (one MPI allgather of C*3 numbers) and combined in rank order (Chan et al.), so
    every process normalises with the same bits; the running statistics get the global batch's.
    Backward gathers each process's (sum dy, sum dy*xhat) (C*2 numbers) and gives each process
    the gradient of the global batch's loss for its shard, scaled for DataParallel's weighting
    (backend.batchnorm_backward_gathered); weight and bias gradients stay local (DataParallel
    averages them). Eval, or without a world (process_group None) or with one process: BatchNorm2d
    exactly, no communication.

    nbcnn.distributed.DataParallel hands its World to every SyncBatchNorm of the model whose
    process_group is None (as PyTorch defaults to the whole world). Every process must hold at
    least one sample of each batch (DataParallel refuses a step that would give one none).
    """

    rank = (2, 3, 4)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group
        self.gathered = None  # the processes' forward statistics (P,C,3) float64, for backward

    def _syncing(self):
        world = self.process_group
        return self.training and world is not None and world.size > 1

    def _forward_batch_stats(self, x3, beta, y):
        self.gathered = None
        if not self._syncing():
            return super()._forward_batch_stats(x3, beta, y)
        be = self.backend
        local = self.ws.get("local_stats", (x3.shape[1], 3), np.float64, be.empty)
        be.batchnorm_local_stats(x3, local)
        self.gathered = self.process_group.allgather(local)
        be.batchnorm_forward_gathered(x3, self.gamma, beta, self.eps, self._momentum(), self.gathered,
                                      self.running_mean, self.running_var, self.num_batches_tracked, y, self.mean,
                                      self.invstd, self.ws)

    def _backward_kernels(self, dy3, dx, dgamma, dbeta):
        if self.gathered is None:
            return super()._backward_kernels(dy3, dx, dgamma, dbeta)
        be = self.backend
        sums = self.ws.get("grad_sums", (dy3.shape[1], 2), np.float64, be.empty)
        be.batchnorm_grad_sums(self.x, dy3, self.mean, self.invstd, sums, dgamma, dbeta)
        if dx is not None:  # every process's first layer alike: all skip the gather together
            be.batchnorm_backward_gathered(self.x, dy3, self.gamma, self.mean, self.invstd, self.gathered,
                                           self.process_group.allgather(sums), dx, self.ws)

    @staticmethod
    def convert_sync_batchnorm(module, process_group=None):
        """Every BatchNorm1d and BatchNorm2d in `module` (itself included) made a SyncBatchNorm,
        IN PLACE: the same objects, their parameters (an optimiser already holding them goes on
        working), buffers, names and state_dict keys. Returns `module`, so that PyTorch's
        `model = SyncBatchNorm.convert_sync_batchnorm(model)` reads the same."""
        for m in iter_modules(module):
            if type(m) in (BatchNorm1d, BatchNorm2d):
                # changing the class rather than building new layers: no container (Sequential,
                # Residual, a user's Module) needs a way to replace its children
                m.__class__ = SyncBatchNorm
                m.process_group, m.gathered = process_group, None
        return module
