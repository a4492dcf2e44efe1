"""Plain NumPy/SciPy references for every op, written independently of the kernels."""

import math

import numpy as np
from scipy.signal import correlate



def conv2d(x, w, b, stride, pad):
    """Cross-correlation via scipy.signal.correlate on the zero-padded input, then striding."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    full = np.stack([
        np.stack([correlate(xp[i], w[j], mode="valid", method="direct")[0] for j in range(o)])
        for i in range(n)])
    return full[:, :, ::stride, ::stride] + b[None, :, None, None]


def conv2d_grouped(x, w, b, stride, pad, groups):
    """Grouped convolution: `groups` independent convolutions (conv2d above) on consecutive slices of
    the input and output channels; b may be None (no bias)."""
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    y = np.concatenate([conv2d(x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], np.zeros(og), stride, pad)
                        for g in range(groups)], axis=1)
    return y if b is None else y + b[None, :, None, None]


def depthwise_conv2d(x, w, b, stride, pad):
    """Depthwise convolution in NumPy alone: output channel o = c*M + m filters input channel c = o // M
    with w[o, 0] over sliding windows of the zero-padded input; b may be None."""
    c, o, k = x.shape[1], w.shape[0], w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.einsum("nohwpq,opq->nohw", np.repeat(win, o // c, axis=1), w[:, 0])
    return y if b is None else y + b[None, :, None, None]


def maxpool2d(x, k, stride, pad=0):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    return win[:, :, ::stride, ::stride].max(axis=(-1, -2))


def maxpool2d_argmax(x, k, stride, pad=0):
    """(y, argmax): the first maximum of each window in row-major order (np.argmax: a NaN counts as
    the largest), its value bit for bit (-0.0 stays -0.0) and its flat index h*W + w in the
    unpadded plane. The padding is -inf (PyTorch's), so for finite inputs it is never the maximum."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    oh, ow = win.shape[2], win.shape[3]
    first = win.reshape(n, c, oh, ow, k * k).argmax(axis=-1)
    p, q = np.divmod(first, k)
    i, j = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    rows, cols = i * stride + p - pad, j * stride + q - pad
    y = np.take_along_axis(x.reshape(n, c, h * w), (rows * w + cols).reshape(n, c, -1), axis=2)
    return y.reshape(n, c, oh, ow), (rows * w + cols).astype(np.int32)


def avgpool2d(x, k, stride, pad=0, count_include_pad=True):
    """Window sums of the zero-padded input, divided by k*k or by the count of real pixels in the window."""
    pads = ((0, 0), (0, 0), (pad, pad), (pad, pad))
    view = np.lib.stride_tricks.sliding_window_view
    sums = view(np.pad(x.astype(np.float64), pads), (k, k), axis=(2, 3))[:, :, ::stride, ::stride].sum(axis=(-1, -2))
    if count_include_pad:
        return sums / (k * k)
    real = view(np.pad(np.ones(x.shape[2:]), pads[2:]), (k, k))[::stride, ::stride].sum(axis=(-1, -2))
    return sums / real


def adaptive_bins(size, out):
    """PyTorch's adaptive pooling bins: [floor(i*size/out), ceil((i+1)*size/out)) for i < out."""
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def adaptive_avgpool2d(x, oh, ow):
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow))
    for i, (h0, h1) in enumerate(adaptive_bins(h, oh)):
        for j, (w0, w1) in enumerate(adaptive_bins(w, ow)):
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].astype(np.float64).mean(axis=(2, 3))
    return y


def relu(x):
    return np.maximum(x, 0)


# -- dropout's hash, from its specification (nbcnn/random.py's docstring), in uint32 arithmetic ---

def lowbias32(x):
    """C. Wellons' lowbias32 on uint32 (wrap-around multiplication, as in his C code)."""
    x = np.array(x, dtype=np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def lowbias32_inverse(x):
    """The published inverse of lowbias32 (hash-prospector): checks the constants above."""
    x = np.array(x, dtype=np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x43021123)
    x ^= (x >> np.uint32(15)) ^ (x >> np.uint32(30))
    x *= np.uint32(0x1D69E2A5)
    x ^= x >> np.uint32(16)
    return x


def lo_hi(v):
    """The low and high 32 bits of 64-bit integers, as uint32."""
    v = np.asarray(v, dtype=np.uint64)
    return (v & np.uint64(0xFFFFFFFF)).astype(np.uint32), (v >> np.uint64(32)).astype(np.uint32)


def dropout_key(seed, counter):
    """key = h(h(lo(seed)) ^ hi(seed) ^ h(counter)), h = lowbias32."""
    lo, hi = lo_hi(seed)
    return int(lowbias32(lowbias32(lo) ^ hi ^ lowbias32(np.uint32(counter))))


def dropout_keep(key, n, p, offset=0):
    """Element i (of offset .. offset + n - 1) is kept when the top 24 bits of h(h(lo(i) ^ key) ^ hi(i)) are
    >= p * 2**24 rounded half up."""
    lo, hi = lo_hi(np.arange(offset, offset + n, dtype=np.uint64))
    u24 = lowbias32(lowbias32(lo ^ np.uint32(key)) ^ hi) >> np.uint32(8)
    return u24 >= np.floor(p * 2**24 + 0.5)


def dropout(x, p, key, offset=0):
    """x * keep / (1 - p), the mask of flat elements offset .. offset + x.size - 1."""
    return x * dropout_keep(key, x.size, p, offset).reshape(x.shape) / (1 - p)


def lrn(x, size, alpha, beta, k):
    """b_c = a_c / (k + alpha/size * sum_{c' in [c - size//2, c + (size-1)//2]} a_c'^2)^beta."""
    c = x.shape[1]
    sq = np.pad(x ** 2, ((0, 0), (size // 2, (size - 1) // 2), (0, 0), (0, 0)))
    window = sum(sq[:, i:i + c] for i in range(size))
    return x / (k + alpha / size * window) ** beta


def linear(x, w, b):
    return x @ w.T + b


def softmax_cross_entropy(z, labels):
    z = z.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = z.shape[0]
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1
    return -logp[np.arange(n), labels].mean(), grad / n


def sgd(w, g, v, lr, momentum, weight_decay):
    """torch.optim.SGD: g' = g + wd*w; v = momentum*v + g'; w -= lr*v."""
    v = momentum * v + g + weight_decay * w
    return w - lr * v, v


def adam(w, g, m, v, v_max, t, lr, beta1, beta2, eps, weight_decay, decoupled):
    """torch.optim.Adam's documented algorithm (AdamW's with `decoupled`) for update number t;
    v_max None without amsgrad. Returns (w, m, v, v_max)."""
    if decoupled:
        w = w * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * w
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    if v_max is not None:
        v_max = np.maximum(v_max, v)
    v_hat = (v if v_max is None else v_max) / (1 - beta2 ** t)
    m_hat = m / (1 - beta1 ** t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps), m, v, v_max


def rmsprop(w, g, sq, ga, buf, lr, alpha, eps, weight_decay, momentum):
    """torch.optim.RMSprop's documented algorithm; ga None unless centered, buf None without
    momentum. Returns (w, sq, ga, buf)."""
    g = g + weight_decay * w
    sq = alpha * sq + (1 - alpha) * g * g
    denom = sq
    if ga is not None:
        ga = alpha * ga + (1 - alpha) * g
        denom = sq - ga * ga
    step = g / (np.sqrt(denom) + eps)
    if buf is not None:
        buf = momentum * buf + step
        step = buf
    return w - lr * step, sq, ga, buf


def _per_channel(v, ndim):
    """A (C,) vector shaped to broadcast along axis 1 of an ndim-D array."""
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def batchnorm(x, gamma, beta, eps, mean=None, var=None):
    """(x - mean) / sqrt(var + eps) * gamma + beta per channel (axis 1); mean and var the batch's
    (the variance biased, over every axis but 1) unless given (the running statistics)."""
    axes = (0,) + tuple(range(2, x.ndim))
    if mean is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    return ((x - _per_channel(mean, x.ndim)) / np.sqrt(_per_channel(var, x.ndim) + eps) * _per_channel(gamma, x.ndim)
            + _per_channel(beta, x.ndim))


def batchnorm_running(running_mean, running_var, x, factor):
    """PyTorch's update: r = (1 - factor) * r + factor * the batch's statistic, the variance unbiased (ddof=1)."""
    axes = (0,) + tuple(range(2, x.ndim))
    return ((1 - factor) * running_mean + factor * x.mean(axis=axes),
            (1 - factor) * running_var + factor * x.var(axis=axes, ddof=1))
