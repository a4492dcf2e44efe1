"""The backend contract: every op a layer may call, with its math, shapes and dtypes.

A backend is an object with the methods below. Layers call only these; no layer holds
arithmetic or asks which device it is on. `nbcnn/cpu/` (numba.njit) and `nbcnn/cuda/`
(numba.cuda) implement the contract file for file.

Conventions shared by every op:
- Layout NCHW; conv weight (out, in, kh, kw); linear weight (out, in), as in PyTorch.
- Float arrays are float32 (training) or float64 (gradient checks), C-contiguous, and all
  arrays passed to one call share one dtype. Labels and argmax indices are int64/int32.
- Output arrays are allocated by the caller and passed in; an op writes them in full.
  What a forward leaves for its backward (max pooling's argmax, LRN's scale) is an output
  like y. Arguments named `dw`, `db` are parameter gradients and are *accumulated* (+=),
  like PyTorch's `.grad`; every other output is overwritten.
- Scratch memory, used only during one call (the im2col matrix, per-thread partial sums),
  comes from `ws`, a `Workspace`: the calling layer's named buffers, allocated once per
  shape and reused on later calls. Every op that needs scratch takes one; no op keeps
  state of its own between calls (module-level buffers, caches of arrays).
- Shapes are validated by the layers before a call; backends may assume them.
"""

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Backend:
    """The contract. A backend implements every method not composed here of the others
    (zeros); `implement` binds them from the backend's files. See the module docstring."""

    name = "abstract"

    # -- arrays ------------------------------------------------------------------------
    def is_array(self, a):
        """True when `a` is an array of this backend (a numpy array on cpu, a device array on cuda)."""
        raise NotImplementedError

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array, from the backend's caching allocator (nbcnn.memory).

        Its memory returns to the cache when the array and every view of it are gone, so
        a training step in its steady state allocates nothing.
        """
        raise NotImplementedError

    def zeros(self, shape, dtype):
        """A C-contiguous array of zeros."""
        a = self.empty(shape, dtype)
        self.fill(a, 0)
        return a

    def from_numpy(self, a):
        """Copy a host numpy array (any shape and strides) into a new C-contiguous array of this backend."""
        raise NotImplementedError

    def to_numpy(self, a):
        """Copy an array of this backend into a new host numpy array."""
        raise NotImplementedError

    def fill(self, a, value):
        """a[...] = value."""
        raise NotImplementedError

    def scale(self, a, factor):
        """a[...] = a * factor (a C-contiguous, float32 or float64; the product in float64, then rounded)."""
        raise NotImplementedError

    def copy(self, src, dst):
        """dst[...] = src (same shape and dtype); src any strides, dst C-contiguous."""
        raise NotImplementedError

    def contiguous(self, a):
        """`a` itself when C-contiguous, else a C-contiguous copy; any rank, any strides."""
        raise NotImplementedError

    def reshape(self, a, shape):
        """A view of contiguous `a` with a new shape (no copy)."""
        raise NotImplementedError

    def add(self, src, dst):
        """dst += src, element-wise: gradient accumulation."""
        raise NotImplementedError

    def add_out(self, a, b, y):
        """y = a + b, element-wise, any shape (all three C-contiguous, one size): a residual sum."""
        raise NotImplementedError

    def memory_stats(self):
        """The caching allocator's counters: {"allocations", "reserved_bytes", "in_use_bytes"}."""
        raise NotImplementedError

    def empty_cache(self):
        """Free the cached memory no array uses; returns the number of blocks freed."""
        raise NotImplementedError

    def is_out_of_memory(self, exc):
        """True when exception `exc` says this backend ran out of memory: nbcnn.OutOfMemoryError
        (what `empty` raises), or the backend's own error raised elsewhere (a CUDA driver call)."""
        raise NotImplementedError

    # -- GEMM --------------------------------------------------------------------------
    def matmul(self, a, b, c):
        """c = a @ b; a (M,K), b (K,N), c (M,N), C-contiguous. The GEMM behind conv and linear."""
        raise NotImplementedError

    # -- convolution -------------------------------------------------------------------
    def conv2d_forward(self, x, w, b, stride, pad, y, ws, groups=1):
        """y[n,o,i,j] = b[o] + sum_{c<C/G,p,q} w[o,c,p,q] * xpad[n, g*C/G+c, i*stride+p, j*stride+q],
        g = o // (O/G): output channel o sees only the C/G input channels of its group g.

        x (N,C,H,W), w (O,C/G,KH,KW), b (O,) or None (no bias), y (N,O,OH,OW) with
        OH = (H+2*pad-KH)//stride+1; G = groups divides C and O. Zero padding.
        Computed as im2col followed by a GEMM per group with that group's (O/G, C/G*KH*KW)
        weight; depthwise convolution (G = C > 1: one input channel per group, O = C*M for a
        channel multiplier M) by a direct kernel instead, summing each output's KH*KW
        products in float64. The CPU computes 3x3, stride 1, padding 1, one-group convolutions
        of the shapes its rule picks (use_winograd: C >= 16 on maps >= 8x8) by Winograd
        F(2x2, 3x3) instead (nbcnn/cpu/winograd.py): the same result up to float32 rounding;
        likewise 5x5, stride 1, padding 2 (C >= 32 on maps >= 13x13), as four 3x3 sub-kernels.
        The CUDA backend has the same paths, forward and backward, for every such one-group
        convolution, taken only when nbcnn.cuda.winograd.MODE asks (off by default).
        """
        raise NotImplementedError

    def conv2d_backward(self, x, w, dy, stride, pad, dx, dw, db, ws, groups=1):
        """dx = col2im(W_g^T @ dy_g) per group g; dw += dy_g @ im2col(x_g)^T; db += sum_{n,i,j} dy.

        Shapes and groups as in conv2d_forward; dx (N,C,H,W) is overwritten, dw and db
        accumulate. Each of dx, dw, db may be None: that gradient is not computed (dw None
        skips the weight-gradient GEMM and its im2col: a frozen weight; db None: a frozen or
        absent bias). Depthwise (G = C > 1): direct kernels; dw[o,0,p,q] is a sum over
        N*OH*OW products, in float64 and in a fixed order (deterministic, no atomics).
        The CPU's backward takes Winograd F(2x2, 3x3) (3x3 or 5x5) where use_winograd_backward says so.
        """
        raise NotImplementedError

    # -- pooling -----------------------------------------------------------------------
    def maxpool2d_forward(self, x, k, stride, pad, y, argmax):
        """y[n,c,i,j] = max_{p,q<k} xpad[n,c,i*stride+p,j*stride+q]; padding -inf, floor mode.

        x (N,C,H,W), y and argmax (N,C,OH,OW) with OH = (H+2*pad-k)//stride+1, 0 <= pad <= k//2
        (so every window holds a pixel). argmax, int32, holds the flat index (h*W + w) of the
        maximum within the unpadded (H,W) plane; ties go to the first maximum in row-major
        order, as in PyTorch; a NaN wins (the first NaN).
        """
        raise NotImplementedError

    def maxpool2d_backward(self, dy, argmax, dx):
        """dx = 0, then dx[n,c].flat[argmax[n,c,i,j]] += dy[n,c,i,j] (overlapping windows add)."""
        raise NotImplementedError

    def avgpool2d_forward(self, x, k, stride, pad, count_include_pad, y):
        """y[n,c,i,j] = (sum of x over window (i,j) inside the plane) / divisor; zero padding, floor mode.

        Window (i,j) covers rows i*stride-pad .. +k-1 and columns j*stride-pad .. +k-1; shapes
        as in maxpool2d_forward. divisor = k*k with count_include_pad, else the number of the
        window's pixels inside the plane (PyTorch's AvgPool2d). Sums in float64.
        """
        raise NotImplementedError

    def avgpool2d_backward(self, dy, k, stride, pad, count_include_pad, dx):
        """dx[n,c,h,w] = sum over the windows (i,j) holding (h,w) of dy[n,c,i,j] / divisor(i,j).

        A gather in float64 (no atomics): deterministic, the same order on every backend.
        Pixels that no window holds get 0. Arguments as in avgpool2d_forward.
        """
        raise NotImplementedError

    def adaptive_avgpool2d_forward(self, x, y):
        """y[n,c,i,j] = mean of x[n,c,h0:h1,w0:w1], PyTorch's adaptive bins of y's size over x's:
        h0 = floor(i*H/OH), h1 = ceil((i+1)*H/OH) (likewise w). x (N,C,H,W), y (N,C,OH,OW), any OH, OW >= 1."""
        raise NotImplementedError

    def adaptive_avgpool2d_backward(self, dy, dx):
        """dx[n,c,h,w] = sum over the bins (i,j) holding (h,w) of dy[n,c,i,j] / their size; a gather, as in avgpool2d_backward."""
        raise NotImplementedError

    # -- element-wise ------------------------------------------------------------------
    def relu_forward(self, x, y):
        """y = max(x, 0), any shape; NaN stays NaN (PyTorch's rule: divergence stays visible)."""
        raise NotImplementedError

    def relu_backward(self, y, dy, dx):
        """dx = dy where y > 0 else 0 (uses the forward output y)."""
        raise NotImplementedError

    def dropout_forward(self, x, p, key, y, offset=0):
        """y = x * keep / (1 - p), keep = dropout_keep(key, offset + i, p) for the flat index i.

        `key` is a 32-bit stream key (nbcnn.random.dropout_key); the mask is a pure
        function of (key, offset + i), identical bit for bit on every backend. `offset` (an int >= 0)
        places x inside a larger array: a data-parallel process passes its first sample's
        flat position in the global batch, so its mask is that part of the global batch's mask.
        """
        raise NotImplementedError

    def dropout_backward(self, dy, p, key, dx, offset=0):
        """dx = dy * keep / (1 - p), the mask recomputed from the same key and offset."""
        raise NotImplementedError

    # -- local response normalisation --------------------------------------------------
    def lrn_forward(self, x, size, alpha, beta, k, y, scale):
        """scale[n,c] = k + alpha/size * sum_{c'=c-size//2}^{c+(size-1)//2} x[n,c']^2; y = x * scale^-beta.

        x, y, scale (N,C,H,W); channels outside [0, C) count as zero (PyTorch's convention).
        """
        raise NotImplementedError

    def lrn_backward(self, x, y, scale, dy, size, alpha, beta, dx):
        """dx[c] = dy[c]*scale[c]^-beta - 2*alpha*beta/size * x[c] * sum_{c' whose window holds c} dy[c']*y[c']/scale[c']."""
        raise NotImplementedError

    # -- batch normalisation -----------------------------------------------------------
    def batchnorm_forward_train(self, x, gamma, beta, eps, momentum, running_mean, running_var,
                                num_batches_tracked, y, mean, invstd, ws):
        """Batch normalisation with the batch's statistics (training), per channel c of x (N,C,S):

            mean[c] = sum_{n,s} x[n,c,s] / M,  var = sum_{n,s} (x[n,c,s] - mean[c])^2 / M  (biased; M = N*S >= 2)
            invstd[c] = 1 / sqrt(var + eps);   y = gamma[c] * (x - mean[c]) * invstd[c] + beta[c]

        Sums in float64, in an order fixed for a shape on a machine (run-to-run identical: no atomics).
        x, y (N,C,S): a (N,C,H,W) map as (N,C,H*W), BatchNorm1d's (N,C) as (N,C,1); gamma,
        beta, mean, invstd (C,), x's dtype; mean and invstd are written for the backward.
        Running statistics (PyTorch's rule, the variance unbiased), with f = momentum, or
        1/num_batches_tracked (after its increment) when momentum < 0 (a cumulative average):
            running_mean = (1-f)*running_mean + f*mean;  running_var = (1-f)*running_var + f*var*M/(M-1)
            num_batches_tracked += 1   (a 0-d int64 array)
        running_mean, running_var (C,) x's dtype; all three None: no running statistics kept.
        """
        raise NotImplementedError

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps, y, mean, invstd):
        """Batch normalisation with running statistics (eval): y = gamma[c] * (x - running_mean[c]) *
        invstd[c] + beta[c], invstd[c] = 1/sqrt(running_var[c] + eps); shapes as batchnorm_forward_train.

        Writes mean = running_mean and invstd, so that batchnorm_backward serves both modes.
        """
        raise NotImplementedError

    def batchnorm_backward(self, x, gamma, mean, invstd, dy, batch_stats, dx, dgamma, dbeta, ws):
        """The gradients of batch normalisation, from the forward's mean and invstd; xhat = (x - mean) * invstd:

            dbeta[c] += sum_{n,s} dy;   dgamma[c] += sum_{n,s} dy * xhat
            dx = gamma * invstd * (dy - (sum dy + xhat * sum dy*xhat) / M)   batch_stats (training: the
                                                                              statistics depend on x)
            dx = gamma * invstd * dy                                          not batch_stats (eval)

        Shapes as batchnorm_forward_train; sums in float64, in a fixed order; `dx` may be None.
        """
        raise NotImplementedError

    # SyncBatchNorm (nbcnn.layers): the statistics and gradient sums of the GLOBAL batch over P
    # processes. Each process computes its shard's per-channel figures, the layer gathers them
    # from all processes in rank order (P,C,k), and every process combines them in that order.
    def batchnorm_local_stats(self, x, stats):
        """This shard's per-channel figures, for SyncBatchNorm's gather: for channel c of x (N,C,S),

            stats[c] = (M, mean, sum_{n,s} (x[n,c,s] - mean)^2),   M = N*S,  mean = sum_{n,s} x[n,c,s] / M

        stats (C,3) float64; two passes in float64, in a fixed order (as batchnorm_forward_train).
        """
        raise NotImplementedError

    def batchnorm_forward_gathered(self, x, gamma, beta, eps, momentum, stats, running_mean, running_var,
                                   num_batches_tracked, y, mean, invstd, ws):
        """batchnorm_forward_train with the GLOBAL batch's statistics: stats (P,C,3) float64 are the
        P processes' batchnorm_local_stats, combined per channel in rank order (Chan et al.:
        M = M_a + M_b, mean = mean_a + d*M_b/M, ssd = ssd_a + ssd_b + d^2*M_a*M_b/M, d = mean_b - mean_a;
        kernel_math.bn_combine_stats), then var = ssd / M and the rest as batchnorm_forward_train
        with M the global count (the running variance unbiased with it). Shapes as there.
        """
        raise NotImplementedError

    def batchnorm_grad_sums(self, x, dy, mean, invstd, sums, dgamma, dbeta):
        """This shard's per-channel gradient sums, for SyncBatchNorm's gather; xhat = (x - mean) * invstd:

            sums[c] = (sum_{n,s} dy, sum_{n,s} dy * xhat);   dbeta[c] += sums[c, 0];  dgamma[c] += sums[c, 1]

        x, dy (N,C,S), mean, invstd, dgamma, dbeta (C,) x's dtype; sums (C,2) float64, in a fixed order.
        """
        raise NotImplementedError

    def batchnorm_backward_gathered(self, x, dy, gamma, mean, invstd, stats, sums, dx, ws):
        """dx of SyncBatchNorm's training forward, for this process's shard x, dy (N,C,S), M_p = N*S.

        stats (P,C,3) are the forward's gathered batchnorm_local_stats (counts M_q, M = sum M_q),
        sums (P,C,2) the processes' batchnorm_grad_sums, all float64. Each process's dy is the
        gradient of ITS shard's mean loss L_q, and the global batch's loss is L = sum_q (M_q/M) L_q
        (DataParallel weights each process's gradients by its share). So, per channel, in rank order,

            G = sum_q (M_q/M) * sums[q,c,0],   GX = sum_q (M_q/M) * sums[q,c,1]   (kernel_math.bn_combine_grad_sums)

        are sum dL/dy and sum dL/dy * xhat over the global batch, and dL/dx = gamma*invstd*((M_p/M)*dy -
        (G + xhat*GX)/M); divided by this process's share M_p/M (which DataParallel multiplies back):

            dx = gamma * invstd * (dy - (G + xhat * GX) / M_p)
        """
        raise NotImplementedError

    # -- fully connected ---------------------------------------------------------------
    def linear_forward(self, x, w, b, y):
        """y = x @ w^T + b; x (N,I), w (O,I), b (O,), y (N,O)."""
        raise NotImplementedError

    def linear_backward(self, x, w, dy, dx, dw, db):
        """dx = dy @ w; dw += dy^T @ x; db += sum_n dy.

        Each of dx, dw, db may be None: that gradient is not computed (dw None skips the
        weight-gradient GEMM: a frozen weight)."""
        raise NotImplementedError

    # -- loss --------------------------------------------------------------------------
    def softmax_cross_entropy(self, logits, labels, dlogits, ws):
        """Mean over the batch of -log softmax(logits)[n, labels[n]], computed stably.

        logits (N,K) float, labels (N,) integer, N >= 1. Writes dlogits = (softmax - onehot) / N
        and returns (loss, bad) as Python numbers: `bad` counts labels outside [0, K) and
        rows with a non-finite logit, which the caller turns into an error.
        """
        raise NotImplementedError

    # -- optimiser ---------------------------------------------------------------------
    def sgd_step(self, w, g, v, lr, momentum, weight_decay):
        """One fused update, torch.optim.SGD's rule: g' = g + wd*w; v = momentum*v + g'; w -= lr*v."""
        raise NotImplementedError

    def adam_step(self, w, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                  decoupled):
        """One fused update, torch.optim.Adam's rule (AdamW's with `decoupled`), for update number `step` (1 first).

        Adam: g' = g + wd*w; AdamW: w = w*(1 - lr*wd), g' = g. Then m = beta1*m + (1-beta1)*g';
        v = beta2*v + (1-beta2)*g'^2; with amsgrad v_max = max(v_max, v) replaces v below;
        w -= lr/(1 - beta1^step) * m / (sqrt(v)/sqrt(1 - beta2^step) + eps).
        w, g, exp_avg (m), exp_avg_sq (v) and max_exp_avg_sq (v_max; None without amsgrad) share one shape;
        w and the state arrays are updated in place. Per element in float64, the bias corrections computed on
        the host as torch does, so every backend gives the same bits.
        """
        raise NotImplementedError

    def rmsprop_step(self, w, g, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum):
        """One fused update, torch.optim.RMSprop's rule.

        g' = g + wd*w; sq = alpha*sq + (1-alpha)*g'^2; centered (grad_avg given): ga = alpha*ga + (1-alpha)*g',
        avg = sqrt(sq - ga^2) + eps, else avg = sqrt(sq) + eps; with a momentum_buffer (momentum > 0):
        buf = momentum*buf + g'/avg, w -= lr*buf; without (None): w -= lr*g'/avg.
        All arrays share one shape; w and the state arrays are updated in place, per element in float64.
        """
        raise NotImplementedError


def check_matmul(a, b, c):
    """matmul's arguments: 2-D, C-contiguous, one float dtype, shapes (M,K) @ (K,N) -> (M,N).

    Raises ValueError naming what is wrong: the BLAS and GPU kernels behind matmul read raw
    memory and would otherwise compute garbage from a transposed view or a mixed dtype.
    """
    for name, x in (("a", a), ("b", b), ("c", c)):
        if x.ndim != 2:
            raise ValueError(f"matmul: {name} must be 2-D, got shape {tuple(x.shape)}")
        if not x.flags["C_CONTIGUOUS"]:  # numpy's flags and numba device arrays' flags dict both take this key
            raise ValueError(f"matmul: {name} must be C-contiguous (got a strided view of shape {tuple(x.shape)})")
    if not a.dtype == b.dtype == c.dtype or np.dtype(c.dtype) not in FLOAT_DTYPES:
        raise ValueError(f"matmul: a, b, c must share float32 or float64, got {a.dtype}, {b.dtype}, {c.dtype}")
    if a.shape[1] != b.shape[0] or c.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"matmul: shapes {tuple(a.shape)} @ {tuple(b.shape)} -> {tuple(c.shape)} do not fit")


def is_winograd_shape(w, stride, pad, groups):
    """Whether a convolution is one Winograd F(2x2, 3x3) computes: 3x3, stride 1, padding 1, one
    group (each backend's rule then decides whether it pays for the layer's channels and maps)."""
    return w.shape[2] == 3 and w.shape[3] == 3 and stride == 1 and pad == 1 and groups == 1


def is_winograd5_shape(w, stride, pad, groups):
    """Whether a convolution is one the backends' 5x5 Winograd path computes (four F(2x2, 3x3) sub-kernels on
    one input transform): 5x5, stride 1, padding 2, one group (the rules then decide whether it pays)."""
    return w.shape[2] == 5 and w.shape[3] == 5 and stride == 1 and pad == 2 and groups == 1


def is_depthwise(in_channels, groups):
    """Whether a convolution with `groups` is depthwise (one input channel per group, groups > 1):
    the backends run it with direct kernels instead of im2col + GEMM.

    groups == 1 with one input channel (conv1 on grey images) is not: there the GEMM's O rows
    reuse each column, which a direct kernel would not.
    """
    return groups > 1 and groups == in_channels


# Which file of a backend package implements each op: nbcnn/cpu/ and nbcnn/cuda/ mirror
# each other file for file, and `implement` binds the ops from these files onto a class.
OP_FILES = {
    "array": ("is_array", "empty", "from_numpy", "to_numpy", "copy", "contiguous", "reshape",
              "memory_stats", "empty_cache", "is_out_of_memory"),
    "elementwise": ("fill", "add", "add_out", "scale"),
    "gemm": ("matmul",),
    "conv": ("conv2d_forward", "conv2d_backward"),
    "pool": ("maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
             "adaptive_avgpool2d_forward", "adaptive_avgpool2d_backward"),
    "relu": ("relu_forward", "relu_backward"),
    "dropout": ("dropout_forward", "dropout_backward"),
    "lrn": ("lrn_forward", "lrn_backward"),
    "batchnorm": ("batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward",
                  "batchnorm_local_stats", "batchnorm_forward_gathered", "batchnorm_grad_sums",
                  "batchnorm_backward_gathered"),
    "linear": ("linear_forward", "linear_backward"),
    "loss": ("softmax_cross_entropy",),
    "sgd": ("sgd_step",),
    "adam": ("adam_step",),
    "rmsprop": ("rmsprop_step",),
}


def implement(cls, package):
    """Set every op of the contract on backend class `cls` from the files of `package`."""
    import importlib
    for file, ops in OP_FILES.items():
        module = importlib.import_module(f"{package}.{file}")
        for op in ops:
            setattr(cls, op, staticmethod(getattr(module, op)))
    return cls


_BACKENDS = {}


def get_backend(device):
    """The backend object for a device name: "cpu" or "cuda"."""
    if isinstance(device, Backend):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    name = device.lower()
    if name not in _BACKENDS:
        if name == "cpu":
            from .cpu import CPUBackend
            _BACKENDS[name] = CPUBackend()
        elif name == "cuda":
            from .cuda import CUDABackend
            _BACKENDS[name] = CUDABackend()
        else:
            raise ValueError(f"unknown device {device!r}; nbcnn has 'cpu' and 'cuda'")
    return _BACKENDS[name]


def backend_of(a):
    """The backend whose array `a` is, or a TypeError naming what `a` is."""
    for name in ("cpu", "cuda"):
        if name == "cuda" and name not in _BACKENDS:
            continue  # no CUDA array can exist before the CUDA backend was created
        b = get_backend(name)
        if b.is_array(a):
            return b
    raise TypeError(
        f"expected an nbcnn array (made with nbcnn.asarray), got {type(a).__name__}")


class Workspace:
    """Named scratch buffers of one layer, allocated once per (shape, dtype) and reused.

    `empty` is the allocating backend's `empty`: a layer moved to another backend gets
    fresh buffers there.
    """

    def __init__(self):
        self._buffers = {}

    def get(self, name, shape, dtype, empty):
        key = (tuple(int(s) for s in shape), np.dtype(dtype), empty)
        buf = self._buffers.get(name)
        if buf is None or buf[0] != key:
            buf = (key, empty(key[0], key[1]))
            self._buffers[name] = buf
        return buf[1]

    def clear(self):
        self._buffers.clear()
