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
from tqdm.auto import tqdm

from . import optim as _optim
from . import presets as _presets
from . import tasks as _tasks
from ._validate import check_number
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


def as_tensors(data, name: str, task=None, integers: bool = False):
    """``(X, y)`` arrays or tensors → inputs and targets in the task's form.

    Inputs become float32 (the default dtype), except integer inputs when ``integers`` (the model
    has an embedding, see :func:`wants_integers`): those stay integers (int64) as given.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"The {name!r} argument must be a pair (X, y). Got {type(data).__name__} instead.")
    X = torch.as_tensor(np.asarray(data[0]) if not isinstance(data[0], torch.Tensor) else data[0])
    y = torch.as_tensor(np.asarray(data[1]) if not isinstance(data[1], torch.Tensor) else data[1])
    if X.shape[0] == 0:
        raise ValueError(f"The {name!r} data is empty.")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"The {name!r} data has {X.shape[0]} inputs but {y.shape[0]} targets.")
    if integers and not X.is_floating_point() and not X.is_complex() and X.dtype != torch.bool:
        X = X.long()
    else:
        X = X.to(torch.get_default_dtype())
    task = _tasks.infer(y) if task is None else _tasks.get(task)
    return X, task.targets(y), task


def batches(n: int, batch_size: int, order: torch.Tensor | None):
    """Index slices of one epoch: consecutive rows of ``order`` (or of 0..n-1)."""
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield (order[start:stop] if order is not None else slice(start, stop)), stop - start


def make_optimizer(params, optimizer, preset, lr, weight_decay, momentum):
    if isinstance(optimizer, _optim.Optimizer):
        return optimizer
    name = optimizer or preset.optimizer
    lr = preset.lr if lr is None else lr
    if name in ("adam", "adamw"):
        kwargs = dict(lr=lr, epsilon=preset.epsilon, epsilon_hat=preset.epsilon_hat)
        if name == "adamw" or weight_decay:
            kwargs["weight_decay"] = 0.004 if (name == "adamw" and weight_decay is None) else (weight_decay or 0.0)
        return _optim.make(name, params, **kwargs)
    return _optim.make(name, params, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay or 0.0)


@torch.no_grad()
def evaluate(model: nn.Module, data, *, task=None, batch_size: int = 32, penalty_scale: float = 1.0) -> dict:
    """Loss (data + penalties), data loss, penalty and metric of ``model`` on ``data`` in eval mode.

    Like Keras's ``evaluate``, batches of ``batch_size`` are averaged weighted by their size, so the
    activity penalty of each batch is counted as it would be during training.
    """
    X, y, task = as_tensors(data, "data", task, integers=wants_integers(model))
    was_training = model.training
    model.eval()
    try:
        return _evaluate(model, X, y, task, batch_size, penalty_scale)
    finally:
        model.train(was_training)


def _evaluate(model, X, y, task, batch_size, scale):
    n = X.shape[0]
    data_sum = metric_sum = activity_sum = 0.0
    for idx, size in batches(n, batch_size, None):
        out = model(X[idx])
        data_sum += float(task.sample_loss(out, y[idx]).sum())
        metric_sum += float(task.sample_metric(out, y[idx]).sum())
        activity_sum += float(activity_penalty(model, scale)) * size
    pen = float(weight_penalty(model, scale)) + activity_sum / n
    return {"loss": data_sum / n + pen, "data_loss": data_sum / n, "penalty": pen, task.metric: metric_sum / n}


def fit(model: nn.Module, train, validation=None, *, epochs: int, batch_size: int | None = None,
        optimizer=None, lr: float | None = None, weight_decay: float | None = None, momentum: float = 0.0,
        task=None, preset="keras", seed: int = 0, callbacks=(), warm_start: bool = False,
        progress: bool | None = None) -> History:
    """Train ``model`` on ``train = (X, y)`` for ``epochs`` epochs; returns a :class:`History`.

    - ``preset="keras"`` (default) re-initialises the model as Keras would build it and uses Keras's
      Adam and batch size; ``"torch"`` re-draws PyTorch's own initialisation. ``warm_start=True``
      keeps the current weights (continue a fitted model, e.g. with a stronger penalty).
    - ``optimizer``: "adam", "adamw" (decoupled weight decay, Keras default 0.004), "sgd", or a
      :class:`reglab.optim.Optimizer` to continue with its state.
    - ``task``: "binary", "multiclass" or "regression"; inferred from the targets when omitted. The
      model outputs raw scores; sigmoid/softmax live in the loss.
    - ``seed`` fixes initialisation, shuffling and noise: the same seed gives bit-identical results.
    - ``callbacks``: :class:`reglab.Callback` objects, e.g. :class:`reglab.EarlyStopping`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit() needs a torch.nn.Module. Got {type(model).__name__} instead.")
    epochs = check_number(epochs, "epochs", "fit", low=1, integer=True)
    preset = _presets.get(preset)
    batch_size = check_number(preset.batch_size if batch_size is None else batch_size, "batch_size", "fit",
                              low=1, integer=True)
    seed = check_number(seed, "seed", "fit", low=0, integer=True)
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"fit() callbacks must be reglab.Callback instances. Got {cb!r} instead.")
    integers = wants_integers(model)
    X, y, task = as_tensors(train, "train", task, integers)
    val = as_tensors(validation, "validation", task, integers)[:2] if validation is not None else None
    if val is None and any(isinstance(cb, EarlyStopping) and cb.monitor.startswith("val_") for cb in callbacks):
        raise ValueError("EarlyStopping monitors a validation metric but fit() got no validation data; "
                         "pass validation=(X_val, y_val) or monitor='loss'.")

    streams = _presets.Streams.from_seed(seed)
    # Built before the re-initialisation (which is in place) so that a bad optimizer argument
    # fails without touching the model.
    opt = make_optimizer(model.parameters(), optimizer, preset, lr, weight_decay, momentum)
    if not warm_start:
        _presets.initialize(model, preset, seed)
    history = History(params={"epochs": epochs, "batch_size": batch_size, "seed": seed, "task": task.name},
                      optimizer=opt)
    trainer = Trainer(model, opt, history)
    shuffle_gen = torch.Generator().manual_seed(streams.shuffle)
    n = X.shape[0]

    def notify(hook, **kwargs):
        for cb in callbacks:
            getattr(cb, hook)(trainer, **kwargs)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(streams.noise)
        notify("on_train_begin")
        bar = tqdm(range(epochs), desc="fit", disable=_progress_off(progress), delay=2, leave=False)
        for epoch in bar:
            notify("on_epoch_begin", epoch=epoch)
            model.train()
            # One batch covers the data: its order cannot matter, so it is not drawn.
            order = torch.randperm(n, generator=shuffle_gen) if n > batch_size else None
            sums = torch.zeros(4, dtype=torch.float64)   # loss, data loss, penalty, metric
            for b, (idx, size) in enumerate(batches(n, batch_size, order)):
                out = model(X[idx])
                data_loss = task.sample_loss(out, y[idx]).mean()
                pen = weight_penalty(model, trainer.penalty_scale) + activity_penalty(model, trainer.penalty_scale)
                loss = data_loss + pen
                if not torch.isfinite(loss):
                    history.diverged = True
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                apply_constraints(model)
                metric = task.sample_metric(out, y[idx]).mean()
                sums += torch.stack([loss.detach(), data_loss.detach(), pen.detach(), metric]).double() * size
                notify("on_batch_end", batch=b)
            if history.diverged:
                break
            sums = (sums / n).tolist()
            logs = {"loss": sums[0], "data_loss": sums[1], "penalty": sums[2], task.metric: sums[3]}
            if val is not None:
                model.eval()
                with torch.no_grad():
                    logs.update({f"val_{k}": v for k, v in
                                 _evaluate(model, val[0], val[1], task, batch_size, trainer.penalty_scale).items()})
            history.append(epoch, logs)
            notify("on_epoch_end", epoch=epoch, logs=logs)
            if trainer.stop_training:
                break
        bar.close()
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
