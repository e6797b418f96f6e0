"""Noise layers (Keras formulas, training only) and RNNOutput."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from reglab import GaussianDropout, GaussianNoise, InputNoise, RNNOutput

N = 1_000_000   # samples for the statistical checks: the standard error of a mean is sigma / 1000


def _stats(t):
    t = t.double()
    return float(t.mean()), float(t.std())


# ---------------------------------------------------------------- GaussianNoise


@pytest.mark.parametrize("stddev", [0.1, 1.0, 2.5])
def test_gaussian_noise_statistics(stddev):
    torch.manual_seed(0)
    x = torch.full((N,), 3.0)
    y = GaussianNoise(stddev).train()(x)
    mean, std = _stats(y - x)
    assert abs(mean) < 5 * stddev / math.sqrt(N)
    assert abs(std - stddev) < 5 * stddev / math.sqrt(2 * N)


def test_gaussian_noise_is_x_plus_scaled_standard_normal():
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.manual_seed(7)
    y = GaussianNoise(0.3)(x)
    torch.manual_seed(7)
    expected = x + 0.3 * torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(y, expected)
    assert y.dtype == torch.float64


def test_gaussian_noise_only_in_training():
    layer = GaussianNoise(0.5)
    x = torch.randn(3, 4)
    assert layer.training
    a, b = layer(x), layer(x)
    assert not torch.equal(a, x) and not torch.equal(a, b)   # fresh noise on every call
    layer.eval()
    assert torch.equal(layer(x), x)
    model = nn.Sequential(GaussianNoise(0.5), nn.Identity()).eval()
    assert torch.equal(model(x), x)
    assert torch.equal(GaussianNoise(0.0).train()(x), x)


def test_gaussian_noise_passes_gradient_through():
    x = torch.randn(3, 4, requires_grad=True)
    GaussianNoise(0.5)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 4))


def test_input_noise_is_gaussian_noise():
    layer = InputNoise(0.2)
    assert isinstance(layer, GaussianNoise) and layer.stddev == 0.2
    x = torch.zeros(2, 3)
    torch.manual_seed(1)
    y = layer(x)
    torch.manual_seed(1)
    torch.testing.assert_close(y, 0.2 * torch.randn(2, 3))


def test_gaussian_noise_repr():
    assert "stddev=0.25" in repr(GaussianNoise(0.25))


@pytest.mark.parametrize("value,error,shown", [
    (-0.1, ValueError, "-0.1"), (float("nan"), ValueError, "nan"), (float("inf"), ValueError, "inf"),
    ("0.1", TypeError, "'0.1'"), (None, TypeError, "None"), (True, TypeError, "True"),
    (torch.tensor(0.1), TypeError, "tensor"),
])
@pytest.mark.parametrize("cls", [GaussianNoise, InputNoise])
def test_gaussian_noise_bad_stddev(cls, value, error, shown):
    with pytest.raises(error) as info:
        cls(value)
    message = str(info.value)
    assert "'stddev'" in message and cls.__name__ in message and shown in message


# ---------------------------------------------------------------- GaussianDropout


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_gaussian_dropout_statistics(rate):
    torch.manual_seed(0)
    x = torch.full((N,), 2.0)
    y = GaussianDropout(rate).train()(x)
    target_std = 2.0 * math.sqrt(rate / (1 - rate))
    mean, std = _stats(y)
    assert abs(mean - 2.0) < 5 * target_std / math.sqrt(N)
    assert abs(std - target_std) < 5 * target_std / math.sqrt(2 * N)


def test_gaussian_dropout_is_x_times_noise_around_one():
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.manual_seed(3)
    y = GaussianDropout(0.2)(x)
    torch.manual_seed(3)
    expected = x * (1 + math.sqrt(0.2 / 0.8) * torch.randn(5, 6, dtype=torch.float64))
    torch.testing.assert_close(y, expected)
    # multiplicative: zeros stay zero
    assert bool((GaussianDropout(0.5)(torch.zeros(100)) == 0).all())


def test_gaussian_dropout_only_in_training():
    layer = GaussianDropout(0.4)
    x = torch.randn(3, 4)
    assert not torch.equal(layer(x), x)
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(GaussianDropout(0.0)(x), x)


def test_gaussian_dropout_repr():
    assert "rate=0.3" in repr(GaussianDropout(0.3))


@pytest.mark.parametrize("value,error,shown", [
    (-0.1, ValueError, "-0.1"), (1.0, ValueError, "1.0"), (1.5, ValueError, "1.5"), (1, ValueError, "1"),
    (float("nan"), ValueError, "nan"), ("0.5", TypeError, "'0.5'"), (None, TypeError, "None"),
    (False, TypeError, "False"),
])
def test_gaussian_dropout_bad_rate(value, error, shown):
    with pytest.raises(error) as info:
        GaussianDropout(value)
    message = str(info.value)
    assert "'rate'" in message and "GaussianDropout" in message and shown in message
    assert "[0, 1)" in message


def test_noise_uses_the_global_generator_reproducibly():
    x = torch.ones(10)
    torch.manual_seed(5)
    a = nn.Sequential(GaussianNoise(0.1), GaussianDropout(0.3))(x)
    torch.manual_seed(5)
    b = nn.Sequential(GaussianNoise(0.1), GaussianDropout(0.3))(x)
    assert torch.equal(a, b)


# ---------------------------------------------------------------- RNNOutput


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_rnn_output_last_step(cls):
    torch.manual_seed(0)
    rnn = cls(3, 5, batch_first=True)
    x = torch.randn(2, 7, 3)
    out, _ = rnn(x)
    model = nn.Sequential(rnn, RNNOutput())
    y = model(x)
    assert y.shape == (2, 5)
    torch.testing.assert_close(y, out[:, -1])


def test_rnn_output_sequences_and_stacking():
    torch.manual_seed(0)
    first = nn.LSTM(3, 4, batch_first=True)
    second = nn.LSTM(4, 6, batch_first=True)
    model = nn.Sequential(first, RNNOutput(return_sequences=True), second, RNNOutput(), nn.Linear(6, 1))
    x = torch.randn(5, 9, 3)
    seq, _ = first(x)
    assert RNNOutput(return_sequences=True)(first(x)).shape == (5, 9, 4)
    torch.testing.assert_close(RNNOutput(return_sequences=True)(first(x)), seq)
    assert model(x).shape == (5, 1)


def test_rnn_output_accepts_a_plain_tensor():
    t = torch.arange(24.0).view(2, 3, 4)
    torch.testing.assert_close(RNNOutput()(t), t[:, -1])
    assert RNNOutput(True)(t) is t
    assert "return_sequences=False" in repr(RNNOutput())


@pytest.mark.parametrize("value", [1, 0, "yes", None, np.bool_(True)])
def test_rnn_output_bad_arg(value):
    with pytest.raises(TypeError) as info:
        RNNOutput(value)
    assert "'return_sequences'" in str(info.value) and repr(value) in str(info.value)
