"""Mixup/CutMix (reglab.mixup) and weight averaging (reglab.averaging) against their references:
timm's formulas written in NumPy, Keras's EMA rule in NumPy, torch.optim.swa_utils itself; and every
population member against its standalone reglab.fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader, TensorDataset

import reglab
from reglab import averaging, mixup
from reglab.study import StudyError, from_dict
from reglab.tasks import TASKS, Objective

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-5


class FixedDraws:
    """A stand-in for a NumPy Generator that returns given values, in order, per kind of draw."""

    def __init__(self, random=(), beta=(), integers=()):
        self._random, self._beta, self._integers = list(random), list(beta), list(integers)
        self.beta_args = []

    def random(self):
        return self._random.pop(0)

    def beta(self, a, b):
        self.beta_args.append((a, b))
        return self._beta.pop(0)

    def integers(self, low, high):
        value = self._integers.pop(0)
        assert low <= value < high
        return value


# ------------------------------------------------------------------------ timm's rules in NumPy

def timm_params_per_batch(gen, mixup_alpha, cutmix_alpha, prob, switch_prob):
    """timm.data.Mixup._params_per_batch, with ``gen`` in place of np.random."""
    lam, use_cutmix = 1.0, False
    if gen.random() < prob:
        if mixup_alpha > 0 and cutmix_alpha > 0:
            use_cutmix = gen.random() < switch_prob
            lam_mix = gen.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else gen.beta(mixup_alpha, mixup_alpha)
        elif mixup_alpha > 0:
            lam_mix = gen.beta(mixup_alpha, mixup_alpha)
        else:
            use_cutmix = True
            lam_mix = gen.beta(cutmix_alpha, cutmix_alpha)
        lam = float(lam_mix)
    return lam, use_cutmix


def timm_mix_batch(x, gen, mixup_alpha, cutmix_alpha, prob=1.0, switch_prob=0.5, correct_lam=True):
    """timm.data.Mixup._mix_batch (rand_bbox, cutmix_bbox_and_lam) on a NumPy batch: (x', lam)."""
    x = x.copy()
    lam, use_cutmix = timm_params_per_batch(gen, mixup_alpha, cutmix_alpha, prob, switch_prob)
    if lam == 1.0:
        return x, 1.0
    if use_cutmix:
        ratio = np.sqrt(1 - lam)
        img_h, img_w = x.shape[-2:]
        cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
        cy, cx = gen.integers(0, img_h), gen.integers(0, img_w)
        yl, yh = np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h)
        xl, xh = np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w)
        if correct_lam:
            lam = 1.0 - (yh - yl) * (xh - xl) / float(img_h * img_w)
        x[..., yl:yh, xl:xh] = x[::-1][..., yl:yh, xl:xh]
        return x, lam
    return x * lam + x[::-1] * (1.0 - lam), lam


def timm_soft_target(y, classes, lam, smoothing=0.0):
    """timm.data.mixup.mixup_target."""
    off = smoothing / classes
    on = 1.0 - smoothing + off
    y1 = np.full((len(y), classes), off)
    y1[np.arange(len(y)), y] = on
    y2 = y1[::-1]
    return y1 * lam + y2 * (1.0 - lam)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# ------------------------------------------------------------------------------------ Mixup

def test_a_cutmix_box_and_its_corrected_lam_are_timms():
    """lam 0.6 on 8x8: cut = int(8 * sqrt(0.4)) = 5, centre (2, 5): rows 0:4, columns 3:7, 16 pixels."""
    draws = FixedDraws(random=[0.1], beta=[0.6], integers=[2, 5])
    lam, box = mixup.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0).draw(draws, (8, 8))
    assert box == (0, 4, 3, 7) and lam == pytest.approx(1 - 16 / 64)
    assert draws.beta_args == [(1.0, 1.0)]
    # without correct_lam the drawn lam stays
    lam, box = mixup.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False).draw(
        FixedDraws(random=[0.1], beta=[0.6], integers=[2, 5]), (8, 8))
    assert box == (0, 4, 3, 7) and lam == 0.6


def test_prob_and_switch_prob_have_timms_meaning():
    both = mixup.Mixup(mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.5, switch_prob=0.3)
    assert both.draw(FixedDraws(random=[0.7]), (4, 4)) == (1.0, None)            # 0.7 >= prob: not mixed
    draws = FixedDraws(random=[0.2, 0.4], beta=[0.9])
    assert both.draw(draws, (4, 4)) == (0.9, None)                               # 0.4 >= switch_prob: mixup
    assert draws.beta_args == [(0.2, 0.2)]
    draws = FixedDraws(random=[0.2, 0.1], beta=[0.5], integers=[1, 1])
    lam, box = both.draw(draws, (4, 4))                                          # 0.1 < switch_prob: cutmix
    assert draws.beta_args == [(1.0, 1.0)] and box is not None


@pytest.mark.parametrize("settings", [
    dict(mixup_alpha=0.4),
    dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    dict(mixup_alpha=0.3, cutmix_alpha=1.0, prob=0.7, switch_prob=0.5),
    dict(mixup_alpha=0.0, cutmix_alpha=0.5, correct_lam=False),
])
def test_mixed_batches_and_lam_equal_timms_formulas(settings):
    x = np.random.default_rng(0).normal(size=(5, 2, 6, 7)).astype(np.float32)
    ours = mixup.Mixing(mixup.Mixup(**settings), seeds=[3])
    reference = np.random.default_rng(mixup.stream_seed(3, mixup.MIXUP_STREAM))   # the same stream
    mixed_seen = False
    for _ in range(12):
        mixed, mix = ours(torch.from_numpy(x))
        expected, lam = timm_mix_batch(x, reference, **{"cutmix_alpha": 0.0, **settings})
        np.testing.assert_allclose(mixed.numpy(), expected, rtol=1e-6, atol=1e-6)
        assert float(mix.lam[0]) == pytest.approx(lam, rel=1e-6)
        mixed_seen |= lam != 1.0
    assert mixed_seen


def test_the_mixed_loss_is_cross_entropy_against_timms_soft_target():
    """CE is linear in its target: lam * CE(out, y) + (1 - lam) * CE(out, y.flip(0)) is CE against
    lam * onehot(y) + (1 - lam) * onehot(y.flip(0)) -- with label smoothing too."""
    gen = np.random.default_rng(1)
    out = gen.normal(size=(6, 4)).astype(np.float32)
    y = gen.integers(0, 4, 6)
    lam = 0.37
    for smoothing in (0.0, 0.1):
        objective = Objective(TASKS["multiclass"], label_smoothing=smoothing)
        mix = mixup.Mix(torch.tensor([lam]), stacked=False)
        ours = mix.sample_loss(objective, torch.from_numpy(out), torch.from_numpy(y)).numpy()
        target = timm_soft_target(y, 4, lam, smoothing)
        soft = -(target * log_softmax(out.astype(np.float64))).sum(-1)    # timm's SoftTargetCrossEntropy per row
        np.testing.assert_allclose(ours, soft, rtol=1e-5)
    # binary: BCE against the mixed target
    z = gen.normal(size=(6, 1)).astype(np.float32)
    yb = gen.integers(0, 2, 6).astype(np.float32)
    ours = mixup.Mix(torch.tensor([lam]), stacked=False).sample_loss(
        Objective(TASKS["binary"]), torch.from_numpy(z), torch.from_numpy(yb)).numpy()
    t = lam * yb + (1 - lam) * yb[::-1]
    p = 1 / (1 + np.exp(-z[:, 0].astype(np.float64)))
    np.testing.assert_allclose(ours, -(t * np.log(p) + (1 - t) * np.log(1 - p)), rtol=1e-5)
    # regression: the targets themselves are mixed
    yr = gen.normal(size=(6, 1)).astype(np.float32)
    ours = mixup.Mix(torch.tensor([lam]), stacked=False).sample_loss(
        Objective(TASKS["regression"]), torch.from_numpy(z), torch.from_numpy(yr)).numpy()
    np.testing.assert_allclose(ours, ((z - (lam * yr + (1 - lam) * yr[::-1])) ** 2).mean(-1), rtol=1e-5)


def test_mixup_checks_its_arguments_and_the_inputs():
    with pytest.raises(ValueError, match="'mixup_alpha' parameter of Mixup"):
        reglab.Mixup(mixup_alpha=-1.0)
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        reglab.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="'prob' parameter of Mixup"):
        reglab.Mixup(prob=1.5)
    with pytest.raises(TypeError, match="'correct_lam' parameter of Mixup must be a bool"):
        reglab.Mixup(correct_lam="yes")
    with pytest.raises(TypeError, match="'mixup' parameter of fit"):
        reglab.fit(nn.Linear(2, 1), (np.zeros((4, 2)), np.zeros(4)), epochs=1, mixup="yes")
    with pytest.raises(TypeError, match="takes mixup_alpha"):
        reglab.fit(nn.Linear(2, 1), (np.zeros((4, 2)), np.zeros(4)), epochs=1, mixup={"alpha": 0.2})
    X, y = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32), np.arange(8) % 2
    with pytest.raises(ValueError, match="cuts boxes out of images"):
        reglab.fit(nn.Linear(2, 1), (X, y), epochs=1, mixup=reglab.Mixup(cutmix_alpha=1.0))
    tokens = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 1))
    with pytest.raises(ValueError, match="integer inputs"):
        reglab.fit(tokens, (np.zeros((4, 2), dtype=np.int64), np.arange(4) % 2), epochs=1, mixup=reglab.Mixup())
    assert reglab.Mixup(mixup_alpha=0.2) == mixup.get({"mixup_alpha": 0.2})
    assert repr(reglab.Mixup(mixup_alpha=0.2, cutmix_alpha=1.0)) == "Mixup(mixup_alpha=0.2, cutmix_alpha=1.0)"


# -------------------------------------------------------------------------------- averaging

def linear_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    return X, X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)


class LiveWeights(reglab.Callback):
    """The live weights after every optimizer step and at every epoch end."""

    def on_train_begin(self, trainer, **kwargs):
        self.steps, self.epochs = [], []

    def on_batch_end(self, trainer, batch, **kwargs):
        self.steps.append([p.detach().clone().numpy() for p in trainer.model.parameters()])

    def on_epoch_end(self, trainer, epoch, logs, **kwargs):
        self.epochs.append(copy.deepcopy(trainer.model.state_dict()))


def test_ema_is_keras_rule_over_the_sgd_steps():
    X, y = linear_data()
    model = nn.Linear(3, 1)
    live = LiveWeights()
    history = reglab.fit(model, (X, y), (X[:8], y[:8]), epochs=3, batch_size=8, optimizer="sgd", lr=0.05,
                         preset="keras", seed=1, ema=reglab.EMA(momentum=0.8), callbacks=[live])
    # Keras: average = m * average + (1 - m) * w after every update, m = 0 at the first one
    average = None
    for weights in live.steps:
        average = weights if average is None else [0.8 * a + 0.2 * w for a, w in zip(average, weights)]
    assert len(live.steps) == 9
    for p, a in zip(model.parameters(), average):
        np.testing.assert_allclose(p.detach().numpy(), a, rtol=RTOL, atol=1e-7)
    assert not np.allclose(live.steps[-1][0], model.weight.detach().numpy())
    # the history evaluated the live weights, not the average
    last = nn.Linear(3, 1)
    last.load_state_dict(live.epochs[-1])
    assert history.history["val_loss"][-1] == pytest.approx(reglab.evaluate(last, (X[:8], y[:8]))["loss"], rel=RTOL)


def test_an_ema_step_by_hand_and_its_overwrite_frequency():
    w = nn.Parameter(torch.tensor([[1.0, 2.0]]))
    averages = averaging.Averages(reglab.EMA(momentum=0.9, overwrite_frequency=2), None, [w], seeds=[0])
    expected = None
    for k, value in enumerate(([[1.0, 2.0]], [[3.0, 0.0]], [[-1.0, 5.0]]), 1):
        with torch.no_grad():
            w.copy_(torch.tensor(value))
        averages.after_step()
        v = np.array(value)
        expected = v if expected is None else 0.9 * expected + 0.1 * v
        # every 2nd update the weights become the average (Keras's ema_overwrite_frequency)
        np.testing.assert_allclose(w.detach().numpy(), expected if k == 2 else v, rtol=1e-6)
    np.testing.assert_allclose(averages.averages[0].numpy(), expected, rtol=1e-6)
    averages.finish()
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-6)


def test_stopped_members_keep_their_averages():
    stacked = torch.zeros(3, 2)
    ema = averaging.Averages(reglab.EMA(momentum=0.5), None, [stacked], seeds=[0, 1, 2], stacked=True)
    swa = averaging.Averages(None, reglab.SWA(), [stacked], seeds=[0, 1, 2], stacked=True)
    for step, active in enumerate(([True, True, True], [True, False, True], [True, False, False])):
        stacked.fill_(float(step + 1))
        ema.after_step(torch.tensor(active))
        swa.epoch_end(step, torch.tensor(active))
    np.testing.assert_allclose(ema.averages[0][:, 0].numpy(), [(0.5 * (0.5 * 1 + 0.5 * 2)) + 0.5 * 3, 1.0, 1.5])
    np.testing.assert_allclose(swa.averages[0][:, 0].numpy(), [2.0, 1.0, 1.5])
    assert swa.count.tolist() == [3, 1, 2]


def bn_model():
    return nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1))


def test_swa_equals_torch_averaged_model_and_update_bn():
    X, y = linear_data(30)
    model = bn_model()
    live = LiveWeights()
    reglab.fit(model, (X, y), epochs=5, batch_size=8, optimizer="sgd", lr=0.05, preset="keras", seed=2,
               swa=reglab.SWA(start_epoch=2), callbacks=[live])
    # torch's own utilities on the same sequence of epoch-end weights
    source = bn_model()
    swa_model = AveragedModel(source)
    for state in live.epochs[2:]:
        source.load_state_dict(state)
        swa_model.update_parameters(source)
    update_bn(DataLoader(TensorDataset(X), batch_size=8), swa_model)
    expected = swa_model.module.state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), expected[name].numpy(), rtol=RTOL, atol=1e-7, err_msg=name)


def test_the_batch_norm_pass_is_update_bn_and_runs_keras_batch_norm_too():
    X = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, momentum=0.3))
    reference = copy.deepcopy(model)
    averaging.recompute_batch_norm(model, (X[i:i + 6] for i in range(0, 20, 6)))
    update_bn(DataLoader(TensorDataset(X), batch_size=6), reference)
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[name]), name
    assert model[1].momentum == 0.3
    keras_bn = nn.Sequential(reglab.KerasBatchNorm(4))
    averaging.recompute_batch_norm(keras_bn, (X[i:i + 5] for i in range(0, 20, 5)))
    means = torch.stack([X[i:i + 5].mean(0) for i in range(0, 20, 5)]).mean(0)
    torch.testing.assert_close(keras_bn[0].running_mean, means)      # the cumulative average of the batches


def test_a_run_that_averaged_nothing_keeps_its_weights():
    X, y = linear_data(30)
    plain, late = bn_model(), bn_model()
    reglab.fit(plain, (X, y), epochs=3, batch_size=8, preset="keras", seed=4)
    reglab.fit(late, (X, y), epochs=3, batch_size=8, preset="keras", seed=4, swa=reglab.SWA(start_epoch=3))
    for name, value in plain.state_dict().items():
        assert torch.equal(value, late.state_dict()[name]), name


def test_averaging_checks_its_arguments():
    with pytest.raises(ValueError, match="'momentum' parameter of EMA"):
        reglab.EMA(momentum=1.5)
    with pytest.raises(ValueError, match="'overwrite_frequency' parameter of EMA"):
        reglab.EMA(overwrite_frequency=0)
    with pytest.raises(ValueError, match="'start_epoch' parameter of SWA"):
        reglab.SWA(start_epoch=-1)
    with pytest.raises(ValueError, match="ema or swa, not both"):
        reglab.fit(nn.Linear(2, 1), (np.zeros((4, 2)), np.zeros(4)), epochs=1, ema=reglab.EMA(), swa=reglab.SWA())
    with pytest.raises(TypeError, match="'swa' parameter of train_population"):
        reglab.train_population(lambda: nn.Sequential(nn.Linear(2, 1)), train=(np.zeros((4, 2)), np.zeros(4)),
                                epochs=1, swa=3)
    assert averaging.get({"start_epoch": 4}, averaging.SWA) == reglab.SWA(start_epoch=4)


# --------------------------------------------------------------------- population == fit

def moons_like(n=40, seed=0):
    gen = np.random.default_rng(seed)
    X = gen.normal(size=(n, 2)).astype(np.float32)
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)


def images(n=36, seed=0):
    gen = np.random.default_rng(seed)
    X = gen.normal(size=(n, 1, 6, 6)).astype(np.float32)
    return X, (X[:, 0, :3].mean((1, 2)) > X[:, 0, 3:].mean((1, 2))).astype(np.int64)


def mlp(dropout=0.1):
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 1))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 1))


def bn_mlp():
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))


CASES = {
    "mixup": (mlp, moons_like, dict(mixup=reglab.Mixup(mixup_alpha=0.4, prob=0.8))),
    "cutmix": (cnn, images, dict(mixup=reglab.Mixup(mixup_alpha=0.3, cutmix_alpha=1.0, switch_prob=0.5))),
    "mixup_weights": (mlp, moons_like, dict(mixup=reglab.Mixup(mixup_alpha=0.5), class_weight={0: 1.0, 1: 2.5},
                                            sample_weight=np.linspace(0.5, 1.5, 28), label_smoothing=0.1)),
    "mixup_regression": (lambda: nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)),
                         lambda: (moons_like()[0], moons_like()[0].sum(1)), dict(mixup={"mixup_alpha": 1.0})),
    "ema": (mlp, moons_like, dict(ema=reglab.EMA(momentum=0.9), early_stopping=reglab.EarlyStopping(patience=1))),
    "ema_overwrite": (mlp, moons_like, dict(ema={"momentum": 0.7, "overwrite_frequency": 3})),
    "swa_batch_norm": (bn_mlp, moons_like, dict(swa=reglab.SWA(start_epoch=2), mixup=reglab.Mixup(mixup_alpha=0.2))),
}
# The BatchNorm model runs on the general (vmap) path, whose float32 rounding differs from the plain
# model's by ~1e-5 after a few epochs whatever the options (tests/test_any_model.py): compared in
# float64, where the same arithmetic agrees to ~1e-12.
FLOAT64 = {"swa_batch_norm"}


@pytest.mark.parametrize("case", list(CASES))
def test_population_members_equal_their_fits(case, request):
    build, data, options = CASES[case]
    before = torch.get_default_dtype()
    if case in FLOAT64:
        torch.set_default_dtype(torch.float64)
        request.addfinalizer(lambda: torch.set_default_dtype(before))
    rtol = 1e-9 if case in FLOAT64 else RTOL
    X, y = data()
    train, validation = (X[:28], y[:28]), (X[28:], y[28:])
    seeds = [0, 3, 5]
    result = reglab.train_population(build, seeds=seeds, train=train, validation=validation, epochs=6,
                                     batch_size=8, progress=False, **options)
    es = options.pop("early_stopping", None)
    for i, seed in enumerate(seeds):
        model = build()
        history = reglab.fit(model, train, validation, epochs=6, batch_size=8, preset="keras", seed=seed,
                             callbacks=[copy.deepcopy(es)] if es is not None else [], **options)
        assert result.epochs_run[i] == len(history.epoch)
        for key, values in history.history.items():
            np.testing.assert_allclose(result.history[key][i, :len(values)], values, rtol=rtol, atol=rtol / 10,
                                       err_msg=f"{case} seed {seed} {key}")
        theirs = result.models[i].state_dict()
        for name, value in model.state_dict().items():
            np.testing.assert_allclose(theirs[name].numpy(), value.numpy(), rtol=rtol, atol=rtol / 10,
                                       err_msg=f"{case} seed {seed} {name}")


# ------------------------------------------------------------------------------- studies

def _study(training):
    return from_dict({"name": "t", "data": {"name": "moons"},
                      "model": {"layers": ["Dense(8, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]},
                      "training": {"epochs": 2},
                      "variants": {"none": {}, "v": {"training": training}}})


def test_study_files_take_mixup_ema_and_swa_tables():
    study = _study({"mixup": {"mixup_alpha": 0.2}, "ema": {"momentum": 0.95}})
    assert study.variants[1].training["mixup"] == {"mixup_alpha": 0.2}
    assert _study({"swa": {"start_epoch": 1}}).variants[1].training["swa"] == {"start_epoch": 1}
    for bad, message in [({"mixup": {"alpha": 0.2}}, "unknown key 'alpha'"),
                         ({"mixup": {"mixup_alpha": -1}}, "mixup_alpha"),
                         ({"ema": 0.99}, "must be a table"),
                         ({"ema": {"momentum": 2}}, "momentum"),
                         ({"swa": {"start_epoch": 1.5}}, "start_epoch"),
                         ({"ema": {}, "swa": {}}, "both ema and swa")]:
        with pytest.raises(StudyError, match=message):
            _study(bad)
    with pytest.raises(StudyError, match="both ema and swa"):
        from_dict({"name": "t", "data": {"name": "moons"}, "model": {"layers": ["Dense(1, input_dim=2)"]},
                   "training": {"epochs": 2, "ema": {}}, "variants": {"v": {"training": {"swa": {}}}}})
