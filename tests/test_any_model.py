"""Any PyTorch model in a population (the general vmap path): each member equals its standalone fit.

The comparisons run in float64. There, two correct implementations of the same arithmetic that
add in different orders (a vmapped batched matmul against the standalone's plain one) differ by
~1e-16 per operation, and a few dozen epochs of Adam keep that far below 1e-9, so ATOL64 = 1e-9
tests the semantics exactly: the same initialisation, shuffles, dropout masks and noise (each
member from its own generator), BatchNorm statistics, penalties, constraints and optimizer steps.
In float32 the same members differ by rounding that Adam amplifies where a gradient cancels
(tests/test_population.py, ``rounding_sensitivity``); one float32 case is checked against that
measured sensitivity.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reglab
from reglab.population import ModulePopulation, NotBatchable, engine

from test_population import assert_close_within, rounding_sensitivity

ATOL64 = 1e-9


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def rng(seed=0):
    return np.random.default_rng(seed)


def tabular(n=96, d=8, seed=0):
    g = rng(seed)
    X = g.normal(size=(n, d))
    y = ((X[:, 0] + X[:, 1] ** 2 + 0.5 * g.normal(size=n)) > 1).astype(float)
    return X, y


def images(n=48, seed=0):
    g = rng(seed)
    X = g.normal(size=(n, 1, 8, 8))
    return X, (X[:, 0, :4].sum((1, 2)) > 0).astype(float)


def sequences(n=48, steps=6, d=4, seed=0):
    g = rng(seed)
    X = g.normal(size=(n, steps, d))
    return X, (X[:, :, 0].sum(1) > 0).astype(float)


def tokens(n=64, steps=7, vocab=20, seed=0):
    g = rng(seed)
    X = g.integers(0, vocab, size=(n, steps))
    return X, (X == 3).any(1).astype(float)


def split(data, n_train):
    X, y = data
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


# --- the model families ------------------------------------------------------------------------

class ResMLP(nn.Module):
    """A skip connection, BatchNorm, dropout and an activity penalty inside a custom forward()."""

    def __init__(self, rate=0.0, l2=1e-3, activity=1e-4, width=16, bias=True):
        super().__init__()
        self.inp, self.bn = nn.Linear(8, width, bias=bias), nn.BatchNorm1d(width)
        self.fc, self.drop = nn.Linear(width, width), nn.Dropout(rate)
        self.norm, self.out = nn.LayerNorm(width), nn.Linear(width, 1)
        reglab.regularize(self.fc, kernel=reglab.L2(l2))
        reglab.regularize(self.norm, activity=reglab.L1(activity))

    def forward(self, x):
        h = torch.relu(self.bn(self.inp(x)))
        h = h + self.drop(torch.relu(self.fc(h)))
        return self.out(self.norm(h))


class ConvNet(nn.Module):
    """BatchNorm2d, Dropout2d, GroupNorm, pooling; an L2 penalty and a max-norm constraint."""

    def __init__(self, rate=0.0, l2=1e-3):
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout2d(rate)
        self.gn, self.pool, self.out = nn.GroupNorm(2, 4), nn.MaxPool2d(2), nn.Linear(64, 1)
        reglab.regularize(self.conv, kernel=reglab.L2(l2), kernel_constraint=reglab.MaxNorm(2.0))

    def forward(self, x):
        h = self.pool(self.gn(torch.relu(self.drop(self.bn(self.conv(x))))))
        return self.out(h.flatten(1))


class Conv1dNet(nn.Module):
    def __init__(self, rate=0.0):
        super().__init__()
        self.conv, self.pool, self.bn = nn.Conv1d(4, 6, 3), nn.AvgPool1d(2), nn.BatchNorm1d(6)
        self.drop, self.out = nn.Dropout1d(rate), nn.Linear(12, 1)

    def forward(self, x):
        return self.out(self.drop(self.pool(self.bn(torch.relu(self.conv(x.transpose(1, 2)))))).flatten(1))


class Embedder(nn.Module):
    """Integer token ids into an Embedding; an L1 penalty on the embedding table by parameter name."""

    def __init__(self, rate=0.0):
        super().__init__()
        self.embed, self.norm = nn.Embedding(20, 8), nn.LayerNorm(8)
        self.drop, self.out = nn.Dropout(rate), nn.Linear(8, 1)
        reglab.regularize(self.embed, penalties={"weight": reglab.L1(1e-4)})

    def forward(self, x):
        return self.out(self.drop(self.norm(self.embed(x))).mean(1))


class Transformer(nn.Module):
    """A 2-layer TransformerEncoder (dropout 0.1 everywhere) and an nn.MultiheadAttention."""

    def __init__(self, rate=0.0):
        super().__init__()
        self.embed, self.pos = nn.Embedding(20, 16), nn.Parameter(torch.zeros(7, 16))
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.attn = nn.MultiheadAttention(16, 2, dropout=0.1, batch_first=True)
        self.drop, self.out = nn.Dropout(rate), nn.Linear(16, 1)
        reglab.regularize(self.out, activity=reglab.L2(1e-3))

    def forward(self, x):
        h = self.encoder(self.embed(x) + self.pos)
        a, _ = self.attn(h, h, h)
        return self.out(self.drop(a + h).mean(1))


class Attention(nn.Module):
    """``F.scaled_dot_product_attention`` with dropout in a custom forward, and cross-attention
    (query is not key): PyTorch's functions under vmap, every attention mask drawn per member."""

    def __init__(self, rate=0.0):
        super().__init__()
        self.embed, self.qkv = nn.Embedding(20, 16), nn.Linear(16, 48)
        self.cross = nn.MultiheadAttention(16, 2, dropout=0.1, batch_first=True)
        self.drop, self.out = nn.Dropout(rate), nn.Linear(16, 1)

    def forward(self, x):
        h = self.embed(x)
        q, k, v = self.qkv(h).unflatten(-1, (3, 2, 8)).permute(2, 0, 3, 1, 4)     # (B, H, L, d) each
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.2 if self.training else 0.0, is_causal=True)
        a = a.transpose(1, 2).flatten(2) + h
        c, _ = self.cross(a, h, h, need_weights=False)
        return self.out(self.drop(c + a).mean(1))


class Recurrent(nn.Module):
    """Two stacked LSTM/GRU/RNN layers with inter-layer dropout, a bidirectional time-major GRU after
    them, reglab's noise layers, kernel and recurrent penalties."""

    def __init__(self, rate=0.0, cell="LSTM"):
        super().__init__()
        self.rnn = getattr(nn, cell)(4, 6, num_layers=2, dropout=0.2, batch_first=True)
        self.gru = nn.GRU(6, 5, bidirectional=True)
        self.noise, self.gdrop = reglab.GaussianNoise(rate), reglab.GaussianDropout(0.1)
        self.out = nn.Linear(10, 1)
        reglab.regularize(self.rnn, kernel=reglab.L2(1e-3), recurrent=reglab.L1(1e-4))

    def forward(self, x):
        h, _ = self.rnn(self.noise(x))
        h2, _ = self.gru(h.transpose(0, 1))
        return self.out(self.gdrop(h2[-1]))


class Blocks(nn.Module):
    """Rules attached to a container by dotted name: a penalty and a constraint inside a submodule."""

    def __init__(self, rate=0.0, l2=1e-3):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(rate)) for _ in range(2)])
        self.out = nn.Linear(8, 1)
        reglab.regularize(self.blocks, penalties={"0.0.weight": reglab.L2(l2)}, constraints={"1.0.weight": reglab.UnitNorm()})

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


FAMILIES = {
    "residual-batchnorm1d": (ResMLP, tabular, [dict(rate=0.0), dict(rate=0.3, l2=1e-2), dict(rate=0.5, activity=1e-3)]),
    "conv2d-batchnorm2d-groupnorm": (ConvNet, images, [dict(rate=0.0), dict(rate=0.3, l2=1e-2)]),
    "conv1d-pool-dropout1d": (Conv1dNet, sequences, [dict(rate=0.0), dict(rate=0.4)]),
    "embedding-layernorm": (Embedder, tokens, [dict(rate=0.0), dict(rate=0.3)]),
    "transformer-attention": (Transformer, tokens, [dict(rate=0.0), dict(rate=0.3)]),
    "sdpa-cross-attention": (Attention, tokens, [dict(rate=0.0), dict(rate=0.3)]),
    "lstm": (lambda rate=0.0: Recurrent(rate, "LSTM"), sequences, [dict(rate=0.0), dict(rate=0.3)]),
    "gru": (lambda rate=0.0: Recurrent(rate, "GRU"), sequences, [dict(rate=0.0), dict(rate=0.3)]),
    "rnn": (lambda rate=0.0: Recurrent(rate, "RNN"), sequences, [dict(rate=0.0), dict(rate=0.3)]),
    "container-rules": (Blocks, tabular, [dict(rate=0.0), dict(rate=0.2, l2=1e-2)]),
}


def assert_member_matches(result, i, model, history, atol=ATOL64):
    mine, theirs = result.models[i].state_dict(), model.state_dict()
    assert mine.keys() == theirs.keys()
    for key in theirs:   # weights and buffers (BatchNorm statistics, num_batches_tracked)
        torch.testing.assert_close(mine[key], theirs[key], atol=atol, rtol=0, msg=lambda m: f"member {i} {key}: {m}")
    ran = len(history.epoch)
    assert result.epochs_run[i] == ran
    assert result.stopped_epoch[i] == (-1 if history.stopped_epoch is None else history.stopped_epoch)
    assert result.best_epoch[i] == (-1 if history.best_epoch is None else history.best_epoch)
    for key, values in history.history.items():
        np.testing.assert_allclose(result.history[key][i, :ran], values, atol=atol, rtol=0, err_msg=f"member {i} {key}")


def check_family(build, data, configs, seeds=(0, 1), epochs=12, batch_size=16, early_stopping=None):
    (train, validation) = split(data, len(data[0]) * 2 // 3)
    es = reglab.EarlyStopping(**early_stopping) if early_stopping else None
    result = reglab.train_population(build, configs, list(seeds), train=train, validation=validation, epochs=epochs,
                                     batch_size=batch_size, early_stopping=es, progress=False)
    for i, member in enumerate(result.members):
        model = build(**member["config"])
        callbacks = [reglab.EarlyStopping(**early_stopping)] if early_stopping else []
        history = reglab.fit(model, train, validation, epochs=epochs, batch_size=batch_size, seed=member["seed"],
                             callbacks=callbacks, progress=False, preset="keras")
        assert_member_matches(result, i, model, history)
    return result


@pytest.mark.parametrize("family", list(FAMILIES))
def test_member_equals_standalone_fit(family, float64):
    build, data, configs = FAMILIES[family]
    result = check_family(build, data(), configs)
    assert all(isinstance(m, nn.Module) and not m.training for m in result.models)


def test_the_general_path_trains_them(float64):
    """These models are not Sequentials of the stacked layers: they run as a ModulePopulation."""
    for build, _, configs in FAMILIES.values():
        assert isinstance(engine.make_population([build(**configs[0])]), ModulePopulation)


def test_early_stopping_restores_weights_and_batchnorm_statistics(float64):
    """Members stop at different epochs; a stopped member's BatchNorm statistics stay as they were,
    and restore_best_weights restores the statistics with the weights (as Keras restores all weights)."""
    result = check_family(ResMLP, tabular(), [dict(rate=0.0, width=32), dict(rate=0.5, width=32)], seeds=(0, 1, 2),
                          epochs=25, early_stopping=dict(monitor="val_loss", patience=2, restore_best_weights=True))
    assert (result.stopped_epoch >= 0).any() and len(set(result.epochs_run.tolist())) > 1


def test_float32_member_within_rounding_sensitivity():
    """In float32 a member differs from its fit only by rounding, bounded by the measured one-ulp
    sensitivity (see rounding_sensitivity in tests/test_population.py).

    The model has no bias before its BatchNorm: such a bias gets an identically zero gradient (the
    normalisation removes it), so Adam moves it by lr times the sign of pure rounding noise, a
    different walk in any two implementations, with no effect on any output."""
    train, validation = split(tabular(), 64)
    train = tuple(torch.as_tensor(a, dtype=torch.float32) for a in train)
    validation = tuple(torch.as_tensor(a, dtype=torch.float32) for a in validation)
    configs, seeds = [dict(rate=0.3, bias=False)], [0, 1]

    def run(tr, va):
        return reglab.train_population(ResMLP, configs, seeds, train=tr, validation=va, epochs=6, batch_size=16,
                                       progress=False)
    slack = rounding_sensitivity(run, train, validation)
    result = run(train, validation)
    for i, member in enumerate(result.members):
        model = ResMLP(**member["config"])
        reglab.fit(model, train, validation, epochs=6, batch_size=16, seed=member["seed"], progress=False, preset="keras")
        for (key, mine), theirs in zip(result.models[i].state_dict().items(), model.state_dict().values()):
            if mine.is_floating_point():
                assert_close_within(mine, theirs, 1e-5, slack[i][key], f"member {i} {key}")


@pytest.mark.parametrize("ahead", [True, False])
def test_draws_made_ahead_are_undone_when_the_next_batch_differs(float64, monkeypatch, ahead):
    """Dropout masks are drawn one batch ahead on the guess that the next batch is shaped like this
    one; batches of 24 on 64 rows (24, 24, 16) and a validation pass each epoch make that guess
    wrong twice an epoch, and every member must still draw exactly what its fit draws. Draws too
    small to pay for the thread's hand-over (AHEAD_MIN) are made in turn, with the same values."""
    from reglab.population import functional
    monkeypatch.setattr(functional, "AHEAD_MIN", 0 if ahead else 1 << 60)
    submitted = []
    real = functional._pool

    def counted(workers):
        pool = real(workers)
        if workers == 1:
            submitted.append(1)
        return pool
    monkeypatch.setattr(functional, "_pool", counted)
    check_family(ResMLP, tabular(), [dict(rate=0.3), dict(rate=0.5)], seeds=(0, 1, 2), epochs=5, batch_size=24)
    assert bool(submitted) == ahead


def test_members_of_different_architectures_run_as_separate_populations(float64):
    data = tabular()
    check_family(ResMLP, data, [dict(width=8), dict(width=16), dict(width=8, rate=0.5)], seeds=(0,), epochs=4)


def test_members_differing_only_in_attributes_forward_never_reads_share_one_population(float64, monkeypatch):
    """``self.l2 = l2`` kept on the model (never read by forward) does not split a population;
    ``self.scale``, read by the evaluation forward only, does: every member still equals its fit."""
    class Kept(nn.Module):
        def __init__(self, l2=1e-3, scale=1.0):
            super().__init__()
            self.l2, self.scale = l2, scale
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 1)
            reglab.regularize(self.a, kernel=reglab.L2(l2))

        def forward(self, x):
            out = self.b(torch.relu(self.a(x)))
            return out if self.training else out * self.scale

    sizes = []
    real = engine._train_chunk
    monkeypatch.setattr(engine, "_train_chunk", lambda pop, *args: sizes.append(pop.P) or real(pop, *args))
    check_family(Kept, tabular(), [dict(l2=1e-3), dict(l2=1e-2), dict(l2=1e-2, scale=2.0)], epochs=4)
    assert sorted(sizes) == [2, 4]   # seeds (0, 1): the two l2 configs together, the scale config apart
    reads = engine.module_reads(Kept(), torch.zeros(2, 8))
    assert "scale" in reads[""] and "l2" not in reads[""]


def test_unused_parameters_are_left_alone(float64):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(8, 1), nn.Linear(8, 1)

        def forward(self, x):
            return self.used(x)
    result = check_family(Unused, tabular(), [{}], epochs=3)
    torch.testing.assert_close(result.models[0].spare.weight, reglab.presets.initialize(Unused(), "keras", 0).spare.weight)


def pretrained(*shape, seed=7):
    """Weights as a checkpoint would give them: the same in every model built."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.get_default_dtype())


class FrozenEmbedder(nn.Module):
    """A frozen pretrained embedding table and a frozen pretrained first layer (requires_grad=False)
    with L2/L1 penalties attached, trained with dropout and a trainable head."""

    def __init__(self, rate=0.0, l2=1e-3):
        super().__init__()
        self.embed, self.fc = nn.Embedding(20, 8), nn.Linear(8, 8)
        self.drop, self.out = nn.Dropout(rate), nn.Linear(8, 1)
        with torch.no_grad():
            self.embed.weight.copy_(pretrained(20, 8))
            self.fc.weight.copy_(pretrained(8, 8, seed=8))
        self.embed.weight.requires_grad_(False)
        self.fc.weight.requires_grad_(False)
        reglab.regularize(self.fc, kernel=reglab.L2(l2), bias=reglab.L1(1e-3))
        reglab.regularize(self.out, kernel=reglab.L2(l2))

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.fc(self.embed(x)))).mean(1))


@pytest.mark.parametrize("penalty", ["l1l2", "custom"])
def test_frozen_parameters_stay_frozen_as_in_fit(float64, monkeypatch, penalty):
    """A parameter with requires_grad=False keeps its pretrained value: not re-drawn by the preset,
    not updated in a population, as in reglab.fit (its penalty still counts in the loss), whether the
    L1/L2 gradients are added by hand or by autograd."""
    if penalty == "custom":   # every penalty through autograd: no hand-made L1/L2 gradients
        monkeypatch.setattr(reglab.population.merge.MergedRules, "linear_penalties", lambda self: None)
    result = check_family(FrozenEmbedder, tokens(), [dict(rate=0.0), dict(rate=0.3, l2=1e-2)], epochs=4)
    for member, model in zip(result.members, result.models):
        start = reglab.presets.initialize(FrozenEmbedder(**member["config"]), "keras", member["seed"])
        assert torch.equal(model.embed.weight, pretrained(20, 8)) and torch.equal(model.fc.weight, pretrained(8, 8, seed=8))
        assert not torch.equal(model.fc.bias, start.fc.bias) and not model.fc.weight.requires_grad
    assert (result.history["penalty"] > 0).all()


def test_a_sequential_with_a_frozen_layer_takes_the_general_path(float64):
    def build(rate=0.0):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(rate), nn.Linear(8, 1))
        with torch.no_grad():
            model[0].weight.copy_(pretrained(8, 8))
            model[0].bias.copy_(pretrained(8))
        model[0].requires_grad_(False)
        return model
    assert isinstance(engine.make_population([build(), build()]), ModulePopulation)
    result = check_family(build, tabular(), [dict(rate=0.0), dict(rate=0.3)], epochs=3)
    for model in result.models:
        assert torch.equal(model[0].weight, pretrained(8, 8)) and torch.equal(model[0].bias, pretrained(8))


class PaddedEmbedder(nn.Module):
    def __init__(self, rate=0.0):
        super().__init__()
        self.embed, self.drop, self.out = nn.Embedding(20, 8, padding_idx=0), nn.Dropout(rate), nn.Linear(8, 1)

    def forward(self, x):
        return self.out(self.drop(self.embed(x)).mean(1))


def test_every_members_padding_row_stays_out_of_training(float64):
    """nn.Embedding(padding_idx=0): PyTorch's vmap rule for the embedding backward masks the padding
    row of the first member only; each member's own row must get no gradient, as in fit."""
    x = tokens()[0]
    assert (x == 0).any()
    result = check_family(PaddedEmbedder, tokens(), [dict(rate=0.0), dict(rate=0.3)], epochs=4)
    assert all(bool((m.embed.weight[0] == 0).all()) for m in result.models)   # zeros at init (Keras init too)
    assert len(result.models) == 4


def test_functional_dropout_in_forward_draws_per_member(float64):
    """F.dropout called in a custom forward() is drawn from each member's own generator too."""
    class Functional(nn.Module):
        def __init__(self, rate=0.0):
            super().__init__()
            self.rate, self.a, self.b = rate, nn.Linear(8, 16), nn.Linear(16, 1)

        def forward(self, x):
            return self.b(F.dropout(torch.relu(self.a(x)), self.rate, self.training))
    check_family(Functional, tabular(), [dict(rate=0.2), dict(rate=0.5)])


# --- inputs keep their dtype -------------------------------------------------------------------

def test_integer_token_ids_reach_an_embedding_in_fit_and_populations():
    X, y = tokens()
    seen = []

    class Spy(Embedder):
        def forward(self, x):
            seen.append(x.dtype)
            return super().forward(x)
    reglab.fit(Spy(), (X, y), epochs=1, progress=False, preset="keras")
    reglab.train_population(Spy, None, [0, 1], train=(X, y), epochs=1, progress=False)
    assert set(seen) == {torch.int64}
    assert reglab.evaluate(Spy(), (X, y))["accuracy"] >= 0


def test_float_inputs_stay_float32_and_integer_inputs_of_other_models_become_float():
    X, y = tabular()
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 1)

        def forward(self, x):
            seen.append(x.dtype)
            return self.lin(x)
    reglab.fit(Spy(), (X, y), epochs=1, progress=False, preset="keras")                          # float64 NumPy
    reglab.fit(Spy(), (np.round(X * 3).astype(np.int64), y), epochs=1, progress=False, preset="keras")   # integer features
    assert set(seen) == {torch.float32}


# --- models that cannot be batched: one clear error --------------------------------------------

class RandomInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, x):
        return self.lin(x + torch.randn_like(x) * 0.1 if self.training else x)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


class OutArgument(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, x):
        h = torch.empty_like(x)
        torch.mul(x, 2.0, out=h)
        return self.lin(h)


@pytest.mark.parametrize("build, match", [
    (RandomInForward, "RandomInForward draws random numbers in forward\\(\\).*nn.Dropout.*reglab.fit"),
    (DataDependent, "DataDependent cannot run as a population.*control flow.*reglab.fit"),
    (OutArgument, "OutArgument cannot run as a population .*aten::mul.out.*an operation that vmap cannot batch.*reglab.fit"),
], ids=["random-call", "data-dependent-branch", "out-argument"])
def test_unbatchable_models_get_one_clear_error(build, match):
    with pytest.raises(NotBatchable, match=match) as info:
        reglab.train_population(build, None, [0, 1], train=tabular(), epochs=1, progress=False)
    assert "\n" not in str(info.value)


class Normalized(nn.Module):
    """weight_norm (per output row, and over the whole weight) and spectral_norm parametrizations
    (spectral norm's power iteration updates its vectors in place each training step), dropout and
    an L2 penalty on the parametrized original."""

    def __init__(self, rate=0.0):
        super().__init__()
        from torch.nn.utils.parametrizations import spectral_norm, weight_norm

        self.a, self.b = weight_norm(nn.Linear(8, 8)), spectral_norm(nn.Linear(8, 8))
        self.c = weight_norm(nn.Linear(8, 8), dim=None)
        self.drop, self.out = nn.Dropout(rate), nn.Linear(8, 1)
        reglab.regularize(self.b, penalties={"parametrizations.weight.original": reglab.L2(1e-3)})

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.c(self.b(torch.relu(self.a(x)))))))


def test_weight_norm_and_spectral_norm_members_equal_their_fits(float64):
    result = check_family(Normalized, tabular(), [dict(rate=0.0), dict(rate=0.3)], epochs=5)
    u = [m.b.parametrizations.weight[0]._u for m in result.models]
    assert not torch.equal(u[0], u[1])   # each member's own power-iteration vectors, compared with fit's


class Bag(nn.Module):
    def __init__(self, rate=0.0, mode="mean", padding_idx=0):
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 8, mode=mode, padding_idx=padding_idx)
        self.drop, self.out = nn.Dropout(rate), nn.Linear(8, 1)

    def forward(self, x):
        return self.out(self.drop(self.bag(x)))


@pytest.mark.filterwarnings("error:There is a performance drop")   # vmap's member-by-member fallback
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_bag_members_equal_their_fits(float64, mode, padding_idx):
    """Fixed-length bags run batched (PyTorch's embedding_bag has no batching rule with a padding
    index); the padding left out of each bag and out of training, an all-padding bag gives zeros."""
    x, y = tokens()
    x = x.copy()
    x[:3] = 0   # bags made only of token 0: the padding, where there is one
    result = check_family(lambda rate=0.0: Bag(rate, mode, padding_idx), (x, y), [dict(rate=0.0), dict(rate=0.3)],
                          epochs=3)
    if padding_idx is not None:
        assert all(bool((m.bag.weight[0] == 0).all()) for m in result.models)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, x):
        return self.lin(x), x


@pytest.mark.parametrize("members", [1, 2])
def test_a_forward_that_returns_a_tuple_gets_one_clear_error_in_fit_and_populations(members):
    match = "returned a tuple, not a tensor; reglab trains on one tensor of predictions: return only that"
    with pytest.raises(ValueError, match=match):
        reglab.fit(TwoOutputs(), tabular(), epochs=1, progress=False)
    with pytest.raises(ValueError, match=match):
        reglab.train_population(TwoOutputs, None, list(range(members)), train=tabular(), epochs=1, progress=False)


def test_a_population_of_one_equals_its_fit(float64):
    """One member runs without vmap after its first step, BatchNorm and recurrent layers (the GRU; not
    the LSTM, which draws dropout between its layers) through PyTorch's own kernels: still equal to fit."""
    build, data, configs = FAMILIES["residual-batchnorm1d"]
    check_family(build, data(), [configs[1]], seeds=(3,), epochs=5)
    build, data, configs = FAMILIES["lstm"]
    check_family(build, data(), [configs[1]], seeds=(3,), epochs=3)
    build, data, configs = FAMILIES["transformer-attention"]
    check_family(build, data(), [configs[1]], seeds=(3,), epochs=3)


class TiedEmbedder(nn.Module):
    """The embedding table is also the output layer's weight (one tensor under two names)."""

    def __init__(self, rate=0.0):
        super().__init__()
        self.embed, self.drop = nn.Embedding(20, 8), nn.Dropout(rate)
        self.decode = nn.Linear(8, 20)
        self.decode.weight = self.embed.weight
        self.out = nn.Linear(20, 1)

    def forward(self, x):
        return self.out(self.decode(self.drop(self.embed(x))).mean(1))


def test_tied_weights_stay_tied_in_a_population(float64):
    """Members swap their tensors into the base module's slots; a tensor under two names (here the
    embedding and the decoder) takes the general ``functional_call`` route, which keeps them one."""
    pop = engine.make_population([TiedEmbedder(), TiedEmbedder()])
    assert pop._slots is None and "decode.weight" not in pop.param_names   # one tensor, one name
    assert engine.make_population([Embedder(), Embedder()])._slots is not None
    result = check_family(TiedEmbedder, tokens(), [dict(rate=0.0), dict(rate=0.3)], epochs=4)
    for model in result.models:
        assert model.decode.weight is model.embed.weight


def test_a_population_of_one_still_refuses_what_cannot_batch():
    with pytest.raises(NotBatchable, match="draws random numbers"):
        reglab.train_population(RandomInForward, None, [0], train=tabular(), epochs=2, progress=False)


class _Norms(nn.Module):
    """BatchNorm1d on (B, C) and (B, C, L) inputs, BatchNorm2d, one without affine weights, one
    without running statistics."""

    def __init__(self):
        super().__init__()
        self.a = nn.BatchNorm1d(6, momentum=0.3)
        self.b = nn.BatchNorm1d(6, affine=False)
        self.c = nn.BatchNorm2d(6, track_running_stats=False)

    def forward(self, x):                        # x (B, 6)
        h = self.a(x)
        h = self.b(h.unsqueeze(-1).expand(-1, -1, 3) * torch.arange(1.0, 4.0))
        return self.c(h.unsqueeze(-1)).sum((2, 3))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_batchnorm_of_all_members_in_one_kernel_call_is_each_members_own(monkeypatch, training, shared):
    """Under vmap, every member's BatchNorm runs as one call of PyTorch's kernel on the stacked tensors
    (member p's channel c as channel p·C + c): outputs, weight gradients and running statistics are bit
    for bit each member's own BatchNorm; the batched formulas it replaces (still the path for
    momentum=None) agree to float32 rounding."""
    from reglab.population import functional

    calls = []
    stacked = functional._stacked_batch_norm

    def counted(m, x):
        out = stacked(m, x)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(functional, "_stacked_batch_norm", counted)
    P, g = 3, torch.Generator().manual_seed(0)
    start = []
    for i in range(P):
        torch.manual_seed(i)
        m = _Norms()
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if mod.affine:
                    mod.weight.data.uniform_(0.5, 1.5, generator=g)
                    mod.bias.data.normal_(generator=g)
                if mod.track_running_stats:
                    mod.running_mean.normal_(generator=g)
                    mod.running_var.uniform_(0.5, 2.0, generator=g)
        start.append(m.train(training))
    x = torch.randn(5, 6, generator=g) if shared else torch.randn(P, 5, 6, generator=g)

    def population():
        pop = ModulePopulation([copy.deepcopy(m) for m in start])
        out, _ = pop.forward(x, engine.ForwardMode(training, [torch.Generator() for _ in range(P)]), shared=shared)
        return pop, out, torch.autograd.grad(out.sum(), pop.params)

    pop, out, grads = population()
    assert calls == [True] * 3, "the stacked kernel did not run for every BatchNorm"
    for i in range(P):
        ref = copy.deepcopy(start[i])
        want = ref(x if shared else x[i])
        want.sum().backward()
        assert torch.equal(out[i], want)
        for name, grad in zip(pop.param_names, grads):
            assert torch.equal(grad[i], ref.get_parameter(name).grad), name
        for name, buf in ref.named_buffers():
            assert torch.equal(pop.buffers[pop.buffer_names.index(name)][i], buf), name

    monkeypatch.setattr(functional, "_unwrap_batched", None)   # the batched formulas
    pop2, out2, grads2 = population()
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads2, grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(pop2.buffers, pop.buffers):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


class _SelfAttention(nn.Module):
    """An encoder layer (self-attention without the weights) and a bare nn.MultiheadAttention, with
    masks: ``padding`` (a key padding mask from each member's own batch, never a whole row),
    ``full`` (padding that masks every key of the first sequence), ``causal`` (the layer's causal hint and
    a float mask), ``3d`` (a per-head float mask from the batch)."""

    def __init__(self, batch_first=True, bias=True, masks=()):
        super().__init__()
        self.batch_first, self.masks = batch_first, masks
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first, bias=bias)
        self.attn = nn.MultiheadAttention(8, 4, dropout=0.0, batch_first=batch_first, bias=bias)

    def forward(self, x):
        xb = x if self.batch_first else x.transpose(0, 1)                      # (B, L, E)
        B, L = xb.shape[:2]
        pad = causal = heads = None
        if "padding" in self.masks or "full" in self.masks:
            pad = xb[..., 0] > 0.5
            if "full" in self.masks:   # the batch's first sequence: every key masked
                pad = pad | (torch.arange(B) == 0).unsqueeze(1)
            else:
                pad = pad & (torch.arange(L) > 0)
        if "causal" in self.masks:
            causal = nn.Transformer.generate_square_subsequent_mask(L, dtype=x.dtype)
        if "3d" in self.masks:
            heads = (xb[..., 1:2] * xb[..., 1].unsqueeze(1)).repeat_interleave(4, 0)   # (B·4, L, L)
        if pad is not None and (causal is not None or heads is not None):   # float with float (bool would warn)
            pad = torch.zeros(pad.shape, dtype=x.dtype).masked_fill(pad, float("-inf"))
        h = self.layer(x, src_mask=causal, src_key_padding_mask=pad, is_causal=causal is not None)
        return self.attn(h, h, h, key_padding_mask=pad, attn_mask=heads if heads is not None else causal,
                         need_weights=False, is_causal=causal is not None and heads is None)[0] + h


def _stacked_attention_calls(monkeypatch):
    """Record whether each call of the stacked self-attention applied (True) or declined (False)."""
    from reglab.population import functional

    calls = []
    stacked = functional._stacked_self_attention

    def counted(*args):
        out = stacked(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(functional, "_stacked_self_attention", counted)
    return calls


def _attention_against_members(start, x, shared, training, atol=1e-12):
    """A population's forward and gradients against each member's own module's (float64)."""
    P = len(start)
    pop = ModulePopulation([copy.deepcopy(m) for m in start])
    out, _ = pop.forward(x, engine.ForwardMode(training, [torch.Generator() for _ in range(P)]), shared=shared)
    grads = torch.autograd.grad(out.square().sum(), pop.params)
    for i in range(P):
        ref = copy.deepcopy(start[i])
        want = ref(x if shared else x[i])
        want.square().sum().backward()
        torch.testing.assert_close(out[i], want, atol=atol, rtol=0)
        for name, grad in zip(pop.param_names, grads):
            torch.testing.assert_close(grad[i], ref.get_parameter(name).grad, atol=atol * 10, rtol=0, msg=name)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_self_attention_of_all_members_on_the_stacked_tensors_is_each_members_own(monkeypatch, float64, batch_first,
                                                                                  bias, training, shared):
    """Under vmap, self-attention without its weights runs once on all members' stacked tensors:
    outputs and gradients are each member's own module's (float64: summation order only)."""
    calls = _stacked_attention_calls(monkeypatch)
    P, g = 3, torch.Generator().manual_seed(0)
    start = []
    for i in range(P):
        torch.manual_seed(i)
        start.append(_SelfAttention(batch_first, bias).train(training))
    shape = (5, 6, 8) if batch_first else (6, 5, 8)
    x = torch.randn(shape, generator=g) if shared else torch.randn((P,) + shape, generator=g)
    _attention_against_members(start, x, shared, training)
    assert calls == [True, True], "the stacked path did not run for both attention modules under vmap"


@pytest.mark.parametrize("masks", [("padding",), ("full",), ("causal",), ("padding", "causal"), ("3d",),
                                   ("3d", "padding")])
@pytest.mark.parametrize("batch_first", [True, False])
def test_masked_self_attention_on_the_stacked_tensors_is_each_members_own(monkeypatch, float64, masks, batch_first):
    """Key padding masks (each member's own, rows with every key masked included), causal and
    per-head masks: merged as PyTorch's function merges them, the same outputs and gradients."""
    calls = _stacked_attention_calls(monkeypatch)
    P, g = 3, torch.Generator().manual_seed(1)
    start = []
    for i in range(P):
        torch.manual_seed(i)
        start.append(_SelfAttention(batch_first, masks=masks).train())
    x = torch.randn((P, 5, 6, 8) if batch_first else (P, 6, 5, 8), generator=g)
    _attention_against_members(start, x, False, True)
    assert calls == [True, True], "the stacked path did not run for both attention modules under vmap"


class _MaskedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.2, batch_first=True)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        pad = (x[..., 0] > 1.0) & (torch.arange(x.shape[1]) > 0)   # a key padding mask from each member's batch
        masked = self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        weighted = self.attn(x, x, x)[0]           # need_weights=True (the default)
        return self.out((masked + weighted).mean(1))


def test_masked_attention_with_dropout_and_attention_weights_match_their_fits(monkeypatch, float64):
    """Masked self-attention with dropout on the stacked tensors (each member's masks from its own
    generator) and attention that returns its weights (PyTorch's function under vmap) in one model:
    each member equals its standalone fit; only the first takes the stacked path."""
    calls = _stacked_attention_calls(monkeypatch)
    check_family(lambda rate=0.0: _MaskedAttention(), sequences(d=8), [dict()], epochs=3)
    assert calls and all(calls), "the masked self-attention did not run on the stacked tensors"
    pop = ModulePopulation([_MaskedAttention() for _ in range(2)])
    calls.clear()
    pop.forward(torch.randn(2, 4, 6, 8), engine.ForwardMode(True, [torch.Generator() for _ in range(2)]))
    assert calls == [True], "attention returning its weights took the stacked path, or the masked one did not"
