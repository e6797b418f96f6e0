"""Weight penalties with Keras 3's exact formulas.

Each penalty maps a weight tensor to a scalar that is added to the loss once per batch.
A coefficient may also be a 1-D tensor with one value per population member; the weight then
carries a leading member dimension and the penalty returns one value per member.

>>> import torch
>>> w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
>>> L2(0.01)(w)          # 0.01 * (1 + 4 + 0.25)
tensor(0.0525)
>>> L1L2(l1=0.1, l2=0.01)(w)
tensor(0.4025)
>>> get("l1_l2(l1=1e-5, l2=1e-4)")
L1L2(l1=1e-05, l2=0.0001)
"""

from __future__ import annotations

from typing import Callable

import torch

from ._parse import Call, ParseError, resolve
from ._validate import check_choice, check_coefficient


class Penalty:
    """Base class: ``__init__`` validates, ``__call__(w)`` computes, ``get_config`` describes.

    Subclasses list their coefficient names in ``coefficients`` and implement
    ``members(w)``: the penalty of each member of a stacked weight ``w`` of shape (P, ...).
    """

    coefficients: tuple[str, ...] = ()

    def members(self, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        """Scalar penalty of ``w``; one value per member when a coefficient is per-member."""
        if self.per_member:
            return self.members(w)
        return self.members(w.unsqueeze(0))[0]

    @property
    def per_member(self) -> bool:
        return any(isinstance(getattr(self, c), torch.Tensor) and getattr(self, c).dim() == 1
                   for c in self.coefficients)

    def _coef(self, name: str, w: torch.Tensor):
        """A coefficient shaped to broadcast against a (P,) result."""
        value = getattr(self, name)
        if isinstance(value, torch.Tensor):
            return value.to(dtype=w.dtype, device=w.device)
        return value

    def get_config(self) -> dict:
        return {c: _plain(getattr(self, c)) for c in self.coefficients}

    @classmethod
    def from_config(cls, config: dict) -> "Penalty":
        # get_config writes a per-member coefficient as a list; float64 turns it back into the same values.
        return cls(**{k: torch.tensor(v, dtype=torch.float64) if k in cls.coefficients and isinstance(v, list)
                      else v for k, v in config.items()})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


class L1(Penalty):
    """``penalty = l1 * sum(|w|)``.

    >>> import torch
    >>> L1(0.5)(torch.tensor([1.0, -3.0]))
    tensor(2.)
    """

    coefficients = ("l1",)

    def __init__(self, l1=0.01):
        self.l1 = check_coefficient(l1, "l1", "L1")

    def members(self, w):
        return self._coef("l1", w) * w.abs().flatten(1).sum(1)


def _sum_squares(flat: torch.Tensor) -> torch.Tensor:
    """Each member's (row's) sum of squares. Without a gradient to build (a population's logged
    penalty value) it is the squared ``vector_norm``, one pass over the weights with no temporary;
    the two agree to rounding (a few float32 ulps)."""
    if torch.is_grad_enabled() and flat.requires_grad:
        return flat.square().sum(1)
    return torch.linalg.vector_norm(flat, dim=1).square()


class L2(Penalty):
    """``penalty = l2 * sum(w ** 2)`` — no factor 1/2, as in Keras.

    >>> import torch
    >>> L2(0.5)(torch.tensor([1.0, -3.0]))
    tensor(5.)
    """

    coefficients = ("l2",)

    def __init__(self, l2=0.01):
        self.l2 = check_coefficient(l2, "l2", "L2")

    def members(self, w):
        return self._coef("l2", w) * _sum_squares(w.flatten(1))


class L1L2(Penalty):
    """``penalty = l1 * sum(|w|) + l2 * sum(w ** 2)``; both default to 0 as in Keras 3.

    >>> import torch
    >>> L1L2(l1=1.0, l2=0.5)(torch.tensor([1.0, -3.0]))
    tensor(9.)
    """

    coefficients = ("l1", "l2")

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = check_coefficient(l1, "l1", "L1L2")
        self.l2 = check_coefficient(l2, "l2", "L1L2")

    def members(self, w):
        flat = w.flatten(1)
        total = None
        if isinstance(self.l1, torch.Tensor) or self.l1 != 0:
            total = self._coef("l1", w) * flat.abs().sum(1)
        if isinstance(self.l2, torch.Tensor) or self.l2 != 0:
            term = self._coef("l2", w) * _sum_squares(flat)
            total = term if total is None else total + term
        return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if total is None else total


class Orthogonal(Penalty):
    """Keras's orthogonality penalty for a 2-D weight.

    ``mode="rows"`` normalises each row ``x / max(||x||, 1e-7)``, forms ``P = X Xᵀ`` and returns
    ``factor * 0.5 * sum(|P * (1 - I)|) / (n (n - 1) / 2)`` with n rows; ``"columns"`` does the
    same on the columns. The mode applies to the tensor as given: a PyTorch Linear weight is
    (out, in), so PyTorch's rows are Keras's columns (one row per output unit).

    >>> import torch
    >>> Orthogonal(1.0)(torch.eye(3))
    tensor(0.)
    >>> Orthogonal(1.0)(torch.ones(2, 2))   # two identical unit rows: 0.5 * 2 / 1
    tensor(1.0000)
    """

    coefficients = ("factor",)

    def __init__(self, factor=0.01, mode="rows"):
        self.factor = check_coefficient(factor, "factor", "Orthogonal")
        self.mode = check_choice(mode, "mode", "Orthogonal", ("rows", "columns"))

    def members(self, w):
        if w.dim() != 3:
            raise ValueError(
                f"Orthogonal needs a 2-D weight. Got a weight of shape {tuple(w.shape[1:])}; "
                "attach it to a Linear weight or an RNN weight instead.")
        x = w if self.mode == "rows" else w.transpose(1, 2)
        norm = x.square().sum(2, keepdim=True).sqrt()
        x = x / norm.clamp_min(1e-7)
        n = x.shape[1]
        if n < 2:
            return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        product = x @ x.transpose(1, 2)
        off_diagonal = product * (1 - torch.eye(n, dtype=w.dtype, device=w.device))
        return self._coef("factor", w) * 0.5 * off_diagonal.abs().sum((1, 2)) / (n * (n - 1) / 2)

    def get_config(self):
        return {"factor": _plain(self.factor), "mode": self.mode}


class Custom(Penalty):
    """Wraps any callable ``tensor -> scalar tensor`` so it can sit beside the built-ins."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        if not callable(fn):
            raise TypeError(f"A custom penalty must be callable (tensor -> scalar). Got {fn!r} instead.")
        self.fn = fn

    def __call__(self, w):
        return self.fn(w)

    def members(self, w):
        return torch.stack([torch.as_tensor(self.fn(wi), dtype=w.dtype) for wi in w])

    def get_config(self):
        return {"fn": getattr(self.fn, "__qualname__", repr(self.fn))}

    def __repr__(self):
        return f"Custom({self.get_config()['fn']})"


l1 = L1
l2 = L2
l1_l2 = L1L2
orthogonal = Orthogonal
orthogonal_regularizer = Orthogonal

_NAMES: dict[str, type[Penalty]] = {
    "l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2, "orthogonal": Orthogonal,
    "orthogonal_regularizer": Orthogonal, "orthogonalregularizer": Orthogonal,
}
# Bare names take Keras's "get" defaults; l1_l2 uses 0.01 for both (tf.keras's l1_l2 function)
# because a bare name that means "no penalty at all" would surprise everyone.
_BARE_DEFAULTS = {L1L2: {"l1": 0.01, "l2": 0.01}}


def get(identifier) -> Penalty | None:
    """Turn a name, text, config dict, Penalty or callable into a Penalty (``None`` stays None).

    >>> get("L2(0.01)")
    L2(l2=0.01)
    >>> get("l1_l2")
    L1L2(l1=0.01, l2=0.01)
    >>> get({"class_name": "L1", "config": {"l1": 0.001}})
    L1(l1=0.001)
    """
    return resolve(identifier, base=Penalty, noun="penalty", from_call=from_call, lookup=_lookup, wrap=Custom,
                   example="'l2(1e-3)', reglab.L2(1e-3) or a callable")


def from_call(call: Call, text: str | None = None) -> Penalty:
    """Build a Penalty from a parsed call such as ``Call('l2', (0.001,))``."""
    cls = _lookup(call.name, text or call.name)
    for value in list(call.args) + list(call.kwargs.values()):
        if isinstance(value, Call):
            raise ParseError(f"Penalty {text or call.name!r}: arguments must be numbers, got {value.name!r}.")
    kwargs = dict(call.kwargs)
    if not call.args and not call.kwargs and text is not None and "(" not in text:
        kwargs = dict(_BARE_DEFAULTS.get(cls, {}))
    try:
        return cls(*call.args, **kwargs)
    except TypeError as exc:
        if "argument" in str(exc):
            raise TypeError(f"Penalty {text or call.name!r}: {exc}") from None
        raise


def _lookup(name: str, text) -> type[Penalty]:
    key = name.lower()
    if key not in _NAMES:
        known = ", ".join(sorted({"l1", "l2", "l1_l2", "orthogonal"}))
        where = f" in {text!r}" if text != name else ""
        raise ValueError(f"Unknown penalty {name!r}{where}; known penalties: {known}.")
    return _NAMES[key]
