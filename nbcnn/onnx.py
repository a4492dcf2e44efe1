"""ONNX out and in: `export(net, path, input_shape)` and `load(path)` (needs the `onnx` package: nbcnn[onnx]).

    nbcnn.onnx.export(net, "alexnet.onnx", (1, 3, 224, 224))   # runs in onnxruntime, TensorRT, ...
    net = nbcnn.onnx.load("alexnet.onnx")                       # e.g. from torch.onnx.export

The graph is the network in inference: Conv (groups, optional bias), Relu, LRN, MaxPool,
AveragePool, GlobalAveragePool, Gemm, Dropout (identity in inference), Flatten,
BatchNormalization (running statistics), Identity and Add for nbcnn.Residual; opset 17, float32,
the batch dimension symbolic ("N"). Initializers are named by the network's state_dict keys.
AdaptiveAvgPool2d becomes GlobalAveragePool (1x1) or an AveragePool when the pooled map divides
evenly into its bins at the exported input size; ONNX has no uneven adaptive pooling (PyTorch's
exporter refuses it too).

ONNX's LRN divides alpha by size, as PyTorch and nbcnn do, so the parameters carry over as they
are; its window for an even size is one channel later than PyTorch's (centred at c with
floor((size-1)/2) before and ceil((size-1)/2) after), so only odd sizes are exported or imported.

`load` builds a Sequential from a chain of those ops, a fork whose two branches meet in an Add
becoming a Residual (torchvision's ResNet blocks); any other op is refused in one message naming
each.
"""

import numpy as np

from . import layers
from .checkpoint import atomic_write
from .errors import OnnxError, WeightsFileError
from .models import ZeroPadShortcut
from .module import Residual, Sequential

OPSET = 17
IMPORTED = ("Conv", "Relu", "LRN", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "Dropout", "Flatten",
            "BatchNormalization", "Identity", "Add", "Constant")


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("nbcnn.onnx needs the onnx package: pip install 'nbcnn[onnx]' (or pip install onnx)") from None
    return onnx


# -- export --------------------------------------------------------------------------------------
class _Graph:
    """The nodes and initializers of the graph being written, with unique value names."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.initializers, self.count = onnx, [], [], 0

    def const(self, name, array, dtype=np.float32):
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def node(self, op, inputs, **attrs):
        self.count += 1
        out = f"{op}_{self.count}"
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=f"{op}_{self.count}", **attrs))
        return out


def _host(array, backend):
    return backend.to_numpy(array).astype(np.float32)


def _pool_attrs(m):
    k, s, p = m.kernel_size, m.stride, m.padding
    return dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)


def _emit_leaf(g, m, prefix, x_name, x, y):
    """Append the nodes of one layer (input x_name of value x, output value y); returns the output's name."""
    be = m.backend
    if isinstance(m, layers.Conv2d):
        inputs = [x_name, g.const(prefix + "weight", _host(m.weight.data, be))]
        if m.bias is not None:
            inputs.append(g.const(prefix + "bias", _host(m.bias.data, be)))
        return g.node("Conv", inputs, kernel_shape=[m.kernel_size] * 2, strides=[m.stride] * 2,
                      pads=[m.padding] * 4, dilations=[1, 1], group=m.groups)
    if isinstance(m, layers.Linear):
        return g.node("Gemm", [x_name, g.const(prefix + "weight", _host(m.weight.data, be)),
                               g.const(prefix + "bias", _host(m.bias.data, be))], transB=1)
    if isinstance(m, layers.ReLU):
        return g.node("Relu", [x_name])
    if isinstance(m, layers.LocalResponseNorm):
        if m.size % 2 == 0:
            raise OnnxError(f"{prefix or 'the network'} LocalResponseNorm size {m.size}: ONNX's LRN window for an even "
                            "size is one channel off PyTorch's (and nbcnn's); only odd sizes export")
        return g.node("LRN", [x_name], size=m.size, alpha=m.alpha, beta=m.beta, bias=m.k)
    if isinstance(m, layers.MaxPool2d):
        return g.node("MaxPool", [x_name], **_pool_attrs(m))
    if isinstance(m, layers.AvgPool2d):
        return g.node("AveragePool", [x_name], count_include_pad=int(m.count_include_pad), **_pool_attrs(m))
    if isinstance(m, layers.AdaptiveAvgPool2d):
        (h, w), (oh, ow) = x.shape[2:], y.shape[2:]
        if (oh, ow) == (1, 1):
            return g.node("GlobalAveragePool", [x_name])
        if h % oh or w % ow:
            raise OnnxError(f"{prefix or 'the network'} AdaptiveAvgPool2d pools {h}x{w} to {oh}x{ow} at this input "
                            "shape: ONNX has no adaptive pooling and these bins are uneven; export at an input "
                            f"shape whose pooled map is a multiple of {oh}x{ow}")
        return g.node("AveragePool", [x_name], kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow])
    if isinstance(m, layers.Dropout):
        return g.node("Dropout", [x_name, g.const(prefix + "ratio", m.p)])  # training_mode false: identity
    if isinstance(m, layers.Flatten):
        return g.node("Flatten", [x_name], axis=1)
    if isinstance(m, layers._BatchNorm):
        c = m.num_features
        weight, bias = ((_host(m.weight.data, be), _host(m.bias.data, be)) if m.affine
                        else (np.ones(c), np.zeros(c)))
        return g.node("BatchNormalization", [
            x_name, g.const(prefix + "weight", weight), g.const(prefix + "bias", bias),
            g.const(prefix + "running_mean", _host(m.running_mean, be)),
            g.const(prefix + "running_var", _host(m.running_var, be))], epsilon=m.eps)
    if isinstance(m, ZeroPadShortcut):  # the CIFAR ResNet's option A: its fixed 0/1 selection as a 1x1 Conv
        return g.node("Conv", [x_name, g.const(prefix + "select", _host(m._weight(x.dtype), be))], kernel_shape=[1, 1],
                      strides=[m.stride] * 2, pads=[0] * 4, dilations=[1, 1], group=1)
    assert isinstance(m, layers.Identity), type(m)
    return g.node("Identity", [x_name])


EXPORTED = (layers.Conv2d, layers.Linear, layers.ReLU, layers.LocalResponseNorm, layers.MaxPool2d, layers.AvgPool2d,
            layers.AdaptiveAvgPool2d, layers.Dropout, layers.Flatten, layers._BatchNorm, layers.Identity,
            ZeroPadShortcut)


def _check_exportable(net):
    """One OnnxError naming every module the exporter has no ONNX for."""
    unsupported, stack = {}, [("", net)]
    while stack:
        prefix, m = stack.pop()
        if isinstance(m, (Sequential, Residual)):
            stack += [(f"{prefix}{name}.", child) for name, child in m.named_children()]
        elif not isinstance(m, EXPORTED):
            unsupported.setdefault(type(m).__name__, []).append(prefix.rstrip(".") or "the network")
        elif isinstance(m, layers._BatchNorm) and not m.track_running_stats:
            unsupported.setdefault(f"{type(m).__name__} without running statistics", []).append(prefix.rstrip("."))
    if unsupported:
        raise OnnxError("cannot export to ONNX: " + "; ".join(f"{kind} ({', '.join(sorted(where))})"
                                                             for kind, where in sorted(unsupported.items())))


def _emit(g, m, prefix, x_name, x):
    """Append the nodes of module m (containers recursively); returns (output name, output value)."""
    if isinstance(m, Sequential):
        for name, child in m.named_children():
            x_name, x = _emit(g, child, f"{prefix}{name}.", x_name, x)
        return x_name, x
    if isinstance(m, Residual):
        names = dict((id(child), name) for name, child in m.named_children())
        a_name, a = _emit_part(g, m.body, prefix, names, x_name, x)
        b_name, b = (x_name, x) if m.shortcut is None else _emit_part(g, m.shortcut, prefix, names, x_name, x)
        y = m.backend.empty(a.shape, a.dtype)
        m.backend.add_out(m.backend.contiguous(a), m.backend.contiguous(b), y)
        y_name = g.node("Add", [a_name, b_name])
        return (y_name, y) if m.after is None else _emit_part(g, m.after, prefix, names, y_name, y)
    y = m(x)
    return _emit_leaf(g, m, prefix, x_name, x, y), y


def _emit_part(g, part, prefix, names, x_name, x):
    """A Residual's part: a named child, or an inline Sequential whose children carry the block's names."""
    if id(part) in names:
        return _emit(g, part, f"{prefix}{names[id(part)]}.", x_name, x)
    return _emit(g, part, prefix, x_name, x)


def to_model(net, input_shape):
    """The onnx.ModelProto of `net` in inference for inputs of `input_shape` (batch first; the batch
    dimension is left symbolic). Runs one forward pass of zeros to learn the shapes."""
    onnx = _onnx()
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) not in (2, 4) or min(input_shape) < 1:
        raise OnnxError(f"input_shape must be (N, C, H, W) or (N, features) of positive sizes, got {input_shape}")
    _check_exportable(net)
    modes = [(m, m.training) for m in _walk(net)]
    net.eval()
    try:
        g = _Graph(onnx)
        x = net.backend.zeros(input_shape, net.dtype)
        out_name, out = _emit(g, net, "", "input", x)
    finally:
        for m, mode in modes:
            m.training = mode
    g.nodes.append(onnx.helper.make_node("Identity", [out_name], ["output"], name="output"))
    float32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, "nbcnn", [onnx.helper.make_tensor_value_info("input", float32, ("N",) + input_shape[1:])],
        [onnx.helper.make_tensor_value_info("output", float32, ("N",) + tuple(out.shape[1:]))], g.initializers)
    return onnx.helper.make_model(graph, producer_name="nbcnn", opset_imports=[onnx.helper.make_opsetid("", OPSET)])


def export(net, path, input_shape):
    """Atomically write `net` in inference as an ONNX file for inputs of `input_shape` (see to_model),
    checked by onnx.checker first."""
    data = to_model(net, input_shape).SerializeToString()
    _onnx().checker.check_model(data)  # the bytes, so that a large model is serialised once
    with atomic_write(path) as f:
        f.write(data)


def _walk(m):
    yield m
    for child in m.children():
        yield from _walk(child)


# -- import --------------------------------------------------------------------------------------
def load(path):
    """An nbcnn Sequential (float32, CPU, eval mode) built from the ONNX file at `path`; an OnnxError
    naming every unsupported op or construct, a WeightsFileError for a file that is not ONNX."""
    onnx = _onnx()
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise WeightsFileError(f"ONNX file {path} does not exist") from None
    except Exception as exc:  # protobuf's DecodeError and others
        raise WeightsFileError(f"cannot read ONNX file {path}: {type(exc).__name__}: {exc}") from None
    try:
        return _Importer(onnx, model.graph).build().eval()
    except OnnxError as exc:
        raise OnnxError(f"{path}: {exc}") from None


class _Importer:
    def __init__(self, onnx, graph):
        self.onnx = onnx
        self.consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        unsupported = {}
        for n in graph.node:
            if n.op_type not in IMPORTED or n.domain not in ("", "ai.onnx"):
                unsupported[n.op_type] = unsupported.get(n.op_type, 0) + 1
        if unsupported:
            raise OnnxError("unsupported ONNX ops: " + ", ".join(
                f"{op} ({count} node{'s' if count > 1 else ''})" for op, count in sorted(unsupported.items()))
                + f"; nbcnn imports {', '.join(IMPORTED)}")
        self.consumers, nodes = {}, []
        for n in graph.node:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
            elif n.op_type == "Identity" and n.input[0] in self.consts:  # an alias of a weight
                self.consts[n.output[0]] = self.consts[n.input[0]]
            else:
                nodes.append(n)
        for n in nodes:
            for name in set(n.input[:2] if n.op_type == "Add" else n.input[:1]):
                self.consumers.setdefault(name, []).append(n)
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise OnnxError(f"nbcnn imports graphs of one input and one output, this one has {len(inputs)} "
                            f"inputs and {len(graph.output)} outputs")
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) not in (2, 4):
            raise OnnxError(f"the input {inputs[0].name!r} has {len(dims) or 'an unknown number of'} dimensions; "
                            "nbcnn imports (N, C, H, W) images or (N, features) vectors")
        self.input, self.output, self.rank = inputs[0].name, graph.output[0].name, len(dims)

    def build(self):
        modules, add, end = self.follow(self.input, self.rank)
        if add is not None:
            raise OnnxError(f"Add node {add.name!r} is not the end of a residual block (a fork whose branches meet)")
        if end != self.output:
            raise OnnxError(f"the chain from the input ends at {end!r}, not at the output {self.output!r}")
        return Sequential(*modules)

    def follow(self, v, rank):
        """(modules, the Add node that ends the chain or None, the last value) from value v on."""
        modules = []
        while True:
            users = self.consumers.get(v, [])
            if not users:
                return modules, None, v
            if len(users) == 1 and users[0].op_type == "Add":
                return modules, users[0], v
            if len(users) == 1:
                n = users[0]
                if len(n.output) > 1 and any(self.consumers.get(o) or o == self.output for o in n.output[1:]):
                    raise OnnxError(f"{n.op_type} node {n.name!r}: nbcnn uses only its first output")
                m, rank = self.module(n, rank)
                if m is not None:
                    modules.append(m)
                v = n.output[0]
                continue
            if len(users) != 2:
                raise OnnxError(f"value {v!r} feeds {len(users)} nodes; nbcnn imports chains and two-branch residual blocks")
            branches = []
            for n in users:
                if n.op_type == "Add":
                    branches.append(([], n, rank))
                    continue
                m, r = self.module(n, rank)
                sub, add, _ = self.follow(n.output[0], r)
                branches.append(([m] * (m is not None) + sub, add, r))
            (a, add_a, rank), (b, add_b, _) = sorted(branches, key=lambda br: -len(br[0]))
            if add_a is None or add_a is not add_b:
                raise OnnxError(f"the two branches from {v!r} do not meet in one Add; nbcnn imports residual blocks")
            modules.append(Residual(Sequential(*a), Sequential(*b) if b else None))
            v = add_a.output[0]

    # -- one node --------------------------------------------------------------------------
    def const(self, n, i, what):
        if len(n.input) <= i or n.input[i] == "":
            return None
        if n.input[i] not in self.consts:
            raise OnnxError(f"{n.op_type} node {n.name!r}: its {what} ({n.input[i]!r}) is computed, not a weight")
        return np.asarray(self.consts[n.input[i]])

    def attrs(self, n):
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in n.attribute}

    def square(self, n, a, name, default):
        """An attribute that must be the same on both spatial axes (and both sides for pads)."""
        v = list(a.get(name, default))
        if len(set(v)) > 1:
            raise OnnxError(f"{n.op_type} node {n.name!r}: {name}={v}; nbcnn supports square kernels, "
                            "equal strides and symmetric padding")
        return int(v[0])

    def check(self, n, a, **expected):
        for name, value in expected.items():
            got = a.get(name, value)
            got = got.decode() if isinstance(got, bytes) else got
            if (list(got) if isinstance(got, (list, tuple)) else got) != value:
                raise OnnxError(f"{n.op_type} node {n.name!r}: {name}={got!r} is not supported (only {value!r})")

    def module(self, n, rank):
        """(the nbcnn module for node n or None for an identity, the output's rank)."""
        a = self.attrs(n)
        try:
            return self._module(n, a, rank)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, OnnxError):
                raise
            raise OnnxError(f"{n.op_type} node {n.name!r}: {exc}") from None

    def _module(self, n, a, rank):
        op = n.op_type
        if op in ("Conv", "MaxPool", "AveragePool"):
            self.check(n, a, auto_pad="NOTSET", dilations=[1, 1], ceil_mode=0, storage_order=0)
            stride, pad = self.square(n, a, "strides", [1, 1]), self.square(n, a, "pads", [0, 0, 0, 0])
        if op == "Conv":
            w, b = self.const(n, 1, "weight"), self.const(n, 2, "bias")
            k = self.square(n, a, "kernel_shape", w.shape[2:])
            groups = int(a.get("group", 1))
            m = layers.Conv2d(w.shape[1] * groups, w.shape[0], k, stride, pad, groups=groups, bias=b is not None)
            m.load_state_dict({"weight": w} if b is None else {"weight": w, "bias": b})
            return m, rank
        if op == "MaxPool":
            return layers.MaxPool2d(self.square(n, a, "kernel_shape", []), stride, pad), rank
        if op == "AveragePool":
            return layers.AvgPool2d(self.square(n, a, "kernel_shape", []), stride, pad,
                                    count_include_pad=bool(a.get("count_include_pad", 0))), rank
        if op == "GlobalAveragePool":
            return layers.AdaptiveAvgPool2d(1), rank
        if op == "Relu":
            return layers.ReLU(), rank
        if op == "Identity":
            return None, rank
        if op == "Flatten":
            self.check(n, a, axis=1)
            return layers.Flatten(), 2
        if op == "LRN":
            size = int(a["size"])
            if size % 2 == 0:
                raise OnnxError(f"LRN node {n.name!r}: size {size} is even, and ONNX's window for an even size "
                                "is one channel off PyTorch's (nbcnn's); only odd sizes import")
            return layers.LocalResponseNorm(size, a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)), rank
        if op == "Dropout":
            training = self.const(n, 2, "training_mode")
            if training is not None and bool(training):
                raise OnnxError(f"Dropout node {n.name!r} is in training mode; nbcnn imports inference graphs")
            ratio = self.const(n, 1, "ratio")
            return layers.Dropout(float(a.get("ratio", 0.5) if ratio is None else ratio)), rank
        if op == "Gemm":
            self.check(n, a, transA=0)
            w = self.const(n, 1, "weight")
            w = w if a.get("transB", 0) else w.T
            c = self.const(n, 2, "bias")
            bias = np.zeros(w.shape[0]) if c is None else np.broadcast_to(c, (w.shape[0],))
            m = layers.Linear(w.shape[1], w.shape[0])
            m.load_state_dict({"weight": w * a.get("alpha", 1.0), "bias": bias * a.get("beta", 1.0)})
            return m, 2
        assert op == "BatchNormalization", op
        self.check(n, a, training_mode=0)
        scale, bias, mean, var = (self.const(n, i, what) for i, what in
                                  enumerate(("scale", "bias", "mean", "variance"), 1))
        m = (layers.BatchNorm2d if rank == 4 else layers.BatchNorm1d)(len(scale), eps=a.get("epsilon", 1e-5))
        m.load_state_dict({"weight": scale, "bias": bias, "running_mean": mean, "running_var": var,
                           "num_batches_tracked": np.array(0, np.int64)})
        return m, rank
