"""nbcnn.train's parts on their own: the run's configuration, the ETA, the best epoch, counts in words."""

import pytest

from nbcnn.train import StepClock, TrainConfig, best_row, eta, plural


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("max_steps", 0), ("save_every", 0), ("save_every", 2.5), ("max_unreadable", 1.5),
    ("max_unreadable", -0.1)])
def test_config_refuses_a_bad_value(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{"epochs": 1, "checkpoint_path": "last.ckpt", field: value})


def test_config_takes_the_defaults():
    config = TrainConfig(epochs=3, checkpoint_path="last.ckpt")
    assert (config.save_every, config.max_steps, config.max_unreadable) == (None, None, 0.01)


def test_step_time_ignores_a_compile_step():
    clock = StepClock()
    for seconds in (30.0, 1.0, 1.1, 0.9, 1.0):
        clock.add(seconds, 32, 0.0)
    assert clock.step_seconds() == 1.0


def test_run_eta_counts_the_remaining_epochs_with_their_validation():
    epoch, run = eta(step_seconds=2.0, steps_left=3, epochs_after=2, steps_per_epoch=10, val_seconds=5.0)
    assert epoch == 3 * 2.0 + 5.0
    assert run == epoch + 2 * (10 * 2.0 + 5.0)


def test_best_row_is_the_first_lowest_validation_error():
    history = [{"epoch": 1, "val_top1_err": 0.5}, {"epoch": 2, "val_top1_err": 0.3},
               {"epoch": 3, "val_top1_err": 0.3}]
    assert best_row(history)["epoch"] == 2


@pytest.mark.parametrize("n, text", [(1, "1 epoch"), (0, "0 epochs"), (2, "2 epochs"), (4500, "4,500 epochs")])
def test_plural(n, text):
    assert plural(n, "epoch") == text


def test_plural_of_an_irregular_noun():
    assert plural(3, "class", "classes") == "3 classes" and plural(1, "class", "classes") == "1 class"


def test_a_failed_write_is_an_output_error_naming_the_path_and_the_reason(tmp_path):
    from nbcnn.train import OutputError, writing
    with pytest.raises(OutputError, match=r"^cannot write out/last.ckpt: No such file or directory$"):
        with writing("out/last.ckpt"):
            open(tmp_path / "missing" / "x", "wb")


@pytest.mark.parametrize("epoch, step, expected", [(2, 0, True), (1, 0, False), (2, 5, False)])
def test_ends_best_epoch(epoch, step, expected):
    from nbcnn.train import ends_best_epoch
    history = [{"epoch": 1, "val_top1_err": 0.5}, {"epoch": 2, "val_top1_err": 0.3}]
    assert ends_best_epoch(epoch, step, history) is expected


# -- make_schedule: the trainer's lr policies over nbcnn.lr_scheduler -----------------------------------
def sgd(lr=0.1):
    import numpy as np

    import nbcnn
    return nbcnn.SGD([nbcnn.Parameter(np.zeros(1, np.float32), nbcnn.get_backend("cpu"))], lr=lr)


def test_a_warm_up_ramps_per_step_then_the_plateau_counts_epochs_from_its_end():
    """2 steps an epoch, 1 warm-up epoch, plateau patience 1: the warm-up epoch's error is not counted."""
    from nbcnn.train import make_schedule
    opt = sgd()
    schedule = make_schedule(opt, "plateau", epochs=5, steps_per_epoch=2, patience=1, warmup_epochs=1)
    lrs = [opt.lr]
    for step in (1, 2):
        schedule.step_end(step)
        lrs.append(opt.lr)
    assert lrs == pytest.approx([0.001, 0.1 * (0.01 + 0.99 / 2), 0.1], rel=1e-12)
    schedule.epoch_end(1, 0.5)  # the warm-up's epoch: no best yet
    schedule.epoch_end(2, 0.5)  # the plateau's first epoch: the best
    assert opt.lr == 0.1
    schedule.epoch_end(3, 0.5)  # no better: lr / 10 (patience 1)
    assert opt.lr == pytest.approx(0.01, rel=1e-15)


def test_a_warm_up_schedule_resumes_inside_and_after_the_warm_up():
    from nbcnn.train import make_schedule

    def made(state=None):
        opt = sgd()
        schedule = make_schedule(opt, "cosine", epochs=3, steps_per_epoch=2, warmup_epochs=1)
        if state is not None:
            schedule.load_state_dict(state)
        return opt, schedule

    opt, schedule = made()
    for step in range(1, 6):
        schedule.step_end(step)
        again, _ = made(schedule.state_dict())
        assert again.lr == opt.lr, step


@pytest.mark.parametrize("kwargs, message", [
    ({"policy": "exp"}, "lr policy must be one of plateau, step, cosine, got 'exp'"),
    ({"warmup_epochs": 3}, r"the warm-up \(3 epochs\) must be shorter than the run \(3 epochs\)")])
def test_make_schedule_refuses(kwargs, message):
    from nbcnn.train import make_schedule
    with pytest.raises(ValueError, match=message):
        make_schedule(sgd(), **{"policy": "plateau", "epochs": 3, "steps_per_epoch": 2, **kwargs})


def test_a_process_other_than_rank_0_writes_nothing(tmp_path):
    """The Trainer of rank 1 (of a world of one, so that no MPI is needed) trains an epoch, stops at
    --max-steps in the next and writes no checkpoint, report or folder (rank 0 writes them)."""
    import numpy as np
    import nbcnn
    from nbcnn.data import Loader, Transform, embedded_mnist
    from nbcnn.distributed import World
    from nbcnn.models import alexnet_small
    from nbcnn.train import Trainer, make_schedule
    train, val = embedded_mnist()
    train, val = train.subset(np.arange(8)), val.subset(np.arange(4))
    transform = Transform(28, 28, mean=np.array([0.1], np.float32))
    world = World()
    world.rank = 1
    net = alexnet_small(10, 1, 28)
    opt = nbcnn.SGD(net.parameters(), lr=0.01)
    loader = Loader(train, transform, 4)
    reports = []
    out = tmp_path / "out"
    config = TrainConfig(epochs=2, checkpoint_path=str(out / "last.ckpt"), best_path=str(out / "best.ckpt"),
                         max_steps=3)
    trainer = Trainer(net, opt, loader, Loader(val, transform, 4), make_schedule(opt, "plateau", epochs=2,
                      steps_per_epoch=len(loader)), config, world=world,
                      write_reports=lambda history, model: reports.append(history), live=False)
    assert trainer.run() == "stopped"
    assert len(trainer.history) == 1 and trainer.global_step == 3  # it trained and validated
    assert not out.exists() and not list(tmp_path.iterdir()) and reports == []
