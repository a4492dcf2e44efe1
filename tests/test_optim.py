"""nbcnn's optimisers (nbcnn/optim.py): each rule over several steps against its formula in NumPy
(tests/reference.py) and against torch.optim where torch is importable, on every backend;
parameter groups, frozen parameters, state_dict round trips (torch's layout, the SGD format of
before), moving between devices, and the errors bad hyper-parameters get.

The op-level CPU<->CUDA bit-for-bit agreement of the update kernels is in test_backends_agree.py.
"""

import math

import numpy as np
import pytest

import nbcnn
import reference as ref
from devices import DEVICES
from nbcnn.testing import assert_close

STEPS = 4
# (constructor, keyword arguments): every rule and every kernel variant
CONFIGS = [
    (nbcnn.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-2)),
    (nbcnn.Adam, dict(lr=0.01)),
    (nbcnn.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    (nbcnn.AdamW, dict(lr=0.01)),
    (nbcnn.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (nbcnn.RMSprop, dict(lr=0.01)),
    (nbcnn.RMSprop, dict(lr=0.01, alpha=0.9, weight_decay=0.1, centered=True)),
    (nbcnn.RMSprop, dict(lr=0.01, momentum=0.9)),
    (nbcnn.RMSprop, dict(lr=0.01, eps=1e-3, momentum=0.5, centered=True)),
]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for cls, kw in CONFIGS]


def gradients(shapes, steps=STEPS, seed=0):
    """steps lists of one float64 gradient per shape."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]


def layer(device, dtype=np.float64):
    nbcnn.manual_seed(0)
    return nbcnn.Linear(3, 2).to(device, dtype)  # a weight (2, 3) and a bias (2,): tiny for the simulator


def run(opt, params, grads):
    """opt.step() once per entry of grads, each parameter's gradient set from it."""
    for step in grads:
        for p, g in zip(params, step):
            p.grad = nbcnn.asarray(g.astype(p.dtype), p.backend.name)
        opt.step()


def reference_steps(cls, kw, w, grads):
    """The parameters after the steps, by the formulas of tests/reference.py, in float64."""
    d = {**{"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8,
            "amsgrad": False, "alpha": 0.99, "centered": False},
         **({"weight_decay": 1e-2} if cls is nbcnn.AdamW else {}), **kw}
    out = []
    for i, w in enumerate(w):
        zeros = np.zeros_like(w)
        if cls is nbcnn.SGD:
            v = zeros
            for t, step in enumerate(grads):
                w, v = ref.sgd(w, step[i], v, d["lr"], d["momentum"], d["weight_decay"])
        elif cls in (nbcnn.Adam, nbcnn.AdamW):
            m, v, v_max = zeros, zeros, zeros if d["amsgrad"] else None
            for t, step in enumerate(grads, 1):
                w, m, v, v_max = ref.adam(w, step[i], m, v, v_max, t, d["lr"], *d["betas"], d["eps"],
                                          d["weight_decay"], cls is nbcnn.AdamW)
        else:
            sq, ga, buf = zeros, zeros if d["centered"] else None, zeros if d["momentum"] else None
            for step in grads:
                w, sq, ga, buf = ref.rmsprop(w, step[i], sq, ga, buf, d["lr"], d["alpha"], d["eps"],
                                             d["weight_decay"], d["momentum"])
        out.append(w)
    return out


# -- the rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls, kw", CONFIGS, ids=IDS)
def test_steps_follow_the_formula(device, cls, kw):
    net = layer(device)
    params = net.parameters()
    start = [nbcnn.to_numpy(p.data) for p in params]
    grads = gradients([p.shape for p in params])
    run(cls(params, **kw), params, grads)
    for p, want in zip(params, reference_steps(cls, kw, start, grads)):
        assert_close(p.data, want, rtol=1e-13)


TORCH_DTYPES = [(np.float64, 1e-13), (np.float32, 1e-5)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, rtol", TORCH_DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("cls, kw", CONFIGS, ids=IDS)
def test_steps_match_torch_optim(device, dtype, rtol, cls, kw):
    torch = pytest.importorskip("torch", reason="torch is not installed: only the NumPy formulas check the rules")
    net = layer(device, dtype)
    params = net.parameters()
    tparams = [torch.tensor(nbcnn.to_numpy(p.data), requires_grad=True) for p in params]
    topt = getattr(torch.optim, cls.__name__)(tparams, **kw)
    grads = gradients([p.shape for p in params])
    run(cls(params, **kw), params, grads)
    for step in grads:
        for t, g in zip(tparams, step):
            t.grad = torch.tensor(g.astype(dtype))
        topt.step()
    for p, t in zip(params, tparams):
        assert_close(p.data, t.detach().numpy(), rtol=rtol)


# -- parameter groups and frozen parameters -------------------------------------------------------------

def test_parameter_groups_take_the_defaults_they_do_not_set():
    net = layer("cpu")
    w, b = net.parameters()
    opt = nbcnn.Adam([{"params": [w], "lr": 0.5, "betas": (0.5, 0.9)}, {"params": b}], lr=0.1, eps=1e-6)
    assert [g["params"] for g in opt.param_groups] == [[w], [b]]
    assert [(g["lr"], g["betas"], g["eps"]) for g in opt.param_groups] == [(0.5, (0.5, 0.9), 1e-6), (0.1, (0.9, 0.999), 1e-6)]
    assert opt.lr == 0.5  # the first group's
    opt.lr = 0.01
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]


@pytest.mark.parametrize("device", DEVICES)
def test_each_parameter_group_follows_its_own_hyper_parameters(device):
    net = layer(device)
    w, b = net.parameters()
    start = [nbcnn.to_numpy(p.data) for p in (w, b)]
    grads = gradients([w.shape, b.shape])
    opt = nbcnn.RMSprop([{"params": [w], "lr": 0.05, "centered": True}, {"params": [b], "momentum": 0.9}], lr=0.01)
    run(opt, [w, b], grads)
    assert_close(w.data, reference_steps(nbcnn.RMSprop, dict(lr=0.05, centered=True), start, grads)[0], rtol=1e-13)
    assert_close(b.data, reference_steps(nbcnn.RMSprop, dict(lr=0.01, momentum=0.9), start, grads)[1], rtol=1e-13)
    assert set(w.state) == {"square_avg", "grad_avg"} and set(b.state) == {"square_avg", "momentum_buffer"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls, kw", CONFIGS[::2], ids=IDS[::2])
def test_a_frozen_parameter_is_left_bitwise_unchanged(device, cls, kw):
    net = layer(device, np.float32)
    w, b = net.parameters()
    w.requires_grad = False
    before = nbcnn.to_numpy(w.data).copy()
    start_b = nbcnn.to_numpy(b.data).astype(np.float64)
    opt = cls(net.parameters(), **{**kw, "weight_decay": 0.1})  # decay would move it even without a gradient
    run(opt, [w, b], gradients([w.shape, b.shape]))
    assert np.array_equal(nbcnn.to_numpy(w.data).view(np.uint32), before.view(np.uint32))
    assert w.state == {} and w not in opt.steps
    assert not np.allclose(nbcnn.to_numpy(b.data), start_b)  # the other one learns


def test_parameters_require_gradients_by_default():
    assert all(p.requires_grad is True for p in layer("cpu").parameters())


# -- state_dict --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls, kw", CONFIGS, ids=IDS)
def test_a_state_dict_round_trip_continues_identically(device, cls, kw):
    grads = gradients([(2, 3), (2,)], steps=5)
    net = layer(device, np.float32)
    opt = cls(net.parameters(), **kw)
    run(opt, net.parameters(), grads[:2])
    saved_net, saved_opt = net.state_dict(), opt.state_dict()
    run(opt, net.parameters(), grads[2:])

    other = layer(device, np.float32)
    other.load_state_dict(saved_net)
    other_opt = cls(other.parameters(), lr=0.5)  # hyper-parameters come from the state_dict
    other_opt.load_state_dict(saved_opt)
    run(other_opt, other.parameters(), grads[2:])
    for p, q in zip(net.parameters(), other.parameters()):
        assert_close(q.data, p.data, exact=True)


def test_the_state_dict_is_host_data_in_torchs_layout():
    net = layer("cpu")
    opt = nbcnn.Adam(net.parameters(), lr=0.01, amsgrad=True)
    run(opt, net.parameters(), gradients([(2, 3), (2,)], steps=3))
    sd = opt.state_dict()
    assert sd["param_groups"] == [{"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                                   "amsgrad": True, "decoupled_weight_decay": False, "params": [0, 1]}]
    assert set(sd["state"]) == {0, 1} and sd["state"][0]["step"] == 3.0
    assert all(isinstance(sd["state"][i][k], np.ndarray) for i in (0, 1)
               for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))


def test_a_torch_state_dict_loads_and_continues_like_torch():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    grads = gradients([(2, 3), (2,)], steps=5)
    net = layer("cpu")
    tparams = [torch.tensor(nbcnn.to_numpy(p.data), requires_grad=True) for p in net.parameters()]
    topt = torch.optim.AdamW(tparams, lr=0.01, amsgrad=True)
    for step in grads[:2]:
        for t, g in zip(tparams, step):
            t.grad = torch.tensor(g)
        topt.step()
    net.load_state_dict({k: t.detach().numpy().copy() for k, t in zip(net.state_dict(), tparams)})
    sd = topt.state_dict()
    host = {"state": {i: {k: v.numpy() for k, v in s.items()} for i, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}
    opt = nbcnn.AdamW(net.parameters())
    opt.load_state_dict(host)
    assert opt.lr == 0.01 and opt.param_groups[0]["amsgrad"] is True
    run(opt, net.parameters(), grads[2:])
    for step in grads[2:]:
        for t, g in zip(tparams, step):
            t.grad = torch.tensor(g)
        topt.step()
    for p, t in zip(net.parameters(), tparams):
        assert_close(p.data, t.detach().numpy(), rtol=1e-13)


def test_an_sgd_state_dict_of_the_format_before_groups_still_loads():
    grads = gradients([(2, 3), (2,)], steps=4)
    net = layer("cpu")
    opt = nbcnn.SGD(net.parameters(), lr=0.1, momentum=0.9)
    run(opt, net.parameters(), grads[:2])
    old = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,  # what nbcnn's SGD.state_dict() returned before
           "momentum_buffers": [nbcnn.to_numpy(p.state["momentum_buffer"]) for p in net.parameters()]}
    saved = net.state_dict()
    run(opt, net.parameters(), grads[2:])

    other = layer("cpu")
    other.load_state_dict(saved)
    other_opt = nbcnn.SGD(other.parameters(), lr=1.0)
    other_opt.load_state_dict(old)
    assert other_opt.lr == 0.1
    run(other_opt, other.parameters(), grads[2:])
    for p, q in zip(net.parameters(), other.parameters()):
        assert_close(q.data, p.data, exact=True)


def test_a_checkpoint_restores_adam_exactly(tmp_path):
    from nbcnn.checkpoint import load_checkpoint, save_checkpoint
    grads = gradients([(2, 3), (2,)], steps=4)
    net = layer("cpu", np.float32)
    opt = nbcnn.Adam(net.parameters(), lr=0.01)
    run(opt, net.parameters(), grads[:2])
    save_checkpoint(str(tmp_path / "a.ckpt"), net, opt)
    run(opt, net.parameters(), grads[2:])
    other = layer("cpu", np.float32)
    other_opt = nbcnn.Adam(other.parameters())
    load_checkpoint(str(tmp_path / "a.ckpt"), other, other_opt)
    run(other_opt, other.parameters(), grads[2:])
    for p, q in zip(net.parameters(), other.parameters()):
        assert_close(q.data, p.data, exact=True)


@pytest.mark.parametrize("device", DEVICES[1:])
@pytest.mark.parametrize("cls, kw", [CONFIGS[2], CONFIGS[8]], ids=[IDS[2], IDS[8]])
def test_optimiser_state_moves_with_the_model(device, cls, kw):
    """Steps on the CPU, then the model moved to CUDA: the same bits as all steps on the CPU."""
    grads = gradients([(2, 3), (2,)], steps=4)
    results = []
    for move in (False, True):
        net = layer("cpu", np.float32)
        opt = cls(net.parameters(), **kw)
        run(opt, net.parameters(), grads[:2])
        if move:
            net.to(device)
        run(opt, net.parameters(), grads[2:])
        results.append([nbcnn.to_numpy(p.data) for p in net.parameters()])
    for a, b in zip(*results):
        assert_close(b, a, exact=True)


def test_a_new_optimiser_starts_from_fresh_state():
    """As in torch: what an earlier optimiser left in a parameter's state is not reused."""
    grads = gradients([(2, 3), (2,)], steps=2)
    a, b = layer("cpu"), layer("cpu")
    run(nbcnn.SGD(a.parameters(), lr=0.1, momentum=0.9), a.parameters(), grads[:1])  # leaves momentum buffers
    b.load_state_dict(a.state_dict())
    run(nbcnn.RMSprop(a.parameters(), momentum=0.9), a.parameters(), grads[1:])
    run(nbcnn.RMSprop(b.parameters(), momentum=0.9), b.parameters(), grads[1:])
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close(p.data, q.data, exact=True)


# -- bad input -----------------------------------------------------------------------------------------------

BAD = [
    (lambda ps: nbcnn.Adam([]), ValueError, "empty parameter list"),
    (lambda ps: nbcnn.RMSprop([{"params": []}]), ValueError, "empty parameter list"),
    (lambda ps: nbcnn.SGD(ps, lr=-0.1), ValueError, "lr must be a finite number >= 0"),
    (lambda ps: nbcnn.Adam(ps, lr=math.nan), ValueError, "lr must be a finite number >= 0"),
    (lambda ps: nbcnn.AdamW(ps, lr=math.inf), ValueError, "lr must be a finite number >= 0"),
    (lambda ps: nbcnn.Adam(ps, betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\)"),
    (lambda ps: nbcnn.Adam(ps, betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
    (lambda ps: nbcnn.Adam(ps, betas=(0.9, math.nan)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
    (lambda ps: nbcnn.Adam(ps, betas=0.9), ValueError, "betas must be a pair"),
    (lambda ps: nbcnn.Adam(ps, eps=0.0), ValueError, "eps must be a finite number > 0"),
    (lambda ps: nbcnn.RMSprop(ps, eps=-1e-8), ValueError, "eps must be a finite number > 0"),
    (lambda ps: nbcnn.AdamW(ps, weight_decay=-0.01), ValueError, "weight_decay must be a finite number >= 0"),
    (lambda ps: nbcnn.RMSprop(ps, alpha=1.5), ValueError, r"alpha must be in \[0, 1\)"),
    (lambda ps: nbcnn.RMSprop(ps, momentum=-0.9), ValueError, "momentum must be a finite number >= 0"),
    (lambda ps: nbcnn.RMSprop(ps, centered="yes"), TypeError, "centered must be True or False"),
    (lambda ps: nbcnn.Adam(ps, lr="0.1"), TypeError, "lr must be a number"),
    (lambda ps: nbcnn.Adam([np.zeros(3)]), TypeError, "takes nbcnn Parameters"),
    (lambda ps: nbcnn.Adam(ps[0]), TypeError, "iterable of Parameters"),
    (lambda ps: nbcnn.Adam([{"lr": 0.1}]), TypeError, "'params' entry"),
    (lambda ps: nbcnn.Adam([{"params": ps}, {"params": ps[:1]}]), ValueError, "more than once"),
    (lambda ps: nbcnn.SGD([{"params": ps[:1], "lr": -1}], lr=0.1), ValueError, "lr must be a finite number >= 0"),
    (lambda ps: nbcnn.SGD([{"params": ps, "nesterov": True}], lr=0.1), ValueError, "has no nesterov=True"),
]


@pytest.mark.parametrize("make, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_hyper_parameters_are_named(make, error, message):
    with pytest.raises(error, match=message):
        make(layer("cpu").parameters())


def test_setting_a_bad_lr_changes_nothing():
    opt = nbcnn.Adam(layer("cpu").parameters(), lr=0.01)
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        opt.lr = -1.0
    assert opt.lr == 0.01


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), "has 2 parameter groups"),
    (lambda sd: sd["param_groups"][0]["params"].pop(), "has 1 parameters"),
    (lambda sd: sd["state"][0].update(exp_avg=np.zeros((3, 2))), r"exp_avg of shape \(3, 2\)"),
    (lambda sd: sd["state"][1].pop("exp_avg_sq"), "no exp_avg_sq"),
    (lambda sd: sd["param_groups"][0].update(lr=-1.0), "lr must be a finite number >= 0"),
    (lambda sd: sd["state"].update({7: {}}), "state for parameter 7"),
    (lambda sd: sd["param_groups"][0].update(maximize=True), "has no maximize=True"),
])
def test_a_state_dict_that_does_not_fit_is_refused_and_changes_nothing(change, message):
    net = layer("cpu")
    opt = nbcnn.Adam(net.parameters(), lr=0.01)
    run(opt, net.parameters(), gradients([(2, 3), (2,)], steps=1))
    sd = opt.state_dict()
    change(sd)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert all(np.array_equal(after["state"][i][k], v) for i, s in before["state"].items() for k, v in s.items())
