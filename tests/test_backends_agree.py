"""The CUDA backend against the CPU backend, op by op, forward and backward, and a whole
training run, with hypothesis drawing shapes and data (nbcnn.testing.assert_backends_agree).

Under numba's CUDA simulator (the default: tests/conftest.py) every simulated thread costs
~135 us, so shapes stay tiny and examples few; with NBCNN_TEST_GPU=1 (a real GPU) the same
tests draw larger shapes and more examples, and the full-size AlexNet test runs.

Tolerances: float32 ops compare within rtol 1e-5 of the output's magnitude (nbcnn.testing's
rule: |cuda - cpu| <= rtol * max|cpu|). The GPU GEMM sums K products in a tiled order and
BLAS in its own; for the K <= a few hundred drawn here the difference stays within tens of
ulps of the largest term, well inside 1e-5 ~ 80 ulp. Chains of ops (backward passes that
feed a GEMM's result into another, training steps) get 1e-4. float64 gets 1e-12 / 1e-10.
Dropout masks, argmax indices and integer outputs must agree exactly.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbcnn
import reference
from devices import DEVICES, ON_GPU
from nbcnn.backend import Workspace
from nbcnn.kernel_math import CUMULATIVE
from nbcnn.random import dropout_key
from nbcnn.testing import assert_backends_agree, assert_close

cuda_only = DEVICES[1].marks  # skipped where no CUDA backend can be made
pytestmark = list(cuda_only)

EXAMPLES = 25 if ON_GPU else 10
BIG = 1 if ON_GPU else 0   # shape bounds grow by a factor on a real GPU
CHAIN = {np.float32: 1e-4, np.float64: 1e-10}
DTYPES = st.sampled_from([np.float32, np.float64])


def cases(n=EXAMPLES):
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def data(seed, shape, dtype, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: equal maxima inside pooling windows
        return rng.integers(-2, 3, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# -- convolution -------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    k = draw(st.integers(1, 3 + 8 * BIG))
    stride = draw(st.integers(1, 3 + 2 * BIG))     # below, at and above the kernel size
    pad = draw(st.integers(0, min(2, k)))
    lo = max(1, k - 2 * pad)
    h = draw(st.integers(lo, lo + 3 + 24 * BIG))  # odd and even
    w = draw(st.integers(lo, lo + 3 + 24 * BIG))
    return dict(n=draw(st.integers(1, 2 + 3 * BIG)), c=draw(st.integers(1, 2 + 14 * BIG)),
                o=draw(st.integers(1, 3 + 30 * BIG)), h=h, w=w, k=k, stride=stride, pad=pad,
                dtype=draw(DTYPES), want_dx=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


@cases()
@given(case=conv_cases())
def test_conv2d_forward_and_backward_agree(case):
    n, c, o, h, w, k, s, p, dt = (case[key] for key in ("n", "c", "o", "h", "w", "k", "stride", "pad", "dtype"))
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x, wt = data(case["seed"], (n, c, h, w), dt), data(case["seed"] + 1, (o, c, k, k), dt)
    b, dy = data(case["seed"] + 2, (o,), dt), data(case["seed"] + 3, (n, o, oh, ow), dt)
    dw0, db0 = data(case["seed"] + 4, wt.shape, dt), data(case["seed"] + 5, b.shape, dt)

    def op(be, x, wt, b, dy, dw, db):
        ws = Workspace()
        y = be.empty((n, o, oh, ow), x.dtype)
        be.conv2d_forward(x, wt, b, s, p, y, ws)
        dx = be.empty(x.shape, x.dtype) if case["want_dx"] else None
        be.conv2d_backward(x, wt, dy, s, p, dx, dw, db, ws)  # dw, db accumulate onto dw0, db0
        return y, dx, dw, db

    assert_backends_agree(op, x, wt, b, dy, dw0, db0, rtol=CHAIN[dt] / 10)


@st.composite
def grouped_conv_cases(draw):
    """Grouped (2-3 input channels per group) and depthwise (multiplier 1 or 2) convolutions; each of
    bias, dx, dw, db present or not."""
    groups = draw(st.integers(2, 3 + 5 * BIG))
    per_group = draw(st.sampled_from(["depthwise", "depthwise x2", "grouped"]))
    c = groups * (draw(st.integers(2, 3 + 4 * BIG)) if per_group == "grouped" else 1)
    o = groups * (draw(st.integers(1, 2 + 4 * BIG)) if per_group == "grouped" else 1 + (per_group == "depthwise x2"))
    k = draw(st.integers(1, 3 + 4 * BIG))
    pad = draw(st.integers(0, min(2, k)))
    lo = max(1, k - 2 * pad)
    return dict(n=draw(st.integers(1, 2 + 3 * BIG)), c=c, o=o, groups=groups, k=k,
                stride=draw(st.integers(1, 2 + BIG)), pad=pad, h=draw(st.integers(lo, lo + 2 + 20 * BIG)),
                w=draw(st.integers(lo, lo + 2 + 20 * BIG)), dtype=draw(DTYPES),
                wanted=draw(st.tuples(*[st.booleans()] * 4)), seed=draw(st.integers(0, 2**31)))


@cases(EXAMPLES - 4)
@given(case=grouped_conv_cases())
def test_grouped_and_depthwise_conv2d_agree(case):
    n, c, o, g, h, w, k, s, p, dt = (case[key] for key in ("n", "c", "o", "groups", "h", "w", "k", "stride", "pad",
                                                            "dtype"))
    has_bias, want_dx, want_dw, want_db = case["wanted"]
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x, wt = data(case["seed"], (n, c, h, w), dt), data(case["seed"] + 1, (o, c // g, k, k), dt)
    b = data(case["seed"] + 2, (o,), dt) if has_bias else None
    dy = data(case["seed"] + 3, (n, o, oh, ow), dt)
    dw0 = data(case["seed"] + 4, wt.shape, dt) if want_dw else None
    db0 = data(case["seed"] + 5, (o,), dt) if want_db else None

    def op(be, x, wt, b, dy, dw, db):
        ws = Workspace()
        y = be.empty((n, o, oh, ow), x.dtype)
        be.conv2d_forward(x, wt, b, s, p, y, ws, groups=g)
        dx = be.empty(x.shape, x.dtype) if want_dx else None
        be.conv2d_backward(x, wt, dy, s, p, dx, dw, db, ws, groups=g)  # dw, db accumulate onto dw0, db0
        return y, dx, dw, db

    assert_backends_agree(op, x, wt, b, dy, dw0, db0, rtol=CHAIN[dt] / 10)


@cases(EXAMPLES - 6)
@given(c=st.integers(2, 4 + 8 * BIG), mult=st.integers(1, 2), k=st.integers(1, 3 + 4 * BIG), stride=st.integers(1, 2),
       pad=st.integers(0, 1), hw=st.integers(3, 6 + 20 * BIG), seed=st.integers(0, 2**31))
def test_depthwise_forward_and_dx_agree_bit_for_bit_in_float32(c, mult, k, stride, pad, hw, seed):
    """Both sum a float32 output's terms in float64 in one order, and a float32 product is exact in float64."""
    if hw + 2 * pad < k:
        k = hw + 2 * pad
    o, oh = c * mult, (hw + 2 * pad - k) // stride + 1
    x, wt = data(seed, (2, c, hw, hw + 1), np.float32), data(seed + 1, (o, 1, k, k), np.float32)
    b, dy = data(seed + 2, (o,), np.float32), data(seed + 3, (2, o, oh, (hw + 1 + 2 * pad - k) // stride + 1), np.float32)

    def op(be, x, wt, b, dy):
        y, dx = be.empty(dy.shape, x.dtype), be.empty(x.shape, x.dtype)
        be.conv2d_forward(x, wt, b, stride, pad, y, Workspace(), groups=c)
        be.conv2d_backward(x, wt, dy, stride, pad, dx, None, None, Workspace(), groups=c)
        return y, dx

    assert_backends_agree(op, x, wt, b, dy, exact=True)


# -- pooling -----------------------------------------------------------------------------

@st.composite
def pool_cases(draw):
    k, stride = draw(st.sampled_from([(3, 2), (2, 2), (1, 1), (2, 3), (3, 1)] + [(4, 2)] * BIG))
    pad = draw(st.integers(0, k // 2))
    h = draw(st.integers(max(1, k - 2 * pad), k + 4 + 20 * BIG))
    return dict(n=draw(st.integers(1, 2 + 2 * BIG)), c=draw(st.integers(1, 2 + 6 * BIG)), h=h,
                w=draw(st.sampled_from([h, h + 1])), k=k, stride=stride, pad=pad, dtype=draw(DTYPES),
                ties=draw(st.booleans()), nan=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


@cases(EXAMPLES + 2)
@given(case=pool_cases())
def test_maxpool2d_forward_and_backward_agree(case):
    n, c, h, w, k, s, p, dt = (case[key] for key in ("n", "c", "h", "w", "k", "stride", "pad", "dtype"))
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x = data(case["seed"], (n, c, h, w), dt, ties=case["ties"])
    if case["nan"]:
        x.reshape(-1)[case["seed"] % x.size] = np.nan
    dy = data(case["seed"] + 1, (n, c, oh, ow), dt)

    def op(be, x, dy):
        y, am = be.empty((n, c, oh, ow), x.dtype), be.empty((n, c, oh, ow), np.int32)
        be.maxpool2d_forward(x, k, s, p, y, am)
        dx = be.empty(x.shape, x.dtype)
        be.maxpool2d_backward(dy, am, dx)
        return y, am, dx

    # overlapping windows that pick one pixel add atomically on CUDA: a few ulp of reordering
    assert_backends_agree(op, x, dy, rtol=CHAIN[dt] / 10)


# -- element-wise ------------------------------------------------------------------------

shapes = st.lists(st.integers(1, 5 + 40 * BIG), min_size=1, max_size=4)


@cases()
@given(shape=shapes, dt=DTYPES, seed=st.integers(0, 2**31))
def test_relu_forward_and_backward_agree(shape, dt, seed):
    x, dy = data(seed, shape, dt), data(seed + 1, shape, dt)
    x.reshape(-1)[0] = 0.0  # the kink: dx = 0 there on both

    def op(be, x, dy):
        y, dx = be.empty(x.shape, x.dtype), be.empty(x.shape, x.dtype)
        be.relu_forward(x, y)
        be.relu_backward(y, dy, dx)
        return y, dx

    assert_backends_agree(op, x, dy, exact=True)


@cases()
@given(shape=shapes, dt=DTYPES, p=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
       seed=st.integers(0, 2**40), counter=st.integers(0, 2**20))
def test_dropout_masks_agree_exactly(shape, dt, p, seed, counter):
    key = dropout_key(seed, counter)
    x, dy = data(seed % 2**31, shape, dt) + 3, data(seed % 2**31 + 1, shape, dt)

    def op(be, x, dy):
        y, dx = be.empty(x.shape, x.dtype), be.empty(x.shape, x.dtype)
        be.dropout_forward(x, p, key, y)
        be.dropout_backward(dy, p, key, dx)
        return y, dx

    y, _ = assert_backends_agree(op, x, dy, exact=True)
    assert np.array_equal(y.reshape(-1) != 0, reference.dropout_keep(key, x.size, p))


@st.composite
def lrn_cases(draw):
    return dict(n=draw(st.integers(1, 2 + 2 * BIG)), c=draw(st.integers(1, 7 + 20 * BIG)),
                hw=draw(st.integers(1, 4 + 30 * BIG)), size=draw(st.integers(1, 6)),
                alpha=draw(st.sampled_from([1e-4, 5e-4, 0.1])), beta=draw(st.sampled_from([0.75, 0.5])),
                k=draw(st.sampled_from([1.0, 2.0])), dtype=draw(DTYPES), seed=draw(st.integers(0, 2**31)))


@cases()
@given(case=lrn_cases())
def test_lrn_forward_and_backward_agree(case):
    n, c, hw, size, a, beta, k, dt = (case[key] for key in ("n", "c", "hw", "size", "alpha", "beta", "k", "dtype"))
    x, dy = data(case["seed"], (n, c, hw, 1), dt) * 3, data(case["seed"] + 1, (n, c, hw, 1), dt)

    def op(be, x, dy):
        y, sc, dx = (be.empty(x.shape, x.dtype) for _ in range(3))
        be.lrn_forward(x, size, a, beta, k, y, sc)
        be.lrn_backward(x, y, sc, dy, size, a, beta, dx)
        return y, sc, dx

    # same float64 sums in the same order; only pow may differ in its last bit (libdevice vs libm)
    assert_backends_agree(op, x, dy, rtol=CHAIN[dt] / 10)


@st.composite
def batchnorm_cases(draw):
    n, s = draw(st.integers(1, 3 + 30 * BIG)), draw(st.integers(1, 5 + 200 * BIG))
    if n * s < 2:
        s = 2  # training needs two values per channel
    return dict(n=n, c=draw(st.integers(1, 3 + 60 * BIG)), s=s, dtype=draw(DTYPES),
                momentum=draw(st.sampled_from([0.1, 0.5, CUMULATIVE, None])),  # None: no running statistics
                want_dx=draw(st.booleans()), shift=draw(st.sampled_from([0.0, 10.0])), seed=draw(st.integers(0, 2**31)))


@cases()
@given(case=batchnorm_cases())
def test_batchnorm_forward_and_backward_agree_in_both_modes(case):
    n, c, s, dt, momentum = (case[key] for key in ("n", "c", "s", "dtype", "momentum"))
    x = data(case["seed"], (n, c, s), dt) * 2 + dt(case["shift"])  # a mean far from 0 too
    gamma, beta, dy = data(case["seed"] + 1, (c,), dt), data(case["seed"] + 2, (c,), dt), data(case["seed"] + 3, x.shape, dt)
    rm, rv = data(case["seed"] + 4, (c,), dt), (1 + data(case["seed"] + 5, (c,), dt) ** 2).astype(dt)
    dgamma0, dbeta0 = data(case["seed"] + 6, (c,), dt), data(case["seed"] + 7, (c,), dt)

    def op(be, x, gamma, beta, dy, rm, rv, count, dgamma, dbeta):
        ws, out = Workspace(), []
        for train in (True, False):
            y, mean, invstd = be.empty(x.shape, x.dtype), be.empty((c,), x.dtype), be.empty((c,), x.dtype)
            if train:
                running = (None, None, None) if momentum is None else (rm, rv, count)
                be.batchnorm_forward_train(x, gamma, beta, 1e-5, momentum or 0.0, *running, y, mean, invstd, ws)
            else:  # with the running statistics the training step left
                be.batchnorm_forward_eval(x, gamma, beta, rm, rv, 1e-5, y, mean, invstd)
            dx = be.empty(x.shape, x.dtype) if case["want_dx"] else None
            be.batchnorm_backward(x, gamma, mean, invstd, dy, train, dx, dgamma, dbeta, ws)
            out += [y, mean, invstd, dx, be.to_numpy(dgamma), be.to_numpy(dbeta)]
        return out + [rm, rv, count]

    # float64 sums in another order (a tree over a block's threads on CUDA); the counter exactly
    *_, count = assert_backends_agree(op, x, gamma, beta, dy, rm, rv, np.array(3, np.int64), dgamma0, dbeta0,
                                      rtol=CHAIN[dt] / 10)
    assert count == (3 if momentum is None else 4)


@cases(EXAMPLES // 2)  # six kernels per example under the simulator
@given(case=batchnorm_cases(), split=st.integers(1, 4))
def test_sync_batchnorm_ops_agree_over_two_shards(case, split):
    """SyncBatchNorm's four ops (batchnorm_local_stats, _forward_gathered, _grad_sums,
    _backward_gathered) on two shards of one batch, cut after image min(split, n - 1) (a shard may be
    as small as one image), the gathers done by stacking the shards' figures as the allgather does."""
    n, c, s, dt, momentum = (case[key] for key in ("n", "c", "s", "dtype", "momentum"))
    n = max(n, 2)
    x = data(case["seed"], (n, c, s), dt) * 2 + dt(case["shift"])
    gamma, beta, dy = data(case["seed"] + 1, (c,), dt), data(case["seed"] + 2, (c,), dt), data(case["seed"] + 3, x.shape, dt)
    rm, rv = data(case["seed"] + 4, (c,), dt), (1 + data(case["seed"] + 5, (c,), dt) ** 2).astype(dt)
    cut = min(split, n - 1)

    def op(be, x, gamma, beta, dy, rm, rv, count):
        ws = Workspace()
        xs, dys = (x[:cut], x[cut:]), (dy[:cut], dy[cut:])
        local = []
        for shard in xs:
            shard_stats = be.empty((c, 3), np.float64)
            be.batchnorm_local_stats(be.from_numpy(be.to_numpy(shard)), shard_stats)
            local.append(be.to_numpy(shard_stats))
        stats = be.from_numpy(np.stack(local))
        running = (None, None, None) if momentum is None else (rm, rv, count)
        outs, sums = [], []
        for shard, dshard in zip(xs, dys):
            xp, dyp = be.from_numpy(be.to_numpy(shard)), be.from_numpy(be.to_numpy(dshard))
            y, mean, invstd = be.empty(xp.shape, x.dtype), be.empty((c,), x.dtype), be.empty((c,), x.dtype)
            be.batchnorm_forward_gathered(xp, gamma, beta, 1e-5, momentum or 0.0, stats, *running, y, mean, invstd, ws)
            running = (None, None, None)  # the running statistics once, as one process's layer does
            g = be.empty((c, 2), np.float64)
            dgamma, dbeta = be.from_numpy(np.zeros(c, dt)), be.from_numpy(np.zeros(c, dt))
            be.batchnorm_grad_sums(xp, dyp, mean, invstd, g, dgamma, dbeta)
            sums.append(be.to_numpy(g))
            outs += [y, mean, invstd, be.to_numpy(dgamma), be.to_numpy(dbeta), (xp, dyp, mean, invstd)]
        gathered = be.from_numpy(np.stack(sums))
        result = []
        for i in range(2):
            y, mean, invstd, dgamma, dbeta, (xp, dyp, m, inv) = outs[6 * i:6 * i + 6]
            dx = be.empty(xp.shape, x.dtype)
            be.batchnorm_backward_gathered(xp, dyp, gamma, m, inv, stats, gathered, dx, ws)
            result += [y, mean, invstd, dgamma, dbeta, dx]
        return result + [stats, gathered, rm, rv, count]

    assert_backends_agree(op, x, gamma, beta, dy, rm, rv, np.array(3, np.int64), rtol=CHAIN[dt] / 10)


# -- fully connected, loss, optimiser ----------------------------------------------------

@cases()
@given(n=st.integers(1, 3 + 60 * BIG), i=st.integers(1, 20 + 300 * BIG), o=st.integers(1, 9 + 200 * BIG),
       dt=DTYPES, want_dx=st.booleans(), seed=st.integers(0, 2**31))
def test_linear_forward_and_backward_agree(n, i, o, dt, want_dx, seed):
    x, w, b = data(seed, (n, i), dt), data(seed + 1, (o, i), dt), data(seed + 2, (o,), dt)
    dy, dw0, db0 = data(seed + 3, (n, o), dt), data(seed + 4, (o, i), dt), data(seed + 5, (o,), dt)

    def op(be, x, w, b, dy, dw, db):
        y = be.empty((n, o), x.dtype)
        be.linear_forward(x, w, b, y)
        dx = be.empty(x.shape, x.dtype) if want_dx else None
        be.linear_backward(x, w, dy, dx, dw, db)
        return y, dx, dw, db

    assert_backends_agree(op, x, w, b, dy, dw0, db0, rtol=CHAIN[dt] / 10)


@cases(EXAMPLES + 2)
@given(n=st.integers(1, 4 + 100 * BIG), k=st.integers(1, 6 + 1000 * BIG), dt=DTYPES,
       bad=st.sampled_from(["none", "label", "nan", "inf", "huge"]), seed=st.integers(0, 2**31))
def test_softmax_cross_entropy_agrees(n, k, dt, bad, seed):
    logits = data(seed, (n, k), dt) * 5
    labels = np.random.default_rng(seed).integers(0, k, size=n)
    if bad == "label":
        labels[seed % n] = k + seed % 3
    elif bad in ("nan", "inf"):
        logits[seed % n, seed % k] = np.nan if bad == "nan" else -np.inf
    elif bad == "huge":
        logits *= 1e4 if dt == np.float32 else 1e200  # stable: no overflow

    def op(be, logits, labels):
        dl = be.empty(logits.shape, logits.dtype)
        loss, nbad = be.softmax_cross_entropy(logits, labels, dl, Workspace())
        return np.float64(loss), np.int64(nbad), dl

    # atol: the loss is log(sum exp) - z, a difference of O(1) terms that may cancel to ~0;
    # exp of a float32 rounds to float32 on the CPU and in CUDA, not in the simulator
    loss, nbad, _ = assert_backends_agree(op, logits, labels, rtol=CHAIN[dt] / 10, atol=CHAIN[dt] / 10)
    assert (nbad > 0) == (bad in ("label", "nan", "inf"))


@cases()
@given(shape=shapes, dt=DTYPES, lr=st.floats(0, 1), momentum=st.sampled_from([0.0, 0.9]),
       wd=st.sampled_from([0.0, 5e-4]), seed=st.integers(0, 2**31))
def test_sgd_step_agrees(shape, dt, lr, momentum, wd, seed):
    w, g, v = (data(seed + i, shape, dt) for i in range(3))

    def op(be, w, g, v):
        be.sgd_step(w, g, v, lr, momentum, wd)
        be.sgd_step(w, g, v, lr, momentum, wd)
        return w, v

    assert_backends_agree(op, w, g, v, exact=True)  # the same float64 arithmetic per element


@cases()
@given(shape=shapes, dt=DTYPES, lr=st.floats(0, 1), beta1=st.floats(0, 0.99), beta2=st.floats(0, 0.9999),
       eps=st.sampled_from([1e-8, 1e-3]), wd=st.sampled_from([0.0, 1e-2]), amsgrad=st.booleans(),
       decoupled=st.booleans(), seed=st.integers(0, 2**31))
def test_adam_step_agrees(shape, dt, lr, beta1, beta2, eps, wd, amsgrad, decoupled, seed):
    w, g, m, v, v_max = (data(seed + i, shape, dt) for i in range(5))

    def op(be, w, g, m, v, v_max):
        be.fill(v, 0)
        be.fill(v_max, 0)
        for step in (1, 2):  # the bias corrections of two step counts
            be.adam_step(w, g, m, v, v_max if amsgrad else None, step, lr, beta1, beta2, eps, wd, decoupled)
        return w, m, v, v_max

    assert_backends_agree(op, w, g, m, v, v_max, exact=True)  # the same float64 arithmetic per element


@cases()
@given(shape=shapes, dt=DTYPES, lr=st.floats(0, 1), alpha=st.floats(0, 0.999), eps=st.sampled_from([1e-8, 1e-3]),
       wd=st.sampled_from([0.0, 1e-2]), centered=st.booleans(), momentum=st.sampled_from([0.0, 0.9]),
       seed=st.integers(0, 2**31))
def test_rmsprop_step_agrees(shape, dt, lr, alpha, eps, wd, centered, momentum, seed):
    w, g, sq, ga, buf = (data(seed + i, shape, dt) for i in range(5))

    def op(be, w, g, sq, ga, buf):
        be.fill(sq, 0)
        be.fill(ga, 0)
        for _ in range(2):
            be.rmsprop_step(w, g, sq, ga if centered else None, buf if momentum else None, lr, alpha, eps, wd, momentum)
        return w, sq, ga, buf

    assert_backends_agree(op, w, g, sq, ga, buf, exact=True)  # the same float64 arithmetic per element


@cases()
@given(shape=st.lists(st.integers(1, 4 + 20 * BIG), min_size=4, max_size=4), dt=DTYPES,
       value=st.floats(-3, 3), seed=st.integers(0, 2**31))
def test_array_ops_agree(shape, dt, value, seed):
    a, b = data(seed, shape, dt), data(seed + 1, shape, dt)

    def op(be, a, b):
        z, f, c = be.zeros(a.shape, a.dtype), be.empty(a.shape, a.dtype), be.empty(a.shape, a.dtype)
        be.fill(f, value)
        be.copy(a, c)
        be.add(b, c)                                    # c = a + b
        strided = be.contiguous(a[:, :, 1:])            # a strided view: copied by a kernel
        assert be.contiguous(c) is c
        r = be.reshape(c, (a.shape[0], int(np.prod(a.shape[1:]))))
        return z, f, c, strided, r

    assert_backends_agree(op, a, b, exact=True)


# -- the GEMM itself: every transposition, ragged sizes, batches, epilogues --------------

@cases(EXAMPLES + 2)
@given(m=st.integers(1, 20 + 200 * BIG), n=st.integers(1, 20 + 200 * BIG), k=st.integers(1, 12 + 300 * BIG),
       batch=st.integers(1, 3), ta=st.booleans(), tb=st.booleans(), reduce=st.booleans(),
       beta=st.sampled_from([0.0, 1.0]), bias=st.sampled_from([0, 1, 2]), dt=DTYPES,
       width=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**31))
def test_gemm_matches_numpy(m, n, k, batch, ta, tb, reduce, beta, bias, dt, width, seed):
    from numba import cuda

    from nbcnn.cuda.gemm import GemmPlan, batch_sum_groups, default_tiles, gemm, gemm_batch_sum
    width = width if dt == np.float32 else 1  # packs of 2 and 4 are float32 only
    tiles = default_tiles(dt).with_width(width)
    a = data(seed, (batch,) + ((k, m) if ta else (m, k)), dt)
    b = data(seed + 1, (batch,) + ((n, k) if tb else (k, n)), dt)
    c0 = data(seed + 2, (1 if reduce else batch, m, n), dt)
    v = data(seed + 3, (m if bias == 1 else n,), dt)
    prod = (a.transpose(0, 2, 1) if ta else a).astype(np.float64) @ (b.transpose(0, 2, 1) if tb else b)
    c = cuda.to_device(c0)
    if reduce:  # the conv weight gradient: c += the batch's sum, split into groups over the grid
        expect = prod.sum(0, keepdims=True) + c0
        partial = cuda.device_array((batch_sum_groups(m, n, batch, dt) + 1, m, n), dt)
        plan = GemmPlan(m, n, k, ta, tb, terms=batch, stride_a=m * k, stride_b=n * k, beta=1.0, tiles=tiles)
        gemm_batch_sum(cuda.to_device(a), cuda.to_device(b), c, partial, plan)
    else:
        expect = prod + beta * c0
        expect += v[None, :, None] if bias == 1 else v[None, None, :] if bias == 2 else 0
        plan = GemmPlan(m, n, k, ta, tb, batch=batch, stride_a=m * k, stride_b=n * k, stride_c=m * n, beta=beta,
                        bias_per=[None, "row", "col"][bias], tiles=tiles)
        gemm(cuda.to_device(a), cuda.to_device(b), c, plan, cuda.to_device(v) if bias else None)
    assert_close(c.copy_to_host().astype(np.float64), expect, rtol=CHAIN[dt] / 10)


GPU_TILE_CASES = [("f32", np.float32, 1), ("f32", np.float32, 2), ("f32", np.float32, 4), ("f64", np.float64, 1),
                  ("f32_small", np.float32, 1), ("f32_small", np.float32, 2), ("f32_small", np.float32, 4)]


@pytest.mark.parametrize("config, dt, width", GPU_TILE_CASES)
def test_gemm_with_the_gpu_tiles(config, dt, width):
    """The real-GPU tile configurations (float32: 256 threads of 8x8, or of 4x4 for small grids), ragged in every dimension."""
    from numba import cuda

    from nbcnn.cuda.gemm import GPU_TILES, SMALL_TILES, GemmPlan, gemm
    tiles = (SMALL_TILES if config.endswith("small") else GPU_TILES)[np.dtype(dt)].with_width(width)
    m, n, k = 130, 129, 21  # the last row and column of tiles mostly outside; K ragged too
    if config.endswith("small"):
        m, n = 66, 65
    a, b, v = data(0, (k, m), dt), data(1, (k, n), dt), data(2, (n,), dt)
    c = cuda.device_array((m, n), dt)
    gemm(cuda.to_device(a), cuda.to_device(b), c, GemmPlan(m, n, k, trans_a=True, bias_per="col", tiles=tiles),
         cuda.to_device(v))
    assert_close(c.copy_to_host().astype(np.float64), a.T.astype(np.float64) @ b + v, rtol=CHAIN[dt] / 10)


def test_small_grids_get_the_small_tiles():
    """Below one block per SM the quarter tile is chosen; float64 has none; batches count as blocks."""
    from nbcnn.cuda.gemm import GPU_TILES, SMALL_TILES, pick_tiles
    big, small = GPU_TILES[np.dtype(np.float32)], SMALL_TILES[np.dtype(np.float32)]
    assert pick_tiles(128, 4096, 1, big, small, sms=132) == small       # fc6 forward: 32 blocks
    assert pick_tiles(128, 9216, 1, big, small, sms=132) == small       # fc6 dx: 72 blocks
    assert pick_tiles(4096, 9216, 1, big, small, sms=132) == big        # fc6 dw: 2304 blocks
    assert pick_tiles(384, 169, 128, big, small, sms=132) == big        # conv3, one image per grid z
    assert pick_tiles(384, 169, 1, big, small, sms=132) == small
    assert pick_tiles(128, 128 * 132, 1, big, small, sms=132) == big    # exactly one block per SM
    assert pick_tiles(128, 4096, 1, GPU_TILES[np.dtype(np.float64)], None, sms=132) == GPU_TILES[np.dtype(np.float64)]


def test_launches_beyond_cudas_grid_limit_are_refused_or_split():
    """grid z (and y) hold at most 65535 blocks: a GEMM batch beyond it is an error, a conv splits into chunks."""
    from numba import cuda

    from nbcnn.cuda import conv
    from nbcnn.cuda.gemm import MAX_GRID_Z, GemmPlan, gemm
    with pytest.raises(ValueError, match="grid limit of 65535"):
        GemmPlan(1, 1, 1, batch=MAX_GRID_Z + 1, stride_c=1)
    a = cuda.device_array(4, np.float32)
    with pytest.raises(ValueError, match="grid limit of 65535"):  # more tiles of rows than grid y holds
        gemm(a, a, a, GemmPlan(MAX_GRID_Z * 128 + 1, 1, 1))
    x, w, y = np.empty((70000, 1, 1, 1)), np.empty((1, 1, 1, 1)), np.empty((70000, 1, 1, 1))
    assert conv._geometry(x, w, y)[-1] == MAX_GRID_Z  # 1-element columns: the budget alone would allow 70000


def test_numbas_low_occupancy_warning_stays_off():
    """nbcnn launches small grids on purpose every step; numba's warning about them would flood the output."""
    from numba.core import config

    import nbcnn.cuda  # noqa: F401  (turns it off, unless the user set it)
    config.reload_config()  # numba re-reads the environment whenever a NUMBA_ variable changes
    assert config.CUDA_LOW_OCCUPANCY_WARNINGS == 0


# -- whole networks and moving between devices -------------------------------------------

def small_net(dtype=np.float32, size=9):
    """Every layer kind of AlexNet, for size x size inputs (9: 9 -> 4 -> 2 pixels; 6: 6 -> 2 -> 1)."""
    nbcnn.manual_seed(7)
    features = (((size - 3) // 2 + 1) // 2) ** 2
    net = nbcnn.Sequential(
        nbcnn.Conv2d(2, 4, 3, stride=1, padding=1), nbcnn.ReLU(), nbcnn.LocalResponseNorm(3, alpha=0.1, k=2.0),
        nbcnn.MaxPool2d(3, 2), nbcnn.Conv2d(4, 3, 2, stride=2), nbcnn.ReLU(), nbcnn.Flatten(),
        nbcnn.Dropout(0.5), nbcnn.Linear(3 * features, 5), nbcnn.ReLU(), nbcnn.Linear(5, 3))
    return net.to(dtype=dtype)


def train(device, dtype, steps=3, batch=2, size=9):
    net = small_net(dtype, size).to(device)
    opt = nbcnn.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    nbcnn.manual_seed(11)  # the dropout stream: same keys on both devices
    losses = []
    for _ in range(steps):
        x = nbcnn.asarray(rng.standard_normal((batch, 2, size, size)).astype(dtype), device)
        labels = nbcnn.asarray(rng.integers(0, 3, size=batch), device)
        opt.zero_grad()
        loss, dlogits = nbcnn.softmax_cross_entropy(net(x), labels)
        net.backward(dlogits)
        opt.step()
        losses.append(loss)
    return net, opt, losses


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_steps_agree(dtype):
    # 6x6 inputs: the simulator's cost is the GEMMs' size; three steps carry the momentum through
    cpu, cpu_opt, cpu_losses = train("cpu", dtype, size=6)
    gpu, gpu_opt, gpu_losses = train("cuda", dtype, size=6)
    rtol = CHAIN[dtype] * (10 if dtype == np.float32 else 1)  # three steps of momentum SGD
    assert_close(np.array(gpu_losses), np.array(cpu_losses), rtol=rtol)
    for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert nbcnn.device_of(q.data) == "cuda" and nbcnn.device_of(q.grad) == "cuda"
        assert_close(nbcnn.to_numpy(q.data), nbcnn.to_numpy(p.data), rtol=rtol, what=name)
        assert_close(nbcnn.to_numpy(q.grad), nbcnn.to_numpy(p.grad), rtol=rtol * 10, what=name + ".grad")
        assert_close(nbcnn.to_numpy(q.state["momentum_buffer"]), nbcnn.to_numpy(p.state["momentum_buffer"]),
                     rtol=rtol * 10, what=name + " momentum")


def test_to_moves_parameters_grads_and_momentum_both_ways():
    net, opt, _ = train("cpu", np.float32, steps=1)
    before = {name: (nbcnn.to_numpy(p.data), nbcnn.to_numpy(p.grad), nbcnn.to_numpy(p.state["momentum_buffer"]))
              for name, p in net.named_parameters()}
    for device in ("cuda", "cpu", "cuda"):
        net.to(device)
        for name, p in net.named_parameters():
            arrays = (p.data, p.grad, p.state["momentum_buffer"])
            assert all(nbcnn.device_of(a) == device for a in arrays), name
            for got, want in zip(arrays, before[name]):
                assert np.array_equal(nbcnn.to_numpy(got), want)
    opt.step()  # the optimiser keeps working on the moved buffers
    assert all(nbcnn.device_of(p.state["momentum_buffer"]) == "cuda" for p in net.parameters())


def test_state_dict_crosses_devices():
    cpu_net, _, _ = train("cpu", np.float32, steps=1)
    gpu_net = small_net().to("cuda")
    gpu_net.load_state_dict(cpu_net.state_dict())
    back = small_net()
    back.load_state_dict(gpu_net.state_dict())
    for (name, p), (_, q), (_, r) in zip(cpu_net.named_parameters(), gpu_net.named_parameters(), back.named_parameters()):
        assert nbcnn.device_of(q.data) == "cuda" and nbcnn.device_of(r.data) == "cpu"
        assert np.array_equal(nbcnn.to_numpy(q.data), nbcnn.to_numpy(p.data)), name
        assert np.array_equal(nbcnn.to_numpy(r.data), nbcnn.to_numpy(p.data)), name
    x = np.random.default_rng(1).standard_normal((1, 2, 9, 9)).astype(np.float32)
    cpu_net.eval(), gpu_net.eval()
    assert_close(nbcnn.to_numpy(gpu_net(nbcnn.asarray(x, "cuda"))), nbcnn.to_numpy(cpu_net(nbcnn.asarray(x))), rtol=1e-4)


def test_device_mismatch_is_a_clear_error():
    net = small_net().to("cuda")
    x = np.zeros((1, 2, 9, 9), np.float32)
    with pytest.raises(ValueError, match="on cuda but its input is a cpu array"):
        net(nbcnn.asarray(x, "cpu"))
    with pytest.raises(ValueError, match="on cuda but its input is a cpu array"):
        net(x)  # a raw numpy array is a cpu array
    with pytest.raises(ValueError, match="on cpu but its input is a cuda array"):
        small_net()(nbcnn.asarray(x, "cuda"))
    logits = nbcnn.asarray(np.zeros((2, 3), np.float32), "cuda")
    with pytest.raises(ValueError, match="labels must be a cuda array"):
        nbcnn.softmax_cross_entropy(logits, nbcnn.asarray([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        nbcnn.softmax_cross_entropy(logits, nbcnn.asarray([0, 5], "cuda"))


@pytest.mark.skipif(ON_GPU, reason="checks the message of a machine without a GPU")
def test_no_gpu_is_a_clear_error():
    import subprocess
    import sys
    code = ("import nbcnn\ntry:\n    nbcnn.get_backend('cuda')\nexcept RuntimeError as e:\n    print('ERR', e)\n")
    env = {**__import__("os").environ, "NUMBA_ENABLE_CUDASIM": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("ERR no CUDA GPU found; use --device cpu"), out.stdout + out.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="full-size AlexNet needs a real GPU (NBCNN_TEST_GPU=1)")
def test_alexnet_forward_backward_agree_at_batch_2():
    nbcnn.manual_seed(0)
    cpu = nbcnn.models.alexnet()
    gpu = nbcnn.models.alexnet().to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    labels = np.array([3, 997])
    outs = {}
    for name, net in (("cpu", cpu), ("cuda", gpu)):
        nbcnn.manual_seed(5)  # same dropout keys
        logits = net(nbcnn.asarray(x, name))
        loss, dlogits = nbcnn.softmax_cross_entropy(logits, nbcnn.asarray(labels, name))
        dx = net.backward(dlogits)
        outs[name] = (nbcnn.to_numpy(logits), loss, nbcnn.to_numpy(dx),
                      [nbcnn.to_numpy(p.grad) for p in net.parameters()])
    (lc, sc, dxc, gc), (lg, sg, dxg, gg) = outs["cpu"], outs["cuda"]
    # K up to 9216 (fc6) and eight layers deep: float32 agreement to 1e-3 of the magnitude
    assert_close(lg, lc, rtol=1e-3)
    assert abs(sg - sc) <= 1e-3 * max(1.0, abs(sc))
    assert_close(dxg, dxc, rtol=1e-3)
    for i, (a, b) in enumerate(zip(gg, gc)):
        assert_close(a, b, rtol=1e-3, what=f"grad {i}")


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="full-size ResNet-18 needs a real GPU (NBCNN_TEST_GPU=1)")
def test_resnet18_forward_backward_agree_at_batch_2():
    """torchvision's ResNet-18 at 224x224, training mode (batch statistics), then eval mode."""
    nbcnn.manual_seed(0)
    cpu = nbcnn.models.resnet18()
    gpu = nbcnn.models.resnet18().to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    labels = np.array([3, 997])
    outs = {}
    for name, net in (("cpu", cpu), ("cuda", gpu)):
        logits = net(nbcnn.asarray(x, name))
        loss, dlogits = nbcnn.softmax_cross_entropy(logits, nbcnn.asarray(labels, name))
        dx = net.backward(dlogits)
        outs[name] = (nbcnn.to_numpy(logits), loss, nbcnn.to_numpy(dx),
                      {k: nbcnn.to_numpy(p.grad) for k, p in net.named_parameters()}, net.state_dict(),
                      nbcnn.to_numpy(net.eval()(nbcnn.asarray(x, name))))
    (lc, sc, dxc, gc, stc, ec), (lg, sg, dxg, gg, stg, eg) = outs["cpu"], outs["cuda"]
    # 20 layers deep, K up to 4608, batch norm dividing by batch deviations: float32 to 1e-3 of the magnitude
    assert_close(lg, lc, rtol=1e-3)
    assert abs(sg - sc) <= 1e-3 * max(1.0, abs(sc))
    assert_close(dxg, dxc, rtol=1e-3)
    for k in gc:
        assert_close(gg[k], gc[k], rtol=1e-3, atol=1e-3 * max(np.abs(v).max() for v in gc.values()), what=k)
    for k in stc:
        assert_close(stg[k], stc[k], rtol=1e-3, what=k)
    assert_close(eg, ec, rtol=1e-3, what="eval logits")
