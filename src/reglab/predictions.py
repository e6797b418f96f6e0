"""Predictions of a trained model: class labels, probabilities or values, as NumPy arrays.

reglab's models output raw scores (logits); :meth:`reglab.tasks.Task.predict` turns them into
probabilities. The task is the one given, else read from the width ``k`` of the output's last
dimension: ``k == 1`` is binary (one logit per sample), ``k >= 2`` multiclass (one logit per
class). A regression model therefore needs ``task="regression"``.

- binary: ``predict`` = ``1 if logit > 0 else 0`` (probability > 0.5), ``predict_proba`` =
  ``[1 - p, p]`` with ``p = sigmoid(logit)``: shape (n, 2), scikit-learn's convention;
- multiclass: ``predict`` = ``argmax(logits)``, ``predict_proba`` = ``softmax(logits)``: (n, k);
- regression: ``predict`` = the outputs, shape (n,) for one output and (n, k) for k outputs, in the
  units the model was trained on; ``predict_proba`` has nothing to give and raises.

>>> import numpy as np, torch
>>> model = torch.nn.Linear(2, 1)
>>> with torch.no_grad():
...     _ = model.weight.copy_(torch.tensor([[1.0, -1.0]])), model.bias.zero_()
>>> X = np.array([[2.0, 0.0], [0.0, 2.0]])
>>> predict(model, X)
array([1, 0])
>>> predict_proba(model, X).round(3)
array([[0.119, 0.881],
       [0.881, 0.119]], dtype=float32)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from . import tasks as _tasks
from ._validate import check_number
from .training import model_inputs, wants_integers

__all__ = ["predict", "predict_proba"]


def predict(model: nn.Module, X, *, task=None, batch_size: int = 256) -> np.ndarray:
    """Class labels (int64, shape (n,)) or regression values of ``model`` on the inputs ``X``.

    ``X``: a NumPy array, a tensor, or a table with ``.to_numpy()`` (a pandas DataFrame), one row
    per sample. ``task``: "binary", "multiclass" or "regression"; when omitted, an output of width 1
    is binary and one of width >= 2 multiclass (see the module's docstring). The model runs in eval
    mode, without gradients, in batches of ``batch_size`` on the device of its parameters; its
    modules' train/eval modes are restored afterwards.
    """
    out, task = _outputs(model, X, task, batch_size, "predict")
    if task.name == "binary":
        return (out[..., 0] > 0).long().numpy()
    if task.name == "multiclass":
        return out.argmax(-1).numpy()
    return (out[..., 0] if out.dim() > 1 and out.shape[-1] == 1 else out).numpy()


def predict_proba(model: nn.Module, X, *, task=None, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of ``model`` on ``X``: shape (n, k), each row sums to 1.

    A binary model (one logit) gives (n, 2): ``[P(class 0), P(class 1)]``, as scikit-learn's
    ``predict_proba`` does. A regression task raises ValueError. Arguments as :func:`predict`.
    """
    out, task = _outputs(model, X, task, batch_size, "predict_proba")
    if task.name == "regression":
        raise ValueError("predict_proba gives class probabilities, but the task is 'regression'; "
                         "use reglab.predict for the predicted values.")
    proba = task.predict(out)
    if task.name == "binary":
        proba = torch.stack([1 - proba, proba], dim=-1)
    return proba.numpy()


def _outputs(model, X, task, batch_size, owner):
    """The model's raw outputs on ``X`` (a CPU tensor) and the task that reads them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"The 'model' parameter of {owner} must be a torch.nn.Module. "
                        f"Got {type(model).__name__} instead.")
    batch_size = check_number(batch_size, "batch_size", owner, low=1, integer=True)
    task = None if task is None else _tasks.get(task)
    device, dtype = _placement(model)
    integers = wants_integers(model)
    if isinstance(X, (Dataset, DataLoader)):
        chunks = (_inputs(x, integers, dtype, owner) for x in _dataset_inputs(X, batch_size, owner))
    else:
        X = _inputs(X, integers, dtype, owner)
        chunks = (X[i:i + batch_size] for i in range(0, X.shape[0], batch_size))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            parts = [model(x.to(device)) for x in chunks]
    finally:
        for module, training in modes.items():
            module.training = training
    if not all(isinstance(p, torch.Tensor) for p in parts):
        kind = next(type(p).__name__ for p in parts if not isinstance(p, torch.Tensor))
        raise TypeError(f"The model returned a {kind}; {owner} needs a model that returns one tensor of raw scores.")
    out = torch.cat([p.cpu() for p in parts])
    if out.dim() < 2:
        if task is not None and task.name == "regression":
            return out, task
        raise ValueError(f"The model's output has shape {tuple(out.shape)}; {owner} needs one row of scores per "
                         "sample, shape (n, 1) for a binary model or (n, classes); pass task='regression' for values.")
    if task is None:
        task = _tasks.TASKS["binary" if out.shape[-1] == 1 else "multiclass"]
    elif task.name != "regression":
        task.check_output(out, None)
    return out, task


def _dataset_inputs(data, batch_size, owner):
    """The inputs of a torch Dataset (items ``x`` or ``(x, y)``) or DataLoader, in order, in batches."""
    if isinstance(data, DataLoader):
        for batch in data:
            yield batch[0] if isinstance(batch, (tuple, list)) else batch
        return
    try:
        n = len(data)
    except TypeError:
        raise TypeError(f"The 'X' dataset of {owner} has no len(); give a map-style Dataset or a DataLoader.") from None
    if n == 0:
        raise ValueError(f"The 'X' dataset of {owner} is empty.")
    for start in range(0, n, batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, n))]
        yield default_collate([item[0] if isinstance(item, (tuple, list)) else item for item in items])


def _placement(model):
    """The device of the model's first parameter (else buffer; else the CPU) and its floating dtype."""
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())
    return device, dtype


def _inputs(X, integers, dtype, owner):
    """``X`` as a tensor: integer ids stay int64 for a model with an embedding, else ``dtype``."""
    if hasattr(X, "to_numpy") and not isinstance(X, (np.ndarray, torch.Tensor)):
        X = X.to_numpy()
    if isinstance(X, (str, bytes, dict)) or X is None:
        raise TypeError(f"The 'X' parameter of {owner} must be an array, a tensor or a DataFrame of numbers. "
                        f"Got {type(X).__name__} instead.")
    if not isinstance(X, torch.Tensor):
        array = np.asarray(X)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"The 'X' parameter of {owner} must hold numbers. "
                            f"Got an array of dtype {array.dtype} instead.")
        X = torch.as_tensor(array if array.flags.writeable else array.copy())   # e.g. a DataFrame's read-only view
    if X.dim() == 0 or X.shape[0] == 0:
        raise ValueError(f"The 'X' parameter of {owner} must hold at least one sample (one row each). "
                         f"Got shape {tuple(X.shape)} instead.")
    return model_inputs(X.detach(), integers, dtype)
