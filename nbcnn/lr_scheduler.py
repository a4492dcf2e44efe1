"""Learning-rate schedules with torch.optim.lr_scheduler's names and semantics, one small object each.

    opt = nbcnn.SGD(net.parameters(), lr=0.1, momentum=0.9)
    schedule = nbcnn.lr_scheduler.CosineAnnealingLR(opt, T_max=90)        # over 90 epochs
    for epoch in range(90):
        ...                                                                # the epoch's steps
        schedule.epoch_end(epoch + 1)                                      # sets opt's lrs for the next

A schedule is bound to an optimiser and sets the lr of each of its parameter groups from that
group's `initial_lr`: the lr the group had when the first schedule was made over it (recorded in
the group, as torch does, so schedules made one after another share it). Making a schedule sets
the lrs of its count 0 (a warm-up starts low). The hooks a training loop calls:

    schedule.epoch_end(epochs_done, val_error=None) -> lr   after every epoch (val_error: ReduceLROnPlateau)
    schedule.step_end(steps_done) -> lr                     after every optimiser step
    schedule.lr, schedule.lrs                               the first group's lr; every group's
    schedule.state_dict(), load_state_dict(state)           host data for checkpoints; loading sets the lrs

A schedule counts in the unit it was made with, `per="epoch"` (torch's usual use, the default) or
`per="step"`, and ignores the other hook, so a loop calls both. The counts are totals since the
start of training, not increments: the closed-form schedules (StepLR, CosineAnnealingLR, LinearLR,
SequentialLR) are pure functions of them, and a resumed run continues exactly. The state holds
the count and the initial lrs; the schedule's settings (T_max, ...) come from its constructor.
"""

import bisect
import math
import numbers

from .optim import Optimizer

UNITS = ("epoch", "step")


def whole(cls, name, value, least):
    """`value` as an int >= least, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{cls} {name} must be a whole number, got {value!r}")
    if value < least:
        raise ValueError(f"{cls} {name} must be >= {least}, got {value}")
    return int(value)


def real(cls, name, value, low, high, low_open=False, high_open=False):
    """`value` as a float within [low, high] (open where asked), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{cls} {name} must be a number, got {value!r}")
    value = float(value)
    if not (value > low if low_open else value >= low) or not (value < high if high_open else value <= high):
        raise ValueError(f"{cls} {name} must be in {'(' if low_open else '['}{low:g}, {high:g}"
                         f"{')' if high_open else ']'}, got {value}")
    return value


class LRScheduler:
    """The base: binds an optimiser, counts epochs or steps, sets the groups' lrs.

    A closed-form subclass implements `lr_at(count, initial_lr)`; others override `advance`.
    """

    def __init__(self, optimizer, per="epoch"):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{self.name} schedules an nbcnn optimiser, got {type(optimizer).__name__}")
        if per not in UNITS:
            raise ValueError(f"{self.name} per must be 'epoch' or 'step', got {per!r}")
        self.optimizer, self.per, self.last = optimizer, per, 0
        self.initial_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.set_lrs(self.lrs_at(0))

    @property
    def name(self):
        return type(self).__name__

    # -- the hooks ---------------------------------------------------------------------------
    def epoch_end(self, epochs_done, val_error=None):
        """After `epochs_done` epochs in all: the lrs for the next epoch (a per="epoch" schedule). Returns self.lr."""
        if self.per == "epoch":
            self.advance(whole(self.name, "epochs_done", epochs_done, 0), val_error)
        return self.lr

    def step_end(self, steps_done):
        """After `steps_done` optimiser steps in all: the lrs for the next step (a per="step" schedule). Returns self.lr."""
        if self.per == "step":
            self.advance(whole(self.name, "steps_done", steps_done, 0), None)
        return self.lr

    def advance(self, count, val_error):
        self.last = count
        self.set_lrs(self.lrs_at(count))

    @property
    def lr(self):
        """The first parameter group's lr."""
        return self.optimizer.param_groups[0]["lr"]

    @property
    def lrs(self):
        """Every parameter group's lr (torch's get_last_lr())."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def lrs_at(self, count):
        return [self.lr_at(count, lr) for lr in self.initial_lrs]

    def lr_at(self, count, initial_lr):
        raise NotImplementedError

    def set_lrs(self, lrs):
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self):
        return {"last": self.last, "initial_lrs": list(self.initial_lrs)}

    def load_state_dict(self, state):
        """Restore the count and initial lrs, and set the optimiser's lrs from them."""
        initial = [float(lr) for lr in state["initial_lrs"]]
        if len(initial) != len(self.optimizer.param_groups):
            raise ValueError(f"{self.name} state has {len(initial)} initial lrs for "
                             f"{len(self.optimizer.param_groups)} parameter groups")
        self.last, self.initial_lrs = whole(self.name, "last", state["last"], 0), initial
        for group, lr in zip(self.optimizer.param_groups, initial):
            group["initial_lr"] = lr
        self.restore_lrs(state)

    def restore_lrs(self, state):
        self.set_lrs(self.lrs_at(self.last))


class StepLR(LRScheduler):
    """torch's StepLR: lr = initial_lr * gamma ** (count // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, per="epoch"):
        self.step_size = whole(type(self).__name__, "step_size", step_size, 1)
        self.gamma = real(type(self).__name__, "gamma", gamma, 0, math.inf, low_open=True, high_open=True)
        super().__init__(optimizer, per)

    def lr_at(self, count, initial_lr):
        return initial_lr * self.gamma ** (count // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """torch's CosineAnnealingLR (its closed form): lr = eta_min + (initial_lr - eta_min) *
    (1 + cos(pi * count / T_max)) / 2, from initial_lr at 0 down to eta_min at T_max; past T_max
    it rises again along the same cosine, as torch's does."""

    def __init__(self, optimizer, T_max, eta_min=0.0, per="epoch"):  # noqa: N803 - torch's name
        self.T_max = whole(type(self).__name__, "T_max", T_max, 1)
        self.eta_min = real(type(self).__name__, "eta_min", eta_min, 0, math.inf, high_open=True)
        super().__init__(optimizer, per)

    def lr_at(self, count, initial_lr):
        return self.eta_min + (initial_lr - self.eta_min) * (1 + math.cos(math.pi * count / self.T_max)) / 2


class LinearLR(LRScheduler):
    """torch's LinearLR, the linear warm-up: lr = initial_lr * (start_factor + (end_factor - start_factor)
    * min(count, total_iters) / total_iters). Goyal et al.'s ramp from lr/k to lr over the first five
    epochs' steps is LinearLR(opt, start_factor=1/k, total_iters=5 * steps_per_epoch, per="step")."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, per="epoch"):
        name = type(self).__name__
        self.start_factor = real(name, "start_factor", start_factor, 0, 1, low_open=True)
        self.end_factor = real(name, "end_factor", end_factor, 0, 1)
        self.total_iters = whole(name, "total_iters", total_iters, 1)
        super().__init__(optimizer, per)

    def lr_at(self, count, initial_lr):
        return initial_lr * (self.start_factor + (self.end_factor - self.start_factor)
                             * min(self.total_iters, count) / self.total_iters)


class SequentialLR(LRScheduler):
    """torch's SequentialLR: schedules[i] from milestones[i-1] on, counting from 0 there. Warm-up then
    cosine: SequentialLR(opt, [LinearLR(opt, total_iters=w), CosineAnnealingLR(opt, T_max=n - w)], [w])."""

    def __init__(self, optimizer, schedulers, milestones):
        name = type(self).__name__
        schedulers, milestones = list(schedulers), [whole(name, "milestone", m, 1) for m in milestones]
        if not schedulers or len(milestones) != len(schedulers) - 1:
            raise ValueError(f"{name} needs one milestone fewer than schedules, got {len(schedulers)} "
                             f"schedules and {len(milestones)} milestones")
        if milestones != sorted(set(milestones)):
            raise ValueError(f"{name} milestones must increase, got {milestones}")
        for s in schedulers:
            if not isinstance(s, LRScheduler) or type(s).lr_at is LRScheduler.lr_at:
                raise TypeError(f"{name} chains closed-form schedules (StepLR, CosineAnnealingLR, LinearLR), "
                                f"got {type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"{name}: every schedule must be bound to the optimiser it is given")
        if len({s.per for s in schedulers}) != 1:
            raise ValueError(f"{name}: the schedules must count the same unit, got per={[s.per for s in schedulers]}")
        self.schedulers, self.milestones = schedulers, milestones
        super().__init__(optimizer, schedulers[0].per)

    def lr_at(self, count, initial_lr):
        i = bisect.bisect_right(self.milestones, count)
        return self.schedulers[i].lr_at(count - (self.milestones[i - 1] if i else 0), initial_lr)


class ReduceLROnPlateau(LRScheduler):
    """torch's ReduceLROnPlateau, per epoch: when the validation error has not improved on the best
    (mode "min": below best * (1 - threshold), or best - threshold with threshold_mode "abs") for
    more than `patience` epochs, every group's lr = max(lr * factor, min_lr), then `cooldown` epochs
    pass before counting again. (nbcnn.train's "plateau" policy with --lr-patience P is patience=P-1,
    threshold_mode "abs", threshold 1e-6.) An epoch count it has already seen is not counted again."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8):
        name = type(self).__name__
        if mode not in ("min", "max"):
            raise ValueError(f"{name} mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{name} threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor = real(name, "factor", factor, 0, 1, low_open=True, high_open=True)
        self.patience = whole(name, "patience", patience, 0)
        self.threshold = real(name, "threshold", threshold, 0, math.inf, high_open=True)
        self.cooldown = whole(name, "cooldown", cooldown, 0)
        self.eps = real(name, "eps", eps, 0, math.inf, high_open=True)
        groups = len(optimizer.param_groups) if isinstance(optimizer, Optimizer) else 0
        min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * groups
        if len(min_lrs) != groups:
            raise ValueError(f"{name} got {len(min_lrs)} min_lr values for {groups} parameter groups")
        self.min_lrs = [real(name, "min_lr", v, 0, math.inf, high_open=True) for v in min_lrs]
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0
        super().__init__(optimizer, "epoch")

    def lrs_at(self, count):
        return self.lrs  # the groups' lrs as they are: made, it changes nothing (torch's neither)

    def advance(self, count, val_error):
        if val_error is None:
            raise ValueError(f"{self.name}.epoch_end needs the validation error (epoch_end(epochs_done, val_error))")
        if count <= self.last:
            return
        self.last = count
        current = float(val_error)
        if self.is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
                new = max(group["lr"] * self.factor, min_lr)
                if group["lr"] - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def is_better(self, a):
        """torch's rule: better than the best by more than the threshold (relative or absolute)."""
        if self.mode == "min":
            return a < (self.best * (1.0 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold)
        return a > (self.best * (self.threshold + 1.0) if self.threshold_mode == "rel" else self.best + self.threshold)

    def state_dict(self):
        return {**super().state_dict(), "best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter, "lrs": self.lrs}

    def restore_lrs(self, state):
        lrs = [float(lr) for lr in state["lrs"]]
        if len(lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"{self.name} state has {len(lrs)} lrs for {len(self.optimizer.param_groups)} groups")
        self.best, self.num_bad_epochs = float(state["best"]), whole(self.name, "num_bad_epochs", state["num_bad_epochs"], 0)
        self.cooldown_counter = whole(self.name, "cooldown_counter", state["cooldown_counter"], 0)
        self.set_lrs(lrs)
