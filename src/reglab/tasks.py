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
