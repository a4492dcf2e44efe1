"""The public API: module behaviour, AlexNet's structure, state_dict, and clear errors for bad input."""

import subprocess
import sys

import numpy as np
import pytest

import nbcnn
from devices import DEVICES
from nbcnn.models import alexnet


def tiny_net():
    return nbcnn.Sequential(nbcnn.Conv2d(3, 4, 3, padding=1), nbcnn.ReLU(), nbcnn.MaxPool2d(2),
                            nbcnn.Flatten(), nbcnn.Dropout(0.5), nbcnn.Linear(4 * 4 * 4, 5))


def x_of(shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# -- behaviour ---------------------------------------------------------------------------

def test_modules_start_in_training_mode_and_switch_recursively():
    net = tiny_net()
    assert net.training and all(m.training for m in net.modules)
    net.eval()
    assert not net.training and not any(m.training for m in net.modules)
    assert net.train() is net and all(m.training for m in net.modules)


def test_state_dict_keys_are_pytorch_names():
    assert list(tiny_net().state_dict()) == ["0.weight", "0.bias", "5.weight", "5.bias"]


def test_state_dict_round_trips_into_a_fresh_model():
    a, b = tiny_net(), tiny_net()
    b.load_state_dict(a.state_dict())
    x = nbcnn.asarray(x_of((2, 3, 8, 8)))
    a.eval(), b.eval()
    np.testing.assert_array_equal(nbcnn.to_numpy(a(x)), nbcnn.to_numpy(b(x)))


def test_kaiming_uniform_init_bounds_like_pytorch():
    nbcnn.manual_seed(0)
    layer = nbcnn.Conv2d(16, 8, 3)
    w = layer.state_dict()["weight"]
    bound = 1 / np.sqrt(16 * 9)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound


def test_manual_seed_makes_init_reproducible():
    nbcnn.manual_seed(7)
    a = tiny_net().state_dict()
    nbcnn.manual_seed(7)
    b = tiny_net().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_alexnet_maps_224_to_55_27_13_6():
    net = alexnet(num_classes=10)
    shapes = dict(net.state_dict())
    assert shapes["0.weight"].shape == (96, 3, 11, 11)
    assert shapes["17.weight"].shape == (4096, 256 * 6 * 6)
    assert shapes["22.weight"].shape == (10, 4096)
    x = nbcnn.asarray(x_of((1, 3, 224, 224)))
    sizes = []
    for m in net.modules:
        x = m(x)
        if isinstance(m, nbcnn.MaxPool2d) or m is net.modules[0]:
            sizes.append(x.shape[-1])
    assert sizes == [55, 27, 13, 6] and x.shape == (1, 10)


def test_alexnet_lrn_is_the_papers():
    lrn = alexnet().modules[2]
    # paper: alpha 1e-4 per squared activation; PyTorch's convention divides alpha by size
    assert (lrn.size, lrn.alpha / lrn.size, lrn.beta, lrn.k) == (5, pytest.approx(1e-4), 0.75, 2.0)


def test_alexnet_paper_init_has_unit_biases_in_conv2_4_5_and_hidden_fc():
    sd = alexnet(num_classes=10, input_size=63, init="paper").state_dict()
    ones = {k for k, v in sd.items() if k.endswith("bias") and np.all(v == 1)}
    assert ones == {"4.bias", "10.bias", "12.bias", "17.bias", "20.bias"}
    assert abs(sd["0.weight"].std() - 0.01) < 1e-3


def test_alexnet_accepts_small_inputs():
    net = alexnet(num_classes=4, input_size=67)
    assert net(nbcnn.asarray(x_of((2, 3, 67, 67)))).shape == (2, 4)


def test_non_contiguous_input_is_made_contiguous():
    net = tiny_net().eval()
    x = x_of((2, 3, 16, 16))
    strided = x[:, :, ::2, ::2]
    np.testing.assert_array_equal(nbcnn.to_numpy(net(strided)),
                                  nbcnn.to_numpy(net(np.ascontiguousarray(strided))))


@pytest.mark.parametrize("device", DEVICES)
def test_a_strided_2d_input_to_linear_is_made_contiguous(device):
    layer = nbcnn.Linear(3, 2).to(device)
    x = x_of((4, 6))
    strided = nbcnn.asarray(x, device)[:, ::2]  # a view of every other column, on the device
    np.testing.assert_array_equal(nbcnn.to_numpy(layer(strided)),
                                  nbcnn.to_numpy(layer(nbcnn.asarray(np.ascontiguousarray(x[:, ::2]), device))))


@pytest.mark.parametrize("device", DEVICES)
def test_sliced_logits_are_a_loss_like_any_other(device):
    z, labels = x_of((6, 5)), nbcnn.asarray([0, 4, 2], device)
    loss, dz = nbcnn.softmax_cross_entropy(nbcnn.asarray(z, device)[::2], labels)
    ref_loss, ref_dz = nbcnn.softmax_cross_entropy(nbcnn.asarray(np.ascontiguousarray(z[::2]), device), labels)
    assert loss == ref_loss
    np.testing.assert_array_equal(nbcnn.to_numpy(dz), nbcnn.to_numpy(ref_dz))


def test_float64_model_runs_in_float64():
    net = tiny_net().to("cpu", np.float64)
    y = net(nbcnn.asarray(x_of((1, 3, 8, 8), np.float64)))
    assert y.dtype == np.float64 and net.state_dict()["0.weight"].dtype == np.float64


# -- clear errors for bad input ---------------------------------------------------------

def test_wrong_rank_names_the_shape():
    with pytest.raises(ValueError, match=r"4-D input, got shape \(3, 8, 8\)"):
        tiny_net()(nbcnn.asarray(x_of((3, 8, 8))))


def test_wrong_channel_count_names_both():
    with pytest.raises(ValueError, match=r"expects 3 input channels, got shape \(1, 2, 8, 8\)"):
        tiny_net()(nbcnn.asarray(x_of((1, 2, 8, 8))))


def test_wrong_feature_count_names_both():
    with pytest.raises(ValueError, match="expects 7 input features"):
        nbcnn.Linear(7, 2)(nbcnn.asarray(x_of((1, 6))))


def test_dtype_not_matching_parameters_is_a_type_error():
    with pytest.raises(TypeError, match="float32 parameters but its input is float64"):
        tiny_net()(nbcnn.asarray(x_of((1, 3, 8, 8), np.float64)))


def test_integer_images_are_a_type_error():
    with pytest.raises(TypeError, match="float32 or float64, got int64"):
        tiny_net()(np.zeros((1, 3, 8, 8), np.int64))


def test_input_smaller_than_the_kernel_is_named():
    with pytest.raises(ValueError, match="smaller than the 5x5 kernel"):
        nbcnn.Conv2d(1, 1, 5)(nbcnn.asarray(x_of((1, 1, 3, 3))))
    with pytest.raises(ValueError, match="smaller than the 3x3 window"):
        nbcnn.MaxPool2d(3, 2)(nbcnn.asarray(x_of((1, 1, 2, 5))))


def test_nan_logits_are_refused():
    z = x_of((3, 4))
    z[1, 2] = np.nan
    with pytest.raises(nbcnn.NonFiniteLossError):
        nbcnn.softmax_cross_entropy(nbcnn.asarray(z), nbcnn.asarray([0, 1, 2]))


def test_labels_out_of_range_are_named():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got \[4, -1\]"):
        nbcnn.softmax_cross_entropy(nbcnn.asarray(x_of((3, 4))), nbcnn.asarray([4, 0, -1]))


def test_labels_must_match_the_batch_and_be_integers():
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        nbcnn.softmax_cross_entropy(nbcnn.asarray(x_of((3, 4))), nbcnn.asarray([0, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
        nbcnn.softmax_cross_entropy(nbcnn.asarray(x_of((2, 4))), nbcnn.asarray(np.zeros(2, np.float32)))


def test_unknown_device_is_named():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        tiny_net().to("tpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        nbcnn.asarray([1.0], "gpu")


def test_non_array_input_is_named():
    with pytest.raises(ValueError, match="its input is a list"):
        tiny_net()([[1.0]])


def test_state_dict_with_a_missing_key_is_refused():
    sd = tiny_net().state_dict()
    del sd["5.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['5.bias'\]"):
        tiny_net().load_state_dict(sd)


def test_state_dict_with_a_misshaped_key_is_refused():
    sd = tiny_net().state_dict()
    sd["0.weight"] = sd["0.weight"][:2]
    with pytest.raises(ValueError, match=r"state_dict\['0.weight'\] has shape \(2, 3, 3, 3\)"):
        tiny_net().load_state_dict(sd)


@pytest.mark.parametrize("kwargs", [dict(p=1.0), dict(p=-0.1)])
def test_dropout_probability_out_of_range_is_refused(kwargs):
    with pytest.raises(ValueError, match="Dropout probability"):
        nbcnn.Dropout(**kwargs)


def test_asarray_refuses_non_numeric_data():
    with pytest.raises(TypeError, match="float or integer data"):
        nbcnn.asarray(np.array(["a"]))


# -- backward's argument, module reuse, atomic loads ---------------------------------------

LAYERS = {
    "Conv2d": (lambda: nbcnn.Conv2d(3, 4, 3), (2, 3, 8, 8)),
    "Linear": (lambda: nbcnn.Linear(6, 4), (2, 6)),
    "ReLU": (nbcnn.ReLU, (2, 3, 8, 8)),
    "MaxPool2d": (lambda: nbcnn.MaxPool2d(3, 2), (2, 3, 9, 9)),
    "LocalResponseNorm": (lambda: nbcnn.LocalResponseNorm(3), (2, 3, 8, 8)),
    "Dropout": (lambda: nbcnn.Dropout(0.5), (2, 3, 8, 8)),
    "Flatten": (nbcnn.Flatten, (2, 3, 8, 8)),
    "AvgPool2d": (lambda: nbcnn.AvgPool2d(3, 2, 1), (2, 3, 9, 9)),
    "AdaptiveAvgPool2d": (lambda: nbcnn.AdaptiveAvgPool2d(2), (2, 3, 5, 5)),
    "Identity": (nbcnn.Identity, (2, 3, 8, 8)),
    "Residual": (lambda: nbcnn.Residual(nbcnn.Conv2d(3, 3, 3, padding=1)), (2, 3, 8, 8)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_backward_before_forward_is_named(name):
    make, _ = LAYERS[name]
    with pytest.raises(RuntimeError, match=f"{name}.backward called before forward"):
        make().backward(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("name", LAYERS)
def test_backward_refuses_a_gradient_of_the_wrong_shape(name):
    make, shape = LAYERS[name]
    layer = make()
    y = layer(nbcnn.asarray(x_of(shape)))
    wrong = np.zeros(y.shape[:-1] + (y.shape[-1] + 1,), np.float32)  # once a segfault or a silent wrong answer
    with pytest.raises(ValueError, match=r"expects a gradient of its output's shape"):
        layer.backward(wrong)


@pytest.mark.parametrize("name", LAYERS)
def test_backward_refuses_a_gradient_of_another_dtype(name):
    make, shape = LAYERS[name]
    layer = make()
    y = layer(nbcnn.asarray(x_of(shape)))
    with pytest.raises(TypeError, match="expects a float32 gradient like its output, got float64"):
        layer.backward(np.zeros(y.shape, np.float64))


def test_backward_takes_a_non_contiguous_gradient():
    layer = nbcnn.ReLU()
    x = x_of((2, 3))
    layer(nbcnn.asarray(x))
    g = np.ones((3, 2), np.float32).T
    np.testing.assert_array_equal(nbcnn.to_numpy(layer.backward(g)), (x > 0).astype(np.float32))


def test_the_same_module_twice_in_a_sequential_is_refused():
    relu = nbcnn.ReLU()
    with pytest.raises(ValueError, match="same module instance twice"):
        nbcnn.Sequential(nbcnn.Linear(5, 3), relu, nbcnn.Linear(3, 3), relu)


def test_a_failed_load_state_dict_changes_nothing():
    net = tiny_net()
    before = net.state_dict()
    sd = {k: np.ones_like(v) for k, v in before.items()}
    sd["5.bias"] = np.zeros(5, np.int64)
    with pytest.raises(TypeError, match=r"state_dict\['5.bias'\] has dtype int64"):
        net.load_state_dict(sd)
    assert all(np.array_equal(before[k], v) for k, v in net.state_dict().items())


def test_empty_batch_in_the_loss_is_named():
    with pytest.raises(ValueError, match="at least one row"):
        nbcnn.softmax_cross_entropy(nbcnn.asarray(np.zeros((0, 3), np.float32)), nbcnn.asarray(np.zeros(0, np.int64)))


def test_sgd_refuses_what_is_not_a_parameter_and_infinite_rates():
    with pytest.raises(TypeError, match="SGD takes nbcnn Parameters"):
        nbcnn.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        nbcnn.SGD(tiny_net().parameters(), lr=float("inf"))


@pytest.mark.parametrize("make", [lambda: nbcnn.Conv2d(3.7, 4, 3), lambda: nbcnn.Linear(4, 0),
                                  lambda: nbcnn.LocalResponseNorm(2.5), lambda: nbcnn.LocalResponseNorm(3, k=float("nan"))])
def test_layer_arguments_are_not_silently_truncated(make):
    with pytest.raises(ValueError):
        make()


def test_a_cpu_run_does_not_import_numba_cuda():
    """Start-up: importing numba.cuda takes about a second (docs/performance.md), so a CPU
    forward and backward, run in a fresh process, must not import it."""
    code = ("import sys, numpy as np, nbcnn\n"
            "net = nbcnn.models.alexnet_small(10, in_channels=1, input_size=28)\n"
            "y = net(nbcnn.asarray(np.zeros((2, 1, 28, 28), np.float32)))\n"
            "net.backward(y, input_grad=False)\n"
            "print(sorted(m for m in sys.modules if m.startswith('numba.cuda')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
