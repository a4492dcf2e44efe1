"""Model definitions: AlexNet (Krizhevsky, Sutskever and Hinton, 2012)."""

import numpy as np

from .layers import Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU
from .module import Sequential
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


def alexnet_torchvision(num_classes=1000):
    """torchvision's AlexNet (its `models.alexnet`, after the "one weird trick" paper): 64/192/384/256/256
    channels, no LRN, and adaptive average pooling to 6x6, so any input of 63 pixels or more works.

    The children and state_dict keys are torchvision's (features.0.weight ... classifier.6.bias),
    so its pretrained weights load from a safetensors file (`net.load_state_dict(path)`) or ONNX.
    PyTorch's default init (Kaiming-uniform).
    """
    from collections import OrderedDict

    from .layers import AdaptiveAvgPool2d
    features = Sequential(
        Conv2d(3, 64, 11, stride=4, padding=2), ReLU(), MaxPool2d(3, 2),
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
