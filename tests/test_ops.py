"""Every op against a plain NumPy/SciPy reference, on every backend.

Shapes are drawn by hypothesis; the bounds are small under the CUDA simulator. Forward
results are checked against tests/reference.py; backward passes against central finite
differences in float64 (directional derivatives along random directions).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbcnn
import fake_device
import reference as ref
from devices import DEVICES, scale, simulated
from nbcnn.testing import assert_close

RTOL32 = 1e-4  # float32 kernels vs float64 references: sums of up to a few thousand products, relative to
               # the output's magnitude (nbcnn.testing.assert_close's rule)


def run(device, body, strategy, cpu_examples=25, sim_examples=4):
    """Run `body(case)` on hypothesis-drawn cases with a budget fitting the device."""
    @settings(max_examples=scale(device, cpu_examples, sim_examples), deadline=None)
    @given(case=strategy)
    def check(case):
        body(case)
    check()


def floats(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def conv_cases(draw, device):
    big = scale(device, 1, 0)
    k = draw(st.integers(1, 3 + 3 * big))
    stride = draw(st.integers(1, 2 + 2 * big))  # strides above and below the kernel size
    pad = draw(st.integers(0, min(2, k)))
    lo = max(1, k - 2 * pad)
    h = draw(st.integers(lo, lo + 3 + 6 * big))
    w = draw(st.integers(lo, lo + 3 + 6 * big))
    return dict(n=draw(st.integers(1, 2 + big)), c=draw(st.integers(1, 2 + 2 * big)),
                o=draw(st.integers(1, 3 + 3 * big)), h=h, w=w, k=k, stride=stride, pad=pad,
                seed=draw(st.integers(0, 2**31)))


@st.composite
def pool_cases(draw, device):
    big = scale(device, 1, 0)
    k = draw(st.integers(1, 3 + big))
    stride = draw(st.integers(1, 3))
    return dict(n=draw(st.integers(1, 2 + big)), c=draw(st.integers(1, 2 + 2 * big)),
                h=draw(st.integers(k, k + 4 + 6 * big)), w=draw(st.integers(k, k + 4 + 6 * big)),
                k=k, stride=stride, seed=draw(st.integers(0, 2**31)))


@st.composite
def map_cases(draw, device):
    big = scale(device, 1, 0)
    return dict(n=draw(st.integers(1, 2 + big)), c=draw(st.integers(1, 4 + 8 * big)),
                h=draw(st.integers(1, 3 + 5 * big)), w=draw(st.integers(1, 3 + 5 * big)),
                seed=draw(st.integers(0, 2**31)))


def conv_layer(device, case, dtype=np.float32):
    layer = nbcnn.Conv2d(case["c"], case["o"], case["k"], stride=case["stride"], padding=case["pad"])
    return layer.to(device, dtype)


# -- forward against the references ------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_forward_matches_scipy_correlate(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        layer = conv_layer(device, case)
        x = floats(rng, (case["n"], case["c"], case["h"], case["w"]))
        y = layer(nbcnn.asarray(x, device))
        w, b = layer.state_dict()["weight"], layer.state_dict()["bias"]
        assert_close(y, ref.conv2d(x.astype(np.float64), w, b, case["stride"], case["pad"]), rtol=RTOL32)
    run(device, body, conv_cases(device))


@pytest.mark.parametrize("device", DEVICES)
def test_maxpool2d_forward_matches_sliding_window_max(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        x = floats(rng, (case["n"], case["c"], case["h"], case["w"]))
        y = nbcnn.MaxPool2d(case["k"], case["stride"]).to(device)(nbcnn.asarray(x, device))
        np.testing.assert_array_equal(nbcnn.to_numpy(y), ref.maxpool2d(x, case["k"], case["stride"]))
    run(device, body, pool_cases(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,stride", [(3, 2), (2, 2), (3, 1), (1, 1)])
def test_maxpool2d_picks_the_first_maximum_of_each_window_and_a_nan_wins(device, k, stride):
    rng = np.random.default_rng(k * 10 + stride)
    # few distinct values, so windows tie; zeros of both signs; a NaN in some windows
    x = rng.integers(-1, 2, size=(2, 3, 9, 8)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] *= -1
    x.reshape(-1)[rng.choice(x.size, 4, replace=False)] = np.nan
    be = nbcnn.get_backend(device)
    oh, ow = (9 - k) // stride + 1, (8 - k) // stride + 1
    y, argmax = be.empty((2, 3, oh, ow), np.float32), be.empty((2, 3, oh, ow), np.int32)
    be.maxpool2d_forward(be.from_numpy(x), k, stride, 0, y, argmax)
    ref_y, ref_argmax = ref.maxpool2d_argmax(x, k, stride)
    np.testing.assert_array_equal(be.to_numpy(argmax), ref_argmax)
    np.testing.assert_array_equal(be.to_numpy(y).view(np.int32), ref_y.view(np.int32))


@pytest.mark.parametrize("device", DEVICES)
def test_overlapping_3_2_pooling_on_odd_and_even_maps(device):
    for h in scale(device, [13, 14, 27, 55], [7, 8]):  # AlexNet's map sizes; an odd and an even one simulated
        x = floats(np.random.default_rng(h), (1, 2, h, h))
        y = nbcnn.MaxPool2d(3, 2).to(device)(nbcnn.asarray(x, device))
        assert y.shape == (1, 2, (h - 3) // 2 + 1, (h - 3) // 2 + 1)
        np.testing.assert_array_equal(nbcnn.to_numpy(y), ref.maxpool2d(x, 3, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_relu_forward_is_max_with_zero(device):
    def body(case):
        x = floats(np.random.default_rng(case["seed"]), (case["n"], case["c"], case["h"], case["w"]))
        y = nbcnn.ReLU().to(device)(nbcnn.asarray(x, device))
        np.testing.assert_array_equal(nbcnn.to_numpy(y), ref.relu(x))
    run(device, body, map_cases(device))


@pytest.mark.parametrize("device", DEVICES)
def test_lrn_forward_matches_reference(device):
    def body(case):
        x = 3 * floats(np.random.default_rng(case["seed"]), (case["n"], case["c"], case["h"], case["w"]))
        for size, alpha, beta, k in ((5, 5e-4, 0.75, 2.0), (2, 0.5, 0.6, 1.0), (4, 1.0, 1.0, 0.5)):
            y = nbcnn.LocalResponseNorm(size, alpha, beta, k).to(device)(nbcnn.asarray(x, device))
            assert_close(y, ref.lrn(x.astype(np.float64), size, alpha, beta, k), rtol=RTOL32)
    run(device, body, map_cases(device))


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_forward_matches_the_hash_mask(device):
    def body(case):
        x = floats(np.random.default_rng(case["seed"]), (case["n"], case["c"], case["h"], case["w"]))
        nbcnn.manual_seed(case["seed"])
        layer = nbcnn.Dropout(0.5).to(device)
        y = layer(nbcnn.asarray(x, device))
        expected = ref.dropout(x, 0.5, ref.dropout_key(case["seed"], 0)).astype(np.float32)
        np.testing.assert_array_equal(nbcnn.to_numpy(y), expected)
    run(device, body, map_cases(device))


def test_the_dropout_references_hash_has_lowbias32s_constants():
    x = np.random.default_rng(0).integers(0, 2**32, 10_000, dtype=np.uint64).astype(np.uint32)
    assert np.array_equal(ref.lowbias32_inverse(ref.lowbias32(x)), x)  # the published inverse undoes it


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_drops_about_p_and_is_identity_in_eval(device):
    n = scale(device, 100_000, 2_000)
    x = np.ones((1, n), np.float32)
    layer = nbcnn.Dropout(0.3).to(device)
    y = nbcnn.to_numpy(layer(nbcnn.asarray(x, device)))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((y == 0).mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
    assert np.array_equal(nbcnn.to_numpy(layer.eval()(nbcnn.asarray(x, device))), x)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_masks_differ_between_calls(device):
    x = nbcnn.asarray(np.ones((4, 64), np.float32), device)
    layer = nbcnn.Dropout(0.5).to(device)
    assert not np.array_equal(nbcnn.to_numpy(layer(x)), nbcnn.to_numpy(layer(x)))


@pytest.mark.parametrize("device", DEVICES)
def test_linear_forward_matches_matmul(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        n, i, o = case["n"], case["c"] * case["h"], case["w"] + 1
        layer = nbcnn.Linear(i, o).to(device)
        x = floats(rng, (n, i))
        sd = layer.state_dict()
        assert_close(layer(nbcnn.asarray(x, device)), ref.linear(x.astype(np.float64), sd["weight"], sd["bias"]), rtol=RTOL32)
    run(device, body, map_cases(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_forward_matches_matmul_around_the_small_batch_blocks(device, dtype):
    """Batches and widths around the CPU's 4 x 4 blocks and its small-batch bound (64: BLAS above
    it), each thread's block of outputs ending mid-block."""
    rng = np.random.default_rng(0)
    for n, o in ((1, 3), (3, 9), (4, 8), (5, 13), (17, 6), (64, 10), (65, 7)):
        x, w, b = (rng.standard_normal(shape).astype(dtype) for shape in ((n, 37), (o, 37), (o,)))
        y = nbcnn.get_backend(device).empty((n, o), dtype)
        nbcnn.get_backend(device).linear_forward(*(nbcnn.asarray(v, device) for v in (x, w, b)), y)
        assert_close(y, ref.linear(x.astype(np.float64), w, b), rtol=RTOL32 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_matches_reference(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        n, k = case["n"] * case["h"], case["c"] + 1
        z = (case["w"] * floats(rng, (n, k))).astype(np.float32)
        labels = rng.integers(0, k, n)
        loss, dz = nbcnn.softmax_cross_entropy(nbcnn.asarray(z, device), nbcnn.asarray(labels, device))
        ref_loss, ref_dz = ref.softmax_cross_entropy(z, labels)
        assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
        assert_close(dz, ref_dz, rtol=1e-5)
    run(device, body, map_cases(device))


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_is_stable_for_huge_logits(device):
    z = np.array([[1e30, 0.0, -1e30], [-3e38, 3e38, 0.0]], np.float32)
    loss, dz = nbcnn.softmax_cross_entropy(nbcnn.asarray(z, device), nbcnn.asarray([0, 0], device))
    assert np.isfinite(loss) and abs(loss - (0 + 6e38) / 2) / 3e38 < 1e-6  # rows: 0 and 3e38 - (-3e38)
    np.testing.assert_allclose(nbcnn.to_numpy(dz), [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_sgd_updates_every_parameter_and_momentum_buffer_by_torchs_rule(device):
    rng = np.random.default_rng(0)
    layer = nbcnn.Linear(5, 3).to(device)
    opt = nbcnn.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    expected = {name: (w.astype(np.float64), np.zeros(w.shape)) for name, w in layer.state_dict().items()}
    for _ in range(3):
        for name, p in layer.named_parameters():
            g = floats(rng, p.shape)
            p.grad = nbcnn.asarray(g, device)
            expected[name] = ref.sgd(expected[name][0], g, expected[name][1], 0.1, 0.9, 5e-4)
        opt.step()
    for name, p in layer.named_parameters():  # the weight and the bias
        w, v = expected[name]
        assert_close(p.data, w, rtol=1e-5, what=name)
        assert_close(p.state["momentum_buffer"], v, rtol=1e-5, what=f"{name}'s momentum buffer")


# -- backward against finite differences (float64) ----------------------------------------

def check_gradients(device, module, x, rng, directions=2, loss_weights=None):
    """Central differences of L = sum(G * module(x)) along random directions, vs backward.

    Each direction checks the input gradient and each parameter's on its own; under the
    simulator (a forward costs seconds there) one direction moves them all at once instead."""
    if simulated(device):
        return check_gradients_jointly(device, module, x, rng)
    module.to(device, np.float64)
    xd = nbcnn.asarray(x, device)
    y = nbcnn.to_numpy(module(xd))
    g = rng.standard_normal(y.shape) if loss_weights is None else loss_weights

    def loss():
        return float((nbcnn.to_numpy(module(nbcnn.asarray(x, device))) * g).sum())

    module.zero_grad()
    module(xd)
    dx = nbcnn.to_numpy(module.backward(nbcnn.asarray(g, device)))
    grads = {name: nbcnn.to_numpy(p.grad) for name, p in module.named_parameters()}
    eps = 1e-6
    for _ in range(directions):
        u = rng.standard_normal(x.shape)
        x0 = x.copy()
        x[...] = x0 + eps * u
        up = loss()
        x[...] = x0 - eps * u
        down = loss()
        x[...] = x0
        numeric = (up - down) / (2 * eps)
        assert abs(numeric - (dx * u).sum()) <= 1e-6 * max(1.0, abs(numeric)), "input gradient"
        for name, p in module.named_parameters():
            w0 = nbcnn.to_numpy(p.data)
            u = rng.standard_normal(w0.shape)
            p.data = nbcnn.asarray(w0 + eps * u, device)
            up = loss()
            p.data = nbcnn.asarray(w0 - eps * u, device)
            down = loss()
            p.data = nbcnn.asarray(w0, device)
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - (grads[name] * u).sum()) <= 1e-6 * max(1.0, abs(numeric)), name


def check_gradients_jointly(device, module, x, rng):
    """L(x + eps*u, params + eps*v) - L(x - eps*u, params - eps*v) ~ 2 eps (<dx, u> + sum <dp, v>)."""
    module.to(device, np.float64)
    g = rng.standard_normal(nbcnn.to_numpy(module(nbcnn.asarray(x, device))).shape)
    module.zero_grad()
    module(nbcnn.asarray(x, device))
    predicted = 0.0
    u = rng.standard_normal(x.shape)
    predicted += (nbcnn.to_numpy(module.backward(nbcnn.asarray(g, device))) * u).sum()
    params = [(p, nbcnn.to_numpy(p.data), rng.standard_normal(p.shape)) for p in module.parameters()]
    predicted += sum((nbcnn.to_numpy(p.grad) * v).sum() for p, _, v in params)
    eps = 1e-6

    def loss(sign):
        for p, w0, v in params:
            p.data = nbcnn.asarray(w0 + sign * eps * v, device)
        return float((nbcnn.to_numpy(module(nbcnn.asarray(x + sign * eps * u, device))) * g).sum())

    numeric = (loss(1) - loss(-1)) / (2 * eps)
    assert abs(numeric - predicted) <= 1e-6 * max(1.0, abs(numeric))


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_backward_matches_finite_differences(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
        check_gradients(device, conv_layer(device, case), x, rng)
    run(device, body, conv_cases(device), cpu_examples=15, sim_examples=3)


@pytest.mark.parametrize("device", DEVICES)
def test_maxpool2d_backward_matches_finite_differences(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        # distinct values, so no tie sits within eps of flipping the argmax
        n, c, h, w = case["n"], case["c"], case["h"], case["w"]
        x = rng.permutation(n * c * h * w).reshape(n, c, h, w) * 0.01
        check_gradients(device, nbcnn.MaxPool2d(case["k"], case["stride"]), x, rng)
    run(device, body, pool_cases(device), cpu_examples=15, sim_examples=3)


@pytest.mark.parametrize("device", DEVICES)
def test_elementwise_backward_matches_finite_differences(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        shape = (case["n"], case["c"], case["h"], case["w"])
        x = rng.standard_normal(shape)
        x[np.abs(x) < 1e-3] = 0.5  # keep ReLU's kink away from the finite difference
        check_gradients(device, nbcnn.ReLU(), x.copy(), rng)
        check_gradients(device, nbcnn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0), 2 * x, rng)
        check_gradients(device, nbcnn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0), x.copy(), rng)
        # beta = 0.75 takes a square-root fast path (kernel_math.pow_neg); any other beta takes pow
        check_gradients(device, nbcnn.LocalResponseNorm(4, alpha=0.3, beta=0.6, k=1.5), x.copy(), rng)
        check_gradients(device, nbcnn.Flatten(), x.copy(), rng)
    run(device, body, map_cases(device), cpu_examples=15, sim_examples=3)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_backward_uses_the_forward_mask(device):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5))
    layer = nbcnn.Dropout(0.4).to(device, np.float64)
    y = nbcnn.to_numpy(layer(nbcnn.asarray(x, device)))
    g = rng.standard_normal(x.shape)
    dx = nbcnn.to_numpy(layer.backward(nbcnn.asarray(g, device)))
    np.testing.assert_allclose(dx, np.where(y != 0, g / 0.6, 0.0))


@pytest.mark.parametrize("device", DEVICES)
def test_linear_backward_matches_finite_differences(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        x = rng.standard_normal((case["n"], case["c"] * case["h"]))
        check_gradients(device, nbcnn.Linear(case["c"] * case["h"], case["w"] + 1), x, rng)
    run(device, body, map_cases(device), cpu_examples=15, sim_examples=3)


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_gradient_matches_finite_differences(device):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((3, 5))
    labels = nbcnn.asarray([0, 4, 2], device)
    _, dz = nbcnn.softmax_cross_entropy(nbcnn.asarray(z, device), labels)
    u = rng.standard_normal(z.shape)
    eps = 1e-6
    up, _ = nbcnn.softmax_cross_entropy(nbcnn.asarray(z + eps * u, device), labels)
    down, _ = nbcnn.softmax_cross_entropy(nbcnn.asarray(z - eps * u, device), labels)
    assert abs((up - down) / (2 * eps) - (nbcnn.to_numpy(dz) * u).sum()) < 1e-7


def small_net():
    """For (N, 2, 9, 9) inputs: 9x9 -> conv 9x9 -> pool 4x4 -> conv 2x2 -> 12 features -> 3 classes."""
    return nbcnn.Sequential(
        nbcnn.Conv2d(2, 4, 3, stride=1, padding=1), nbcnn.ReLU(),
        nbcnn.LocalResponseNorm(3, alpha=0.1, beta=0.75, k=1.0), nbcnn.MaxPool2d(3, 2),
        nbcnn.Conv2d(4, 3, 2, stride=2), nbcnn.ReLU(),
        nbcnn.Flatten(), nbcnn.Linear(12, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_whole_network_backward_matches_finite_differences(device):
    rng = np.random.default_rng(3)
    net = small_net()
    x = rng.standard_normal((2, 2, 9, 9))
    check_gradients(device, net, x, rng, directions=1)


@pytest.mark.parametrize("device", DEVICES)
def test_parameter_gradients_accumulate_until_zero_grad(device):
    layer = nbcnn.Linear(4, 2).to(device)
    x = nbcnn.asarray(np.ones((3, 4), np.float32), device)
    g = nbcnn.asarray(np.ones((3, 2), np.float32), device)
    layer(x)
    layer.backward(g)
    once = nbcnn.to_numpy(layer.weight.grad)
    layer.backward(g)
    np.testing.assert_allclose(nbcnn.to_numpy(layer.weight.grad), 2 * once)
    layer.zero_grad()
    assert not nbcnn.to_numpy(layer.weight.grad).any()


@pytest.mark.parametrize("device", DEVICES)
def test_relu_keeps_nan_so_divergence_shows(device):
    x = np.array([[np.nan, -1.0, 2.0]], np.float32)
    y = nbcnn.to_numpy(nbcnn.ReLU().to(device)(nbcnn.asarray(x, device)))
    assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 2] == 2


@pytest.mark.parametrize("device", DEVICES)
def test_backward_without_input_grad_gives_the_same_parameter_gradients(device):
    rng = np.random.default_rng(4)
    net = small_net().to(device)
    x = nbcnn.asarray(rng.standard_normal((2, 2, 9, 9)).astype(np.float32), device)
    g = nbcnn.asarray(rng.standard_normal((2, 3)).astype(np.float32), device)
    net(x)
    assert net.backward(g) is not None
    full = {k: nbcnn.to_numpy(p.grad) for k, p in net.named_parameters()}
    net.zero_grad()
    net(x)
    assert net.backward(g, input_grad=False) is None
    for k, p in net.named_parameters():
        np.testing.assert_array_equal(nbcnn.to_numpy(p.grad), full[k], err_msg=k)


def test_matmul_checks_real_gpu_arrays_too():
    """numba-cuda's device arrays report their layout differently from the simulator's (fake_device)."""
    out = fake_device.run("""
import numpy as np
from nbcnn.backend import check_matmul
from nbcnn.cuda import array
a, b, c = array.empty((4, 3), np.float32), array.empty((3, 5), np.float32), array.empty((4, 5), np.float32)
check_matmul(a, b, c)
try:
    check_matmul(a, array.empty((3, 10), np.float32)[:, ::2], c)
except ValueError as e:
    print(e)
""")
    assert "must be C-contiguous" in out


def test_flat_views_of_real_gpu_arrays_share_memory_and_refuse_strides():
    """cuda.array.flat builds numba's array directly on a GPU (fake_device): same allocation, C order only."""
    out = fake_device.run("""
import numpy as np
from fake_device import address
from nbcnn.cuda import array
a = array.empty((4, 6), np.float32)
f = array.flat(a)
assert f.shape == (24,) and f.strides == (4,) and address(f) == address(a) and f.gpu_data is a.gpu_data
try:
    array.flat(a[:, ::2])
except ValueError as e:
    print(e)
""")
    assert "needs a C-contiguous array" in out


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_refuses_strided_mixed_or_misfit_arguments(device):
    be = nbcnn.get_backend(device)
    a, b = nbcnn.asarray(np.ones((4, 3), np.float32), device), nbcnn.asarray(np.ones((3, 5), np.float32), device)
    c = be.empty((4, 5), np.float32)
    be.matmul(a, b, c)
    assert np.all(nbcnn.to_numpy(c) == 3)
    with pytest.raises(ValueError, match="C-contiguous"):
        # a slice, not .T: a GPU array's .T is a contiguous copy (the simulator's is a view)
        be.matmul(a, nbcnn.asarray(np.ones((3, 10), np.float32), device)[:, ::2], c)
    with pytest.raises(ValueError, match="share float32 or float64"):
        be.matmul(a, nbcnn.asarray(np.ones((3, 5), np.float64), device), c)
    with pytest.raises(ValueError, match="do not fit"):
        be.matmul(a, b, be.empty((4, 4), np.float32))
