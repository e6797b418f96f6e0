"""Callbacks (skorch-style hooks that do nothing by default), EarlyStopping and penalty schedules.

The early-stopping rule lives in :class:`StoppingRule`, vectorised over members, so a single fit
(one member) and a population share one implementation of Keras 3's semantics.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from ._validate import check_choice, check_number


class Callback:
    """Hooks called by :func:`reglab.fit`; learned state ends in ``_`` and is reset in
    ``on_train_begin``. Set ``trainer.stop_training = True`` to stop after the current epoch."""

    def on_train_begin(self, trainer, **kwargs): ...
    def on_epoch_begin(self, trainer, epoch, **kwargs): ...
    def on_batch_end(self, trainer, batch, **kwargs): ...
    def on_epoch_end(self, trainer, epoch, logs, **kwargs): ...
    def on_train_end(self, trainer, **kwargs): ...


def monitor_mode(monitor: str, mode: str) -> str:
    """'min' or 'max' for ``monitor`` under Keras 3's ``mode="auto"`` rule."""
    if mode != "auto":
        return mode
    return "max" if monitor.endswith(("acc", "accuracy", "auc")) else "min"


class StoppingRule:
    """Keras 3's EarlyStopping rule for P members at once.

    Each epoch ≥ ``start_from_epoch``: ``wait += 1``; an improvement is ``current < best - |min_delta|``
    (min mode; ``>``/``+`` in max mode); on improvement best/best_epoch are stored and ``wait`` resets
    (only when there is no baseline or the baseline is beaten) and the member never stops on that
    epoch; otherwise it stops when ``wait >= patience`` and ``epoch > 0``.

    >>> rule = StoppingRule(members=1, patience=2)
    >>> [bool(rule.update(e, np.array([v]))[1][0]) for e, v in enumerate([3.0, 2.0, 2.5, 2.4])]
    [False, False, False, True]
    >>> int(rule.best_epoch[0])
    1
    """

    def __init__(self, members: int, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 baseline=None, start_from_epoch=0):
        self.mode = monitor_mode(monitor, mode)
        self.min_delta = abs(min_delta)
        self.patience, self.baseline, self.start_from_epoch = patience, baseline, start_from_epoch
        self.best = np.full(members, np.nan)
        self.has_best = np.zeros(members, dtype=bool)  # False: Keras's best=None
        self.best_epoch = np.zeros(members, dtype=int)
        self.wait = np.zeros(members, dtype=int)
        self.stopped_epoch = np.zeros(members, dtype=int)
        self.seen = np.zeros(members, dtype=bool)     # a member has passed start_from_epoch

    def _improves(self, current, reference, has_reference):
        with np.errstate(invalid="ignore"):
            if self.mode == "min":
                better = current + self.min_delta < reference
            else:
                better = current - self.min_delta > reference
        return np.where(has_reference, better, True)

    def update(self, epoch: int, current: np.ndarray, running: np.ndarray | None = None):
        """Feed the monitored values of one epoch; returns ``(improved, stop, first_seen)`` masks.

        ``running`` marks members still training; the others are left untouched.
        """
        current = np.asarray(current, dtype=float)
        running = np.ones_like(self.seen) if running is None else np.asarray(running, dtype=bool)
        none = np.zeros_like(self.seen)
        if epoch < self.start_from_epoch:
            return none, none, none
        first_seen = running & ~self.seen
        self.seen |= running
        self.wait[running] += 1
        improved = running & self._improves(current, self.best, self.has_best)
        self.best[improved] = current[improved]
        self.has_best |= improved
        self.best_epoch[improved] = epoch
        if self.baseline is None:
            reset = improved
        else:
            reset = improved & self._improves(current, np.full_like(current, self.baseline), True)
        self.wait[reset] = 0
        stop = running & ~improved & (self.wait >= self.patience) & (epoch > 0)
        self.stopped_epoch[stop] = epoch
        return improved, stop, first_seen


class EarlyStopping(Callback):
    """Stop when ``monitor`` stops improving — Keras 3's ``EarlyStopping`` with the same arguments.

    ``monitor="val_loss"`` is the total validation loss *including* penalties, as Keras reports it;
    use ``monitor="val_data_loss"`` to watch the pure data loss. With ``restore_best_weights`` the
    best epoch's weights are put back at the end of training, also when all epochs ran.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        if not isinstance(monitor, str):
            raise TypeError(f"The 'monitor' parameter of EarlyStopping must be a str. Got {monitor!r} instead.")
        self.monitor = monitor
        self.min_delta = check_number(min_delta, "min_delta", "EarlyStopping")
        self.patience = check_number(patience, "patience", "EarlyStopping", low=0, integer=True)
        self.mode = check_choice(mode, "mode", "EarlyStopping", ("auto", "min", "max"))
        self.baseline = None if baseline is None else check_number(baseline, "baseline", "EarlyStopping")
        if not isinstance(restore_best_weights, bool):
            raise TypeError(f"The 'restore_best_weights' parameter of EarlyStopping must be a bool. Got {restore_best_weights!r} instead.")
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = check_number(start_from_epoch, "start_from_epoch", "EarlyStopping", low=0, integer=True)

    def rule(self, members: int) -> StoppingRule:
        return StoppingRule(members, self.monitor, self.min_delta, self.patience, self.mode,
                            self.baseline, self.start_from_epoch)

    def on_train_begin(self, trainer, **kwargs):
        self.rule_ = self.rule(1)
        self.best_weights_ = None
        self.stopped_epoch_ = 0

    def on_epoch_end(self, trainer, epoch, logs, **kwargs):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this fit does not log; "
                             f"logged: {', '.join(logs)}. Pass validation data or pick another monitor.")
        improved, stop, first = self.rule_.update(epoch, np.array([logs[self.monitor]]))
        if self.restore_best_weights and (improved[0] or first[0] and self.best_weights_ is None):
            self.best_weights_ = copy.deepcopy(trainer.model.state_dict())
        if stop[0]:
            self.stopped_epoch_ = epoch
            trainer.stop_training = True

    def on_train_end(self, trainer, **kwargs):
        if self.restore_best_weights and self.best_weights_ is not None:
            trainer.model.load_state_dict(self.best_weights_)

    @property
    def best_epoch_(self) -> int:
        return int(self.rule_.best_epoch[0])


class PenaltySchedule(Callback):
    """Scale every attached penalty by a factor that changes with the epoch.

    ``factors`` maps the first epoch of each phase to its multiplier, e.g. ``{0: 1.0, 100: 10.0}``
    raises λ tenfold from epoch 100 (the "start small, then strengthen" recipe quoted in the seeds),
    or is a callable ``epoch -> factor``.
    """

    def __init__(self, factors):
        if callable(factors):
            self.fn = factors
        elif isinstance(factors, dict) and factors:
            items = sorted((check_number(k, "epoch", "PenaltySchedule", low=0, integer=True),
                            check_number(v, "factor", "PenaltySchedule", low=0)) for k, v in factors.items())
            self.fn = lambda epoch: next((v for k, v in reversed(items) if epoch >= k), 1.0)
        else:
            raise TypeError(f"PenaltySchedule needs a dict {{epoch: factor}} or a callable. Got {factors!r} instead.")

    def factor(self, epoch: int) -> float:
        value = float(self.fn(epoch))
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"PenaltySchedule gave factor {value!r} at epoch {epoch}; factors must be finite and >= 0.")
        return value

    def on_epoch_begin(self, trainer, epoch, **kwargs):
        trainer.penalty_scale = self.factor(epoch)
