"""Tasks sized by time: a population is saved when it finishes, so none may train for long.

A task (variants × seeds, one population) that would train longer than ``MAX_TASK_SECONDS`` is
stopped in its first seconds and cut by seeds (then by variants) into tasks of about
``MAX_TASK_SECONDS / 2`` each, which train one after another and are each saved when they finish:
an interruption or a crash then loses at most a few minutes of training.

How long a task will take is measured, not guessed: :class:`TaskClock` (a callback of the task's
``train_population``) times its epochs from the end of the first one -- so that building the
models and compiling the kernels do not count -- until ``PROBE_SECONDS`` have passed (at least one
more epoch), and projects the seconds per member-epoch over the task's member-epochs. The rate
learnt is kept per set of variants (:class:`TimeBudget`), so later tasks of the same variants are
cut before they start.

Cutting a task does not change its records: members are independent (a member equals its
standalone fit, whatever its population), so only the saving changes. The cost is the probe
(``PROBE_SECONDS`` or two epochs, trained again in the pieces) and some speed: smaller populations
vectorise less. A single member that alone trains longer than the budget, and a task of one epoch,
train whole (there is no checkpoint within a population).

>>> budget = TimeBudget(max_seconds=180)
>>> budget.rates[("a", "b")] = 0.01          # seconds per member-epoch, as TaskClock measures it
>>> [len(t.seeds) for t in budget.pieces(Job(("a", "b"), tuple(range(10))), epochs=2000)]
[2, 2, 2, 2, 2]
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..callbacks import Callback
from .jobs import Job, cut

MAX_TASK_SECONDS = 180.0   # a task that would train longer is cut (None: never cut)
PROBE_SECONDS = 10.0       # how long a task's epochs are timed before its length is judged
PIECE_SHARE = 0.5          # pieces aim at this share of the budget: small populations are less efficient


class TaskTooLong(Exception):
    """Raised by :class:`TaskClock` from a task's first epochs: it would train ``seconds`` in all.
    Nothing of the task is saved; the executor trains its pieces instead."""

    def __init__(self, seconds: float):
        super().__init__(f"the population would train about {seconds:.0f} s")
        self.seconds = seconds


def members(task: Job) -> int:
    return len(task.variants) * len(task.seeds)


class TimeBudget:
    """Keeps tasks under ``max_seconds`` of training (None: never cuts; the local executor gives
    ``MAX_TASK_SECONDS``): :meth:`pieces` cuts a task whose variants have a known rate,
    :meth:`clock` times a task that starts, :meth:`split` cuts one that a clock stopped.
    ``rates``: seconds per member-epoch by variants."""

    def __init__(self, max_seconds: float | None):
        self.max_seconds = max_seconds
        self.rates: dict[tuple, float] = {}

    def pieces(self, task: Job, epochs: int) -> list[Job]:
        """``task`` cut into pieces of about ``PIECE_SHARE × max_seconds`` when the rate measured on
        its variants says it would train longer than ``max_seconds``; else ``[task]``."""
        rate = self.rates.get(task.variants)
        if self.max_seconds is None or rate is None or rate * members(task) * epochs <= self.max_seconds:
            return [task]
        return self.split(task, rate * members(task) * epochs)

    def split(self, task: Job, seconds: float) -> list[Job]:
        """``task``, projected to train ``seconds``, cut into pieces of about ``PIECE_SHARE × max_seconds``."""
        target = PIECE_SHARE * self.max_seconds
        count = members(task) if target <= 0 else max(2, math.ceil(seconds / target))
        return cut(task, max(1, members(task) // count))

    def clock(self, task: Job, epochs: int) -> TaskClock:
        """A callback for ``task``'s ``train_population`` that learns its rate and, when it would
        train longer than the budget and has more than one member, raises :class:`TaskTooLong`."""
        return TaskClock(self, task, epochs)


class TaskClock(Callback):
    """Times one task's training (see the module); overrides only ``on_epoch_end``/``on_train_end``,
    so the fused kernel still runs."""

    def __init__(self, budget: TimeBudget, task: Job, epochs: int):
        self.budget, self.task, self.epochs = budget, task, epochs
        self.start_ = time.perf_counter()
        self.trained_ = 0          # member-epochs trained so far (a stopped member trains no more)
        self.done_: dict = {}      # per chunk of members: member-epochs trained or skipped (stopped early)
        self.first_ = None         # (time, trained) at the end of the first epoch
        self.judged_ = False

    def on_epoch_end(self, trainer, epoch, logs, **kwargs):
        if self.judged_:
            return
        self.trained_ += int(np.count_nonzero(~np.isnan(next(iter(logs.values())))))
        self.done_[trainer.members[0]] = int(np.where(trainer.active, epoch + 1, trainer.epochs).sum())
        now = time.perf_counter()
        if self.first_ is None:   # the first epoch also built the models and compiled the kernels
            self.first_ = (now, self.trained_)
            return
        if now - self.first_[0] < PROBE_SECONDS or self.trained_ == self.first_[1]:
            return
        rate = (now - self.first_[0]) / (self.trained_ - self.first_[1])
        self.judged_ = True
        self.budget.rates[self.task.variants] = rate
        seconds = (now - self.start_) + rate * (members(self.task) * self.epochs - sum(self.done_.values()))
        if self.budget.max_seconds is not None and seconds > self.budget.max_seconds and members(self.task) > 1:
            raise TaskTooLong(seconds)

    def on_train_end(self, trainer, **kwargs):
        self.done_[trainer.members[0]] = len(trainer.members) * trainer.epochs
