"""Learning-rate schedules with Keras's semantics, per member.

A schedule turns each member's base learning rate (the ``lr`` given to ``fit`` or one per config
in a population) into the rate of every step. Keras's decay schedules are functions of the
optimizer's step count (batches, from 0), evaluated before each update; ``ReduceLROnPlateau`` and a
callable ``epoch -> lr`` act at epoch boundaries, as Keras's callbacks do. Every rule is vectorised
over members, so a population member follows exactly its standalone fit's rates.

>>> import numpy as np
>>> s = ExponentialDecay(decay_steps=10, decay_rate=0.5)
>>> float(s.rate(20, np.array([0.1]))[0])    # 0.1 * 0.5 ** (20 / 10)
0.025
>>> c = CosineDecay(decay_steps=100, alpha=0.1)
>>> float(c.rate(100, np.array([1.0]))[0])    # decays to alpha * lr
0.1
"""

from __future__ import annotations

import math

import numpy as np

from ._validate import check_choice, check_number


class Schedule:
    """Base: ``rate(step, base)`` gives the learning rates (one per member) of update ``step``;
    ``epoch_end`` sees the epoch's logs (arrays over members) for rules that react to them."""

    per_step = True

    def start(self, base: np.ndarray) -> None:
        self.base = np.asarray(base, dtype=np.float64)

    def rate(self, step: int, base: np.ndarray) -> np.ndarray:   # pragma: no cover - abstract
        raise NotImplementedError

    def epoch_begin(self, epoch: int) -> None: ...

    def epoch_end(self, epoch: int, logs: dict, running: np.ndarray) -> None: ...

    def spec(self) -> dict:
        """The schedule as a study file writes it (``[training.schedule]``)."""
        return {"kind": self.kind, **{k: v for k, v in vars(self).items() if k in self.fields}}


class ExponentialDecay(Schedule):
    """Keras's ``ExponentialDecay``: ``lr * decay_rate ** (step / decay_steps)``; ``staircase=True``
    uses the integer part of ``step / decay_steps`` (step decay: multiply by ``decay_rate`` every
    ``decay_steps`` updates)."""

    kind, fields = "exponential", ("decay_steps", "decay_rate", "staircase")

    def __init__(self, decay_steps: int, decay_rate: float, staircase: bool = False):
        self.decay_steps = check_number(decay_steps, "decay_steps", type(self).__name__, low=1, integer=True)
        self.decay_rate = check_number(decay_rate, "decay_rate", type(self).__name__, low=0, low_open=True)
        if not isinstance(staircase, bool):
            raise TypeError(f"The 'staircase' parameter of {type(self).__name__} must be a bool. Got {staircase!r}.")
        self.staircase = staircase

    def rate(self, step, base):
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return base * self.decay_rate ** p


class StepDecay(ExponentialDecay):
    """Step decay: the rate times ``decay_rate`` after every ``decay_steps`` updates — Keras's
    ``ExponentialDecay(..., staircase=True)``."""

    kind, fields = "step", ("decay_steps", "decay_rate")

    def __init__(self, decay_steps: int, decay_rate: float = 0.1):
        super().__init__(decay_steps, decay_rate, staircase=True)


class CosineDecay(Schedule):
    """Keras's ``CosineDecay``: ``lr * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)``.

    With ``warmup_steps`` the rate first rises linearly from ``warmup_start`` to ``lr`` (Keras's
    ``initial_learning_rate=warmup_start, warmup_target=lr``), then the cosine runs from ``lr``.
    """

    kind, fields = "cosine", ("decay_steps", "alpha", "warmup_steps", "warmup_start")

    def __init__(self, decay_steps: int, alpha: float = 0.0, warmup_steps: int = 0, warmup_start: float = 0.0):
        self.decay_steps = check_number(decay_steps, "decay_steps", "CosineDecay", low=1, integer=True)
        self.alpha = check_number(alpha, "alpha", "CosineDecay", low=0, high=1)
        self.warmup_steps = check_number(warmup_steps, "warmup_steps", "CosineDecay", low=0, integer=True)
        self.warmup_start = check_number(warmup_start, "warmup_start", "CosineDecay", low=0)

    def _decay(self, step, peak):
        fraction = step / self.decay_steps
        decayed = (1 - self.alpha) * (0.5 * (1.0 + math.cos(math.pi * fraction))) + self.alpha
        return peak * decayed

    def rate(self, step, base):
        if not self.warmup_steps:
            return self._decay(min(step, self.decay_steps), base)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            return (base - self.warmup_start) * (step / self.warmup_steps) + self.warmup_start
        return self._decay(step - self.warmup_steps, base)


class ReduceLROnPlateau(Schedule):
    """Keras's ``ReduceLROnPlateau``, per member: when ``monitor`` has not improved by ``min_delta``
    for ``patience`` epochs the rate becomes ``max(lr * factor, min_lr)`` (if above ``min_lr``), then
    ``cooldown`` epochs pass before counting again. ``mode="auto"`` maximises monitors containing
    "acc", as Keras does."""

    per_step = False
    kind, fields = "plateau", ("monitor", "factor", "patience", "mode", "min_delta", "cooldown", "min_lr")

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, mode: str = "auto",
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0):
        if not isinstance(monitor, str):
            raise TypeError(f"The 'monitor' parameter of ReduceLROnPlateau must be a str. Got {monitor!r}.")
        self.monitor = monitor
        self.factor = check_number(factor, "factor", "ReduceLROnPlateau", low=0, high=1, high_open=True)
        self.patience = check_number(patience, "patience", "ReduceLROnPlateau", low=0, integer=True)
        self.mode = check_choice(mode, "mode", "ReduceLROnPlateau", ("auto", "min", "max"))
        self.min_delta = check_number(min_delta, "min_delta", "ReduceLROnPlateau")
        self.cooldown = check_number(cooldown, "cooldown", "ReduceLROnPlateau", low=0, integer=True)
        self.min_lr = check_number(min_lr, "min_lr", "ReduceLROnPlateau", low=0)

    def start(self, base):
        super().start(base)
        self.current = self.base.copy()
        self.maximize = self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)
        self.best = np.full(self.base.shape, -np.inf if self.maximize else np.inf)
        self.wait = np.zeros(self.base.shape, int)
        self.cooldown_counter = np.zeros(self.base.shape, int)

    def rate(self, step, base):
        return self.current

    def epoch_end(self, epoch, logs, running):
        if self.monitor not in logs:
            raise ValueError(f"ReduceLROnPlateau monitors {self.monitor!r}, which this run does not log; logged: "
                             f"{', '.join(logs)}. Pass validation data or pick another monitor.")
        current = np.asarray(logs[self.monitor], dtype=np.float64)
        run = np.asarray(running, dtype=bool)
        cooling = run & (self.cooldown_counter > 0)
        self.cooldown_counter[cooling] -= 1
        self.wait[cooling] = 0
        with np.errstate(invalid="ignore"):
            better = current > self.best + self.min_delta if self.maximize else current < self.best - self.min_delta
        better &= run
        self.best[better] = current[better]
        self.wait[better] = 0
        counting = run & ~better & ~(self.cooldown_counter > 0)
        self.wait[counting] += 1
        reduce = counting & (self.wait >= self.patience) & (self.current > np.float32(self.min_lr))
        self.current[reduce] = np.maximum(self.current[reduce] * self.factor, self.min_lr)
        self.cooldown_counter[reduce] = self.cooldown
        self.wait[reduce] = 0


class EpochSchedule(Schedule):
    """A callable ``epoch -> lr`` (Keras's ``LearningRateScheduler``): the rate of every member for
    the whole epoch."""

    per_step = False
    kind, fields = "callable", ()

    def __init__(self, fn):
        self.fn = fn

    def start(self, base):
        super().start(base)
        self.current = self.base.copy()

    def epoch_begin(self, epoch):
        value = float(self.fn(epoch))
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"The learning-rate schedule gave {value!r} at epoch {epoch}; rates must be finite and >= 0.")
        self.current = np.full(self.base.shape, value)

    def rate(self, step, base):
        return self.current


KINDS = {"exponential": ExponentialDecay, "step": StepDecay, "cosine": CosineDecay, "plateau": ReduceLROnPlateau}


def get(schedule, owner: str | None = None) -> Schedule | None:
    """A schedule from a :class:`Schedule`, a callable ``epoch -> lr``, a dict ``{"kind": ..., **args}``
    (as in study files) or None. ``owner``: the function whose parameter it is (named in errors)."""
    if schedule is None or isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, dict):
        args = dict(schedule)
        kind = args.pop("kind", None)
        check_choice(kind, "kind", "schedule", tuple(KINDS))
        try:
            return KINDS[kind](**args)
        except TypeError as exc:
            raise TypeError(f"schedule kind {kind!r}: {exc}") from None
    if callable(schedule):
        return EpochSchedule(schedule)
    of = f" of {owner}" if owner else ""
    raise TypeError(f"The 'schedule' parameter{of} must be a reglab schedule (e.g. reglab.CosineDecay(1000)), a dict "
                    f"{{'kind': ..., ...}} or a callable epoch -> lr. Got {schedule!r} instead.")
