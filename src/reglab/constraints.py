"""Weight constraints: projections applied after every optimizer step (Keras 3 formulas, eps = 1e-7).

``n`` is the L2 norm of each output unit's incoming weights. PyTorch puts output units first in
every layout (Linear (out, in), ConvNd (out, in/groups, *k), RNN (gates*hidden, in)), so by
default the norm runs over every dim but 0; a 1-D weight (a bias) is one vector, as in Keras.
``dim=`` overrides this. Bounds may be 1-D tensors with one value per population member; the
weight then has a leading member dimension.

>>> import torch
>>> w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
>>> MaxNorm(1.0)(w)
tensor([[0.6000, 0.8000],
        [0.3000, 0.4000]])
>>> UnitNorm()(w).norm(dim=1)
tensor([1.0000, 1.0000])
"""

from __future__ import annotations

import torch

from ._parse import Call, ParseError, resolve
from ._validate import check_coefficient

EPSILON = 1e-7


class Constraint:
    """Base class: ``__call__(w)`` returns the projected weight; ``members(w)`` does the same for a
    weight stacked with a leading member dimension."""

    bounds: tuple[str, ...] = ()

    def __init__(self, dim=None):
        self.dim = _check_dim(dim, type(self).__name__)

    def project(self, w: torch.Tensor, dims: tuple[int, ...], member_shape) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        if self.per_member:
            return self.members(w)
        return self.project(w, self._dims(w.dim(), 0), None)

    def members(self, w: torch.Tensor) -> torch.Tensor:
        """Project each member of ``w`` (shape (P, ...)) with its own bound."""
        return self.project(w, self._dims(w.dim() - 1, 1), (w.shape[0],) + (1,) * (w.dim() - 1))

    @property
    def per_member(self) -> bool:
        return any(isinstance(getattr(self, b), torch.Tensor) and getattr(self, b).dim() == 1 for b in self.bounds)

    def _dims(self, ndim: int, offset: int) -> tuple[int, ...]:
        if self.dim is None:
            dims = tuple(range(1, ndim)) if ndim > 1 else (0,)
        else:
            dims = self.dim
            for d in dims:
                if not -ndim <= d < ndim:
                    raise ValueError(
                        f"{type(self).__name__}(dim={self.dim}) does not fit a weight with {ndim} dims.")
            dims = tuple(d % ndim for d in dims)
        return tuple(d + offset for d in dims)

    def _bound(self, name, w, member_shape):
        value = getattr(self, name)
        if isinstance(value, torch.Tensor):
            value = value.to(dtype=w.dtype, device=w.device)
            if member_shape is not None and value.dim() == 1:
                return value.view(member_shape)
        return value

    def _norms(self, w, dims):
        return w.square().sum(dims, keepdim=True).sqrt()

    def get_config(self) -> dict:
        config = {b: _plain(getattr(self, b)) for b in self.bounds}
        config["dim"] = list(self.dim) if self.dim is not None else None
        return config

    @classmethod
    def from_config(cls, config: dict) -> "Constraint":
        # get_config writes a per-member bound as a list; float64 turns it back into the same values.
        return cls(**{k: torch.tensor(v, dtype=torch.float64) if k in cls.bounds and isinstance(v, list)
                      else v for k, v in config.items()})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if not (k == "dim" and v is None))
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None


def _plain(value):
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _check_dim(dim, owner):
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, (int, tuple, list)):
        raise TypeError(f"The 'dim' parameter of {owner} must be None, an int or a tuple of ints. Got {dim!r} instead.")
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
        raise TypeError(f"The 'dim' parameter of {owner} must be None, an int or a tuple of ints. Got {dim!r} instead.")
    return dims


class MaxNorm(Constraint):
    """``w * clip(n, 0, max_value) / (eps + n)`` — shrinks by n/(n+eps) even inside the bound.

    >>> import torch
    >>> round(float(MaxNorm(2.0)(torch.tensor([[6.0, 8.0]])).norm()), 5)
    2.0
    """

    bounds = ("max_value",)

    def __init__(self, max_value=2.0, dim=None):
        super().__init__(dim)
        self.max_value = check_coefficient(max_value, "max_value", "MaxNorm")

    def project(self, w, dims, member_shape):
        n = self._norms(w, dims)
        return w * (torch.minimum(n, torch.as_tensor(self._bound("max_value", w, member_shape), dtype=w.dtype)) / (EPSILON + n))


class UnitNorm(Constraint):
    """``w / (eps + n)``.

    >>> import torch
    >>> UnitNorm()(torch.tensor([[3.0, 4.0]]))
    tensor([[0.6000, 0.8000]])
    """

    def project(self, w, dims, member_shape):
        return w / (EPSILON + self._norms(w, dims))


class MinMaxNorm(Constraint):
    """``w * (rate * clip(n, min_value, max_value) + (1 - rate) * n) / (eps + n)``.

    >>> import torch
    >>> MinMaxNorm(1.0, 2.0)(torch.tensor([[0.3, 0.4]])).norm()
    tensor(1.0000)
    """

    bounds = ("min_value", "max_value", "rate")

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, dim=None):
        super().__init__(dim)
        self.min_value = check_coefficient(min_value, "min_value", "MinMaxNorm")
        self.max_value = check_coefficient(max_value, "max_value", "MinMaxNorm")
        self.rate = check_coefficient(rate, "rate", "MinMaxNorm")
        if bool(torch.as_tensor(self.rate).gt(1).any()):
            raise ValueError(f"The 'rate' parameter of MinMaxNorm must be a float in the range [0, 1]. Got {_plain(rate)!r} instead.")
        if bool(torch.as_tensor(self.min_value).gt(torch.as_tensor(self.max_value)).any()):
            raise ValueError(
                f"The 'min_value' parameter of MinMaxNorm must be <= max_value. "
                f"Got min_value={_plain(min_value)!r}, max_value={_plain(max_value)!r} instead.")

    def project(self, w, dims, member_shape):
        n = self._norms(w, dims)
        lo = self._bound("min_value", w, member_shape)
        hi = self._bound("max_value", w, member_shape)
        rate = self._bound("rate", w, member_shape)
        clipped = torch.minimum(torch.maximum(n, torch.as_tensor(lo, dtype=w.dtype)), torch.as_tensor(hi, dtype=w.dtype))
        desired = rate * clipped + (1 - rate) * n
        return w * (desired / (EPSILON + n))


class NonNeg(Constraint):
    """``w * (w >= 0)``.

    >>> import torch
    >>> NonNeg()(torch.tensor([-1.0, 2.0]))
    tensor([-0., 2.])
    """

    def project(self, w, dims, member_shape):
        return w * (w >= 0).to(w.dtype)


max_norm = MaxNorm
unit_norm = UnitNorm
min_max_norm = MinMaxNorm
non_neg = NonNeg

_NAMES = {"max_norm": MaxNorm, "maxnorm": MaxNorm, "unit_norm": UnitNorm, "unitnorm": UnitNorm,
          "min_max_norm": MinMaxNorm, "minmaxnorm": MinMaxNorm, "non_neg": NonNeg, "nonneg": NonNeg}
# Keras spells the reduction "axis" in its own (in, out) layout; its axis=0 means "per output
# unit", which is reglab's default in PyTorch layouts, so an axis argument in text is only accepted as 0.


def get(identifier) -> Constraint | None:
    """Turn a name, text, config dict or Constraint into a Constraint (``None`` stays None).

    >>> get("max_norm(3)")
    MaxNorm(max_value=3.0)
    >>> get("unit_norm")
    UnitNorm()
    """
    return resolve(identifier, base=Constraint, noun="constraint", from_call=from_call, lookup=_lookup, wrap=Lambda,
                   example="'max_norm(3)' or reglab.MaxNorm(3)")


def from_call(call: Call, text: str | None = None) -> Constraint:
    cls = _lookup(call.name, text or call.name)
    kwargs = dict(call.kwargs)
    for value in list(call.args) + list(kwargs.values()):
        if isinstance(value, Call):
            raise ParseError(f"Constraint {text or call.name!r}: arguments must be numbers, got {value.name!r}.")
    args = list(call.args)
    if len(args) > len(cls.bounds):
        # In Keras the positional parameter after the bounds is axis (e.g. unit_norm(1), max_norm(3, 0)),
        # not reglab's dim: treat it as axis so it cannot silently change meaning.
        if "axis" in kwargs or len(args) > len(cls.bounds) + 1:
            raise TypeError(f"Constraint {text or call.name!r}: too many arguments; {cls.__name__} takes "
                            f"{', '.join(cls.bounds + ('axis',))}.")
        kwargs["axis"] = args.pop()
    if "axis" in kwargs:
        axis = kwargs.pop("axis")
        if axis != 0:
            raise ValueError(
                f"Constraint {text or call.name!r}: Keras's axis={axis!r} has no PyTorch meaning here; reglab reduces over "
                "each output unit's incoming weights by default (Keras's axis=0). Use dim=... in Python to choose.")
    try:
        return cls(*args, **kwargs)
    except TypeError as exc:
        if "argument" in str(exc):
            raise TypeError(f"Constraint {text or call.name!r}: {exc}") from None
        raise


class Lambda(Constraint):
    """Wraps any callable ``tensor -> tensor`` as a constraint."""

    def __init__(self, fn):
        super().__init__(None)
        self.fn = fn

    def __call__(self, w):
        return self.fn(w)

    def members(self, w):
        return torch.stack([self.fn(wi) for wi in w])

    def get_config(self):
        return {"fn": getattr(self.fn, "__qualname__", repr(self.fn))}


def _lookup(name, text):
    key = name.lower()
    if key not in _NAMES:
        where = f" in {text!r}" if text != name else ""
        raise ValueError(f"Unknown constraint {name!r}{where}; known constraints: max_norm, min_max_norm, non_neg, unit_norm.")
    return _NAMES[key]


