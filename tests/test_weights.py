"""Weights in people's formats (nbcnn.weights): .safetensors and .npz with PyTorch's keys, written
atomically, checked on load, and torchvision's AlexNet layout loading from PyTorch's own files."""

import os
from collections import OrderedDict

import numpy as np
import pytest

import nbcnn
from nbcnn.models import alexnet_torchvision

pytest.importorskip("safetensors", reason="the safetensors package is not installed (pip install nbcnn[test])")

FORMATS = [".safetensors", ".npz"]


def small_net():
    return nbcnn.Sequential(nbcnn.Conv2d(3, 4, 3, padding=1), nbcnn.BatchNorm2d(4), nbcnn.ReLU(),
                            nbcnn.Flatten(), nbcnn.Linear(4 * 5 * 5, 3))


def x_of(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("ext", FORMATS)
def test_save_then_load_gives_back_every_array_bit_for_bit(tmp_path, ext):
    net = small_net()
    path = tmp_path / f"w{ext}"
    net.save(path)
    loaded = nbcnn.load(path)
    expected = net.state_dict()
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


@pytest.mark.parametrize("ext", FORMATS)
def test_load_state_dict_takes_a_path(tmp_path, ext):
    a, b = small_net(), small_net()
    a.save(tmp_path / f"w{ext}")
    b.load_state_dict(str(tmp_path / f"w{ext}"))
    x = nbcnn.asarray(x_of((2, 3, 5, 5)))
    np.testing.assert_array_equal(nbcnn.to_numpy(a.eval()(x)), nbcnn.to_numpy(b.eval()(x)))


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    small_net().save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        small_net().save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.npz"]


@pytest.mark.parametrize("ext", FORMATS)
def test_a_flipped_byte_in_the_weights_is_refused(tmp_path, ext):
    path = tmp_path / f"w{ext}"
    net = small_net()
    net.save(path)
    data = bytearray(path.read_bytes())
    # a byte inside the last linear weight's values (stored uncompressed in both formats)
    needle = net.state_dict()["4.weight"].tobytes()[40:56]
    at = bytes(data).find(needle)
    assert at > 0
    data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(nbcnn.WeightsFileError, match="corrupt"):
        nbcnn.load(path)


@pytest.mark.parametrize("ext", FORMATS)
def test_a_truncated_file_is_refused_in_one_line(tmp_path, ext):
    path = tmp_path / f"w{ext}"
    small_net().save(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(nbcnn.WeightsFileError, match=str(path)):
        nbcnn.load(path)


def test_an_unknown_extension_is_refused():
    with pytest.raises(nbcnn.WeightsFileError, match=r"unknown weights format '\.pt'.*\.safetensors or \.npz"):
        small_net().save("weights.pt")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(nbcnn.WeightsFileError, match="does not exist"):
        small_net().load_state_dict(tmp_path / "nowhere.safetensors")


def test_missing_extra_and_misshaped_keys_are_each_named_in_one_error(tmp_path):
    state = small_net().state_dict()
    del state["0.bias"]
    state["extra.weight"] = np.zeros(3, np.float32)
    state["4.weight"] = np.zeros((3, 7), np.float32)
    state["1.running_var"] = np.ones(5, np.float32)
    nbcnn.weights.save(state, tmp_path / "w.safetensors")
    net = small_net()
    before = net.state_dict()
    with pytest.raises(ValueError) as info:
        net.load_state_dict(tmp_path / "w.safetensors")
    message = str(info.value)
    assert "\n" not in message
    for part in ("missing keys ['0.bias']", "unexpected keys ['extra.weight']",
                 "state_dict['4.weight'] has shape (3, 7), the model's parameter has shape (3, 100)",
                 "state_dict['1.running_var'] has shape (5,), the model's buffer has shape (4,)"):
        assert part in message
    for key, value in net.state_dict().items():  # nothing changed
        np.testing.assert_array_equal(value, before[key])


def test_alexnet_torchvision_has_torchvisions_keys_and_shapes():
    shapes = OrderedDict((k, v.shape) for k, v in alexnet_torchvision(1000).state_dict().items())
    # torchvision.models.alexnet().state_dict(), written out
    assert shapes == OrderedDict([
        ("features.0.weight", (64, 3, 11, 11)), ("features.0.bias", (64,)),
        ("features.3.weight", (192, 64, 5, 5)), ("features.3.bias", (192,)),
        ("features.6.weight", (384, 192, 3, 3)), ("features.6.bias", (384,)),
        ("features.8.weight", (256, 384, 3, 3)), ("features.8.bias", (256,)),
        ("features.10.weight", (256, 256, 3, 3)), ("features.10.bias", (256,)),
        ("classifier.1.weight", (4096, 9216)), ("classifier.1.bias", (4096,)),
        ("classifier.4.weight", (4096, 4096)), ("classifier.4.bias", (4096,)),
        ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,))])


# -- PyTorch's own files -------------------------------------------------------------------------
def torch_alexnet(num_classes):
    """torchvision's AlexNet, written out here in torch (torchvision is not needed)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed; it only makes the reference here")
    nn = torch.nn

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(p=0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                nn.Dropout(p=0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    torch.manual_seed(0)
    return torch, AlexNet().eval()


def save_torch_state(torch, model, path):
    """The state_dict the way a PyTorch user writes it: safetensors.torch, or numpy's savez."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(model.state_dict(), str(path))
    else:
        np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})


@pytest.mark.parametrize("ext", FORMATS)
def test_pytorch_alexnet_weights_give_pytorchs_logits(tmp_path, ext):
    torch, model = torch_alexnet(10)
    path = tmp_path / f"alexnet{ext}"
    save_torch_state(torch, model, path)
    net = alexnet_torchvision(10)
    net.load_state_dict(path)
    net.eval().double()
    # 100 pixels: the features end at 2x2, so the adaptive pooling repeats pixels into its 6x6 bins
    x = x_of((2, 3, 100, 100), np.float64)
    with torch.no_grad():
        expected = model.double()(torch.from_numpy(x)).numpy()
    got = nbcnn.to_numpy(net(nbcnn.asarray(x)))
    assert np.max(np.abs(got - expected)) <= 1e-9 * np.max(np.abs(expected))
