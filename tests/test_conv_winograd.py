"""The CPU's Winograd F(2x2, 3x3) convolution forward (nbcnn/cpu/winograd.py): the result of a
direct float64 convolution written here with sliding windows (independent of both Winograd and
im2col), and in float32 the im2col path's result within float32 rounding. Shapes with odd
heights and widths exercise the tiles that hang over the output's edge."""

import numpy as np
import pytest

import nbcnn
from nbcnn.backend import Workspace
from nbcnn.cpu import conv, winograd
from nbcnn.testing import assert_close


def reference(x, w, b):
    """float64 3x3 convolution, stride 1, zero padding 1."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    y = np.einsum("nchwpq,ocpq->nohw", win, w.astype(np.float64))
    return y if b is None else y + b.astype(np.float64)[None, :, None, None]


def forward(x, w, b, ws=None):
    be = nbcnn.get_backend("cpu")
    xa, wa = nbcnn.asarray(x), nbcnn.asarray(w)
    y = be.empty((x.shape[0], w.shape[0], x.shape[2], x.shape[3]), x.dtype)
    be.conv2d_forward(xa, wa, None if b is None else nbcnn.asarray(b), 1, 1, y, ws or Workspace())
    return nbcnn.to_numpy(y)


@pytest.mark.parametrize("hw", [(6, 6), (7, 5), (1, 1), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_forward_gives_the_float64_reference(monkeypatch, hw, bias):
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_CHANNELS", 1)  # small shapes through the Winograd path
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_SIZE", 1)
    rng = np.random.default_rng(hw[0] * 10 + hw[1])
    x, w = rng.standard_normal((3, 4) + hw), rng.standard_normal((5, 4, 3, 3))
    b = rng.standard_normal(5) if bias else None
    assert winograd.use_winograd(x, w, 1, 1, 1)
    assert_close(forward(x, w, b), reference(x, w, b), rtol=1e-12)


def test_winograd_float32_agrees_with_im2col_and_the_reference(monkeypatch):
    """C = 128 takes the Winograd path by the rule; the same layer forced onto im2col beside it.
    The float32 error of each, against float64, is a few ulp of the output's magnitude."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 128, 9, 8)).astype(np.float32)
    w = (rng.standard_normal((8, 128, 3, 3)) / np.sqrt(128 * 9)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    assert winograd.use_winograd(x, w, 1, 1, 1)
    calls = []
    monkeypatch.setattr(conv, "winograd_forward", lambda *a: calls.append(1) or winograd.winograd_forward(*a))
    wino = forward(x, w, b)
    assert calls == [1]  # the Winograd path ran
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_CHANNELS", 10**9)
    im2col = forward(x, w, b)
    assert calls == [1]
    want = reference(x, w, b)
    assert_close(wino, want, rtol=1e-5)
    assert_close(im2col, want, rtol=1e-5)
    assert_close(wino, im2col, rtol=1e-5)


@pytest.mark.parametrize("c, hw, k, stride, pad, groups, want", [
    (128, (8, 8), 3, 1, 1, 1, True), (127, (8, 8), 3, 1, 1, 1, False), (128, (7, 8), 3, 1, 1, 1, False),
    (128, (8, 7), 3, 1, 1, 1, False), (128, (8, 8), 5, 1, 1, 1, False), (128, (8, 8), 3, 2, 1, 1, False),
    (128, (8, 8), 3, 1, 0, 1, False), (128, (8, 8), 3, 1, 1, 2, False)])
def test_winograd_is_chosen_for_3x3_stride_1_pad_1_128_channels_and_8x8_maps(c, hw, k, stride, pad, groups, want):
    x, w = np.empty((1, c) + hw), np.empty((16, c // groups, k, k))
    assert winograd.use_winograd(x, w, stride, pad, groups) == want
