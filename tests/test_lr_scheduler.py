"""nbcnn.lr_scheduler: each schedule against its formula and against torch.optim.lr_scheduler
(where torch is importable) over two parameter groups, the units it counts, state_dict round
trips, the equivalence of the trainer's policies with its LRSchedule before them, and the errors."""

import math

import numpy as np
import pytest

import nbcnn
from nbcnn import lr_scheduler as sched

COUNTS = 20
LRS = (0.1, 0.03)  # two parameter groups


def optimiser(lrs=LRS):
    w, b = nbcnn.Linear(2, 2).parameters()
    return nbcnn.SGD([{"params": [w], "lr": lrs[0]}, {"params": [b], "lr": lrs[1]}], lr=1.0)


def sequence(schedule, errors=None):
    """Every group's lrs after 0, 1, ..., COUNTS epochs (one per validation error when given)."""
    out = [schedule.lrs]
    for n in range(1, (COUNTS if errors is None else len(errors)) + 1):
        schedule.epoch_end(n, None if errors is None else errors[n - 1])
        out.append(schedule.lrs)
    return np.array(out)


# (nbcnn schedule, torch schedule, the formula of lr after n counts from the initial lr)
CLOSED_FORMS = {
    "StepLR": (lambda o: sched.StepLR(o, step_size=3, gamma=0.5),
               lambda t, o: t.StepLR(o, step_size=3, gamma=0.5),
               lambda n, lr: lr * 0.5 ** (n // 3)),
    "CosineAnnealingLR": (lambda o: sched.CosineAnnealingLR(o, T_max=7, eta_min=1e-3),
                          lambda t, o: t.CosineAnnealingLR(o, T_max=7, eta_min=1e-3),
                          lambda n, lr: 1e-3 + (lr - 1e-3) * (1 + math.cos(math.pi * n / 7)) / 2),
    "LinearLR": (lambda o: sched.LinearLR(o, start_factor=0.1, total_iters=4),
                 lambda t, o: t.LinearLR(o, start_factor=0.1, total_iters=4),
                 lambda n, lr: lr * (0.1 + 0.9 * min(n, 4) / 4)),
    "SequentialLR": (lambda o: sched.SequentialLR(o, [sched.LinearLR(o, start_factor=0.25, total_iters=3),
                                                      sched.CosineAnnealingLR(o, T_max=10)], milestones=[3]),
                     lambda t, o: t.SequentialLR(o, [t.LinearLR(o, start_factor=0.25, total_iters=3),
                                                     t.CosineAnnealingLR(o, T_max=10)], milestones=[3]),
                     lambda n, lr: (lr * (0.25 + 0.75 * n / 3) if n < 3
                                    else lr * (1 + math.cos(math.pi * (n - 3) / 10)) / 2)),
}


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_form_schedules_follow_their_formula(name):
    make, _, formula = CLOSED_FORMS[name]
    got = sequence(make(optimiser()))
    want = np.array([[formula(n, lr) for lr in LRS] for n in range(COUNTS + 1)])
    np.testing.assert_allclose(got, want, rtol=1e-14)


def torch_sequence(make_torch, errors=None):
    torch = pytest.importorskip("torch", reason="torch is not installed: only the formulas check the schedules")
    import warnings
    t = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([{"params": [t[0]], "lr": LRS[0]}, {"params": [t[1]], "lr": LRS[1]}], lr=1.0)
    schedule = make_torch(torch.optim.lr_scheduler, opt)
    out = [[g["lr"] for g in opt.param_groups]]
    for n in range(COUNTS if errors is None else len(errors)):
        opt.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SequentialLR's deprecation notes
            schedule.step() if errors is None else schedule.step(errors[n])
        out.append([g["lr"] for g in opt.param_groups])
    return np.array(out)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_form_schedules_match_torch(name):
    make, make_torch, _ = CLOSED_FORMS[name]
    # torch computes cosine and linear recursively, lr from the last lr: the same values within rounding
    np.testing.assert_allclose(sequence(make(optimiser())), torch_sequence(make_torch), rtol=1e-14)


ERRORS = [0.5, 0.4, 0.4, 0.41, 0.4, 0.39, 0.39, 0.39, 0.39, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.1, 0.1, 0.1, 0.1]
PLATEAUS = [dict(patience=1), dict(patience=0, cooldown=2, min_lr=[1e-3, 0.0]),
            dict(patience=1, threshold=0.02, threshold_mode="abs"), dict(mode="max", patience=2, factor=0.5)]


@pytest.mark.parametrize("kw", PLATEAUS, ids=[str(kw) for kw in PLATEAUS])
def test_reduce_on_plateau_matches_torch(kw):
    got = sequence(sched.ReduceLROnPlateau(optimiser(), **kw), errors=ERRORS)
    want = torch_sequence(lambda t, o: t.ReduceLROnPlateau(o, **kw), errors=ERRORS)
    assert np.array_equal(got, want)


def test_reduce_on_plateau_follows_its_rule():
    """patience 1: the lr drops by the factor after the second epoch in a row without a new best."""
    got = sequence(sched.ReduceLROnPlateau(optimiser(), patience=1, threshold=0.0), errors=ERRORS[:9])[:, 0]
    # epochs 1, 2: new bests .5, .4; 3, 4 (.4, .41): two without, drop; 5 (.4): one; 6: new best .39;
    # 7, 8 (.39, .39): two without, drop; 9: one
    want = [0.1] * 4 + [0.1 * 0.1] * 4 + [0.1 * 0.1 * 0.1] * 2
    assert got.tolist() == want


class LegacyLRSchedule:
    """nbcnn.train.LRSchedule as main had it before the trainer used these schedules (b136b3e): the
    reference the trainer's "plateau" and "step" policies, and the state older checkpoints hold, are held to."""

    def __init__(self, policy, lr, step=30, patience=2):
        self.policy, self.base_lr, self.step, self.patience = policy, lr, step, patience
        self.lr, self.best, self.bad_epochs = lr, math.inf, 0

    def epoch_end(self, epochs_done, val_error):
        if self.policy == "step":
            self.lr = self.base_lr * 0.1 ** (epochs_done // self.step)
        elif val_error < self.best - 1e-6:
            self.best, self.bad_epochs = val_error, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.lr, self.bad_epochs = self.lr / 10, 0
        self.best = min(self.best, val_error)
        return self.lr

    def state_dict(self):
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs}


def trainer_schedule(policy):
    from nbcnn.train import make_schedule
    opt = nbcnn.SGD(nbcnn.Linear(2, 2).parameters(), lr=0.1)
    return make_schedule(opt, policy, epochs=100, steps_per_epoch=1, step=3, patience=2)


@pytest.mark.parametrize("policy", ["plateau", "step"])
def test_the_trainers_policies_are_the_old_ones(policy):
    """nbcnn.train.make_schedule's plateau (--lr-patience 2) and step (--lr-step 3) policies, lr for lr."""
    old, new = LegacyLRSchedule(policy, 0.1, step=3, patience=2), trainer_schedule(policy)
    for n, err in enumerate(ERRORS, 1):
        assert math.isclose(new.epoch_end(n, err), old.epoch_end(n, err), rel_tol=1e-15), n


@pytest.mark.parametrize("policy", ["plateau", "step"])
def test_an_old_schedule_state_continues_as_it_would_have(policy):
    """legacy_schedule_state: the old state after k epochs, loaded into the trainer's schedule,
    gives the lrs the old schedule gives after it, for every k."""
    from nbcnn.train import is_legacy_schedule_state, legacy_schedule_state
    for k in range(len(ERRORS)):
        old = LegacyLRSchedule(policy, 0.1, step=3, patience=2)
        for n in range(1, k + 1):
            old.epoch_end(n, ERRORS[n - 1])
        assert is_legacy_schedule_state(old.state_dict())
        new = trainer_schedule(policy)
        new.load_state_dict(legacy_schedule_state(old.state_dict(), policy, 0.1, k))
        assert math.isclose(new.lr, old.lr, rel_tol=1e-15), k
        for n in range(k + 1, len(ERRORS) + 1):
            assert math.isclose(new.epoch_end(n, ERRORS[n - 1]), old.epoch_end(n, ERRORS[n - 1]), rel_tol=1e-15), (k, n)


def test_making_a_schedule_sets_the_lr_of_count_zero():
    opt = optimiser()
    sched.LinearLR(opt, start_factor=0.5, total_iters=2)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.015]
    assert [g["initial_lr"] for g in opt.param_groups] == list(LRS)  # the schedule counts from these


def test_a_schedule_counts_only_its_unit():
    opt = optimiser()
    per_step = sched.LinearLR(opt, start_factor=0.5, total_iters=4, per="step")
    assert per_step.epoch_end(3) == 0.05  # not its unit: nothing changes
    assert per_step.step_end(2) == pytest.approx(0.075)
    per_epoch = sched.StepLR(optimiser(), step_size=1)
    assert per_epoch.step_end(5) == 0.1 and per_epoch.epoch_end(2) == pytest.approx(0.001)


def test_warm_up_by_steps_then_cosine_by_steps():
    """Goyal et al.'s ramp over 2 epochs of 5 steps, then a cosine over the 8 epochs left."""
    opt = optimiser((0.4, 0.4))
    schedule = sched.SequentialLR(opt, [sched.LinearLR(opt, start_factor=0.25, total_iters=10, per="step"),
                                        sched.CosineAnnealingLR(opt, T_max=40, per="step")], milestones=[10])
    lrs = [schedule.lr] + [schedule.step_end(n) for n in range(1, 51)]
    np.testing.assert_allclose(lrs[:11], 0.4 * (0.25 + 0.75 * np.arange(11) / 10), rtol=1e-15)
    np.testing.assert_allclose(lrs[10:], 0.4 * (1 + np.cos(np.pi * np.arange(41) / 40)) / 2, rtol=1e-15, atol=1e-17)


MAKERS = [lambda o: sched.StepLR(o, 2), lambda o: sched.CosineAnnealingLR(o, 9, per="step"),
          lambda o: sched.SequentialLR(o, [sched.LinearLR(o, total_iters=2), sched.StepLR(o, 2)], [2]),
          lambda o: sched.ReduceLROnPlateau(o, patience=0)]


@pytest.mark.parametrize("make", MAKERS, ids=["StepLR", "CosineAnnealingLR", "SequentialLR", "ReduceLROnPlateau"])
def test_a_state_dict_round_trip_continues_identically(make):
    """The resume of a run: a new optimiser and schedule loading both states go on with the same lrs."""
    opt = optimiser()
    schedule = make(opt)
    for n in range(1, 6):
        schedule.epoch_end(n, ERRORS[n - 1]), schedule.step_end(n)
    saved_opt, saved = opt.state_dict(), schedule.state_dict()
    later = [(schedule.epoch_end(n, ERRORS[n - 1]), schedule.step_end(n), schedule.lrs)[2] for n in range(6, 15)]

    other_opt = optimiser((1.0, 1.0))
    other = make(other_opt)
    other_opt.load_state_dict(saved_opt)
    other.load_state_dict(saved)
    assert other.lrs == [g["lr"] for g in saved_opt["param_groups"]]
    assert later == [(other.epoch_end(n, ERRORS[n - 1]), other.step_end(n), other.lrs)[2] for n in range(6, 15)]


def test_plateau_counts_an_epoch_once():
    schedule = sched.ReduceLROnPlateau(optimiser(), patience=0)
    schedule.epoch_end(1, 0.5)
    assert schedule.epoch_end(2, 0.6) == pytest.approx(0.01)
    assert schedule.epoch_end(2, 0.6) == pytest.approx(0.01)  # the same epoch again: no second drop


@pytest.mark.parametrize("make, error, message", [
    (lambda o: sched.StepLR(o, 0), ValueError, "step_size must be >= 1"),
    (lambda o: sched.StepLR(o, 2.5), TypeError, "step_size must be a whole number"),
    (lambda o: sched.StepLR(o, 2, gamma=-0.1), ValueError, "gamma must be in"),
    (lambda o: sched.CosineAnnealingLR(o, 0), ValueError, "T_max must be >= 1"),
    (lambda o: sched.CosineAnnealingLR(o, 5, eta_min=math.nan), ValueError, "eta_min must be in"),
    (lambda o: sched.LinearLR(o, start_factor=0.0), ValueError, "start_factor must be in"),
    (lambda o: sched.LinearLR(o, per="batch"), ValueError, "per must be 'epoch' or 'step'"),
    (lambda o: sched.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor must be in"),
    (lambda o: sched.ReduceLROnPlateau(o, mode="lowest"), ValueError, "mode must be 'min' or 'max'"),
    (lambda o: sched.ReduceLROnPlateau(o, min_lr=[0.0]), ValueError, "1 min_lr values for 2 parameter groups"),
    (lambda o: sched.ReduceLROnPlateau(o).epoch_end(1), ValueError, "needs the validation error"),
    (lambda o: sched.StepLR(o, 2).epoch_end(-1), ValueError, "epochs_done must be >= 0"),
    (lambda o: sched.StepLR(None, 2), TypeError, "schedules an nbcnn optimiser"),
    (lambda o: sched.SequentialLR(o, [sched.StepLR(o, 2), sched.StepLR(o, 3)], []), ValueError, "one milestone fewer"),
    (lambda o: sched.SequentialLR(o, [sched.StepLR(o, 2), sched.StepLR(o, 3, per="step")], [2]), ValueError,
     "the same unit"),
    (lambda o: sched.SequentialLR(o, [sched.ReduceLROnPlateau(o), sched.StepLR(o, 3)], [2]), TypeError,
     "closed-form schedules"),
])
def test_bad_settings_are_named(make, error, message):
    with pytest.raises(error, match=message):
        make(optimiser())
