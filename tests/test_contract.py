"""The backend contract (nbcnn/backend.py), method by method, on every backend.

Each method has a case here that calls it and checks the result against NumPy (or
tests/reference.py); a method that takes arrays of any shape is called with arrays of
ranks 1 to 5, and `contiguous`, `from_numpy` and `copy` with strided ones too. A test fails
when the contract gains a method without a case. The ops' numerics are specified in depth
by test_ops.py and test_backends_agree.py; this suite holds every backend to every
promise of the contract's signatures: shapes, ranks, strides, dtypes, what is overwritten
and what accumulates.
"""

import inspect

import numpy as np
import pytest

import nbcnn
import reference as ref
from devices import DEVICES
from nbcnn.backend import Backend, Workspace
from nbcnn.kernel_math import CUMULATIVE
from nbcnn.testing import assert_close

SHAPES = [(7,), (3, 4), (2, 3, 5), (2, 2, 3, 4), (1, 2, 3, 2, 3)]  # ranks 1 to 5
CASES = {}


def case(method):
    """Register the decorated function as the case of contract method `method`."""
    def register(fn):
        CASES[method] = fn
        return fn
    return register


def contract_methods():
    return sorted(name for name, _ in inspect.getmembers(Backend, inspect.isfunction) if not name.startswith("_"))


def data(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def strided(be, shape, dtype=np.float32, seed=0):
    """(host array, the same values as a strided view of a larger array of backend `be`)."""
    big = data(tuple(2 * s + 1 for s in shape), dtype, seed)
    index = tuple(slice(1, None, 2) for _ in shape)  # every other element, from the second, on every axis
    view = be.from_numpy(big)[index]
    return big[index], view


def test_every_contract_method_has_a_case():
    assert sorted(CASES) == contract_methods()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", contract_methods())
def test_the_contract_holds(device, method):
    CASES[method](nbcnn.get_backend(device))


# -- arrays ------------------------------------------------------------------------------

@case("is_array")
def _(be):
    assert be.is_array(be.empty((2, 3), np.float32))
    assert not be.is_array([1.0, 2.0])


@case("empty")
def _(be):
    for shape in SHAPES + [(0,), (3, 0)]:
        for dtype in (np.float32, np.float64, np.int32, np.int64):
            a = be.empty(shape, dtype)
            assert tuple(a.shape) == shape and a.dtype == dtype and be.is_array(a)


@case("zeros")
def _(be):
    for shape in SHAPES:
        assert_close(be.zeros(shape, np.float64), np.zeros(shape), exact=True)


@case("from_numpy")
def _(be):
    for shape in SHAPES:
        host = data(shape, np.float64)
        assert_close(be.from_numpy(host), host, exact=True)
        view = data(tuple(2 * s for s in shape))[tuple(slice(None, None, 2) for _ in shape)]  # host strides
        a = be.from_numpy(view)
        assert_close(a, view, exact=True)
        assert be.contiguous(a) is a


@case("to_numpy")
def _(be):
    for shape in SHAPES:
        host = data(shape)
        out = be.to_numpy(be.from_numpy(host))
        assert isinstance(out, np.ndarray) and out.dtype == host.dtype and np.array_equal(out, host)


@case("copy")
def _(be):
    for shape in SHAPES:
        host = data(shape)
        dst = be.empty(shape, np.float32)
        be.copy(be.from_numpy(host), dst)
        assert_close(dst, host, exact=True)
        host, view = strided(be, shape)
        be.copy(view, dst)
        assert_close(dst, host, exact=True)


@case("contiguous")
def _(be):
    for shape in SHAPES:
        host, view = strided(be, shape)
        out = be.contiguous(view)
        assert tuple(out.shape) == shape
        assert_close(be.to_numpy(out), host, exact=True)
        assert be.contiguous(out) is out  # already contiguous: no copy
    for dtype in (np.float64, np.int64):
        host, view = strided(be, (3, 4), dtype)
        assert_close(be.contiguous(view), host, exact=True)


@case("reshape")
def _(be):
    for shape in SHAPES:
        host = data(shape)
        flat = be.reshape(be.from_numpy(host), (host.size,))
        assert_close(flat, host.reshape(-1), exact=True)
        assert_close(be.reshape(flat, shape), host, exact=True)


@case("fill")
def _(be):
    for shape in SHAPES:
        a = be.empty(shape, np.float32)
        be.fill(a, 2.5)
        assert_close(a, np.full(shape, 2.5, np.float32), exact=True)
    labels = be.empty((4,), np.int64)
    be.fill(labels, 3)
    assert_close(labels, np.full(4, 3), exact=True)


@case("add")
def _(be):
    for shape in SHAPES:
        a, b = data(shape, seed=1), data(shape, seed=2)
        dst = be.from_numpy(b)
        be.add(be.from_numpy(a), dst)
        assert_close(dst, b + a, exact=True)


@case("scale")
def _(be):
    for shape, dtype in zip(SHAPES, (np.float32, np.float64) * 3):
        a = data(shape, dtype)
        ad = be.from_numpy(a)
        be.scale(ad, 0.3)
        assert_close(ad, (a.astype(np.float64) * 0.3).astype(dtype), exact=True)


@case("add_out")
def _(be):
    for shape in SHAPES:
        a, b = data(shape, seed=1), data(shape, seed=2)
        y = be.empty(shape, np.float32)
        ad = be.from_numpy(a)
        be.add_out(ad, be.from_numpy(b), y)
        assert_close(y, a + b, exact=True)
        assert_close(ad, a, exact=True)  # the inputs stay as they were


@case("memory_stats")
def _(be):
    stats = be.memory_stats()
    assert set(stats) == {"allocations", "reserved_bytes", "in_use_bytes"}
    keep = be.empty((1000,), np.float32)
    assert be.memory_stats()["in_use_bytes"] >= keep.size * 4


@case("empty_cache")
def _(be):
    a = be.empty((12345,), np.float32)
    del a
    assert be.empty_cache() >= 1
    assert be.memory_stats()["reserved_bytes"] == be.memory_stats()["in_use_bytes"]


@case("is_out_of_memory")
def _(be):
    assert be.is_out_of_memory(nbcnn.OutOfMemoryError("out of memory"))
    assert not be.is_out_of_memory(ValueError("out of memory"))


# -- GEMM, convolution, pooling, LRN, linear -----------------------------------------------

@case("matmul")
def _(be):
    a, b = data((5, 3), np.float64, 1), data((3, 4), np.float64, 2)
    c = be.empty((5, 4), np.float64)
    be.matmul(be.from_numpy(a), be.from_numpy(b), c)
    assert_close(c, a @ b)
    with pytest.raises(ValueError):  # a strided view would be read as garbage by BLAS or the GPU kernel
        be.matmul(strided(be, (5, 3), np.float64)[1], be.from_numpy(b), c)


def conv_args(be):
    x, w, b = data((2, 2, 5, 4), np.float64, 1), data((3, 2, 3, 3), np.float64, 2), data((3,), np.float64, 3)
    return x, w, b, [be.from_numpy(v) for v in (x, w, b)]


@case("conv2d_forward")
def _(be):
    x, w, b, (xd, wd, bd) = conv_args(be)
    y = be.empty((2, 3, 3, 2), np.float64)  # stride 2, padding 1
    be.conv2d_forward(xd, wd, bd, 2, 1, y, Workspace())
    assert_close(y, ref.conv2d(x, w, b, 2, 1))
    for c, o, groups, bias in GROUPED:  # grouped, depthwise (multipliers 1 and 2), with and without bias
        x, w = data((2, c, 5, 4), np.float64, 1), data((o, c // groups, 3, 3), np.float64, 2)
        b = data((o,), np.float64, 3) if bias else None
        y = be.empty((2, o, 3, 2), np.float64)
        be.conv2d_forward(be.from_numpy(x), be.from_numpy(w), b if b is None else be.from_numpy(b), 2, 1, y,
                          Workspace(), groups=groups)
        assert_close(y, ref.conv2d_grouped(x, w, b, 2, 1, groups), what=f"groups={groups}, bias={bias}")


# (in channels, out channels, groups, bias): grouped; depthwise with multiplier 1 and 2; one input channel
GROUPED = [(4, 6, 2, False), (3, 3, 3, True), (3, 6, 3, False), (1, 3, 1, False)]


@case("conv2d_backward")
def _(be):
    x, w, b, (xd, wd, bd) = conv_args(be)
    dy = data((2, 3, 5, 4), np.float64, 4)  # stride 1, padding 1
    dw0, db0 = data(w.shape, np.float64, 5), data(b.shape, np.float64, 6)
    dx, dw, db = be.empty(x.shape, np.float64), be.from_numpy(dw0), be.from_numpy(db0)
    be.conv2d_backward(xd, wd, be.from_numpy(dy), 1, 1, dx, dw, db, Workspace())
    # the adjoint of forward: <dy, conv(x)> = <dx, x> + <dw, w> + <db, b> for the gradients alone
    y = ref.conv2d(x, w, np.zeros(3), 1, 1)
    assert np.isclose(np.vdot(dy, y), np.vdot(be.to_numpy(dx), x))
    assert np.isclose(np.vdot(dy, y), np.vdot(be.to_numpy(dw) - dw0, w))  # dw accumulates onto dw0
    assert_close(be.to_numpy(db) - db0, dy.sum(axis=(0, 2, 3)))
    for (c, o, groups, _), wanted in zip(GROUPED, [(1, 1, 1), (1, 0, 1), (0, 1, 0), (1, 1, 0)]):
        check_conv2d_backward(be, c, o, groups, *wanted)


def check_conv2d_backward(be, c, o, groups, want_dx, want_dw, want_db):
    """conv2d_backward with groups: the adjoint identities of conv2d_backward's case; a gradient passed as None is
    not computed, and the others come out the same."""
    x, w = data((2, c, 5, 4), np.float64, 1), data((o, c // groups, 3, 3), np.float64, 2)
    dy = data((2, o, 5, 4), np.float64, 4)  # stride 1, padding 1
    dw0, db0 = data(w.shape, np.float64, 5), data((o,), np.float64, 6)
    dx = be.empty(x.shape, np.float64) if want_dx else None
    dw, db = (be.from_numpy(dw0) if want_dw else None), (be.from_numpy(db0) if want_db else None)
    be.conv2d_backward(be.from_numpy(x), be.from_numpy(w), be.from_numpy(dy), 1, 1, dx, dw, db, Workspace(),
                       groups=groups)
    inner = np.vdot(dy, ref.conv2d_grouped(x, w, None, 1, 1, groups))
    what = f"groups={groups}, dx/dw/db wanted: {want_dx, want_dw, want_db}"
    if want_dx:
        assert np.isclose(inner, np.vdot(be.to_numpy(dx), x)), what
    if want_dw:
        assert np.isclose(inner, np.vdot(be.to_numpy(dw) - dw0, w)), what
    if want_db:
        assert_close(be.to_numpy(db) - db0, dy.sum(axis=(0, 2, 3)), what=what)


@case("maxpool2d_forward")
def _(be):
    x = data((2, 3, 7, 6))
    for pad, out in ((0, (2, 3, 3, 2)), (1, (2, 3, 4, 3))):  # -inf padding; argmax in the unpadded plane
        y, argmax = be.empty(out, np.float32), be.empty(out, np.int32)
        be.maxpool2d_forward(be.from_numpy(x), 3, 2, pad, y, argmax)
        ref_y, ref_argmax = ref.maxpool2d_argmax(x, 3, 2, pad)
        assert_close(y, ref_y, exact=True)
        assert_close(argmax, ref_argmax, exact=True)


@case("maxpool2d_backward")
def _(be):
    x, dy = data((1, 2, 5, 5)), data((1, 2, 2, 2), seed=1)
    _, argmax = ref.maxpool2d_argmax(x, 3, 2)
    dx = be.empty(x.shape, np.float32)
    be.maxpool2d_backward(be.from_numpy(dy), be.from_numpy(argmax), dx)
    expected = np.zeros((1, 2, 25), np.float64)
    for c in range(2):
        np.add.at(expected[0, c], argmax[0, c].reshape(-1), dy[0, c].reshape(-1))
    assert_close(dx, expected.reshape(x.shape).astype(np.float32), rtol=1e-6)


@case("avgpool2d_forward")
def _(be):
    x = data((2, 3, 7, 6), np.float64)
    for pad, include, out in ((0, True, (2, 3, 3, 2)), (1, True, (2, 3, 4, 3)), (1, False, (2, 3, 4, 3))):
        y = be.empty(out, np.float64)
        be.avgpool2d_forward(be.from_numpy(x), 3, 2, pad, include, y)
        assert_close(y, ref.avgpool2d(x, 3, 2, pad, include))


@case("avgpool2d_backward")
def _(be):
    x, dy = data((1, 2, 6, 5), np.float64), data((1, 2, 3, 3), np.float64, 1)  # 3/2 pad 1: windows overlap
    for include in (True, False):
        dx = be.empty(x.shape, np.float64)
        be.avgpool2d_backward(be.from_numpy(dy), 3, 2, 1, include, dx)
        # a linear map: backward is its adjoint, <dy, avgpool(x)> = <dx, x>
        assert np.isclose(np.vdot(dy, ref.avgpool2d(x, 3, 2, 1, include)), np.vdot(be.to_numpy(dx), x))
    dx = be.empty((1, 2, 7, 7), np.float64)  # stride 3 > k 2: rows and columns no window holds get 0
    be.avgpool2d_backward(be.from_numpy(dy[:, :, :2, :2].copy()), 2, 3, 0, True, dx)
    assert_close(be.to_numpy(dx)[:, :, 2::3], np.zeros((1, 2, 2, 7)), exact=True)


@case("adaptive_avgpool2d_forward")
def _(be):
    x = data((2, 3, 7, 5), np.float64)
    for oh, ow in ((1, 1), (3, 2), (7, 5), (9, 6)):  # global, uneven bins, identity, more bins than pixels
        y = be.empty((2, 3, oh, ow), np.float64)
        be.adaptive_avgpool2d_forward(be.from_numpy(x), y)
        assert_close(y, ref.adaptive_avgpool2d(x, oh, ow))


@case("adaptive_avgpool2d_backward")
def _(be):
    x = data((1, 2, 7, 5), np.float64)
    for oh, ow in ((1, 1), (3, 2), (9, 6)):
        dy = data((1, 2, oh, ow), np.float64, oh)
        dx = be.empty(x.shape, np.float64)
        be.adaptive_avgpool2d_backward(be.from_numpy(dy), dx)
        assert np.isclose(np.vdot(dy, ref.adaptive_avgpool2d(x, oh, ow)), np.vdot(be.to_numpy(dx), x))


@case("lrn_forward")
def _(be):
    x = 3 * data((2, 6, 3, 2), np.float64)
    y, scale = be.empty(x.shape, np.float64), be.empty(x.shape, np.float64)
    be.lrn_forward(be.from_numpy(x), 5, 5e-4, 0.75, 2.0, y, scale)
    assert_close(y, ref.lrn(x, 5, 5e-4, 0.75, 2.0))
    assert_close(be.to_numpy(y), x * be.to_numpy(scale) ** -0.75)


@case("lrn_backward")
def _(be):
    x, dy = 3 * data((1, 5, 2, 2), np.float64), data((1, 5, 2, 2), np.float64, 1)
    xd, y, scale, dx = be.from_numpy(x), *(be.empty(x.shape, np.float64) for _ in range(3))
    be.lrn_forward(xd, 3, 0.5, 0.75, 1.0, y, scale)
    be.lrn_backward(xd, y, scale, be.from_numpy(dy), 3, 0.5, 0.75, dx)
    v, eps = data(x.shape, np.float64, 2), 1e-6  # the directional derivative along v, by central differences
    fd = (np.vdot(dy, ref.lrn(x + eps * v, 3, 0.5, 0.75, 1.0)) - np.vdot(dy, ref.lrn(x - eps * v, 3, 0.5, 0.75, 1.0))) / (2 * eps)
    assert np.isclose(np.vdot(be.to_numpy(dx), v), fd, rtol=1e-6)


def bn_args(be, seed=0):
    """x (N,C,S) = (3,2,4) in float64, gamma, beta and running statistics, on the host and on `be`."""
    x = 2 * data((3, 2, 4), np.float64, seed) + 1
    gamma, beta = data((2,), np.float64, seed + 1), data((2,), np.float64, seed + 2)
    rm, rv = data((2,), np.float64, seed + 3), 1 + data((2,), np.float64, seed + 4) ** 2
    return (x, gamma, beta, rm, rv), [be.from_numpy(v) for v in (x, gamma, beta, rm, rv)]


@case("batchnorm_forward_train")
def _(be):
    (x, gamma, beta, rm0, rv0), (xd, gd, bd, _, _) = bn_args(be)
    for momentum, factor in ((0.1, 0.1), (CUMULATIVE, 1 / 5), (None, None)):  # None: no running statistics
        y, mean, invstd = be.empty(x.shape, np.float64), be.empty((2,), np.float64), be.empty((2,), np.float64)
        rm, rv, count = be.from_numpy(rm0), be.from_numpy(rv0), be.from_numpy(np.array(4, np.int64))
        running = (None, None, None) if momentum is None else (rm, rv, count)
        be.batchnorm_forward_train(xd, gd, bd, 1e-5, momentum or 0.0, *running, y, mean, invstd, Workspace())
        assert_close(y, ref.batchnorm(x, gamma, beta, 1e-5))
        assert_close(mean, x.mean(axis=(0, 2)))
        assert_close(invstd, 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-5))
        if momentum is not None:  # the unbiased variance; a cumulative average counts this fifth batch
            for got, want in zip((rm, rv), ref.batchnorm_running(rm0, rv0, x, factor)):
                assert_close(got, want)
            assert be.to_numpy(count).shape == () and be.to_numpy(count) == 5


@case("batchnorm_forward_eval")
def _(be):
    (x, gamma, beta, rm, rv), (xd, gd, bd, rmd, rvd) = bn_args(be)
    y, mean, invstd = be.empty(x.shape, np.float64), be.empty((2,), np.float64), be.empty((2,), np.float64)
    be.batchnorm_forward_eval(xd, gd, bd, rmd, rvd, 1e-3, y, mean, invstd)
    assert_close(y, ref.batchnorm(x, gamma, beta, 1e-3, rm, rv))
    assert_close(mean, rm, exact=True)
    assert_close(invstd, 1 / np.sqrt(rv + 1e-3))
    assert_close(rmd, rm, exact=True)  # the running statistics only read
    assert_close(rvd, rv, exact=True)


@case("batchnorm_backward")
def _(be):
    (x, gamma, beta, rm, rv), (xd, gd, bd, rmd, rvd) = bn_args(be)
    dy, v = data(x.shape, np.float64, 7), data(x.shape, np.float64, 8)
    dgamma0, dbeta0 = data((2,), np.float64, 9), data((2,), np.float64, 10)
    y, mean, invstd = be.empty(x.shape, np.float64), be.empty((2,), np.float64), be.empty((2,), np.float64)
    eps = 1e-6  # the directional derivative of <dy, y(x)> along v, by central differences
    for batch_stats in (True, False):
        if batch_stats:
            be.batchnorm_forward_train(xd, gd, bd, 1e-5, 0.1, None, None, None, y, mean, invstd, Workspace())
            stats, m, var = (), x.mean(axis=(0, 2)), x.var(axis=(0, 2))
        else:
            be.batchnorm_forward_eval(xd, gd, bd, rmd, rvd, 1e-5, y, mean, invstd)
            stats, m, var = (rm, rv), rm, rv
        for want_dx in (True, False):
            dx = be.empty(x.shape, np.float64) if want_dx else None
            dgamma, dbeta = be.from_numpy(dgamma0), be.from_numpy(dbeta0)
            be.batchnorm_backward(xd, gd, mean, invstd, be.from_numpy(dy), batch_stats, dx, dgamma, dbeta, Workspace())
            xhat = (x - m[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5)
            assert_close(be.to_numpy(dgamma) - dgamma0, (dy * xhat).sum(axis=(0, 2)))  # accumulated
            assert_close(be.to_numpy(dbeta) - dbeta0, dy.sum(axis=(0, 2)))
            if want_dx:
                up, down = (np.vdot(dy, ref.batchnorm(x + sign * eps * v, gamma, beta, 1e-5, *stats)) for sign in (1, -1))
                assert np.isclose(np.vdot(be.to_numpy(dx), v), (up - down) / (2 * eps), rtol=1e-6)


# SyncBatchNorm's ops: x (3,2,4) as the shards of two processes, x[:1] and x[1:] (counts 4 and 8)
SHARDS = (slice(0, 1), slice(1, 3))


def shard_stats(x):
    """The (P,C,3) float64 triples (count, mean, sum of squared deviations) of x's SHARDS, by NumPy."""
    return np.stack([np.stack([np.full(x.shape[1], float(x[s].shape[0] * x.shape[2])), x[s].mean(axis=(0, 2)),
                               ((x[s] - x[s].mean(axis=(0, 2))[None, :, None]) ** 2).sum(axis=(0, 2))], axis=1)
                     for s in SHARDS])


@case("batchnorm_local_stats")
def _(be):
    (x, *_), (xd, *_) = bn_args(be)
    stats = be.empty((2, 3), np.float64)
    be.batchnorm_local_stats(xd, stats)
    assert_close(stats, np.stack([np.full(2, 12.0), x.mean(axis=(0, 2)), x.var(axis=(0, 2)) * 12], axis=1))


@case("batchnorm_forward_gathered")
def _(be):
    """Each shard normalised with the statistics of all of x, the running statistics updated with them."""
    (x, gamma, beta, rm0, rv0), (_, gd, bd, _, _) = bn_args(be)
    stats = be.from_numpy(shard_stats(x))
    for momentum, factor in ((0.1, 0.1), (CUMULATIVE, 1 / 5), (None, None)):
        for s in SHARDS:
            xs = x[s]
            y, mean, invstd = be.empty(xs.shape, np.float64), be.empty((2,), np.float64), be.empty((2,), np.float64)
            rm, rv, count = be.from_numpy(rm0), be.from_numpy(rv0), be.from_numpy(np.array(4, np.int64))
            running = (None, None, None) if momentum is None else (rm, rv, count)
            be.batchnorm_forward_gathered(be.from_numpy(xs), gd, bd, 1e-5, momentum or 0.0, stats, *running, y, mean,
                                          invstd, Workspace())
            assert_close(y, ref.batchnorm(x, gamma, beta, 1e-5)[s])
            assert_close(mean, x.mean(axis=(0, 2)))
            assert_close(invstd, 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-5))
            if momentum is not None:  # the unbiased variance of all 12 values a channel
                for got, want in zip((rm, rv), ref.batchnorm_running(rm0, rv0, x, factor)):
                    assert_close(got, want)
                assert be.to_numpy(count) == 5


@case("batchnorm_grad_sums")
def _(be):
    (x, gamma, beta, _, _), (xd, gd, bd, _, _) = bn_args(be)
    dy = data(x.shape, np.float64, 7)
    m, v = data((2,), np.float64, 8), 1 + data((2,), np.float64, 9) ** 2
    dgamma0, dbeta0 = data((2,), np.float64, 10), data((2,), np.float64, 11)
    sums, dgamma, dbeta = be.empty((2, 2), np.float64), be.from_numpy(dgamma0), be.from_numpy(dbeta0)
    be.batchnorm_grad_sums(xd, be.from_numpy(dy), be.from_numpy(m), be.from_numpy(v), sums, dgamma, dbeta)
    xhat = (x - m[None, :, None]) * v[None, :, None]
    assert_close(sums, np.stack([dy.sum(axis=(0, 2)), (dy * xhat).sum(axis=(0, 2))], axis=1))
    assert_close(be.to_numpy(dgamma) - dgamma0, (dy * xhat).sum(axis=(0, 2)))  # accumulated
    assert_close(be.to_numpy(dbeta) - dbeta0, dy.sum(axis=(0, 2)))


@case("batchnorm_backward_gathered")
def _(be):
    """Shard p's dx is the gradient of the global loss L = sum_q (M_q/M) <dy_q, y_q> (y normalised
    with all of x's statistics) with respect to x_p, divided by M_p/M: by central differences."""
    (x, gamma, beta, _, _), (_, gd, _, _, _) = bn_args(be)
    dy = data(x.shape, np.float64, 7)
    stats = shard_stats(x)
    weights = np.concatenate([np.full(x[s].shape[0], stats[p, 0, 0] / 12) for p, s in enumerate(SHARDS)])

    def loss(z):
        return np.vdot(dy * weights[:, None, None], ref.batchnorm(z, gamma, beta, 1e-5))

    m, invstd = x.mean(axis=(0, 2)), 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-5)
    xhat = (x - m[None, :, None]) * invstd[None, :, None]
    sums = be.from_numpy(np.stack([np.stack([dy[s].sum(axis=(0, 2)), (dy[s] * xhat[s]).sum(axis=(0, 2))], axis=1)
                                   for s in SHARDS]))
    eps = 1e-6
    for p, s in enumerate(SHARDS):
        dx = be.empty(x[s].shape, np.float64)
        be.batchnorm_backward_gathered(be.from_numpy(x[s]), be.from_numpy(dy[s]), gd, be.from_numpy(m),
                                       be.from_numpy(invstd), be.from_numpy(stats), sums, dx, Workspace())
        v = np.zeros_like(x)
        v[s] = data(x[s].shape, np.float64, 12 + p)
        slope = (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)
        assert np.isclose(np.vdot(be.to_numpy(dx), v[s]), slope / (stats[p, 0, 0] / 12), rtol=1e-6)


@case("linear_forward")
def _(be):
    x, w, b = data((4, 3), np.float64), data((2, 3), np.float64, 1), data((2,), np.float64, 2)
    y = be.empty((4, 2), np.float64)
    be.linear_forward(*(be.from_numpy(v) for v in (x, w, b)), y)
    assert_close(y, ref.linear(x, w, b))


@case("linear_backward")
def _(be):
    x, w, dy = data((4, 3), np.float64), data((2, 3), np.float64, 1), data((4, 2), np.float64, 2)
    dw0, db0 = data((2, 3), np.float64, 3), data((2,), np.float64, 4)
    for want_dx in (True, False):
        dx = be.empty(x.shape, np.float64) if want_dx else None
        dw, db = be.from_numpy(dw0), be.from_numpy(db0)
        be.linear_backward(be.from_numpy(x), be.from_numpy(w), be.from_numpy(dy), dx, dw, db)
        if want_dx:
            assert_close(dx, dy @ w)
        assert_close(dw, dw0 + dy.T @ x)
        assert_close(db, db0 + dy.sum(axis=0))
    for want_dw, want_db in ((False, True), (True, False), (False, False)):  # None: that gradient is not computed
        dx = be.empty(x.shape, np.float64)
        dw, db = (be.from_numpy(dw0) if want_dw else None), (be.from_numpy(db0) if want_db else None)
        be.linear_backward(be.from_numpy(x), be.from_numpy(w), be.from_numpy(dy), dx, dw, db)
        assert_close(dx, dy @ w)
        if want_dw:
            assert_close(dw, dw0 + dy.T @ x)
        if want_db:
            assert_close(db, db0 + dy.sum(axis=0))


# -- element-wise: any rank ------------------------------------------------------------------

@case("relu_forward")
def _(be):
    for shape in SHAPES:
        x = data(shape)
        y = be.empty(shape, np.float32)
        be.relu_forward(be.from_numpy(x), y)
        assert_close(y, ref.relu(x), exact=True)


@case("relu_backward")
def _(be):
    for shape in SHAPES:
        y, dy = ref.relu(data(shape)), data(shape, seed=1)
        dx = be.empty(shape, np.float32)
        be.relu_backward(be.from_numpy(y), be.from_numpy(dy), dx)
        assert_close(dx, np.where(y > 0, dy, 0), exact=True)


@case("dropout_forward")
def _(be):
    check_dropout(be, be.dropout_forward)


@case("dropout_backward")
def _(be):
    check_dropout(be, be.dropout_backward)  # the same mask, recomputed from the key


def check_dropout(be, op):
    """op(x, p, key, y) writes y = x * keep / (1 - p) with the hash's mask, at every rank."""
    for shape, key in zip(SHAPES, (12345, 777, 1, 2**31, 0)):
        x = data(shape)
        y = be.empty(shape, np.float32)
        op(be.from_numpy(x), 0.5, key, y)
        assert_close(y, ref.dropout(x, 0.5, key).astype(np.float32), exact=True)
    # offset: the mask of elements offset.. of a larger array, past 2**32 too (its high word enters the hash)
    for offset in (7, 2**32 + 3):
        x = data((3, 5))
        y = be.empty(x.shape, np.float32)
        op(be.from_numpy(x), 0.5, 999, y, offset)
        assert_close(y, ref.dropout(x, 0.5, 999, offset).astype(np.float32), exact=True)


@case("sgd_step")
def _(be):
    for shape in SHAPES:
        w, g, v = (data(shape, np.float64, seed) for seed in (1, 2, 3))
        wd, vd = be.from_numpy(w), be.from_numpy(v)
        be.sgd_step(wd, be.from_numpy(g), vd, 0.1, 0.9, 5e-4)
        w_new, v_new = ref.sgd(w, g, v, 0.1, 0.9, 5e-4)
        assert_close(wd, w_new, rtol=1e-15)
        assert_close(vd, v_new, rtol=1e-15)


@case("adam_step")
def _(be):
    for shape, amsgrad, decoupled in zip(SHAPES, (False, True, False, True, False), (False, False, True, True, False)):
        w, g, m, v, vmax = (data(shape, np.float64, seed) for seed in (1, 2, 3, 4, 5))
        v, vmax = v * v, vmax * vmax  # second moments are >= 0
        state = [be.from_numpy(a) for a in (w, m, v)] + [be.from_numpy(vmax) if amsgrad else None]
        be.adam_step(state[0], be.from_numpy(g), state[1], state[2], state[3], 3, 0.1, 0.9, 0.99, 1e-8, 0.01, decoupled)
        expected = ref.adam(w, g, m, v, vmax if amsgrad else None, 3, 0.1, 0.9, 0.99, 1e-8, 0.01, decoupled)
        for got, want, name in zip(state, expected, ("w", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")):
            if want is not None:
                assert_close(got, want, rtol=1e-14, what=name)


@case("rmsprop_step")
def _(be):
    for shape, centered, momentum in zip(SHAPES, (False, True, False, True, True), (0.0, 0.0, 0.9, 0.9, 0.5)):
        w, g, sq, ga, buf = (data(shape, np.float64, seed) for seed in (1, 2, 3, 4, 5))
        sq, ga = sq * sq + ga * ga, ga  # a square average that holds the square of the gradient average
        state = [be.from_numpy(a) for a in (w, sq)] + [be.from_numpy(ga) if centered else None,
                                                       be.from_numpy(buf) if momentum else None]
        be.rmsprop_step(state[0], be.from_numpy(g), *state[1:], 0.01, 0.9, 1e-8, 0.01, momentum)
        expected = ref.rmsprop(w, g, sq, ga if centered else None, buf if momentum else None, 0.01, 0.9, 1e-8, 0.01,
                               momentum)
        for got, want, name in zip(state, expected, ("w", "square_avg", "grad_avg", "momentum_buffer")):
            if want is not None:
                assert_close(got, want, rtol=1e-14, what=name)


# -- loss ------------------------------------------------------------------------------------

@case("softmax_cross_entropy")
def _(be):
    z, labels = data((4, 3), np.float64), np.array([0, 2, 1, 2])
    dz = be.empty(z.shape, np.float64)
    loss, bad = be.softmax_cross_entropy(be.from_numpy(z), be.from_numpy(labels), dz, Workspace())
    ref_loss, ref_dz = ref.softmax_cross_entropy(z, labels)
    assert isinstance(loss, float) and isinstance(bad, int) and bad == 0
    assert_close(loss, ref_loss)
    assert_close(dz, ref_dz)
    z[1, 1] = np.nan
    labels[3] = 3  # out of [0, 3)
    _, bad = be.softmax_cross_entropy(be.from_numpy(z), be.from_numpy(labels), dz, Workspace())
    assert bad == 2


# -- no op keeps state of its own ---------------------------------------------------------------

def arrays_in(value, backend, depth=2):
    """Whether `value` is an array of `backend` or a dict/list/tuple holding one (two levels down)."""
    if backend.is_array(value):
        return True
    if depth and isinstance(value, dict):
        value = list(value.values())
    return bool(depth) and isinstance(value, (list, tuple)) and any(arrays_in(v, backend, depth - 1) for v in value)


@pytest.mark.parametrize("device", DEVICES)
def test_no_backend_module_keeps_arrays_between_calls(device):
    """Scratch comes from the caller's Workspace: after a training step no module of the backend holds an array."""
    import importlib
    import pkgutil
    be = nbcnn.get_backend(device)
    net = nbcnn.Sequential(nbcnn.Conv2d(1, 2, 3), nbcnn.ReLU(), nbcnn.LocalResponseNorm(3), nbcnn.MaxPool2d(2),
                           nbcnn.Flatten(), nbcnn.Dropout(0.5), nbcnn.Linear(8, 3)).to(device)
    logits = net(nbcnn.asarray(data((2, 1, 6, 6)), device))
    _, dlogits = nbcnn.softmax_cross_entropy(logits, nbcnn.asarray([0, 2], device))
    net.backward(dlogits)
    package = importlib.import_module(f"nbcnn.{device}")
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        holding = [name for name, value in vars(module).items() if arrays_in(value, be)]
        assert not holding, f"{module.__name__} keeps arrays in module state: {holding}"
