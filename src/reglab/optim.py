"""Keras 3's optimizers, element-wise, for single models and stacked populations alike.

Every update is element-wise, so one optimizer over tensors stacked with a leading member
dimension is P independent optimizers. ``lr`` may be a 1-D tensor with one learning rate per
member, and :meth:`Optimizer.step` takes an optional ``active`` mask that freezes members.

Weight decay is *decoupled* (AdamW, and Keras 3's ``weight_decay`` on every optimizer):
``w -= lr * weight_decay * w`` before the update, independent of the gradient. An L2 penalty
instead adds ``2 * l2 * w`` to the gradient, which Adam then rescales per weight, so the two only
coincide for plain SGD (with ``weight_decay = 2 * l2``).

>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([1.0]))
>>> opt = Adam([w], lr=0.1)
>>> w.grad = torch.tensor([0.5])
>>> opt.step()
>>> round(w.item(), 4)   # first Adam step moves by lr * m / (sqrt(v) + eps) ≈ lr
0.9
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:  # one fused pass per tensor instead of seven; the torch code below stays the reference
    import numba as _nb
except ImportError:  # pragma: no cover
    _nb = None

if _nb is not None:
    @_nb.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
    def _adam_kernel(p, g, m, v, w1, w2, step, eps, inv_bc2_sqrt):  # pragma: no cover - compiled
        for i in _nb.prange(p.size):
            gi = g[i]
            mi = m[i] + w1 * (gi - m[i])
            vi = v[i] + w2 * (gi * gi - v[i])
            m[i] = mi
            v[i] = vi
            p[i] = p[i] + step * mi / (np.sqrt(vi) * inv_bc2_sqrt + eps)

from ._validate import check_choice, check_coefficient, check_number


class Optimizer:
    """Minimal stateful optimizer over a list of tensors (``p.grad`` or explicit gradients)."""

    def __init__(self, params, lr, weight_decay=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list.")
        self.lr = check_coefficient(lr, "lr", type(self).__name__)
        self.weight_decay = check_coefficient(weight_decay, "weight_decay", type(self).__name__,
                                              allow_tensor=False)
        self.iterations = 0
        self.state = [dict() for _ in self.params]
        self.flat, self.flat_state = None, {}

    def use_flat(self, flat: torch.Tensor) -> None:
        """Declare that the parameters are consecutive views of the 1-D ``flat`` (in order): a step
        with one learning rate and every gradient present then updates ``flat`` in one pass (the
        element-wise rules give the same numbers as tensor by tensor)."""
        if sum(p.numel() for p in self.params) != flat.numel():
            raise ValueError("use_flat: the parameters do not cover the flat tensor.")
        self.flat = flat

    def _share_state(self) -> None:
        """Make the per-parameter state views of the flat state (one memory, either path)."""
        if not self.flat_state:
            return
        offset = 0
        for p, state in zip(self.params, self.state):
            n = p.numel()
            for k, v in self.flat_state.items():
                if k not in state:
                    state[k] = v[offset:offset + n].view_as(p)
            offset += n

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def _member_view(self, value, p):
        """A per-member value (P,) shaped to broadcast against a stacked parameter."""
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            return value.to(p.dtype).view((-1,) + (1,) * (p.dim() - 1))
        return value

    @torch.no_grad()
    def step(self, grads=None, active: torch.Tensor | None = None) -> None:
        """Apply one update. ``active`` (P,) bool freezes the members where it is False."""
        self.iterations += 1
        grads = [p.grad for p in self.params] if grads is None else grads
        if (self.flat is not None and active is None and not isinstance(self.lr, torch.Tensor)
                and all(g is not None for g in grads) and (self.flat_state or not any(self.state))):
            flat = self.flat
            if self.weight_decay:
                flat.sub_(flat * (self.lr * self.weight_decay))
            self._update(flat, torch.cat([g.reshape(-1) for g in grads]), self.lr, self.flat_state)
            return
        self._share_state()
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is None:
                continue
            before = p.detach().clone() if active is not None else None
            lr = self._member_view(self.lr, p)
            if self.weight_decay:
                p.sub_(p * (lr * self.weight_decay))
            self._update(p, g, lr, self.state[i])
            if active is not None:
                keep = self._member_view(~active, p).bool() if active.dim() == 1 else ~active
                p.copy_(torch.where(keep, before, p))

    def _update(self, p, g, lr, state):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"iterations": self.iterations, "state": [{k: v.clone() for k, v in s.items()} for s in self.state]}


class Adam(Optimizer):
    """Keras's Adam: ``alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)``, ``w -= alpha * m / (sqrt(v) + eps)``
    with the "epsilon-hat" placement and ε = 1e-7. ``epsilon_hat=False`` gives torch.optim.Adam's
    placement: ``w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``."""

    def __init__(self, params, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0,
                 epsilon_hat=True):
        super().__init__(params, lr, weight_decay)
        self.beta_1 = check_number(beta_1, "beta_1", type(self).__name__, low=0, high=1, high_open=True)
        self.beta_2 = check_number(beta_2, "beta_2", type(self).__name__, low=0, high=1, high_open=True)
        self.epsilon = check_number(epsilon, "epsilon", type(self).__name__, low=0)
        self.epsilon_hat = bool(epsilon_hat)

    def _update(self, p, g, lr, state):
        if not state:
            state["m"] = torch.zeros_like(p)
            state["v"] = torch.zeros_like(p)
        m, v = state["m"], state["v"]
        t = self.iterations
        bc1, bc2 = 1 - self.beta_1 ** t, 1 - self.beta_2 ** t
        if (_nb is not None and not isinstance(lr, torch.Tensor) and p.dtype == torch.float32
                and g.dtype == torch.float32 and p.is_contiguous() and p.device.type == "cpu"):
            g = g.contiguous()
            f32 = np.float32
            step = -lr * (math.sqrt(bc2) / bc1 if self.epsilon_hat else 1 / bc1)
            _adam_kernel(p.detach().view(-1).numpy(), g.detach().reshape(-1).numpy(), m.view(-1).numpy(),
                         v.view(-1).numpy(), f32(1 - self.beta_1), f32(1 - self.beta_2), f32(step),
                         f32(self.epsilon), f32(1.0 if self.epsilon_hat else 1 / math.sqrt(bc2)))
            return
        m.lerp_(g, 1 - self.beta_1)
        v.lerp_(g * g, 1 - self.beta_2)
        if self.epsilon_hat:
            denom = v.sqrt().add_(self.epsilon)
            step = math.sqrt(bc2) / bc1
        else:
            denom = v.sqrt().div_(math.sqrt(bc2)).add_(self.epsilon)
            step = 1 / bc1
        if isinstance(lr, torch.Tensor):
            p.sub_(m / denom * (lr * step))
        else:
            p.addcdiv_(m, denom, value=-lr * step)


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras's default ``weight_decay=0.004``)."""

    def __init__(self, params, lr=1e-3, weight_decay=0.004, **kwargs):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kwargs)


class SGD(Optimizer):
    """Keras's SGD: ``m = momentum * m - lr * g``; ``w += m`` (or ``w += momentum * m - lr * g``
    with Nesterov); plain ``w -= lr * g`` without momentum."""

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = check_number(momentum, "momentum", "SGD", low=0, high=1)
        self.nesterov = bool(nesterov)

    def _update(self, p, g, lr, state):
        if self.momentum == 0:
            p.sub_(g * lr)
            return
        if not state:
            state["m"] = torch.zeros_like(p)
        m = state["m"]
        m.mul_(self.momentum).sub_(g * lr)
        if self.nesterov:
            p.add_(m * self.momentum - g * lr)
        else:
            p.add_(m)


OPTIMIZERS = {"adam": Adam, "adamw": AdamW, "sgd": SGD}


def make(name: str, params, **kwargs) -> Optimizer:
    """Build an optimizer by name: ``make("adam", model.parameters(), lr=1e-3)``."""
    check_choice(name, "optimizer", "fit", tuple(OPTIMIZERS))
    return OPTIMIZERS[name](params, **kwargs)
