"""Layers PyTorch lacks: Keras's noise layers and a selector for recurrent outputs.

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
from torch import nn

from ._validate import check_number


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
