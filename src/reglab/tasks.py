"""Learning tasks: how targets are read, which loss is minimised and which metric is reported.

Models output raw scores (logits); the loss applies the sigmoid or softmax itself, which is
Keras's ``Dense(1, activation='sigmoid')`` + ``binary_crossentropy`` computed stably. Per-sample
functions keep any leading member dimension, so one implementation serves a single model and a
population.

>>> import torch
>>> infer(torch.tensor([0, 1, 1, 0])).name
'binary'
>>> infer(torch.tensor([0, 2, 1])).name
'multiclass'
>>> infer(torch.tensor([0.5, 1.2])).name
'regression'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Task:
    name: str        # "binary" | "multiclass" | "regression"
    metric: str      # history key of the metric: "accuracy" or "mae"

    def targets(self, y) -> torch.Tensor:
        y = torch.as_tensor(y)
        if self.name == "multiclass":
            return y.long().reshape(-1)
        y = y.to(torch.get_default_dtype())
        return y.reshape(-1) if self.name == "binary" else (y.reshape(-1, 1) if y.dim() == 1 else y)

    def check_output(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Reject outputs whose last dimension does not fit the task; broadcasting would otherwise
        train on a silently wrong loss (a (B,) regression output against (B, 1) targets gives (B, B))."""
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"The model's forward() returned a {type(out).__name__}, not a tensor; reglab trains on one "
                             f"tensor of predictions: return only that (e.g. `return logits`, not `return logits, extra`).")
        width = out.shape[-1] if out.dim() else None
        if self.name == "binary":
            ok, wanted = width == 1, "one raw score per sample (last dimension 1); use task='multiclass' for one score per class"
        elif self.name == "multiclass":
            ok, wanted = width is not None and width >= 2, "one raw score per class (last dimension >= 2)"
        else:
            ok, wanted = width == y.shape[-1], f"last dimension {y.shape[-1]}, as the targets have"
        if not ok:
            raise ValueError(f"The model's output has shape {tuple(out.shape)}, but the {self.name!r} task needs {wanted}.")

    def sample_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of every sample: shape ``out.shape[:-1]`` (members and batch)."""
        self.check_output(out, y)
        if self.name == "binary":
            return F.binary_cross_entropy_with_logits(out[..., 0], y.expand(out.shape[:-1]), reduction="none")
        if self.name == "multiclass":
            lead = out.shape[:-1]
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.expand(lead).reshape(-1),
                                   reduction="none").reshape(lead)
        return (out - y).square().mean(-1)

    def sample_metric(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Accuracy (1/0 per sample) or absolute error per sample."""
        with torch.no_grad():
            if self.name == "binary":
                return ((out[..., 0] > 0).to(out.dtype) == y).to(out.dtype)
            if self.name == "multiclass":
                return (out.argmax(-1) == y).to(out.dtype)
            return (out - y).abs().mean(-1)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Probabilities (classification) or values (regression) from raw outputs."""
        if self.name == "binary":
            return torch.sigmoid(out[..., 0])
        if self.name == "multiclass":
            return torch.softmax(out, -1)
        return out


class Objective:
    """What training minimises: the task's loss (or a callable ``loss(logits, target)``), with
    ``label_smoothing`` and ``class_weight`` — one value, or one per member of a population.

    - Label smoothing: Keras's ``y * (1 - s) + 0.5 * s`` for binary targets; for multiclass
      PyTorch's ``cross_entropy(label_smoothing=s)``, i.e. targets ``(1 - s) * onehot + s / C``
      (Keras's categorical rule; the two coincide for two classes).
    - Class weights multiply each sample's loss by its class's weight, as Keras turns
      ``class_weight`` into sample weights; sample weights multiply too. The batch loss is the sum of
      weighted losses divided by the batch size (Keras's ``sum_over_batch_size``), metrics stay
      unweighted and validation losses unweighted (Keras weighs neither).
    - A callable loss gets the raw outputs of one model ``(B, ...)`` and the targets in the task's
      form and returns one loss per sample ``(B,)`` or the batch mean (a scalar; then no weights).
    """

    def __init__(self, task: Task, loss=None, label_smoothing=0.0, class_weight=None):
        self.task, self.loss = task, loss
        if loss is not None and not callable(loss):
            raise TypeError(f"The 'loss' parameter must be a callable loss(logits, target). Got {loss!r} instead.")
        smooth = torch.as_tensor(label_smoothing, dtype=torch.float64)
        if smooth.numel() and bool(smooth.ne(0).any()):
            if task.name == "regression":
                raise ValueError("label_smoothing applies to classification; this task is regression.")
            if loss is not None:
                raise ValueError("label_smoothing applies to reglab's losses; a callable loss smooths itself.")
            if not bool(((smooth >= 0) & (smooth <= 1)).all()):
                raise ValueError(f"The 'label_smoothing' parameter must be in [0, 1]. Got {label_smoothing!r} instead.")
            self.smoothing = smooth
        else:
            self.smoothing = None
        if class_weight is not None and task.name == "regression":
            raise ValueError("class_weight applies to classification; this task is regression (use sample_weight).")
        self.class_weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.get_default_dtype())

    @property
    def plain(self) -> bool:
        """Nothing but the task's own loss (the fused kernels compute exactly that)."""
        return self.loss is None and self.smoothing is None and self.class_weight is None

    def sample_loss(self, out: torch.Tensor, y: torch.Tensor, sample_weight=None, weighted: bool = True,
                    stacked: bool = False):
        """Per-sample losses, shape ``out.shape[:-1]`` (members and batch); ``weighted=False`` leaves
        out the class and sample weights (validation). ``stacked``: ``out`` has a leading member
        dimension (a population), and ``y`` has one too unless all members share the batch."""
        value = self._base(out, y, stacked)
        if weighted and self.class_weight is not None:
            value = value * self._class_weights(out, y)
        if weighted and sample_weight is not None:
            value = value * sample_weight.to(value.dtype)
        return value

    def _base(self, out, y, stacked):
        if self.loss is not None:
            self.task.check_output(out, y)
            if not stacked:
                return self._custom(out, y)
            per_member = y.dim() == out.dim() - (self.task.name != "regression")
            return torch.stack([self._custom(o, y[i] if per_member else y) for i, o in enumerate(out)])
        if self.smoothing is None:
            return self.task.sample_loss(out, y)
        self.task.check_output(out, y)
        s = self.smoothing.to(out.dtype)
        s = s.view((-1,) + (1,) * (out.dim() - 2)) if s.dim() else s
        if self.task.name == "binary":
            target = y.expand(out.shape[:-1]) * (1 - s) + 0.5 * s
            return F.binary_cross_entropy_with_logits(out[..., 0], target, reduction="none")
        logp = torch.log_softmax(out, -1)
        nll = -logp.gather(-1, y.expand(out.shape[:-1]).unsqueeze(-1))[..., 0]
        return nll * (1 - s) + (-logp.mean(-1)) * s

    def _custom(self, out, y):
        value = self.loss(out, y)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"The loss callable returned {type(value).__name__}; it must return a tensor.")
        if value.dim() == 0:
            return value.expand(out.shape[0])
        if tuple(value.shape) != (out.shape[0],):
            raise ValueError(f"The loss callable returned shape {tuple(value.shape)}; it must return one loss per "
                             f"sample ({out.shape[0]},) or a scalar.")
        return value

    def _class_weights(self, out, y):
        cw = self.class_weight.to(out.device)
        classes = y.long().expand(out.shape[:-1])
        if cw.dim() == 1:
            return cw[classes]
        return torch.gather(cw, 1, classes.reshape(cw.shape[0], -1)).reshape(classes.shape)


def class_weights(class_weight, y: torch.Tensor, task: Task, owner: str = "fit") -> torch.Tensor | None:
    """Class weights as a tensor indexed by class: ``"balanced"`` (scikit-learn's
    ``n_samples / (n_classes * count)``), a mapping ``{class: weight}`` (missing classes weigh 1, as
    in Keras), a sequence or None."""
    if class_weight is None:
        return None
    if task.name == "regression":
        raise ValueError(f"The 'class_weight' parameter of {owner} applies to classification; this task is "
                         "regression (use sample_weight).")
    labels = y.long().reshape(-1)
    n_classes = int(labels.max()) + 1 if task.name == "multiclass" else 2
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"The 'class_weight' parameter of {owner} must be 'balanced', a mapping {{class: weight}} "
                             f"or None. Got {class_weight!r} instead.")
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels.numpy())
        weights = torch.ones(n_classes, dtype=torch.float64)
        weights[torch.as_tensor(present)] = torch.as_tensor(
            compute_class_weight("balanced", classes=present, y=labels.numpy()), dtype=torch.float64)
        return weights.to(torch.get_default_dtype())
    if isinstance(class_weight, dict):
        weights = torch.ones(n_classes, dtype=torch.float64)
        for key, value in class_weight.items():
            k = int(key) if isinstance(key, str) and key.isdigit() else key
            if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k < n_classes:
                raise ValueError(f"The 'class_weight' of {owner} names class {key!r}, but the classes are 0..{n_classes - 1}.")
            weights[k] = float(value)
    else:
        weights = torch.as_tensor(class_weight, dtype=torch.float64).reshape(-1)
        if weights.numel() != n_classes:
            raise ValueError(f"The 'class_weight' of {owner} has {weights.numel()} values for {n_classes} classes.")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"The 'class_weight' of {owner} must be finite and >= 0. Got {class_weight!r} instead.")
    return weights.to(torch.get_default_dtype())


TASKS = {"binary": Task("binary", "accuracy"), "multiclass": Task("multiclass", "accuracy"),
         "regression": Task("regression", "mae")}


def get(task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"The 'task' parameter must be one of 'binary', 'multiclass', 'regression'. Got {task!r} instead.")
    return TASKS[task]


def infer(y) -> Task:
    """Binary for two integer classes {0, 1}, multiclass for more integer classes, else regression."""
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point:
        if y.numel() and not torch.equal(y, y.round()):
            return TASKS["regression"]
        if y.dim() > 1 and y.shape[-1] > 1:
            return TASKS["regression"]
    if y.dtype == torch.bool:
        return TASKS["binary"]
    values = torch.unique(y)
    if values.numel() <= 2 and bool(((values == 0) | (values == 1)).all()):
        return TASKS["binary"]
    if bool((values >= 0).all()):
        return TASKS["multiclass"]
    return TASKS["regression"]
