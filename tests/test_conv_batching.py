"""The CPU convolution's batching: each thread's GEMMs take G images side by side where one
image's output map is small (nbcnn/cpu/conv.py, images_per_gemm). Whatever G, including a
last round that leaves some threads fewer images or none, forward and every gradient are
those of a NumPy reference (written here with sliding windows, independent of im2col)."""

import numpy as np
import pytest

import nbcnn
from nbcnn.backend import Workspace
from nbcnn.cpu import conv
from nbcnn.testing import assert_close


def windows(x, k, stride, pad):
    """(N, C, OH, OW, K, K): the zero-padded input's window under each output pixel."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]


def reference(x, w, b, dy, stride, pad, groups):
    """y, dx, dw, db of a grouped convolution, group by group."""
    k, cg, og = w.shape[2], x.shape[1] // groups, w.shape[0] // groups
    win = windows(x, k, stride, pad)
    ys, dws = [], []
    dxp = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * pad, x.shape[3] + 2 * pad))
    oh, ow = dy.shape[2], dy.shape[3]
    for g in range(groups):
        wg, dyg, wing = w[g * og:(g + 1) * og], dy[:, g * og:(g + 1) * og], win[:, g * cg:(g + 1) * cg]
        ys.append(np.einsum("nchwpq,ocpq->nohw", wing, wg))
        dws.append(np.einsum("nohw,nchwpq->ocpq", dyg, wing))
        for p in range(k):  # each kernel tap sends dy back to the pixels it read
            for q in range(k):
                dxp[:, g * cg:(g + 1) * cg, p:p + stride * oh:stride, q:q + stride * ow:stride] += \
                    np.einsum("nohw,oc->nchw", dyg, wg[:, :, p, q])
    y = np.concatenate(ys, axis=1) + b[None, :, None, None]
    return y, dxp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]], np.concatenate(dws), dy.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("min_columns", [1, 40, 10**6])  # G = 1; a few images (uneven last round); the whole share
@pytest.mark.parametrize("n, groups, stride, pad", [(5, 1, 1, 1), (7, 2, 2, 0), (3, 1, 2, 1)])
def test_images_side_by_side_give_the_reference_results(monkeypatch, min_columns, n, groups, stride, pad):
    monkeypatch.setattr(conv, "MIN_GEMM_COLUMNS", min_columns)
    rng = np.random.default_rng(n + groups)
    x, w, b = rng.standard_normal((n, 4, 6, 5)), rng.standard_normal((6, 4 // groups, 3, 3)), rng.standard_normal(6)
    oh, ow = (6 + 2 * pad - 3) // stride + 1, (5 + 2 * pad - 3) // stride + 1
    dy = rng.standard_normal((n, 6, oh, ow))
    want = reference(x, w, b, dy, stride, pad, groups)
    be = nbcnn.get_backend("cpu")
    ws = Workspace()
    y = be.empty((n, 6, oh, ow), np.float64)  # poisoned: an image no thread takes stays NaN
    be.conv2d_forward(x, w, b, stride, pad, y, ws, groups)
    assert_close(y, want[0], rtol=1e-12, what="y")
    dx, dw, db = be.empty(x.shape, np.float64), be.empty(w.shape, np.float64), be.empty(b.shape, np.float64)
    dw[:], db[:] = 0, 0  # the contract accumulates into dw and db
    be.conv2d_backward(x, w, dy, stride, pad, dx, dw, db, ws, groups)
    for name, got, expected in zip(("dx", "dw", "db"), (dx, dw, db), want[1:]):
        assert_close(got, expected, rtol=1e-12, what=name)
    for wanted in ("dx", "dw", "db"):  # each gradient alone, the others not asked for
        out = {"dx": be.empty(x.shape, np.float64), "dw": np.zeros(w.shape), "db": np.zeros(b.shape)}
        args = {k: (out[k] if k == wanted else None) for k in out}
        be.conv2d_backward(x, w, dy, stride, pad, args["dx"], args["dw"], args["db"], Workspace(), groups)
        assert_close(out[wanted], want[1 + ("dx", "dw", "db").index(wanted)], rtol=1e-12, what=f"{wanted} alone")


def test_images_per_gemm_widens_small_maps_only():
    assert conv.images_per_gemm(16, 2, 56 * 56) == 1  # wide enough alone
    assert conv.images_per_gemm(16, 2, 7 * 7) == 8  # 392 columns >= 384
    assert conv.images_per_gemm(16, 2, 14 * 14) == 2
    assert conv.images_per_gemm(2, 2, 1) == 1  # never more than a thread's share
    assert conv.images_per_gemm(254, 2, 49) == 8  # not the whole share of 127: buffers stay bounded
