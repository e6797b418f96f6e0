"""Diagnosis: is a model over- or underfitting, and did the regularizer act the way it should?

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
>>> sorted(weight_norms(model)["0"])
['l1', 'l2', 'max_unit_norm']
"""

from __future__ import annotations

import math

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
        from .training import wants_integers

        x = torch.as_tensor(np.asarray(X))
        integers = wants_integers(model) and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
        model(x.long() if integers else x.to(torch.get_default_dtype()))   # token ids stay ids for an Embedding
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return stats


# Thresholds of the verdicts (see fit_verdict): a gap smaller than this is not worth calling overfitting
# even when the seeds agree on it; a validation loss this much above its minimum at the end has risen.
MIN_GAP = {"accuracy": 0.02, "mae": 0.10}      # accuracy points; MAE: test / train - 1
MIN_RISE = 0.05
REFERENCE_MARGIN = 0.01                          # "no better than the reference" within this


def fit_verdict(train, test, val_loss=None, metric: str = "accuracy", reference: dict | None = None) -> dict:
    """Overfit / underfit / good fit of one variant from its per-seed scores, with the evidence.

    ``train`` and ``test`` hold one score per seed (accuracy: higher is better; MAE: lower),
    ``val_loss`` the mean validation-loss curve, ``reference`` the train/test scores of simple
    models trained on the same split (``majority`` / ``mean`` predictor and ``linear``: logistic or
    linear regression), as ``{"majority": {"train": .., "test": ..}, "linear": {...}}``.

    - **underfit**: the model does not fit its training data — its training score is no better
      than the majority-class (mean) predictor's (within ``REFERENCE_MARGIN``), or below the linear
      model's by more than that margin. Low training accuracy alone is not underfitting: on noisy
      labels no model reaches 1.0.
    - **overfit**: the train–test gap (per seed: train - test; MAE: test / train - 1) is positive
      beyond what the seeds' spread explains (the lower end of its 95% CI above 0) and at least
      ``MIN_GAP``, *and* the validation loss rose after its best epoch by more than ``MIN_RISE``
      (without a curve the gap alone decides).
    - **good fit** otherwise.

    Comparisons between variants (too much regularization) are made by the study's summary.

    >>> r = fit_verdict([1.0, 1.0, 1.0], [0.90, 0.91, 0.92], [0.3, 0.2, 0.25, 0.4])
    >>> r["verdict"], round(r["gap"], 3), round(r["val_loss_rise_after_best"], 2)
    ('overfit', 0.09, 1.0)
    >>> ref = {"majority": {"train": 0.6, "test": 0.6}, "linear": {"train": 0.7, "test": 0.68}}
    >>> fit_verdict([0.61, 0.60], [0.60, 0.61], metric="accuracy", reference=ref)["verdict"]
    'underfit'
    >>> fit_verdict([0.78, 0.80, 0.79], [0.76, 0.79, 0.77], [0.5, 0.45, 0.46], reference=ref)["verdict"]
    'good fit'
    """
    from .stats import describe

    higher = metric == "accuracy"
    train = np.atleast_1d(np.asarray(train, dtype=float))
    test = np.atleast_1d(np.asarray(test, dtype=float))
    with np.errstate(all="ignore"):
        per_seed = (train - test) if higher else (test / train - 1)
    gap = describe(per_seed)
    tr, te = describe(train)["mean"], describe(test)["mean"]
    evidence = {"gap": gap["mean"], "gap_ci": [gap["ci_low"], gap["ci_high"]], "train": tr, "test": te}
    curve = np.asarray(val_loss if val_loss is not None else [], dtype=float)
    curve = curve[np.isfinite(curve)]
    rise = None
    if curve.size:
        best = int(np.argmin(curve))
        evidence.update(best_val_epoch=best, val_loss_best=float(curve[best]), val_loss_last=float(curve[-1]))
        rise = float(curve[-1] / curve[best] - 1) if curve[best] > 0 else 0.0
        evidence["val_loss_rise_after_best"] = rise
    if reference:
        evidence["reference"] = reference
    floor = (reference or {}).get("majority", {}).get("train")
    linear = (reference or {}).get("linear", {}).get("train")
    if floor is not None and math.isfinite(tr) and (tr <= floor + REFERENCE_MARGIN if higher
                                                     else tr >= floor * (1 - REFERENCE_MARGIN)):
        return {"verdict": "underfit", "reason": "fits its training data no better than predicting the "
                + ("majority class" if higher else "mean"), **evidence}
    if linear is not None and math.isfinite(tr) and (tr < linear - REFERENCE_MARGIN if higher
                                                      else tr > linear * (1 + REFERENCE_MARGIN)):
        return {"verdict": "underfit", "reason": "fits its training data worse than a "
                + ("logistic" if higher else "linear") + " regression", **evidence}
    low = gap["ci_low"] if gap["n"] >= 2 else gap["mean"]
    gap_beyond_noise = math.isfinite(low) and low > 0 and gap["mean"] >= MIN_GAP.get(metric, MIN_GAP["accuracy"])
    if gap_beyond_noise and (rise is None or rise > MIN_RISE):
        reason = "train–test gap beyond the seeds' spread" + ("" if rise is None else " and the validation loss "
                                                                 "rose after its best epoch")
        return {"verdict": "overfit", "reason": reason, **evidence}
    reason = ("the train–test gap is within the seeds' spread or small" if not gap_beyond_noise
              else "a train–test gap, but the validation loss did not rise after its best epoch")
    return {"verdict": "good fit", "reason": reason, **evidence}


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
