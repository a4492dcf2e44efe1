"""Optimisers with torch.optim's update rules, defaults, parameter groups and state_dict format:
SGD, Adam, AdamW and RMSprop, each one fused kernel per parameter and step (backend.sgd_step,
adam_step, rmsprop_step).

    opt = nbcnn.Adam([{"params": net[0].parameters(), "lr": 1e-4},   # a group of its own
                      {"params": net[2].parameters()}], lr=1e-3)     # the constructor's defaults
    opt.step(); opt.zero_grad(); opt.lr = 1e-4                       # opt.lr sets every group's lr

A parameter with `requires_grad = False` is skipped: it gets no update and no state. The
per-parameter state arrays (exp_avg, momentum_buffer, ...) live in each parameter's `state`,
so they move with the model (`net.to("cuda")`); the optimiser counts each parameter's updates.
`state_dict()` holds host data only, in torch's layout: {"state": {index: {"step": n, "exp_avg":
array, ...}}, "param_groups": [{"lr": ..., ..., "params": [index, ...]}]}, parameters indexed in
the order of the groups.
"""

import math
import numbers

import numpy as np

from .module import Parameter


class Optimizer:
    """The base of the optimisers: parameter groups, frozen parameters, zero_grad, lr, state_dict.

    A subclass sets `defaults` (each hyper-parameter's default) through __init__ and implements
    `check(group)` (a ValueError for a bad hyper-parameter), `state_names(group)` (the state arrays
    its rule keeps for a parameter of that group) and `update(p, group, step)`.
    """

    counts_steps = True  # torch saves a "step" in the state of every optimiser but SGD

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.steps = {}  # Parameter -> the updates this optimiser made to it; absent: no state yet
        if isinstance(params, (Parameter, dict)):
            raise TypeError(f"{self.name} takes an iterable of Parameters or of parameter groups (dicts), "
                            f"got a single {type(params).__name__}")
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)
        if not any(group["params"] for group in self.param_groups):
            raise ValueError(f"{self.name} got an empty parameter list")

    @property
    def name(self):
        return type(self).__name__

    def add_param_group(self, group):
        """Add a group {"params": [...], hyper-parameter: value, ...}; missing hyper-parameters take the defaults."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{self.name} parameter groups are dicts with a 'params' entry, got {group!r:.80}")
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{self.name} takes nbcnn Parameters (net.parameters()), got {type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError(f"{self.name}: a parameter appears more than once in the parameter groups")
        group = {**self.defaults, **group, "params": params}
        self.check_group(group)
        self.param_groups.append(group)

    def check_group(self, group):
        """check(group), and a ValueError for a torch option this optimiser would otherwise ignore
        (a group given by hand or a torch state_dict's); torch's other keys (foreach, fused) change no result."""
        for key, default in TORCH_ONLY.items():
            if group.get(key, default) != default:
                raise ValueError(f"{self.name} has no {key}={group[key]!r} (torch.optim's option); nbcnn does "
                                 f"not implement it")
        self.check(group)

    def check(self, group):
        raise NotImplementedError

    def state_names(self, group):
        raise NotImplementedError

    def update(self, p, group, step):
        raise NotImplementedError

    # -- running -------------------------------------------------------------------------------
    def step(self):
        """One update of every parameter that requires a gradient and has one (torch skips a None grad)."""
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad or p.grad is None:
                    continue
                step = self.state_of(p, group)
                self.update(p, group, step)

    def state_of(self, p, group):
        """Count an update of p, making its state arrays (zeros) on its first: returns the update's number."""
        if p not in self.steps:  # what an earlier optimiser left in p.state is not ours: start afresh, as torch does
            p.state = {}
        for name in self.state_names(group):
            if name not in p.state:
                p.state[name] = p.backend.zeros(p.shape, p.dtype)
        self.steps[p] = self.steps.get(p, 0) + 1
        return self.steps[p]

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.backend.fill(p.grad, 0)

    @property
    def lr(self):
        """The first group's lr (every group's, unless groups were given their own)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        """Set every group's lr (per-group rates: set group["lr"] in param_groups)."""
        for group in self.param_groups:
            self.check_group({**group, "lr": value})
        for group in self.param_groups:
            group["lr"] = float(value)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self):
        """Host copies of the hyper-parameters and of each updated parameter's state, in torch's layout."""
        state, groups, index = {}, [], 0
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                if p in self.steps:
                    entry = {"step": float(self.steps[p])} if self.counts_steps else {}
                    entry.update((name, p.backend.to_numpy(p.state[name])) for name in self.state_names(group)
                                 if name in p.state)  # a group changed to need one more array makes it next step
                    state[index] = entry
                ids.append(index)
                index += 1
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore a state_dict of this optimiser's kind over the same parameter layout; the saved
        hyper-parameters replace the current ones, as in torch. Everything is checked before anything changes."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{self.name} state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{self.name} state_dict has {len(saved_groups)} parameter groups, "
                             f"the optimiser has {len(self.param_groups)}")
        groups, params = [], {}  # the groups as they will be; saved index -> (parameter, its new group)
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"{self.name} state_dict's parameter group {i} is not a dict with 'params'")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{self.name} state_dict's parameter group {i} has {len(saved['params'])} "
                                 f"parameters, the optimiser's has {len(group['params'])}")
            new = {**group, **{k: v for k, v in saved.items() if k != "params"}, "params": group["params"]}
            self.check_group(new)
            groups.append(new)
            params.update((index, (p, new)) for index, p in zip(saved["params"], group["params"]))
        arrays = {}
        for index, entry in state_dict["state"].items():
            if index not in params:
                raise ValueError(f"{self.name} state_dict has state for parameter {index}, which no group holds")
            p, group = params[index]
            for name in self.state_names(group):
                value = entry.get(name)
                if value is None or tuple(np.shape(value)) != p.shape:
                    raise ValueError(f"{self.name} state_dict: parameter {index} of shape {p.shape} has "
                                     + ("no " + name if value is None else f"{name} of shape {tuple(np.shape(value))}"))
            step = int(np.asarray(entry.get("step", 1)))  # torch's SGD saves no step
            if step < 1:
                raise ValueError(f"{self.name} state_dict: parameter {index} has step {step}, expected >= 1")
            arrays[p] = (step, {name: np.asarray(entry[name]) for name in self.state_names(group)})
        for group, new in zip(self.param_groups, groups):
            group.update(new)
        for p, _ in params.values():
            self.steps.pop(p, None)
            if p in arrays:
                self.steps[p] = arrays[p][0]
                p.state = {name: p.backend.from_numpy(np.ascontiguousarray(a, dtype=p.dtype))
                           for name, a in arrays[p][1].items()}


# -- hyper-parameter checks: one clear ValueError each -------------------------------------------------
# torch.optim options that change the update and that nbcnn does not implement, with the value that leaves it alone
TORCH_ONLY = {"maximize": False, "nesterov": False, "dampening": 0, "capturable": False, "differentiable": False}


def number(opt, name, value):
    """`value` as a float, or a TypeError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{opt} {name} must be a number, got {type(value).__name__}")
    return float(value)


def at_least_zero(opt, name, value):
    if not (math.isfinite(number(opt, name, value)) and value >= 0):
        raise ValueError(f"{opt} {name} must be a finite number >= 0, got {value}")


def positive(opt, name, value):
    if not (math.isfinite(number(opt, name, value)) and value > 0):
        raise ValueError(f"{opt} {name} must be a finite number > 0, got {value}")


def fraction(opt, name, value):
    if not 0 <= number(opt, name, value) < 1:
        raise ValueError(f"{opt} {name} must be in [0, 1), got {value}")


def flag(opt, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{opt} {name} must be True or False, got {value!r}")


# -- the optimisers ---------------------------------------------------------------------------------
class SGD(Optimizer):
    """torch.optim.SGD without dampening and Nesterov: g' = g + weight_decay*w; v = momentum*v + g';
    w -= lr*v. State: momentum_buffer (kept, and zero-initialised, also when momentum is 0)."""

    counts_steps = False

    def __init__(self, params, lr=1e-3, momentum=0.0, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def check(self, group):
        for name in ("lr", "momentum", "weight_decay"):
            at_least_zero(self.name, name, group[name])

    def state_names(self, group):
        return ("momentum_buffer",)

    def update(self, p, group, step):
        p.backend.sgd_step(p.data, p.grad, p.state["momentum_buffer"], float(group["lr"]),
                           float(group["momentum"]), float(group["weight_decay"]))

    def load_state_dict(self, state_dict):
        """Also loads the format nbcnn's SGD saved before parameter groups: {"lr", "momentum",
        "weight_decay", "momentum_buffers": [array or None, one per parameter]}."""
        if isinstance(state_dict, dict) and "momentum_buffers" in state_dict:
            state_dict = self.from_flat_format(state_dict)
        super().load_state_dict(state_dict)

    def from_flat_format(self, old):
        buffers = old["momentum_buffers"]
        n = sum(len(group["params"]) for group in self.param_groups)
        if len(buffers) != n:
            raise ValueError(f"optimizer state has {len(buffers)} buffers for {n} parameters")
        groups, start = [], 0
        for group in self.param_groups:
            end = start + len(group["params"])
            groups.append({"lr": old["lr"], "momentum": old["momentum"], "weight_decay": old["weight_decay"],
                           "params": list(range(start, end))})
            start = end
        return {"state": {i: {"momentum_buffer": b} for i, b in enumerate(buffers) if b is not None},
                "param_groups": groups}


class Adam(Optimizer):
    """torch.optim.Adam: m = beta1*m + (1-beta1)*g; v = beta2*v + (1-beta2)*g^2;
    w -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps), with weight_decay added to g (L2)
    or, with decoupled_weight_decay (AdamW), w *= 1 - lr*weight_decay first. amsgrad: the running
    maximum of v in the denominator. State: step, exp_avg, exp_avg_sq (, max_exp_avg_sq)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 decoupled_weight_decay=False):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "amsgrad": amsgrad, "decoupled_weight_decay": decoupled_weight_decay})

    def check(self, group):
        at_least_zero(self.name, "lr", group["lr"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{self.name} betas must be a pair (beta1, beta2), got {betas!r}")
        fraction(self.name, "betas[0]", betas[0])
        fraction(self.name, "betas[1]", betas[1])
        positive(self.name, "eps", group["eps"])
        at_least_zero(self.name, "weight_decay", group["weight_decay"])
        flag(self.name, "amsgrad", group["amsgrad"])
        flag(self.name, "decoupled_weight_decay", group["decoupled_weight_decay"])

    def state_names(self, group):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def update(self, p, group, step):
        s = p.state
        beta1, beta2 = group["betas"]
        p.backend.adam_step(p.data, p.grad, s["exp_avg"], s["exp_avg_sq"], s["max_exp_avg_sq"] if group["amsgrad"] else None,
                            step, group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                            bool(group["decoupled_weight_decay"]))


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (w *= 1 - lr*weight_decay), default 1e-2."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # torch's AdamW stays decoupled whatever it loads
            group["decoupled_weight_decay"] = True


class RMSprop(Optimizer):
    """torch.optim.RMSprop: sq = alpha*sq + (1-alpha)*g^2; avg = sqrt(sq) + eps (centered: sqrt(sq - ga^2)
    + eps with ga = alpha*ga + (1-alpha)*g); w -= lr*g/avg, or with momentum buf = momentum*buf + g/avg,
    w -= lr*buf; weight_decay added to g. State: step, square_avg (, grad_avg, momentum_buffer)."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay,
                                  "momentum": momentum, "centered": centered})

    def check(self, group):
        at_least_zero(self.name, "lr", group["lr"])
        fraction(self.name, "alpha", group["alpha"])
        positive(self.name, "eps", group["eps"])
        at_least_zero(self.name, "weight_decay", group["weight_decay"])
        at_least_zero(self.name, "momentum", group["momentum"])
        flag(self.name, "centered", group["centered"])

    def state_names(self, group):
        return (("square_avg",) + (("grad_avg",) if group["centered"] else ())
                + (("momentum_buffer",) if group["momentum"] > 0 else ()))

    def update(self, p, group, step):
        s = p.state
        p.backend.rmsprop_step(p.data, p.grad, s["square_avg"], s["grad_avg"] if group["centered"] else None,
                               s["momentum_buffer"] if group["momentum"] > 0 else None, group["lr"], group["alpha"],
                               group["eps"], group["weight_decay"], group["momentum"])
