"""Parameters, buffers, the Module base class and the Sequential container."""

import os
from collections import OrderedDict

import numpy as np

from .backend import FLOAT_DTYPES, Workspace, backend_of, get_backend


class Parameter:
    """A learnable array: `data`, its gradient `grad` (same shape, accumulated by backward),
    and `state`, the optimiser's per-parameter arrays (the momentum buffer), all on one backend.
    `Module.to` moves all three, so an optimiser keeps working after the move.
    `requires_grad = False` freezes it: optimisers leave it unchanged (PyTorch's flag, default True)."""

    def __init__(self, data, backend):
        self.backend = backend
        self.data = backend.from_numpy(data)
        self.grad = backend.zeros(data.shape, data.dtype)
        self.state = {}
        self.requires_grad = True

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return np.dtype(self.data.dtype)

    def to(self, backend, dtype):
        def move(a):
            return backend.from_numpy(self.backend.to_numpy(a).astype(dtype, copy=False))
        self.data, self.grad = move(self.data), move(self.grad)
        self.state = {k: move(v) for k, v in self.state.items()}
        self.backend = backend


class Module:
    """The base of layers and containers. Modules start in training mode on the CPU in float32."""

    def __init__(self):
        self.training = True
        self.backend = get_backend("cpu")
        self.dtype = np.dtype(np.float32)
        self._parameters = OrderedDict()
        self._buffers = OrderedDict()
        self.ws = Workspace()

    # -- running -----------------------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, input_grad=True):
        """dL/dx from dL/dy; parameter gradients accumulate. input_grad=False: skip dL/dx, return None."""
        raise NotImplementedError

    def children(self):
        return []

    def train(self, mode=True):
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- parameters --------------------------------------------------------------------
    def add_parameter(self, name, value):
        """Register a parameter from a host numpy array (converted to the module's dtype)."""
        p = Parameter(np.ascontiguousarray(value, dtype=self.dtype), self.backend)
        self._parameters[name] = p
        return p

    def named_parameters(self, prefix=""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for i, child in self.named_children():
            yield from child.named_parameters(f"{prefix}{i}.")

    def named_children(self):
        return []

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    # -- buffers -----------------------------------------------------------------------
    def register_buffer(self, name, value):
        """Register a buffer from a host numpy array: state that is not learnt (batch norm's running
        statistics). Saved in state_dict after the module's parameters and moved by `to`, but never
        among parameters(), so no optimiser touches it. A float buffer takes the module's dtype and
        follows `to(dtype=...)`; an integer one (a counter) keeps its dtype. Returns the array."""
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype(self.dtype)
        elif not np.issubdtype(value.dtype, np.integer):
            raise TypeError(f"buffer {name!r} must hold floats or integers, got {value.dtype}")
        self._buffers[name] = self.backend.from_numpy(value)
        return self._buffers[name]

    def named_buffers(self, prefix=""):
        for name, b in self._buffers.items():
            yield prefix + name, b
        for i, child in self.named_children():
            yield from child.named_buffers(f"{prefix}{i}.")

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def zero_grad(self):
        for p in self.parameters():
            p.backend.fill(p.grad, 0)

    def to(self, device=None, dtype=None):
        """Move parameters, gradients, optimiser state and buffers to `device`, in `dtype` (integer buffers keep theirs); returns self."""
        backend = self.backend if device is None else get_backend(device)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"parameters must be float32 or float64, got {dtype}")
        for p in self._parameters.values():
            p.to(backend, dtype)
        for name, b in self._buffers.items():
            host = self.backend.to_numpy(b)
            if np.issubdtype(host.dtype, np.floating):
                host = host.astype(dtype, copy=False)
            self._buffers[name] = backend.from_numpy(host)
        for child in self.children():
            child.to(backend, dtype)
        self.backend, self.dtype = backend, dtype
        self.ws.clear()
        return self

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    def _state_entries(self, prefix=""):
        """(key, module, name, kind) of every state_dict entry in PyTorch's order: a module's parameters,
        then its buffers, then its children's entries, child by child. kind: "parameter" or "buffer"."""
        for name in self._parameters:
            yield prefix + name, self, name, "parameter"
        for name in self._buffers:
            yield prefix + name, self, name, "buffer"
        for i, child in self.named_children():
            yield from child._state_entries(f"{prefix}{i}.")

    def _state_array(self, name, kind):
        return self._parameters[name].data if kind == "parameter" else self._buffers[name]

    def state_dict(self):
        """Host numpy copies of every parameter and buffer, keyed and ordered as PyTorch keys the same model."""
        return OrderedDict((key, m.backend.to_numpy(m._state_array(name, kind)))
                           for key, m, name, kind in self._state_entries())

    def load_state_dict(self, state):
        """Copy values from a state_dict, or from a .safetensors/.npz file at that path (nbcnn.weights);
        every key must be present with the right shape. One ValueError names every missing,
        unexpected and mis-shaped key."""
        if isinstance(state, (str, os.PathLike)):
            from .weights import load
            state = load(state)
        entries = OrderedDict((key, (m, name, kind)) for key, m, name, kind in self._state_entries())
        missing = [k for k in entries if k not in state]
        unexpected = [k for k in state if k not in entries]
        problems = [f"missing keys {missing}, unexpected keys {unexpected}"] if missing or unexpected else []
        for key, (m, name, kind) in entries.items():
            current = m._state_array(name, kind)
            if key in state and tuple(np.shape(state[key])) != tuple(current.shape):
                problems.append(f"state_dict[{key!r}] has shape {tuple(np.shape(state[key]))}, "
                                f"the model's {kind} has shape {tuple(current.shape)}")
        if problems:
            raise ValueError("state_dict does not match the model: " + "; ".join(problems))
        values = {}
        for key, (m, name, kind) in entries.items():  # check every entry before changing any
            value, current = np.asarray(state[key]), m._state_array(name, kind)
            floats = np.issubdtype(current.dtype, np.floating)  # else an integer buffer: a counter
            if not np.issubdtype(value.dtype, np.floating if floats else np.integer):
                raise TypeError(f"state_dict[{key!r}] has dtype {value.dtype}, expected {'floats' if floats else 'integers'}")
            values[key] = np.asarray(value, dtype=current.dtype, order="C")  # a 0-d counter stays 0-d
        for key, (m, name, kind) in entries.items():
            if kind == "parameter":
                p = m._parameters[name]
                p.data = p.backend.from_numpy(values[key])
            else:
                m._buffers[name] = m.backend.from_numpy(values[key])

    def save(self, path):
        """Atomically write state_dict() to `path`: .safetensors or .npz, PyTorch's keys (nbcnn.weights)."""
        from .weights import save
        save(self.state_dict(), path)

    # -- input checks shared by the layers ---------------------------------------------
    def check_input(self, x, ndim=None, what="input"):
        """`x` made contiguous, or a clear error for the wrong device, rank or dtype."""
        if not self.backend.is_array(x):
            try:
                where = f"a {backend_of(x).name} array"
            except TypeError:
                where = f"a {type(x).__name__}"
            raise ValueError(f"{type(self).__name__} is on {self.backend.name} but its {what} is "
                             f"{where}; move it with nbcnn.asarray(x, {self.backend.name!r})")
        if np.dtype(x.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{type(self).__name__} {what} must be float32 or float64, got {x.dtype}")
        floats = [b for b in self._buffers.values() if np.issubdtype(b.dtype, np.floating)]
        if (self._parameters or floats) and np.dtype(x.dtype) != self.dtype:
            held = "parameters" if self._parameters else "buffers"
            raise TypeError(f"{type(self).__name__} has {self.dtype} {held} but its {what} is "
                            f"{x.dtype}; convert the input or call .to(dtype={x.dtype.name!r})")
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{type(self).__name__} expects a {ndim}-D {what}, got shape {tuple(x.shape)}")
        return self.backend.contiguous(x)

    def expect_grad_like(self, y):
        """Returns forward's result `y`, noting its shape and dtype: check_grad holds backward's dy to them."""
        self._out = (tuple(y.shape), np.dtype(y.dtype))
        return y

    def check_grad(self, dy):
        """`dy` made contiguous, or a clear error: backward before forward, wrong device, dtype or shape."""
        name = type(self).__name__
        out = getattr(self, "_out", None)
        if out is None:
            raise RuntimeError(f"{name}.backward called before forward")
        if not self.backend.is_array(dy):
            try:
                where = f"a {backend_of(dy).name} array"
            except TypeError:
                where = f"a {type(dy).__name__}"
            raise ValueError(f"{name} is on {self.backend.name} but the gradient passed to backward is {where}")
        if np.dtype(dy.dtype) != out[1]:
            raise TypeError(f"{name}.backward expects a {out[1]} gradient like its output, got {dy.dtype}")
        if tuple(dy.shape) != out[0]:
            raise ValueError(f"{name}.backward expects a gradient of its output's shape {out[0]}, "
                             f"got {tuple(dy.shape)}")
        return self.backend.contiguous(dy)

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ""


# attributes of the containers themselves, which no child name may shadow (seq.modules, block.body, ...)
_TAKEN = frozenset({"modules", "names", "parts", "body", "shortcut", "after", "training", "backend", "dtype", "ws"})


def iter_modules(module):
    """`module` and every module below it, depth first (PyTorch's Module.modules(): Sequential's
    `modules` attribute takes that name here)."""
    yield module
    for child in module.children():
        yield from iter_modules(child)


def _check_names(owner, named):
    """A TypeError or ValueError for a child that is not a module or a name PyTorch would refuse."""
    for name, m in named:
        if not isinstance(m, Module):
            raise TypeError(f"{owner} takes nbcnn modules, got {type(m).__name__} for {name!r}")
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{owner} child names must be non-empty strings without '.', got {name!r}")
        if name in _TAKEN or name.startswith("_") or hasattr(Residual, name) or hasattr(Sequential, name):
            raise ValueError(f"{owner} child name {name!r} is taken by an attribute of the container")


def _check_distinct(owner, modules):
    """A ValueError when one module instance sits twice anywhere in the trees of `modules`.

    A layer keeps what its own backward needs from its last forward: used twice, the first
    use's state would be gone by the time its gradient comes back.
    """
    seen = set()

    def walk(m):
        if id(m) in seen:
            raise ValueError(f"{owner} got the same module instance twice; make a new one for each place")
        seen.add(id(m))
        for child in m.children():
            walk(child)

    for m in modules:
        walk(m)


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse.

    Sequential(a, b, c) names its children "0", "1", "2"; Sequential(OrderedDict(conv1=a, relu=b))
    names them as given, as PyTorch does: `seq.conv1` or `seq["conv1"]` is that child, and
    `seq.fc = Linear(...)` replaces the child named fc (a new head). Names may not shadow the
    container's own attributes (modules, names, forward, ...).
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            named = list(modules[0].items())
            _check_names("Sequential", named)
        else:
            named = [(str(i), m) for i, m in enumerate(modules)]
            for m in modules:
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential takes nbcnn modules, got {type(m).__name__}")
        _check_distinct("Sequential", [m for _, m in named])
        self.names = [name for name, _ in named]
        self.modules = [m for _, m in named]

    def children(self):
        return self.modules

    def named_children(self):
        return list(zip(self.names, self.modules))

    def __getitem__(self, i):
        if isinstance(i, str):
            if i not in self.names:
                raise KeyError(f"Sequential has no child named {i!r}; its children: {self.names}")
            return self.modules[self.names.index(i)]
        return self.modules[i]

    def __getattr__(self, name):
        # only reached when normal lookup fails: a child by its name
        names = self.__dict__.get("names", ())
        if name in names:
            return self.modules[names.index(name)]
        raise AttributeError(f"{type(self).__name__} has no attribute or child {name!r}")

    def __setattr__(self, name, value):
        # seq.fc = Linear(...) replaces the child named fc, as in PyTorch (a new head for fine-tuning)
        names = self.__dict__.get("names", ())
        if name not in names:
            return super().__setattr__(name, value)
        i = names.index(name)
        _check_names("Sequential", [(name, value)])
        _check_distinct("Sequential", self.modules[:i] + [value] + self.modules[i + 1:])
        self.modules[i] = value

    def __len__(self):
        return len(self.modules)

    def forward(self, x):
        for m in self.modules:
            x = m(x)
        return x

    def backward(self, dy, input_grad=True):
        # Without the input's gradient, the modules before the first one with a trainable parameter
        # need none either (a frozen prefix, as in fine-tuning a head): their backward is not run.
        first = 0 if input_grad else next(
            (i for i, m in enumerate(self.modules) if any(p.requires_grad for p in m.parameters())), len(self.modules))
        for i in range(len(self.modules) - 1, first - 1, -1):
            dy = self.modules[i].backward(dy, input_grad=input_grad or i > first)
        return dy if input_grad else None

    def __repr__(self):
        inner = "".join(f"\n  ({name}): {m!r}" for name, m in self.named_children())
        return f"Sequential({inner}\n)"


class Residual(Module):
    """y = after(body(x) + shortcut(x)): a residual block (He et al. 2016). shortcut None is the
    identity, after None is nothing; backward sums the input gradients of both branches.

    Each part is a module, named "body", "shortcut" or "after" in the block's state_dict keys,
    or an OrderedDict of named modules run in order, whose names become the block's own
    (`block.conv1`, and `block.conv1 = ...` replaces it). So torchvision's BasicBlock, with its keys (conv1.weight, bn1.weight, ...,
    downsample.0.weight), is

        Residual(OrderedDict(conv1=Conv2d(cin, cout, 3, stride, 1), bn1=BatchNorm2d(cout), relu=ReLU(),
                             conv2=Conv2d(cout, cout, 3, 1, 1), bn2=BatchNorm2d(cout)),
                 OrderedDict(downsample=Sequential(Conv2d(cin, cout, 1, stride), BatchNorm2d(cout))),
                 after=ReLU())

    The two branches must give arrays of one shape; every module instance may appear once.
    """

    def __init__(self, body, shortcut=None, after=None):
        super().__init__()
        self.parts = {}  # name -> (module or None, whether its children's names are the block's own)
        for part, value in (("body", body), ("shortcut", shortcut), ("after", after)):
            if isinstance(value, dict):
                _check_names("Residual", value.items())
                self.parts[part] = (Sequential(value), True)
            elif value is None and part != "body":
                self.parts[part] = (None, False)
            else:
                if not isinstance(value, Module):
                    raise TypeError(f"Residual takes nbcnn modules, got {type(value).__name__} for {part!r}")
                self.parts[part] = (value, False)
        self.body, self.shortcut, self.after = (self.parts[p][0] for p in ("body", "shortcut", "after"))
        _check_distinct("Residual", self.children())
        names = [name for name, _ in self.named_children()]
        if len(set(names)) != len(names):
            raise ValueError(f"Residual got one name for two modules: {sorted({n for n in names if names.count(n) > 1})}")

    def children(self):
        return [m for m in (self.body, self.shortcut, self.after) if m is not None]

    def named_children(self):
        out = []
        for part, (m, inline) in self.parts.items():
            if m is not None:
                out += m.named_children() if inline else [(part, m)]
        return out

    def __getitem__(self, name):
        for child_name, m in self.named_children():
            if child_name == name:
                return m
        raise KeyError(f"Residual has no child named {name!r}")

    def __getattr__(self, name):
        # only reached when normal lookup fails: a child by its name
        if "parts" in self.__dict__ and not name.startswith("_"):
            for child_name, m in self.named_children():
                if child_name == name:
                    return m
        raise AttributeError(f"{type(self).__name__} has no attribute or child {name!r}")

    def __setattr__(self, name, value):
        # block.conv1 = ... replaces the child its OrderedDict part named conv1, as in PyTorch
        for part, (m, inline) in self.__dict__.get("parts", {}).items():
            if inline and name in m.names:
                old = m[name]
                setattr(m, name, value)
                try:
                    _check_distinct("Residual", self.children())
                except ValueError:
                    setattr(m, name, old)
                    raise
                return
        super().__setattr__(name, value)

    def forward(self, x):
        x = self.check_input(x)
        a = self.body(x)
        b = x if self.shortcut is None else self.shortcut(x)
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            what = "the identity" if self.shortcut is None else "the shortcut"
            raise ValueError(f"Residual: the body gives {a.dtype} of shape {tuple(a.shape)} but {what} gives "
                             f"{b.dtype} of shape {tuple(b.shape)}; a residual sum needs one shape")
        y = self.backend.empty(a.shape, a.dtype)
        self.backend.add_out(self.backend.contiguous(a), self.backend.contiguous(b), y)
        if self.after is not None:
            y = self.after(y)
        return self.expect_grad_like(y)

    def backward(self, dy, input_grad=True):
        dy = self.check_grad(dy)
        if self.after is not None:
            dy = self.after.backward(dy)
        da = self.body.backward(dy, input_grad=input_grad)
        db = dy if self.shortcut is None else self.shortcut.backward(dy, input_grad=input_grad)
        if not input_grad:
            return None
        dx = self.backend.empty(da.shape, da.dtype)  # new memory: da or db may be dy itself (an identity)
        self.backend.add_out(self.backend.contiguous(da), self.backend.contiguous(db), dx)
        return dx

    def __repr__(self):
        inner = "".join(f"\n  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children())
        return f"Residual({inner}\n)"
