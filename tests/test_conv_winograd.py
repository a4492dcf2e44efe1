"""The CPU's Winograd F(2x2, 3x3) convolution, forward and backward (nbcnn/cpu/winograd.py): the result
of a direct float64 convolution written here with sliding windows (independent of both Winograd and
im2col) and, for the backward, that reference's adjoint (dx as the windows' products scattered back,
dw as their products with dy), and in float32 the im2col path's result within float32 rounding.
Shapes with odd heights and widths exercise the tiles that hang over the output's edge."""

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


def float32_layer(seed, o=8):
    """x (2, 128, 9, 8), w (o, 128, 3, 3) scaled for O(1) outputs, and an O(1) array of the output's shape."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 128, 9, 8)).astype(np.float32)
    w = (rng.standard_normal((o, 128, 3, 3)) / np.sqrt(128 * 9)).astype(np.float32)
    return x, w, rng.standard_normal((2, o, 9, 8)).astype(np.float32)


def on_both_paths(monkeypatch, entry, threshold, run):
    """run() by the rule, asserting that conv.py called winograd.<entry>, then run() with the rule's
    `threshold` out of reach (the im2col path): (Winograd's result, im2col's)."""
    calls = []
    monkeypatch.setattr(conv, entry, lambda *a: calls.append(1) or getattr(winograd, entry)(*a))
    wino = run()
    assert calls == [1]  # the Winograd path ran
    monkeypatch.setattr(winograd, threshold, 10**9)
    im2col = run()
    assert calls == [1]
    return wino, im2col


def test_winograd_float32_agrees_with_im2col_and_the_reference(monkeypatch):
    """C = 128 takes the Winograd path by the rule; the same layer forced onto im2col beside it.
    The float32 error of each, against float64, is a few ulp of the output's magnitude."""
    x, w, _ = float32_layer(0)
    b = np.random.default_rng(0).standard_normal(8).astype(np.float32)
    assert winograd.use_winograd(x, w, 1, 1, 1)
    wino, im2col = on_both_paths(monkeypatch, "winograd_forward", "MIN_WINOGRAD_CHANNELS", lambda: forward(x, w, b))
    want = reference(x, w, b)
    assert_close(wino, want, rtol=1e-5)
    assert_close(im2col, want, rtol=1e-5)
    assert_close(wino, im2col, rtol=1e-5)


def rule_cases(c, s):
    """(C, (H, W), k, stride, pad, groups, chosen) around a rule's thresholds c (channels) and s (map side)."""
    return [(c, (s, s), 3, 1, 1, 1, True), (c - 1, (s, s), 3, 1, 1, 1, False), (c, (s - 1, s), 3, 1, 1, 1, False),
            (c, (s, s - 1), 3, 1, 1, 1, False), (c, (s, s), 5, 1, 1, 1, False), (c, (s, s), 3, 2, 1, 1, False),
            (c, (s, s), 3, 1, 0, 1, False), (c, (s, s), 3, 1, 1, 2, False),
            # maps of even sides are whole 2x2 tiles: chosen from MIN_WINOGRAD_EVEN_SIZE up
            (c, (6, 6), 3, 1, 1, 1, True), (c, (4, 6), 3, 1, 1, 1, True), (c - 1, (6, 6), 3, 1, 1, 1, False),
            (c, (2, 2), 3, 1, 1, 1, False), (c, (6, 7), 3, 1, 1, 1, False)]


@pytest.mark.parametrize("c, hw, k, stride, pad, groups, want",
                         rule_cases(winograd.MIN_WINOGRAD_CHANNELS, winograd.MIN_WINOGRAD_SIZE))
def test_winograd_forward_is_chosen_by_its_rule(c, hw, k, stride, pad, groups, want):
    """use_winograd: 3x3/1 pad 1, one group, C and the map's sides at least the forward's thresholds."""
    x, w = np.empty((1, c) + hw), np.empty((16, c // groups, k, k))
    assert winograd.use_winograd(x, w, stride, pad, groups) == want

def windows(x):
    """x zero-padded by 1, and its 3x3 sliding windows (N, C, H, W, 3, 3) as a view of it."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    return xp, np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))


def reference_backward(x, w, dy):
    """float64 (dx, dw, db) of reference(): the adjoint of y[n,o,h,w] = sum_{c,p,q} win[n,c,h,w,p,q] w[o,c,p,q]."""
    xp, win = windows(x)
    dy = dy.astype(np.float64)
    dw = np.einsum("nchwpq,nohw->ocpq", win, dy)
    dwin = np.einsum("nohw,ocpq->nchwpq", dy, w.astype(np.float64))  # dL/d(each window entry)
    dxp = np.zeros_like(xp)
    H, W = x.shape[2], x.shape[3]
    for p in range(3):
        for q in range(3):  # window entry (h, w, p, q) is xp[h + p, w + q]
            dxp[:, :, p:p + H, q:q + W] += dwin[:, :, :, :, p, q]
    return dxp[:, :, 1:-1, 1:-1], dw, dy.sum(axis=(0, 2, 3))


def backward(x, w, dy, want=("dx", "dw", "db"), dw0=None, db0=None, ws=None):
    """{name: gradient} of the CPU backend's conv2d_backward for the wanted gradients; dw and db start
    from dw0 and db0 (zeros by default)."""
    be = nbcnn.get_backend("cpu")
    dx = be.empty(x.shape, x.dtype) if "dx" in want else None
    dw = nbcnn.asarray(np.zeros_like(w) if dw0 is None else dw0.copy()) if "dw" in want else None
    db = nbcnn.asarray(np.zeros(w.shape[0], w.dtype) if db0 is None else db0.copy()) if "db" in want else None
    be.conv2d_backward(nbcnn.asarray(x), nbcnn.asarray(w), nbcnn.asarray(dy), 1, 1, dx, dw, db, ws or Workspace())
    return {k: nbcnn.to_numpy(v) for k, v in (("dx", dx), ("dw", dw), ("db", db)) if v is not None}


def on_winograd(monkeypatch):
    """Every 3x3/1 pad 1 convolution's backward through the Winograd path, whatever its size."""
    for name in ("MIN_WINOGRAD_BACKWARD_CHANNELS", "MIN_WINOGRAD_BACKWARD_SIZE"):
        monkeypatch.setattr(winograd, name, 1)


@pytest.mark.parametrize("hw", [(6, 6), (7, 5), (1, 1), (2, 3)])
@pytest.mark.parametrize("want", [("dx", "dw", "db"), ("dw", "db"), ("dx", "db"), ("dx", "dw")])
def test_winograd_backward_gives_the_float64_reference(monkeypatch, hw, want):
    """Each wanted gradient matches; the others (None: a frozen weight, no bias, the first layer) are skipped."""
    on_winograd(monkeypatch)
    rng = np.random.default_rng(hw[0] * 10 + hw[1])
    x, w, dy = rng.standard_normal((3, 4) + hw), rng.standard_normal((5, 4, 3, 3)), rng.standard_normal((3, 5) + hw)
    assert winograd.use_winograd_backward(x, w, 1, 1, 1)
    got = backward(x, w, dy, want)
    assert sorted(got) == sorted(want)
    for name, ref in zip(("dx", "dw", "db"), reference_backward(x, w, dy)):
        if name in want:
            assert_close(got[name], ref, rtol=1e-12, what=name)


def test_winograd_backward_accumulates_dw_and_db(monkeypatch):
    """dw += and db += (the contract): starting from nonzero gradients, the result is start + gradient."""
    on_winograd(monkeypatch)
    rng = np.random.default_rng(1)
    x, w, dy = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((2, 4, 5, 4))
    dw0, db0 = rng.standard_normal(w.shape), rng.standard_normal(4)
    got = backward(x, w, dy, dw0=dw0, db0=db0)
    _, dw, db = reference_backward(x, w, dy)
    assert_close(got["dw"], dw0 + dw, rtol=1e-12)
    assert_close(got["db"], db0 + db, rtol=1e-12)


def test_winograd_backward_of_a_frozen_weight_computes_no_weight_gradient(monkeypatch):
    """dw None: neither V (the input transform) nor dU's GEMMs run."""
    on_winograd(monkeypatch)
    calls = []
    monkeypatch.setattr(winograd, "input_transform", lambda *a: calls.append("V"))
    monkeypatch.setattr(winograd, "weight_transform_adjoint", lambda *a: calls.append("dw"))
    rng = np.random.default_rng(2)
    x, w, dy = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal((1, 3, 4, 4))
    got = backward(x, w, dy, ("dx", "db"))
    assert calls == []
    assert_close(got["dx"], reference_backward(x, w, dy)[0], rtol=1e-12)


def test_winograd_backward_float32_agrees_with_im2col_and_the_reference(monkeypatch):
    """At C = 128 by the rule, float32: dx, dw and db within float32 rounding of the float64 reference and of
    the same layer's im2col backward (the rule switched off)."""
    x, w, dy = float32_layer(3)
    assert winograd.use_winograd_backward(x, w, 1, 1, 1)
    wino, im2col = on_both_paths(monkeypatch, "winograd_backward", "MIN_WINOGRAD_BACKWARD_CHANNELS",
                                 lambda: backward(x, w, dy))
    for name, ref in zip(("dx", "dw", "db"), reference_backward(x, w, dy)):
        assert_close(wino[name], ref, rtol=1e-5, what=name)
        assert_close(im2col[name], ref, rtol=1e-5, what=name)
        assert_close(wino[name], im2col[name], rtol=1e-5, what=name)


@pytest.mark.parametrize("c, hw, k, stride, pad, groups, want",
                         rule_cases(winograd.MIN_WINOGRAD_BACKWARD_CHANNELS, winograd.MIN_WINOGRAD_BACKWARD_SIZE))
def test_winograd_backward_is_chosen_by_its_rule(monkeypatch, c, hw, k, stride, pad, groups, want):
    """use_winograd_backward: 3x3/1 pad 1, one group, C and the map's sides at least the backward's thresholds;
    conv2d_backward takes the path it names."""
    x, w = np.zeros((1, c) + hw, np.float32), np.zeros((16, c // groups, k, k), np.float32)
    assert winograd.use_winograd_backward(x, w, stride, pad, groups) == want
    calls = []
    monkeypatch.setattr(conv, "winograd_backward", lambda *a: calls.append(1))
    oh, ow = (hw[0] + 2 * pad - k) // stride + 1, (hw[1] + 2 * pad - k) // stride + 1
    dy = np.zeros((1, 16, oh, ow), np.float32)
    nbcnn.get_backend("cpu").conv2d_backward(x, w, dy, stride, pad, None, None, np.zeros(16, np.float32), Workspace(),
                                             groups)
    assert calls == ([1] if want else [])


# -- 5x5, stride 1, padding 2: four F(2x2, 3x3) sub-kernels on one extended input transform ----------
# The reference is scipy.signal's correlation of the zero-padded planes (independent of the sliding
# windows above, of im2col and of the sub-kernel split); its adjoints are the textbook ones: dx the full
# convolution of dy with w, cropped by the padding; dw the valid correlation of the padded x with dy.

def reference5(x, w, b, dy):
    """float64 (y, dx, dw, db) of the 5x5, stride 1, padding 2 convolution, plane by plane with scipy.signal."""
    from scipy.signal import convolve2d, correlate2d
    x, w, dy = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    N, C, H, W = x.shape
    O = w.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    y = np.zeros((N, O, H, W)) + (0 if b is None else b.astype(np.float64)[None, :, None, None])
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for n in range(N):
        for o in range(O):
            for c in range(C):
                y[n, o] += correlate2d(xp[n, c], w[o, c], mode="valid")
                dx[n, c] += convolve2d(dy[n, o], w[o, c], mode="full")[2:-2, 2:-2]
                dw[o, c] += correlate2d(xp[n, c], dy[n, o], mode="valid")
    return y, dx, dw, dy.sum(axis=(0, 2, 3))


def on_winograd5(monkeypatch):
    """Every 5x5/1 pad 2 convolution, forward and backward, through the Winograd path, whatever its size."""
    for name in ("MIN_WINOGRAD5_CHANNELS", "MIN_WINOGRAD5_SIZE", "MIN_WINOGRAD5_BACKWARD_CHANNELS",
                 "MIN_WINOGRAD5_BACKWARD_SIZE"):
        monkeypatch.setattr(winograd, name, 1)


def conv5(x, w, b, dy, want=("dx", "dw", "db"), dw0=None, db0=None):
    """(y, {name: gradient}) of the CPU backend's 5x5/1 pad 2 conv2d_forward and conv2d_backward (dw and db
    starting from dw0 and db0, zeros by default)."""
    be = nbcnn.get_backend("cpu")
    y = be.empty(dy.shape, x.dtype)
    be.conv2d_forward(nbcnn.asarray(x), nbcnn.asarray(w), None if b is None else nbcnn.asarray(b), 1, 2, y,
                      Workspace())
    dx = be.empty(x.shape, x.dtype) if "dx" in want else None
    dw = nbcnn.asarray(np.zeros_like(w) if dw0 is None else dw0.copy()) if "dw" in want else None
    db = nbcnn.asarray(np.zeros(w.shape[0], w.dtype) if db0 is None else db0.copy()) if "db" in want else None
    be.conv2d_backward(nbcnn.asarray(x), nbcnn.asarray(w), nbcnn.asarray(dy), 1, 2, dx, dw, db, Workspace())
    return nbcnn.to_numpy(y), {k: nbcnn.to_numpy(v) for k, v in (("dx", dx), ("dw", dw), ("db", db)) if v is not None}


def layer5(seed, n, c, o, hw, dtype=np.float64):
    """x, w (scaled for O(1) outputs), b and dy of a 5x5/1 pad 2 layer."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + hw).astype(dtype)
    w = (rng.standard_normal((o, c, 5, 5)) / np.sqrt(25 * c)).astype(dtype)
    return x, w, rng.standard_normal(o).astype(dtype), rng.standard_normal((n, o) + hw).astype(dtype)


@pytest.mark.parametrize("hw", [(6, 6), (7, 5), (1, 1), (2, 3), (4, 9)])
@pytest.mark.parametrize("bias", [True, False])
def test_winograd5_forward_gives_the_float64_reference(monkeypatch, hw, bias):
    """Odd sizes and maps smaller than the kernel (every tap of w reaches the output somewhere)."""
    on_winograd5(monkeypatch)
    x, w, b, dy = layer5(hw[0] * 10 + hw[1], 3, 4, 5, hw)
    b = b if bias else None
    assert winograd.use_winograd(x, w, 1, 2, 1)
    y, _ = conv5(x, w, b, dy, want=())
    assert_close(y, reference5(x, w, b, dy)[0], rtol=1e-12)


@pytest.mark.parametrize("hw", [(6, 6), (7, 5), (1, 1), (2, 3)])
@pytest.mark.parametrize("want", [("dx", "dw", "db"), ("dw", "db"), ("dx", "db"), ("dx", "dw")])
def test_winograd5_backward_gives_the_float64_reference(monkeypatch, hw, want):
    """Each wanted gradient matches; the others (None) are skipped."""
    on_winograd5(monkeypatch)
    x, w, b, dy = layer5(hw[0] * 10 + hw[1], 3, 4, 5, hw)
    assert winograd.use_winograd_backward(x, w, 1, 2, 1)
    _, got = conv5(x, w, b, dy, want)
    assert sorted(got) == sorted(want)
    for name, ref in zip(("dx", "dw", "db"), reference5(x, w, b, dy)[1:]):
        if name in want:
            assert_close(got[name], ref, rtol=1e-12, what=name)


def test_winograd5_backward_accumulates_dw_and_db(monkeypatch):
    """dw += and db += (the contract), every one of the 25 taps of dw included."""
    on_winograd5(monkeypatch)
    x, w, b, dy = layer5(5, 2, 3, 4, (5, 6))
    rng = np.random.default_rng(6)
    dw0, db0 = rng.standard_normal(w.shape), rng.standard_normal(4)
    _, got = conv5(x, w, b, dy, dw0=dw0, db0=db0)
    _, _, dw, db = reference5(x, w, b, dy)
    assert_close(got["dw"], dw0 + dw, rtol=1e-12)
    assert_close(got["db"], db0 + db, rtol=1e-12)


def test_winograd5_float32_agrees_with_im2col_and_the_reference(monkeypatch):
    """At the rules' smallest channels and sides (odd height), float32 by the rules: y, dx, dw and db within
    float32 rounding of the float64 reference and of the same layer's im2col path (the rules switched off)."""
    c, s = max(winograd.MIN_WINOGRAD5_CHANNELS, winograd.MIN_WINOGRAD5_BACKWARD_CHANNELS), \
        max(winograd.MIN_WINOGRAD5_SIZE, winograd.MIN_WINOGRAD5_BACKWARD_SIZE)
    x, w, b, dy = layer5(7, 2, c, 8, (s + 1, s), np.float32)
    assert winograd.use_winograd(x, w, 1, 2, 1) and winograd.use_winograd_backward(x, w, 1, 2, 1)
    wino_y, wino = conv5(x, w, b, dy)
    for name in ("MIN_WINOGRAD5_CHANNELS", "MIN_WINOGRAD5_BACKWARD_CHANNELS"):
        monkeypatch.setattr(winograd, name, 10**9)
    im2col_y, im2col = conv5(x, w, b, dy)
    wino["y"], im2col["y"] = wino_y, im2col_y
    for name, ref in zip(("y", "dx", "dw", "db"), reference5(x, w, b, dy)):
        assert_close(wino[name], ref, rtol=1e-5, what=name)
        assert_close(im2col[name], ref, rtol=1e-5, what=name)
        assert_close(wino[name], im2col[name], rtol=1e-5, what=name)


def rule5_cases(c, s):
    """(C, (H, W), k, stride, pad, groups, chosen) around the 5x5 rules' thresholds c (channels) and s (map side)."""
    return [(c, (s, s), 5, 1, 2, 1, True), (c - 1, (s, s), 5, 1, 2, 1, False), (c, (s - 1, s), 5, 1, 2, 1, False),
            (c, (s, s - 1), 5, 1, 2, 1, False), (c, (s, s), 5, 2, 2, 1, False), (c, (s, s), 5, 1, 1, 1, False),
            (c, (s, s), 5, 1, 2, 2, False), (c, (s, s), 3, 1, 2, 1, False)]


@pytest.mark.parametrize("c, hw, k, stride, pad, groups, want",
                         rule5_cases(winograd.MIN_WINOGRAD5_CHANNELS, winograd.MIN_WINOGRAD5_SIZE))
def test_winograd5_forward_is_chosen_by_its_rule(c, hw, k, stride, pad, groups, want):
    """use_winograd on 5x5: stride 1, padding 2, one group, C and the map's sides at least the 5x5 thresholds."""
    x, w = np.empty((1, c) + hw), np.empty((16, c // groups, k, k))
    assert winograd.use_winograd(x, w, stride, pad, groups) == want


@pytest.mark.parametrize("c, hw, k, stride, pad, groups, want",
                         rule5_cases(winograd.MIN_WINOGRAD5_BACKWARD_CHANNELS, winograd.MIN_WINOGRAD5_BACKWARD_SIZE))
def test_winograd5_backward_is_chosen_by_its_rule(c, hw, k, stride, pad, groups, want):
    """use_winograd_backward on 5x5, with the backward's thresholds."""
    x, w = np.empty((1, c) + hw), np.empty((16, c // groups, k, k))
    assert winograd.use_winograd_backward(x, w, stride, pad, groups) == want


def test_winograd5_spanning_several_column_blocks_gives_the_float64_reference(monkeypatch):
    """The shifted GEMMs run COLUMN_BLOCK tiles at a time (dx's blocks overlap in dV): 6 images of 13x12 make
    N * 8 * 7 = 336 tiles, two blocks and a partial one's edge."""
    on_winograd5(monkeypatch)
    x, w, b, dy = layer5(8, 6, 2, 3, (13, 12))
    assert 6 * 8 * 7 - 8 > winograd.COLUMN_BLOCK
    y, got = conv5(x, w, b, dy)
    want = reference5(x, w, b, dy)
    assert_close(y, want[0], rtol=1e-12, what="y")
    for name, ref in zip(("dx", "dw", "db"), want[1:]):
        assert_close(got[name], ref, rtol=1e-12, what=name)
