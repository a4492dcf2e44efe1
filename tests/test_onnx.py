"""ONNX out and in (nbcnn.onnx): exported files run in onnxruntime and agree with nbcnn; files made
by nbcnn and by torch.onnx.export load back into nbcnn networks that agree with onnxruntime."""

import inspect
from collections import OrderedDict

import numpy as np
import pytest

import nbcnn
import nbcnn.onnx
from devices import DEVICES
from nbcnn import models

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install nbcnn[onnx])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install nbcnn[test])")

# Input shapes for the builders in nbcnn.models (num_classes=10); builders not named here get
# DEFAULT_INPUT. alexnet_torchvision at 224 pixels: its features end at 6x6, which ONNX pools evenly.
BUILDER_INPUT = {"alexnet": ((2, 3, 63, 63), dict(input_size=63)), "alexnet_small": ((2, 3, 32, 32), {}),
                 "alexnet_torchvision": ((1, 3, 224, 224), {}), "cifar_resnet": ((2, 3, 32, 32), dict(depth=8)),
                 "resnet": ((2, 3, 64, 64), dict(layers=[1, 1, 1, 1])), "resnet20": ((2, 3, 32, 32), {}),
                 "mobilenet_small": ((2, 3, 32, 32), {})}
DEFAULT_INPUT = ((2, 3, 64, 64), {})


def builders():
    """Every model builder in nbcnn.models: its public functions that take num_classes."""
    return sorted(name for name, f in inspect.getmembers(models, inspect.isfunction)
                  if f.__module__ == models.__name__ and not name.startswith("_")
                  and "num_classes" in inspect.signature(f).parameters)


def x_of(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_onnxruntime(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def nbcnn_eval(net, x):
    return nbcnn.to_numpy(net.eval()(nbcnn.asarray(x)))


def rel_error(got, expected):
    """The largest difference relative to the largest magnitude."""
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def residual_net():
    """A small ResNet: a stem, a block with an identity shortcut, one with a strided 1x1 conv + BN downsample."""
    def block(cin, cout, stride):
        down = (OrderedDict(downsample=nbcnn.Sequential(nbcnn.Conv2d(cin, cout, 1, stride, bias=False),
                                                         nbcnn.BatchNorm2d(cout)))
                if stride != 1 or cin != cout else None)
        return nbcnn.Residual(OrderedDict(conv1=nbcnn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                          bn1=nbcnn.BatchNorm2d(cout), relu=nbcnn.ReLU(),
                                          conv2=nbcnn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                          bn2=nbcnn.BatchNorm2d(cout)), down, after=nbcnn.ReLU())
    net = nbcnn.Sequential(nbcnn.Conv2d(3, 4, 3, padding=1, bias=False), nbcnn.BatchNorm2d(4), nbcnn.ReLU(),
                           nbcnn.MaxPool2d(3, 2, 1), block(4, 4, 1), block(4, 8, 2),
                           nbcnn.AvgPool2d(2, padding=1, count_include_pad=False), nbcnn.Conv2d(8, 8, 3, padding=1, groups=4),
                           nbcnn.AdaptiveAvgPool2d(1), nbcnn.Flatten(), nbcnn.Dropout(0.3), nbcnn.Linear(8, 5))
    # running statistics that are not 0 and 1, so that BatchNormalization's use of them shows
    state = net.state_dict()
    rng = np.random.default_rng(1)
    for key in state:
        if key.endswith("running_mean") or key.endswith("bias"):
            state[key] = rng.normal(0, 0.2, state[key].shape)
        elif key.endswith("running_var") or (key.endswith("weight") and state[key].ndim == 1):
            state[key] = rng.uniform(0.5, 2.0, state[key].shape)
    net.load_state_dict(state)
    return net


@pytest.mark.parametrize("name", builders())
def test_every_model_exports_to_a_file_onnxruntime_agrees_with(tmp_path, name):
    shape, kwargs = BUILDER_INPUT.get(name, DEFAULT_INPUT)
    nbcnn.manual_seed(0)
    net = getattr(models, name)(num_classes=10, **kwargs)
    path = tmp_path / f"{name}.onnx"
    nbcnn.onnx.export(net, path, shape)
    x = x_of(shape)
    assert rel_error(run_onnxruntime(path, x), nbcnn_eval(net, x)) < 1e-5


def test_batch_norm_residual_blocks_and_the_other_layers_export(tmp_path):
    net = residual_net()
    nbcnn.onnx.export(net, tmp_path / "r.onnx", (3, 3, 12, 12))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "r.onnx")).graph.node}
    assert {"Add", "BatchNormalization", "AveragePool", "GlobalAveragePool", "Dropout", "Gemm"} <= ops
    x = x_of((3, 3, 12, 12))
    assert rel_error(run_onnxruntime(tmp_path / "r.onnx", x), nbcnn_eval(net, x)) < 1e-5


def test_the_exported_graph_takes_any_batch_size(tmp_path):
    net = models.alexnet_small(10, in_channels=1, input_size=28)
    nbcnn.onnx.export(net, tmp_path / "s.onnx", (1, 1, 28, 28))
    x = x_of((5, 1, 28, 28))
    assert rel_error(run_onnxruntime(tmp_path / "s.onnx", x), nbcnn_eval(net, x)) < 1e-5


def test_export_leaves_the_network_in_its_training_mode(tmp_path):
    net = models.alexnet_small(10)
    net[3].eval()
    nbcnn.onnx.export(net, tmp_path / "s.onnx", (1, 3, 32, 32))
    assert net.training and not net[3].training and net[0].training


def test_initializers_carry_the_state_dict_keys(tmp_path):
    net = models.alexnet_small(10)
    nbcnn.onnx.export(net, tmp_path / "s.onnx", (1, 3, 32, 32))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "s.onnx")).graph.initializer}
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(weights[key], value)


@pytest.mark.parametrize("make, shape", [(lambda: models.alexnet_small(10), (2, 3, 32, 32)),
                                         (residual_net, (2, 3, 12, 12))], ids=["alexnet_small", "resnet"])
def test_round_trip_gives_a_network_with_the_same_outputs(tmp_path, make, shape):
    net = make()
    nbcnn.onnx.export(net, tmp_path / "n.onnx", shape)
    loaded = nbcnn.onnx.load(tmp_path / "n.onnx")
    x = x_of(shape)
    np.testing.assert_allclose(nbcnn_eval(loaded, x), nbcnn_eval(net, x), rtol=1e-6, atol=1e-6)
    assert sorted(v.shape for v in loaded.state_dict().values()) == sorted(v.shape for v in net.state_dict().values())


class Sigmoid(nbcnn.Module):
    pass


def test_export_names_every_module_it_cannot_write():
    net = nbcnn.Sequential(nbcnn.Conv2d(3, 4, 3), Sigmoid(), nbcnn.Sequential(nbcnn.ReLU(), Sigmoid()),
                           nbcnn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(nbcnn.errors.OnnxError, match=r"BatchNorm2d without running statistics \(3\); "
                                                      r"Sigmoid \(1, 2\.1\)"):
        nbcnn.onnx.to_model(net, (1, 3, 8, 8))


def test_even_lrn_sizes_are_refused_on_export():
    net = nbcnn.Sequential(nbcnn.LocalResponseNorm(4))
    with pytest.raises(nbcnn.errors.OnnxError, match="size 4.*one channel off"):
        nbcnn.onnx.to_model(net, (1, 6, 4, 4))


def test_uneven_adaptive_pooling_is_refused_on_export():
    with pytest.raises(nbcnn.errors.OnnxError, match=r"pools 5x5 to 2x2"):
        nbcnn.onnx.to_model(nbcnn.Sequential(nbcnn.AdaptiveAvgPool2d(2)), (1, 3, 5, 5))


def test_onnx_lrn_matches_nbcnn_and_pytorch_alpha_convention(tmp_path):
    # ONNX: y = x / (bias + alpha/size * sum of squares)^beta, as PyTorch; a large alpha makes a wrong division show
    net = nbcnn.Sequential(nbcnn.LocalResponseNorm(5, alpha=2.0, beta=0.75, k=1.5))
    nbcnn.onnx.export(net, tmp_path / "l.onnx", (1, 7, 3, 3))
    x = x_of((1, 7, 3, 3))
    expected = np.empty_like(x)  # written out here, channels zero-padded
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    for c in range(7):
        expected[:, c] = x[:, c] / (1.5 + 2.0 / 5 * sq[:, c:c + 5].sum(axis=1)) ** 0.75
    np.testing.assert_allclose(run_onnxruntime(tmp_path / "l.onnx", x), expected, rtol=1e-5)
    np.testing.assert_allclose(nbcnn_eval(net, x), expected, rtol=1e-5)


def test_import_names_every_unsupported_op(tmp_path):
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Relu", ["x"], ["a"]), h.make_node("Sigmoid", ["a"], ["b"]),
         h.make_node("Sigmoid", ["b"], ["c"]), h.make_node("Softmax", ["c"], ["y"])], "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    onnx.save(h.make_model(graph), str(tmp_path / "u.onnx"))
    with pytest.raises(nbcnn.errors.OnnxError, match=r"unsupported ONNX ops: Sigmoid \(2 nodes\), Softmax \(1 node\)"):
        nbcnn.onnx.load(tmp_path / "u.onnx")


def test_import_refuses_a_dynamic_rank_and_a_file_that_is_not_onnx(tmp_path):
    h = onnx.helper
    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    onnx.save(h.make_model(graph), str(tmp_path / "d.onnx"))
    with pytest.raises(nbcnn.errors.OnnxError, match="unknown number of dimensions"):
        nbcnn.onnx.load(tmp_path / "d.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 50)
    with pytest.raises(nbcnn.WeightsFileError, match="cannot read ONNX file"):
        nbcnn.onnx.load(tmp_path / "junk.onnx")


# -- models exported by PyTorch ------------------------------------------------------------------
def torch_export(model, x, path):
    torch = pytest.importorskip("torch")
    # the TorchScript exporter (dynamo=False): the dynamo one needs the onnxscript package
    torch.onnx.export(model.eval(), (torch.from_numpy(x),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"])


def torch_resnet18(num_classes):
    """torchvision's ResNet-18 layout (BasicBlock, [2, 2, 2, 2]), written out in torch."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed; it only makes the reference here")
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)

    layers, cin = [], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
        cin = cout
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                          nn.MaxPool2d(3, 2, 1), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(512, num_classes))
    with torch.no_grad():  # running statistics that are not 0 and 1
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return torch, model.eval()


def test_pytorch_alexnet_from_torch_onnx_export_runs_in_nbcnn(tmp_path):
    from test_weights import torch_alexnet
    torch, model = torch_alexnet(10)
    x = x_of((1, 3, 224, 224))
    torch_export(model, x, tmp_path / "alexnet.onnx")
    net = nbcnn.onnx.load(tmp_path / "alexnet.onnx")
    got = nbcnn_eval(net, x)
    assert rel_error(got, run_onnxruntime(tmp_path / "alexnet.onnx", x)) < 1e-5
    with torch.no_grad():
        assert rel_error(got, model(torch.from_numpy(x)).numpy()) < 1e-5


def test_pytorch_resnet18_from_torch_onnx_export_runs_in_nbcnn(tmp_path):
    torch, model = torch_resnet18(10)
    x = x_of((2, 3, 64, 64))
    torch_export(model, x, tmp_path / "resnet18.onnx")
    net = nbcnn.onnx.load(tmp_path / "resnet18.onnx")
    assert sum(isinstance(m, nbcnn.Residual) for m in net.modules) == 8
    got = nbcnn_eval(net, x)
    assert rel_error(got, run_onnxruntime(tmp_path / "resnet18.onnx", x)) < 1e-5
    with torch.no_grad():
        assert rel_error(got, model(torch.from_numpy(x)).numpy()) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_a_network_on_either_backend_exports_and_imports(tmp_path, device):
    nbcnn.manual_seed(0)
    net = nbcnn.Sequential(nbcnn.Conv2d(1, 2, 3), nbcnn.BatchNorm2d(2), nbcnn.ReLU(), nbcnn.MaxPool2d(2),
                           nbcnn.Flatten(), nbcnn.Linear(2, 3))
    state = net.state_dict()
    nbcnn.onnx.export(net.to(device), tmp_path / "t.onnx", (1, 1, 4, 4))
    x = x_of((2, 1, 4, 4))
    expected = nbcnn.to_numpy(net.eval()(nbcnn.asarray(x, device)))
    assert rel_error(run_onnxruntime(tmp_path / "t.onnx", x), expected) < 1e-5
    loaded = nbcnn.onnx.load(tmp_path / "t.onnx").to(device)
    np.testing.assert_allclose(nbcnn.to_numpy(loaded(nbcnn.asarray(x, device))), expected, rtol=1e-6, atol=1e-7)
    assert list(loaded.state_dict()) == list(state)  # a chain comes back with its layers' positions
