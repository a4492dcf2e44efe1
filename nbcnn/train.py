"""The training loop: optimiser steps, validation, the learning-rate schedule, progress lines,
checkpoints (epoch ends, every --save-every steps, Ctrl-C, --max-steps) and the errors a
user can act on.

Resuming is exact: a step's batch depends only on (seed, epoch, step) (nbcnn.data.loader),
and a checkpoint holds the parameters and buffers, the optimiser's state and lrs, the schedule's
state, the dropout counter and numpy generator, and the position (epoch, step) with the epoch's
running sums.

The schedule is an nbcnn.lr_scheduler object (or a WarmUp of one) bound to the optimiser: the
trainer calls its step_end(global_step) after every step and epoch_end(epochs_done, val_error)
after every epoch, and the schedule sets the optimiser's lrs itself.

Data parallel (a World of several processes, nbcnn.distributed): each process trains on its
shard of every global batch through DataParallel (gradients averaged before the optimiser step),
validates on its share of the validation batches, and the sums of both are added over the
processes, so every process holds the same history; only rank 0 writes checkpoints and reports.

Crash safety: every file is written atomically. last.ckpt is written when an epoch's steps
are done (before validating, so that a failed validation loses no training), then at the
epoch end in the order last.ckpt, best.ckpt (a byte copy of last.ckpt when the epoch is the
best so far), then the reports. A run killed between two of these writes is made whole when
resumed: best.ckpt is copied again when the resumed checkpoint ends the best epoch and
best.ckpt's digest differs, and the reports are rewritten from the checkpoint's history.
"""

import collections
import contextlib
import math
import signal
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from .array import asarray, to_numpy
from .checkpoint import checkpoint_digest, copy_checkpoint, save_checkpoint
from .data.datasets import DataError
from .distributed import DataParallel, World
from .errors import NonFiniteLossError, OutOfMemoryError
from .loss import softmax_cross_entropy
from .lr_scheduler import CosineAnnealingLR, LinearLR, ReduceLROnPlateau, StepLR

# Top-5 error is reported only with at least this many classes: with 5 or fewer it is always 0.
TOP5_MIN_CLASSES = 6


class TrainingError(Exception):
    """Training cannot go on (NaN loss, out of GPU memory); the message says what to do."""


class OutputError(Exception):
    """An output file or folder could not be written (disk full, permissions); the message names
    the path and the operating system's reason."""


@contextlib.contextmanager
def writing(path):
    """Turn an OSError raised while writing `path` into an OutputError naming it."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


class Interrupted(Exception):
    """Ctrl-C: a checkpoint was saved at `path`. Raised in every process of a data-parallel run at
    the same point; `announce` is True in the one that prints (rank 0)."""

    def __init__(self, path, announce=True):
        super().__init__(path)
        self.path, self.announce = path, announce


# -- small helpers --------------------------------------------------------------------------------
def plural(n, one, many=None):
    """'1 epoch', '2 epochs', '4,500 images': a count with its noun in the right number."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def fmt_time(seconds):
    """Seconds as h:mm:ss."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def errors_at(probs_or_logits, y, k):
    """Fraction of rows whose label is not among the k highest scores."""
    k = min(k, probs_or_logits.shape[1])
    top = np.argpartition(-probs_or_logits, k - 1, axis=1)[:, :k]
    return float(np.mean(~(top == y[:, None]).any(axis=1)))


def log_softmax(z):
    """Row-wise log-softmax of float64 logits, stable for large values."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def best_row(history):
    """The history row of the first epoch with the lowest validation top-1 error (best.ckpt's)."""
    return min(history, key=lambda row: (row["val_top1_err"], row["epoch"]))


def ends_best_epoch(epoch, step, history):
    """True at the end (step 0) of `epoch` when it is the epoch with the lowest validation error."""
    return step == 0 and bool(history) and best_row(history)["epoch"] == epoch


def repair_best(source, best, epoch, step, history):
    """best.ckpt after a kill: copy the checkpoint `source` to `best` when it ends the best epoch
    and `best` is missing or holds another checkpoint; True when it copied."""
    if not (best and ends_best_epoch(epoch, step, history)):
        return False
    digest = checkpoint_digest(best)
    if digest is not None and digest == checkpoint_digest(source):
        return False
    with writing(best):
        copy_checkpoint(source, best)
    return True


def is_out_of_memory(net, exc):
    """True when `exc` says the network's backend ran out of memory."""
    return isinstance(exc, OutOfMemoryError) or net.backend.is_out_of_memory(exc)


def eta(step_seconds, steps_left, epochs_after, steps_per_epoch, val_seconds):
    """(seconds to the end of this epoch, seconds to the end of the run), validation included."""
    epoch = steps_left * step_seconds + val_seconds
    return epoch, epoch + epochs_after * (steps_per_epoch * step_seconds + val_seconds)


# -- one step, one validation pass ----------------------------------------------------------------
def train_step(net, opt, x, y, device):
    """One optimiser step on a batch; returns (loss, host logits)."""
    logits = net(asarray(x, device))
    loss, dlogits = softmax_cross_entropy(logits, asarray(y, device))  # NonFiniteLossError on NaN/inf logits
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"the loss is {loss}", loss)
    opt.zero_grad()
    net.backward(dlogits, input_grad=False)  # nobody needs the images' gradient
    opt.step()
    return loss, to_numpy(logits)


class UnreadableCounter:
    """Counts skipped images of one split per epoch and stops past `limit` (a fraction) of it."""

    def __init__(self, split, size, limit, count=0):
        self.split, self.size, self.limit, self.count, self.examples = split, size, limit, count, []

    def add(self, bad, errors=()):
        """`bad` more skipped images, with up to three of their messages (a process of several has only its own)."""
        if not bad:
            return
        self.count += bad
        self.examples = (self.examples + list(errors))[:3]
        if self.count > self.limit * self.size:
            examples = "; for example: " + "; ".join(self.examples) if self.examples else ""
            raise DataError(f"{self.count:,} of {self.size:,} {self.split} images could not be read, more "
                            f"than the {self.limit:.4g} allowed (--max-unreadable){examples}")


def evaluate(net, loader, device, ten_crop=False, should_stop=lambda: False, max_unreadable=0.01, world=None):
    """(loss, top-1 error, top-5 error) over the loader's dataset; top-5 is None with fewer than
    TOP5_MIN_CLASSES classes; None when interrupted. With a `world` of several processes, each
    evaluates its shard of the loader's batches and the sums are added over all of them."""
    net.eval()
    total_loss, err1, err5, n, classes = 0.0, 0.0, 0.0, 0, 0
    counter = UnreadableCounter("validation", len(loader.dataset), max_unreadable)
    try:
        for batch in loader.eval_batches(ten_crop):
            counter.add(batch.bad, batch.errors)  # this process's count: already past the limit, the whole split's is
            if len(batch.y) == 0:
                continue
            logp = eval_log_probs(net, batch.x, device, ten_crop)
            m = len(batch.y)
            total_loss += -logp[np.arange(m), batch.y].sum()
            err1 += errors_at(logp, batch.y, 1) * m
            err5 += errors_at(logp, batch.y, 5) * m
            n, classes = n + m, logp.shape[1]
            if should_stop():
                return None
    finally:
        net.train()
    if world is not None and world.size > 1:  # a process may have had no batch: its classes are 0
        (total_loss, err1, err5, n, bad), (classes,) = (world.sum([total_loss, err1, err5, n, counter.count]),
                                                        world.max([classes]))
        counter.add(int(bad) - counter.count)  # the other processes' skipped images: the limit is the split's
    if n == 0:
        raise DataError("no validation image could be read")
    top5 = err5 / n if classes >= TOP5_MIN_CLASSES else None
    return total_loss / n, err1 / n, top5


def eval_log_probs(net, x, device, ten_crop):
    """float64 log-probabilities of a batch; with ten crops, of the averaged softmax (the paper)."""
    if not ten_crop:
        return log_softmax(to_numpy(net(asarray(x, device))).astype(np.float64))
    m, t = x.shape[:2]
    logits = to_numpy(net(asarray(x.reshape(m * t, *x.shape[2:]), device))).astype(np.float64)
    probs = np.exp(log_softmax(logits)).reshape(m, t, -1).mean(axis=1)
    return np.log(np.maximum(probs, 1e-300))


# -- learning-rate policies: nbcnn.lr_scheduler objects --------------------------------------------
POLICIES = ("plateau", "step", "cosine")
# A warm-up starts at this fraction of the lr (torchvision's --lr-warmup-decay default).
WARMUP_START = 0.01


class WarmUp:
    """A linear warm-up over the first `epochs` epochs (per step: `steps` optimiser steps), then
    `main`, which counts its epochs and steps from the warm-up's end. For a closed-form main
    schedule counting steps this is torch's SequentialLR([LinearLR, main], milestones=[steps]);
    it also runs ReduceLROnPlateau or a per-epoch StepLR after a per-step warm-up, which
    SequentialLR cannot. The same hooks and state_dict as the schedules."""

    def __init__(self, optimizer, main, epochs, steps, start_factor=WARMUP_START):
        self.main, self.epochs, self.steps = main, epochs, steps
        # made after `main`, whose making sets the lrs of its count 0
        self.warmup = LinearLR(optimizer, start_factor=start_factor, total_iters=steps, per="step")

    @property
    def lr(self):
        return self.main.lr

    def step_end(self, steps_done):
        if steps_done <= self.steps:
            return self.warmup.step_end(steps_done)
        return self.main.step_end(steps_done - self.steps)

    def epoch_end(self, epochs_done, val_error=None):
        if epochs_done <= self.epochs:  # a warm-up epoch's error says nothing about a plateau
            return self.lr
        return self.main.epoch_end(epochs_done - self.epochs, val_error)

    def state_dict(self):
        return {"warmup": self.warmup.state_dict(), "main": self.main.state_dict()}

    def load_state_dict(self, state):
        self.main.load_state_dict(state["main"])
        self.warmup.load_state_dict(state["warmup"])  # sets the warm-up's lrs ...
        if self.warmup.last >= self.steps:
            self.main.restore_lrs(state["main"])  # ... or, past it, the main schedule's


def make_schedule(opt, policy, *, epochs, steps_per_epoch, step=30, patience=2, warmup_epochs=0):
    """The trainer's lr policy over `opt` (the lr its groups have now is the initial lr):

    "plateau": lr / 10 after `patience` epochs without a lower validation top-1 error (the
    paper's rule, automated); "step": lr / 10 every `step` epochs; "cosine": cosine annealing per
    step to 0 at the end of the last epoch. `warmup_epochs` > 0 first ramps the lr linearly per
    step from WARMUP_START * lr, and the policy counts its epochs from the warm-up's end.
    """
    if policy not in POLICIES:
        raise ValueError(f"lr policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(f"the warm-up ({warmup_epochs} epochs) must be shorter than the run ({epochs} epochs)")
    if policy == "plateau":
        main = ReduceLROnPlateau(opt, patience=patience - 1, threshold=1e-6, threshold_mode="abs")
    elif policy == "step":
        main = StepLR(opt, step_size=step)
    else:
        main = CosineAnnealingLR(opt, T_max=(epochs - warmup_epochs) * steps_per_epoch, per="step")
    if warmup_epochs == 0:
        return main
    return WarmUp(opt, main, warmup_epochs, warmup_epochs * steps_per_epoch)


def is_legacy_schedule_state(state):
    """True for the state nbcnn.train's LRSchedule saved (checkpoints before the lr_scheduler objects)."""
    return isinstance(state, dict) and set(state) == {"lr", "best", "bad_epochs"}


def legacy_schedule_state(state, policy, initial_lr, epochs_done):
    """The state of make_schedule(policy) (no warm-up) that continues a LRSchedule state saved after
    `epochs_done` epochs of a run whose initial lr was `initial_lr`."""
    common = {"last": int(epochs_done), "initial_lrs": [float(initial_lr)]}
    if policy == "step":
        return common
    return {**common, "best": float(state["best"]), "num_bad_epochs": int(state["bad_epochs"]),
            "cooldown_counter": 0, "lrs": [float(state["lr"])]}


# -- configuration ------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """How a run goes, beyond the model, the data and the schedule; checked on construction."""

    epochs: int
    checkpoint_path: str                # last.ckpt
    best_path: str | None = None        # best.ckpt: the epoch with the lowest validation top-1 error
    device: str = "cpu"
    seed: int = 0
    ten_crop: bool = False              # validate on the paper's ten crops
    max_steps: int | None = None        # stop (with a checkpoint) after this many steps in all
    save_every: int | None = None       # also checkpoint every this many steps
    max_unreadable: float = 0.01        # stop when more than this fraction of a split cannot be read
    resumed_from: str | None = None     # the checkpoint this run continues

    def __post_init__(self):
        for name in ("epochs", "max_steps", "save_every"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise ValueError(f"TrainConfig.{name} must be a whole number >= 1, got {value!r}")
        if not 0 <= self.max_unreadable <= 1:
            raise ValueError(f"TrainConfig.max_unreadable must be a fraction in [0, 1], got {self.max_unreadable!r}")


def fresh_sums():
    """The running sums of an epoch's training steps, and the lr of its last step (None before one)."""
    return {"loss": 0.0, "err1": 0.0, "n": 0, "bad": 0, "lr": None}


# -- progress lines -------------------------------------------------------------------------------
class StepClock:
    """The seconds (compute and data wait), images and data wait of the recent steps.

    The step time is their median, so the seconds-long steps that compile kernels (the first
    of a run, of a validation) do not swing the ETA.
    """

    def __init__(self, window=25):
        self.recent = collections.deque(maxlen=window)

    def add(self, seconds, images, wait):
        self.recent.append((seconds, images, wait))

    def step_seconds(self):
        return statistics.median(r[0] for r in self.recent)

    def images_per_second(self):
        return sum(r[1] for r in self.recent) / max(sum(r[0] for r in self.recent), 1e-9)

    def mean_wait(self):
        return sum(r[2] for r in self.recent) / len(self.recent)


class Printer:
    """Progress lines: one rewritten line on a terminal (`live`), ten lines an epoch otherwise."""

    def __init__(self, out, live):
        self.out, self.live = out, live

    def step(self, line, step, n_steps):
        if self.live:
            print("\r" + line.ljust(120), end="", file=self.out, flush=True)
        elif step == n_steps or step % max(1, n_steps // 10) == 0:
            print(line, file=self.out, flush=True)

    def end_line(self):
        """End the live line, so that the next message starts a line of its own."""
        if self.live:
            print(file=self.out, flush=True)

    def say(self, text):
        print(text, file=self.out, flush=True)


# -- the trainer ------------------------------------------------------------------------------------
class Trainer:
    """Runs epochs of `net` on `train_loader`, validating on `val_loader` after each.

    `schedule` sets the optimiser's lrs (make_schedule). `progress` is the dict a checkpoint
    stored (None for a fresh run), restored after the optimiser's state; `extra` is stored in
    every checkpoint beside it (the script's arguments and data statistics);
    `write_reports(history, net)` writes the run's reports after each epoch and on resume.
    `world` (nbcnn.distributed.init()'s) of several processes: data-parallel steps (the loaders
    sharded by the caller), rank 0's parameters and buffers taken at the start, files written by
    rank 0 only.
    """

    def __init__(self, net, opt, train_loader, val_loader, schedule, config, *, progress=None,
                 extra=None, write_reports=None, out=None, live=None, world=None):
        self.net, self.opt, self.train_loader, self.val_loader = net, opt, train_loader, val_loader
        self.world = world or World()
        self.schedule, self.config = schedule, config
        self.extra, self.write_reports = extra or {}, write_reports
        out = out or sys.stdout
        self.printer = Printer(out, out.isatty() if live is None else live)
        self.clock = StepClock()
        self.stop_requested = False
        self.restore_position(progress or {})
        if progress is not None:
            schedule.load_state_dict(progress["schedule"])
        self.dp = DataParallel(net, self.world, log=self.printer.say) if self.world.size > 1 else None

    # -- checkpoints ---------------------------------------------------------------------
    def restore_position(self, p):
        """Where the run stands: from a checkpoint's progress dict ({} for a fresh run)."""
        self.epoch, self.step, self.global_step = p.get("epoch", 0), p.get("step", 0), p.get("global_step", 0)
        self.sums = {**fresh_sums(), **p.get("sums", {})}  # older checkpoints' sums lack the lr
        self.history = list(p.get("history", []))
        self.elapsed = p.get("elapsed", 0.0)  # seconds of training and validation, all sessions
        self.val_seconds = p.get("val_seconds")  # the last validation's, for the ETA
        self.last_save = self.position() if p else None  # where the last checkpoint was written

    def position(self):
        """Where the run stands, in words: an epoch end, or a step inside an epoch."""
        if self.step == 0:
            return f"the end of epoch {self.epoch}"
        return f"global step {self.global_step} (epoch {self.epoch + 1} step {self.step})"

    def progress(self):
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                "sums": dict(self.sums), "history": list(self.history), "elapsed": self.elapsed,
                "val_seconds": self.val_seconds, "schedule": self.schedule.state_dict(),
                "seed": self.config.seed, **self.extra}

    def save(self):
        if self.world.is_root:  # every process holds the same state
            with writing(self.config.checkpoint_path):
                save_checkpoint(self.config.checkpoint_path, self.net, self.opt, **self.progress())
        self.last_save = self.position()

    def save_epoch(self):
        """last.ckpt at an epoch end, then best.ckpt as its byte copy when the epoch is the best."""
        self.save()
        if self.world.is_root and self.config.best_path and ends_best_epoch(self.epoch, self.step, self.history):
            with writing(self.config.best_path):
                copy_checkpoint(self.config.checkpoint_path, self.config.best_path)

    def save_before_validation(self):
        """last.ckpt at the end of the epoch's steps (unless it holds that position already), so
        that a validation that fails (out of memory, a kill) loses none of the epoch's training."""
        if self.last_save != self.position():
            self.save()

    def repair_outputs(self):
        """On resume, redo the writes a kill may have cut off after the resumed checkpoint:
        best.ckpt when that checkpoint ends the best epoch, and the reports."""
        if not self.world.is_root:
            return
        source, best = self.config.resumed_from, self.config.best_path
        if repair_best(source, best, self.epoch, self.step, self.history):
            self.printer.say(f"{best} was missing or older than epoch {self.epoch}: copied it from {source}")
        if self.history and self.write_reports is not None:
            self.write_reports(self.history, self.net)

    # -- Ctrl-C: finish the step, then save --------------------------------------------------
    def _on_sigint(self, signum, frame):
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        if self.world.is_root:
            print("\nCtrl-C: saving a checkpoint after this step (Ctrl-C again to quit without saving)",
                  file=sys.stderr, flush=True)

    def stop_agreed(self):
        """Whether Ctrl-C stops the run here: this process's request, or with several processes
        any process's, summed at a point every process reaches. mpiexec forwards Ctrl-C to every
        process, but each receives it at its own point of a step (and a process signalled alone
        must stop the others), so a process that stopped on its own flag would leave the rest
        waiting in their next collective."""
        if self.world.size == 1:
            return self.stop_requested
        return self.world.sum([float(self.stop_requested)])[0] > 0

    @contextlib.contextmanager
    def sigint_handler(self):
        try:
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            previous = None
        try:
            yield
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def interrupt(self):
        """Save (unless the last checkpoint holds this position), then end the run: in every process
        at once, past rank 0's writing (a process that ended first could end the job before it)."""
        if self.last_save != self.position():
            self.save()
        self.world.barrier()
        raise Interrupted(self.config.checkpoint_path, announce=self.world.is_root)

    # -- the loop ------------------------------------------------------------------------------
    def run(self):
        """Train to the last epoch ("done") or to --max-steps ("stopped")."""
        if self.config.resumed_from:
            self.repair_outputs()
        with self.sigint_handler(), self.train_loader, self.val_loader:
            while self.epoch < self.config.epochs:
                if not self.train_epoch():
                    return "stopped"
                self.save_before_validation()
                self.end_epoch(self.validate())
        return "done"

    def train_epoch(self):
        """The current epoch's steps from self.step on; False when stopped at --max-steps."""
        loader, n_steps = self.train_loader, len(self.train_loader)
        counter = UnreadableCounter("training", len(loader.dataset), self.config.max_unreadable, self.sums["bad"])
        self.net.train()
        for batch in loader.train_batches(self.config.seed, self.epoch, self.step):
            t0 = time.perf_counter()
            loss = self.train_batch(batch, counter)
            self.sums["bad"] = counter.count
            self.step, self.global_step = self.step + 1, self.global_step + 1
            self.schedule.step_end(self.global_step)
            seconds = time.perf_counter() - t0 + batch.wait
            self.elapsed += seconds
            self.clock.add(seconds, len(batch.y), batch.wait)
            self.printer.step(self.step_line(loss, n_steps), self.step, n_steps)
            if self.stop_agreed():
                self.interrupt()
            if self.config.max_steps is not None and self.global_step >= self.config.max_steps:
                self.stop_at_max_steps()
                return False
            if self.config.save_every and self.global_step % self.config.save_every == 0 and self.step < n_steps:
                self.save()  # the epoch's last step is saved by save_epoch
        self.printer.end_line()
        return True

    def train_batch(self, batch, counter):
        """One step on a batch, added to the epoch's sums and its skipped images to `counter`; the
        loss (NaN for an empty batch)."""
        if self.dp is not None:
            return self.train_shard(batch, counter)
        counter.add(batch.bad, batch.errors)
        if not len(batch.y):
            return float("nan")
        with self.step_errors():
            loss, logits = train_step(self.net, self.opt, batch.x, batch.y, self.config.device)
        m = len(batch.y)
        self.sums["lr"] = self.opt.lr  # before step_end sets the next step's
        self.sums["loss"] += loss * m
        self.sums["err1"] += errors_at(logits, batch.y, 1) * m
        self.sums["n"] += m
        return loss

    @contextlib.contextmanager
    def step_errors(self):
        """A NaN loss or running out of memory in a training step as a TrainingError saying what to do."""
        try:
            yield
        except NonFiniteLossError as exc:
            raise TrainingError(self.nan_message(exc)) from None
        except Exception as exc:
            if is_out_of_memory(self.net, exc):
                raise TrainingError(self.oom_message()) from None
            raise

    def train_shard(self, batch, counter):
        """One data-parallel step on this process's shard of a global batch (every process calls
        it, an empty shard too), the global batch's figures added to the epoch's sums and its
        skipped images (all processes') to `counter`: every process stops at the same step; its loss."""
        device = self.config.device
        with self.step_errors():
            stats = self.dp.step(asarray(batch.x, device), asarray(batch.y, device), batch.bad)
            counter.add(stats.unreadable, batch.errors)
            if stats.count and not math.isfinite(stats.loss):  # the same on every process: all stop
                raise NonFiniteLossError(f"the loss is {stats.loss}", stats.loss)
        if not stats.count:
            return float("nan")
        self.opt.step()
        self.sums["lr"] = self.opt.lr
        self.sums["loss"] += stats.loss * stats.count
        self.sums["err1"] += stats.count - stats.correct
        self.sums["n"] += stats.count
        return stats.loss

    def stop_at_max_steps(self):
        self.printer.end_line()
        self.save()
        self.printer.say(f"stopped after step {self.global_step} (--max-steps); "
                         f"checkpoint {self.config.checkpoint_path}")

    def validate(self):
        """(loss, top-1 error, top-5 error or None) on the validation set, timed."""
        t = time.perf_counter()
        # one process stops validation on its own Ctrl-C; several finish it (each its own shard, of
        # a batch count that may differ by one: no per-batch collective) and end_epoch stops them
        alone = self.world.size == 1
        try:
            result = evaluate(self.net, self.val_loader, self.config.device, self.config.ten_crop,
                              should_stop=lambda: alone and self.stop_requested,
                              max_unreadable=self.config.max_unreadable, world=self.world)
        except Exception as exc:
            if is_out_of_memory(self.net, exc):
                raise TrainingError(self.validation_oom_message()) from None
            raise
        if result is None:
            self.interrupt()
        self.val_seconds = time.perf_counter() - t
        self.elapsed += self.val_seconds
        return result

    def end_epoch(self, result):
        """History row, epoch line, lr schedule, checkpoints and reports of a finished epoch."""
        row = self.history_row(*result)
        self.history.append(row)
        self.printer.say(self.epoch_line(row))
        self.epoch, self.step, self.sums = self.epoch + 1, 0, fresh_sums()
        self.update_lr(row["val_top1_err"])
        self.save_epoch()
        if self.write_reports is not None and self.world.is_root:
            self.write_reports(self.history, self.net)
        if self.stop_agreed():
            self.interrupt()

    def history_row(self, val_loss, val_err1, val_err5):
        n = max(self.sums["n"], 1)
        before = self.history[-1]["time_s"] if self.history else 0.0
        lr = self.opt.lr if self.sums["lr"] is None else self.sums["lr"]  # the epoch's last step's
        return {"epoch": self.epoch + 1, "lr": lr, "train_loss": self.sums["loss"] / n,
                "train_top1_err": self.sums["err1"] / n, "val_loss": val_loss,
                "val_top1_err": val_err1, "val_top5_err": val_err5, "unreadable": self.sums["bad"],
                "time_s": self.elapsed, "epoch_s": self.elapsed - before}

    def update_lr(self, val_err1):
        """Tell the schedule an epoch ended, announcing the change it makes (a plateau or step drop,
        also after the last epoch: a resumed run with more epochs continues at the new lr; the
        per-step changes of a warm-up or cosine show in the progress and epoch lines)."""
        before = self.opt.lr
        new_lr = self.schedule.epoch_end(self.epoch, val_err1)
        if new_lr != before:
            self.printer.say(f"lr {before:g} -> {new_lr:g} from epoch {self.epoch + 1}")

    # -- messages --------------------------------------------------------------------------------
    def step_line(self, loss, n_steps):
        step_s = self.clock.step_seconds()
        epoch_eta, run_eta = eta(step_s, n_steps - self.step, self.config.epochs - self.epoch - 1,
                                 n_steps, self.validation_estimate(step_s))
        lr = "" if self.sums["lr"] is None else f"lr {self.sums['lr']:.3g} "
        return (f"epoch {self.epoch + 1}/{self.config.epochs} step {self.step}/{n_steps} loss {loss:.4f} {lr}"
                f"{self.clock.images_per_second():.0f} img/s data wait {self.clock.mean_wait() * 1000:.0f} ms "
                f"ETA {fmt_time(epoch_eta)} epoch, {fmt_time(run_eta)} run")

    def validation_estimate(self, step_seconds):
        """The last validation's seconds; before the first, its batches at the training step time."""
        if self.val_seconds is not None:
            return self.val_seconds
        return step_seconds * len(self.val_loader) * (10 if self.config.ten_crop else 1)

    def epoch_line(self, row):
        top5 = "" if row["val_top5_err"] is None else f"  top-5 err {row['val_top5_err']:.2%}"
        bad = f"  ({plural(row['unreadable'], 'unreadable image')} skipped)" if row["unreadable"] else ""
        return (f"epoch {row['epoch']}/{self.config.epochs}  train loss {row['train_loss']:.4f} "
                f"(top-1 err {row['train_top1_err']:.2%})  val loss {row['val_loss']:.4f}  "
                f"top-1 err {row['val_top1_err']:.2%}{top5}  lr {row['lr']:g}  "
                f"[{row['epoch_s']:.1f}s]{bad}")

    def nan_message(self, exc):
        self.printer.end_line()
        where = f"epoch {self.epoch + 1} step {self.step + 1} (global step {self.global_step + 1})"
        keep = (f"the last good checkpoint, from {self.last_save}, is {self.config.checkpoint_path}"
                if self.last_save else "no checkpoint had been written yet")
        return (f"the loss became {'NaN' if math.isnan(exc.loss) else 'NaN or inf'} at {where} with lr "
                f"{self.opt.lr:g}; training stopped. Try a lower --lr. {keep[0].upper() + keep[1:]}.")

    def out_of_memory(self):
        """Who ran out of memory, by device."""
        return "the GPU ran out of memory" if self.config.device == "cuda" else "the machine ran out of memory"

    def oom_message(self):
        """A training step ran out of memory."""
        self.printer.end_line()
        bs = self.train_loader.batch_size
        keep = ("; --resume keeps the checkpoint's batch size, so that is a new run" if self.last_save else "")
        return (f"{self.out_of_memory()} at batch size {bs} in a training step; try --batch-size {max(1, bs // 2)}"
                + (" (or a smaller --crop)" if bs <= 2 else "") + keep)

    def validation_oom_message(self):
        """Validation ran out of memory; last.ckpt holds the epoch's training (save_before_validation)."""
        self.printer.end_line()
        bs = self.val_loader.batch_size
        crops = f" (--ten-crop: 10 crops an image, {bs * 10:,} a forward pass)" if self.config.ten_crop else ""
        return (f"{self.out_of_memory()} validating at batch size {bs}{crops}; the epoch's training is saved in "
                f"{self.config.checkpoint_path}: resume with --resume {self.config.checkpoint_path} --val-batch-size "
                f"{max(1, bs // 2)} (or start a new run with a smaller --batch-size)")
