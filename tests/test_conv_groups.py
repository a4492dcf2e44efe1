"""Conv2d's options: grouped and depthwise convolution, no bias; and frozen parameters.

Forward results against tests/reference.py (scipy per group, and a NumPy-only depthwise
reference), gradients against float64 central differences, both against PyTorch where it
is importable; state_dict keys as PyTorch's; clear errors for groups that do not fit. A
frozen weight (requires_grad False) must not have its gradient computed at all: the
kernels that would compute it are replaced by tripwires, and its `.grad` must stay bit for
bit what it was. CPU<->CUDA agreement is in test_backends_agree.py.
"""

import numpy as np
import pytest
from hypothesis import strategies as st

import nbcnn
import reference as ref
from devices import DEVICES, scale
from nbcnn.testing import assert_close
from test_ops import RTOL32, check_gradients, floats, run

KINDS = ["grouped", "depthwise", "depthwise x2"]  # x2: channel multiplier 2


@st.composite
def group_cases(draw, device):
    big = scale(device, 1, 0)
    kind = draw(st.sampled_from(KINDS))
    groups = draw(st.integers(2, 3 + big))
    if kind == "grouped":  # at least 2 input channels per group: one would be depthwise
        c, o = groups * draw(st.integers(2, 3)), groups * draw(st.integers(1, 2 + big))
    else:
        c, o = groups, groups * (2 if kind == "depthwise x2" else 1)
    k = draw(st.integers(1, 3 + 2 * big))
    pad = draw(st.integers(0, min(2, k)))
    lo = max(1, k - 2 * pad)
    return dict(kind=kind, groups=groups, c=c, o=o, k=k, stride=draw(st.integers(1, 2 + big)), pad=pad,
                n=draw(st.integers(1, 2)), h=draw(st.integers(lo, lo + 2 + 5 * big)),
                w=draw(st.integers(lo, lo + 2 + 5 * big)), bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


def group_layer(device, case, dtype=np.float32):
    layer = nbcnn.Conv2d(case["c"], case["o"], case["k"], stride=case["stride"], padding=case["pad"],
                         groups=case["groups"], bias=case["bias"])
    return layer.to(device, dtype)


# -- forward against the references ------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_grouped_and_depthwise_forward_match_references(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        layer = group_layer(device, case)
        x = floats(rng, (case["n"], case["c"], case["h"], case["w"]))
        y = layer(nbcnn.asarray(x, device))
        sd = layer.state_dict()
        w, b = sd["weight"].astype(np.float64), sd.get("bias")
        expected = ref.conv2d_grouped(x.astype(np.float64), w, b, case["stride"], case["pad"], case["groups"])
        assert_close(y, expected, rtol=RTOL32)
        if case["kind"] != "grouped":  # and the NumPy-only reference, written without scipy
            assert_close(expected, ref.depthwise_conv2d(x.astype(np.float64), w, b, case["stride"], case["pad"]),
                         rtol=1e-12)
    run(device, body, group_cases(device), cpu_examples=20, sim_examples=3)


@pytest.mark.parametrize("device", DEVICES)
def test_conv_without_bias_is_the_correlation_alone(device):
    rng = np.random.default_rng(0)
    layer = nbcnn.Conv2d(3, 4, 3, padding=1, bias=False).to(device)
    assert layer.bias is None and [name for name, _ in layer.named_parameters()] == ["weight"]
    x = floats(rng, (2, 3, 5, 6))
    w = layer.state_dict()["weight"].astype(np.float64)
    assert_close(layer(nbcnn.asarray(x, device)), ref.conv2d(x.astype(np.float64), w, np.zeros(4), 1, 1), rtol=RTOL32)


# -- backward against finite differences (float64) ----------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_grouped_and_depthwise_backward_match_finite_differences(device):
    def body(case):
        rng = np.random.default_rng(case["seed"])
        x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
        check_gradients(device, group_layer(device, case), x, rng)  # dx, dw and (where there is one) db
    run(device, body, group_cases(device), cpu_examples=12, sim_examples=2)


def test_depthwise_separable_network_backward_matches_finite_differences():
    """Grouped, depthwise (multiplier 2) and bias-free pointwise layers in one network (CPU)."""
    rng = np.random.default_rng(5)
    net = nbcnn.Sequential(nbcnn.Conv2d(4, 6, 3, padding=1, groups=2), nbcnn.ReLU(),
                           nbcnn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6), nbcnn.ReLU(),
                           nbcnn.Conv2d(12, 5, 1, bias=False), nbcnn.Flatten(), nbcnn.Linear(5 * 4 * 4, 3))
    check_gradients("cpu", net, rng.standard_normal((2, 4, 7, 8)), rng, directions=1)


# -- against PyTorch ---------------------------------------------------------------------

TORCH_CASES = [  # (in, out, kernel, stride, padding, groups, bias)
    (4, 6, 3, 1, 1, 2, True), (6, 6, 3, 2, 1, 6, False), (3, 6, 5, 1, 2, 3, True), (4, 8, 2, 2, 0, 1, False)]


@pytest.mark.parametrize("c,o,k,stride,pad,groups,bias", TORCH_CASES)
def test_forward_and_gradients_match_torch(c, o, k, stride, pad, groups, bias):
    """On the CPU; the CUDA backend is held to the CPU's results by test_backends_agree.py."""
    device = "cpu"
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the reference tests above still run")
    rng = np.random.default_rng(c * o + k)
    layer = nbcnn.Conv2d(c, o, k, stride=stride, padding=pad, groups=groups, bias=bias).to(device, np.float64)
    x = rng.standard_normal((2, c, 7, 6))
    y = layer(nbcnn.asarray(x, device))
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(nbcnn.asarray(dy, device))
    sd = layer.state_dict()
    xt = torch.from_numpy(x).requires_grad_()
    params = {name: torch.from_numpy(v).requires_grad_() for name, v in sd.items()}
    yt = torch.nn.functional.conv2d(xt, params["weight"], params.get("bias"), stride=stride, padding=pad,
                                    groups=groups)
    yt.backward(torch.from_numpy(dy))
    assert_close(y, yt.detach().numpy(), what="y")
    assert_close(dx, xt.grad.numpy(), what="dx")
    for name, p in layer.named_parameters():
        assert_close(p.grad, params[name].grad.numpy(), what=f"d{name}")


@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (2, False), (4, True)])
def test_state_dict_keys_and_shapes_are_torchs(groups, bias):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    ours = nbcnn.Conv2d(4, 8, 3, groups=groups, bias=bias).state_dict()
    theirs = torch.nn.Conv2d(4, 8, 3, groups=groups, bias=bias).state_dict()
    assert list(ours) == list(theirs)
    assert [v.shape for v in ours.values()] == [tuple(v.shape) for v in theirs.values()]


def test_grouped_init_bounds_by_the_groups_fan_in():
    """PyTorch's Kaiming-uniform bound 1/sqrt(fan_in) with fan_in = in/groups * k * k."""
    nbcnn.manual_seed(0)
    sd = nbcnn.Conv2d(16, 32, 3, groups=4).state_dict()
    bound = 1 / np.sqrt(16 // 4 * 9)
    for v in sd.values():
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound


def test_repr_names_groups_and_no_bias_as_torch_does():
    assert repr(nbcnn.Conv2d(4, 8, 3, groups=4, bias=False)).endswith("padding=0, groups=4, bias=False)")
    assert "groups" not in repr(nbcnn.Conv2d(4, 8, 3)) and "bias" not in repr(nbcnn.Conv2d(4, 8, 3))


# -- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("c,o,groups,match", [
    (4, 6, 3, "groups=3 must divide both in_channels=4 and out_channels=6"),
    (6, 4, 3, "groups=3 must divide both in_channels=6 and out_channels=4"),
    (4, 4, 0, "groups must be a positive int, got 0"),
    (4, 4, -2, "groups must be a positive int, got -2"),
    (4, 4, 2.0, "groups must be a positive int, got 2.0"),
])
def test_groups_that_do_not_fit_are_refused(c, o, groups, match):
    with pytest.raises(ValueError, match=match):
        nbcnn.Conv2d(c, o, 3, groups=groups)


# -- frozen parameters: no gradient computed, .grad untouched ------------------------------

class Tripwire:
    """Stands in for a function or kernel that must not run: calling or launching it fails the test."""

    def __init__(self, what):
        self.what = what

    def __getitem__(self, launch_config):  # kernel[grid, block](...)
        return self

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.what} ran for a frozen weight")


def forbid_weight_gradient(monkeypatch, device):
    """Replace what computes a weight gradient on `device` by tripwires (after the forward pass)."""
    if device == "cpu":
        from nbcnn.cpu import conv, depthwise, linear

        def flags_off(kernel, name):
            def wrapped(*args):
                assert not args[-2], f"{name} was asked for the weight gradient of a frozen weight"  # want_dw
                return kernel(*args)
            return wrapped
        monkeypatch.setattr(conv, "conv2d_backward_kernel", flags_off(conv.conv2d_backward_kernel, "conv"))
        monkeypatch.setattr(depthwise, "depthwise_params_kernel",
                            flags_off(depthwise.depthwise_params_kernel, "depthwise"))
        monkeypatch.setattr(linear, "linear_dw_kernel", Tripwire("linear's dw GEMM"))
    else:
        from nbcnn.cuda import conv, depthwise, linear
        monkeypatch.setattr(conv, "gemm_batch_sum", Tripwire("conv's dw GEMM"))
        monkeypatch.setattr(conv, "im2col_kernel", Tripwire("conv's im2col for dw"))
        monkeypatch.setattr(depthwise, "depthwise_dw_kernel", Tripwire("the depthwise dw kernel"))
        gemm = linear.gemm

        def no_transposed_a(a, b, c, plan, bias=None):  # linear's dw GEMM is its only one with op(A) = dy^T
            if plan.trans_a:
                raise AssertionError("linear's dw GEMM ran for a frozen weight")
            return gemm(a, b, c, plan, bias)
        monkeypatch.setattr(linear, "gemm", no_transposed_a)


FROZEN_LAYERS = {
    "conv": lambda: nbcnn.Conv2d(2, 3, 3, padding=1),
    "grouped conv": lambda: nbcnn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
    "depthwise conv": lambda: nbcnn.Conv2d(3, 6, 3, padding=1, groups=3),
    "linear": lambda: nbcnn.Linear(12, 5),  # two 12-feature rows
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(FROZEN_LAYERS))
@pytest.mark.parametrize("frozen", [("weight",), ("weight", "bias")])
def test_a_frozen_parameter_gets_no_gradient_and_inputs_still_do(monkeypatch, device, kind, frozen):
    rng = np.random.default_rng(1)
    nbcnn.manual_seed(3)
    trained = FROZEN_LAYERS[kind]().to(device, np.float64)
    nbcnn.manual_seed(3)
    layer = FROZEN_LAYERS[kind]().to(device, np.float64)
    shape = (2, 12) if kind == "linear" else (1, trained.in_channels, 4, 3)
    x = nbcnn.asarray(rng.standard_normal(shape), device)
    dy = nbcnn.asarray(rng.standard_normal(tuple(trained(x).shape)), device)
    want_dx = trained.backward(dy)
    sentinel = {}
    for name in frozen:
        p = getattr(layer, name)
        p.requires_grad = False
        sentinel[name] = rng.standard_normal(p.shape)
        p.grad = nbcnn.asarray(sentinel[name], device)
    layer(x)
    forbid_weight_gradient(monkeypatch, device)
    dx = layer.backward(dy)
    assert_close(dx, want_dx, exact=True, what="dx")  # the input gradient is computed as before
    for name, p in layer.named_parameters():
        if name in frozen:
            assert_close(p.grad, sentinel[name], exact=True, what=f"frozen {name}'s grad")
        else:
            assert_close(p.grad, getattr(trained, name).grad, exact=True, what=f"{name}'s grad")


@pytest.mark.parametrize("device", DEVICES)
def test_a_frozen_first_layer_computes_nothing_in_backward(monkeypatch, device):
    """The first layer of a network gets no input gradient; frozen, its backward has nothing left to do."""
    net = nbcnn.Sequential(nbcnn.Conv2d(2, 3, 3), nbcnn.Flatten(), nbcnn.Linear(12, 2)).to(device)
    for p in net[0].parameters():
        p.requires_grad = False
    x = nbcnn.asarray(floats(np.random.default_rng(0), (1, 2, 4, 4)), device)
    y = net(x)
    before = [nbcnn.to_numpy(p.grad) for p in net[0].parameters()]

    def conv2d_backward(x, w, dy, stride, pad, dx, dw, db, ws, groups=1):
        assert dx is None and dw is None and db is None, "conv2d_backward was given gradients to compute"
    monkeypatch.setattr(type(nbcnn.get_backend(device)), "conv2d_backward", staticmethod(conv2d_backward))
    assert net.backward(nbcnn.asarray(np.ones(tuple(y.shape), np.float32), device), input_grad=False) is None
    for p, b in zip(net[0].parameters(), before):
        assert_close(p.grad, b, exact=True)
    assert np.abs(nbcnn.to_numpy(net[2].weight.grad)).sum() > 0  # the rest of the network still learns


def test_a_frozen_prefix_of_a_sequential_runs_no_backward(monkeypatch):
    """Without the input's gradient, the layers before the first trainable one need no gradient
    (head-only fine-tuning): their backward is not run, and the trainable layers' gradients are
    those of the full backward."""
    def net():
        nbcnn.manual_seed(5)
        return nbcnn.Sequential(nbcnn.Conv2d(2, 3, 3), nbcnn.ReLU(), nbcnn.Flatten(), nbcnn.Linear(12, 4),
                                nbcnn.ReLU(), nbcnn.Linear(4, 2)).to("cpu", np.float64)
    x = nbcnn.asarray(np.random.default_rng(0).standard_normal((2, 2, 4, 4)), "cpu")
    dy = nbcnn.asarray(np.random.default_rng(1).standard_normal((2, 2)), "cpu")
    full, frozen = net(), net()
    full(x)
    full.backward(dy, input_grad=False)
    for layer in (frozen[0], frozen[3]):
        for p in layer.parameters():
            p.requires_grad = False
    frozen(x)
    for layer in frozen.modules[:4]:
        monkeypatch.setattr(layer, "backward", lambda *a, **k: pytest.fail("a frozen prefix layer's backward ran"))
    assert frozen.backward(dy, input_grad=False) is None
    for name in ("weight", "bias"):
        assert_close(getattr(frozen[5], name).grad, getattr(full[5], name).grad, exact=True, what=name)
