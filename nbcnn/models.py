"""Model definitions: AlexNet (Krizhevsky, Sutskever and Hinton, 2012), ResNet (He et al. 2016:
torchvision's ImageNet layout and the paper's CIFAR networks) and a small MobileNet-style
depthwise-separable network (Howard et al. 2017)."""

from collections import OrderedDict

import numpy as np

from .layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d,
                     ReLU)
from .module import Module, Residual, Sequential
from .random import default_generator


def alexnet_lrn():
    """The paper's LRN: n=5, k=2, beta=0.75 and alpha=1e-4 per squared activation.

    In PyTorch's convention (alpha divided by size) that is alpha = 5 * 1e-4. Caffe's
    AlexNet used alpha=1e-4 in the divided-by-n convention, five times weaker than the
    paper; we follow the paper.
    """
    return LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)


def alexnet(num_classes=1000, input_size=224, in_channels=3, init="kaiming"):
    """The original single-tower AlexNet: 5 conv + 3 FC layers, 224x224 input -> 55, 27, 13, 6.

    `input_size` sizes the first FC layer for other square inputs (at least 63 pixels);
    init="paper" draws weights from N(0, 0.01) with biases 1 in conv2, conv4, conv5 and
    the hidden FC layers, 0 elsewhere; init="kaiming" is PyTorch's default init.
    """
    def out(h, k, s, p=0):
        return (h + 2 * p - k) // s + 1

    s = out(input_size, 11, 4, 2)
    s = out(out(s, 3, 2), 5, 1, 2)
    s = out(out(s, 3, 2), 3, 1, 1)
    s = out(s, 3, 2)
    if s < 1 or out(input_size, 11, 4, 2) < 3:
        raise ValueError(f"alexnet needs input_size >= 63, got {input_size}")
    net = Sequential(
        Conv2d(in_channels, 96, 11, stride=4, padding=2), ReLU(), alexnet_lrn(), MaxPool2d(3, 2),
        Conv2d(96, 256, 5, padding=2), ReLU(), alexnet_lrn(), MaxPool2d(3, 2),
        Conv2d(256, 384, 3, padding=1), ReLU(),
        Conv2d(384, 384, 3, padding=1), ReLU(),
        Conv2d(384, 256, 3, padding=1), ReLU(), MaxPool2d(3, 2),
        Flatten(),
        Dropout(0.5), Linear(256 * s * s, 4096), ReLU(),
        Dropout(0.5), Linear(4096, 4096), ReLU(),
        Linear(4096, num_classes))
    if init == "paper":
        paper_init(net, biases_one=(4, 10, 12, 17, 20))
    elif init != "kaiming":
        raise ValueError(f"init must be 'kaiming' or 'paper', got {init!r}")
    return net


def paper_init(net, biases_one=()):
    """Weights from N(0, 0.01); biases 1 for the layers at the given indices of `net`, else 0."""
    state = net.state_dict()
    for key, value in state.items():
        index, kind = key.split(".")[-2:]
        if kind == "weight":
            state[key] = default_generator.numpy.normal(0.0, 0.01, size=value.shape)
        else:
            state[key] = np.full(value.shape, 1.0 if int(index) in biases_one else 0.0)
    net.load_state_dict(state)


def alexnet_small(num_classes=10, in_channels=3, input_size=32, init="he"):
    """AlexNet's layer types scaled to 28-32 pixel images, after cuda-convnet's CIFAR-10 nets.

    5x5 conv(32) -> ReLU -> overlapping 3/2 max pool -> LRN; 5x5 conv(64) -> ReLU -> LRN ->
    3/2 pool; 3x3 conv(64) -> ReLU; then AlexNet's classifier in small: dropout -> FC 256 ->
    ReLU -> dropout -> FC num_classes. 28 -> 13 -> 6 and 32 -> 15 -> 7 pixels (a third pool
    down to 2x2 made the digits learn several times slower). init="he" (the default) draws weights from N(0, 2/fan_in) with
    zero biases (He et al. 2015): PyTorch's default ("kaiming") is sqrt(6) times smaller, and
    through this net's two LRNs it leaves the loss stuck near log(10) for hundreds of steps.
    "kaiming" and "paper" are as in `alexnet` ("paper": biases 1 in conv2, conv3 and fc1).
    """
    s = input_size
    for _ in range(2):
        s = (s - 3) // 2 + 1
    if s < 1:
        raise ValueError(f"alexnet_small needs input_size >= 7, got {input_size}")
    net = Sequential(
        Conv2d(in_channels, 32, 5, padding=2), ReLU(), MaxPool2d(3, 2), alexnet_lrn(),
        Conv2d(32, 64, 5, padding=2), ReLU(), alexnet_lrn(), MaxPool2d(3, 2),
        Conv2d(64, 64, 3, padding=1), ReLU(),
        Flatten(),
        Dropout(0.5), Linear(64 * s * s, 256), ReLU(),
        Dropout(0.5), Linear(256, num_classes))
    if init == "paper":
        paper_init(net, biases_one=(4, 8, 12))
    elif init == "he":
        he_init(net)
    elif init != "kaiming":
        raise ValueError(f"init must be 'he', 'kaiming' or 'paper', got {init!r}")
    return net


def he_init(net):
    """Weights from N(0, 2 / fan_in) (He et al. 2015), biases 0."""
    state = net.state_dict()
    for key, value in state.items():
        if key.endswith("weight"):
            fan_in = int(np.prod(value.shape[1:]))
            state[key] = default_generator.numpy.normal(0.0, np.sqrt(2.0 / fan_in), size=value.shape)
        else:
            state[key] = np.zeros(value.shape)
    net.load_state_dict(state)


def alexnet_torchvision(num_classes=1000, in_channels=3):
    """torchvision's AlexNet (its `models.alexnet`, after the "one weird trick" paper): 64/192/384/256/256
    channels, no LRN, and adaptive average pooling to 6x6, so any input of 63 pixels or more works
    (63 leaves the last max pool a 1x1 map, which the pooling spreads over the 6x6 bins as PyTorch's does).

    The children and state_dict keys are torchvision's (features.0.weight ... classifier.6.bias),
    so its pretrained weights load from a safetensors file (`net.load_state_dict(path)`) or ONNX.
    PyTorch's default init (Kaiming-uniform).
    """
    features = Sequential(
        Conv2d(in_channels, 64, 11, stride=4, padding=2), ReLU(), MaxPool2d(3, 2),
        Conv2d(64, 192, 5, padding=2), ReLU(), MaxPool2d(3, 2),
        Conv2d(192, 384, 3, padding=1), ReLU(),
        Conv2d(384, 256, 3, padding=1), ReLU(),
        Conv2d(256, 256, 3, padding=1), ReLU(), MaxPool2d(3, 2))
    classifier = Sequential(
        Dropout(0.5), Linear(256 * 6 * 6, 4096), ReLU(),
        Dropout(0.5), Linear(4096, 4096), ReLU(),
        Linear(4096, num_classes))
    # torchvision flattens in forward (torch.flatten(x, 1)); here a Flatten child, which has no keys
    return Sequential(OrderedDict(features=features, avgpool=AdaptiveAvgPool2d(6), flatten=Flatten(),
                                  classifier=classifier))


# -- ResNet ------------------------------------------------------------------------------------

def _positive(value, name, model):
    """`value` as an int, or a ValueError naming the model and the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{model} {name} must be a positive int, got {value!r}")
    return int(value)


def basic_block(inplanes, planes, stride=1, shortcut="B"):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convs without bias.

    Where the shape changes (stride or channels), the shortcut is option B, torchvision's
    `downsample` (1x1 conv with stride, then batch norm: keys downsample.0, downsample.1), or
    option A, the CIFAR paper's parameter-free ZeroPadShortcut. Else it is the identity.
    """
    downsample = None
    if stride != 1 or inplanes != planes:
        if shortcut == "A":
            downsample = ZeroPadShortcut(inplanes, planes, stride)  # no state: its name keys nothing
        else:
            downsample = OrderedDict(downsample=Sequential(Conv2d(inplanes, planes, 1, stride, bias=False),
                                                           BatchNorm2d(planes)))
    return Residual(
        OrderedDict(conv1=Conv2d(inplanes, planes, 3, stride, 1, bias=False), bn1=BatchNorm2d(planes), relu=ReLU(),
                    conv2=Conv2d(planes, planes, 3, 1, 1, bias=False), bn2=BatchNorm2d(planes)),
        downsample, after=ReLU())


class ZeroPadShortcut(Module):
    """The CIFAR ResNet's option-A shortcut (He et al. 2016, section 4.2): no parameters,
    y[:, :C] = x[:, :, ::stride, ::stride] and zeros in the out_channels - C channels after.

    It runs as a 1x1 convolution with stride whose weight is a fixed 0/1 selection (identity
    over the first C outputs, zero below): the batched conv kernels of both backends do the
    subsampling and the padding, and backward is that conv's input gradient (exact: each
    output sums one x * 1 and zeros). The weight is neither a parameter nor in the state_dict.
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.in_channels = _positive(in_channels, "in_channels", "ZeroPadShortcut")
        self.out_channels = _positive(out_channels, "out_channels", "ZeroPadShortcut")
        self.stride = _positive(stride, "stride", "ZeroPadShortcut")
        if self.out_channels < self.in_channels:
            raise ValueError(f"ZeroPadShortcut pads channels: out_channels {out_channels} < in_channels {in_channels}")
        self._select, self._select_key = None, None

    def _weight(self, dtype):
        """The (out, in, 1, 1) selection on this module's backend in `dtype`, made once per backend and dtype."""
        key = (self.backend.name, np.dtype(dtype))
        if self._select_key != key:
            w = np.zeros((self.out_channels, self.in_channels, 1, 1), dtype)
            w[np.arange(self.in_channels), np.arange(self.in_channels)] = 1
            self._select, self._select_key = self.backend.from_numpy(w), key
        return self._select

    def forward(self, x):
        x = self.check_input(x, 4)
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"ZeroPadShortcut expects {self.in_channels} input channels, got shape {tuple(x.shape)}")
        s = self.stride
        y = self.backend.empty((n, self.out_channels, (h - 1) // s + 1, (w - 1) // s + 1), x.dtype)
        self.backend.conv2d_forward(x, self._weight(x.dtype), None, s, 0, y, self.ws)
        self.x = x
        return self.expect_grad_like(y)

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        if not input_grad:
            return None
        dx = self.backend.empty(self.x.shape, self.x.dtype)
        self.backend.conv2d_backward(self.x, self._weight(dy.dtype), dy, self.stride, 0, dx, None, None, self.ws)
        return dx

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def resnet_init(net):
    """torchvision's ResNet init: conv weights from kaiming_normal_(mode="fan_out", nonlinearity="relu"),
    i.e. N(0, 2 / (out_channels * kh * kw)); batch norm weight 1, bias 0 (their defaults, left as
    built); Linear layers keep PyTorch's default (Kaiming-uniform), as torchvision leaves them."""
    def walk(m):
        if isinstance(m, Conv2d):
            fan_out = m.out_channels * m.kernel_size ** 2
            w = default_generator.numpy.normal(0.0, np.sqrt(2.0 / fan_out), size=m.weight.shape)
            m.weight.data = m.backend.from_numpy(w.astype(m.dtype))
        for child in m.children():
            walk(child)
    walk(net)


def resnet(layers, num_classes=1000, in_channels=3, width=64, zero_init_residual=False):
    """torchvision's ResNet with BasicBlocks: `layers` blocks in each of four stages.

    Stem conv1 7x7/2 (no bias) -> bn1 -> relu -> maxpool 3/2 pad 1, then layer1..layer4 with
    width, 2, 4 and 8 times width channels (stride 2 at the first block of layer2-4, with an
    option-B `downsample`), avgpool (global), flatten, fc. state_dict keys, shapes and order are
    torchvision's (`conv1.weight`, `bn1.weight`, ..., `layer1.0.conv1.weight`, ...,
    `layer2.0.downsample.0.weight`, ..., `fc.bias`) at width 64 and in_channels 3. Any input of
    at least 1x1 pixels runs (224x224 gives 7x7 maps before the pooling); batch-norm training
    needs more than one value per channel at layer4 (batch 2 at 32x32 gives 2 x 1x1).
    zero_init_residual: each block's bn2 weight starts at 0, as torchvision's flag.
    """
    if not isinstance(layers, (list, tuple)) or len(layers) != 4:
        raise ValueError(f"resnet layers must be four block counts (ResNet-18: [2, 2, 2, 2]), got {layers!r}")
    layers = [_positive(n, "block count", "resnet") for n in layers]
    name = f"resnet{2 * sum(layers) + 2}"  # in errors: resnet18, resnet34
    num_classes = _positive(num_classes, "num_classes", name)
    in_channels = _positive(in_channels, "in_channels", name)
    width = _positive(width, "width", name)
    stages, inplanes = OrderedDict(), width
    for i, blocks in enumerate(layers):
        planes, stride = width * 2 ** i, 1 if i == 0 else 2
        stage = [basic_block(inplanes, planes, stride)]
        stage += [basic_block(planes, planes) for _ in range(1, blocks)]
        stages[f"layer{i + 1}"], inplanes = Sequential(*stage), planes
    net = Sequential(OrderedDict(
        conv1=Conv2d(in_channels, width, 7, 2, 3, bias=False), bn1=BatchNorm2d(width), relu=ReLU(),
        maxpool=MaxPool2d(3, 2, 1), **stages,
        avgpool=AdaptiveAvgPool2d(1), flatten=Flatten(), fc=Linear(inplanes, num_classes)))
    resnet_init(net)
    if zero_init_residual:
        for stage in stages.values():
            for block in stage:
                block.bn2.weight.data = block.backend.zeros(block.bn2.weight.shape, block.dtype)
    return net


def resnet18(num_classes=1000, in_channels=3, zero_init_residual=False):
    """ResNet-18 (torchvision.models.resnet18's layout, keys and init): 11.69M parameters at 1000 classes."""
    return resnet([2, 2, 2, 2], num_classes, in_channels, zero_init_residual=zero_init_residual)


def resnet34(num_classes=1000, in_channels=3, zero_init_residual=False):
    """ResNet-34 (torchvision.models.resnet34's layout, keys and init): 21.80M parameters at 1000 classes."""
    return resnet([3, 4, 6, 3], num_classes, in_channels, zero_init_residual=zero_init_residual)


def cifar_resnet(depth, num_classes=10, in_channels=3, width=16, shortcut="A"):
    """He et al. 2016's CIFAR-10 ResNet (section 4.2): depth = 6n + 2 (20, 32, 44, 56, 110).

    conv1 3x3 (width channels) -> bn1 -> relu, three stages (layer1..layer3) of n BasicBlocks
    with width, 2 and 4 times width channels on 32, 16 and 8 pixel maps (stride 2 at the first
    block of layer2 and layer3), global average pooling, fc. shortcut "A" (the paper's for
    CIFAR): identity shortcuts everywhere, zero-padded channels where the width doubles, no
    parameters (ResNet-20: 0.27M parameters); "B": 1x1 conv + batch norm there, as torchvision.
    Convolutions have no bias; the init is torchvision's ResNet init (`resnet_init`).
    """
    depth = _positive(depth, "depth", "cifar_resnet")
    name = f"resnet{depth}"  # in errors: resnet20, ...
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"cifar_resnet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110), got {depth}")
    if shortcut not in ("A", "B"):
        raise ValueError(f"cifar_resnet shortcut must be 'A' (zero padding, the paper's) or 'B' (1x1 conv), "
                         f"got {shortcut!r}")
    num_classes = _positive(num_classes, "num_classes", name)
    in_channels = _positive(in_channels, "in_channels", name)
    width = _positive(width, "width", name)
    n = (depth - 2) // 6
    stages, inplanes = OrderedDict(), width
    for i in range(3):
        planes, stride = width * 2 ** i, 1 if i == 0 else 2
        stage = [basic_block(inplanes, planes, stride, shortcut)]
        stage += [basic_block(planes, planes, 1, shortcut) for _ in range(1, n)]
        stages[f"layer{i + 1}"], inplanes = Sequential(*stage), planes
    net = Sequential(OrderedDict(
        conv1=Conv2d(in_channels, width, 3, 1, 1, bias=False), bn1=BatchNorm2d(width), relu=ReLU(), **stages,
        avgpool=AdaptiveAvgPool2d(1), flatten=Flatten(), fc=Linear(inplanes, num_classes)))
    resnet_init(net)
    return net


def resnet20(num_classes=10, in_channels=3):
    """He et al. 2016's ResNet-20 for 32x32 CIFAR images (28x28 digits run too): 19 conv layers
    in three stages of three BasicBlocks (16, 32, 64 channels), option-A shortcuts, 0.27M parameters."""
    return cifar_resnet(20, num_classes, in_channels)


# -- MobileNet-style ---------------------------------------------------------------------------

# (output channels as multiples of the width, stride) of each depthwise-separable block
MOBILENET_SMALL_BLOCKS = ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1))


def separable_block(cin, cout, stride):
    """MobileNet's depthwise-separable block: dw 3x3 (groups=cin, stride) -> bn1 -> relu1 ->
    pw 1x1 -> bn2 -> relu2, convs without bias."""
    return Sequential(OrderedDict(
        dw=Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), bn1=BatchNorm2d(cin), relu1=ReLU(),
        pw=Conv2d(cin, cout, 1, bias=False), bn2=BatchNorm2d(cout), relu2=ReLU()))


def mobilenet_small(num_classes=10, in_channels=3, width=32):
    """A MobileNet-style network (Howard et al. 2017) for 28-32 pixel images.

    conv1 3x3 (width channels) -> bn1 -> relu, then five depthwise-separable blocks (`blocks.0`
    to `blocks.4`) with 2, 4, 4, 8 and 8 times width channels, the second and fourth with
    stride 2 (32 -> 16 -> 8 pixels, 28 -> 14 -> 7), global average pooling, fc. Width 32: 0.14M
    parameters at 10 classes. The init is the ResNet one (Kaiming normal, fan out).
    """
    name = "mobilenet_small"
    num_classes = _positive(num_classes, "num_classes", name)
    in_channels = _positive(in_channels, "in_channels", name)
    width = _positive(width, "width", name)
    blocks, cin = [], width
    for mult, stride in MOBILENET_SMALL_BLOCKS:
        blocks.append(separable_block(cin, width * mult, stride))
        cin = width * mult
    net = Sequential(OrderedDict(
        conv1=Conv2d(in_channels, width, 3, 1, 1, bias=False), bn1=BatchNorm2d(width), relu=ReLU(),
        blocks=Sequential(*blocks), avgpool=AdaptiveAvgPool2d(1), flatten=Flatten(), fc=Linear(cin, num_classes)))
    resnet_init(net)
    return net
