"""The CUDA backend's Winograd F(2x2, 3x3) convolution (nbcnn/cuda/winograd.py), forward and both
backward products, through conv2d_forward/backward with the path switched on: against a float64
convolution written here with sliding windows and einsum (independent of Winograd and of im2col),
to 1e-12 in float64 and within rounding in float32, where the im2col path must agree too.
Odd heights and widths exercise the tiles that hang over the edge; memory is poisoned (NaN), so
an output element left unwritten fails.

Under the simulator a Winograd GEMM launch is 16 blocks (one per position k), ~1.4 s: each test
runs few of them. With NBCNN_TEST_GPU=1 (scripts/gpu_check.sh) the same tests run on the GPU on
larger shapes, where the weight gradient's tiles are split into several segments by the rule.
"""

import numpy as np
import pytest

import nbcnn
from devices import DEVICES, ON_GPU
from nbcnn.backend import Workspace
from nbcnn.cuda import conv, winograd
from nbcnn.testing import assert_backends_agree, assert_close

pytestmark = list(DEVICES[1].marks)  # skipped where the CUDA backend cannot run

N, C, O = (4, 24, 20) if ON_GPU else (2, 3, 2)
MAPS = [(13, 13), (7, 8), (1, 1), (14, 9)] if ON_GPU else [(1, 1), (2, 3), (5, 4), (4, 4)]


def windows(a):
    """(N, C, H, W, 3, 3) float64: the 3x3 windows of `a` zero-padded by 1, one per output pixel."""
    ap = np.pad(a.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    return np.lib.stride_tricks.sliding_window_view(ap, (3, 3), axis=(2, 3))


def reference_forward(x, w, b):
    y = np.einsum("nchwpq,ocpq->nohw", windows(x), w.astype(np.float64))
    return y if b is None else y + b.astype(np.float64)[None, :, None, None]


def reference_dx(w, dy):
    """dx[n,c,h,w] = sum_{o,p,q} dy[n,o,h+1-p,w+1-q] w[o,c,p,q]: dy's windows against the flipped weight."""
    return np.einsum("nohwpq,ocpq->nchw", windows(dy), w.astype(np.float64)[:, :, ::-1, ::-1])


def reference_dw(x, dy):
    return np.einsum("nchwpq,nohw->ocpq", windows(x), dy.astype(np.float64))


def data(hw, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C) + hw).astype(dtype)
    w = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(C * 9)).astype(dtype)
    return x, w, rng.standard_normal(O).astype(dtype), rng.standard_normal((N, O) + hw).astype(dtype)


def forward(x, w, b, mode="always"):
    be = nbcnn.get_backend("cuda")
    y = be.empty((x.shape[0], w.shape[0]) + x.shape[2:], x.dtype)
    with winograd.flags(mode):
        be.conv2d_forward(be.from_numpy(x), be.from_numpy(w), None if b is None else be.from_numpy(b), 1, 1, y,
                          Workspace())
    return be.to_numpy(y)


def backward(x, w, dy, dw0, db0, want=("dx", "dw", "db"), mode="always"):
    """(dx, dw, db) from conv2d_backward, dw and db accumulated onto dw0 and db0; None where not wanted."""
    be = nbcnn.get_backend("cuda")
    dx = be.empty(x.shape, x.dtype) if "dx" in want else None
    dw = be.from_numpy(dw0) if "dw" in want else None
    db = be.from_numpy(db0) if "db" in want else None
    with winograd.flags(mode):
        be.conv2d_backward(be.from_numpy(x), be.from_numpy(w), be.from_numpy(dy), 1, 1, dx, dw, db, Workspace())
    return tuple(None if a is None else be.to_numpy(a) for a in (dx, dw, db))


@pytest.mark.parametrize("hw, bias", [(MAPS[0], True), (MAPS[1], False), (MAPS[2], False), (MAPS[3], True)])
def test_forward_gives_the_float64_reference(hw, bias):
    x, w, b, _ = data(hw, seed=hw[0] * 10 + hw[1])
    b = b if bias else None
    assert_close(forward(x, w, b), reference_forward(x, w, b), rtol=1e-12)


@pytest.mark.parametrize("hw", MAPS[:3])
def test_backward_gives_the_float64_reference_and_accumulates_dw_db(hw):
    x, w, _, dy = data(hw, seed=hw[0] * 10 + hw[1])
    rng = np.random.default_rng(1)
    dw0, db0 = rng.standard_normal(w.shape), rng.standard_normal(O)
    dx, dw, db = backward(x, w, dy, dw0, db0)
    assert_close(dx, reference_dx(w, dy), rtol=1e-12, what="dx")
    assert_close(dw, dw0 + reference_dw(x, dy), rtol=1e-12, what="dw")
    assert_close(db, db0 + dy.sum(axis=(0, 2, 3)), rtol=1e-12, what="db")


@pytest.mark.parametrize("want", [("dw", "db"), ("dx",), ("db",)])
def test_a_gradient_passed_as_none_is_skipped_and_the_others_are_right(want):
    x, w, _, dy = data(MAPS[1])
    dw0, db0 = np.ones(w.shape), np.ones(O)
    got = backward(x, w, dy, dw0, db0, want)
    expected = (reference_dx(w, dy), dw0 + reference_dw(x, dy), db0 + dy.sum(axis=(0, 2, 3)))
    for name, g, e in zip(("dx", "dw", "db"), got, expected):
        if name in want:
            assert_close(g, e, rtol=1e-12, what=name)
        else:
            assert g is None


def test_float32_is_the_reference_within_rounding_and_agrees_with_im2col():
    x, w, b, dy = data(MAPS[3], np.float32)
    dw0, db0 = np.zeros(w.shape, np.float32), np.zeros(O, np.float32)
    wino = (forward(x, w, b),) + backward(x, w, dy, dw0, db0)
    im2col = (forward(x, w, b, "off"),) + backward(x, w, dy, dw0, db0, mode="off")
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    expected = (reference_forward(x64, w64, b), reference_dx(w64, dy64), reference_dw(x64, dy64),
                dy64.sum(axis=(0, 2, 3)))
    for name, got, ref, other in zip(("y", "dx", "dw", "db"), wino, expected, im2col):
        assert got.dtype == np.float32
        assert_close(got, ref, rtol=1e-5, what=name)
        assert_close(got, other, rtol=1e-5, what=name + " against im2col")


def test_cpu_and_cuda_winograd_agree(monkeypatch):
    """Both backends on their Winograd paths (the CPU's thresholds lowered to take this tiny shape), float32."""
    from nbcnn.cpu import winograd as cpu_winograd
    for name in ("MIN_WINOGRAD_CHANNELS", "MIN_WINOGRAD_SIZE", "MIN_WINOGRAD_BACKWARD_CHANNELS",
                 "MIN_WINOGRAD_BACKWARD_SIZE"):  # the backward's: where the CPU has a Winograd backward
        monkeypatch.setattr(cpu_winograd, name, 1, raising=False)
    x, w, b, dy = data(MAPS[2], np.float32)
    dw0, db0 = np.ones(w.shape, np.float32), np.ones(O, np.float32)

    def op(be, x, w, b, dy, dw, db):
        ws, y, dx = Workspace(), be.empty(dy.shape, dy.dtype), be.empty(x.shape, x.dtype)
        with winograd.flags("always"):
            be.conv2d_forward(x, w, b, 1, 1, y, ws)
            be.conv2d_backward(x, w, dy, 1, 1, dx, dw, db, ws)
        return y, dx, dw, db

    assert cpu_winograd.use_winograd(x, w, 1, 1, 1)
    assert_backends_agree(op, x, w, b, dy, dw0, db0, rtol=1e-5)


@pytest.mark.skipif(ON_GPU, reason="on a GPU the rule already splits these shapes into segments")
def test_tiles_split_into_segments_give_the_same_results(monkeypatch):
    """Two segments of 5 tiles for 9 (N = 1, 5x5): the last segment ends in a zero padding tile."""
    monkeypatch.setattr(winograd, "TARGET_BLOCKS", 32)
    x, w, b, dy = data((5, 5))
    x, dy = x[:1], dy[:1]
    assert winograd.segments(O, C, 9, np.float64) == 2
    assert_close(forward(x, w, b), reference_forward(x, w, b), rtol=1e-12)
    dw0 = np.ones(w.shape)
    dx, dw, _ = backward(x, w, dy, dw0, None, ("dx", "dw"))
    assert_close(dx, reference_dx(w, dy), rtol=1e-12, what="dx")
    assert_close(dw, dw0 + reference_dw(x, dy), rtol=1e-12, what="dw")


@pytest.mark.parametrize("mode", ["off", "always"])
def test_the_conv_takes_winograd_only_when_asked(monkeypatch, mode):
    taken = []

    class Tripwire:  # stands in for the im2col kernel: records the launch, runs nothing
        def __getitem__(self, launch):
            taken.append("im2col")
            return lambda *args: None

    monkeypatch.setattr(conv, "winograd_forward", lambda *a: taken.append("winograd forward"))
    monkeypatch.setattr(conv, "winograd_backward", lambda *a: taken.append("winograd backward"))
    monkeypatch.setattr(conv, "im2col_kernel", Tripwire())
    monkeypatch.setattr(conv, "gemm", lambda *a, **k: None)
    monkeypatch.setattr(conv, "gemm_batch_sum", lambda *a, **k: None)
    x, w, b, dy = data((1, 1))
    forward(x, w, b, mode)
    backward(x, w, dy, np.zeros(w.shape), np.zeros(O), ("dw", "db"), mode=mode)
    assert taken == (["winograd forward", "winograd backward"] if mode == "always" else ["im2col", "im2col"])


@pytest.mark.parametrize("k, stride, pad, groups, c, hw, want", [
    (3, 1, 1, 1, 4, (1, 1), True), (5, 1, 1, 1, 4, (5, 5), False), (3, 2, 1, 1, 4, (5, 5), False),
    (3, 1, 0, 1, 4, (5, 5), False), (3, 1, 1, 2, 4, (5, 5), False)])
def test_always_takes_every_3x3_stride_1_pad_1_single_group_convolution(k, stride, pad, groups, c, hw, want):
    x, w = np.empty((2, c) + hw), np.empty((4, c // groups, k, k))
    with winograd.flags("always"):
        assert winograd.use_winograd(x, w, stride, pad, groups) == want
    with winograd.flags("off"):
        assert not winograd.use_winograd(x, w, stride, pad, groups)


def test_rule_follows_the_cpu_rules_forward_and_backward():
    from nbcnn.cpu import winograd as cpu
    with winograd.flags("rule"):
        for c, hw in [(128, (8, 8)), (16, (8, 8)), (15, (8, 8)), (128, (7, 8)), (4, (1, 1))]:
            x, w = np.empty((1, c) + hw), np.empty((16, c, 3, 3))
            assert winograd.use_winograd(x, w, 1, 1, 1) == cpu.use_winograd(x, w, 1, 1, 1)
            assert winograd.use_winograd_backward(x, w, 1, 1, 1) == cpu.use_winograd_backward(x, w, 1, 1, 1)


def test_an_unknown_mode_is_refused_and_changes_nothing():
    before = winograd.MODE
    with pytest.raises(ValueError, match="'off', 'rule', 'always'"):
        winograd.set_mode("on")
    with pytest.raises(ValueError, match="NBCNN_CUDA_WINOGRAD"):
        winograd._checked("yes", "NBCNN_CUDA_WINOGRAD")
    assert winograd.MODE == before


# -- 5x5, stride 1, padding 2: the four sub-kernels stacked along the GEMMs' depth ---------------------

def reference5(x, w, b, dy):
    """float64 (y, dx, dw, db) of the 5x5, stride 1, padding 2 convolution: einsums over the 5x5 windows of the
    zero-padded x and dy (dx: dy's windows against the flipped weight)."""
    x, w, dy = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)

    def win(a):
        ap = np.pad(a, ((0, 0), (0, 0), (2, 2), (2, 2)))
        return np.lib.stride_tricks.sliding_window_view(ap, (5, 5), axis=(2, 3))
    y = np.einsum("nchwpq,ocpq->nohw", win(x), w) + (0 if b is None else b.astype(np.float64)[None, :, None, None])
    return (y, np.einsum("nohwpq,ocpq->nchw", win(dy), w[:, :, ::-1, ::-1]), np.einsum("nchwpq,nohw->ocpq", win(x), dy),
            dy.sum(axis=(0, 2, 3)))


def data5(hw, dtype=np.float64, seed=0, n=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, C) + hw).astype(dtype)
    w = (rng.standard_normal((O, C, 5, 5)) / np.sqrt(C * 25)).astype(dtype)
    return x, w, rng.standard_normal(O).astype(dtype), rng.standard_normal((n, O) + hw).astype(dtype)


def conv5(x, w, b, dy, dw0, db0, want=("dx", "dw", "db"), mode="always"):
    """(y, dx, dw, db) of the CUDA 5x5/1 pad 2 conv2d_forward and conv2d_backward (dw, db onto dw0, db0; None
    where not wanted)."""
    be = nbcnn.get_backend("cuda")
    y = be.empty(dy.shape, x.dtype)
    dx = be.empty(x.shape, x.dtype) if "dx" in want else None
    dw = be.from_numpy(dw0) if "dw" in want else None
    db = be.from_numpy(db0) if "db" in want else None
    xa, wa = be.from_numpy(x), be.from_numpy(w)
    with winograd.flags(mode):
        be.conv2d_forward(xa, wa, None if b is None else be.from_numpy(b), 1, 2, y, Workspace())
        be.conv2d_backward(xa, wa, be.from_numpy(dy), 1, 2, dx, dw, db, Workspace())
    return tuple(None if a is None else be.to_numpy(a) for a in (y, dx, dw, db))


@pytest.mark.parametrize("hw, want", [((3, 5), ("dx", "dw", "db")), ((1, 1), ("dw",)), ((2, 4), ("dx", "db"))])
def test_5x5_gives_the_float64_reference_and_accumulates(hw, want):
    """Odd sizes and maps smaller than the kernel; gradients passed as None are skipped; dw and db accumulate."""
    x, w, b, dy = data5(hw, seed=hw[0] * 10 + hw[1])
    rng = np.random.default_rng(1)
    dw0, db0 = rng.standard_normal(w.shape), rng.standard_normal(O)
    got = conv5(x, w, b if "db" in want else None, dy, dw0, db0, want)
    y, dx, dw, db = reference5(x, w, b if "db" in want else None, dy)
    for name, g, e in zip(("y", "dx", "dw", "db"), got, (y, dx, dw0 + dw, db0 + db)):
        if name == "y" or name in want:
            assert_close(g, e, rtol=1e-12, what=name)
        else:
            assert g is None


def test_5x5_float32_is_the_reference_within_rounding_and_agrees_with_im2col():
    x, w, b, dy = data5((5, 4), np.float32)
    dw0, db0 = np.zeros(w.shape, np.float32), np.zeros(O, np.float32)
    wino, im2col = conv5(x, w, b, dy, dw0, db0), conv5(x, w, b, dy, dw0, db0, mode="off")
    for name, got, ref, other in zip(("y", "dx", "dw", "db"), wino, reference5(x, w, b, dy), im2col):
        assert got.dtype == np.float32
        assert_close(got, ref, rtol=1e-5, what=name)
        assert_close(got, other, rtol=1e-5, what=name + " against im2col")


def test_cpu_and_cuda_5x5_winograd_agree(monkeypatch):
    """Both backends on their 5x5 Winograd paths (the CPU's by the shifted extended grid, CUDA's by the stacked
    depth; the CPU's thresholds lowered to take this tiny shape), float32."""
    from nbcnn.cpu import winograd as cpu_winograd
    for name in ("MIN_WINOGRAD5_CHANNELS", "MIN_WINOGRAD5_SIZE", "MIN_WINOGRAD5_BACKWARD_CHANNELS",
                 "MIN_WINOGRAD5_BACKWARD_SIZE"):
        monkeypatch.setattr(cpu_winograd, name, 1)
    x, w, b, dy = data5((3, 3), np.float32)
    dw0, db0 = np.ones(w.shape, np.float32), np.ones(O, np.float32)

    def op(be, x, w, b, dy, dw, db):
        ws, y, dx = Workspace(), be.empty(dy.shape, dy.dtype), be.empty(x.shape, x.dtype)
        with winograd.flags("always"):
            be.conv2d_forward(x, w, b, 1, 2, y, ws)
            be.conv2d_backward(x, w, dy, 1, 2, dx, dw, db, ws)
        return y, dx, dw, db

    assert cpu_winograd.use_winograd(x, w, 1, 2, 1) and cpu_winograd.use_winograd_backward(x, w, 1, 2, 1)
    assert_backends_agree(op, x, w, b, dy, dw0, db0, rtol=1e-5)


@pytest.mark.parametrize("k, stride, pad, groups, want", [
    (5, 1, 2, 1, True), (5, 1, 1, 1, False), (5, 2, 2, 1, False), (5, 1, 2, 2, False), (3, 1, 2, 1, False)])
def test_always_takes_every_5x5_stride_1_pad_2_single_group_convolution(k, stride, pad, groups, want):
    x, w = np.empty((2, 4, 5, 5)), np.empty((4, 4 // groups, k, k))
    with winograd.flags("always"):
        assert winograd.use_winograd(x, w, stride, pad, groups) == want
        assert winograd.use_winograd_backward(x, w, stride, pad, groups) == want
    with winograd.flags("off"):
        assert not winograd.use_winograd(x, w, stride, pad, groups)
