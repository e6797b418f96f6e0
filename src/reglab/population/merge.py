"""Merge the members' penalties and constraints into per-member tensors.

Members may differ in kind and strength: L1, L2 and L1L2 become one ``L1L2`` with per-member
(l1, l2); other penalties of one kind and mode stack their coefficients, with 0 for members that
lack them; constraints of one kind stack their bounds and carry a mask of the members they
apply to. The formulas themselves stay in ``reglab.penalties`` and ``reglab.constraints``.
"""

from __future__ import annotations

import torch

from .. import constraints as C
from .. import penalties as R


def _l1l2(pen):
    if isinstance(pen, R.L1):
        return pen.l1, 0.0
    if isinstance(pen, R.L2):
        return 0.0, pen.l2
    return pen.l1, pen.l2


class MergedPenalty:
    """Per-member penalty of a stacked tensor: ``members(w) -> (P,)``."""

    def __init__(self, pens: list):
        self.groups = []      # (penalty with per-member coefficients, member mask or None)
        self.custom = []      # (member index, penalty) computed one by one
        P = len(pens)
        lin = [p for p in pens if isinstance(p, (R.L1, R.L2, R.L1L2))]
        if lin:
            coefs = [(_l1l2(p) if isinstance(p, (R.L1, R.L2, R.L1L2)) else (0.0, 0.0)) for p in pens]
            l1 = torch.tensor([float(c[0]) for c in coefs])
            l2 = torch.tensor([float(c[1]) for c in coefs])
            if bool((l1 > 0).any()) or bool((l2 > 0).any()):
                self.groups.append(R.L1L2(l1=l1 if bool((l1 > 0).any()) else 0.0, l2=l2 if bool((l2 > 0).any()) else 0.0))
        modes = {p.mode for p in pens if isinstance(p, R.Orthogonal)}
        for mode in sorted(modes):
            factor = torch.tensor([float(p.factor) if isinstance(p, R.Orthogonal) and p.mode == mode else 0.0 for p in pens])
            self.groups.append(R.Orthogonal(factor=factor, mode=mode))
        for i, p in enumerate(pens):
            if p is not None and not isinstance(p, (R.L1, R.L2, R.L1L2, R.Orthogonal)):
                self.custom.append((i, p))
        self.P = P

    def __bool__(self):
        return bool(self.groups or self.custom)

    def members(self, w: torch.Tensor) -> torch.Tensor:
        total = None
        for pen in self.groups:
            value = pen.members(w)
            total = value if total is None else total + value
        if self.custom:
            extra = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            for i, pen in self.custom:
                extra = extra.index_put((torch.tensor([i], device=w.device),),
                                        torch.as_tensor(pen(w[i]), dtype=w.dtype).reshape(1),
                                        accumulate=True)
            total = extra if total is None else total + extra
        return total


class MergedConstraint:
    """Projects each member with its own constraint (or leaves it alone)."""

    def __init__(self, cons: list):
        self.groups = []      # (constraint with per-member bounds, mask (P,) bool or None)
        self.custom = []
        kinds = {}
        for i, c in enumerate(cons):
            if c is None:
                continue
            if type(c) in (C.MaxNorm, C.UnitNorm, C.MinMaxNorm, C.NonNeg):
                kinds.setdefault((type(c), c.dim), []).append(i)
            else:
                self.custom.append((i, c))
        P = len(cons)
        for (cls, dim), idx in kinds.items():
            mask = torch.zeros(P, dtype=torch.bool)
            mask[idx] = True
            bounds = {}
            for b in cls.bounds:
                default = getattr(cons[idx[0]], b)
                bounds[b] = torch.tensor([float(getattr(cons[i], b)) if cons[i] is not None and i in idx else float(default)
                                          for i in range(P)])
            con = cls(**bounds, dim=dim) if bounds else cls(dim=dim)
            self.groups.append((con, None if bool(mask.all()) else mask))

    def __bool__(self):
        return bool(self.groups or self.custom)

    @torch.no_grad()
    def apply_(self, w: torch.Tensor, active: torch.Tensor | None) -> None:
        for con, mask in self.groups:
            if mask is not None and mask.device != w.device:
                mask = mask.to(w.device)
            keep = mask if active is None else (active if mask is None else mask & active)
            projected = con.members(w)
            if keep is None:
                w.copy_(projected)
            else:
                w.copy_(torch.where(keep.view((-1,) + (1,) * (w.dim() - 1)), projected, w))
        for i, con in self.custom:
            if active is None or bool(active[i]):
                w[i] = con(w[i])


def _per_member(coef, p):
    """A coefficient as a (P,) tensor on ``p``'s device and dtype (a plain number broadcast)."""
    if coef is None:
        return None
    if isinstance(coef, torch.Tensor) and coef.dim() == 1:
        return coef.to(dtype=p.dtype, device=p.device)
    return torch.full((p.shape[0],), float(coef), dtype=p.dtype, device=p.device)


class MergedRules:
    """A population's weight penalties and constraints, applied per member: ``penalties`` and
    ``constraints`` are lists of (stacked tensor, merged rule); ``P`` is the member count."""

    penalties: list
    constraints: list
    P: int

    def weight_penalty(self) -> torch.Tensor:
        """Each member's weight penalty, shape (P,)."""
        total = None
        for p, merged in self.penalties:
            value = merged.members(p)
            total = value if total is None else total + value
        if total is None:
            first = self.params[0]
            return torch.zeros(self.P, dtype=first.dtype, device=first.device)
        return total

    def linear_penalties(self) -> list | None:
        """``[(param, l1 (P,) or None, l2 (P,) or None)]`` when every weight penalty is L1/L2 (their
        gradients are then added by hand, :meth:`add_penalty_grads`), else None."""
        out = []
        for p, merged in self.penalties:
            if merged.custom or any(not isinstance(g, R.L1L2) for g in merged.groups):
                return None
            if not p.requires_grad:   # frozen: its penalty counts in the loss, its gradient goes nowhere
                continue
            for g in merged.groups:
                l1 = g._coef("l1", p) if isinstance(g.l1, torch.Tensor) or g.l1 != 0 else None
                l2 = g._coef("l2", p) if isinstance(g.l2, torch.Tensor) or g.l2 != 0 else None
                out.append((p, _per_member(l1, p), _per_member(l2, p)))
        return out

    @staticmethod
    def penalty_terms(params: list, linear: list, weight: torch.Tensor) -> list:
        """Per parameter (aligned with ``params``) None or a list of the ``(l1, l2)`` terms of
        :func:`reglab.optim.penalty_gradient` for the L1/L2 penalties ``linear``
        (:meth:`linear_penalties`) with upstream gradient ``weight`` (P,): 1 for a training member,
        0 for a stopped one, times a penalty scale. The optimizer adds their gradients, in its
        own pass over the weights where it can. These are the numbers autograd gives for
        ``l1 * sum(|w|)`` and ``l2 * sum(w²)``, without building the penalty's graph."""
        index = {id(p): i for i, p in enumerate(params)}
        out = [None] * len(params)
        for p, l1, l2 in linear:
            i = index[id(p)]
            terms = (None if l1 is None else weight.to(l1.dtype) * l1,
                     None if l2 is None else 2 * (weight.to(l2.dtype) * l2))
            out[i] = [terms] if out[i] is None else out[i] + [terms]   # several groups: added in turn
        return out

    def apply_constraints(self, active) -> None:
        """Project each member's constrained weights (only the ``active`` members, when given)."""
        for p, merged in self.constraints:
            merged.apply_(p, None if active is None or bool(active.all()) else active)
