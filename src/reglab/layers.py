"""Layers PyTorch lacks: Keras's noise layers, Keras's normalisation statistics and a selector
for recurrent outputs.

Noise layers act in training mode only and draw from PyTorch's global generator, as
``nn.Dropout`` does (``reglab.fit`` seeds it from the run's seed).

>>> import torch
>>> layer = GaussianNoise(0.1).eval()
>>> x = torch.ones(2, 3)
>>> bool(torch.equal(layer(x), x))
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_choice, check_number


class GaussianNoise(nn.Module):
    """``x + N(0, stddev)`` in training. Placed first, it is input-noise augmentation for tabular
    data (fresh noise on every batch); see also :class:`InputNoise`."""

    def __init__(self, stddev: float):
        super().__init__()
        self.stddev = check_number(stddev, "stddev", type(self).__name__, low=0)

    def forward(self, x):
        if not self.training or self.stddev == 0:
            return x
        return x + torch.randn(x.shape, dtype=x.dtype, device=x.device) * self.stddev

    def extra_repr(self):
        return f"stddev={self.stddev}"


class InputNoise(GaussianNoise):
    """Input-noise augmentation: Gaussian noise added to the (standardised) inputs of every
    training batch. Put it first in the model; it is :class:`GaussianNoise` by another name so that
    the intent reads in the model definition."""


class GaussianDropout(nn.Module):
    """``x * N(1, sqrt(rate / (1 - rate)))`` in training (Keras's GaussianDropout)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = check_number(rate, "rate", type(self).__name__, low=0, high=1, high_open=True)

    def forward(self, x):
        if not self.training or self.rate == 0:
            return x
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        return x * (1.0 + torch.randn(x.shape, dtype=x.dtype, device=x.device) * stddev)

    def extra_repr(self):
        return f"rate={self.rate}"


class RNNOutput(nn.Module):
    """Put after an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (``batch_first=True``) in an ``nn.Sequential``:
    keeps the output sequence and drops the state; ``return_sequences=False`` (Keras's default)
    keeps only the last time step.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.LSTM(3, 5, batch_first=True), RNNOutput())
    >>> model(torch.randn(2, 7, 3)).shape
    torch.Size([2, 5])
    """

    def __init__(self, return_sequences: bool = False):
        super().__init__()
        if not isinstance(return_sequences, bool):
            raise TypeError(f"The 'return_sequences' parameter of RNNOutput must be a bool. Got {return_sequences!r} instead.")
        self.return_sequences = return_sequences

    def forward(self, output):
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output if self.return_sequences else output[:, -1]

    def extra_repr(self):
        return f"return_sequences={self.return_sequences}"


class SequenceDropout(nn.Dropout):
    """Keras's ``LSTM(dropout=rate)``: inverted dropout on a sequence's input features with one
    mask per sample, shared by every time step (inputs (batch, steps, features))."""

    def noise_shape(self, shape):
        return (shape[0], 1) + tuple(shape[2:])

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0.0   # as nn.Dropout: no draw, all dropped
        noise = torch.empty(self.noise_shape(x.shape), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * noise.div_(1 - self.p)


class ChannelsFirst(nn.Module):
    """(batch, steps, features) → (batch, features, steps), for Conv1d/pooling on Keras-layout sequences."""

    def forward(self, x):
        return x.transpose(1, 2)


def _check_axis(axis, owner):
    if isinstance(axis, bool) or axis not in (1, -1):
        raise ValueError(f"The 'axis' parameter of {owner} must be 1 (channels-first: (N, C, ...)) or -1 "
                         f"(channels-last: (N, ..., C)). Got {axis!r} instead.")
    return axis


class KerasBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Keras's ``BatchNormalization`` with Keras's statistics, for any layout.

    Differences from ``nn.BatchNorm1d``/``nn.BatchNorm2d``, each Keras's behaviour:

    - ``eps`` defaults to Keras's ``epsilon=1e-3`` (PyTorch: 1e-5).
    - ``momentum`` is PyTorch's convention, the weight of the new batch: ``1 - `` Keras's momentum
      (Keras's 0.99 → 0.01; PyTorch's default is 0.1). ``running = (1 - momentum) * running +
      momentum * batch``, i.e. Keras's ``moving * 0.99 + batch * (1 - 0.99)``.
    - The moving variance is updated with the batch's **biased** variance (``ops.moments``, as
      the batch is normalised); PyTorch's BatchNorm updates it with the unbiased one (× n/(n-1)).
    - A training batch of one sample is normalised (variance 0: the output is ``beta``) where
      PyTorch refuses it ("Expected more than 1 value per channel when training").
    - ``center=False`` drops beta (``bias``) and ``scale=False`` drops gamma (``weight``), each on
      its own; PyTorch's ``affine=False`` drops both.
    - ``axis`` is the dim of the normalised features: 1 (PyTorch's channels: (N, C), (N, C, L),
      (N, C, H, W)) or -1 (channels-last, e.g. Keras's (N, steps, features) sequences).

    Training mode normalises with the batch's mean and biased variance and updates the running
    statistics in place (under ``torch.no_grad``); evaluation mode uses the running statistics.
    The buffers are nn.BatchNorm's (``running_mean``, ``running_var``, ``num_batches_tracked``).

    >>> import torch
    >>> bn = KerasBatchNorm(2)
    >>> y = bn(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    >>> bn.running_var      # 0.99 * 1 + 0.01 * 1 (the biased batch variance), not 0.99 + 0.01 * 2
    tensor([1., 1.])
    """

    def __init__(self, num_features: int, eps: float = 1e-3, momentum: float = 0.01, center: bool = True,
                 scale: bool = True, axis: int = 1, device=None, dtype=None):
        owner = type(self).__name__
        num_features = check_number(num_features, "num_features", owner, low=1, integer=True)
        eps = check_number(eps, "eps", owner, low=0, low_open=True)
        momentum = check_number(momentum, "momentum", owner, low=0, high=1)
        check_choice(center, "center", owner, (True, False))
        check_choice(scale, "scale", owner, (True, False))
        _check_axis(axis, owner)
        super().__init__(num_features, eps, momentum, affine=bool(center or scale), track_running_stats=True,
                         device=device, dtype=dtype)
        self.center, self.scale, self.axis = bool(center), bool(scale), axis
        if not self.scale:
            self.register_parameter("weight", None)
        if not self.center:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if getattr(self, "weight", None) is not None:
            nn.init.ones_(self.weight)
        if getattr(self, "bias", None) is not None:
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, x):
        if x.dim() < 2 or x.shape[self.axis] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}, axis={self.axis}) needs inputs with "
                             f"{self.num_features} features in dim {self.axis}; got an input of shape {tuple(x.shape)}.")

    def forward(self, x):
        self._check_input_dim(x)
        axis = self.axis % x.dim()
        dims = [d for d in range(x.dim()) if d != axis]
        view = [1] * x.dim()
        view[axis] = self.num_features
        if self.training:
            mean = x.mean(dims, keepdim=True)
            var = (x - mean).square().mean(dims, keepdim=True)      # biased, as Keras's ops.moments
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1.0 - m).add_(mean.detach().reshape(-1) * m)
                self.running_var.mul_(1.0 - m).add_(var.detach().reshape(-1) * m)
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean.view(view), self.running_var.view(view)
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(view)
        if self.bias is not None:
            out = out + self.bias.view(view)
        return out

    def extra_repr(self):
        extra = "".join(f", {k}={v}" for k, v in (("center", self.center), ("scale", self.scale)) if not v)
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{extra}, axis={self.axis}"


class KerasLayerNorm(nn.LayerNorm):
    """Keras's ``LayerNormalization`` over the features in dim ``axis`` of any layout.

    ``axis=-1`` is ``nn.LayerNorm(num_features)`` (the last dim); ``axis=1`` normalises the
    channels of a channels-first (N, C, L) or (N, C, H, W) tensor at each position, which is what
    Keras's default ``axis=-1`` does on its channels-last layout. ``eps`` defaults to Keras's 1e-3
    (PyTorch: 1e-5). ``center=False`` drops beta (``bias``) and ``scale=False`` gamma (``weight``),
    each on its own. The variance is the biased one in both frameworks.

    >>> import torch
    >>> ln = KerasLayerNorm(3, axis=1)
    >>> x = torch.randn(2, 3, 4, 4)
    >>> bool(torch.allclose(ln(x), torch.nn.functional.layer_norm(x.movedim(1, -1), (3,), eps=1e-3).movedim(-1, 1)))
    True
    """

    def __init__(self, num_features: int, eps: float = 1e-3, center: bool = True, scale: bool = True,
                 axis: int = -1, device=None, dtype=None):
        owner = type(self).__name__
        num_features = check_number(num_features, "num_features", owner, low=1, integer=True)
        eps = check_number(eps, "eps", owner, low=0, low_open=True)
        check_choice(center, "center", owner, (True, False))
        check_choice(scale, "scale", owner, (True, False))
        _check_axis(axis, owner)
        super().__init__(num_features, eps=eps, elementwise_affine=bool(center or scale), bias=bool(center),
                         device=device, dtype=dtype)
        self.center, self.scale, self.axis = bool(center), bool(scale), axis
        if not self.scale:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        if getattr(self, "weight", None) is not None:
            nn.init.ones_(self.weight)
        if getattr(self, "bias", None) is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        if self.axis == -1 or self.axis == x.dim() - 1:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        out = F.layer_norm(x.movedim(self.axis, -1), self.normalized_shape, self.weight, self.bias, self.eps)
        return out.movedim(-1, self.axis)

    def extra_repr(self):
        extra = "".join(f", {k}={v}" for k, v in (("center", self.center), ("scale", self.scale)) if not v)
        return f"{self.normalized_shape[0]}, eps={self.eps}{extra}, axis={self.axis}"
