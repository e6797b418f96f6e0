"""``reglab.fit``: a Keras-style training loop for any ``torch.nn.Module``.

Per epoch it logs, as Keras does, the running mean over the epoch's batches (weighted by batch
size) of the total loss (data loss + penalties), the data loss, the penalty and the metric
(accuracy or MAE), and the same on validation data evaluated at the end of the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from . import averaging as _averaging
from . import mixup as _mixup
from . import optim as _optim
from . import presets as _presets
from . import tasks as _tasks
from . import schedules as _schedules
from . import sources as _sources
from ._validate import check_choice, check_number
from .attach import activity_penalty, apply_constraints, weight_penalty
from .callbacks import Callback, EarlyStopping


@dataclass
class History:
    """What a fit recorded: ``history["loss"]``, ``history["val_accuracy"]``, … one value per epoch."""

    history: dict = field(default_factory=dict)
    epoch: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    stopped_epoch: int | None = None   # epoch at which early stopping ended the run
    best_epoch: int | None = None      # epoch whose weights are in the model (restore_best_weights)
    diverged: bool = False             # the loss became NaN/inf; training stopped before that step
    optimizer: object = None           # to continue training with its state (warm start)

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)


class Trainer:
    """The state callbacks see: ``model``, ``optimizer``, ``history``, ``stop_training``, ``penalty_scale``."""

    def __init__(self, model, optimizer, history):
        self.model, self.optimizer, self.history = model, optimizer, history
        self.stop_training = False
        self.penalty_scale = 1.0


def wants_integers(model: nn.Module) -> bool:
    """Whether ``model`` takes integer inputs (token ids): it has an ``nn.Embedding``/``EmbeddingBag``."""
    return any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules())


def model_inputs(x: torch.Tensor, integers: bool, dtype=None) -> torch.Tensor:
    """Inputs as the model takes them: integer ids stay int64 for a model with an embedding
    (``integers``, see :func:`wants_integers`), anything else becomes ``dtype`` (the default dtype)."""
    if integers and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
        return x.long()
    return x.to(torch.get_default_dtype() if dtype is None else dtype)


def check_dtype(model: nn.Module, what: str) -> None:
    """Refuse a model whose floating-point parameters are not in the default dtype (``model.double()``):
    its inputs, targets and losses are made in the default dtype, and PyTorch would fail deep inside."""
    default = torch.get_default_dtype()
    for name, t in model.named_parameters():
        if t.is_floating_point() and t.dtype != default:
            got, want = (str(d).replace("torch.", "") for d in (t.dtype, default))
            fix = (f"build the model in {want}, or call torch.set_default_dtype(torch.float64) first"
                   if t.dtype == torch.float64 else f"build the model in {want}")
            raise TypeError(f"{what}'s {name} is {got}, but reglab trains in the default dtype, {want}: {fix}.")


def as_tensors(data, name: str, task=None, integers: bool = False):
    """``(X, y)`` arrays or tensors → inputs and targets in the task's form.

    Inputs become float32 (the default dtype), except integer inputs when ``integers`` (the model
    has an embedding, see :func:`wants_integers`): those stay integers (int64) as given.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"The {name!r} argument must be a pair (X, y). Got {type(data).__name__} instead.")
    X, y = (_numeric(part, name, what) for part, what in zip(data, ("inputs", "targets")))
    if X.shape[0] == 0:
        raise ValueError(f"The {name!r} data is empty.")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"The {name!r} data has {X.shape[0]} inputs but {y.shape[0]} targets.")
    X = model_inputs(X, integers)
    task = _tasks.infer(y) if task is None else _tasks.get(task)
    return X, task.targets(y), task


def _numeric(part, name: str, what: str) -> torch.Tensor:
    """One side of an ``(X, y)`` pair as a tensor; strings, objects, NaN and infinities are refused in
    one line (they would fail deep in PyTorch, or make every member's first loss NaN)."""
    if not isinstance(part, torch.Tensor):
        try:
            part = np.asarray(part)
        except ValueError:   # ragged: e.g. a tuple of a model's several inputs
            raise TypeError(f"The {name!r} {what} do not form one array (parts of different shapes: a model with "
                            f"several inputs?); {_sources.SEVERAL_INPUTS}") from None
        if part.dtype.kind not in "biuf":
            example = part.reshape(-1)[0] if part.size else None
            example = example.item() if isinstance(example, np.generic) else example
            kind = {"U": "text", "S": "bytes", "O": "Python objects", "M": "dates"}.get(part.dtype.kind, str(part.dtype))
            fix = ("give class indices 0..K-1 (sklearn.preprocessing.LabelEncoder) or numbers" if what == "targets"
                   else "encode them as numbers (e.g. one-hot, or integer ids for an nn.Embedding)")
            raise TypeError(f"The {name!r} {what} are not numbers ({kind} such as {example!r}); {fix}.")
        part = torch.as_tensor(part)
    if part.is_floating_point() or part.is_complex():
        finite = torch.isfinite(part)
        if not bool(finite.all()):
            index = tuple(int(i) for i in torch.nonzero(~finite)[0])
            raise ValueError(f"The {name!r} {what} have a NaN or infinite value at [{', '.join(map(str, index))}] "
                             f"({part[index].item()!r}); impute or drop those rows before training.")
    return part


def batches(n: int, batch_size: int, order: torch.Tensor | None):
    """Index slices of one epoch: consecutive rows of ``order`` (or of 0..n-1)."""
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield (order[start:stop] if order is not None else slice(start, stop)), stop - start


class Data:
    """One split of a run's data — ``(X, y)`` moved to ``device`` once, or a torch Dataset/DataLoader
    read by batches (:mod:`reglab.sources`) — with the task's targets and the model's input dtype."""

    def __init__(self, raw, name, task, integers, device, owner="fit"):
        self.name, self.integers, self.device = name, integers, device
        if isinstance(raw, TensorDataset) and len(raw.tensors) == 2:
            raw = tuple(raw.tensors)
        self.source = _sources.source(raw, name)
        if self.source is None:
            X, y, self.task = as_tensors(raw, name, task, integers)
            self.X, self.y, self.n = X.to(device), y.to(device), X.shape[0]
            self.targets = y
        else:
            y = self.source.targets()
            self.task = _tasks.infer(y) if task is None else _tasks.get(task)
            self.targets = self.task.targets(y)
            self.n = self.source.n if self.source.n is not None else len(self.targets)
            self.X = self.y = None

    @property
    def shared_order(self) -> bool:
        return self.source is not None and self.source.shared_order

    def _convert(self, x, y):
        """Collated inputs in the model's dtype and targets in the task's form, on the device."""
        x = model_inputs(torch.as_tensor(x), self.integers)
        return x.to(self.device, non_blocking=True), self.task.targets(y).to(self.device, non_blocking=True)

    def take(self, rows: torch.Tensor):
        """Inputs and targets of ``rows`` (indices of any shape: (B,) for a run, (P, B) for members)."""
        if self.source is None:
            return self.X[rows], self.y[rows]
        x, y = self.source.take(rows.reshape(-1).cpu())
        x, y = self._convert(x, y)
        return (x.reshape(tuple(rows.shape) + tuple(x.shape[1:])),
                y.reshape(tuple(rows.shape) + tuple(y.shape[1:])))

    def epoch(self, batch_size: int, order):
        """``(rows, size, x, y)`` per batch: consecutive rows of ``order`` (or of 0..n-1) for tensors and
        datasets, the loader's own batches (``rows`` None) for a DataLoader."""
        if self.shared_order:
            for x, y in self.source.epoch():
                x, y = self._convert(x, y)
                yield None, x.shape[0], x, y
            return
        for idx, size in batches(self.n, batch_size, order):
            if self.source is None:
                yield idx, size, self.X[idx], self.y[idx]
            else:
                rows = idx if isinstance(idx, torch.Tensor) else torch.arange(idx.start, idx.stop)
                yield idx, size, *self.take(rows)

    def in_order(self, batch_size: int):
        """``(size, x, y)`` of consecutive batches (evaluation)."""
        if self.source is None:
            for idx, size in batches(self.n, batch_size, None):
                yield size, self.X[idx], self.y[idx]
            return
        for x, y in self.source.in_order(batch_size):
            x, y = self._convert(x, y)
            yield x.shape[0], x, y

    def sample_weights(self, sample_weight, owner: str = "fit") -> torch.Tensor | None:
        """One weight per training row (see :func:`sample_weights`) on the device; a DataLoader's
        batches come in its own order, so they cannot be matched with weights."""
        weights = sample_weights(sample_weight, self.n, owner=owner)
        if weights is not None and self.shared_order:
            raise ValueError(f"The 'sample_weight' parameter of {owner} needs (X, y) or a Dataset: a DataLoader yields "
                             "its own batches (weigh inside a loss= function instead).")
        return None if weights is None else weights.to(self.device)

    def sample(self, k: int) -> torch.Tensor:
        """A few input rows (checks and memory estimates)."""
        if self.source is None:
            return self.X[:k]
        return model_inputs(torch.as_tensor(self.source.sample(k)), self.integers).to(self.device)


def make_optimizer(params, optimizer, preset, lr, weight_decay, momentum, clipping=None, owner="fit"):
    """reglab's Keras-exact optimizer by name ("adam", "adamw", "sgd", "rmsprop", "adagrad"), a
    :class:`reglab.optim.Optimizer` to continue with its state, or a ``torch.optim`` class."""
    clipping = {k: v for k, v in (clipping or {}).items() if v is not None}
    if isinstance(optimizer, _optim.Optimizer):
        if clipping:
            optimizer.clipping = _optim.Clipping(**clipping, owner=owner)
        return optimizer
    if _optim.is_torch_optimizer(optimizer):
        if weight_decay or momentum:
            raise ValueError(f"weight_decay and momentum of {owner} configure reglab's optimizers; give them to the "
                             "torch.optim class instead, e.g. functools.partial(torch.optim.SGD, momentum=0.9).")
        return _optim.TorchOptimizer(optimizer, params, lr=lr, **clipping)
    if optimizer is not None and not isinstance(optimizer, str):
        raise TypeError(f"The 'optimizer' parameter of {owner} must be one of {', '.join(map(repr, _optim.OPTIMIZERS))}, "
                        f"a reglab.optim.Optimizer or a torch.optim class. Got {optimizer!r} instead.")
    name = optimizer or preset.optimizer
    check_choice(name, "optimizer", owner, tuple(_optim.OPTIMIZERS))
    if lr is None:
        lr = default_lr(name, preset)
    if name in ("adam", "adamw"):
        kwargs = dict(lr=lr, epsilon=preset.epsilon, epsilon_hat=preset.epsilon_hat, **clipping)
        if name == "adamw" or weight_decay:
            kwargs["weight_decay"] = 0.004 if (name == "adamw" and weight_decay is None) else (weight_decay or 0.0)
        return _optim.make(name, params, **kwargs)
    if name in ("rmsprop", "sgd"):
        return _optim.make(name, params, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay or 0.0, **clipping)
    if momentum:
        raise ValueError(f"The 'momentum' parameter of {owner} does not apply to {name!r}.")
    return _optim.make(name, params, lr=lr, weight_decay=weight_decay or 0.0, **clipping)


KERAS_SGD_LR = 0.01   # keras.optimizers.SGD(learning_rate=0.01)


def default_lr(optimizer, preset) -> float:
    """The learning rate when none is given: Keras's defaults under the keras preset (0.01 for SGD,
    0.001 for Adam, AdamW, RMSprop, Adagrad), else the preset's."""
    name = optimizer if isinstance(optimizer, str) else None
    return KERAS_SGD_LR if name == "sgd" and preset.init == "keras" else preset.lr


def sample_weights(sample_weight, n: int, name: str = "train", owner: str = "fit") -> torch.Tensor | None:
    """One finite weight >= 0 per row of the ``name`` data, as a float tensor (or None)."""
    if sample_weight is None:
        return None
    w = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64)).reshape(-1) \
        if not isinstance(sample_weight, torch.Tensor) else sample_weight.double().reshape(-1)
    if w.numel() != n:
        raise ValueError(f"The 'sample_weight' parameter of {owner} has {w.numel()} values for {n} {name} rows.")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"The 'sample_weight' parameter of {owner} must be finite and >= 0.")
    return w.to(torch.get_default_dtype())


class LearningRates:
    """Drives an optimizer's learning rate from a schedule, one rate per member (fit: one member)."""

    def __init__(self, schedule, opt, base, members: int):
        self.schedule, self.opt = schedule, opt
        if schedule is not None:
            base = base.detach().double().numpy() if isinstance(base, torch.Tensor) else np.full(members, float(base))
            schedule.start(np.broadcast_to(base, (members,)).copy())

    def _set(self, rates) -> None:
        rates = np.asarray(rates, dtype=np.float64)
        self.opt.lr = float(rates[0]) if bool((rates == rates[0]).all()) else torch.as_tensor(rates, dtype=torch.float32)

    def epoch_begin(self, epoch: int) -> None:
        if self.schedule is not None:
            self.schedule.epoch_begin(epoch)
            if not self.schedule.per_step:
                self._set(self.schedule.rate(self.opt.iterations, self.schedule.base))

    def before_step(self) -> None:
        if self.schedule is not None and self.schedule.per_step:
            self._set(self.schedule.rate(self.opt.iterations, self.schedule.base))

    def epoch_end(self, epoch: int, logs: dict, running) -> None:
        if self.schedule is not None:
            self.schedule.epoch_end(epoch, logs, running)


@torch.no_grad()
def evaluate(model: nn.Module, data, *, task=None, batch_size: int = 32, penalty_scale: float = 1.0,
             loss=None, label_smoothing=0.0, device=None) -> dict:
    """Loss (data + penalties), data loss, penalty and metric of ``model`` on ``data`` in eval mode.

    Like Keras's ``evaluate``, batches of ``batch_size`` are averaged weighted by their size, so the
    activity penalty of each batch is counted as it would be during training. ``loss`` and
    ``label_smoothing`` as in :func:`fit` (the data loss is then that loss; default: the task's).
    ``data`` and ``device`` as in :func:`fit`.
    """
    dev = _sources.resolve_device(device, _sources.model_device(model), "evaluate")
    data = Data(data, "data", task, wants_integers(model), dev, "evaluate")
    objective = _tasks.Objective(data.task, loss, label_smoothing)
    was_training = model.training
    model.to(dev)
    model.eval()
    try:
        return _evaluate(model, data, objective, batch_size, penalty_scale)
    finally:
        model.train(was_training)


def accumulator(device: torch.device) -> torch.device:
    """Where float64 running sums live: on a CUDA device (no copy to the host per batch), else the
    CPU (MPS has no float64)."""
    return device if device.type == "cuda" else torch.device("cpu")


def _evaluate(model, data, objective, batch_size, scale):
    task = objective.task
    n = 0
    sums = torch.zeros(3, dtype=torch.float64, device=accumulator(data.device))   # data loss, metric, activity
    for size, xb, yb in data.in_order(batch_size):
        out = model(xb)
        parts = (objective.sample_loss(out, yb, weighted=False).sum(), task.sample_metric(out, yb).sum(),
                 activity_penalty(model, scale))
        sums += torch.stack([v.detach().to(sums.device).double() for v in parts]) * torch.tensor(
            [1.0, 1.0, float(size)], dtype=torch.float64, device=sums.device)
        n += size
    data_sum, metric_sum, activity_sum = sums.tolist()
    pen = float(weight_penalty(model, scale)) + activity_sum / n
    return {"loss": data_sum / n + pen, "data_loss": data_sum / n, "penalty": pen, task.metric: metric_sum / n}


def fit(model: nn.Module, train, validation=None, *, epochs: int, batch_size: int | None = None,
        optimizer=None, lr: float | None = None, weight_decay: float | None = None, momentum: float = 0.0,
        task=None, loss=None, class_weight=None, sample_weight=None, label_smoothing: float = 0.0,
        clipnorm: float | None = None, clipvalue: float | None = None, global_clipnorm: float | None = None,
        schedule=None, mixup=None, ema=None, swa=None,
        preset=None, seed: int = 0, callbacks=(), warm_start: bool = False,
        device=None, progress: bool | None = None) -> History:
    """Train ``model`` on ``train`` for ``epochs`` epochs; returns a :class:`History`.

    - ``train``/``validation``: ``(X, y)`` arrays or tensors, a map-style ``torch.utils.data.Dataset``
      of ``(x, y)`` pairs (shuffled by reglab from ``seed``, read by index batches), or a
      ``DataLoader`` (its own batches and order). See :mod:`reglab.sources`.
    - ``device``: None trains where the model's weights are; ``"auto"`` takes a CUDA GPU (else MPS,
      else the CPU); or ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``. The model, the data (once)
      and every random draw live there.

    - ``preset``: None (default) trains the weights the model has — a pretrained or custom-initialised
      model is kept — with Keras's training defaults (Adam with ε = 1e-7, batch 32). ``"keras"``
      re-initialises the model first as Keras would build it (Glorot uniform, zero biases, …: the
      tutorials' results); ``"torch"`` re-draws PyTorch's own initialisation and uses
      torch.optim.Adam's ε placement. The re-initialisation is drawn from ``seed`` and leaves frozen
      parameters (``requires_grad=False``) as they are; ``warm_start=True`` keeps the weights even
      with a preset.
    - ``optimizer``: "adam", "adamw" (decoupled weight decay, Keras default 0.004), "sgd", "rmsprop",
      "adagrad" (Keras's formulas and defaults), a :class:`reglab.optim.Optimizer` to continue with
      its state, or a ``torch.optim`` class (e.g. ``torch.optim.AdamW`` or a ``functools.partial``
      of one with its settings; its own formulas apply).
    - ``clipnorm`` / ``clipvalue`` / ``global_clipnorm``: Keras's gradient clipping (one of them).
    - ``schedule``: a learning-rate schedule (:class:`reglab.ExponentialDecay`, ``StepDecay``,
      ``CosineDecay`` with warm-up, ``ReduceLROnPlateau``), a dict ``{"kind": ..., ...}`` or a callable
      ``epoch -> lr``; decays use ``lr`` as the initial rate.
    - ``mixup``: :class:`reglab.Mixup` (timm's Mixup/CutMix of every batch, e.g.
      ``reglab.Mixup(mixup_alpha=0.2)``); ``ema``: :class:`reglab.EMA` (Keras's ``use_ema``) or ``swa``:
      :class:`reglab.SWA` (torch's swa_utils) — the model ends with the averaged weights, the history
      is the live weights'. Each may be a dict of its arguments; see :mod:`reglab.mixup`, :mod:`reglab.averaging`.
    - ``task``: "binary", "multiclass" or "regression"; inferred from the targets when omitted. The
      model outputs raw scores; sigmoid/softmax live in the loss. ``loss``: a callable
      ``loss(logits, target)`` instead of the task's loss, returning one loss per sample or the mean.
    - ``class_weight`` ("balanced" or ``{class: weight}``), ``sample_weight`` (one per training row) and
      ``label_smoothing``: see :class:`reglab.tasks.Objective` (Keras's definitions).
    - ``seed`` fixes initialisation, shuffling and noise: the same seed gives bit-identical results.
    - ``callbacks``: :class:`reglab.Callback` objects, e.g. :class:`reglab.EarlyStopping`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit() needs a torch.nn.Module. Got {type(model).__name__} instead.")
    epochs = check_number(epochs, "epochs", "fit", low=1, integer=True)
    reinit = preset is not None and not warm_start
    preset = _presets.get("keras" if preset is None else preset)
    batch_size = check_number(preset.batch_size if batch_size is None else batch_size, "batch_size", "fit",
                              low=1, integer=True)
    seed = check_number(seed, "seed", "fit", low=0, integer=True)
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"fit() callbacks must be reglab.Callback instances. Got {cb!r} instead.")
    schedule = _schedules.get(schedule, "fit")
    mixup = _mixup.get(mixup)
    ema, swa = _averaging.settings(ema, swa)
    check_dtype(model, "The model")
    integers = wants_integers(model)
    device = _sources.resolve_device(device, _sources.model_device(model))
    data = Data(train, "train", task, integers, device)
    task = data.task
    val = Data(validation, "validation", task, integers, device) if validation is not None else None
    if val is None and any(isinstance(cb, EarlyStopping) and cb.monitor.startswith("val_") for cb in callbacks):
        raise ValueError("EarlyStopping monitors a validation metric but fit() got no validation data; "
                         "pass validation=(X_val, y_val) or monitor='loss'.")
    objective = _tasks.Objective(task, loss, label_smoothing, _tasks.class_weights(class_weight, data.targets, task))
    weights = data.sample_weights(sample_weight)

    streams = _presets.Streams.from_seed(seed)
    # Built before the re-initialisation (which is in place) so that a bad optimizer argument
    # fails without touching the model.
    opt = make_optimizer(model.parameters(), optimizer, preset, lr, weight_decay, momentum,
                         dict(clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm))
    if reinit:
        _presets.initialize(model.cpu(), preset, seed)   # drawn on the CPU: the same weights on any device
    model.to(device)
    history = History(params={"epochs": epochs, "batch_size": batch_size, "seed": seed, "task": task.name},
                      optimizer=opt)
    trainer = Trainer(model, opt, history)
    rates = LearningRates(schedule, opt, opt.lr, 1)
    shuffle_gen = torch.Generator().manual_seed(streams.shuffle)
    mixing = _mixup.Mixing(mixup, [seed])
    averages = _averaging.Averages(ema, swa, model.parameters(), [seed])
    n = data.n

    def notify(hook, **kwargs):
        for cb in callbacks:
            getattr(cb, hook)(trainer, **kwargs)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(streams.noise)
        notify("on_train_begin")
        bar = tqdm(range(epochs), desc="fit", disable=_progress_off(progress), delay=2, leave=False)
        for epoch in bar:
            rates.epoch_begin(epoch)
            notify("on_epoch_begin", epoch=epoch)
            model.train()
            # One batch covers the data: its order cannot matter, so it is not drawn.
            order = (torch.randperm(n, generator=shuffle_gen).to(device)
                     if n > batch_size and not data.shared_order else None)
            sums = torch.zeros(4, dtype=torch.float64, device=accumulator(device))   # loss, data loss, penalty, metric
            seen = 0
            for b, (idx, size, xb, yb) in enumerate(data.epoch(batch_size, order)):
                xb, mix = mixing(xb)
                out = model(xb)
                data_loss = mix.sample_loss(objective, out, yb, None if weights is None else weights[idx]).mean()
                pen = weight_penalty(model, trainer.penalty_scale) + activity_penalty(model, trainer.penalty_scale)
                loss_value = data_loss + pen
                if not torch.isfinite(loss_value):
                    history.diverged = True
                    break
                opt.zero_grad()
                loss_value.backward()
                rates.before_step()
                opt.step()
                averages.after_step()
                apply_constraints(model)
                metric = mix.sample_metric(task, out, yb).mean()
                sums += torch.stack([loss_value.detach(), data_loss.detach(), pen.detach(), metric]).to(sums.device).double() * size
                seen += size
                notify("on_batch_end", batch=b)
            if history.diverged:
                break
            averages.epoch_end(epoch)
            sums = (sums / seen).tolist()
            logs = {"loss": sums[0], "data_loss": sums[1], "penalty": sums[2], task.metric: sums[3]}
            if val is not None:
                model.eval()
                with torch.no_grad():
                    logs.update({f"val_{k}": v for k, v in
                                 _evaluate(model, val, objective, batch_size, trainer.penalty_scale).items()})
            history.append(epoch, logs)
            rates.epoch_end(epoch, {k: np.array([v]) for k, v in logs.items()}, np.array([True]))
            notify("on_epoch_end", epoch=epoch, logs=logs)
            if trainer.stop_training:
                break
        bar.close()
        averages.finish_model(model, (xb for _, _, xb, _ in data.epoch(batch_size, None)))
        notify("on_train_end")
    model.eval()
    for cb in callbacks:
        if isinstance(cb, EarlyStopping):
            history.stopped_epoch = cb.stopped_epoch_ if cb.stopped_epoch_ else None
            if cb.restore_best_weights and cb.best_weights_ is not None:
                history.best_epoch = cb.best_epoch_
    return history


def _progress_off(progress):
    return None if progress is None else not progress
