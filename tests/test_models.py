"""The model zoo: ResNet-18/34 as torchvision builds them, He et al.'s CIFAR ResNet-20, a small
MobileNet-style network, and AlexNet's builders' bad input.

torchvision is not installed beside this environment's torch (PyPI's torchvision fails to
import beside torch 2.13.0), so the PyTorch side is a copy of torchvision's ResNet in plain
torch.nn below (torchvision/models/resnet.py: conv3x3, conv1x1, BasicBlock, ResNet with its
_make_layer, init and forward), and the key list is torchvision's published resnet18 one.
"""

from collections import OrderedDict

import numpy as np
import pytest

import nbcnn
from devices import _CUDA_SKIP, DEVICES, simulated
from nbcnn.models import ZeroPadShortcut, cifar_resnet, mobilenet_small, resnet, resnet18, resnet20, resnet34
from nbcnn.testing import assert_close

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not importable: no torchvision twin to compare with")

# torchvision.models.resnet18().state_dict(): every key, its shape, in order (122 entries)
RESNET18_KEYS = """
conv1.weight:(64,3,7,7) bn1.weight:(64,) bn1.bias:(64,) bn1.running_mean:(64,) bn1.running_var:(64,)
bn1.num_batches_tracked:() layer1.0.conv1.weight:(64,64,3,3) layer1.0.bn1.weight:(64,) layer1.0.bn1.bias:(64,)
layer1.0.bn1.running_mean:(64,) layer1.0.bn1.running_var:(64,) layer1.0.bn1.num_batches_tracked:()
layer1.0.conv2.weight:(64,64,3,3) layer1.0.bn2.weight:(64,) layer1.0.bn2.bias:(64,)
layer1.0.bn2.running_mean:(64,) layer1.0.bn2.running_var:(64,) layer1.0.bn2.num_batches_tracked:()
layer1.1.conv1.weight:(64,64,3,3) layer1.1.bn1.weight:(64,) layer1.1.bn1.bias:(64,)
layer1.1.bn1.running_mean:(64,) layer1.1.bn1.running_var:(64,) layer1.1.bn1.num_batches_tracked:()
layer1.1.conv2.weight:(64,64,3,3) layer1.1.bn2.weight:(64,) layer1.1.bn2.bias:(64,)
layer1.1.bn2.running_mean:(64,) layer1.1.bn2.running_var:(64,) layer1.1.bn2.num_batches_tracked:()
layer2.0.conv1.weight:(128,64,3,3) layer2.0.bn1.weight:(128,) layer2.0.bn1.bias:(128,)
layer2.0.bn1.running_mean:(128,) layer2.0.bn1.running_var:(128,) layer2.0.bn1.num_batches_tracked:()
layer2.0.conv2.weight:(128,128,3,3) layer2.0.bn2.weight:(128,) layer2.0.bn2.bias:(128,)
layer2.0.bn2.running_mean:(128,) layer2.0.bn2.running_var:(128,) layer2.0.bn2.num_batches_tracked:()
layer2.0.downsample.0.weight:(128,64,1,1) layer2.0.downsample.1.weight:(128,) layer2.0.downsample.1.bias:(128,)
layer2.0.downsample.1.running_mean:(128,) layer2.0.downsample.1.running_var:(128,)
layer2.0.downsample.1.num_batches_tracked:() layer2.1.conv1.weight:(128,128,3,3) layer2.1.bn1.weight:(128,)
layer2.1.bn1.bias:(128,) layer2.1.bn1.running_mean:(128,) layer2.1.bn1.running_var:(128,)
layer2.1.bn1.num_batches_tracked:() layer2.1.conv2.weight:(128,128,3,3) layer2.1.bn2.weight:(128,)
layer2.1.bn2.bias:(128,) layer2.1.bn2.running_mean:(128,) layer2.1.bn2.running_var:(128,)
layer2.1.bn2.num_batches_tracked:() layer3.0.conv1.weight:(256,128,3,3) layer3.0.bn1.weight:(256,)
layer3.0.bn1.bias:(256,) layer3.0.bn1.running_mean:(256,) layer3.0.bn1.running_var:(256,)
layer3.0.bn1.num_batches_tracked:() layer3.0.conv2.weight:(256,256,3,3) layer3.0.bn2.weight:(256,)
layer3.0.bn2.bias:(256,) layer3.0.bn2.running_mean:(256,) layer3.0.bn2.running_var:(256,)
layer3.0.bn2.num_batches_tracked:() layer3.0.downsample.0.weight:(256,128,1,1)
layer3.0.downsample.1.weight:(256,) layer3.0.downsample.1.bias:(256,) layer3.0.downsample.1.running_mean:(256,)
layer3.0.downsample.1.running_var:(256,) layer3.0.downsample.1.num_batches_tracked:()
layer3.1.conv1.weight:(256,256,3,3) layer3.1.bn1.weight:(256,) layer3.1.bn1.bias:(256,)
layer3.1.bn1.running_mean:(256,) layer3.1.bn1.running_var:(256,) layer3.1.bn1.num_batches_tracked:()
layer3.1.conv2.weight:(256,256,3,3) layer3.1.bn2.weight:(256,) layer3.1.bn2.bias:(256,)
layer3.1.bn2.running_mean:(256,) layer3.1.bn2.running_var:(256,) layer3.1.bn2.num_batches_tracked:()
layer4.0.conv1.weight:(512,256,3,3) layer4.0.bn1.weight:(512,) layer4.0.bn1.bias:(512,)
layer4.0.bn1.running_mean:(512,) layer4.0.bn1.running_var:(512,) layer4.0.bn1.num_batches_tracked:()
layer4.0.conv2.weight:(512,512,3,3) layer4.0.bn2.weight:(512,) layer4.0.bn2.bias:(512,)
layer4.0.bn2.running_mean:(512,) layer4.0.bn2.running_var:(512,) layer4.0.bn2.num_batches_tracked:()
layer4.0.downsample.0.weight:(512,256,1,1) layer4.0.downsample.1.weight:(512,) layer4.0.downsample.1.bias:(512,)
layer4.0.downsample.1.running_mean:(512,) layer4.0.downsample.1.running_var:(512,)
layer4.0.downsample.1.num_batches_tracked:() layer4.1.conv1.weight:(512,512,3,3) layer4.1.bn1.weight:(512,)
layer4.1.bn1.bias:(512,) layer4.1.bn1.running_mean:(512,) layer4.1.bn1.running_var:(512,)
layer4.1.bn1.num_batches_tracked:() layer4.1.conv2.weight:(512,512,3,3) layer4.1.bn2.weight:(512,)
layer4.1.bn2.bias:(512,) layer4.1.bn2.running_mean:(512,) layer4.1.bn2.running_var:(512,)
layer4.1.bn2.num_batches_tracked:() fc.weight:(1000,512) fc.bias:(1000,)
"""


def documented_keys():
    out = []
    for item in RESNET18_KEYS.split():
        key, shape = item.split(":")
        out.append((key, tuple(int(v) for v in shape.strip("()").split(",") if v)))
    return out


def floats(seed, shape, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def n_parameters(net):
    return sum(int(np.prod(p.shape)) for p in net.parameters())


# -- torchvision's ResNet, in plain torch.nn -----------------------------------------------------

def torchvision_resnet(layers, num_classes=1000):
    """torchvision.models.resnet.ResNet(BasicBlock, layers, num_classes): the same modules, names,
    registration order, init and forward (torchvision/models/resnet.py)."""
    nn = torch.nn

    def conv3x3(in_planes, out_planes, stride=1):
        return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)

    def conv1x1(in_planes, out_planes, stride=1):
        return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return self.relu(out)

    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(self.inplanes)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, 64, layers[0])
            self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
            self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
            self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

        def _make_layer(self, block, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                           nn.BatchNorm2d(planes * block.expansion))
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            for _ in range(1, blocks):
                layers.append(block(self.inplanes, planes))
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.avgpool(x), 1)
            return self.fc(x)

    return ResNet(BasicBlock, layers, num_classes)


def torch_state_as_numpy(model):
    return OrderedDict((k, v.detach().numpy().copy()) for k, v in model.state_dict().items())


# -- ResNet-18 and -34: torchvision's layout -----------------------------------------------------

def test_resnet18_has_torchvisions_documented_keys_shapes_and_order():
    sd = resnet18().state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == documented_keys()
    assert sd["bn1.num_batches_tracked"].dtype == np.int64
    assert n_parameters(resnet18()) == 11_689_512  # torchvision's documented count


def test_resnet34_has_torchvisions_block_counts():
    sd = resnet34().state_dict()
    blocks = {k.split(".")[0]: int(k.split(".")[1]) + 1 for k in sd if k.startswith("layer")}
    assert blocks == {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}
    assert [k for k in sd if "downsample.0" in k] == [f"layer{i}.0.downsample.0.weight" for i in (2, 3, 4)]
    assert n_parameters(resnet34()) == 21_797_672  # torchvision's documented count


@needs_torch
@pytest.mark.parametrize("make, layers", [(resnet18, [2, 2, 2, 2]), (resnet34, [3, 4, 6, 3])])
def test_keys_and_shapes_equal_torchvisions_module(make, layers):
    theirs = torchvision_resnet(layers, num_classes=7).state_dict()
    ours = make(num_classes=7).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]


def test_resnet18_init_is_torchvisions():
    nbcnn.manual_seed(0)
    net = resnet18()
    sd = net.state_dict()
    for key, value in sd.items():
        if key.endswith("weight") and value.ndim == 4:  # kaiming_normal_(mode="fan_out", nonlinearity="relu")
            fan_out = value.shape[0] * value.shape[2] * value.shape[3]
            assert abs(value.mean()) < 0.05 * np.sqrt(2 / fan_out), key
            assert abs(value.std() / np.sqrt(2 / fan_out) - 1) < 0.05, key
        elif "running_mean" in key or key.endswith("bias") and not key.startswith("fc"):
            assert np.all(value == 0), key
        elif "running_var" in key or key.endswith("weight") and not key.startswith("fc"):
            assert np.all(value == 1), key
    bound = 1 / np.sqrt(512)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    for key in ("fc.weight", "fc.bias"):
        assert np.abs(sd[key]).max() <= bound and np.abs(sd[key]).max() > 0.9 * bound, key
    assert abs(sd["fc.weight"].std() / (bound / np.sqrt(3)) - 1) < 0.05
    nbcnn.manual_seed(0)
    assert all(np.array_equal(a, b) for a, b in zip(sd.values(), resnet18().state_dict().values()))  # seeded
    zeroed = resnet18(zero_init_residual=True).state_dict()
    assert all(np.all(zeroed[k] == 0) for k in zeroed if k.endswith("bn2.weight"))
    assert np.all(zeroed["layer1.0.bn1.weight"] == 1)


@needs_torch
def test_a_torchvision_state_dict_loads_unchanged_and_gives_its_logits_in_eval():
    torch.manual_seed(0)
    theirs = torchvision_resnet([2, 2, 2, 2]).double()
    with torch.no_grad():  # non-trivial statistics and affine parameters, as a trained network has
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(1234)
    theirs.eval()
    ours = resnet18().to(dtype=np.float64)
    ours.load_state_dict(torch_state_as_numpy(theirs))
    ours.eval()
    x = floats(1, (2, 3, 64, 64))
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    assert_close(ours(nbcnn.asarray(x)), want, rtol=1e-10)
    assert int(ours.state_dict()["layer4.1.bn2.num_batches_tracked"]) == 1234


@needs_torch
def test_a_training_step_matches_torchvisions_gradients_and_running_statistics():
    torch.manual_seed(1)
    theirs = torchvision_resnet([2, 2, 2, 2], num_classes=10).double().train()
    ours = resnet18(num_classes=10).to(dtype=np.float64)
    ours.load_state_dict(torch_state_as_numpy(theirs))
    x, g = floats(2, (2, 3, 64, 64)), floats(3, (2, 10))
    xt = torch.from_numpy(x).requires_grad_()
    yt = theirs(xt)
    yt.backward(torch.from_numpy(g))
    assert_close(ours(nbcnn.asarray(x)), yt.detach().numpy(), rtol=1e-10)
    assert_close(ours.backward(nbcnn.asarray(g)), xt.grad.numpy(), rtol=1e-10, what="input gradient")
    grads = dict(theirs.named_parameters())
    for name in ("conv1.weight", "bn1.weight", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                 "layer3.1.bn2.bias", "layer4.0.downsample.1.weight", "fc.weight", "fc.bias"):
        assert_close(dict(ours.named_parameters())[name].grad, grads[name].grad.numpy(), rtol=1e-10, what=name)
    after = torch_state_as_numpy(theirs)
    for key, value in ours.state_dict().items():  # running statistics updated as torch's, counters too
        assert_close(value, after[key], rtol=1e-12, what=key)


# -- ResNet-20 (He et al. 2016, CIFAR) -----------------------------------------------------------

def test_resnet20_is_the_papers_cifar_network():
    net = resnet20()
    assert n_parameters(net) == 269_722  # the paper's "0.27M"
    convs = [(k, v.shape) for k, v in net.state_dict().items() if v.ndim == 4]
    assert len(convs) == 19 and "fc.weight" in net.state_dict()  # 19 convs + fc: 20 weighted layers
    assert convs[0] == ("conv1.weight", (16, 3, 3, 3))
    widths = {k.split(".")[0]: v[0] for k, v in convs[1:]}
    assert widths == {"layer1": 16, "layer2": 32, "layer3": 64}
    assert not any("downsample" in k or "shortcut" in k for k in net.state_dict())  # option A: no parameters
    assert isinstance(net.layer2[0].shortcut, ZeroPadShortcut) and net.layer2[1].shortcut is None
    y = net(nbcnn.asarray(floats(0, (2, 3, 32, 32), np.float32)))
    assert y.shape == (2, 10)
    b = cifar_resnet(20, shortcut="B")
    assert n_parameters(b) == 269_722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # two 1x1 convs and their BNs
    assert "layer2.0.downsample.0.weight" in b.state_dict()
    assert n_parameters(cifar_resnet(56)) == 853_018  # the paper's ResNet-56: "0.85M"
    assert n_parameters(cifar_resnet(110)) == 1_727_962  # ResNet-110: "1.7M"


@pytest.mark.parametrize("device", DEVICES)
def test_the_option_a_shortcut_subsamples_and_pads_with_zeros(device):
    x, dy = floats(4, (2, 3, 7, 6)), floats(5, (2, 5, 4, 3))
    m = ZeroPadShortcut(3, 5, 2).to(device, np.float64)
    want = np.zeros((2, 5, 4, 3))
    want[:, :3] = x[:, :, ::2, ::2]
    assert_close(m(nbcnn.asarray(x, device)), want, exact=True)
    dx = np.zeros_like(x)
    dx[:, :, ::2, ::2] = dy[:, :3]  # the adjoint: the kept pixels get the first channels' gradients
    assert_close(m.backward(nbcnn.asarray(dy, device)), dx, exact=True)
    assert m.backward(nbcnn.asarray(dy, device), input_grad=False) is None
    assert m.state_dict() == OrderedDict() and m.parameters() == []


def test_resnet20_learns_the_embedded_digits():
    """ResNet-20 on 28x28 digits (1 channel): Adam with a cosine schedule, 40 steps of 32 from 1,000
    training digits, is well above the 10% of chance on the 500 held-out digits in eval mode (0.85
    there, the loss from 1.93 to 0.56). On 2 cores shared with other jobs at load 4: 19 s as a
    script, 77 s under pytest."""
    from nbcnn.data import embedded_mnist
    train, val = embedded_mnist()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(train))[:1000]

    def batch(ds, i):
        return (ds.images[i].transpose(0, 3, 1, 2).astype(np.float32) / 255 - 0.13) / 0.31, ds.labels[i]

    nbcnn.manual_seed(0)
    net = resnet20(num_classes=10, in_channels=1)
    opt = nbcnn.Adam(net.parameters(), lr=5e-3)
    schedule = nbcnn.lr_scheduler.CosineAnnealingLR(opt, T_max=40, per="step")
    losses = []
    for step in range(40):
        x, y = batch(train, idx[rng.integers(0, len(idx), 32)])
        loss, dlogits = nbcnn.softmax_cross_entropy(net(nbcnn.asarray(x)), nbcnn.asarray(y))
        net.backward(dlogits, input_grad=False)
        opt.step()
        opt.zero_grad()
        schedule.step_end(step + 1)
        losses.append(loss)
    net.eval()
    x, y = batch(val, np.arange(len(val)))
    accuracy = (nbcnn.to_numpy(net(nbcnn.asarray(x))).argmax(1) == y).mean()
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert accuracy > 0.7, accuracy


# -- the MobileNet-style network ---------------------------------------------------------------

def test_mobilenet_small_is_depthwise_separable():
    net = mobilenet_small(num_classes=10, in_channels=3)
    convs = [m for block in net.blocks for m in block.modules if isinstance(m, nbcnn.Conv2d)]
    dws, pws = convs[0::2], convs[1::2]
    assert len(dws) == 5 and all(m.groups == m.in_channels == m.out_channels and m.kernel_size == 3 for m in dws)
    assert all(m.kernel_size == 1 and m.groups == 1 for m in pws)
    assert all(m.bias is None for m in convs) and [m.stride for m in dws] == [1, 2, 1, 2, 1]
    assert [m.out_channels for m in pws] == [64, 128, 128, 256, 256]
    assert list(net.state_dict())[:8] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                          "bn1.running_var", "bn1.num_batches_tracked", "blocks.0.dw.weight",
                                          "blocks.0.bn1.weight"]
    assert n_parameters(net) == 136_778
    assert net(nbcnn.asarray(floats(0, (2, 3, 32, 32), np.float32))).shape == (2, 10)


# -- every model on both backends --------------------------------------------------------------

SMALL_MODELS = {  # the builders at the smallest widths: the simulator runs each step in 10-20 s
    "resnet18-like": lambda: resnet([2, 1, 1, 1], num_classes=3, in_channels=2, width=2),
    "resnet20-like": lambda: cifar_resnet(8, num_classes=3, in_channels=2, width=1),
    "mobilenet_small": lambda: mobilenet_small(num_classes=3, in_channels=2, width=1),
}
# the ResNet-18 builder's parts (7x7/2 stem, padded max pool, 1x1 downsample) each have their own
# agreement tests; as a whole network it runs in the real-GPU suite (full size in test_backends_agree.py)
SIMULATED = ("resnet20-like", "mobilenet_small")


def trained_like(net, seed):
    """`net` with random batch-norm weights and biases, as training leaves them: at their init (1 and 0)
    the weight of a batch norm followed by per-channel linear maps and another batch norm (the
    MobileNet stem before the depthwise conv) has an exactly zero gradient, by scale invariance."""
    rng = np.random.default_rng(seed)
    state = net.state_dict()
    for key, value in state.items():
        if value.ndim == 1 and not key.startswith("fc"):
            state[key] = rng.uniform(0.5, 1.5, value.shape) if "var" in key or key.endswith("weight") else \
                rng.uniform(-0.3, 0.3, value.shape)
    net.load_state_dict(state)
    return net


def run_step(make, device, x, g):
    """A training-mode forward and backward in float64: logits, dx, gradients, state after."""
    nbcnn.manual_seed(0)
    net = trained_like(make(), 1).to(device, np.float64)
    y = net(nbcnn.asarray(x, device))
    dx = net.backward(nbcnn.asarray(g, device))
    return (nbcnn.to_numpy(y), nbcnn.to_numpy(dx), {k: nbcnn.to_numpy(p.grad) for k, p in net.named_parameters()},
            net.state_dict())


@pytest.mark.skipif(_CUDA_SKIP is not None, reason=_CUDA_SKIP or "")
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_models_agree_on_cpu_and_cuda(name):
    if simulated("cuda") and name not in SIMULATED:
        pytest.skip("too slow for the CUDA simulator; runs on a real GPU (NBCNN_TEST_GPU=1)")
    x, g = floats(6, (2, 2, 8, 8)), floats(7, (2, 3))
    (yc, dxc, gc, sc), (yg, dxg, gg, sg) = (run_step(SMALL_MODELS[name], d, x, g) for d in ("cpu", "cuda"))
    assert yc.shape == (2, 3) and dxc.shape == x.shape and np.all(np.isfinite(dxc)) and np.any(dxc)
    assert_close(yg, yc, rtol=1e-11)
    assert_close(dxg, dxc, rtol=1e-11, what="input gradient")
    # a gradient that cancels to near zero (a bias after batch norm) carries the rounding of its larger terms
    atol = 1e-11 * max(np.abs(v).max() for v in gc.values())
    for k in gc:
        assert np.any(gc[k]), k  # every parameter gets a gradient
        assert_close(gg[k], gc[k], rtol=1e-11, atol=atol, what=k)
    for k in sc:
        assert_close(sg[k], sc[k], rtol=1e-12, what=k)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_models_backward_matches_finite_differences(name):
    """One central difference moving the input and every parameter at once (each op has its own
    per-argument checks in test_ops.py); batch norm in training mode."""
    from test_ops import check_gradients_jointly
    rng = np.random.default_rng(8)
    nbcnn.manual_seed(8)
    check_gradients_jointly("cpu", trained_like(SMALL_MODELS[name](), 2), rng.standard_normal((3, 2, 8, 8)), rng)


@pytest.mark.parametrize("device", DEVICES)
def test_resnet18_forward_backward_shapes_on_a_small_input(device):
    if simulated(device):
        pytest.skip("full-width ResNet-18 takes minutes under the CUDA simulator: "
                    "test_backends_agree.py runs it at batch 2 on a real GPU (NBCNN_TEST_GPU=1)")
    net = resnet18(num_classes=5).to(device)
    y = net(nbcnn.asarray(floats(9, (2, 3, 32, 32), np.float32), device))
    assert y.shape == (2, 5)
    dx = nbcnn.to_numpy(net.backward(nbcnn.asarray(floats(10, (2, 5), np.float32), device)))
    assert dx.shape == (2, 3, 32, 32) and np.all(np.isfinite(dx)) and np.any(dx)
    assert all(np.any(nbcnn.to_numpy(p.grad)) for p in net.parameters())


# -- bad input ---------------------------------------------------------------------------------

def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 2"):
        cifar_resnet(21)
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 2"):
        cifar_resnet(2)
    with pytest.raises(ValueError, match="shortcut must be 'A'"):
        cifar_resnet(20, shortcut="C")
    with pytest.raises(ValueError, match="resnet18 num_classes must be a positive int, got 0"):
        resnet18(num_classes=0)
    with pytest.raises(ValueError, match="resnet20 in_channels must be a positive int, got 1.5"):
        resnet20(in_channels=1.5)
    with pytest.raises(ValueError, match="mobilenet_small width must be a positive int"):
        mobilenet_small(width=0)
    with pytest.raises(ValueError, match="four block counts"):
        resnet([2, 2, 2])
    with pytest.raises(ValueError, match="ZeroPadShortcut pads channels"):
        ZeroPadShortcut(4, 2, 2)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="Conv2d expects 1 input channels, got shape"):
        resnet20(in_channels=1)(nbcnn.asarray(np.zeros((2, 3, 28, 28), np.float32)))
    with pytest.raises(ValueError, match="expects a 4-D input"):
        mobilenet_small()(nbcnn.asarray(np.zeros((2, 3, 32), np.float32)))
    with pytest.raises(ValueError, match="BatchNorm2d expected more than 1 value per channel when training"):
        resnet18()(nbcnn.asarray(np.zeros((1, 3, 32, 32), np.float32)))  # layer4 maps are 1x1
