"""Weight averaging as a training option, per member: Keras's EMA of the weights and PyTorch's SWA.

**EMA** (Keras 3's optimizer options ``use_ema=True``, ``ema_momentum``, ``ema_overwrite_frequency``:
``_update_model_variables_moving_average`` and ``finalize_variable_values``). After every optimizer
update, before the constraints are applied (Keras applies them after its EMA update)::

    average = m * average + (1 - m) * w,   m = momentum, but 0 at the run's first update

so the average starts as the weights after the first update. With ``overwrite_frequency=k`` the
weights are replaced by the average after every k-th update. At the end of training the model's
weights become the average (BatchNorm statistics are left as they are, as in Keras).

**SWA** (``torch.optim.swa_utils.AveragedModel`` with its default equal-weight average, then
``update_bn``). At the end of every epoch from ``start_epoch`` on (epochs counted from 0, as
``history.epoch`` counts them)::

    average = w                                   (the first epoch averaged)
    average = average + (w - average) / (n + 1)   (n epochs averaged so far; torch's lerp)

At the end the model gets the average and, if it has BatchNorm layers, their running statistics
are recomputed as ``update_bn`` does: reset, then one pass over the training inputs in train mode
(the rows in order, in batches of the run's batch size), each batch weighing 1/(k+1) — the
cumulative average of ``momentum=None``. Random layers (dropout, noise) draw in that pass from a
stream of its own: a generator seeded with the fifth 63-bit word of ``SeedSequence(seed)`` (see
:func:`reglab.mixup.stream_seed`), so a population member recomputes exactly what its fit does.

What is evaluated: the validation history during training is the live weights' (Keras evaluates
with them too); the final model — ``fit``'s model, a population's ``models``, a study's scores and
snippet — has the averaged weights. With ``EarlyStopping(restore_best_weights=True)`` the average
is put in first and the callback then restores the best epoch's live weights (Keras's order: fit
calls ``finalize_variable_values`` before ``on_train_end``), so the restored weights win.

Populations: the parameters are stacked with a leading member dimension and every rule acts per
member; a member that has stopped (early stopping, divergence) no longer updates its average. A
run that averaged nothing (SWA's start epoch not reached, or no update) keeps its weights.

>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([0.0]))
>>> averages = Averages(EMA(momentum=0.5), None, [w], seeds=[0])
>>> for value in (2.0, 4.0):
...     with torch.no_grad():
...         _ = w.fill_(value)
...     averages.after_step()
>>> averages.averages[0]          # 2, then 0.5 * 2 + 0.5 * 4
tensor([3.])
"""

from __future__ import annotations

import torch
from torch import nn

from ._validate import Setting, check_number
from .mixup import stream_seed

BATCH_NORM_STREAM = 4   # the word of SeedSequence(seed) that seeds SWA's BatchNorm pass


class EMA(Setting):
    """Keras's ``use_ema=True``: ``momentum`` is ``ema_momentum`` (in [0, 1], default 0.99),
    ``overwrite_frequency`` is ``ema_overwrite_frequency`` (None or an int >= 1). See the module's
    docstring for the formula."""

    defaults = {"momentum": 0.99, "overwrite_frequency": None}

    def __init__(self, momentum: float = 0.99, overwrite_frequency: int | None = None):
        self.momentum = check_number(momentum, "momentum", "EMA", low=0, high=1)
        self.overwrite_frequency = None if overwrite_frequency is None else check_number(
            overwrite_frequency, "overwrite_frequency", "EMA", low=1, integer=True)


class SWA(Setting):
    """Stochastic weight averaging from epoch ``start_epoch`` (an int >= 0, counted from 0): the
    equal-weight average of the weights at the end of that epoch and every later one, BatchNorm
    statistics recomputed at the end (see the module's docstring)."""

    defaults = {"start_epoch": 0}

    def __init__(self, start_epoch: int = 0):
        self.start_epoch = check_number(start_epoch, "start_epoch", "SWA", low=0, integer=True)


def get(value, kind: type, owner: str = "fit"):
    """An :class:`EMA` / :class:`SWA` (``kind``) from one, a dict of its arguments (study files) or None."""
    return kind.coerce(value, owner)


def settings(ema, swa, owner: str = "fit"):
    """``(ema, swa)`` checked where they enter: each an EMA / SWA, a dict of its arguments or None,
    and not both (each would replace the final weights by its own average)."""
    ema, swa = get(ema, EMA, owner), get(swa, SWA, owner)
    if ema is not None and swa is not None:
        raise ValueError(f"{owner} takes ema or swa, not both: each replaces the final weights by its own average.")
    return ema, swa


class Averages:
    """The averaged weights of one run (``reglab.fit``: ``params`` are the model's) or of a
    population (``stacked``: every tensor of ``params`` has the member dimension first).

    The training loop calls ``after_step(active)`` after each optimizer update (before the
    constraints), ``epoch_end(epoch, active)`` after each epoch's batches and ``finish_model`` /
    ``finish_population`` at the end (with the training inputs, for SWA's BatchNorm pass); all do nothing when neither ``ema`` nor ``swa`` is set.
    ``active``: the members still training (None: all). ``count``: updates (EMA) or epochs (SWA)
    averaged so far, per member.
    """

    def __init__(self, ema: EMA | None, swa: SWA | None, params, seeds, stacked: bool = False, owner: str = "fit"):
        if ema is not None and swa is not None:
            raise ValueError(f"{owner} takes ema or swa, not both: each replaces the final weights by its own average.")
        self.ema, self.swa, self.stacked = ema, swa, stacked
        self.params, self.seeds = list(params), list(seeds)
        self.count = torch.zeros(len(self.seeds), dtype=torch.long)
        self.averages = [torch.zeros_like(p.detach()) for p in self.params] if self.on else []

    @property
    def on(self) -> bool:
        return self.ema is not None or self.swa is not None

    def _member(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-member vector shaped to broadcast against ``like`` (a 0-dim tensor for one run)."""
        values = values.to(like.device)
        return values.view((-1,) + (1,) * (like.dim() - 1)) if self.stacked else values[0]

    def _active(self, active) -> torch.Tensor:
        if active is None:
            return torch.ones(len(self.seeds), dtype=torch.bool)
        return torch.as_tensor(active, dtype=torch.bool).cpu()

    @torch.no_grad()
    def after_step(self, active=None) -> None:
        if self.ema is None:
            return
        active = self._active(active)
        started = self.count > 0
        for p, average in zip(self.params, self.averages):
            momentum = self._member(started.to(p.dtype), p) * self.ema.momentum
            new = momentum * average + (1 - momentum) * p
            average.copy_(torch.where(self._member(active, p), new, average))
        self.count += active
        frequency = self.ema.overwrite_frequency
        if frequency:
            due = active & (self.count % frequency == 0)
            if bool(due.any()):
                for p, average in zip(self.params, self.averages):
                    p.copy_(torch.where(self._member(due, p), average, p))

    @torch.no_grad()
    def epoch_end(self, epoch: int, active=None) -> None:
        if self.swa is None or epoch < self.swa.start_epoch:
            return
        active = self._active(active)
        first = active & (self.count == 0)
        weight = 1 / (self.count + 1)
        for p, average in zip(self.params, self.averages):
            new = torch.lerp(average, p, self._member(weight.to(p.dtype), p))
            new = torch.where(self._member(first, p), p, new)
            average.copy_(torch.where(self._member(active, p), new, average))
        self.count += active

    @torch.no_grad()
    def finish(self) -> torch.Tensor | None:
        """Put each member's average into its weights (members that averaged something); returns
        which members got one (None when averaging is off)."""
        if not self.on:
            return None
        done = self.count > 0
        for p, average in zip(self.params, self.averages):
            p.copy_(torch.where(self._member(done, p), average, p))
        return done

    def finish_model(self, model: nn.Module, inputs) -> None:
        """``reglab.fit``'s end: the average into the model, then SWA's BatchNorm pass over
        ``inputs`` (an iterable of training input batches, in order)."""
        done = self.finish()
        if self.swa is not None and bool(done.all()):
            recompute_batch_norm(model, inputs, self.seeds[0])

    def finish_population(self, pop, inputs, forward) -> None:
        """A population's end: the averages into the stacked weights, then SWA's BatchNorm pass over
        ``inputs`` (batches (B, ...) every member sees) with ``forward(x, generators)``: a training
        forward of x (P, B, ...) whose random layers draw from each member's generator."""
        done = self.finish()
        if self.swa is not None and bool(done.any()):
            recompute_population_batch_norm(pop, inputs, self.seeds, done, forward)


def batch_norms(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every BatchNorm layer that keeps running statistics."""
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, inputs, seed: int = 0) -> None:
    """``torch.optim.swa_utils.update_bn(inputs, model)``: reset the BatchNorm statistics, run the
    model in train mode on every batch of ``inputs`` (an iterable of input tensors), batch k
    weighing 1/(k+1) (what momentum=None does; here also for :class:`reglab.KerasBatchNorm`).
    Random layers draw from SWA's BatchNorm stream of ``seed``. Does nothing without BatchNorm."""
    norms = [m for _, m in batch_norms(model)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    device = next(iter(model.parameters()), torch.empty(0)).device
    for m in norms:
        m.reset_running_stats()
    model.train()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(stream_seed(seed, BATCH_NORM_STREAM))
            for k, batch in enumerate(inputs):
                for m in norms:
                    m.momentum = 1.0 / (k + 1)
                model(batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def recompute_population_batch_norm(pop, inputs, seeds, members: torch.Tensor, forward) -> None:
    """:func:`recompute_batch_norm` for the members of a population (its stacked ``buffers``;
    ``members``: those to recompute, the others keep theirs), with the population's own forward."""
    base = getattr(pop, "base", None)
    norms = batch_norms(base) if base is not None else []
    if not norms:
        return
    index = {name: i for i, name in enumerate(pop.buffer_names)}
    saved = [b.clone() for b in pop.buffers]
    for name, _ in norms:
        prefix = f"{name}." if name else ""
        pop.buffers[index[prefix + "running_mean"]].zero_()
        pop.buffers[index[prefix + "running_var"]].fill_(1)
        pop.buffers[index[prefix + "num_batches_tracked"]].zero_()
    generators = None
    momenta = [m.momentum for _, m in norms]
    try:
        for k, batch in enumerate(inputs):
            if generators is None:   # where the batches are, as the population's noise generators
                generators = [torch.Generator(device=batch.device).manual_seed(stream_seed(s, BATCH_NORM_STREAM))
                              for s in seeds]
            for _, m in norms:
                m.momentum = 1.0 / (k + 1)
            forward(batch.expand((pop.P,) + tuple(batch.shape)), generators)
    finally:
        for (_, m), momentum in zip(norms, momenta):
            m.momentum = momentum
    for b, old in zip(pop.buffers, saved):
        b.copy_(torch.where(members.to(b.device).view((-1,) + (1,) * (b.dim() - 1)), b, old))
