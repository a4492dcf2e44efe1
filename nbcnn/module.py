"""Parameters, the Module base class and the Sequential container."""

from collections import OrderedDict

import numpy as np

from .backend import FLOAT_DTYPES, Workspace, backend_of, get_backend


class Parameter:
    """A learnable array: `data`, its gradient `grad` (same shape, accumulated by backward),
    and `state`, the optimiser's per-parameter arrays (the momentum buffer), all on one backend.
    `Module.to` moves all three, so an optimiser keeps working after the move."""

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

    def zero_grad(self):
        for p in self.parameters():
            p.backend.fill(p.grad, 0)

    def to(self, device=None, dtype=None):
        """Move parameters, gradients and optimiser state to `device`, in `dtype`; returns self."""
        backend = self.backend if device is None else get_backend(device)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"parameters must be float32 or float64, got {dtype}")
        for p in self._parameters.values():
            p.to(backend, dtype)
        for child in self.children():
            child.to(backend, dtype)
        self.backend, self.dtype = backend, dtype
        self.ws.clear()
        return self

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    def state_dict(self):
        """Host numpy copies of every parameter, keyed as PyTorch keys the same model."""
        return OrderedDict((name, p.backend.to_numpy(p.data)) for name, p in self.named_parameters())

    def load_state_dict(self, state):
        """Copy values from a state_dict; every key must be present with the right shape."""
        params = OrderedDict(self.named_parameters())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if missing or unexpected:
            raise ValueError(f"state_dict does not match the model: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        values = {}
        for name, p in params.items():  # check every entry before changing any parameter
            value = np.asarray(state[name])
            if tuple(value.shape) != p.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {tuple(value.shape)}, "
                                 f"the model's parameter has shape {p.shape}")
            if not np.issubdtype(value.dtype, np.floating):
                raise TypeError(f"state_dict[{name!r}] has dtype {value.dtype}, expected floats")
            values[name] = np.ascontiguousarray(value, dtype=p.dtype)
        for name, p in params.items():
            p.data = p.backend.from_numpy(values[name])

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
        if self._parameters and np.dtype(x.dtype) != self.dtype:
            raise TypeError(f"{type(self).__name__} has {self.dtype} parameters but its {what} is "
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


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse."""

    def __init__(self, *modules):
        super().__init__()
        for m in modules:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes nbcnn modules, got {type(m).__name__}")
        if len({id(m) for m in modules}) != len(modules):
            # a layer keeps what its own backward needs from its last forward: used twice, the
            # first use's state would be gone by the time its gradient comes back
            raise ValueError("Sequential got the same module instance twice; make a new one for each place")
        self.modules = list(modules)

    def children(self):
        return self.modules

    def named_children(self):
        return [(str(i), m) for i, m in enumerate(self.modules)]

    def __getitem__(self, i):
        return self.modules[i]

    def __len__(self):
        return len(self.modules)

    def forward(self, x):
        for m in self.modules:
            x = m(x)
        return x

    def backward(self, dy, input_grad=True):
        for i in range(len(self.modules) - 1, -1, -1):
            dy = self.modules[i].backward(dy, input_grad=input_grad or i > 0)
        return dy

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {m!r}" for i, m in enumerate(self.modules))
        return f"Sequential({inner}\n)"
