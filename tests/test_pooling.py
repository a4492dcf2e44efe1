"""Pooling after AlexNet: max pooling with padding (ResNet's stem), average pooling and adaptive
average pooling (global average pooling; torchvision's 6x6), and Identity, on every backend.

Forward results against NumPy references (tests/reference.py) and, where PyTorch is
importable, against torch.nn.functional itself; backward passes against float64 central
finite differences; CPU against CUDA (the simulator in CI) with hypothesis-drawn shapes.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbcnn
import reference as ref
from devices import DEVICES, ON_GPU, scale
from nbcnn import kernel_math
from nbcnn.testing import assert_backends_agree, assert_close
from test_ops import check_gradients, run

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the references alone still specify the ops
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not importable: checked against NumPy only")
cuda_only = DEVICES[1].marks[0]  # skipped where no CUDA backend can be made


def floats(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@st.composite
def window_cases(draw, device):
    """A square window, stride and padding (at most k // 2) and an input at least one window big."""
    big = scale(device, 1, 0)
    k = draw(st.integers(1, 3 + 2 * big))
    pad = draw(st.integers(0, k // 2))
    lo = max(1, k - 2 * pad)
    return dict(n=draw(st.integers(1, 2 + big)), c=draw(st.integers(1, 2 + 2 * big)),
                h=draw(st.integers(lo, lo + 3 + 6 * big)), w=draw(st.integers(lo, lo + 3 + 6 * big)),
                k=k, stride=draw(st.integers(1, 3)), pad=pad, include=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31)))


@st.composite
def adaptive_cases(draw, device):
    """Input and output sizes, the output also larger than the input (bins then repeat pixels)."""
    big = scale(device, 1, 0)
    return dict(n=draw(st.integers(1, 2 + big)), c=draw(st.integers(1, 2 + 2 * big)),
                h=draw(st.integers(1, 5 + 8 * big)), w=draw(st.integers(1, 5 + 8 * big)),
                oh=draw(st.integers(1, 4 + 4 * big)), ow=draw(st.integers(1, 4 + 4 * big)),
                seed=draw(st.integers(0, 2**31)))


def shape_of(case):
    return case["n"], case["c"], case["h"], case["w"]


# -- the shared window math ------------------------------------------------------------------

def test_the_windows_holding_a_row_are_exactly_those_whose_rows_hold_it():
    """avgpool_windows_holding (the backward gathers' loop bounds) inverts avgpool_rows, by brute force."""
    for size in range(1, 12):
        for out in range(1, 14):  # adaptive bins, fewer and more than the rows
            bins = [kernel_math.avgpool_rows(i, size, out, 0, 1, 0, True) for i in range(out)]
            assert bins == ref.adaptive_bins(size, out)
            for h in range(size):
                lo, hi = kernel_math.avgpool_windows_holding(h, size, out, 0, 1, 0, True)
                assert list(range(lo, hi)) == [i for i, (a, b) in enumerate(bins) if a <= h < b], (size, out, h)
        for k in range(1, 6):
            for pad in range(k // 2 + 1):
                for stride in range(1, 5):
                    if size + 2 * pad < k:
                        continue
                    out = (size + 2 * pad - k) // stride + 1
                    for h in range(size):
                        lo, hi = kernel_math.avgpool_windows_holding(h, size, out, k, stride, pad, False)
                        holding = [i for i in range(out) if i * stride - pad <= h < i * stride - pad + k]
                        assert list(range(lo, hi)) == holding, (size, k, stride, pad, h)


# -- forward against the references ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_maxpool2d_with_padding_matches_the_reference_and_torch(device):
    def body(case):
        x = floats(case["seed"], shape_of(case))
        k, s, p = case["k"], case["stride"], case["pad"]
        be = nbcnn.get_backend(device)
        layer = nbcnn.MaxPool2d(k, s, p).to(device)
        y = nbcnn.to_numpy(layer(be.from_numpy(x)))
        ref_y, ref_argmax = ref.maxpool2d_argmax(x, k, s, p)
        np.testing.assert_array_equal(y, ref_y)
        np.testing.assert_array_equal(be.to_numpy(layer.argmax), ref_argmax)
        if torch is not None:  # torch's indices are flat h*W + w in the unpadded plane too
            ty, ti = F.max_pool2d(torch.from_numpy(x), k, s, p, return_indices=True)
            np.testing.assert_array_equal(y, ty.numpy())
            np.testing.assert_array_equal(be.to_numpy(layer.argmax), ti.numpy())
    run(device, body, window_cases(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,stride,pad", [(3, 2, 1), (2, 2, 1), (3, 1, 1), (5, 2, 2)])
def test_padded_maxpool2d_picks_the_first_maximum_and_a_nan_wins(device, k, stride, pad):
    rng = np.random.default_rng(k * 100 + stride * 10 + pad)
    # few distinct values, so windows tie, also across the border; zeros of both signs; NaNs
    x = rng.integers(-1, 2, size=(1, 2, 7, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] *= -1
    x.reshape(-1)[rng.choice(x.size, 3, replace=False)] = np.nan
    be = nbcnn.get_backend(device)
    oh, ow = (7 + 2 * pad - k) // stride + 1, (6 + 2 * pad - k) // stride + 1
    y, argmax = be.empty((1, 2, oh, ow), np.float32), be.empty((1, 2, oh, ow), np.int32)
    be.maxpool2d_forward(be.from_numpy(x), k, stride, pad, y, argmax)
    ref_y, ref_argmax = ref.maxpool2d_argmax(x, k, stride, pad)
    np.testing.assert_array_equal(be.to_numpy(argmax), ref_argmax)
    np.testing.assert_array_equal(be.to_numpy(y).view(np.int32), ref_y.view(np.int32))


def test_resnets_stem_pool_halves_112_to_56():
    x = floats(0, (1, 2, 112, 112))
    y = nbcnn.MaxPool2d(3, 2, 1)(nbcnn.asarray(x))
    assert y.shape == (1, 2, 56, 56)
    np.testing.assert_array_equal(nbcnn.to_numpy(y), ref.maxpool2d(x, 3, 2, 1))


@pytest.mark.parametrize("device", DEVICES)
def test_avgpool2d_matches_the_reference_and_torch(device):
    def body(case):
        x = floats(case["seed"], shape_of(case))
        k, s, p, include = case["k"], case["stride"], case["pad"], case["include"]
        y = nbcnn.AvgPool2d(k, s, p, count_include_pad=include).to(device)(nbcnn.asarray(x, device))
        assert_close(y, ref.avgpool2d(x, k, s, p, include), rtol=1e-6)
        if torch is not None:
            t = F.avg_pool2d(torch.from_numpy(x.astype(np.float64)), k, s, p, count_include_pad=include).numpy()
            assert_close(y, t, rtol=1e-6)
    run(device, body, window_cases(device))


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_avgpool2d_matches_the_reference_and_torch(device):
    def body(case):
        x = floats(case["seed"], shape_of(case))
        oh, ow = case["oh"], case["ow"]
        y = nbcnn.AdaptiveAvgPool2d((oh, ow)).to(device)(nbcnn.asarray(x, device))
        assert_close(y, ref.adaptive_avgpool2d(x, oh, ow), rtol=1e-6)
        if torch is not None:
            t = F.adaptive_avg_pool2d(torch.from_numpy(x.astype(np.float64)), (oh, ow)).numpy()
            assert_close(y, t, rtol=1e-6)
    run(device, body, adaptive_cases(device))


def test_global_average_pooling_and_alexnets_6x6():
    x = floats(1, (2, 3, 7, 7))
    y = nbcnn.AdaptiveAvgPool2d(1)(nbcnn.asarray(x))
    assert_close(y, x.astype(np.float64).mean(axis=(2, 3), keepdims=True), rtol=1e-6)
    six = floats(2, (2, 3, 6, 6))  # torchvision's AlexNet: already 6x6 at 224 pixels, then a no-op
    np.testing.assert_array_equal(nbcnn.to_numpy(nbcnn.AdaptiveAvgPool2d(6)(nbcnn.asarray(six))), six)
    y = nbcnn.AdaptiveAvgPool2d((None, 2))(nbcnn.asarray(x))  # None keeps that input size
    assert y.shape == (2, 3, 7, 2)


@needs_torch
def test_layer_arguments_follow_torchs_order_and_defaults():
    for ours, theirs in ((nbcnn.AvgPool2d(3, 2, 1, False, False), torch.nn.AvgPool2d(3, 2, 1, False, False)),
                         (nbcnn.AvgPool2d(2), torch.nn.AvgPool2d(2)), (nbcnn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1))):
        x = floats(3, (1, 2, 7, 7))
        assert_close(ours(nbcnn.asarray(x)), theirs(torch.from_numpy(x)).numpy(), rtol=1e-6)


# -- backward against finite differences (float64) --------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_pooling_backward_matches_finite_differences(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        n, c, h, w = shape_of(case)
        k, s, p = case["k"], case["stride"], case["pad"]
        # distinct values, so no tie sits within eps of flipping an argmax
        x = rng.permutation(n * c * h * w).reshape(n, c, h, w) * 0.01
        check_gradients(device, nbcnn.MaxPool2d(k, s, p), x, rng)
        check_gradients(device, nbcnn.AvgPool2d(k, s, p, count_include_pad=case["include"]),
                        rng.standard_normal(x.shape), rng)
    run(device, body, window_cases(device), cpu_examples=15, sim_examples=2)


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_avgpool2d_backward_matches_finite_differences(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        check_gradients(device, nbcnn.AdaptiveAvgPool2d((case["oh"], case["ow"])),
                        rng.standard_normal(shape_of(case)), rng)
    run(device, body, adaptive_cases(device), cpu_examples=15, sim_examples=2)


@pytest.mark.parametrize("device", DEVICES)
def test_identity_passes_values_and_gradients_through(device):
    x = floats(4, (2, 3, 4))
    layer = nbcnn.Identity(54, unused=True).to(device)  # PyTorch's Identity ignores its arguments
    np.testing.assert_array_equal(nbcnn.to_numpy(layer(nbcnn.asarray(x, device))), x)
    np.testing.assert_array_equal(nbcnn.to_numpy(layer.backward(nbcnn.asarray(2 * x, device))), 2 * x)
    assert layer.backward(nbcnn.asarray(x, device), input_grad=False) is None


# -- CPU against CUDA ----------------------------------------------------------------------------

EXAMPLES = 25 if ON_GPU else 6


@cuda_only
@settings(max_examples=EXAMPLES, deadline=None)
@given(case=window_cases("cuda"), dt=st.sampled_from([np.float32, np.float64]))
def test_avgpool2d_forward_and_backward_agree(case, dt):
    k, s, p, include = case["k"], case["stride"], case["pad"], case["include"]
    n, c, h, w = shape_of(case)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x, dy = floats(case["seed"], (n, c, h, w), dt), floats(case["seed"] + 1, (n, c, oh, ow), dt)

    def op(be, x, dy):
        y, dx = be.empty((n, c, oh, ow), x.dtype), be.empty(x.shape, x.dtype)
        be.avgpool2d_forward(x, k, s, p, include, y)
        be.avgpool2d_backward(dy, k, s, p, include, dx)
        return y, dx

    assert_backends_agree(op, x, dy, exact=True)  # the same float64 sums in the same order, one rounding


@cuda_only
@settings(max_examples=EXAMPLES, deadline=None)
@given(case=adaptive_cases("cuda"), dt=st.sampled_from([np.float32, np.float64]))
def test_adaptive_avgpool2d_forward_and_backward_agree(case, dt):
    n, c, h, w = shape_of(case)
    oh, ow = case["oh"], case["ow"]
    x, dy = floats(case["seed"], (n, c, h, w), dt), floats(case["seed"] + 1, (n, c, oh, ow), dt)

    def op(be, x, dy):
        y, dx = be.empty((n, c, oh, ow), x.dtype), be.empty(x.shape, x.dtype)
        be.adaptive_avgpool2d_forward(x, y)
        be.adaptive_avgpool2d_backward(dy, dx)
        return y, dx

    assert_backends_agree(op, x, dy, exact=True)


# -- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: nbcnn.MaxPool2d(3, 2, 2), lambda: nbcnn.AvgPool2d(2, padding=2),
                                  lambda: nbcnn.MaxPool2d(1, padding=1)])
def test_padding_over_half_the_kernel_is_refused(make):
    with pytest.raises(ValueError, match="padding must be at most half the kernel size"):
        make()


@pytest.mark.parametrize("make", [lambda: nbcnn.MaxPool2d(0), lambda: nbcnn.AvgPool2d(2, 0),
                                  lambda: nbcnn.MaxPool2d(3, padding=-1)])
def test_non_positive_windows_and_negative_padding_are_refused(make):
    with pytest.raises(ValueError, match="positive kernel and stride and padding >= 0"):
        make()


def test_a_window_larger_than_the_padded_input_is_named():
    with pytest.raises(ValueError, match="input 2x5 with padding 1 is smaller than the 5x5 window"):
        nbcnn.MaxPool2d(5, 1, 1)(nbcnn.asarray(floats(0, (1, 1, 2, 5))))
    with pytest.raises(ValueError, match="AvgPool2d input 2x2 is smaller than the 3x3 window"):
        nbcnn.AvgPool2d(3)(nbcnn.asarray(floats(0, (1, 1, 2, 2))))
    for layer in (nbcnn.MaxPool2d(2, padding=1), nbcnn.AdaptiveAvgPool2d(1)):  # a window of padding alone
        with pytest.raises(ValueError, match=r"input must have pixels, got shape \(1, 1, 0, 3\)"):
            layer(nbcnn.asarray(floats(0, (1, 1, 0, 3))))


def test_unsupported_or_empty_pooling_arguments_are_refused():
    with pytest.raises(ValueError, match="ceil_mode must be False"):
        nbcnn.AvgPool2d(2, ceil_mode=True)
    with pytest.raises(ValueError, match="output_size must be a positive int"):
        nbcnn.AdaptiveAvgPool2d(0)
    with pytest.raises(ValueError, match="output_size must be an int or a pair"):
        nbcnn.AdaptiveAvgPool2d((1, 2, 3))
    with pytest.raises(ValueError, match="expects a 4-D input"):
        nbcnn.AdaptiveAvgPool2d(1)(nbcnn.asarray(floats(0, (2, 3))))
