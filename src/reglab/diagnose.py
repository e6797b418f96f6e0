"""Diagnosis: is a model over- or underfitting, and did the regularizer act the way it should?

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
>>> sorted(weight_norms(model)["0"])
['l1', 'l2', 'max_unit_norm']
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                nn.Softplus, nn.Hardsigmoid)


def weight_norms(model: nn.Module) -> dict:
    """Per weighted layer: L1 and L2 norms of its kernel(s) and the largest per-unit L2 norm."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, _WEIGHTED):
            continue
        kernels = [p for n, p in module.named_parameters(recurse=False) if n.startswith("weight")]
        flat = torch.cat([k.detach().reshape(-1) for k in kernels])
        unit = max(float(k.detach().reshape(k.shape[0], -1).norm(dim=1).max()) for k in kernels)
        out[name] = {"l1": float(flat.abs().sum()), "l2": float(flat.norm()), "max_unit_norm": unit}
    return out


@torch.no_grad()
def activation_sparsity(model: nn.Module, X) -> dict:
    """Per activation module: fraction of exact zeros and mean activation on inputs ``X`` (eval mode)."""
    stats, handles = {}, []

    def hook(name):
        def record(module, inputs, output):
            out = output.detach()
            stats[name] = {"zero_fraction": float((out == 0).float().mean()), "mean_activation": float(out.mean())}
        return record

    for name, module in model.named_modules():
        if isinstance(module, _ACTIVATIONS):
            handles.append(module.register_forward_hook(hook(name)))
    was = model.training
    model.eval()
    try:
        model(torch.as_tensor(np.asarray(X), dtype=torch.get_default_dtype()))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return stats


def fit_verdict(history: dict, train_metric: float, test_metric: float, metric: str = "accuracy") -> dict:
    """Overfit / underfit / good fit from the final metrics and the validation curve, with evidence.

    Overfit: the train–test gap is large (> 0.05 accuracy, or test error > 1.5 × train error for
    MAE) or validation loss rose by more than 10 % after its best epoch. Underfit: training
    accuracy itself is low (< 0.9) — the model does not even fit its training data.
    """
    higher = metric == "accuracy"
    gap = (train_metric - test_metric) if higher else (test_metric - train_metric)
    val = np.asarray(history.get("val_loss", []), dtype=float)
    val = val[np.isfinite(val)]
    evidence = {"gap": float(gap)}
    rise = 0.0
    if val.size:
        best = int(np.argmin(val))
        evidence["best_val_epoch"] = best
        evidence["val_loss_best"] = float(val[best])
        evidence["val_loss_last"] = float(val[-1])
        rise = float(val[-1] / val[best] - 1) if val[best] > 0 else 0.0
        evidence["val_loss_rise_after_best"] = rise
    if higher and train_metric < 0.9:
        verdict = "underfit"
    elif (gap > 0.05 if higher else (train_metric > 0 and test_metric > 1.5 * train_metric)) or rise > 0.10:
        verdict = "overfit"
    else:
        verdict = "good fit"
    return {"verdict": verdict, **evidence}


def snippet(model: nn.Module) -> str:
    """The regularization attached to ``model`` as PyTorch code a user can paste next to their model.

    >>> import torch, reglab
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> _ = reglab.regularize(m[0], kernel=reglab.L2(0.001))
    >>> print(snippet(m).splitlines()[1])
    reglab.regularize(model[0], kernel=reglab.L2(l2=0.001))
    """
    from .attach import attached

    lines = ["import reglab"]
    roles = {"weight": ("kernel", "kernel_constraint"), "bias": ("bias", "bias_constraint")}
    for name, module, reg in attached(model):
        target = f"model[{name}]" if name.isdigit() else f"model.get_submodule({name!r})"
        kwargs, extra_pen, extra_con = [], {}, {}
        for pname, pen in reg.penalties.items():
            role = roles.get(pname, (None,))[0] or _rnn_role(pname)
            (kwargs.append(f"{role}=reglab.{pen!r}") if role and f"{role}=" not in " ".join(kwargs)
             else extra_pen.__setitem__(pname, pen))
        for pname, con in reg.constraints.items():
            role = roles.get(pname, (None, None))[1] or (_rnn_role(pname) + "_constraint" if _rnn_role(pname) else None)
            (kwargs.append(f"{role}=reglab.{con!r}") if role and f"{role}=" not in " ".join(kwargs)
             else extra_con.__setitem__(pname, con))
        if reg.activity is not None:
            kwargs.append(f"activity=reglab.{reg.activity!r}")
            if reg.activity_convention != "mean":
                kwargs.append(f"activity_convention={reg.activity_convention!r}")
        if extra_pen:
            kwargs.append("penalties={" + ", ".join(f"{k!r}: reglab.{v!r}" for k, v in extra_pen.items()) + "}")
        if extra_con:
            kwargs.append("constraints={" + ", ".join(f"{k!r}: reglab.{v!r}" for k, v in extra_con.items()) + "}")
        lines.append(f"reglab.regularize({target}, {', '.join(kwargs)})")
    if len(lines) == 1:
        lines.append("# no regularization attached")
    lines.append("# training loop: loss = data_loss + reglab.penalty(model); after opt.step(): reglab.apply_constraints(model)")
    return "\n".join(lines)


def _rnn_role(pname: str) -> str | None:
    if pname.startswith("weight_ih"):
        return "kernel"
    if pname.startswith("weight_hh"):
        return "recurrent"
    if pname.startswith("bias_"):
        return "bias"
    return None
