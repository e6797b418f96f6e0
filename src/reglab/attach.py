"""Attach penalties and constraints to any ``torch.nn.Module``.

>>> import torch, reglab
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
>>> handle = reglab.regularize(model[0], kernel=reglab.L2(1e-3), kernel_constraint=reglab.MaxNorm(3))
>>> y = model(torch.randn(8, 2))
>>> torch.allclose(reglab.penalty(model), 1e-3 * model[0].weight.pow(2).sum())
True
>>> reglab.apply_constraints(model)
>>> bool((model[0].weight.norm(dim=1) <= 3).all())
True
>>> handle.remove()
>>> float(reglab.penalty(model))
0.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from . import constraints as _constraints
from . import penalties as _penalties
from ._validate import check_choice

ACTIVITY_CONVENTIONS = ("mean", "sum")


@dataclass
class Registry:
    """What reglab attached to one module (stored as ``module._reglab``)."""

    penalties: dict = field(default_factory=dict)      # parameter name -> Penalty
    constraints: dict = field(default_factory=dict)    # parameter name -> Constraint
    activity: object = None                            # Penalty on the module's output
    activity_convention: str = "mean"
    activity_value: object = None                      # activity penalty of the last forward pass
    hook: object = None


def _registry(module: nn.Module) -> Registry:
    if not isinstance(getattr(module, "_reglab", None), Registry):
        module._reglab = Registry()
    return module._reglab


def registry(module: nn.Module) -> Registry | None:
    """The registry of ``module``, or None when nothing is attached."""
    reg = getattr(module, "_reglab", None)
    return reg if isinstance(reg, Registry) else None


_RNN = (nn.RNNBase,)


def role_params(module: nn.Module, role: str) -> list[str]:
    """Names of ``module``'s parameters that play ``role`` ('kernel', 'bias' or 'recurrent').

    Kernel is ``weight`` of Linear/Conv and ``weight_ih_l*`` of RNN/LSTM/GRU, recurrent is
    ``weight_hh_l*``, bias is ``bias`` or ``bias_ih_l*``/``bias_hh_l*``.
    """
    names = [n for n, _ in module.named_parameters(recurse=False)]
    if isinstance(module, _RNN):
        pattern = {"kernel": r"weight_ih_l\d+(_reverse)?$", "recurrent": r"weight_hh_l\d+(_reverse)?$",
                   "bias": r"bias_(ih|hh)_l\d+(_reverse)?$"}[role]
        return [n for n in names if re.match(pattern, n)]
    if role == "recurrent":
        return []
    wanted = {"kernel": "weight", "bias": "bias"}[role]
    return [wanted] if wanted in names and getattr(module, wanted) is not None else []


def _activity_hook(module, inputs, output):
    reg = module._reglab
    out = output[0] if isinstance(output, (tuple, list)) else output
    value = reg.activity(out)
    if reg.activity_convention == "mean":
        # An RNN without batch_first puts the batch in dim 1 of its (seq, batch, features) output.
        batch_dim = 1 if isinstance(module, _RNN) and not module.batch_first and out.dim() == 3 else 0
        value = value / out.shape[batch_dim]
    reg.activity_value = value


class Handle:
    """Returned by :func:`regularize`; ``remove()`` takes off what that call attached."""

    def __init__(self, module, penalties: dict, constraints: dict, hook):
        self.module, self._penalties, self._constraints, self._hook = module, penalties, constraints, hook

    def remove(self) -> None:
        """Take off what this call attached; what a later call put in its place stays."""
        reg = registry(self.module)
        if reg is None:
            return
        for name, pen in self._penalties.items():
            if reg.penalties.get(name) is pen:
                del reg.penalties[name]
        for name, con in self._constraints.items():
            if reg.constraints.get(name) is con:
                del reg.constraints[name]
        if self._hook is not None and reg.hook is self._hook:
            reg.hook.remove()
            reg.hook, reg.activity, reg.activity_value = None, None, None


def regularize(module: nn.Module, kernel=None, bias=None, recurrent=None, activity=None, *,
               kernel_constraint=None, bias_constraint=None, recurrent_constraint=None,
               penalties: dict | None = None, constraints: dict | None = None,
               activity_convention: str = "mean") -> Handle:
    """Attach penalties and constraints to ``module``, Keras-style.

    ``kernel``/``bias``/``recurrent`` are penalties on the weights of that role (see
    :func:`role_params`), ``activity`` a penalty on the module's output: attach it to a Linear to
    penalise before the activation, to the activation module to penalise after it.
    ``penalties``/``constraints`` map any parameter name of ``module`` (dotted names reach into
    children) to a penalty or constraint. Anything :func:`reglab.penalties.get` understands is
    accepted: ``reglab.L2(1e-3)``, ``"l2(1e-3)"`` or a callable.

    ``activity_convention``: ``"mean"`` divides the activity penalty by the batch size (Keras ≥ 3.14
    and tf.keras 2); ``"sum"`` adds the plain batch sum (Keras 2.3 and Keras 3.0-3.13).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"regularize() needs a torch.nn.Module. Got {type(module).__name__} instead.")
    check_choice(activity_convention, "activity_convention", "regularize", ACTIVITY_CONVENTIONS)
    wanted_penalties: dict[str, object] = {}
    wanted_constraints: dict[str, object] = {}
    for role, pen, con in (("kernel", kernel, kernel_constraint), ("bias", bias, bias_constraint),
                           ("recurrent", recurrent, recurrent_constraint)):
        if pen is None and con is None:
            continue
        names = role_params(module, role)
        if not names:
            raise ValueError(
                f"{type(module).__name__} has no {role} weight to regularize; "
                f"its parameters are: {', '.join(n for n, _ in module.named_parameters()) or 'none'}.")
        for name in names:
            if pen is not None:
                wanted_penalties[name] = _penalties.get(pen)
            if con is not None:
                wanted_constraints[name] = _constraints.get(con)
    params = dict(module.named_parameters())
    for given, target in ((penalties or {}, wanted_penalties), (constraints or {}, wanted_constraints)):
        getter = _penalties.get if target is wanted_penalties else _constraints.get
        for name, value in given.items():
            if name not in params:
                raise ValueError(f"{type(module).__name__} has no parameter {name!r}; "
                                 f"its parameters are: {', '.join(params) or 'none'}.")
            target[name] = getter(value)
    activity = _penalties.get(activity)

    reg = _registry(module)
    reg.penalties.update(wanted_penalties)
    reg.constraints.update(wanted_constraints)
    if activity is not None:
        if reg.hook is not None:
            reg.hook.remove()
        reg.activity, reg.activity_convention = activity, activity_convention
        reg.hook = module.register_forward_hook(_activity_hook)
    return Handle(module, wanted_penalties, wanted_constraints, reg.hook if activity is not None else None)


def _param(module: nn.Module, dotted: str) -> torch.Tensor:
    return module.get_parameter(dotted)


def weight_penalty(model: nn.Module, scale=1.0) -> torch.Tensor:
    """Sum of every weight penalty attached anywhere in ``model`` (activity penalties excluded)."""
    total = None
    for module in model.modules():
        reg = registry(module)
        if reg is None:
            continue
        for name, pen in reg.penalties.items():
            value = pen(_param(module, name))
            total = value if total is None else total + value
    return _scaled(total, scale, model)


def activity_penalty(model: nn.Module, scale=1.0) -> torch.Tensor:
    """Sum of the activity penalties computed in the last forward pass of ``model``."""
    total = None
    for module in model.modules():
        reg = registry(module)
        if reg is not None and reg.activity is not None and reg.activity_value is not None:
            total = reg.activity_value if total is None else total + reg.activity_value
    return _scaled(total, scale, model)


def _scaled(total, scale, model):
    if total is None:
        first = next(model.parameters(), None)
        return torch.zeros((), dtype=first.dtype if first is not None else torch.get_default_dtype())
    return total * scale if not (isinstance(scale, float) and scale == 1.0) else total


def penalty(model: nn.Module, scale=1.0) -> torch.Tensor:
    """Every penalty attached to ``model``: weight penalties plus the activity penalties of the
    last forward pass. Add it to the mean batch loss, once per batch, as Keras does.
    ``scale`` multiplies the result (penalty schedules use it)."""
    return weight_penalty(model, scale) + activity_penalty(model, scale)


@torch.no_grad()
def apply_constraints(model: nn.Module) -> None:
    """Project every constrained parameter of ``model``; call it after each optimizer step."""
    for module in model.modules():
        reg = registry(module)
        if reg is None:
            continue
        for name, con in reg.constraints.items():
            p = _param(module, name)
            p.copy_(con(p))


def attached(model: nn.Module):
    """Yield ``(module_name, module, registry)`` for every module with something attached."""
    for name, module in model.named_modules():
        reg = registry(module)
        if reg is not None and (reg.penalties or reg.constraints or reg.activity is not None):
            yield name, module, reg
