"""BatchNorm1d/BatchNorm2d and module buffers, on every backend.

Forward in both modes against tests/reference.py, the running statistics against PyTorch's
formula (and against torch.nn.BatchNorm* where torch is importable), gradients against
float64 central differences, state_dict keys and order against PyTorch's, buffers through
`to`, state_dict and an optimiser, and the errors for bad input. The CPU<->CUDA agreement of
the kernels is in test_backends_agree.py, their contract in test_contract.py.
"""

import numpy as np
import pytest

import nbcnn
import reference as ref
from devices import DEVICES, simulated
from nbcnn.testing import assert_close
from test_ops import check_gradients

try:
    import torch
except ImportError:  # the comparisons with PyTorch are skipped, the formula tests still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not importable: nothing to compare with")
SHAPES = {"BatchNorm2d": (3, 2, 4, 5), "BatchNorm1d": (5, 2)}  # for 2 channels
LAYERS = {"BatchNorm2d": nbcnn.BatchNorm2d, "BatchNorm1d": nbcnn.BatchNorm1d}


def floats(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def with_state(layer, device, dtype=np.float32, seed=10, **state):
    """`layer` on `device` with random weight and bias (and the given buffers), for a non-trivial affine map."""
    layer.to(device, dtype)
    sd = layer.state_dict()
    for i, key in enumerate(("weight", "bias")):
        if key in sd:
            sd[key] = floats(sd[key].shape, seed + i)
    sd.update(state)
    layer.load_state_dict(sd)
    return layer


def run_layer(layer, x, device):
    return nbcnn.to_numpy(layer(nbcnn.asarray(x, device)))


# -- forward against NumPy ---------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, shape", [("BatchNorm2d", (3, 2, 4, 5)), ("BatchNorm1d", (5, 2)), ("BatchNorm1d", (2, 2, 3))])
def test_training_forward_normalises_with_the_batch_statistics(device, kind, shape):
    x = 3 * floats(shape) + 5  # a mean far from zero
    layer = with_state(LAYERS[kind](2, eps=1e-3), device)
    sd = layer.state_dict()
    assert_close(run_layer(layer, x, device), ref.batchnorm(x.astype(np.float64), sd["weight"], sd["bias"], 1e-3),
                 rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["BatchNorm2d", "BatchNorm1d"])
def test_eval_forward_normalises_with_the_running_statistics(device, kind):
    x = floats(SHAPES[kind])
    rm, rv = floats((2,), 1), 0.5 + floats((2,), 2) ** 2
    layer = with_state(LAYERS[kind](2), device, running_mean=rm, running_var=rv).eval()
    sd = layer.state_dict()
    before = {k: v.copy() for k, v in sd.items()}
    assert_close(run_layer(layer, x, device), ref.batchnorm(x.astype(np.float64), sd["weight"], sd["bias"], 1e-5, rm, rv),
                 rtol=1e-5)
    for key, value in layer.state_dict().items():  # eval reads the running statistics, counts no batch
        assert np.array_equal(value, before[key]), key


@pytest.mark.parametrize("device", DEVICES)
def test_a_single_value_per_channel_is_fine_in_eval(device):
    layer = nbcnn.BatchNorm1d(3).to(device).eval()
    x = floats((1, 3))
    assert_close(run_layer(layer, x, device), x / np.sqrt(1 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_affine_false_has_no_weight_or_bias_and_only_normalises(device):
    layer = nbcnn.BatchNorm2d(2, affine=False).to(device)
    assert layer.parameters() == [] and layer.weight is None and layer.bias is None
    assert list(layer.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]
    x = 2 * floats((2, 2, 3, 3)) - 1
    assert_close(run_layer(layer, x, device), ref.batchnorm(x.astype(np.float64), np.ones(2), np.zeros(2), 1e-5),
                 rtol=1e-5)
    dx = nbcnn.to_numpy(layer.backward(nbcnn.asarray(floats(x.shape, 1), device)))  # no parameter gradient to keep
    assert dx.shape == x.shape and np.isfinite(dx).all()


@pytest.mark.parametrize("device", DEVICES)
def test_without_running_statistics_eval_uses_the_batch_statistics(device):
    layer = with_state(nbcnn.BatchNorm2d(2, track_running_stats=False), device).eval()
    assert list(layer.state_dict()) == ["weight", "bias"] and layer.buffers() == []
    assert layer.running_mean is None and layer.num_batches_tracked is None
    x = floats((2, 2, 3, 3))
    sd = layer.state_dict()
    assert_close(run_layer(layer, x, device), ref.batchnorm(x.astype(np.float64), sd["weight"], sd["bias"], 1e-5),
                 rtol=1e-5)


# -- running statistics ---------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
def test_running_statistics_follow_pytorchs_rule_with_the_unbiased_variance(device, momentum):
    layer = nbcnn.BatchNorm2d(2, momentum=momentum).to(device, np.float64)
    rm, rv = np.zeros(2), np.ones(2)
    for step in range(1, 4):
        x = floats((3, 2, 2, 3), step, np.float64) * step + step  # statistics that change from batch to batch
        layer(nbcnn.asarray(x, device))
        factor = 1 / step if momentum is None else momentum  # None: the cumulative average of the batches
        rm, rv = ref.batchnorm_running(rm, rv, x, factor)
        assert_close(layer.running_mean, rm, rtol=1e-14)
        assert_close(layer.running_var, rv, rtol=1e-14)
        count = nbcnn.to_numpy(layer.num_batches_tracked)
        assert count.dtype == np.int64 and count.shape == () and count == step


@needs_torch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, shape, momentum", [("BatchNorm2d", (4, 3, 5, 6), 0.1), ("BatchNorm2d", (2, 3, 3, 3), None),
                                                   ("BatchNorm1d", (6, 3), 0.3), ("BatchNorm1d", (2, 3, 4), 0.1)])
def test_training_eval_and_gradients_match_torch(device, kind, shape, momentum):
    ours = with_state(LAYERS[kind](3, momentum=momentum), device)
    theirs = getattr(torch.nn, kind)(3, momentum=momentum)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    for step in range(3):
        x, g = 2 * floats(shape, step) + step, floats(shape, 10 + step)
        xt = torch.from_numpy(x).requires_grad_()
        yt = theirs(xt)
        yt.backward(torch.from_numpy(g))
        y = ours(nbcnn.asarray(x, device))
        dx = ours.backward(nbcnn.asarray(g, device))  # parameter gradients accumulate, as torch's
        assert_close(y, yt.detach().numpy(), rtol=1e-5, what="y")
        assert_close(dx, xt.grad.numpy(), rtol=1e-4, what="dx")
    assert_close(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-5, what="dweight")
    assert_close(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-5, what="dbias")
    for key, value in theirs.state_dict().items():
        assert_close(ours.state_dict()[key], value.numpy(), rtol=1e-6, what=key)
    ours.eval(), theirs.eval()
    x = floats(shape, 99)
    assert_close(run_layer(ours, x, device), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, what="eval y")


# -- gradients against finite differences (float64) -------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, shape", [("BatchNorm2d", (2, 2, 3, 2)), ("BatchNorm1d", (4, 2)), ("BatchNorm1d", (2, 2, 3))])
def test_training_backward_matches_finite_differences(device, kind, shape):
    """dx, dweight and dbias with the batch's statistics, which depend on x."""
    rng = np.random.default_rng(len(shape))
    layer = with_state(LAYERS[kind](2), device, np.float64)
    check_gradients(device, layer, rng.standard_normal(shape) * 2 + 1, rng)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_backward_matches_finite_differences(device):
    """With the running statistics the layer is an affine map per channel (fine-tuning a network in eval)."""
    rng = np.random.default_rng(5)
    layer = with_state(nbcnn.BatchNorm2d(2), device, np.float64, running_mean=rng.standard_normal(2),
                       running_var=0.5 + rng.random(2)).eval()
    check_gradients(device, layer, rng.standard_normal((2, 2, 3, 2)), rng)


@pytest.mark.parametrize("device", DEVICES)
def test_without_affine_or_running_statistics_backward_matches_finite_differences(device):
    rng = np.random.default_rng(6)
    layer = nbcnn.BatchNorm2d(2, affine=False, track_running_stats=False).eval()  # batch statistics even in eval
    check_gradients(device, layer, rng.standard_normal((2, 2, 2, 3)), rng)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_without_input_grad_gives_the_same_parameter_gradients(device):
    layer = with_state(nbcnn.BatchNorm2d(2), device)
    x, g = nbcnn.asarray(floats((2, 2, 3, 3)), device), nbcnn.asarray(floats((2, 2, 3, 3), 1), device)
    layer(x)
    assert layer.backward(g) is not None
    full = [nbcnn.to_numpy(p.grad) for p in layer.parameters()]
    layer.zero_grad()
    layer(x)
    assert layer.backward(g, input_grad=False) is None
    for p, want in zip(layer.parameters(), full):
        assert np.array_equal(nbcnn.to_numpy(p.grad), want)


@pytest.mark.parametrize("device", DEVICES)
def test_results_are_identical_run_to_run(device):
    """Fixed-order float64 sums, no atomics: the same input gives the same bits."""
    shape = (4, 3, 5, 5) if simulated(device) else (16, 8, 17, 17)
    x, g = nbcnn.asarray(floats(shape) * 3 + 1, device), nbcnn.asarray(floats(shape, 1), device)
    runs = []
    for _ in range(2):
        layer = with_state(nbcnn.BatchNorm2d(shape[1]), device)
        y = layer(x)
        dx = layer.backward(g)
        runs.append([nbcnn.to_numpy(a) for a in (y, dx, layer.weight.grad, layer.bias.grad, layer.running_var)])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


# -- buffers: state_dict, to, optimisers ---------------------------------------------------------

def bn_net():
    return nbcnn.Sequential(nbcnn.Conv2d(2, 3, 3, padding=1), nbcnn.BatchNorm2d(3), nbcnn.ReLU(),
                            nbcnn.Flatten(), nbcnn.Linear(3 * 4 * 4, 4), nbcnn.BatchNorm1d(4, affine=False))


BN_NET_KEYS = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
               "4.weight", "4.bias", "5.running_mean", "5.running_var", "5.num_batches_tracked"]


def test_state_dict_lists_parameters_then_buffers_module_by_module_as_pytorch():
    sd = bn_net().state_dict()
    assert list(sd) == BN_NET_KEYS
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"].shape == ()
    assert sd["1.running_var"].dtype == np.float32 and np.array_equal(sd["1.running_var"], np.ones(3))


@needs_torch
def test_state_dict_keys_shapes_and_dtypes_equal_torchs():
    tnet = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 4), torch.nn.BatchNorm1d(4, affine=False))
    theirs = {k: v.numpy() for k, v in tnet.state_dict().items()}
    ours = bn_net().state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape and ours[key].dtype == value.dtype, key
    net = bn_net()
    net.load_state_dict(theirs)  # a torch state_dict saved as numpy arrays loads unchanged
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})  # and back


def test_buffers_are_never_parameters_so_no_optimiser_touches_them():
    net = bn_net()
    assert len(net.parameters()) == 6  # conv, bn1 and linear weights and biases
    assert [name for name, _ in net.named_buffers()] == [k for k in BN_NET_KEYS if k.split(".")[1].startswith(("running", "num"))]
    assert len(net.buffers()) == 6
    opt = nbcnn.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    net.eval()  # running statistics fixed; every parameter gets a gradient
    logits = net(nbcnn.asarray(floats((2, 2, 4, 4)), "cpu"))
    _, dlogits = nbcnn.softmax_cross_entropy(logits, nbcnn.asarray([0, 3], "cpu"))
    net.backward(dlogits)
    before = net.state_dict()
    opt.step()
    after = net.state_dict()
    for key in BN_NET_KEYS:
        assert np.array_equal(after[key], before[key]) == (".running" in key or ".num" in key), key


@pytest.mark.parametrize("device", DEVICES)
def test_buffers_move_with_to_floats_in_the_dtype_and_the_counter_stays_int64(device):
    net = bn_net()
    net(nbcnn.asarray(floats((2, 2, 4, 4))))  # a training step: running statistics not at their initial values
    before = net.state_dict()
    net.to(device, np.float64)
    for name, b in net.named_buffers():
        assert nbcnn.device_of(b) == device, name
        assert b.dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float64), name
    for key, value in net.state_dict().items():
        assert np.array_equal(value, before[key].astype(value.dtype)), key
    net.to("cpu", np.float32)
    y = net(nbcnn.asarray(floats((2, 2, 4, 4))))  # still works after moving back
    assert y.dtype == np.float32 and nbcnn.to_numpy(net[1].num_batches_tracked) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_buffers_round_trip_through_state_dict_across_devices(device):
    src = bn_net()
    for seed in range(2):
        src(nbcnn.asarray(floats((2, 2, 4, 4), seed)))
    dst = bn_net().to(device)
    dst.load_state_dict(src.state_dict())
    for key, value in src.state_dict().items():
        got = dst.state_dict()[key]
        assert np.array_equal(got, value) and got.dtype == value.dtype and got.shape == value.shape, key
    src.eval(), dst.eval()
    x = floats((2, 2, 4, 4), 7)
    assert_close(run_layer(dst, x, device), run_layer(src, x, "cpu"), rtol=1e-5)


def test_checkpoints_keep_the_buffers(tmp_path):
    from nbcnn.checkpoint import load_checkpoint, save_checkpoint
    net = bn_net()
    net(nbcnn.asarray(floats((2, 2, 4, 4))))
    save_checkpoint(tmp_path / "c.ckpt", net, nbcnn.SGD(net.parameters(), lr=0.1))
    back = bn_net()
    load_checkpoint(tmp_path / "c.ckpt", back, restore_rng=False)
    for key, value in net.state_dict().items():
        assert np.array_equal(back.state_dict()[key], value), key


def test_load_state_dict_names_a_missing_misshaped_or_mistyped_buffer():
    sd = bn_net().state_dict()
    del sd["1.num_batches_tracked"]
    with pytest.raises(ValueError, match=r"missing keys \['1.num_batches_tracked'\]"):
        bn_net().load_state_dict(sd)
    sd = bn_net().state_dict()
    sd["1.running_mean"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"state_dict\['1.running_mean'\] has shape \(4,\), the model's buffer has shape \(3,\)"):
        bn_net().load_state_dict(sd)
    sd = bn_net().state_dict()
    sd["1.num_batches_tracked"] = np.array(2.5)
    with pytest.raises(TypeError, match=r"state_dict\['1.num_batches_tracked'\] has dtype float64, expected integers"):
        bn_net().load_state_dict(sd)
    sd = bn_net().state_dict()
    sd["5.running_var"] = np.ones(4, np.int64)
    with pytest.raises(TypeError, match=r"state_dict\['5.running_var'\] has dtype int64, expected floats"):
        bn_net().load_state_dict(sd)


def test_register_buffer_refuses_what_is_neither_float_nor_integer():
    with pytest.raises(TypeError, match="buffer 'mask' must hold floats or integers"):
        nbcnn.Module().register_buffer("mask", np.array(["a"]))


# -- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, shape", [("BatchNorm1d", (1, 3)), ("BatchNorm2d", (1, 3, 1, 1)), ("BatchNorm1d", (1, 3, 1))])
def test_one_value_per_channel_in_training_is_refused_as_pytorch_does(device, kind, shape):
    layer = LAYERS[kind](3).to(device)
    with pytest.raises(ValueError, match=r"expected more than 1 value per channel when training, got input shape"):
        layer(nbcnn.asarray(floats(shape), device))
    assert nbcnn.to_numpy(layer.num_batches_tracked) == 0  # refused before counting a batch


@pytest.mark.parametrize("kind, shape, message", [
    ("BatchNorm2d", (2, 4, 3, 3), r"BatchNorm2d expects 3 channels, got shape \(2, 4, 3, 3\)"),
    ("BatchNorm1d", (2, 2), r"BatchNorm1d expects 3 channels, got shape \(2, 2\)"),
    ("BatchNorm2d", (2, 3, 3), r"BatchNorm2d expects a 4-D input, got shape \(2, 3, 3\)"),
    ("BatchNorm1d", (2, 3, 3, 3), r"BatchNorm1d expects a 2-D or 3-D input, got shape \(2, 3, 3, 3\)"),
])
def test_a_wrong_channel_count_or_rank_is_a_clear_error(kind, shape, message):
    with pytest.raises(ValueError, match=message):
        LAYERS[kind](3)(nbcnn.asarray(floats(shape)))


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        nbcnn.BatchNorm2d(0)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\] or None"):
        nbcnn.BatchNorm2d(3, momentum=-0.1)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\] or None"):
        nbcnn.BatchNorm2d(3, momentum="0.1")
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        nbcnn.BatchNorm1d(3, eps=float("nan"))


def test_a_float64_input_to_a_float32_layer_without_parameters_is_a_type_error():
    with pytest.raises(TypeError, match="float32 buffers but its input is float64"):
        nbcnn.BatchNorm2d(2, affine=False)(nbcnn.asarray(floats((2, 2, 2, 2), dtype=np.float64)))


def test_repr_reads_as_pytorchs():
    assert repr(nbcnn.BatchNorm2d(64)) == "BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
