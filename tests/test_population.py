"""reglab.train_population: every member against its standalone reglab.fit, the fused fast path
against the generic one, divergence isolation, chunking, errors and the PopulationResult API."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_moons
from torch import nn

import reglab
from reglab.population import engine, fused, layers

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


# --- data ------------------------------------------------------------------------------------

def blobs(n=48, d=4, seed=0, noise=0.8):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X[:, 0] - X[:, 1] + noise * torch.randn(n, generator=g) > 0).long()
    return X, y


def three_classes(n=48, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = torch.bucketize(X[:, 0] + 0.5 * X[:, 1] + 0.3 * torch.randn(n, generator=g), torch.tensor([-0.5, 0.5]))
    return X, y


def regression(n=48, d=4, seed=0, outputs=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = torch.stack([torch.sin(X[:, 0]) + 0.5 * X[:, 1], X[:, 2] * X[:, 3]], 1)[:, :outputs]
    y = y + 0.1 * torch.randn(y.shape, generator=g)
    return X, (y[:, 0] if outputs == 1 else y)


@functools.lru_cache(maxsize=None)
def _digits():
    data = load_digits(n_class=4)
    return torch.tensor(data.data[:144] / 16.0, dtype=torch.float32), torch.tensor(data.target[:144])


def digits(shape):
    """Four digit classes: 96 training and 48 validation images, as ``(n, *shape)``."""
    X, y = _digits()
    X = X.reshape((-1,) + shape)
    return (X[:96], y[:96]), (X[96:], y[96:])


# --- models ----------------------------------------------------------------------------------

def mlp_build(kernel=None, constraint=None, out_penalty=None, out_constraint=None, dropout=0.0,
              activity=None, activity_after=False, convention="mean", hidden=16, d=4, out=1):
    first, act, last = nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, out)
    reglab.regularize(first, kernel=kernel, kernel_constraint=constraint)
    reglab.regularize(last, kernel=out_penalty, kernel_constraint=out_constraint)
    if activity is not None:
        reglab.regularize(act if activity_after else first, activity=activity, activity_convention=convention)
    return nn.Sequential(first, act, nn.Dropout(dropout), last)


MLP_CONFIGS = [
    dict(kernel=reglab.L2(1e-3), constraint=reglab.MaxNorm(1.0), dropout=0.2, activity=reglab.L1(1e-3)),
    dict(kernel=reglab.L1(1e-2), dropout=0.0, activity=reglab.L1(1e-2), activity_after=True, convention="sum"),
    dict(kernel=reglab.L1L2(1e-3, 1e-2), constraint=reglab.UnitNorm(), out_constraint=reglab.NonNeg(), dropout=0.5),
    dict(out_penalty=reglab.L2(0.1), dropout=0.1, activity=reglab.L2(1e-3), activity_after=True),
]


def cnn_build(kernel=None, constraint=None, dense=None):
    conv, dense_layer = nn.Conv2d(1, 4, 3), nn.Linear(4 * 3 * 3, 4)
    reglab.regularize(conv, kernel=kernel, kernel_constraint=constraint)
    reglab.regularize(dense_layer, kernel=dense)
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), dense_layer)


def conv1d_build(kernel=None, constraint=None, dropout=0.0):
    conv = nn.Conv1d(8, 6, 3, padding=1)
    reglab.regularize(conv, kernel=kernel, kernel_constraint=constraint)
    return nn.Sequential(conv, nn.Tanh(), nn.MaxPool1d(2), nn.Flatten(), nn.Dropout(dropout), nn.Linear(6 * 4, 4))


def rnn_build(cell="LSTM", kernel=None, recurrent=None, recurrent_constraint=None, hidden=6):
    rnn = getattr(nn, cell)(8, hidden, batch_first=True)
    reglab.regularize(rnn, kernel=kernel, recurrent=recurrent, recurrent_constraint=recurrent_constraint)
    return nn.Sequential(rnn, reglab.RNNOutput(), nn.Linear(hidden, 4))


def regression_build(noise=0.0, kernel=None, dropout=0.0, activity=None, on_container=False):
    first = nn.Linear(4, 12)
    reglab.regularize(first, kernel=kernel, activity=activity)
    model = nn.Sequential(reglab.GaussianNoise(noise), first, nn.Tanh(), nn.Dropout(dropout), nn.Linear(12, 1))
    if on_container:   # rules attached to the Sequential by dotted parameter name
        reglab.regularize(model, penalties={"4.weight": reglab.L2(1e-2)}, constraints={"1.weight": reglab.MaxNorm(0.8)})
    return model


def dropout_then_noise_build(p=0.0):
    # The noise reaches the output even when Dropout(p=1) zeroes everything before it.
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(p), nn.Linear(8, 8), nn.ReLU(),
                         reglab.GaussianNoise(0.5), nn.Linear(8, 1))


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity}


def shallow_build(act="relu", l1=0.0, l2=0.0, bias_l2=0.0, max_norm=None, hidden=8, out=1):
    """Linear → activation → Linear without activity penalties: the fused fast path's shape."""
    first, last = nn.Linear(4, hidden), nn.Linear(hidden, out)
    if l1 or l2:
        reglab.regularize(first, kernel=reglab.L1L2(l1, l2))
    if bias_l2:
        reglab.regularize(last, bias=reglab.L2(bias_l2))
    if max_norm is not None:
        reglab.regularize(last, kernel_constraint=reglab.MaxNorm(max_norm))
    return nn.Sequential(first, ACTIVATIONS[act](), last)


# --- helpers ---------------------------------------------------------------------------------

def population(build, configs, seeds, train, validation=None, *, early_stopping=None, **kwargs):
    es = reglab.EarlyStopping(**early_stopping) if early_stopping is not None else None
    return reglab.train_population(build, configs, seeds, train=train, validation=validation,
                                   early_stopping=es, progress=False, **kwargs)


def standalone(build, config, seed, train, validation=None, *, early_stopping=None, lr=None, **kwargs):
    model = build(**config)
    callbacks = [reglab.EarlyStopping(**early_stopping)] if early_stopping is not None else []
    history = reglab.fit(model, train, validation, seed=seed, lr=lr, callbacks=callbacks, progress=False, **{"preset": "keras", **kwargs})
    return model, history


def assert_member_equals(result, i, model, history, rtol=0.0, slack=None):
    """Member ``i`` of ``result`` ends where the standalone ``model``/``history`` ended.

    ``rtol`` is for diverged members, whose weights and losses can be ~1e20; a member that diverged
    inside Adam's state has NaN weights, in both runs alike."""
    mine, theirs = result.models[i].state_dict(), model.state_dict()
    assert mine.keys() == theirs.keys()
    for key in theirs:
        if slack is not None:
            assert_close_within(mine[key], theirs[key], ATOL, slack[i][key], f"member {i} {key}")
            continue
        torch.testing.assert_close(mine[key], theirs[key], atol=ATOL, rtol=rtol, equal_nan=bool(result.diverged[i]),
                                   msg=lambda m: f"member {i} {key}: {m}")
    ran = len(history.epoch)
    assert result.epochs_run[i] == ran, f"member {i}"
    assert result.stopped_epoch[i] == (-1 if history.stopped_epoch is None else history.stopped_epoch), f"member {i}"
    assert result.best_epoch[i] == (-1 if history.best_epoch is None else history.best_epoch), f"member {i}"
    assert bool(result.diverged[i]) == history.diverged, f"member {i}"
    if ran:
        assert set(history.history) == set(result.history)
    for key, values in history.history.items():
        np.testing.assert_allclose(result.history[key][i, :ran], values, atol=ATOL, rtol=rtol,
                                   err_msg=f"member {i} {key}")
    for key, values in result.history.items():
        assert np.isnan(values[i, ran:]).all(), f"member {i} {key} logged after it stopped"


def assert_matches_standalone(build, configs, seeds, train, validation=None, *, lr=None, **kwargs):
    """Train the population and every member on its own; returns the population's result."""
    result = population(build, configs, seeds, train, validation, lr=lr, **kwargs)
    assert len(result) == len(configs) * len(seeds)
    lrs = lr if isinstance(lr, (list, tuple)) else [lr] * len(configs)
    for c, config in enumerate(configs):
        for s, seed in enumerate(seeds):
            model, history = standalone(build, config, seed, train, validation, lr=lrs[c], **kwargs)
            assert_member_equals(result, c * len(seeds) + s, model, history)
    return result


def nudged(data, direction):
    """``(X, y)`` with every input moved by one float32 ulp towards ``direction`` (±inf)."""
    X, y = data
    return torch.nextafter(X, torch.full_like(X, direction)), y


def rounding_sensitivity(run, train, validation):
    """Per member and weight, how far ``run(train, validation)`` moves when every input moves by
    one ulp: the size of a rounding-level perturbation after training.

    Two correct float32 implementations that add in different orders differ by such perturbations.
    Usually they stay at ~1e-7; where a gradient cancels to near zero, Adam's step divides it by
    eps_hat = eps / sqrt(1 - beta_2 ** t) (3.2e-6 at the first step) and amplifies the difference by
    up to lr / eps_hat (~1e4 at lr 0.03): e.g. a hidden weight whose data gradient, 5.9e-3 summed from
    terms of total size 0.12, cancels its L2 gradient to 1.9e-7 moves by 4.7e-5 after one step from a
    5.6e-9 difference in the sum, 1.5 % of one float32 rounding of those terms. Tolerances for such
    comparisons are ATOL plus a few times this measured sensitivity, never a blanket looser bound."""
    base = run(train, validation)
    spread = [{k: torch.zeros_like(v) for k, v in m.state_dict().items()} for m in base.models]
    for direction in (float("inf"), -float("inf")):
        moved = run(nudged(train, direction), validation)
        for i, (m0, m1) in enumerate(zip(base.models, moved.models)):
            for (k, v0), v1 in zip(m0.state_dict().items(), m1.state_dict().values()):
                spread[i][k] = torch.maximum(spread[i][k], (v1 - v0).abs())
    return spread


def assert_close_within(actual, expected, atol, slack, msg):
    """|actual - expected| <= atol + 4 * slack element-wise (slack: a rounding sensitivity)."""
    bound = atol + 4 * slack
    excess = (actual - expected).abs() - bound
    assert not bool((excess > 0).any()), (f"{msg}: greatest difference {(actual - expected).abs().max():.3g}, "
                                          f"greatest excess over atol + 4 x sensitivity {excess.max():.3g}")


def assert_same_results(a, b, atol=0.0, slack=None):
    assert len(a) == len(b)
    for key in ("epochs_run", "stopped_epoch", "best_epoch", "diverged"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.history.keys() == b.history.keys()
    for key in a.history:
        np.testing.assert_allclose(a.history[key], b.history[key], atol=atol, rtol=0, err_msg=key)
    for i, (ma, mb) in enumerate(zip(a.models, b.models)):
        for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values()):
            if slack is not None:
                assert_close_within(pa, pb, atol, slack[i][name], f"member {i} {name}")
            else:
                torch.testing.assert_close(pa, pb, atol=atol, rtol=0, msg=lambda m: f"member {i} {name}: {m}")


@pytest.fixture
def chunks(monkeypatch):
    """Records ``(members, fused activation code or None)`` of every chunk trained."""
    seen = []
    real = engine._train_chunk

    def spy(pop, *args, **kwargs):
        seen.append((pop.P, pop.fused.act if pop.fused is not None else None))
        return real(pop, *args, **kwargs)

    monkeypatch.setattr(engine, "_train_chunk", spy)
    return seen


def sizes(chunks):
    return [members for members, _ in chunks]


def ran_fused(chunks):
    return [code is not None for _, code in chunks]


# --- 1. every member equals its standalone fit -------------------------------------------------

@pytest.mark.parametrize("batch_size, early_stopping", [
    (16, dict(monitor="val_loss", patience=2, restore_best_weights=True)),
    (64, dict(monitor="val_loss", patience=0)),
], ids=["shuffled-patience2-restore", "one-batch-patience0"])
def test_mlp_members_equal_standalone_fits(batch_size, early_stopping, chunks):
    train, val = blobs(48), blobs(48, seed=1)
    epochs = 40
    result = assert_matches_standalone(mlp_build, MLP_CONFIGS, [0, 1], train, val, epochs=epochs,
                                       batch_size=batch_size, lr=0.01, early_stopping=early_stopping)
    assert ran_fused(chunks) == [False]   # a Dropout layer: the generic path
    # Early stopping really ended some members before the last epoch, and not all of them.
    stopped = result.stopped_epoch >= 0
    assert stopped.any() and not stopped.all()
    assert (result.epochs_run[stopped] < epochs).all()
    np.testing.assert_array_equal(result.epochs_run[stopped], result.stopped_epoch[stopped] + 1)
    if early_stopping.get("restore_best_weights"):
        assert (result.best_epoch >= 0).all()
        assert (result.best_epoch[stopped] == result.stopped_epoch[stopped] - 2).all()
    else:
        assert (result.best_epoch == -1).all()


def test_mlp_members_equal_standalone_fits_monitoring_training_loss():
    train = blobs(48)
    result = assert_matches_standalone(mlp_build, MLP_CONFIGS[:2], [3], train, epochs=20, batch_size=20, lr=0.05,
                                       early_stopping=dict(monitor="loss", patience=1, restore_best_weights=True))
    assert set(result.history) == {"loss", "data_loss", "penalty", "accuracy"}


def test_regression_members_equal_standalone_fits():
    configs = [dict(noise=0.0, kernel=reglab.L2(1e-2), dropout=0.1, activity=reglab.L1(1e-3)),
               dict(noise=0.3, dropout=0.0, on_container=True),
               dict(noise=0.1, kernel=reglab.L1(1e-3), dropout=0.3, activity=reglab.L2(1e-2))]
    result = assert_matches_standalone(regression_build, configs, [0, 5], regression(48), regression(32, seed=1),
                                       epochs=15, batch_size=16, lr=0.01)
    assert result.task.name == "regression"
    assert set(result.history) >= {"mae", "val_mae"}


def test_cnn_members_equal_standalone_fits():
    train, val = digits((1, 8, 8))
    configs = [dict(kernel=reglab.L2(1e-3), dense=reglab.L1(1e-3)),
               dict(constraint=reglab.MaxNorm(0.5)),
               dict(kernel=reglab.L1L2(1e-2, 1e-2), constraint=reglab.NonNeg())]
    result = assert_matches_standalone(cnn_build, configs, [0, 1], train, val, epochs=12, batch_size=32, lr=0.01,
                                       early_stopping=dict(patience=1, restore_best_weights=True))
    assert result.task.name == "multiclass"


def test_conv1d_members_equal_standalone_fits():
    train, val = digits((8, 8))
    configs = [dict(kernel=reglab.L2(1e-2), dropout=0.3), dict(constraint=reglab.UnitNorm(), dropout=0.0)]
    result = assert_matches_standalone(conv1d_build, configs, [0, 1], train, val, epochs=8, batch_size=128, lr=0.02,
                                       early_stopping=dict(monitor="val_accuracy", patience=1, start_from_epoch=2,
                                                           restore_best_weights=True))
    assert (result.best_epoch >= 2).all()


def test_dropout_rates_including_one_equal_standalone_fits():
    # nn.Dropout(p=1) outputs zeros and draws nothing: the noise drawn after it must not shift.
    configs = [dict(p=0.0), dict(p=0.5), dict(p=1.0)]
    result = assert_matches_standalone(dropout_then_noise_build, configs, [0, 1], blobs(48), blobs(24, seed=1),
                                       epochs=4, batch_size=16, lr=0.01)
    assert not result.diverged.any()


@pytest.mark.parametrize("optimizer, preset, momentum, weight_decay", [
    ("adamw", "keras", 0.0, None), ("adam", "torch", 0.0, None), ("adam", "keras", 0.0, 0.01),
    ("sgd", "keras", 0.9, None), ("sgd", "torch", 0.5, 0.01),
])
@pytest.mark.parametrize("path", ["generic", "fused"])
def test_optimizers_and_presets_equal_standalone_fits(optimizer, preset, momentum, weight_decay, path, chunks):
    build, configs = (shallow_build, [dict(l2=1e-3), dict(l1=1e-3, max_norm=0.5)]) if path == "fused" else \
        (mlp_build, MLP_CONFIGS[:2])
    assert_matches_standalone(build, configs, [0, 1], blobs(48), blobs(24, seed=1), epochs=4, batch_size=16, lr=0.01,
                              optimizer=optimizer, preset=preset, momentum=momentum, weight_decay=weight_decay)
    assert ran_fused(chunks) == [path == "fused"]


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_members_equal_standalone_fits(cell):
    train, val = digits((8, 8))
    configs = [dict(cell=cell, kernel=reglab.L2(1e-3), recurrent=reglab.L1(1e-3)),
               dict(cell=cell, recurrent=reglab.L2(1e-2), recurrent_constraint=reglab.MaxNorm(1.0)),
               dict(cell=cell, kernel=reglab.L2(1e-2), recurrent_constraint=reglab.UnitNorm())]
    # (A strong L1 on an LSTM kernel keeps weights hopping around 0, where rounding-level differences
    # between PyTorch's LSTM and the population's cells flip the L1 gradient's sign: chaotic, not a bug.)
    result = assert_matches_standalone(rnn_build, configs, [0, 1], train, val, epochs=8, batch_size=32, lr=0.02,
                                       early_stopping=dict(patience=0))
    # The constrained recurrent kernels really are projected.
    norms = result.models[2].get_submodule("0").weight_hh_l0.detach().norm(dim=1)
    assert (norms <= 1.0 + 1e-6).all()
    norms = result.models[4].get_submodule("0").weight_hh_l0.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)


# --- 2. the fused fast path agrees with the generic path -------------------------------------

FUSED_TASKS = {
    "binary": (dict(out=1), lambda: (blobs(40), blobs(24, seed=1))),
    "multiclass": (dict(out=3), lambda: (three_classes(40), three_classes(24, seed=1))),
    "regression": (dict(out=2), lambda: (regression(40, outputs=2), regression(24, seed=1, outputs=2))),
}


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("task", list(FUSED_TASKS))
def test_fused_path_equals_generic_path_and_standalone(task, act, chunks, monkeypatch):
    shape, data = FUSED_TASKS[task]
    train, val = data()
    build = functools.partial(shallow_build, act=act, **shape)
    configs = [dict(l2=1e-3), dict(l1=1e-3, max_norm=0.5), dict(l1=1e-4, l2=1e-2, bias_l2=1e-2)]
    for batch_size, lr in ((16, 0.02), (64, [0.02, 0.01, 0.03])):
        options = dict(epochs=6, batch_size=batch_size, lr=lr,
                       early_stopping=dict(patience=1, restore_best_weights=True))
        fast = population(build, configs, [0, 1], train, val, **options)
        assert chunks[-1][1] == fused.ACTIVATIONS[ACTIVATIONS[act]], "the fused path did not run"
        with monkeypatch.context() as patch:
            patch.setattr(fused, "plan", lambda layers: None)
            # The two paths add in different orders: weights agree to ATOL except where Adam
            # amplifies a rounding difference (see rounding_sensitivity), measured on the generic path.
            slack = rounding_sensitivity(lambda t, v: population(build, configs, [0, 1], t, v, **options), train, val)
            generic = population(build, configs, [0, 1], train, val, **options)
        assert chunks[-1][1] is None
        assert_same_results(fast, generic, atol=ATOL, slack=slack)
    # The last (one-batch, per-config lr) population against each standalone fit.
    for c, config in enumerate(configs):
        for s in (0, 1):
            model, history = standalone(build, config, s, train, val, **dict(options, lr=lr[c]))
            assert_member_equals(fast, 2 * c + s, model, history, slack=slack)


def activity_build(act="relu", activity=None, after=False, convention="mean", l2=0.0):
    model = shallow_build(act=act, l2=l2, out=3)
    if activity is not None:
        reglab.regularize(model[1] if after else model[0], activity=activity, activity_convention=convention)
    return model


@pytest.mark.parametrize("after", [False, True], ids=["before-activation", "after-activation"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_fused_path_with_activity_penalties_equals_generic_path(act, after, chunks, monkeypatch):
    train, val = three_classes(40), three_classes(24, seed=1)
    build = functools.partial(activity_build, act=act, after=after)
    configs = [dict(activity=reglab.L1(1e-2)), dict(activity=reglab.L2(1e-2), convention="sum", l2=1e-3),
               dict(activity=reglab.L1L2(1e-3, 1e-3)), dict()]
    for batch_size in (16, 64):
        options = dict(epochs=6, batch_size=batch_size, lr=0.02)
        fast = population(build, configs, [0], train, val, **options)
        assert ran_fused(chunks)[-1], "the fused path did not run"
        with monkeypatch.context() as patch:
            patch.setattr(fused, "plan", lambda layers: None)
            generic = population(build, configs, [0], train, val, **options)
        assert not ran_fused(chunks)[-1]
        assert_same_results(fast, generic, atol=ATOL)
        assert (fast.history["penalty"][:3] > 0).all() and (fast.history["penalty"][3] == 0).all()
    for c, config in enumerate(configs):
        assert_member_equals(fast, c, *standalone(build, config, 0, train, val, **options))


def test_activity_penalties_at_two_positions_match_standalone(chunks):
    # One member penalises before the activation, the other after it.
    train, val = three_classes(40), three_classes(24, seed=1)
    configs = [dict(activity=reglab.L1(1e-2)), dict(activity=reglab.L2(1e-2), after=True)]
    assert_matches_standalone(activity_build, configs, [0, 1], train, val, epochs=5, batch_size=16, lr=0.02)


# --- 3. a diverging member is frozen and leaves the others alone -----------------------------

# The generic path (a Dropout layer rules out the fused one) and the fused path; SGD runs the fused
# data loss with the engine's update, Adam the fully fused step.
DIVERGENCE_MODELS = {"generic": (mlp_build, dict(hidden=8)), "fused": (shallow_build, dict())}
DIVERGENCE_CASES = [("generic", "sgd", 1e6), ("fused", "sgd", 1e6), ("generic", "adam", 1e20), ("fused", "adam", 1e20)]


def diverging_population(path, optimizer, bad_lr, batch_size, chunks):
    build, config = DIVERGENCE_MODELS[path]
    configs = [config, dict(config, l2=1e-3) if path == "fused" else dict(config, kernel=reglab.L2(1e-3))]
    lrs = [0.05 if optimizer == "sgd" else 0.01, bad_lr]
    options = dict(epochs=10, batch_size=batch_size, optimizer=optimizer)
    result = population(build, configs, [0, 1], blobs(48), blobs(24, seed=1), lr=lrs, **options)
    assert ran_fused(chunks) == [path == "fused"]
    fits = [standalone(build, configs[c], s, blobs(48), blobs(24, seed=1), lr=lrs[c], **options)
            for c in (0, 1) for s in (0, 1)]
    return build, configs, lrs, options, result, fits


@pytest.mark.parametrize("batch_size", [16, 48])
@pytest.mark.parametrize("path, optimizer, bad_lr", DIVERGENCE_CASES)
def test_absurd_learning_rate_diverges_alone(path, optimizer, bad_lr, batch_size, chunks):
    build, configs, lrs, options, mixed, fits = diverging_population(path, optimizer, bad_lr, batch_size, chunks)
    np.testing.assert_array_equal(mixed.diverged, [False, False, True, True])
    assert (mixed.epochs_run[2:] < 10).all() and (mixed.epochs_run[:2] == 10).all()
    for i in (2, 3):
        model, history = fits[i]
        assert history.diverged and mixed.epochs_run[i] == len(history.epoch)
        ran = mixed.epochs_run[i]
        assert np.isnan(mixed.history["loss"][i, ran:]).all() and np.isfinite(mixed.history["loss"][i, :ran]).all()
        for key, values in history.history.items():   # huge but finite losses: compare relatively
            np.testing.assert_allclose(mixed.history[key][i, :ran], values, atol=ATOL, rtol=1e-5, err_msg=key)
    # The other members are untouched: as in a population without the bad member, and as on their own.
    clean = population(build, configs[:1], [0, 1], blobs(48), blobs(24, seed=1), lr=lrs[0], **options)
    for i in (0, 1):
        assert not clean.diverged[i]
        for key in clean.history:
            np.testing.assert_allclose(mixed.history[key][i], clean.history[key][i], atol=ATOL, rtol=0, err_msg=key)
        for pa, pb in zip(mixed.models[i].parameters(), clean.models[i].parameters()):
            torch.testing.assert_close(pa, pb, atol=ATOL, rtol=0)
        assert_member_equals(mixed, i, *fits[i])


@pytest.mark.parametrize("path, optimizer, bad_lr", DIVERGENCE_CASES)
def test_diverged_member_keeps_its_last_finite_weights(path, optimizer, bad_lr, chunks):
    *_, result, fits = diverging_population(path, optimizer, bad_lr, 48, chunks)
    for i in (2, 3):
        assert all(torch.isfinite(p).all() for p in result.models[i].parameters())
        # The weights are huge (~1e20) but finite: compare them relatively.
        assert_member_equals(result, i, *fits[i], rtol=1e-5)


def test_absurd_penalty_diverges_alone_and_restores_best_weights():
    train, val = blobs(48), blobs(24, seed=1)
    configs = [dict(kernel=reglab.L2(1e-3), dropout=0.2), dict(kernel=reglab.L2(1e30), dropout=0.2),
               dict(kernel=reglab.L1(1e-2), dropout=0.0)]
    options = dict(epochs=12, batch_size=16, lr=0.01, early_stopping=dict(patience=3, restore_best_weights=True))
    result = assert_matches_standalone(mlp_build, configs, [0, 1], train, val, **options)
    np.testing.assert_array_equal(result.diverged, [False, False, True, True, False, False])
    assert (result.epochs_run[2:4] == 0).all()
    clean = population(mlp_build, configs[::2], [0, 1], train, val, **options)
    for mixed_i, clean_i in ((0, 0), (1, 1), (4, 2), (5, 3)):
        for key in clean.history:
            np.testing.assert_allclose(result.history[key][mixed_i], clean.history[key][clean_i], atol=ATOL, rtol=0)


# --- 4. chunks and groups --------------------------------------------------------------------

def test_chunking_gives_the_same_results(chunks):
    train, val = blobs(48), blobs(24, seed=1)
    configs = MLP_CONFIGS[:3]
    options = dict(epochs=10, batch_size=16, lr=0.01, early_stopping=dict(patience=1, restore_best_weights=True))
    whole = population(mlp_build, configs, [0, 1], train, val, **options)
    assert sizes(chunks) == [6]
    for kwargs, expected in ((dict(chunk_size=1), [1] * 6), (dict(chunk_size=3), [3, 3]), (dict(chunk_size=4), [4, 2]),
                             (dict(memory_budget="1KiB"), [1] * 6)):
        chunks.clear()
        chunked = population(mlp_build, configs, [0, 1], train, val, **kwargs, **options)
        assert sizes(chunks) == expected, kwargs
        assert_same_results(chunked, whole, atol=ATOL)


def test_memory_budget_sets_the_chunk_size(chunks):
    train = blobs(48)
    template = mlp_build()
    per_member = engine._member_bytes(template, train[0].to(torch.float32), 16)
    population(mlp_build, MLP_CONFIGS, [0, 1], train, epochs=1, batch_size=16, memory_budget=3 * per_member + 1)
    assert sizes(chunks) == [3, 3, 2]


def test_different_architectures_run_in_separate_groups(chunks):
    train, val = blobs(48), blobs(24, seed=1)
    configs = [dict(hidden=8, kernel=reglab.L2(1e-3)), dict(hidden=16, kernel=reglab.L2(1e-3), dropout=0.2),
               dict(hidden=8, constraint=reglab.MaxNorm(1.0), activity=reglab.L1(1e-3))]
    result = assert_matches_standalone(mlp_build, configs, [0, 1], train, val, epochs=6, batch_size=16, lr=0.01)
    assert sorted(sizes(chunks)) == [2, 4]
    assert [m["config_index"] for m in result.members] == [0, 0, 1, 1, 2, 2]
    assert [result.models[i][0].out_features for i in range(6)] == [8, 8, 16, 16, 8, 8]


# --- 5. clear errors -------------------------------------------------------------------------

def bad_value(**kwargs):
    options = dict(configs=[{}], seeds=[0], train=blobs(8), epochs=1)
    options.update(kwargs)
    build = options.pop("build", shallow_build)
    return reglab.train_population(build, progress=False, **options)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(configs=[]), ValueError, "'configs'.*empty"),
    (dict(seeds=[]), ValueError, "'seeds'.*empty"),
    (dict(configs=[3]), TypeError, "dict"),
    (dict(seeds=[-1]), ValueError, "'seed'"),
    (dict(epochs=0), ValueError, "'epochs'"),
    (dict(batch_size=0), ValueError, "'batch_size'"),
    (dict(chunk_size=0), ValueError, "'chunk_size'"),
    (dict(memory_budget="lots"), ValueError, "'memory_budget'.*'lots'"),
    (dict(memory_budget="1XB"), ValueError, "'memory_budget'"),
    (dict(memory_budget="-1GiB"), ValueError, "'memory_budget'"),
    (dict(memory_budget=0), ValueError, "'memory_budget'"),
    (dict(memory_budget="inf"), ValueError, "'memory_budget'"),
    (dict(early_stopping=reglab.EarlyStopping(monitor="val_loss")), ValueError, "validation"),
    (dict(early_stopping=reglab.EarlyStopping(monitor="val_accuracy")), ValueError, "validation"),
    (dict(early_stopping="val_loss"), TypeError, "EarlyStopping"),
    (dict(configs=[{}, {}], lr=[0.1]), ValueError, "'lr' parameter has 1 values for 2 configs"),
    (dict(configs=[{}], lr=[0.1, 0.2, 0.3]), ValueError, "'lr' parameter has 3 values for 1 configs"),
    (dict(build=lambda: "not a model"), TypeError, "must return an nn.Module.*str"),
    (dict(build=lambda: None), TypeError, "must return an nn.Module"),
    (dict(preset="tf"), ValueError, "'preset' parameter of train_population"),
    (dict(optimizer="adadelta"), ValueError, "'optimizer' parameter of train_population"),
    (dict(configs=[{}, {}], label_smoothing=[0.1]), ValueError, "'label_smoothing' parameter has 1 values"),
    (dict(schedule={"kind": "warp"}), ValueError, "'kind'"),
    (dict(optimizer=torch.optim.LBFGS), ValueError, "not element-wise"),
    (dict(callbacks=[object()]), TypeError, "callbacks must be reglab.Callback"),
    (dict(device="tpu"), ValueError, "'device' parameter of train_population"),
    (dict(schedule="bogus"), TypeError, "'schedule' parameter of train_population"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    built = []
    if "build" not in kwargs:   # refused before any model is built
        kwargs["build"] = lambda: built.append(1) or shallow_build()
    with pytest.raises(error, match=match):
        bad_value(**kwargs)
    assert not built or "early_stopping" in kwargs   # early stopping is checked against the data


def test_early_stopping_on_an_unlogged_metric_raises():
    with pytest.raises(ValueError, match="'val_auc'"):
        bad_value(validation=blobs(8, seed=1), early_stopping=reglab.EarlyStopping(monitor="val_auc"))


# --- 6. PopulationResult ---------------------------------------------------------------------

def test_population_result_api():
    train, val = blobs(48), blobs(24, seed=1)
    configs = [MLP_CONFIGS[0], MLP_CONFIGS[1], dict(hidden=16)]
    seeds = [4, 2]
    result = population(mlp_build, configs, seeds, train, val, epochs=5, batch_size=16, lr=0.01)
    assert len(result) == 6
    assert [(m["config_index"], m["seed"]) for m in result.members] == [(0, 4), (0, 2), (1, 4), (1, 2), (2, 4), (2, 2)]
    assert all(m["config"] is configs[m["config_index"]] for m in result.members)
    assert result.history["loss"].shape == (6, 5)
    np.testing.assert_array_equal(result.epochs_run, 5)
    assert not result.diverged.any()
    assert len({id(m) for m in result.models}) == 6
    for model in result.models:
        assert isinstance(model, nn.Module)
        assert not any(module.training for module in model.modules())
    # Different seeds and configs really give different members.
    assert not torch.equal(result.models[0][0].weight, result.models[1][0].weight)

    for data in (val, train):
        scores = result.evaluate(data)
        assert set(scores) == {"loss", "data_loss", "penalty", "accuracy"}
        for key, values in scores.items():
            assert values.shape == (6,)
            expected = [reglab.evaluate(m, data, batch_size=16)[key] for m in result.models]
            # evaluated as one population (batched matmuls): each member as its own model up to
            # float32 rounding, the bound a member keeps against its standalone fit
            np.testing.assert_allclose(values, expected, atol=ATOL, rtol=0, err_msg=key)
        outputs = result.evaluate(data, outputs=True)["outputs"]
        for model, out in zip(result.models, outputs):
            torch.testing.assert_close(out, model(torch.as_tensor(data[0])).detach(), atol=ATOL, rtol=0)
    # The population's own validation pass (epoch 5) agrees with evaluating the final models.
    for key, values in result.evaluate(val).items():
        np.testing.assert_allclose(values, result.history[f"val_{key}"][:, -1], atol=ATOL, rtol=0, err_msg=key)


def test_population_result_evaluate_on_the_fused_path(chunks):
    train, val = three_classes(40), three_classes(24, seed=1)
    result = population(functools.partial(shallow_build, out=3), [dict(l2=1e-2), dict()], [0, 1], train, val,
                        epochs=4, batch_size=16)
    assert ran_fused(chunks) == [True]
    for key, values in result.evaluate(val).items():
        np.testing.assert_allclose(values, result.history[f"val_{key}"][:, -1], atol=ATOL, rtol=0, err_msg=key)


def test_the_fused_adam_step_never_leaves_subnormal_numbers():
    """Subnormal float32 arithmetic is ~100x slower on x86; the fused kernel flushes them (as
    TensorFlow's flush-to-zero does). Tiny gradients and decaying moments must end normal or zero."""
    from reglab.population import fused

    tiny = np.finfo(np.float32).tiny
    g = np.array([1e-25, -1e-30, 1e-20, 0.0, 1e-3, -1e-19, 3e-38, 0.0], np.float32)
    w = np.ones_like(g)
    m = np.array([2e-38, -5e-38, 0.0, 1.5e-38, 0.0, 0.0, 0.0, 1e-30], np.float32)
    v = np.array([0.0, 1.3e-38, 0.0, 1e-30, 0.0, 0.0, 0.0, 2e-38], np.float32)
    hyper = np.array([0.1, 0.001, 1.0, 1e-7, 1.0, 0.0], np.float32)   # 1-β1, 1-β2, bias, ε, 1/√(1-β2^t), decay
    for _ in range(100):
        fused._adam(w, g, m, v, np.float32(0.0), np.float32(0.0), hyper, np.float32(1e-3))
        for a in (m, v):
            assert not np.any((a != 0) & (np.abs(a) < tiny)), a
    assert m[4] > 0 and v[4] > 0          # a normal gradient is kept as it is
    assert m[0] > 0 and v[0] == 0         # 1e-25 moves m; its square (1e-50) is flushed


def strided_cnn_build(kernel=None, padding=1, stride=2, dilation=1, bias=True):
    conv = nn.Conv2d(1, 3, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    reglab.regularize(conv, kernel=kernel, kernel_constraint=reglab.MaxNorm(1.0))
    out = conv(torch.zeros(1, 1, 8, 8)).numel()
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(out, 4))


@pytest.mark.parametrize("im2col", [True, False], ids=["im2col", "vmap"])
@pytest.mark.parametrize("shape", [dict(), dict(padding=0, stride=1, dilation=2), dict(padding=2, stride=3, bias=False)])
def test_conv2d_members_equal_standalone_fits_on_both_convolution_paths(im2col, shape, monkeypatch):
    from reglab.population import layers as PL

    if not im2col:   # a patch matrix above the limit runs as a vmapped convolution
        monkeypatch.setattr(PL, "IM2COL_BYTES", 0)
    calls = []
    original = PL.Conv._im2col
    monkeypatch.setattr(PL.Conv, "_im2col", lambda self, x: calls.append(1) or original(self, x))
    train, val = digits((1, 8, 8))
    configs = [dict(kernel=reglab.L2(1e-2), **shape), dict(**shape)]
    assert_matches_standalone(strided_cnn_build, configs, [0, 1], train, val, epochs=3, batch_size=32, lr=0.01)
    assert bool(calls) == im2col


@pytest.mark.parametrize("path", ["stacked", "general"])
def test_a_zero_activity_penalty_adds_nothing(path, monkeypatch):
    """Keras's ActivityRegularization() defaults (l1 = l2 = 0): the population trains, penalty 0."""
    if path == "general":
        monkeypatch.setenv("REGLAB_POPULATION", "general")
    X, y = make_moons(60, noise=0.2, random_state=0)

    def build():
        model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
        reglab.regularize(model[0], activity=reglab.L1L2())
        return model

    result = reglab.train_population(build, None, [0, 1], train=(X, y), epochs=2, progress=False)
    assert (result.history["penalty"] == 0).all() and not result.diverged.any()


def test_stacked_layers_are_views_of_one_flat_tensor_the_optimizer_updates_in_one_pass():
    """A Sequential population's stacked parameters are consecutive views of ``pop.flat`` (as a
    ModulePopulation's), so reglab's Adam updates them in its one flat pass; a training of such a
    population takes that pass."""
    models = [nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1)) for _ in range(3)]
    pop = engine.Population(models)
    offset = 0
    for p in pop.params:
        assert p.is_leaf and p.requires_grad
        assert p.data_ptr() == pop.flat.data_ptr() + offset * pop.flat.element_size()
        offset += p.numel()
    assert offset == pop.flat.numel()
    X, y = make_moons(64, noise=0.2, random_state=0)
    passes = []
    real = reglab.optim.Adam._update_flat
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reglab.optim.Adam, "_update_flat", lambda self, *a: passes.append(1) or real(self, *a))
        reglab.train_population(lambda: nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                                       nn.Linear(8, 1)),
                                [{}], seeds=[0, 1], train=(X.astype(np.float32), y), epochs=1, batch_size=16,
                                progress=False)
    assert len(passes) == 4   # 64 rows / 16 per batch, every step in the flat pass


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [(6,), (2, 3)])
def test_stacked_linear_is_each_members_nn_linear_with_contiguous_output_and_gradients(bias, rows):
    """The population's Linear gives every member its own nn.Linear's output and gradients (input,
    weight, bias), all contiguous: the output for the layers after it, the gradients as Adam's flat
    pass reads them in place (it copies a gradient in any other layout)."""
    torch.manual_seed(0)
    modules = [nn.Linear(4, 3, bias=bias) for _ in range(3)]
    layer = layers.Linear(modules)
    x = torch.randn((3,) + rows + (4,), requires_grad=True)
    upstream = torch.randn((3,) + rows + (3,))
    out = layer.forward(x, None)
    assert out.is_contiguous()
    grads = torch.autograd.grad(out, [x] + list(layer.params.values()), upstream)
    assert all(g.is_contiguous() for g in grads)
    for i, m in enumerate(modules):
        xi = x.detach()[i].clone().requires_grad_(True)
        ref = m(xi)
        torch.testing.assert_close(out[i], ref, rtol=1e-6, atol=1e-6)
        expected = torch.autograd.grad(ref, [xi] + list(m.parameters()), upstream[i])
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got[i], want, rtol=1e-6, atol=1e-6)


def test_the_finite_check_sees_every_non_finite_loss_and_no_overflowing_sum():
    """The step's finiteness check sums the members' losses first: a NaN or an infinity in any member
    is seen, and finite losses whose sum overflows are still all finite."""
    assert engine._all_finite(torch.tensor([0.5, 2.0, 1e-3]))
    assert engine._all_finite(torch.tensor([3e38, 3e38, 3e38]))   # the float32 sum is inf
    assert not engine._all_finite(torch.tensor([0.5, float("nan"), 1.0]))
    assert not engine._all_finite(torch.tensor([0.5, float("inf"), 1.0]))
    assert not engine._all_finite(torch.tensor([float("inf"), float("-inf")]))


def test_in_place_activations_equal_standalone_fits_also_on_one_shared_batch():
    """Element-wise activations run on (P, B, ...) without a reshape, except in-place ones: an
    in-place ReLU first in the model, on the one batch every member shares (an expanded tensor)
    and on the shuffled batches, gives each member its standalone fit."""
    def build(width=6):
        return nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, width), nn.ReLU(inplace=True), nn.Linear(width, 1))
    for batch_size in (64, 16):
        assert_matches_standalone(build, [dict(width=6)], [0, 1], blobs(48), blobs(24, seed=1), epochs=4,
                                  batch_size=batch_size, lr=0.01)
