"""Residual connections: nbcnn.Residual(body, shortcut, after) and named children (Sequential from an
OrderedDict), so that torchvision's BasicBlock is a few lines with torchvision's state_dict keys.

Forward against the branches run apart and against PyTorch (where importable), backward
against float64 finite differences and against PyTorch's autograd, CPU against CUDA.
"""

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbcnn
import reference as ref
from devices import DEVICES, ON_GPU
from nbcnn.testing import assert_backends_agree, assert_close
from test_ops import check_gradients

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not importable: no torch twin to compare with")
cuda_only = DEVICES[1].marks[0]  # skipped where no CUDA backend can be made


def floats(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def basic_block(inplanes, planes, stride=1):
    """torchvision's BasicBlock, relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)), with its names;
    Identity stands where BatchNorm2d goes."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = OrderedDict(downsample=nbcnn.Sequential(nbcnn.Conv2d(inplanes, planes, 1, stride), nbcnn.Identity()))
    return nbcnn.Residual(
        OrderedDict(conv1=nbcnn.Conv2d(inplanes, planes, 3, stride, 1), bn1=nbcnn.Identity(), relu=nbcnn.ReLU(),
                    conv2=nbcnn.Conv2d(planes, planes, 3, 1, 1), bn2=nbcnn.Identity()),
        downsample, after=nbcnn.ReLU())


def small_resnet():
    """A stem, two stages of two blocks (the second stage downsampling), global average pooling, fc."""
    return nbcnn.Sequential(OrderedDict(
        conv1=nbcnn.Conv2d(2, 4, 3, 1, 1), relu=nbcnn.ReLU(), maxpool=nbcnn.MaxPool2d(3, 2, 1),
        layer1=nbcnn.Sequential(basic_block(4, 4), basic_block(4, 4)),
        layer2=nbcnn.Sequential(basic_block(4, 6, 2), basic_block(6, 6)),
        avgpool=nbcnn.AdaptiveAvgPool2d(1), flatten=nbcnn.Flatten(), fc=nbcnn.Linear(6, 3)))


# -- names ---------------------------------------------------------------------------------------

def test_a_basic_block_has_torchvisions_keys_and_nests_by_name():
    block = basic_block(4, 6, 2)
    assert list(block.state_dict()) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                        "downsample.0.weight", "downsample.0.bias"]
    assert block.conv1 is block["conv1"] and isinstance(block.downsample, nbcnn.Sequential)
    keys = list(small_resnet().state_dict())
    assert keys[:2] == ["conv1.weight", "conv1.bias"]
    assert "layer1.0.conv1.weight" in keys and "layer2.0.downsample.0.weight" in keys and keys[-1] == "fc.bias"
    assert "layer1.0.downsample.0.weight" not in keys  # no projection where the shapes already match
    conv = nbcnn.Conv2d(4, 6, 3, 2, 1)
    block.conv1 = conv  # replaces the child of that name, as in PyTorch
    assert block.conv1 is conv and list(block.state_dict())[0] == "conv1.weight"
    with pytest.raises(ValueError, match="Residual got the same module instance twice"):
        block.conv2 = block.downsample
    assert block.conv2 is not block.downsample  # a refused replacement changes nothing


def test_sequential_takes_named_children_like_torch():
    seq = nbcnn.Sequential(OrderedDict(conv=nbcnn.Conv2d(1, 2, 3), act=nbcnn.ReLU()))
    assert list(seq.state_dict()) == ["conv.weight", "conv.bias"]
    assert seq.conv is seq["conv"] is seq[0] and seq.act is seq[1] and len(seq) == 2
    assert "(conv): Conv2d" in repr(seq)
    with pytest.raises(AttributeError, match="no attribute or child 'bn'"):
        seq.bn
    with pytest.raises(KeyError, match="no child named 'bn'"):
        seq["bn"]
    head = nbcnn.Linear(2, 2)
    seq.act = head  # replaces the child of that name, as in PyTorch
    assert seq[1] is head and list(seq.state_dict()) == ["conv.weight", "conv.bias", "act.weight", "act.bias"]
    with pytest.raises(ValueError, match="same module instance twice"):
        seq.act = seq.conv
    seq.note = "any other attribute is a plain one"
    assert seq.note.startswith("any") and len(seq) == 2


def test_a_part_given_as_a_module_is_named_by_its_role():
    block = nbcnn.Residual(nbcnn.Conv2d(2, 2, 3, padding=1), nbcnn.Conv2d(2, 2, 1), after=nbcnn.Sequential(nbcnn.ReLU()))
    assert list(block.state_dict()) == ["body.weight", "body.bias", "shortcut.weight", "shortcut.bias"]


@needs_torch
def test_keys_match_a_torch_block_written_like_torchvisions():
    nn = torch.nn

    class TorchBasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock's attributes and forward
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1)
            self.bn1 = nn.Identity()
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1)
            self.bn2 = nn.Identity()
            self.downsample = downsample

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    theirs = nn.Sequential(TorchBasicBlock(4, 6, 2, nn.Sequential(nn.Conv2d(4, 6, 1, 2), nn.Identity())),
                           TorchBasicBlock(6, 6)).double()
    ours = nbcnn.Sequential(basic_block(4, 6, 2), basic_block(6, 6)).to(dtype=np.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x, g = floats(0, (2, 4, 7, 6), np.float64), floats(1, (2, 6, 4, 3), np.float64)
    xt = torch.from_numpy(x).requires_grad_()
    yt = theirs(xt)
    yt.backward(torch.from_numpy(g))
    assert_close(ours(nbcnn.asarray(x)), yt.detach().numpy())
    assert_close(ours.backward(nbcnn.asarray(g)), xt.grad.numpy())
    grads = {name: p.grad.numpy() for name, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        assert_close(p.grad, grads[name], what=name)


# -- forward and backward ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_forward_is_the_sum_of_the_branches(device):
    body, shortcut = nbcnn.Conv2d(2, 3, 3, padding=1), nbcnn.Conv2d(2, 3, 1)
    block = nbcnn.Residual(body, shortcut).to(device, np.float64)
    x = floats(2, (2, 2, 5, 4), np.float64)
    sd = block.state_dict()
    expected = ref.conv2d(x, sd["body.weight"], sd["body.bias"], 1, 1) + ref.conv2d(x, sd["shortcut.weight"], sd["shortcut.bias"], 1, 0)
    assert_close(block(nbcnn.asarray(x, device)), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_sums_the_input_gradients_of_both_branches(device):
    nbcnn.manual_seed(3)
    block = nbcnn.Residual(nbcnn.Sequential(nbcnn.Conv2d(2, 2, 3, padding=1), nbcnn.ReLU()), nbcnn.Conv2d(2, 2, 1))
    block.to(device, np.float64)
    x, g = floats(3, (1, 2, 4, 4), np.float64), floats(4, (1, 2, 4, 4), np.float64)
    xd, gd = nbcnn.asarray(x, device), nbcnn.asarray(g, device)
    block(xd)
    dx = nbcnn.to_numpy(block.backward(gd))
    grads = {name: nbcnn.to_numpy(p.grad) for name, p in block.named_parameters()}
    block.zero_grad()
    block.body(xd), block.shortcut(xd)  # each branch alone
    apart = nbcnn.to_numpy(block.body.backward(gd)) + nbcnn.to_numpy(block.shortcut.backward(gd))
    assert_close(dx, apart)
    for name, p in block.named_parameters():  # both branches' parameters got their gradients
        assert np.any(grads[name]) and np.array_equal(grads[name], nbcnn.to_numpy(p.grad)), name


@pytest.mark.parametrize("device", DEVICES)
def test_an_identity_shortcut_leaves_the_input_and_the_gradient_untouched(device):
    x = floats(5, (2, 3), np.float64)
    block = nbcnn.Residual(nbcnn.Identity()).to(device, np.float64)  # y = x + x
    xd = nbcnn.asarray(x, device)
    assert_close(block(xd), 2 * x, exact=True)
    gd = nbcnn.asarray(x + 1, device)
    assert_close(block.backward(gd), 2 * (x + 1), exact=True)
    assert_close(xd, x, exact=True)      # the sums went to new arrays, not into a branch's result
    assert_close(gd, x + 1, exact=True)


@pytest.mark.parametrize("device", DEVICES)
def test_residual_backward_matches_finite_differences(device):
    rng = np.random.default_rng(6)
    nbcnn.manual_seed(6)
    block = nbcnn.Residual(OrderedDict(conv1=nbcnn.Conv2d(2, 3, 3, 2, 1), relu=nbcnn.ReLU(), conv2=nbcnn.Conv2d(3, 3, 3, 1, 1)),
                           nbcnn.Conv2d(2, 3, 1, 2), after=nbcnn.Sequential(nbcnn.Conv2d(3, 2, 1), nbcnn.ReLU()))
    check_gradients(device, block, rng.standard_normal((1, 2, 4, 4)), rng, directions=1)


def test_a_small_resnet_backward_matches_finite_differences():
    rng = np.random.default_rng(7)
    nbcnn.manual_seed(7)
    check_gradients("cpu", small_resnet(), rng.standard_normal((2, 2, 8, 8)), rng, directions=1)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_without_input_grad_gives_the_same_parameter_gradients(device):
    nbcnn.manual_seed(8)
    net = nbcnn.Sequential(basic_block(2, 3, 2), nbcnn.Flatten()).to(device)
    x, g = nbcnn.asarray(floats(8, (1, 2, 4, 4)), device), nbcnn.asarray(floats(9, (1, 12)), device)
    net(x)
    net.backward(g)
    full = {k: nbcnn.to_numpy(p.grad) for k, p in net.named_parameters()}
    net.zero_grad()
    net(x)
    assert net.backward(g, input_grad=False) is None
    for k, p in net.named_parameters():
        np.testing.assert_array_equal(nbcnn.to_numpy(p.grad), full[k], err_msg=k)


def test_train_and_eval_reach_every_part():
    block = nbcnn.Residual(OrderedDict(drop=nbcnn.Dropout(0.5)), nbcnn.Dropout(0.5), after=nbcnn.Dropout(0.5))
    block.eval()
    assert not any(m.training for m in (block.drop, block.shortcut, block.after))
    x = floats(10, (4, 8))
    np.testing.assert_array_equal(nbcnn.to_numpy(block(nbcnn.asarray(x))), 2 * x)


# -- CPU against CUDA ------------------------------------------------------------------------------

@cuda_only
@settings(max_examples=25 if ON_GPU else 6, deadline=None)
@given(shape=st.lists(st.integers(1, 5 + 40 * ON_GPU), min_size=1, max_size=4),
       dt=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31))
def test_add_out_agrees(shape, dt, seed):
    def op(be, a, b):
        y = be.empty(a.shape, a.dtype)
        be.add_out(a, b, y)
        return y

    assert_backends_agree(op, floats(seed, shape, dt), floats(seed + 1, shape, dt), exact=True)


@cuda_only
def test_a_residual_network_agrees_across_devices():
    def net():  # a block with a projection shortcut, then a head: the simulator is slow
        return nbcnn.Sequential(basic_block(2, 3, 2), nbcnn.AdaptiveAvgPool2d(1), nbcnn.Flatten(), nbcnn.Linear(3, 3))

    nbcnn.manual_seed(11)
    cpu = net()
    gpu = net().to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    x, g = floats(11, (1, 2, 4, 4)), floats(12, (1, 3))
    outs = []
    for net, device in ((cpu, "cpu"), (gpu, "cuda")):
        y = nbcnn.to_numpy(net(nbcnn.asarray(x, device)))
        dx = nbcnn.to_numpy(net.backward(nbcnn.asarray(g, device)))
        outs.append([y, dx] + [nbcnn.to_numpy(p.grad) for p in net.parameters()])
    for i, (a, b) in enumerate(zip(*outs)):
        assert_close(b, a, rtol=1e-4, what=f"output {i}")


# -- bad input -------------------------------------------------------------------------------------

def test_branches_of_different_shapes_are_named():
    block = nbcnn.Residual(nbcnn.Conv2d(2, 3, 3))
    with pytest.raises(ValueError, match=r"body gives float32 of shape \(1, 3, 3, 3\) but the identity gives "
                                         r"float32 of shape \(1, 2, 5, 5\)"):
        block(nbcnn.asarray(floats(0, (1, 2, 5, 5))))
    block = nbcnn.Residual(nbcnn.Conv2d(2, 3, 3, padding=1), nbcnn.Conv2d(2, 3, 1, 2))
    with pytest.raises(ValueError, match=r"\(1, 3, 5, 5\) but the shortcut gives float32 of shape \(1, 3, 3, 3\)"):
        block(nbcnn.asarray(floats(0, (1, 2, 5, 5))))


def test_the_same_instance_twice_is_refused_anywhere_in_the_tree():
    conv = nbcnn.Conv2d(2, 2, 1)
    with pytest.raises(ValueError, match="Residual got the same module instance twice"):
        nbcnn.Residual(conv, conv)
    with pytest.raises(ValueError, match="Residual got the same module instance twice"):
        nbcnn.Residual(nbcnn.Sequential(nbcnn.ReLU(), conv), OrderedDict(downsample=nbcnn.Sequential(conv)))
    block = nbcnn.Residual(conv)
    with pytest.raises(ValueError, match="Sequential got the same module instance twice"):
        nbcnn.Sequential(block, nbcnn.Sequential(conv))


def test_bad_parts_and_names_are_refused():
    with pytest.raises(ValueError, match=r"one name for two modules: \['conv'\]"):
        nbcnn.Residual(OrderedDict(conv=nbcnn.Conv2d(2, 2, 1)), OrderedDict(conv=nbcnn.Conv2d(2, 2, 1)))
    with pytest.raises(TypeError, match="Residual takes nbcnn modules, got function for 'body'"):
        nbcnn.Residual(lambda x: x)
    with pytest.raises(TypeError, match="Residual takes nbcnn modules, got NoneType for 'body'"):
        nbcnn.Residual(None)
    with pytest.raises(ValueError, match="names must be non-empty strings without '.'"):
        nbcnn.Sequential(OrderedDict([("layer.0", nbcnn.ReLU())]))
    with pytest.raises(TypeError, match="Sequential takes nbcnn modules, got int for 'a'"):
        nbcnn.Sequential(OrderedDict(a=3))
    for name in ("modules", "forward", "body", "_x"):
        with pytest.raises(ValueError, match=f"child name '{name}' is taken by an attribute"):
            nbcnn.Residual(OrderedDict([(name, nbcnn.ReLU())]))
