"""Stochastic gradient descent with momentum and weight decay (torch.optim.SGD's rule)."""

import math

from .module import Parameter


class SGD:
    """g' = g + weight_decay*w; v = momentum*v + g'; w -= lr*v, one fused kernel per parameter.

    The momentum buffer lives in each parameter's `state`, so it moves with the model
    (`net.to("cuda")`); `SGD.state_dict()` (not the model's) saves it.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"SGD takes nbcnn Parameters (net.parameters()), got {type(p).__name__}")
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not (math.isfinite(float(value)) and float(value) >= 0.0):
                raise ValueError(f"SGD {name} must be a finite number >= 0, got {value}")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)

    def step(self):
        for p in self.params:
            v = p.state.get("momentum_buffer")
            if v is None:
                v = p.state["momentum_buffer"] = p.backend.zeros(p.shape, p.dtype)
            p.backend.sgd_step(p.data, p.grad, v, self.lr, self.momentum, self.weight_decay)

    def zero_grad(self):
        for p in self.params:
            p.backend.fill(p.grad, 0)

    def state_dict(self):
        """Host copies of the hyper-parameters and the momentum buffers, by parameter position."""
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "momentum_buffers": [None if "momentum_buffer" not in p.state
                                     else p.backend.to_numpy(p.state["momentum_buffer"])
                                     for p in self.params]}

    def load_state_dict(self, state):
        buffers = state["momentum_buffers"]
        if len(buffers) != len(self.params):
            raise ValueError(f"optimizer state has {len(buffers)} buffers for {len(self.params)} parameters")
        for p, buf in zip(self.params, buffers):  # check all before changing any
            if buf is not None and tuple(buf.shape) != p.shape:
                raise ValueError(f"momentum buffer of shape {tuple(buf.shape)} for a parameter of shape {p.shape}")
        for p, buf in zip(self.params, buffers):
            if buf is None:
                p.state.pop("momentum_buffer", None)
            else:
                p.state["momentum_buffer"] = p.backend.from_numpy(buf.astype(p.dtype))
        self.lr, self.momentum, self.weight_decay = state["lr"], state["momentum"], state["weight_decay"]
