"""reglab.fit / reglab.evaluate: logs, tasks, determinism, presets, and a plain PyTorch loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reglab
from reglab import optim, presets
from reglab.callbacks import Callback, EarlyStopping


pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


def blobs(n=48, d=3, seed=0, classes=2):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    if classes == 2:
        y = (X[:, 0] - X[:, 1] + 0.3 * torch.randn(n, generator=g) > 0).long()
    else:
        y = torch.bucketize(X[:, 0] + 0.2 * torch.randn(n, generator=g), torch.tensor([-0.5, 0.5]))
    return X, y


def mlp(d=3, hidden=16, out=1, dropout=0.0):
    layers = [nn.Linear(d, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(hidden, out))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def differs(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


# --- history ---------------------------------------------------------------------------------

def test_history_keys_and_lengths_classification():
    X, y = blobs()
    Xv, yv = blobs(seed=1)
    history = reglab.fit(mlp(), (X, y), (Xv, yv), epochs=4, seed=0, preset="keras")
    keys = {"loss", "data_loss", "penalty", "accuracy"}
    assert set(history.history) == keys | {f"val_{k}" for k in keys}
    assert all(len(v) == 4 for v in history.history.values())
    assert history.epoch == [0, 1, 2, 3]
    assert history.params == {"epochs": 4, "batch_size": 32, "seed": 0, "task": "binary"}
    assert history.stopped_epoch is None and history.best_epoch is None and not history.diverged
    assert all(0.0 <= a <= 1.0 for a in history.history["accuracy"] + history.history["val_accuracy"])


def test_history_keys_regression_without_validation():
    X, _ = blobs()
    y = X.sum(1) * 0.5
    history = reglab.fit(mlp(), (X, y), epochs=3, preset="keras")
    assert set(history.history) == {"loss", "data_loss", "penalty", "mae"}
    assert history.params["task"] == "regression"


def test_loss_is_data_loss_plus_penalty_every_epoch():
    X, y = blobs()
    Xv, yv = blobs(seed=1)
    model = mlp()
    reglab.regularize(model[0], kernel=reglab.L2(1e-2), activity=reglab.L1(1e-3))
    reglab.regularize(model[2], bias=reglab.L1(1e-2))
    h = reglab.fit(model, (X, y), (Xv, yv), epochs=5, batch_size=10, seed=3, preset="keras").history
    for prefix in ("", "val_"):
        loss, data, pen = (np.array(h[prefix + k]) for k in ("loss", "data_loss", "penalty"))
        assert (pen > 0).all()
        np.testing.assert_allclose(loss, data + pen, rtol=1e-6)
    # without penalties the penalty column is exactly zero and loss == data_loss
    h = reglab.fit(mlp(), (X, y), epochs=3, preset="keras").history
    assert h["penalty"] == [0.0] * 3
    np.testing.assert_allclose(h["loss"], h["data_loss"], rtol=1e-7)


def test_last_validation_entry_is_evaluate_of_final_model():
    X, y = blobs()
    Xv, yv = blobs(seed=1)
    model = mlp()
    reglab.regularize(model[0], kernel=reglab.L2(1e-2))
    history = reglab.fit(model, (X, y), (Xv, yv), epochs=3, seed=1, preset="keras")
    result = reglab.evaluate(model, (Xv, yv))
    for key, value in result.items():
        assert history.history[f"val_{key}"][-1] == pytest.approx(value, rel=1e-6)


def test_batch_weighted_epoch_means():
    """With batch_size 20 on 48 rows the epoch mean weights the last batch of 8 by its size."""
    X, y = blobs()
    model = mlp()
    batches = []

    class Spy(Callback):
        def on_batch_end(self, trainer, batch, **kwargs):
            batches.append(batch)

    history = reglab.fit(model, (X, y), epochs=2, batch_size=20, optimizer="sgd", lr=0.0, seed=0,
                         callbacks=[Spy()], preset="keras")
    assert batches == [0, 1, 2, 0, 1, 2]
    # lr = 0: the weights never move, so the epoch's mean is the loss over all rows
    full = reglab.evaluate(model, (X, y), batch_size=48)
    for key in ("loss", "data_loss", "accuracy"):
        assert history.history[key] == pytest.approx([full[key]] * 2, rel=1e-6)


# --- tasks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("targets, out, task, metric", [
    (torch.tensor([0, 1] * 12), 1, "binary", "accuracy"),
    (np.array([0, 1] * 12), 1, "binary", "accuracy"),
    (torch.tensor([False, True] * 12), 1, "binary", "accuracy"),
    (torch.tensor([0.0, 1.0] * 12), 1, "binary", "accuracy"),
    (torch.tensor([0, 1, 2] * 8), 3, "multiclass", "accuracy"),
    ([0, 1, 2, 3] * 6, 4, "multiclass", "accuracy"),
    (torch.linspace(-1, 1, 24), 1, "regression", "mae"),
    (torch.randn(24, 2), 2, "regression", "mae"),
])
def test_task_inference(targets, out, task, metric):
    X = torch.randn(24, 3)
    history = reglab.fit(mlp(out=out), (X, targets), epochs=2, preset="keras")
    assert history.params["task"] == task
    assert metric in history.history and f"val_{metric}" not in history.history


def test_explicit_task_overrides_inference():
    X = torch.randn(24, 3)
    y = torch.tensor([0.0, 1.0] * 12)
    history = reglab.fit(mlp(), (X, y), epochs=1, task="regression", preset="keras")
    assert history.params["task"] == "regression" and "mae" in history.history


def test_multiclass_loss_is_cross_entropy():
    X, y = blobs(classes=3)
    model = mlp(out=3)
    history = reglab.fit(model, (X, y), epochs=1, batch_size=100, optimizer="sgd", lr=0.0, preset="keras")
    with torch.no_grad():
        out = model(X)
    assert history.history["data_loss"][0] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-6)
    assert history.history["accuracy"][0] == pytest.approx((out.argmax(1) == y).float().mean().item())


def test_binary_loss_is_sigmoid_cross_entropy_on_logits():
    X, y = blobs()
    model = mlp()
    history = reglab.fit(model, (X, y), epochs=1, batch_size=100, optimizer="sgd", lr=0.0, preset="keras")
    with torch.no_grad():
        out = model(X)[:, 0]
    p = torch.sigmoid(out.double())
    bce = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert history.history["data_loss"][0] == pytest.approx(bce.item(), rel=1e-5)
    assert history.history["accuracy"][0] == pytest.approx(((out > 0).long() == y).float().mean().item())


def test_regression_loss_is_mse_and_metric_mae():
    X, _ = blobs()
    y = X[:, 0] * 2 + 1
    model = mlp()
    history = reglab.fit(model, (X, y), epochs=1, batch_size=100, optimizer="sgd", lr=0.0, preset="keras")
    with torch.no_grad():
        out = model(X)[:, 0]
    assert history.history["data_loss"][0] == pytest.approx((out - y).square().mean().item(), rel=1e-6)
    assert history.history["mae"][0] == pytest.approx((out - y).abs().mean().item(), rel=1e-6)


# --- determinism -----------------------------------------------------------------------------

def run(seed, dropout=0.0, **kwargs):
    X, y = blobs(n=70)
    Xv, yv = blobs(seed=1)
    model = mlp(dropout=dropout)
    reglab.regularize(model[0], kernel=reglab.L2(1e-3))
    history = reglab.fit(model, (X, y), (Xv, yv), epochs=4, batch_size=16, lr=0.01, seed=seed, **kwargs, preset="keras")
    return weights(model), history.history


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_same_seed_is_bit_identical(dropout):
    w1, h1 = run(7, dropout)
    w2, h2 = run(7, dropout)
    assert_same_weights(w1, w2)
    assert h1 == h2


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_different_seed_differs(dropout):
    w1, h1 = run(7, dropout)
    w2, h2 = run(8, dropout)
    assert differs(w1, w2)
    assert h1["loss"] != h2["loss"]


def test_seed_fixes_shuffle_and_dropout_not_just_init():
    """Same initial weights, different seed: shuffling and dropout masks alone change the result."""
    X, y = blobs(n=70)
    results = []
    for seed in (1, 2):
        model = mlp(dropout=0.5)
        presets.initialize(model, "keras", seed=0)
        reglab.fit(model, (X, y), epochs=2, batch_size=16, lr=0.01, seed=seed, warm_start=True)
        results.append(weights(model))
    assert differs(*results)


def test_fit_leaves_global_rng_alone():
    X, y = blobs(n=70)
    model = mlp(dropout=0.5)    # built first: nn.Linear's own init draws from the global generator
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    reglab.fit(model, (X, y), epochs=2, batch_size=16, seed=3, preset="keras")
    reglab.fit(model, (X, y), epochs=1, batch_size=16, seed=3, preset="torch")
    assert torch.equal(torch.random.get_rng_state(), state)


def test_dropout_is_active_in_training_only():
    X, y = blobs(n=70)
    w_drop, h_drop = run(5, dropout=0.5)
    w_plain, h_plain = run(5, dropout=0.0)
    # dropout changes the training trajectory...
    assert differs(w_drop, w_plain)
    # ...but evaluation is in eval mode: evaluating twice gives the same numbers
    model = mlp(dropout=0.5)
    model.train()
    first = reglab.evaluate(model, (X, y))
    assert first == reglab.evaluate(model, (X, y))
    assert model.training            # evaluate puts the mode back


# --- warm start ------------------------------------------------------------------------------

def test_warm_start_with_optimizer_continues_exactly():
    """Full batch (no shuffling): 5 + 5 epochs with the same optimizer state == 10 epochs."""
    X, y = blobs()
    a = mlp()
    reglab.fit(a, (X, y), epochs=10, batch_size=64, lr=0.02, seed=4, preset="keras")
    b = mlp()
    h1 = reglab.fit(b, (X, y), epochs=5, batch_size=64, lr=0.02, seed=4, preset="keras")
    h2 = reglab.fit(b, (X, y), epochs=5, batch_size=64, seed=4, warm_start=True, optimizer=h1.optimizer)
    assert h2.optimizer is h1.optimizer and h1.optimizer.iterations == 10
    assert_same_weights(weights(a), weights(b))


def test_warm_start_without_optimizer_starts_from_current_weights():
    X, y = blobs()
    model = mlp()
    first = reglab.fit(model, (X, y), epochs=20, batch_size=64, lr=0.02, seed=4, preset="keras")
    before = weights(model)
    second = reglab.fit(model, (X, y), epochs=1, batch_size=64, optimizer="sgd", lr=0.0, warm_start=True)
    assert_same_weights(before, weights(model))
    # the loss picks up where the first fit ended, far below the first fit's initial loss
    assert second.history["loss"][0] < first.history["loss"][0] * 0.9
    # without warm_start the model is re-initialised from the seed
    reglab.fit(model, (X, y), epochs=1, batch_size=64, optimizer="sgd", lr=0.0, seed=4, preset="keras")
    fresh = presets.initialize(mlp(), "keras", seed=4)
    assert_same_weights(weights(model), weights(fresh))


# --- presets and initialisation --------------------------------------------------------------

def glorot_limit(fan_in, fan_out):
    return math.sqrt(6 / (fan_in + fan_out))


@pytest.mark.parametrize("layer, fan_in, fan_out", [
    (nn.Linear(7, 13), 7, 13),
    (nn.Linear(300, 200), 300, 200),
    (nn.Conv2d(3, 8, 3), 27, 72),
    (nn.Conv1d(4, 6, 5), 20, 30),
])
def test_keras_init_is_glorot_uniform_with_zero_bias(layer, fan_in, fan_out):
    with torch.no_grad():
        layer.bias.fill_(5.0)
    presets.initialize(layer, "keras", seed=0)
    limit = glorot_limit(fan_in, fan_out)
    w = layer.weight.detach()
    assert w.abs().max() <= limit
    assert torch.equal(layer.bias.detach(), torch.zeros_like(layer.bias))
    if w.numel() >= 1000:   # enough draws to see the uniform distribution's spread
        assert w.abs().max() > 0.98 * limit
        assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.05)


def test_keras_init_lstm():
    H, D = 6, 5
    lstm = nn.LSTM(D, H, num_layers=2)
    presets.initialize(lstm, "keras", seed=0)
    for layer in range(2):
        w_ih = getattr(lstm, f"weight_ih_l{layer}").detach()
        w_hh = getattr(lstm, f"weight_hh_l{layer}").detach()
        b_ih = getattr(lstm, f"bias_ih_l{layer}").detach()
        b_hh = getattr(lstm, f"bias_hh_l{layer}").detach()
        fan_in = D if layer == 0 else H
        assert w_ih.abs().max() <= glorot_limit(fan_in, 4 * H)
        # Keras's recurrent kernel (H, 4H) is orthogonal: in PyTorch's (4H, H) layout the columns are
        torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(H), atol=1e-5, rtol=0)
        expected = torch.zeros(4 * H)
        expected[H:2 * H] = 1.0            # forget gate (i, f, g, o)
        assert torch.equal(b_ih, expected)
        assert torch.equal(b_hh, torch.zeros(4 * H))


def test_keras_init_gru_has_no_forget_bias():
    gru = nn.GRU(4, 5)
    presets.initialize(gru, "keras", seed=0)
    assert torch.equal(gru.bias_ih_l0.detach(), torch.zeros(15))
    torch.testing.assert_close(gru.weight_hh_l0.T @ gru.weight_hh_l0, torch.eye(5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["keras", "torch"])
def test_initialize_is_seeded(preset):
    a = presets.initialize(mlp(), preset, seed=3)
    b = presets.initialize(mlp(), preset, seed=3)
    c = presets.initialize(mlp(), preset, seed=4)
    assert_same_weights(weights(a), weights(b))
    assert differs(weights(a), weights(c))


def _parametrized():
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    return nn.Sequential(weight_norm(nn.Linear(4, 6)), nn.ReLU(), spectral_norm(nn.Conv1d(6, 3, 1)),
                         nn.Embedding(9, 2, padding_idx=1))


@pytest.mark.parametrize("preset", ["keras", "torch"])
def test_initialize_draws_parametrized_weights_from_the_seed(preset):
    """weight_norm/spectral_norm compute ``weight`` on each access: the draws must land in the
    parametrization (through right_inverse), and spectral norm's vectors come from the seed too."""
    torch.manual_seed(0)
    a = presets.initialize(_parametrized(), preset, seed=3)
    torch.manual_seed(1)                                   # another construction: other weights, u and v
    b = presets.initialize(_parametrized(), preset, seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    c = presets.initialize(_parametrized(), preset, seed=4)
    assert not torch.equal(a[0].weight, c[0].weight) and not torch.equal(a[2].parametrizations.weight[0]._u,
                                                                           c[2].parametrizations.weight[0]._u)
    # the weights the plain modules get from the same seed (spectral norm keeps the drawn weight as its
    # original and divides by its norm in the forward; weight norm recomputes g·v/|v|)
    plain = presets.initialize(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Conv1d(6, 3, 1), nn.Embedding(9, 2)),
                               preset, seed=3)
    torch.testing.assert_close(a[0].weight, plain[0].weight, rtol=1e-6, atol=1e-7)
    assert torch.equal(a[2].parametrizations.weight.original, plain[2].weight)
    assert torch.equal(a[3].weight[1], torch.zeros(2)) and (a[3].weight[[0, 2]] != 0).all()   # the padding row


@pytest.mark.parametrize("preset", ["keras", "torch"])
def test_initialize_keeps_frozen_parameters_and_draws_the_rest_as_without_them(preset):
    torch.manual_seed(0)
    model = mlp()
    first = model[0].weight.detach().clone()
    model[0].weight.requires_grad_(False)
    presets.initialize(model, preset, seed=3)
    assert torch.equal(model[0].weight, first)                       # a pretrained part kept fixed
    plain = presets.initialize(mlp(), preset, seed=3)
    mine, theirs = weights(model), weights(plain)
    del mine["0.weight"], theirs["0.weight"]
    assert_same_weights(mine, theirs)                                # the same draws for the others


def test_torch_preset_redraws_pytorch_init():
    layer = presets.initialize(nn.Linear(10, 20), "torch", seed=0)
    bound = 1 / math.sqrt(10)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert (layer.bias != 0).all()          # not Keras's zero bias


def test_fit_initialises_like_initialize():
    X, y = blobs()
    for preset in ("keras", "torch"):
        model = mlp()
        reglab.fit(model, (X, y), epochs=1, optimizer="sgd", lr=0.0, seed=9, preset=preset)
        assert_same_weights(weights(model), weights(presets.initialize(mlp(), preset, seed=9)))


def test_preset_optimizer_settings():
    X, y = blobs()
    keras = reglab.fit(mlp(), (X, y), epochs=1, preset="keras")
    opt = keras.optimizer
    assert isinstance(opt, optim.Adam) and (opt.lr, opt.epsilon, opt.epsilon_hat) == (1e-3, 1e-7, True)
    assert keras.params["batch_size"] == 32
    torch_like = reglab.fit(mlp(), (X, y), epochs=1, preset="torch").optimizer
    assert (torch_like.epsilon, torch_like.epsilon_hat) == (1e-8, False)
    adamw = reglab.fit(mlp(), (X, y), epochs=1, optimizer="adamw", preset="keras").optimizer
    assert isinstance(adamw, optim.AdamW) and adamw.weight_decay == 0.004
    sgd = reglab.fit(mlp(), (X, y), epochs=1, optimizer="sgd", lr=0.1, momentum=0.9, preset="keras").optimizer
    assert isinstance(sgd, optim.SGD) and (sgd.lr, sgd.momentum) == (0.1, 0.9)
    decayed = reglab.fit(mlp(), (X, y), epochs=1, weight_decay=0.01, preset="keras").optimizer
    assert decayed.weight_decay == 0.01


# --- regularisation does what it should ------------------------------------------------------

def test_l2_shrinks_the_kernel():
    X, y = blobs(n=40)
    norms = {}
    for l2 in (None, 1e-2):
        model = mlp(hidden=32)
        if l2:
            reglab.regularize(model[0], kernel=reglab.L2(l2))
        reglab.fit(model, (X, y), epochs=60, lr=0.01, seed=2, preset="keras")
        norms[l2] = model[0].weight.norm().item()
    assert norms[1e-2] < 0.8 * norms[None]


def zero_fraction(model, X):
    with torch.no_grad():
        return (model[1](model[0](X)) == 0).float().mean().item()


def circles(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g)
    return X, (X.norm(dim=1) > 1.1).long()


@pytest.mark.parametrize("where, coefficient, margin", [("before", 0.1, 0.04), ("after", 0.01, 0.2)])
def test_activity_l1_makes_relu_outputs_sparse(where, coefficient, margin):
    X, y = circles()
    plain, sparse = [], []
    for seed in range(3):
        for coef, out in ((None, plain), (coefficient, sparse)):
            model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 1))
            if coef:
                reglab.regularize(model[0] if where == "before" else model[1], activity=reglab.L1(coef))
            reglab.fit(model, (X, y), epochs=100, lr=0.01, seed=seed, preset="keras")
            out.append(zero_fraction(model, X))
    assert all(s > p for s, p in zip(sparse, plain))
    assert np.mean(sparse) > np.mean(plain) + margin


def test_max_norm_holds_after_every_step():
    X, y = blobs()
    model = mlp()
    reglab.regularize(model[0], kernel_constraint=reglab.MaxNorm(0.3))

    class Check(Callback):
        def on_batch_end(self, trainer, batch, **kwargs):
            assert (trainer.model[0].weight.norm(dim=1) <= 0.3 + 1e-6).all()

    reglab.fit(model, (X, y), epochs=3, batch_size=8, lr=0.05, callbacks=[Check()], preset="keras")


# --- against a plain PyTorch loop ------------------------------------------------------------

class KerasAdamByHand:
    def __init__(self, params, lr, b1=0.9, b2=0.999, eps=1e-7, wd=0.0):
        self.params, self.lr, self.b1, self.b2, self.eps, self.wd = params, lr, b1, b2, eps, wd
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads):
        self.t += 1
        alpha = self.lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            p -= self.lr * self.wd * p
            m += (g - m) * (1 - self.b1)
            v += (g * g - v) * (1 - self.b2)
            p -= alpha * m / (v.sqrt() + self.eps)


class KerasSGDByHand:
    def __init__(self, params, lr, momentum, nesterov):
        self.params, self.lr, self.momentum, self.nesterov = params, lr, momentum, nesterov
        self.m = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads):
        for p, g, m in zip(self.params, grads, self.m):
            m.copy_(self.momentum * m - self.lr * g)
            p += self.momentum * m - self.lr * g if self.nesterov else m


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_fit_equals_plain_pytorch_loop(optimizer):
    X, y = blobs(n=40)
    seed, lr, l2, bound, epochs = 5, 0.01, 1e-2, 0.5, 30

    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    reglab.regularize(model[0], kernel=reglab.L2(l2))
    reglab.regularize(model[2], kernel_constraint=reglab.MaxNorm(bound))
    kwargs = {"adam": {}, "adamw": {"weight_decay": 0.05},
              "sgd": {"lr": 0.1, "momentum": 0.9}}[optimizer]
    history = reglab.fit(model, (X, y), epochs=epochs, batch_size=64, optimizer=optimizer, seed=seed,
                         **{"lr": lr, **kwargs}, preset="keras")

    ref = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    ref.load_state_dict(presets.initialize(nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)),
                                           "keras", seed=seed).state_dict())
    params = list(ref.parameters())
    if optimizer == "sgd":
        opt = KerasSGDByHand(params, lr=0.1, momentum=0.9, nesterov=False)
    else:
        opt = KerasAdamByHand(params, lr=lr, wd=kwargs.get("weight_decay", 0.0))
    losses = []
    for _ in range(epochs):
        out = ref(X)[:, 0]
        loss = F.binary_cross_entropy_with_logits(out, y.float()) + l2 * ref[0].weight.pow(2).sum()
        losses.append(loss.item())
        opt.step(torch.autograd.grad(loss, params))
        with torch.no_grad():
            w = ref[2].weight
            n = w.norm(dim=1, keepdim=True)
            w.copy_(w * n.clamp(0, bound) / (1e-7 + n))

    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-5)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=0, msg=name)
    # the constraint was binding, so the comparison did check it
    assert ref[2].weight.norm().item() == pytest.approx(bound, rel=1e-5)


# --- divergence --------------------------------------------------------------------------------

def test_absurd_learning_rate_diverges_without_crashing():
    X, _ = blobs()
    y = X[:, 0] * 100
    model = mlp()
    history = reglab.fit(model, (X, y), epochs=50, optimizer="sgd", lr=1e6, batch_size=64, preset="keras")
    assert history.diverged
    assert len(history.epoch) < 50
    assert all(math.isfinite(v) for values in history.history.values() for v in values)


class BlowsUp(nn.Module):
    """Outputs inf from the ``at``-th forward pass on."""

    def __init__(self, at):
        super().__init__()
        self.linear, self.calls, self.at = nn.Linear(3, 1), 0, at

    def forward(self, x):
        self.calls += 1
        out = self.linear(x)
        return out * math.inf if self.calls > self.at else out


class Record(Callback):
    def on_train_begin(self, trainer, **kwargs):
        self.weights_ = []

    def on_epoch_end(self, trainer, epoch, logs, **kwargs):
        self.weights_.append(weights(trainer.model))


def test_infinite_loss_stops_before_the_step():
    X, _ = blobs()
    y = X[:, 0]
    model, rec = BlowsUp(at=3), Record()
    history = reglab.fit(model, (X, y), epochs=10, batch_size=64, callbacks=[rec], preset="keras")
    assert history.diverged and history.epoch == [0, 1, 2]
    assert all(math.isfinite(v) for v in history.history["loss"])
    # the inf batch did not update the weights
    assert_same_weights(weights(model), rec.weights_[-1])


def test_divergence_with_restore_best_weights():
    X, _ = blobs()
    y = X[:, 0]
    Xv, _ = blobs(seed=1)
    model, rec = BlowsUp(at=8), Record()
    es = EarlyStopping(patience=100, restore_best_weights=True)
    # each epoch runs one training and one validation forward pass: inf in epoch 4's training
    history = reglab.fit(model, (X, y), (Xv, Xv[:, 0]), epochs=10, batch_size=64, lr=0.05, callbacks=[rec, es], preset="keras")
    assert history.diverged and len(history.epoch) == 4
    best = int(np.argmin(history.history["val_loss"]))
    assert history.best_epoch == best
    assert_same_weights(weights(model), rec.weights_[best])


# --- evaluate ----------------------------------------------------------------------------------

def test_evaluate_loss_is_data_loss_plus_penalty():
    X, y = blobs(n=50)
    model = presets.initialize(mlp(), "keras", seed=0)
    reglab.regularize(model[0], kernel=reglab.L2(1e-2))
    reglab.regularize(model[1], activity=reglab.L1(1e-2))
    result = reglab.evaluate(model, (X, y), batch_size=16)
    assert set(result) == {"loss", "data_loss", "penalty", "accuracy"}
    assert result["loss"] == pytest.approx(result["data_loss"] + result["penalty"], rel=1e-7)
    with torch.no_grad():
        hidden = model[1](model[0](X))
        out = model(X)[:, 0]
        data = F.binary_cross_entropy_with_logits(out, y.float()).item()
        pen = 1e-2 * model[0].weight.pow(2).sum().item() + 1e-2 * hidden.abs().sum().item() / len(X)
    assert result["data_loss"] == pytest.approx(data, rel=1e-5)
    assert result["penalty"] == pytest.approx(pen, rel=1e-5)
    assert result["accuracy"] == pytest.approx(((out > 0).long() == y).float().mean().item())
    # with the per-batch mean convention the result does not depend on the batch size
    for batch_size in (1, 7, 50, 100):
        again = reglab.evaluate(model, (X, y), batch_size=batch_size)
        for key in result:
            assert again[key] == pytest.approx(result[key], rel=1e-5)


def test_evaluate_accepts_numpy_and_task():
    X, y = blobs()
    model = presets.initialize(mlp(), "keras", seed=0)
    as_numpy = reglab.evaluate(model, (X.numpy(), y.numpy()))
    assert as_numpy == reglab.evaluate(model, (X, y))
    assert "mae" in reglab.evaluate(model, (X, y.float()), task="regression")


# --- argument validation -----------------------------------------------------------------------

def fit_args(**overrides):
    X, y = blobs(n=20)
    args = dict(model=mlp(), train=(X, y), epochs=1)
    args.update(overrides)
    model, train = args.pop("model"), args.pop("train")
    return model, train, args


@pytest.mark.parametrize("overrides, error, match", [
    (dict(epochs=0), ValueError, "'epochs'"),
    (dict(epochs=-3), ValueError, "'epochs'"),
    (dict(epochs=2.5), TypeError, "'epochs'"),
    (dict(epochs="5"), TypeError, "'epochs'"),
    (dict(batch_size=-1), ValueError, "'batch_size'"),
    (dict(batch_size=0), ValueError, "'batch_size'"),
    (dict(batch_size=8.0), TypeError, "'batch_size'"),
    (dict(seed=-1), ValueError, "'seed'"),
    (dict(seed=1.5), TypeError, "'seed'"),
    (dict(model="not a model"), TypeError, "Module"),
    (dict(model=lambda x: x), TypeError, "Module"),
    (dict(train=(torch.randn(10, 3), torch.zeros(9))), ValueError, "'train'"),
    (dict(train=(torch.randn(0, 3), torch.zeros(0))), ValueError, "'train'.*empty"),
    (dict(train=torch.randn(10, 3)), TypeError, "'train'"),
    (dict(train=(torch.randn(10, 3),)), TypeError, "'train'"),
    (dict(validation=(torch.randn(10, 3), torch.zeros(8))), ValueError, "'validation'"),
    (dict(validation=(torch.randn(0, 3), torch.zeros(0))), ValueError, "'validation'"),
    (dict(task="classification"), ValueError, "'task'"),
    (dict(preset="tensorflow"), ValueError, "'preset'"),
    (dict(optimizer="adadelta"), ValueError, "'optimizer'"),
    (dict(optimizer=torch.optim.Adam([torch.zeros(1, requires_grad=True)])), TypeError, "'optimizer'"),
    (dict(optimizer="adagrad", momentum=0.9), ValueError, "'momentum'"),
    (dict(optimizer=torch.optim.SGD, momentum=0.9), ValueError, "functools.partial"),
    (dict(clipnorm=-1.0), ValueError, "'clipnorm'"),
    (dict(clipnorm=1.0, clipvalue=1.0), ValueError, "only one of clipnorm"),
    (dict(label_smoothing=1.5), ValueError, "'label_smoothing'"),
    (dict(class_weight="auto"), ValueError, "'class_weight'.*'balanced'"),
    (dict(class_weight={7: 2.0}), ValueError, "class 7"),
    (dict(sample_weight=[1.0] * 9), ValueError, "'sample_weight'.*9 values"),
    (dict(sample_weight=[-1.0] * 20), ValueError, "'sample_weight'"),
    (dict(schedule="cosine"), TypeError, "'schedule' parameter of fit"),
    (dict(schedule={"kind": "cosine"}), TypeError, "decay_steps"),
    (dict(schedule={"kind": "linear"}), ValueError, "'kind'"),
    (dict(loss="mse"), TypeError, "'loss'"),
    (dict(lr=-0.1), ValueError, "'lr'"),
    (dict(lr="fast"), TypeError, "'lr'"),
    (dict(weight_decay=-1.0), ValueError, "'weight_decay'"),
    (dict(optimizer="sgd", momentum=2.0), ValueError, "'momentum'"),
    (dict(callbacks=[EarlyStopping()]), ValueError, "validation"),
    (dict(callbacks=[EarlyStopping(monitor="val_accuracy")]), ValueError, "validation"),
    (dict(callbacks=["early_stopping"]), TypeError, "callbacks"),
    (dict(callbacks=[EarlyStopping(monitor="loss"), object()]), TypeError, "callbacks"),
])
def test_bad_arguments_raise_clear_errors(overrides, error, match):
    model, train, kwargs = fit_args(**overrides)
    with pytest.raises(error, match=match):
        reglab.fit(model, train, **{"preset": "keras", **kwargs})


@pytest.mark.parametrize("overrides", [
    dict(lr=-0.1), dict(optimizer="adadelta"), dict(task="classification"), dict(epochs=0),
    dict(callbacks=[object()]), dict(train=(torch.randn(10, 3), torch.zeros(9))),
])
def test_rejected_fit_leaves_the_model_untouched(overrides):
    model, train, kwargs = fit_args(**overrides)
    before = weights(model)
    with pytest.raises((TypeError, ValueError)):
        reglab.fit(model, train, **{"preset": "keras", **kwargs})
    assert_same_weights(before, weights(model))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(data=(torch.randn(5, 3), torch.zeros(4))), ValueError, "'data'"),
    (dict(data=(torch.randn(0, 3), torch.zeros(0))), ValueError, "'data'.*empty"),
    (dict(data=torch.randn(5, 3)), TypeError, "'data'"),
    (dict(data=(torch.randn(5, 3), torch.zeros(5)), task="ranking"), ValueError, "'task'"),
])
def test_evaluate_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        reglab.evaluate(mlp(), **kwargs)


class Squeeze(nn.Module):
    def forward(self, x):
        return x[:, 0]


@pytest.mark.parametrize("model, targets", [
    (nn.Linear(3, 2), torch.tensor([0, 1] * 10)),                       # binary labels, two logits
    (nn.Sequential(nn.Linear(3, 1), Squeeze()), torch.tensor([0, 1] * 10)),
    (nn.Sequential(nn.Linear(3, 1), Squeeze()), torch.linspace(0, 1, 20)),   # (B,) vs (B, 1) would broadcast
    (nn.Linear(3, 3), torch.linspace(0, 1, 20)),
    (nn.Linear(3, 1), torch.tensor([0, 1, 2, 3] * 5)),
])
def test_output_shape_that_does_not_fit_the_task_is_rejected(model, targets):
    with pytest.raises(ValueError, match="output has shape"):
        reglab.fit(model, (torch.randn(20, 3), targets), epochs=1, preset="keras")


class _Items(torch.utils.data.Dataset):
    def __init__(self, item):
        self.item = item

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.item


def _bad_inputs():
    X, y = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32), np.arange(40) % 2
    nan_X, inf_y = X.copy(), y.astype(np.float64)
    nan_X[6, 1], inf_y[4] = np.nan, np.inf
    return {
        "text targets": ((X, np.where(y == 1, "dog", "cat")), TypeError,
                         r"The 'train' targets are not numbers \(text such as 'cat'\); give class indices 0..K-1"),
        "object inputs": ((np.array([[object()]] * 40, dtype=object), y), TypeError,
                          r"The 'train' inputs are not numbers \(Python objects such as .*\); encode them as numbers"),
        "NaN input": ((nan_X, y), ValueError, r"The 'train' inputs have a NaN or infinite value at \[6, 1\] \(nan\); impute or drop"),
        "infinite target": ((X, inf_y), ValueError, r"The 'train' targets have a NaN or infinite value at \[4\] \(inf\)"),
        "dict items": (_Items({"x": X[0], "y": 1}), TypeError,
                       r"item 0 is a dict with keys 'x', 'y': wrap it in a Dataset whose __getitem__ returns \(x, y\)"),
        "triple items": (_Items((X[0], 1, 0)), TypeError, r"must return \(x, y\) pairs; item 0 is a tuple of 3"),
        "several inputs": (_Items(((X[0], np.arange(2)), 1)), TypeError,
                           r"The 'train' dataset's x is a tuple of 2 \(a model with several inputs\); reglab feeds "
                           r"forward\(\) one tensor: concatenate"),
        "several inputs in a DataLoader": (torch.utils.data.DataLoader(_Items(((X[0], np.arange(2)), 1)), batch_size=4),
                                           TypeError, r"The 'train' (DataLoader|dataset)'s x is a (list|tuple) of 2 "
                                                      r"\(a model with several inputs\)"),
        "several input arrays": (((X, np.arange(80).reshape(40, 2)), y), TypeError,
                                 r"The 'train' inputs do not form one array \(parts of different shapes: a model with "
                                 r"several inputs\?\); reglab feeds forward\(\) one tensor"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_training_data_gets_one_clear_line_in_fit_and_populations(case):
    data, kind, match = _bad_inputs()[case]

    def build():
        return nn.Sequential(nn.Linear(3, 1))
    with pytest.raises(kind, match=match) as info:
        reglab.fit(build(), data, epochs=1, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(kind, match=match):
        reglab.train_population(build, None, [0, 1], train=data, epochs=1, progress=False)


@pytest.mark.parametrize("dtype, fix", [(torch.float64, "or call torch.set_default_dtype\\(torch.float64\\) first"),
                                        (torch.bfloat16, "build the model in float32\\.$")])
def test_a_model_in_another_dtype_gets_one_clear_line(dtype, fix):
    X, y = blobs()
    match = f"'s 0.weight is {str(dtype)[6:]}, but reglab trains in the default dtype, float32: .*{fix}"
    with pytest.raises(TypeError, match="The model" + match):
        reglab.fit(mlp().to(dtype), (X, y), epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"build\(\*\*\{\}\)" + match):
        reglab.train_population(lambda: mlp().to(dtype), None, [0], train=(X, y), epochs=1, progress=False)
