"""EarlyStopping (Keras 3 semantics), StoppingRule and PenaltySchedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab.callbacks import Callback, EarlyStopping, PenaltySchedule, StoppingRule, monitor_mode

NAN = float("nan")


pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


# --- driving EarlyStopping by hand ---------------------------------------------------------

class FakeTrainer:
    """What EarlyStopping sees of a trainer: a model and the stop flag."""

    def __init__(self):
        self.model = nn.Linear(1, 1)
        self.stop_training = False


def drive(callback, values, monitor="val_loss"):
    """Feed ``values`` one per epoch, setting the weights to the epoch number first.

    Returns (epochs run, stopped_epoch_, epoch whose weights are in the model at the end).
    """
    trainer = FakeTrainer()
    callback.on_train_begin(trainer)
    epochs_run = 0
    for epoch, value in enumerate(values):
        with torch.no_grad():
            trainer.model.weight.fill_(epoch)
            trainer.model.bias.fill_(-epoch)
        callback.on_epoch_end(trainer, epoch, {monitor: value, "loss": 0.0})
        epochs_run += 1
        if trainer.stop_training:
            break
    callback.on_train_end(trainer)
    weight_epoch = trainer.model.weight.item()
    assert trainer.model.bias.item() == -weight_epoch   # weight and bias come from the same epoch
    return epochs_run, callback.stopped_epoch_, int(weight_epoch)


def keras_reference(values, *, min_delta=0.0, patience=0, mode="min", baseline=None,
                    restore_best_weights=False, start_from_epoch=0):
    """Keras 3's EarlyStopping.on_epoch_end/on_train_end, transcribed independently."""
    delta = abs(min_delta) if mode == "max" else -abs(min_delta)
    better = (lambda a, b: a - delta > b) if mode == "max" else (lambda a, b: a - delta < b)
    wait, best, best_weights, stopped = 0, None, None, 0
    last = -1
    for epoch, current in enumerate(values):
        last = epoch
        if epoch < start_from_epoch:
            continue
        if restore_best_weights and best_weights is None:
            best_weights = epoch
        wait += 1
        if best is None or better(current, best):
            best = current
            if restore_best_weights:
                best_weights = epoch
            if baseline is None or better(current, baseline):
                wait = 0
            continue
        if wait >= patience and epoch > 0:
            stopped = epoch
            break
    weights = best_weights if restore_best_weights and best_weights is not None else last
    return last + 1, stopped, weights


# (values, EarlyStopping kwargs, epochs run, stopped epoch, epoch of the final weights)
TABLE = [
    # patience 0: stop at the first epoch without improvement
    ([1.0, 0.9, 0.95, 0.8], dict(patience=0), 3, 2, 2),
    ([1.0, 0.9, 0.95, 0.8], dict(patience=0, restore_best_weights=True), 3, 2, 1),
    ([1.0, 1.0, 0.5], dict(patience=0), 2, 1, 1),            # equal is no improvement
    # patience 1
    ([1.0, 0.9, 0.95, 0.85, 0.7], dict(patience=1), 3, 2, 2),
    ([1.0, 0.9, 0.8, 0.7], dict(patience=1), 4, 0, 3),        # always improving: runs all
    # patience 3: wait resets on every improvement
    ([1.0, 0.9, 0.95, 0.92, 0.85, 0.9, 0.91, 0.95, 0.5], dict(patience=3), 8, 7, 7),
    ([1.0, 0.9, 0.95, 0.92, 0.85, 0.9, 0.91, 0.95, 0.5], dict(patience=3, restore_best_weights=True), 8, 7, 4),
    ([1.0, 0.9, 0.95, 0.92, 0.91, 0.5], dict(patience=3, restore_best_weights=True), 5, 4, 1),
    # min_delta: an improvement must beat best by more than |min_delta|
    ([1.0, 0.95, 0.85, 0.7], dict(patience=1, min_delta=0.1), 2, 1, 1),
    ([1.0, 0.95, 0.85, 0.7], dict(patience=1, min_delta=0.1, restore_best_weights=True), 2, 1, 0),
    ([1.0, 0.95, 0.85, 0.7, 0.65, 0.62, 0.1], dict(patience=2, min_delta=0.1, restore_best_weights=True), 6, 5, 3),
    ([1.0, 0.95, 0.85, 0.7, 0.65, 0.62, 0.1], dict(patience=2, min_delta=-0.1, restore_best_weights=True), 6, 5, 3),
    # baseline: wait is only reset once the baseline is beaten, but an improving epoch never stops
    ([0.9, 0.8, 0.7, 0.6], dict(patience=2, baseline=0.5), 4, 0, 3),
    ([0.9, 0.8, 0.85, 0.84, 0.83], dict(patience=2, baseline=0.5), 3, 2, 2),
    ([0.9, 0.8, 0.85, 0.84, 0.83], dict(patience=2), 4, 3, 3),
    ([0.9, 0.8, 0.82, 0.81, 0.83], dict(patience=2, baseline=0.85, restore_best_weights=True), 4, 3, 1),
    ([0.9, 0.8, 0.85, 0.84], dict(patience=2, baseline=0.5, restore_best_weights=True), 3, 2, 1),
    # start_from_epoch: earlier epochs are ignored entirely, even for the best weights
    ([1.0, 2.0, 3.0, 2.5, 2.6, 0.1], dict(start_from_epoch=2, restore_best_weights=True), 5, 4, 3),
    ([1.0, 0.5, 0.4, 0.9, 1.0], dict(patience=1, start_from_epoch=3, restore_best_weights=True), 5, 4, 3),
    ([1.0, 0.5, 0.4, 0.9, 1.0], dict(patience=5, start_from_epoch=3), 5, 0, 4),
    # restore_best_weights also when all epochs ran without stopping
    ([1.0, 0.8, 0.9, 0.95], dict(patience=5, restore_best_weights=True), 4, 0, 1),
    ([1.0, 0.8, 0.9, 0.95], dict(patience=5), 4, 0, 3),
    # NaN: a NaN first value becomes "best" and nothing compares below it afterwards
    ([NAN, 1.0, 0.5, 0.4, 0.3], dict(patience=2), 3, 2, 2),
    ([NAN, 1.0, 0.5, 0.4, 0.3], dict(patience=2, restore_best_weights=True), 3, 2, 0),
    ([1.0, NAN, 0.9], dict(patience=1, restore_best_weights=True), 2, 1, 0),
]


@pytest.mark.parametrize("values, kwargs, epochs, stopped, weights", TABLE)
def test_early_stopping_table(values, kwargs, epochs, stopped, weights):
    assert drive(EarlyStopping(**kwargs), values) == (epochs, stopped, weights)
    assert keras_reference(values, **kwargs) == (epochs, stopped, weights)


# (values, kwargs, epochs run, stopped, weights) for 'max' mode metrics
MAX_TABLE = [
    ([0.5, 0.6, 0.6, 0.7], dict(patience=0), 3, 2, 2),
    ([0.5, 0.6, 0.6, 0.7], dict(patience=0, restore_best_weights=True), 3, 2, 1),
    ([0.5, 0.6, 0.55, 0.58, 0.9], dict(patience=2, restore_best_weights=True), 4, 3, 1),
    ([0.5, 0.65, 0.7, 0.9], dict(patience=1, min_delta=0.1, restore_best_weights=True), 3, 2, 1),
    ([0.5, 0.6, 0.7, 0.8], dict(patience=1, baseline=0.9), 4, 0, 3),
    ([0.5, 0.6, 0.5, 0.5], dict(patience=2, baseline=0.55), 4, 3, 3),
]


@pytest.mark.parametrize("monitor", ["val_accuracy", "accuracy", "val_acc", "val_auc"])
@pytest.mark.parametrize("values, kwargs, epochs, stopped, weights", MAX_TABLE)
def test_early_stopping_auto_mode_maximises_accuracy(monitor, values, kwargs, epochs, stopped, weights):
    assert drive(EarlyStopping(monitor=monitor, **kwargs), values, monitor) == (epochs, stopped, weights)
    assert keras_reference(values, mode="max", **kwargs) == (epochs, stopped, weights)


def test_explicit_mode_overrides_auto():
    # an increasing accuracy is no improvement in 'min' mode
    assert drive(EarlyStopping(monitor="val_accuracy", mode="min"), [0.5, 0.6, 0.7], "val_accuracy") == (2, 1, 1)
    # a decreasing loss is no improvement in 'max' mode
    assert drive(EarlyStopping(monitor="val_loss", mode="max"), [1.0, 0.9, 0.8]) == (2, 1, 1)
    assert drive(EarlyStopping(monitor="val_loss", mode="max"), [1.0, 1.1, 1.2]) == (3, 0, 2)


@pytest.mark.parametrize("monitor, mode", [
    ("val_loss", "min"), ("loss", "min"), ("val_data_loss", "min"), ("val_mae", "min"),
    ("val_accuracy", "max"), ("accuracy", "max"), ("val_acc", "max"), ("auc", "max"),
])
def test_monitor_mode_auto(monitor, mode):
    assert monitor_mode(monitor, "auto") == mode
    assert monitor_mode(monitor, "min") == "min" and monitor_mode(monitor, "max") == "max"


def random_case(rng):
    n = int(rng.integers(1, 12))
    values = list(np.round(rng.uniform(0, 1, n), 1))      # ties are frequent
    if rng.random() < 0.2:
        values[int(rng.integers(n))] = NAN
    kwargs = dict(patience=int(rng.integers(0, 4)), min_delta=float(rng.choice([0.0, 0.05, 0.2])),
                  restore_best_weights=bool(rng.random() < 0.5), start_from_epoch=int(rng.integers(0, 3)))
    if rng.random() < 0.3:
        kwargs["baseline"] = float(rng.uniform(0, 1))
    return values, kwargs


@pytest.mark.parametrize("mode", ["min", "max"])
def test_early_stopping_agrees_with_keras_reference_on_random_sequences(mode):
    rng = np.random.default_rng(0 if mode == "min" else 1)
    for _ in range(300):
        values, kwargs = random_case(rng)
        got = drive(EarlyStopping(mode=mode, **kwargs), values)
        assert got == keras_reference(values, mode=mode, **kwargs), (values, kwargs)


def test_early_stopping_is_reusable():
    cb = EarlyStopping(patience=1, restore_best_weights=True)
    first = drive(cb, [1.0, 0.5, 0.7, 0.1])
    second = drive(cb, [1.0, 0.5, 0.7, 0.1])
    assert first == second == (3, 2, 1)
    assert cb.best_epoch_ == 1
    # a run that did not stop after one that did reports no stop
    assert drive(cb, [1.0, 0.9, 0.8]) == (3, 0, 2)


def test_best_epoch_is_reported():
    cb = EarlyStopping(patience=2)
    drive(cb, [1.0, 0.4, 0.6, 0.3, 0.5, 0.5, 0.5])
    assert cb.best_epoch_ == 3 and cb.stopped_epoch_ == 5


def test_early_stopping_missing_monitor_is_a_clear_error():
    cb = EarlyStopping(monitor="val_auc")
    trainer = FakeTrainer()
    cb.on_train_begin(trainer)
    with pytest.raises(ValueError, match="val_auc"):
        cb.on_epoch_end(trainer, 0, {"loss": 1.0, "val_loss": 1.0})


# --- StoppingRule on several members ---------------------------------------------------------

def test_stopping_rule_members_are_independent():
    rng = np.random.default_rng(3)
    members, epochs = 6, 15
    values = np.round(rng.uniform(0, 1, (epochs, members)), 1)
    values[0, 2] = NAN
    kwargs = dict(patience=2, min_delta=0.05, start_from_epoch=1, baseline=0.3)
    rule = StoppingRule(members, **kwargs)
    running = np.ones(members, dtype=bool)
    stopped_at = np.full(members, -1)
    for epoch in range(epochs):
        _, stop, _ = rule.update(epoch, values[epoch], running)
        stopped_at[stop] = epoch
        running &= ~stop
    for i in range(members):
        single = StoppingRule(1, **kwargs)
        stop_i = -1
        for epoch in range(epochs):
            _, stop, _ = single.update(epoch, values[epoch, i:i + 1])
            if stop[0]:
                stop_i = epoch
                break
        assert stopped_at[i] == stop_i
        assert rule.best_epoch[i] == single.best_epoch[0]
        np.testing.assert_equal(rule.best[i], single.best[0])
        ref = keras_reference(list(values[:, i]), **kwargs)
        assert stop_i == (ref[1] if ref[1] else -1)


def test_stopping_rule_leaves_stopped_members_untouched():
    rule = StoppingRule(2, patience=0)
    rule.update(0, np.array([1.0, 1.0]))
    before = (rule.wait.copy(), rule.best.copy(), rule.best_epoch.copy())
    improved, stop, _ = rule.update(1, np.array([0.1, 0.1]), running=np.array([True, False]))
    assert improved.tolist() == [True, False] and stop.tolist() == [False, False]
    assert rule.best[1] == before[1][1] and rule.best_epoch[1] == before[2][1] and rule.wait[1] == before[0][1]
    assert rule.best[0] == 0.1 and rule.best_epoch[0] == 1


def test_stopping_rule_first_seen_mask():
    rule = StoppingRule(2, start_from_epoch=2)
    for epoch in range(2):
        improved, stop, first = rule.update(epoch, np.array([1.0, 1.0]))
        assert not improved.any() and not stop.any() and not first.any()
    _, _, first = rule.update(2, np.array([1.0, 1.0]), running=np.array([True, False]))
    assert first.tolist() == [True, False]
    _, _, first = rule.update(3, np.array([1.0, 1.0]))
    assert first.tolist() == [False, True]


# --- EarlyStopping inside reglab.fit ---------------------------------------------------------

class RecordWeights(Callback):
    def on_train_begin(self, trainer, **kwargs):
        self.weights_ = []

    def on_epoch_end(self, trainer, epoch, logs, **kwargs):
        self.weights_.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def overfitting_problem(seed=0):
    """24 training rows with a quarter of the labels flipped, clean validation data: the MLP fits
    the noise and val_loss turns up after a dozen epochs."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(24, 4, generator=g)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    y = torch.where(torch.rand(24, generator=g) < 0.25, 1 - y, y)
    Xv = torch.randn(200, 4, generator=g)
    yv = (Xv[:, 0] + 0.5 * Xv[:, 1] > 0).long()
    return (X, y), (Xv, yv)


def small_mlp():
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))


@pytest.mark.parametrize("restore", [False, True])
def test_early_stopping_in_fit(restore):
    train, val = overfitting_problem()
    model = small_mlp()
    es = EarlyStopping(patience=3, restore_best_weights=restore)
    rec = RecordWeights()
    history = reglab.fit(model, train, val, epochs=200, lr=0.03, seed=1, callbacks=[rec, es], preset="keras")
    val_loss = history.history["val_loss"]
    assert history.stopped_epoch is not None and history.stopped_epoch < 199
    assert len(val_loss) == history.stopped_epoch + 1 == len(rec.weights_) == len(history.epoch)
    epochs, stopped, weights = keras_reference(val_loss, patience=3, restore_best_weights=restore)
    assert (epochs, stopped) == (len(val_loss), history.stopped_epoch)
    final = model.state_dict()
    if restore:
        best = int(np.argmin(val_loss))
        assert 0 < best and history.best_epoch == best == weights
        want = rec.weights_[best]
    else:
        assert history.best_epoch is None
        want = rec.weights_[-1]
    for k in final:
        assert torch.equal(final[k], want[k]), k
    if restore:   # it stopped, so the best epoch lies `patience` epochs before the last one
        assert best == history.stopped_epoch - 3
        assert not torch.equal(final["0.weight"], rec.weights_[-1]["0.weight"])
    # the restored model really scores the best val_loss
    assert reglab.evaluate(model, val)["loss"] == pytest.approx(val_loss[weights], rel=1e-5)


def test_early_stopping_restores_best_after_running_all_epochs():
    train, val = overfitting_problem()
    model = small_mlp()
    es = EarlyStopping(patience=1000, restore_best_weights=True)
    rec = RecordWeights()
    history = reglab.fit(model, train, val, epochs=40, lr=0.03, seed=1, callbacks=[rec, es], preset="keras")
    val_loss = history.history["val_loss"]
    assert len(val_loss) == 40 and history.stopped_epoch is None
    best = int(np.argmin(val_loss))
    assert 0 < best < 39       # otherwise this test would not distinguish restoring from not
    assert history.best_epoch == best
    for k, v in model.state_dict().items():
        assert torch.equal(v, rec.weights_[best][k]), k


def test_early_stopping_on_training_loss_needs_no_validation():
    train, _ = overfitting_problem()
    history = reglab.fit(small_mlp(), train, epochs=5, callbacks=[EarlyStopping(monitor="loss", patience=2)], preset="keras")
    assert len(history.history["loss"]) == 5


def test_early_stopping_monitor_not_logged_raises_in_fit():
    train, val = overfitting_problem()
    with pytest.raises(ValueError, match="val_mae"):
        reglab.fit(small_mlp(), train, val, epochs=2, callbacks=[EarlyStopping(monitor="val_mae")], preset="keras")


# --- argument validation ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, name", [
    (dict(monitor=3), TypeError, "monitor"),
    (dict(monitor=None), TypeError, "monitor"),
    (dict(patience=-1), ValueError, "patience"),
    (dict(patience=1.5), TypeError, "patience"),
    (dict(patience="3"), TypeError, "patience"),
    (dict(min_delta=float("nan")), ValueError, "min_delta"),
    (dict(min_delta="0.1"), TypeError, "min_delta"),
    (dict(mode="up"), ValueError, "mode"),
    (dict(baseline="0.5"), TypeError, "baseline"),
    (dict(baseline=float("inf")), ValueError, "baseline"),
    (dict(restore_best_weights="yes"), TypeError, "restore_best_weights"),
    (dict(restore_best_weights=1), TypeError, "restore_best_weights"),
    (dict(start_from_epoch=-1), ValueError, "start_from_epoch"),
    (dict(start_from_epoch=0.5), TypeError, "start_from_epoch"),
])
def test_bad_early_stopping_arguments(kwargs, error, name):
    with pytest.raises(error, match=f"'{name}'"):
        EarlyStopping(**kwargs)


def test_early_stopping_defaults_are_keras_defaults():
    es = EarlyStopping()
    assert (es.monitor, es.min_delta, es.patience, es.mode, es.baseline, es.restore_best_weights,
            es.start_from_epoch) == ("val_loss", 0.0, 0, "auto", None, False, 0)


# --- PenaltySchedule -------------------------------------------------------------------------

def penalised_model(l2=1e-2):
    model = small_mlp()
    reglab.regularize(model[0], kernel=reglab.L2(l2))
    return model


@pytest.mark.parametrize("factors, expected", [
    ({0: 1.0, 2: 10.0, 4: 0.0}, [1, 1, 10, 10, 0, 0]),
    ({3: 5.0}, [1, 1, 1, 5, 5, 5]),                      # before the first phase: factor 1
    (lambda epoch: 2.0 ** epoch, [1, 2, 4, 8, 16, 32]),
])
def test_penalty_schedule_scales_logged_penalty(factors, expected):
    train, val = overfitting_problem()
    model = penalised_model()
    # SGD with lr 0 keeps the weights fixed, so only the factor changes the penalty
    history = reglab.fit(model, train, val, epochs=6, optimizer="sgd", lr=0.0, seed=2,
                         callbacks=[PenaltySchedule(factors)], preset="keras")
    base = reglab.weight_penalty(model).item()
    assert base > 0
    for key in ("penalty", "val_penalty"):
        np.testing.assert_allclose(history.history[key], np.array(expected, dtype=float) * base, rtol=1e-5)
    for e in range(6):
        assert history.history["loss"][e] == pytest.approx(
            history.history["data_loss"][e] + history.history["penalty"][e], rel=1e-6, abs=1e-9)


def test_penalty_schedule_changes_training():
    train, val = overfitting_problem()
    weak, strong = penalised_model(1e-3), penalised_model(1e-3)
    reglab.fit(weak, train, epochs=30, lr=0.02, seed=4, preset="keras")
    reglab.fit(strong, train, epochs=30, lr=0.02, seed=4, callbacks=[PenaltySchedule({0: 1.0, 10: 300.0})], preset="keras")
    assert strong[0].weight.norm() < 0.8 * weak[0].weight.norm()


def test_penalty_schedule_factor_lookup():
    schedule = PenaltySchedule({0: 1.0, 100: 10.0})
    assert [schedule.factor(e) for e in (0, 99, 100, 1000)] == [1.0, 1.0, 10.0, 10.0]


@pytest.mark.parametrize("factors, error", [
    ({0: -1.0}, ValueError),
    ({-1: 1.0}, ValueError),
    ({0.5: 1.0}, TypeError),
    ({0: "x"}, TypeError),
    ({0: float("nan")}, ValueError),
    ({}, TypeError),
    ("abc", TypeError),
    ([1.0, 2.0], TypeError),
])
def test_bad_penalty_schedule_arguments(factors, error):
    with pytest.raises(error):
        PenaltySchedule(factors)


@pytest.mark.parametrize("bad", [lambda e: -1.0, lambda e: math.nan, lambda e: math.inf])
def test_penalty_schedule_callable_giving_bad_factor_raises(bad):
    train, _ = overfitting_problem()
    with pytest.raises(ValueError, match="factor"):
        reglab.fit(penalised_model(), train, epochs=2, callbacks=[PenaltySchedule(bad)], preset="keras")


def test_callback_hooks_are_called_in_order():
    calls = []

    class Spy(Callback):
        def on_train_begin(self, trainer, **kwargs):
            calls.append("begin")

        def on_epoch_begin(self, trainer, epoch, **kwargs):
            calls.append(f"e{epoch}")

        def on_batch_end(self, trainer, batch, **kwargs):
            calls.append(f"b{batch}")

        def on_epoch_end(self, trainer, epoch, logs, **kwargs):
            calls.append(f"end{epoch}:{sorted(logs)}")

        def on_train_end(self, trainer, **kwargs):
            calls.append("done")

    train, _ = overfitting_problem()
    reglab.fit(small_mlp(), train, epochs=2, batch_size=10, callbacks=[Spy()], preset="keras")
    keys = sorted(["loss", "data_loss", "penalty", "accuracy"])
    assert calls == ["begin", "e0", "b0", "b1", "b2", f"end0:{keys}", "e1", "b0", "b1", "b2", f"end1:{keys}", "done"]


def test_callback_can_stop_training():
    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, epoch, logs, **kwargs):
            if epoch == 1:
                trainer.stop_training = True

    train, _ = overfitting_problem()
    history = reglab.fit(small_mlp(), train, epochs=10, callbacks=[StopAfterTwo()], preset="keras")
    assert history.epoch == [0, 1]
