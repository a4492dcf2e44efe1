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


def dropout_keep(key, n, p):
    """Element i (of n) is kept when the top 24 bits of h(h(lo(i) ^ key) ^ hi(i)) are >= p * 2**24 rounded half up."""
    lo, hi = lo_hi(np.arange(n, dtype=np.uint64))
    u24 = lowbias32(lowbias32(lo ^ np.uint32(key)) ^ hi) >> np.uint32(8)
    return u24 >= np.floor(p * 2**24 + 0.5)


def dropout(x, p, key):
    """x * keep / (1 - p)."""
    return x * dropout_keep(key, x.size, p).reshape(x.shape) / (1 - p)


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
