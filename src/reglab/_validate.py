"""Argument checks shared by every public class (scikit-learn's message template)."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def check_coefficient(value, name: str, owner: str, *, allow_tensor: bool = True):
    """Return ``value`` if it is a finite number >= 0 (or a 0-/1-D tensor of them).

    >>> check_coefficient(0.01, "l2", "L2")
    0.01
    >>> check_coefficient(-1, "l2", "L2")
    Traceback (most recent call last):
    ...
    ValueError: The 'l2' parameter of L2 must be a finite float >= 0. Got -1 instead.
    """
    what = f"The {name!r} parameter of {owner}"
    if isinstance(value, (bool, np.bool_)) or isinstance(value, str):
        raise TypeError(f"{what} must be a finite float >= 0. Got {value!r} of type {type(value).__name__} instead.")
    if isinstance(value, (torch.Tensor, np.ndarray)) and allow_tensor:
        tensor = torch.as_tensor(value)
        if tensor.dtype == torch.bool or not (tensor.is_floating_point() or tensor.dtype in _INT_DTYPES):
            raise TypeError(f"{what} must be a float tensor. Got dtype {tensor.dtype} instead.")
        if tensor.dim() > 1:
            raise ValueError(f"{what} must be a number or a 1-D tensor with one value per member. Got shape {tuple(tensor.shape)} instead.")
        tensor = tensor.to(torch.get_default_dtype()) if not tensor.is_floating_point() else tensor
        if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
            raise ValueError(f"{what} must hold finite values >= 0. Got {tensor.tolist()} instead.")
        return tensor
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a finite float >= 0. Got {value!r} of type {type(value).__name__} instead.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite float >= 0. Got {value!r} instead.")
    return float(value)


_INT_DTYPES = {torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8}


def check_number(value, name: str, owner: str, *, low=None, high=None, low_open=False, high_open=False,
                 integer=False):
    """Check a plain number against an interval; return it as float (or int)."""
    kind = "an int" if integer else "a float"
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    what = f"The {name!r} parameter of {owner} must be {kind} in the range {interval}."
    ok_type = numbers.Integral if integer else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, ok_type):
        raise TypeError(f"{what} Got {value!r} of type {type(value).__name__} instead.")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{what} Got {value!r} instead.")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{what} Got {value!r} instead.")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{what} Got {value!r} instead.")
    return int(value) if integer else float(value)


def check_choice(value, name: str, owner: str, choices):
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"The {name!r} parameter of {owner} must be one of {allowed}. Got {value!r} instead.")
    return value


class Setting:
    """Shared shape: validated arguments, ``get_config``, equality, a repr that reads back."""

    defaults: dict = {}

    def get_config(self) -> dict:
        return {k: getattr(self, k) for k in self.defaults}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if v != self.defaults[k])
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None
    example = ""   # e.g. " (e.g. reglab.Mixup(mixup_alpha=0.2))", shown when a value is refused

    @classmethod
    def coerce(cls, value, owner: str = "fit"):
        """One from an instance, a dict of its arguments (study files) or None (stays None)."""
        name = cls.__name__.lower()
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(cls.defaults)
            if unknown:
                raise TypeError(f"The {name!r} parameter of {owner} takes {', '.join(cls.defaults)}. "
                                f"Got {', '.join(sorted(map(str, unknown)))} instead.")
            return cls(**value)
        raise TypeError(f"The {name!r} parameter of {owner} must be a reglab.{cls.__name__}{cls.example}, a dict of "
                        f"its arguments or None. Got {value!r} instead.")

