"""The training loop: SGD steps, validation, the learning-rate schedule, progress lines,
checkpoints at epoch ends, on Ctrl-C and at --max-steps, and the errors a user can act on.

Resuming is exact: a step's batch depends only on (seed, epoch, step) (nbcnn.data.loader),
and a checkpoint holds the parameters, momentum buffers, lr and schedule, the dropout
counter and numpy generator, and the position (epoch, step) with the epoch's running sums.
"""

import math
import signal
import sys
import time

import numpy as np

from .array import asarray, to_numpy
from .checkpoint import save_checkpoint
from .data.datasets import DataError
from .loss import softmax_cross_entropy
from .errors import NonFiniteLossError, OutOfMemoryError

# Stop when more than this fraction of a split's images cannot be decoded.
MAX_UNREADABLE = 0.01


class TrainingError(Exception):
    """Training cannot go on (NaN loss, out of GPU memory); the message says what to do."""


class Interrupted(Exception):
    """Ctrl-C: a checkpoint was saved at `path`."""

    def __init__(self, path):
        super().__init__(path)
        self.path = path


def train_step(net, opt, x, y, device):
    """One SGD step on a batch; returns (loss, host logits)."""
    logits = net(asarray(x, device))
    loss, dlogits = softmax_cross_entropy(logits, asarray(y, device))  # NonFiniteLossError on NaN/inf logits
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"the loss is {loss}", loss)
    opt.zero_grad()
    net.backward(dlogits, input_grad=False)  # nobody needs the images' gradient
    opt.step()
    return loss, to_numpy(logits)


def errors_at(probs_or_logits, y, k):
    """Fraction of rows whose label is not among the k highest scores."""
    k = min(k, probs_or_logits.shape[1])
    top = np.argpartition(-probs_or_logits, k - 1, axis=1)[:, :k]
    return float(np.mean(~(top == y[:, None]).any(axis=1)))


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class LRSchedule:
    """"plateau": lr / 10 after `patience` epochs without a lower validation top-1 error (the
    paper's rule, automated); "step": lr / 10 every `step` epochs."""

    def __init__(self, policy, lr, step=30, patience=2):
        if policy not in ("plateau", "step"):
            raise ValueError(f"lr policy must be 'plateau' or 'step', got {policy!r}")
        self.policy, self.base_lr, self.step, self.patience = policy, float(lr), int(step), int(patience)
        self.lr, self.best, self.bad_epochs = float(lr), math.inf, 0

    def epoch_end(self, epochs_done, val_error):
        """Update after `epochs_done` epochs; returns the lr for the next epoch."""
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

    def load_state_dict(self, state):
        self.lr, self.best, self.bad_epochs = state["lr"], state["best"], state["bad_epochs"]


def fmt_time(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class UnreadableCounter:
    """Counts skipped images of one split per epoch and stops past MAX_UNREADABLE of it."""

    def __init__(self, split, size):
        self.split, self.size, self.count, self.examples = split, size, 0, []

    def add(self, batch):
        if not batch.bad:
            return
        self.count += batch.bad
        self.examples = (self.examples + batch.errors)[:3]
        if self.count > MAX_UNREADABLE * self.size:
            raise DataError(f"{self.count} {self.split} images could not be read, more than "
                            f"{MAX_UNREADABLE:.0%} of {self.size}; for example:\n  " + "\n  ".join(self.examples))


def evaluate(net, loader, device, ten_crop=False, should_stop=lambda: False):
    """(loss, top-1 error, top-5 error) over the loader's dataset; None when interrupted."""
    net.eval()
    total_loss, err1, err5, n = 0.0, 0.0, 0.0, 0
    counter = UnreadableCounter("validation", len(loader.dataset))
    try:
        for batch in loader.eval_batches(ten_crop):
            counter.add(batch)
            if len(batch.y) == 0:
                continue
            x = batch.x
            if ten_crop:  # the paper: average the softmax of the ten crops
                m, t = x.shape[:2]
                logits = to_numpy(net(asarray(x.reshape(m * t, *x.shape[2:]), device))).astype(np.float64)
                probs = np.exp(log_softmax(logits)).reshape(m, t, -1).mean(axis=1)
                logp = np.log(np.maximum(probs, 1e-300))
            else:
                logp = log_softmax(to_numpy(net(asarray(x, device))).astype(np.float64))
            m = len(batch.y)
            total_loss += -logp[np.arange(m), batch.y].sum()
            err1 += errors_at(logp, batch.y, 1) * m
            err5 += errors_at(logp, batch.y, 5) * m
            n += m
            if should_stop():
                return None
    finally:
        net.train()
    if n == 0:
        raise DataError("no validation image could be read")
    return total_loss / n, err1 / n, err5 / n


class Trainer:
    """Runs epochs of `net` on `train_loader`, validating on `val_loader` after each.

    `progress` is the dict a checkpoint stored (None for a fresh run); `extra` is stored in
    every checkpoint beside it (the script's arguments and data statistics);
    `on_epoch_end(history, net)` writes the run's reports.
    """

    def __init__(self, net, opt, train_loader, val_loader, *, device, epochs, seed, schedule,
                 checkpoint_path, ten_crop=False, max_steps=None, progress=None, extra=None,
                 on_epoch_end=None, best_path=None, out=None, live=None):
        self.net, self.opt, self.train_loader, self.val_loader = net, opt, train_loader, val_loader
        self.device, self.epochs, self.seed, self.schedule = device, int(epochs), int(seed), schedule
        self.checkpoint_path, self.best_path = checkpoint_path, best_path
        self.ten_crop, self.max_steps = ten_crop, max_steps
        self.extra, self.on_epoch_end, self.out = extra or {}, on_epoch_end, out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.stop_requested = False
        p = progress or {}
        self.epoch, self.step, self.global_step = p.get("epoch", 0), p.get("step", 0), p.get("global_step", 0)
        self.sums = dict(p.get("sums", {"loss": 0.0, "err1": 0.0, "n": 0, "bad": 0}))
        self.history = list(p.get("history", []))
        self.elapsed = p.get("elapsed", 0.0)
        self.saved_epoch = p.get("saved_epoch")  # the epoch of the last end-of-epoch checkpoint
        if progress is not None:
            schedule.load_state_dict(p["schedule"])
        opt.lr = schedule.lr

    # -- checkpoints ---------------------------------------------------------------------
    def progress(self):
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                "sums": dict(self.sums), "history": list(self.history), "elapsed": self.elapsed,
                "schedule": self.schedule.state_dict(), "saved_epoch": self.saved_epoch,
                "seed": self.seed, **self.extra}

    def save(self, path=None):
        save_checkpoint(path or self.checkpoint_path, self.net, self.opt, **self.progress())

    # -- Ctrl-C: finish the step, then save --------------------------------------------------
    def _on_sigint(self, signum, frame):
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\nCtrl-C: saving a checkpoint after this step (Ctrl-C again to quit without saving)",
              file=sys.stderr, flush=True)

    def interrupt(self):
        self.save()
        raise Interrupted(self.checkpoint_path)

    # -- the loop ------------------------------------------------------------------------------
    def run(self):
        try:
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            previous = None
        try:
            with self.train_loader, self.val_loader:
                while self.epoch < self.epochs:
                    if self.run_epoch() == "stopped":
                        return "stopped"
            return "done"
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def run_epoch(self):
        loader, n_steps = self.train_loader, len(self.train_loader)
        counter = UnreadableCounter("training", len(loader.dataset))
        counter.count = self.sums["bad"]
        self.net.train()
        t_epoch, recent = time.perf_counter(), []
        for batch in loader.train_batches(self.seed, self.epoch, self.step):
            t0 = time.perf_counter()
            counter.add(batch)
            self.sums["bad"] = counter.count
            if len(batch.y):
                try:
                    loss, logits = train_step(self.net, self.opt, batch.x, batch.y, self.device)
                except NonFiniteLossError as exc:
                    raise TrainingError(self.nan_message(exc)) from None
                except Exception as exc:
                    if isinstance(exc, OutOfMemoryError) or self.net.backend.is_out_of_memory(exc):
                        raise TrainingError(self.oom_message()) from None
                    raise
                m = len(batch.y)
                self.sums["loss"] += loss * m
                self.sums["err1"] += errors_at(logits, batch.y, 1) * m
                self.sums["n"] += m
            self.step += 1
            self.global_step += 1
            dt = time.perf_counter() - t0
            self.elapsed += dt + batch.wait
            recent = (recent + [(dt + batch.wait, len(batch.y), batch.wait)])[-20:]
            self.progress_line(n_steps, loss if len(batch.y) else float("nan"), recent)
            if self.stop_requested:
                self.interrupt()
            if self.max_steps is not None and self.global_step >= self.max_steps:
                self.end_live_line()
                self.save()
                print(f"stopped after step {self.global_step} (--max-steps); checkpoint {self.checkpoint_path}",
                      file=self.out, flush=True)
                return "stopped"
        self.end_live_line()
        t_val = time.perf_counter()
        result = evaluate(self.net, self.val_loader, self.device, self.ten_crop,
                          should_stop=lambda: self.stop_requested)
        if result is None:
            self.interrupt()
        self.elapsed += time.perf_counter() - t_val
        val_loss, val_err1, val_err5 = result
        n = max(self.sums["n"], 1)
        row = {"epoch": self.epoch + 1, "lr": self.opt.lr, "train_loss": self.sums["loss"] / n,
               "train_top1_err": self.sums["err1"] / n, "val_loss": val_loss,
               "val_top1_err": val_err1, "val_top5_err": val_err5,
               "unreadable": self.sums["bad"], "time_s": self.elapsed}
        self.history.append(row)
        print(f"epoch {row['epoch']}/{self.epochs}  train loss {row['train_loss']:.4f} "
              f"(top-1 err {row['train_top1_err']:.2%})  val loss {val_loss:.4f}  "
              f"top-1 err {val_err1:.2%}  top-5 err {val_err5:.2%}  lr {self.opt.lr:g}  "
              f"[{time.perf_counter() - t_epoch:.1f}s]"
              + (f"  ({self.sums['bad']} unreadable images skipped)" if self.sums["bad"] else ""),
              file=self.out, flush=True)
        improved = val_err1 < self.schedule.best
        self.epoch, self.step = self.epoch + 1, 0
        self.sums = {"loss": 0.0, "err1": 0.0, "n": 0, "bad": 0}
        new_lr = self.schedule.epoch_end(self.epoch, val_err1)
        if new_lr != self.opt.lr and self.epoch < self.epochs:
            print(f"lr {self.opt.lr:g} -> {new_lr:g}", file=self.out, flush=True)
        self.opt.lr = new_lr
        self.saved_epoch = self.epoch
        self.save()
        if improved and self.best_path:
            self.save(self.best_path)
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.history, self.net)
        if self.stop_requested:
            raise Interrupted(self.checkpoint_path)
        return "epoch"

    # -- messages --------------------------------------------------------------------------------
    def progress_line(self, n_steps, loss, recent):
        if not self.live and not (self.step == n_steps or self.step % max(1, n_steps // 10) == 0):
            return
        secs = sum(r[0] for r in recent)
        imgs = sum(r[1] for r in recent)
        wait = sum(r[2] for r in recent) / len(recent)
        eta = secs / len(recent) * (n_steps - self.step)
        line = (f"epoch {self.epoch + 1}/{self.epochs} step {self.step}/{n_steps} loss {loss:.4f} "
                f"{imgs / max(secs, 1e-9):.0f} img/s ETA {fmt_time(eta)} data wait {wait * 1000:.0f} ms")
        if self.live:
            print("\r" + line.ljust(100), end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)

    def end_live_line(self):
        if self.live:
            print(file=self.out, flush=True)

    def nan_message(self, exc):
        self.end_live_line()
        where = (f"epoch {self.epoch + 1} step {self.step + 1} (global step {self.global_step + 1})")
        keep = (f"the last good checkpoint, from the end of epoch {self.saved_epoch}, is {self.checkpoint_path}"
                if self.saved_epoch else "no checkpoint had been written yet")
        return (f"the loss became {'NaN' if math.isnan(exc.loss) else 'NaN or inf'} at {where} with lr "
                f"{self.opt.lr:g}; training stopped. Try a lower --lr. {keep[0].upper() + keep[1:]}.")

    def oom_message(self):
        self.end_live_line()
        bs = self.train_loader.batch_size
        return (f"the GPU ran out of memory at batch size {bs}; try --batch-size {max(1, bs // 2)}"
                + (" (or a smaller --crop)" if bs <= 2 else ""))
